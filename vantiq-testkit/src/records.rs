//! What the server records: frames received, anomalies, connection attempts, source summaries.

use std::time::Instant;

use vantiq_proto::FrameError;
use vantiq_proto::frame::{ClientFrame, QueryReply};

/// One frame received from a connector.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FrameRecord {
    /// The server's number for the socket it arrived on (counting from 1).
    pub connection: u64,
    /// When it was decoded.
    pub at: Instant,
    /// The frame.
    pub frame: ClientFrame,
}

/// Something a connector did that the real server would not expect.
///
/// Anomalies never stop the server; they are recorded for tests to inspect with
/// [`TestServer::anomalies`](crate::TestServer::anomalies).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Anomaly {
    /// The socket it happened on.
    pub connection: u64,
    /// The source that socket was attached to, if any.
    pub source: Option<String>,
    /// What happened.
    pub kind: AnomalyKind,
}

/// The kinds of [`Anomaly`].
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

/// How the server answered one `connectExtension`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectOutcome {
    /// Accepted: `configureExtension` was sent.
    Accepted,
    /// Accepted by taking the source over from a live connection with the same
    /// `reconnectSecret` (that connection was dropped abruptly).
    TookOver,
    /// Refused with "does not have an associated stream" (see
    /// [`SourceHandle::refuse_connects`](crate::SourceHandle::refuse_connects)).
    RefusedNoStream,
    /// Refused because another connection holds the source with a different (or no) secret.
    RefusedAlreadyConnected,
}

/// One `connectExtension` received for a source.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectAttempt {
    /// When it arrived.
    pub at: Instant,
    /// The socket it arrived on.
    pub connection: u64,
    /// `parameters.reconnectSecret`, if sent.
    pub reconnect_secret: Option<String>,
    /// How the server answered.
    pub outcome: ConnectOutcome,
}

/// A summary of one source, as listed by [`TestServer::sources`](crate::TestServer::sources)
/// and `GET /control/sources`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SourceInfo {
    /// The source name.
    pub name: String,
    /// Whether a connection holds the source.
    pub connected: bool,
    /// Whether that connection has been sent the current configuration.
    pub configured: bool,
    /// The `reconnectSecret` of the last accepted `connectExtension`.
    pub reconnect_secret: Option<String>,
    /// Accepted `connectExtension`s (sessions) so far.
    pub connections: u64,
    /// `connectExtension`s received so far, accepted or not.
    pub connect_attempts: u64,
    /// Notifications received so far.
    pub notifications: u64,
}

/// A frame to put on the wire exactly as given, for malformed-input tests
/// ([`SourceHandle::send_raw`](crate::SourceHandle::send_raw)).
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
