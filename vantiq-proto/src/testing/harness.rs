//! A checked driver for [`Connection`]: applies operations (server frames, garbage, socket
//! events, application commands, clock ticks) and asserts the connection's invariants after
//! every step. Shared by the crate's property tests and the `connection_ops` fuzz target.
//!
//! ```
//! use vantiq_proto::testing::harness::{Op, run};
//!
//! // Any sequence of operations; `run` panics when the connection breaks an invariant.
//! run(7, 2, false, vec![Op::OpenOk, Op::AuthOk, Op::Configure, Op::Notify, Op::Tick(100)]);
//! // Fuzzers decode arbitrary bytes into operations.
//! run(1, 1, true, Op::decode_all(&[10, 0, 4, 6, 15, 0, 1]));
//! ```
//!
//! Invariants: no frame before the socket is open; `validate` then `connectExtension` first on
//! every socket; every query reply carries the address of an open query of the current session,
//! with at most one terminal reply per query; a refused reply transmits nothing; notifications
//! leave in the order accepted and none is lost or duplicated (across sockets that end with
//! frames still queued, too); with a socket that takes no frames, only socket actions come
//! out; `poll_timeout()` after `handle_timeout(now)` is after `now`; after `Closed`, nothing.

// A test utility: its assertions are its output, so it panics on purpose.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::frame::{ClientFrame, ServerFrame, StatusFrame};
use crate::{
    Connection, ConnectionConfig, Credentials, Event, Json, NotifyRefused, QueryError, QueryId,
    Reply, Secret, SocketEnd, Status, TargetUrl, Transmit,
};

/// One step of a harness run.
#[derive(Debug, Clone)]
pub enum Op {
    /// The server accepts the credentials (`{"status":200}`).
    AuthOk,
    /// The server answers with this error status.
    AuthFail(i64),
    /// The server refuses `connectExtension` (`{"status":400}`).
    Refuse,
    /// An acknowledgement `{"status":200}`.
    Ack,
    /// `configureExtension`.
    Configure,
    /// `publish`.
    Publish,
    /// `query` with a fresh reply address.
    Query,
    /// `reconnectRequired`.
    ReconnectRequired,
    /// A frame with an unknown op.
    Unknown,
    /// These bytes as a frame.
    Garbage(Vec<u8>),
    /// The socket asked for opens.
    OpenOk,
    /// The socket asked for cannot be opened.
    OpenFail,
    /// The open socket fails.
    Drop,
    /// A pong arrives.
    Pong,
    /// The application notifies.
    Notify,
    /// The application replies to the query picked (modulo the queries seen) with the reply
    /// kind picked (modulo 4: partial, complete, empty, error).
    Respond(usize, u8),
    /// The application abandons the query picked after this many replies (modulo 3).
    Abandon(usize, u8),
    /// The application closes the connection.
    Close,
    /// This many milliseconds pass.
    Tick(u64),
    /// The driver pauses (or resumes) reading.
    Pause(bool),
    /// The socket stops (or starts again) taking frames.
    Block(bool),
}

/// The socket as the harness sees it.
#[derive(Debug, PartialEq)]
pub enum Socket {
    /// None.
    None,
    /// Asked for, not open yet.
    Pending,
    /// Open; `frames` were sent on it.
    Open {
        /// Frames sent on this socket.
        frames: usize,
    },
}

/// A [`Connection`] and the bookkeeping that checks it.
#[derive(Debug)]
pub struct Harness {
    /// The connection under test.
    pub conn: Connection,
    /// The virtual clock.
    pub now: Instant,
    /// The socket.
    pub socket: Socket,
    /// Every query id ever delivered, with its reply address.
    pub queries: Vec<(QueryId, String)>,
    /// Reply address → terminal replies seen.
    pub terminals: HashMap<String, u32>,
    /// Reply addresses of the current session, not yet finished.
    pub open_addrs: Vec<String>,
    /// Reply addresses whose terminal reply was accepted and not sent yet.
    pub finishing: Vec<String>,
    /// The number of the next reply address.
    pub next_addr: u64,
    /// The number of the next notification.
    pub next_note: u64,
    /// Notifications accepted by the connection, in order.
    pub accepted: Vec<u64>,
    /// Notifications transmitted, in order.
    pub transmitted: Vec<u64>,
    /// Whether `Closed` was seen.
    pub closed: bool,
    /// The notifications `Closed` reported undelivered.
    pub undelivered: usize,
    /// Whether the socket takes frames.
    pub writable: bool,
    /// Payload of the last ping sent.
    pub last_ping: Option<[u8; 8]>,
}

/// Valid JSON text as [`Json`]; panics on anything else.
#[must_use]
pub fn json(s: &str) -> Json {
    Json::from_string(s.to_owned()).unwrap()
}

impl Harness {
    /// A connection to source `S` with this seed, notification queue size and
    /// `fail_on_connection_error`, its first transmits checked.
    #[must_use]
    pub fn new(seed: u64, queue: usize, fail_fast: bool) -> Self {
        let url = TargetUrl::parse("ws://h").unwrap();
        let mut cfg = ConnectionConfig::new("S", url, Credentials::Token(Secret::new("t")), seed);
        cfg.limits.offline_notifications = queue;
        cfg.fail_on_connection_error = fail_fast;
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut h = Harness {
            conn: Connection::new(cfg, now),
            now,
            socket: Socket::None,
            queries: Vec::new(),
            terminals: HashMap::new(),
            open_addrs: Vec::new(),
            finishing: Vec::new(),
            next_addr: 0,
            next_note: 0,
            accepted: Vec::new(),
            transmitted: Vec::new(),
            closed: false,
            undelivered: 0,
            writable: true,
            last_ping: None,
        };
        h.drain();
        h
    }

    fn frame(&mut self, f: &ServerFrame) {
        if matches!(self.socket, Socket::Open { .. }) {
            let _ = self.conn.handle_frame(self.now, f.encode().as_bytes());
        }
    }

    /// Performs every transmit and takes every event, checking each; returns how many of
    /// each there were.
    pub fn drain(&mut self) -> (usize, usize) {
        let mut transmits = 0;
        let mut events = 0;
        while let Some(t) = self.conn.poll_transmit(self.writable) {
            transmits += 1;
            assert!(!self.closed, "transmit {t:?} after Closed");
            assert!(
                self.writable || !t.needs_write(),
                "{t:?} handed out while the socket takes no frames"
            );
            match t {
                Transmit::Connect { .. } => {
                    assert_eq!(self.socket, Socket::None, "Connect while a socket is held");
                    self.socket = Socket::Pending;
                }
                Transmit::Frame(text) => {
                    let Socket::Open { frames } = &mut self.socket else {
                        panic!("frame {text} sent with no open socket ({:?})", self.socket)
                    };
                    *frames += 1;
                    let n = *frames;
                    let f =
                        ClientFrame::decode(text.as_bytes()).expect("connector sent a bad frame");
                    match (n, &f) {
                        (1, ClientFrame::Validate { .. }) => {}
                        (1, other) => panic!("first frame on a socket is {other:?}"),
                        (2, ClientFrame::ConnectExtension { .. }) => {}
                        (2, other) => panic!("second frame on a socket is {other:?}"),
                        _ => {}
                    }
                    match f {
                        ClientFrame::Notification { object, .. } => {
                            let v = object.to_value().expect("a notification the harness sent");
                            self.transmitted.push(v["n"].as_u64().unwrap());
                        }
                        ClientFrame::QueryReply(r) => {
                            let addr = &r.reply_address;
                            assert!(
                                self.open_addrs.contains(addr) || self.finishing.contains(addr),
                                "reply for {addr} which is not an open query of this session"
                            );
                            if !r.status.is_partial() {
                                let c = self.terminals.entry(addr.clone()).or_default();
                                *c += 1;
                                assert_eq!(*c, 1, "two terminal replies for {addr}");
                                self.open_addrs.retain(|a| a != addr);
                                self.finishing.retain(|a| a != addr);
                            }
                        }
                        _ => {}
                    }
                }
                Transmit::Ping { payload } => {
                    assert!(matches!(self.socket, Socket::Open { .. }));
                    self.last_ping = Some(payload);
                }
                Transmit::Close { .. } | Transmit::Abort => self.socket = Socket::None,
            }
        }
        while let Some(e) = self.conn.poll_event() {
            events += 1;
            assert!(!self.closed, "event {e:?} after Closed");
            match e {
                Event::Query { id, .. } => {
                    let addr = format!("a{}", self.next_addr - 1);
                    self.queries.push((id, addr));
                }
                Event::Disconnected { .. } => {
                    self.open_addrs.clear();
                    self.finishing.clear();
                }
                Event::Closed { undelivered, .. } => {
                    self.closed = true;
                    self.undelivered = undelivered;
                    self.open_addrs.clear();
                    self.finishing.clear();
                }
                _ => {}
            }
        }
        // Notifications: what left, then what waits, is exactly what was accepted, in order.
        let queued = self.conn.queued_notifications();
        assert_eq!(
            self.transmitted.len() + queued + self.undelivered,
            self.accepted.len(),
            "a notification was lost or duplicated"
        );
        assert_eq!(
            self.transmitted[..],
            self.accepted[..self.transmitted.len()]
        );
        if let Some(t) = self.conn.poll_timeout() {
            assert!(!self.closed, "a timeout after Closed");
            let _ = t;
        }
        (transmits, events)
    }

    /// Applies one operation, then drains and checks.
    pub fn apply(&mut self, op: Op) {
        let status = |s: i64| {
            ServerFrame::Status(StatusFrame {
                status: Status(s),
                body: None,
            })
        };
        match op {
            Op::AuthOk | Op::Ack => self.frame(&status(200)),
            Op::AuthFail(s) => self.frame(&ServerFrame::Status(StatusFrame {
                status: Status(s),
                body: Some(json(r#"[{"code":"c","message":"m"}]"#)),
            })),
            Op::Refuse => self.frame(&status(400)),
            Op::Configure => self.frame(&ServerFrame::ConfigureExtension {
                resource_id: Some("S".into()),
                config: json("{}"),
            }),
            Op::Publish => self.frame(&ServerFrame::Publish {
                resource_id: Some("S".into()),
                object: json(r#"{"p":1}"#),
            }),
            Op::Query => {
                if matches!(self.socket, Socket::Open { .. }) {
                    let addr = format!("a{}", self.next_addr);
                    self.next_addr += 1;
                    let configured = self.conn.state() == crate::ConnectionState::Configured;
                    let f = ServerFrame::Query {
                        resource_id: Some("S".into()),
                        reply_address: addr.clone(),
                        object: json("{}"),
                    };
                    let r = self.conn.handle_frame(self.now, f.encode().as_bytes());
                    assert_eq!(r.is_ok(), configured);
                    if configured {
                        self.open_addrs.push(addr);
                    }
                }
            }
            Op::ReconnectRequired => self.frame(&ServerFrame::ReconnectRequired {
                resource_id: Some("S".into()),
            }),
            Op::Unknown => self.frame(&ServerFrame::Unknown { op: "zzz".into() }),
            Op::Garbage(bytes) => {
                if matches!(self.socket, Socket::Open { .. }) {
                    let _ = self.conn.handle_frame(self.now, &bytes);
                }
            }
            Op::OpenOk => {
                if self.socket == Socket::Pending {
                    self.socket = Socket::Open { frames: 0 };
                    self.conn.handle_open(self.now);
                }
            }
            Op::OpenFail => {
                if self.socket == Socket::Pending {
                    self.socket = Socket::None;
                    self.conn
                        .handle_closed(self.now, SocketEnd::ConnectFailed("refused".into()));
                }
            }
            Op::Drop => {
                if matches!(self.socket, Socket::Open { .. }) {
                    self.socket = Socket::None;
                    self.conn
                        .handle_closed(self.now, SocketEnd::Error("reset".into()));
                }
            }
            Op::Pong => {
                let payload = self.last_ping.unwrap_or_default();
                self.conn.handle_pong(self.now, &payload);
            }
            Op::Notify => {
                let n = self.next_note;
                self.next_note += 1;
                match self.conn.notify(json(&format!(r#"{{"n":{n}}}"#))) {
                    Ok(()) => self.accepted.push(n),
                    Err(NotifyRefused::QueueFull(_)) => assert!(!self.conn.can_notify()),
                    Err(NotifyRefused::Closed(_)) => assert!(self.closed),
                    Err(e) => panic!("{e:?}"),
                }
            }
            Op::Respond(pick, kind) => {
                if self.queries.is_empty() {
                    return;
                }
                let (id, addr) = self.queries[pick % self.queries.len()].clone();
                let reply = match kind % 4 {
                    0 => Reply::Partial(json(r#"[{"r":1}]"#)),
                    1 => Reply::Complete(json(r#"{"r":2}"#)),
                    2 => Reply::Empty,
                    _ => Reply::Error(QueryError::new("e", "t", [1])),
                };
                let open = self.open_addrs.contains(&addr);
                let terminal = reply.is_terminal();
                let r = self.conn.respond(id, reply);
                if r.is_ok() && terminal {
                    self.open_addrs.retain(|a| *a != addr);
                    self.finishing.push(addr.clone());
                }
                let (transmits, _) = self.drain();
                if r.is_err() {
                    assert_eq!(transmits, 0, "a refused reply transmitted something");
                    assert!(
                        !open || self.closed,
                        "reply to open query {addr} refused: {r:?}"
                    );
                } else {
                    assert!(open, "reply to finished/stale query {addr} accepted");
                    // One frame, unless the socket takes none now (it waits).
                    assert!(transmits <= 1, "{transmits} frames for one reply");
                }
            }
            Op::Abandon(pick, _) => {
                // What a runtime does for a query its application dropped: an error reply,
                // refused harmlessly if the query is finished or its session ended.
                if self.queries.is_empty() {
                    return;
                }
                let (id, addr) = self.queries[pick % self.queries.len()].clone();
                let open = self.open_addrs.contains(&addr);
                let r = self
                    .conn
                    .respond(id, Reply::Error(QueryError::new("d", "t", [0])));
                assert_eq!(r.is_ok(), open && !self.closed, "abandon of {addr}: {r:?}");
                if r.is_ok() {
                    self.open_addrs.retain(|a| *a != addr);
                    self.finishing.push(addr);
                }
            }
            Op::Block(blocked) => self.writable = !blocked,
            Op::Close => self.conn.close(self.now),
            Op::Pause(p) => self.conn.set_reading_paused(p),
            Op::Tick(ms) => {
                self.now += Duration::from_millis(ms);
                if self.conn.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.conn.handle_timeout(self.now);
                    self.drain();
                    if let Some(t) = self.conn.poll_timeout() {
                        assert!(
                            t > self.now,
                            "poll_timeout {t:?} not after now after handle_timeout"
                        );
                    }
                }
            }
        }
        self.drain();
    }
}

impl Op {
    /// Decodes a byte string into operations (for fuzzing): one selector byte per operation,
    /// some followed by argument bytes.
    #[must_use]
    pub fn decode_all(data: &[u8]) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut it = data.iter().copied();
        while let Some(sel) = it.next() {
            let mut arg = || it.next().unwrap_or(0);
            ops.push(match sel % 21 {
                0 => Op::AuthOk,
                1 => Op::AuthFail(300 + i64::from(arg())),
                2 => Op::Refuse,
                3 => Op::Ack,
                4 => Op::Configure,
                5 => Op::Publish,
                6 => Op::Query,
                7 => Op::ReconnectRequired,
                8 => Op::Unknown,
                9 => {
                    let n = usize::from(arg() % 16);
                    Op::Garbage((0..n).map(|_| arg()).collect())
                }
                10 => Op::OpenOk,
                11 => Op::OpenFail,
                12 => Op::Drop,
                13 => Op::Pong,
                14 => Op::Notify,
                15 => Op::Respond(usize::from(arg()), arg()),
                16 => Op::Abandon(usize::from(arg()), arg()),
                17 => Op::Close,
                18 => Op::Pause(arg() % 2 == 0),
                19 => Op::Block(arg() % 2 == 0),
                _ => Op::Tick(u64::from(arg()) * 250),
            });
        }
        ops
    }
}

/// Runs a whole operation sequence, then winds the connection down and checks it closed.
pub fn run(seed: u64, queue: usize, fail_fast: bool, ops: Vec<Op>) {
    let mut h = Harness::new(seed, queue, fail_fast);
    for op in ops {
        let closed_before = h.closed;
        h.apply(op);
        if closed_before {
            assert!(h.conn.is_closed());
        }
    }
    h.apply(Op::Close);
    h.apply(Op::Tick(6_000));
    h.apply(Op::Tick(6_000));
    assert!(
        h.closed,
        "close() did not end in Closed within the close timeout"
    );
    assert_eq!(h.drain(), (0, 0), "output after Closed");
}
