//! The server state machine on its own: frames in, transmits and events out.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::frame::{ClientFrame, QueryReply, ServerFrame};

fn options() -> ServerOptions {
    ServerOptions {
        token: Some("t".into()),
        credentials: Some(("u".into(), "p".into())),
        binary_frames: false,
        bookkeeping: false,
        ..ServerOptions::default()
    }
}

fn registry(o: ServerOptions) -> Registry {
    let mut reg = Registry::new(o);
    reg.define_source("S", Json::from(json!({"rate": 1})));
    reg
}

fn now() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

/// A connection with its registry, and what it sent.
struct Side {
    reg: Registry,
    conn: ServerConnection,
    t: Instant,
}

impl Side {
    fn new(o: ServerOptions) -> Side {
        let mut reg = registry(o);
        let conn = reg.accept();
        Side {
            reg,
            conn,
            t: now(),
        }
    }

    fn send(&mut self, f: &ClientFrame) {
        self.conn
            .handle_frame(self.t, &mut self.reg, f.encode().as_bytes())
            .unwrap();
    }

    fn validate(&mut self, token: &str) {
        self.send(&ClientFrame::Validate {
            token: Some(token.into()),
        });
    }

    fn attach(&mut self, secret: Option<&str>) {
        self.send(&ClientFrame::ConnectExtension {
            source: "S".into(),
            reconnect_secret: secret.map(str::to_owned),
        });
    }

    /// Every transmit so far, text frames as JSON values.
    fn out(&mut self) -> Vec<Out> {
        std::iter::from_fn(|| self.conn.poll_transmit())
            .map(|t| match t {
                ServerTransmit::Text(t) => Out::Json(serde_json::from_str(&t).unwrap()),
                ServerTransmit::Binary(b) => Out::Binary(serde_json::from_slice(&b).unwrap()),
                ServerTransmit::Close { code, reason } => Out::Close(code, reason),
                ServerTransmit::Abort => Out::Abort,
            })
            .collect()
    }

    fn events(&mut self) -> Vec<ServerEvent> {
        std::iter::from_fn(|| self.conn.poll_event())
            .filter(|e| !matches!(e, ServerEvent::Frame { .. }))
            .collect()
    }
}

#[derive(Debug, PartialEq)]
enum Out {
    Json(Value),
    Binary(Value),
    Close(u16, String),
    Abort,
}

fn error_list(status: i64, code: &str) -> impl Fn(&Out) -> bool + '_ {
    move |o| match o {
        Out::Json(v) => v["status"] == status && v["body"][0]["code"] == code,
        _ => false,
    }
}

/// The outcomes of the `connectExtension`s among `events`.
fn outcomes(events: impl IntoIterator<Item = ServerEvent>) -> Vec<ConnectOutcome> {
    events
        .into_iter()
        .filter_map(|e| match e {
            ServerEvent::ConnectAttempt { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect()
}

fn reply(addr: &str, status: i64, body: Option<Value>) -> ClientFrame {
    ClientFrame::QueryReply(QueryReply {
        status: Status(status),
        reply_address: addr.into(),
        body: body.map(Json::from),
    })
}

#[test]
fn token_authentication_accepts_the_token_and_rejects_others_with_an_error_list() {
    let mut s = Side::new(options());
    s.validate("wrong");
    let out = s.out();
    assert_eq!(out.len(), 1);
    assert!(error_list(401, codes::AUTH_FAILED)(&out[0]), "{out:?}");
    assert!(!s.conn.is_authenticated());
    // The socket stays open: the connector may try again.
    s.validate("t");
    let Out::Json(ok) = &s.out()[0] else { panic!() };
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["contentType"], "application/json");
    assert_eq!(ok["body"]["userInfo"]["namespace"], "testkit");
    assert!(s.conn.is_authenticated());
    assert_eq!(
        s.events(),
        [
            ServerEvent::Auth {
                accepted: false,
                username: None
            },
            ServerEvent::Auth {
                accepted: true,
                username: None
            }
        ]
    );
}

#[test]
fn any_token_is_accepted_without_one_configured_and_user_password_is_checked() {
    let mut o = options();
    o.token = None;
    let mut s = Side::new(o);
    s.send(&ClientFrame::Validate { token: None });
    assert!(s.conn.is_authenticated());

    let mut s = Side::new(options());
    s.send(&ClientFrame::Authenticate {
        username: "u".into(),
        password: "bad".into(),
    });
    assert!(error_list(401, codes::AUTH_FAILED)(&s.out()[0]));
    s.send(&ClientFrame::Authenticate {
        username: "u".into(),
        password: "p".into(),
    });
    let Out::Json(ok) = &s.out()[0] else { panic!() };
    assert_eq!(ok["body"]["userInfo"]["username"], "u");
}

#[test]
fn frames_before_authentication_get_401_and_are_anomalies() {
    let mut s = Side::new(options());
    s.attach(Some("x"));
    assert!(error_list(401, codes::NOT_AUTHENTICATED)(&s.out()[0]));
    assert!(matches!(
        &s.events()[..],
        [ServerEvent::Anomaly(AnomalyKind::NotAuthenticated { .. })]
    ));
    assert_eq!(s.reg.holder("S"), None);
}

#[test]
fn connect_extension_is_answered_with_the_configuration_in_the_chosen_framing() {
    let mut o = options();
    o.binary_frames = true;
    o.bookkeeping = true;
    o.status_before_configure = true;
    let mut s = Side::new(o);
    s.validate("t");
    s.attach(Some("S_1"));
    let out = s.out();
    let [Out::Binary(_auth), Out::Binary(ack), Out::Binary(cfg)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(ack, &json!({"status": 200}));
    assert_eq!(cfg["op"], "configureExtension");
    assert_eq!(cfg["resourceId"], "S");
    assert_eq!(cfg["object"], json!({"config": {"rate": 1}}));
    assert_eq!(cfg["isSystemResource"], true);
    assert_eq!(cfg["messageHeaders"], json!({}));
    assert_eq!(cfg["address"].as_str().map(str::len), Some(36));
    assert_eq!(
        s.reg.holder("S"),
        Some(&Holder {
            connection: s.conn.id(),
            secret: Some("S_1".into()),
            configured: true
        })
    );
    assert_eq!(s.conn.source(&s.reg).as_deref(), Some("S"));
}

#[test]
fn unknown_sources_get_404_and_refusals_count_down() {
    let mut s = Side::new(options());
    s.validate("t");
    s.send(&ClientFrame::ConnectExtension {
        source: "Nope".into(),
        reconnect_secret: None,
    });
    assert!(error_list(404, codes::SOURCE_NOT_FOUND)(&s.out()[1]));
    assert!(s.reg.refuse_connects("S", 2));
    assert!(!s.reg.refuse_connects("Nope", 2));
    for _ in 0..2 {
        s.attach(None);
        let out = s.out();
        assert!(error_list(400, codes::NO_ASSOCIATED_STREAM)(&out[0]));
        let Out::Json(v) = &out[0] else { panic!() };
        assert!(
            v["body"][0]["message"]
                .as_str()
                .unwrap()
                .contains("does not have an associated stream")
        );
    }
    s.attach(None);
    let Out::Json(cfg) = &s.out()[0] else {
        panic!()
    };
    assert_eq!(cfg["op"], "configureExtension");
    assert_eq!(
        outcomes(s.events()),
        [
            ConnectOutcome::UnknownSource,
            ConnectOutcome::RefusedNoStream,
            ConnectOutcome::RefusedNoStream,
            ConnectOutcome::Accepted
        ]
    );
}

#[test]
fn the_same_secret_takes_a_held_source_over_and_another_is_refused() {
    let mut s = Side::new(options());
    s.validate("t");
    s.attach(Some("S_a"));
    let first = s.conn.id();

    let mut other = s.reg.accept();
    let t = s.t;
    let send = |c: &mut ServerConnection, reg: &mut Registry, f: ClientFrame| {
        c.handle_frame(t, reg, f.encode().as_bytes()).unwrap();
    };
    send(
        &mut other,
        &mut s.reg,
        ClientFrame::Validate {
            token: Some("t".into()),
        },
    );
    for secret in [None, Some("S_b")] {
        send(
            &mut other,
            &mut s.reg,
            ClientFrame::ConnectExtension {
                source: "S".into(),
                reconnect_secret: secret.map(str::to_owned),
            },
        );
    }
    assert_eq!(s.reg.holder("S").map(|h| h.connection), Some(first));
    assert_eq!(s.reg.poll_event(), None);
    send(
        &mut other,
        &mut s.reg,
        ClientFrame::ConnectExtension {
            source: "S".into(),
            reconnect_secret: Some("S_a".into()),
        },
    );
    assert_eq!(s.reg.holder("S").map(|h| h.connection), Some(other.id()));
    assert_eq!(
        s.reg.poll_event(),
        Some(RegistryEvent::Displaced {
            connection: first,
            source: "S".into(),
            by: other.id()
        })
    );
    assert_eq!(
        outcomes(std::iter::from_fn(|| other.poll_event())),
        [
            ConnectOutcome::RefusedAlreadyConnected,
            ConnectOutcome::RefusedAlreadyConnected,
            ConnectOutcome::TookOver
        ]
    );
    // The displaced connection is dropped; it no longer holds anything to release.
    s.out();
    s.events();
    s.conn.abort(&mut s.reg);
    assert_eq!(s.out(), [Out::Abort]);
    assert_eq!(s.events(), [ServerEvent::Closed]);
    assert_eq!(s.reg.holder("S").map(|h| h.connection), Some(other.id()));
}

#[test]
fn publish_needs_a_configured_source_and_reconnect_required_reconfigures_on_the_same_socket() {
    let mut s = Side::new(options());
    s.validate("t");
    assert_eq!(
        s.conn.publish(&mut s.reg, Json::empty_object()),
        Err(ServerError::NotAttached {
            connection: s.conn.id()
        })
    );
    s.attach(Some("S_1"));
    s.out();
    s.conn
        .publish(&mut s.reg, Json::from(json!({"x": 1})))
        .unwrap();
    assert_eq!(
        s.out(),
        [Out::Json(
            json!({"op":"publish","resourceName":"sources","resourceId":"S","object":{"x":1}})
        )]
    );
    s.conn
        .reconnect_required(&mut s.reg, Some(Json::from(json!({"rate": 2}))))
        .unwrap();
    assert_eq!(
        s.out(),
        [Out::Json(
            json!({"op":"reconnectRequired","resourceName":"sources","resourceId":"S"})
        )]
    );
    assert_eq!(s.reg.holder("S").map(|h| h.configured), Some(false));
    // Publish and query wait for the next connectExtension.
    assert!(s.conn.publish(&mut s.reg, Json::empty_object()).is_err());
    assert!(
        s.conn
            .query(
                s.t,
                &mut s.reg,
                Json::empty_object(),
                Duration::from_secs(1)
            )
            .is_err()
    );
    s.attach(Some("S_1"));
    let Out::Json(cfg) = &s.out()[0] else {
        panic!()
    };
    assert_eq!(cfg["object"]["config"], json!({"rate": 2}));
    assert_eq!(s.reg.holder("S").map(|h| h.configured), Some(true));
}

#[test]
fn queries_collect_partials_and_end_with_their_terminal_reply_on_any_socket() {
    let mut s = Side::new(options());
    s.validate("t");
    s.attach(None);
    s.out();
    let t = s.t;
    let timeout = Duration::from_secs(10);
    let a = s
        .conn
        .query(t, &mut s.reg, Json::from(json!({"q": 1})), timeout)
        .unwrap();
    let b = s
        .conn
        .query(t, &mut s.reg, Json::empty_object(), timeout)
        .unwrap();
    let c = s
        .conn
        .query(t, &mut s.reg, Json::empty_object(), timeout)
        .unwrap();
    assert_ne!(a, b);
    let out = s.out();
    let Out::Json(q) = &out[0] else { panic!() };
    assert_eq!(q["messageHeaders"]["REPLY_ADDR_HEADER"], a.as_str());
    assert_eq!(q["object"], json!({"q": 1}));
    assert_eq!(s.reg.queries_in_flight(), 3);
    assert_eq!(s.reg.poll_timeout(), Some(t + timeout));

    s.send(&reply(&a, 100, Some(json!([{"i": 0}, {"i": 1}]))));
    s.send(&reply(&b, 204, None));
    s.send(&reply(&a, 200, Some(json!({"i": 2}))));
    let RegistryEvent::QueryFinished(rb) = s.reg.poll_event().unwrap() else {
        panic!()
    };
    assert_eq!((rb.status, rb.rows.len()), (Status::NO_CONTENT, 0));
    let RegistryEvent::QueryFinished(ra) = s.reg.poll_event().unwrap() else {
        panic!()
    };
    assert_eq!(ra.rows, [json!({"i": 0}), json!({"i": 1}), json!({"i": 2})]);
    assert_eq!(
        (ra.status, ra.partial_count(), ra.source.as_str()),
        (Status::OK, 1, "S")
    );

    // An error reply arriving on another socket still ends its query.
    let mut other = s.reg.accept();
    let validate = ClientFrame::Validate {
        token: Some("t".into()),
    };
    other
        .handle_frame(t, &mut s.reg, validate.encode().as_bytes())
        .unwrap();
    let err = json!({"messageCode": "e.c", "messageTemplate": "bad {0}", "parameters": ["x"]});
    other
        .handle_frame(t, &mut s.reg, reply(&c, 400, Some(err)).encode().as_bytes())
        .unwrap();
    let RegistryEvent::QueryFinished(rc) = s.reg.poll_event().unwrap() else {
        panic!()
    };
    assert_eq!(rc.error().map(|e| e.code), Some("e.c".into()));
    let other_events: Vec<ServerEvent> = std::iter::from_fn(|| other.poll_event())
        .filter(|e| !matches!(e, ServerEvent::Frame { .. } | ServerEvent::Auth { .. }))
        .collect();
    assert!(
        matches!(
            &other_events[..],
            [ServerEvent::Anomaly(AnomalyKind::NotAttached { .. })]
        ),
        "{other_events:?}"
    );

    // A late reply is an anomaly.
    s.events();
    s.send(&reply(&a, 200, Some(json!({}))));
    assert!(matches!(
        &s.events()[..],
        [ServerEvent::Anomaly(
            AnomalyKind::UnknownReplyAddress { .. }
        )]
    ));
    assert_eq!(s.reg.queries_in_flight(), 0);
    assert_eq!(s.reg.poll_timeout(), None);
}

#[test]
fn a_query_without_a_terminal_reply_times_out_at_its_deadline() {
    let mut s = Side::new(options());
    s.validate("t");
    s.attach(None);
    let t = s.t;
    let a = s
        .conn
        .query(t, &mut s.reg, Json::empty_object(), Duration::from_secs(2))
        .unwrap();
    let b = s
        .conn
        .query(t, &mut s.reg, Json::empty_object(), Duration::from_secs(1))
        .unwrap();
    s.send(&reply(&a, 100, Some(json!({"i": 0}))));
    s.reg.handle_timeout(t + Duration::from_millis(999));
    assert_eq!(s.reg.poll_event(), None);
    s.reg.handle_timeout(t + Duration::from_secs(5));
    let timed_out: Vec<(String, usize)> = std::iter::from_fn(|| s.reg.poll_event())
        .map(|e| match e {
            RegistryEvent::QueryTimedOut(r) => (r.reply_address, r.parts.len()),
            other => panic!("{other:?}"),
        })
        .collect();
    // Oldest deadline first; what came so far is kept.
    assert_eq!(timed_out, [(b, 0), (a, 1)]);
    assert_eq!(s.reg.poll_timeout(), None);
}

#[test]
fn notifications_are_acknowledged_and_checked_against_the_held_source() {
    let mut o = options();
    o.ack_query_replies = true;
    let mut s = Side::new(o);
    s.validate("t");
    let note = |source: &str| ClientFrame::Notification {
        source: source.into(),
        object: Json::from(json!({"n": 1})),
    };
    s.send(&note("S"));
    assert!(error_list(400, codes::NOT_ATTACHED)(&s.out()[1]));
    s.attach(None);
    s.out();
    s.events();
    s.send(&note("S"));
    assert_eq!(s.out(), [Out::Json(json!({"status": 200}))]);
    s.send(&note("Other"));
    assert!(error_list(400, codes::WRONG_SOURCE)(&s.out()[0]));
    s.send(&reply("nobody", 200, None));
    assert_eq!(s.out(), [Out::Json(json!({"status": 200}))]);
    let events = s.events();
    assert_eq!(
        events[0],
        ServerEvent::Notification {
            source: "S".into(),
            object: Json::from(json!({"n": 1}))
        }
    );
    assert_eq!(
        events[1],
        ServerEvent::Anomaly(AnomalyKind::WrongSource {
            attached: "S".into(),
            named: "Other".into()
        })
    );
}

#[test]
fn bad_frames_are_errors_and_anomalies_and_the_session_goes_on() {
    let mut s = Side::new(options());
    for bad in [&b"not json"[..], b"[1]", b"{\"op\":7}", b"\xff\xfe", b""] {
        assert!(s.conn.handle_frame(s.t, &mut s.reg, bad).is_err());
    }
    s.send(&ClientFrame::Unknown {
        op: "mystery".into(),
    });
    let events = s.events();
    assert_eq!(events.len(), 6);
    assert!(matches!(
        &events[0],
        ServerEvent::Anomaly(AnomalyKind::BadFrame { text, .. }) if text == "not json"
    ));
    assert!(matches!(
        &events[5],
        ServerEvent::Anomaly(AnomalyKind::NotAuthenticated { .. })
    ));
    s.validate("t");
    assert!(s.conn.is_authenticated());
}

#[test]
fn closes_release_the_source_at_once_and_end_the_connection() {
    // A close with a chosen code.
    let mut s = Side::new(options());
    s.validate("t");
    s.attach(None);
    s.out();
    s.events();
    s.conn.close(&mut s.reg, 1001, "going away");
    assert_eq!(s.out(), [Out::Close(1001, "going away".into())]);
    assert_eq!(s.reg.holder("S"), None);
    assert_eq!(s.events(), [ServerEvent::Detached { source: "S".into() }]);
    // Frames still in flight are ignored, but notifications the connector wrote before it
    // read the close frame are kept (and not acknowledged: nothing follows a close frame).
    s.send(&ClientFrame::Validate { token: None });
    assert!(s.out().is_empty());
    s.send(&ClientFrame::Notification {
        source: "S".into(),
        object: Json::from_string("{\"late\":1}".into()).unwrap(),
    });
    assert!(s.out().is_empty());
    assert!(matches!(
        &s.events()[..],
        [ServerEvent::Notification { source, object }] if source == "S" && object.as_str() == "{\"late\":1}"
    ));
    assert!(s.conn.send_raw(RawFrame::Text("x".into())).is_err());
    s.conn.handle_closed(s.t, &mut s.reg);
    assert_eq!(s.events(), [ServerEvent::Closed]);
    assert!(s.conn.is_closed());

    // The connector closes.
    let mut s = Side::new(options());
    s.validate("t");
    s.attach(None);
    s.events();
    s.conn
        .handle_close_frame(s.t, &mut s.reg, Some(1000), "Closed by client");
    s.conn.handle_closed(s.t, &mut s.reg);
    assert_eq!(
        s.events(),
        [
            ServerEvent::PeerClosed {
                code: Some(1000),
                reason: "Closed by client".into(),
                source: Some("S".into())
            },
            ServerEvent::Detached { source: "S".into() },
            ServerEvent::Closed
        ]
    );
    assert_eq!(s.reg.holder("S"), None);
}

#[test]
fn a_flapping_source_is_dropped_right_after_its_configuration() {
    let mut s = Side::new(options());
    assert!(s.reg.set_flapping("S", true));
    s.validate("t");
    s.attach(None);
    let out = s.out();
    assert!(
        matches!(&out[..], [Out::Json(_), Out::Json(cfg), Out::Abort] if cfg["op"] == "configureExtension")
    );
    assert!(s.conn.is_closed());
    assert_eq!(s.reg.holder("S"), None);
}

#[test]
fn raw_frames_go_out_as_given() {
    let mut s = Side::new(options());
    s.conn.send_raw(RawFrame::from(&b"\xff"[..])).unwrap();
    s.conn.send_raw(RawFrame::from("{")).unwrap();
    assert_eq!(
        s.conn.poll_transmit(),
        Some(ServerTransmit::Binary(vec![0xff]))
    );
    assert_eq!(
        s.conn.poll_transmit(),
        Some(ServerTransmit::Text("{".into()))
    );
}

#[test]
fn frames_are_reported_with_their_source_and_options_are_not_leaked_by_debug() {
    let mut s = Side::new(options());
    s.validate("t");
    s.attach(Some("S_1"));
    let frames: Vec<Option<String>> = std::iter::from_fn(|| s.conn.poll_event())
        .filter_map(|e| match e {
            ServerEvent::Frame { source, .. } => Some(source),
            _ => None,
        })
        .collect();
    assert_eq!(frames, [None, Some("S".into())]);
    let dbg = format!("{:?}", options());
    assert!(!dbg.contains("\"t\"") && !dbg.contains("\"p\""), "{dbg}");
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut s = Side::new(options());
    s.validate("t");
    s.attach(None);
    let mut rng = crate::Rng::new(9);
    for _ in 0..2_000 {
        let n = (rng.next_u64() % 40) as usize;
        let bytes: Vec<u8> = (0..n).map(|_| (rng.next_u64() % 128) as u8).collect();
        let _ = s.conn.handle_frame(s.t, &mut s.reg, &bytes);
    }
    for text in [
        r#"{"status":"x","headers":{"X-Reply-Address":1}}"#,
        r#"{"op":"notification","resourceId":null,"object":[]}"#,
        r#"{"op":"connectExtension","resourceId":"S","parameters":[1]}"#,
    ] {
        let _ = s.conn.handle_frame(s.t, &mut s.reg, text.as_bytes());
    }
    let _ = (s.out(), s.events());
    let _ = ServerFrame::Unknown { op: "x".into() };
}
