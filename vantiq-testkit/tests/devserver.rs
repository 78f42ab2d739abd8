//! The `vantiq-devserver` binary: command line, start-up, and serving both the WebSocket
//! endpoint and the control API on one port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::process::Command;

use common::{Client, DevServer, http};
use serde_json::json;
use vantiq_proto::frame::ServerFrame;

const BIN: &str = env!("CARGO_BIN_EXE_vantiq-devserver");

#[test]
fn help_prints_usage() {
    for flag in ["--help", "-h"] {
        let out = Command::new(BIN).arg(flag).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: vantiq-devserver [OPTIONS]"), "{text}");
        for option in [
            "--listen",
            "--token",
            "--source NAME[=CONFIG]",
            "--quiet",
            "/control/sources",
        ] {
            assert!(text.contains(option), "{option} missing from:\n{text}");
        }
    }
}

#[test]
fn bad_arguments_exit_with_2_and_say_why() {
    for (args, why) in [
        (&["--bogus"][..], "unknown argument `--bogus`"),
        (&["--source", "A={x"][..], "the configuration is not JSON"),
        (
            &["--listen", "nowhere"][..],
            "--listen: cannot resolve `nowhere`",
        ),
        (&["--token"][..], "--token needs a token"),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(err.contains("Usage:"), "{err}");
    }
}

#[tokio::test]
async fn serves_connectors_and_the_control_api_on_one_port() {
    let dev = DevServer::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--token",
        "T",
        "--source",
        r#"A={"x":1}"#,
        "--source",
        "B",
    ]);
    assert!(dev.url.starts_with("http://127.0.0.1:"), "{}", dev.url);
    let resp = http(dev.addr, "GET", "/control/sources", None).await;
    assert_eq!(resp.status, 200);
    let list = resp.json();
    assert_eq!(list[0]["name"], "A");
    assert_eq!(list[1]["name"], "B");
    assert_eq!(list[0]["connected"], false);

    let url = format!("ws://{}/api/v1/wsock/websocket", dev.addr);
    let mut c = Client::connect_to(dev.addr, &url).await;
    assert_eq!(c.validate("wrong").await.status.0, 401);
    assert_eq!(c.validate("T").await.status.0, 200);
    assert_eq!(c.attach("A", Some("A_1")).await, json!({"x": 1}));
    let resp = http(
        dev.addr,
        "POST",
        "/control/sources/A/publish",
        Some(r#"{"p":1}"#),
    )
    .await;
    assert_eq!(resp.status, 202);
    let (text, binary) = c.recv_text().await;
    assert!(binary, "binary frames by default");
    assert!(matches!(
        ServerFrame::decode(text.as_bytes()).unwrap(),
        ServerFrame::Publish { .. }
    ));
    c.notify("A", json!({"n": 1})).await;
    let resp = http(
        dev.addr,
        "GET",
        "/control/sources/A/notifications?after=0&waitMs=10000",
        None,
    )
    .await;
    assert_eq!(resp.json(), json!({"next": 1, "items": [{"n": 1}]}));
    let listed = http(dev.addr, "GET", "/control/sources/A", None)
        .await
        .json();
    assert_eq!(listed["reconnectSecret"], "A_1");

    // It printed the frames it saw, with the token redacted.
    let printed = dev.wait_output(r#"<- [conn 1] {"op":"notification""#);
    assert!(printed.contains("  source A: {\"x\":1}"), "{printed}");
    assert!(
        printed.contains(r#"<- [conn 1] {"op":"connectExtension""#),
        "{printed}"
    );
    assert!(
        printed.contains(r#"-> [conn 1] (binary) {"op":"publish""#),
        "{printed}"
    );
    assert!(printed.contains("<redacted>"), "{printed}");
    assert!(!printed.contains("\"T\""), "the token leaked: {printed}");
}

#[tokio::test]
async fn text_frames_and_quiet_options() {
    let dev = DevServer::spawn(&[
        "--listen=127.0.0.1:0",
        "--source=S",
        "--text-frames",
        "--quiet",
        "--no-acks",
    ]);
    let url = format!("ws://{}/api/v1/wsock/websocket", dev.addr);
    let mut c = Client::connect_to(dev.addr, &url).await;
    c.validate("any token works without --token").await;
    c.attach("S", None).await;
    c.notify("S", json!({"n": 1})).await;
    let resp = http(dev.addr, "POST", "/control/sources/S/publish", Some("{}")).await;
    assert_eq!(resp.status, 202);
    // No ack came before the publish, and it is a text frame.
    let (text, binary) = c.recv_text().await;
    assert!(!binary);
    assert!(text.starts_with(r#"{"op":"publish""#), "{text}");
    let out = dev.output().join("\n");
    assert!(!out.contains("[conn 1]"), "--quiet prints no frames: {out}");
}
