//! Harness for the end-to-end tests: write a scenario once, run it on both runtimes.
//!
//! The embedded server ([`vantiq_testkit::TestServer`]) runs on a tokio runtime of its own
//! ([`Kit`]); the connector under test runs on the runtime of the test ([`TestRuntime`]:
//! tokio or smol). Scenario code awaits server operations through [`Kit`] and [`KitSource`],
//! which hop onto the server's runtime, so the same `async fn` works under either runtime.
//! Every wait is event-driven with a timeout that names what was awaited.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vantiq_connector::{ConnectorError, ConnectorSet, Runtime, ServerConfig, ShutdownHandle};
use vantiq_proto::Json;
use vantiq_testkit::{QueryResult, SourceHandle, TestServer, TestServerBuilder, TestkitError};

pub mod faults;
pub mod logs;
pub mod proxy;
pub mod wiretap;

pub use vantiq_connector_smol::Smol;

/// The repository README's code blocks, compiled as doc tests so they stay true (here, as
/// the README lies outside every published package).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The code blocks of docs/guide.md, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
pub struct GuideDoctests;
pub use vantiq_connector_tokio::Tokio;

/// How long any single wait in a scenario may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A runtime the scenarios run on.
pub trait TestRuntime: Runtime + Default {
    /// Runs a future to completion on this runtime.
    fn block_on<F: Future>(f: F) -> F::Output;
}

impl TestRuntime for Tokio {
    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f)
    }
}

impl TestRuntime for Smol {
    fn block_on<F: Future>(f: F) -> F::Output {
        smol::block_on(f)
    }
}

/// Runs a scenario on runtime `R`, with test logging when `RUST_LOG` is set.
pub fn run<R: TestRuntime, Fut: Future<Output = ()>>(scenario: impl FnOnce() -> Fut) {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let _watchdog = Watchdog::start(SCENARIO_LIMIT);
    R::block_on(scenario());
}

/// How long a whole scenario, its runtime's teardown included, may take. Every wait inside a
/// scenario is bounded by [`WAIT`]; a scenario that outlives this is stuck where no timer
/// can reach it (a blocked thread, a drop that waits), and the watchdog ends the process
/// with the test's name rather than leaving CI to time out.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(300);

/// Aborts the process if it is not dropped within its limit.
struct Watchdog {
    _done: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn start(limit: Duration) -> Watchdog {
        let (done, rx) = std::sync::mpsc::channel::<()>();
        let name = std::thread::current()
            .name()
            .unwrap_or("a scenario")
            .to_owned();
        let watched = name.clone();
        let spawned = std::thread::Builder::new()
            .name("scenario-watchdog".to_owned())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    eprintln!(
                        "{watched} is stuck: it did not finish (teardown included) within \
                         {limit:?}; aborting the test process"
                    );
                    std::process::abort();
                }
            });
        if let Err(e) = spawned {
            eprintln!("{name}: no watchdog ({e})");
        }
        Watchdog { _done: done }
    }
}

/// Declares scenarios (generic `async fn name<R: TestRuntime>()`) and generates a test per
/// runtime: `on_tokio::name` and `on_smol::name`.
#[macro_export]
macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod on_tokio {
            $( #[test] fn $name() { $crate::run::<$crate::Tokio, _>(super::$name::<$crate::Tokio>) } )*
        }
        mod on_smol {
            $( #[test] fn $name() { $crate::run::<$crate::Smol, _>(super::$name::<$crate::Smol>) } )*
        }
    };
}

/// The embedded Vantiq server on its own tokio runtime.
pub struct Kit {
    rt: Option<tokio::runtime::Runtime>,
    server: Arc<TestServer>,
}

impl Drop for Kit {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn kit_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("testkit")
        .enable_all()
        .build()
        .expect("testkit runtime")
}

impl Kit {
    /// Starts a server on `127.0.0.1:0` configured by `build`.
    pub async fn start(build: impl FnOnce(TestServerBuilder) -> TestServerBuilder) -> Kit {
        let rt = kit_runtime();
        let builder = build(TestServer::builder());
        let server = rt
            .spawn(builder.start())
            .await
            .expect("testkit start task")
            .expect("testkit server start");
        Kit {
            rt: Some(rt),
            server: Arc::new(server),
        }
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime present until drop")
    }

    /// Runs `fut` on the server's runtime and waits for it.
    pub async fn on<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        self.rt().spawn(fut).await.expect("testkit task panicked")
    }

    /// Runs `fut` on the server's runtime without waiting for it; await the handle (from any
    /// runtime) for its output.
    pub fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.rt().spawn(fut)
    }

    /// Waits `d` (on the server's clock).
    pub async fn sleep(&self, d: Duration) {
        // The sleep must be created on the server's runtime (it needs tokio's timer).
        self.on(async move { tokio::time::sleep(d).await }).await;
    }

    /// Fails the test if `fut` does not finish within `d`.
    pub async fn within<T>(&self, d: Duration, what: &str, fut: impl Future<Output = T>) -> T {
        let fut = std::pin::pin!(fut);
        let timer = std::pin::pin!(self.sleep(d));
        match futures_util::future::select(fut, timer).await {
            futures_util::future::Either::Left((v, _)) => v,
            futures_util::future::Either::Right(_) => panic!("{what} did not happen within {d:?}"),
        }
    }

    /// The server.
    pub fn server(&self) -> &TestServer {
        &self.server
    }

    /// `targetServer` for this server.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A source of the server.
    pub fn source(&self, name: &str) -> KitSource<'_> {
        KitSource {
            kit: self,
            handle: self
                .server
                .source(name)
                .expect("source defined on the test server"),
        }
    }

    /// A configuration for this server: `targetServer`, `authToken=T`, `sources`, plus `extra`
    /// lines (which may override the first ones).
    pub fn config(&self, sources: &[&str], extra: &str) -> ServerConfig {
        config_for(&self.url(), sources, extra)
    }
}

/// A configuration for `url` (see [`Kit::config`]).
pub fn config_for(url: &str, sources: &[&str], extra: &str) -> ServerConfig {
    let text = format!(
        "targetServer={url}\nauthToken=T\nsources={}\nsendPings=true\ntcpProbePort=0\n{extra}\n",
        sources.join(",")
    );
    ServerConfig::parse(&text, "e2e/server.config", |_| None).expect("test configuration")
}

/// A scratch directory `vantiq-e2e-<name>-<pid>` holding `serverConfig/server.config` with
/// `text`, for a connector process started in it.
pub fn config_dir(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vantiq-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("serverConfig")).expect("scratch directory");
    std::fs::write(dir.join("serverConfig/server.config"), text).expect("server.config");
    dir
}

/// A free loopback address (bound, then released) for a server that starts later.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Starts a server later, on a given address.
pub async fn kit_at(
    addr: SocketAddr,
    build: impl FnOnce(TestServerBuilder) -> TestServerBuilder,
) -> Kit {
    Kit::start(|b| build(b.bind(addr))).await
}

/// A server-side source, with every operation hopping onto the server's runtime.
pub struct KitSource<'k> {
    kit: &'k Kit,
    handle: SourceHandle,
}

impl KitSource<'_> {
    /// The testkit handle (for its synchronous accessors).
    pub fn handle(&self) -> &SourceHandle {
        &self.handle
    }

    /// Publishes `object`.
    pub async fn publish(&self, object: serde_json::Value) {
        let h = self.handle.clone();
        self.kit
            .on(async move { h.publish(Json::from(object)).await })
            .await
            .expect("publish");
    }

    /// Runs a query and waits for its final reply (success or error reply).
    pub async fn query(&self, params: serde_json::Value) -> QueryResult {
        match self.try_query(params).await {
            Ok(r) => r,
            Err(TestkitError::QueryFailed { result, .. }) => *result,
            Err(e) => panic!("query: {e}"),
        }
    }

    /// Runs a query; the error if it fails (timeout, not connected).
    pub async fn try_query(&self, params: serde_json::Value) -> Result<QueryResult, TestkitError> {
        let h = self.handle.clone();
        self.kit
            .on(async move { h.query_with_timeout(Json::from(params), WAIT).await })
            .await
    }

    /// Waits until the source is configured; returns the configuration sent.
    pub async fn wait_configured(&self) -> Json {
        let h = self.handle.clone();
        self.kit
            .on(async move { h.wait_configured(WAIT).await })
            .await
            .expect("source configured")
    }

    /// Waits until the server has accepted `n` connections for the source in all.
    pub async fn wait_connections(&self, n: u64) {
        let h = self.handle.clone();
        self.kit
            .on(async move { h.wait_connections(n, WAIT).await })
            .await
            .expect("connections");
    }

    /// Waits until `n` connectExtension attempts arrived in all.
    pub async fn wait_connect_attempts(&self, n: u64) {
        let h = self.handle.clone();
        self.kit
            .on(async move { h.wait_connect_attempts(n, WAIT).await })
            .await
            .expect("connect attempts");
    }

    /// Waits until the source has no live connection.
    pub async fn wait_disconnected(&self) {
        let h = self.handle.clone();
        self.kit
            .on(async move { h.wait_disconnected(WAIT).await })
            .await
            .expect("disconnect");
    }

    /// Waits until at least `n` notifications arrived in all; returns all of them as values
    /// (see [`KitSource::notifications_json`] when one may have no tree form).
    pub async fn notifications(&self, n: usize) -> Vec<serde_json::Value> {
        self.notifications_json(n)
            .await
            .iter()
            .map(|j| j.to_value().expect("a notification tree"))
            .collect()
    }

    /// Waits until at least `n` notifications arrived in all; returns all of them as sent.
    pub async fn notifications_json(&self, n: usize) -> Vec<Json> {
        let h = self.handle.clone();
        self.kit
            .on(async move { h.wait_notifications(n, WAIT).await })
            .await
            .expect("notifications")
    }

    /// Sends `reconnectRequired`, with a new configuration if given.
    pub async fn reconnect_required(&self, config: Option<serde_json::Value>) {
        let h = self.handle.clone();
        self.kit
            .on(async move { h.reconnect_required(config.map(Json::from)).await })
            .await
            .expect("reconnectRequired");
    }

    /// Drops the connection abruptly.
    pub async fn drop_connection(&self) {
        let h = self.handle.clone();
        self.kit
            .on(async move { h.drop_connection().await })
            .await
            .expect("drop");
    }

    /// Sends a raw frame.
    pub async fn send_raw(&self, frame: vantiq_testkit::RawFrame) {
        let h = self.handle.clone();
        self.kit
            .on(async move { h.send_raw(frame).await })
            .await
            .expect("send_raw");
    }
}

/// A connector set running in a task of the test's runtime.
pub struct Running<R: TestRuntime> {
    stop: ShutdownHandle,
    result: async_channel::Receiver<Result<(), ConnectorError>>,
    _task: R::Task,
}

/// Spawns `set.run()` on the current runtime.
pub fn start<R: TestRuntime>(set: ConnectorSet<R>) -> Running<R> {
    let stop = set.shutdown_handle();
    let (tx, rx) = async_channel::bounded(1);
    let task = R::default().spawn(Box::pin(async move {
        let r = set.run().await;
        let _ = tx.send(r).await;
    }));
    Running {
        stop,
        result: rx,
        _task: task,
    }
}

impl<R: TestRuntime> Running<R> {
    /// Waits for `run()` to return (without asking it to).
    pub async fn result(&self, kit: &Kit) -> Result<(), ConnectorError> {
        kit.within(WAIT, "run() returning", self.result.recv())
            .await
            .expect("run() result")
    }

    /// Shuts the set down and waits for `run()` to return.
    pub async fn stop(self, kit: &Kit) -> Result<(), ConnectorError> {
        self.stop.shutdown();
        self.result(kit).await
    }

    /// Drops the `run()` future without asking it to stop: cancellation.
    pub fn cancel(self) {
        drop(self);
    }

    /// The shutdown handle.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }
}

/// Milliseconds since `t`, for messages.
pub fn ms_since(t: Instant) -> u128 {
    t.elapsed().as_millis()
}
