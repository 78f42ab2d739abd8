//! The load-generating Vantiq server: the server side of the handshake for any number of
//! sources, then, on command, one load pattern on one source's socket.
//!
//! It is lean on purpose: it runs on one thread (a current-thread tokio runtime, shared with
//! the harness, whose own work is negligible), classifies frames by their first bytes
//! ([`crate::scan`]), builds its frames with plain string formatting, batches its writes
//! (feed, then one flush per batch of reads) and sends no acknowledgements. The harness
//! measures its CPU time ([`thread_cpu`]) in every phase to show it is not the bottleneck.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use vantiq_proto::frame::ClientFrame;

use crate::scan::{Inbound, classify};

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

/// The authentication reply (a success with a small `userInfo`, as a real server sends).
const AUTH_OK: &str = r#"{"status":200,"contentType":"application/json","body":{"anonymous":false,"userInfo":{"username":"bench","namespace":"bench","userType":"node"}}}"#;

/// The configuration document every source gets.
const CONFIG_DOC: &str = r#"{"bench":{"mode":"echo"}}"#;

/// Frames read in one batch before the server flushes what it has queued.
const READ_BATCH: usize = 128;

/// CPU time consumed so far by the calling thread (from `/proc/thread-self/schedstat`,
/// nanosecond resolution). The load server and the harness share one thread, so called
/// from the harness this is the server's CPU time.
#[must_use]
pub fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// What a phase measured on the server side.
#[derive(Debug, Clone, Default)]
pub struct PhaseResult {
    /// Wall-clock time from the first frame sent to the last frame expected.
    pub elapsed: Duration,
    /// Operations completed (notifications, round trips or queries; for the latency phase,
    /// every query sent, the untimed warm-up ones included).
    pub ops: u64,
    /// Per-operation latencies (latency phase only), in the order measured.
    pub latencies: Vec<Duration>,
}

enum Cmd {
    Notify {
        n: u64,
        payload: String,
        done: oneshot::Sender<Result<PhaseResult, String>>,
    },
    Echo {
        total: u64,
        inflight: u64,
        payload: String,
        done: oneshot::Sender<Result<PhaseResult, String>>,
    },
    Query {
        total: u64,
        inflight: u64,
        done: oneshot::Sender<Result<PhaseResult, String>>,
    },
    Latency {
        warmup: u64,
        count: u64,
        done: oneshot::Sender<Result<PhaseResult, String>>,
    },
}

#[derive(Default)]
struct Inner {
    sources: HashMap<String, mpsc::Sender<Cmd>>,
    last_configured: Option<Instant>,
    errors: Vec<String>,
}

struct Registry {
    inner: Mutex<Inner>,
    configured: watch::Sender<usize>,
    accepted: watch::Sender<usize>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, e: String) {
        let mut g = self.lock();
        if g.errors.len() < 20 {
            g.errors.push(e);
        }
    }
}

/// A load server listening on `127.0.0.1` (an ephemeral port).
pub struct LoadServer {
    addr: SocketAddr,
    registry: Arc<Registry>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for LoadServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl LoadServer {
    /// Binds and starts accepting (listen backlog 16 384, capped by `net.core.somaxconn`).
    /// Must be called inside a tokio runtime with IO and time enabled.
    ///
    /// # Errors
    /// The socket could not be bound.
    pub fn start() -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(16_384)?;
        let addr = listener.local_addr()?;
        let (configured, _) = watch::channel(0usize);
        let (accepted, _) = watch::channel(0usize);
        let registry = Arc::new(Registry {
            inner: Mutex::new(Inner::default()),
            configured,
            accepted,
        });
        let reg = registry.clone();
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        reg.accepted.send_modify(|n| *n += 1);
                        tokio::spawn(serve(stream, reg.clone()));
                    }
                    Err(e) => {
                        reg.error(format!("accept: {e}"));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        });
        Ok(LoadServer {
            addr,
            registry,
            accept,
        })
    }

    /// The port the server listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sources configured so far (their `connected` notification arrived).
    #[must_use]
    pub fn configured(&self) -> usize {
        *self.registry.configured.borrow()
    }

    /// Sockets accepted so far.
    #[must_use]
    pub fn accepted(&self) -> usize {
        *self.registry.accepted.borrow()
    }

    /// The first few errors seen (handshakes that failed, sockets that broke).
    #[must_use]
    pub fn errors(&self) -> Vec<String> {
        self.registry.lock().errors.clone()
    }

    /// Waits until `n` sources are configured; gives the instant the last of them was (its
    /// `connected` notification was read).
    ///
    /// # Errors
    /// `timeout` passed first.
    pub async fn wait_configured(&self, n: usize, timeout: Duration) -> Result<Instant, String> {
        let mut rx = self.registry.configured.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await;
        match waited {
            Ok(Ok(_)) => Ok(self
                .registry
                .lock()
                .last_configured
                .unwrap_or_else(Instant::now)),
            _ => Err(format!(
                "{} of {n} sources configured ({} sockets accepted) after {timeout:?}; errors: {:?}",
                self.configured(),
                self.accepted(),
                self.errors()
            )),
        }
    }

    fn sender(&self, source: &str) -> Result<mpsc::Sender<Cmd>, String> {
        self.registry
            .lock()
            .sources
            .get(source)
            .cloned()
            .ok_or_else(|| format!("source `{source}` is not configured"))
    }

    async fn command(
        &self,
        source: &str,
        timeout: Duration,
        make: impl FnOnce(oneshot::Sender<Result<PhaseResult, String>>) -> Cmd,
    ) -> Result<PhaseResult, String> {
        let tx = self.sender(source)?;
        let (done, rx) = oneshot::channel();
        tx.send(make(done))
            .await
            .map_err(|_| "the source's socket is gone".to_owned())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the source's socket ended during the phase".to_owned()),
            Err(_) => Err(format!("phase timed out after {timeout:?}")),
        }
    }

    /// Publishes `{"burst": n, "payload": payload}` and times the arrival of all `n`
    /// notifications (the last one must carry `seq: n-1`).
    ///
    /// # Errors
    /// Timeout, socket failure, or a wrong last notification.
    pub async fn notify(
        &self,
        source: &str,
        n: u64,
        payload: &str,
        timeout: Duration,
    ) -> Result<PhaseResult, String> {
        let payload = payload.to_owned();
        self.command(source, timeout, |done| Cmd::Notify { n, payload, done })
            .await
    }

    /// `total` publish → notification round trips with `inflight` outstanding.
    ///
    /// # Errors
    /// Timeout or socket failure.
    pub async fn echo(
        &self,
        source: &str,
        total: u64,
        inflight: u64,
        payload: &str,
        timeout: Duration,
    ) -> Result<PhaseResult, String> {
        let payload = payload.to_owned();
        self.command(source, timeout, |done| Cmd::Echo {
            total,
            inflight,
            payload,
            done,
        })
        .await
    }

    /// `total` queries `{"rows": 1}` with `inflight` outstanding.
    ///
    /// # Errors
    /// Timeout, socket failure, or an error reply.
    pub async fn query(
        &self,
        source: &str,
        total: u64,
        inflight: u64,
        timeout: Duration,
    ) -> Result<PhaseResult, String> {
        self.command(source, timeout, |done| Cmd::Query {
            total,
            inflight,
            done,
        })
        .await
    }

    /// `warmup + count` sequential queries `{"rows": 1}`; the latencies of the last `count`.
    ///
    /// # Errors
    /// Timeout, socket failure, or an error reply.
    pub async fn latency(
        &self,
        source: &str,
        warmup: u64,
        count: u64,
        timeout: Duration,
    ) -> Result<PhaseResult, String> {
        self.command(source, timeout, |done| Cmd::Latency {
            warmup,
            count,
            done,
        })
        .await
    }
}

fn data(msg: &Message) -> Option<&[u8]> {
    match msg {
        Message::Text(t) => Some(t.as_bytes()),
        Message::Binary(b) => Some(b),
        _ => None,
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn configure_frame(source: &str) -> String {
    // Bookkeeping fields as a real server sends them, so the connector's decoder skips them.
    format!(
        r#"{{"op":"configureExtension","resourceName":"sources","resourceId":{},"object":{{"config":{CONFIG_DOC}}},"isSystemResource":true,"parameters":{{}},"contentType":"application/json","skipMonitoring":false,"isExternal":false,"address":"00000000-0000-4000-8000-000000000000","messageHeaders":{{}}}}"#,
        json_str(source)
    )
}

/// Pre-rendered halves of the frames of one source.
struct Frames {
    publish_head: String,
    query_head: String,
}

impl Frames {
    fn new(source: &str) -> Self {
        let id = json_str(source);
        Frames {
            publish_head: format!(
                r#"{{"op":"publish","resourceName":"sources","resourceId":{id},"object":"#
            ),
            query_head: format!(
                r#"{{"op":"query","resourceName":"sources","resourceId":{id},"messageHeaders":{{"REPLY_ADDR_HEADER":"q"#
            ),
        }
    }

    fn publish(&self, object: &str) -> Message {
        let mut s = String::with_capacity(self.publish_head.len() + object.len() + 1);
        s.push_str(&self.publish_head);
        s.push_str(object);
        s.push('}');
        Message::text(s)
    }

    fn echo(&self, n: u64, payload: &str) -> Message {
        self.publish(&format!(r#"{{"n":{n},"payload":{payload}}}"#))
    }

    fn query(&self, n: u64) -> Message {
        Message::text(format!(
            r#"{}{n}"}},"object":{{"rows":1}}}}"#,
            self.query_head
        ))
    }
}

async fn next(ws: &mut Ws) -> Result<Message, String> {
    match ws.next().await {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(format!("socket error: {e}")),
        None => Err("socket closed".to_owned()),
    }
}

/// The next message if one is ready without waiting.
fn ready(ws: &mut Ws) -> Result<Option<Message>, String> {
    match ws.next().now_or_never() {
        None => Ok(None),
        Some(Some(Ok(m))) => Ok(Some(m)),
        Some(Some(Err(e))) => Err(format!("socket error: {e}")),
        Some(None) => Err("socket closed".to_owned()),
    }
}

async fn feed(ws: &mut Ws, m: Message) -> Result<(), String> {
    ws.feed(m).await.map_err(|e| format!("send: {e}"))
}

async fn flush(ws: &mut Ws) -> Result<(), String> {
    ws.flush().await.map_err(|e| format!("flush: {e}"))
}

async fn serve(stream: TcpStream, reg: Arc<Registry>) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(64 * 1024);
    let mut ws =
        match async_tungstenite::tokio::accept_async_with_config(stream, Some(config)).await {
            Ok(ws) => ws,
            Err(e) => {
                reg.error(format!("upgrade: {e}"));
                return;
            }
        };
    let mut source: Option<String> = None;
    // Handshake: validate → 200, connectExtension → configureExtension, then the echo
    // contract's `connected` notification says the connector is configured.
    loop {
        let msg = match next(&mut ws).await {
            Ok(m) => m,
            Err(e) => {
                reg.error(format!("handshake: {e}"));
                return;
            }
        };
        let Some(bytes) = data(&msg) else { continue };
        let sent = match classify(bytes) {
            Inbound::Auth => ws.send(Message::text(AUTH_OK)).await,
            Inbound::ConnectExtension => match ClientFrame::decode(bytes) {
                Ok(ClientFrame::ConnectExtension { source: name, .. }) => {
                    let r = ws.send(Message::text(configure_frame(&name))).await;
                    source = Some(name);
                    r
                }
                _ => Ok(()),
            },
            Inbound::Notification if source.is_some() => break,
            _ => Ok(()),
        };
        if let Err(e) = sent {
            reg.error(format!("handshake send: {e}"));
            return;
        }
    }
    let Some(name) = source else { return };
    let (tx, mut rx) = mpsc::channel::<Cmd>(4);
    {
        let mut g = reg.lock();
        g.sources.insert(name.clone(), tx);
        g.last_configured = Some(Instant::now());
    }
    reg.configured.send_modify(|n| *n += 1);
    let frames = Frames::new(&name);
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                run(&mut ws, &frames, cmd).await;
            }
            msg = ws.next() => match msg {
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
    reg.lock().sources.remove(&name);
}

async fn run(ws: &mut Ws, frames: &Frames, cmd: Cmd) {
    match cmd {
        Cmd::Notify { n, payload, done } => {
            let _ = done.send(notify(ws, frames, n, &payload).await);
        }
        Cmd::Echo {
            total,
            inflight,
            payload,
            done,
        } => {
            let _ = done.send(echo(ws, frames, total, inflight, &payload).await);
        }
        Cmd::Query {
            total,
            inflight,
            done,
        } => {
            let _ = done.send(query(ws, frames, total, inflight).await);
        }
        Cmd::Latency {
            warmup,
            count,
            done,
        } => {
            let _ = done.send(latency(ws, frames, warmup, count).await);
        }
    }
}

fn last_seq(bytes: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("object")?.get("seq")?.as_u64()
}

async fn notify(
    ws: &mut Ws,
    frames: &Frames,
    n: u64,
    payload: &str,
) -> Result<PhaseResult, String> {
    let publish = frames.publish(&format!(r#"{{"burst":{n},"payload":{payload}}}"#));
    let t0 = Instant::now();
    ws.send(publish).await.map_err(|e| format!("send: {e}"))?;
    let mut count = 0;
    while count < n {
        let msg = next(ws).await?;
        let Some(bytes) = data(&msg) else { continue };
        if classify(bytes) == Inbound::Notification {
            count += 1;
            if count == n {
                let elapsed = t0.elapsed();
                let seq = last_seq(bytes);
                if seq != Some(n - 1) {
                    return Err(format!(
                        "last notification has seq {seq:?}, expected {}",
                        n - 1
                    ));
                }
                return Ok(PhaseResult {
                    elapsed,
                    ops: n,
                    latencies: Vec::new(),
                });
            }
        }
    }
    Ok(PhaseResult::default())
}

/// A closed loop: keeps `inflight` requests outstanding (built by `request(n)`) until
/// `total` have completed; `completes` says whether a frame from the connector completes
/// one. Writes are batched: a batch of reads, then one flush.
async fn closed_loop(
    ws: &mut Ws,
    total: u64,
    inflight: u64,
    request: impl Fn(u64) -> Message,
    completes: impl Fn(&[u8]) -> Result<bool, String>,
) -> Result<PhaseResult, String> {
    let t0 = Instant::now();
    let mut sent = 0;
    let mut done = 0;
    while sent < inflight.min(total) {
        feed(ws, request(sent)).await?;
        sent += 1;
    }
    flush(ws).await?;
    while done < total {
        let mut msg = Some(next(ws).await?);
        let mut batch = 0;
        let mut queued = false;
        while let Some(m) = msg.take() {
            if let Some(bytes) = data(&m)
                && completes(bytes)?
            {
                done += 1;
                if sent < total {
                    feed(ws, request(sent)).await?;
                    sent += 1;
                    queued = true;
                }
            }
            batch += 1;
            if batch < READ_BATCH && done < total {
                msg = ready(ws)?;
            }
        }
        if queued {
            flush(ws).await?;
        }
    }
    Ok(PhaseResult {
        elapsed: t0.elapsed(),
        ops: total,
        latencies: Vec::new(),
    })
}

/// Publish → notification round trips.
async fn echo(
    ws: &mut Ws,
    frames: &Frames,
    total: u64,
    inflight: u64,
    payload: &str,
) -> Result<PhaseResult, String> {
    closed_loop(
        ws,
        total,
        inflight,
        |n| frames.echo(n, payload),
        |bytes| Ok(classify(bytes) == Inbound::Notification),
    )
    .await
}

/// A terminal reply's status (`None` for a partial reply or another frame).
fn terminal(bytes: &[u8]) -> Result<Option<i64>, String> {
    match classify(bytes) {
        Inbound::Reply { status, address } => {
            if (100..200).contains(&status) {
                Ok(None)
            } else if (200..300).contains(&status) {
                Ok(Some(status))
            } else {
                Err(format!(
                    "query {address} answered with status {status}: {}",
                    String::from_utf8_lossy(bytes)
                ))
            }
        }
        _ => Ok(None),
    }
}

/// Queries of one row, each complete at its terminal reply.
async fn query(
    ws: &mut Ws,
    frames: &Frames,
    total: u64,
    inflight: u64,
) -> Result<PhaseResult, String> {
    closed_loop(
        ws,
        total,
        inflight,
        |n| frames.query(n),
        |bytes| Ok(terminal(bytes)?.is_some()),
    )
    .await
}

async fn latency(
    ws: &mut Ws,
    frames: &Frames,
    warmup: u64,
    count: u64,
) -> Result<PhaseResult, String> {
    let mut latencies = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let t0 = Instant::now();
    for i in 0..warmup + count {
        let start = Instant::now();
        ws.send(frames.query(i))
            .await
            .map_err(|e| format!("send: {e}"))?;
        loop {
            let msg = next(ws).await?;
            if let Some(bytes) = data(&msg)
                && terminal(bytes)?.is_some()
            {
                break;
            }
        }
        if i >= warmup {
            latencies.push(start.elapsed());
        }
    }
    Ok(PhaseResult {
        elapsed: t0.elapsed(),
        ops: warmup + count,
        latencies,
    })
}
