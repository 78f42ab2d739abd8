//! The echo connector as a process, for tests that need one (environment, signals, exit
//! codes): `e2e-echo tokio|smol`, run in a directory holding `serverConfig/server.config`.
//! Exits 0 after SIGTERM or Ctrl-C, 1 with the reason on stderr after a fatal error, 2 on a
//! configuration error.

use std::process::ExitCode;

use vantiq_connector::test_util::echo::Echo;
use vantiq_connector::{ConnectorError, ConnectorSet, Runtime};

fn build<R: Runtime + Default>() -> Result<ConnectorSet<R>, ConnectorError> {
    let set = ConnectorSet::<R>::from_default_config()?;
    let echo = Echo::new(set.health(), set.sources());
    Ok(set.handler(echo))
}

fn finish(result: Result<(), ConnectorError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let runtime = std::env::args().nth(1).unwrap_or_default();
    match runtime.as_str() {
        "tokio" => {
            let set = match build::<vantiq_connector_tokio::Tokio>() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("e2e-echo: {e}");
                    return ExitCode::from(2);
                }
            };
            let stop = set.shutdown_handle();
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("e2e-echo: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                tokio::spawn(async move {
                    let Ok(mut term) =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    else {
                        return;
                    };
                    term.recv().await;
                    stop.shutdown();
                });
                finish(set.run().await)
            })
        }
        "smol" => {
            let set = match build::<vantiq_connector_smol::Smol>() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("e2e-echo: {e}");
                    return ExitCode::from(2);
                }
            };
            let stop = set.shutdown_handle();
            let signals = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        if let Ok(mut term) = tokio::signal::unix::signal(
                            tokio::signal::unix::SignalKind::terminate(),
                        ) {
                            term.recv().await;
                        }
                    });
                }
                stop.shutdown();
            });
            let code = finish(smol::block_on(set.run()));
            drop(signals);
            code
        }
        other => {
            eprintln!("usage: e2e-echo tokio|smol (got `{other}`)");
            ExitCode::from(2)
        }
    }
}
