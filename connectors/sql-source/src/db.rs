//! The database: a connection pool per configured source, over SQLite or PostgreSQL, that
//! survives the database going away.
//!
//! Statements run through sqlx's `raw_sql` (the simple query protocol on PostgreSQL): any
//! SQL text a JDBC `Statement` takes works, several statements separated by `;` included,
//! and rows stream from the server as they are read, so a large result is never held whole.
//!
//! Reconnection (the Java connector's issue Vantiq/vantiq-extension-sources#158): PostgreSQL
//! connections are checked before each use and re-opened by the pool; while the server is
//! unreachable each operation fails after [`ACQUIRE_TIMEOUT`] with a clear error. A SQLite database *file* that is removed or
//! replaced is noticed before the next operation: the old pool (whose connections still see
//! the deleted file) is closed, operations fail with an error naming the file until it is
//! back, and then a fresh pool opens it. It is never silently re-created empty.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _};
use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

use crate::rows::{Encoder, Row};
use crate::url::DbTarget;

/// How long an operation waits for a connection (the Java connector's pool timeout).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A database failure, in the terms of a JDBC `SQLException`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (SQL state {sql_state}, error code {code})")]
pub struct DbError {
    /// The database's (or driver's) message.
    pub message: String,
    /// The SQL state (`null` when the database gives none, as SQLite).
    pub sql_state: String,
    /// The vendor error code (`0` when none).
    pub code: String,
}

impl DbError {
    fn new(message: impl Into<String>, sql_state: &str) -> Self {
        DbError {
            message: message.into(),
            sql_state: sql_state.to_owned(),
            code: "0".to_owned(),
        }
    }

    fn from_sqlx(e: sqlx::Error, target: &DbTarget) -> Self {
        match e {
            sqlx::Error::Database(db) => match target {
                DbTarget::Postgres { .. } => DbError {
                    message: db.message().to_owned(),
                    sql_state: db
                        .code()
                        .map_or_else(|| "null".to_owned(), |c| c.into_owned()),
                    code: "0".to_owned(),
                },
                // SQLite has no SQL states; the JDBC driver reports the result code.
                DbTarget::Sqlite { .. } => DbError {
                    message: db.message().to_owned(),
                    sql_state: "null".to_owned(),
                    code: db.code().map_or_else(|| "0".to_owned(), |c| c.into_owned()),
                },
            },
            sqlx::Error::PoolTimedOut => DbError::new(
                format!(
                    "no connection to {target} within {} s: the database is unreachable or \
                     every connection is busy",
                    ACQUIRE_TIMEOUT.as_secs()
                ),
                "08001",
            ),
            sqlx::Error::PoolClosed => DbError::new(
                "the connection pool was closed (the source was reconfigured or stopped)",
                "08003",
            ),
            sqlx::Error::Io(io) => {
                DbError::new(format!("I/O error talking to {target}: {io}"), "08006")
            }
            sqlx::Error::Tls(tls) => {
                DbError::new(format!("TLS error talking to {target}: {tls}"), "08006")
            }
            other => DbError::new(other.to_string(), "null"),
        }
    }

    fn gone(path: &Path) -> Self {
        DbError::new(
            format!(
                "the database file {} is gone (removed or replaced); the source reconnects \
                 when it is back",
                path.display()
            ),
            "08006",
        )
    }
}

/// A pool handle: cheap to clone, good for one or more operations.
#[derive(Clone)]
pub enum Pool {
    /// SQLite.
    Sqlite(SqlitePool, DbTarget),
    /// PostgreSQL.
    Postgres(PgPool, DbTarget),
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pool::Sqlite(_, t) | Pool::Postgres(_, t) => write!(f, "Pool({t})"),
        }
    }
}

impl Pool {
    fn target(&self) -> &DbTarget {
        match self {
            Pool::Sqlite(_, t) | Pool::Postgres(_, t) => t,
        }
    }

    fn err(&self, e: sqlx::Error) -> DbError {
        DbError::from_sqlx(e, self.target())
    }

    /// Runs a statement (or several separated by `;`) that returns no rows to the caller;
    /// gives the number of rows changed.
    ///
    /// (The operations return boxed futures: sqlx's executor bounds are higher-ranked, and a
    /// concrete future keeps callers' `tokio::spawn` from tripping over them.)
    pub fn execute<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<u64, DbError>> {
        async move {
            let r = match self {
                Pool::Sqlite(p, _) => sqlx::raw_sql(sql)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected()),
                Pool::Postgres(p, _) => sqlx::raw_sql(sql)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected()),
            };
            r.map_err(|e| self.err(e))
        }
        .boxed()
    }

    /// Runs statements as one batch, in one transaction: all or none. Fails when a statement
    /// failed (the batch is rolled back) or the database could not be reached.
    pub fn batch<'a>(&'a self, statements: &'a [String]) -> BoxFuture<'a, Result<(), DbError>> {
        match self {
            Pool::Sqlite(p, t) => async move {
                let mut tx = p.begin().await.map_err(|e| DbError::from_sqlx(e, t))?;
                for s in statements {
                    let conn: &mut sqlx::SqliteConnection = &mut tx;
                    run_on(conn, s)
                        .await
                        .map_err(|e| DbError::from_sqlx(e, t))?;
                }
                tx.commit().await.map_err(|e| DbError::from_sqlx(e, t))
            }
            .boxed(),
            Pool::Postgres(p, t) => async move {
                let mut tx = p.begin().await.map_err(|e| DbError::from_sqlx(e, t))?;
                for s in statements {
                    let conn: &mut sqlx::PgConnection = &mut tx;
                    run_on(conn, s)
                        .await
                        .map_err(|e| DbError::from_sqlx(e, t))?;
                }
                tx.commit().await.map_err(|e| DbError::from_sqlx(e, t))
            }
            .boxed(),
        }
    }

    /// The rows of a query, read from the database as the stream is polled.
    pub fn rows<'a>(&'a self, sql: &'a str) -> BoxStream<'a, Result<Row, DbError>> {
        let mut encoder = Encoder::new();
        match self {
            Pool::Sqlite(p, t) => sqlx::raw_sql(sql)
                .fetch(p)
                .map(move |r| match r {
                    Ok(row) => encoder
                        .sqlite(&row)
                        .map_err(|e| DbError::new(e.to_string(), "null")),
                    Err(e) => Err(DbError::from_sqlx(e, t)),
                })
                .boxed(),
            Pool::Postgres(p, t) => sqlx::raw_sql(sql)
                .fetch(p)
                .map(move |r| match r {
                    Ok(row) => encoder
                        .postgres(&row)
                        .map_err(|e| DbError::new(e.to_string(), "null")),
                    Err(e) => Err(DbError::from_sqlx(e, t)),
                })
                .boxed(),
        }
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        match self {
            Pool::Sqlite(p, _) => p.close().await,
            Pool::Postgres(p, _) => p.close().await,
        }
    }
}

/// One statement on a connection, as a boxed future (see [`Pool::execute`]).
fn run_on<'c, C>(conn: &'c mut C, sql: &'c str) -> BoxFuture<'c, Result<(), sqlx::Error>>
where
    for<'e> &'e mut C: sqlx::Executor<'e>,
    C: Send,
{
    async move { sqlx::raw_sql(sql).execute(conn).await.map(|_| ()) }.boxed()
}

/// A file's identity (device, inode): a file replaced under the same name is another file.
#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.len().min(1), 0))
}

struct Inner {
    pool: Option<Pool>,
    /// The SQLite file the current pool has open.
    file: Option<(u64, u64)>,
}

/// The database of one configured source.
pub struct Database {
    target: DbTarget,
    pool_size: u32,
    inner: Mutex<Inner>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.target)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Sets up the pool (connections open on first use). A missing SQLite file is created
    /// here, as the JDBC driver does.
    ///
    /// # Errors
    /// A SQLite file that cannot be created (its directory does not exist, no permission).
    pub fn open(target: DbTarget, pool_size: u32) -> Result<Self, DbError> {
        let mut file = None;
        if let DbTarget::Sqlite {
            file: Some(path),
            create,
            ..
        } = &target
        {
            if file_id(path).is_none() && *create {
                // A zero-length file is a valid, empty SQLite database.
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
                    .map_err(|e| {
                        DbError::new(
                            format!("cannot create the database file {}: {e}", path.display()),
                            "08001",
                        )
                    })?;
            }
            file = file_id(path);
        }
        let db = Database {
            target,
            pool_size: pool_size.max(1),
            inner: Mutex::new(Inner { pool: None, file }),
        };
        Ok(db)
    }

    /// What the database is (the URL without its password).
    #[must_use]
    pub fn target(&self) -> &DbTarget {
        &self.target
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The pool to run the next operation on, after checking that a SQLite file is still
    /// the one the pool has open.
    ///
    /// # Errors
    /// The SQLite file is gone.
    pub fn pool(&self) -> Result<Pool, DbError> {
        let mut inner = self.lock();
        if let DbTarget::Sqlite {
            file: Some(path), ..
        } = &self.target
        {
            let now = file_id(path);
            if now != inner.file {
                if let Some(old) = inner.pool.take() {
                    tracing::warn!(file = %path.display(), "the database file was removed or replaced: closing its connections");
                    tokio::spawn(async move { old.close().await });
                }
                inner.file = now;
            }
            if now.is_none() {
                return Err(DbError::gone(path));
            }
        }
        if let Some(pool) = &inner.pool {
            return Ok(pool.clone());
        }
        let pool = self.new_pool();
        inner.pool = Some(pool.clone());
        Ok(pool)
    }

    fn new_pool(&self) -> Pool {
        match &self.target {
            DbTarget::Sqlite { options, file, .. } => {
                let mut opts = SqlitePoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
                opts = if file.is_none() {
                    // In memory: one connection that lives as long as the pool.
                    opts.max_connections(1)
                        .min_connections(0)
                        .idle_timeout(None)
                        .max_lifetime(None)
                } else {
                    opts.max_connections(self.pool_size)
                };
                // A file was created by `open` if need be; one that vanished later is never
                // silently re-created empty.
                let options = options
                    .clone()
                    .create_if_missing(file.is_none())
                    .disable_statement_logging();
                Pool::Sqlite(opts.connect_lazy_with(options), self.target.clone())
            }
            DbTarget::Postgres { options, .. } => {
                let pool = PgPoolOptions::new()
                    .max_connections(self.pool_size)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .test_before_acquire(true)
                    .connect_lazy_with(
                        options
                            .clone()
                            .application_name("vantiq-sql-source")
                            .disable_statement_logging(),
                    );
                Pool::Postgres(pool, self.target.clone())
            }
        }
    }

    /// Checks that the database answers (used to log its state when a source is
    /// configured).
    ///
    /// # Errors
    /// It does not.
    pub async fn ping(&self) -> Result<(), DbError> {
        let pool = self.pool()?;
        pool.execute("SELECT 1").await.map(|_| ())
    }

    /// Closes the pool; operations still running finish first.
    pub async fn close(&self) {
        let pool = self.lock().pool.take();
        if let Some(pool) = pool {
            pool.close().await;
        }
    }

    /// The SQLite file, if the database is one.
    #[must_use]
    pub fn file(&self) -> Option<&PathBuf> {
        match &self.target {
            DbTarget::Sqlite { file, .. } => file.as_ref(),
            DbTarget::Postgres { .. } => None,
        }
    }
}
