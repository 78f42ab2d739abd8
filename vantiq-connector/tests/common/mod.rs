//! A server for the driver tests: each test plays Vantiq on the far end of the in-memory
//! pipes of a `SimRuntime`, frame by frame, so it controls exactly what the driver sees and
//! when (a close frame mid-burst, a socket that stops reading, pings without reading).

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

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::frame::CloseFrame;
use futures_util::StreamExt as _;
use vantiq_connector::test_util::{Duplex, PipeControl, SimJoin, SimRuntime};
use vantiq_connector::{ConnectorSet, ServerConfig};
use vantiq_proto::frame::ClientFrame;

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

/// One accepted socket, seen from the server.
pub struct Peer {
    pub ws: WebSocketStream<Duplex>,
    pub pipe: PipeControl,
}

impl Peer {
    /// The next connection the connector opens, upgraded to a WebSocket.
    pub async fn accept(sim: &SimRuntime) -> Peer {
        let pipe = sim.accept().await;
        let control = pipe.control();
        let ws = async_tungstenite::accept_async(pipe).await.unwrap();
        Peer { ws, pipe: control }
    }

    /// Accepts and goes through authentication and attachment: the session is configured
    /// with `{}`.
    pub async fn session(sim: &SimRuntime) -> Peer {
        let mut p = Peer::accept(sim).await;
        p.configure().await;
        p
    }

    /// Answers `validate` and `connectExtension` with success and a configuration.
    pub async fn configure(&mut self) {
        match self.next_frame().await {
            Some(ClientFrame::Validate { .. }) => {}
            other => panic!("expected validate, got {other:?}"),
        }
        self.send(r#"{"status":200,"body":{"anonymous":false}}"#)
            .await;
        match self.next_frame().await {
            Some(ClientFrame::ConnectExtension { source, .. }) => assert_eq!(source, SOURCE),
            other => panic!("expected connectExtension, got {other:?}"),
        }
        self.send(&format!(
            r#"{{"op":"configureExtension","resourceName":"sources","resourceId":"{SOURCE}","object":{{"config":{{}}}}}}"#
        ))
        .await;
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn publish(&mut self, object: &str) {
        self.send(&format!(
            r#"{{"op":"publish","resourceName":"sources","resourceId":"{SOURCE}","object":{object}}}"#
        ))
        .await;
    }

    pub async fn query(&mut self, reply_address: &str, params: &str) {
        self.send(&format!(
            r#"{{"op":"query","resourceName":"sources","resourceId":"{SOURCE}","messageHeaders":{{"REPLY_ADDR_HEADER":"{reply_address}"}},"object":{params}}}"#
        ))
        .await;
    }

    /// Sends a close frame (the socket stays open until the connector closes it).
    pub async fn close_frame(&mut self, code: u16) {
        self.ws
            .send(Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: "bye".into(),
            })))
            .await
            .unwrap();
    }

    /// The next protocol frame (pings and pongs are answered by the WebSocket layer and
    /// skipped); `None` when the socket ended.
    pub async fn next_frame(&mut self) -> Option<ClientFrame> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => return Some(ClientFrame::decode(t.as_bytes()).unwrap()),
                Ok(Message::Binary(b)) => return Some(ClientFrame::decode(&b).unwrap()),
                Ok(Message::Close(_)) => return None,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next message of any kind, close frames included; `None` when the socket ended.
    pub async fn next_message(&mut self) -> Option<Message> {
        self.ws.next().await.and_then(Result::ok)
    }

    /// Reads notifications `{"n": k}` until the socket ends, or until `until` of them.
    pub async fn numbers(&mut self, until: Option<usize>) -> Vec<u64> {
        let mut got = Vec::new();
        while until.is_none_or(|n| got.len() < n) {
            match self.next_frame().await {
                Some(ClientFrame::Notification { object, .. }) => {
                    got.push(object.to_value().unwrap()["n"].as_u64().unwrap());
                }
                Some(_) => {}
                None => break,
            }
        }
        got
    }
}

/// Publishes `make(0)` … `make(total - 1)` from a task of its own, counting the publishes
/// written; gives the peer back at the end (or when the socket fails).
pub fn publisher(
    sim: &SimRuntime,
    mut peer: Peer,
    total: u64,
    make: impl Fn(u64) -> String + Send + 'static,
) -> (SimJoin<Peer>, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let task = sim.spawn_task(async move {
        for n in 0..total {
            let publish = format!(
                r#"{{"op":"publish","resourceName":"sources","resourceId":"{SOURCE}","object":{}}}"#,
                make(n)
            );
            if peer.ws.send(Message::text(publish)).await.is_err() {
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
