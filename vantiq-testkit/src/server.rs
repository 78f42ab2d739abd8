//! [`TestServer`], its builder, and the accept loop that routes each connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use futures_util::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use vantiq_proto::Json;
use vantiq_proto::server::ServerOptions;

use crate::control::{ControlPolicy, RestPolicy, handle_control, handle_rest, rest_route};
use crate::error::{Result, TestkitError};
use crate::http::{
    HeadError, REQUEST_TIMEOUT, accept_upgrade, is_websocket_path, read_head, respond_json,
};
use crate::hub::{Hub, KitOptions};
use crate::records::{Anomaly, FrameRecord, SourceInfo};
use crate::source::SourceHandle;

pub use vantiq_proto::server::codes;

/// The server's options, fixed at start.
#[derive(Debug, Clone)]
struct Options {
    bind: SocketAddr,
    server: ServerOptions,
    kit: KitOptions,
    control_api: bool,
    rest_api: bool,
    control: ControlPolicy,
    max_message_size: Option<usize>,
}

/// What the accept loop and the socket tasks share.
struct Served {
    hub: Arc<Hub>,
    ws_config: WebSocketConfig,
    control_api: bool,
    rest_api: bool,
    control: ControlPolicy,
    rest: RestPolicy,
}

/// Builds a [`TestServer`]. Every option has a default that behaves like a real Vantiq
/// server; see each method.
#[derive(Debug, Clone)]
#[must_use]
pub struct TestServerBuilder {
    opts: Options,
    sources: Vec<(String, Json)>,
}

/// Frames, notifications and anomalies kept by default (per source, and server-wide).
pub const DEFAULT_RECORD_LIMIT: usize = 1_000_000;

impl Default for TestServerBuilder {
    fn default() -> Self {
        TestServerBuilder {
            opts: Options {
                bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                server: ServerOptions::default(),
                kit: KitOptions {
                    record: true,
                    record_limit: DEFAULT_RECORD_LIMIT,
                    print_frames: false,
                    query_timeout: Duration::from_secs(10),
                },
                control_api: false,
                rest_api: false,
                control: ControlPolicy::default(),
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
        self.opts.server.token = Some(token.into());
        self
    }

    /// The user name and password `authenticate` accepts. Default: `authenticate` always
    /// fails with 401.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.opts.server.credentials = Some((username.into(), password.into()));
        self
    }

    /// The namespace named in the authentication reply. Default `testkit`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.opts.server.namespace = namespace.into();
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
        self.opts.server.status_before_configure = on;
        self
    }

    /// Acknowledge every notification with an op-less `{"status":200}`. Default on.
    pub fn ack_notifications(mut self, on: bool) -> Self {
        self.opts.server.ack_notifications = on;
        self
    }

    /// Acknowledge every query reply with an op-less `{"status":200}` (the Java SDK's
    /// documentation says the server does). Default off.
    pub fn ack_query_replies(mut self, on: bool) -> Self {
        self.opts.server.ack_query_replies = on;
        self
    }

    /// Send frames as binary WebSocket frames, as the real server does (the Java SDK reads
    /// nothing else); `false` sends text frames. Default binary.
    pub fn binary_frames(mut self, on: bool) -> Self {
        self.opts.server.binary_frames = on;
        self
    }

    /// Add the real server's bookkeeping fields (`isSystemResource`, `parameters`,
    /// `contentType`, `skipMonitoring`, `isExternal`, `address`, `messageHeaders`) to
    /// `configureExtension`, `publish` and `query`. Default on.
    pub fn bookkeeping(mut self, on: bool) -> Self {
        self.opts.server.bookkeeping = on;
        self
    }

    /// Serve the JSON control API under `/control/` on the same port (see the crate docs).
    /// Default off. It answers only requests whose `Host` names this machine (a loopback
    /// name, an IP address, or a host given to [`TestServerBuilder::allow_host`]), with no
    /// foreign `Origin` and no cross-site `Sec-Fetch-Site`: a web page in the developer's
    /// browser cannot drive it.
    pub fn control_api(mut self, on: bool) -> Self {
        self.opts.control_api = on;
        self
    }

    /// Require `Authorization: Bearer <token>` on every control request. Default: none.
    pub fn control_token(mut self, token: impl Into<String>) -> Self {
        self.opts.control.token = Some(token.into());
        self
    }

    /// Accept this host name in the `Host` header of control requests (for a server reached
    /// by name, e.g. a container's). Loopback names and IP addresses are always accepted.
    pub fn allow_host(mut self, host: impl Into<String>) -> Self {
        self.opts.control.allowed_hosts.push(host.into());
        self
    }

    /// Serve Vantiq's REST routes for sources on the same port, authenticated with
    /// `Authorization: Bearer <token>` (the [`token`](TestServerBuilder::token) when set,
    /// else any): `POST /api/v1/resources/sources/{name}` publishes its JSON body to the
    /// source (`200 {}`), `POST /api/v1/resources/sources/{name}/query` queries it with
    /// the body as parameters and answers `200` with the rows (every reply's rows
    /// concatenated, as a VAIL `SELECT` gets them), or a Vantiq error list
    /// (`[{"code","message","params"}]`: the connector's query error with status 400, 401
    /// without the token, 404 for an unknown source, 400 when no connector is attached, 504
    /// when the query times out). Default off.
    pub fn rest_api(mut self, on: bool) -> Self {
        self.opts.rest_api = on;
        self
    }

    /// How many frames, notifications and anomalies are kept (each record is a ring: the
    /// oldest go first; counters still count everything). Default
    /// [`DEFAULT_RECORD_LIMIT`].
    pub fn record_limit(mut self, limit: usize) -> Self {
        self.opts.kit.record_limit = limit.max(1);
        self
    }

    /// Print every frame received and sent to standard output (tokens and passwords
    /// redacted). Default off.
    pub fn print_frames(mut self, on: bool) -> Self {
        self.opts.kit.print_frames = on;
        self
    }

    /// Keep every frame received and every notification (for `frames()`,
    /// `notifications_snapshot()`, …). Turn off for long benchmarks: counters still count.
    /// Default on.
    pub fn record(mut self, on: bool) -> Self {
        self.opts.kit.record = on;
        self.opts.server.report_frames = on;
        self
    }

    /// The timeout of [`SourceHandle::query`] and of control-API queries without
    /// `timeoutMs`. Default 10 s.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.opts.kit.query_timeout = timeout;
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
        let mut opts = self.opts;
        let listener = TcpListener::bind(opts.bind)
            .await
            .map_err(|error| TestkitError::Bind {
                addr: opts.bind,
                error,
            })?;
        let addr = listener.local_addr().map_err(|error| TestkitError::Bind {
            addr: opts.bind,
            error,
        })?;
        if opts.control_api && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "the control API listens on a non-loopback address: anyone who can reach it can \
                 drive your connectors (set a control token)"
            );
        }
        opts.server.seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u16(addr.port());
            h.finish()
        };
        let ws_config = WebSocketConfig::default()
            .max_message_size(opts.max_message_size)
            .max_frame_size(opts.max_message_size);
        let rest = RestPolicy {
            token: opts.server.token.clone(),
        };
        let hub = Arc::new(Hub::new(opts.kit, opts.server, self.sources));
        let served = Arc::new(Served {
            hub: Arc::clone(&hub),
            ws_config,
            control_api: opts.control_api,
            rest_api: opts.rest_api,
            control: opts.control,
            rest,
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&served)));
        tracing::debug!(%addr, "testkit server listening");
        Ok(TestServer {
            served,
            hub,
            addr,
            accept: Some(accept),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

async fn accept_loop(listener: TcpListener, served: Arc<Served>) {
    let mut shutdown = served.hub.subscribe_shutdown();
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let guard = served.hub.task_started();
                    let served = Arc::clone(&served);
                    tokio::spawn(async move {
                        handle_socket(served, tcp, peer).await;
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

/// Serves one accepted TCP connection: its request head decides between the WebSocket
/// endpoint, the control API, the REST routes and a 404.
async fn handle_socket(served: Arc<Served>, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut shutdown = served.hub.subscribe_shutdown();
    let head = tokio::select! {
        head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut tcp)) => head,
        _ = shutdown.changed() => return,
    };
    let head = match head {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::Bad(status, message))) => {
            let _ = respond_json(&mut tcp, status, &serde_json::json!({ "error": message })).await;
            return;
        }
        Ok(Err(HeadError::Gone)) | Err(_) => return,
    };
    let path = head.path().to_owned();
    let hub = Arc::clone(&served.hub);
    if head.is_websocket_upgrade() {
        if !is_websocket_path(&path) {
            let body = serde_json::json!({
                "error": format!("no WebSocket endpoint at {path}; use {}", vantiq_proto::WEBSOCKET_PATH)
            });
            let _ = respond_json(&mut tcp, 404, &body).await;
            return;
        }
        if !accept_upgrade(&mut tcp, &head).await {
            return;
        }
        tracing::debug!(%peer, "testkit WebSocket accepted");
        let ws = WebSocketStream::from_partially_read(
            TokioAdapter::new(tcp),
            head.rest,
            Role::Server,
            Some(served.ws_config),
        )
        .await;
        crate::socket::serve(hub, ws, peer.to_string()).await;
    } else if served.control_api && (path == "/control" || path.starts_with("/control/")) {
        handle_control(hub, &served.control, tcp, head).await;
    } else if served.rest_api && rest_route(&path).is_some() {
        handle_rest(hub, &served.rest, tcp, head).await;
    } else {
        let body = serde_json::json!({ "error": format!("nothing at {path}") });
        let _ = respond_json(&mut tcp, 404, &body).await;
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
    served: Arc<Served>,
    hub: Arc<Hub>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    runtime: tokio::runtime::Handle,
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
        SourceHandle::new(Arc::clone(&self.hub), name).ok_or_else(|| TestkitError::UnknownSource {
            name: name.to_owned(),
        })
    }

    /// Defines a source while the server runs (or replaces the configuration of an existing
    /// one, keeping its state) and returns its handle.
    pub fn add_source(&self, name: &str, config: impl Into<Json>) -> SourceHandle {
        self.hub.define_source(name, config.into());
        match SourceHandle::new(Arc::clone(&self.hub), name) {
            Some(h) => h,
            None => unreachable!("the source was just defined"),
        }
    }

    /// A summary of every source, sorted by name.
    #[must_use]
    pub fn sources(&self) -> Vec<SourceInfo> {
        self.hub.infos()
    }

    /// WebSocket connections accepted so far (every upgrade on the WebSocket path).
    #[must_use]
    pub fn sockets_opened(&self) -> u64 {
        self.hub.sockets_opened.load(Ordering::Relaxed)
    }

    /// WebSocket connections open now.
    #[must_use]
    pub fn open_sockets(&self) -> usize {
        self.hub.connection_count()
    }

    /// `validate` and `authenticate` frames received so far, accepted or not.
    #[must_use]
    pub fn auth_attempts(&self) -> u64 {
        self.hub.auth_attempts()
    }

    /// The frames received on any socket, in arrival order (including those before
    /// `connectExtension`): the last [`record_limit`](TestServerBuilder::record_limit) ones.
    /// Empty when recording is off.
    #[must_use]
    pub fn frames(&self) -> Vec<FrameRecord> {
        self.hub
            .with(|inner| inner.frames.to_vec())
            .iter()
            .map(|f| FrameRecord::clone(f))
            .collect()
    }

    /// Everything unexpected a connector did so far, in order (the last
    /// [`record_limit`](TestServerBuilder::record_limit) ones).
    #[must_use]
    pub fn anomalies(&self) -> Vec<Anomaly> {
        self.hub.with(|inner| inner.anomalies.to_vec())
    }

    /// Closes every connection cleanly with close code 1001 ("going away"), as a Vantiq
    /// server restarting does, and goes on accepting: connectors reconnect. Returns how many
    /// connections were closed.
    pub fn restart(&self) -> usize {
        self.hub.close_all(1001, "server restart")
    }

    /// Closes every connection with 1001 and waits up to `limit` for the connectors to
    /// answer their close frames. Returns whether every socket ended in time.
    pub async fn close_all(&self, limit: Duration) -> bool {
        self.hub.close_all(1001, "server shutting down");
        let deadline = crate::util::deadline_after(limit);
        loop {
            let changed = self.hub.log_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.hub.connection_count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.hub.connection_count() == 0;
            }
        }
    }

    /// Serves one already-upgraded WebSocket (server role) until it ends: the future does
    /// only I/O around the server's state (futures I/O and `tokio::sync`), so it can be
    /// awaited on any executor, e.g. by a test that plays the network itself. The source
    /// handles see the connection like any other.
    pub async fn serve_websocket<S>(&self, ws: WebSocketStream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let _guard = self.hub.task_started();
        crate::socket::serve(Arc::clone(&self.hub), ws, "a caller".into()).await;
    }

    /// Serves a connection that did not come through the listener: any byte stream (an
    /// in-memory pipe, a proxy's socket) on which a connector opens its WebSocket. The
    /// WebSocket handshake (server role) and the whole session run on the server's runtime;
    /// this returns at once, and the source handles see the connection like any other. Call
    /// it from any thread or runtime.
    pub fn serve_stream<S>(&self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let served = Arc::clone(&self.served);
        let guard = served.hub.task_started();
        self.runtime.spawn(async move {
            match async_tungstenite::accept_async_with_config(io, Some(served.ws_config)).await {
                Ok(ws) => {
                    crate::socket::serve(Arc::clone(&served.hub), ws, "a stream".into()).await
                }
                Err(error) => tracing::debug!(%error, "testkit: WebSocket handshake failed"),
            }
            drop(guard);
        });
    }

    /// Waits up to `timeout` until at least `n` anomalies were recorded; returns them all.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] naming how many there were.
    pub async fn wait_anomalies(&self, n: usize, timeout: Duration) -> Result<Vec<Anomaly>> {
        self.wait_log(
            timeout,
            |hub| {
                let count = hub.with(|inner| inner.anomalies.total());
                format!("{n} anomalies ({count} recorded)")
            },
            |hub| {
                hub.with(|inner| (inner.anomalies.total() >= n).then(|| inner.anomalies.to_vec()))
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
            |hub| {
                format!(
                    "{n} WebSocket connections ({} so far)",
                    hub.sockets_opened.load(Ordering::Relaxed)
                )
            },
            |hub| {
                let count = hub.sockets_opened.load(Ordering::Relaxed);
                (count >= n).then_some(count)
            },
        )
        .await
    }

    /// Stops the server: stops accepting, drops every socket abruptly (no close frame, as a
    /// crashed server would), fails queries in flight with [`TestkitError::ServerGone`], and
    /// returns once the listening port is released (so a new server can bind it).
    pub async fn shutdown(mut self) {
        self.hub.shut_down();
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        // Socket tasks end at once on the shutdown signal; do not wait forever for one that
        // is stuck in a write.
        self.hub.wait_tasks(Duration::from_secs(5)).await;
    }

    async fn wait_log<T>(
        &self,
        timeout: Duration,
        what: impl FnOnce(&Hub) -> String,
        check: impl Fn(&Hub) -> Option<T>,
    ) -> Result<T> {
        let deadline = crate::util::deadline_after(timeout);
        loop {
            let notified = self.hub.log_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&self.hub) {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if let Some(v) = check(&self.hub) {
                    return Ok(v);
                }
                return Err(TestkitError::Timeout {
                    what: what(&self.hub),
                    after: timeout,
                });
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.hub.shut_down();
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}
