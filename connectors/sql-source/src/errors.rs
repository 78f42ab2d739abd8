//! The query errors VAIL code sees, with the Java connector's `messageCode`s.
//!
//! | `messageCode` | when |
//! |---|---|
//! | [`SQL_EXCEPTION`] | the database refused the statement, or could not be reached |
//! | [`QUERY_NOT_STRING`] | `query` is neither a string nor a list |
//! | [`INVALID_BATCH_ELEMENT`] | a batch holds a `SELECT` or something that is not a string |
//! | [`INVALID_QUERY_REQUEST`] | the query's parameters are not an object |
//! | [`QUEUED_TASKS_FULL`] | asynchronous processing: every task and queue slot is taken |
//! | [`CLOSED`] | the source has no usable configuration (the reason is the parameter) |
//!
//! Each query gets exactly one error reply.

use vantiq_connector_tokio::QueryError;

use crate::db::DbError;

/// A failure of the database (statement refused, connection lost).
pub const SQL_EXCEPTION: &str = "io.vantiq.extsrc.jdbcSource.exception.VantiqSQLException";
/// `query` is neither a string nor a list of strings.
pub const QUERY_NOT_STRING: &str = "io.vantiq.extsrc.jdbcSource.JDBCCore.queryNotString";
/// A batch element is a `SELECT` or not a string.
pub const INVALID_BATCH_ELEMENT: &str = "io.vantiq.extsrc.jdbcSource.JDBCCore.invalidBatchElement";
/// The query's parameters are not an object.
pub const INVALID_QUERY_REQUEST: &str =
    "io.vantiq.extsrc.JDBCHandleConfiguration.invalidQueryRequest";
/// The asynchronous task queue is full.
pub const QUEUED_TASKS_FULL: &str =
    "io.vantiq.extsrc.JDBCHandleConfiguration.queryHandler.queuedTasksFull";
/// The source has no usable database configuration.
pub const CLOSED: &str = "io.vantiq.extsrc.jdbcSource.JDBCCore.closed";

/// The Java class name the SQL error's message names.
const JDBC_CLASS: &str = "io.vantiq.extsrc.jdbcSource.JDBC";

/// The error for a failed statement: the Java connector's template, carrying the database's
/// message, SQL state and error code, and the statement.
#[must_use]
pub fn sql_error(error: &DbError, request: &str) -> QueryError {
    let reason = format!(
        "{JDBC_CLASS}: A database error occurred: {} SQL State: {}, Error Code: {}",
        error.message, error.sql_state, error.code
    );
    QueryError::new(
        SQL_EXCEPTION,
        format!(
            "Failed to execute query for reason: {reason}. Exception was: {SQL_EXCEPTION}. \
             Request was: {request}"
        ),
        Vec::<serde_json::Value>::new(),
    )
}

/// `query` is neither a string nor a list.
#[must_use]
pub fn query_not_string() -> QueryError {
    QueryError::new(
        QUERY_NOT_STRING,
        "The Query Request could not be executed because the query property is not a string.",
        Vec::<serde_json::Value>::new(),
    )
}

/// A batch element is a `SELECT` or not a string.
#[must_use]
pub fn invalid_batch_element() -> QueryError {
    QueryError::new(
        INVALID_BATCH_ELEMENT,
        "The Query Request could not be executed because at least one batch element was not a \
         string representation of a SQL Update Statement.",
        Vec::<serde_json::Value>::new(),
    )
}

/// The query's parameters are not an object.
#[must_use]
pub fn invalid_query_request() -> QueryError {
    QueryError::new(
        INVALID_QUERY_REQUEST,
        "Request must be a map",
        Vec::<serde_json::Value>::new(),
    )
}

/// The asynchronous task queue is full.
#[must_use]
pub fn queued_tasks_full() -> QueryError {
    QueryError::new(
        QUEUED_TASKS_FULL,
        "The queue of tasks has filled, and as a result the request was unable to be processed.",
        Vec::<serde_json::Value>::new(),
    )
}

/// The source has no usable configuration; `why` says what is wrong.
#[must_use]
pub fn closed(why: &str) -> QueryError {
    QueryError::new(
        CLOSED,
        "JDBC connection closed before operation could complete. {0}",
        [why],
    )
}
