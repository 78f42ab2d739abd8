//! An in-memory network for the connector's driver: [`MemRuntime`] is a
//! [`Runtime`] whose `connect_tcp` returns one end of a [`Duplex`]
//! pipe and hands the other end to whoever plays the server ([`MemRuntime::new`]'s
//! receiver). Timers and tasks are smol's, so the real driver runs unchanged.
//!
//! A [`Duplex`] end reads what the other end wrote. Each direction holds at most `capacity`
//! bytes (writes wait beyond that, as a full TCP window does). [`PipeControl`] lets a test
//! or a fuzz script reach past the WebSocket layer: write raw bytes, reset one end (its
//! reads and writes fail, like a TCP RST), or read what was written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};
use vantiq_connector::{BoxFuture, Runtime};
use vantiq_connector_smol::{Smol, SmolTimer};

/// One direction of a pipe.
#[derive(Debug)]
struct Half {
    buf: VecDeque<u8>,
    capacity: usize,
    /// The writing end closed (or was dropped): the reader sees EOF after the buffer.
    write_closed: bool,
    /// The reading end was dropped: writes fail.
    read_dropped: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// Bytes ever written into this direction.
    written: u64,
}

impl Half {
    fn new(capacity: usize) -> Arc<Mutex<Half>> {
        Arc::new(Mutex::new(Half {
            buf: VecDeque::new(),
            capacity: capacity.max(1),
            write_closed: false,
            read_dropped: false,
            reader: None,
            writer: None,
            written: 0,
        }))
    }

    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// The state of one end: an injected error makes its reads and writes fail.
#[derive(Debug, Default)]
struct EndState {
    error: Option<io::ErrorKind>,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// One end of an in-memory, bidirectional byte pipe (see the [module docs](self)).
#[derive(Debug)]
pub struct Duplex {
    rx: Arc<Mutex<Half>>,
    tx: Arc<Mutex<Half>>,
    end: Arc<Mutex<EndState>>,
    peer: Arc<Mutex<EndState>>,
}

/// A handle on one end of a pipe that outlives it, for tests and fuzz scripts.
#[derive(Debug, Clone)]
pub struct PipeControl {
    rx: Arc<Mutex<Half>>,
    tx: Arc<Mutex<Half>>,
    end: Arc<Mutex<EndState>>,
    peer: Arc<Mutex<EndState>>,
}

/// A pipe: two connected ends, each direction buffering up to `capacity` bytes.
pub fn duplex(capacity: usize) -> (Duplex, Duplex) {
    let a = Half::new(capacity);
    let b = Half::new(capacity);
    let end_a: Arc<Mutex<EndState>> = Arc::default();
    let end_b: Arc<Mutex<EndState>> = Arc::default();
    (
        Duplex {
            rx: a.clone(),
            tx: b.clone(),
            end: end_a.clone(),
            peer: end_b.clone(),
        },
        Duplex {
            rx: b,
            tx: a,
            end: end_b,
            peer: end_a,
        },
    )
}

impl Duplex {
    /// A control handle on this end.
    pub fn control(&self) -> PipeControl {
        PipeControl {
            rx: self.rx.clone(),
            tx: self.tx.clone(),
            end: self.end.clone(),
            peer: self.peer.clone(),
        }
    }
}

impl PipeControl {
    /// Appends `bytes` to what this end sends, ignoring the capacity (raw bytes under the
    /// WebSocket layer).
    pub fn inject(&self, bytes: &[u8]) {
        let mut tx = self.tx.lock().unwrap();
        if tx.write_closed || tx.read_dropped {
            return;
        }
        tx.buf.extend(bytes);
        tx.written += bytes.len() as u64;
        tx.wake_reader();
    }

    /// Makes every later read and write of this end fail with `kind` (a reset).
    pub fn fail(&self, kind: io::ErrorKind) {
        fail(&self.end, kind);
        self.rx.lock().unwrap().wake_reader();
        self.tx.lock().unwrap().wake_writer();
    }

    /// Makes every later read and write of the other end fail with `kind` (it sees a reset;
    /// this end can still read what was sent before).
    pub fn fail_peer(&self, kind: io::ErrorKind) {
        fail(&self.peer, kind);
        self.tx.lock().unwrap().wake_reader();
        self.rx.lock().unwrap().wake_writer();
    }

    /// Bytes this end has written in all.
    pub fn bytes_sent(&self) -> u64 {
        self.tx.lock().unwrap().written
    }

    /// Bytes the other end has written to this one in all.
    pub fn bytes_received(&self) -> u64 {
        self.rx.lock().unwrap().written
    }

    /// Bytes waiting to be read by this end.
    pub fn pending_in(&self) -> usize {
        self.rx.lock().unwrap().buf.len()
    }
}

fn fail(end: &Mutex<EndState>, kind: io::ErrorKind) {
    let mut end = end.lock().unwrap();
    end.error = Some(kind);
    if let Some(w) = end.reader.take() {
        w.wake();
    }
    if let Some(w) = end.writer.take() {
        w.wake();
    }
}

impl Drop for Duplex {
    fn drop(&mut self) {
        let mut tx = self.tx.lock().unwrap();
        tx.write_closed = true;
        tx.wake_reader();
        drop(tx);
        let mut rx = self.rx.lock().unwrap();
        rx.read_dropped = true;
        rx.wake_writer();
    }
}

impl AsyncRead for Duplex {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        {
            let mut end = self.end.lock().unwrap();
            if let Some(kind) = end.error {
                return Poll::Ready(Err(io::Error::new(kind, "injected")));
            }
            end.reader = Some(cx.waker().clone());
        }
        let mut rx = self.rx.lock().unwrap();
        if rx.buf.is_empty() {
            if rx.write_closed {
                return Poll::Ready(Ok(0));
            }
            rx.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = out.len().min(rx.buf.len());
        for (slot, byte) in out.iter_mut().zip(rx.buf.drain(..n)) {
            *slot = byte;
        }
        rx.wake_writer();
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        {
            let mut end = self.end.lock().unwrap();
            if let Some(kind) = end.error {
                return Poll::Ready(Err(io::Error::new(kind, "injected")));
            }
            end.writer = Some(cx.waker().clone());
        }
        let mut tx = self.tx.lock().unwrap();
        if tx.read_dropped || tx.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = tx.capacity.saturating_sub(tx.buf.len());
        if room == 0 {
            tx.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        tx.buf.extend(data.iter().take(n));
        tx.written += n as u64;
        tx.wake_reader();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.end.lock().unwrap().error {
            Some(kind) => Poll::Ready(Err(io::Error::new(kind, "injected"))),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut tx = self.tx.lock().unwrap();
        tx.write_closed = true;
        tx.wake_reader();
        Poll::Ready(Ok(()))
    }
}

/// A runtime whose TCP connections are in-memory pipes (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct MemRuntime {
    accept: async_channel::Sender<Duplex>,
    capacity: usize,
}

impl MemRuntime {
    /// A runtime whose pipes buffer `capacity` bytes each way, and the receiver of the
    /// server ends of the connections it opens. Connecting fails (refused) once the
    /// receiver is dropped.
    pub fn new(capacity: usize) -> (MemRuntime, async_channel::Receiver<Duplex>) {
        let (accept, rx) = async_channel::unbounded();
        (MemRuntime { accept, capacity }, rx)
    }
}

impl Runtime for MemRuntime {
    type Tcp = Duplex;
    type Timer = SmolTimer;
    type Task = smol::Task<()>;

    fn connect_tcp(&self, _host: String, _port: u16) -> BoxFuture<'static, io::Result<Duplex>> {
        let (client, server) = duplex(self.capacity);
        let accepted = self.accept.try_send(server).is_ok();
        Box::pin(async move {
            if accepted {
                Ok(client)
            } else {
                Err(io::ErrorKind::ConnectionRefused.into())
            }
        })
    }

    fn now(&self) -> Instant {
        Smol.now()
    }

    fn timer(&self, deadline: Instant) -> SmolTimer {
        Smol.timer(deadline)
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) -> smol::Task<()> {
        Smol.spawn(future)
    }
}
