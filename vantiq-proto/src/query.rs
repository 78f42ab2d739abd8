//! Query replies: identifiers, reply kinds, errors, and a row chunker for large results.

use serde::{Deserialize, Serialize};

use crate::frame::{Status, X_REPLY_ADDRESS};
use crate::json::{Json, push_json_string};

/// Code of the error a connection answers a query with when the source already has
/// [`Limits::open_queries`](crate::Limits::open_queries) queries awaiting their answer.
pub const TOO_MANY_QUERIES_CODE: &str = "io.vantiq.connector.tooManyQueries";
/// Code of the error a connection answers a query with when its reply address is longer
/// than [`Limits::reply_address_bytes`](crate::Limits::reply_address_bytes).
pub const REPLY_ADDRESS_TOO_LONG_CODE: &str = "io.vantiq.connector.replyAddressTooLong";

/// Identifies one query of one session of a [`Connection`](crate::Connection).
///
/// The session number is part of the id, so a reply for a query of an ended session is
/// recognised and refused rather than sent to a server that no longer waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId {
    pub(crate) session: u64,
    pub(crate) seq: u64,
}

impl QueryId {
    /// The session (1 for the first configured session, then counting up) the query came in.
    #[must_use]
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The query's number within the connection (counting from 0, never reused).
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A query error as the server expects it: status 400 with one object
/// `{messageCode, messageTemplate, parameters}`; `{0}`, `{1}` in the template index
/// `parameters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryError {
    /// A stable, dotted code, e.g. `com.example.tableMissing`.
    #[serde(rename = "messageCode")]
    pub code: String,
    /// The message, with `{n}` placeholders.
    #[serde(rename = "messageTemplate")]
    pub template: String,
    /// Values for the placeholders (`null` or absent reads as none: the Java SDK sends
    /// `null`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub parameters: Vec<serde_json::Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<serde_json::Value>, D::Error> {
    Ok(Option::<Vec<serde_json::Value>>::deserialize(d)?.unwrap_or_default())
}

impl QueryError {
    /// Builds an error from a code, a template and its parameters.
    pub fn new<P: Into<serde_json::Value>>(
        code: impl Into<String>,
        template: impl Into<String>,
        parameters: impl IntoIterator<Item = P>,
    ) -> Self {
        QueryError {
            code: code.into(),
            template: template.into(),
            parameters: parameters.into_iter().map(Into::into).collect(),
        }
    }

    /// The JSON body of the error reply.
    #[must_use]
    pub fn to_json(&self) -> Json {
        Json::from_serialize(self).unwrap_or_else(|_| Json::empty_object())
    }

    /// Appends the JSON body (the text [`QueryError::to_json`] gives) to `out`, without an
    /// intermediate buffer.
    pub(crate) fn push_json(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("{\"messageCode\":");
        push_json_string(out, &self.code);
        out.push_str(",\"messageTemplate\":");
        push_json_string(out, &self.template);
        out.push_str(",\"parameters\":[");
        for (i, p) in self.parameters.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // `Value`'s `Display` is its compact JSON text.
            let _ = write!(out, "{p}");
        }
        out.push_str("]}");
    }

    /// A capacity hint for [`QueryError::push_json`]: exact without parameters and escapes,
    /// 16 bytes allowed per parameter.
    pub(crate) fn json_len_hint(&self) -> usize {
        55 + self.code.len() + self.template.len() + 16 * self.parameters.len()
    }
}

/// One reply to a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Status 100: rows (an object or an array of objects); more replies follow.
    Partial(Json),
    /// Status 200: the last rows (an object or an array of objects).
    Complete(Json),
    /// Status 204: done, no (more) rows.
    Empty,
    /// Status 400: the query failed.
    Error(QueryError),
}

impl Reply {
    /// Whether this reply ends the query.
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Reply::Partial(_))
    }

    /// The status this reply is sent with.
    #[must_use]
    pub fn status(&self) -> Status {
        match self {
            Reply::Partial(_) => Status::PARTIAL,
            Reply::Complete(_) => Status::OK,
            Reply::Empty => Status::NO_CONTENT,
            Reply::Error(_) => Status::BAD_REQUEST,
        }
    }
}

/// Why a reply was not sent. Nothing was transmitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The session the query came in has ended; the server no longer waits for the reply.
    #[error("the session of this query has ended; the reply was not sent")]
    SessionEnded,
    /// The query already got its terminal reply (or was never issued by this connection).
    #[error("this query is finished; the reply was not sent")]
    QueryFinished,
    /// Rows must be a JSON object or an array of objects.
    #[error("query rows must be a JSON object or an array of objects")]
    InvalidRows,
    /// The rows could not be serialized (reported by the layer that serializes them).
    #[error("the rows could not be serialized: {0}")]
    Serialize(String),
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
}

/// Bytes a reply frame adds around its body for a reply address.
#[must_use]
pub fn reply_overhead(reply_address: &str) -> usize {
    // {"status":100,"headers":{"X-Reply-Address":"<addr>"},"body":<body>}
    r#"{"status":100,"headers":{"":""},"body":}"#.len()
        + X_REPLY_ADDRESS.len()
        + reply_address
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
                0..=0x1f => 6,
                _ => 1,
            })
            .sum::<usize>()
}

/// Gathers rows into JSON arrays that stay under a byte budget.
///
/// Push each row's JSON text; when a row would overflow the budget, the rows gathered so far
/// come back as one chunk. A single row larger than the budget forms a chunk of its own (it
/// cannot be split). [`RowChunker::finish`] gives the last, partly filled chunk.
///
/// Only objects are rows: anything else is refused with [`ReplyError::InvalidRows`].
///
/// ```
/// use vantiq_proto::{Json, ReplyError, RowChunker};
///
/// let row = |i: u32| Json::from_serialize(&serde_json::json!({ "i": i })).unwrap();
/// let mut c = RowChunker::new(16);
/// assert_eq!(c.push(&row(0)), Ok(None));                  // [{"i":0}      8 bytes
/// let full = c.push(&row(1)).unwrap();                     // would be 17 bytes with `]`
/// assert_eq!(full.unwrap().as_str(), r#"[{"i":0}]"#);
/// assert_eq!(c.push(&Json::null()), Err(ReplyError::InvalidRows));
/// assert_eq!(c.finish().unwrap().as_str(), r#"[{"i":1}]"#);
/// assert_eq!(c.finish(), None);
/// ```
#[derive(Debug, Clone)]
pub struct RowChunker {
    budget: usize,
    buf: String,
    rows: usize,
}

impl RowChunker {
    /// A chunker whose arrays stay within `body_budget` bytes (when rows allow).
    #[must_use]
    pub fn new(body_budget: usize) -> Self {
        RowChunker {
            budget: body_budget.max(2),
            buf: String::new(),
            rows: 0,
        }
    }

    /// Adds one row; returns a full chunk if the row did not fit.
    ///
    /// # Errors
    /// [`ReplyError::InvalidRows`] when the row is not a JSON object; nothing is added.
    pub fn push(&mut self, row: &Json) -> Result<Option<Json>, ReplyError> {
        if !row.is_object() {
            return Err(ReplyError::InvalidRows);
        }
        Ok(self.push_object(row.as_str()))
    }

    fn push_object(&mut self, row: &str) -> Option<Json> {
        if self.rows == 0 {
            self.buf.reserve(row.len() + 2);
            self.buf.push('[');
            self.buf.push_str(row);
            self.rows = 1;
            return None;
        }
        if self.buf.len() + 1 + row.len() + 1 > self.budget {
            let chunk = self.take();
            self.buf.push('[');
            self.buf.push_str(row);
            self.rows = 1;
            return chunk;
        }
        self.buf.push(',');
        self.buf.push_str(row);
        self.rows += 1;
        None
    }

    /// Rows gathered and not yet returned.
    #[must_use]
    pub fn pending_rows(&self) -> usize {
        self.rows
    }

    /// The rows gathered so far as a chunk, if there are any.
    pub fn finish(&mut self) -> Option<Json> {
        if self.rows == 0 { None } else { self.take() }
    }

    fn take(&mut self) -> Option<Json> {
        self.buf.push(']');
        self.rows = 0;
        let text = std::mem::take(&mut self.buf);
        Json::from_string(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_json_matches_serde() {
        let odd = "we\"ird\\ \n\t\u{1}\u{7f} é ✓";
        let errors = [
            QueryError::new("a.b", "plain {0}", Vec::<serde_json::Value>::new()),
            QueryError::new(odd, odd, [serde_json::json!(odd), serde_json::json!(1.5)]),
            QueryError::new(
                "c",
                "t",
                [
                    serde_json::json!({"k": [1, null, true, "x\u{2028}"]}),
                    serde_json::json!(-3),
                ],
            ),
        ];
        for e in errors {
            let mut out = String::new();
            e.push_json(&mut out);
            assert_eq!(out, e.to_json().as_str());
            if e.parameters.is_empty() && e.code == "a.b" {
                assert_eq!(out.len(), e.json_len_hint());
            }
        }
    }

    #[test]
    fn reply_len_is_exact_for_three_digit_statuses() {
        for (status, body) in [(Status::OK, Some("[{}]")), (Status::NO_CONTENT, None)] {
            let mut out = String::new();
            let prefix = crate::frame::reply_prefix("addr");
            crate::frame::push_reply(&mut out, &prefix, status, body);
            let len = crate::frame::reply_len(&prefix, status, body.map(str::len));
            assert_eq!((out.len(), out.capacity()), (len, len), "{out}");
        }
        let mut out = String::new();
        crate::frame::push_reply(&mut out, "", Status(-12_345), None);
        assert_eq!(out, "{\"status\":-12345}");
    }

    #[test]
    fn overhead_matches_encoding() {
        for addr in ["4c2e-11", "we\"ird\\addr\n\u{1}"] {
            let mut out = String::new();
            let prefix = crate::frame::reply_prefix(addr);
            crate::frame::push_reply(&mut out, &prefix, Status::PARTIAL, Some(""));
            assert_eq!(out.len(), reply_overhead(addr), "{out}");
        }
    }

    #[test]
    fn chunks_respect_budget_and_keep_order() {
        let rows: Vec<String> = (0..100).map(|i| format!("{{\"i\":{i}}}")).collect();
        let mut c = RowChunker::new(64);
        let mut chunks = Vec::new();
        for r in &rows {
            chunks.extend(c.push(&Json::from_string(r.clone()).unwrap()).unwrap());
        }
        chunks.extend(c.finish());
        let mut seen = Vec::new();
        for ch in &chunks {
            assert!(ch.len() <= 64, "{ch}");
            let v: Vec<serde_json::Value> = ch.parse().unwrap();
            seen.extend(v);
        }
        let want: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect();
        assert_eq!(seen, want);
        assert!(chunks.len() > 10);
    }

    #[test]
    fn oversized_row_goes_alone() {
        let big = format!("{{\"s\":\"{}\"}}", "x".repeat(100));
        let j = |s: &str| Json::from_string(s.to_owned()).unwrap();
        let mut c = RowChunker::new(32);
        assert_eq!(c.push(&j("{}")), Ok(None));
        assert_eq!(c.push(&j(&big)).unwrap().unwrap().as_str(), "[{}]");
        assert_eq!(
            c.push(&j("{}")).unwrap().unwrap().as_str(),
            format!("[{big}]")
        );
        assert_eq!(c.finish().unwrap().as_str(), "[{}]");
    }

    #[test]
    fn java_error_bodies_with_null_or_no_parameters_read() {
        for body in [
            r#"{"messageCode":"c","messageTemplate":"t","parameters":null}"#,
            r#"{"messageCode":"c","messageTemplate":"t"}"#,
        ] {
            let e: QueryError = serde_json::from_str(body).unwrap();
            assert_eq!(
                e,
                QueryError::new("c", "t", Vec::<serde_json::Value>::new())
            );
        }
    }

    #[test]
    fn error_body_shape() {
        let e = QueryError::new("echo.error", "Echo error: {0}", ["boom"]);
        assert_eq!(
            e.to_json().as_str(),
            r#"{"messageCode":"echo.error","messageTemplate":"Echo error: {0}","parameters":["boom"]}"#
        );
    }
}
