//! Micro-benchmarks of the core's frame handling against bare `serde_json`.
//!
//! Every group is one frame; the functions are:
//! * `sdk`: the SDK's own path — `ServerFrame::decode` for an inbound frame,
//!   `ClientFrame::encode` for an outbound one;
//! * `sdk_conn`: what a connector really runs — `Connection::handle_frame` + `poll_event` for
//!   an inbound publish, `Connection::notify`/`respond` + `poll_transmit` for an outbound
//!   notification or reply, on a configured connection;
//! * `serde_value`: `serde_json::from_slice::<Value>` of the same bytes, or
//!   `serde_json::to_string` of an equivalent `Value`;
//! * `serde_struct`: the same through borrowed serde structs (what a hand-written client
//!   such as the benchmark's `raw-echo` does: `&str` and `&RawValue` fields).
//!
//! `scripts/bench.sh` runs this and tabulates the medians in `BENCHMARKS.md`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use vantiq_proto::frame::{ClientFrame, QueryReply, ServerFrame};
use vantiq_proto::{
    Connection, ConnectionConfig, Credentials, Event, Json, QueryError, QueryId, Reply, Secret,
    Status, TargetUrl, Transmit,
};

// ---- inbound frames (server → connector) --------------------------------------------------

const AUTH_REPLY: &str = r#"{"status":200,"contentType":"application/json","body":{"anonymous":false,"userInfo":{"accessToken":"b5s0Yc7vZz3cWq1mJ9kT2dQ8xR4aL6nP0eF3gH5iJ7k=","idToken":"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjb25uZWN0b3IiLCJpYXQiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl","username":"connector","preferredUsername":"connector","namespace":"demo","homeNamespace":"demo","createdBy":"admin","userType":"node","profiles":["system.user"]}}}"#;

const CONFIGURE: &str = r#"{"op":"configureExtension","resourceName":"sources","resourceId":"MySource","object":{"config":{"mySection":{"pollRate":5,"tables":["a","b"],"packageRows":"true"}}},"isSystemResource":true,"parameters":{},"contentType":"application/json","skipMonitoring":false,"isExternal":false,"address":"d15cf6b0-8a1f-11e8-b880-48152d44a589","messageHeaders":{}}"#;

const PUBLISH: &str = r#"{"op":"publish","resourceName":"sources","resourceId":"MySource","object":{"hello":"world","temp":21.5,"ok":true}}"#;

const QUERY: &str = r#"{"op":"query","resourceName":"sources","resourceId":"MySource","messageHeaders":{"REPLY_ADDR_HEADER":"d15cf6b0-8a1f-11e8-b880-48152d44a589"},"object":{"rows":3,"table":"t"}}"#;

/// A hand-written client's view of an inbound frame.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Incoming<'a> {
    #[serde(borrow, default)]
    op: Option<&'a str>,
    #[serde(default)]
    status: Option<i64>,
    #[serde(borrow, default, rename = "resourceId")]
    resource_id: Option<&'a str>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "messageHeaders")]
    message_headers: Option<MessageHeaders<'a>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct MessageHeaders<'a> {
    #[serde(borrow, default, rename = "REPLY_ADDR_HEADER")]
    reply: Option<&'a str>,
}

fn configured() -> (Connection, Instant) {
    let url = TargetUrl::parse("http://localhost:8080").unwrap();
    let creds = Credentials::Token(Secret::new("my-token"));
    let mut cfg = ConnectionConfig::new("MySource", url, creds, 42);
    cfg.keepalive = None;
    let now = Instant::now();
    let mut conn = Connection::new(cfg, now);
    assert!(matches!(
        conn.poll_transmit(true),
        Some(Transmit::Connect { .. })
    ));
    conn.handle_open(now);
    assert!(matches!(conn.poll_transmit(true), Some(Transmit::Frame(_))));
    conn.handle_frame(now, AUTH_REPLY.as_bytes()).unwrap();
    assert!(matches!(conn.poll_transmit(true), Some(Transmit::Frame(_))));
    conn.handle_frame(now, CONFIGURE.as_bytes()).unwrap();
    assert!(matches!(conn.poll_event(), Some(Event::Configured { .. })));
    (conn, now)
}

fn decode(c: &mut Criterion) {
    for (name, text) in [
        ("auth_reply", AUTH_REPLY),
        ("configure", CONFIGURE),
        ("publish", PUBLISH),
        ("query", QUERY),
    ] {
        let bytes = text.as_bytes();
        let mut g = c.benchmark_group(format!("decode_{name}"));
        g.bench_function("sdk", |b| {
            b.iter(|| ServerFrame::decode(black_box(bytes)).unwrap());
        });
        g.bench_function("serde_value", |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(bytes)).unwrap());
        });
        g.bench_function("serde_struct", |b| {
            b.iter(|| {
                let f: Incoming<'_> = serde_json::from_slice(black_box(bytes)).unwrap();
                black_box(f.object.map(|o| o.get().len()))
            });
        });
        if name == "publish" {
            let (mut conn, now) = configured();
            g.bench_function("sdk_conn", |b| {
                b.iter(|| {
                    conn.handle_frame(now, black_box(bytes)).unwrap();
                    conn.poll_event().unwrap()
                });
            });
        }
        g.finish();
    }
}

// ---- outbound frames (connector → server) -------------------------------------------------

const SOURCE: &str = "MySource";
const ADDR: &str = "d15cf6b0-8a1f-11e8-b880-48152d44a589";
const NOTE: &str =
    r#"{"seq":12345,"payload":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
const ROWS: &str = r#"[{"i":0,"name":"alpha"},{"i":1,"name":"beta"},{"i":2,"name":"gamma"}]"#;

#[derive(Serialize)]
struct Request<'a> {
    op: &'static str,
    #[serde(rename = "resourceName")]
    resource_name: &'static str,
    #[serde(rename = "resourceId", skip_serializing_if = "Option::is_none")]
    resource_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ConnectParams<'a>>,
}

#[derive(Serialize)]
struct ConnectParams<'a> {
    #[serde(rename = "reconnectSecret")]
    reconnect_secret: &'a str,
}

#[derive(Serialize)]
struct ReplyOut<'a, B: Serialize> {
    status: u16,
    headers: ReplyHeaders<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<B>,
}

#[derive(Serialize)]
struct ReplyHeaders<'a> {
    #[serde(rename = "X-Reply-Address")]
    address: &'a str,
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).unwrap()
}

fn json(text: &str) -> Json {
    Json::from_string(text.to_owned()).unwrap()
}

fn value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

fn reply_value(status: u16, body: Option<serde_json::Value>) -> serde_json::Value {
    let mut v = serde_json::json!({"status": status, "headers": {"X-Reply-Address": ADDR}});
    if let Some(b) = body {
        v["body"] = b;
    }
    v
}

fn query_error() -> QueryError {
    QueryError::new("echo.error", "Echo error: {0}", ["boom"])
}

/// A configured connection and a supply of open queries for `respond`.
struct Responder {
    conn: Connection,
    now: Instant,
}

impl Responder {
    fn new() -> RefCell<Self> {
        let (conn, now) = configured();
        RefCell::new(Responder { conn, now })
    }

    fn open_query(&mut self) -> QueryId {
        self.conn.handle_frame(self.now, QUERY.as_bytes()).unwrap();
        match self.conn.poll_event() {
            Some(Event::Query { id, .. }) => id,
            other => panic!("{other:?}"),
        }
    }
}

fn encode_reply(c: &mut Criterion, name: &str, status: u16, reply: &dyn Fn() -> Reply) {
    let body: Option<String> = match reply() {
        Reply::Partial(j) | Reply::Complete(j) => Some(j.as_str().to_owned()),
        Reply::Empty => None,
        Reply::Error(e) => Some(e.to_json().as_str().to_owned()),
    };
    let mut g = c.benchmark_group(format!("encode_{name}"));
    let frame = ClientFrame::QueryReply(QueryReply {
        status: Status(i64::from(status)),
        reply_address: ADDR.to_owned(),
        body: body.as_deref().map(json),
    });
    g.bench_function("sdk", |b| b.iter(|| black_box(&frame).encode()));
    let r = Responder::new();
    if status == 100 {
        // A partial reply leaves the query open: answer the same query again and again.
        let id = r.borrow_mut().open_query();
        g.bench_function("sdk_conn", |b| {
            b.iter_batched(
                reply,
                |rep| {
                    let mut r = r.borrow_mut();
                    r.conn.respond(id, rep).unwrap();
                    r.conn.poll_transmit(true).unwrap()
                },
                BatchSize::SmallInput,
            );
        });
    } else {
        // Batches of 64 open queries: the connection's query map stays as large as with 64
        // queries in flight (a huge batch would measure a huge map instead).
        g.bench_function("sdk_conn", |b| {
            b.iter_batched(
                || (r.borrow_mut().open_query(), reply()),
                |(id, rep)| {
                    let mut r = r.borrow_mut();
                    r.conn.respond(id, rep).unwrap();
                    r.conn.poll_transmit(true).unwrap()
                },
                BatchSize::NumIterations(64),
            );
        });
    }
    let v = reply_value(status, body.as_deref().map(value));
    g.bench_function("serde_value", |b| {
        b.iter(|| serde_json::to_string(black_box(&v)).unwrap());
    });
    match reply() {
        Reply::Error(e) => {
            g.bench_function("serde_struct", |b| {
                b.iter(|| {
                    let f = ReplyOut {
                        status,
                        headers: ReplyHeaders { address: ADDR },
                        body: Some(black_box(&e)),
                    };
                    serde_json::to_string(&f).unwrap()
                });
            });
        }
        _ => {
            let body = body.as_deref().map(raw);
            g.bench_function("serde_struct", |b| {
                b.iter(|| {
                    let f = ReplyOut {
                        status,
                        headers: ReplyHeaders { address: ADDR },
                        body: black_box(body.as_deref()),
                    };
                    serde_json::to_string(&f).unwrap()
                });
            });
        }
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    // notification
    {
        let mut g = c.benchmark_group("encode_notification");
        let frame = ClientFrame::Notification {
            source: SOURCE.to_owned(),
            object: json(NOTE),
        };
        g.bench_function("sdk", |b| b.iter(|| black_box(&frame).encode()));
        let (mut conn, _) = configured();
        let note = json(NOTE);
        g.bench_function("sdk_conn", |b| {
            b.iter_batched(
                || note.clone(),
                |n| {
                    conn.notify(n).unwrap();
                    conn.poll_transmit(true).unwrap()
                },
                BatchSize::SmallInput,
            );
        });
        let v = serde_json::json!({"op": "notification", "resourceName": "sources", "resourceId": SOURCE, "object": value(NOTE)});
        g.bench_function("serde_value", |b| {
            b.iter(|| serde_json::to_string(black_box(&v)).unwrap());
        });
        let obj = raw(NOTE);
        g.bench_function("serde_struct", |b| {
            b.iter(|| {
                let f = Request {
                    op: "notification",
                    resource_name: "sources",
                    resource_id: Some(black_box(SOURCE)),
                    object: Some(black_box(&obj)),
                    parameters: None,
                };
                serde_json::to_string(&f).unwrap()
            });
        });
        g.finish();
    }
    encode_reply(c, "reply_100", 100, &|| Reply::Partial(json(ROWS)));
    encode_reply(c, "reply_200", 200, &|| Reply::Complete(json(ROWS)));
    encode_reply(c, "reply_204", 204, &|| Reply::Empty);
    encode_reply(c, "reply_400", 400, &|| Reply::Error(query_error()));
    // connectExtension
    {
        let mut g = c.benchmark_group("encode_connect_extension");
        let frame = ClientFrame::ConnectExtension {
            source: SOURCE.to_owned(),
            reconnect_secret: Some("MySource_6f1c2a9e-0d4b-4c8a-9e1f-3b5d7a9c1e2f".to_owned()),
        };
        g.bench_function("sdk", |b| b.iter(|| black_box(&frame).encode()));
        let v = serde_json::json!({"op": "connectExtension", "resourceName": "sources", "resourceId": SOURCE,
            "parameters": {"reconnectSecret": "MySource_6f1c2a9e-0d4b-4c8a-9e1f-3b5d7a9c1e2f"}});
        g.bench_function("serde_value", |b| {
            b.iter(|| serde_json::to_string(black_box(&v)).unwrap());
        });
        g.bench_function("serde_struct", |b| {
            b.iter(|| {
                let f = Request {
                    op: "connectExtension",
                    resource_name: "sources",
                    resource_id: Some(black_box(SOURCE)),
                    object: None,
                    parameters: Some(ConnectParams {
                        reconnect_secret: black_box(
                            "MySource_6f1c2a9e-0d4b-4c8a-9e1f-3b5d7a9c1e2f",
                        ),
                    }),
                };
                serde_json::to_string(&f).unwrap()
            });
        });
        g.finish();
    }
    // validate
    {
        let mut g = c.benchmark_group("encode_validate");
        let token = "b5s0Yc7vZz3cWq1mJ9kT2dQ8xR4aL6nP0eF3gH5iJ7k=";
        let frame = ClientFrame::Validate {
            token: Some(token.to_owned()),
        };
        g.bench_function("sdk", |b| b.iter(|| black_box(&frame).encode()));
        let v = serde_json::json!({"op": "validate", "resourceName": "system.credentials", "object": token});
        g.bench_function("serde_value", |b| {
            b.iter(|| serde_json::to_string(black_box(&v)).unwrap());
        });
        #[derive(Serialize)]
        struct Validate<'a> {
            op: &'static str,
            #[serde(rename = "resourceName")]
            resource_name: &'static str,
            object: &'a str,
        }
        g.bench_function("serde_struct", |b| {
            b.iter(|| {
                serde_json::to_string(&Validate {
                    op: "validate",
                    resource_name: "system.credentials",
                    object: black_box(token),
                })
                .unwrap()
            });
        });
        g.finish();
    }
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
