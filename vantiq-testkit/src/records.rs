//! What the server records: frames received, anomalies, connection attempts, source
//! summaries, kept in bounded rings.

use std::time::Instant;

use vantiq_proto::frame::ClientFrame;
pub use vantiq_proto::server::{AnomalyKind, ConnectOutcome, QueryResult, RawFrame};

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

/// A bounded record: the last `capacity` items, with absolute indices (the first item ever
/// pushed is 0), so that readers paging by index keep their place when old items go.
#[derive(Debug, Clone)]
pub(crate) struct Ring<T> {
    /// Absolute index of the oldest item kept.
    base: usize,
    items: std::collections::VecDeque<T>,
    capacity: usize,
}

impl<T: Clone> Ring<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Ring {
            base: 0,
            items: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
            self.base += 1;
        }
        self.items.push_back(item);
    }

    /// Items pushed so far, including those dropped.
    pub(crate) fn total(&self) -> usize {
        self.base + self.items.len()
    }

    /// The item of absolute index `i`, if still kept.
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        i.checked_sub(self.base).and_then(|k| self.items.get(k))
    }

    /// Every item kept, oldest first.
    pub(crate) fn to_vec(&self) -> Vec<T> {
        self.items.iter().cloned().collect()
    }

    /// The kept items of absolute index `after` and up, and the index to ask for next.
    pub(crate) fn after(&self, after: usize) -> (usize, Vec<T>) {
        let skip = after.saturating_sub(self.base);
        (
            self.total(),
            self.items.iter().skip(skip).cloned().collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Ring;

    #[test]
    fn a_ring_keeps_the_last_items_with_absolute_indices() {
        let mut r = Ring::new(3);
        for i in 0..5 {
            r.push(i);
        }
        assert_eq!(r.total(), 5);
        assert_eq!(r.to_vec(), [2, 3, 4]);
        assert_eq!(
            (r.get(1), r.get(2), r.get(4), r.get(5)),
            (None, Some(&2), Some(&4), None)
        );
        assert_eq!(r.after(0), (5, vec![2, 3, 4]));
        assert_eq!(r.after(3), (5, vec![3, 4]));
        assert_eq!(r.after(9), (5, vec![]));
    }
}
