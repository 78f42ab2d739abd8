//! The test server driven by a raw client: every protocol behaviour of the library.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use common::{Client, End, WAIT};
use futures_util::StreamExt;
use serde_json::{Value, json};
use vantiq_proto::frame::{ClientFrame, QueryReply, ServerFrame};
use vantiq_proto::{Json, QueryError, Status};
use vantiq_testkit::{AnomalyKind, ConnectOutcome, RawFrame, TestServer, TestkitError, codes};

async fn server_with(source: &str, config: Value) -> TestServer {
    TestServer::builder()
        .token("T")
        .source(source, config)
        .start()
        .await
        .unwrap()
}

fn error_list_code_and_message(body: &Option<Json>) -> (String, String) {
    let v = body.as_ref().expect("error list body").to_value().unwrap();
    let list = v.as_array().expect("error list is an array");
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["params"], json!([]), "{v}");
    (
        list[0]["code"].as_str().unwrap().to_owned(),
        list[0]["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn handshake_delivers_config_with_bookkeeping_in_binary_frames() {
    let server = server_with("S", json!({"mySection": {"rate": 5}})).await;
    let src = server.source("S").unwrap();
    let mut c = Client::connect(&server).await;

    c.send(ClientFrame::Validate {
        token: Some("T".into()),
    })
    .await;
    let (auth_text, binary) = c.recv_text().await;
    assert!(binary, "the server sends binary frames by default");
    let auth: Value = serde_json::from_str(&auth_text).unwrap();
    assert_eq!(auth["status"], 200);
    assert_eq!(auth["contentType"], "application/json");
    assert_eq!(auth["body"]["anonymous"], false);
    assert_eq!(auth["body"]["userInfo"]["userType"], "node");
    assert_eq!(auth["body"]["userInfo"]["namespace"], "testkit");
    assert!(auth.get("op").is_none());

    c.send(ClientFrame::ConnectExtension {
        source: "S".into(),
        reconnect_secret: Some("S_secret".into()),
    })
    .await;
    let (text, binary) = c.recv_text().await;
    assert!(binary);
    let frame: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(frame["op"], "configureExtension");
    assert_eq!(frame["resourceName"], "sources");
    assert_eq!(frame["resourceId"], "S");
    assert_eq!(frame["object"]["config"], json!({"mySection": {"rate": 5}}));
    assert_eq!(frame["isSystemResource"], true);
    assert_eq!(frame["skipMonitoring"], false);
    assert_eq!(frame["isExternal"], false);
    assert_eq!(frame["contentType"], "application/json");
    assert_eq!(frame["parameters"], json!({}));
    assert_eq!(frame["messageHeaders"], json!({}));
    assert_eq!(
        frame["address"].as_str().unwrap().len(),
        36,
        "a UUID: {frame}"
    );

    assert_eq!(
        src.wait_configured(WAIT).await.unwrap().to_value().unwrap(),
        json!({"mySection": {"rate": 5}})
    );
    assert!(src.is_connected() && src.is_configured());
    assert_eq!(src.connect_attempts(), 1);
    assert_eq!(src.connections(), 1);
    assert_eq!(src.reconnect_secret().as_deref(), Some("S_secret"));
    assert_eq!(server.sockets_opened(), 1);
    assert_eq!(server.auth_attempts(), 1);
    let log = src.connect_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].outcome, ConnectOutcome::Accepted);
    assert_eq!(log[0].reconnect_secret.as_deref(), Some("S_secret"));

    // The server-wide log has everything; the source's log starts at connectExtension.
    let all: Vec<_> = server.frames().into_iter().map(|r| r.frame).collect();
    assert!(matches!(all[0], ClientFrame::Validate { .. }));
    assert!(matches!(all[1], ClientFrame::ConnectExtension { .. }));
    assert_eq!(all.len(), 2);
    let mine = src.frames();
    assert_eq!(mine.len(), 1);
    assert!(matches!(
        mine[0].frame,
        ClientFrame::ConnectExtension { .. }
    ));
    assert_eq!(mine[0].connection, server.frames()[0].connection);
    let info = &server.sources()[0];
    assert_eq!(
        (info.name.as_str(), info.connected, info.connections),
        ("S", true, 1)
    );
}

#[tokio::test]
async fn text_frames_status_before_configure_and_no_bookkeeping_when_switched() {
    let server = TestServer::builder()
        .source("S", json!({"a": 1}))
        .binary_frames(false)
        .bookkeeping(false)
        .status_before_configure(true)
        .start()
        .await
        .unwrap();
    let src = server.source("S").unwrap();
    let mut c = Client::connect(&server).await;
    // No token configured: any token (and none) is accepted.
    c.send(ClientFrame::Validate { token: None }).await;
    let (auth, binary) = c.recv_text().await;
    assert!(!binary, "text frames when switched");
    assert!(auth.starts_with(r#"{"status":200"#), "{auth}");

    c.send_binary(ClientFrame::ConnectExtension {
        source: "S".into(),
        reconnect_secret: None,
    })
    .await;
    assert_eq!(c.recv_text().await, (r#"{"status":200}"#.to_owned(), false));
    let (configure, binary) = c.recv_text().await;
    assert!(!binary);
    assert_eq!(
        configure,
        r#"{"op":"configureExtension","resourceName":"sources","resourceId":"S","object":{"config":{"a":1}}}"#
    );
    src.wait_configured(WAIT).await.unwrap();
    assert_eq!(src.reconnect_secret(), None);

    src.publish(json!({"x": 1})).await.unwrap();
    assert_eq!(
        c.recv_text().await,
        (
            r#"{"op":"publish","resourceName":"sources","resourceId":"S","object":{"x":1}}"#
                .to_owned(),
            false
        )
    );
}

#[tokio::test]
async fn wrong_token_gets_401_error_list_and_the_socket_stays_open() {
    let server = server_with("S", json!({})).await;
    let mut c = Client::connect(&server).await;

    let (text, _) = {
        c.send(ClientFrame::Validate {
            token: Some("wrong".into()),
        })
        .await;
        c.recv_text().await
    };
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["status"], 401);
    assert_eq!(reply["contentType"], "application/json");
    let body = Some(Json::from(reply["body"].clone()));
    let (code, message) = error_list_code_and_message(&body);
    assert_eq!(code, codes::AUTH_FAILED);
    assert!(message.contains("Authentication failed"), "{message}");

    // A null token is rejected too.
    c.send(ClientFrame::Validate { token: None }).await;
    assert_eq!(c.recv_status().await.status, Status::UNAUTHORIZED);

    // Anything else before authentication: 401 and an anomaly.
    let reply = c.connect_extension("S", Some("x")).await;
    let ServerFrame::Status(s) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(s.status, Status::UNAUTHORIZED);
    assert_eq!(
        error_list_code_and_message(&s.body).0,
        codes::NOT_AUTHENTICATED
    );
    let anomalies = server.wait_anomalies(1, WAIT).await.unwrap();
    assert!(matches!(
        &anomalies[0].kind,
        AnomalyKind::NotAuthenticated {
            frame: ClientFrame::ConnectExtension { .. }
        }
    ));
    assert_eq!(server.source("S").unwrap().connect_attempts(), 0);

    // The socket is still open: the right token now works on it.
    assert_eq!(c.validate("T").await.status, Status::OK);
    c.attach("S", Some("x")).await;
    assert_eq!(server.auth_attempts(), 3);
    assert_eq!(server.sockets_opened(), 1);
}

#[tokio::test]
async fn authenticate_with_user_and_password() {
    let server = TestServer::builder()
        .token("T")
        .credentials("alice", "pw")
        .namespace("ns1")
        .source("S", json!({}))
        .start()
        .await
        .unwrap();
    let mut c = Client::connect(&server).await;
    c.send(ClientFrame::Authenticate {
        username: "alice".into(),
        password: "bad".into(),
    })
    .await;
    let s = c.recv_status().await;
    assert_eq!(s.status, Status::UNAUTHORIZED);
    assert_eq!(error_list_code_and_message(&s.body).0, codes::AUTH_FAILED);

    c.send(ClientFrame::Authenticate {
        username: "alice".into(),
        password: "pw".into(),
    })
    .await;
    let ok = c.recv_value().await;
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["body"]["userInfo"]["username"], "alice");
    assert_eq!(ok["body"]["userInfo"]["namespace"], "ns1");
    c.attach("S", None).await;

    // Without configured credentials, authenticate always fails.
    let plain = server_with("S", json!({})).await;
    let mut c = Client::connect(&plain).await;
    c.send(ClientFrame::Authenticate {
        username: "alice".into(),
        password: "pw".into(),
    })
    .await;
    assert_eq!(c.recv_status().await.status, Status::UNAUTHORIZED);
}

#[tokio::test]
async fn refuse_connects_answers_no_associated_stream_n_times() {
    let server = server_with("S", json!({"k": 1})).await;
    let src = server.source("S").unwrap();
    src.refuse_connects(2);
    let mut c = Client::connect(&server).await;
    c.validate("T").await;
    for _ in 0..2 {
        let ServerFrame::Status(s) = c.connect_extension("S", Some("sec")).await else {
            panic!("expected a refusal")
        };
        assert_eq!(s.status, Status::BAD_REQUEST);
        let (code, message) = error_list_code_and_message(&s.body);
        assert_eq!(code, codes::NO_ASSOCIATED_STREAM);
        assert!(
            message.contains("does not have an associated stream"),
            "{message}"
        );
        assert!(!src.is_connected());
    }
    assert_eq!(c.attach("S", Some("sec")).await, json!({"k": 1}));
    let outcomes: Vec<_> = src.connect_log().iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            ConnectOutcome::RefusedNoStream,
            ConnectOutcome::RefusedNoStream,
            ConnectOutcome::Accepted
        ]
    );
    assert_eq!(src.connect_attempts(), 3);
    assert_eq!(src.connections(), 1);
    assert_eq!(src.wait_connect_attempts(3, WAIT).await.unwrap(), 3);
}

#[tokio::test]
async fn unknown_source_gets_404_error_list() {
    let server = server_with("S", json!({})).await;
    let mut c = Client::connect(&server).await;
    c.validate("T").await;
    let ServerFrame::Status(s) = c.connect_extension("Nope", None).await else {
        panic!("expected an error")
    };
    assert_eq!(s.status, Status(404));
    let (code, message) = error_list_code_and_message(&s.body);
    assert_eq!(code, codes::SOURCE_NOT_FOUND);
    assert!(message.contains("Nope"));
    assert!(matches!(
        server.source("Nope"),
        Err(TestkitError::UnknownSource { name }) if name == "Nope"
    ));
    // Sources can be added while the server runs.
    let added = server.add_source("Nope", json!({"late": true}));
    assert_eq!(c.attach("Nope", None).await, json!({"late": true}));
    assert!(added.is_configured());
}

#[tokio::test]
async fn same_reconnect_secret_takes_over_a_half_open_connection() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut old = Client::session(&server, "T", "S", "S_same").await;
    let mut new = Client::session(&server, "T", "S", "S_same").await;

    // The old socket is dropped without a close frame.
    assert_eq!(old.expect_end().await, End::Abrupt);
    assert!(src.is_connected());
    assert_eq!(src.connections(), 2);
    assert_eq!(src.disconnects(), 1);
    let outcomes: Vec<_> = src.connect_log().iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [ConnectOutcome::Accepted, ConnectOutcome::TookOver]
    );

    // The new connection is the live one.
    src.publish(json!({"to": "new"})).await.unwrap();
    assert!(matches!(new.recv().await, ServerFrame::Publish { .. }));
}

#[tokio::test]
async fn a_different_or_missing_secret_is_refused_while_the_source_is_held() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut holder = Client::session(&server, "T", "S", "S_one").await;

    for secret in [Some("S_two"), None] {
        let mut other = Client::connect(&server).await;
        other.validate("T").await;
        let ServerFrame::Status(s) = other.connect_extension("S", secret).await else {
            panic!("expected a refusal")
        };
        assert_eq!(s.status, Status::BAD_REQUEST);
        let (code, message) = error_list_code_and_message(&s.body);
        assert_eq!(code, codes::CONNECTION_EXISTS);
        assert!(message.contains("already exists"), "{message}");
    }
    assert_eq!(src.reconnect_secret().as_deref(), Some("S_one"));
    assert_eq!(src.connections(), 1);
    let outcomes: Vec<_> = src.connect_log().iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            ConnectOutcome::Accepted,
            ConnectOutcome::RefusedAlreadyConnected,
            ConnectOutcome::RefusedAlreadyConnected
        ]
    );
    // The holder is untouched.
    src.publish(json!({"still": "here"})).await.unwrap();
    assert!(matches!(holder.recv().await, ServerFrame::Publish { .. }));
}

#[tokio::test]
async fn a_flapping_source_drops_every_session_right_after_configuring_it() {
    let server = server_with("S", json!({"f": 1})).await;
    let src = server.source("S").unwrap();
    src.set_flapping(true);
    for n in 1..=3 {
        let mut c = Client::connect(&server).await;
        c.validate("T").await;
        assert_eq!(c.attach("S", Some("S_f")).await, json!({"f": 1}));
        assert_eq!(c.expect_end().await, End::Abrupt);
        src.wait_disconnected(WAIT).await.unwrap();
        assert_eq!(src.connections(), n);
    }
    src.set_flapping(false);
    let mut c = Client::session(&server, "T", "S", "S_f").await;
    src.wait_configured(WAIT).await.unwrap();
    src.publish(json!({"stable": true})).await.unwrap();
    assert!(matches!(c.recv().await, ServerFrame::Publish { .. }));
    assert_eq!(src.wait_connections(4, WAIT).await.unwrap(), 4);
}

#[tokio::test]
async fn publish_reaches_the_connector_only_when_configured() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let err = src.publish(json!({"early": true})).await.unwrap_err();
    assert!(
        matches!(&err, TestkitError::NotConnected { source_name } if source_name == "S"),
        "{err}"
    );

    let mut c = Client::session(&server, "T", "S", "S_p").await;
    for i in 0..3 {
        src.publish(json!({"hello": "world", "i": i}))
            .await
            .unwrap();
    }
    for i in 0..3 {
        let v = c.recv_value().await;
        assert_eq!(v["op"], "publish");
        assert_eq!(v["resourceId"], "S");
        assert_eq!(v["object"], json!({"hello": "world", "i": i}));
        assert_eq!(v["isSystemResource"], true);
    }
}

#[tokio::test]
async fn queries_collect_partial_final_empty_and_error_replies_concurrently() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_q").await;

    let (q1, q2, q3, q4, connector) = tokio::join!(
        src.query(json!({"n": 1})),
        src.query(json!({"n": 2})),
        src.query(json!({"n": 3})),
        src.query(json!({"n": 4})),
        async {
            let mut by_n = std::collections::HashMap::new();
            for _ in 0..4 {
                let (addr, params) = c.recv_query().await;
                by_n.insert(params["n"].as_i64().unwrap(), addr);
            }
            assert_eq!(by_n.len(), 4);
            let a = |n: i64| by_n[&n].clone();
            // Interleave the replies of different queries.
            c.reply(&a(1), 100, Some(json!([{"r": 1}, {"r": 2}]))).await;
            c.reply(&a(2), 204, None).await;
            c.reply(&a(1), 100, Some(json!({"r": 3}))).await;
            c.reply(
                &a(3),
                400,
                Some(json!({"messageCode": "x.bad", "messageTemplate": "bad {0}", "parameters": ["q"]})),
            )
            .await;
            c.reply(&a(4), 200, Some(json!({"only": true}))).await;
            c.reply(&a(1), 200, Some(json!([{"r": 4}]))).await;
            by_n
        }
    );
    let addresses = connector;
    let q1 = q1.unwrap();
    assert_eq!(q1.status, Status::OK);
    assert_eq!(
        q1.rows,
        vec![
            json!({"r": 1}),
            json!({"r": 2}),
            json!({"r": 3}),
            json!({"r": 4})
        ]
    );
    assert_eq!(q1.parts.len(), 3);
    assert_eq!(q1.partial_count(), 2);
    assert_eq!(q1.reply_address, addresses[&1]);
    assert!(q1.parts.iter().all(|p| p.reply_address == addresses[&1]));
    assert_eq!(q1.error(), None);

    let q2 = q2.unwrap();
    assert_eq!(
        (q2.status, q2.rows.len(), q2.parts.len()),
        (Status::NO_CONTENT, 0, 1)
    );

    let Err(TestkitError::QueryFailed {
        source_name,
        result,
    }) = q3
    else {
        panic!("expected QueryFailed, got {q3:?}")
    };
    assert_eq!(source_name, "S");
    assert_eq!(result.status, Status::BAD_REQUEST);
    assert_eq!(
        result.error(),
        Some(QueryError::new("x.bad", "bad {0}", ["q"]))
    );
    assert_eq!(result.parts.len(), 1);
    assert!(result.rows.is_empty());

    let q4 = q4.unwrap();
    assert_eq!(q4.rows, vec![json!({"only": true})]);
    assert!(server.anomalies().is_empty(), "{:?}", server.anomalies());

    // Query replies are logged as frames of the source.
    let replies = src
        .frames()
        .into_iter()
        .filter(|f| matches!(f.frame, ClientFrame::QueryReply(_)))
        .count();
    assert_eq!(replies, 6);
}

#[tokio::test]
async fn query_frames_carry_the_reply_address_header_and_params() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_q").await;
    let (result, ()) = tokio::join!(src.query(json!({"query": "select"})), async {
        let v = c.recv_value().await;
        assert_eq!(v["op"], "query");
        assert_eq!(v["resourceId"], "S");
        assert_eq!(v["object"], json!({"query": "select"}));
        let addr = v["messageHeaders"]["REPLY_ADDR_HEADER"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(addr.len(), 36, "a UUID reply address: {addr}");
        assert_eq!(v["isSystemResource"], true);
        c.reply(&addr, 200, Some(json!([]))).await;
    });
    let result = result.unwrap();
    assert_eq!(result.status, Status::OK);
    assert!(result.rows.is_empty());
}

#[tokio::test]
async fn a_query_without_a_terminal_reply_times_out_naming_it_and_late_replies_are_anomalies() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_q").await;
    let (result, addr) = tokio::join!(
        src.query_with_timeout(json!({}), Duration::from_millis(300)),
        async {
            let (addr, _) = c.recv_query().await;
            c.reply(&addr, 100, Some(json!({"part": 1}))).await;
            addr
        }
    );
    let err = result.unwrap_err();
    assert!(err.is_timeout());
    let text = err.to_string();
    assert!(text.contains(&addr), "{text}");
    assert!(text.contains("source `S`"), "{text}");
    assert!(text.contains("1 partial replies"), "{text}");
    assert!(text.contains("300ms"), "{text}");

    // The late terminal reply matches no query in flight.
    c.reply(&addr, 200, Some(json!({"late": true}))).await;
    let anomalies = server.wait_anomalies(1, WAIT).await.unwrap();
    let AnomalyKind::UnknownReplyAddress { reply } = &anomalies[0].kind else {
        panic!("{anomalies:?}")
    };
    assert_eq!(reply.reply_address, addr);
    assert_eq!(reply.status, Status::OK);
    assert_eq!(anomalies[0].source.as_deref(), Some("S"));
}

#[tokio::test]
async fn a_reply_for_an_unknown_address_is_an_anomaly() {
    let server = server_with("S", json!({})).await;
    let mut c = Client::session(&server, "T", "S", "S_q").await;
    c.reply("no-such-address", 200, Some(json!({"x": 1}))).await;
    let anomalies = server.wait_anomalies(1, WAIT).await.unwrap();
    assert_eq!(
        anomalies[0].kind,
        AnomalyKind::UnknownReplyAddress {
            reply: QueryReply {
                status: Status::OK,
                reply_address: "no-such-address".into(),
                body: Some(Json::from(json!({"x": 1}))),
            }
        }
    );
}

#[tokio::test]
async fn query_without_a_connector_is_not_connected() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    assert!(matches!(
        src.query(json!({})).await,
        Err(TestkitError::NotConnected { .. })
    ));
}

#[tokio::test]
async fn notifications_are_recorded_in_order_and_acknowledged() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut stream = Box::pin(src.notification_stream());
    let mut c = Client::session(&server, "T", "S", "S_n").await;
    for i in 0..5 {
        c.notify("S", json!({"i": i})).await;
        let ack = c.recv_text().await;
        assert_eq!(ack, (r#"{"status":200}"#.to_owned(), true));
    }
    for i in 0..5 {
        assert_eq!(
            src.next_notification(WAIT)
                .await
                .unwrap()
                .to_value()
                .unwrap(),
            json!({"i": i})
        );
    }
    let all = src.wait_notifications(5, WAIT).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|j| j.to_value().unwrap())
            .collect::<Vec<_>>(),
        (0..5).map(|i| json!({"i": i})).collect::<Vec<_>>()
    );
    assert_eq!(src.notifications_snapshot(), all);
    assert_eq!(src.notification_count(), 5);
    let (next, items) = src.notifications_after(3);
    assert_eq!(next, 5);
    assert_eq!(items, all[3..].to_vec());
    assert_eq!(src.notifications_after(9), (5, vec![]));
    for i in 0..5 {
        let n = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n.to_value().unwrap(), json!({"i": i}));
    }
    // The stream goes on with new notifications.
    c.notify("S", json!({"i": 5})).await;
    let n = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.to_value().unwrap(), json!({"i": 5}));
    assert_eq!(src.info().notifications, 6);
}

#[tokio::test]
async fn notifications_are_not_acknowledged_when_acks_are_off() {
    let server = TestServer::builder()
        .token("T")
        .ack_notifications(false)
        .ack_query_replies(true)
        .source("S", json!({}))
        .start()
        .await
        .unwrap();
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_n").await;
    c.notify("S", json!({"n": 1})).await;
    c.notify("S", json!({"n": 2})).await;
    // The next frame the connector sees answers the validate sent after the notifications:
    // no acknowledgement came before it.
    let auth = c.validate("T").await;
    assert!(auth.body.is_some(), "the auth reply, not an ack: {auth:?}");
    assert_eq!(src.wait_notifications(2, WAIT).await.unwrap().len(), 2);

    // Query replies are acknowledged when that is on.
    let (result, ()) = tokio::join!(src.query(json!({})), async {
        let (addr, _) = c.recv_query().await;
        c.reply(&addr, 204, None).await;
        let ack = c.recv_status().await;
        assert_eq!((ack.status, ack.body), (Status::OK, None));
    });
    assert_eq!(result.unwrap().status, Status::NO_CONTENT);
}

#[tokio::test]
async fn reconnect_required_delivers_the_new_config_on_the_same_socket() {
    let server = server_with("S", json!({"v": 1})).await;
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_r").await;
    src.wait_configured(WAIT).await.unwrap();

    src.reconnect_required(Some(Json::from(json!({"v": 2}))))
        .await
        .unwrap();
    assert!(
        !src.is_configured(),
        "unconfigured until the next connectExtension"
    );
    assert!(src.is_connected());
    assert_eq!(src.config().to_value().unwrap(), json!({"v": 2}));
    let v = c.recv_value().await;
    assert_eq!(
        v,
        json!({"op": "reconnectRequired", "resourceName": "sources", "resourceId": "S"})
    );
    // Publishing waits for the new configuration.
    assert!(matches!(
        src.publish(json!({})).await,
        Err(TestkitError::NotConnected { .. })
    ));

    assert_eq!(c.attach("S", Some("S_r")).await, json!({"v": 2}));
    assert_eq!(
        src.wait_configured(WAIT).await.unwrap().to_value().unwrap(),
        json!({"v": 2})
    );
    assert_eq!(src.connections(), 2);
    assert_eq!(server.sockets_opened(), 1);

    // Without a new config, the current one is sent again.
    src.reconnect_required(None).await.unwrap();
    assert!(matches!(
        c.recv().await,
        ServerFrame::ReconnectRequired { .. }
    ));
    assert_eq!(c.attach("S", Some("S_r")).await, json!({"v": 2}));
}

#[tokio::test]
async fn reconnect_required_config_reaches_a_new_socket_too() {
    let server = server_with("S", json!({"v": 1})).await;
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_r").await;
    src.reconnect_required(Some(Json::from(json!({"v": 3}))))
        .await
        .unwrap();
    assert!(matches!(
        c.recv().await,
        ServerFrame::ReconnectRequired { .. }
    ));
    // Like the Python SDK: close the socket and reconnect.
    c.ws.close(None).await.unwrap();
    src.wait_disconnected(WAIT).await.unwrap();
    let mut c2 = Client::connect(&server).await;
    c2.validate("T").await;
    assert_eq!(c2.attach("S", Some("S_r")).await, json!({"v": 3}));

    // With no connection, the config is stored and the caller told.
    src.drop_connection().await.unwrap();
    let err = src
        .reconnect_required(Some(Json::from(json!({"v": 4}))))
        .await
        .unwrap_err();
    assert!(matches!(err, TestkitError::NotConnected { .. }));
    assert_eq!(src.config().to_value().unwrap(), json!({"v": 4}));
}

#[tokio::test]
async fn drop_connection_ends_the_socket_without_a_close_frame() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_d").await;
    // Frames queued before the drop still go out, then the socket ends.
    for i in 0..3 {
        src.publish(json!({"i": i})).await.unwrap();
    }
    src.drop_connection().await.unwrap();
    assert!(!src.is_connected(), "released at once");
    for i in 0..3 {
        match c.recv().await {
            ServerFrame::Publish { object, .. } => {
                assert_eq!(object.to_value().unwrap(), json!({"i": i}))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(c.expect_end().await, End::Abrupt);
    assert!(matches!(
        src.drop_connection().await,
        Err(TestkitError::NotConnected { .. })
    ));
    assert_eq!(src.disconnects(), 1);
    // The connector can come back.
    let _c2 = Client::session(&server, "T", "S", "S_d").await;
    assert_eq!(src.connections(), 2);
}

#[tokio::test]
async fn a_connector_closing_its_socket_releases_the_source() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_c").await;
    src.wait_connected(WAIT).await.unwrap();
    c.ws.close(None).await.unwrap();
    assert_eq!(c.expect_end().await, End::CloseFrame);
    src.wait_disconnected(WAIT).await.unwrap();
    assert_eq!(src.disconnects(), 1);
}

#[tokio::test]
async fn send_raw_puts_text_and_binary_on_the_wire_as_given() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    assert!(matches!(
        src.send_raw("x").await,
        Err(TestkitError::NotConnected { .. })
    ));
    let mut c = Client::session(&server, "T", "S", "S_raw").await;
    src.send_raw("this is not JSON {").await.unwrap();
    src.send_raw(vec![0xff_u8, 0x00, 0x7b]).await.unwrap();
    src.send_raw(RawFrame::Text(r#"{"op":"testRequestsClientClose"}"#.into()))
        .await
        .unwrap();
    assert_eq!(c.recv_message().await, Message::text("this is not JSON {"));
    assert_eq!(
        c.recv_message().await,
        Message::binary(vec![0xff_u8, 0x00, 0x7b])
    );
    assert_eq!(
        c.recv_message().await,
        Message::text(r#"{"op":"testRequestsClientClose"}"#)
    );
}

#[tokio::test]
async fn malformed_and_unexpected_client_frames_are_anomalies_and_the_session_goes_on() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut c = Client::connect(&server).await;
    c.validate("T").await;

    // A notification before connectExtension: error frame + anomaly.
    c.notify("S", json!({"early": 1})).await;
    let s = c.recv_status().await;
    assert_eq!(s.status, Status::BAD_REQUEST);
    assert_eq!(error_list_code_and_message(&s.body).0, codes::NOT_ATTACHED);

    c.attach("S", Some("S_m")).await;
    c.send_text("not json").await;
    c.send_text("[1,2]").await;
    c.send(ClientFrame::Unknown {
        op: "mystery".into(),
    })
    .await;
    c.notify("Other", json!({"wrong": "source"})).await;
    let s = c.recv_status().await;
    assert_eq!(error_list_code_and_message(&s.body).0, codes::WRONG_SOURCE);

    let anomalies = server.wait_anomalies(5, WAIT).await.unwrap();
    let kinds: Vec<_> = anomalies.iter().map(|a| &a.kind).collect();
    assert!(
        matches!(kinds[0], AnomalyKind::NotAttached { .. }),
        "{kinds:?}"
    );
    assert_eq!(anomalies[0].source, None);
    assert!(
        matches!(kinds[1], AnomalyKind::BadFrame { text, .. } if text == "not json"),
        "{kinds:?}"
    );
    assert!(matches!(kinds[2], AnomalyKind::BadFrame { text, .. } if text == "[1,2]"));
    assert!(matches!(kinds[3], AnomalyKind::UnknownOp { op } if op == "mystery"));
    assert_eq!(
        kinds[4],
        &AnomalyKind::WrongSource {
            attached: "S".into(),
            named: "Other".into()
        }
    );
    assert!(
        anomalies[1..]
            .iter()
            .all(|a| a.source.as_deref() == Some("S"))
    );

    // The session still works and nothing was counted as a notification.
    assert_eq!(src.notification_count(), 0);
    c.notify("S", json!({"ok": true})).await;
    assert_eq!(
        src.next_notification(WAIT)
            .await
            .unwrap()
            .to_value()
            .unwrap(),
        json!({"ok": true})
    );
}

#[tokio::test]
async fn waits_time_out_with_an_error_naming_what_was_awaited() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let short = Duration::from_millis(50);

    let e = src.wait_connected(short).await.unwrap_err().to_string();
    assert!(e.contains("a connection to source `S`"), "{e}");
    assert!(e.contains("50ms"), "{e}");
    let e = src.wait_configured(short).await.unwrap_err().to_string();
    assert!(e.contains("source `S` to be configured"), "{e}");
    let e = src
        .wait_notifications(3, short)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("3 notifications on source `S` (0 received)"),
        "{e}"
    );
    let e = src.next_notification(short).await.unwrap_err().to_string();
    assert!(e.contains("notification #1 on source `S`"), "{e}");
    let e = src
        .wait_connections(2, short)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 accepted connections to source `S` (0 so far"),
        "{e}"
    );
    let e = src
        .wait_connect_attempts(1, short)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 connectExtension attempts for source `S` (0 so far)"),
        "{e}"
    );
    let e = src
        .wait_notification_count(1, short)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 notifications on source `S`"), "{e}");
    let e = server
        .wait_anomalies(1, short)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 anomalies (0 recorded)"), "{e}");
    let e = server.wait_sockets(1, short).await.unwrap_err().to_string();
    assert!(e.contains("1 WebSocket connections (0 so far)"), "{e}");

    let _c = Client::session(&server, "T", "S", "S_w").await;
    let e = src.wait_disconnected(short).await.unwrap_err().to_string();
    assert!(e.contains("the connection to source `S` to end"), "{e}");
    // A long poll with nothing new gives nothing, not an error.
    assert_eq!(src.wait_notifications_after(0, short).await, (0, vec![]));
}

#[tokio::test]
async fn shutdown_drops_everything_and_a_new_server_can_take_the_address() {
    let server = server_with("S", json!({"gen": 1})).await;
    let addr = server.addr();
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_s").await;
    let pending = tokio::spawn({
        let src = src.clone();
        async move { src.query_with_timeout(json!({}), WAIT).await }
    });
    let _ = c.recv_query().await;

    server.shutdown().await;
    assert_eq!(c.expect_end().await, End::Abrupt);
    assert!(matches!(
        pending.await.unwrap(),
        Err(TestkitError::ServerGone)
    ));
    assert!(!src.is_connected());
    assert!(matches!(
        src.wait_connected(WAIT).await,
        Err(TestkitError::ServerGone)
    ));
    // The port is released: nothing listens until a new server binds it.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let server2 = TestServer::builder()
        .bind(addr)
        .token("T")
        .source("S", json!({"gen": 2}))
        .start()
        .await
        .unwrap();
    assert_eq!(server2.addr(), addr);
    assert_eq!(server2.url(), format!("http://{addr}"));
    let mut c = Client::connect(&server2).await;
    c.validate("T").await;
    assert_eq!(c.attach("S", Some("S_s")).await, json!({"gen": 2}));
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let server = server_with("S", json!({})).await;
    let mut c = Client::session(&server, "T", "S", "S_x").await;
    drop(server);
    assert_eq!(c.expect_end().await, End::Abrupt);
}

#[tokio::test]
async fn binding_a_busy_address_fails_with_bind() {
    let server = server_with("S", json!({})).await;
    let err = TestServer::builder()
        .bind(server.addr())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TestkitError::Bind { addr, .. } if *addr == server.addr()),
        "{err}"
    );
}

#[tokio::test]
async fn an_oversized_message_ends_the_connection() {
    let server = TestServer::builder()
        .token("T")
        .max_message_size(Some(1024))
        .source("S", json!({}))
        .start()
        .await
        .unwrap();
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_big").await;
    c.notify("S", json!({"small": 1})).await;
    src.wait_notifications(1, WAIT).await.unwrap();
    c.notify("S", json!({"big": "x".repeat(2048)})).await;
    src.wait_disconnected(WAIT).await.unwrap();
    assert_eq!(src.notification_count(), 1);
}

#[tokio::test]
async fn recording_off_still_counts() {
    let server = TestServer::builder()
        .record(false)
        .source("S", json!({}))
        .start()
        .await
        .unwrap();
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_bench").await;
    for i in 0..50 {
        c.notify("S", json!({"i": i})).await;
    }
    assert_eq!(src.wait_notification_count(50, WAIT).await.unwrap(), 50);
    assert!(src.notifications_snapshot().is_empty());
    assert!(src.frames().is_empty());
    assert!(server.frames().is_empty());
    assert_eq!(src.connect_log().len(), 1);
}

#[tokio::test]
async fn non_websocket_requests_get_404_and_any_api_version_is_accepted() {
    let server = server_with("S", json!({})).await;
    let resp = common::http(server.addr(), "GET", "/", None).await;
    assert_eq!(resp.status, 404);
    // The control API is off unless asked for.
    let resp = common::http(server.addr(), "GET", "/control/sources", None).await;
    assert_eq!(resp.status, 404);
    assert!(resp.json()["error"].is_string());

    // An upgrade on another path is refused.
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let url = format!("ws://{}/api/v1/other", server.addr());
    assert!(
        async_tungstenite::tokio::client_async(url, tcp)
            .await
            .is_err()
    );

    // Any /api/vN/wsock/websocket is the endpoint.
    let mut c = Client::connect_to(
        server.addr(),
        &format!("ws://{}/api/v47/wsock/websocket", server.addr()),
    )
    .await;
    assert_eq!(c.validate("T").await.status, Status::OK);
    assert_eq!(server.wait_sockets(1, WAIT).await.unwrap(), 1);
}

#[tokio::test]
async fn bytes_sent_right_after_the_upgrade_request_are_not_lost() {
    use tokio::io::AsyncWriteExt;
    let server = server_with("S", json!({})).await;
    // Write the upgrade request and a first (masked) frame in one go, then let tungstenite
    // read the response and the rest.
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let request = format!(
        "GET /api/v1/wsock/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr()
    );
    let payload = br#"{"op":"validate","resourceName":"system.credentials","object":"T"}"#;
    let mut bytes = request.into_bytes();
    // A masked text frame (mask key 0): FIN + text, MASK bit + 7-bit length.
    bytes.push(0x81);
    bytes.push(0x80 | u8::try_from(payload.len()).unwrap());
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(payload);
    tcp.write_all(&bytes).await.unwrap();
    let mut ws = async_tungstenite::WebSocketStream::from_raw_socket(
        async_tungstenite::tokio::TokioAdapter::new(read_101_head(tcp).await),
        async_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let frame = ServerFrame::decode(&reply.into_data()).unwrap();
    assert!(matches!(frame, ServerFrame::Status(s) if s.status == Status::OK));
    assert_eq!(server.auth_attempts(), 1);
}

/// Reads and checks the server's `101` response head, consuming nothing after it.
async fn read_101_head(mut tcp: tokio::net::TcpStream) -> tokio::net::TcpStream {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455's example key and accept value.
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    tcp
}

#[tokio::test]
async fn handles_and_their_futures_are_send() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    fn send<T: Send>(_: T) {}
    send_sync_clone::<vantiq_testkit::SourceHandle>();
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    // Compile-time checks: every future can be spawned on a multi-threaded runtime.
    send(src.publish(json!({})));
    send(src.query(json!({})));
    send(src.wait_configured(WAIT));
    send(src.next_notification(WAIT));
    send(src.wait_notifications_after(0, WAIT));
    send(src.reconnect_required(None));
    send(src.drop_connection());
    send(src.send_raw("x"));
    send(src.notification_stream());
    send(server.wait_anomalies(1, WAIT));
    send(server.shutdown());
}

#[tokio::test]
async fn close_sends_a_close_frame_with_the_chosen_code_and_frees_the_source_at_once() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut c = Client::session(&server, "T", "S", "S_c").await;
    src.close(4000, "bye").await.unwrap();
    assert!(!src.is_connected());
    assert_eq!(c.recv_close().await, (4000, "bye".to_owned()));
    assert!(matches!(
        src.close(1000, "again").await,
        Err(TestkitError::NotConnected { .. })
    ));
    // The same connector may attach again right away.
    let _c2 = Client::session(&server, "T", "S", "S_c").await;
    assert_eq!(src.connections(), 2);
    assert_eq!(src.disconnects(), 1);
}

#[tokio::test]
async fn restart_closes_every_connection_with_1001_and_accepts_again() {
    let server = server_with("S", json!({})).await;
    let src = server.source("S").unwrap();
    let mut a = Client::session(&server, "T", "S", "S_r").await;
    let mut bare = Client::connect(&server).await;
    server.wait_sockets(2, WAIT).await.unwrap();
    assert_eq!(server.restart(), 2);
    assert_eq!(a.recv_close().await.0, 1001);
    assert_eq!(bare.recv_close().await.0, 1001);
    assert!(!src.is_connected());
    let _b = Client::session(&server, "T", "S", "S_r").await;
    src.wait_configured(WAIT).await.unwrap();
    assert_eq!(server.restart(), 1);
}

#[tokio::test]
async fn serve_stream_serves_a_connection_that_did_not_come_through_the_listener() {
    use async_tungstenite::tokio::TokioAdapter;
    let server = server_with("S", json!({"via": "pipe"})).await;
    let src = server.source("S").unwrap();
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    server.serve_stream(TokioAdapter::new(server_end));
    let (mut ws, _) = async_tungstenite::client_async(
        "ws://in-memory/api/v1/wsock/websocket",
        TokioAdapter::new(client_end),
    )
    .await
    .unwrap();
    ws.send(Message::text(
        ClientFrame::Validate {
            token: Some("T".into()),
        }
        .encode(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        ClientFrame::ConnectExtension {
            source: "S".into(),
            reconnect_secret: None,
        }
        .encode(),
    ))
    .await
    .unwrap();
    assert_eq!(
        src.wait_configured(WAIT).await.unwrap().to_value().unwrap(),
        json!({"via": "pipe"})
    );
    assert_eq!(server.sockets_opened(), 1);
    assert_eq!(server.open_sockets(), 1);
}

/// `serve_websocket` needs no tokio runtime: here the server's side of a pipe runs on a
/// thread under smol's executor while the test drives the connector side on tokio.
#[tokio::test]
async fn serve_websocket_runs_on_any_executor() {
    use async_tungstenite::tokio::TokioAdapter;
    let server = std::sync::Arc::new(server_with("S", json!({})).await);
    let src = server.source("S").unwrap();
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let s2 = std::sync::Arc::clone(&server);
    let served = std::thread::spawn(move || {
        smol::block_on(async move {
            let ws = async_tungstenite::accept_async(TokioAdapter::new(server_end))
                .await
                .unwrap();
            s2.serve_websocket(ws).await;
        });
    });
    let (mut ws, _) = async_tungstenite::client_async(
        "ws://in-memory/api/v1/wsock/websocket",
        TokioAdapter::new(client_end),
    )
    .await
    .unwrap();
    for f in [
        ClientFrame::Validate {
            token: Some("T".into()),
        },
        ClientFrame::ConnectExtension {
            source: "S".into(),
            reconnect_secret: None,
        },
    ] {
        ws.send(Message::text(f.encode())).await.unwrap();
    }
    src.wait_configured(WAIT).await.unwrap();
    src.drop_connection().await.unwrap();
    drop(ws);
    served.join().unwrap();
    src.wait_disconnected(WAIT).await.unwrap();
}
