//! Queries the server sends, and the replies it collects.

use std::collections::HashMap;

use tokio::sync::oneshot;
use vantiq_proto::frame::QueryReply;
use vantiq_proto::{Json, QueryError, Status};

/// Everything a query got back, once its terminal reply arrived.
///
/// `parts` holds every reply in arrival order (the partial `100`s and the terminal one), so a
/// test can check how a connector split its rows; `rows` is what Vantiq hands to the VAIL
/// `SELECT`: the rows of every `100` and `200` reply, concatenated (an object body is one row,
/// an array body several).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueryResult {
    /// The reply address the server generated for the query.
    pub reply_address: String,
    /// The status of the terminal reply: 200, 204, or the error status.
    pub status: Status,
    /// The rows of every partial and final reply, in order.
    pub rows: Vec<serde_json::Value>,
    /// Every reply, the terminal one last.
    pub parts: Vec<QueryReply>,
}

impl QueryResult {
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
}

/// A query waiting for its terminal reply.
pub(crate) struct Pending {
    pub(crate) result: QueryResult,
    pub(crate) done: oneshot::Sender<QueryResult>,
}

/// What became of a reply handed to [`PendingQueries::route`].
pub(crate) enum Routed {
    /// A partial reply was recorded; the query goes on.
    Partial,
    /// The terminal reply: the query is complete and its waiter woken.
    Terminal,
    /// No query waits on that reply address.
    Unknown(QueryReply),
}

/// The queries in flight, keyed by reply address (server-wide: a reply is matched by its
/// address only, whatever socket it arrives on).
#[derive(Default)]
pub(crate) struct PendingQueries {
    map: HashMap<String, Pending>,
}

impl PendingQueries {
    pub(crate) fn insert(&mut self, address: String, pending: Pending) {
        self.map.insert(address, pending);
    }

    pub(crate) fn remove(&mut self, address: &str) -> Option<Pending> {
        self.map.remove(address)
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    /// Records a reply against its query.
    pub(crate) fn route(&mut self, reply: QueryReply) -> Routed {
        let Some(pending) = self.map.get_mut(&reply.reply_address) else {
            return Routed::Unknown(reply);
        };
        let status = reply.status;
        if !status.is_error()
            && status != Status::NO_CONTENT
            && let Some(body) = &reply.body
        {
            append_rows(&mut pending.result.rows, body);
        }
        if status.is_partial() {
            pending.result.parts.push(reply);
            return Routed::Partial;
        }
        let address = reply.reply_address.clone();
        pending.result.parts.push(reply);
        pending.result.status = status;
        if let Some(done) = self.map.remove(&address) {
            // The waiter may have given up (timeout) in the meantime; nothing to do then.
            let _ = done.done.send(done.result);
        }
        Routed::Terminal
    }
}

/// Appends the rows of a reply body: an array is several rows, anything else one.
fn append_rows(rows: &mut Vec<serde_json::Value>, body: &Json) {
    match body.to_value() {
        serde_json::Value::Array(items) => rows.extend(items),
        other => rows.push(other),
    }
}
