//! The echo connector on smol (contract: `vantiq_connector::test_util::echo`).
//!
//! Reads `./serverConfig/server.config` (or `./server.config`) from the working directory,
//! serves every listed source, logs to stderr (`RUST_LOG` filters), exits 0 on Ctrl-C or
//! SIGTERM and non-zero, with the reason on stderr, on a fatal error.
//!
//! ```text
//! cargo run -p vantiq-connector-smol --example echo_smol
//! ```

use std::process::ExitCode;

use vantiq_connector::test_util::echo::Echo;
use vantiq_connector_smol::Smol;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env();
    let filter = filter.unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let set = match Echo::default_set::<Smol>() {
        Ok(set) => set,
        Err(e) => return Echo::exit_code("echo_smol", Err(e)),
    };
    let stop = set.shutdown_handle();
    // ctrlc's `termination` feature covers SIGTERM as well as Ctrl-C.
    if let Err(e) = ctrlc::set_handler(move || stop.shutdown()) {
        eprintln!("echo_smol: cannot watch Ctrl-C/SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    Echo::exit_code("echo_smol", smol::block_on(set.run()))
}
