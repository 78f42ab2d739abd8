//! [`Wiretap`]: a [`Runtime`] wrapper that shows a test every WebSocket message the
//! connector writes to a socket, at the moment the operating system accepts its last byte.
//!
//! That is the line between "held by the SDK" and "in flight": once a message's bytes are
//! accepted by a socket, a cut can lose it and nothing on the connector's side can know (the
//! protocol has no acknowledgement); before that, the SDK holds it and must not lose it. The
//! connector's code runs unchanged: only its TCP streams are wrapped.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};
use vantiq_connector::{BoxFuture, Runtime};

use crate::TestRuntime;

/// Sees the payload of each text or binary WebSocket message written to a socket.
pub type Inspector = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// The inspector in use (shared by a runtime and every stream it opened).
#[derive(Default)]
struct Tap {
    inspector: Mutex<Option<Inspector>>,
}

/// Runtime `R`, with every TCP stream it opens tapped (see the [module docs](self)).
#[derive(Clone, Default)]
pub struct Wiretap<R> {
    inner: R,
    tap: Arc<Tap>,
}

impl<R> Wiretap<R> {
    /// Shows every message written from now on to `inspector` (`None`: stop).
    pub fn set_inspector(&self, inspector: Option<Inspector>) {
        *self.tap.inspector.lock().unwrap_or_else(|p| p.into_inner()) = inspector;
    }
}

impl<R: TestRuntime> Runtime for Wiretap<R> {
    type Tcp = Tapped<R::Tcp>;
    type Timer = R::Timer;
    type Task = R::Task;

    fn connect_tcp(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Self::Tcp>> {
        let connect = self.inner.connect_tcp(host, port);
        let tap = self.tap.clone();
        Box::pin(async move {
            Ok(Tapped {
                inner: connect.await?,
                scanner: Scanner::default(),
                tap,
            })
        })
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn timer(&self, deadline: Instant) -> R::Timer {
        self.inner.timer(deadline)
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) -> R::Task {
        self.inner.spawn(future)
    }
}

impl<R: TestRuntime> TestRuntime for Wiretap<R> {
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        R::block_on(f)
    }
}

/// A tapped TCP stream.
pub struct Tapped<S> {
    inner: S,
    scanner: Scanner,
    tap: Arc<Tap>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            let inspector = this
                .tap
                .inspector
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            this.scanner
                .feed(buf.get(..*n).unwrap_or_default(), inspector.as_ref());
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Finds the WebSocket messages in what a client writes (after its HTTP upgrade request).
#[derive(Default)]
pub struct Scanner {
    upgraded: bool,
    buf: Vec<u8>,
}

impl Scanner {
    /// Takes the next bytes written; shows each complete text or binary message.
    pub fn feed(&mut self, data: &[u8], inspector: Option<&Inspector>) {
        self.buf.extend_from_slice(data);
        if !self.upgraded {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            self.buf.drain(..end + 4);
            self.upgraded = true;
        }
        while let Some((opcode, payload, used)) = frame(&self.buf) {
            self.buf.drain(..used);
            if let Some(inspect) = inspector.filter(|_| opcode == 1 || opcode == 2) {
                inspect(&payload);
            }
        }
    }
}

/// The first complete frame in `b`: its opcode, unmasked payload, and length on the wire.
fn frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let opcode = b.first()? & 0x0f;
    let second = *b.get(1)?;
    let (len, mut at) = match second & 0x7f {
        126 => (usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
        127 => {
            let bytes: [u8; 8] = b.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let mask: Option<[u8; 4]> = if second & 0x80 != 0 {
        let m = b.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let mut payload = b.get(at..at.checked_add(len)?)?.to_vec();
    if let Some(m) = mask {
        for (i, x) in payload.iter_mut().enumerate() {
            *x ^= m[i % 4];
        }
    }
    Some((opcode, payload, at + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_masked_messages_after_the_upgrade() {
        let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let inspector: Inspector = {
            let seen = seen.clone();
            Arc::new(move |p: &[u8]| seen.lock().unwrap().push(p.to_vec()))
        };
        let mut wire = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mask = [1u8, 2, 3, 4];
        for (opcode, payload) in [(1u8, &b"hello"[..]), (9, b"ping"), (2, &[7u8; 300][..])] {
            wire.push(0x80 | opcode);
            if payload.len() < 126 {
                wire.push(0x80 | payload.len() as u8);
            } else {
                wire.push(0x80 | 126);
                wire.extend((payload.len() as u16).to_be_bytes());
            }
            wire.extend(mask);
            wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        let mut s = Scanner::default();
        // Fed a byte at a time: messages are found whatever the write boundaries.
        for b in &wire {
            s.feed(std::slice::from_ref(b), Some(&inspector));
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![b"hello".to_vec(), vec![7u8; 300]]
        );
    }
}
