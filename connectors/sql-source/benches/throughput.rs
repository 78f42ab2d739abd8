//! Rows per second of a large `SELECT` streamed through the connector to the embedded Vantiq
//! server, against the same query read by a bare database client (the limit), measured in
//! the same run. SQLite always; PostgreSQL when its server binaries are on the machine (a
//! throwaway server, as the contract tests start).
//!
//! ```text
//! cargo bench -p vantiq-sql-source --bench throughput              # 1,000,000 rows, 3 rounds
//! cargo bench -p vantiq-sql-source --bench throughput -- --rows 200000 --rounds 5
//! ```
//!
//! The connector is the release binary, a child process; the bench process hosts the test
//! server, which parses every reply (as Vantiq would). Each figure is the median of the
//! rounds. The bare clients: sqlx reading every row and decoding both columns (the same
//! library the connector uses, with nothing around it), and the `sqlite3`/`psql` command-line
//! clients writing the rows to /dev/null when installed.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::error::Error;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;
use sqlx::Row as _;
use support::*;
use vantiq_testkit::TestServer;

type BoxError = Box<dyn Error + Send + Sync>;

const QUERY: &str = "SELECT id, pad FROM big ORDER BY id";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), BoxError> {
    let rows = arg("--rows", 1_000_000);
    let rounds = arg("--rounds", 3).max(1);
    let bundle = arg("--bundle", 500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if backend == Backend::Postgres
            && let Err(reason) = pg_bin()
        {
            println!("postgres: skipped ({reason})");
            continue;
        }
        // On a worker thread, as the connector's code runs (a future polled by `block_on`
        // itself is woken through the main thread's parker, which is slower).
        let lines =
            rt.block_on(async move { tokio::spawn(bench(backend, rows, rounds, bundle)).await })??;
        report.extend(lines);
    }
    stop_shared_pg();
    println!("\n{rows} rows of `{QUERY}`, bundleFactor {bundle}, median of {rounds} rounds\n");
    println!("| database | reader | time | rows/s | vs bare sqlx | connector peak RSS |");
    println!("|---|---|---:|---:|---:|---:|");
    for line in report {
        println!("{line}");
    }
    Ok(())
}

async fn bench(
    backend: Backend,
    rows: usize,
    rounds: usize,
    bundle: usize,
) -> Result<Vec<String>, BoxError> {
    let db = TestDb::new(backend, false).await?;
    fill(&db, rows).await?;
    let name = backend.name();
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();

    // The limit: sqlx alone.
    let mut bare = Vec::new();
    for _ in 0..rounds {
        bare.push(bare_sqlx(&db, rows).await?);
    }
    let bare = median(bare);

    // The command-line client, when there is one.
    let mut cli = Vec::new();
    for _ in 0..rounds {
        match cli_time(&db) {
            Some(d) => cli.push(d),
            None => break,
        }
    }

    // The connector binary to the test server.
    let server = TestServer::builder()
        .token("test-token")
        .source(SOURCE, db.config())
        .record(false)
        .query_timeout(Duration::from_secs(600))
        .start()
        .await?;
    let source = server.source(SOURCE)?;
    let mut child = Child::spawn(&server)?;
    source.wait_configured(WAIT).await?;
    query(&source, json!({"query": "SELECT 1 AS warm"})).await?;
    let mut through = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let r = query_within(
            &source,
            json!({"query": QUERY, "bundleFactor": bundle}),
            Duration::from_secs(600),
        )
        .await?;
        through.push(started.elapsed());
        if r.rows.len() != rows || r.status.0 != 200 {
            return Err(format!("{name}: got {} rows, status {}", r.rows.len(), r.status).into());
        }
    }
    let through = median(through);
    let peak = child.memory_kib().map_or(0, |(_, hwm)| hwm);
    child.signal_and_wait("TERM").await?;
    server.shutdown().await;

    let line = |reader: &str, d: Duration| {
        format!(
            "| {name} | {reader} | {:.2} s | {:.0} | {:.2}x | {} |",
            d.as_secs_f64(),
            rate(d),
            rate(d) / rate(bare),
            if reader.starts_with("vantiq-sql-source") {
                format!("{:.1} MiB", peak as f64 / 1024.0)
            } else {
                "".to_owned()
            }
        )
    };
    let mut out = vec![line("bare sqlx (the limit)", bare)];
    if !cli.is_empty() {
        let tool = if backend == Backend::Sqlite {
            "sqlite3 CLI"
        } else {
            "psql CLI"
        };
        out.push(line(tool, median(cli)));
    }
    out.push(line("vantiq-sql-source → test server", through));
    Ok(out)
}

async fn fill(db: &TestDb, rows: usize) -> TestResult {
    let sql = match db.backend() {
        Backend::Sqlite => format!(
            "CREATE TABLE big (id INTEGER PRIMARY KEY, pad TEXT); \
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) \
             INSERT INTO big SELECT x, 'row ' || x || ' of a million, padded to make it wider' FROM c"
        ),
        Backend::Postgres => format!(
            "CREATE TABLE big (id INTEGER PRIMARY KEY, pad TEXT); \
             INSERT INTO big SELECT x, 'row ' || x || ' of a million, padded to make it wider' \
             FROM generate_series(1, {rows}) x"
        ),
    };
    let mut admin = db.admin().await?;
    admin.exec(&sql).await?;
    if db.backend() == Backend::Postgres {
        // Its own statement: VACUUM cannot run in the implicit transaction of a multi-statement.
        admin.exec("VACUUM ANALYZE big").await?;
    }
    Ok(())
}

/// Every row read and both columns decoded by sqlx, nothing else.
async fn bare_sqlx(db: &TestDb, rows: usize) -> Result<Duration, BoxError> {
    let started;
    let mut n = 0usize;
    let mut bytes = 0usize;
    match db {
        TestDb::Sqlite { file, .. } => {
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new().filename(file),
            )
            .await?;
            started = Instant::now();
            let mut s = sqlx::raw_sql(QUERY).fetch(&pool);
            while let Some(row) = s.next().await {
                let row = row?;
                let id: i64 = row.try_get(0)?;
                let pad: &str = row.try_get(1)?;
                n += usize::from(id > 0);
                bytes += pad.len();
            }
        }
        TestDb::Postgres { server, name } => {
            let url = format!(
                "postgres://postgres@127.0.0.1:{}/{name}",
                server.server().port
            );
            let pool = sqlx::PgPool::connect(&url).await?;
            started = Instant::now();
            let mut s = sqlx::raw_sql(QUERY).fetch(&pool);
            while let Some(row) = s.next().await {
                let row = row?;
                let id: i32 = row.try_get(0)?;
                let pad: &str = row.try_get(1)?;
                n += usize::from(id > 0);
                bytes += pad.len();
            }
        }
    }
    let elapsed = started.elapsed();
    if n != rows || bytes == 0 {
        return Err(format!("bare client read {n} rows").into());
    }
    Ok(elapsed)
}

/// The command-line client writing every row to /dev/null.
fn cli_time(db: &TestDb) -> Option<Duration> {
    let mut cmd = match db {
        TestDb::Sqlite { file, .. } => {
            let mut c = Command::new("sqlite3");
            c.arg(file).arg(QUERY);
            c
        }
        TestDb::Postgres { server, name } => {
            let mut c = Command::new("psql");
            c.args(["-h", "127.0.0.1", "-U", "postgres", "-At", "-c", QUERY])
                .arg("-p")
                .arg(server.server().port.to_string())
                .arg(name);
            c
        }
    };
    let started = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| started.elapsed())
}
