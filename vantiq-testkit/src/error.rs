//! [`TestkitError`]: everything that can go wrong when driving the test server.

use std::time::Duration;

use crate::records::QueryResult;

/// An error from the test server or one of its handles.
///
/// Every wait that gives up is a [`TestkitError::Timeout`] naming what was awaited and the
/// state seen so far, so a failing test says what it was waiting for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A wait gave up.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited, with the state seen when giving up.
        what: String,
        /// How long the wait lasted.
        after: Duration,
    },
    /// The source has no live connection to send to: none is attached, or (for publish and
    /// query) a `reconnectRequired` is waiting for the connector's next `connectExtension`.
    #[error(
        "source `{source_name}` has no live connection (none attached, or reconnectRequired \
         pending)"
    )]
    NotConnected {
        /// The source.
        source_name: String,
    },
    /// No source of that name is defined on the server.
    #[error("unknown source `{name}`")]
    UnknownSource {
        /// The name asked for.
        name: String,
    },
    /// A query ended with an error reply (status ≥ 300). The result holds every reply.
    #[error("query on source `{source_name}` failed with status {}", result.status)]
    QueryFailed {
        /// The source queried.
        source_name: String,
        /// The replies received, the terminal error reply last.
        result: Box<QueryResult>,
    },
    /// The server was shut down while the operation was under way.
    #[error("the test server has shut down")]
    ServerGone,
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        #[source]
        error: std::io::Error,
    },
}

impl TestkitError {
    /// Whether this is a [`TestkitError::Timeout`].
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, TestkitError::Timeout { .. })
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;
