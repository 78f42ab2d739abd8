//! The HTTP probe: `GET /healthz` (liveness) and `GET /readyz` (readiness).
//!
//! One accept thread (see [`crate::listener`]) hands each connection to a short-lived
//! handler thread, so a slow client delays nobody else. At most [`MAX_CONNECTIONS`] are
//! served at once: a new connection beyond that closes the oldest one, so idle clients
//! cannot lock a real probe out. A handler reads one request head (at most [`MAX_HEAD`] bytes, within the configured
//! timeout), writes one answer with `Connection: close` and closes the connection. When the
//! probe stops, every open connection is shut down (which ends a blocked read or write at
//! once) and every handler joined.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Readiness;
use crate::listener::{accept_until_stopped, spawn_counted};
use crate::state::Shared;
use crate::sync::{StopSignal, lock};

/// Largest request head read (request line and headers).
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Most headers a request may have.
const MAX_HEADERS: usize = 32;
/// Most connections served at once; a new one beyond that closes the oldest.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// After answering, how long to wait for the client to close (so that unread input does not
/// turn the close into a reset that could destroy the answer) and how much to read.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_LIMIT: usize = 64 * 1024;

/// Serves the HTTP probe on `listener` until `stop` is raised, then closes every connection
/// and joins every handler.
pub(crate) fn serve(
    listener: TcpListener,
    stop: &StopSignal,
    shared: &Arc<Shared>,
    timeout: Duration,
) {
    let open: Arc<Mutex<BTreeMap<u64, TcpStream>>> = Arc::default();
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    accept_until_stopped(&listener, stop, |stream| {
        reap(&mut handlers);
        let Ok(clone) = stream.try_clone() else {
            return;
        };
        let id = next_id;
        next_id = next_id.wrapping_add(1);
        {
            let mut open = lock(&open);
            if open.len() >= MAX_CONNECTIONS {
                // Make room by closing the oldest connection (most likely a client that
                // holds it open without asking anything), so that a flood of idle
                // connections cannot lock a real probe out.
                if let Some((_, oldest)) = open.pop_first() {
                    tracing::debug!("HTTP health probe busy; closing the oldest connection");
                    let _ = oldest.shutdown(Shutdown::Both);
                }
            }
            open.insert(id, clone);
        }
        let handler = spawn_counted("vantiq-health-http-conn", &shared.threads, {
            let shared = Arc::clone(shared);
            let open = Arc::clone(&open);
            move || {
                handle(stream, &shared, timeout);
                lock(&open).remove(&id);
            }
        });
        match handler {
            Ok(h) => handlers.push(h),
            Err(e) => {
                lock(&open).remove(&id);
                tracing::warn!(error = %e, "cannot start an HTTP health probe handler");
            }
        }
    });
    drop(listener);
    let still_open = std::mem::take(&mut *lock(&open));
    for conn in still_open.into_values() {
        let _ = conn.shutdown(Shutdown::Both);
    }
    for h in handlers {
        let _ = h.join();
    }
}

/// Joins the handlers that have finished.
fn reap(handlers: &mut Vec<JoinHandle<()>>) {
    let (done, running): (Vec<_>, Vec<_>) = std::mem::take(handlers)
        .into_iter()
        .partition(|h| h.is_finished());
    for h in done {
        let _ = h.join();
    }
    *handlers = running;
}

/// Serves one connection: read a request, answer, close.
fn handle(mut stream: TcpStream, shared: &Shared, timeout: Duration) {
    let Some(response) = read_request(&mut stream, shared, timeout) else {
        return;
    };
    if stream.set_write_timeout(Some(timeout)).is_err() {
        return;
    }
    if stream.write_all(&response.to_bytes()).is_err() {
        return;
    }
    linger(&mut stream, timeout);
}

/// Reads a request head within `timeout` and works out the answer; `None` closes the
/// connection without one (the client left without sending anything, or an I/O error).
fn read_request(stream: &mut TcpStream, shared: &Shared, timeout: Duration) -> Option<Response> {
    let deadline = Instant::now() + timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let remaining = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero());
        let Some(remaining) = remaining else {
            return Some(Response::error(408));
        };
        stream.set_read_timeout(Some(remaining)).ok()?;
        let room = MAX_HEAD.saturating_sub(buf.len()).min(chunk.len());
        let dst = chunk.get_mut(..room)?;
        match stream.read(dst) {
            Ok(0) if buf.is_empty() => return None,
            Ok(0) => return Some(Response::error(400)),
            Ok(n) => {
                buf.extend_from_slice(dst.get(..n)?);
                match parse(&buf) {
                    Parsed::Complete { method, path } => {
                        return Some(route(&method, &path, shared));
                    }
                    Parsed::Partial if buf.len() >= MAX_HEAD => {
                        return Some(Response::error(431));
                    }
                    Parsed::Partial => {}
                    Parsed::Invalid => return Some(Response::error(400)),
                    Parsed::TooLarge => return Some(Response::error(431)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Some(Response::error(408));
            }
            Err(_) => return None,
        }
    }
}

/// After the answer: half-close, then read what the client still sends until it closes
/// (briefly, and a bounded amount).
fn linger(stream: &mut TcpStream, timeout: Duration) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    if stream.set_read_timeout(Some(LINGER.min(timeout))).is_err() {
        return;
    }
    let mut chunk = [0u8; 1024];
    let mut drained = 0usize;
    while drained < LINGER_LIMIT {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// The outcome of parsing what has been read so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole request head.
    Complete {
        /// The method, e.g. `GET`.
        method: String,
        /// The request target, e.g. `/readyz?verbose`.
        path: String,
    },
    /// Valid so far; more is needed.
    Partial,
    /// Not HTTP/1.x.
    Invalid,
    /// Too many headers.
    TooLarge,
}

/// Parses a request head.
pub(crate) fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => match (req.method, req.path) {
            (Some(method), Some(path)) => Parsed::Complete {
                method: method.to_owned(),
                path: path.to_owned(),
            },
            _ => Parsed::Invalid,
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::TooLarge,
        Err(_) => Parsed::Invalid,
    }
}

/// The answer to a parsed request.
pub(crate) fn route(method: &str, target: &str, shared: &Shared) -> Response {
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    let known = matches!(path, "/healthz" | "/readyz");
    if !known {
        return Response::error(404);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Response::error(405),
    };
    let status = shared.snapshot();
    let (code, body) = if path == "/healthz" {
        let code = if status.alive { 200 } else { 503 };
        (code, status.healthz_json())
    } else {
        let code = if status.readiness() == Readiness::Ready {
            200
        } else {
            503
        };
        (code, status.readyz_json())
    };
    Response {
        code,
        body,
        head_only,
    }
}

/// One HTTP answer (always JSON, never cached, connection closed after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) code: u16,
    pub(crate) body: String,
    pub(crate) head_only: bool,
}

impl Response {
    /// An error answer with body `{"error":"<reason in lower case>"}`.
    pub(crate) fn error(code: u16) -> Self {
        Response {
            code,
            body: format!("{{\"error\":\"{}\"}}", reason(code).to_ascii_lowercase()),
            head_only: false,
        }
    }

    /// The bytes on the wire.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let allow = if self.code == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n{allow}\r\n",
            self.code,
            reason(self.code),
            self.body.len(),
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The reason phrase of the status codes this probe uses.
fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectionState;

    fn complete(method: &str, path: &str) -> Parsed {
        Parsed::Complete {
            method: method.into(),
            path: path.into(),
        }
    }

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            complete("GET", "/healthz")
        );
        assert_eq!(
            parse(b"HEAD /readyz?x=1 HTTP/1.0\r\n\r\n"),
            complete("HEAD", "/readyz?x=1")
        );
        assert_eq!(
            parse(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        );
        assert_eq!(parse(b"GE"), Parsed::Partial);
        assert_eq!(parse(b""), Parsed::Partial);
    }

    #[test]
    fn rejects_garbage_early() {
        assert_eq!(parse(b"\x16\x03\x01\x02\x00\x01"), Parsed::Invalid);
        assert_eq!(parse(b"hello world\r\n\r\n"), Parsed::Invalid);
        assert_eq!(parse(b"GET /healthz HTTP/2.0\r\n\r\n"), Parsed::Invalid);
        assert_eq!(parse(b"GET /a b HTTP/1.1\r\n\r\n"), Parsed::Invalid);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"),
            Parsed::Invalid
        );
    }

    #[test]
    fn too_many_headers() {
        let mut req = String::from("GET /healthz HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            req.push_str(&format!("X-{i}: {i}\r\n"));
        }
        req.push_str("\r\n");
        assert_eq!(parse(req.as_bytes()), Parsed::TooLarge);
    }

    #[test]
    fn routes() {
        let shared = Shared::new();
        let r = route("GET", "/healthz", &shared);
        assert_eq!((r.code, r.body.as_str()), (200, r#"{"status":"alive"}"#));
        let r = route("GET", "/readyz", &shared);
        assert_eq!(
            (r.code, r.body.as_str()),
            (503, r#"{"status":"never declared","sources":{}}"#)
        );
        {
            let mut d = lock(&shared.data);
            d.healthy = Some(true);
            d.alive = false;
            d.sources.insert("s".into(), ConnectionState::Configured);
        }
        let r = route("GET", "/readyz?verbose", &shared);
        assert_eq!(
            (r.code, r.body.as_str()),
            (200, r#"{"status":"ready","sources":{"s":"configured"}}"#)
        );
        let r = route("HEAD", "/healthz", &shared);
        assert_eq!(r.code, 503);
        assert!(r.head_only);
        assert_eq!(route("GET", "/", &shared).code, 404);
        assert_eq!(route("POST", "/nope", &shared).code, 404);
        assert_eq!(route("POST", "/readyz", &shared).code, 405);
        assert_eq!(route("GET", "/healthz/", &shared).code, 404);
    }

    #[test]
    fn response_bytes() {
        let r = Response {
            code: 200,
            body: "{}".into(),
            head_only: false,
        };
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n{}"
        );
        let r = Response {
            head_only: true,
            ..Response::error(405)
        };
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\n\
             Content-Length: 30\r\nCache-Control: no-store\r\nConnection: close\r\n\
             Allow: GET, HEAD\r\n\r\n"
        );
        assert_eq!(Response::error(400).body, r#"{"error":"bad request"}"#);
        assert_eq!(
            Response::error(431).body,
            r#"{"error":"request header fields too large"}"#
        );
        assert_eq!(reason(999), "Unknown");
    }
}
