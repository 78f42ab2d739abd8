//! The devserver standing in for Vantiq, driven as Vantiq's own tests and client SDKs drive
//! a server: the REST routes for sources, frames sent to a connector, clean closes with a
//! chosen code, a server restart, SIGTERM, and a control API that a web page cannot drive.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use async_tungstenite::tungstenite::Message;
use common::{Client, DevServer, WAIT, http, http_with};
use serde_json::{Value, json};
use vantiq_proto::frame::ServerFrame;
use vantiq_testkit::TestServer;

const TOKEN: &str = "dev-token";

fn devserver(extra: &[&str]) -> DevServer {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--source",
        "S={\"k\":1}",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    DevServer::spawn(&args)
}

const BEARER: (&str, &str) = ("Authorization", "Bearer dev-token");

#[tokio::test]
async fn rest_publish_and_query_answer_as_vantiq_does() {
    let dev = devserver(&[]);
    let addr = dev.addr;
    let mut c = Client::session_at(addr, TOKEN, "S", "S_rest").await;
    let path = "/api/v1/resources/sources/S";

    // Publish: 200 and the connector gets the object.
    let r = http_with(addr, "POST", path, &[BEARER], Some(r#"{"x":1}"#)).await;
    assert_eq!((r.status, r.json()), (200, json!({})));
    match c.recv().await {
        ServerFrame::Publish { object, .. } => {
            assert_eq!(object.to_value().unwrap(), json!({"x": 1}))
        }
        other => panic!("{other:?}"),
    }

    // Query: the body is the WITH parameters; the answer is every reply's rows.
    let query = format!("{path}/query");
    let (resp, ()) = tokio::join!(
        http_with(addr, "POST", &query, &[BEARER], Some(r#"{"q":2}"#)),
        async {
            let (addr, params) = c.recv_query().await;
            assert_eq!(params, json!({"q": 2}));
            c.reply(&addr, 100, Some(json!([{"i": 0}, {"i": 1}]))).await;
            c.reply(&addr, 200, Some(json!({"i": 2}))).await;
        }
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!([{"i": 0}, {"i": 1}, {"i": 2}]));

    // An empty result.
    let (resp, ()) = tokio::join!(http_with(addr, "POST", &query, &[BEARER], None), async {
        let (addr, params) = c.recv_query().await;
        assert_eq!(params, json!({}));
        c.reply(&addr, 204, None).await;
    });
    assert_eq!((resp.status, resp.json()), (200, json!([])));

    // The connector's query error becomes a Vantiq error list with status 400.
    let (resp, ()) = tokio::join!(http_with(addr, "POST", &query, &[BEARER], None), async {
        let (addr, _) = c.recv_query().await;
        let err =
            json!({"messageCode": "app.bad", "messageTemplate": "bad {0}", "parameters": ["p"]});
        c.reply(&addr, 400, Some(err)).await;
    });
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json(),
        json!([{"code": "app.bad", "message": "bad {0}", "params": ["p"]}])
    );
}

#[tokio::test]
async fn rest_routes_need_the_bearer_token_and_a_known_connected_source() {
    let dev = devserver(&["--source", "Idle"]);
    let addr = dev.addr;
    let code = |r: &common::HttpResponse| r.json()[0]["code"].as_str().unwrap().to_owned();
    let path = "/api/v1/resources/sources/S";
    for headers in [&[][..], &[("Authorization", "Bearer wrong")][..]] {
        let r = http_with(addr, "POST", path, headers, Some("{}")).await;
        assert_eq!(r.status, 401);
        assert_eq!(code(&r), "io.vantiq.authentication.failed");
    }
    let r = http_with(
        addr,
        "POST",
        "/api/v1/resources/sources/Nope",
        &[BEARER],
        Some("{}"),
    )
    .await;
    assert_eq!(
        (r.status, code(&r)),
        (404, "io.vantiq.resource.not.found".to_owned())
    );
    let r = http_with(
        addr,
        "POST",
        "/api/v1/resources/sources/Idle/query",
        &[BEARER],
        None,
    )
    .await;
    assert_eq!(
        (r.status, code(&r)),
        (400, "io.vantiq.source.not.connected".to_owned())
    );
    assert_eq!(r.json()[0]["params"], json!(["Idle"]));
    let r = http_with(addr, "POST", path, &[BEARER], Some("not json")).await;
    assert_eq!(
        (r.status, code(&r)),
        (400, "io.vantiq.request.invalid".to_owned())
    );
    let r = http_with(addr, "GET", path, &[BEARER], None).await;
    assert_eq!(r.status, 405);
    // Any API version, as for the WebSocket path.
    let r = http_with(
        addr,
        "POST",
        "/api/v2/resources/sources/Idle",
        &[BEARER],
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.json());
}

#[tokio::test]
async fn frames_closes_and_a_restart_through_the_control_api() {
    let dev = devserver(&[]);
    let addr = dev.addr;
    let mut c = Client::session_at(addr, TOKEN, "S", "S_ctl").await;

    // Any frame, as given: text, then binary.
    let r = http(
        addr,
        "POST",
        "/control/sources/S/frame",
        Some(r#"{"op":"mystery"}"#),
    )
    .await;
    assert_eq!((r.status, r.json()), (202, json!({"sent": "text"})));
    assert_eq!(c.recv_message().await, Message::text(r#"{"op":"mystery"}"#));
    let r = http(
        addr,
        "POST",
        "/control/sources/S/frame?binary=true",
        Some("[1]"),
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(c.recv_message().await, Message::binary(b"[1]".to_vec()));

    // A clean close with a chosen code and reason; the source is free at once.
    let r = http(
        addr,
        "POST",
        "/control/sources/S/close?code=4001&reason=maintenance",
        None,
    )
    .await;
    assert_eq!((r.status, r.json()), (202, json!({"closed": 4001})));
    assert_eq!(c.recv_close().await, (4001, "maintenance".to_owned()));
    let info = http(addr, "GET", "/control/sources/S", None).await.json();
    assert_eq!(info["connected"], false);
    for bad in ["code=1005", "code=999", "code=x"] {
        let r = http(
            addr,
            "POST",
            &format!("/control/sources/S/close?{bad}"),
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
    }
    let r = http(addr, "POST", "/control/sources/S/close", None).await;
    assert_eq!(r.status, 409, "no connector to close");

    // A server restart: every connection closed with 1001; connecting again works.
    let mut a = Client::session_at(addr, TOKEN, "S", "S_ctl").await;
    let mut idle = Client::connect_to(addr, &format!("ws://{addr}/api/v1/wsock/websocket")).await;
    let r = http(addr, "POST", "/control/restart", None).await;
    assert_eq!((r.status, r.json()), (202, json!({"closed": 2})));
    assert_eq!(a.recv_close().await.0, 1001);
    assert_eq!(idle.recv_close().await.0, 1001);
    let mut b = Client::session_at(addr, TOKEN, "S", "S_ctl").await;
    let r = http(addr, "POST", "/control/sources/S/publish", Some("{}")).await;
    assert_eq!(r.status, 202);
    assert!(matches!(b.recv().await, ServerFrame::Publish { .. }));
    let info = http(addr, "GET", "/control/sources/S", None).await.json();
    assert_eq!(info["connections"], 3);
}

#[tokio::test]
async fn sigterm_closes_every_connection_with_1001_then_exits() {
    let mut dev = devserver(&[]);
    let addr = dev.addr;
    let mut c = Client::session_at(addr, TOKEN, "S", "S_term").await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &dev.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(c.recv_close().await.0, 1001);
    // The close handshake completes (the client answers), then the process exits cleanly.
    drop(c);
    let out = dev.wait_output("vantiq-devserver: stopped");
    assert!(
        out.contains("SIGTERM: closing every connection with 1001"),
        "{out}"
    );
    assert_eq!(dev.wait_exit(), Some(0));
}

#[tokio::test]
async fn the_control_api_refuses_what_a_web_page_could_send() {
    let dev = devserver(&["--allow-host", "devbox"]);
    let addr = dev.addr;
    let get = |headers: Vec<(&'static str, &'static str)>| async move {
        http_with(addr, "GET", "/control/sources", &headers, None).await
    };
    // curl and scripts: no Origin.
    assert_eq!(get(vec![]).await.status, 200);
    assert_eq!(get(vec![("Host", "localhost:1")]).await.status, 200);
    assert_eq!(get(vec![("Host", "devbox:8088")]).await.status, 200);
    // DNS rebinding: a page on evil.example whose name now points here.
    let r = get(vec![("Host", "evil.example:8088")]).await;
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("evil.example"));
    // A cross-site request from a page elsewhere.
    let r = get(vec![("Origin", "http://evil.example")]).await;
    assert_eq!(r.status, 403);
    let r = get(vec![("Sec-Fetch-Site", "cross-site")]).await;
    assert_eq!(r.status, 403);
    // A POST a form could send is refused before it does anything.
    let r = http_with(
        addr,
        "POST",
        "/control/restart",
        &[("Origin", "http://localhost:3000")],
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    // The same origin is fine.
    let origin = format!("http://{addr}");
    let origin: &'static str = Box::leak(origin.into_boxed_str());
    assert_eq!(get(vec![("Origin", origin)]).await.status, 200);
}

#[tokio::test]
async fn a_control_token_is_required_when_set() {
    let dev = devserver(&["--control-token", "ctl"]);
    let addr = dev.addr;
    let r = http(addr, "GET", "/control/sources", None).await;
    assert_eq!(r.status, 401);
    let r = http_with(
        addr,
        "GET",
        "/control/sources",
        &[("Authorization", "Bearer nope")],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http_with(
        addr,
        "GET",
        "/control/sources",
        &[("Authorization", "Bearer ctl")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["name"], "S");
}

#[test]
fn listening_on_a_non_loopback_address_warns() {
    let dev = DevServer::spawn(&["--listen", "0.0.0.0:0", "--quiet"]);
    let out = dev.wait_output("not a loopback address");
    assert!(out.contains("stderr: vantiq-devserver: warning"), "{out}");
    assert!(out.contains("consider --control-token"), "{out}");
    let local = DevServer::spawn(&["--listen", "127.0.0.1:0", "--quiet"]);
    local.wait_output("control API:");
    assert!(
        !local.output().iter().any(|l| l.contains("warning")),
        "{:?}",
        local.output()
    );
}

#[tokio::test]
async fn the_record_is_a_bounded_ring() {
    let server = TestServer::builder()
        .token("T")
        .source("S", json!({}))
        .record_limit(3)
        .start()
        .await
        .unwrap();
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_ring").await;
    for n in 0..5 {
        c.notify("S", json!({ "n": n })).await;
        let ack = c.recv_value().await;
        assert_eq!(ack, json!({"status": 200}));
    }
    assert_eq!(src.wait_notification_count(5, WAIT).await.unwrap(), 5);
    let kept: Vec<Value> = src
        .notifications_snapshot()
        .iter()
        .map(|j| j.to_value().unwrap())
        .collect();
    assert_eq!(kept, [json!({"n": 2}), json!({"n": 3}), json!({"n": 4})]);
    // Paging by absolute index keeps its place; what was dropped is gone.
    let (next, items) = src.notifications_after(3);
    assert_eq!((next, items.len()), (5, 2));
    assert_eq!(src.notifications_after(0).1.len(), 3);
    assert_eq!(server.frames().len(), 3);
    assert_eq!(src.frames().len(), 3);
    assert_eq!(src.info().notifications, 5);
}
