//! [`ConnectorSet`]: every source of a `server.config`, their handlers, health, and `run`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_channel::{Receiver, Sender};
use futures_util::FutureExt as _;
use tracing::Instrument as _;
use vantiq_health::{Health, HealthError};
use vantiq_proto::{
    ConfigError, Connection, ConnectionConfig, DisconnectReason, FatalError, Json, Limits,
    SEARCH_PATHS, ServerConfig, TOKEN_ENV,
};

use crate::driver::{Driver, DriverParts, LinkSettings};
use crate::handler::{DynHandler, FnHandlers, Handler, HandlerResult};
use crate::lane::Bounds;
use crate::query::Query;
use crate::runtime::Runtime;
use crate::settings::{self, Settings};
use crate::source::Source;
use crate::transport::{TransportOptions, tls_config};

/// The environment variable naming the `server.config` file to use:
/// [`ConnectorSet::from_default_config`] reads it before searching the working directory.
pub const SERVER_CONFIG_ENV: &str = "VANTIQ_SERVER_CONFIG";

/// Why a connector set could not be built or stopped running.
///
/// Its `Debug` output is the same sentence as its `Display` output, followed by the chain of
/// underlying errors (`caused by: …`), so that a `main` returning
/// `Result<(), ConnectorError>` prints `Error: <sentence>` rather than a struct dump.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// No configuration file in any of the searched places.
    #[error("no server.config found (looked for {})", .searched.join(", "))]
    ConfigNotFound {
        /// The paths tried, in order.
        searched: Vec<String>,
    },
    /// The configuration file exists but could not be read.
    #[error("could not read {path}: {error}")]
    ConfigRead {
        /// The file.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// The file named by the environment variable [`SERVER_CONFIG_ENV`] could not be read.
    #[error("could not read {path}, named by the environment variable {var}: {error}")]
    ConfigEnvRead {
        /// The environment variable ([`SERVER_CONFIG_ENV`]).
        var: &'static str,
        /// The file it names.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// The configuration is invalid (the error names the file and the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A handler was given for a source that `sources` does not list.
    #[error("a handler was given for source `{0}`, which is not in `sources`")]
    UnknownSource(String),
    /// Both a [`Handler`] for every source and `on_*` closures were given: one of them
    /// would be ignored.
    #[error(
        "both a Handler (ConnectorSet::handler) and on_* closures were given; use one or the other (closures can live in a Handler's methods)"
    )]
    HandlerConflict,
    /// A health probe could not start.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// TLS could not be set up.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A source ended for good (a rejected token; with `failOnConnectionError`, any
    /// connection failure). The other sources were shut down.
    #[error("source `{source_name}`: {error}")]
    Fatal {
        /// The source.
        source_name: String,
        /// What happened.
        error: FatalError,
    },
    /// [`ConnectorSet::shutdown_on_signals`] could not install its signal handler (only
    /// one may be installed per process). Reported by [`ConnectorSet::run`].
    #[error(
        "could not install the SIGINT/SIGTERM handler of ConnectorSet::shutdown_on_signals: {0} \
         (one handler per process: call shutdown_on_signals on one set only, and do not combine \
         it with another Ctrl-C handler)"
    )]
    Signals(String),
    /// An operating-system resource the connector needs failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The `Display` sentence, then each underlying error on a `caused by:` line.
impl fmt::Debug for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            let text = e.to_string();
            // `transparent` variants and messages that embed their cause repeat it: say
            // each thing once.
            if !self.to_string().ends_with(&text) {
                write!(f, "\n  caused by: {text}")?;
            }
            source = e.source();
        }
        Ok(())
    }
}

/// Stops a running connector set: every socket closes with code 1000, close handlers run,
/// queued notifications are flushed (within the close timeout), and `run` returns `Ok`.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: Sender<()>,
}

impl ShutdownHandle {
    /// Begins the shutdown. Idempotent.
    pub fn shutdown(&self) {
        self.tx.close();
    }

    /// Whether shutdown has begun.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.tx.is_closed()
    }
}

type Tweak = Box<dyn Fn(&mut ConnectionConfig) + Send + Sync>;

/// A connector: every source in `server.config`, with its handlers.
///
/// Build it from the configuration, give it handlers (closures with the `on_*` methods or a
/// [`Handler`] for all or per source), take [`Source`] handles and the [`ShutdownHandle`] as
/// needed, then `run` it. The runtime crates (`vantiq-connector-tokio`,
/// `vantiq-connector-smol`) name this type with their runtime filled in.
///
/// # Example
///
/// A set with a handler per source, and notifications sent from outside the handlers,
/// written for any runtime:
///
/// ```
/// use vantiq_connector::{ConnectorError, ConnectorSet, Handler, Runtime};
///
/// struct Thermo;
/// impl Handler for Thermo {}
/// struct Pumps;
/// impl Handler for Pumps {}
///
/// async fn serve<R: Runtime>(set: ConnectorSet<R>) -> Result<(), ConnectorError> {
///     let thermo = set.source("Thermo").expect("`sources` lists Thermo");
///     let hello = async move {
///         // Kept until the session begins, then sent; `Err` once the set has stopped.
///         let _ = thermo.notify(&serde_json::json!({"started": true})).await;
///     };
///     let set = set.source_handler("Thermo", Thermo).source_handler("Pumps", Pumps);
///     // `run` lasts until a ShutdownHandle stops the set, or a fatal error.
///     let (result, ()) = futures_util::future::join(set.run(), hello).await;
///     result
/// }
/// ```
pub struct ConnectorSet<R: Runtime> {
    runtime: R,
    config: ServerConfig,
    /// A key of this layer that did not parse: `run` reports it.
    config_error: Option<ConfigError>,
    /// The signal handler of `shutdown_on_signals` could not be installed: `run` reports it.
    signal_error: Option<String>,
    sources: Vec<Source>,
    handlers: Handlers,
    health: Health,
    shutdown_tx: Sender<()>,
    shutdown_rx: Receiver<()>,
    transport: TransportOptions,
    tweak: Option<Tweak>,
}

/// The handlers given to a set.
#[derive(Default)]
struct Handlers {
    /// For every source without its own.
    all: Option<Arc<dyn DynHandler>>,
    closures: FnHandlers,
    per_source: HashMap<String, Arc<dyn DynHandler>>,
}

impl<R: Runtime> fmt::Debug for ConnectorSet<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorSet")
            .field("config", &self.config)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// Reads `server.config` the way both Vantiq SDKs do: `serverConfig/server.config`, then
/// `./server.config`, relative to `dir`; the token may come from `CONNECTOR_AUTH_TOKEN`.
///
/// # Errors
/// No file found, unreadable, or invalid.
pub fn load_config_from_dir(dir: &Path) -> Result<ServerConfig, ConnectorError> {
    let candidates: Vec<PathBuf> = SEARCH_PATHS.iter().map(|p| dir.join(p)).collect();
    for path in &candidates {
        if path.is_file() {
            return load_config_file(path);
        }
    }
    Err(ConnectorError::ConfigNotFound {
        searched: candidates.iter().map(|p| p.display().to_string()).collect(),
    })
}

/// Reads one configuration file (the token may come from `CONNECTOR_AUTH_TOKEN`).
///
/// # Errors
/// Unreadable or invalid.
pub fn load_config_file(path: &Path) -> Result<ServerConfig, ConnectorError> {
    let bytes = std::fs::read(path).map_err(|error| ConnectorError::ConfigRead {
        path: path.display().to_string(),
        error,
    })?;
    let origin = path.display().to_string();
    let mut config = ServerConfig::parse_bytes(&bytes, &origin, |k| {
        (k == TOKEN_ENV).then(|| std::env::var(k).ok()).flatten()
    })?;
    crate::secrets::check_config_file_mode(path, &mut config);
    Ok(config)
}

fn os_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back on the address of a fresh allocation and the clock.
        let b = Box::new(0u8);
        let addr = std::ptr::addr_of!(*b) as usize as u64;
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return addr ^ t.rotate_left(17);
    }
    u64::from_le_bytes(bytes)
}

/// Reads the configuration the way [`ConnectorSet::from_default_config`] does: the file
/// named by the environment variable [`SERVER_CONFIG_ENV`] (`VANTIQ_SERVER_CONFIG`) when it
/// is set and not empty, otherwise `serverConfig/server.config`, then `./server.config`,
/// relative to `dir`. `env` looks environment variables up (`|k| std::env::var_os(k)` for the
/// process's own); a relative path in the variable is taken relative to `dir`.
///
/// # Errors
/// [`ConnectorError::ConfigEnvRead`] (naming the variable and the path) when the variable
/// names a file that cannot be read; otherwise as [`load_config_from_dir`] and
/// [`load_config_file`].
pub fn load_default_config(
    dir: &Path,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<ServerConfig, ConnectorError> {
    match env(SERVER_CONFIG_ENV).filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = dir.join(path);
            load_config_file(&path).map_err(|e| match e {
                ConnectorError::ConfigRead { path, error } => ConnectorError::ConfigEnvRead {
                    var: SERVER_CONFIG_ENV,
                    path,
                    error,
                },
                other => other,
            })
        }
        None => load_config_from_dir(dir),
    }
}

impl<R: Runtime + Default> ConnectorSet<R> {
    /// Loads the file named by the environment variable [`SERVER_CONFIG_ENV`]
    /// (`VANTIQ_SERVER_CONFIG`) if it is set, otherwise `serverConfig/server.config` or
    /// `./server.config` from the working directory (see [`load_default_config`]).
    ///
    /// # Errors
    /// As [`load_default_config`].
    pub fn from_default_config() -> Result<Self, ConnectorError> {
        let dir = std::env::current_dir().map_err(|error| ConnectorError::ConfigRead {
            path: ".".to_owned(),
            error,
        })?;
        Self::checked(load_default_config(&dir, |k| std::env::var_os(k))?)
    }

    /// Loads the given configuration file.
    ///
    /// # Errors
    /// As [`load_config_file`].
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Self, ConnectorError> {
        Self::checked(load_config_file(path.as_ref())?)
    }

    /// A set for `config`, refusing a key of this layer that does not parse.
    fn checked(config: ServerConfig) -> Result<Self, ConnectorError> {
        let mut set = Self::new(config);
        match set.config_error.take() {
            Some(e) => Err(e.into()),
            None => Ok(set),
        }
    }

    /// A set for an already built configuration.
    #[must_use]
    pub fn new(config: ServerConfig) -> Self {
        Self::with_runtime(R::default(), config)
    }
}

impl<R: Runtime> ConnectorSet<R> {
    /// A set on an explicit runtime value.
    #[must_use]
    pub fn with_runtime(runtime: R, mut config: ServerConfig) -> Self {
        let (mut settings, config_error) = match settings::read(&config) {
            Ok(s) => (s, None),
            Err(e) => (Settings::default(), Some(e)),
        };
        // This layer's warnings join the file's, so `config().warnings()` lists them all.
        for w in std::mem::take(&mut settings.warnings) {
            config.add_warning(w);
        }
        for w in config.warnings() {
            tracing::warn!(origin = config.origin(), "{w}");
        }
        let defaults = Limits::default();
        let queue = Bounds {
            count: defaults.application_queue,
            bytes: defaults.application_queue_bytes,
        };
        let sources = config
            .sources()
            .iter()
            .map(|name| Source::new(name.clone(), settings.query_chunk_bytes, queue))
            .collect();
        let health = Health::new(settings.health);
        let transport = settings.transport;
        let (shutdown_tx, shutdown_rx) = async_channel::bounded(1);
        ConnectorSet {
            runtime,
            config,
            config_error,
            signal_error: None,
            sources,
            handlers: Handlers::default(),
            health,
            shutdown_tx,
            shutdown_rx,
            transport,
            tweak: None,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Handles on every source, in `sources` order.
    #[must_use]
    pub fn sources(&self) -> Vec<Source> {
        self.sources.clone()
    }

    /// The handle on one source.
    #[must_use]
    pub fn source(&self, name: &str) -> Option<Source> {
        self.sources.iter().find(|s| s.name() == name).cloned()
    }

    /// The set's health: declare healthy or unhealthy, read the tri-state, see the probes'
    /// ports. With `autoHealth=true` it follows the sources by itself.
    #[must_use]
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// A handle that stops the set.
    #[must_use]
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.shutdown_tx.clone(),
        }
    }

    /// Stops the set gracefully on SIGINT (Ctrl-C), SIGTERM or SIGHUP (Ctrl-C, Ctrl-Break
    /// and console close on Windows), on any runtime, as [`ShutdownHandle::shutdown`] does:
    /// every socket closes with code 1000, close handlers run, the notifications already
    /// queued are flushed (within the close timeout), and [`run`](Self::run) returns `Ok`,
    /// so a `main` that maps `Ok` to exit status 0 exits 0.
    ///
    /// A second signal while the shutdown is under way (a flush to a slow server, a handler
    /// that does not return) ends the process at once with exit status 130, the shell's
    /// convention for a process ended by Ctrl-C: nothing more is flushed.
    ///
    /// The handler runs on a thread of its own (the `ctrlc` crate), so it needs nothing from
    /// the runtime. Only one such handler may be installed per process: when installing it
    /// fails (a second set, or another Ctrl-C handler, in the same process), `run` returns
    /// [`ConnectorError::Signals`] naming the problem.
    ///
    /// ```no_run
    /// use vantiq_connector::{ConnectorError, ConnectorSet, Runtime};
    ///
    /// async fn serve<R: Runtime + Default>() -> Result<(), ConnectorError> {
    ///     let set = ConnectorSet::<R>::from_default_config()?.shutdown_on_signals();
    ///     set.run().await // Ok(()) after SIGINT or SIGTERM
    /// }
    /// ```
    #[must_use]
    pub fn shutdown_on_signals(mut self) -> Self {
        let stop = self.shutdown_handle();
        let signalled = std::sync::atomic::AtomicBool::new(false);
        let installed = ctrlc::set_handler(move || {
            if signalled.swap(true, std::sync::atomic::Ordering::SeqCst) {
                eprintln!("second signal while shutting down: exiting at once");
                std::process::exit(130);
            }
            tracing::info!("signal received: shutting down (a second signal exits at once)");
            stop.shutdown();
        });
        if let Err(e) = installed {
            self.signal_error = Some(e.to_string());
        }
        self
    }

    /// Socket settings (message size limit, buffer sizes, TLS verification).
    pub fn transport_options(&mut self) -> &mut TransportOptions {
        &mut self.transport
    }

    /// Adjusts each source's [`ConnectionConfig`] (back-off, timeouts, keep-alive) before
    /// the set runs.
    #[must_use]
    pub fn connection_config(
        mut self,
        f: impl Fn(&mut ConnectionConfig) + Send + Sync + 'static,
    ) -> Self {
        self.tweak = Some(Box::new(f));
        self
    }

    /// Uses `handler` for every source without a handler of its own.
    #[must_use]
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handlers.all = Some(Arc::new(handler));
        self
    }

    /// Uses `handler` for the source `name` (checked when the set runs).
    #[must_use]
    pub fn source_handler(mut self, name: impl Into<String>, handler: impl Handler) -> Self {
        self.handlers
            .per_source
            .insert(name.into(), Arc::new(handler));
        self
    }

    /// Called when a source is configured, with its configuration document.
    #[must_use]
    pub fn on_connect<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Source, Json) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers.closures.set_connect(f);
        self
    }

    /// Called for each publish, with the published object.
    #[must_use]
    pub fn on_publish<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Source, Json) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers.closures.set_publish(f);
        self
    }

    /// Called for each query.
    #[must_use]
    pub fn on_query<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Source, Query) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers.closures.set_query(f);
        self
    }

    /// Called when a session ends.
    #[must_use]
    pub fn on_close<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Source, DisconnectReason) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers.closures.set_close(f);
        self
    }

    /// Runs every source until shutdown or a fatal error.
    ///
    /// The graceful way to stop is the [`ShutdownHandle`] (or, on SIGINT/SIGTERM,
    /// [`shutdown_on_signals`](Self::shutdown_on_signals)): every socket closes with code
    /// 1000, close handlers run, queued notifications are flushed within the close timeout,
    /// and this returns `Ok`. Dropping the future instead cancels at once, on every runtime:
    /// every source task and the health probes stop, sockets are dropped without a close
    /// frame, and nothing is left running.
    ///
    /// # Errors
    /// The first fatal error of any source (the others are shut down first), a handler for
    /// an unknown source, a `Handler` combined with `on_*` closures, a TLS or health probe
    /// setup failure, a signal handler that could not be installed.
    pub async fn run(mut self) -> Result<(), ConnectorError> {
        if let Some(e) = self.config_error.take() {
            return Err(e.into());
        }
        if let Some(e) = self.signal_error.take() {
            return Err(ConnectorError::Signals(e));
        }
        for name in self.handlers.per_source.keys() {
            if !self.config.sources().iter().any(|s| s == name) {
                return Err(ConnectorError::UnknownSource(name.clone()));
            }
        }
        let default: Arc<dyn DynHandler> = match self.handlers.all.take() {
            Some(_) if !self.handlers.closures.is_empty() => {
                return Err(ConnectorError::HandlerConflict);
            }
            Some(h) => h,
            None => Arc::new(std::mem::take(&mut self.handlers.closures)),
        };
        let tls = tls_config(&self.transport).map_err(|e| ConnectorError::Tls(e.to_string()))?;
        if self.transport.disable_tls_verification {
            tracing::warn!(
                "disableSslVerification is set: server certificates are NOT verified; never use this in production"
            );
        }
        let ws_config = self.transport.websocket_config();
        for s in &self.sources {
            self.health.register_source(s.name());
        }
        // From here on, however `run` ends (returns, or its future is dropped), the probes
        // stop with it.
        let _probes = ProbesGuard(self.health.clone());
        self.health.set_alive(true);
        self.health.start_http()?;
        let first_error: Arc<Mutex<Option<ConnectorError>>> = Arc::new(Mutex::new(None));
        let mut tasks = Vec::with_capacity(self.sources.len());
        for source in &self.sources {
            let mut cfg =
                ConnectionConfig::from_server_config(&self.config, source.name(), os_seed());
            crate::secrets::use_os_reconnect_secret(&mut cfg, &self.config);
            if let Some(t) = &self.tweak {
                t(&mut cfg);
            }
            source.0.commands.set_bounds(Bounds {
                count: cfg.limits.application_queue,
                bytes: cfg.limits.application_queue_bytes,
            });
            let events = Bounds {
                count: cfg.limits.pending_events,
                bytes: cfg.limits.pending_event_bytes,
            };
            let handler = self
                .handlers
                .per_source
                .get(source.name())
                .cloned()
                .unwrap_or_else(|| default.clone());
            let driver = Driver::new(DriverParts {
                conn: Connection::new(cfg, self.runtime.now()),
                runtime: self.runtime.clone(),
                source: source.clone(),
                handler,
                events,
                shutdown: self.shutdown_rx.clone(),
                link: LinkSettings {
                    tls: tls.clone(),
                    ws_config,
                    close_grace: self.transport.close_handshake_timeout,
                },
                health: self.health.clone(),
            });
            let name = source.name().to_owned();
            let first_error = first_error.clone();
            let shutdown = self.shutdown_tx.clone();
            let span = tracing::info_span!("source", name = %name);
            // `map`, not an `async` block: a block would hold the driver twice (captured,
            // then moved into the awaited future).
            let task = driver
                .run()
                .map(move |outcome| {
                    if let Some(error) = outcome {
                        let mut slot = match first_error.lock() {
                            Ok(g) => g,
                            Err(poisoned) => poisoned.into_inner(),
                        };
                        if slot.is_none() {
                            *slot = Some(ConnectorError::Fatal {
                                source_name: name,
                                error,
                            });
                        }
                        shutdown.close();
                    }
                })
                .instrument(span);
            tasks.push(self.runtime.spawn(Box::pin(task)));
        }
        futures_util::future::join_all(tasks).await;
        let result = match first_error.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        match result {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Stops the health probes when `run` ends, however it ends.
struct ProbesGuard(Health);

impl Drop for ProbesGuard {
    fn drop(&mut self) {
        self.0.set_alive(false);
        self.0.shutdown();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::test_util::SimRuntime;

    fn config(extra: &str) -> ServerConfig {
        ServerConfig::parse(
            &format!("targetServer=https://v\nauthToken=t\nsources=s\n{extra}"),
            "test/server.config",
            |_| None,
        )
        .unwrap()
    }

    struct Nothing;
    impl Handler for Nothing {}

    #[test]
    fn a_handler_with_closures_is_refused() {
        let sim = SimRuntime::new();
        let set = ConnectorSet::with_runtime(sim.clone(), config(""))
            .handler(Nothing)
            .on_publish(|_s, _m| async { Ok(()) });
        let err = sim.block_on(set.run()).unwrap_err();
        assert!(matches!(err, ConnectorError::HandlerConflict), "{err:?}");
        assert!(err.to_string().contains("use one or the other"), "{err}");
    }

    #[test]
    fn a_bad_key_of_this_layer_is_reported_by_run() {
        let sim = SimRuntime::new();
        let set = ConnectorSet::with_runtime(sim.clone(), config("tcpProbePort=x"));
        let err = sim.block_on(set.run()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "test/server.config: key `tcpProbePort`: expected a port number from 0 to 65535, found `x` (line 4)"
        );
    }
}
