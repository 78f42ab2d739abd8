//! The echo connector on tokio (contract: `vantiq_connector::test_util::echo`).
//!
//! Reads `./serverConfig/server.config` (or `./server.config`) from the working directory,
//! serves every listed source, logs to stderr (`RUST_LOG` filters), exits 0 on Ctrl-C or
//! SIGTERM and non-zero, with the reason on stderr, on a fatal error.
//!
//! ```text
//! cargo run -p vantiq-connector-tokio --example echo_tokio
//! ```

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector_tokio::Tokio;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env();
    let filter = filter.unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let set = match Echo::default_set::<Tokio>() {
        Ok(set) => set,
        Err(e) => return Echo::exit_code("echo_tokio", Err(e)),
    };
    let stop = set.shutdown_handle();
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => return Echo::exit_code("echo_tokio", Err(e.into())),
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.shutdown();
    });
    Echo::exit_code("echo_tokio", set.run().await)
}
