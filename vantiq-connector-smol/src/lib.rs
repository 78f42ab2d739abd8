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
use std::sync::Once;
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

/// Tasks are smol's: dropping one cancels it, so dropping a connector set's `run` future
/// leaves nothing running.
impl Runtime for Smol {
    type Tcp = async_net::TcpStream;
    type Timer = SmolTimer;
    type Task = async_executor::Task<()>;

    const ABSORB_SELF_WAKES: bool = true;

    fn connect_tcp(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Self::Tcp>> {
        Box::pin(async move {
            let stream = async_net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
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
}
