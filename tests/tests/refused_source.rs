//! A source the server does not know, against the test server: an `ERROR` a person notices
//! (once, not once per attempt) and a state the source's handle and health show, on both
//! runtimes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use serde_json::json;
use vantiq_connector::{ConnectionState, ConnectorSet};
use vantiq_e2e::{Kit, Smol, TestRuntime, Tokio, WAIT, logs, run, start};

async fn unknown_source<R: TestRuntime>(name: &'static str) {
    let logs = logs::capture();
    // The server knows `known`, not `name`.
    let kit = Kit::start(|b| b.token("T").source("known", json!({}))).await;
    let set =
        ConnectorSet::<R>::new(kit.config(&[name], "autoHealth=true")).connection_config(|c| {
            c.backoff.initial = Duration::from_millis(20);
            c.backoff.max = Duration::from_millis(40);
        });
    let source = set.source(name).unwrap();
    let health = set.health();
    let running = start(set);
    // Many attempts, each refused: the state `refused` seen five times over, then in the
    // source's handle and in health at once (the state flips to `connecting` at the next
    // attempt: look again if it did in between).
    let mut state = source.state();
    let readyz = kit
        .within(WAIT, "five refusals, then the state in health", async {
            let mut seen = 0;
            loop {
                while state != ConnectionState::Refused {
                    state = source.wait_change(state).await;
                }
                seen += 1;
                let report = health.report();
                let refused = report
                    .sources
                    .iter()
                    .any(|(n, s)| n == name && *s == ConnectionState::Refused);
                if seen >= 5 && refused {
                    break report.readyz_json();
                }
                state = source.wait_change(state).await;
            }
        })
        .await;
    assert!(
        readyz.contains(&format!(r#""{name}":"refused by the server""#)),
        "{readyz}"
    );
    assert_eq!(health.is_healthy(), None);
    running.stop(&kit).await.unwrap();

    let ours = format!("name={name}");
    let lines: Vec<String> = logs
        .since(0)
        .into_iter()
        .filter(|l| l.contains(&ours))
        .collect();
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{lines:#?}");
    assert!(
        errors[0].contains(&format!(
            "the server refused source `{name}` (connectExtension)"
        )) && errors[0].contains("status 404"),
        "{}",
        errors[0]
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("INFO") && l.contains("refused")),
        "{lines:#?}"
    );
}

#[test]
fn tokio_a_source_the_server_does_not_know_is_an_error_and_a_state() {
    run::<Tokio, _>(|| unknown_source::<Tokio>("ghost_tokio"));
}

#[test]
fn smol_a_source_the_server_does_not_know_is_an_error_and_a_state() {
    run::<Smol, _>(|| unknown_source::<Smol>("ghost_smol"));
}
