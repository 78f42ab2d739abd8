//! Build Vantiq extension-source connectors on [tokio](https://tokio.rs).
//!
//! This crate is the whole SDK with the tokio runtime filled in: it re-exports the API of
//! `vantiq-connector` (handlers, [`Source`] and [`Query`] handles, health, shutdown) and adds
//! [`Tokio`], the binding to tokio's TCP, timers and tasks. Connector code moves to
//! `vantiq-connector-smol` by changing this import and nothing else.
//!
//! Logging at `trace` with a `log` bridge (tracing-subscriber's default features, env_logger)?
//! Add [`SECRET_SAFE_LOG_DIRECTIVE`] to your filter: the WebSocket library logs every frame,
//! the token included, at `trace`.
//!
//! # Example
//!
//! An echo connector: it reads `serverConfig/server.config` (or `./server.config`), serves
//! every source listed there, echoes publishes back as notifications, answers queries, and
//! stops cleanly on Ctrl-C.
//!
//! ```no_run
//! use vantiq_connector_tokio::{ConnectorError, ConnectorSet, QueryError};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), ConnectorError> {
//!     let set = ConnectorSet::from_default_config()?
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
//!         });
//!     let stop = set.shutdown_handle();
//!     tokio::spawn(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         stop.shutdown();
//!     });
//!     set.run().await
//! }
//! ```

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

/// The README's code blocks, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// A connector set on tokio. See [`vantiq_connector::ConnectorSet`].
pub type ConnectorSet = vantiq_connector::ConnectorSet<Tokio>;
