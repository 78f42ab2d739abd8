//! The baseline: the echo contract written straight on async-tungstenite (tokio) and
//! serde_json, with no SDK crate — what a competent user would write by hand, and so the
//! practical limit for any SDK on this stack.
//!
//! It reads `serverConfig/server.config` (or `./server.config`): `targetServer`, `authToken`,
//! `sources`. One task per source: connect (TCP_NODELAY), `validate`, `connectExtension`,
//! wait for `configureExtension`, notify `{"connected": true, "config": C}`, then serve
//! publishes and queries (the contract of `vantiq_connector::test_util::echo`). Incoming frames are
//! parsed into borrowed serde structs; outgoing frames are serde structs serialized to
//! text. Writes are batched: every frame that is ready is handled and its answers fed to
//! the socket, then one flush. No reconnection, keep-alive or back-pressure beyond what
//! the socket gives: it is a baseline, not a connector.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::TcpStream;

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// Frames handled before the batch is flushed.
const BATCH: usize = 64;

struct Config {
    host: String,
    port: u16,
    url: String,
    token: String,
    sources: Vec<String>,
}

fn read_config() -> Result<Config, Error> {
    let text = std::fs::read_to_string("serverConfig/server.config")
        .or_else(|_| std::fs::read_to_string("server.config"))?;
    let (mut target, mut token, mut sources) = (None, String::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k.trim() {
            "targetServer" => target = Some(v.trim().to_owned()),
            "authToken" => token = v.trim().to_owned(),
            "sources" => {
                sources = v
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            _ => {}
        }
    }
    let target = target.ok_or("targetServer missing")?;
    // http://host:port[/…] only: this is a loopback benchmark client.
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("ws://"))
        .ok_or("targetServer must be http:// or ws://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse()?),
        None => (authority.to_owned(), 80),
    };
    Ok(Config {
        url: format!("ws://{authority}/api/v1/wsock/websocket"),
        host,
        port,
        token,
        sources,
    })
}

// ---- frames in ----------------------------------------------------------------------------

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow, default)]
    op: Option<&'a str>,
    #[serde(default)]
    status: Option<i64>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "messageHeaders")]
    message_headers: Option<MessageHeaders<'a>>,
}

#[derive(Deserialize)]
struct MessageHeaders<'a> {
    #[serde(borrow, default, rename = "REPLY_ADDR_HEADER")]
    reply: Option<&'a str>,
}

#[derive(Deserialize)]
struct ConfigureObject<'a> {
    #[serde(borrow)]
    config: &'a RawValue,
}

#[derive(Deserialize)]
struct Burst<'a> {
    burst: u64,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct QueryParams {
    rows: Option<u64>,
    chunk: Option<u64>,
    error: Option<serde_json::Value>,
}

// ---- frames out ---------------------------------------------------------------------------

#[derive(Serialize)]
struct Request<'a, T: Serialize> {
    op: &'static str,
    #[serde(rename = "resourceName")]
    resource_name: &'static str,
    #[serde(rename = "resourceId", skip_serializing_if = "Option::is_none")]
    resource_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ConnectParams<'a>>,
}

#[derive(Serialize)]
struct ConnectParams<'a> {
    #[serde(rename = "reconnectSecret")]
    reconnect_secret: &'a str,
}

#[derive(Serialize)]
struct Connected<'a> {
    connected: bool,
    config: &'a RawValue,
}

#[derive(Serialize)]
struct Seq<'a> {
    seq: u64,
    payload: &'a RawValue,
}

#[derive(Serialize)]
struct Row {
    i: u64,
}

#[derive(Serialize)]
struct Reply<'a, T: Serialize> {
    status: u16,
    headers: ReplyHeaders<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<T>,
}

#[derive(Serialize)]
struct ReplyHeaders<'a> {
    #[serde(rename = "X-Reply-Address")]
    address: &'a str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "messageCode")]
    message_code: &'static str,
    #[serde(rename = "messageTemplate")]
    message_template: &'static str,
    parameters: [&'a serde_json::Value; 1],
}

fn notification<T: Serialize>(source: &str, object: T) -> Message {
    let frame = Request {
        op: "notification",
        resource_name: "sources",
        resource_id: Some(source),
        object: Some(object),
        parameters: None,
    };
    Message::text(serde_json::to_string(&frame).unwrap())
}

fn reply<T: Serialize>(status: u16, address: &str, body: Option<T>) -> Message {
    let frame = Reply {
        status,
        headers: ReplyHeaders { address },
        body,
    };
    Message::text(serde_json::to_string(&frame).unwrap())
}

// ---- the connection -----------------------------------------------------------------------

async fn read_frame(ws: &mut Ws) -> Result<Message, Error> {
    loop {
        match ws.next().await.ok_or("socket closed")?? {
            m @ (Message::Text(_) | Message::Binary(_)) => return Ok(m),
            Message::Close(_) => return Err("closed by the server".into()),
            _ => {}
        }
    }
}

fn bytes(m: &Message) -> &[u8] {
    match m {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => &[],
    }
}

async fn handshake(cfg: &Config, source: &str) -> Result<Ws, Error> {
    let tcp = TcpStream::connect((cfg.host.as_str(), cfg.port)).await?;
    tcp.set_nodelay(true)?;
    let ws_config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (mut ws, _) =
        async_tungstenite::tokio::client_async_with_config(cfg.url.as_str(), tcp, Some(ws_config))
            .await?;
    let validate = Request {
        op: "validate",
        resource_name: "system.credentials",
        resource_id: None,
        object: Some(cfg.token.as_str()),
        parameters: None,
    };
    ws.send(Message::text(serde_json::to_string(&validate)?))
        .await?;
    let m = read_frame(&mut ws).await?;
    let auth: Incoming<'_> = serde_json::from_slice(bytes(&m))?;
    if auth.status.is_none_or(|s| !(200..300).contains(&s)) {
        return Err(format!(
            "authentication failed: {}",
            String::from_utf8_lossy(bytes(&m))
        )
        .into());
    }
    let secret = format!("{source}_raw");
    let connect = Request::<()> {
        op: "connectExtension",
        resource_name: "sources",
        resource_id: Some(source),
        object: None,
        parameters: Some(ConnectParams {
            reconnect_secret: &secret,
        }),
    };
    ws.send(Message::text(serde_json::to_string(&connect)?))
        .await?;
    loop {
        let m = read_frame(&mut ws).await?;
        let f: Incoming<'_> = serde_json::from_slice(bytes(&m))?;
        match (f.op, f.status) {
            (Some("configureExtension"), _) => {
                let obj: ConfigureObject<'_> =
                    serde_json::from_str(f.object.ok_or("no object")?.get())?;
                let hello = notification(
                    source,
                    Connected {
                        connected: true,
                        config: obj.config,
                    },
                );
                ws.send(hello).await?;
                return Ok(ws);
            }
            (None, Some(s)) if s >= 300 => {
                return Err(
                    format!("connect refused: {}", String::from_utf8_lossy(bytes(&m))).into(),
                );
            }
            _ => {}
        }
    }
}

/// Handles one frame, feeding its answers (not flushed).
async fn handle(ws: &mut Ws, source: &str, m: &Message) -> Result<(), Error> {
    let data = bytes(m);
    if data.is_empty() {
        return Ok(());
    }
    let Ok(f) = serde_json::from_slice::<Incoming<'_>>(data) else {
        return Ok(());
    };
    match f.op {
        Some("publish") => {
            let Some(object) = f.object else {
                return Ok(());
            };
            if let Ok(b) = serde_json::from_str::<Burst<'_>>(object.get()) {
                let payload = b
                    .payload
                    .unwrap_or_else(|| serde_json::from_str("null").unwrap());
                for seq in 0..b.burst {
                    ws.feed(notification(source, Seq { seq, payload })).await?;
                }
            } else {
                ws.feed(notification(source, object)).await?;
            }
        }
        Some("query") => {
            let Some(address) = f.message_headers.and_then(|h| h.reply) else {
                return Ok(());
            };
            let params: QueryParams = f
                .object
                .and_then(|o| serde_json::from_str(o.get()).ok())
                .unwrap_or_default();
            if let Some(message) = &params.error {
                let body = ErrorBody {
                    message_code: "echo.error",
                    message_template: "Echo error: {0}",
                    parameters: [message],
                };
                ws.feed(reply(400, address, Some(body))).await?;
                return Ok(());
            }
            let n = params.rows.unwrap_or(0);
            if n == 0 {
                ws.feed(reply::<()>(204, address, None)).await?;
                return Ok(());
            }
            let chunk = params.chunk.filter(|k| *k > 0).unwrap_or(n);
            let mut start = 0;
            while start + chunk < n {
                let rows: Vec<Row> = (start..start + chunk).map(|i| Row { i }).collect();
                ws.feed(reply(100, address, Some(rows))).await?;
                start += chunk;
            }
            let rows: Vec<Row> = (start..n).map(|i| Row { i }).collect();
            ws.feed(reply(200, address, Some(rows))).await?;
        }
        _ => {}
    }
    Ok(())
}

async fn serve(ws: &mut Ws, source: &str) -> Result<(), Error> {
    loop {
        let mut pending = match ws.next().await {
            Some(m) => Some(m?),
            None => return Ok(()),
        };
        let mut handled = 0;
        while let Some(m) = pending.take() {
            if let Message::Close(_) = m {
                return Ok(());
            }
            handle(ws, source, &m).await?;
            handled += 1;
            if handled < BATCH {
                pending = match ws.next().now_or_never() {
                    Some(Some(next)) => Some(next?),
                    Some(None) => return Ok(()),
                    None => None,
                };
            }
        }
        ws.flush().await?;
    }
}

async fn run_source(cfg: std::sync::Arc<Config>, source: String) {
    loop {
        match handshake(&cfg, &source).await {
            Ok(mut ws) => {
                if let Err(e) = serve(&mut ws, &source).await {
                    eprintln!("raw-echo: {source}: {e}");
                }
            }
            Err(e) => eprintln!("raw-echo: {source}: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::main]
async fn main() {
    let cfg = match read_config() {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => {
            eprintln!("raw-echo: {e}");
            std::process::exit(2);
        }
    };
    let tasks: Vec<_> = cfg
        .sources
        .iter()
        .map(|s| tokio::spawn(run_source(cfg.clone(), s.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}
