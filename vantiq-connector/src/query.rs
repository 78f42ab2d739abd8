//! [`Query`]: the handle through which a query is answered.

use std::fmt;
use std::sync::Arc;

use futures_core::Stream;
use futures_util::StreamExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use vantiq_proto::{
    Connection, Json, QueryError, QueryId, Reply, ReplyError, RowChunker, reply_overhead,
};

use crate::command::{Command, QueryLink};
use crate::desk;
use crate::source::Source;

/// Code of the error sent for a query when no query handler is set.
pub const NO_HANDLER_CODE: &str = "io.vantiq.connector.noQueryHandler";
/// Code of the error sent for a query whose handler failed.
pub const HANDLER_FAILED_CODE: &str = "io.vantiq.connector.queryFailed";
/// Code of the error sent for a query dropped without a final reply.
pub const DROPPED_CODE: &str = "io.vantiq.connector.queryDropped";

pub(crate) fn no_handler_error(source: &str) -> QueryError {
    QueryError::new(
        NO_HANDLER_CODE,
        "Queries are not supported for source {0}. No handler has been set.",
        [source],
    )
}

pub(crate) fn handler_failed_error(source: &str, message: &str) -> QueryError {
    QueryError::new(
        HANDLER_FAILED_CODE,
        "The query handler of source {0} failed: {1}",
        [source, message],
    )
}

pub(crate) fn dropped_error(source: &str) -> QueryError {
    QueryError::new(
        DROPPED_CODE,
        "The connector for source {0} ended the query without a final reply.",
        [source],
    )
}

/// One query awaiting replies: any number of partial replies, then exactly one final reply
/// (rows, empty, or error).
///
/// Each reply returns the connection's verdict: `Ok` once the reply is queued for the
/// socket, or why it was refused ([`ReplyError::SessionEnded`] when the session the query
/// came in has ended, [`ReplyError::InvalidRows`], …).
///
/// Dropping a `Query` before its final reply answers it with the error
/// `io.vantiq.connector.queryDropped` (or, when the handler it was given to returned an
/// error or panicked, `io.vantiq.connector.queryFailed` with the error's text), so the VAIL
/// caller never waits for its timeout. A `Query` is `Send + 'static`: move it into a task
/// to answer later.
///
/// # Example
///
/// Typed parameters, an error reply for a bad request, and rows streamed in replies cut to
/// the byte budget:
///
/// ```
/// use serde::Deserialize;
/// use vantiq_connector::{HandlerResult, Query, QueryError};
///
/// #[derive(Deserialize)]
/// struct Range {
///     from: u64,
///     to: u64,
/// }
///
/// async fn answer(query: Query) -> HandlerResult {
///     let Ok(Range { from, to }) = query.parse::<Range>() else {
///         let e = QueryError::new("demo.badRange", "Expected WITH {0}", ["from = <n>, to = <n>"]);
///         query.error(e).await?;
///         return Ok(());
///     };
///     query.stream((from..to).map(|i| serde_json::json!({ "i": i }))).await?;
///     Ok(())
/// }
/// ```
pub struct Query {
    source: Source,
    /// The query itself (id, parameters, reply address) and what its driver shares with
    /// it: one allocation, and a `Query` small enough to move through a handler cheaply.
    link: Arc<QueryLink>,
    parts: u32,
    finished: bool,
    chunk_bytes: usize,
}

impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query")
            .field("source", &self.source.name())
            .field("id", &self.link.id)
            .field("reply_address", &self.link.reply_address)
            .field("params", &self.link.params)
            .field("parts", &self.parts)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Query {
    pub(crate) fn new(source: Source, link: Arc<QueryLink>) -> Self {
        let chunk_bytes = source.0.chunk_bytes;
        Query {
            source,
            link,
            parts: 0,
            finished: false,
            chunk_bytes,
        }
    }

    /// The query's identity within its connection.
    #[must_use]
    pub fn id(&self) -> QueryId {
        self.link.id
    }

    /// The WITH parameters as JSON text.
    #[must_use]
    pub fn params(&self) -> &Json {
        &self.link.params
    }

    /// The WITH parameters deserialized into your type.
    ///
    /// # Errors
    /// The parameters do not have the shape `T` expects.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.link.params.parse()
    }

    /// The server's reply address (for logs).
    #[must_use]
    pub fn reply_address(&self) -> &str {
        &self.link.reply_address
    }

    /// The source the query came to.
    #[must_use]
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Replies sent so far.
    #[must_use]
    pub fn parts_sent(&self) -> u64 {
        u64::from(self.parts)
    }

    /// Sets the byte budget of each reply frame used by [`Query::stream`] (default:
    /// `queryChunkBytes`, 256 KiB).
    pub fn set_chunk_bytes(&mut self, bytes: usize) {
        self.chunk_bytes = bytes.max(256);
    }

    /// Hands `reply` to the driver, in order with everything else of this source, and waits
    /// for the connection's verdict on it.
    fn send(&mut self, reply: Reply) -> impl Future<Output = Result<(), ReplyError>> + '_ {
        let terminal = reply.is_terminal();
        self.parts += 1;
        let seq = self.parts;
        let id = self.link.id;
        let bytes = Command::reply_weight(&reply);
        let Query {
            ref source,
            ref link,
            ref mut finished,
            ..
        } = *self;
        // Built here, outside the `async` block, so that the reply is held once (in `hand`)
        // and not also as an argument: every handler's future is that much smaller.
        let respond = move |conn: &mut Connection, reply| conn.respond(id, reply);
        let hand = desk::hand(source, reply, bytes, Connection::can_reply, respond);
        async move {
            let verdict = match hand.await {
                Ok(verdict) => verdict,
                // Boxed: the way through the queue is the rare one, and its state would
                // make every handler's future larger.
                Err(reply) => Box::pin(send_queued(source, link, id, reply, seq)).await,
            };
            // Finished when the final reply went out, or when nothing more can reach the
            // server for this query (then it is not reported dropped either). A refused
            // final reply (rows of the wrong shape) leaves the query open: dropping it
            // answers it.
            *finished |= match &verdict {
                Ok(()) => terminal,
                Err(e) => matches!(
                    e,
                    ReplyError::SessionEnded | ReplyError::Closed | ReplyError::QueryFinished
                ),
            };
            verdict
        }
    }

    fn rows<T: Serialize + ?Sized>(rows: &T) -> Result<Json, ReplyError> {
        Json::from_serialize(rows).map_err(|e| ReplyError::Serialize(e.to_string()))
    }

    /// Sends rows (an object or a sequence of objects) with more to come (status 100).
    ///
    /// # Errors
    /// See [`ReplyError`].
    pub async fn partial<T: Serialize + ?Sized>(&mut self, rows: &T) -> Result<(), ReplyError> {
        let rows = Self::rows(rows)?;
        self.send(Reply::Partial(rows)).await
    }

    /// Sends the last rows (status 200) and ends the query.
    ///
    /// # Errors
    /// See [`ReplyError`].
    pub async fn complete<T: Serialize + ?Sized>(mut self, rows: &T) -> Result<(), ReplyError> {
        let rows = Self::rows(rows)?;
        self.send(Reply::Complete(rows)).await
    }

    /// Like [`Query::partial`] for JSON text you already have.
    ///
    /// # Errors
    /// See [`ReplyError`].
    pub async fn partial_json(&mut self, rows: Json) -> Result<(), ReplyError> {
        self.send(Reply::Partial(rows)).await
    }

    /// Like [`Query::complete`] for JSON text you already have.
    ///
    /// # Errors
    /// See [`ReplyError`].
    pub async fn complete_json(mut self, rows: Json) -> Result<(), ReplyError> {
        self.send(Reply::Complete(rows)).await
    }

    /// Ends the query with no (more) rows (status 204).
    ///
    /// # Errors
    /// See [`ReplyError`].
    pub async fn empty(mut self) -> Result<(), ReplyError> {
        self.send(Reply::Empty).await
    }

    /// Ends the query with an error (status 400, `{messageCode, messageTemplate,
    /// parameters}`).
    ///
    /// # Errors
    /// See [`ReplyError`].
    pub async fn error(mut self, error: QueryError) -> Result<(), ReplyError> {
        self.send(Reply::Error(error)).await
    }

    fn chunker(&self) -> RowChunker {
        let budget = self
            .chunk_bytes
            .saturating_sub(reply_overhead(&self.link.reply_address));
        RowChunker::new(budget)
    }

    /// Streams rows in as many replies as the byte budget needs: partial replies, then the
    /// last chunk as the final reply (or an empty reply when there are no rows). Returns the
    /// number of rows sent.
    ///
    /// # Errors
    /// See [`ReplyError`]; a row that is not an object gives [`ReplyError::InvalidRows`] and
    /// the query is then answered with an error.
    pub async fn stream<I>(mut self, rows: I) -> Result<usize, ReplyError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let mut chunks = Chunks::new(&self);
        for row in rows {
            self.stream_row(&mut chunks, &row).await?;
        }
        self.finish_stream(chunks).await
    }

    /// Like [`Query::stream`] for rows that arrive from an async stream.
    ///
    /// # Errors
    /// As [`Query::stream`].
    pub async fn stream_from<S>(mut self, rows: S) -> Result<usize, ReplyError>
    where
        S: Stream,
        S::Item: Serialize,
    {
        let mut rows = std::pin::pin!(rows);
        let mut chunks = Chunks::new(&self);
        while let Some(row) = rows.next().await {
            self.stream_row(&mut chunks, &row).await?;
        }
        self.finish_stream(chunks).await
    }

    /// Adds one row; sends the chunk before the one that just filled up, so the last chunk
    /// can go out as the final reply.
    async fn stream_row<T: Serialize>(
        &mut self,
        chunks: &mut Chunks,
        row: &T,
    ) -> Result<(), ReplyError> {
        let row = Self::rows(row)?;
        if let Some(full) = chunks.chunker.push(&row)?
            && let Some(prev) = chunks.pending.replace(full)
        {
            self.send(Reply::Partial(prev)).await?;
        }
        chunks.rows += 1;
        Ok(())
    }

    async fn finish_stream(&mut self, mut chunks: Chunks) -> Result<usize, ReplyError> {
        match (chunks.pending, chunks.chunker.finish()) {
            (Some(prev), Some(last)) => {
                self.send(Reply::Partial(prev)).await?;
                self.send(Reply::Complete(last)).await?;
            }
            (Some(only), None) | (None, Some(only)) => self.send(Reply::Complete(only)).await?,
            (None, None) => self.send(Reply::Empty).await?,
        }
        Ok(chunks.rows)
    }
}

/// State of a row stream: the chunker, the chunk held back, the rows so far.
struct Chunks {
    chunker: RowChunker,
    pending: Option<Json>,
    rows: usize,
}

impl Chunks {
    fn new(query: &Query) -> Self {
        Chunks {
            chunker: query.chunker(),
            pending: None,
            rows: 0,
        }
    }
}

impl Drop for Query {
    fn drop(&mut self) {
        if self.finished || self.link.dropped_in_handler() {
            // Finished, or the handler it was given to still runs: the driver answers it when
            // the handler ends (with the handler's error, if it fails).
            return;
        }
        // Ordered after every reply sent before; never waits, never refused while the driver
        // runs (a closed queue means nobody is left to answer).
        let error = dropped_error(self.source.name());
        let _ = self.source.0.commands.push_unbounded(Command::Abandon {
            id: self.link.id,
            error,
        });
    }
}

/// A reply's way through the command queue: it waits for room, then for its verdict.
async fn send_queued(
    source: &Source,
    link: &Arc<QueryLink>,
    id: QueryId,
    reply: Reply,
    seq: u32,
) -> Result<(), ReplyError> {
    let cmd = Command::Reply {
        id,
        reply,
        link: link.clone(),
        seq,
    };
    if source.0.commands.send(cmd).await.is_err() {
        return Err(ReplyError::Closed);
    }
    std::future::poll_fn(|cx| link.poll_verdict(seq, cx)).await
}
