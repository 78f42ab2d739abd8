//! What goes in and out of a [`Connection`](crate::Connection): transmits, events, how a
//! socket ended, failures, and the observer types.

use std::fmt;

use crate::frame::Status;
use crate::json::Json;
use crate::query::QueryId;
use crate::url::TargetUrl;

/// What the driver must do with the socket, in order.
///
/// Exhaustive on purpose: a driver must perform every variant, so a new one is a breaking
/// change that the compiler points out, never one a driver ignores silently.
#[derive(Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Open a new socket to `url`; report the outcome with
    /// [`Connection::handle_open`](crate::Connection::handle_open) or
    /// [`Connection::handle_closed`](crate::Connection::handle_closed).
    Connect {
        /// Where to connect.
        url: TargetUrl,
    },
    /// Send this text frame. Once taken it counts as written: take frames only when the
    /// socket can accept them (see [`Connection::poll_transmit`](crate::Connection::poll_transmit)).
    Frame(String),
    /// Send a WebSocket ping with this payload; the pong must echo it.
    Ping {
        /// The ping's payload.
        payload: [u8; 8],
    },
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

impl Transmit {
    /// Whether performing this needs the socket to take bytes now (a frame or a ping), as
    /// opposed to opening, closing or dropping it.
    #[must_use]
    pub fn needs_write(&self) -> bool {
        matches!(self, Transmit::Frame(_) | Transmit::Ping { .. })
    }
}

/// Frames are shown with their operation and size, never their content: the authentication
/// frame holds the token, and payloads may hold anything.
impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transmit::Connect { url } => f.debug_struct("Connect").field("url", url).finish(),
            Transmit::Frame(text) => write!(f, "Frame({}, {} bytes)", frame_kind(text), text.len()),
            Transmit::Ping { payload } => f.debug_struct("Ping").field("payload", payload).finish(),
            Transmit::Close { code, reason } => f
                .debug_struct("Close")
                .field("code", code)
                .field("reason", reason)
                .finish(),
            Transmit::Abort => f.write_str("Abort"),
        }
    }
}

/// The operation of a frame this crate encoded (`notification`, `validate`, a reply, …).
fn frame_kind(text: &str) -> &'static str {
    const KINDS: [(&str, &str); 5] = [
        ("{\"op\":\"notification\"", "notification"),
        ("{\"op\":\"validate\"", "validate"),
        ("{\"op\":\"authenticate\"", "authenticate"),
        ("{\"op\":\"connectExtension\"", "connectExtension"),
        ("{\"status\":", "query reply"),
    ];
    KINDS
        .iter()
        .find(|(prefix, _)| text.starts_with(prefix))
        .map_or("frame", |(_, kind)| kind)
}

/// How a socket ended, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketEnd {
    /// The socket could not be opened (DNS, TCP, TLS or WebSocket upgrade failure).
    ConnectFailed(String),
    /// The peer closed the socket: report it as soon as the close frame arrives (or the
    /// stream ends without one); the close handshake may finish after that.
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
    /// No pong answered a ping in time.
    #[error("keep-alive timeout: no answer to a ping")]
    KeepAliveTimeout,
    /// The socket took no bytes for the write timeout while something waited to be written.
    #[error("write stalled: the socket took nothing for the write timeout")]
    WriteStalled,
    /// Authentication failed for a reason other than rejected credentials (a server error):
    /// retried with back-off.
    #[error("authentication failed: status {status}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    AuthFailed {
        /// Status of the reply.
        status: Status,
        /// Vantiq error code.
        code: Option<String>,
        /// Vantiq error message.
        message: Option<String>,
    },
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
    /// [`Connection::close`](crate::Connection::close) was called.
    Shutdown,
}

/// Why the connection ended for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FatalError {
    /// The server rejected the credentials (status 401 or 403, or the error code
    /// `io.vantiq.authentication.failed`). Retrying would only flood it.
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
///
/// Exhaustive on purpose, like [`Transmit`]: a driver hands every variant on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A session began: the source's configuration document (`object.config`).
    Configured {
        /// The configuration.
        config: Json,
    },
    /// Data was published to the source (`null` when the publish had no `object`).
    Publish {
        /// The published object.
        object: Json,
    },
    /// A query awaits replies ([`Connection::respond`](crate::Connection::respond)).
    Query {
        /// Pass this to [`Connection::respond`](crate::Connection::respond).
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
        /// `None` after [`Connection::close`](crate::Connection::close); the reason otherwise.
        error: Option<FatalError>,
        /// Notifications accepted by [`Connection::notify`](crate::Connection::notify) that
        /// were never handed to a socket (the close timeout passed, or a fatal error).
        undelivered: usize,
    },
}

/// A notification [`Connection::notify`](crate::Connection::notify) (or
/// [`Connection::notify_encoded`](crate::Connection::notify_encoded)) refused, and why. Each
/// variant gives the notification back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyRefused<N = Json> {
    /// The queue it would go to is full (offline queue while not configured, outbox while
    /// the socket is behind): try again once
    /// [`Connection::can_notify`](crate::Connection::can_notify) says so.
    #[error("the notification queue is full")]
    QueueFull(N),
    /// A notification must be a JSON object.
    #[error("a notification must be a JSON object")]
    NotAnObject(N),
    /// The connection is closed or closing.
    #[error("the connection is closed")]
    Closed(N),
}

impl<N> NotifyRefused<N> {
    /// Gives back the notification that was not accepted.
    #[must_use]
    pub fn into_inner(self) -> N {
        match self {
            NotifyRefused::QueueFull(n)
            | NotifyRefused::NotAnObject(n)
            | NotifyRefused::Closed(n) => n,
        }
    }
}

/// Where a source's connection stands: the one state vocabulary of the SDK (a source's
/// handle, the health probes' `/readyz` and the logs all use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Waiting before the next attempt (after a failure, or a session that ended).
    WaitingToReconnect,
    /// Waiting before the next attempt after the server refused the source
    /// (`connectExtension` rejected: no source of that name in the token's namespace, or not
    /// an extension source). A configuration error: retried with back-off, logged at
    /// `ERROR`.
    Refused,
    /// A socket is being opened.
    Connecting,
    /// `validate`/`authenticate` sent.
    Authenticating,
    /// `connectExtension` sent.
    Attaching,
    /// `configureExtension` received: publishes, queries and notifications flow.
    Configured,
    /// Ended for good on purpose (a graceful close).
    Closed,
    /// Ended for good after an error (a rejected token; with `failOnConnectionError`, any
    /// connection failure).
    Failed,
}

impl ConnectionState {
    /// The lower-case name used in logs and in the health probe's JSON: `waiting to
    /// reconnect`, `refused by the server`, `connecting`, `authenticating`, `attaching`,
    /// `configured`, `closed`, `failed`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::WaitingToReconnect => "waiting to reconnect",
            ConnectionState::Refused => "refused by the server",
            ConnectionState::Connecting => "connecting",
            ConnectionState::Authenticating => "authenticating",
            ConnectionState::Attaching => "attaching",
            ConnectionState::Configured => "configured",
            ConnectionState::Closed => "closed",
            ConnectionState::Failed => "failed",
        }
    }

    /// Whether the connection has ended for good ([`Closed`](Self::Closed) or
    /// [`Failed`](Self::Failed)).
    #[must_use]
    pub fn is_ended(self) -> bool {
        matches!(self, ConnectionState::Closed | ConnectionState::Failed)
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters for observers and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Sockets asked for.
    pub connect_attempts: u64,
    /// Sessions configured.
    pub sessions: u64,
    /// Failures since the failure count last reset.
    pub consecutive_failures: u32,
    /// Frames dropped as malformed or unexpected.
    pub frames_rejected: u64,
    /// Notifications put back in the queue because their socket ended before taking them.
    pub notifications_requeued: u64,
    /// Queries answered at once with an error because a limit was reached.
    pub queries_refused: u64,
}
