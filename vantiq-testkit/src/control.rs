//! The JSON control API (`/control/...`), served on the WebSocket port.
//!
//! One request per TCP connection (`Connection: close`); bodies need a `Content-Length`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use vantiq_proto::Json;

use crate::error::TestkitError;
use crate::http::{Head, REQUEST_TIMEOUT, respond_json};
use crate::server::{Shared, sources_info};
use crate::source::SourceHandle;

/// Largest request body accepted.
const MAX_BODY: usize = 16 << 20;
/// Longest long poll (`waitMs`) and query timeout (`timeoutMs`) honoured.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A response: status and JSON body.
struct Reply(u16, Value);

fn error(status: u16, message: impl Into<String>) -> Reply {
    Reply(status, json!({ "error": message.into() }))
}

/// Serves one control request.
pub(crate) async fn handle(shared: Arc<Shared>, mut tcp: TcpStream, head: Head) {
    let body = match tokio::time::timeout(REQUEST_TIMEOUT, read_body(&mut tcp, &head)).await {
        Ok(Ok(body)) => body,
        Ok(Err(Some(Reply(status, value)))) => {
            let _ = respond_json(&mut tcp, status, &value).await;
            return;
        }
        Ok(Err(None)) | Err(_) => return,
    };
    let Reply(status, value) = route(&shared, &head, body).await;
    let _ = respond_json(&mut tcp, status, &value).await;
}

/// Reads the body announced by `Content-Length`. `Err(None)`: the peer went away.
async fn read_body(tcp: &mut TcpStream, head: &Head) -> Result<Vec<u8>, Option<Reply>> {
    if head.header("transfer-encoding").is_some() {
        return Err(Some(error(
            411,
            "chunked request bodies are not supported; send a Content-Length",
        )));
    }
    let len = match head.header("content-length") {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| Some(error(400, format!("bad Content-Length `{v}`"))))?,
    };
    if len > MAX_BODY {
        return Err(Some(error(
            413,
            format!("request body of {len} bytes exceeds the limit of {MAX_BODY}"),
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

async fn route(shared: &Arc<Shared>, head: &Head, body: Vec<u8>) -> Reply {
    let path = head.path();
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    let method = head.method.as_str();
    match segments.as_slice() {
        ["control", "sources"] => match method {
            "GET" => Reply(200, json!(sources_info(shared))),
            _ => method_not_allowed(method, path, "GET"),
        },
        ["control", "sources", name, rest @ ..] => {
            let name = percent_decode(name);
            let Some(src) = shared.source(&name) else {
                return error(404, format!("unknown source `{name}`"));
            };
            let handle = SourceHandle::new(Arc::clone(shared), src);
            let params = Params::parse(head.query());
            match (rest, method) {
                ([], "GET") => Reply(200, json!(handle.info())),
                ([], _) => method_not_allowed(method, path, "GET"),
                (["publish"], "POST") => publish(&handle, &body).await,
                (["query"], "POST") => query(shared, &handle, &params, &body).await,
                (["notifications"], "GET") => notifications(&handle, &params).await,
                (["reconnect"], "POST") => reconnect(&handle, &body).await,
                (["drop"], "POST") => match handle.drop_connection().await {
                    Ok(()) => Reply(202, json!({ "dropped": true })),
                    Err(e) => from_error(&e),
                },
                (["refuse"], "POST") => match params.number("count") {
                    Ok(count) => {
                        let count = u32::try_from(count.unwrap_or(1)).unwrap_or(u32::MAX);
                        handle.refuse_connects(count);
                        Reply(202, json!({ "refusing": count }))
                    }
                    Err(message) => error(400, message),
                },
                (["publish" | "query" | "reconnect" | "drop" | "refuse"], _) => {
                    method_not_allowed(method, path, "POST")
                }
                (["notifications"], _) => method_not_allowed(method, path, "GET"),
                _ => error(404, format!("nothing at {path}")),
            }
        }
        _ => error(404, format!("nothing at {path}")),
    }
}

fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Reply {
    error(
        405,
        format!("{method} is not allowed on {path}; use {allowed}"),
    )
}

/// Maps a handle error to a status: no connector 409, timeout 504, gone 503.
fn from_error(e: &TestkitError) -> Reply {
    let status = match e {
        TestkitError::NotConnected { .. } => 409,
        TestkitError::Timeout { .. } => 504,
        TestkitError::UnknownSource { .. } => 404,
        TestkitError::ServerGone => 503,
        _ => 500,
    };
    error(status, e.to_string())
}

/// The body as JSON; `empty` when there is none.
fn json_body(body: &[u8], empty: Option<Json>) -> Result<Json, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return empty.ok_or_else(|| error(400, "a JSON request body is required"));
    }
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| error(400, "the request body is not UTF-8"))?;
    Json::from_string(text).map_err(|e| error(400, format!("the request body is not JSON: {e}")))
}

async fn publish(handle: &SourceHandle, body: &[u8]) -> Reply {
    let object = match json_body(body, None) {
        Ok(j) => j,
        Err(reply) => return reply,
    };
    match handle.publish(object).await {
        Ok(()) => Reply(202, json!({ "published": true })),
        Err(e) => from_error(&e),
    }
}

async fn query(shared: &Shared, handle: &SourceHandle, params: &Params, body: &[u8]) -> Reply {
    let with = match json_body(body, Some(Json::empty_object())) {
        Ok(j) => j,
        Err(reply) => return reply,
    };
    let timeout = match params.number("timeoutMs") {
        Ok(Some(ms)) => Duration::from_millis(ms).min(MAX_WAIT),
        Ok(None) => shared.opts.query_timeout,
        Err(message) => return error(400, message),
    };
    match handle.query_with_timeout(with, timeout).await {
        Ok(result) => Reply(
            200,
            json!({
                "status": result.status.0,
                "rows": result.rows,
                "parts": result.parts.len(),
            }),
        ),
        Err(TestkitError::QueryFailed { result, .. }) => Reply(
            200,
            json!({
                "status": result.status.0,
                "rows": result.rows,
                "parts": result.parts.len(),
                "error": result.error_body().map_or(Value::Null, Json::to_value),
            }),
        ),
        Err(e) => from_error(&e),
    }
}

async fn notifications(handle: &SourceHandle, params: &Params) -> Reply {
    let after = match params.number("after") {
        Ok(a) => usize::try_from(a.unwrap_or(0)).unwrap_or(usize::MAX),
        Err(message) => return error(400, message),
    };
    let wait = match params.number("waitMs") {
        Ok(ms) => Duration::from_millis(ms.unwrap_or(0)).min(MAX_WAIT),
        Err(message) => return error(400, message),
    };
    let (next, items) = handle.wait_notifications_after(after, wait).await;
    let items: Vec<Value> = items.iter().map(Json::to_value).collect();
    Reply(200, json!({ "next": next, "items": items }))
}

async fn reconnect(handle: &SourceHandle, body: &[u8]) -> Reply {
    let config = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match json_body(body, None) {
            Ok(j) => Some(j),
            Err(reply) => return reply,
        }
    };
    match handle.reconnect_required(config).await {
        Ok(()) => Reply(202, json!({ "sent": "reconnectRequired" })),
        Err(e) => from_error(&e),
    }
}

/// Query-string parameters.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Params {
        let mut out = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.push((percent_decode(k), percent_decode(v)));
        }
        Params(out)
    }

    /// A non-negative integer parameter.
    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        match self.0.iter().rev().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, v)) => v.parse::<u64>().map(Some).map_err(|_| {
                format!("query parameter `{name}` must be a non-negative integer, not `{v}`")
            }),
        }
    }
}

/// Decodes `%XX` escapes (and `+` as a space); malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("My%20Source"), "My Source");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%BC"), "ü");
    }

    #[test]
    fn params() {
        let p = Params::parse("after=3&waitMs=250&x");
        assert_eq!(p.number("after"), Ok(Some(3)));
        assert_eq!(p.number("waitMs"), Ok(Some(250)));
        assert_eq!(p.number("missing"), Ok(None));
        assert!(p.number("x").is_err());
        assert!(Params::parse("after=-1").number("after").is_err());
    }
}
