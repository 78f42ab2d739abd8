//! Build Vantiq extension-source connectors on [tokio](https://tokio.rs).
//!
//! A connector is a program that connects out to a Vantiq server, serves one or more
//! *sources* there, and handles what Vantiq sends them: their configuration, publishes
//! (`PUBLISH … TO SOURCE`) and queries (`SELECT … FROM SOURCE`), while it sends
//! notifications that Vantiq rules react to. This crate is the whole SDK with the tokio
//! runtime filled in: it re-exports the API of `vantiq-connector` ([`ConnectorSet`],
//! [`Handler`], the [`Source`] and [`Query`] handles, health, shutdown) and adds [`Tokio`],
//! the binding to tokio's TCP, timers and tasks. Connector code moves to
//! `vantiq-connector-smol` by changing this import and nothing else.
//!
//! Start with [the guide] (`docs/guide.md`): from an empty crate to a tested,
//! deployed connector. The SQL source connector (`connectors/sql-source`) is a complete one
//! to copy from; `vantiq-testkit` is the embedded Vantiq server to test against.
//!
//! [the guide]: https://github.com/vantiq-rs/vantiq-connector-rs/blob/main/docs/guide.md
//!
//! # Example
//!
//! An echo connector: it reads its `server.config` (`$VANTIQ_SERVER_CONFIG`, else
//! `serverConfig/server.config` or `./server.config`), serves every source listed there,
//! echoes publishes back as notifications, answers queries with rows, and stops cleanly on
//! SIGINT or SIGTERM.
//!
//! ```no_run
//! use vantiq_connector_tokio::{ConnectorSet, QueryError, SECRET_SAFE_LOG_DIRECTIVE};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let filter = tracing_subscriber::EnvFilter::try_from_default_env()
//!         .unwrap_or_else(|_| "info".into())
//!         .add_directive(SECRET_SAFE_LOG_DIRECTIVE.parse()?);
//!     tracing_subscriber::fmt().with_env_filter(filter).init();
//!     ConnectorSet::from_default_config()?
//!         .on_connect(|source, config| async move {
//!             source.notify(&serde_json::json!({"connected": true, "config": config})).await?;
//!             Ok(())
//!         })
//!         .on_publish(|source, message| async move {
//!             source.notify_json(message).await?;
//!             Ok(())
//!         })
//!         .on_query(|_source, query| async move {
//!             let rows = query.params().to_value()?["rows"].as_u64().unwrap_or(0);
//!             if rows > 10_000 {
//!                 let e = QueryError::new("echo.tooMany", "{0} rows is too many", [rows]);
//!                 query.error(e).await?;
//!             } else {
//!                 query.stream((0..rows).map(|i| serde_json::json!({"i": i}))).await?;
//!             }
//!             Ok(())
//!         })
//!         .shutdown_on_signals() // close with 1000, flush queued notifications
//!         .run()
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! To stop for reasons of your own, take a [`ShutdownHandle`] before `run`:
//!
//! ```no_run
//! use vantiq_connector_tokio::{ConnectorError, ConnectorSet};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), ConnectorError> {
//!     let set = ConnectorSet::from_default_config()?.on_publish(|source, message| async move {
//!         source.notify_json(message).await?;
//!         Ok(())
//!     });
//!     let stop = set.shutdown_handle();
//!     tokio::spawn(async move {
//!         tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
//!         stop.shutdown(); // sockets close with 1000, queued notifications are flushed
//!     });
//!     set.run().await
//! }
//! ```
//!
//! # Logs and secrets
//!
//! The SDK logs through `tracing`, one span per source. Logging at `trace` with a `log`
//! bridge (tracing-subscriber's default features, env_logger)? Add
//! [`SECRET_SAFE_LOG_DIRECTIVE`] to your filter, as above: the WebSocket library logs every
//! frame, the token included, at `trace`.
//!
//! # Feature flags
//!
//! * `webpki-roots` (default): trust the Mozilla root certificates compiled in.
//! * `native-roots`: also trust the operating system's root certificates.
//!
//! # Virtual time
//!
//! The connector's clock is tokio's: under tokio's paused time (`#[tokio::test(start_paused
//! = true)]`, `tokio::time::pause`) every deadline of the SDK — keep-alive, back-off,
//! timeouts — runs on virtual time.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_tungstenite::tokio::TokioAdapter;
pub use vantiq_connector::*;

/// The tokio binding: TCP from `tokio::net`, timers from `tokio::time`, tasks from
/// `tokio::spawn`. The connector set must run inside a tokio runtime (with the time and IO
/// drivers enabled, as `#[tokio::main]` sets up).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

/// A `tokio::time::Sleep` that can be moved.
#[derive(Debug)]
pub struct TokioTimer(Pin<Box<tokio::time::Sleep>>);

impl Timer for TokioTimer {
    fn reset(&mut self, deadline: Instant) {
        self.0.as_mut().reset(deadline.into());
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// A spawned tokio task; a task that panicked is logged. Dropping it aborts the task, so that
/// dropping a connector set's `run` future leaves nothing running (a plain `JoinHandle`
/// would detach it).
#[derive(Debug)]
pub struct TokioTask(tokio::task::JoinHandle<()>);

impl Drop for TokioTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for TokioTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Ready(Err(e)) if e.is_panic() => {
                tracing::error!(error = %e, "a connector task ended abnormally");
                Poll::Ready(())
            }
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Runtime for Tokio {
    type Tcp = TokioAdapter<tokio::net::TcpStream>;
    type Timer = TokioTimer;
    type Task = TokioTask;

    const ABSORB_SELF_WAKES: bool = true;

    fn connect_tcp(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Self::Tcp>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(TokioAdapter::new(stream))
        })
    }

    /// Tokio's clock: with tokio's paused time (`start_paused`, `tokio::time::pause`), every
    /// deadline of the SDK runs on virtual time.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn timer(&self, deadline: Instant) -> TokioTimer {
        TokioTimer(Box::pin(tokio::time::sleep_until(deadline.into())))
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) -> TokioTask {
        TokioTask(tokio::spawn(future))
    }
}

/// This crate's README's code blocks, compiled as doc tests so they stay true. (The
/// repository's README is compiled by `vantiq-e2e`: it lies outside this package.)
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// A connector set on tokio. See [`vantiq_connector::ConnectorSet`].
pub type ConnectorSet = vantiq_connector::ConnectorSet<Tokio>;
