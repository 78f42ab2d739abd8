//! [`Pair`]: a client [`Connection`] and the sans-IO server, joined by a seeded link, in
//! virtual time.

// A test utility: its assertions are its output, so it panics on purpose.
#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backoff::Rng;
use crate::frame::{ClientFrame, QueryReply};
use crate::server::{
    AnomalyKind, ConnectOutcome, ConnectionId, RawFrame, Registry, RegistryEvent, ServerConnection,
    ServerError, ServerEvent, ServerOptions, ServerTransmit,
};
use crate::{
    Connection, ConnectionConfig, ConnectionState, Credentials, Event, FrameError, Json, Secret,
    SocketEnd, TargetUrl, Transmit,
};

/// The source a [`Pair`]'s server defines (configuration `{"rate":1}`).
pub const SOURCE: &str = "S1";
/// The token a [`Pair`]'s server accepts, and [`test_config`] uses.
pub const TOKEN: &str = "good-token";

/// Valid JSON text as [`Json`]; panics on anything else.
#[must_use]
pub fn json(s: &str) -> Json {
    Json::from_string(s.to_owned()).unwrap_or_else(|e| panic!("not JSON: {s}: {e}"))
}

/// A connection configuration for [`SOURCE`] with [`TOKEN`] and the secret `S1_secret`.
#[must_use]
pub fn test_config(seed: u64) -> ConnectionConfig {
    let url = TargetUrl::parse("http://vantiq.test:8080").expect("a valid URL");
    let mut c = ConnectionConfig::new(SOURCE, url, Credentials::Token(Secret::new(TOKEN)), seed);
    c.reconnect_secret = format!("{SOURCE}_secret");
    c
}

/// One arbitrary but fixed point in time; all simulated time is relative to it.
fn epoch() -> Instant {
    // The only clock read: the origin of virtual time. Nothing depends on its value.
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

/// A direction on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dir {
    ToServer,
    ToClient,
}

/// Something scheduled on the virtual timeline.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    /// The socket asked for opens (or fails) now.
    ConnectResult { socket: u64, ok: bool },
    /// A frame reaches the connector.
    ToClient { socket: u64, data: Vec<u8> },
    /// A frame reaches the server.
    ToServer { socket: u64, data: Vec<u8> },
    /// A pong reaches the connector.
    Pong { socket: u64, payload: [u8; 8] },
    /// The server dropped the socket; the connector notices now.
    Dropped { socket: u64 },
    /// The server's close frame reaches the connector.
    ServerClose {
        socket: u64,
        code: u16,
        reason: String,
    },
    /// The connector's close frame reaches the server (after the frames sent before it).
    ClientClose {
        socket: u64,
        code: u16,
        reason: String,
    },
}

/// A client [`Connection`] and the sans-IO [server](crate::server) joined by a simulated
/// link, in virtual time.
///
/// The link delivers each direction in order after [`Pair::latency`] plus a seeded random
/// share of [`Pair::jitter`]; it can be down (connects refused: [`Pair::server_up`]), stall
/// (nothing passes, the socket stays open: [`Pair::stalled`]), lose everything sent to the
/// server ([`Pair::server_deaf`]: a server that never answers), hide the client's aborts from
/// the server ([`Pair::half_open`]), or drop the socket ([`Pair::drop_socket`]). The server is a [`Registry`] defining [`SOURCE`] and one
/// [`ServerConnection`] per socket the client opens. Everything that happens is recorded
/// with its virtual time.
#[derive(Debug)]
pub struct Pair {
    /// The origin of virtual time.
    pub epoch: Instant,
    /// The virtual clock.
    pub now: Instant,
    /// The client.
    pub client: Connection,
    /// The server's shared state.
    pub registry: Registry,
    /// The server accepts connections.
    pub server_up: bool,
    /// The link passes nothing (no pongs, no frames) but stays open.
    pub stalled: bool,
    /// The client's socket takes no frames (its driver passes `writable: false`).
    pub blocked: bool,
    /// Frames to the server are lost on arrival.
    pub server_deaf: bool,
    /// The server never learns that the client dropped a socket (a half-open connection):
    /// its end stays open and keeps holding the source.
    pub half_open: bool,
    /// One-way delay of every delivery.
    pub latency: Duration,
    /// Up to this much more delay, drawn per delivery from the seed (order is kept).
    pub jitter: Duration,
    rng: Rng,
    socket: Option<u64>,
    /// A socket closed gracefully whose last frames are still on their way to the server.
    closing_socket: Option<u64>,
    next_socket: u64,
    servers: Vec<(u64, ServerConnection)>,
    last_delivery: HashMap<(u64, Dir), Instant>,
    timeline: Vec<(Instant, u64, Pending)>,
    seq: u64,
    /// The client's events.
    pub events: Vec<(Instant, Event)>,
    /// The client's transmits.
    pub transmits: Vec<(Instant, Transmit)>,
    /// When the client asked for each socket.
    pub connect_times: Vec<Instant>,
    /// Frames the client refused.
    pub frame_errors: Vec<(Instant, FrameError)>,
    /// Every server connection's events.
    pub server_events: Vec<(Instant, ConnectionId, ServerEvent)>,
    /// The registry's events.
    pub registry_events: Vec<(Instant, RegistryEvent)>,
}

impl Pair {
    /// A pair with default server options (binary frames, bookkeeping, acknowledgements) and
    /// 5 ms latency.
    #[must_use]
    pub fn new(cfg: ConnectionConfig) -> Self {
        Self::with_options(cfg, Self::server_options())
    }

    /// The options [`Pair::new`] gives the server: the defaults, with [`TOKEN`].
    #[must_use]
    pub fn server_options() -> ServerOptions {
        ServerOptions {
            token: Some(TOKEN.to_owned()),
            ..ServerOptions::default()
        }
    }

    /// A pair whose server follows `options`; the link's jitter is drawn from `cfg.seed`.
    #[must_use]
    pub fn with_options(cfg: ConnectionConfig, options: ServerOptions) -> Self {
        let epoch = epoch();
        let seed = cfg.seed;
        let mut registry = Registry::new(options);
        registry.define_source(SOURCE, json(r#"{"rate":1}"#));
        let mut pair = Pair {
            epoch,
            now: epoch,
            client: Connection::new(cfg, epoch),
            registry,
            server_up: true,
            stalled: false,
            blocked: false,
            server_deaf: false,
            half_open: false,
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            rng: Rng::new(seed ^ 0x11AC_0000_0000_0001),
            socket: None,
            closing_socket: None,
            next_socket: 0,
            servers: Vec::new(),
            last_delivery: HashMap::new(),
            timeline: Vec::new(),
            seq: 0,
            events: Vec::new(),
            transmits: Vec::new(),
            connect_times: Vec::new(),
            frame_errors: Vec::new(),
            server_events: Vec::new(),
            registry_events: Vec::new(),
        };
        pair.drain();
        pair
    }

    /// Seconds since the start, for messages.
    #[must_use]
    pub fn t(&self) -> f64 {
        self.now.duration_since(self.epoch).as_secs_f64()
    }

    // ---- the world --------------------------------------------------------------------------

    fn schedule(&mut self, at: Instant, p: Pending) {
        self.seq += 1;
        self.timeline.push((at, self.seq, p));
    }

    /// When a delivery sent now in `dir` on `socket` arrives: after the latency and jitter,
    /// never before an earlier one on the same way.
    fn arrival(&mut self, socket: u64, dir: Dir) -> Instant {
        let jitter_ns = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        let extra = if jitter_ns == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.next_u64() % (jitter_ns + 1))
        };
        let mut at = self.now + self.latency + extra;
        if let Some(last) = self.last_delivery.get(&(socket, dir)) {
            at = at.max(*last);
        }
        self.last_delivery.insert((socket, dir), at);
        at
    }

    /// Moves every output into the world until nothing moves.
    pub fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.client.poll_transmit(!self.blocked) {
                progressed = true;
                self.transmits.push((self.now, t.clone()));
                self.perform_client(t);
            }
            while let Some(e) = self.client.poll_event() {
                progressed = true;
                self.events.push((self.now, e));
            }
            let mut i = 0;
            while i < self.servers.len() {
                let (socket, conn) = &mut self.servers[i];
                let socket = *socket;
                let id = conn.id();
                let mut out = Vec::new();
                while let Some(t) = conn.poll_transmit() {
                    out.push(t);
                }
                let mut events = Vec::new();
                while let Some(e) = conn.poll_event() {
                    events.push(e);
                }
                for e in events {
                    progressed = true;
                    self.server_events.push((self.now, id, e));
                }
                for t in out {
                    progressed = true;
                    self.perform_server(socket, t);
                }
                i += 1;
            }
            self.servers.retain(|(_, c)| !c.is_closed());
            while let Some(e) = self.registry.poll_event() {
                progressed = true;
                if let RegistryEvent::Displaced { connection, .. } = &e
                    && let Some((_, c)) =
                        self.servers.iter_mut().find(|(_, c)| c.id() == *connection)
                {
                    c.abort(&mut self.registry);
                }
                self.registry_events.push((self.now, e));
            }
            if !progressed {
                break;
            }
        }
        if let Some(t) = self.client.poll_timeout() {
            assert!(
                t > self.now || self.client.is_closed(),
                "poll_timeout {t:?} is not after now"
            );
        }
    }

    /// Performs one client transmit: the one place that reads the client's [`Transmit`].
    fn perform_client(&mut self, t: Transmit) {
        match t {
            Transmit::Connect { .. } => {
                assert!(
                    self.socket.is_none(),
                    "Connect while a socket is still held"
                );
                self.next_socket += 1;
                let socket = self.next_socket;
                self.socket = Some(socket);
                self.connect_times.push(self.now);
                let ok = self.server_up;
                let at = self.now + self.latency;
                self.schedule(at, Pending::ConnectResult { socket, ok });
            }
            Transmit::Frame(text) => {
                let socket = self.socket.expect("frame sent with no socket");
                if !self.stalled {
                    let at = self.arrival(socket, Dir::ToServer);
                    self.schedule(
                        at,
                        Pending::ToServer {
                            socket,
                            data: text.into_bytes(),
                        },
                    );
                }
            }
            Transmit::Ping { payload } => {
                let socket = self.socket.expect("ping sent with no socket");
                if !self.stalled && self.server_end(socket).is_some() {
                    let at = self.now + self.latency * 2;
                    self.schedule(at, Pending::Pong { socket, payload });
                }
            }
            Transmit::Close { code, reason } => {
                // Frames already sent still arrive; then the server sees the close.
                if let Some(socket) = self.socket.take() {
                    self.closing_socket = Some(socket);
                    let at = self.arrival(socket, Dir::ToServer);
                    self.schedule(
                        at,
                        Pending::ClientClose {
                            socket,
                            code,
                            reason: reason.to_owned(),
                        },
                    );
                }
            }
            Transmit::Abort => {
                if let Some(socket) = self.socket.take()
                    && !self.half_open
                {
                    self.server_closed(socket);
                }
            }
        }
    }

    fn perform_server(&mut self, socket: u64, t: ServerTransmit) {
        match t {
            ServerTransmit::Text(text) => self.send_to_client(socket, text.into_bytes()),
            ServerTransmit::Binary(data) => self.send_to_client(socket, data),
            ServerTransmit::Close { code, reason } => {
                let at = self.arrival(socket, Dir::ToClient);
                self.schedule(
                    at,
                    Pending::ServerClose {
                        socket,
                        code,
                        reason,
                    },
                );
            }
            ServerTransmit::Abort => {
                let at = self.arrival(socket, Dir::ToClient);
                self.schedule(at, Pending::Dropped { socket });
            }
        }
    }

    fn send_to_client(&mut self, socket: u64, data: Vec<u8>) {
        if !self.stalled {
            let at = self.arrival(socket, Dir::ToClient);
            self.schedule(at, Pending::ToClient { socket, data });
        }
    }

    fn server_end(&mut self, socket: u64) -> Option<&mut ServerConnection> {
        self.servers
            .iter_mut()
            .find(|(s, c)| *s == socket && !c.is_closed())
            .map(|(_, c)| c)
    }

    /// The server's end of `socket` sees the socket end.
    fn server_closed(&mut self, socket: u64) {
        let now = self.now;
        if let Some(i) = self.servers.iter().position(|(s, _)| *s == socket) {
            let (_, conn) = &mut self.servers[i];
            conn.handle_closed(now, &mut self.registry);
        }
    }

    /// The next instant anything happens, if any.
    fn next_instant(&self) -> Option<Instant> {
        [
            self.timeline.iter().map(|(at, _, _)| *at).min(),
            self.client.poll_timeout(),
            self.registry.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Processes everything due at or before `deadline`, advancing virtual time.
    pub fn run_until(&mut self, deadline: Instant) {
        while let Some(at) = self.next_instant() {
            if at > deadline {
                break;
            }
            self.now = self.now.max(at);
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    /// Processes everything due within `d` of now.
    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        self.run_until(deadline);
    }

    /// Runs until `pred` holds, at most `limit` of virtual time; panics naming `what`
    /// otherwise.
    pub fn run_until_pred(
        &mut self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&Pair) -> bool,
    ) {
        let deadline = self.now + limit;
        while !pred(self) {
            let Some(at) = self.next_instant().filter(|at| *at <= deadline) else {
                panic!(
                    "at t={:.3}s: {what} did not happen within {limit:?}",
                    self.t()
                );
            };
            self.now = self.now.max(at);
            self.step();
        }
    }

    fn step(&mut self) {
        // Deliver every timeline entry due now, in schedule order.
        let now = self.now;
        let mut due: Vec<(Instant, u64, Pending)> = Vec::new();
        let mut i = 0;
        while i < self.timeline.len() {
            if self.timeline[i].0 <= now {
                due.push(self.timeline.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|(at, seq, _)| (*at, *seq));
        for (_, _, p) in due {
            self.deliver(p);
            self.drain();
        }
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
            self.drain();
        }
        if self.registry.poll_timeout().is_some_and(|t| t <= now) {
            self.registry.handle_timeout(now);
            self.drain();
        }
    }

    fn deliver(&mut self, p: Pending) {
        let now = self.now;
        let current = self.socket;
        match p {
            Pending::ConnectResult { socket, ok } => {
                if current != Some(socket) {
                    return; // aborted meanwhile
                }
                if ok && self.server_up {
                    let conn = self.registry.accept();
                    self.servers.push((socket, conn));
                    self.client.handle_open(now);
                } else {
                    self.socket = None;
                    self.client
                        .handle_closed(now, SocketEnd::ConnectFailed("connection refused".into()));
                }
            }
            Pending::ToClient { socket, data } => {
                if current == Some(socket)
                    && !self.stalled
                    && let Err(e) = self.client.handle_frame(now, &data)
                {
                    self.frame_errors.push((now, e));
                }
            }
            Pending::ToServer { socket, data } => {
                let live = current == Some(socket) || self.closing_socket == Some(socket);
                if live && !self.stalled && !self.server_deaf {
                    let Pair {
                        servers, registry, ..
                    } = self;
                    if let Some((_, conn)) = servers.iter_mut().find(|(s, _)| *s == socket) {
                        // Refused frames are recorded as anomalies in `server_events`.
                        let _ = conn.handle_frame(now, registry, &data);
                    }
                }
            }
            Pending::ClientClose {
                socket,
                code,
                reason,
            } => {
                if self.closing_socket == Some(socket) {
                    self.closing_socket = None;
                }
                let Pair {
                    servers, registry, ..
                } = self;
                if let Some((_, conn)) = servers.iter_mut().find(|(s, _)| *s == socket) {
                    conn.handle_close_frame(now, registry, Some(code), &reason);
                    conn.handle_closed(now, registry);
                }
            }
            Pending::Pong { socket, payload } => {
                if current == Some(socket) && !self.stalled {
                    self.client.handle_pong(now, &payload);
                }
            }
            Pending::Dropped { socket } => {
                if current == Some(socket) {
                    self.socket = None;
                    self.client
                        .handle_closed(now, SocketEnd::Error("connection reset by peer".into()));
                }
            }
            Pending::ServerClose {
                socket,
                code,
                reason,
            } => {
                if current == Some(socket) {
                    self.socket = None;
                    self.client.handle_closed(
                        now,
                        SocketEnd::Closed {
                            code: Some(code),
                            reason,
                        },
                    );
                }
                self.server_closed(socket);
            }
        }
    }

    // ---- the server's commands --------------------------------------------------------------

    /// The connection holding [`SOURCE`] (`ConnectionId(0)`: none).
    fn holder_id(&self) -> ConnectionId {
        self.registry
            .holder(SOURCE)
            .map_or(ConnectionId(0), |h| h.connection)
    }

    /// The server's end of the client's current socket (`ConnectionId(0)`: none).
    fn current_id(&self) -> ConnectionId {
        self.servers
            .iter()
            .find(|(s, c)| Some(*s) == self.socket && !c.is_closed())
            .map_or(ConnectionId(0), |(_, c)| c.id())
    }

    /// Runs a command on server connection `id`, then moves its output into the world.
    fn on_server<T>(
        &mut self,
        id: ConnectionId,
        f: impl FnOnce(&mut ServerConnection, &mut Registry) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let Pair {
            servers, registry, ..
        } = self;
        let conn = servers
            .iter_mut()
            .find(|(_, c)| c.id() == id)
            .map(|(_, c)| c)
            .ok_or(ServerError::NotAttached { connection: id })?;
        let value = f(conn, registry)?;
        self.drain();
        Ok(value)
    }

    /// The server publishes `object` to [`SOURCE`].
    ///
    /// # Errors
    /// No connection holds the source configured.
    pub fn server_publish(&mut self, object: &str) -> Result<(), ServerError> {
        let object = json(object);
        self.on_server(self.holder_id(), |c, reg| c.publish(reg, object))
    }

    /// The server queries [`SOURCE`] with `params` (deadline one hour away); returns the
    /// reply address.
    ///
    /// # Errors
    /// No connection holds the source configured.
    pub fn server_query(&mut self, params: &str) -> Result<String, ServerError> {
        let (params, now) = (json(params), self.now);
        self.on_server(self.holder_id(), |c, reg| {
            c.query(now, reg, params, Duration::from_secs(3600))
        })
    }

    /// The server sends `reconnectRequired`; the next configuration is `new_config`.
    ///
    /// # Errors
    /// No connection holds the source.
    pub fn server_reconnect_required(&mut self, new_config: &str) -> Result<(), ServerError> {
        let config = json(new_config);
        self.on_server(self.holder_id(), |c, reg| {
            c.reconnect_required(reg, Some(config))
        })
    }

    /// The server sends this text frame as it is on the client's current socket.
    ///
    /// # Errors
    /// The current socket has no open server end.
    pub fn server_raw(&mut self, text: &str) -> Result<(), ServerError> {
        let frame = RawFrame::Text(text.to_owned());
        self.on_server(self.current_id(), |c, _| c.send_raw(frame))
    }

    /// The server closes the client's current socket cleanly with `code`.
    ///
    /// # Errors
    /// The current socket has no open server end.
    pub fn server_close(&mut self, code: u16) -> Result<(), ServerError> {
        self.on_server(self.current_id(), |c, reg| {
            c.close(reg, code, "closed by the simulation");
            Ok(())
        })
    }

    /// The server drops the client's current socket abruptly (no close frame).
    pub fn drop_socket(&mut self) {
        let _ = self.on_server(self.current_id(), |c, reg| {
            c.abort(reg);
            Ok(())
        });
        self.drain();
    }

    // ---- what happened ----------------------------------------------------------------------

    /// Whether the client is configured.
    #[must_use]
    pub fn is_configured(&self) -> bool {
        self.client.state() == ConnectionState::Configured
    }

    /// The client's events, without their times.
    #[must_use]
    pub fn client_events(&self) -> Vec<Event> {
        self.events.iter().map(|(_, e)| e.clone()).collect()
    }

    /// The frames the client sent, as text.
    #[must_use]
    pub fn frames_sent(&self) -> Vec<String> {
        self.transmits
            .iter()
            .filter_map(|(_, t)| match t {
                Transmit::Frame(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    /// How many client transmits match `pred`.
    #[must_use]
    pub fn count_transmits(&self, pred: impl Fn(&Transmit) -> bool) -> usize {
        self.transmits.iter().filter(|(_, t)| pred(t)).count()
    }

    fn server_events(&self) -> impl Iterator<Item = &ServerEvent> {
        self.server_events.iter().map(|(_, _, e)| e)
    }

    /// Every frame the server received, in order.
    #[must_use]
    pub fn received(&self) -> Vec<ClientFrame> {
        self.server_events()
            .filter_map(|e| match e {
                ServerEvent::Frame { frame, .. } => Some(frame.clone()),
                _ => None,
            })
            .collect()
    }

    /// The notifications the server received for [`SOURCE`], in order.
    #[must_use]
    pub fn notifications(&self) -> Vec<Json> {
        self.server_events()
            .filter_map(|e| match e {
                ServerEvent::Notification { object, .. } => Some(object.clone()),
                _ => None,
            })
            .collect()
    }

    /// The query replies the server received, in order.
    #[must_use]
    pub fn replies(&self) -> Vec<QueryReply> {
        self.received()
            .into_iter()
            .filter_map(|f| match f {
                ClientFrame::QueryReply(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// `validate` and `authenticate` frames the server answered.
    #[must_use]
    pub fn auth_attempts(&self) -> usize {
        self.server_events()
            .filter(|e| matches!(e, ServerEvent::Auth { .. }))
            .count()
    }

    /// The `connectExtension`s the server answered: their secrets and outcomes.
    #[must_use]
    pub fn connect_attempts(&self) -> Vec<(Option<String>, ConnectOutcome)> {
        self.server_events()
            .filter_map(|e| match e {
                ServerEvent::ConnectAttempt {
                    reconnect_secret,
                    outcome,
                    ..
                } => Some((reconnect_secret.clone(), *outcome)),
                _ => None,
            })
            .collect()
    }

    /// Everything the server found unexpected, in order.
    #[must_use]
    pub fn anomalies(&self) -> Vec<AnomalyKind> {
        self.server_events()
            .filter_map(|e| match e {
                ServerEvent::Anomaly(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }
}
