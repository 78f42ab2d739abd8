//! The HTTP APIs beside the WebSocket endpoint: the JSON control API (`/control/...`) and
//! Vantiq's REST routes for sources (`/api/v<N>/resources/sources/{name}[/query]`).
//!
//! The control API answers only requests a browser page cannot forge: a `Host` that names
//! this machine (a loopback name or address, an IP literal, or a host allowed explicitly),
//! no foreign `Origin`, no cross-site `Sec-Fetch-Site`; and the control token when one is
//! set. The REST routes need `Authorization: Bearer <token>` as Vantiq's do.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpStream;
use vantiq_proto::Json;

use crate::error::TestkitError;
use crate::http::{Head, REQUEST_TIMEOUT, read_body, respond_json};
use crate::hub::Hub;
use crate::records::RawFrame;
use crate::source::SourceHandle;

/// Largest request body accepted.
const MAX_BODY: usize = 16 << 20;
/// Longest long poll (`waitMs`) and query timeout (`timeoutMs`) honoured.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Who may use the control API.
#[derive(Debug, Clone, Default)]
pub(crate) struct ControlPolicy {
    /// Required as `Authorization: Bearer <token>` when set.
    pub(crate) token: Option<String>,
    /// Host names accepted besides loopback names and IP literals.
    pub(crate) allowed_hosts: Vec<String>,
}

/// The access token REST requests must carry (`None`: any bearer token).
#[derive(Debug, Clone, Default)]
pub(crate) struct RestPolicy {
    pub(crate) token: Option<String>,
}

/// A response: status and JSON body.
struct Reply(u16, Value);

fn error(status: u16, message: impl Into<String>) -> Reply {
    Reply(status, json!({ "error": message.into() }))
}

/// Reads the request body and answers with `route`.
async fn serve(mut tcp: TcpStream, head: Head, route: impl AsyncFnOnce(&Head, Vec<u8>) -> Reply) {
    let body =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_body(&mut tcp, &head, MAX_BODY)).await {
            Ok(Ok(body)) => body,
            Ok(Err(Some((status, message)))) => {
                let _ = respond_json(&mut tcp, status, &json!({ "error": message })).await;
                return;
            }
            Ok(Err(None)) | Err(_) => return,
        };
    let Reply(status, value) = route(&head, body).await;
    let _ = respond_json(&mut tcp, status, &value).await;
}

// ---- the control API ------------------------------------------------------------------------

/// Serves one control request.
pub(crate) async fn handle_control(
    hub: Arc<Hub>,
    policy: &ControlPolicy,
    tcp: TcpStream,
    head: Head,
) {
    if let Err(Reply(status, value)) = check_control(policy, &head) {
        let mut tcp = tcp;
        let _ = respond_json(&mut tcp, status, &value).await;
        return;
    }
    serve(tcp, head, async |head, body| route(&hub, head, body).await).await;
}

/// Refuses what a web page in the developer's browser could send, and requests without the
/// control token.
fn check_control(policy: &ControlPolicy, head: &Head) -> Result<(), Reply> {
    let Some(host) = head.header("host") else {
        return Err(error(400, "the control API needs a Host header"));
    };
    if !host_allowed(host, &policy.allowed_hosts) {
        return Err(error(
            403,
            format!(
                "Host `{host}` is not this machine: the control API answers loopback names, IP \
                 addresses and hosts allowed with --allow-host (this refuses DNS rebinding)"
            ),
        ));
    }
    if let Some(origin) = head.header("origin")
        && origin != format!("http://{host}")
    {
        return Err(error(
            403,
            format!("cross-site request refused: Origin `{origin}` is not this server"),
        ));
    }
    if let Some(site) = head.header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err(error(
            403,
            format!("cross-site request refused (Sec-Fetch-Site: {site})"),
        ));
    }
    if let Some(token) = &policy.token
        && bearer(head) != Some(token.as_str())
    {
        return Err(error(
            401,
            "the control API needs `Authorization: Bearer <control token>`",
        ));
    }
    Ok(())
}

/// Whether a `Host` header value names this machine.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // `[v6]:port`
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok()
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(head: &Head) -> Option<&str> {
    let v = head.header("authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn route(hub: &Arc<Hub>, head: &Head, body: Vec<u8>) -> Reply {
    let path = head.path();
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    let method = head.method.as_str();
    let params = Params::parse(head.query());
    match segments.as_slice() {
        ["control", "sources"] => match method {
            "GET" => Reply(200, json!(hub.infos())),
            _ => method_not_allowed(method, path, "GET"),
        },
        ["control", "restart"] => match method {
            "POST" => {
                let closed = hub.close_all(1001, "server restart");
                Reply(202, json!({ "closed": closed }))
            }
            _ => method_not_allowed(method, path, "POST"),
        },
        ["control", "sources", name, rest @ ..] => {
            let name = percent_decode(name);
            let Some(handle) = SourceHandle::new(Arc::clone(hub), &name) else {
                return error(404, format!("unknown source `{name}`"));
            };
            match (rest, method) {
                ([], "GET") => Reply(200, json!(handle.info())),
                ([], _) => method_not_allowed(method, path, "GET"),
                (["publish"], "POST") => publish(&handle, &body).await,
                (["query"], "POST") => query(hub, &handle, &params, &body).await,
                (["notifications"], "GET") => notifications(&handle, &params).await,
                (["reconnect"], "POST") => reconnect(&handle, &body).await,
                (["drop"], "POST") => match handle.drop_connection().await {
                    Ok(()) => Reply(202, json!({ "dropped": true })),
                    Err(e) => from_error(&e),
                },
                (["close"], "POST") => close(&handle, &params).await,
                (["frame"], "POST") => frame(&handle, &params, body).await,
                (["refuse"], "POST") => match params.number("count") {
                    Ok(count) => {
                        let count = u32::try_from(count.unwrap_or(1)).unwrap_or(u32::MAX);
                        handle.refuse_connects(count);
                        Reply(202, json!({ "refusing": count }))
                    }
                    Err(message) => error(400, message),
                },
                (
                    ["publish" | "query" | "reconnect" | "drop" | "refuse" | "close" | "frame"],
                    _,
                ) => method_not_allowed(method, path, "POST"),
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

/// The timeout of a query: `timeoutMs` or the server's default.
fn query_timeout(hub: &Hub, params: &Params) -> Result<Duration, Reply> {
    match params.number("timeoutMs") {
        Ok(Some(ms)) => Ok(Duration::from_millis(ms).min(MAX_WAIT)),
        Ok(None) => Ok(hub.opts.query_timeout),
        Err(message) => Err(error(400, message)),
    }
}

async fn query(hub: &Hub, handle: &SourceHandle, params: &Params, body: &[u8]) -> Reply {
    let with = match json_body(body, Some(Json::empty_object())) {
        Ok(j) => j,
        Err(reply) => return reply,
    };
    let timeout = match query_timeout(hub, params) {
        Ok(t) => t,
        Err(reply) => return reply,
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
        Err(TestkitError::QueryFailed { result, .. }) => {
            let error_body = match result.error_body().map(Json::to_value).transpose() {
                Ok(body) => body.unwrap_or(Value::Null),
                Err(e) => return error(502, format!("the query's error body: {e}")),
            };
            Reply(
                200,
                json!({
                    "status": result.status.0,
                    "rows": result.rows,
                    "parts": result.parts.len(),
                    "error": error_body,
                }),
            )
        }
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
    let items = match items
        .iter()
        .map(Json::to_value)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(items) => items,
        Err(e) => return error(502, format!("a notification: {e}")),
    };
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

async fn close(handle: &SourceHandle, params: &Params) -> Reply {
    let code = match params.number("code") {
        Ok(c) => c.unwrap_or(1000),
        Err(message) => return error(400, message),
    };
    // Codes a server may send in a close frame (RFC 6455 7.4): 1000-1003, 1007-1014,
    // 3000-4999.
    let code = match u16::try_from(code) {
        Ok(c @ (1000..=1003 | 1007..=1014 | 3000..=4999)) => c,
        _ => {
            return error(
                400,
                format!("close code {code} cannot be sent: use 1000-1003, 1007-1014 or 3000-4999"),
            );
        }
    };
    let reason = params.text("reason").unwrap_or_default();
    if reason.len() > 123 {
        return error(400, "a close reason is at most 123 bytes");
    }
    match handle.close(code, &reason).await {
        Ok(()) => Reply(202, json!({ "closed": code })),
        Err(e) => from_error(&e),
    }
}

async fn frame(handle: &SourceHandle, params: &Params, body: Vec<u8>) -> Reply {
    let binary = matches!(params.text("binary").as_deref(), Some("true" | "1"));
    let frame = if binary {
        RawFrame::Binary(body)
    } else {
        match String::from_utf8(body) {
            Ok(text) => RawFrame::Text(text),
            Err(_) => return error(400, "a text frame must be UTF-8; add ?binary=true"),
        }
    };
    match handle.send_raw(frame).await {
        Ok(()) => Reply(
            202,
            json!({ "sent": if binary { "binary" } else { "text" } }),
        ),
        Err(e) => from_error(&e),
    }
}

// ---- Vantiq's REST routes -------------------------------------------------------------------

/// Whether `path` is `/api/v<digits>/resources/sources/...`; gives the rest.
pub(crate) fn rest_route(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix("/api/v")?;
    let (version, tail) = rest.split_once('/')?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let tail = tail.strip_prefix("resources/sources/")?;
    Some(
        tail.trim_end_matches('/')
            .split('/')
            .map(percent_decode)
            .collect(),
    )
}

/// A Vantiq error list with one error.
fn vantiq_error(status: u16, code: &str, message: &str, params: Value) -> Reply {
    Reply(
        status,
        json!([{ "code": code, "message": message, "params": params }]),
    )
}

/// Serves `POST /api/v1/resources/sources/{name}` (publish) and
/// `POST /api/v1/resources/sources/{name}/query` (query) as Vantiq does.
pub(crate) async fn handle_rest(hub: Arc<Hub>, policy: &RestPolicy, tcp: TcpStream, head: Head) {
    let token = policy.token.clone();
    serve(tcp, head, async |head, body| {
        rest(&hub, token.as_deref(), head, body).await
    })
    .await;
}

async fn rest(hub: &Arc<Hub>, token: Option<&str>, head: &Head, body: Vec<u8>) -> Reply {
    let authorized = match (bearer(head), token) {
        (Some(given), Some(expected)) => given == expected,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !authorized {
        return vantiq_error(
            401,
            "io.vantiq.authentication.failed",
            "Authentication failed: send Authorization: Bearer <access token>.",
            json!([]),
        );
    }
    let Some(parts) = rest_route(head.path()) else {
        return vantiq_error(404, "io.vantiq.resource.not.found", "Not found", json!([]));
    };
    let (name, is_query) = match parts.as_slice() {
        [name] => (name.clone(), false),
        [name, q] if q == "query" => (name.clone(), true),
        _ => {
            return vantiq_error(
                404,
                "io.vantiq.resource.not.found",
                "No such source operation: {0}",
                json!([head.path()]),
            );
        }
    };
    if head.method != "POST" {
        return vantiq_error(
            405,
            "io.vantiq.method.not.allowed",
            "Method {0} is not allowed here; use POST.",
            json!([head.method]),
        );
    }
    let Some(handle) = SourceHandle::new(Arc::clone(hub), &name) else {
        return vantiq_error(
            404,
            "io.vantiq.resource.not.found",
            "The source {0} does not exist.",
            json!([name]),
        );
    };
    let empty = is_query.then(Json::empty_object);
    let object = match json_body(&body, empty) {
        Ok(j) => j,
        Err(Reply(_, v)) => {
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("bad request")
                .to_owned();
            return vantiq_error(400, "io.vantiq.request.invalid", &message, json!([]));
        }
    };
    let not_connected = |name: &str| {
        vantiq_error(
            400,
            "io.vantiq.source.not.connected",
            "The source {0} has no connected extension.",
            json!([name]),
        )
    };
    if !is_query {
        return match handle.publish(object).await {
            Ok(()) => Reply(200, json!({})),
            Err(TestkitError::NotConnected { .. }) => not_connected(&name),
            Err(e) => vantiq_error(500, "io.vantiq.server.error", &e.to_string(), json!([])),
        };
    }
    match handle
        .query_with_timeout(object, hub.opts.query_timeout)
        .await
    {
        // The rows of every reply, concatenated: what a VAIL SELECT gets.
        Ok(result) => Reply(200, Value::Array(result.rows)),
        Err(TestkitError::QueryFailed { result, .. }) => match result.error() {
            Some(e) => vantiq_error(
                400,
                &e.code,
                &e.template,
                Value::Array(e.parameters.clone()),
            ),
            None => vantiq_error(
                400,
                "io.vantiq.source.query.failed",
                "The source replied with status {0}.",
                json!([result.status.0]),
            ),
        },
        Err(TestkitError::NotConnected { .. }) => not_connected(&name),
        Err(TestkitError::Timeout { .. }) => vantiq_error(
            504,
            "io.vantiq.source.query.timeout",
            "The query to source {0} did not complete in time.",
            json!([name]),
        ),
        Err(e) => vantiq_error(500, "io.vantiq.server.error", &e.to_string(), json!([])),
    }
}

// ---- helpers --------------------------------------------------------------------------------

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

    /// A text parameter (the last one given).
    fn text(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// A non-negative integer parameter.
    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        match self.text(name) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
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
        assert_eq!(
            Params::parse("reason=a%20b").text("reason").as_deref(),
            Some("a b")
        );
    }

    #[test]
    fn hosts_that_name_this_machine() {
        let allowed = vec!["devbox".to_owned()];
        for ok in [
            "localhost",
            "localhost:8088",
            "LOCALHOST.:1",
            "app.localhost",
            "127.0.0.1:8088",
            "10.1.2.3:80",
            "[::1]:8088",
            "devbox:8088",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8088",
            "localhost.evil.example",
            "devbox2",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn rest_routes() {
        assert_eq!(
            rest_route("/api/v1/resources/sources/My%20S/query"),
            Some(vec!["My S".to_owned(), "query".to_owned()])
        );
        assert_eq!(
            rest_route("/api/v7/resources/sources/S"),
            Some(vec!["S".to_owned()])
        );
        assert_eq!(rest_route("/api/v/resources/sources/S"), None);
        assert_eq!(rest_route("/api/v1/resources/types/S"), None);
    }
}
