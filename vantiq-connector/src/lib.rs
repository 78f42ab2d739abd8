//! The runtime-neutral layer of the Vantiq connector SDK.
//!
//! You do not depend on this crate directly: depend on `vantiq-connector-tokio` or
//! `vantiq-connector-smol`, which re-export all of it with their runtime filled in. It holds
//! everything the two share, so nothing is written twice: the [`Handler`] trait and the
//! closure form, the [`Source`] and [`Query`] handles, the [`ConnectorSet`] with health and
//! shutdown, the transport (rustls TLS and async-tungstenite over `futures-io`), and the
//! driver loop that binds a `vantiq_proto::Connection` to a socket. A runtime crate supplies
//! only a [`Runtime`]: TCP connect, a timer, and spawn.
//!
//! # Secrets and logs
//!
//! The SDK's own logs, errors and `Debug` output never show the token, the password or the
//! reconnect secret. The WebSocket library, tungstenite, logs every frame's payload at
//! `trace` through the `log` crate: keep it at `debug` with [`SECRET_SAFE_LOG_DIRECTIVE`]
//! when you log at `trace` with a `log` bridge. Risky settings (credentials sent in plain
//! text, a `server.config` with the token that others can read, no incoming size limit) are
//! in [`ServerConfig::warnings`], which a [`ConnectorSet`] logs once when it is built.
//!
//! # Example
//!
//! A complete connector (with the tokio runtime crate, which re-exports this API):
//!
//! ```no_run
//! # use vantiq_connector as vantiq_connector_tokio;
//! # type ConnectorSet = vantiq_connector::ConnectorSet<MyRuntime>;
//! # #[derive(Clone, Default)] struct MyRuntime;
//! # impl vantiq_connector::Runtime for MyRuntime {
//! #     type Tcp = futures_util::io::Cursor<Vec<u8>>;
//! #     type Timer = NoTimer;
//! #     type Task = futures_util::future::Ready<()>;
//! #     fn connect_tcp(&self, _: String, _: u16) -> vantiq_connector::BoxFuture<'static, std::io::Result<Self::Tcp>> { unimplemented!() }
//! #     fn now(&self) -> std::time::Instant { unimplemented!() }
//! #     fn timer(&self, _: std::time::Instant) -> NoTimer { NoTimer }
//! #     fn spawn(&self, _: vantiq_connector::BoxFuture<'static, ()>) -> Self::Task { unimplemented!() }
//! # }
//! # struct NoTimer;
//! # impl vantiq_connector::Timer for NoTimer {
//! #     fn reset(&mut self, _: std::time::Instant) {}
//! #     fn poll_fired(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<()> { std::task::Poll::Pending }
//! # }
//! use vantiq_connector_tokio::{QueryError, ConnectorError};
//!
//! async fn main_() -> Result<(), ConnectorError> {
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
//!             let n: u64 = query.params().to_value()?["rows"].as_u64().unwrap_or(0);
//!             if n > 1000 {
//!                 query.error(QueryError::new("demo.tooMany", "{0} rows is too many", [n])).await?;
//!             } else {
//!                 query.stream((0..n).map(|i| serde_json::json!({"i": i}))).await?;
//!             }
//!             Ok(())
//!         });
//!     let stop = set.shutdown_handle(); // call stop.shutdown() on Ctrl-C
//!     set.run().await
//! }
//! ```

mod command;
mod driver;
pub mod echo;
mod handler;
mod lane;
mod query;
mod runtime;
mod secrets;
mod set;
mod settings;
mod source;
#[cfg(feature = "test-util")]
pub mod test_util;
mod transport;

pub use handler::{Handler, HandlerError, HandlerResult};
pub use query::{DROPPED_CODE, HANDLER_FAILED_CODE, NO_HANDLER_CODE, Query};
pub use runtime::{BoxFuture, Runtime, Timer};
pub use secrets::SECRET_SAFE_LOG_DIRECTIVE;
pub use set::{
    ConnectorError, ConnectorSet, ShutdownHandle, load_config_file, load_config_from_dir,
};
pub use source::{NotifyError, Source, Stopped, TryNotifyError};
pub use transport::TransportOptions;

/// Certificate types for [`TransportOptions::extra_root_certificates`].
pub use rustls_pki_types::{CertificateDer, pem::PemObject};
pub use vantiq_health::{Health, HealthConfig, HealthError, HealthReport, Readiness};
/// The sans-IO protocol core, for advanced use (custom transports, tests).
pub use vantiq_proto as proto;
pub use vantiq_proto::{
    Backoff, ConfigError, ConnectionConfig, ConnectionState, Credentials, DisconnectReason,
    Failure, FatalError, Json, JsonTreeError, KeepAlive, Limits, Properties, QueryError, QueryId,
    ReplyError, Secret, ServerConfig, TargetUrl,
};
