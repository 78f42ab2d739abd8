//! [`Connection`]: one source's link to Vantiq, across as many sockets as it takes.

mod config;
mod queues;
mod types;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::backoff::Rng;
use crate::config::Credentials;
use crate::frame::{self, ClientFrame, FrameError, ServerFrame, Status, StatusFrame};
use crate::json::Json;
use crate::notification::{Notification, NotificationEncoder};
use crate::query::{
    QueryError, QueryId, REPLY_ADDRESS_TOO_LONG_CODE, Reply, ReplyError, TOO_MANY_QUERIES_CODE,
};

pub use config::{ConnectionConfig, KeepAlive, Limits, random_id};
use queues::{Offline, Out, Outbox};
pub use types::{
    ConnectionState, DisconnectReason, Event, Failure, FatalError, NotifyRefused, SocketEnd, Stats,
    Transmit,
};

/// Smallest delay before a reconnect, so that full jitter never yields an immediate retry.
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(10);
/// Smallest value any configured timeout is raised to.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Close codes with which a server ends a session on purpose (normal, going away).
const CLEAN_CLOSE_CODES: [u16; 2] = [1000, 1001];
/// The error code with which Vantiq rejects credentials.
const AUTH_FAILED_CODE: &str = "io.vantiq.authentication.failed";

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

/// Every instant the connection waits for.
#[derive(Debug, Default, Clone, Copy)]
struct Deadlines {
    /// The handshake (connect, authenticate, attach) must be done by then.
    handshake: Option<Instant>,
    /// The next ping goes out then.
    next_ping: Option<Instant>,
    /// The pong answering the outstanding ping must arrive by then.
    pong: Option<Instant>,
    /// Something has waited for the socket without progress since then.
    write_stalled_since: Option<Instant>,
}

/// A graceful close under way.
#[derive(Debug, Clone, Copy)]
struct Closing {
    /// When it began.
    started: Instant,
    /// It gives up delivering then.
    deadline: Instant,
    /// It started a connect without waiting for the back-off.
    hurried: bool,
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

/// The queries of the current session awaiting their final reply: for each, the reply
/// prefix `,"headers":{"X-Reply-Address":"…"}`, ready to splice into replies.
#[derive(Debug, Default)]
struct Queries {
    open: HashMap<u64, String, SeqHash>,
    next: u64,
}

/// The socket: whether one is open, and its keep-alive bookkeeping.
#[derive(Debug, Default, Clone, Copy)]
struct Socket {
    open: bool,
    /// Reading is paused by the driver for back-pressure.
    reading_paused: bool,
    /// Payload of the last ping sent (a counter).
    last_ping: u64,
}

/// One source's connection to Vantiq: a sans-IO state machine spanning many sockets.
///
/// See the [crate documentation](crate) for the calling contract and a handshake step by
/// step. `Debug` shows the state and the queue sizes, never a frame's content.
///
/// # Example
///
/// The shape of a driver: after every input, perform the socket actions in order, hand the
/// events to the application, and wake up again at the instant the connection asks for.
///
/// ```
/// use std::time::Instant;
/// use vantiq_proto::{Connection, Event, Transmit};
///
/// /// One turn of a driver; returns when to call `handle_timeout` next.
/// fn turn(conn: &mut Connection, socket_writable: bool) -> Option<Instant> {
///     while let Some(action) = conn.poll_transmit(socket_writable) {
///         match action {
///             Transmit::Connect { url } => { /* open a WebSocket to `url`; report the
///                                             outcome with handle_open or handle_closed */ }
///             Transmit::Frame(text) => { /* write `text` as one frame */ }
///             Transmit::Ping { payload } => { /* send a ping carrying `payload` */ }
///             Transmit::Close { code, reason } => { /* send a close frame, let go of the socket */ }
///             Transmit::Abort => { /* drop the socket (or the attempt to open one) */ }
///         }
///     }
///     while let Some(event) = conn.poll_event() {
///         match event {
///             Event::Configured { config } => { /* the source's configuration */ }
///             Event::Publish { object } => { /* a publish for the application */ }
///             Event::Query { id, params, reply_address } => {
///                 /* answer later with conn.respond(id, Reply::…) */
///             }
///             Event::Disconnected { reason } => { /* the session ended; it reconnects */ }
///             Event::Closed { error, undelivered } => { /* the end, for good */ }
///         }
///     }
///     conn.poll_timeout()
/// }
/// # let _ = turn;
/// ```
pub struct Connection {
    config: ConnectionConfig,
    state: State,
    socket: Socket,
    deadlines: Deadlines,
    session: u64,
    queries: Queries,
    offline: Offline,
    outbox: Outbox,
    events: VecDeque<Event>,
    rng: Rng,
    stats: Stats,
    encoder: NotificationEncoder,
    last_failure: Option<Failure>,
    /// The server refused `connectExtension` on the last attempt, and no session was
    /// configured since: the state is [`ConnectionState::Refused`] while waiting.
    refused: bool,
    /// When a refusal was last logged at `ERROR` (cleared by a configured session).
    refusal_logged: Option<Instant>,
    closing: Option<Closing>,
    /// Ended for a fatal error.
    failed: bool,
}

/// A refusal of the source that keeps happening is logged at `ERROR` at most this often
/// (the attempts in between at `DEBUG`).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("source", &self.config.source)
            .field("state", &self.state.name())
            .field("session", &self.session)
            .field("open_queries", &self.queries.open.len())
            .field("offline_notifications", &self.offline.len())
            .field("outbox_bytes", &self.outbox.bytes())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Creates the connection; its first transmit asks for a socket.
    #[must_use]
    pub fn new(mut config: ConnectionConfig, now: Instant) -> Self {
        config.handshake_timeout = config.handshake_timeout.max(MIN_TIMEOUT);
        config.close_timeout = config.close_timeout.max(MIN_TIMEOUT);
        config.write_timeout = config.write_timeout.max(MIN_TIMEOUT);
        if let Some(k) = &mut config.keepalive {
            k.interval = k.interval.max(MIN_TIMEOUT);
            k.timeout = k.timeout.max(MIN_TIMEOUT);
        }
        let l = &mut config.limits;
        l.offline_notifications = l.offline_notifications.max(1);
        l.open_queries = l.open_queries.max(1);
        let mut c = Connection {
            encoder: NotificationEncoder::new(&config.source),
            rng: Rng::new(config.seed),
            config,
            state: State::Waiting { until: now },
            socket: Socket::default(),
            deadlines: Deadlines::default(),
            session: 0,
            queries: Queries::default(),
            offline: Offline::default(),
            outbox: Outbox::default(),
            events: VecDeque::new(),
            stats: Stats::default(),
            last_failure: None,
            refused: false,
            refusal_logged: None,
            closing: None,
            failed: false,
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
            State::Waiting { .. } if self.refused => ConnectionState::Refused,
            State::Waiting { .. } => ConnectionState::WaitingToReconnect,
            State::Connecting => ConnectionState::Connecting,
            State::Authenticating => ConnectionState::Authenticating,
            State::Attaching => ConnectionState::Attaching,
            State::Configured { .. } => ConnectionState::Configured,
            State::Closed if self.failed => ConnectionState::Failed,
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

    /// Notifications accepted and not handed out yet: waiting for the next session, or for
    /// the socket to take them.
    #[must_use]
    pub fn queued_notifications(&self) -> usize {
        self.offline.len() + self.outbox.notifications()
    }

    /// Bytes held in both queues: notifications waiting for a session, and frames waiting
    /// for the socket.
    #[must_use]
    pub fn queued_bytes(&self) -> usize {
        self.offline.bytes() + self.outbox.bytes()
    }

    /// Queries of the current session still awaiting their final reply.
    #[must_use]
    pub fn open_queries(&self) -> usize {
        self.queries.open.len()
    }

    /// Whether a reply handed to [`Connection::respond`] now keeps the outbox within its byte
    /// budget ([`Limits::outbox_bytes`](crate::Limits)). `respond` itself never refuses a
    /// reply for room (a query's parts must stay in order with everything else the
    /// application sent), so a driver holds replies back while this is false, as it holds
    /// notifications back while [`Connection::can_notify`] is: otherwise a handler streaming
    /// a large result to a server that stopped reading fills memory without bound. True
    /// whenever the reply would not be queued at all (no configured session) and while a
    /// graceful close drains.
    #[must_use]
    pub fn can_reply(&self) -> bool {
        match self.state {
            State::Configured { .. } if self.closing.is_none() => {
                self.outbox.bytes() < self.config.limits.outbox_bytes
            }
            _ => true,
        }
    }

    /// Whether [`Connection::notify`] would accept a notification now: the queue it would go
    /// to (the outbox while configured, the offline queue otherwise) is below its bounds, or
    /// a graceful close is under way (the application's last notifications are taken
    /// whatever the bounds, and the close timeout limits how long they may take).
    #[must_use]
    pub fn can_notify(&self) -> bool {
        let l = &self.config.limits;
        match self.state {
            State::Closed => false,
            _ if self.closing.is_some() => true,
            State::Configured { .. } => self.outbox.bytes() < l.outbox_bytes,
            _ => {
                self.offline.len() < l.offline_notifications
                    && self.offline.bytes() < l.offline_bytes
            }
        }
    }

    // ---- outputs --------------------------------------------------------------------------

    /// The next thing to do with the socket, in order.
    ///
    /// Pass `writable: false` when the socket cannot take a frame right now: frames and pings
    /// then stay here (they are never queued ahead of opening, closing or dropping a socket,
    /// so those still come out). A [`Transmit::Frame`] taken counts as written; a frame not
    /// taken when its socket ends goes back in the queue if it is a notification (in order,
    /// ahead of later ones) and is dropped otherwise (a reply or handshake frame of that
    /// socket).
    #[must_use]
    pub fn poll_transmit(&mut self, writable: bool) -> Option<Transmit> {
        self.settle_close();
        let t = match self.outbox.pop(writable)? {
            Out::Connect(url) => Transmit::Connect { url },
            Out::Frame(f) | Out::Reply(f) => Transmit::Frame(f),
            Out::Notification(n) => Transmit::Frame(n.into_frame()),
            Out::Ping(payload) => Transmit::Ping { payload },
            Out::Close { code, reason } => Transmit::Close { code, reason },
            Out::Abort => Transmit::Abort,
        };
        Some(t)
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
        let d = &self.deadlines;
        let waiting = match self.state {
            State::Waiting { until } => Some(until),
            _ => None,
        };
        let stall = d
            .write_stalled_since
            .map(|since| since + self.config.write_timeout);
        let close = self.closing.map(|c| c.deadline);
        [waiting, d.handshake, d.next_ping, d.pong, stall, close]
            .into_iter()
            .flatten()
            .min()
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// The socket asked for by [`Transmit::Connect`] is open.
    pub fn handle_open(&mut self, now: Instant) {
        if self.state != State::Connecting {
            tracing::debug!(source = %self.config.source, state = self.state.name(), "socket open reported in the wrong state; ignored");
            return;
        }
        self.socket.open = true;
        let auth = match &self.config.credentials {
            Credentials::Token(t) => ClientFrame::Validate {
                token: Some(t.expose().to_owned()),
            },
            Credentials::UserPassword { username, password } => ClientFrame::Authenticate {
                username: username.clone(),
                password: password.expose().to_owned(),
            },
        };
        self.outbox.push(Out::Frame(auth.encode()));
        self.state = State::Authenticating;
        self.deadlines.next_ping = self.config.keepalive.map(|k| now + k.interval);
        self.deadlines.pong = None;
        self.deadlines.write_stalled_since = None;
    }

    /// A pong arrived with this payload. Only the answer to the last ping counts: an
    /// unsolicited pong (or a server's ping) proves nothing about what this side writes.
    pub fn handle_pong(&mut self, _now: Instant, payload: &[u8]) {
        if payload == self.socket.last_ping.to_be_bytes() {
            self.deadlines.pong = None;
        }
    }

    /// Reports the write side of the socket, after each attempt to write: `transport_waiting`
    /// is whether the transport holds bytes the socket has not taken (its write buffer),
    /// `progressed` whether the socket took bytes since the previous report. When something
    /// waits (there, or frames here) and the socket takes nothing for
    /// [`ConnectionConfig::write_timeout`], the link is dead ([`Failure::WriteStalled`]).
    pub fn handle_write_status(&mut self, now: Instant, transport_waiting: bool, progressed: bool) {
        if !self.socket.open {
            self.deadlines.write_stalled_since = None;
            return;
        }
        let waiting = transport_waiting || self.outbox.has_writes();
        let since = &mut self.deadlines.write_stalled_since;
        if !waiting {
            *since = None;
        } else if progressed || since.is_none() {
            *since = Some(now);
        }
    }

    /// The driver stopped (or resumed) reading the socket on purpose, for back-pressure
    /// while the application catches up. A pong may then sit unread behind other frames, so
    /// no pong deadline runs while reading is paused; pings still go out, the write timeout
    /// still applies, and the pong deadline applies again from the first ping after reading
    /// resumes.
    pub fn set_reading_paused(&mut self, paused: bool) {
        self.socket.reading_paused = paused;
        if paused {
            self.deadlines.pong = None;
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
        if !self.socket.open {
            return Err(FrameError::NoSocket);
        }
        let (frame, other_source) = ServerFrame::decode_for(data, &self.config.source)?;
        if let Some(other) = &other_source {
            tracing::warn!(
                source = %self.config.source,
                resource_id = %other,
                "a frame for another source arrived on this source's connection; handled as this source's"
            );
        }
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
                self.on_query(reply_address, object);
                Ok(())
            }
            ServerFrame::ReconnectRequired { .. } => {
                if !matches!(self.state, State::Configured { .. }) {
                    return Err(self.unexpected("reconnectRequired"));
                }
                self.end_session(DisconnectReason::ReconnectRequired);
                // Nothing of the ended session goes out ahead of the new connectExtension:
                // its notifications wait for the next configuration, its replies are dropped.
                let back = self.outbox.take_session_writes();
                if !back.is_empty() {
                    self.stats.notifications_requeued += back.len() as u64;
                    self.offline.push_front_all(back);
                }
                self.send_connect_extension(now);
                Ok(())
            }
            ServerFrame::Unknown { op } => Err(FrameError::UnknownOp { op }),
        }
    }

    /// The socket (or the attempt to open it) ended. Report a peer's close as soon as its
    /// close frame arrives. Not to be called for a socket the connection already let go of
    /// with [`Transmit::Close`] or [`Transmit::Abort`].
    pub fn handle_closed(&mut self, now: Instant, end: SocketEnd) {
        if self.state == State::Closed {
            return;
        }
        if !(self.socket.open || self.state == State::Connecting) {
            tracing::debug!(source = %self.config.source, "socket end reported with no socket; ignored");
            return;
        }
        self.release_socket();
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
        if self.closing.is_some_and(|c| c.deadline <= now) {
            self.shutdown();
            return;
        }
        match self.state {
            State::Waiting { until } if until <= now => self.start_connect(now),
            State::Connecting | State::Authenticating | State::Attaching
                if self.deadlines.handshake.is_some_and(|d| d <= now) =>
            {
                let stage = match self.state {
                    State::Connecting => "connecting",
                    State::Authenticating => "authenticating",
                    _ => "attaching",
                };
                self.abort_socket(now, Failure::HandshakeTimeout { stage });
            }
            _ => {}
        }
        if self.state == State::Closed || !self.socket.open {
            return;
        }
        let stall_deadline = self
            .deadlines
            .write_stalled_since
            .map(|since| since + self.config.write_timeout);
        if stall_deadline.is_some_and(|d| d <= now) {
            self.abort_socket(now, Failure::WriteStalled);
            return;
        }
        if self.deadlines.pong.is_some_and(|d| d <= now) {
            self.abort_socket(now, Failure::KeepAliveTimeout);
            return;
        }
        if let (Some(k), Some(next)) = (self.config.keepalive, self.deadlines.next_ping)
            && next <= now
        {
            self.socket.last_ping = self.socket.last_ping.wrapping_add(1);
            self.outbox.push_ping(self.socket.last_ping.to_be_bytes());
            if self.deadlines.pong.is_none() && !self.socket.reading_paused {
                self.deadlines.pong = Some(now + k.timeout);
            }
            self.deadlines.next_ping = Some(now + k.interval);
        }
    }

    // ---- commands -------------------------------------------------------------------------

    /// The rule every notification follows: it is a JSON object (Vantiq delivers it as a
    /// VAIL object). For layers that take notifications before they reach the connection
    /// and want to refuse a bad one while its sender can still be told.
    #[must_use]
    pub fn is_notification(object: &Json) -> bool {
        object.is_object()
    }

    /// Sends a notification (a JSON object), or queues it while not configured.
    ///
    /// # Errors
    /// Not an object, the queue it would go to is full (see [`Connection::can_notify`]), or
    /// the connection is closed or closing; the error gives the notification back.
    pub fn notify(&mut self, object: Json) -> Result<(), NotifyRefused> {
        if let Some(why) = self.notify_refusal(object.is_object()) {
            return Err(why(object));
        }
        let n = self.encoder.encode_json(&object);
        self.queue_notification(n);
        Ok(())
    }

    /// Like [`Connection::notify`] for a notification already in its frame, from a
    /// [`NotificationEncoder`] for this connection's source (one made for another source
    /// is framed again). The cheaper way: the frame is what goes out.
    ///
    /// # Errors
    /// As [`Connection::notify`].
    pub fn notify_encoded(
        &mut self,
        notification: Notification,
    ) -> Result<(), NotifyRefused<Notification>> {
        if let Some(why) = self.notify_refusal(notification.is_object()) {
            return Err(why(notification));
        }
        let n = self.encoder.reframe(notification);
        self.queue_notification(n);
        Ok(())
    }

    /// An encoder for this connection's source.
    #[must_use]
    pub fn notification_encoder(&self) -> NotificationEncoder {
        self.encoder.clone()
    }

    /// Why a notification would be refused, if it would.
    fn notify_refusal<N>(&self, is_object: bool) -> Option<fn(N) -> NotifyRefused<N>> {
        if !is_object {
            Some(NotifyRefused::NotAnObject)
        } else if self.state == State::Closed {
            Some(NotifyRefused::Closed)
        } else if !self.can_notify() {
            Some(NotifyRefused::QueueFull)
        } else {
            None
        }
    }

    fn queue_notification(&mut self, n: Notification) {
        if matches!(self.state, State::Configured { .. }) {
            self.outbox.push(Out::Notification(n));
        } else {
            self.offline.push_back(n);
        }
    }

    /// Sends a reply to a query of the current session. A final reply (complete, empty,
    /// error) ends the query; replying to an ended query is refused.
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
        let frame = if reply.is_terminal() {
            // One lookup: the final reply takes the query out.
            let prefix = self
                .queries
                .open
                .remove(&id.seq)
                .ok_or(ReplyError::QueryFinished)?;
            encode_reply(&prefix, &reply)
        } else {
            let prefix = self
                .queries
                .open
                .get(&id.seq)
                .ok_or(ReplyError::QueryFinished)?;
            encode_reply(prefix, &reply)
        };
        self.outbox.push(Out::Reply(frame));
        Ok(())
    }

    /// Closes the connection gracefully: notifications already given, and those given
    /// until the socket closes, are delivered first if a session can be had within the close
    /// timeout; then the socket is closed with code 1000 and [`Event::Closed`] follows,
    /// counting what could not be delivered. Queries still open are answered by nobody: the
    /// session ends.
    pub fn close(&mut self, now: Instant) {
        if self.state == State::Closed || self.closing.is_some() {
            return;
        }
        let hurry = matches!(self.state, State::Waiting { .. }) && !self.offline.is_empty();
        self.closing = Some(Closing {
            started: now,
            deadline: now + self.config.close_timeout,
            hurried: hurry,
        });
        if hurry {
            // There is something to deliver and little time.
            self.start_connect(now);
        }
    }

    // ---- internals ------------------------------------------------------------------------

    /// During a graceful close, closes once there is nothing left to deliver: every frame
    /// written while configured, or no notification waiting while not.
    fn settle_close(&mut self) {
        let Some(closing) = self.closing else {
            return;
        };
        let done = match self.state {
            State::Closed => return,
            State::Configured { .. } => !self.outbox.has_writes(),
            State::Waiting { .. } if !self.offline.is_empty() => {
                // Notifications given after `close` while waiting to reconnect: hurry, once
                // (after a failure the back-off applies, as ever).
                if !closing.hurried {
                    self.closing = Some(Closing {
                        hurried: true,
                        ..closing
                    });
                    self.start_connect(closing.started);
                }
                false
            }
            _ => self.offline.is_empty(),
        };
        if done {
            self.shutdown();
        }
    }

    fn unexpected(&self, frame: &'static str) -> FrameError {
        FrameError::Unexpected {
            frame,
            state: self.state.name(),
        }
    }

    fn start_connect(&mut self, now: Instant) {
        self.state = State::Connecting;
        self.socket.open = false;
        self.stats.connect_attempts += 1;
        self.deadlines.handshake = Some(now + self.config.handshake_timeout);
        self.deadlines.next_ping = None;
        self.deadlines.pong = None;
        self.deadlines.write_stalled_since = None;
        self.outbox.push(Out::Connect(self.config.url.clone()));
    }

    fn send_connect_extension(&mut self, now: Instant) {
        let f = ClientFrame::ConnectExtension {
            source: self.config.source.clone(),
            reconnect_secret: Some(self.config.reconnect_secret.clone()),
        };
        self.outbox.push(Out::Frame(f.encode()));
        self.state = State::Attaching;
        self.deadlines.handshake = Some(now + self.config.handshake_timeout);
    }

    fn on_status(&mut self, now: Instant, s: StatusFrame) -> Result<(), FrameError> {
        match self.state {
            State::Authenticating => {
                if s.status.is_success() {
                    self.send_connect_extension(now);
                } else if s.status.is_error() {
                    let (code, message) = s.error_summary();
                    if is_auth_rejection(s.status, code.as_deref()) {
                        self.close_socket("authentication rejected");
                        self.fatal(FatalError::AuthRejected {
                            status: s.status,
                            code,
                            message,
                        });
                    } else {
                        self.close_socket("authentication failed");
                        self.fail(
                            now,
                            Failure::AuthFailed {
                                status: s.status,
                                code,
                                message,
                            },
                        );
                    }
                }
                Ok(())
            }
            State::Attaching => {
                if s.status.is_error() {
                    let (code, message) = s.error_summary();
                    self.close_socket("source refused");
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
        self.refused = false;
        self.refusal_logged = None;
        self.deadlines.handshake = None;
        self.session += 1;
        self.stats.sessions += 1;
        for n in self.offline.drain() {
            self.outbox.push(Out::Notification(n));
        }
        // During a graceful close the session only delivers what is queued.
        if self.closing.is_none() {
            self.events.push_back(Event::Configured { config });
        }
    }

    fn on_query(&mut self, reply_address: String, params: Json) {
        let limits = self.config.limits;
        let refusal = if reply_address.len() > limits.reply_address_bytes {
            Some(QueryError::new(
                REPLY_ADDRESS_TOO_LONG_CODE,
                "Source {0} refused a query whose reply address has {1} bytes (at most {2}).",
                [
                    serde_json::Value::from(self.config.source.as_str()),
                    reply_address.len().into(),
                    limits.reply_address_bytes.into(),
                ],
            ))
        } else if self.queries.open.len() >= limits.open_queries {
            Some(QueryError::new(
                TOO_MANY_QUERIES_CODE,
                "Source {0} already has {1} queries awaiting their answer; try again later.",
                [
                    serde_json::Value::from(self.config.source.as_str()),
                    self.queries.open.len().into(),
                ],
            ))
        } else {
            None
        };
        if let Some(error) = refusal {
            tracing::warn!(source = %self.config.source, code = %error.code, "query refused");
            self.stats.queries_refused += 1;
            let frame = encode_reply(&frame::reply_prefix(&reply_address), &Reply::Error(error));
            self.outbox.push(Out::Reply(frame));
            return;
        }
        let seq = self.queries.next;
        self.queries.next += 1;
        self.queries
            .open
            .insert(seq, frame::reply_prefix(&reply_address));
        self.events.push_back(Event::Query {
            id: QueryId {
                session: self.session,
                seq,
            },
            params,
            reply_address,
        });
    }

    fn end_session(&mut self, reason: DisconnectReason) {
        if let State::Configured { .. } = self.state {
            self.queries.open.clear();
            self.events.push_back(Event::Disconnected { reason });
            // Replies for this session are now refused; ids carry the session number.
            self.state = State::Attaching;
        }
    }

    /// The socket is gone (or going): notifications it never took go back to the front of
    /// the offline queue, in order; everything else queued for it is dropped.
    fn release_socket(&mut self) {
        self.socket.open = false;
        self.deadlines.write_stalled_since = None;
        let back = self.outbox.take_notifications();
        if !back.is_empty() {
            self.stats.notifications_requeued += back.len() as u64;
            tracing::debug!(source = %self.config.source, count = back.len(), "notifications requeued for the next session");
            self.offline.push_front_all(back);
        }
    }

    /// Lets go of the socket with a close handshake.
    fn close_socket(&mut self, reason: &'static str) {
        let open = self.socket.open;
        self.release_socket();
        if open {
            self.outbox.push(Out::Close { code: 1000, reason });
        }
    }

    /// Drops the socket (or the connect in progress) at once and fails.
    fn abort_socket(&mut self, now: Instant, failure: Failure) {
        self.release_socket();
        self.outbox.push(Out::Abort);
        self.fail(now, failure);
    }

    fn fail(&mut self, now: Instant, failure: Failure) {
        self.deadlines.handshake = None;
        self.deadlines.next_ping = None;
        self.deadlines.pong = None;
        self.deadlines.write_stalled_since = None;
        // A configured session the server ended on purpose (a restart, an upgrade) is no
        // reason to back off further; nor is one that stayed up for the stable period.
        let mut clean_end = false;
        if let State::Configured { since } = self.state {
            clean_end = matches!(
                failure,
                Failure::SocketClosed { code: Some(c), .. } if CLEAN_CLOSE_CODES.contains(&c)
            );
            let stable = now.saturating_duration_since(since) >= self.config.backoff.stable_period;
            if stable || clean_end {
                self.stats.consecutive_failures = 0;
            }
            self.end_session(DisconnectReason::Failure(failure.clone()));
        }
        // The socket is gone; until the back-off is chosen below, there is nothing to wait for.
        self.state = State::Waiting { until: now };
        self.refused = matches!(failure, Failure::Refused { .. });
        self.last_failure = Some(failure.clone());
        if self.closing.is_some() && self.offline.is_empty() {
            tracing::info!(source = %self.config.source, %failure, "connection failure while closing");
            self.shutdown();
            return;
        }
        if self.config.fail_on_connection_error {
            // Logged with the connection's end.
            self.fatal(FatalError::ConnectionFailed(failure));
            return;
        }
        self.stats.consecutive_failures = self.stats.consecutive_failures.saturating_add(1);
        let backoff = self.config.backoff;
        let mut delay = backoff
            .delay(self.stats.consecutive_failures, &mut self.rng)
            .max(MIN_RECONNECT_DELAY);
        if clean_end {
            // At most one attempt per half initial delay, even against a server that
            // closes every session cleanly right after configuring it.
            delay = delay.max(backoff.initial / 2);
        }
        self.state = State::Waiting { until: now + delay };
        self.log_failure(now, &failure, delay);
    }

    /// One line per failed attempt, with the number of failures in a row and the wait before
    /// the next attempt. A refused source is a configuration error a person must fix: `ERROR`
    /// the first time, then at most once per [`REFUSAL_LOG_INTERVAL`] while it goes on.
    fn log_failure(&mut self, now: Instant, failure: &Failure, delay: Duration) {
        let failures = self.stats.consecutive_failures;
        let retry_in = Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        if !self.refused {
            tracing::info!(
                source = %self.config.source,
                %failure,
                failures,
                ?retry_in,
                "connection failure; reconnecting"
            );
            return;
        }
        let due = self
            .refusal_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_LOG_INTERVAL);
        if due {
            self.refusal_logged = Some(now);
            tracing::error!(
                source = %self.config.source,
                %failure,
                failures,
                ?retry_in,
                "the server refused source `{}` (connectExtension): is a source of that name \
                 defined, as an extension source, in the namespace of the token, and served by \
                 no other connector? Retrying with back-off; while this lasts it is logged \
                 again at most once a minute",
                self.config.source
            );
        } else {
            tracing::debug!(
                source = %self.config.source,
                %failure,
                failures,
                ?retry_in,
                "the server refused the source again"
            );
        }
    }

    fn fatal(&mut self, error: FatalError) {
        self.end_session(DisconnectReason::Shutdown);
        self.finish(Some(error));
    }

    /// Graceful end: close the socket if one is open.
    fn shutdown(&mut self) {
        self.end_session(DisconnectReason::Shutdown);
        if self.socket.open {
            self.close_socket("Closed by client");
        } else if self.state == State::Connecting {
            self.release_socket();
            self.outbox.push(Out::Abort);
        }
        self.finish(None);
    }

    fn finish(&mut self, error: Option<FatalError>) {
        // Whatever is still queued was accepted and will never be delivered: count it.
        let unsent = self.outbox.take_notifications().len();
        let undelivered = unsent + self.offline.drain().count();
        self.failed = error.is_some();
        self.state = State::Closed;
        self.socket.open = false;
        self.deadlines = Deadlines::default();
        self.closing = None;
        self.queries.open.clear();
        self.events.push_back(Event::Closed { error, undelivered });
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

/// Whether an authentication reply rejects the credentials (terminal), as opposed to a
/// server error (retried).
fn is_auth_rejection(status: Status, code: Option<&str>) -> bool {
    matches!(status.0, 401 | 403) || code == Some(AUTH_FAILED_CODE)
}
