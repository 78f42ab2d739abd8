//! `ConnectorSet::shutdown_on_signals` when the process already has a signal handler: `run`
//! refuses to start and says why. (A test binary of its own: the handler it installs lasts
//! as long as the process.)

#![allow(clippy::unwrap_used, clippy::panic)]

use vantiq_connector::test_util::SimRuntime;
use vantiq_connector::{ConnectorError, ConnectorSet, ServerConfig};

fn config() -> ServerConfig {
    ServerConfig::parse(
        "targetServer=https://v\nauthToken=t\nsources=s\n",
        "test/server.config",
        |_| None,
    )
    .unwrap()
}

#[test]
fn a_second_signal_handler_in_the_process_is_reported_by_run() {
    let sim = SimRuntime::new();
    // The first set installs the process's handler.
    let _first = ConnectorSet::with_runtime(sim.clone(), config()).shutdown_on_signals();
    let second = ConnectorSet::with_runtime(sim.clone(), config()).shutdown_on_signals();
    let err = sim.block_on(second.run()).unwrap_err();
    assert!(matches!(err, ConnectorError::Signals(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(
            "could not install the SIGINT/SIGTERM handler of ConnectorSet::shutdown_on_signals: "
        ) && text.contains("one handler per process"),
        "{text}"
    );
}
