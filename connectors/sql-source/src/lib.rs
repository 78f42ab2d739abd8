//! `vantiq-sql-source`: a Vantiq extension source for SQL databases, a drop-in replacement
//! for Vantiq's Java JDBC source connector, built on `vantiq-connector-tokio`.
//!
//! The same source configuration, the same `SELECT … FROM SOURCE` and `PUBLISH … TO SOURCE`
//! messages, the same replies and error codes: a VAIL application moves from the Java
//! connector to this one without a change. SQLite (a file, no server) and PostgreSQL are the
//! databases; `dbURL` takes the JDBC forms (`jdbc:sqlite:/path`,
//! `jdbc:postgresql://host:5432/db`) and the usual Rust ones.
//!
//! It is also the template to copy for a connector of your own; each module is one concern:
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the source configuration and its validation |
//! | [`url`] | `dbURL` forms |
//! | [`request`] | what a query or publish asks for |
//! | [`db`] | the pool, statements, row streams, reconnection |
//! | [`rows`] | row encoding (JSON maps, Java's date formats) |
//! | [`executor`] | synchronous and asynchronous processing, the task queue |
//! | [`poller`] | `pollQuery` every `pollTime` |
//! | [`errors`] | the Java connector's message codes |
//! | [`handler`] | [`SqlSource`], the SDK `Handler` tying it together |
//!
//! # Running it
//!
//! ```no_run
//! # async fn run() -> Result<(), vantiq_connector_tokio::ConnectorError> {
//! use vantiq_connector_tokio::ConnectorSet;
//!
//! let set = vantiq_sql_source::attach(ConnectorSet::from_default_config()?);
//! set.shutdown_on_signals().run().await // Ok(()) after SIGINT or SIGTERM
//! # }
//! ```

pub mod config;
pub mod db;
pub mod errors;
pub mod executor;
pub mod handler;
pub mod poller;
pub mod request;
pub mod rows;
pub mod url;

pub use handler::SqlSource;
use vantiq_connector_tokio::ConnectorSet;

/// Gives every source of the set its own [`SqlSource`] handler.
#[must_use]
pub fn attach(mut set: ConnectorSet) -> ConnectorSet {
    let names: Vec<String> = set.config().sources().to_vec();
    for name in names {
        set = set.source_handler(name, SqlSource::new());
    }
    set
}
