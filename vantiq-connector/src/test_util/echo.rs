//! [`Echo`]: the reference echo connector, a test fixture (feature `test-util`) shared by the
//! echo examples of both runtime crates (which the echo-contract check and the benchmarks
//! run), the end-to-end tests and the driver tests.
//!
//! Contract (what a server sees):
//! - on configure with document `C`: a notification `{"connected": true, "config": C}`;
//!   once every source is configured, the set is declared healthy;
//! - publish `{"burst": N, "payload": P}` → N notifications `{"seq": i, "payload": P}`,
//!   `i = 0..N-1`, in order; any other publish `O` → one notification equal to `O`;
//! - query `{"rows": N, "chunk": K}` → rows `{"i": 0}` … `{"i": N-1}` as partial replies of
//!   `K` rows, the last chunk as the final reply; without `chunk`, one final reply with all
//!   rows; `N = 0` → an empty (204) reply;
//! - query `{"error": M}` → error reply `echo.error`, `Echo error: {0}`, parameters `[M]`;
//! - a query for more than [`MAX_ROWS`] rows → error reply `echo.tooMany` (the rows of one
//!   reply are built in memory).

use serde::{Deserialize, Serialize};
use vantiq_health::Health;
use vantiq_proto::{Json, QueryError};

use crate::handler::{Handler, HandlerResult};
use crate::query::Query;
use crate::runtime::Runtime;
use crate::set::{ConnectorError, ConnectorSet};
use crate::source::Source;

/// The most rows the echo connector produces for one query.
pub const MAX_ROWS: u64 = 1_000_000;

/// The echo connector's behaviour (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Echo {
    health: Option<Health>,
    sources: Vec<Source>,
}

#[derive(Serialize)]
struct Connected<'a> {
    connected: bool,
    config: &'a Json,
}

#[derive(Deserialize)]
struct Burst {
    burst: u64,
    payload: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Serialize)]
struct Seq<'a> {
    seq: u64,
    payload: &'a serde_json::value::RawValue,
}

#[derive(Deserialize)]
struct QueryParams {
    rows: Option<u64>,
    chunk: Option<u64>,
    error: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Row {
    i: u64,
}

impl Echo {
    /// An echo handler that declares `health` healthy once all of `sources` are configured.
    #[must_use]
    pub fn new(health: Health, sources: Vec<Source>) -> Self {
        Echo {
            health: Some(health),
            sources,
        }
    }

    /// The echo connector for every source of the working directory's `server.config`
    /// (`serverConfig/server.config`, then `./server.config`).
    ///
    /// # Errors
    /// As [`ConnectorSet::from_default_config`].
    pub fn default_set<R: Runtime + Default>() -> Result<ConnectorSet<R>, ConnectorError> {
        let set = ConnectorSet::<R>::from_default_config()?;
        let echo = Echo::new(set.health(), set.sources());
        Ok(set.handler(echo))
    }

    /// The process exit code for what `run` returned: 0 after a shutdown, 1 after a fatal
    /// error, which is logged at `error` level (as `program: reason`, through `tracing`, so
    /// the program's subscriber decides where it goes).
    #[must_use]
    pub fn exit_code(program: &str, result: Result<(), ConnectorError>) -> std::process::ExitCode {
        match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{program}: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    }

    /// An echo handler that leaves health alone.
    #[must_use]
    pub fn without_health() -> Self {
        Echo {
            health: None,
            sources: Vec::new(),
        }
    }
}

impl Handler for Echo {
    async fn on_connect(&self, source: &Source, config: Json) -> HandlerResult {
        source
            .notify(&Connected {
                connected: true,
                config: &config,
            })
            .await?;
        if let Some(health) = &self.health
            && self.sources.iter().all(Source::is_configured)
            && health.is_healthy() != Some(true)
        {
            health.declare_healthy()?;
        }
        Ok(())
    }

    async fn on_publish(&self, source: &Source, message: Json) -> HandlerResult {
        match message.parse::<Burst>() {
            Ok(Burst { burst, payload }) => {
                let null = serde_json::value::RawValue::NULL;
                let payload = payload.as_deref().unwrap_or(null);
                for seq in 0..burst {
                    source.notify(&Seq { seq, payload }).await?;
                }
            }
            Err(_) => source.notify_json(message).await?,
        }
        Ok(())
    }

    async fn on_query(&self, _source: &Source, query: Query) -> HandlerResult {
        let params: QueryParams = query.parse().unwrap_or(QueryParams {
            rows: None,
            chunk: None,
            error: None,
        });
        if let Some(message) = params.error {
            query
                .error(QueryError::new("echo.error", "Echo error: {0}", [message]))
                .await?;
            return Ok(());
        }
        let n = params.rows.unwrap_or(0);
        if n > MAX_ROWS {
            let e = QueryError::new("echo.tooMany", "{0} rows is more than {1}", [n, MAX_ROWS]);
            query.error(e).await?;
            return Ok(());
        }
        if n == 0 {
            query.empty().await?;
            return Ok(());
        }
        let chunk = params.chunk.filter(|k| *k > 0).unwrap_or(n);
        let mut query = query;
        let mut start = 0;
        while start + chunk < n {
            let rows: Vec<Row> = (start..start + chunk).map(|i| Row { i }).collect();
            query.partial(&rows).await?;
            start += chunk;
        }
        let rows: Vec<Row> = (start..n).map(|i| Row { i }).collect();
        query.complete(&rows).await?;
        Ok(())
    }
}
