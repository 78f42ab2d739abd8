//! How connection failures are logged, on a virtual clock: one line per failed attempt, and
//! a source the server refuses is an `ERROR` (at most once a minute while it lasts) and a
//! state of its own, in the source's handle and in health.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Logs, SOURCE};
use vantiq_connector::test_util::{SimRuntime, SimServer};
use vantiq_connector::{ConnectionState, Runtime as _};
use vantiq_proto::frame::ClientFrame;
use vantiq_proto::server::ServerOptions;

/// The `failures=N` field of a log line.
fn failures_field(line: &str) -> u64 {
    let rest = line
        .split("failures=")
        .nth(1)
        .unwrap_or_else(|| panic!("no failures= in {line}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_failed_connect_is_one_log_line() {
    let (logs, _guard) = Logs::capture(tracing::Level::INFO);
    let sim = SimRuntime::new();
    sim.refuse_connects(true);
    let set = common::set(&sim, "");
    let stop = set.shutdown_handle();
    let run = sim.spawn_task(set.run());
    sim.block_on({
        let sim = sim.clone();
        async move {
            sim.sleep(Duration::from_secs(5)).await;
            stop.shutdown();
            run.await.unwrap();
        }
    });
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ConnectionRefused") || l.contains("refused"))
        .collect();
    // Back-off of 100 to 400 ms for 5 s: many attempts, each one line, numbered 1, 2, 3, …
    assert!(lines.len() >= 10, "{text}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains("connection failure; reconnecting"), "{line}");
        assert!(line.contains("could not connect"), "{line}");
        assert!(line.contains("retry_in="), "{line}");
        assert_eq!(failures_field(line), i as u64 + 1, "{text}");
    }
}

/// The server machine, without the source defined: it answers `validate`, then refuses
/// `connectExtension` with 404 as Vantiq does for a source it does not know. Counts the
/// refusals.
async fn refuse_forever(sim: SimRuntime, refusals: Arc<AtomicU64>) {
    let mut options = ServerOptions::default();
    options.token = Some("T".into());
    let server = SimServer::new(&sim, options);
    loop {
        let mut peer = server.accept().await.unwrap();
        let mut asked = false;
        // The connector closes the socket after the refusal; read to its end.
        while let Some(frame) = peer.next_frame().await {
            if let ClientFrame::ConnectExtension { source, .. } = frame {
                assert_eq!(source, SOURCE);
                asked = true;
            }
        }
        if asked {
            refusals.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_refused_source_is_an_error_once_a_minute_and_a_state() {
    let (logs, _guard) = Logs::capture(tracing::Level::INFO);
    let sim = SimRuntime::new();
    let set = common::set(&sim, "");
    let source = set.source(SOURCE).unwrap();
    let health = set.health();
    let stop = set.shutdown_handle();
    let run = sim.spawn_task(set.run());
    let refusals = Arc::new(AtomicU64::new(0));
    let _server = sim.spawn_task(refuse_forever(sim.clone(), refusals.clone()));
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut state = source.state();
            while state != ConnectionState::Refused {
                state = source.wait_change(state).await;
            }
            // Visible where a person or a probe looks, while the back-off lasts.
            assert_eq!(state.as_str(), "refused by the server");
            assert_eq!(health.source_state(SOURCE), Some(ConnectionState::Refused));
            assert!(
                health
                    .report()
                    .readyz_json()
                    .contains(r#""s1":"refused by the server""#)
            );
            let start = sim.now();
            // 150 s: ERROR at the first refusal, then at about 60 s and 120 s.
            sim.sleep(Duration::from_secs(150)).await;
            assert!(sim.now() - start >= Duration::from_secs(150));
            stop.shutdown();
            run.await.unwrap();
        }
    });
    let text = logs.text();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 3, "{text}");
    for line in &errors {
        assert!(
            line.contains("the server refused source `s1` (connectExtension)")
                && line.contains("status 404")
                && line.contains("does not exist or is not an extension source"),
            "{line}"
        );
    }
    // Far more refusals than ERROR lines, and none of them an INFO line.
    assert!(refusals.load(Ordering::SeqCst) > 100, "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains("refused")),
        "{text}"
    );
}
