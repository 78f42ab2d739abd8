//! The `driver_frames` fuzz target: arbitrary server behaviour against the real driver.
//!
//! A [`ConnectorSet`] with one source runs on a [`SimRuntime`] (virtual time, a
//! deterministic executor, in-memory pipes); the fuzz body plays the server on the other end
//! of each connection with the sans-IO server ([`SimServer`]: the WebSocket handshake, then
//! a script decoded from the input — authentication replies, configurations, publishes,
//! queries, reconnectRequired, status frames, raw text and binary frames, pings, close
//! frames, raw bytes under the WebSocket layer, frames over the size limit, abrupt drops —
//! over up to [`MAX_CONNECTIONS`] connections, then a shutdown. The server machine answers
//! whatever the connector sends (authentication, `connectExtension`, acknowledgements) and
//! produces the commands it can (publish, query, reconnectRequired, close, drop) once the
//! source is attached; everything else, and every command before attachment, goes out raw.
//! It checks that nothing panics and that `run()` returns (Ok, or the fatal error of a
//! rejected token) within [`RUN_BOUND`] of virtual time. The same input always runs the
//! same way.
//!
//! Input layout: byte 0 holds flags (bit 0: JSON in binary frames; bit 1: serve
//! authentication and `connectExtension` on every connection before its script; bit 2:
//! 10 ms pings; bits 3–4: pipe capacity 1 KiB / 4 KiB / 64 KiB / 1 MiB; bit 5: refuse the
//! first connection). Then operations, each an op byte (`op % 16`, see [`Op`]) and its
//! operands.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use serde_json::json;
use vantiq_connector::test_util::{PeerError, SimPeer, SimRuntime, SimServer};
use vantiq_connector::{
    ConnectorError, ConnectorSet, FatalError, Handler, HandlerResult, Json, KeepAlive, Query,
    QueryError, ServerConfig, ShutdownHandle, Source,
};
use vantiq_proto::server::{RawFrame, ServerOptions};

/// Longest a run may take, in virtual time, before it counts as a hang.
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
    /// 15: read until the connector has been quiet for 2 ms (at most 100 ms).
    Settle,
}

/// A decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// JSON frames are binary.
    pub binary: bool,
    /// Serve `validate` and `connectExtension` on every connection before its script.
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

/// A JSON frame as the script's flags say: binary or text.
fn json_frame(binary: bool, text: String) -> RawFrame {
    if binary {
        RawFrame::Binary(text.into_bytes())
    } else {
        RawFrame::Text(text)
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

    /// Records the messages the peer read while its writes waited.
    fn record_buffered(&mut self, peer: &mut SimPeer) {
        while let Some(msg) = peer.buffered_message() {
            self.record(&msg);
        }
    }
}

/// Reads until the connector has sent nothing for 2 ms, or 100 ms have passed; false if the
/// socket ended.
async fn settle(sim: &SimRuntime, peer: &mut SimPeer, seen: &mut Observed) -> bool {
    let give_up = vantiq_connector::Runtime::now(sim) + Duration::from_millis(100);
    while vantiq_connector::Runtime::now(sim) < give_up {
        match peer.next_message_within(Duration::from_millis(2)).await {
            None => return true,
            Some(Some(msg)) => seen.record(&msg),
            Some(None) => return false,
        }
    }
    true
}

/// Reads (and answers) until the socket ends.
async fn drain(peer: &mut SimPeer, seen: &mut Observed) {
    while let Some(msg) = peer.next_message().await {
        seen.record(&msg);
    }
}

/// What a scripted connection came to.
enum Ended {
    /// The script ended the connection (or the connector did); play the next one.
    Connection,
    /// The script is over.
    Script,
}

/// A publish through the server machine when the source is attached and the object is JSON;
/// raw otherwise.
async fn publish(peer: &mut SimPeer, binary: bool, object: &str) -> Result<(), PeerError> {
    if peer.is_configured()
        && let Ok(object) = Json::from_string(object.to_owned())
    {
        return peer.publish(object).await;
    }
    let text = format!(r#"{{"op":"publish","resourceId":"s1","object":{object}}}"#);
    peer.send_raw(json_frame(binary, text)).await
}

/// Performs one operation.
async fn perform(
    sim: &SimRuntime,
    peer: &mut SimPeer,
    op: &Op,
    binary: bool,
    seen: &mut Observed,
) -> Result<(), PeerError> {
    let raw = |text: String| json_frame(binary, text);
    match op {
        Op::AuthOk => {
            peer.send_raw(raw(r#"{"status":200,"body":{"anonymous":false}}"#.into()))
                .await
        }
        Op::AuthFail => {
            peer.send_raw(raw(
                r#"{"status":401,"body":[{"code":"io.vantiq.authentication.failed","message":"no","params":[]}]}"#.into(),
            ))
            .await
        }
        Op::Configure(c) => {
            peer.send_raw(raw(format!(
                r#"{{"op":"configureExtension","resourceName":"sources","resourceId":"s1","object":{{"config":{c}}}}}"#
            )))
            .await
        }
        Op::Publish(o) => publish(peer, binary, o).await,
        Op::Query(addr, p) => {
            if peer.is_configured()
                && let Ok(params) = Json::from_string(p.clone())
            {
                return peer
                    .query(params, Duration::from_secs(60))
                    .await
                    .map(drop);
            }
            peer.send_raw(raw(format!(
                r#"{{"op":"query","resourceId":"s1","messageHeaders":{{"REPLY_ADDR_HEADER":"r{addr}"}},"object":{p}}}"#
            )))
            .await
        }
        Op::Text(t) => peer.send_raw(RawFrame::Text(t.clone())).await,
        Op::Binary(b) => peer.send_raw(RawFrame::Binary(b.clone())).await,
        Op::ReconnectRequired => {
            if peer.is_configured() {
                return peer.reconnect_required(None).await;
            }
            peer.send_raw(raw(r#"{"op":"reconnectRequired","resourceId":"s1"}"#.into()))
                .await
        }
        Op::Close(code) => peer.close(*code, "fuzz").await,
        Op::Drop => {
            peer.abort();
            Ok(())
        }
        Op::Ping(p) => peer.send_message(Message::Ping(p.clone().into())).await,
        Op::Status(s, body) => {
            peer.send_raw(raw(format!(r#"{{"status":{s},"body":{body}}}"#)))
                .await
        }
        Op::Raw(bytes) => {
            peer.pipe().inject(bytes);
            Ok(())
        }
        Op::Oversize(over) => {
            let n = MAX_MESSAGE + usize::from(*over);
            peer.send_raw(RawFrame::Text("x".repeat(n))).await
        }
        Op::Burst(n) => {
            for i in 0..*n {
                publish(peer, binary, &format!(r#"{{"n":{i}}}"#)).await?;
            }
            Ok(())
        }
        Op::Settle => {
            settle(sim, peer, seen).await;
            Ok(())
        }
    }
}

/// Plays `ops` (from `*next`) on one connection.
async fn play(
    sim: &SimRuntime,
    mut peer: SimPeer,
    script: &Script,
    next: &mut usize,
    stop: &ShutdownHandle,
    seen: &mut Observed,
) -> Ended {
    // A server with separate reader and writer: a write that waits does not stop reading.
    peer.set_read_while_writing(true);
    if script.handshake && !peer.serve_until_configured().await {
        drain(&mut peer, seen).await;
        return Ended::Connection;
    }
    while let Some(op) = script.ops.get(*next) {
        *next += 1;
        let result = perform(sim, &mut peer, op, script.binary, seen).await;
        seen.record_buffered(&mut peer);
        if matches!(op, Op::Close(_) | Op::Drop) || result.is_err() || peer.is_ended() {
            // The connection is over: dropping the peer closes the socket.
            return Ended::Connection;
        }
    }
    // The script is over: let the connector finish reacting, stop it and serve this
    // connection until it closes.
    settle(sim, &mut peer, seen).await;
    stop.shutdown();
    drain(&mut peer, seen).await;
    Ended::Script
}

/// A well-behaved server for the connections after the script.
async fn serve_well(
    server: &SimServer,
    pipe: vantiq_connector::test_util::Duplex,
    seen: &mut Observed,
) {
    let Ok(mut peer) = server.accept_pipe(pipe).await else {
        return;
    };
    peer.serve_until_configured().await;
    drain(&mut peer, seen).await;
}

async fn serve(
    sim: &SimRuntime,
    server: &SimServer,
    script: &Script,
    stop: ShutdownHandle,
    seen: &mut Observed,
) {
    let mut next = 0;
    let mut scripted = true;
    loop {
        let pipe = sim.accept().await;
        seen.connections += 1;
        if seen.connections == 1 && script.refuse_first {
            drop(pipe);
            continue;
        }
        if !scripted || seen.connections > MAX_CONNECTIONS {
            stop.shutdown();
            serve_well(server, pipe, seen).await;
            continue;
        }
        let Ok(peer) = server.accept_pipe(pipe).await else {
            continue;
        };
        if let Ended::Script = play(sim, peer, script, &mut next, &stop, seen).await {
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
    let mut seen = Observed::default();
    let sim = SimRuntime::with_options(script.capacity, 2 * RUN_BOUND);
    let mut options = ServerOptions::default();
    options.token = Some("T".into());
    options.binary_frames = script.binary;
    options.report_frames = false;
    let server = SimServer::new(&sim, options);
    server.define_source("s1", Json::empty_object());
    let config = ServerConfig::parse(
        "targetServer=http://fuzz.invalid:8080\nauthToken=T\nsources=s1\ntcpProbePort=0\n",
        "fuzz/server.config",
        |_| None,
    )
    .expect("the fuzz configuration");
    let fast_pings = script.fast_pings;
    let mut set = ConnectorSet::with_runtime(sim.clone(), config)
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
    let result = sim.block_on({
        let sim = sim.clone();
        let seen = &mut seen;
        async move {
            let serving = async {
                serve(&sim, &server, &script, stop, seen).await;
                None
            };
            let both = futures_lite::future::or(async { Some(set.run().await) }, serving);
            sim.timeout(RUN_BOUND, both).await.flatten()
        }
    });
    match result {
        None => panic!("run() did not return within {RUN_BOUND:?} of virtual time"),
        Some(Ok(()))
        | Some(Err(ConnectorError::Fatal {
            error: FatalError::AuthRejected { .. },
            ..
        })) => {}
        Some(Err(e)) => panic!("run() failed: {e}"),
    }
    seen
}
