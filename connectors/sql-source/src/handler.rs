//! [`SqlSource`]: the [`Handler`] of one source. It turns each configuration into a
//! database pool, work lanes and a poll; each query or publish into an operation on a lane.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use tokio::task::JoinHandle;
use vantiq_connector_tokio::{
    DisconnectReason, Handler, HandlerResult, Json, Query, ReplyError, Source,
};

use crate::config::{self, Processing};
use crate::db::{Database, Pool};
use crate::errors;
use crate::executor::Lane;
use crate::poller;
use crate::request::{self, Request};
use crate::rows::Row;

/// What a configured source has.
#[derive(Debug)]
struct Active {
    db: Arc<Database>,
    queries: Arc<Lane>,
    publishes: Arc<Lane>,
    poll: Option<JoinHandle<()>>,
}

/// Where the source stands.
#[derive(Debug)]
enum State {
    /// No session (before the first configuration, or between sessions).
    Idle,
    /// The last configuration was refused; the text says why.
    Invalid(String),
    /// Configured and working.
    Ready(Arc<Active>),
}

/// The handler of one source: a drop-in for Vantiq's Java JDBC source.
///
/// Give one to each source of the connector set (see [`crate::attach`]).
#[derive(Debug)]
pub struct SqlSource {
    state: Mutex<State>,
}

impl Default for SqlSource {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlSource {
    /// A handler waiting for its first configuration.
    #[must_use]
    pub fn new() -> Self {
        SqlSource {
            state: Mutex::new(State::Idle),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Stops the poll and closes the database of the current configuration, if any.
    fn shut_down(&self, next: State) {
        let old = std::mem::replace(&mut *self.lock(), next);
        if let State::Ready(active) = old {
            if let Some(poll) = &active.poll {
                poll.abort();
            }
            // Operations still running keep their pool until they end; close in the
            // background so the session's handling goes on.
            let db = active.db.clone();
            tokio::spawn(async move { db.close().await });
        }
    }

    /// Builds the working state for a configuration document.
    fn configure(source: &Source, config: &Json) -> State {
        let name = source.name();
        let parsed = match config
            .to_value()
            .map_err(|e| e.to_string())
            .and_then(|tree| config::parse(&tree).map_err(|e| e.to_string()))
        {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::error!(
                    source = name,
                    %error,
                    "configuration failed: the source answers every query with an error until it is reconfigured"
                );
                return State::Invalid(format!("The source configuration is invalid: {error}"));
            }
        };
        for warning in &parsed.warnings {
            tracing::warn!(source = name, "{warning}");
        }
        let db = match Database::open(parsed.target.clone(), parsed.processing.pool_size()) {
            Ok(db) => Arc::new(db),
            Err(error) => {
                tracing::error!(source = name, %error, "configuration failed: the database cannot be opened");
                return State::Invalid(format!(
                    "The database {} cannot be opened: {}",
                    parsed.target, error.message
                ));
            }
        };
        let (queries, publishes) = match parsed.processing {
            Processing::Synchronous => {
                let lane = Arc::new(Lane::synchronous());
                (lane.clone(), lane)
            }
            Processing::Asynchronous {
                max_active,
                max_queued,
            } => (
                Arc::new(Lane::asynchronous(max_active, max_queued)),
                Arc::new(Lane::asynchronous(max_active, max_queued)),
            ),
        };
        // Say early whether the database answers; work starts either way and reconnects.
        let probe = db.clone();
        let probe_name = name.to_owned();
        tokio::spawn(async move {
            match probe.ping().await {
                Ok(()) => {
                    tracing::info!(source = %probe_name, database = %probe.target(), "database reachable")
                }
                Err(error) => tracing::error!(
                    source = %probe_name,
                    database = %probe.target(),
                    %error,
                    "database not reachable; operations fail until it is"
                ),
            }
        });
        let poll = parsed
            .poll
            .map(|poll| poller::spawn(source.clone(), db.clone(), poll));
        tracing::info!(
            source = name,
            database = %parsed.target,
            processing = ?parsed.processing,
            polling = poll.is_some(),
            "configured"
        );
        State::Ready(Arc::new(Active {
            db,
            queries,
            publishes,
            poll,
        }))
    }

    /// The active configuration, or the reason there is none.
    fn active(&self) -> Result<Arc<Active>, String> {
        match &*self.lock() {
            State::Ready(active) => Ok(active.clone()),
            State::Invalid(why) => Err(why.clone()),
            State::Idle => Err("The source has not been configured.".to_owned()),
        }
    }
}

impl Handler for SqlSource {
    async fn on_connect(&self, source: &Source, config: Json) -> HandlerResult {
        self.shut_down(State::Idle);
        let state = Self::configure(source, &config);
        *self.lock() = state;
        Ok(())
    }

    async fn on_close(&self, source: &Source, reason: &DisconnectReason) -> HandlerResult {
        tracing::debug!(
            source = source.name(),
            ?reason,
            "session ended: stopping the poll, closing the database"
        );
        self.shut_down(State::Idle);
        Ok(())
    }

    async fn on_query(&self, source: &Source, query: Query) -> HandlerResult {
        // Parameters with no tree form (nested too deep) are as invalid as a missing query.
        let request = match query
            .params()
            .to_value()
            .map_err(|_| errors::invalid_query_request())
            .and_then(|params| request::parse_query(&params))
        {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(source = source.name(), code = %error.code, "query refused");
                query.error(error).await?;
                return Ok(());
            }
        };
        let active = match self.active() {
            Ok(active) => active,
            Err(why) => {
                query.error(errors::closed(&why)).await?;
                return Ok(());
            }
        };
        let ticket = match active.queries.admit().await {
            Ok(ticket) => ticket,
            Err(_full) => {
                tracing::error!(
                    source = source.name(),
                    "the queue of tasks has filled, and as a result the request was unable to be processed"
                );
                query.error(errors::queued_tasks_full()).await?;
                return Ok(());
            }
        };
        let db = active.db.clone();
        let name = source.name().to_owned();
        ticket.spawn(async move {
            if let Err(error) = run_query(&db, request, query).await {
                tracing::warn!(source = %name, %error, "a query reply could not be sent");
            }
        });
        Ok(())
    }

    async fn on_publish(&self, source: &Source, message: Json) -> HandlerResult {
        let name = source.name().to_owned();
        let request = match message
            .to_value()
            .map_err(|e| e.to_string())
            .and_then(|object| request::parse_publish(&object))
        {
            Ok(request) => request,
            Err(why) => {
                tracing::error!(source = %name, "publish not executed: {why}");
                return Ok(());
            }
        };
        let active = match self.active() {
            Ok(active) => active,
            Err(why) => {
                tracing::error!(source = %name, sql = %request.text(), "publish not executed: {why}");
                return Ok(());
            }
        };
        let Ok(ticket) = active.publishes.admit().await else {
            tracing::error!(
                source = %name,
                sql = %request.text(),
                "the queue of tasks has filled, and as a result the publish was not executed"
            );
            return Ok(());
        };
        let db = active.db.clone();
        ticket.spawn(async move {
            let outcome = match db.pool() {
                Ok(pool) => match &request {
                    Request::Batch(list) => pool.batch(list).await,
                    Request::Update(sql) | Request::Select { sql, .. } => {
                        pool.execute(sql).await.map(|_| ())
                    }
                },
                Err(e) => Err(e),
            };
            if let Err(error) = outcome {
                tracing::error!(source = %name, sql = %request.text(), %error, "publish failed");
            }
        });
        Ok(())
    }
}

/// Runs one query and answers it: exactly one terminal reply, whatever happens.
async fn run_query(db: &Database, request: Request, query: Query) -> Result<(), ReplyError> {
    let text = request.text();
    let pool = match db.pool() {
        Ok(pool) => pool,
        Err(error) => return query.error(errors::sql_error(&error, &text)).await,
    };
    let outcome = match &request {
        Request::Select { sql, bundle_factor } => {
            return stream_select(&pool, sql, *bundle_factor, query).await;
        }
        Request::Update(sql) => pool.execute(sql).await.map(|_| ()),
        Request::Batch(list) => pool.batch(list).await,
    };
    match outcome {
        Ok(()) => query.empty().await,
        Err(error) => query.error(errors::sql_error(&error, &text)).await,
    }
}

/// Streams a `SELECT`'s rows, `bundle_factor` per reply: `100` for every bundle but the
/// last, `200` for the last, `204` when there are none; `bundle_factor == 0` sends every row
/// in one reply. One bundle is held back to learn whether it is the last, so at most one
/// bundle (plus the database driver's read-ahead) is in memory; the next row is read only
/// once the previous bundle was taken by the connection (back-pressure).
async fn stream_select(
    pool: &Pool,
    sql: &str,
    bundle_factor: usize,
    mut query: Query,
) -> Result<(), ReplyError> {
    let mut rows = pool.rows(sql);
    let mut bundle: Vec<Row> = Vec::with_capacity(bundle_factor.min(4096));
    while let Some(row) = rows.next().await {
        match row {
            Ok(row) => {
                if bundle_factor != 0 && bundle.len() == bundle_factor {
                    query.partial(&bundle).await?;
                    bundle.clear();
                }
                bundle.push(row);
            }
            Err(error) => {
                drop(rows);
                return query.error(errors::sql_error(&error, sql)).await;
            }
        }
    }
    drop(rows);
    if bundle.is_empty() {
        query.empty().await
    } else {
        query.complete(&bundle).await
    }
}
