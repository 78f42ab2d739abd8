//! The `vantiq-sql-source` binary.
//!
//! Reads `serverConfig/server.config` (or `./server.config`) from the working directory and
//! the token from `CONNECTOR_AUTH_TOKEN` (unless the file has `authToken`), serves every
//! source listed there, logs to stderr (`RUST_LOG` filters, default `info`), serves the
//! probes the configuration asks for, and exits 0 after a clean shutdown on SIGTERM or
//! SIGINT (close frames sent), non-zero with the reason on stderr on a fatal error.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use vantiq_connector_tokio::{ConnectorError, ConnectorSet};

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    match run().await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("vantiq-sql-source: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), ConnectorError> {
    let set = vantiq_sql_source::attach(ConnectorSet::from_default_config()?);
    let stop = set.shutdown_handle();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        stop.shutdown();
    });
    set.run().await
}
