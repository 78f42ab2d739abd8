//! What the driver tests share: each test plays Vantiq on the far end of the in-memory pipes
//! of a `SimRuntime` with the sans-IO server (`SimServer`), and controls when it reads and
//! writes, so it decides exactly what the driver sees and when (a close frame mid-burst, a
//! socket that stops reading, pings without reading).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code,
    unreachable_pub
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vantiq_connector::test_util::{SimJoin, SimPeer, SimRuntime, SimServer};
use vantiq_connector::{ConnectorError, ConnectorSet, Json, ServerConfig, ShutdownHandle, Source};
use vantiq_proto::frame::ClientFrame;
use vantiq_proto::server::ServerOptions;

/// The source every test uses.
pub const SOURCE: &str = "s1";

/// A `server.config` for one source on the simulated network.
pub fn config(extra: &str) -> ServerConfig {
    let text = format!(
        "targetServer=http://sim.invalid:8080\nauthToken=T\nsources={SOURCE}\ntcpProbePort=0\n{extra}"
    );
    ServerConfig::parse(&text, "sim/server.config", |_| None).unwrap()
}

/// A connector set on the simulation, with short back-off. `VANTIQ_TEST_LOG=debug` (any
/// filter) prints the driver's logs.
pub fn set(sim: &SimRuntime, extra: &str) -> ConnectorSet<SimRuntime> {
    if let Ok(filter) = std::env::var("VANTIQ_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    ConnectorSet::with_runtime(sim.clone(), config(extra)).connection_config(|c| {
        c.backoff.initial = Duration::from_millis(100);
        c.backoff.max = Duration::from_millis(400);
    })
}

/// A connector set running on the simulation: [`SOURCE`]'s handle, the shutdown handle, and
/// the task running the set.
pub struct Running {
    pub source: Source,
    pub stop: ShutdownHandle,
    pub run: SimJoin<Result<(), ConnectorError>>,
}

/// Starts `set` as a task of the simulation.
pub fn start(sim: &SimRuntime, set: ConnectorSet<SimRuntime>) -> Running {
    let source = set.source(SOURCE).unwrap();
    let stop = set.shutdown_handle();
    let run = sim.spawn_task(set.run());
    Running { source, stop, run }
}

/// Accepts the next connection and serves it until the connector, too, sees its source
/// configured.
pub async fn session(server: &SimServer, source: &Source) -> SimPeer {
    let peer = server.session().await.unwrap();
    source.wait_configured().await.unwrap();
    peer
}

/// The server every test plays: the sans-IO server (`vantiq_proto::server`) on the far end
/// of the simulation's pipes, with [`SOURCE`] configured as `{}`, the token `T`, and no
/// acknowledgements of notifications (a test that wants them turns them on).
pub fn server(sim: &SimRuntime) -> SimServer {
    let mut options = ServerOptions::default();
    options.token = Some("T".into());
    options.ack_notifications = false;
    let server = SimServer::new(sim, options);
    server.define_source(SOURCE, Json::empty_object());
    server
}

/// Valid JSON text as `Json`.
pub fn json(text: &str) -> Json {
    Json::from_string(text.to_owned()).unwrap()
}

/// Reads notifications `{"n": k}` until the socket ends (or a close frame arrives), or until
/// `until` of them.
pub async fn numbers(peer: &mut SimPeer, until: Option<usize>) -> Vec<u64> {
    let mut got = Vec::new();
    while until.is_none_or(|n| got.len() < n) {
        match peer.next_frame().await {
            Some(ClientFrame::Notification { object, .. }) => {
                got.push(object.to_value().unwrap()["n"].as_u64().unwrap());
            }
            Some(_) => {}
            None => break,
        }
    }
    got
}

/// Publishes `make(0)` … `make(total - 1)` from a task of its own, counting the publishes
/// written; gives the peer back at the end (or when the socket fails).
pub fn publisher(
    sim: &SimRuntime,
    mut peer: SimPeer,
    total: u64,
    make: impl Fn(u64) -> String + Send + 'static,
) -> (SimJoin<SimPeer>, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let task = sim.spawn_task(async move {
        for n in 0..total {
            if peer.publish(json(&make(n))).await.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        peer
    });
    (task, sent)
}

/// Waits until `counter` has not moved for `quiet` of virtual time; returns its value.
pub async fn until_stable(sim: &SimRuntime, counter: &AtomicU64, quiet: Duration) -> u64 {
    let mut last = counter.load(Ordering::SeqCst);
    loop {
        sim.sleep(quiet).await;
        let now = counter.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Hands `{"n": k, "pad": pad}` notifications over until the SDK takes no more without
/// waiting (refused twice with a millisecond between); returns how many it took.
pub async fn fill(sim: &SimRuntime, source: &vantiq_connector::Source, pad: &str) -> u64 {
    let mut taken = 0u64;
    let mut refused = 0;
    while refused < 2 {
        match source.try_notify(&serde_json::json!({ "n": taken, "pad": pad })) {
            Ok(()) => {
                taken += 1;
                refused = 0;
            }
            Err(vantiq_connector::TryNotifyError::Full(_)) => {
                refused += 1;
                sim.sleep(Duration::from_millis(1)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    taken
}

/// Log lines captured from the driver (a `tracing` subscriber writing into memory).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures the current thread's logs at `level` until the guard drops.
    pub fn capture(level: tracing::Level) -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
