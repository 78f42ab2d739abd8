//! [`Connection`]: one source's link to Vantiq, across as many sockets as it takes.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::backoff::{Backoff, Rng};
use crate::config::{Credentials, ServerConfig};
use crate::frame::{self, ClientFrame, FrameError, ServerFrame, Status, StatusFrame};
use crate::json::Json;
use crate::query::{QueryError, QueryId, Reply, ReplyError};
use crate::url::TargetUrl;

/// Smallest delay before a reconnect, so that full jitter never yields an immediate retry.
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(10);
/// Smallest value any configured timeout is raised to.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// WebSocket keep-alive: a ping every `interval`, and the link is dead when nothing (pong or
/// frame) arrives within `timeout` of a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// Time between pings (default 20 s).
    pub interval: Duration,
    /// Time allowed for an answer (default 20 s).
    pub timeout: Duration,
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive {
            interval: Duration::from_secs(20),
            timeout: Duration::from_secs(20),
        }
    }
}

/// Everything a [`Connection`] needs to know. Build it with [`ConnectionConfig::new`] or
/// [`ConnectionConfig::from_server_config`], then adjust the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// The source this connection serves.
    pub source: String,
    /// The WebSocket URL.
    pub url: TargetUrl,
    /// How to authenticate.
    pub credentials: Credentials,
    /// Sent with every `connectExtension` (design row 8: `<source>_<random or configured>`).
    pub reconnect_secret: String,
    /// Reconnect back-off.
    pub backoff: Backoff,
    /// Keep-alive pings; `None` turns them off.
    pub keepalive: Option<KeepAlive>,
    /// Time allowed from asking for a socket to being configured (default 20 s).
    pub handshake_timeout: Duration,
    /// Time a graceful close may spend delivering queued notifications (default 5 s).
    pub close_timeout: Duration,
    /// Make the first connection failure fatal.
    pub fail_on_connection_error: bool,
    /// Notifications held while not configured (default 10 000).
    pub notification_queue: usize,
    /// Seed for back-off jitter.
    pub seed: u64,
}

/// A random `8-4-4-4-12` hex identifier (UUID version 4 layout) from a seeded generator.
#[must_use]
pub fn random_id(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

impl ConnectionConfig {
    /// A configuration with defaults; the reconnect secret is `<source>_<random from seed>`.
    #[must_use]
    pub fn new(
        source: impl Into<String>,
        url: TargetUrl,
        credentials: Credentials,
        seed: u64,
    ) -> Self {
        let source = source.into();
        let mut rng = Rng::new(seed ^ 0x5EC2_E7A1_D00D_F00D);
        let reconnect_secret = format!("{source}_{}", random_id(&mut rng));
        ConnectionConfig {
            source,
            url,
            credentials,
            reconnect_secret,
            backoff: Backoff::default(),
            keepalive: Some(KeepAlive::default()),
            handshake_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
            fail_on_connection_error: false,
            notification_queue: 10_000,
            seed,
        }
    }

    /// The configuration for `source` as `server.config` describes it.
    #[must_use]
    pub fn from_server_config(cfg: &ServerConfig, source: &str, seed: u64) -> Self {
        let mut c = Self::new(
            source,
            cfg.target().clone(),
            cfg.credentials().clone(),
            seed,
        );
        if let Some(suffix) = cfg.reconnect_secret() {
            c.reconnect_secret = format!("{source}_{suffix}");
        }
        let opts = cfg.connect_options();
        c.keepalive = if cfg.send_pings() {
            match opts.ping_interval {
                Some(None) => None,
                Some(Some(interval)) => Some(KeepAlive {
                    interval,
                    timeout: opts.ping_timeout.unwrap_or(KeepAlive::default().timeout),
                }),
                None => Some(KeepAlive {
                    timeout: opts.ping_timeout.unwrap_or(KeepAlive::default().timeout),
                    ..KeepAlive::default()
                }),
            }
        } else {
            None
        };
        if let Some(t) = opts.open_timeout {
            c.handshake_timeout = t;
        }
        if let Some(t) = opts.close_timeout {
            c.close_timeout = t;
        }
        c.fail_on_connection_error = cfg.fail_on_connection_error();
        c.notification_queue = cfg.notification_queue_size();
        c.backoff.initial = cfg.reconnect_initial_delay();
        c.backoff.max = cfg.reconnect_max_delay();
        c
    }
}

/// What the driver must do with the socket, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transmit {
    /// Open a new socket to `url`; report the outcome with
    /// [`Connection::handle_open`] or [`Connection::handle_closed`].
    Connect {
        /// Where to connect.
        url: TargetUrl,
    },
    /// Send this text frame.
    Frame(String),
    /// Send a WebSocket ping.
    Ping,
    /// Close the socket gracefully with this close code and reason. The connection already
    /// considers the socket gone: report nothing more about it.
    Close {
        /// WebSocket close code (1000).
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
    /// Drop the socket (or the connect in progress) at once, without a close handshake: the
    /// link is dead or the handshake timed out. Report nothing more about it.
    Abort,
}

/// How a socket ended, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketEnd {
    /// The socket could not be opened (DNS, TCP, TLS or WebSocket upgrade failure).
    ConnectFailed(String),
    /// The peer closed the socket (close frame, or end of stream).
    Closed {
        /// The close code, if the peer sent one.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// A transport error (reset, protocol violation, frame over the size limit, …).
    Error(String),
}

/// Why a socket or a session ended against our wishes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The socket could not be opened.
    #[error("could not connect: {0}")]
    ConnectFailed(String),
    /// The server closed the socket.
    #[error("the server closed the socket (code {}{})", code.map_or_else(|| "none".to_owned(), |c| c.to_string()), if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    SocketClosed {
        /// Close code.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
    /// The transport failed.
    #[error("the socket failed: {0}")]
    SocketError(String),
    /// The handshake did not finish in time.
    #[error("no answer while {stage} within the handshake timeout")]
    HandshakeTimeout {
        /// `connecting`, `authenticating` or `attaching`.
        stage: &'static str,
    },
    /// No pong (or any frame) arrived in time after a ping.
    #[error("keep-alive timeout: no answer to a ping")]
    KeepAliveTimeout,
    /// The server refused `connectExtension`.
    #[error("the server refused the source: status {status}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Refused {
        /// Status of the refusal.
        status: Status,
        /// Vantiq error code.
        code: Option<String>,
        /// Vantiq error message.
        message: Option<String>,
    },
}

/// Why a configured session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server sent `reconnectRequired` (usually: the configuration changed).
    ReconnectRequired,
    /// The link failed; the connection reconnects.
    Failure(Failure),
    /// [`Connection::close`] was called.
    Shutdown,
}

/// Why the connection ended for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FatalError {
    /// The server rejected the credentials. Retrying would only flood it.
    #[error("authentication rejected by the server: status {status}{}{}", code.as_ref().map(|c| format!(", {c}")).unwrap_or_default(), message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    AuthRejected {
        /// Status of the rejection (usually 401).
        status: Status,
        /// Vantiq error code (e.g. `io.vantiq.authentication.failed`).
        code: Option<String>,
        /// Vantiq error message.
        message: Option<String>,
    },
    /// With `failOnConnectionError`, the first connection failure.
    #[error("connection failed (failOnConnectionError is set): {0}")]
    ConnectionFailed(Failure),
}

/// What happened, for the application.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A session began: the source's configuration document (`object.config`).
    Configured {
        /// The configuration.
        config: Json,
    },
    /// Data was published to the source.
    Publish {
        /// The published object.
        object: Json,
    },
    /// A query awaits replies ([`Connection::respond`]).
    Query {
        /// Pass this to [`Connection::respond`].
        id: QueryId,
        /// The WITH parameters.
        params: Json,
        /// The server's reply address (for logs; replies are routed by `id`).
        reply_address: String,
    },
    /// The session ended; queries of that session can no longer be answered.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// The connection ended for good. Always the last event.
    Closed {
        /// `None` after [`Connection::close`]; the reason otherwise.
        error: Option<FatalError>,
        /// Queued notifications that could not be delivered.
        undelivered: usize,
    },
}

/// Why a notification was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// Not configured and the offline queue is full: try again after the next `Configured`
    /// (a runtime waits).
    #[error("the offline notification queue is full")]
    QueueFull(Json),
    /// A notification must be a JSON object.
    #[error("a notification must be a JSON object")]
    NotAnObject(Json),
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed(Json),
}

impl NotifyError {
    /// Gives back the notification that was not accepted.
    #[must_use]
    pub fn into_inner(self) -> Json {
        match self {
            NotifyError::QueueFull(j) | NotifyError::NotAnObject(j) | NotifyError::Closed(j) => j,
        }
    }
}

/// The connection's state, for observers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Waiting before the next attempt.
    WaitingToReconnect,
    /// A socket is being opened.
    Connecting,
    /// `validate`/`authenticate` sent.
    Authenticating,
    /// `connectExtension` sent.
    Attaching,
    /// `configureExtension` received: publishes, queries and notifications flow.
    Configured,
    /// Ended for good.
    Closed,
}

/// Counters for observers and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Sockets asked for.
    pub connect_attempts: u64,
    /// Sessions configured.
    pub sessions: u64,
    /// Failures since the last stable session.
    pub consecutive_failures: u32,
    /// Frames dropped as malformed or unexpected.
    pub frames_rejected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting { until: Instant },
    Connecting,
    Authenticating,
    Attaching,
    Configured { since: Instant },
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Waiting { .. } => "waiting to reconnect",
            State::Connecting => "connecting",
            State::Authenticating => "authenticating",
            State::Attaching => "attaching",
            State::Configured { .. } => "configured",
            State::Closed => "closed",
        }
    }
}

/// Hashes query numbers. They are ours (sequential, never chosen by the peer), so a
/// multiplicative hash does; SipHash costs more than the rest of a lookup.
#[derive(Debug, Default, Clone, Copy)]
struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SeqHash = std::hash::BuildHasherDefault<SeqHasher>;

#[derive(Debug)]
struct QueryEntry {
    /// `,"headers":{"X-Reply-Address":"…"}`, ready to splice into replies.
    prefix: String,
    parts: u64,
    abandon: Option<(u64, QueryError)>,
}

/// One source's connection to Vantiq: a sans-IO state machine spanning many sockets.
///
/// See the [crate documentation](crate) for the calling contract.
#[derive(Debug)]
pub struct Connection {
    config: ConnectionConfig,
    state: State,
    socket_open: bool,
    handshake_deadline: Option<Instant>,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    closing: Option<Instant>,
    session: u64,
    next_query: u64,
    queries: HashMap<u64, QueryEntry, SeqHash>,
    queue: VecDeque<Json>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    rng: Rng,
    stats: Stats,
    notification_prefix: String,
    last_failure: Option<Failure>,
    reading_paused: bool,
}

impl Connection {
    /// Creates the connection; its first transmit asks for a socket.
    #[must_use]
    pub fn new(mut config: ConnectionConfig, now: Instant) -> Self {
        config.handshake_timeout = config.handshake_timeout.max(MIN_TIMEOUT);
        config.close_timeout = config.close_timeout.max(MIN_TIMEOUT);
        if let Some(k) = &mut config.keepalive {
            k.interval = k.interval.max(MIN_TIMEOUT);
            k.timeout = k.timeout.max(MIN_TIMEOUT);
        }
        config.notification_queue = config.notification_queue.max(1);
        let mut c = Connection {
            notification_prefix: frame::notification_prefix(&config.source),
            rng: Rng::new(config.seed),
            config,
            state: State::Waiting { until: now },
            socket_open: false,
            handshake_deadline: None,
            next_ping: None,
            pong_deadline: None,
            closing: None,
            session: 0,
            next_query: 0,
            queries: HashMap::default(),
            queue: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            last_failure: None,
            reading_paused: false,
        };
        c.start_connect(now);
        c
    }

    // ---- accessors ------------------------------------------------------------------------

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// The source name.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.config.source
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> ConnectionState {
        match self.state {
            State::Waiting { .. } => ConnectionState::WaitingToReconnect,
            State::Connecting => ConnectionState::Connecting,
            State::Authenticating => ConnectionState::Authenticating,
            State::Attaching => ConnectionState::Attaching,
            State::Configured { .. } => ConnectionState::Configured,
            State::Closed => ConnectionState::Closed,
        }
    }

    /// True once the connection has ended for good.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The current session number (0 before the first `configureExtension`).
    #[must_use]
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The most recent failure, if any.
    #[must_use]
    pub fn last_failure(&self) -> Option<&Failure> {
        self.last_failure.as_ref()
    }

    /// Notifications waiting for the next session.
    #[must_use]
    pub fn queued_notifications(&self) -> usize {
        self.queue.len()
    }

    /// Queries of the current session still awaiting their terminal reply.
    #[must_use]
    pub fn open_queries(&self) -> usize {
        self.queries.len()
    }

    /// Whether [`Connection::notify`] would accept a notification now.
    #[must_use]
    pub fn can_notify(&self) -> bool {
        match self.state {
            State::Closed => false,
            State::Configured { .. } => true,
            _ => self.queue.len() < self.config.notification_queue,
        }
    }

    // ---- outputs --------------------------------------------------------------------------

    /// The next thing to do with the socket, in order.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut consider = |d: Option<Instant>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        };
        if let State::Waiting { until } = self.state {
            consider(Some(until));
        }
        consider(self.handshake_deadline);
        consider(self.next_ping);
        consider(self.pong_deadline);
        consider(self.closing);
        t
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// The socket asked for by [`Transmit::Connect`] is open.
    pub fn handle_open(&mut self, now: Instant) {
        if self.state != State::Connecting {
            tracing::debug!(source = %self.config.source, state = self.state.name(), "socket open reported in the wrong state; ignored");
            return;
        }
        self.socket_open = true;
        let auth = match &self.config.credentials {
            Credentials::Token(t) => ClientFrame::Validate {
                token: Some(t.expose().to_owned()),
            },
            Credentials::UserPassword { username, password } => ClientFrame::Authenticate {
                username: username.clone(),
                password: password.expose().to_owned(),
            },
        };
        self.transmits.push_back(Transmit::Frame(auth.encode()));
        self.state = State::Authenticating;
        if let Some(k) = self.config.keepalive {
            self.next_ping = Some(now + k.interval);
            self.pong_deadline = None;
        }
    }

    /// A pong arrived.
    pub fn handle_pong(&mut self, _now: Instant) {
        self.pong_deadline = None;
    }

    /// Hands back frames taken from [`Connection::poll_transmit`] for a socket that ended
    /// before they were written to it, oldest first. Notifications among them go back to the
    /// front of the offline queue, in their order, to be sent in the next session (even past
    /// the queue's capacity: they were accepted already). Other frames (replies of the ended
    /// session, handshake frames) are dropped: nothing waits for them any more.
    ///
    /// Call it before reporting the socket's end with [`Connection::handle_closed`] (or right
    /// after performing the [`Transmit::Abort`] that let the socket go), so that the
    /// notifications keep their place ahead of any queued since.
    pub fn requeue_unsent<I>(&mut self, frames: I)
    where
        I: IntoIterator<Item = String>,
        I::IntoIter: DoubleEndedIterator,
    {
        if self.state == State::Closed {
            return;
        }
        for frame in frames.into_iter().rev() {
            // Every notification frame is `<prefix><object>}`, made by this connection.
            let object = frame
                .strip_prefix(self.notification_prefix.as_str())
                .and_then(|rest| rest.strip_suffix('}'))
                .and_then(|text| Json::from_string(text.to_owned()).ok());
            if let Some(object) = object {
                self.queue.push_front(object);
            }
        }
    }

    /// The driver stopped (or resumed) reading the socket on purpose, for back-pressure
    /// while the application catches up. A pong may then sit unread behind other frames, so
    /// no keep-alive deadline runs while reading is paused; pings still go out, and the
    /// deadline applies again from the first ping after reading resumes.
    pub fn set_reading_paused(&mut self, paused: bool) {
        self.reading_paused = paused;
        if paused {
            self.pong_deadline = None;
        }
    }

    /// A text or binary frame arrived. A bad frame is reported and dropped; the connection
    /// goes on.
    ///
    /// # Errors
    /// The frame is malformed, unknown, or makes no sense in the current state.
    pub fn handle_frame(&mut self, now: Instant, data: &[u8]) -> Result<(), FrameError> {
        if self.state == State::Closed {
            return Ok(());
        }
        let r = self.handle_frame_inner(now, data);
        if r.is_err() {
            self.stats.frames_rejected += 1;
        }
        r
    }

    fn handle_frame_inner(&mut self, now: Instant, data: &[u8]) -> Result<(), FrameError> {
        if !self.socket_open {
            return Err(FrameError::NoSocket);
        }
        // Any traffic shows the link is alive.
        self.pong_deadline = None;
        let frame = ServerFrame::decode_for(data, &self.config.source)?;
        match frame {
            ServerFrame::Status(s) => self.on_status(now, s),
            ServerFrame::ConfigureExtension { config, .. } => {
                if self.state != State::Attaching {
                    return Err(self.unexpected("configureExtension"));
                }
                self.on_configured(now, config);
                Ok(())
            }
            ServerFrame::Publish { object, .. } => {
                if !matches!(self.state, State::Configured { .. }) {
                    return Err(self.unexpected("publish"));
                }
                self.events.push_back(Event::Publish { object });
                Ok(())
            }
            ServerFrame::Query {
                reply_address,
                object,
                ..
            } => {
                if !matches!(self.state, State::Configured { .. }) {
                    return Err(self.unexpected("query"));
                }
                let seq = self.next_query;
                self.next_query += 1;
                self.queries.insert(
                    seq,
                    QueryEntry {
                        prefix: frame::reply_prefix(&reply_address),
                        parts: 0,
                        abandon: None,
                    },
                );
                self.events.push_back(Event::Query {
                    id: QueryId {
                        session: self.session,
                        seq,
                    },
                    params: object,
                    reply_address,
                });
                Ok(())
            }
            ServerFrame::ReconnectRequired { .. } => {
                if !matches!(self.state, State::Configured { .. }) {
                    return Err(self.unexpected("reconnectRequired"));
                }
                self.end_session(DisconnectReason::ReconnectRequired);
                self.send_connect_extension(now);
                Ok(())
            }
            ServerFrame::Unknown { op } => Err(FrameError::UnknownOp { op }),
        }
    }

    /// The socket (or the attempt to open it) ended. Not to be called for a socket the
    /// connection already let go of with [`Transmit::Close`] or [`Transmit::Abort`].
    pub fn handle_closed(&mut self, now: Instant, end: SocketEnd) {
        if self.state == State::Closed {
            return;
        }
        if !(self.socket_open || self.state == State::Connecting) {
            tracing::debug!(source = %self.config.source, "socket end reported with no socket; ignored");
            return;
        }
        self.socket_open = false;
        let failure = match end {
            SocketEnd::ConnectFailed(e) => Failure::ConnectFailed(e),
            SocketEnd::Closed { code, reason } => Failure::SocketClosed { code, reason },
            SocketEnd::Error(e) => Failure::SocketError(e),
        };
        self.fail(now, failure);
    }

    /// Time has passed; act on every deadline that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if self.closing.is_some_and(|d| d <= now) {
            self.shutdown();
            return;
        }
        match self.state {
            State::Waiting { until } if until <= now => self.start_connect(now),
            State::Connecting | State::Authenticating | State::Attaching
                if self.handshake_deadline.is_some_and(|d| d <= now) =>
            {
                let stage = match self.state {
                    State::Connecting => "connecting",
                    State::Authenticating => "authenticating",
                    _ => "attaching",
                };
                self.transmits.push_back(Transmit::Abort);
                self.socket_open = false;
                self.fail(now, Failure::HandshakeTimeout { stage });
            }
            _ => {}
        }
        if self.state == State::Closed || !self.socket_open {
            return;
        }
        if self.pong_deadline.is_some_and(|d| d <= now) {
            self.transmits.push_back(Transmit::Abort);
            self.socket_open = false;
            self.fail(now, Failure::KeepAliveTimeout);
            return;
        }
        if let (Some(k), Some(next)) = (self.config.keepalive, self.next_ping)
            && next <= now
        {
            self.transmits.push_back(Transmit::Ping);
            if self.pong_deadline.is_none() && !self.reading_paused {
                self.pong_deadline = Some(now + k.timeout);
            }
            self.next_ping = Some(now + k.interval);
        }
    }

    // ---- commands -------------------------------------------------------------------------

    /// Sends a notification (a JSON object), or queues it while not configured.
    ///
    /// # Errors
    /// Not an object, the offline queue is full, or the connection is closed; the error gives
    /// the notification back.
    pub fn notify(&mut self, object: Json) -> Result<(), NotifyError> {
        if !object.is_object() {
            return Err(NotifyError::NotAnObject(object));
        }
        match self.state {
            State::Closed => Err(NotifyError::Closed(object)),
            State::Configured { .. } => {
                let frame = self.encode_notification(&object);
                self.transmits.push_back(Transmit::Frame(frame));
                Ok(())
            }
            _ if self.queue.len() < self.config.notification_queue => {
                self.queue.push_back(object);
                Ok(())
            }
            _ => Err(NotifyError::QueueFull(object)),
        }
    }

    /// Sends a reply to a query of the current session.
    ///
    /// # Errors
    /// The query's session ended, the query is finished, rows are not an object or array, or
    /// the connection is closed. Nothing is transmitted then.
    pub fn respond(&mut self, id: QueryId, reply: Reply) -> Result<(), ReplyError> {
        if self.state == State::Closed {
            return Err(ReplyError::Closed);
        }
        if id.session != self.session || !matches!(self.state, State::Configured { .. }) {
            return Err(ReplyError::SessionEnded);
        }
        if let Reply::Partial(rows) | Reply::Complete(rows) = &reply
            && !(rows.is_object() || rows.is_array())
        {
            return Err(ReplyError::InvalidRows);
        }
        if reply.is_terminal() {
            // One lookup: the terminal reply takes the query out.
            let Some(entry) = self.queries.remove(&id.seq) else {
                return Err(ReplyError::QueryFinished);
            };
            let frame = encode_reply(&entry.prefix, &reply);
            self.transmits.push_back(Transmit::Frame(frame));
            return Ok(());
        }
        let Some(entry) = self.queries.get_mut(&id.seq) else {
            return Err(ReplyError::QueryFinished);
        };
        let frame = encode_reply(&entry.prefix, &reply);
        self.transmits.push_back(Transmit::Frame(frame));
        entry.parts += 1;
        if let Some((after, _)) = &entry.abandon
            && entry.parts >= *after
        {
            self.finish_abandoned(id.seq);
        }
        Ok(())
    }

    /// The application gave up on a query after sending `parts_sent` replies: once those
    /// replies have been processed, `error` is sent as the terminal reply. Does nothing for a
    /// finished query or an ended session.
    pub fn abandon(&mut self, id: QueryId, parts_sent: u64, error: QueryError) {
        if id.session != self.session || !matches!(self.state, State::Configured { .. }) {
            return;
        }
        let Some(entry) = self.queries.get_mut(&id.seq) else {
            return;
        };
        entry.abandon = Some((parts_sent, error));
        if entry.parts >= parts_sent {
            self.finish_abandoned(id.seq);
        }
    }

    /// Closes the connection gracefully: queued notifications are delivered first if a
    /// session can be had within the close timeout, then the socket is closed with code 1000
    /// and [`Event::Closed`] follows.
    pub fn close(&mut self, now: Instant) {
        if self.state == State::Closed || self.closing.is_some() {
            return;
        }
        self.closing = Some(now + self.config.close_timeout);
        if self.queue.is_empty() || matches!(self.state, State::Configured { .. }) {
            self.shutdown();
        } else if let State::Waiting { .. } = self.state {
            // Hurry: there are notifications to deliver and little time.
            self.start_connect(now);
        }
    }

    // ---- internals ------------------------------------------------------------------------

    fn unexpected(&self, frame: &'static str) -> FrameError {
        FrameError::Unexpected {
            frame,
            state: self.state.name(),
        }
    }

    fn start_connect(&mut self, now: Instant) {
        self.state = State::Connecting;
        self.socket_open = false;
        self.stats.connect_attempts += 1;
        self.handshake_deadline = Some(now + self.config.handshake_timeout);
        self.next_ping = None;
        self.pong_deadline = None;
        self.transmits.push_back(Transmit::Connect {
            url: self.config.url.clone(),
        });
    }

    fn send_connect_extension(&mut self, now: Instant) {
        let f = ClientFrame::ConnectExtension {
            source: self.config.source.clone(),
            reconnect_secret: Some(self.config.reconnect_secret.clone()),
        };
        self.transmits.push_back(Transmit::Frame(f.encode()));
        self.state = State::Attaching;
        self.handshake_deadline = Some(now + self.config.handshake_timeout);
    }

    fn on_status(&mut self, now: Instant, s: StatusFrame) -> Result<(), FrameError> {
        match self.state {
            State::Authenticating => {
                if s.status.is_success() {
                    self.send_connect_extension(now);
                } else if s.status.is_error() {
                    let (code, message) = s.error_summary();
                    self.transmits.push_back(Transmit::Close {
                        code: 1000,
                        reason: "authentication rejected",
                    });
                    self.socket_open = false;
                    self.fatal(FatalError::AuthRejected {
                        status: s.status,
                        code,
                        message,
                    });
                }
                Ok(())
            }
            State::Attaching => {
                if s.status.is_error() {
                    let (code, message) = s.error_summary();
                    self.transmits.push_back(Transmit::Close {
                        code: 1000,
                        reason: "source refused",
                    });
                    self.socket_open = false;
                    self.fail(
                        now,
                        Failure::Refused {
                            status: s.status,
                            code,
                            message,
                        },
                    );
                }
                Ok(())
            }
            State::Configured { .. } => {
                if s.status.is_error() {
                    let (code, message) = s.error_summary();
                    tracing::warn!(
                        source = %self.config.source,
                        status = s.status.0,
                        code = code.as_deref().unwrap_or(""),
                        message = message.as_deref().unwrap_or(""),
                        "the server reported an error"
                    );
                }
                Ok(())
            }
            _ => Err(self.unexpected("status")),
        }
    }

    fn on_configured(&mut self, now: Instant, config: Json) {
        self.state = State::Configured { since: now };
        self.handshake_deadline = None;
        self.session += 1;
        self.stats.sessions += 1;
        while let Some(n) = self.queue.pop_front() {
            let frame = self.encode_notification(&n);
            self.transmits.push_back(Transmit::Frame(frame));
        }
        if self.closing.is_some() {
            self.shutdown();
        } else {
            self.events.push_back(Event::Configured { config });
        }
    }

    fn end_session(&mut self, reason: DisconnectReason) {
        if let State::Configured { .. } = self.state {
            self.queries.clear();
            self.events.push_back(Event::Disconnected { reason });
            // Replies for this session are now refused; ids carry the session number.
            self.state = State::Attaching;
        }
    }

    fn fail(&mut self, now: Instant, failure: Failure) {
        self.handshake_deadline = None;
        self.next_ping = None;
        self.pong_deadline = None;
        if let State::Configured { since } = self.state {
            if now.saturating_duration_since(since) >= self.config.backoff.stable_period {
                self.stats.consecutive_failures = 0;
            }
            self.end_session(DisconnectReason::Failure(failure.clone()));
        }
        // The socket is gone; until the back-off is chosen below, there is nothing to wait for.
        self.state = State::Waiting { until: now };
        tracing::info!(source = %self.config.source, %failure, "connection failure");
        self.last_failure = Some(failure.clone());
        if self.closing.is_some() && self.queue.is_empty() {
            self.shutdown();
            return;
        }
        if self.config.fail_on_connection_error {
            self.fatal(FatalError::ConnectionFailed(failure));
            return;
        }
        self.stats.consecutive_failures = self.stats.consecutive_failures.saturating_add(1);
        let delay = self
            .config
            .backoff
            .delay(self.stats.consecutive_failures, &mut self.rng)
            .max(MIN_RECONNECT_DELAY);
        self.state = State::Waiting { until: now + delay };
    }

    fn fatal(&mut self, error: FatalError) {
        self.end_session(DisconnectReason::Shutdown);
        self.finish(Some(error));
    }

    /// Graceful end: close the socket if one is open.
    fn shutdown(&mut self) {
        self.end_session(DisconnectReason::Shutdown);
        if self.socket_open {
            self.transmits.push_back(Transmit::Close {
                code: 1000,
                reason: "Closed by client",
            });
        } else if self.state == State::Connecting {
            self.transmits.push_back(Transmit::Abort);
        }
        self.finish(None);
    }

    fn finish(&mut self, error: Option<FatalError>) {
        self.state = State::Closed;
        self.socket_open = false;
        self.handshake_deadline = None;
        self.next_ping = None;
        self.pong_deadline = None;
        self.closing = None;
        self.queries.clear();
        let undelivered = self.queue.len();
        self.queue.clear();
        self.events.push_back(Event::Closed { error, undelivered });
    }

    fn finish_abandoned(&mut self, seq: u64) {
        if let Some(entry) = self.queries.remove(&seq)
            && let Some((_, error)) = entry.abandon
        {
            let frame = encode_reply(&entry.prefix, &Reply::Error(error));
            self.transmits.push_back(Transmit::Frame(frame));
        }
    }

    fn encode_notification(&self, object: &Json) -> String {
        let mut out = String::with_capacity(self.notification_prefix.len() + object.len() + 1);
        out.push_str(&self.notification_prefix);
        out.push_str(object.as_str());
        out.push('}');
        out
    }
}

fn encode_reply(prefix: &str, reply: &Reply) -> String {
    let mut out = String::new();
    match reply {
        Reply::Partial(rows) | Reply::Complete(rows) => {
            frame::push_reply(&mut out, prefix, reply.status(), Some(rows.as_str()));
        }
        Reply::Empty => frame::push_reply(&mut out, prefix, reply.status(), None),
        Reply::Error(e) => {
            // Serialized straight into the frame, without an intermediate `Json`.
            let status = reply.status();
            out.reserve(frame::reply_len(prefix, status, Some(e.json_len_hint())));
            frame::push_reply_head(&mut out, prefix, status, true);
            e.push_json(&mut out);
            out.push('}');
        }
    }
    out
}
