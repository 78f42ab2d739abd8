//! [`SimServer`] and [`SimPeer`]: the sans-IO server of `vantiq_proto::server` on the far
//! end of a [`SimRuntime`]'s pipes.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{self, Message};
use async_tungstenite::{WebSocketReceiver, WebSocketSender};
use futures_util::StreamExt as _;
use vantiq_proto::Json;
use vantiq_proto::frame::ClientFrame;
use vantiq_proto::server::{
    ConnectionId, RawFrame, Registry, RegistryEvent, ServerConnection, ServerError, ServerEvent,
    ServerOptions, ServerTransmit,
};

use super::pipe::{Duplex, PipeControl};
use super::sim::SimRuntime;
use crate::runtime::Runtime as _;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a [`SimPeer`] command did not reach the connector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The server refused the command (no configured source, the connection is closed).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Writing to the socket failed (the connector's end is gone, or the pipe was reset).
    #[error("the socket failed: {0}")]
    Socket(#[from] tungstenite::Error),
}

/// What the server's connections share.
#[derive(Debug)]
struct Shared {
    registry: Registry,
    registry_events: Vec<RegistryEvent>,
    /// Connections that lost their source to a takeover and must drop their socket.
    displaced: HashSet<ConnectionId>,
}

/// The server side of a simulation: one [`Registry`] (sources, holders, queries) that every
/// [`SimPeer`] shares, on a [`SimRuntime`]'s clock.
///
/// The protocol frames come from the server state machine
/// ([`ServerConnection`]); the test decides when the server reads and writes, and can reach
/// under the WebSocket layer through the peer's [`PipeControl`]. A [`SimPeer`] only reads
/// when asked to (or, with [`SimPeer::set_read_while_writing`], while its writes wait): a
/// server that stops reading is one the test does not ask to read.
///
/// Query deadlines are checked whenever the server is used (a command or a read), not on a
/// timer of their own.
///
/// ```
/// use vantiq_connector::test_util::{SimRuntime, SimServer};
/// use vantiq_connector::{ConnectorSet, ServerConfig};
/// use vantiq_proto::server::ServerOptions;
///
/// let sim = SimRuntime::new();
/// let server = SimServer::new(&sim, ServerOptions::default());
/// server.define_source("s1", vantiq_connector::Json::empty_object());
/// let config = ServerConfig::parse(
///     "targetServer=http://sim.invalid:8080\nauthToken=T\nsources=s1\ntcpProbePort=0\n",
///     "server.config",
///     |_| None,
/// )
/// .unwrap();
/// let set = ConnectorSet::with_runtime(sim.clone(), config).on_publish(|s, m| async move {
///     s.notify_json(m).await?;
///     Ok(())
/// });
/// let source = set.source("s1").unwrap();
/// let stop = set.shutdown_handle();
/// let run = sim.spawn_task(set.run());
/// sim.block_on(async move {
///     let mut peer = server.session().await.unwrap();
///     source.wait_configured().await.unwrap();
///     peer.publish(vantiq_connector::Json::from(serde_json::json!({"n": 1}))).await.unwrap();
///     // The connector's first notification is the echo.
///     let frame = peer.next_frame().await;
///     assert!(matches!(frame, Some(vantiq_proto::frame::ClientFrame::Notification { .. })));
///     stop.shutdown();
///     assert!(peer.next_frame().await.is_none()); // its close frame
///     run.await.unwrap();
/// });
/// ```
#[derive(Clone)]
pub struct SimServer {
    sim: SimRuntime,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("registry", &lock(&self.shared).registry)
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// A server with no sources, following `options`, on `sim`'s clock.
    #[must_use]
    pub fn new(sim: &SimRuntime, options: ServerOptions) -> Self {
        SimServer {
            sim: sim.clone(),
            shared: Arc::new(Mutex::new(Shared {
                registry: Registry::new(options),
                registry_events: Vec::new(),
                displaced: HashSet::new(),
            })),
        }
    }

    /// Defines a source and the configuration its `configureExtension` carries.
    pub fn define_source(&self, name: &str, config: Json) {
        lock(&self.shared).registry.define_source(name, config);
    }

    /// Runs `f` on the registry, for anything else (options, refusals, holders, queries in
    /// flight).
    pub fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut shared = lock(&self.shared);
        let value = f(&mut shared.registry);
        Self::drain(&mut shared, self.sim.now());
        value
    }

    /// Every server-wide event so far (finished and timed-out queries, takeovers).
    #[must_use]
    pub fn registry_events(&self) -> Vec<RegistryEvent> {
        let mut shared = lock(&self.shared);
        Self::drain(&mut shared, self.sim.now());
        shared.registry_events.clone()
    }

    /// Accepts the next connection the connector opens and upgrades it to a WebSocket.
    ///
    /// # Errors
    /// The WebSocket handshake failed (the connector dropped the socket).
    pub async fn accept(&self) -> Result<SimPeer, tungstenite::Error> {
        let pipe = self.sim.accept().await;
        self.accept_pipe(pipe).await
    }

    /// Upgrades an accepted pipe (from [`SimRuntime::accept`]) to a WebSocket served by a
    /// new server connection.
    ///
    /// # Errors
    /// The WebSocket handshake failed.
    pub async fn accept_pipe(&self, pipe: Duplex) -> Result<SimPeer, tungstenite::Error> {
        let control = pipe.control();
        let ws = async_tungstenite::accept_async(pipe).await?;
        let (tx, rx) = ws.split();
        let conn = lock(&self.shared).registry.accept();
        Ok(SimPeer {
            server: self.clone(),
            conn,
            tx: Some(tx),
            rx: Some(rx),
            pipe: control,
            read_while_writing: false,
            inbox: VecDeque::new(),
            events: Vec::new(),
            ended: false,
        })
    }

    /// Accepts the next connection and serves it until its source is configured
    /// ([`SimPeer::serve_until_configured`]).
    ///
    /// # Errors
    /// The WebSocket handshake failed, or the socket ended before the source was
    /// configured ([`tungstenite::Error::ConnectionClosed`]).
    pub async fn session(&self) -> Result<SimPeer, tungstenite::Error> {
        let mut peer = self.accept().await?;
        if peer.serve_until_configured().await {
            Ok(peer)
        } else {
            Err(tungstenite::Error::ConnectionClosed)
        }
    }

    /// Ends overdue queries; moves the registry's events to the log; notes takeovers.
    fn drain(shared: &mut Shared, now: std::time::Instant) {
        if shared.registry.poll_timeout().is_some_and(|t| t <= now) {
            shared.registry.handle_timeout(now);
        }
        while let Some(e) = shared.registry.poll_event() {
            if let RegistryEvent::Displaced { connection, .. } = &e {
                shared.displaced.insert(*connection);
            }
            shared.registry_events.push(e);
        }
    }
}

/// One connection a [`SimServer`] accepted: a [`ServerConnection`] on the server end of a
/// pipe, upgraded to a WebSocket.
///
/// Every frame read is fed to the server state machine, which answers it (authentication,
/// `connectExtension`, acknowledgements) as the real server does; commands
/// ([`publish`](SimPeer::publish), [`query`](SimPeer::query), [`close`](SimPeer::close), …)
/// go through the machine too. What the machine cannot produce goes out as it is given:
/// [`send_raw`](SimPeer::send_raw) (any text or binary frame),
/// [`send_message`](SimPeer::send_message) (any WebSocket message: pings, close frames with
/// any code) and [`PipeControl::inject`] (bytes under the WebSocket layer).
///
/// Writes wait while the pipe is full (the connector is not reading); reads happen only in
/// [`next_message`](SimPeer::next_message) and the methods built on it, unless
/// [`set_read_while_writing`](SimPeer::set_read_while_writing) is on.
pub struct SimPeer {
    server: SimServer,
    conn: ServerConnection,
    tx: Option<WebSocketSender<Duplex>>,
    rx: Option<WebSocketReceiver<Duplex>>,
    pipe: PipeControl,
    read_while_writing: bool,
    /// Messages read while a write waited, not yet handed out.
    inbox: VecDeque<Message>,
    events: Vec<ServerEvent>,
    /// The socket ended (read side).
    ended: bool,
}

impl std::fmt::Debug for SimPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPeer")
            .field("conn", &self.conn)
            .field("open", &self.tx.is_some())
            .field("ended", &self.ended)
            .field("inbox", &self.inbox.len())
            .finish_non_exhaustive()
    }
}

/// Feeds one message read from the socket to the server connection.
fn feed(conn: &mut ServerConnection, server: &SimServer, msg: &Message) {
    let now = server.sim.now();
    let mut shared = lock(&server.shared);
    // The socket is dropped when the connection's transmits are next performed.
    abort_if_displaced(conn, &mut shared);
    let reg = &mut shared.registry;
    match msg {
        // An undecodable frame is an anomaly event; the session goes on.
        Message::Text(t) => drop(conn.handle_frame(now, reg, t.as_bytes())),
        Message::Binary(b) => drop(conn.handle_frame(now, reg, b)),
        Message::Close(frame) => {
            let (code, reason) = frame
                .as_ref()
                .map_or((None, ""), |f| (Some(u16::from(f.code)), f.reason.as_str()));
            conn.handle_close_frame(now, reg, code, reason);
        }
        _ => {}
    }
    SimServer::drain(&mut shared, now);
}

/// Reports the end of the socket to the server connection.
fn end(conn: &mut ServerConnection, server: &SimServer) {
    let now = server.sim.now();
    let mut shared = lock(&server.shared);
    conn.handle_closed(now, &mut shared.registry);
    SimServer::drain(&mut shared, now);
}

/// A connection whose source another took over drops its socket, as the contract says.
/// True if it did (its `Abort` transmit is queued).
fn abort_if_displaced(conn: &mut ServerConnection, shared: &mut Shared) -> bool {
    let displaced = shared.displaced.remove(&conn.id());
    if displaced {
        conn.abort(&mut shared.registry);
    }
    displaced
}

impl SimPeer {
    /// The registry's number for this connection.
    #[must_use]
    pub fn id(&self) -> ConnectionId {
        self.conn.id()
    }

    /// The server end of the pipe: raw bytes, resets, byte counts.
    #[must_use]
    pub fn pipe(&self) -> &PipeControl {
        &self.pipe
    }

    /// The server state machine of this connection.
    #[must_use]
    pub fn connection(&self) -> &ServerConnection {
        &self.conn
    }

    /// Everything the server connection reported so far, in order.
    #[must_use]
    pub fn events(&self) -> &[ServerEvent] {
        &self.events
    }

    /// Whether this connection holds a source and has sent it its configuration.
    #[must_use]
    pub fn is_configured(&self) -> bool {
        let id = self.conn.id();
        self.server.with_registry(|reg| {
            self.conn
                .source(reg)
                .and_then(|s| reg.holder(&s).map(|h| h.connection == id && h.configured))
                .unwrap_or(false)
        })
    }

    /// With `on`, a write that waits for the connector also reads (and answers) what the
    /// connector sends meanwhile, as a server with separate reader and writer does; the
    /// messages read are handed out by the next [`next_message`](SimPeer::next_message)
    /// calls. Off by default: a server that writes does not read.
    pub fn set_read_while_writing(&mut self, on: bool) {
        self.read_while_writing = on;
    }

    // ---- reading ----------------------------------------------------------------------------

    /// The next message from the connector, of any kind (pings are answered by the WebSocket
    /// layer); `None` once the socket ended. Frames are fed to the server machine, and its
    /// answers written, before this returns.
    pub async fn next_message(&mut self) -> Option<Message> {
        let _ = self.perform().await;
        let msg = match self.inbox.pop_front() {
            Some(m) => Some(m),
            None => self.read().await,
        };
        // A failed write shows as the end of the socket on a later read.
        let _ = self.perform().await;
        msg
    }

    /// [`next_message`](SimPeer::next_message), giving up when nothing arrives within
    /// `wait` of virtual time: `None` then, `Some(None)` once the socket ended. Only the wait
    /// for input is cut short, never a write, so nothing the server owes is lost.
    pub async fn next_message_within(&mut self, wait: Duration) -> Option<Option<Message>> {
        let _ = self.perform().await;
        let msg = match self.inbox.pop_front() {
            Some(m) => Some(m),
            None => {
                let sim = self.server.sim.clone();
                sim.timeout(wait, self.read()).await?
            }
        };
        let _ = self.perform().await;
        Some(msg)
    }

    /// Whether the socket is gone: it ended, or this side dropped it.
    #[must_use]
    pub fn is_ended(&self) -> bool {
        self.ended && self.inbox.is_empty()
    }

    /// The next message already read (while a write waited) and not handed out yet; never
    /// waits.
    pub fn buffered_message(&mut self) -> Option<Message> {
        self.inbox.pop_front()
    }

    /// The next protocol frame from the connector, skipping pings, pongs and frames that do
    /// not decode (the machine reports those as anomalies); `None` at a close frame or the
    /// end of the socket.
    pub async fn next_frame(&mut self) -> Option<ClientFrame> {
        loop {
            let data = match self.next_message().await? {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => return None,
                _ => continue,
            };
            if let Ok(frame) = ClientFrame::decode(&data) {
                return Some(frame);
            }
        }
    }

    /// Reads and answers until this connection's source is configured (authentication and
    /// `connectExtension` done). False if the socket ended (or the connector closed) first.
    pub async fn serve_until_configured(&mut self) -> bool {
        while !self.is_configured() {
            match self.next_message().await {
                None | Some(Message::Close(_)) => return false,
                Some(_) => {}
            }
        }
        true
    }

    async fn read(&mut self) -> Option<Message> {
        if self.ended {
            return None;
        }
        let rx = self.rx.as_mut()?;
        match rx.next().await {
            Some(Ok(m)) => {
                feed(&mut self.conn, &self.server, &m);
                Some(m)
            }
            _ => {
                self.ended = true;
                end(&mut self.conn, &self.server);
                None
            }
        }
    }

    // ---- commands ---------------------------------------------------------------------------

    /// The server publishes `object` to this connection's source.
    ///
    /// # Errors
    /// The connection holds no configured source, or the write failed.
    pub async fn publish(&mut self, object: Json) -> Result<(), PeerError> {
        self.command(|c, reg, _| c.publish(reg, object))?;
        Ok(self.perform().await?)
    }

    /// The server queries this connection's source with `params`; the query times out after
    /// `timeout` of virtual time. Returns the reply address.
    ///
    /// # Errors
    /// The connection holds no configured source, or the write failed.
    pub async fn query(&mut self, params: Json, timeout: Duration) -> Result<String, PeerError> {
        let address = self.command(|c, reg, now| c.query(now, reg, params, timeout))?;
        self.perform().await?;
        Ok(address)
    }

    /// The server sends `reconnectRequired`; the next configuration is `new_config` if
    /// given.
    ///
    /// # Errors
    /// The connection holds no source, or the write failed.
    pub async fn reconnect_required(&mut self, new_config: Option<Json>) -> Result<(), PeerError> {
        self.command(|c, reg, _| c.reconnect_required(reg, new_config))?;
        Ok(self.perform().await?)
    }

    /// Sends `frame` exactly as given (malformed or out-of-order input).
    ///
    /// # Errors
    /// The connection is closed, or the write failed.
    pub async fn send_raw(&mut self, frame: impl Into<RawFrame>) -> Result<(), PeerError> {
        let frame = frame.into();
        self.command(|c, _, _| c.send_raw(frame))?;
        Ok(self.perform().await?)
    }

    /// Sends a close frame with `code` and releases the source; the TCP connection stays
    /// open until the connector closes it or the peer is dropped (keep reading to serve the
    /// close handshake, or do not, to play a server that never finishes it).
    ///
    /// # Errors
    /// The write failed.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), PeerError> {
        self.command(|c, reg, _| {
            c.close(reg, code, reason);
            Ok(())
        })?;
        Ok(self.perform().await?)
    }

    /// Drops the socket without a close frame (a crashed server, a broken network).
    pub fn abort(&mut self) {
        let _ = self.command(|c, reg, _| {
            c.abort(reg);
            Ok(())
        });
        self.collect_events();
        while self.conn.poll_transmit().is_some() {}
        self.drop_socket();
    }

    /// Sends a WebSocket message as it is, under the protocol: a ping, a close frame with any
    /// code, a frame the server machine would never send.
    ///
    /// # Errors
    /// The write failed.
    pub async fn send_message(&mut self, msg: Message) -> Result<(), PeerError> {
        Ok(self.write(msg).await?)
    }

    // ---- internals --------------------------------------------------------------------------

    /// Runs a command on the server connection at the simulation's time.
    fn command<T>(
        &mut self,
        f: impl FnOnce(
            &mut ServerConnection,
            &mut Registry,
            std::time::Instant,
        ) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let now = self.server.sim.now();
        let server = self.server.clone();
        let mut shared = lock(&server.shared);
        if abort_if_displaced(&mut self.conn, &mut shared) {
            // Nothing else was queued (every command and read performs what it queues).
            self.collect_events();
            while self.conn.poll_transmit().is_some() {}
            self.drop_socket();
        }
        let value = f(&mut self.conn, &mut shared.registry, now);
        SimServer::drain(&mut shared, now);
        value
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            self.events.push(e);
        }
    }

    fn drop_socket(&mut self) {
        self.tx = None;
        self.rx = None;
        self.inbox.clear();
        self.ended = true;
    }

    /// Performs every transmit of the server connection, in order.
    async fn perform(&mut self) -> Result<(), tungstenite::Error> {
        loop {
            self.collect_events();
            let msg = match self.conn.poll_transmit() {
                None => return Ok(()),
                Some(ServerTransmit::Text(t)) => Message::text(t),
                Some(ServerTransmit::Binary(b)) => Message::binary(b),
                Some(ServerTransmit::Close { code, reason }) => Message::Close(Some(CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                })),
                Some(ServerTransmit::Abort) => {
                    self.drop_socket();
                    continue;
                }
            };
            self.write(msg).await?;
        }
    }

    /// Writes one message; with read-while-writing, reads while it waits.
    async fn write(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        let SimPeer {
            tx,
            rx,
            conn,
            server,
            inbox,
            ended,
            read_while_writing,
            ..
        } = self;
        let Some(tx) = tx.as_mut() else {
            return Err(tungstenite::Error::AlreadyClosed);
        };
        let mut write = std::pin::pin!(tx.send(msg));
        let Some(rx) = rx.as_mut().filter(|_| *read_while_writing) else {
            return write.await;
        };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = write.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            while !*ended {
                match rx.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(m))) => {
                        feed(conn, server, &m);
                        inbox.push_back(m);
                    }
                    Poll::Ready(_) => {
                        *ended = true;
                        end(conn, server);
                    }
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        })
        .await
    }
}
