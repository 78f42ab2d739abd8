//! The connector of the `blocking` example: the whole driver loop of a
//! [`vantiq_proto::Connection`] on a blocking WebSocket (`tungstenite`) over any blocking
//! byte stream ([`Stream`]), with std threads and no async runtime. `main.rs` runs it on
//! TCP; `tests/blocking_example.rs` runs it against the sans-IO server.
//!
//! It shows the calling contract end to end: perform every transmit, hand every event to
//! the application, sleep until the next timeout or socket input. It authenticates,
//! attaches, echoes publishes back as notifications, answers queries, sends the
//! notifications other threads hand it, and reconnects after a drop (with the back-off and
//! keep-alive of the core).
//!
//! Writes block, so every frame taken is written at once (`poll_transmit(true)`); a write
//! that fails ends the socket, and the connection puts every notification it still holds
//! back in its queue for the next session: nothing is lost but the frame the socket was
//! taking when it failed (taken counts as written, as for a frame in the kernel's buffer).
//! A write timeout on the socket stands in for the core's write-stall detection.

// A driver reads the clock, sleeps and owns a socket: that is its job, not the core's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};
use vantiq_proto::{
    Connection, ConnectionConfig, Credentials, Event, Json, Reply, Secret, SocketEnd, TargetUrl,
    Transmit,
};

/// A blocking byte stream the connector runs its WebSocket on: TCP, TLS over TCP, or a
/// test's own.
pub(crate) trait Stream: Read + Write {
    /// Bounds how long a read blocks (`None`: for ever); a read that times out fails with
    /// `WouldBlock` or `TimedOut`.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Bounds how long a write blocks: a socket that takes nothing for this long is dead.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Stream for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
}

/// Longest a read blocks, so that notifications from other threads go out promptly.
const POLL: Duration = Duration::from_millis(20);

/// What the connector did, for whoever runs it (the example prints it; a test checks it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Report {
    /// A session began with this configuration.
    Configured(Json),
    /// A publish was echoed.
    Echoed(Json),
    /// A query was answered.
    Answered(Json),
    /// The session ended.
    Disconnected,
    /// The connection ended for good (the error, if any).
    Closed(Option<String>),
}

/// Runs the connector until `stop` is set (then closes gracefully) or a fatal error, opening
/// each socket with `connect` (given where to connect). Notifications sent on `notes` go out
/// in order; every event is reported on `report`.
pub(crate) fn run_connector<S: Stream>(
    url: &str,
    token: &str,
    source: &str,
    mut connect: impl FnMut(&TargetUrl) -> io::Result<S>,
    notes: Receiver<Json>,
    report: Sender<Report>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let url = TargetUrl::parse(url).map_err(|e| e.to_string())?;
    let seed = u64::from(std::process::id()) ^ Instant::now().elapsed().as_nanos() as u64;
    let config = ConnectionConfig::new(source, url, Credentials::Token(Secret::new(token)), seed);
    let mut conn = Connection::new(config, Instant::now());
    let mut socket: Option<WebSocket<S>> = None;
    let mut closing = false;
    loop {
        // 1. Perform every transmit, in order.
        flush(&mut conn, &mut socket, &mut connect);
        // 2. Hand every event to the application.
        while let Some(e) = conn.poll_event() {
            match e {
                Event::Configured { config } => {
                    let hello = format!(r#"{{"connected":true,"config":{config}}}"#);
                    let _ = conn.notify(Json::from_string(hello).map_err(|e| e.to_string())?);
                    let _ = report.send(Report::Configured(config));
                }
                Event::Publish { object } => {
                    let _ = report.send(Report::Echoed(object.clone()));
                    if let Err(e) = conn.notify(object) {
                        eprintln!("blocking: publish not echoed: {e}");
                    }
                }
                Event::Query { id, params, .. } => {
                    let rows = Json::from_string(format!(r#"[{{"echo":{params}}}]"#))
                        .map_err(|e| e.to_string())?;
                    if let Err(e) = conn.respond(id, Reply::Complete(rows)) {
                        eprintln!("blocking: reply not sent: {e}");
                    }
                    let _ = report.send(Report::Answered(params));
                }
                Event::Disconnected { .. } => {
                    let _ = report.send(Report::Disconnected);
                }
                Event::Closed { error, undelivered } => {
                    if undelivered > 0 {
                        eprintln!("blocking: {undelivered} notifications were never delivered");
                    }
                    let error = error.map(|e| e.to_string());
                    let _ = report.send(Report::Closed(error.clone()));
                    return error.map_or(Ok(()), Err);
                }
            }
        }
        // Replies and notifications made above are transmits too.
        flush(&mut conn, &mut socket, &mut connect);
        // 3. Commands from other threads.
        if stop.load(Ordering::Relaxed) && !closing {
            closing = true;
            conn.close(Instant::now());
            continue;
        }
        while conn.can_notify() {
            match notes.try_recv() {
                Ok(note) => {
                    if let Err(e) = conn.notify(note) {
                        eprintln!("blocking: notification refused: {e}");
                    }
                }
                Err(_) => break,
            }
        }
        flush(&mut conn, &mut socket, &mut connect);
        // 4. Wait for input or the next timeout, whichever comes first.
        let now = Instant::now();
        let deadline = conn.poll_timeout();
        let wait = deadline.map_or(POLL, |d| d.saturating_duration_since(now).min(POLL));
        if socket.is_some() {
            read_one(&mut conn, &mut socket, wait);
        } else {
            std::thread::sleep(wait);
        }
        if conn.poll_timeout().is_some_and(|d| d <= Instant::now()) {
            conn.handle_timeout(Instant::now());
        }
    }
}

/// Performs every transmit waiting, in order. Writes block: the socket always takes a frame.
fn flush<S: Stream>(
    conn: &mut Connection,
    socket: &mut Option<WebSocket<S>>,
    connect: &mut impl FnMut(&TargetUrl) -> io::Result<S>,
) {
    while let Some(t) = conn.poll_transmit(true) {
        perform(conn, socket, connect, t);
    }
}

/// Opens a socket with `connect` and performs the WebSocket handshake on it.
fn open<S: Stream>(
    url: &TargetUrl,
    write_timeout: Duration,
    connect: &mut impl FnMut(&TargetUrl) -> io::Result<S>,
) -> Result<WebSocket<S>, String> {
    let stream = connect(url).map_err(|e| e.to_string())?;
    // A socket that takes nothing for this long is dead.
    stream
        .set_write_timeout(Some(write_timeout))
        .map_err(|e| e.to_string())?;
    let (ws, _response) = tungstenite::client(url.as_str(), stream).map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Does what a transmit asks with the blocking socket.
fn perform<S: Stream>(
    conn: &mut Connection,
    socket: &mut Option<WebSocket<S>>,
    connect: &mut impl FnMut(&TargetUrl) -> io::Result<S>,
    t: Transmit,
) {
    match t {
        Transmit::Connect { url } => match open(&url, conn.config().write_timeout, connect) {
            Ok(ws) => {
                *socket = Some(ws);
                conn.handle_open(Instant::now());
            }
            Err(e) => conn.handle_closed(Instant::now(), SocketEnd::ConnectFailed(e)),
        },
        Transmit::Frame(text) => send(conn, socket, Message::text(text)),
        Transmit::Ping { payload } => send(conn, socket, Message::Ping(payload.to_vec().into())),
        Transmit::Close { code, reason } => {
            if let Some(mut ws) = socket.take() {
                let _ = ws.close(Some(CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                }));
                let _ = ws.flush();
            }
        }
        Transmit::Abort => *socket = None,
    }
}

/// Writes one message. A failure ends the socket; the connection takes back every
/// notification it still holds.
fn send<S: Stream>(conn: &mut Connection, socket: &mut Option<WebSocket<S>>, msg: Message) {
    let Some(ws) = socket.as_mut() else { return };
    if let Err(e) = ws.send(msg) {
        *socket = None;
        conn.handle_closed(Instant::now(), SocketEnd::Error(e.to_string()));
    }
}

/// Reads at most one message, waiting at most `wait`.
fn read_one<S: Stream>(conn: &mut Connection, socket: &mut Option<WebSocket<S>>, wait: Duration) {
    let Some(ws) = socket.as_mut() else { return };
    let _ = ws
        .get_ref()
        .set_read_timeout(Some(wait.max(Duration::from_millis(1))));
    let now = Instant::now();
    match ws.read() {
        Ok(Message::Text(t)) => report_frame(conn.handle_frame(now, t.as_bytes())),
        Ok(Message::Binary(b)) => report_frame(conn.handle_frame(now, &b)),
        Ok(Message::Pong(payload)) => conn.handle_pong(now, &payload),
        Ok(Message::Close(frame)) => {
            // The session is over as soon as the server's close frame arrives; the reply the
            // WebSocket layer queued goes out if it can.
            let _ = ws.flush();
            *socket = None;
            let (code, reason) = frame.map_or((None, String::new()), |f| {
                (Some(u16::from(f.code)), f.reason.to_string())
            });
            conn.handle_closed(now, SocketEnd::Closed { code, reason });
        }
        Ok(_) => {}
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
            *socket = None;
            conn.handle_closed(
                now,
                SocketEnd::Closed {
                    code: None,
                    reason: String::new(),
                },
            );
        }
        Err(e) => {
            *socket = None;
            conn.handle_closed(now, SocketEnd::Error(e.to_string()));
        }
    }
}

fn report_frame(r: Result<(), vantiq_proto::FrameError>) {
    if let Err(e) = r {
        eprintln!("blocking: dropped a frame: {e}");
    }
}
