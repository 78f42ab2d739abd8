//! The custom-transport example (`examples/blocking/`: blocking tungstenite, std threads, no
//! async runtime) against the sans-IO server (`vantiq_proto::server`), hosted on a std
//! thread over loopback TCP with blocking tungstenite as well.

// Both sides own sockets, threads and the clock.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../examples/blocking/connector.rs"]
mod connector;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use connector::Report;
use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use vantiq_proto::server::{
    ConnectOutcome, ConnectionId, Registry, RegistryEvent, ServerEvent, ServerOptions,
    ServerTransmit,
};
use vantiq_proto::{Json, TargetUrl};

/// Longest any step may take.
const WAIT: Duration = Duration::from_secs(20);
/// How often the server looks at its commands while no frame arrives.
const POLL: Duration = Duration::from_millis(5);

/// What the test asks of the server.
enum Command {
    Publish(Json),
    Query(Json),
    /// Drop the socket abruptly.
    Drop,
}

/// What the server saw.
#[derive(Debug, Clone)]
enum Seen {
    Event(ConnectionId, ServerEvent),
    Registry(RegistryEvent),
}

/// The sans-IO server on a std thread: one blocking tungstenite socket at a time (the
/// connector holds one), commands from the test between reads.
struct Server {
    url: String,
    commands: Sender<Command>,
    seen: Receiver<Seen>,
    /// Everything seen so far, in order.
    log: Vec<Seen>,
}

impl Server {
    fn start(source: &str, config: serde_json::Value) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut options = ServerOptions::default();
        options.token = Some("T".into());
        // The server writes nothing during a burst, so a socket the connector drops ends
        // with a FIN, not a reset that could discard what the server has not read yet.
        options.ack_notifications = false;
        let mut reg = Registry::new(options);
        reg.define_source(source, Json::from(config));
        let (commands, command_rx) = channel();
        let (seen_tx, seen) = channel();
        std::thread::spawn(move || {
            while let Ok((tcp, _)) = listener.accept() {
                if serve(&mut reg, tcp, &command_rx, &seen_tx).is_err() {
                    return; // the test is over
                }
            }
        });
        Server {
            url,
            commands,
            seen,
            log: Vec::new(),
        }
    }

    fn send(&self, command: Command) {
        self.commands.send(command).unwrap();
    }

    /// Waits for the first thing seen (from now on) for which `f` gives a value.
    fn until<T>(&mut self, what: &str, mut f: impl FnMut(&Seen) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.seen.recv_timeout(left) {
                Ok(seen) => {
                    let found = f(&seen);
                    self.log.push(seen);
                    if let Some(v) = found {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("{what}: not within {WAIT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("{what}: the server stopped"),
            }
        }
    }

    /// Waits for the next notification; gives it with the connection it came on.
    fn notification(&mut self) -> (ConnectionId, serde_json::Value) {
        self.until("a notification", |s| match s {
            Seen::Event(id, ServerEvent::Notification { object, .. }) => {
                Some((*id, object.to_value().unwrap()))
            }
            _ => None,
        })
    }

    /// Waits for the next accepted `connectExtension`; gives its connection and secret.
    fn attached(&mut self) -> (ConnectionId, Option<String>) {
        self.until("an accepted connectExtension", |s| match s {
            Seen::Event(
                id,
                ServerEvent::ConnectAttempt {
                    reconnect_secret,
                    outcome: ConnectOutcome::Accepted | ConnectOutcome::TookOver,
                    ..
                },
            ) => Some((*id, reconnect_secret.clone())),
            _ => None,
        })
    }
}

/// Serves one socket until it ends. `Err` when the test has gone (nobody listens).
fn serve(
    reg: &mut Registry,
    tcp: TcpStream,
    commands: &Receiver<Command>,
    seen: &Sender<Seen>,
) -> Result<(), ()> {
    let Ok(mut ws) = tungstenite::accept(tcp) else {
        return Ok(());
    };
    ws.get_ref().set_read_timeout(Some(POLL)).unwrap();
    let mut conn = reg.accept();
    loop {
        let now = Instant::now();
        while let Ok(command) = commands.try_recv() {
            // A command the connection cannot take (no source) is the test's mistake; the
            // test then fails waiting for its effect.
            let _ = match command {
                Command::Publish(object) => conn.publish(reg, object),
                Command::Query(params) => conn.query(now, reg, params, WAIT).map(drop),
                Command::Drop => {
                    conn.abort(reg);
                    Ok(())
                }
            };
        }
        while let Some(t) = conn.poll_transmit() {
            let msg = match t {
                ServerTransmit::Text(t) => Message::text(t),
                ServerTransmit::Binary(b) => Message::binary(b),
                ServerTransmit::Close { code, reason } => Message::Close(Some(CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                })),
                ServerTransmit::Abort => break,
            };
            // A failed write shows as the end of the socket on the next read.
            let _ = ws.send(msg);
        }
        while let Some(e) = conn.poll_event() {
            seen.send(Seen::Event(conn.id(), e)).map_err(drop)?;
        }
        while let Some(e) = reg.poll_event() {
            seen.send(Seen::Registry(e)).map_err(drop)?;
        }
        if conn.is_closed() {
            return Ok(());
        }
        let now = Instant::now();
        match ws.read() {
            Ok(Message::Text(t)) => drop(conn.handle_frame(now, reg, t.as_bytes())),
            Ok(Message::Binary(b)) => drop(conn.handle_frame(now, reg, &b)),
            Ok(Message::Close(f)) => {
                let (code, reason) = f.map_or((None, String::new()), |f| {
                    (Some(u16::from(f.code)), f.reason.to_string())
                });
                conn.handle_close_frame(now, reg, code, &reason);
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => conn.handle_closed(now, reg),
        }
    }
}

/// A TCP stream whose writes fail, taking nothing, once `budget` bytes would be passed: a
/// socket that dies mid-burst.
struct Cut {
    tcp: TcpStream,
    budget: usize,
}

impl Read for Cut {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Cut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.budget {
            self.budget = 0;
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let n = self.tcp.write(buf)?;
        self.budget -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

impl connector::Stream for Cut {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp.set_write_timeout(timeout)
    }
}

fn connect_tcp(url: &TargetUrl) -> io::Result<TcpStream> {
    TcpStream::connect((url.host(), url.port()))
}

/// The connector on its own thread.
struct Running {
    notes: Sender<Json>,
    reports: Receiver<Report>,
    stop: Arc<AtomicBool>,
    done: Receiver<Result<(), String>>,
}

impl Running {
    fn start<S: connector::Stream + 'static>(
        url: &str,
        source: &str,
        connect: impl FnMut(&TargetUrl) -> io::Result<S> + Send + 'static,
    ) -> Running {
        let (notes, note_rx) = channel();
        let (report_tx, reports) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = channel();
        let (url, source, stop2) = (url.to_owned(), source.to_owned(), stop.clone());
        std::thread::spawn(move || {
            let r =
                connector::run_connector(&url, "T", &source, connect, note_rx, report_tx, stop2);
            let _ = done_tx.send(r);
        });
        Running {
            notes,
            reports,
            stop,
            done,
        }
    }

    /// Asks for a graceful stop; gives what `run_connector` returned.
    fn stop(&self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.done.recv_timeout(WAIT).expect("the connector returns")
    }
}

#[test]
fn blocking_connector_runs_a_whole_session_and_reconnects() {
    let mut server = Server::start("B", json!({"hello": "world"}));
    let connector = Running::start(&server.url, "B", connect_tcp);
    let hello = json!({"connected": true, "config": {"hello": "world"}});
    let (first, first_secret) = server.attached();
    assert_eq!(server.notification(), (first, hello.clone()));
    server.send(Command::Publish(json!({"ping": 1}).into()));
    assert_eq!(server.notification(), (first, json!({"ping": 1})));
    server.send(Command::Query(json!({"q": 1}).into()));
    let result = server.until("the query's result", |s| match s {
        Seen::Registry(RegistryEvent::QueryFinished(r)) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(result.rows, [json!({"echo": {"q": 1}})]);
    // A notification from another thread.
    connector.notes.send(json!({"tick": 0}).into()).unwrap();
    assert_eq!(server.notification(), (first, json!({"tick": 0})));
    // Dropped: it reconnects with the same secret and goes on.
    server.send(Command::Drop);
    let (second, second_secret) = server.attached();
    assert_ne!(second, first);
    assert!(first_secret.is_some());
    assert_eq!(second_secret, first_secret);
    assert_eq!(server.notification(), (second, hello));
    server.send(Command::Publish(json!({"ping": 2}).into()));
    assert_eq!(server.notification(), (second, json!({"ping": 2})));
    // Stop: a graceful close.
    assert_eq!(connector.stop(), Ok(()));
    let close = server.until("the connector's close frame", |s| match s {
        Seen::Event(id, ServerEvent::PeerClosed { code, reason, .. }) => {
            Some((*id, *code, reason.clone()))
        }
        _ => None,
    });
    assert_eq!(close, (second, Some(1000), "Closed by client".to_owned()));
    let reports: Vec<Report> = connector.reports.try_iter().collect();
    let config = Json::from(json!({"hello": "world"}));
    assert_eq!(
        reports,
        [
            Report::Configured(config.clone()),
            Report::Echoed(json!({"ping": 1}).into()),
            Report::Answered(json!({"q": 1}).into()),
            Report::Disconnected,
            Report::Configured(config),
            Report::Echoed(json!({"ping": 2}).into()),
            Report::Disconnected,
            Report::Closed(None),
        ]
    );
}

/// The socket dies in the middle of a burst of notifications: the write of one fails.
/// Every notification the connection still held then (queued, not yet taken) is delivered
/// on the next session, in order and once; the one whose write failed had been taken, which
/// counts as written (like a frame in the kernel's buffer of a socket that dies), and is the
/// only one missing.
#[test]
fn notifications_queued_when_a_send_fails_arrive_in_order_once_in_the_next_session() {
    const TOTAL: u64 = 300;
    let mut server = Server::start("B", json!({}));
    // The first socket takes 8 KiB (the handshake, then about 60 notifications), then fails.
    let mut budgets = vec![8 * 1024, usize::MAX].into_iter();
    let connector = Running::start(&server.url, "B", move |url| {
        let budget = budgets.next().unwrap_or(usize::MAX);
        Ok(Cut {
            tcp: connect_tcp(url)?,
            budget,
        })
    });
    // The burst waits for the session: every notification is queued when the socket opens.
    let pad = "p".repeat(100);
    for n in 0..TOTAL {
        connector
            .notes
            .send(json!({"n": n, "pad": pad}).into())
            .unwrap();
    }
    let (first, _) = server.attached();
    let (second, _) = server.attached();
    // The second session has begun for the connector too (its greeting comes after what
    // was queued for it).
    server.until("the second session's greeting", |s| match s {
        Seen::Event(id, ServerEvent::Notification { object, .. }) => {
            (*id == second && object.to_value().unwrap()["connected"] == json!(true)).then_some(())
        }
        _ => None,
    });
    // A graceful stop delivers everything still queued, then closes.
    assert_eq!(connector.stop(), Ok(()));
    server.until("the connector's close frame", |s| match s {
        Seen::Event(id, ServerEvent::PeerClosed { .. }) => (*id == second).then_some(()),
        _ => None,
    });
    let numbers = |conn: ConnectionId| -> Vec<u64> {
        let n = |object: &Json| {
            object
                .to_value()
                .unwrap()
                .get("n")
                .and_then(serde_json::Value::as_u64)
        };
        server
            .log
            .iter()
            .filter_map(|s| match s {
                Seen::Event(id, ServerEvent::Notification { object, .. }) if *id == conn => {
                    n(object)
                }
                _ => None,
            })
            .collect()
    };
    let (on_first, on_second) = (numbers(first), numbers(second));
    let k = on_first.len() as u64;
    assert!(
        k > 0 && k < TOTAL - 1,
        "the socket failed after {k} notifications"
    );
    // The first socket: a prefix, in order.
    assert_eq!(on_first, (0..k).collect::<Vec<_>>());
    // The next session: everything after the one whose write failed, in order, once.
    assert_eq!(on_second, (k + 1..TOTAL).collect::<Vec<_>>());
    let reports: Vec<Report> = connector.reports.try_iter().collect();
    assert_eq!(
        reports,
        [
            Report::Configured(Json::empty_object()),
            Report::Disconnected,
            Report::Configured(Json::empty_object()),
            Report::Disconnected,
            Report::Closed(None),
        ]
    );
}
