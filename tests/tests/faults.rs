//! The fault mix on both runtimes: a fixed amount of work (about 3 000 live notifications,
//! 400 queued offline, 350 publishes, 50–70 queries) through a proxy that cuts or stalls the
//! link 20 times at seeded random points. See `vantiq_e2e::faults` for what is checked; the
//! report is printed (`cargo test -p vantiq-e2e --test faults -- --nocapture`).
//! `VANTIQ_FAULT_SEED` replays another seed; `VANTIQ_FAULT_VERBOSE=1` prints each fault.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;

use serde_json::json;
use vantiq_connector::TransportOptions;
use vantiq_proto::Json;
use vantiq_proto::frame::ClientFrame;

use vantiq_e2e::faults::{Plan, run_mix};
use vantiq_e2e::{Smol, TestRuntime, Tokio};

/// The runs take turns: each measures the process's resident set.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn mix<R: TestRuntime>(name: &'static str, seed: u64) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let plan = Plan::ci(seed);
    eprintln!(
        "fault mix on {name}: seed {:#x} (set {} to replay another)",
        plan.seed,
        vantiq_e2e::faults::SEED_ENV
    );
    let mut report = None;
    vantiq_e2e::run::<R, _>(|| async { report = Some(run_mix::<R>(name, &plan).await) });
    let report = report.expect("the mix ran");
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert_eq!(report.faults(), 20);
    assert_eq!(report.survived, report.faults());
    assert_eq!(report.stalls_by_ping_deadline, report.stalls);
    assert_eq!(report.lost(), 0);
    // Stream A's numbers never written to a socket were in the WebSocket layer's write
    // buffer when the link was cut or found stalled (the SDK's own queue is resent, see
    // `vantiq-connector/tests/mem_transport.rs`): at most a buffer's worth per fault.
    let smallest = ClientFrame::Notification {
        source: "s1".into(),
        object: Json::from_serialize(&json!({ "a": 0 })).unwrap(),
    };
    let per_cut = TransportOptions::default().write_buffer_size as u64
        / (smallest.encode().len() as u64 + 6)
        + 2;
    assert!(
        report.a.unwritten <= report.faults() * per_cut,
        "{} notifications never written to a socket; at most {per_cut} per fault fit in the \
         write buffer:\n{report}",
        report.a.unwritten
    );
    assert_eq!(report.duplicated(), 0);
    assert_eq!(
        report.b.received, report.b.sent,
        "offline-queued notifications"
    );
    assert_eq!(report.queries.bad, 0);
    assert!(
        report.cuts > 0 && report.stalls > 0,
        "both kinds of fault ran"
    );
}

#[test]
fn fault_mix_on_tokio() {
    mix::<Tokio>("tokio", 0x5eed_0001);
}

#[test]
fn fault_mix_on_smol() {
    mix::<Smol>("smol", 0x5eed_0002);
}
