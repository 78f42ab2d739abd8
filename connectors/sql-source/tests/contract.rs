//! The Java JDBC source's contract, end to end against the embedded Vantiq server, on SQLite
//! and on a real PostgreSQL server. Every scenario is written once and runs on both; the
//! PostgreSQL trials start a throwaway server (`initdb`/`pg_ctl`) and are reported as
//! ignored, with the reason, when the PostgreSQL binaries are not on the machine.
//!
//! ```text
//! cargo test -p vantiq-sql-source --test contract            # everything
//! cargo test -p vantiq-sql-source --test contract -- sqlite  # one backend
//! ```

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::{Value, json};
use support::*;
use vantiq_sql_source::errors;
use vantiq_testkit::TestServer;

type Scenario = fn(TestDb) -> Pin<Box<dyn Future<Output = TestResult> + Send>>;

/// (name, needs a PostgreSQL server of its own, scenario)
const SCENARIOS: &[(&str, bool, Scenario)] = &[
    ("select_bundles", false, |db| Box::pin(select_bundles(db))),
    ("select_empty_is_204", false, |db| {
        Box::pin(select_empty(db))
    }),
    ("updates_and_publishes", false, |db| {
        Box::pin(updates_and_publishes(db))
    }),
    ("batches", false, |db| Box::pin(batches(db))),
    ("error_codes", false, |db| Box::pin(error_codes(db))),
    ("row_encoding", false, |db| Box::pin(row_encoding(db))),
    ("invalid_config_then_fixed", false, |db| {
        Box::pin(invalid_config(db))
    }),
    ("reconfiguration", false, |db| Box::pin(reconfiguration(db))),
    ("polling", false, |db| Box::pin(polling(db))),
    ("async_queue_full", false, |db| {
        Box::pin(async_queue_full(db))
    }),
    ("database_goes_away", true, |db| {
        Box::pin(database_goes_away(db))
    }),
    ("million_rows_binary", false, |db| {
        Box::pin(million_rows(db))
    }),
    ("sigint_stops_binary", false, |db| {
        Box::pin(sigint_stops(db))
    }),
];

fn main() {
    let args = Arguments::from_args();
    let pg = pg_bin();
    let mut trials = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for &(name, own_pg, scenario) in SCENARIOS {
            let pg = pg.clone();
            trials.push(Trial::ignorable_test(
                format!("{}::{name}", backend.name()),
                move || {
                    if backend == Backend::Postgres
                        && let Err(reason) = pg
                    {
                        return Ok(Completion::ignored_with(reason));
                    }
                    run(backend, own_pg, scenario)
                },
            ));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    stop_shared_pg();
    conclusion.exit();
}

fn run(backend: Backend, own_pg: bool, scenario: Scenario) -> Result<Completion, Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    rt.block_on(async move {
        let db = TestDb::new(backend, own_pg).await?;
        scenario(db).await
    })
    .map(|()| Completion::Completed)
    .map_err(|e| Failed::from(e.to_string()))
}

// -------------------------------------------------------------------------------------------
// Queries
// -------------------------------------------------------------------------------------------

fn sample_rows(n: i64) -> Vec<Value> {
    (1..=n)
        .map(|i| {
            let mut row = json!({"id": i, "name": format!("n{i}"), "price": i as f64 * 1.5});
            if i % 2 == 1 {
                row["note"] = json!(format!("note {i}"));
            }
            row
        })
        .collect()
}

/// The values with every number as an `f64` (3, 3.0 and 3.00 are one number).
fn numbers_as_f64(rows: &[Value]) -> Vec<Value> {
    fn norm(v: &Value) -> Value {
        match v {
            Value::Number(n) => json!(n.as_f64()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), norm(v))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(norm).collect()),
            other => other.clone(),
        }
    }
    rows.iter().map(norm).collect()
}

async fn sample_table(db: &TestDb) -> TestResult {
    let mut admin = db.admin().await?;
    admin
        .exec("CREATE TABLE t (id INTEGER, name TEXT, price NUMERIC(10,2), note TEXT)")
        .await?;
    for i in 1..=7 {
        let note = if i % 2 == 1 {
            format!("'note {i}'")
        } else {
            "NULL".to_owned()
        };
        admin
            .exec(&format!(
                "INSERT INTO t VALUES ({i}, 'n{i}', {}, {note})",
                i as f64 * 1.5
            ))
            .await?;
    }
    Ok(())
}

/// `bundleFactor` rows per reply, 100 for every part but the last, 200 for the last, NULL
/// columns left out, numbers as numbers.
async fn select_bundles(db: TestDb) -> TestResult {
    sample_table(&db).await?;
    let env = Env::start(db.config()).await?;
    let sql = "SELECT * FROM t ORDER BY id";
    let want = sample_rows(7);
    for (bf, parts) in [
        (json!(3), vec![(100, 3), (100, 3), (200, 1)]),
        (json!(7), vec![(200, 7)]),
        (json!(1), [vec![(100, 1); 6], vec![(200, 1)]].concat()),
        (json!(0), vec![(200, 7)]),
        (json!(-1), vec![(200, 7)]),   // not > -1: the default, 500
        (json!("3"), vec![(200, 7)]),  // not an integer: the default
        (Value::Null, vec![(200, 7)]), // absent below
    ] {
        let params = if bf.is_null() {
            json!({"query": sql})
        } else {
            json!({"query": sql, "bundleFactor": bf})
        };
        let r = env.query(params).await?;
        let got: Vec<(i64, usize)> = r
            .parts
            .iter()
            .map(|p| {
                let n = p
                    .body
                    .as_ref()
                    .map_or(0, |b| b.to_value().unwrap().as_array().map_or(1, Vec::len));
                (p.status.0, n)
            })
            .collect();
        ensure_eq(got, parts, &format!("replies for bundleFactor {bf}"))?;
        // SQLite's NUMERIC keeps 3.0 as the integer 3, PostgreSQL's as 3.00: same number.
        ensure_eq(
            numbers_as_f64(&r.rows),
            numbers_as_f64(&want),
            &format!("rows for bundleFactor {bf}"),
        )?;
    }
    env.finish().await
}

/// No rows: one 204.
async fn select_empty(db: TestDb) -> TestResult {
    db.admin()
        .await?
        .exec("CREATE TABLE t (id INTEGER)")
        .await?;
    let env = Env::start(db.config()).await?;
    for bf in [json!(0), json!(500)] {
        let r = env
            .query(json!({"query": "  select * from t", "bundleFactor": bf}))
            .await?;
        ensure_eq(statuses(&r), vec![204], "statuses")?;
        ensure(r.rows.is_empty(), "no rows")?;
    }
    env.finish().await
}

/// Any other statement is an update answered 204; publishes run statements and batches, in
/// order with queries (synchronous processing); a failing publish is only logged.
async fn updates_and_publishes(db: TestDb) -> TestResult {
    let env = Env::start(db.config()).await?;
    for sql in [
        "CREATE TABLE u (id INTEGER, v TEXT)",
        "INSERT INTO u VALUES (1, 'a')",
        "UPDATE u SET v = 'A' WHERE id = 1",
    ] {
        let r = env.query(json!({"query": sql})).await?;
        ensure_eq(statuses(&r), vec![204], sql)?;
    }
    env.source
        .publish(json!({"query": "INSERT INTO u VALUES (2, 'b')"}))
        .await?;
    env.source
        .publish(
            json!({"query": ["INSERT INTO u VALUES (3, 'c')", "INSERT INTO u VALUES (4, 'd')"]}),
        )
        .await?;
    env.source
        .publish(json!({"query": "INSERT INTO nowhere VALUES (1)"}))
        .await?;
    env.source.publish(json!({"query": 5})).await?;
    env.source.publish(json!({"no": "query"})).await?;
    // Several statements in one string, as a JDBC Statement takes them.
    env.source
        .publish(json!({"query": "INSERT INTO u VALUES (5, 'e'); INSERT INTO u VALUES (6, 'f')"}))
        .await?;
    let r = env
        .query(json!({"query": "SELECT id, v FROM u ORDER BY id"}))
        .await?;
    ensure_eq(
        r.rows,
        vec![
            json!({"id": 1, "v": "A"}),
            json!({"id": 2, "v": "b"}),
            json!({"id": 3, "v": "c"}),
            json!({"id": 4, "v": "d"}),
            json!({"id": 5, "v": "e"}),
            json!({"id": 6, "v": "f"}),
        ],
        "rows after the publishes",
    )?;
    env.finish().await
}

/// A list runs as one batch (all or nothing); a SELECT or a non-string in it is refused
/// before anything runs.
async fn batches(db: TestDb) -> TestResult {
    let env = Env::start(db.config()).await?;
    let admin = Counter::new(&db)?;
    let r = env
        .query(json!({"query": [
            "CREATE TABLE b (id INTEGER PRIMARY KEY)",
            "INSERT INTO b VALUES (1)",
            "INSERT INTO b VALUES (2)"]}))
        .await?;
    ensure_eq(statuses(&r), vec![204], "batch")?;
    ensure_eq(admin.count("SELECT count(*) FROM b").await?, 2, "rows")?;

    let r = env
        .query(json!({"query": ["INSERT INTO b VALUES (3)", " SELECT * FROM b"]}))
        .await?;
    expect_error(&r, errors::INVALID_BATCH_ELEMENT)?;
    let r = env
        .query(json!({"query": ["INSERT INTO b VALUES (3)", 4]}))
        .await?;
    expect_error(&r, errors::INVALID_BATCH_ELEMENT)?;
    ensure_eq(
        admin.count("SELECT count(*) FROM b").await?,
        2,
        "nothing ran",
    )?;

    let r = env
        .query(json!({"query": ["INSERT INTO b VALUES (4)", "INSERT INTO b VALUES (1)"]}))
        .await?;
    let text = expect_error(&r, errors::SQL_EXCEPTION)?;
    match db.backend() {
        Backend::Postgres => ensure(text.contains("SQL State: 23505, Error Code: 0"), &text)?,
        Backend::Sqlite => ensure(
            text.contains("UNIQUE constraint failed") && text.contains("SQL State: null"),
            &text,
        )?,
    }
    ensure_eq(
        admin.count("SELECT count(*) FROM b").await?,
        2,
        "the failed batch was rolled back",
    )?;
    let r = env.query(json!({"query": []})).await?;
    ensure_eq(statuses(&r), vec![204], "empty batch")?;
    env.finish().await
}

/// Every request error with the Java connector's code, one error reply each.
async fn error_codes(db: TestDb) -> TestResult {
    let env = Env::start(db.config()).await?;
    for params in [json!({"query": 5}), json!({}), json!({"query": {"a": 1}})] {
        let r = env.query(params.clone()).await?;
        let text = expect_error(&r, errors::QUERY_NOT_STRING)?;
        ensure(text.contains("not a string"), format!("{params}: {text}"))?;
    }
    let r = env.query(json!(["SELECT 1"])).await?;
    ensure_eq(
        expect_error(&r, errors::INVALID_QUERY_REQUEST)?,
        "Request must be a map".to_owned(),
        "template",
    )?;
    // Parameters nested past serde_json's tree limit (128 levels) cannot be read either.
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let r = env.query(json!({"query": "SELECT 1", "x": deep})).await?;
    ensure_eq(
        expect_error(&r, errors::INVALID_QUERY_REQUEST)?,
        "Request must be a map".to_owned(),
        "template of too deep parameters",
    )?;

    let r = env.query(json!({"query": "SELECT * FROM missing"})).await?;
    let text = expect_error(&r, errors::SQL_EXCEPTION)?;
    let prefix = "Failed to execute query for reason: io.vantiq.extsrc.jdbcSource.JDBC: A database \
                  error occurred: ";
    ensure(text.starts_with(prefix), &text)?;
    ensure(
        text.ends_with(
            ". Exception was: io.vantiq.extsrc.jdbcSource.exception.VantiqSQLException. \
             Request was: SELECT * FROM missing",
        ),
        &text,
    )?;
    match db.backend() {
        Backend::Postgres => ensure(
            text.contains("relation \"missing\" does not exist SQL State: 42P01, Error Code: 0"),
            &text,
        )?,
        Backend::Sqlite => ensure(
            text.contains("no such table: missing SQL State: null, Error Code: 1"),
            &text,
        )?,
    }
    // An update that fails.
    let r = env.query(json!({"query": "DROP TABLE missing"})).await?;
    expect_error(&r, errors::SQL_EXCEPTION)?;
    // A SELECT that fails after its first rows: still exactly one terminal reply.
    let r = env
        .query(json!({"query": match db.backend() {
            Backend::Postgres => "SELECT 1 / (3 - g) AS x FROM generate_series(1, 5) g",
            Backend::Sqlite => "SELECT x FROM (SELECT 1 AS x UNION ALL SELECT abs(-9223372036854775807 - 1))",
        }, "bundleFactor": 1}))
        .await?;
    ensure_eq(r.status.0, 400, "status after partial rows")?;
    ensure_eq(
        r.parts.iter().filter(|p| p.status.0 >= 200).count(),
        1,
        "terminal replies",
    )?;
    env.finish().await
}

fn local_timestamp(naive: &str) -> String {
    let n = NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S%.f").unwrap();
    Local
        .from_local_datetime(&n)
        .earliest()
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3f%z")
        .to_string()
}

fn local_time(clock: &str) -> String {
    let t = chrono::NaiveTime::parse_from_str(clock, "%H:%M:%S%.f").unwrap();
    let at = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap().and_time(t);
    Local
        .from_local_datetime(&at)
        .earliest()
        .unwrap()
        .format("%H:%M:%S%.3f%z")
        .to_string()
}

fn instant_local(rfc3339: &str) -> String {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Local)
        .format("%Y-%m-%dT%H:%M:%S%.3f%z")
        .to_string()
}

/// Row encoding: numbers as numbers (NUMERIC digit for digit), dates and times in the Java
/// connector's formats, binary as base64, NULL left out.
async fn row_encoding(db: TestDb) -> TestResult {
    let (sql, want) = match db.backend() {
        Backend::Postgres => (
            "SELECT 1::int2 AS i2, 2::int4 AS i4, 3::int8 AS i8, 1.5::float8 AS f8, \
             'NaN'::float8 AS fnan, 12345678901234567890.125::numeric AS n, true AS b, \
             'x'::text AS t, DATE '2024-02-29' AS d, TIME '10:33:36.5' AS tm, \
             TIMESTAMP '2024-05-01 10:33:36.123' AS ts, \
             TIMESTAMPTZ '2024-05-01 10:33:36+02' AS tstz, '\\x4869'::bytea AS by, \
             '{\"a\": [1, 2]}'::jsonb AS j, NULL::int AS nothing, \
             '2d9c0e0e-0000-4000-8000-000000000000'::uuid AS u, ARRAY[1, 2] AS arr"
                .to_owned(),
            json!({"i2": 1, "i4": 2, "i8": 3, "f8": 1.5, "fnan": "NaN",
                   "n": 12345678901234567890.125, "b": true, "t": "x", "d": "2024-02-29",
                   "tm": local_time("10:33:36.5"),
                   "ts": local_timestamp("2024-05-01 10:33:36.123"),
                   "tstz": instant_local("2024-05-01T10:33:36+02:00"),
                   "by": "SGk=", "j": {"a": [1, 2]},
                   "u": "2d9c0e0e-0000-4000-8000-000000000000", "arr": "{1,2}"}),
        ),
        Backend::Sqlite => {
            let mut admin = db.admin().await?;
            admin
                .exec(
                    "CREATE TABLE e (i INTEGER, f REAL, n NUMERIC, b BOOLEAN, t TEXT, d DATE, \
                     tm TIME, ts DATETIME, tsi TIMESTAMP, bl BLOB, absent TEXT); \
                     INSERT INTO e VALUES (3, 1.5, 2.25, 1, 'x', '2024-02-29', '10:33:36.5', \
                     '2024-05-01 10:33:36.123', 1714559616000, x'4869', NULL)",
                )
                .await?;
            (
                "SELECT * FROM e".to_owned(),
                json!({"i": 3, "f": 1.5, "n": 2.25, "b": 1, "t": "x", "d": "2024-02-29",
                       "tm": local_time("10:33:36.5"),
                       "ts": local_timestamp("2024-05-01 10:33:36.123"),
                       "tsi": instant_local("2024-05-01T10:33:36Z"),
                       "bl": "SGk="}),
            )
        }
    };
    let env = Env::start(db.config()).await?;
    let r = env.query(json!({"query": sql})).await?;
    ensure_eq(statuses(&r), vec![200], "statuses")?;
    ensure_eq(r.rows, vec![want], "row")?;
    if db.backend() == Backend::Postgres {
        // Every digit of the NUMERIC, as Java's BigDecimal writes it.
        let body = r.parts[0].body.as_ref().unwrap().as_str().to_owned();
        ensure(body.contains("\"n\":12345678901234567890.125"), &body)?;
    }
    env.finish().await
}

// -------------------------------------------------------------------------------------------
// Configuration
// -------------------------------------------------------------------------------------------

/// A refused configuration: logged, the source stays up, every query gets the `closed`
/// error saying why; a good configuration later takes over.
async fn invalid_config(db: TestDb) -> TestResult {
    let mut bad = db.config();
    bad["vantiq"]["packageRows"] = json!("false");
    let env = Env::start(bad).await?;
    for params in [
        json!({"query": "SELECT 1"}),
        json!({"query": ["DELETE FROM x"]}),
    ] {
        let r = env.query(params).await?;
        let text = expect_error(&r, errors::CLOSED)?;
        ensure(
            text.starts_with("JDBC connection closed before operation could complete.")
                && text.contains("packageRows"),
            &text,
        )?;
    }
    env.source
        .publish(json!({"query": "INSERT INTO x VALUES (1)"}))
        .await?;

    let unsupported = db.config_with(json!({"dbURL": "jdbc:mysql://db.example/sales"}));
    env.source
        .reconnect_required(Some(unsupported.into()))
        .await?;
    env.source.wait_configured(WAIT).await?;
    let r = env.query(json!({"query": "SELECT 1"})).await?;
    let text = expect_error(&r, errors::CLOSED)?;
    ensure(
        text.contains("dbURL") && text.contains("does not support"),
        &text,
    )?;

    let mut no_user = db.config();
    no_user["jdbcConfig"]["general"]
        .as_object_mut()
        .unwrap()
        .remove("username");
    env.source.reconnect_required(Some(no_user.into())).await?;
    env.source.wait_configured(WAIT).await?;
    let text = expect_error(
        &env.query(json!({"query": "SELECT 1"})).await?,
        errors::CLOSED,
    )?;
    ensure(text.contains("jdbcConfig.general.username"), &text)?;

    env.source
        .reconnect_required(Some(db.config().into()))
        .await?;
    env.source.wait_configured(WAIT).await?;
    let r = env.query(json!({"query": "SELECT 1 AS one"})).await?;
    ensure_eq(
        r.rows,
        vec![json!({"one": 1})],
        "after a good configuration",
    )?;
    env.finish().await
}

/// Connections the connector holds on `db` (SQLite: open descriptors of the file in this
/// process; PostgreSQL: server sessions named `vantiq-sql-source`).
async fn connector_handles(
    db: &TestDb,
    via: &Counter,
) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    match db {
        TestDb::Sqlite { file, .. } => {
            let file = std::fs::canonicalize(file)?;
            let n = std::fs::read_dir("/proc/self/fd")?
                .flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == file))
                .count();
            Ok(i64::try_from(n)?)
        }
        TestDb::Postgres { name, .. } => {
            via.count(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' \
                 AND application_name = 'vantiq-sql-source'"
            ))
            .await
        }
    }
}

/// `reconnectRequired` with a new configuration: the poll stops, the old pool closes, the
/// new database serves the queries.
async fn reconfiguration(db: TestDb) -> TestResult {
    let other = TestDb::new(db.backend(), false).await?;
    {
        let mut a = db.admin().await?;
        a.exec("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('from A')")
            .await?;
        let mut b = other.admin().await?;
        b.exec("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('from B')")
            .await?;
    }
    let polled = db.config_with(json!({"pollTime": 50, "pollQuery": "SELECT v FROM t"}));
    let env = Env::start(polled).await?;
    ensure_eq(
        env.source
            .next_notification(WAIT)
            .await?
            .to_value()
            .unwrap(),
        json!({"v": "from A"}),
        "poll of A",
    )?;
    let r = env.query(json!({"query": "SELECT v FROM t"})).await?;
    ensure_eq(r.rows, vec![json!({"v": "from A"})], "query on A")?;

    env.source
        .reconnect_required(Some(other.config().into()))
        .await?;
    env.source.wait_configured(WAIT).await?;
    let r = env.query(json!({"query": "SELECT v FROM t"})).await?;
    ensure_eq(r.rows, vec![json!({"v": "from B"})], "query on B")?;

    // The old pool is closed: the connector holds nothing on A any more.
    let watcher = Counter::new(&other)?;
    let deadline = Instant::now() + WAIT;
    loop {
        let held = connector_handles(&db, &watcher).await?;
        if held == 0 {
            break;
        }
        ensure(
            Instant::now() < deadline,
            format!("the connector still holds {held} connection(s) to the old database"),
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The poll stopped with the old configuration: nothing more within 10 poll periods.
    let n = env.source.notification_count();
    let more = env
        .source
        .wait_notification_count(n + 1, Duration::from_millis(500))
        .await;
    ensure(
        more.as_ref()
            .is_err_and(vantiq_testkit::TestkitError::is_timeout),
        format!("a notification after the reconfiguration: {more:?}"),
    )?;
    env.finish().await
}

/// `pollQuery` every `pollTime`, each row one notification; no poll without both.
async fn polling(db: TestDb) -> TestResult {
    let mut admin = db.admin().await?;
    admin
        .exec("CREATE TABLE p (id INTEGER, v TEXT); INSERT INTO p VALUES (1, 'a'), (2, 'b')")
        .await?;
    let env = Env::start(
        db.config_with(json!({"pollTime": 50, "pollQuery": "SELECT id, v FROM p ORDER BY id"})),
    )
    .await?;
    let first: Vec<Value> = env
        .source
        .wait_notifications(4, WAIT)
        .await?
        .iter()
        .map(|j| j.to_value().unwrap())
        .collect();
    let (a, b) = (json!({"id": 1, "v": "a"}), json!({"id": 2, "v": "b"}));
    ensure_eq(
        first,
        vec![a.clone(), b.clone(), a, b],
        "two polls, a row each",
    )?;
    admin.exec("INSERT INTO p VALUES (3, 'c')").await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let n = env
            .source
            .next_notification(WAIT)
            .await?
            .to_value()
            .unwrap();
        if n == json!({"id": 3, "v": "c"}) {
            break;
        }
        ensure(Instant::now() < deadline, "the new row was never polled")?;
    }

    // pollTime without pollQuery: logged, no polling, the source works.
    env.source
        .reconnect_required(Some(db.config_with(json!({"pollTime": 50})).into()))
        .await?;
    env.source.wait_configured(WAIT).await?;
    let r = env
        .query(json!({"query": "SELECT count(*) AS n FROM p"}))
        .await?;
    ensure_eq(r.rows, vec![json!({"n": 3})], "query without a poll")?;
    let n = env.source.notification_count();
    let more = env
        .source
        .wait_notification_count(n + 1, Duration::from_millis(500))
        .await;
    ensure(
        more.as_ref()
            .is_err_and(vantiq_testkit::TestkitError::is_timeout),
        format!("a notification without a pollQuery: {more:?}"),
    )?;
    env.finish().await
}

/// Asynchronous processing: `maxActiveTasks` running, `maxQueuedTasks` waiting, the next
/// query refused at once with `queuedTasksFull`.
async fn async_queue_full(db: TestDb) -> TestResult {
    let mut admin = db.admin().await?;
    admin
        .exec("CREATE TABLE q (id INTEGER); INSERT INTO q VALUES (1)")
        .await?;
    let env = Env::start(db.config_with(json!({
        "asynchronousProcessing": true, "maxActiveTasks": 1, "maxQueuedTasks": 1
    })))
    .await?;
    // Every read of q now waits for the lock: the first query runs (and waits), the second
    // is queued, the third finds no room.
    admin.lock_table("q").await?;
    let select = json!({"query": "SELECT id FROM q"});
    let (first, second, third) = {
        let f1 = query(&env.source, select.clone());
        let f2 = query(&env.source, select.clone());
        let f3 = async {
            // `join!` polls in order, so the three queries are sent in order.
            let r = query(&env.source, select.clone()).await;
            admin.exec("COMMIT").await.map(|()| r)
        };
        tokio::join!(f1, f2, f3)
    };
    let third = third??;
    let text = expect_error(&third, errors::QUEUED_TASKS_FULL)?;
    ensure(text.contains("queue of tasks has filled"), &text)?;
    for (i, r) in [first?, second?].iter().enumerate() {
        ensure_eq(statuses(r), vec![200], &format!("query {}", i + 1))?;
        ensure_eq(&r.rows, &vec![json!({"id": 1})], "rows")?;
    }
    // Room again once they finished.
    let r = env.query(select).await?;
    ensure_eq(statuses(&r), vec![200], "after the queue drained")?;
    env.finish().await
}

/// The database goes away (SQLite: the file is removed; PostgreSQL: the server stops):
/// queries get a clear SQL error meanwhile, and work again once it is back.
async fn database_goes_away(db: TestDb) -> TestResult {
    db.admin()
        .await?
        .exec("CREATE TABLE g (v TEXT); INSERT INTO g VALUES ('here')")
        .await?;
    let env = Env::start(db.config()).await?;
    let select = json!({"query": "SELECT v FROM g"});
    ensure_eq(
        env.query(select.clone()).await?.rows,
        vec![json!({"v": "here"})],
        "before",
    )?;
    match &db {
        TestDb::Sqlite { file, dir } => {
            let backup = dir.0.join("backup.db");
            std::fs::copy(file, &backup)?;
            std::fs::remove_file(file)?;
            let text = expect_error(&env.query(select.clone()).await?, errors::SQL_EXCEPTION)?;
            ensure(
                text.contains(&format!("the database file {} is gone", file.display()))
                    && text.contains("SQL State: 08006"),
                &text,
            )?;
            // Not re-created empty behind the user's back.
            ensure(!file.exists(), "the vanished file was re-created")?;
            std::fs::copy(&backup, file)?;
        }
        TestDb::Postgres { server, .. } => {
            server.server().ctl_stop()?;
            let started = Instant::now();
            let text = expect_error(&env.query(select.clone()).await?, errors::SQL_EXCEPTION)?;
            ensure(text.contains("SQL State: 08"), &text)?;
            println!(
                "postgres::database_goes_away: error reply after {:?}",
                started.elapsed()
            );
            server.server().ctl_start()?;
        }
    }
    ensure_eq(
        env.query(select).await?.rows,
        vec![json!({"v": "here"})],
        "after",
    )?;
    env.finish().await
}

// -------------------------------------------------------------------------------------------
// The binary
// -------------------------------------------------------------------------------------------

const MILLION: i64 = 1_000_000;

async fn million_table(db: &TestDb) -> TestResult {
    let mut admin = db.admin().await?;
    let fill = match db.backend() {
        Backend::Sqlite => {
            "CREATE TABLE big (id INTEGER PRIMARY KEY, pad TEXT); \
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) \
             INSERT INTO big SELECT x, 'row ' || x || ' of a million, padded to make it wider' FROM c"
        }
        Backend::Postgres => {
            "CREATE TABLE big (id INTEGER PRIMARY KEY, pad TEXT); \
             INSERT INTO big SELECT x, 'row ' || x || ' of a million, padded to make it wider' \
             FROM generate_series(1, 1000000) x"
        }
    };
    admin.exec(fill).await
}

/// A 1,000,000-row SELECT through the built binary: streamed in 2,000 parts; its peak
/// resident memory stays far below the size of the result; SIGTERM stops it cleanly.
async fn million_rows(db: TestDb) -> TestResult {
    million_table(&db).await?;
    let server = TestServer::builder()
        .token("test-token")
        .source(SOURCE, db.config())
        .record(false)
        .start()
        .await?;
    let source = server.source(SOURCE)?;
    let mut child = Child::spawn(&server)?;
    source.wait_configured(WAIT).await?;
    // Warm up (the pool's first connection), then measure.
    ensure_eq(
        query(&source, json!({"query": "SELECT count(*) AS n FROM big"}))
            .await?
            .rows,
        vec![json!({"n": MILLION})],
        "count",
    )?;
    let (rss_before, _) = child.memory_kib().ok_or("no /proc status for the child")?;
    let started = Instant::now();
    let r = query_within(
        &source,
        json!({"query": "SELECT id, pad FROM big ORDER BY id", "bundleFactor": 500}),
        Duration::from_secs(600),
    )
    .await?;
    let elapsed = started.elapsed();
    let (rss_after, peak) = child.memory_kib().ok_or("no /proc status for the child")?;
    let bytes: usize = r
        .parts
        .iter()
        .filter_map(|p| p.body.as_ref())
        .map(|b| b.len())
        .sum();
    println!(
        "{}::million_rows_binary: {} rows in {} replies, {:.1} MB of JSON, {:.2?} ({:.0} rows/s); \
         connector RSS {} KiB before, {} KiB after, peak (VmHWM) {} KiB",
        db.backend().name(),
        r.rows.len(),
        r.parts.len(),
        bytes as f64 / 1e6,
        elapsed,
        r.rows.len() as f64 / elapsed.as_secs_f64(),
        rss_before,
        rss_after,
        peak
    );
    ensure_eq(r.status.0, 200, "status")?;
    ensure_eq(r.rows.len(), 1_000_000, "rows")?;
    ensure_eq(r.partial_count(), 1999, "partial replies")?;
    ensure_eq(&r.rows[0]["id"], &json!(1), "first row")?;
    ensure_eq(&r.rows[999_999]["id"], &json!(MILLION), "last row")?;
    // Structural bound: the result is ~80 MB of JSON (more as rows in memory); a connector
    // that held it whole could not stay under half of it.
    ensure(
        (peak as usize) * 1024 < bytes / 2,
        format!("peak RSS {peak} KiB is not far below the {bytes}-byte result"),
    )?;
    drop(r);
    ensure(
        child.signal_and_wait("TERM").await?,
        "exit status after SIGTERM",
    )?;
    source.wait_disconnected(WAIT).await?;
    ensure(
        source.close_frames().iter().any(|(c, _)| *c == Some(1000)),
        "close frame 1000 on SIGTERM",
    )?;
    check_anomalies(&server)?;
    server.shutdown().await;
    Ok(())
}

/// SIGINT stops the binary cleanly too.
async fn sigint_stops(db: TestDb) -> TestResult {
    let server = TestServer::builder()
        .token("test-token")
        .source(SOURCE, db.config())
        .start()
        .await?;
    let source = server.source(SOURCE)?;
    let mut child = Child::spawn(&server)?;
    source.wait_configured(WAIT).await?;
    let r = query(&source, json!({"query": "SELECT 1 AS one"})).await?;
    ensure_eq(r.rows, vec![json!({"one": 1})], "query")?;
    ensure(
        child.signal_and_wait("INT").await?,
        "exit status after SIGINT",
    )?;
    source.wait_disconnected(WAIT).await?;
    ensure(
        source.close_frames().iter().any(|(c, _)| *c == Some(1000)),
        "close frame 1000 on SIGINT",
    )?;
    server.shutdown().await;
    Ok(())
}
