//! The `driver_frames` fuzz target: arbitrary server behaviour against the real driver.
//!
//! A [`ConnectorSet`] with one source runs on [`MemRuntime`]; the fuzz body plays the
//! server on the other end of each in-memory connection: the WebSocket handshake (server
//! role), then a script decoded from the input — authentication replies, configurations,
//! publishes, queries, reconnectRequired, status frames, raw text and binary frames, pings,
//! close frames, raw bytes under the WebSocket layer, frames over the size limit, abrupt
//! drops — over up to [`MAX_CONNECTIONS`] connections, then a shutdown. It checks that
//! nothing panics and that `run()` returns (Ok, or the fatal error of a rejected token)
//! within [`RUN_BOUND`].
//!
//! Input layout: byte 0 holds flags (bit 0: JSON in binary frames; bit 1: answer
//! `validate` and `connectExtension` on every connection before its script; bit 2: 10 ms
//! pings; bits 3–4: pipe capacity 1 KiB / 4 KiB / 64 KiB / 1 MiB; bit 5: refuse the first
//! connection). Then operations, each an op byte (`op % 16`, see [`Op`]) and its operands.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use futures_util::StreamExt as _;
use serde_json::json;
use vantiq_connector::{
    ConnectorError, ConnectorSet, FatalError, Handler, HandlerResult, Json, KeepAlive, Query,
    QueryError, ServerConfig, ShutdownHandle, Source,
};

use crate::mem::{Duplex, MemRuntime};

/// Longest a run may take before it counts as a hang.
pub const RUN_BOUND: Duration = Duration::from_secs(10);
/// Connections the script plays at most (later ones get a well-behaved server).
pub const MAX_CONNECTIONS: usize = 8;
/// The connector's incoming message limit.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A server action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// 0: a successful authentication reply.
    AuthOk,
    /// 1: a rejected authentication (fatal for the connector).
    AuthFail,
    /// 2: `configureExtension` with this configuration text.
    Configure(String),
    /// 3: `publish` with this object text.
    Publish(String),
    /// 4: `query` with a reply address number and parameters text.
    Query(u8, String),
    /// 5: a text frame, as given.
    Text(String),
    /// 6: a binary frame, as given.
    Binary(Vec<u8>),
    /// 7: `reconnectRequired`.
    ReconnectRequired,
    /// 8: a close frame with this code; the connection then ends.
    Close(u16),
    /// 9: the connection is dropped abruptly.
    Drop,
    /// 10: a ping with this payload.
    Ping(Vec<u8>),
    /// 11: an op-less status frame with this status and body text.
    Status(u16, String),
    /// 12: raw bytes under the WebSocket layer.
    Raw(Vec<u8>),
    /// 13: a text frame this many bytes over the connector's limit.
    Oversize(u16),
    /// 14: this many publishes at once.
    Burst(u8),
    /// 15: wait until the connector has been quiet for 2 ms (at most 100 ms).
    Settle,
}

/// A decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// JSON frames are binary.
    pub binary: bool,
    /// Answer `validate` and `connectExtension` on every connection before its script.
    pub handshake: bool,
    /// 10 ms pings, 50 ms pong deadline.
    pub fast_pings: bool,
    /// Bytes buffered each way by a connection.
    pub capacity: usize,
    /// Drop the first connection before the WebSocket handshake.
    pub refuse_first: bool,
    /// The operations, across connections (a `Close` or `Drop` ends one).
    pub ops: Vec<Op>,
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }

    fn blob(&mut self) -> Vec<u8> {
        let n = usize::from(self.byte());
        self.take(n)
    }

    fn text(&mut self) -> String {
        String::from_utf8_lossy(&self.blob()).into_owned()
    }

    /// A JSON-ish value: mostly well-formed templates, sometimes raw text.
    fn value(&mut self) -> String {
        let t = self.byte();
        match t % 8 {
            0 => "{}".to_owned(),
            1 => format!(r#"{{"k":{}}}"#, self.byte()),
            2 => format!(r#"{{"rows":{},"chunk":{}}}"#, self.byte(), self.byte()),
            3 => "[1,2,3]".to_owned(),
            4 => ["null", "true", "42", r#""text""#, "1e999", "-0"][usize::from(t / 8 % 6)]
                .to_owned(),
            5 => {
                let depth = usize::from(self.byte()) * 4;
                format!("{}{}", "[".repeat(depth), "]".repeat(depth))
            }
            6 => format!(r#"{{"s":{}}}"#, serde_json::Value::String(self.text())),
            _ => self.text(),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Script {
    /// Decodes an input (every input decodes).
    pub fn decode(data: &[u8]) -> Script {
        let mut b = Bytes(data);
        let flags = b.byte();
        let mut ops = Vec::new();
        while !b.is_empty() && ops.len() < 256 {
            let op = match b.byte() % 16 {
                0 => Op::AuthOk,
                1 => Op::AuthFail,
                2 => Op::Configure(b.value()),
                3 => Op::Publish(b.value()),
                4 => Op::Query(b.byte(), b.value()),
                5 => Op::Text(b.text()),
                6 => Op::Binary(b.blob()),
                7 => Op::ReconnectRequired,
                8 => Op::Close(u16::from_be_bytes([b.byte(), b.byte()])),
                9 => Op::Drop,
                10 => {
                    let n = usize::from(b.byte() % 126);
                    Op::Ping(b.take(n))
                }
                11 => Op::Status(u16::from_be_bytes([b.byte(), b.byte()]), b.value()),
                12 => Op::Raw(b.blob()),
                13 => Op::Oversize(u16::from(b.byte()) * 16 + 1),
                14 => Op::Burst(b.byte() % 64),
                _ => Op::Settle,
            };
            ops.push(op);
        }
        Script {
            binary: flags & 1 != 0,
            handshake: flags & 2 != 0,
            fast_pings: flags & 4 != 0,
            capacity: [1 << 10, 4 << 10, 64 << 10, 1 << 20][usize::from(flags >> 3 & 3)],
            refuse_first: flags & 32 != 0,
            ops,
        }
    }
}

/// The handler under fuzz: notifies, echoes and answers queries in every way there is.
struct FuzzHandler;

fn rows(n: u64) -> serde_json::Value {
    (0..n).map(|i| json!({ "i": i })).collect()
}

impl Handler for FuzzHandler {
    async fn on_connect(&self, source: &Source, _config: Json) -> HandlerResult {
        source.notify(&json!({ "connected": true })).await?;
        Ok(())
    }

    async fn on_publish(&self, source: &Source, message: Json) -> HandlerResult {
        source.notify_json(message).await?;
        Ok(())
    }

    async fn on_query(&self, _source: &Source, mut query: Query) -> HandlerResult {
        // Parameters with no tree form (nested too deep) read as none.
        let p = query.params().to_value().unwrap_or_default();
        let n = p.get("rows").and_then(|v| v.as_u64()).unwrap_or(1).min(40);
        let how = p.get("chunk").and_then(|v| v.as_u64()).unwrap_or(0) % 6;
        match how {
            0 => query.complete(&rows(n)).await?,
            1 => {
                query.partial(&rows(1)).await?;
                query.complete(&rows(n)).await?;
            }
            2 => {
                query
                    .error(QueryError::new("fuzz.error", "fuzz {0}", [n]))
                    .await?;
            }
            3 => query.empty().await?,
            4 => drop(query),
            _ => {
                query.set_chunk_bytes(256);
                query.stream((0..n).map(|i| json!({ "i": i }))).await?;
            }
        }
        Ok(())
    }
}

fn json_frame(binary: bool, text: String) -> Message {
    if binary {
        Message::binary(text.into_bytes())
    } else {
        Message::text(text)
    }
}

/// What the server side saw in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Connections the connector opened.
    pub connections: usize,
    /// Text or binary frames the connector sent (after the WebSocket handshake).
    pub frames: usize,
    /// Of those, notifications.
    pub notifications: usize,
    /// Of those, query replies.
    pub replies: usize,
    /// Close frames the connector sent.
    pub closes: usize,
}

impl Observed {
    fn record(&mut self, msg: &Message) {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                self.frames += 1;
                let data = msg.clone().into_data();
                match vantiq_proto::frame::ClientFrame::decode(&data) {
                    Ok(vantiq_proto::frame::ClientFrame::Notification { .. }) => {
                        self.notifications += 1;
                    }
                    Ok(vantiq_proto::frame::ClientFrame::QueryReply(_)) => self.replies += 1,
                    _ => {}
                }
            }
            Message::Close(_) => self.closes += 1,
            _ => {}
        }
    }
}

/// Waits until the connector has sent nothing for 2 ms, or 100 ms have passed.
async fn settle(seen: &std::cell::RefCell<Observed>) {
    let give_up = std::time::Instant::now() + Duration::from_millis(100);
    let mut last = seen.borrow().frames;
    loop {
        async_io::Timer::after(Duration::from_millis(2)).await;
        let now = seen.borrow().frames;
        if now == last || std::time::Instant::now() >= give_up {
            return;
        }
        last = now;
    }
}

/// What a scripted connection came to.
enum Ended {
    /// The script ended the connection (or the connector did); play the next one.
    Connection,
    /// The script is over.
    Script,
}

/// Plays `ops` (from `*next`) on one connection.
async fn play(
    pipe: Duplex,
    script: &Script,
    next: &mut usize,
    stop: &ShutdownHandle,
    seen: &std::cell::RefCell<Observed>,
) -> Ended {
    let control = pipe.control();
    let Ok(ws) = async_tungstenite::accept_async(pipe).await else {
        return Ended::Connection;
    };
    let (mut tx, mut rx) = ws.split();
    let binary = script.binary;
    let frame = move |text: String| json_frame(binary, text);
    let writer = async {
        if script.handshake {
            let _ = tx
                .send(frame(r#"{"status":200,"body":{"anonymous":false}}"#.into()))
                .await;
            let _ = tx
                .send(frame(
                    r#"{"op":"configureExtension","resourceName":"sources","resourceId":"s1","object":{"config":{}}}"#.into(),
                ))
                .await;
        }
        while let Some(op) = script.ops.get(*next) {
            *next += 1;
            let _ = match op {
                Op::AuthOk => {
                    tx.send(frame(r#"{"status":200,"body":{"anonymous":false}}"#.into()))
                        .await
                }
                Op::AuthFail => {
                    tx.send(frame(
                        r#"{"status":401,"body":[{"code":"io.vantiq.authentication.failed","message":"no","params":[]}]}"#.into(),
                    ))
                    .await
                }
                Op::Configure(c) => {
                    tx.send(frame(format!(
                        r#"{{"op":"configureExtension","resourceName":"sources","resourceId":"s1","object":{{"config":{c}}}}}"#
                    )))
                    .await
                }
                Op::Publish(o) => {
                    tx.send(frame(format!(
                        r#"{{"op":"publish","resourceId":"s1","object":{o}}}"#
                    )))
                    .await
                }
                Op::Query(addr, p) => {
                    tx.send(frame(format!(
                        r#"{{"op":"query","resourceId":"s1","messageHeaders":{{"REPLY_ADDR_HEADER":"r{addr}"}},"object":{p}}}"#
                    )))
                    .await
                }
                Op::Text(t) => tx.send(Message::text(t.clone())).await,
                Op::Binary(b) => tx.send(Message::binary(b.clone())).await,
                Op::ReconnectRequired => {
                    tx.send(frame(
                        r#"{"op":"reconnectRequired","resourceId":"s1"}"#.into(),
                    ))
                    .await
                }
                Op::Close(code) => {
                    let _ = tx
                        .send(Message::Close(Some(CloseFrame {
                            code: (*code).into(),
                            reason: "fuzz".into(),
                        })))
                        .await;
                    return Ended::Connection;
                }
                Op::Drop => return Ended::Connection,
                Op::Ping(p) => tx.send(Message::Ping(p.clone().into())).await,
                Op::Status(s, body) => {
                    tx.send(frame(format!(r#"{{"status":{s},"body":{body}}}"#)))
                        .await
                }
                Op::Raw(bytes) => {
                    control.inject(bytes);
                    Ok(())
                }
                Op::Oversize(over) => {
                    let n = MAX_MESSAGE + usize::from(*over);
                    tx.send(Message::text("x".repeat(n))).await
                }
                Op::Burst(n) => {
                    let mut r = Ok(());
                    for i in 0..*n {
                        r = tx
                            .send(frame(format!(
                                r#"{{"op":"publish","resourceId":"s1","object":{{"n":{i}}}}}"#
                            )))
                            .await;
                    }
                    r
                }
                Op::Settle => {
                    settle(seen).await;
                    Ok(())
                }
            };
        }
        // The script is over: let the connector finish reacting, stop it and serve this
        // connection until it closes.
        settle(seen).await;
        stop.shutdown();
        std::future::pending::<()>().await;
        Ended::Script
    };
    let reader = async {
        while let Some(Ok(msg)) = rx.next().await {
            seen.borrow_mut().record(&msg);
        }
        Ended::Connection
    };
    futures_lite::future::or(writer, reader).await
}

/// A well-behaved server for the connections after the script.
async fn serve_well(pipe: Duplex, binary: bool, seen: &std::cell::RefCell<Observed>) {
    let Ok(mut ws): Result<WebSocketStream<Duplex>, _> =
        async_tungstenite::accept_async(pipe).await
    else {
        return;
    };
    let _ = ws
        .send(json_frame(
            binary,
            r#"{"status":200,"body":{"anonymous":false}}"#.into(),
        ))
        .await;
    let _ = ws
        .send(json_frame(
            binary,
            r#"{"op":"configureExtension","resourceName":"sources","resourceId":"s1","object":{"config":{}}}"#.into(),
        ))
        .await;
    while let Some(Ok(msg)) = ws.next().await {
        seen.borrow_mut().record(&msg);
    }
}

async fn serve(
    script: &Script,
    accepts: async_channel::Receiver<Duplex>,
    stop: ShutdownHandle,
    seen: &std::cell::RefCell<Observed>,
) {
    let mut next = 0;
    let mut connections = 0;
    let mut scripted = true;
    while let Ok(pipe) = accepts.recv().await {
        connections += 1;
        seen.borrow_mut().connections = connections;
        if connections == 1 && script.refuse_first {
            drop(pipe);
            continue;
        }
        if !scripted || connections > MAX_CONNECTIONS {
            stop.shutdown();
            serve_well(pipe, script.binary, seen).await;
            continue;
        }
        if let Ended::Script = play(pipe, script, &mut next, &stop, seen).await {
            scripted = false;
        }
        if next >= script.ops.len() {
            // Everything was played; whatever connects next is served well.
            scripted = false;
        }
    }
}

/// The fuzz body (see the [module docs](self)).
pub fn driver_frames(data: &[u8]) {
    let _ = run_script(data);
}

/// Runs one input; what the server side saw.
pub fn run_script(data: &[u8]) -> Observed {
    let script = Script::decode(data);
    let seen = std::cell::RefCell::new(Observed::default());
    smol::block_on(async {
        let (runtime, accepts) = MemRuntime::new(script.capacity);
        let config = ServerConfig::parse(
            "targetServer=http://fuzz.invalid:8080\nauthToken=T\nsources=s1\ntcpProbePort=0\n",
            "fuzz/server.config",
            |_| None,
        )
        .expect("the fuzz configuration");
        let fast_pings = script.fast_pings;
        let mut set = ConnectorSet::with_runtime(runtime, config)
            .handler(FuzzHandler)
            .connection_config(move |c| {
                c.backoff.initial = Duration::from_millis(1);
                c.backoff.max = Duration::from_millis(4);
                c.handshake_timeout = Duration::from_secs(1);
                c.close_timeout = Duration::from_millis(100);
                if fast_pings {
                    c.keepalive = Some(KeepAlive::new(
                        Duration::from_millis(10),
                        Duration::from_millis(50),
                    ));
                }
            });
        set.transport_options().max_message_size = Some(MAX_MESSAGE);
        let stop = set.shutdown_handle();
        let both = async {
            let (result, ()) =
                futures_lite::future::zip(set.run(), serve(&script, accepts, stop, &seen)).await;
            Some(result)
        };
        let bound = async {
            async_io::Timer::after(RUN_BOUND).await;
            None
        };
        match futures_lite::future::or(both, bound).await {
            None => panic!("run() did not return within {RUN_BOUND:?}"),
            Some(Ok(()))
            | Some(Err(ConnectorError::Fatal {
                error: FatalError::AuthRejected { .. },
                ..
            })) => {}
            Some(Err(e)) => panic!("run() failed: {e}"),
        }
    });
    seen.into_inner()
}
