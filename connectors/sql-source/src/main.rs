//! The `vantiq-sql-source` binary.
//!
//! Reads the `server.config` named by `VANTIQ_SERVER_CONFIG`, else `serverConfig/server.config`
//! (or `./server.config`) from the working directory, and
//! the token from `CONNECTOR_AUTH_TOKEN` (unless the file has `authToken`), serves every
//! source listed there, logs to stderr (`RUST_LOG` filters, default `info`), serves the
//! probes the configuration asks for, and exits 0 after a clean shutdown on SIGTERM or
//! SIGINT (close frames sent), non-zero with the reason on stderr on a fatal error.

use std::process::ExitCode;

use vantiq_connector_tokio::{ConnectorError, ConnectorSet, SECRET_SAFE_LOG_DIRECTIVE};

#[tokio::main]
async fn main() -> ExitCode {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    // Caps `tungstenite`, whose `trace` lines carry every frame (the token included).
    if let Ok(directive) = SECRET_SAFE_LOG_DIRECTIVE.parse() {
        filter = filter.add_directive(directive);
    }
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
    set.shutdown_on_signals().run().await
}
