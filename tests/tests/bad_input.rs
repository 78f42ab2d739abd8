//! Bad input from the server, on both runtimes: every class of malformed frame we could
//! think of is sent on a live session. Each must leave one clear log line naming what was
//! wrong, and the session must go on (same socket, no session end, publishes still
//! echoed). A frame over the connector's size limit must instead end the socket with a
//! logged error and a reconnect.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::{Arc, Mutex};

use serde_json::json;
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector::{
    ConnectionState, ConnectorSet, DisconnectReason, Handler, HandlerResult, Json, Query, Source,
};
use vantiq_e2e::{Kit, Smol, TestRuntime, Tokio, WAIT, logs, start};
use vantiq_testkit::RawFrame;

/// The echo handler, plus a log of session ends.
#[derive(Clone, Default)]
struct Watched {
    closes: Arc<Mutex<Vec<DisconnectReason>>>,
}

impl Handler for Watched {
    async fn on_connect(&self, source: &Source, config: Json) -> HandlerResult {
        Echo::without_health().on_connect(source, config).await
    }

    async fn on_publish(&self, source: &Source, message: Json) -> HandlerResult {
        Echo::without_health().on_publish(source, message).await
    }

    async fn on_query(&self, source: &Source, query: Query) -> HandlerResult {
        Echo::without_health().on_query(source, query).await
    }

    async fn on_close(&self, _source: &Source, reason: &DisconnectReason) -> HandlerResult {
        self.closes.lock().unwrap().push(reason.clone());
        Ok(())
    }
}

/// The connector's incoming size limit in these tests.
const LIMIT: usize = 64 * 1024;

const DROPPED: &str = "dropped a frame from the server";
const HANDLER: &str = "handler failed";

/// Every malformed frame: its class, the frame, the log message and the detail the log
/// line must carry.
fn cases(src: &str) -> Vec<(&'static str, RawFrame, &'static str, String)> {
    let t = |s: &str| RawFrame::Text(s.to_owned());
    let not_json = |detail: &str| format!("frame is not valid JSON: {detail}");
    let not_object = |kind: &str| format!("frame is JSON but not an object (found {kind})");
    let deep_array = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    vec![
        // Not JSON.
        (
            "text",
            t("this is not json"),
            DROPPED,
            not_json("expected ident"),
        ),
        ("word", t("hello"), DROPPED, not_json("expected value")),
        (
            "empty text frame",
            t(""),
            DROPPED,
            not_json("EOF while parsing"),
        ),
        (
            "truncated object",
            t(r#"{"op":"publish""#),
            DROPPED,
            not_json("EOF while parsing an object"),
        ),
        (
            "trailing garbage",
            t(r#"{"status":200} {"#),
            DROPPED,
            not_json("trailing characters"),
        ),
        (
            "single quotes",
            t("{'op':'publish'}"),
            DROPPED,
            not_json("key must be a string"),
        ),
        (
            "byte order mark",
            t("\u{feff}{\"status\":200}"),
            DROPPED,
            not_json("expected value"),
        ),
        (
            "NaN",
            t(r#"{"status":NaN}"#),
            DROPPED,
            not_json("expected value"),
        ),
        // JSON, but not an object.
        ("null", t("null"), DROPPED, not_object("null")),
        ("boolean", t("true"), DROPPED, not_object("a boolean")),
        ("number", t("42"), DROPPED, not_object("a number")),
        ("float", t("-1.5e300"), DROPPED, not_object("a number")),
        ("string", t(r#""publish""#), DROPPED, not_object("a string")),
        (
            "array",
            t(r#"[{"op":"publish"}]"#),
            DROPPED,
            not_object("an array"),
        ),
        // Wrong field types, missing fields.
        (
            "op a number",
            t(r#"{"op":17}"#),
            DROPPED,
            "frame field `op` is not a string".into(),
        ),
        (
            "op null",
            t(r#"{"op":null}"#),
            DROPPED,
            "frame field `op` is not a string".into(),
        ),
        (
            "status a string",
            t(r#"{"status":"teapot"}"#),
            DROPPED,
            "frame has neither `op` nor a numeric `status`".into(),
        ),
        (
            "empty object",
            t("{}"),
            DROPPED,
            "frame has neither `op` nor a numeric `status`".into(),
        ),
        (
            // Handed to the handler as null, as both Vantiq SDKs do; echoing it fails.
            "publish without object",
            t(&format!(r#"{{"op":"publish","resourceId":"{src}"}}"#)),
            HANDLER,
            "a notification must serialize to a JSON object".into(),
        ),
        (
            "query without reply address",
            t(&format!(
                r#"{{"op":"query","resourceId":"{src}","object":{{}}}}"#
            )),
            DROPPED,
            "`query` frame lacks `messageHeaders.REPLY_ADDR_HEADER`".into(),
        ),
        (
            "query reply address a number",
            t(&format!(
                r#"{{"op":"query","resourceId":"{src}","messageHeaders":{{"REPLY_ADDR_HEADER":5}},"object":{{}}}}"#
            )),
            DROPPED,
            "`query` frame lacks `messageHeaders.REPLY_ADDR_HEADER`".into(),
        ),
        (
            "configure without config",
            t(&format!(
                r#"{{"op":"configureExtension","resourceId":"{src}","object":{{}}}}"#
            )),
            DROPPED,
            "`configureExtension` frame lacks `object.config`".into(),
        ),
        (
            "publish of a string",
            t(&format!(
                r#"{{"op":"publish","resourceId":"{src}","object":"text"}}"#
            )),
            HANDLER,
            "a notification must serialize to a JSON object".into(),
        ),
        // Frames that make no sense here.
        (
            // Handled as this source's (neither Vantiq SDK checks), with a warning; the
            // string object then makes the echo fail, so nothing comes back.
            "publish for another source",
            t(r#"{"op":"publish","resourceId":"other","object":"x"}"#),
            "a frame for another source arrived",
            "resource_id=other".into(),
        ),
        (
            "configure while configured",
            t(&format!(
                r#"{{"op":"configureExtension","resourceId":"{src}","object":{{"config":{{}}}}}}"#
            )),
            DROPPED,
            "unexpected configureExtension frame while configured".into(),
        ),
        // Unknown operations.
        (
            "test-only op",
            t(r#"{"op":"testRequestsClientClose"}"#),
            DROPPED,
            "unknown op `testRequestsClientClose`".into(),
        ),
        (
            "unknown op",
            t(r#"{"op":"explode","object":{}}"#),
            DROPPED,
            "unknown op `explode`".into(),
        ),
        (
            "empty op",
            t(r#"{"op":""}"#),
            DROPPED,
            "unknown op ``".into(),
        ),
        // Binary garbage.
        (
            "binary garbage",
            RawFrame::Binary(vec![0xff, 0xfe, 0x00, 0x01, 0x80]),
            DROPPED,
            not_json("expected value"),
        ),
        (
            "empty binary frame",
            RawFrame::Binary(Vec::new()),
            DROPPED,
            not_json("EOF while parsing"),
        ),
        (
            "binary invalid UTF-8 in a string",
            RawFrame::Binary(b"{\"op\":\"\xff\xfe\"}".to_vec()),
            DROPPED,
            not_json("invalid unicode code point"),
        ),
        (
            "binary NUL bytes",
            RawFrame::Binary(vec![0; 64]),
            DROPPED,
            not_json("expected value"),
        ),
        // Deeply nested JSON.
        (
            "30 000 nested arrays",
            t(&deep_array),
            DROPPED,
            not_object("an array"),
        ),
        (
            "10 000 nested objects",
            t(&deep_object),
            DROPPED,
            "frame has neither `op` nor a numeric `status`".into(),
        ),
    ]
}

async fn bad_input<R: TestRuntime>(src: &'static str) {
    let logs = logs::capture();
    let kit = Kit::start(|b| b.token("T").source(src, json!({}))).await;
    let watched = Watched::default();
    let mut set = ConnectorSet::<R>::new(kit.config(&[src], "")).handler(watched.clone());
    set.transport_options().max_message_size = Some(LIMIT);
    set = set.connection_config(|c| {
        c.backoff.initial = std::time::Duration::from_millis(20);
        c.backoff.max = std::time::Duration::from_millis(100);
    });
    let source = set.source(src).unwrap();
    let running = start(set);
    let s = kit.source(src);
    s.wait_configured().await;
    assert_eq!(s.notifications(1).await.len(), 1);
    let ours = format!("name={src}");

    let mut echoes = 1;
    for (class, frame, message, detail) in cases(src) {
        let mark = logs.mark();
        s.send_raw(frame).await;
        let (line, _) = kit
            .within(
                WAIT,
                &format!("a log line for the {class} frame"),
                logs.wait_for(mark, |l| l.contains(&ours) && l.contains(message)),
            )
            .await;
        assert!(
            line.contains(&detail),
            "{class}: the log line lacks `{detail}`:\n{line}"
        );
        assert!(line.contains("WARN"), "{class}: not a warning:\n{line}");
        // The session goes on: a publish still comes back, on the same socket.
        s.publish(json!({ "after": class })).await;
        echoes += 1;
        let got = s.notifications(echoes).await;
        assert_eq!(got.last(), Some(&json!({ "after": class })), "{class}");
    }
    // Valid JSON nested 1 000 deep inside a publish is no error: it reaches the handler and
    // comes back unchanged.
    let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(1_000), "]".repeat(1_000));
    s.send_raw(RawFrame::Text(format!(
        r#"{{"op":"publish","resourceId":"{src}","object":{deep}}}"#
    )))
    .await;
    echoes += 1;
    // Nested deeper than serde_json builds a tree: compared as text, not as a value.
    s.notifications_json(echoes).await;
    let last = s.handle().notifications_snapshot().pop().unwrap();
    assert_eq!(last.as_str(), deep);
    assert_eq!(s.handle().connections(), 1, "the session went on");
    assert_eq!(kit.server().sockets_opened(), 1);
    assert!(watched.closes.lock().unwrap().is_empty());
    assert_eq!(source.state(), ConnectionState::Configured);

    // Over the size limit: the socket ends with a logged error, the connector reconnects.
    let mark = logs.mark();
    s.send_raw(RawFrame::Text("x".repeat(LIMIT + 1))).await;
    let (line, _) = kit
        .within(
            WAIT,
            "a log line for the oversize frame",
            logs.wait_for(mark, |l| l.contains(&ours) && l.contains("socket error")),
        )
        .await;
    assert!(
        line.contains(&format!("Message too long: {} > {LIMIT}", LIMIT + 1)),
        "{line}"
    );
    s.wait_connections(2).await;
    s.wait_configured().await;
    s.publish(json!({"after": "oversize"})).await;
    // The echo of the reconnect's configuration, then the publish's.
    let got = s.notifications_json(echoes + 2).await;
    assert_eq!(
        got.last().map(|j| j.to_value().unwrap()),
        Some(json!({"after": "oversize"}))
    );
    {
        let closes = watched.closes.lock().unwrap();
        assert_eq!(closes.len(), 1, "{closes:?}");
        match &closes[0] {
            DisconnectReason::Failure(f) => {
                assert!(f.to_string().contains("Message too long"), "{f}");
            }
            other => panic!("{other:?}"),
        }
    }
    running.stop(&kit).await.unwrap();
}

#[test]
fn bad_input_on_tokio() {
    logs::capture();
    vantiq_e2e::run::<Tokio, _>(|| bad_input::<Tokio>("bad_tokio"));
}

#[test]
fn bad_input_on_smol() {
    logs::capture();
    vantiq_e2e::run::<Smol, _>(|| bad_input::<Smol>("bad_smol"));
}
