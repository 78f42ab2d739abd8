//! The server side of the protocol, sans-IO: what a Vantiq server does with a connector's
//! WebSocket, for test servers and simulations (feature `server`; `vantiq-testkit` runs its
//! embedded server and `vantiq-devserver` on it).
//!
//! Two pieces, in the style of [`Connection`](crate::Connection) (inputs take `now`, outputs
//! are polled, no I/O, no clock, no panics on peer input):
//!
//! * [`Registry`]: the server-wide state every socket shares — the sources and their
//!   configurations, which socket holds each source (one at a time, with `reconnectSecret`
//!   takeover), and the queries in flight, each with a deadline. It is consulted by every
//!   [`ServerConnection`] input that needs it (passed as `&mut Registry`).
//! * [`ServerConnection`]: one connector's WebSocket: authentication (`validate` with a
//!   token, `authenticate` with a user name and password, Vantiq's 401 error lists),
//!   `connectExtension` (answered with `configureExtension`, or refused), `publish` and
//!   `query` injection, `reconnectRequired` with a new configuration, notification and reply
//!   acknowledgements, binary or text framing, and closes with a chosen code.
//!
//! # Calling contract
//!
//! * Create the registry with [`Registry::new`]; for each accepted WebSocket call
//!   [`Registry::accept`] and keep the [`ServerConnection`] it gives.
//! * Feed each connection its inputs: [`ServerConnection::handle_frame`] (a text or binary
//!   frame arrived), [`ServerConnection::handle_close_frame`] (the connector sent a close
//!   frame) and [`ServerConnection::handle_closed`] (the socket ended), and its commands:
//!   [`publish`](ServerConnection::publish), [`query`](ServerConnection::query),
//!   [`reconnect_required`](ServerConnection::reconnect_required),
//!   [`send_raw`](ServerConnection::send_raw), [`close`](ServerConnection::close) and
//!   [`abort`](ServerConnection::abort). [`Registry::holder`] tells which connection holds a
//!   source.
//! * After every input or command, **drain the connection's
//!   [`poll_transmit`](ServerConnection::poll_transmit) and perform each action in order**
//!   (send a text or binary frame, close with a code, drop the socket), **then its
//!   [`poll_event`](ServerConnection::poll_event), then the registry's
//!   [`poll_event`](Registry::poll_event)**. A [`RegistryEvent::Displaced`] names another
//!   connection that lost its source to a takeover: call [`ServerConnection::abort`] on it.
//! * Read [`Registry::poll_timeout`] and call [`Registry::handle_timeout`] at that instant:
//!   queries without a terminal reply by their deadline end with
//!   [`RegistryEvent::QueryTimedOut`]. A connection has no deadlines of its own (its inputs
//!   take `now` all the same, as every sans-IO input here does); `now` must never go
//!   backwards.
//! * After a [`ServerTransmit::Close`] the socket is closing: keep reading until it ends,
//!   then call `handle_closed`. After a [`ServerTransmit::Abort`] (or `handle_closed`) the
//!   connection is finished ([`ServerEvent::Closed`] is its last event) and every later
//!   input is a no-op.
//!
//! A frame the server cannot use is an [`AnomalyKind`] (reported as a
//! [`ServerEvent::Anomaly`]; undecodable frames are also an `Err` from `handle_frame`) and,
//! where the real server answers, an error frame; the session goes on.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use vantiq_proto::Json;
//! use vantiq_proto::server::{
//!     ConnectOutcome, Registry, ServerEvent, ServerOptions, ServerTransmit,
//! };
//!
//! let now = Instant::now();
//! let mut options = ServerOptions::default();
//! options.token = Some("t0k".into());
//! options.binary_frames = false;
//! options.bookkeeping = false;
//! options.report_frames = false;
//! let mut reg = Registry::new(options);
//! reg.define_source("Thermo", Json::from(serde_json::json!({"pollMs": 500})));
//!
//! let mut conn = reg.accept();
//! conn.handle_frame(now, &mut reg,
//!     br#"{"op":"validate","resourceName":"system.credentials","object":"t0k"}"#).unwrap();
//! conn.handle_frame(now, &mut reg,
//!     br#"{"op":"connectExtension","resourceName":"sources","resourceId":"Thermo"}"#).unwrap();
//! let Some(ServerTransmit::Text(auth)) = conn.poll_transmit() else { panic!() };
//! assert!(auth.starts_with(r#"{"status":200"#));
//! assert_eq!(
//!     conn.poll_transmit(),
//!     Some(ServerTransmit::Text(
//!         r#"{"op":"configureExtension","resourceName":"sources","resourceId":"Thermo","object":{"config":{"pollMs":500}}}"#.into()
//!     ))
//! );
//! assert!(matches!(conn.poll_event(), Some(ServerEvent::Auth { accepted: true, .. })));
//! assert!(matches!(
//!     conn.poll_event(),
//!     Some(ServerEvent::ConnectAttempt { outcome: ConnectOutcome::Accepted, .. })
//! ));
//! assert_eq!(reg.holder("Thermo").map(|h| h.connection), Some(conn.id()));
//!
//! // A query, answered by the connector with one final reply.
//! let address = conn
//!     .query(now, &mut reg, Json::empty_object(), Duration::from_secs(5))
//!     .unwrap();
//! let _query_frame = conn.poll_transmit();
//! let reply = format!(r#"{{"status":200,"headers":{{"X-Reply-Address":"{address}"}},"body":[{{"t":21}}]}}"#);
//! conn.handle_frame(now, &mut reg, reply.as_bytes()).unwrap();
//! let Some(vantiq_proto::server::RegistryEvent::QueryFinished(result)) = reg.poll_event() else {
//!     panic!()
//! };
//! assert_eq!(result.rows, [serde_json::json!({"t": 21})]);
//! ```

mod connection;
mod registry;

pub use connection::ServerConnection;
pub use registry::{Holder, Registry};

use std::fmt;

use crate::FrameError;
use crate::Status;
use crate::frame::{ClientFrame, QueryReply};
use crate::json::Json;
use crate::query::QueryError;

/// Error codes the server puts in its error lists (`[{"code", "message", "params"}]`).
///
/// The real server's codes for these cases are not documented; these are this server's
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

/// How the server behaves: credentials it accepts, framing, and the optional frames real
/// servers send. Every default behaves like a real Vantiq server.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The only access token `validate` accepts; `None` (the default) accepts every token,
    /// and a missing one.
    pub token: Option<String>,
    /// The user name and password `authenticate` accepts; `None` (the default) rejects every
    /// `authenticate`.
    pub credentials: Option<(String, String)>,
    /// The namespace named in the authentication reply (default `testkit`).
    pub namespace: String,
    /// Send binary frames, as the real server does (default); `false` sends text frames.
    pub binary_frames: bool,
    /// Add the real server's bookkeeping fields (`isSystemResource`, `parameters`,
    /// `contentType`, `skipMonitoring`, `isExternal`, `address`, `messageHeaders`) to
    /// `configureExtension`, `publish` and `query` (default on).
    pub bookkeeping: bool,
    /// Send an op-less `{"status":200}` before each `configureExtension` (default off).
    pub status_before_configure: bool,
    /// Acknowledge every notification with `{"status":200}` (default on).
    pub ack_notifications: bool,
    /// Acknowledge every query reply with `{"status":200}` (default off).
    pub ack_query_replies: bool,
    /// Report every decoded frame as a [`ServerEvent::Frame`] (default on; turn off for
    /// long benchmarks).
    pub report_frames: bool,
    /// Seed of the generator of reply addresses and `address` fields.
    pub seed: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            token: None,
            credentials: None,
            namespace: "testkit".to_owned(),
            binary_frames: true,
            bookkeeping: true,
            status_before_configure: false,
            ack_notifications: true,
            ack_query_replies: false,
            report_frames: true,
            seed: 0,
        }
    }
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field("namespace", &self.namespace)
            .field("binary_frames", &self.binary_frames)
            .field("bookkeeping", &self.bookkeeping)
            .field("status_before_configure", &self.status_before_configure)
            .field("ack_notifications", &self.ack_notifications)
            .field("ack_query_replies", &self.ack_query_replies)
            .field("report_frames", &self.report_frames)
            .field("seed", &self.seed)
            .finish()
    }
}

/// The registry's number for one accepted socket (counting from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection {}", self.0)
    }
}

/// What the host must do with the socket, in order. (Exhaustive on purpose: a host that does
/// not perform every kind of transmit is broken, so a new kind is a breaking change.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTransmit {
    /// Send this text frame.
    Text(String),
    /// Send this binary frame.
    Binary(Vec<u8>),
    /// Send a close frame with this code and reason, then keep reading until the socket ends
    /// and report that with [`ServerConnection::handle_closed`].
    Close {
        /// WebSocket close code (1000 normal, 1001 going away, …).
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// Drop the socket at once, without a close frame (after writing the frames before
    /// this one, as far as the peer takes them). Report nothing more about it.
    Abort,
}

/// A frame to put on the wire exactly as given, for malformed-input tests
/// ([`ServerConnection::send_raw`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    /// A text frame.
    Text(String),
    /// A binary frame (need not be UTF-8).
    Binary(Vec<u8>),
}

impl From<&str> for RawFrame {
    fn from(s: &str) -> Self {
        RawFrame::Text(s.to_owned())
    }
}

impl From<String> for RawFrame {
    fn from(s: String) -> Self {
        RawFrame::Text(s)
    }
}

impl From<Vec<u8>> for RawFrame {
    fn from(b: Vec<u8>) -> Self {
        RawFrame::Binary(b)
    }
}

impl From<&[u8]> for RawFrame {
    fn from(b: &[u8]) -> Self {
        RawFrame::Binary(b.to_vec())
    }
}

/// How the server answered one `connectExtension`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectOutcome {
    /// Accepted: `configureExtension` was sent.
    Accepted,
    /// Accepted by taking the source over from a live connection with the same
    /// `reconnectSecret` (that connection is dropped abruptly).
    TookOver,
    /// Refused with "does not have an associated stream" ([`Registry::refuse_connects`]).
    RefusedNoStream,
    /// Refused because another connection holds the source with a different (or no) secret.
    RefusedAlreadyConnected,
    /// Refused because the server has no such source (status 404).
    UnknownSource,
}

impl ConnectOutcome {
    /// Whether the connection now holds the source.
    #[must_use]
    pub fn is_accepted(self) -> bool {
        matches!(self, ConnectOutcome::Accepted | ConnectOutcome::TookOver)
    }
}

/// Something a connector did that the real server would not expect. It never stops the
/// connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AnomalyKind {
    /// A query reply whose `X-Reply-Address` matches no query in flight (never sent, already
    /// finished, or timed out).
    UnknownReplyAddress {
        /// The reply as received.
        reply: QueryReply,
    },
    /// A frame that could not be decoded (the text is kept, up to 4 KiB).
    BadFrame {
        /// Why it was refused.
        error: FrameError,
        /// The start of the frame as text (lossy UTF-8).
        text: String,
    },
    /// A frame with an op the server does not know.
    UnknownOp {
        /// The op.
        op: String,
    },
    /// A frame other than `validate`/`authenticate` before authentication succeeded.
    NotAuthenticated {
        /// The frame.
        frame: ClientFrame,
    },
    /// A notification or query reply on a socket that holds no source (never attached,
    /// refused, taken over, or `reconnectRequired` pending).
    NotAttached {
        /// The frame.
        frame: ClientFrame,
    },
    /// A notification naming another source than the one its socket is attached to.
    WrongSource {
        /// The source the socket is attached to.
        attached: String,
        /// The `resourceId` of the notification.
        named: String,
    },
}

/// What happened on one connection, for the host to record or act on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A frame was decoded (only with [`ServerOptions::report_frames`]), before it was acted
    /// on. `source` is the source this socket held when it arrived, or for a
    /// `connectExtension` the source it names.
    Frame {
        /// The frame.
        frame: ClientFrame,
        /// The source it concerns, if any.
        source: Option<String>,
    },
    /// A `validate` or `authenticate` was answered.
    Auth {
        /// Whether the credentials were accepted.
        accepted: bool,
        /// The user name of an `authenticate`.
        username: Option<String>,
    },
    /// A `connectExtension` was answered.
    ConnectAttempt {
        /// The source named.
        source: String,
        /// `parameters.reconnectSecret`, if sent.
        reconnect_secret: Option<String>,
        /// How it was answered.
        outcome: ConnectOutcome,
    },
    /// A notification for the source this socket holds.
    Notification {
        /// The source.
        source: String,
        /// Its `object`.
        object: Json,
    },
    /// This socket let go of the source it held (it closed, was closed or dropped). Not
    /// reported when another connection took the source over
    /// ([`RegistryEvent::Displaced`] says so).
    Detached {
        /// The source.
        source: String,
    },
    /// The connector sent a close frame.
    PeerClosed {
        /// Its close code, if any.
        code: Option<u16>,
        /// Its reason.
        reason: String,
        /// The source the socket held when it arrived.
        source: Option<String>,
    },
    /// Something unexpected arrived; see [`AnomalyKind`].
    Anomaly(AnomalyKind),
    /// The connection is finished: the last event.
    Closed,
}

/// Server-wide news from the [`Registry`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RegistryEvent {
    /// A query got its terminal reply (its status may be an error).
    QueryFinished(QueryResult),
    /// A query had no terminal reply by its deadline; the result holds what came.
    QueryTimedOut(QueryResult),
    /// `connection` lost `source` to another connection with the same `reconnectSecret`:
    /// call [`ServerConnection::abort`] on it.
    Displaced {
        /// The connection that lost the source.
        connection: ConnectionId,
        /// The source.
        source: String,
        /// The connection that holds it now.
        by: ConnectionId,
    },
}

/// Everything a query got back.
///
/// `parts` holds every reply in arrival order (the partial `100`s and the terminal one), so a
/// test can check how a connector split its rows; `rows` is what Vantiq hands to the VAIL
/// `SELECT`: the rows of every `100` and `200` reply, concatenated (an object body is one row,
/// an array body several).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueryResult {
    /// The source queried.
    pub source: String,
    /// The reply address the server generated for the query.
    pub reply_address: String,
    /// The status of the terminal reply: 200, 204, or the error status (0 while there is
    /// none).
    pub status: Status,
    /// The rows of every partial and final reply, in order. A body with no
    /// [`serde_json::Value`] form ([`Json::to_value`] fails: nested too deep) is one `null`
    /// row here; its text is in `parts`.
    pub rows: Vec<serde_json::Value>,
    /// Every reply, the terminal one last.
    pub parts: Vec<QueryReply>,
}

impl QueryResult {
    fn new(source: String, reply_address: String) -> Self {
        QueryResult {
            source,
            reply_address,
            status: Status(0),
            rows: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// The body of the terminal reply when it is an error (status ≥ 300), as sent.
    #[must_use]
    pub fn error_body(&self) -> Option<&Json> {
        if self.status.is_error() {
            self.parts.last().and_then(|p| p.body.as_ref())
        } else {
            None
        }
    }

    /// The error of an error reply, when its body has the `{messageCode, messageTemplate,
    /// parameters}` shape.
    #[must_use]
    pub fn error(&self) -> Option<QueryError> {
        self.error_body().and_then(|b| b.parse::<QueryError>().ok())
    }

    /// How many partial (1xx) replies came before the terminal one.
    #[must_use]
    pub fn partial_count(&self) -> usize {
        self.parts.iter().filter(|p| p.status.is_partial()).count()
    }

    /// Records one reply; returns whether it was the terminal one.
    fn add(&mut self, reply: QueryReply) -> bool {
        let status = reply.status;
        if !status.is_error()
            && status != Status::NO_CONTENT
            && let Some(body) = &reply.body
        {
            match body.to_value() {
                Ok(serde_json::Value::Array(items)) => self.rows.extend(items),
                Ok(other) => self.rows.push(other),
                // No tree form (nested past serde_json's limit): one `null` row stands for
                // it; `parts` keeps the text.
                Err(_) => self.rows.push(serde_json::Value::Null),
            }
        }
        self.parts.push(reply);
        if status.is_partial() {
            return false;
        }
        self.status = status;
        true
    }
}

/// Why a command could not be carried out. Nothing was transmitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The connection holds no source, or its source waits for a `connectExtension` after
    /// `reconnectRequired` (publish and query need a configured source).
    #[error("{connection} holds no configured source")]
    NotAttached {
        /// The connection.
        connection: ConnectionId,
    },
    /// The connection is closing or closed.
    #[error("{connection} is closed")]
    Closed {
        /// The connection.
        connection: ConnectionId,
    },
}

#[cfg(test)]
mod tests;
