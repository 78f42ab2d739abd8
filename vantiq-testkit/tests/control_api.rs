//! The JSON control API over plain HTTP, every endpoint and its error cases.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, End, WAIT, control_server, http, http_raw};
use serde_json::json;
use vantiq_proto::frame::ServerFrame;

#[tokio::test]
async fn lists_sources_and_one_source() {
    let server = control_server(&[("B", json!({})), ("A", json!({"x": 1}))]).await;
    let addr = server.addr();
    let resp = http(addr, "GET", "/control/sources", None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(
        resp.json(),
        json!([
            {"name": "A", "connected": false, "configured": false, "reconnectSecret": null,
             "connections": 0, "connectAttempts": 0, "notifications": 0},
            {"name": "B", "connected": false, "configured": false, "reconnectSecret": null,
             "connections": 0, "connectAttempts": 0, "notifications": 0},
        ])
    );

    let _c = Client::session(&server, "T", "A", "A_secret").await;
    let resp = http(addr, "GET", "/control/sources/A", None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json(),
        json!({"name": "A", "connected": true, "configured": true,
               "reconnectSecret": "A_secret", "connections": 1, "connectAttempts": 1,
               "notifications": 0})
    );
    // Trailing slashes and percent-encoded names work.
    let spaced = server.add_source("My Source", json!({}));
    let resp = http(addr, "GET", "/control/sources/My%20Source/", None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["name"], spaced.name());
}

#[tokio::test]
async fn unknown_sources_paths_and_methods_get_json_errors() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    for (method, path, status) in [
        ("GET", "/control/sources/Nope", 404),
        ("POST", "/control/sources/Nope/publish", 404),
        ("POST", "/control/sources/Nope/query", 404),
        ("GET", "/control/sources/Nope/notifications", 404),
        ("POST", "/control/sources/Nope/reconnect", 404),
        ("POST", "/control/sources/Nope/drop", 404),
        ("GET", "/control/sources/S/bogus", 404),
        ("GET", "/control/nothing", 404),
        ("GET", "/control", 404),
        ("POST", "/control/sources", 405),
        ("GET", "/control/sources/S/publish", 405),
        ("GET", "/control/sources/S/query", 405),
        ("POST", "/control/sources/S/notifications", 405),
        ("DELETE", "/control/sources/S", 405),
    ] {
        let resp = http(addr, method, path, Some("{}")).await;
        assert_eq!(resp.status, status, "{method} {path}");
        let body = resp.json();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {body}"
        );
    }
    let resp = http(addr, "GET", "/control/sources/Nope", None).await;
    assert!(resp.json()["error"].as_str().unwrap().contains("`Nope`"));
}

#[tokio::test]
async fn publish_needs_a_connector_and_a_json_body() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    let resp = http(
        addr,
        "POST",
        "/control/sources/S/publish",
        Some(r#"{"a":1}"#),
    )
    .await;
    assert_eq!(resp.status, 409);
    assert!(
        resp.json()["error"]
            .as_str()
            .unwrap()
            .contains("no live connection")
    );

    let mut c = Client::session(&server, "T", "S", "S_p").await;
    for (body, status) in [(Some("{not json"), 400), (None, 400), (Some("  "), 400)] {
        let resp = http(addr, "POST", "/control/sources/S/publish", body).await;
        assert_eq!(resp.status, status, "{body:?}");
        assert!(resp.json()["error"].is_string());
    }
    let resp = http(
        addr,
        "POST",
        "/control/sources/S/publish",
        Some(r#"{"a":1}"#),
    )
    .await;
    assert_eq!(resp.status, 202);
    assert_eq!(resp.json(), json!({"published": true}));
    match c.recv().await {
        ServerFrame::Publish { object, .. } => {
            assert_eq!(object.to_value().unwrap(), json!({"a": 1}))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn query_returns_rows_parts_and_status() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    let mut c = Client::session(&server, "T", "S", "S_q").await;
    let (resp, ()) = tokio::join!(
        http(
            addr,
            "POST",
            "/control/sources/S/query?timeoutMs=10000",
            Some(r#"{"bundle": 2}"#)
        ),
        async {
            let (a, params) = c.recv_query().await;
            assert_eq!(params, json!({"bundle": 2}));
            c.reply(&a, 100, Some(json!([{"i": 0}, {"i": 1}]))).await;
            c.reply(&a, 100, Some(json!([{"i": 2}, {"i": 3}]))).await;
            c.reply(&a, 200, Some(json!({"i": 4}))).await;
        }
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json(),
        json!({"status": 200, "rows": [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}, {"i": 4}], "parts": 3})
    );

    // No body: the WITH parameters are {}. An empty result is status 204.
    let (resp, ()) = tokio::join!(
        http(addr, "POST", "/control/sources/S/query", None),
        async {
            let (a, params) = c.recv_query().await;
            assert_eq!(params, json!({}));
            c.reply(&a, 204, None).await;
        }
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!({"status": 204, "rows": [], "parts": 1}));
}

#[tokio::test]
async fn a_query_error_reply_is_200_with_status_400_and_the_error() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    let mut c = Client::session(&server, "T", "S", "S_q").await;
    let (resp, ()) = tokio::join!(
        http(addr, "POST", "/control/sources/S/query", Some("{}")),
        async {
            let (a, _) = c.recv_query().await;
            c.reply(&a, 100, Some(json!({"i": 0}))).await;
            c.reply(
                &a,
                400,
                Some(
                    json!({"messageCode": "c.x", "messageTemplate": "no {0}", "parameters": ["t"]}),
                ),
            )
            .await;
        }
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json(),
        json!({
            "status": 400,
            "rows": [{"i": 0}],
            "parts": 2,
            "error": {"messageCode": "c.x", "messageTemplate": "no {0}", "parameters": ["t"]}
        })
    );
}

#[tokio::test]
async fn query_without_connector_409_without_reply_504_bad_parameters_400() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    let resp = http(addr, "POST", "/control/sources/S/query", Some("{}")).await;
    assert_eq!(resp.status, 409);
    assert!(
        resp.json()["error"]
            .as_str()
            .unwrap()
            .contains("no live connection")
    );

    let mut c = Client::session(&server, "T", "S", "S_q").await;
    let resp = http(
        addr,
        "POST",
        "/control/sources/S/query?timeoutMs=100",
        Some("{}"),
    )
    .await;
    assert_eq!(resp.status, 504);
    let error = resp.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("timed out after 100ms"), "{error}");
    assert!(error.contains("terminal reply to query"), "{error}");
    // The connector did get the query.
    let _ = c.recv_query().await;

    for path in [
        "/control/sources/S/query?timeoutMs=soon",
        "/control/sources/S/query?timeoutMs=-5",
    ] {
        let resp = http(addr, "POST", path, Some("{}")).await;
        assert_eq!(resp.status, 400, "{path}");
        assert!(resp.json()["error"].as_str().unwrap().contains("timeoutMs"));
    }
    let resp = http(addr, "POST", "/control/sources/S/query", Some("[1,")).await;
    assert_eq!(resp.status, 400);
}

#[tokio::test]
async fn notifications_page_by_index() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    let src = server.source("S").unwrap();
    let resp = http(addr, "GET", "/control/sources/S/notifications", None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!({"next": 0, "items": []}));

    let mut c = Client::session(&server, "T", "S", "S_n").await;
    for i in 0..3 {
        c.notify("S", json!({"i": i})).await;
    }
    src.wait_notifications(3, WAIT).await.unwrap();
    let resp = http(
        addr,
        "GET",
        "/control/sources/S/notifications?after=0",
        None,
    )
    .await;
    assert_eq!(
        resp.json(),
        json!({"next": 3, "items": [{"i": 0}, {"i": 1}, {"i": 2}]})
    );
    let resp = http(
        addr,
        "GET",
        "/control/sources/S/notifications?after=2",
        None,
    )
    .await;
    assert_eq!(resp.json(), json!({"next": 3, "items": [{"i": 2}]}));
    let resp = http(
        addr,
        "GET",
        "/control/sources/S/notifications?after=3",
        None,
    )
    .await;
    assert_eq!(resp.json(), json!({"next": 3, "items": []}));
    // Past the end: nothing, and where the end is (at once, even with waitMs).
    let resp = http(
        addr,
        "GET",
        "/control/sources/S/notifications?after=10&waitMs=60000",
        None,
    )
    .await;
    assert_eq!(resp.json(), json!({"next": 3, "items": []}));
    let resp = http(
        addr,
        "GET",
        "/control/sources/S/notifications?after=x",
        None,
    )
    .await;
    assert_eq!(resp.status, 400);
    let resp = http(
        addr,
        "GET",
        "/control/sources/S/notifications?waitMs=1.5",
        None,
    )
    .await;
    assert_eq!(resp.status, 400);
}

#[tokio::test]
async fn a_notification_with_no_tree_form_is_a_502_naming_it() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_n").await;
    // Valid JSON, but nested deeper than serde_json builds a tree (128 levels).
    let deep = format!("{{\"d\":{}{}}}", "[".repeat(200), "]".repeat(200));
    c.send_text(&format!(
        r#"{{"op":"notification","resourceName":"sources","resourceId":"S","object":{deep}}}"#
    ))
    .await;
    src.wait_notifications(1, WAIT).await.unwrap();
    let resp = http(
        addr,
        "GET",
        "/control/sources/S/notifications?after=0",
        None,
    )
    .await;
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.json(),
        json!({"error": "a notification: JSON text of 406 bytes has no serde_json::Value form: \
            recursion limit exceeded at line 1 column 132"})
    );
}

#[tokio::test]
async fn the_notification_long_poll_returns_as_soon_as_there_is_something() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    let mut c = Client::session(&server, "T", "S", "S_n").await;

    // With nothing new, the poll waits its waitMs out and returns empty.
    let started = Instant::now();
    let resp = http(
        addr,
        "GET",
        "/control/sources/S/notifications?after=0&waitMs=200",
        None,
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(resp.json(), json!({"next": 0, "items": []}));

    // A long poll of 60 s is still waiting after 300 ms…
    let poll = tokio::spawn(http(
        addr,
        "GET",
        "/control/sources/S/notifications?after=0&waitMs=60000",
        None,
    ));
    let mut poll = std::pin::pin!(poll);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut poll)
            .await
            .is_err(),
        "the long poll returned without a notification"
    );
    // …and returns as soon as a notification arrives.
    let sent = Instant::now();
    c.notify("S", json!({"hello": 1})).await;
    let resp = tokio::time::timeout(WAIT, poll).await.unwrap().unwrap();
    assert!(sent.elapsed() < WAIT);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!({"next": 1, "items": [{"hello": 1}]}));
}

#[tokio::test]
async fn reconnect_sends_reconnect_required_with_an_optional_new_config() {
    let server = control_server(&[("S", json!({"v": 1}))]).await;
    let addr = server.addr();
    let src = server.source("S").unwrap();
    let resp = http(
        addr,
        "POST",
        "/control/sources/S/reconnect",
        Some(r#"{"v":9}"#),
    )
    .await;
    assert_eq!(resp.status, 409, "no connector");
    assert_eq!(
        src.config().to_value().unwrap(),
        json!({"v": 9}),
        "config stored anyway"
    );

    let mut c = Client::session(&server, "T", "S", "S_r").await;
    let resp = http(
        addr,
        "POST",
        "/control/sources/S/reconnect",
        Some(r#"{"v":2}"#),
    )
    .await;
    assert_eq!(resp.status, 202);
    assert_eq!(resp.json(), json!({"sent": "reconnectRequired"}));
    assert!(matches!(
        c.recv().await,
        ServerFrame::ReconnectRequired { .. }
    ));
    assert_eq!(c.attach("S", Some("S_r")).await, json!({"v": 2}));

    // Without a body the configuration stays.
    let resp = http(addr, "POST", "/control/sources/S/reconnect", None).await;
    assert_eq!(resp.status, 202);
    assert!(matches!(
        c.recv().await,
        ServerFrame::ReconnectRequired { .. }
    ));
    assert_eq!(c.attach("S", Some("S_r")).await, json!({"v": 2}));

    let resp = http(addr, "POST", "/control/sources/S/reconnect", Some("{oops")).await;
    assert_eq!(resp.status, 400);
    let info = http(addr, "GET", "/control/sources/S", None).await.json();
    assert_eq!(info["connections"], 3);
}

#[tokio::test]
async fn drop_ends_the_connection_abruptly() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    let mut c = Client::session(&server, "T", "S", "S_d").await;
    let resp = http(addr, "POST", "/control/sources/S/drop", None).await;
    assert_eq!(resp.status, 202);
    assert_eq!(resp.json(), json!({"dropped": true}));
    assert_eq!(c.expect_end().await, End::Abrupt);
    let resp = http(addr, "POST", "/control/sources/S/drop", None).await;
    assert_eq!(resp.status, 409);
    let info = http(addr, "GET", "/control/sources/S", None).await.json();
    assert_eq!(info["connected"], false);
}

#[tokio::test]
async fn refuse_makes_the_next_connects_fail() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    let resp = http(addr, "POST", "/control/sources/S/refuse?count=1", None).await;
    assert_eq!(resp.status, 202);
    assert_eq!(resp.json(), json!({"refusing": 1}));
    let mut c = Client::connect(&server).await;
    c.validate("T").await;
    assert!(matches!(
        c.connect_extension("S", None).await,
        ServerFrame::Status(s) if s.status.0 == 400
    ));
    c.attach("S", None).await;
    let resp = http(addr, "POST", "/control/sources/S/refuse?count=many", None).await;
    assert_eq!(resp.status, 400);
}

#[tokio::test]
async fn http_details_expect_continue_chunked_and_garbage() {
    let server = control_server(&[("S", json!({}))]).await;
    let addr = server.addr();
    let mut c = Client::session(&server, "T", "S", "S_h").await;

    // curl sends `Expect: 100-continue` for larger bodies and waits for the 100.
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    let request = format!(
        "POST /control/sources/S/publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut cont = [0u8; 25];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut cont))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    tcp.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.unwrap();
    assert_eq!(common::parse_response(&rest).status, 202);
    assert!(matches!(c.recv().await, ServerFrame::Publish { .. }));

    let chunked = b"POST /control/sources/S/publish HTTP/1.1\r\nHost: localhost\r\n\
        Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    assert_eq!(http_raw(addr, chunked).await.status, 411);

    let garbage = b"\x16\x03\x01 this is not HTTP\r\n\r\n";
    let resp = http_raw(addr, garbage).await;
    assert_eq!(resp.status, 400);

    let bad_length =
        b"POST /control/sources/S/publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: lots\r\n\r\n";
    assert_eq!(http_raw(addr, bad_length).await.status, 400);
    let huge = b"POST /control/sources/S/publish HTTP/1.1\r\nHost: localhost\r\n\
        Content-Length: 999999999999\r\n\r\n";
    assert_eq!(http_raw(addr, huge).await.status, 413);
}
