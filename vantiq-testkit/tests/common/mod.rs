//! Helpers shared by the integration tests: a raw WebSocket client speaking the connector
//! side with `vantiq_proto` frames, and a tiny HTTP/1.1 client for the control API.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::{self, Message};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vantiq_proto::Json;
use vantiq_proto::frame::{ClientFrame, QueryReply, ServerFrame, StatusFrame};
use vantiq_testkit::TestServer;

/// How long a test waits for anything that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// A connector-side WebSocket, driven by hand.
pub struct Client {
    pub ws: WebSocketStream<TokioAdapter<TcpStream>>,
}

/// How a socket ended, seen from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The server sent a close frame.
    CloseFrame,
    /// The TCP connection ended without a close frame.
    Abrupt,
}

impl Client {
    /// Opens a WebSocket to the server's endpoint.
    pub async fn connect(server: &TestServer) -> Client {
        Client::connect_to(server.addr(), &server.ws_url()).await
    }

    pub async fn connect_to(addr: SocketAddr, url: &str) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("TCP connect");
        let (ws, _resp) = async_tungstenite::tokio::client_async(url, tcp)
            .await
            .expect("WebSocket handshake");
        Client { ws }
    }

    /// Sends a frame as text (like the Python SDK).
    pub async fn send(&mut self, frame: ClientFrame) {
        self.ws
            .send(Message::text(frame.encode()))
            .await
            .expect("send");
    }

    /// Sends a frame as binary (like the Java SDK).
    pub async fn send_binary(&mut self, frame: ClientFrame) {
        self.ws
            .send(Message::binary(frame.encode().into_bytes()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next data message (text or binary), skipping pings and pongs.
    pub async fn recv_message(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame from the server")
                .expect("socket ended while waiting for a frame")
                .expect("socket error while waiting for a frame");
            match msg {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// The next frame's JSON text and whether it came as a binary frame.
    pub async fn recv_text(&mut self) -> (String, bool) {
        match self.recv_message().await {
            Message::Text(t) => (t.as_str().to_owned(), false),
            Message::Binary(b) => (String::from_utf8(b.to_vec()).expect("UTF-8"), true),
            other => panic!("expected a data frame, got {other:?}"),
        }
    }

    /// The next frame as JSON.
    pub async fn recv_value(&mut self) -> Value {
        serde_json::from_str(&self.recv_text().await.0).expect("JSON frame")
    }

    /// The next frame, decoded.
    pub async fn recv(&mut self) -> ServerFrame {
        let (text, _) = self.recv_text().await;
        ServerFrame::decode(text.as_bytes()).expect("decodable server frame")
    }

    /// The next frame, which must be an op-less status frame.
    pub async fn recv_status(&mut self) -> StatusFrame {
        match self.recv().await {
            ServerFrame::Status(s) => s,
            other => panic!("expected a status frame, got {other:?}"),
        }
    }

    /// Opens a socket to a server at `addr`, authenticates and attaches to `source`.
    pub async fn session_at(addr: SocketAddr, token: &str, source: &str, secret: &str) -> Client {
        let url = format!("ws://{addr}/api/v1/wsock/websocket");
        let mut c = Client::connect_to(addr, &url).await;
        let auth = c.validate(token).await;
        assert_eq!(auth.status.0, 200, "auth reply {auth:?}");
        c.attach(source, Some(secret)).await;
        c
    }

    /// The next message, which must be a close frame; returns its code and reason.
    pub async fn recv_close(&mut self) -> (u16, String) {
        match self.recv_message().await {
            Message::Close(Some(f)) => (u16::from(f.code), f.reason.to_string()),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Waits for the socket to end; says whether a close frame came first.
    pub async fn expect_end(&mut self) -> End {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the socket to end");
            match next {
                None => return End::Abrupt,
                Some(Ok(Message::Close(_))) => return End::CloseFrame,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected the socket to end, got {other:?}"),
                Some(Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ))) => return End::Abrupt,
                Some(Err(tungstenite::Error::Io(_))) => return End::Abrupt,
                Some(Err(e)) => panic!("unexpected socket error: {e}"),
            }
        }
    }

    /// `validate` with `token`; returns the reply.
    pub async fn validate(&mut self, token: &str) -> StatusFrame {
        self.send(ClientFrame::Validate {
            token: Some(token.to_owned()),
        })
        .await;
        self.recv_status().await
    }

    /// `connectExtension`; returns the first reply frame.
    pub async fn connect_extension(&mut self, source: &str, secret: Option<&str>) -> ServerFrame {
        self.send(ClientFrame::ConnectExtension {
            source: source.to_owned(),
            reconnect_secret: secret.map(str::to_owned),
        })
        .await;
        self.recv().await
    }

    /// `connectExtension` that must be answered by `configureExtension`; returns the config.
    pub async fn attach(&mut self, source: &str, secret: Option<&str>) -> Value {
        match self.connect_extension(source, secret).await {
            ServerFrame::ConfigureExtension { config, .. } => config.to_value().unwrap(),
            other => panic!("expected configureExtension, got {other:?}"),
        }
    }

    /// Opens a socket, authenticates with `token` and attaches to `source`.
    pub async fn session(server: &TestServer, token: &str, source: &str, secret: &str) -> Client {
        let mut c = Client::connect(server).await;
        let auth = c.validate(token).await;
        assert_eq!(auth.status.0, 200, "auth reply {auth:?}");
        c.attach(source, Some(secret)).await;
        c
    }

    pub async fn notify(&mut self, source: &str, object: Value) {
        self.send(ClientFrame::Notification {
            source: source.to_owned(),
            object: Json::from(object),
        })
        .await;
    }

    pub async fn reply(&mut self, address: &str, status: i64, body: Option<Value>) {
        self.send(ClientFrame::QueryReply(QueryReply {
            status: vantiq_proto::Status(status),
            reply_address: address.to_owned(),
            body: body.map(Json::from),
        }))
        .await;
    }

    /// The next frame, which must be a query; returns (reply address, params).
    pub async fn recv_query(&mut self) -> (String, Value) {
        match self.recv().await {
            ServerFrame::Query {
                reply_address,
                object,
                ..
            } => (reply_address, object.to_value().unwrap()),
            other => panic!("expected a query, got {other:?}"),
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends raw request bytes and reads the whole response (the server closes after it).
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write request");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut buf))
        .await
        .expect("timed out reading the HTTP response")
        .expect("read response");
    parse_response(&buf)
}

/// Parses one HTTP/1.1 response (skipping `100 Continue`).
pub fn parse_response(mut buf: &[u8]) -> HttpResponse {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf).expect("valid HTTP response") {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => {
                panic!("incomplete HTTP response: {}", String::from_utf8_lossy(buf))
            }
        };
        let status = resp.code.expect("status code");
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let rest = &buf[len..];
        if status == 100 {
            buf = rest;
            continue;
        }
        return HttpResponse {
            status,
            headers,
            body: rest.to_vec(),
        };
    }
}

/// `METHOD path` with an optional JSON body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http_raw(addr, request.as_bytes()).await
}

/// `METHOD path` with extra headers and an optional body.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    let body = body.unwrap_or("");
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    http_raw(addr, request.as_bytes()).await
}

/// A server with the control API on and the given sources.
pub async fn control_server(sources: &[(&str, Value)]) -> TestServer {
    let mut b = TestServer::builder().token("T").control_api(true);
    for (name, config) in sources {
        b = b.source(*name, config.clone());
    }
    b.start().await.expect("server starts")
}

/// A running `vantiq-devserver` process, killed when dropped (its output is printed then if
/// the test is failing).
pub struct DevServer {
    child: std::process::Child,
    pub addr: SocketAddr,
    pub url: String,
    output: std::sync::Arc<(std::sync::Mutex<Vec<String>>, std::sync::Condvar)>,
}

impl DevServer {
    /// Starts the binary with `args` (add `--listen 127.0.0.1:0` to get a free port) and
    /// waits for its "listening on" line.
    pub fn spawn(args: &[&str]) -> DevServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vantiq-devserver"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start vantiq-devserver");
        let output =
            std::sync::Arc::new((std::sync::Mutex::new(Vec::new()), std::sync::Condvar::new()));
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let out = output.clone();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("vantiq-devserver listening on ") {
                    let _ = first_tx.send(line.clone());
                }
                out.0.lock().unwrap().push(line);
                out.1.notify_all();
            }
        });
        let stderr = child.stderr.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                out.0.lock().unwrap().push(format!("stderr: {line}"));
                out.1.notify_all();
            }
        });
        let mut guard = DevServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            url: String::new(),
            output,
        };
        let first = first_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("vantiq-devserver printed its address");
        let url = first
            .trim_start_matches("vantiq-devserver listening on ")
            .to_owned();
        guard.addr = url
            .trim_start_matches("http://")
            .parse()
            .expect("an http://IP:PORT url");
        guard.url = url;
        guard
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (call it once its last output line was seen); its exit
    /// code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.child.wait().expect("wait for vantiq-devserver").code()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> Vec<String> {
        self.output.0.lock().unwrap().clone()
    }

    /// Blocks until the output holds a line containing `needle`; returns the whole output.
    pub fn wait_output(&self, needle: &str) -> String {
        let (lock, cond) = &*self.output;
        let guard = lock.lock().unwrap();
        let (guard, timeout) = cond
            .wait_timeout_while(guard, WAIT, |lines| {
                !lines.iter().any(|l| l.contains(needle))
            })
            .unwrap();
        let text = guard.join("\n");
        assert!(
            !timeout.timed_out(),
            "no output line contains {needle:?}:\n{text}"
        );
        text
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- vantiq-devserver output ----");
            for line in self.output() {
                eprintln!("{line}");
            }
        }
    }
}
