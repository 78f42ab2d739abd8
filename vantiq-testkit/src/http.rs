//! HTTP/1.1 on the server's one port: request heads, bodies and JSON responses. One request
//! per TCP connection (`Connection: close`). No knowledge of what is served.

use std::time::Duration;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Longest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers accepted.
const MAX_HEADERS: usize = 64;
/// Time a client gets to send its request head (and a control request its body).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed HTTP request head.
pub(crate) struct Head {
    pub(crate) method: String,
    /// The request target as sent (path and query).
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    /// Bytes read past the head (the start of the body or of the first WebSocket frame).
    pub(crate) rest: Vec<u8>,
}

impl Head {
    /// The first header of that name (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path, without the query string.
    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string (after `?`), if any.
    pub(crate) fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    pub(crate) fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub(crate) fn is_websocket_upgrade(&self) -> bool {
        self.header_has_token("upgrade", "websocket")
    }
}

/// Why no head could be read.
pub(crate) enum HeadError {
    /// The peer went away (or sent nothing) — nothing to answer.
    Gone,
    /// Not HTTP, or too big: answer with this status.
    Bad(u16, &'static str),
}

pub(crate) async fn read_head(tcp: &mut TcpStream) -> Result<Head, HeadError> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.map_err(|_| HeadError::Gone)?;
        if n == 0 {
            return Err(HeadError::Gone);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let method = req.method.unwrap_or("").to_owned();
                let target = req.path.unwrap_or("").to_owned();
                let headers = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).trim().to_owned(),
                        )
                    })
                    .collect();
                let rest = buf.split_off(len.min(buf.len()));
                return Ok(Head {
                    method,
                    target,
                    headers,
                    rest,
                });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(HeadError::Bad(431, "request head too large"));
                }
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::Bad(431, "too many request headers"));
            }
            Err(_) => return Err(HeadError::Bad(400, "malformed HTTP request")),
        }
    }
}

/// Whether `path` is `/api/v<digits>/wsock/websocket`.
pub(crate) fn is_websocket_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v") else {
        return false;
    };
    let Some((version, tail)) = rest.split_once('/') else {
        return false;
    };
    !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) && tail == "wsock/websocket"
}

/// Answers a WebSocket upgrade request with `101 Switching Protocols`, or with `400` when
/// it is not a valid one. Returns whether the socket was upgraded.
pub(crate) async fn accept_upgrade(tcp: &mut TcpStream, head: &Head) -> bool {
    let key = head.header("sec-websocket-key").map(str::to_owned);
    let version_ok = head.header("sec-websocket-version") == Some("13");
    let Some(key) = key.filter(|_| head.method == "GET" && version_ok) else {
        let body = serde_json::json!({
            "error": "a WebSocket upgrade needs GET, Sec-WebSocket-Key and Sec-WebSocket-Version: 13"
        });
        let _ = respond_json(tcp, 400, &body).await;
        return false;
    };
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tcp.write_all(response.as_bytes()).await.is_ok()
}

/// Reads the body announced by `Content-Length`. `Err(None)`: the peer went away;
/// `Err(Some((status, message)))`: answer with that.
pub(crate) async fn read_body(
    tcp: &mut TcpStream,
    head: &Head,
    max: usize,
) -> Result<Vec<u8>, Option<(u16, String)>> {
    if head.header("transfer-encoding").is_some() {
        return Err(Some((
            411,
            "chunked request bodies are not supported; send a Content-Length".to_owned(),
        )));
    }
    let len = match head.header("content-length") {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| Some((400, format!("bad Content-Length `{v}`"))))?,
    };
    if len > max {
        return Err(Some((
            413,
            format!("request body of {len} bytes exceeds the limit of {max}"),
        )));
    }
    let mut body = head.rest.clone();
    if body.len() < len
        && head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| None)?;
    }
    let mut chunk = [0u8; 8192];
    while body.len() < len {
        let n = tcp.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        body.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    body.truncate(len);
    Ok(body)
}

/// The reason phrase of the statuses this server uses.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Writes a complete JSON response and closes the connection.
pub(crate) async fn respond_json(
    tcp: &mut TcpStream,
    status: u16,
    body: &serde_json::Value,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    tcp.write_all(&out).await?;
    tcp.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_paths() {
        assert!(is_websocket_path("/api/v1/wsock/websocket"));
        assert!(is_websocket_path("/api/v47/wsock/websocket"));
        assert!(!is_websocket_path("/api/v/wsock/websocket"));
        assert!(!is_websocket_path("/api/vx/wsock/websocket"));
        assert!(!is_websocket_path("/api/v1/wsock/websocket/"));
        assert!(!is_websocket_path("/"));
        assert!(!is_websocket_path("/api/v1"));
    }
}
