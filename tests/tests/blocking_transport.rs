//! The custom-transport example (`vantiq-proto/examples/blocking.rs`: blocking tungstenite,
//! std threads, no async runtime) against the embedded server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../../vantiq-proto/examples/blocking.rs"]
mod blocking;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;

use serde_json::json;
use vantiq_e2e::{Kit, Smol, run};
use vantiq_proto::Json;

#[test]
fn blocking_connector_runs_a_whole_session_and_reconnects() {
    run::<Smol, _>(|| async {
        let kit = Kit::start(|b| b.token("T").source("B", json!({"hello": "world"}))).await;
        let (note_tx, note_rx) = channel();
        let (report_tx, report_rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let url = kit.url();
        let stop2 = stop.clone();
        let (done_tx, done_rx) = async_channel::bounded(1);
        std::thread::spawn(move || {
            let r = blocking::run_connector(&url, "T", "B", note_rx, report_tx, stop2);
            let _ = done_tx.send_blocking(r);
        });
        let b = kit.source("B");
        assert_eq!(
            b.wait_configured().await.to_value().unwrap(),
            json!({"hello": "world"})
        );
        assert_eq!(
            b.notifications(1).await,
            [json!({"connected": true, "config": {"hello": "world"}})]
        );
        b.publish(json!({"ping": 1})).await;
        assert_eq!(b.notifications(2).await[1], json!({"ping": 1}));
        let r = b.query(json!({"q": 1})).await;
        assert_eq!(r.rows, [json!({"echo": {"q": 1}})]);
        // A notification from another thread.
        note_tx.send(Json::from(json!({"tick": 0}))).unwrap();
        assert_eq!(b.notifications(3).await[2], json!({"tick": 0}));
        // Dropped: it reconnects with the same secret and goes on.
        b.drop_connection().await;
        b.wait_connections(2).await;
        b.publish(json!({"ping": 2})).await;
        let got = b.notifications(5).await;
        assert_eq!(
            got[3],
            json!({"connected": true, "config": {"hello": "world"}})
        );
        assert_eq!(got[4], json!({"ping": 2}));
        let log = b.handle().connect_log();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].reconnect_secret, log[1].reconnect_secret);
        // Stop: a graceful close.
        stop.store(true, Ordering::Relaxed);
        kit.within(
            vantiq_e2e::WAIT,
            "the blocking connector returning",
            done_rx.recv(),
        )
        .await
        .unwrap()
        .unwrap();
        b.wait_disconnected().await;
        assert_eq!(
            b.handle().close_frames(),
            [(Some(1000), "Closed by client".to_owned())]
        );
        let reports: Vec<blocking::Report> = report_rx.try_iter().collect();
        assert_eq!(
            reports,
            [
                blocking::Report::Configured(Json::from(json!({"hello": "world"}))),
                blocking::Report::Echoed(Json::from(json!({"ping": 1}))),
                blocking::Report::Answered(Json::from(json!({"q": 1}))),
                blocking::Report::Disconnected,
                blocking::Report::Configured(Json::from(json!({"hello": "world"}))),
                blocking::Report::Echoed(Json::from(json!({"ping": 2}))),
                blocking::Report::Disconnected,
                blocking::Report::Closed(None),
            ]
        );
    });
}
