//! Kubernetes health probes for Vantiq connectors, independent of any async runtime.
//!
//! A connector tells Kubernetes whether it is alive and ready through probes. This crate
//! holds the connector set's health state and serves it on two kinds of probe:
//!
//! * the **TCP probe** of both Vantiq SDKs, on `tcpProbePort` (default 8000): it is open
//!   (a connect succeeds, and the connection is closed at once) while the connector is
//!   declared healthy, and closed (a connect is refused) otherwise;
//! * an optional **HTTP probe** on `healthProbePort`: `GET /healthz` answers 200 while the
//!   connector's loop runs (liveness), `GET /readyz` answers 200 only while the connector is
//!   healthy and 503 otherwise (readiness), both with a small JSON body listing the state of
//!   each source.
//!
//! The state is a tri-state for the whole connector set: *never declared*, *healthy*,
//! *unhealthy* (the reasons are in the repository's `docs/design.md#d17-health`).
//! [`Health::declare_healthy`] opens the TCP probe **before** it records the state, so a bind
//! error is returned (its message names the port) and leaves the state unchanged — unlike
//! the Python SDK, which records healthy first and keeps claiming it after a failed bind.
//! [`Health::declare_unhealthy`] closes the probe; when it returns, a connect is refused.
//! Losing a session does not change the state by itself — unlike the Java SDK, which
//! declares the connector unhealthy on every socket close. In
//! **automatic mode** (`autoHealth=true`) the state follows the sources instead: healthy
//! while every source is configured, so a connector needs no health code at all.
//!
//! Everything runs on plain `std` threads and sockets, so the same crate serves the tokio
//! and the smol runtime crates. Each open probe has one thread blocked in `accept()`; closing
//! it wakes that thread with a loopback connect and joins it, so starting and stopping are
//! prompt and leave no thread or socket behind. [`Health::shutdown`] (or dropping the last
//! clone of a [`Health`]) stops everything; afterwards the probes can be opened again.
//!
//! The connector set of `vantiq-connector` (re-exported by the runtime crates) builds and
//! drives a [`Health`] from `server.config` by itself; a connector only declares healthy or
//! unhealthy through `ConnectorSet::health()`, or sets `autoHealth=true`. Use this crate
//! directly for probes around a runtime or transport of your own. It has no feature flags.
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{Ipv4Addr, TcpStream};
//! use vantiq_health::{Health, HealthConfig, ConnectionState};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let health = Health::new(HealthConfig {
//!     tcp_port: 0,                       // any free port (Kubernetes would use a fixed one)
//!     http_port: Some(0),
//!     bind: Ipv4Addr::LOCALHOST.into(),
//!     auto: true,                        // readiness follows the sources
//!     ..HealthConfig::default()
//! });
//! let http_port = health.start_http()?.expect("an HTTP port is configured");
//! health.register_source("pumps");
//! assert_eq!(health.is_healthy(), None); // never declared
//!
//! // The runtime reports that the source is configured: the connector becomes healthy.
//! health.set_source_state("pumps", ConnectionState::Configured);
//! assert_eq!(health.is_healthy(), Some(true));
//! let tcp_port = health.tcp_probe_port().expect("the TCP probe is open");
//! TcpStream::connect((Ipv4Addr::LOCALHOST, tcp_port))?;
//!
//! let mut http = TcpStream::connect((Ipv4Addr::LOCALHOST, http_port))?;
//! http.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
//! let mut answer = String::new();
//! http.read_to_string(&mut answer)?;
//! assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
//! assert!(answer.ends_with(r#"{"status":"ready","sources":{"pumps":"configured"}}"#));
//!
//! // The source loses its session: not ready, and the TCP probe refuses connects.
//! health.set_source_state("pumps", ConnectionState::WaitingToReconnect);
//! assert_eq!(health.is_healthy(), Some(false));
//! assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, tcp_port)).is_err());
//!
//! health.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! # Wiring into a runtime
//!
//! Build a [`HealthConfig`] from `server.config` (`tcpProbePort`, `healthProbePort`,
//! `autoHealth`), create one [`Health`] per connector set, call [`Health::start_http`] when
//! the set starts, [`Health::register_source`] for each source, [`Health::set_source_state`]
//! on every change of a source, and [`Health::set_alive`]`(false)` then
//! [`Health::shutdown`] when the set's run ends. Every call is synchronous and short (opening
//! or closing a probe takes a bind or a loopback connect and a thread join), so it may be
//! made from async code.

mod config;
mod deferred;
mod error;
mod http;
mod listener;
mod state;
mod sync;

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use config::{DEFAULT_HTTP_TIMEOUT, DEFAULT_TCP_PROBE_PORT, HealthConfig};
pub use error::{HealthError, Probe};
pub use state::{HealthReport, Readiness};
/// The state of a source, as the SDK reports it (one vocabulary for the whole SDK).
pub use vantiq_proto::ConnectionState;

use deferred::{Deferred, Worker};
use listener::{AcceptLoop, accept_until_stopped};
use state::Shared;
use sync::lock;

/// The health state of a connector set and its probes.
///
/// Cheap to clone: clones share one state. `Send + Sync`. Dropping the last clone stops the
/// probes (as [`Health::shutdown`] does).
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: HealthConfig,
    /// Held while a probe is opened or closed, so that concurrent declarations apply in
    /// order. Lock order: `control`, then `shared.data`; the probe threads only ever take
    /// `shared.data`, so joining them under `control` cannot deadlock.
    control: Mutex<Control>,
    shared: Arc<Shared>,
    /// Automatic mode's background worker.
    deferred: Arc<Deferred>,
}

#[derive(Default)]
struct Control {
    tcp: Option<AcceptLoop>,
    http: Option<AcceptLoop>,
}

impl Health {
    /// Creates the health state (never declared, alive, no sources). Starts nothing.
    pub fn new(cfg: HealthConfig) -> Self {
        Health {
            inner: Arc::new(Inner {
                cfg,
                control: Mutex::new(Control::default()),
                shared: Arc::new(Shared::new()),
                deferred: Arc::default(),
            }),
        }
    }

    /// The configuration this was created with.
    pub fn config(&self) -> &HealthConfig {
        &self.inner.cfg
    }

    /// Declares the connector healthy: opens the TCP probe on `tcpProbePort` (if it is not
    /// open yet), then records the state.
    ///
    /// Idempotent. When the port cannot be bound (e.g. it is in use), returns
    /// [`HealthError::Bind`], whose message names the port, and leaves the state unchanged.
    pub fn declare_healthy(&self) -> Result<(), HealthError> {
        self.inner.deferred.resume();
        let mut ctl = lock(&self.inner.control);
        self.inner.healthy_locked(&mut ctl)
    }

    /// Declares the connector unhealthy: closes the TCP probe, then records the state. When
    /// this returns `Ok`, a connect to the probe's port is refused.
    ///
    /// Idempotent. Fails only if the probe's thread cannot be woken (see
    /// [`HealthError::Stop`]); the state is then unchanged.
    pub fn declare_unhealthy(&self) -> Result<(), HealthError> {
        self.inner.deferred.resume();
        let mut ctl = lock(&self.inner.control);
        self.inner.unhealthy_locked(&mut ctl)
    }

    /// The tri-state: `None` if never declared, `Some(true)` if healthy, `Some(false)` if
    /// unhealthy.
    pub fn is_healthy(&self) -> Option<bool> {
        lock(&self.inner.shared.data).healthy
    }

    /// The port the TCP probe listens on, while it is open (the actual port, useful with
    /// `tcpProbePort=0`).
    pub fn tcp_probe_port(&self) -> Option<u16> {
        lock(&self.inner.shared.data).tcp_port
    }

    /// Starts the HTTP probe if `healthProbePort` is configured and returns the port it
    /// listens on (the actual port, useful with `0`); `Ok(None)` when no HTTP probe is
    /// configured. Idempotent: while it runs, returns its port.
    ///
    /// `GET /healthz` answers 200 `{"status":"alive"}` while [alive](Self::set_alive), else
    /// 503 `{"status":"not alive"}`. `GET /readyz` answers 200 while healthy, else 503, with
    /// [`HealthReport::readyz_json`], e.g. `{"status":"ready","sources":{"a":"configured"}}`.
    /// `HEAD` answers the same without the body. Other paths get 404, other methods 405,
    /// anything that is not HTTP/1.x 400, an oversized head 431, a client that does not send
    /// its request within [`HealthConfig::http_timeout`] 408.
    pub fn start_http(&self) -> Result<Option<u16>, HealthError> {
        let Some(port) = self.inner.cfg.http_port else {
            return Ok(None);
        };
        self.inner.deferred.resume();
        let mut ctl = lock(&self.inner.control);
        if let Some(http) = &ctl.http {
            return Ok(Some(http.local_addr().port()));
        }
        let addr = SocketAddr::new(self.inner.cfg.bind, port);
        let listener = bind(Probe::Http, addr)?;
        let shared = Arc::clone(&self.inner.shared);
        let timeout = self.inner.cfg.http_timeout;
        let http = AcceptLoop::spawn(
            listener,
            "vantiq-health-http",
            &self.inner.shared.threads,
            move |listener, stop| http::serve(listener, stop, &shared, timeout),
        )
        .map_err(|e| HealthError::Spawn {
            probe: Probe::Http,
            port,
            source: Arc::new(e),
        })?;
        let bound = http.local_addr();
        tracing::info!(addr = %bound, "HTTP health probe listening (/healthz, /readyz)");
        ctl.http = Some(http);
        lock(&self.inner.shared.data).http_port = Some(bound.port());
        Ok(Some(bound.port()))
    }

    /// The port the HTTP probe listens on, while it runs.
    pub fn http_probe_port(&self) -> Option<u16> {
        lock(&self.inner.shared.data).http_port
    }

    /// Sets what `GET /healthz` reports: whether the connector's loop runs. `true` from
    /// [`Health::new`]; set it to `false` when the connector's run ends.
    pub fn set_alive(&self, alive: bool) {
        lock(&self.inner.shared.data).alive = alive;
    }

    /// Whether the connector's loop runs, as last set by [`Health::set_alive`].
    pub fn is_alive(&self) -> bool {
        lock(&self.inner.shared.data).alive
    }

    /// Registers a source (state [`ConnectionState::Connecting`]) so that `/readyz` lists it and
    /// automatic mode waits for it. Registering a name again keeps its state.
    ///
    /// In automatic mode, a connector that was healthy becomes unhealthy until the new
    /// source is configured.
    pub fn register_source(&self, name: &str) {
        self.inner.deferred.resume();
        let mut ctl = lock(&self.inner.control);
        lock(&self.inner.shared.data)
            .sources
            .entry(name.to_owned())
            .or_insert(ConnectionState::Connecting);
        if self.inner.cfg.auto {
            self.inner.apply_auto(&mut ctl);
            let _ = self.inner.deferred.start(Arc::downgrade(&self.inner));
        }
    }

    /// Records a source's state (registering it if needed).
    ///
    /// In automatic mode, then declares the connector healthy if every registered source is
    /// [`ConnectionState::Configured`], and unhealthy if it was healthy and one no longer is
    /// (before the first time every source is configured, the state stays *never
    /// declared*). A declaration that fails is logged and kept in [`Health::last_error`];
    /// the next call retries it. Never panics.
    pub fn set_source_state(&self, name: &str, state: ConnectionState) {
        let mut ctl = lock(&self.inner.control);
        {
            let mut data = lock(&self.inner.shared.data);
            match data.sources.get_mut(name) {
                Some(s) => *s = state,
                None => {
                    data.sources.insert(name.to_owned(), state);
                }
            }
        }
        if self.inner.cfg.auto {
            self.inner.apply_auto(&mut ctl);
        }
    }

    /// Records a source's state and returns at once, for callers that must not block (an
    /// async task): [`Health::source_state`] and the `sources` of `/readyz` show it
    /// immediately; in automatic mode the declaration it may cause (opening or closing the
    /// TCP probe, the `status` of `/readyz`) is made by a background thread right after.
    /// [`Health::wait_settled`] waits for it.
    pub fn report_source_state(&self, name: &str, state: ConnectionState) {
        {
            let mut data = lock(&self.inner.shared.data);
            match data.sources.get_mut(name) {
                Some(s) => *s = state,
                None => {
                    data.sources.insert(name.to_owned(), state);
                }
            }
        }
        if !self.inner.cfg.auto {
            return;
        }
        match self.inner.deferred.start(Arc::downgrade(&self.inner)) {
            Worker::Running => self.inner.deferred.request(),
            // Stopped with the probes: recorded, nothing opened.
            Worker::Shut => {}
            Worker::Failed => self.inner.apply_auto_now(),
        }
    }

    /// Waits until the declarations caused by every state reported so far with
    /// [`Health::report_source_state`] are made, at most `timeout`. True if they are.
    pub fn wait_settled(&self, timeout: Duration) -> bool {
        self.inner.deferred.wait(timeout)
    }

    /// A source's state, if it is registered.
    pub fn source_state(&self, name: &str) -> Option<ConnectionState> {
        lock(&self.inner.shared.data).sources.get(name).copied()
    }

    /// The most recent error of a declaration (made directly or by automatic mode), cleared
    /// when a later declaration succeeds.
    pub fn last_error(&self) -> Option<HealthError> {
        lock(&self.inner.shared.data).last_error.clone()
    }

    /// A snapshot of the whole state (what `GET /readyz` reports).
    pub fn report(&self) -> HealthReport {
        self.inner.shared.snapshot()
    }

    /// How many probe threads run right now (one per open probe, plus one per HTTP request
    /// being served). Zero after [`Health::shutdown`]; for diagnostics and leak tests.
    pub fn probe_threads(&self) -> usize {
        self.inner.shared.threads.get()
    }

    /// Stops both probes: closes their sockets (and every open HTTP connection) and joins
    /// their threads. A connector that was healthy is now unhealthy (nothing answers for
    /// it); a state never declared stays so. Sources and liveness are kept.
    ///
    /// Automatic mode stops with them: states reported afterwards are recorded
    /// ([`Health::source_state`], `/readyz`) but open nothing, so that sources that end after
    /// the probes (a cancelled connector set's) do not start it again.
    ///
    /// Afterwards the probes can be opened again ([`Health::declare_healthy`],
    /// [`Health::start_http`], [`Health::register_source`], which also resume automatic
    /// mode) — unlike the Python SDK, whose closed probe can never reopen. A probe whose thread cannot be woken is detached (it exits on its next
    /// connection) and the error kept in [`Health::last_error`].
    pub fn shutdown(&self) {
        self.inner.deferred.stop();
        let mut ctl = lock(&self.inner.control);
        self.inner.shutdown_locked(&mut ctl);
    }
}

impl Inner {
    fn healthy_locked(&self, ctl: &mut Control) -> Result<(), HealthError> {
        let result = self.open_tcp(ctl);
        let mut data = lock(&self.shared.data);
        match result {
            Ok(port) => {
                data.healthy = Some(true);
                data.tcp_port = Some(port);
                data.last_error = None;
                Ok(())
            }
            Err(e) => {
                data.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Opens the TCP probe if it is not open; returns its port.
    fn open_tcp(&self, ctl: &mut Control) -> Result<u16, HealthError> {
        if let Some(tcp) = &ctl.tcp {
            return Ok(tcp.local_addr().port());
        }
        let addr = SocketAddr::new(self.cfg.bind, self.cfg.tcp_port);
        let listener = bind(Probe::Tcp, addr)?;
        let tcp = AcceptLoop::spawn(
            listener,
            "vantiq-health-tcp",
            &self.shared.threads,
            |listener, stop| accept_until_stopped(&listener, stop, drop),
        )
        .map_err(|e| HealthError::Spawn {
            probe: Probe::Tcp,
            port: addr.port(),
            source: Arc::new(e),
        })?;
        let bound = tcp.local_addr();
        tracing::debug!(addr = %bound, "TCP health probe open");
        ctl.tcp = Some(tcp);
        Ok(bound.port())
    }

    fn unhealthy_locked(&self, ctl: &mut Control) -> Result<(), HealthError> {
        let result = close(&mut ctl.tcp, Probe::Tcp);
        let mut data = lock(&self.shared.data);
        match result {
            Ok(()) => {
                data.healthy = Some(false);
                data.tcp_port = None;
                data.last_error = None;
                Ok(())
            }
            Err(e) => {
                data.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Automatic mode, for the background worker.
    fn apply_auto_now(&self) {
        let mut ctl = lock(&self.control);
        self.apply_auto(&mut ctl);
    }

    /// Automatic mode: makes the state follow the sources.
    fn apply_auto(&self, ctl: &mut Control) {
        let (want, healthy) = {
            let data = lock(&self.shared.data);
            (data.all_configured(), data.healthy)
        };
        let result = if want {
            self.healthy_locked(ctl)
        } else if healthy == Some(true) {
            self.unhealthy_locked(ctl)
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "automatic health: declaration failed; retried on the next source change");
        }
    }

    fn shutdown_locked(&self, ctl: &mut Control) {
        let tcp = close(&mut ctl.tcp, Probe::Tcp);
        let http = close(&mut ctl.http, Probe::Http);
        // A probe that could not be stopped is detached: dropping it leaves its thread to
        // exit on its next connection.
        ctl.tcp = None;
        ctl.http = None;
        let mut data = lock(&self.shared.data);
        if data.healthy == Some(true) {
            data.healthy = Some(false);
        }
        data.tcp_port = None;
        data.http_port = None;
        for e in [tcp.err(), http.err()].into_iter().flatten() {
            tracing::warn!(error = %e, "health probe shutdown");
            data.last_error = Some(e);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.deferred.stop();
        let ctl = self
            .control
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut taken = std::mem::take(ctl);
        self.shutdown_locked(&mut taken);
    }
}

/// Binds a probe's listener.
fn bind(probe: Probe, addr: SocketAddr) -> Result<TcpListener, HealthError> {
    TcpListener::bind(addr).map_err(|e| HealthError::Bind {
        probe,
        addr,
        source: Arc::new(e),
    })
}

/// Closes a probe if it is open; on failure it stays in `slot`.
fn close(slot: &mut Option<AcceptLoop>, probe: Probe) -> Result<(), HealthError> {
    let Some(running) = slot else {
        return Ok(());
    };
    let port = running.local_addr().port();
    match running.stop() {
        Ok(()) => {
            tracing::debug!(port, "{probe} health probe closed");
            *slot = None;
            Ok(())
        }
        Err(e) => Err(HealthError::Stop {
            probe,
            port,
            source: Arc::new(e),
        }),
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("config", &self.inner.cfg)
            .field("report", &self.report())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn health_is_send_sync() {
        assert_send_sync::<Health>();
        assert_send_sync::<HealthError>();
        assert_send_sync::<HealthReport>();
    }

    #[test]
    fn debug_shows_state() {
        let h = Health::new(HealthConfig::default());
        let s = format!("{h:?}");
        assert!(s.contains("healthy: None"), "{s}");
    }

    #[test]
    fn start_http_without_port_is_none() {
        let h = Health::new(HealthConfig::default());
        assert_eq!(h.start_http().unwrap(), None);
        assert_eq!(h.http_probe_port(), None);
        assert_eq!(h.probe_threads(), 0);
    }

    /// Automatic health with a TCP probe on loopback and one source, `a`.
    fn auto_health_with_source_a() -> Health {
        let h = Health::new(HealthConfig {
            auto: true,
            tcp_port: 0,
            bind: std::net::Ipv4Addr::LOCALHOST.into(),
            ..HealthConfig::default()
        });
        h.register_source("a");
        h
    }

    /// `shutdown` joins the automatic-mode worker. If the probes are opened again while the
    /// worker is busy and `shutdown` already took its handle, a report starts a new worker;
    /// the old one must still see that it was told to stop, or `shutdown` waits for it
    /// forever (as it did when a cancelled connector set's sources reported `Closed` while
    /// its probes shut down).
    #[test]
    fn shutdown_joins_a_busy_worker_even_if_another_starts_meanwhile() {
        let h = auto_health_with_source_a();
        // Keep the worker busy: it blocks on `control` while applying this report.
        let ctl = lock(&h.inner.control);
        h.report_source_state("a", ConnectionState::Configured);
        let (done_tx, done) = std::sync::mpsc::channel();
        let stopper = {
            let h = h.clone();
            std::thread::spawn(move || {
                h.shutdown();
                let _ = done_tx.send(());
            })
        };
        // `shutdown` has taken the worker's handle once no worker is running.
        while h.inner.deferred.running() {
            std::thread::yield_now();
        }
        // The probes are opened again meanwhile: automatic mode resumes.
        h.inner.deferred.resume();
        h.report_source_state("a", ConnectionState::Connecting);
        assert!(
            h.inner.deferred.running(),
            "the report started a new worker"
        );
        drop(ctl);
        assert!(
            done.recv_timeout(Duration::from_secs(10)).is_ok(),
            "shutdown did not return: the old worker missed its stop"
        );
        stopper.join().unwrap();
        // The last report (not configured) wins, whichever worker applied what.
        assert!(h.wait_settled(Duration::from_secs(10)));
        assert_ne!(h.is_healthy(), Some(true));
        assert_eq!(h.tcp_probe_port(), None);
    }

    /// After `shutdown`, sources that report their end (a cancelled connector set's, whose
    /// tasks end after its probes) start no worker and open nothing; opening a probe again
    /// resumes automatic mode.
    #[test]
    fn reports_after_shutdown_start_nothing_until_a_probe_opens_again() {
        let h = auto_health_with_source_a();
        h.report_source_state("a", ConnectionState::Configured);
        assert!(h.wait_settled(Duration::from_secs(10)));
        assert!(h.tcp_probe_port().is_some());
        h.shutdown();
        assert!(!h.inner.deferred.running());
        h.report_source_state("a", ConnectionState::Closed);
        h.report_source_state("a", ConnectionState::Configured);
        assert!(!h.inner.deferred.running(), "a report restarted the worker");
        assert!(h.wait_settled(Duration::from_secs(10)));
        assert_eq!(h.source_state("a"), Some(ConnectionState::Configured));
        assert_eq!(h.tcp_probe_port(), None, "a report opened a probe");
        assert_eq!(h.probe_threads(), 0);
        // Opening a probe again resumes automatic mode.
        h.declare_unhealthy().unwrap();
        h.report_source_state("a", ConnectionState::Configured);
        assert!(h.inner.deferred.running());
        assert!(h.wait_settled(Duration::from_secs(10)));
        assert!(h.tcp_probe_port().is_some());
        h.shutdown();
    }
}
