//! Build Vantiq extension-source connectors on [smol](https://docs.rs/smol) (or any executor
//! built on `async-io`, such as `async-executor`).
//!
//! This crate is the whole SDK with smol filled in: it re-exports the API of
//! `vantiq-connector` (handlers, [`Source`] and [`Query`] handles, health, shutdown) and adds
//! [`Smol`], the binding to `async-net` TCP, `async-io` timers and an `async-executor` of its
//! own for the connector's tasks (see [`Smol`]). Connector code moves to
//! `vantiq-connector-tokio` by changing this import and nothing else.
//!
//! It depends on the parts of smol it uses (`async-io`, `async-net`, `async-executor`), not
//! on the `smol` umbrella crate, so a connector does not build smol's file, process and signal
//! support unless it uses them itself.
//!
//! Logging at `trace` with a `log` bridge (tracing-subscriber's default features, env_logger)?
//! Add [`SECRET_SAFE_LOG_DIRECTIVE`] to your filter: the WebSocket library logs every frame,
//! the token included, at `trace`.
//!
//! Start with [the guide] (`docs/guide.md`; its examples use tokio, only the import and
//! `smol::block_on` differ).
//!
//! [the guide]: https://github.com/vantiq-rs/vantiq-connector-rs/blob/main/docs/guide.md
//!
//! # Example
//!
//! An echo connector: it reads its `server.config` (`$VANTIQ_SERVER_CONFIG`, else
//! `serverConfig/server.config` or `./server.config`), serves every source listed there,
//! echoes publishes back as notifications, and stops cleanly on SIGINT or SIGTERM.
//!
//! ```no_run
//! use vantiq_connector_smol::{ConnectorError, ConnectorSet};
//!
//! fn main() -> Result<(), ConnectorError> {
//!     smol::block_on(async {
//!         ConnectorSet::from_default_config()?
//!             .on_publish(|source, message| async move {
//!                 source.notify_json(message).await?;
//!                 Ok(())
//!             })
//!             .shutdown_on_signals() // close with 1000, flush queued notifications
//!             .run()
//!             .await
//!     })
//! }
//! ```
//!
//! The same without signal handling, stopped by a [`ShutdownHandle`] of your own:
//!
//! ```no_run
//! use vantiq_connector_smol::{ConnectorError, ConnectorSet};
//!
//! fn main() -> Result<(), ConnectorError> {
//!     smol::block_on(async {
//!         let set = ConnectorSet::from_default_config()?
//!             .on_publish(|source, message| async move {
//!                 source.notify_json(message).await?;
//!                 Ok(())
//!             });
//!         let stop = set.shutdown_handle(); // stop.shutdown() from anywhere
//!         # drop(stop);
//!         set.run().await
//!     })
//! }
//! ```
//!
//! # Feature flags
//!
//! * `webpki-roots` (default): trust the Mozilla root certificates compiled in.
//! * `native-roots`: also trust the operating system's root certificates.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll};
use std::time::Instant;

use async_executor::Executor;
pub use vantiq_connector::*;

/// The smol binding: TCP from `async-net`, timers from `async-io`, tasks on this crate's own
/// executor.
///
/// Each source's task runs on a process-wide `async-executor` that belongs to this crate:
/// `SMOL_THREADS` threads (default 1, as for smol's global executor), started on the first
/// spawn and named `vantiq-smol-0`, `vantiq-smol-1`, …. So the connector runs whatever
/// drives your code: `smol::block_on`, `async_io::block_on`, an executor of your own, and
/// smol's global executor is left to your tasks. Sockets and timers use `async-io`'s reactor,
/// which every `async-io` based executor shares.
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

/// The executor the connector's tasks run on.
static EXECUTOR: Executor<'static> = Executor::new();

/// Starts the executor's threads, once.
fn executor() -> &'static Executor<'static> {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let threads = std::env::var("SMOL_THREADS")
            .ok()
            .and_then(|n| n.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1);
        for n in 0..threads {
            let started = std::thread::Builder::new()
                .name(format!("vantiq-smol-{n}"))
                .spawn(|| {
                    // A panicking task hands its panic to whoever awaits it; the loop only
                    // guards against a panic escaping the executor itself.
                    loop {
                        let run = std::panic::AssertUnwindSafe(|| {
                            async_io::block_on(EXECUTOR.run(std::future::pending::<()>()));
                        });
                        let _ = std::panic::catch_unwind(run);
                    }
                });
            if let Err(e) = started {
                tracing::error!(thread = n, error = %e, "could not start an executor thread");
            }
        }
    });
    &EXECUTOR
}

/// An `async_io::Timer` that can be moved.
#[derive(Debug)]
pub struct SmolTimer(async_io::Timer);

impl Timer for SmolTimer {
    fn reset(&mut self, deadline: Instant) {
        self.0.set_at(deadline);
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A TCP stream on async-io that does not try the socket when it knows the answer.
///
/// async-io tries the system call first and waits for readiness only when it fails
/// (`EAGAIN`), so every wait for the next frame began with a read that failed, and a driver
/// that looks at a full socket once per turn of its loop made a failed write each time
/// (thousands a second while a slow server read a flood, in strace). After a read that did
/// not fill the buffer, or a write that found the socket full, this waits for readiness
/// first, as tokio does: one system call less per wake-up on the path of every query's
/// latency, and none while the socket stays full. Nothing is missed: registering interest
/// reports a socket that is ready already at once.
#[derive(Debug)]
pub struct SmolTcp {
    io: Arc<async_io::Async<std::net::TcpStream>>,
    /// The last read did not fill its buffer: wait for readiness before reading again.
    drained: bool,
    /// The last write found the socket full: wait for readiness before writing again.
    full: bool,
}

impl SmolTcp {
    /// Wraps a connected stream.
    #[must_use]
    pub fn new(stream: async_net::TcpStream) -> Self {
        SmolTcp {
            io: stream.into(),
            drained: false,
            full: false,
        }
    }
}

impl futures_io::AsyncRead for SmolTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.drained {
            std::task::ready!(self.io.poll_readable(cx))?;
            self.drained = false;
        }
        let n = std::task::ready!(Pin::new(&mut &*self.io).poll_read(cx, buf))?;
        self.drained = n < buf.len();
        Poll::Ready(Ok(n))
    }
}

impl SmolTcp {
    /// Runs a write once the socket may take it, noting whether it found the socket full.
    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(
            &mut &async_io::Async<std::net::TcpStream>,
            &mut Context<'_>,
        ) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.full {
            std::task::ready!(self.io.poll_writable(cx))?;
            self.full = false;
        }
        let r = write(&mut &*self.io, cx);
        self.full = r.is_pending();
        r
    }
}

impl futures_io::AsyncWrite for SmolTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_with(cx, |io, cx| Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_with(cx, |io, cx| Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.io).poll_close(cx)
    }
}

/// Tasks are smol's: dropping one cancels it, so dropping a connector set's `run` future
/// leaves nothing running.
impl Runtime for Smol {
    type Tcp = SmolTcp;
    type Timer = SmolTimer;
    type Task = async_executor::Task<()>;

    const ABSORB_SELF_WAKES: bool = true;

    fn connect_tcp(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Self::Tcp>> {
        Box::pin(async move {
            let stream = async_net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(SmolTcp::new(stream))
        })
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn timer(&self, deadline: Instant) -> SmolTimer {
        SmolTimer(async_io::Timer::at(deadline))
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) -> async_executor::Task<()> {
        executor().spawn(future)
    }
}

/// This crate's README's code blocks, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// A connector set on smol. See [`vantiq_connector::ConnectorSet`].
pub type ConnectorSet = vantiq_connector::ConnectorSet<Smol>;

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing() -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    #[test]
    fn tasks_run_on_the_crates_executor_under_smol_block_on() {
        let (tx, rx) = async_channel::bounded(1);
        let task = Smol.spawn(Box::pin(async move {
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send(name).await;
        }));
        let name = smol::block_on(async {
            task.await;
            rx.recv().await
        });
        let name = name.unwrap().unwrap();
        assert!(name.starts_with("vantiq-smol-"), "{name}");
        // And under a bare async-io block_on.
        async_io::block_on(Smol.spawn(nothing()));
    }

    #[test]
    fn a_panicking_task_leaves_the_executor_serving() {
        let panicked = std::panic::catch_unwind(|| {
            smol::block_on(Smol.spawn(Box::pin(async { panic!("task panics on purpose") })));
        });
        assert!(panicked.is_err());
        let (tx, rx) = async_channel::bounded(1);
        smol::block_on(Smol.spawn(Box::pin(async move {
            let _ = tx.send(7).await;
        })));
        assert_eq!(rx.try_recv(), Ok(7));
    }

    /// A connected pair on loopback: ours, and the plain stream of the other end.
    async fn pair() -> (SmolTcp, async_net::TcpStream) {
        let listener = async_net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            smol::future::zip(async_net::TcpStream::connect(addr), listener.accept()).await;
        (SmolTcp::new(client.unwrap()), accepted.unwrap().0)
    }

    /// `f`, or a failure after 10 s: a readiness that is never reported must fail the test,
    /// not hang it.
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        let limit = async {
            async_io::Timer::after(std::time::Duration::from_secs(10)).await;
            panic!("not ready within 10 s: the readiness was never reported");
        };
        smol::future::or(f, limit).await
    }

    /// After a read that did not fill its buffer the stream waits for readiness instead of
    /// reading: bytes that come later, a burst larger than the buffer, and the end of the
    /// stream all still arrive.
    #[test]
    fn a_drained_stream_still_sees_later_bytes_and_the_end() {
        use futures_io::AsyncRead as _;
        use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

        smol::block_on(async {
            let (mut reader, mut writer) = pair().await;
            let mut buf = [0u8; 64];

            writer.write_all(b"first").await.unwrap();
            assert_eq!(reader.read(&mut buf).await.unwrap(), 5);
            assert!(reader.drained);
            // Nothing there: the next read waits (readiness, not a read) ...
            let mut next = std::pin::pin!(std::future::poll_fn(|cx| {
                std::pin::Pin::new(&mut reader).poll_read(cx, &mut buf)
            }));
            assert!(smol::future::poll_once(next.as_mut()).await.is_none());
            // ... and gets what comes later.
            writer.write_all(&[7u8; 100]).await.unwrap();
            assert_eq!(within(next).await.unwrap(), 64);
            let mut rest = Vec::new();
            while rest.len() < 36 {
                let n = reader.read(&mut buf).await.unwrap();
                rest.extend_from_slice(&buf[..n]);
            }
            assert_eq!(rest, [7u8; 36]);
            drop(writer);
            assert_eq!(
                within(reader.read(&mut buf)).await.unwrap(),
                0,
                "the end of the stream"
            );
        });
    }

    /// After a write that found the socket full the stream waits for writability instead
    /// of writing: the write still goes through once the peer reads, and nothing is lost.
    #[test]
    fn a_full_stream_writes_again_once_the_peer_reads() {
        use futures_io::AsyncWrite as _;
        use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

        smol::block_on(async {
            let (mut writer, mut reader) = pair().await;
            let chunk = [5u8; 64 * 1024];
            // Fill the socket until it takes nothing more.
            let mut sent = 0usize;
            loop {
                let mut write = std::pin::pin!(std::future::poll_fn(|cx| {
                    std::pin::Pin::new(&mut writer).poll_write(cx, &chunk)
                }));
                match smol::future::poll_once(write.as_mut()).await {
                    Some(n) => sent += n.unwrap(),
                    None => break,
                }
            }
            assert!(writer.full);
            // The peer reads everything; the next write waits for room, then goes through.
            let drain = async {
                let mut got = vec![0u8; sent + 3];
                reader.read_exact(&mut got).await.unwrap();
                got
            };
            let (got, ()) = within(smol::future::zip(drain, async {
                writer.write_all(b"end").await.unwrap();
                writer.flush().await.unwrap();
            }))
            .await;
            assert!(got[..sent].iter().all(|b| *b == 5));
            assert_eq!(&got[sent..], b"end");
        });
    }
}
