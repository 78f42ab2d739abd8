//! [`TestServer`], its builder, and the state shared by its tasks.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use vantiq_proto::frame::{ServerFrame, StatusFrame};
use vantiq_proto::{Json, Rng, Status, random_id};

use crate::error::{Result, TestkitError};
use crate::query::PendingQueries;
use crate::records::{Anomaly, FrameRecord, SourceInfo};
use crate::source::{SourceHandle, SourceShared};
use crate::util::{deadline_after, lock};

/// Error codes the server puts in its error lists (`[{"code", "message", "params"}]`).
///
/// The real server's codes for these cases are not documented; these are the test kit's
/// own, except `AUTH_FAILED`. Connectors should look at the status and the message, as the
/// peer SDKs do.
pub mod codes {
    /// A rejected token or user name/password (status 401).
    pub const AUTH_FAILED: &str = "io.vantiq.authentication.failed";
    /// A frame other than `validate`/`authenticate` before authentication (status 401).
    pub const NOT_AUTHENTICATED: &str = "io.vantiq.testkit.notAuthenticated";
    /// `connectExtension` for a source the server does not have (status 404).
    pub const SOURCE_NOT_FOUND: &str = "io.vantiq.testkit.sourceNotFound";
    /// `connectExtension` while the source "restarts" (status 400, message contains "does not
    /// have an associated stream").
    pub const NO_ASSOCIATED_STREAM: &str = "io.vantiq.testkit.noAssociatedStream";
    /// `connectExtension` while another connection holds the source (status 400).
    pub const CONNECTION_EXISTS: &str = "io.vantiq.testkit.connectionExists";
    /// A notification or query reply on a socket not attached to a source (status 400).
    pub const NOT_ATTACHED: &str = "io.vantiq.testkit.notAttached";
    /// A notification naming another source than its socket's (status 400).
    pub const WRONG_SOURCE: &str = "io.vantiq.testkit.wrongSource";
}

/// The server's options, fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) bind: SocketAddr,
    pub(crate) token: Option<String>,
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) namespace: String,
    pub(crate) status_before_configure: bool,
    pub(crate) ack_notifications: bool,
    pub(crate) ack_query_replies: bool,
    pub(crate) binary_frames: bool,
    pub(crate) bookkeeping: bool,
    pub(crate) control_api: bool,
    pub(crate) print_frames: bool,
    pub(crate) record: bool,
    pub(crate) query_timeout: Duration,
    pub(crate) max_message_size: Option<usize>,
}

/// Server-wide logs.
#[derive(Default)]
pub(crate) struct ServerLog {
    pub(crate) frames: Vec<Arc<FrameRecord>>,
    pub(crate) anomalies: Vec<Anomaly>,
}

/// State shared by the server's tasks and handles.
pub(crate) struct Shared {
    pub(crate) opts: Options,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) sources: std::sync::Mutex<HashMap<String, Arc<SourceShared>>>,
    pub(crate) pending: std::sync::Mutex<PendingQueries>,
    pub(crate) log: std::sync::Mutex<ServerLog>,
    pub(crate) log_changed: Notify,
    pub(crate) sockets_opened: AtomicU64,
    pub(crate) auth_attempts: AtomicU64,
    next_conn: AtomicU64,
    rng: std::sync::Mutex<Rng>,
    shutdown: watch::Sender<bool>,
    shut_down: AtomicBool,
    tasks: AtomicUsize,
    tasks_done: Notify,
    ack: Message,
}

impl Shared {
    /// A fresh random UUID-shaped identifier (reply addresses, `address` fields).
    pub(crate) fn new_id(&self) -> String {
        random_id(&mut lock(&self.rng))
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    pub(crate) fn subscribe_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn source(&self, name: &str) -> Option<Arc<SourceShared>> {
        lock(&self.sources).get(name).cloned()
    }

    /// A frame as the server sends it (binary unless text frames were asked for).
    pub(crate) fn message(&self, text: String) -> Message {
        if self.opts.binary_frames {
            Message::binary(text.into_bytes())
        } else {
            Message::text(text)
        }
    }

    /// The notification (and query reply) acknowledgement `{"status":200}`.
    pub(crate) fn ack(&self) -> Message {
        self.ack.clone()
    }

    /// Encodes a service frame with `vantiq_proto`, adding the real server's bookkeeping
    /// fields when they are on.
    pub(crate) fn server_frame(&self, frame: &ServerFrame) -> Message {
        let mut text = frame.encode();
        if self.opts.bookkeeping {
            let extra = match frame {
                ServerFrame::ConfigureExtension { .. } | ServerFrame::Publish { .. } => Some(true),
                ServerFrame::Query { .. } => Some(false),
                _ => None,
            };
            if let Some(with_headers) = extra {
                let address = self.new_id();
                let mut fields = String::with_capacity(192);
                fields.push_str(
                    ",\"isSystemResource\":true,\"parameters\":{},\
                     \"contentType\":\"application/json\",\"skipMonitoring\":false,\
                     \"isExternal\":false,\"address\":\"",
                );
                fields.push_str(&address);
                fields.push('"');
                if with_headers {
                    fields.push_str(",\"messageHeaders\":{}");
                }
                splice(&mut text, &fields);
            }
        }
        self.message(text)
    }

    /// An op-less status frame with a body, with `contentType` as the real server sends it.
    pub(crate) fn status_frame(&self, status: Status, body: Json) -> Message {
        let mut text = ServerFrame::Status(StatusFrame {
            status,
            body: Some(body),
        })
        .encode();
        splice(&mut text, ",\"contentType\":\"application/json\"");
        self.message(text)
    }

    /// A status frame whose body is a Vantiq error list with one error.
    pub(crate) fn error_frame(&self, status: Status, code: &str, message: &str) -> Message {
        let body = Json::from(serde_json::json!([
            {"code": code, "message": message, "params": []}
        ]));
        self.status_frame(status, body)
    }

    /// The reply to a successful `validate`/`authenticate`.
    pub(crate) fn auth_ok(&self, username: &str) -> Message {
        let ns = &self.opts.namespace;
        let body = Json::from(serde_json::json!({
            "anonymous": false,
            "userInfo": {
                "username": username,
                "preferredUsername": username,
                "namespace": ns,
                "homeNamespace": ns,
                "createdBy": "system",
                "userType": "node",
                "profiles": ["system.user"],
            }
        }));
        self.status_frame(Status::OK, body)
    }

    pub(crate) fn add_anomaly(&self, anomaly: Anomaly) {
        tracing::warn!(?anomaly, "testkit: unexpected input from a connector");
        if self.opts.print_frames {
            crate::conn::print_line(format_args!(
                "!! [conn {}] anomaly: {:?}",
                anomaly.connection, anomaly.kind
            ));
        }
        lock(&self.log).anomalies.push(anomaly);
        self.log_changed.notify_waiters();
    }

    pub(crate) fn log_frame(&self, record: Arc<FrameRecord>) {
        lock(&self.log).frames.push(record);
    }

    pub(crate) fn socket_opened(&self) {
        self.sockets_opened.fetch_add(1, Ordering::Relaxed);
        self.log_changed.notify_waiters();
    }

    pub(crate) fn task_started(self: &Arc<Self>) -> TaskGuard {
        self.tasks.fetch_add(1, Ordering::AcqRel);
        TaskGuard(Arc::clone(self))
    }

    /// Stops everything: the accept loop and every socket end, every source is released,
    /// queries in flight fail with [`TestkitError::ServerGone`].
    pub(crate) fn begin_shutdown(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shutdown.send_replace(true);
        let sources: Vec<_> = lock(&self.sources).values().cloned().collect();
        for src in sources {
            {
                let mut st = lock(&src.state);
                if st.live.take().is_some() {
                    st.disconnects += 1;
                }
                st.configured = false;
            }
            src.changed.notify_waiters();
        }
        lock(&self.pending).clear();
        self.log_changed.notify_waiters();
    }
}

/// Counts a running socket task; the count drops when the guard does.
pub(crate) struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.tasks_done.notify_waiters();
        }
    }
}

/// Inserts `fields` (starting with a comma) before the closing brace of a JSON object text.
fn splice(text: &mut String, fields: &str) {
    if text.ends_with('}') {
        text.pop();
        text.push_str(fields);
        text.push('}');
    }
}

/// Builds a [`TestServer`]. Every option has a default that behaves like a real Vantiq
/// server; see each method.
#[derive(Debug, Clone)]
#[must_use]
pub struct TestServerBuilder {
    opts: Options,
    sources: Vec<(String, Json)>,
}

impl Default for TestServerBuilder {
    fn default() -> Self {
        TestServerBuilder {
            opts: Options {
                bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                token: None,
                credentials: None,
                namespace: "testkit".to_owned(),
                status_before_configure: false,
                ack_notifications: true,
                ack_query_replies: false,
                binary_frames: true,
                bookkeeping: true,
                control_api: false,
                print_frames: false,
                record: true,
                query_timeout: Duration::from_secs(10),
                max_message_size: Some(64 << 20),
            },
            sources: Vec::new(),
        }
    }
}

impl TestServerBuilder {
    /// The address to listen on. Default `127.0.0.1:0` (a free port). Binding a fixed
    /// address lets a test start a connector before the server exists, or restart the
    /// server on the same port.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.opts.bind = addr;
        self
    }

    /// The only access token `validate` accepts; any other gets status 401 with a Vantiq
    /// error list (the socket stays open). Default: every token (and a missing one) is
    /// accepted.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.opts.token = Some(token.into());
        self
    }

    /// The user name and password `authenticate` accepts. Default: `authenticate` always
    /// fails with 401.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.opts.credentials = Some((username.into(), password.into()));
        self
    }

    /// The namespace named in the authentication reply. Default `testkit`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.opts.namespace = namespace.into();
        self
    }

    /// Defines a source and the configuration document its `configureExtension` carries (as
    /// `object.config`). Defining a name twice keeps the last configuration.
    pub fn source(mut self, name: impl Into<String>, config: impl Into<Json>) -> Self {
        self.sources.push((name.into(), config.into()));
        self
    }

    /// Send an op-less `{"status":200}` before each `configureExtension`, as real servers
    /// sometimes do. Default off.
    pub fn status_before_configure(mut self, on: bool) -> Self {
        self.opts.status_before_configure = on;
        self
    }

    /// Acknowledge every notification with an op-less `{"status":200}`. Default on.
    pub fn ack_notifications(mut self, on: bool) -> Self {
        self.opts.ack_notifications = on;
        self
    }

    /// Acknowledge every query reply with an op-less `{"status":200}` (the Java SDK's
    /// documentation says the server does). Default off.
    pub fn ack_query_replies(mut self, on: bool) -> Self {
        self.opts.ack_query_replies = on;
        self
    }

    /// Send frames as binary WebSocket frames, as the real server does (the Java SDK reads
    /// nothing else); `false` sends text frames. Default binary.
    pub fn binary_frames(mut self, on: bool) -> Self {
        self.opts.binary_frames = on;
        self
    }

    /// Add the real server's bookkeeping fields (`isSystemResource`, `parameters`,
    /// `contentType`, `skipMonitoring`, `isExternal`, `address`, `messageHeaders`) to
    /// `configureExtension`, `publish` and `query`. Default on.
    pub fn bookkeeping(mut self, on: bool) -> Self {
        self.opts.bookkeeping = on;
        self
    }

    /// Serve the JSON control API under `/control/` on the same port (see the crate docs).
    /// Default off.
    pub fn control_api(mut self, on: bool) -> Self {
        self.opts.control_api = on;
        self
    }

    /// Print every frame received and sent to standard output (tokens and passwords
    /// redacted). Default off.
    pub fn print_frames(mut self, on: bool) -> Self {
        self.opts.print_frames = on;
        self
    }

    /// Keep every frame received and every notification (for `frames()`,
    /// `notifications_snapshot()`, …). Turn off for long benchmarks: counters still count.
    /// Default on.
    pub fn record(mut self, on: bool) -> Self {
        self.opts.record = on;
        self
    }

    /// The timeout of [`SourceHandle::query`] and of control-API queries without
    /// `timeoutMs`. Default 10 s.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.opts.query_timeout = timeout;
        self
    }

    /// The largest message (and frame) the server reads; a larger one ends the connection.
    /// `None` for no limit. Default 64 MiB.
    pub fn max_message_size(mut self, limit: Option<usize>) -> Self {
        self.opts.max_message_size = limit;
        self
    }

    /// Binds the address and starts serving.
    ///
    /// # Errors
    /// [`TestkitError::Bind`] when the address cannot be bound.
    pub async fn start(self) -> Result<TestServer> {
        let listener =
            TcpListener::bind(self.opts.bind)
                .await
                .map_err(|error| TestkitError::Bind {
                    addr: self.opts.bind,
                    error,
                })?;
        let addr = listener.local_addr().map_err(|error| TestkitError::Bind {
            addr: self.opts.bind,
            error,
        })?;
        let mut sources = HashMap::new();
        for (name, config) in self.sources {
            sources.insert(name.clone(), Arc::new(SourceShared::new(name, config)));
        }
        let ws_config = WebSocketConfig::default()
            .max_message_size(self.opts.max_message_size)
            .max_frame_size(self.opts.max_message_size);
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u16(addr.port());
            h.finish()
        };
        let ack_text = ServerFrame::Status(StatusFrame {
            status: Status::OK,
            body: None,
        })
        .encode();
        let ack = if self.opts.binary_frames {
            Message::binary(ack_text.into_bytes())
        } else {
            Message::text(ack_text)
        };
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            opts: self.opts,
            ws_config,
            sources: std::sync::Mutex::new(sources),
            pending: std::sync::Mutex::new(PendingQueries::default()),
            log: std::sync::Mutex::new(ServerLog::default()),
            log_changed: Notify::new(),
            sockets_opened: AtomicU64::new(0),
            auth_attempts: AtomicU64::new(0),
            next_conn: AtomicU64::new(0),
            rng: std::sync::Mutex::new(Rng::new(seed)),
            shutdown,
            shut_down: AtomicBool::new(false),
            tasks: AtomicUsize::new(0),
            tasks_done: Notify::new(),
            ack,
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        tracing::debug!(%addr, "testkit server listening");
        Ok(TestServer {
            shared,
            addr,
            accept: Some(accept),
        })
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let guard = shared.task_started();
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        crate::http::handle_socket(shared, tcp, peer).await;
                        drop(guard);
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(%error, "testkit accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// An embedded Vantiq server speaking the server side of the extension-source protocol.
///
/// Start one with [`TestServer::start`] or [`TestServer::builder`], point a connector's
/// `targetServer` at [`TestServer::url`], and drive each source through a
/// [`SourceHandle`] from [`TestServer::source`]. Dropping the server stops it (every socket is
/// dropped abruptly); [`TestServer::shutdown`] does the same and waits until the port is
/// released.
pub struct TestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// A builder with every option at its default.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// Starts a server on `127.0.0.1:0` with default options: any token accepted, no
    /// sources (add some with [`TestServer::add_source`]).
    ///
    /// # Errors
    /// [`TestkitError::Bind`] when no port can be bound.
    pub async fn start() -> Result<TestServer> {
        TestServer::builder().start().await
    }

    /// The address the server listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the value for a connector's `targetServer` (both SDKs turn it into
    /// `ws://<addr>/api/v1/wsock/websocket`).
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://<addr>/api/v1/wsock/websocket`: the WebSocket endpoint itself.
    #[must_use]
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, vantiq_proto::WEBSOCKET_PATH)
    }

    /// A handle on the source `name`.
    ///
    /// # Errors
    /// [`TestkitError::UnknownSource`] when the server has no such source.
    pub fn source(&self, name: &str) -> Result<SourceHandle> {
        self.shared
            .source(name)
            .map(|s| SourceHandle::new(Arc::clone(&self.shared), s))
            .ok_or_else(|| TestkitError::UnknownSource {
                name: name.to_owned(),
            })
    }

    /// Defines a source while the server runs (or replaces the configuration of an existing
    /// one, keeping its state) and returns its handle.
    pub fn add_source(&self, name: &str, config: impl Into<Json>) -> SourceHandle {
        let config = config.into();
        let src = {
            let mut sources = lock(&self.shared.sources);
            match sources.get(name) {
                Some(existing) => {
                    lock(&existing.state).config = config;
                    Arc::clone(existing)
                }
                None => {
                    let src = Arc::new(SourceShared::new(name.to_owned(), config));
                    sources.insert(name.to_owned(), Arc::clone(&src));
                    src
                }
            }
        };
        SourceHandle::new(Arc::clone(&self.shared), src)
    }

    /// A summary of every source, sorted by name.
    #[must_use]
    pub fn sources(&self) -> Vec<SourceInfo> {
        sources_info(&self.shared)
    }

    /// WebSocket connections accepted so far (every upgrade on the WebSocket path).
    #[must_use]
    pub fn sockets_opened(&self) -> u64 {
        self.shared.sockets_opened.load(Ordering::Relaxed)
    }

    /// `validate` and `authenticate` frames received so far, accepted or not.
    #[must_use]
    pub fn auth_attempts(&self) -> u64 {
        self.shared.auth_attempts.load(Ordering::Relaxed)
    }

    /// Every frame received on any socket, in arrival order (including those before
    /// `connectExtension`). Empty when recording is off.
    #[must_use]
    pub fn frames(&self) -> Vec<FrameRecord> {
        lock(&self.shared.log)
            .frames
            .iter()
            .map(|f| FrameRecord::clone(f))
            .collect()
    }

    /// Everything unexpected a connector did so far, in order.
    #[must_use]
    pub fn anomalies(&self) -> Vec<Anomaly> {
        lock(&self.shared.log).anomalies.clone()
    }

    /// Waits up to `timeout` until at least `n` anomalies were recorded; returns them all.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming how many there were.
    pub async fn wait_anomalies(&self, n: usize, timeout: Duration) -> Result<Vec<Anomaly>> {
        self.wait_log(
            timeout,
            |s| {
                let count = lock(&s.log).anomalies.len();
                format!("{n} anomalies ({count} recorded)")
            },
            |s| {
                let log = lock(&s.log);
                (log.anomalies.len() >= n).then(|| log.anomalies.clone())
            },
        )
        .await
    }

    /// Waits up to `timeout` until at least `n` WebSocket connections were accepted in total.
    /// Returns the count.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming how many there were.
    pub async fn wait_sockets(&self, n: u64, timeout: Duration) -> Result<u64> {
        self.wait_log(
            timeout,
            |s| {
                format!(
                    "{n} WebSocket connections ({} so far)",
                    s.sockets_opened.load(Ordering::Relaxed)
                )
            },
            |s| {
                let count = s.sockets_opened.load(Ordering::Relaxed);
                (count >= n).then_some(count)
            },
        )
        .await
    }

    /// Stops the server: stops accepting, drops every socket abruptly (no close frame, as a
    /// crashed server would), fails queries in flight with [`TestkitError::ServerGone`], and
    /// returns once the listening port is released (so a new server can bind it).
    pub async fn shutdown(mut self) {
        self.shared.begin_shutdown();
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        // Socket tasks end at once on the shutdown signal; do not wait forever for one that
        // is stuck in a write.
        let deadline = deadline_after(Duration::from_secs(5));
        loop {
            let done = self.shared.tasks_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.shared.tasks.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                break;
            }
        }
    }

    async fn wait_log<T>(
        &self,
        timeout: Duration,
        what: impl FnOnce(&Shared) -> String,
        check: impl Fn(&Shared) -> Option<T>,
    ) -> Result<T> {
        let deadline = deadline_after(timeout);
        loop {
            let notified = self.shared.log_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&self.shared) {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if let Some(v) = check(&self.shared) {
                    return Ok(v);
                }
                return Err(TestkitError::Timeout {
                    what: what(&self.shared),
                    after: timeout,
                });
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.begin_shutdown();
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

/// Every source's summary, sorted by name.
pub(crate) fn sources_info(shared: &Shared) -> Vec<SourceInfo> {
    let sources: Vec<_> = lock(&shared.sources).values().cloned().collect();
    let mut infos: Vec<_> = sources.iter().map(|s| s.info()).collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    infos
}
