//! The echo connector on smol (contract: `vantiq_connector::test_util::echo`).
//!
//! Reads the `server.config` named by the first command-line argument, else the one named
//! by `VANTIQ_SERVER_CONFIG`, else `./serverConfig/server.config` (or `./server.config`),
//! serves every listed source, logs to stderr (`RUST_LOG` filters, default `info`), exits 0
//! on Ctrl-C or SIGTERM (sockets closed with code 1000, queued notifications flushed) and
//! non-zero, with the reason on stderr, on a fatal error.
//!
//! ```text
//! cargo run -p vantiq-connector-smol --example echo_smol -- serverConfig/devserver.config
//! ```

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector_smol::{ConnectorError, ConnectorSet, SECRET_SAFE_LOG_DIRECTIVE};

/// Logs to stderr: `RUST_LOG` filters (default `info`), and the token never reaches the log
/// whatever `RUST_LOG` says (see `SECRET_SAFE_LOG_DIRECTIVE`).
fn init_logging() {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Caps `tungstenite`, whose `trace` lines carry every frame (the token included).
    if let Ok(directive) = SECRET_SAFE_LOG_DIRECTIVE.parse() {
        filter = filter.add_directive(directive);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}

/// The echo connector for the `server.config` given as the first argument, or the default
/// one.
fn build() -> Result<ConnectorSet, ConnectorError> {
    let set = match std::env::args_os().nth(1) {
        Some(path) => ConnectorSet::from_config_file(path)?,
        None => ConnectorSet::from_default_config()?,
    };
    let echo = Echo::new(set.health(), set.sources());
    // One line: SIGINT/SIGTERM stop the set gracefully, and `run` then returns Ok.
    Ok(set.handler(echo).shutdown_on_signals())
}

fn main() -> ExitCode {
    init_logging();
    let set = match build() {
        Ok(set) => set,
        Err(e) => return Echo::exit_code("echo_smol", Err(e)),
    };
    Echo::exit_code("echo_smol", smol::block_on(set.run()))
}
