//! Build Vantiq extension-source connectors on [smol](https://docs.rs/smol) (or any executor
//! built on `async-io`, such as `async-executor`).
//!
//! This crate is the whole SDK with smol filled in: it re-exports the API of
//! `vantiq-connector` (handlers, [`Source`] and [`Query`] handles, health, shutdown) and adds
//! [`Smol`], the binding to `async-net` TCP, `async-io` timers and `smol::spawn`. Connector
//! code moves to `vantiq-connector-tokio` by changing this import and nothing else.
//!
//! # Example
//!
//! An echo connector: it reads `serverConfig/server.config` (or `./server.config`), serves
//! every source listed there, and echoes publishes back as notifications.
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
//!         set.run().await
//!     })
//! }
//! ```

use std::io;
use std::task::{Context, Poll};
use std::time::Instant;

pub use vantiq_connector::*;

/// The smol binding: TCP from `async-net`, timers from `async-io`, tasks from
/// `smol::spawn` (smol's global executor; set `SMOL_THREADS` for more than one thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

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
    type Task = smol::Task<()>;

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

    fn spawn(&self, future: BoxFuture<'static, ()>) -> smol::Task<()> {
        smol::spawn(future)
    }
}

/// A connector set on smol. See [`vantiq_connector::ConnectorSet`].
pub type ConnectorSet = vantiq_connector::ConnectorSet<Smol>;
