//! What the contract tests stand on: a database per trial on each backend (SQLite files; a
//! throwaway PostgreSQL server started here with `initdb`/`pg_ctl`), the embedded Vantiq
//! server, and the connector (in-process, or the built binary as a child process).

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::error::Error;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::task::JoinHandle;
use vantiq_connector_tokio::{ConnectorError, ConnectorSet, ServerConfig, ShutdownHandle};
use vantiq_testkit::{AnomalyKind, QueryResult, SourceHandle, TestServer, TestkitError};

/// What a scenario returns.
pub type TestResult = Result<(), Box<dyn Error + Send + Sync>>;

/// How long any single wait may take.
pub const WAIT: Duration = Duration::from_secs(20);
/// The source name every trial uses.
pub const SOURCE: &str = "SQL";

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// -------------------------------------------------------------------------------------------
// PostgreSQL
// -------------------------------------------------------------------------------------------

/// Where the PostgreSQL server binaries are, or why there are none.
pub fn pg_bin() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
            Ok(dir)
        } else {
            Err(format!("PG_BIN={} has no initdb and pg_ctl", dir.display()))
        };
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<PathBuf> = versions.flatten().map(|e| e.path().join("bin")).collect();
        v.sort();
        v.reverse();
        candidates.extend(v);
    }
    for dir in candidates {
        if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
            // `initdb` in PATH is often a symlink into the versioned directory.
            let real = std::fs::canonicalize(dir.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or(dir);
            return Ok(real);
        }
    }
    Err(
        "no PostgreSQL server binaries (initdb, pg_ctl) on this machine: install the \
         `postgresql` package or set PG_BIN"
            .to_owned(),
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A throwaway PostgreSQL server in a temporary directory, listening on 127.0.0.1.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: TempDir,
    pub port: u16,
    as_postgres: bool,
}

impl PgServer {
    /// `initdb` then `pg_ctl start` (as the `postgres` user when running as root).
    pub fn start() -> Result<PgServer, String> {
        let bin = pg_bin()?;
        let as_postgres = is_root();
        let dir = TempDir::new("vantiq-sql-pg-");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir.0)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(
                    "running as root, and the temporary directory cannot be given to the \
                     `postgres` user (is there one?)"
                        .to_owned(),
                );
            }
        }
        let port = free_port();
        let server = PgServer {
            bin,
            dir,
            port,
            as_postgres,
        };
        let data = server.dir.0.join("data");
        server.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        server.ctl_start()?;
        Ok(server)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts (or restarts) the server on its port.
    pub fn ctl_start(&self) -> Result<(), String> {
        let data = self.dir.0.join("data").display().to_string();
        let log = self.dir.0.join("log").display().to_string();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.0.display()
        );
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &opts, "-w", "start"],
        )
    }

    /// Stops the server (fast shutdown: sessions are ended).
    pub fn ctl_stop(&self) -> Result<(), String> {
        let data = self.dir.0.join("data").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
    }

    fn options(&self, db: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username("postgres")
            .database(db)
    }

    /// A fresh database.
    pub async fn create_db(&self) -> Result<String, Box<dyn Error + Send + Sync>> {
        let name = unique("sqltest_");
        let mut c = PgConnection::connect_with(&self.options("postgres")).await?;
        exec_on(&mut c, &format!("CREATE DATABASE {name}")).await?;
        c.close().await?;
        Ok(name)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.ctl_stop();
    }
}

/// The server shared by the PostgreSQL trials (each gets its own database).
static SHARED_PG: OnceLock<Result<PgServer, String>> = OnceLock::new();

pub fn shared_pg() -> Result<&'static PgServer, String> {
    SHARED_PG
        .get_or_init(PgServer::start)
        .as_ref()
        .map_err(Clone::clone)
}

/// Stops the shared server, if one was started (statics are not dropped).
pub fn stop_shared_pg() {
    if let Some(Ok(pg)) = SHARED_PG.get() {
        let _ = pg.ctl_stop();
        let _ = std::fs::remove_dir_all(&pg.dir.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

// -------------------------------------------------------------------------------------------
// Backends and per-trial databases
// -------------------------------------------------------------------------------------------

/// The two databases every scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// One trial's database, with a test-side connection to prepare data.
pub enum TestDb {
    Sqlite { dir: TempDir, file: PathBuf },
    Postgres { server: PgOwner, name: String },
}

/// The shared server, or one of the trial's own (for scenarios that stop it).
pub enum PgOwner {
    Shared(&'static PgServer),
    Own(Box<PgServer>),
}

impl PgOwner {
    pub fn server(&self) -> &PgServer {
        match self {
            PgOwner::Shared(s) => s,
            PgOwner::Own(s) => s,
        }
    }
}

/// A connection the test uses (setup, locks).
pub enum Admin {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

/// Reads single numbers through the connector's own database layer.
pub struct Counter(vantiq_sql_source::db::Database);

impl Counter {
    pub fn new(db: &TestDb) -> Result<Counter, Box<dyn Error + Send + Sync>> {
        let target = vantiq_sql_source::url::DbTarget::parse(&db.jdbc_url(), "postgres", "")?;
        Ok(Counter(vantiq_sql_source::db::Database::open(target, 1)?))
    }

    /// The first column of the first row of `sql`, an integer.
    pub async fn count(&self, sql: &str) -> Result<i64, Box<dyn Error + Send + Sync>> {
        use futures_util::StreamExt as _;
        let pool = self.0.pool()?;
        let mut rows = pool.rows(sql);
        let row = rows.next().await.ok_or("no row")??;
        match row.iter().next() {
            Some((_, vantiq_sql_source::rows::Cell::Int(n))) => Ok(*n),
            other => Err(format!("not an integer: {other:?}").into()),
        }
    }
}

/// One statement on a connection as a boxed future: sqlx's executor bounds are
/// higher-ranked, and a concrete future keeps `Send` checks of the callers simple.
fn exec_on<'c, C>(conn: &'c mut C, sql: &'c str) -> BoxFuture<'c, Result<(), sqlx::Error>>
where
    for<'e> &'e mut C: sqlx::Executor<'e>,
    C: Send,
{
    async move { sqlx::raw_sql(sql).execute(conn).await.map(|_| ()) }.boxed()
}

impl Admin {
    pub fn exec<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, TestResult> {
        async move {
            match self {
                Admin::Sqlite(c) => exec_on(c, sql).await?,
                Admin::Postgres(c) => exec_on(c, sql).await?,
            }
            Ok(())
        }
        .boxed()
    }

    /// Takes a lock that makes every read of `table` wait until [`Admin::exec`]`("COMMIT")`.
    pub async fn lock_table(&mut self, table: &str) -> TestResult {
        match self {
            Admin::Sqlite(_) => self.exec("BEGIN EXCLUSIVE").await,
            Admin::Postgres(_) => {
                self.exec(&format!(
                    "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
                ))
                .await
            }
        }
    }
}

impl TestDb {
    /// A fresh database on `backend`; own server for PostgreSQL when `own_server`.
    pub async fn new(
        backend: Backend,
        own_server: bool,
    ) -> Result<TestDb, Box<dyn Error + Send + Sync>> {
        Ok(match backend {
            Backend::Sqlite => {
                let dir = TempDir::new("vantiq-sql-");
                let file = dir.0.join("test.db");
                TestDb::Sqlite { dir, file }
            }
            Backend::Postgres => {
                let server = if own_server {
                    PgOwner::Own(Box::new(PgServer::start()?))
                } else {
                    PgOwner::Shared(shared_pg()?)
                };
                let name = server.server().create_db().await?;
                TestDb::Postgres { server, name }
            }
        })
    }

    pub fn backend(&self) -> Backend {
        match self {
            TestDb::Sqlite { .. } => Backend::Sqlite,
            TestDb::Postgres { .. } => Backend::Postgres,
        }
    }

    /// `dbURL` in the JDBC form a Vantiq user has.
    pub fn jdbc_url(&self) -> String {
        match self {
            TestDb::Sqlite { file, .. } => format!("jdbc:sqlite:{}", file.display()),
            TestDb::Postgres { server, name } => format!(
                "jdbc:postgresql://127.0.0.1:{}/{name}",
                server.server().port
            ),
        }
    }

    pub async fn admin(&self) -> Result<Admin, Box<dyn Error + Send + Sync>> {
        Ok(match self {
            TestDb::Sqlite { file, .. } => Admin::Sqlite(
                SqliteConnection::connect_with(
                    &SqliteConnectOptions::new()
                        .filename(file)
                        .create_if_missing(true),
                )
                .await?,
            ),
            TestDb::Postgres { server, name } => {
                Admin::Postgres(PgConnection::connect_with(&server.server().options(name)).await?)
            }
        })
    }

    /// A source configuration for this database (synchronous, no poll).
    pub fn config(&self) -> Value {
        json!({
            "vantiq": {"packageRows": "true"},
            "jdbcConfig": {"general": {
                "username": "postgres",
                "password": "unused",
                "dbURL": self.jdbc_url(),
            }}
        })
    }

    /// The configuration with `general` keys added or replaced.
    pub fn config_with(&self, general: Value) -> Value {
        let mut c = self.config();
        if let (Some(g), Some(extra)) = (
            c.pointer_mut("/jdbcConfig/general")
                .and_then(Value::as_object_mut),
            general.as_object(),
        ) {
            for (k, v) in extra {
                g.insert(k.clone(), v.clone());
            }
        }
        c
    }
}

// -------------------------------------------------------------------------------------------
// The Vantiq side and the connector
// -------------------------------------------------------------------------------------------

/// The embedded server with the connector running in-process against it.
pub struct Env {
    pub server: TestServer,
    pub source: SourceHandle,
    stop: ShutdownHandle,
    task: JoinHandle<Result<(), ConnectorError>>,
}

/// `server.config` text for a test server.
pub fn server_config(server: &TestServer) -> String {
    format!(
        "targetServer = {}\nauthToken = test-token\nsources = {SOURCE}\ntcpProbePort = 0\n",
        server.url()
    )
}

impl Env {
    /// Starts the server with the source configured as `config`, and the connector.
    pub async fn start(config: Value) -> Result<Env, Box<dyn Error + Send + Sync>> {
        let server = TestServer::builder()
            .token("test-token")
            .source(SOURCE, config)
            .start()
            .await?;
        let cfg = ServerConfig::parse(&server_config(&server), "test server.config", |_| None)?;
        let set = vantiq_sql_source::attach(ConnectorSet::new(cfg));
        let stop = set.shutdown_handle();
        let task = tokio::spawn(set.run());
        let source = server.source(SOURCE)?;
        source.wait_configured(WAIT).await?;
        Ok(Env {
            server,
            source,
            stop,
            task,
        })
    }

    /// A query's result, error replies included (not turned into `Err`).
    pub async fn query(&self, params: Value) -> Result<QueryResult, TestkitError> {
        query(&self.source, params).await
    }

    /// Stops the connector and checks it went cleanly: `run` returned `Ok`, the socket was
    /// closed with code 1000, and no query got a reply after its terminal one.
    pub async fn finish(self) -> TestResult {
        self.stop.shutdown();
        let outcome = tokio::time::timeout(WAIT, self.task).await??;
        outcome?;
        self.source.wait_disconnected(WAIT).await?;
        let closes = self.source.close_frames();
        if !closes.iter().any(|(code, _)| *code == Some(1000)) {
            return Err(format!("no close frame with code 1000: {closes:?}").into());
        }
        check_anomalies(&self.server)?;
        self.server.shutdown().await;
        Ok(())
    }
}

/// No reply for a finished (or unknown) query, nothing the server would refuse.
pub fn check_anomalies(server: &TestServer) -> TestResult {
    let bad: Vec<_> = server
        .anomalies()
        .into_iter()
        .filter(|a| {
            matches!(
                a.kind,
                AnomalyKind::UnknownReplyAddress { .. } | AnomalyKind::BadFrame { .. }
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("the server saw replies it did not expect: {bad:?}").into())
    }
}

/// A query's result, error replies included.
pub async fn query(source: &SourceHandle, params: Value) -> Result<QueryResult, TestkitError> {
    query_within(source, params, WAIT).await
}

/// As [`query`] with a timeout of its own.
pub async fn query_within(
    source: &SourceHandle,
    params: Value,
    timeout: Duration,
) -> Result<QueryResult, TestkitError> {
    match source.query_with_timeout(params, timeout).await {
        Ok(r) => Ok(r),
        Err(TestkitError::QueryFailed { result, .. }) => Ok(*result),
        Err(e) => Err(e),
    }
}

/// The statuses of every reply of a query, in order.
pub fn statuses(r: &QueryResult) -> Vec<i64> {
    r.parts.iter().map(|p| p.status.0).collect()
}

/// Checks that a query ended with exactly one reply, an error with `code`, and returns the
/// error's template.
pub fn expect_error(r: &QueryResult, code: &str) -> Result<String, Box<dyn Error + Send + Sync>> {
    if statuses(r) != [400_i64] {
        return Err(format!("expected one error reply, got statuses {:?}", statuses(r)).into());
    }
    let e = r
        .error()
        .ok_or("the error reply has no {messageCode,…} body")?;
    if e.code != code {
        return Err(format!("expected {code}, got {} ({})", e.code, e.template).into());
    }
    let mut text = e.template.clone();
    for (i, p) in e.parameters.iter().enumerate() {
        text = text.replace(&format!("{{{i}}}"), p.as_str().unwrap_or(&p.to_string()));
    }
    Ok(text)
}

/// Fails with `what` unless `cond`.
pub fn ensure(cond: bool, what: impl std::fmt::Display) -> TestResult {
    if cond {
        Ok(())
    } else {
        Err(what.to_string().into())
    }
}

/// Fails unless `a == b`, showing both.
pub fn ensure_eq<T: PartialEq + std::fmt::Debug>(a: T, b: T, what: &str) -> TestResult {
    if a == b {
        Ok(())
    } else {
        Err(format!("{what}: got {a:?}, expected {b:?}").into())
    }
}

// -------------------------------------------------------------------------------------------
// The connector binary as a child process
// -------------------------------------------------------------------------------------------

/// The built `vantiq-sql-source` binary running in a directory of its own with a
/// `serverConfig/server.config` for `server`, its token in `CONNECTOR_AUTH_TOKEN`.
pub struct Child {
    pub child: tokio::process::Child,
    _dir: TempDir,
}

impl Child {
    pub fn spawn(server: &TestServer) -> Result<Child, Box<dyn Error + Send + Sync>> {
        let dir = TempDir::new("vantiq-sql-bin-");
        std::fs::create_dir_all(dir.0.join("serverConfig"))?;
        std::fs::write(
            dir.0.join("serverConfig/server.config"),
            format!(
                "targetServer = {}\nsources = {SOURCE}\ntcpProbePort = 0\n",
                server.url()
            ),
        )?;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantiq-sql-source"))
            .current_dir(&dir.0)
            .env("CONNECTOR_AUTH_TOKEN", "test-token")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Child { child, _dir: dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// `VmRSS` and `VmHWM` (peak) in KiB, from /proc.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Sends a signal (`TERM`, `INT`) and waits for the exit; true when it exited 0.
    pub async fn signal_and_wait(
        &mut self,
        signal: &str,
    ) -> Result<bool, Box<dyn Error + Send + Sync>> {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()?
            .success();
        ensure(ok, format!("kill -{signal} failed"))?;
        let status = tokio::time::timeout(WAIT, self.child.wait()).await??;
        Ok(status.success())
    }
}
