//! The runtime-neutral layer of the Vantiq connector SDK: handlers, source and query
//! handles, the connector set and the driver that runs it, for any async runtime.
//!
//! You do not depend on this crate directly: depend on `vantiq-connector-tokio` or
//! `vantiq-connector-smol`, which re-export all of it with their runtime filled in (so
//! `vantiq_connector_tokio::ConnectorSet` is this crate's [`ConnectorSet`] on tokio). It holds
//! everything the two share, so nothing is written twice: the transport (rustls TLS and
//! async-tungstenite over `futures-io`) and the driver loop that binds a
//! `vantiq_proto::Connection` to a socket, behind the API below. A runtime crate supplies only
//! a [`Runtime`]: TCP connect, a timer, and spawn. [The guide] (`docs/guide.md`) walks
//! through writing a connector with it.
//!
//! [the guide]: https://github.com/vantiq-rs/vantiq-connector-rs/blob/main/docs/guide.md
//!
//! # Where things are
//!
//! * **The connector**: [`ConnectorSet`] (every source of a `server.config`, their handlers,
//!   health, `run`), [`ShutdownHandle`], [`ConnectorError`]; the configuration
//!   [`ServerConfig`], read by [`load_config_file`] and [`load_config_from_dir`].
//! * **Your code**: the [`Handler`] trait (or closures given to `ConnectorSet::on_*`),
//!   [`HandlerResult`] and [`HandlerError`].
//! * **Notifications**: [`Source`] (a handle on one source, from any task),
//!   [`NotifyError`], [`TryNotifyError`], [`Stopped`].
//! * **Queries**: [`Query`] (the handle that answers one), [`QueryError`] (an error reply),
//!   [`ReplyError`] (a refused reply), the codes of the automatic answers
//!   ([`NO_HANDLER_CODE`], [`HANDLER_FAILED_CODE`], [`DROPPED_CODE`]).
//! * **Data**: [`Json`], JSON text kept as it came, parsed on demand.
//! * **State and health**: [`ConnectionState`], [`DisconnectReason`], [`FatalError`],
//!   [`Failure`]; [`Health`], [`HealthConfig`], [`HealthReport`], [`Readiness`],
//!   [`HealthError`] (from `vantiq-health`).
//! * **Tuning**: [`TransportOptions`] (message size, buffers, TLS roots
//!   with [`CertificateDer`] and [`PemObject`]), [`ConnectionConfig`] with [`Backoff`],
//!   [`KeepAlive`] and [`Limits`] (through [`ConnectorSet::connection_config`]).
//! * **Lower level**: [`proto`], the sans-IO protocol core this layer drives; [`Runtime`],
//!   [`Timer`] and [`BoxFuture`], to bind another runtime.
//!
//! # Feature flags
//!
//! * `webpki-roots` (default): trust the Mozilla root certificates compiled in.
//! * `native-roots`: also trust the operating system's root certificates.
//! * `test-util`: the `test_util` module, a runtime with a virtual clock and in-memory
//!   sockets for tests of the driver and of connectors. Not for production code.
//!
//! The runtime crates forward `webpki-roots` and `native-roots`.
//!
//! # Secrets and logs
//!
//! The SDK's own logs, errors and `Debug` output never show the token, the password or the
//! reconnect secret. The WebSocket library, tungstenite, logs every frame's payload at
//! `trace` through the `log` crate: keep it at `info` with [`SECRET_SAFE_LOG_DIRECTIVE`]
//! when you log at `trace` with a `log` bridge. Risky settings (credentials sent in plain
//! text, a `server.config` with the token that others can read, no incoming size limit) are
//! in [`ServerConfig::warnings`], which a [`ConnectorSet`] logs once when it is built.
//!
//! # Example
//!
//! A connector's behaviour, written once for any runtime (a runtime crate's `main` builds
//! the set with `ConnectorSet::from_default_config()` and runs it):
//!
//! ```
//! use vantiq_connector::{ConnectorSet, QueryError, Runtime};
//!
//! fn echo<R: Runtime>(set: ConnectorSet<R>) -> ConnectorSet<R> {
//!     set.on_connect(|source, config| async move {
//!         source.notify(&serde_json::json!({"connected": true, "config": config})).await?;
//!         Ok(())
//!     })
//!     .on_publish(|source, message| async move {
//!         source.notify_json(message).await?; // the published object, back as an event
//!         Ok(())
//!     })
//!     .on_query(|_source, query| async move {
//!         let n = query.params().to_value()?["rows"].as_u64().unwrap_or(0);
//!         if n > 1000 {
//!             query.error(QueryError::new("demo.tooMany", "{0} rows is too many", [n])).await?;
//!         } else {
//!             query.stream((0..n).map(|i| serde_json::json!({"i": i}))).await?;
//!         }
//!         Ok(())
//!     })
//! }
//! ```

mod command;
mod desk;
mod driver;
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
    ConnectorError, ConnectorSet, SERVER_CONFIG_ENV, ShutdownHandle, load_config_file,
    load_config_from_dir, load_default_config,
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
