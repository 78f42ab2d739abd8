//! A deterministic simulation of a connector and a Vantiq server, in virtual time.
//!
//! [`FakeServer`] is a scripted, sans-IO server side of the protocol; [`Sim`] joins it to a
//! [`Connection`] through a link that can be down (connects refused), drop the socket,
//! stall (no pongs, no frames) and delay every delivery. Nothing here reads a clock: time is
//! an `Instant` epoch plus virtual offsets, and [`Sim::run_for`] jumps from event to event.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use vantiq_proto::frame::{ClientFrame, QueryReply, ServerFrame, StatusFrame};
use vantiq_proto::{
    Connection, ConnectionConfig, Credentials, Event, Json, Secret, SocketEnd, Status, TargetUrl,
    Transmit,
};

pub const SOURCE: &str = "S1";
pub const TOKEN: &str = "good-token";

pub fn json(s: &str) -> Json {
    Json::from_string(s.to_owned()).unwrap()
}

/// One arbitrary but fixed point in time; all simulated time is relative to it.
pub fn epoch() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

pub fn config(seed: u64) -> ConnectionConfig {
    let url = TargetUrl::parse("http://vantiq.test:8080").unwrap();
    let mut c = ConnectionConfig::new(SOURCE, url, Credentials::Token(Secret::new(TOKEN)), seed);
    c.reconnect_secret = format!("{SOURCE}_secret");
    c
}

/// What the fake server wants done to the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerOut {
    Frame(String),
    /// Drop the socket abruptly.
    Drop,
}

/// A scripted server side of the protocol for one source.
#[derive(Debug)]
pub struct FakeServer {
    pub token: String,
    pub config: Json,
    /// Answer the next n connectExtensions with "does not have an associated stream".
    pub refuse_next: u32,
    /// Drop every socket right after configuring it.
    pub flapping: bool,
    /// Send `{"status":200}` before configureExtension.
    pub status_before_configure: bool,
    /// Ack notifications with `{"status":200}`.
    pub ack_notifications: bool,
    /// Never answer validate (to test the handshake timeout).
    pub mute: bool,
    authed: bool,
    pub configured: bool,
    pub received: Vec<ClientFrame>,
    pub notifications: Vec<Json>,
    pub replies: Vec<QueryReply>,
    pub connect_extensions: u32,
    pub secrets: Vec<String>,
    pub validates: u32,
    next_addr: u64,
    pub out: VecDeque<ServerOut>,
}

impl FakeServer {
    pub fn new() -> Self {
        FakeServer {
            token: TOKEN.to_owned(),
            config: json(r#"{"rate":1}"#),
            refuse_next: 0,
            flapping: false,
            status_before_configure: false,
            ack_notifications: false,
            mute: false,
            authed: false,
            configured: false,
            received: Vec::new(),
            notifications: Vec::new(),
            replies: Vec::new(),
            connect_extensions: 0,
            secrets: Vec::new(),
            validates: 0,
            next_addr: 0,
            out: VecDeque::new(),
        }
    }

    fn send(&mut self, f: ServerFrame) {
        self.out.push_back(ServerOut::Frame(f.encode()));
    }

    /// A new socket was accepted.
    pub fn on_open(&mut self) {
        self.authed = false;
        self.configured = false;
    }

    /// The socket went away.
    pub fn on_close(&mut self) {
        self.authed = false;
        self.configured = false;
        self.out.clear();
    }

    pub fn on_frame(&mut self, text: &str) {
        let frame = ClientFrame::decode(text.as_bytes()).expect("the connector sent a bad frame");
        self.received.push(frame.clone());
        match frame {
            ClientFrame::Validate { token } => {
                self.validates += 1;
                assert!(!self.authed, "validate sent twice on one socket");
                if self.mute {
                    return;
                }
                if token.as_deref() == Some(self.token.as_str()) {
                    self.authed = true;
                    self.send(ServerFrame::Status(StatusFrame {
                        status: Status::OK,
                        body: Some(json(r#"{"anonymous":false,"userInfo":{"username":"u"}}"#)),
                    }));
                } else {
                    self.send(ServerFrame::Status(StatusFrame {
                        status: Status::UNAUTHORIZED,
                        body: Some(json(
                            r#"[{"code":"io.vantiq.authentication.failed","message":"invalid token","params":[]}]"#,
                        )),
                    }));
                }
            }
            ClientFrame::Authenticate { username, password } => {
                assert!(!self.authed, "authenticate sent twice on one socket");
                self.authed = username == "u" && password == "p";
                let status = if self.authed {
                    Status::OK
                } else {
                    Status::UNAUTHORIZED
                };
                self.send(ServerFrame::Status(StatusFrame { status, body: None }));
            }
            ClientFrame::ConnectExtension {
                source,
                reconnect_secret,
            } => {
                assert!(self.authed, "connectExtension before authentication");
                assert_eq!(source, SOURCE);
                self.connect_extensions += 1;
                self.secrets.push(reconnect_secret.unwrap_or_default());
                if self.refuse_next > 0 {
                    self.refuse_next -= 1;
                    self.send(ServerFrame::Status(StatusFrame {
                        status: Status(400),
                        body: Some(json(
                            r#"[{"code":"io.vantiq.resource.error","message":"Source S1 does not have an associated stream","params":[]}]"#,
                        )),
                    }));
                    return;
                }
                if self.status_before_configure {
                    self.send(ServerFrame::Status(StatusFrame {
                        status: Status::OK,
                        body: None,
                    }));
                }
                self.configured = true;
                let config = self.config.clone();
                self.send(ServerFrame::ConfigureExtension {
                    resource_id: Some(SOURCE.into()),
                    config,
                });
                if self.flapping {
                    self.out.push_back(ServerOut::Drop);
                }
            }
            ClientFrame::Notification { source, object } => {
                assert!(self.configured, "notification before configuration");
                assert_eq!(source, SOURCE);
                self.notifications.push(object);
                if self.ack_notifications {
                    self.send(ServerFrame::Status(StatusFrame {
                        status: Status::OK,
                        body: None,
                    }));
                }
            }
            ClientFrame::QueryReply(r) => self.replies.push(r),
            other => panic!("unexpected frame from the connector: {other:?}"),
        }
    }

    pub fn publish(&mut self, object: &str) {
        self.send(ServerFrame::Publish {
            resource_id: Some(SOURCE.into()),
            object: json(object),
        });
    }

    /// Sends a query; returns its reply address.
    pub fn query(&mut self, params: &str) -> String {
        self.next_addr += 1;
        let addr = format!("reply-{}", self.next_addr);
        self.send(ServerFrame::Query {
            resource_id: Some(SOURCE.into()),
            reply_address: addr.clone(),
            object: json(params),
        });
        addr
    }

    pub fn reconnect_required(&mut self, new_config: &str) {
        self.config = json(new_config);
        self.configured = false;
        self.send(ServerFrame::ReconnectRequired {
            resource_id: Some(SOURCE.into()),
        });
    }

    pub fn raw(&mut self, text: &str) {
        self.out.push_back(ServerOut::Frame(text.to_owned()));
    }
}

/// Something scheduled on the virtual timeline.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    /// The socket asked for opens (or fails) now.
    ConnectResult { socket: u64, ok: bool },
    /// A frame reaches the connector.
    ToClient { socket: u64, text: String },
    /// A frame reaches the server.
    ToServer { socket: u64, text: String },
    /// A pong reaches the connector.
    Pong { socket: u64, payload: [u8; 8] },
    /// The server dropped the socket; the connector notices now.
    Dropped { socket: u64 },
    /// The connector's close frame reaches the server (after the frames sent before it).
    CloseFrame { socket: u64 },
}

/// A connector and a fake server joined by a simulated link, in virtual time.
pub struct Sim {
    pub epoch: Instant,
    pub now: Instant,
    pub conn: Connection,
    pub server: FakeServer,
    /// The server accepts connections.
    pub server_up: bool,
    /// The link passes nothing (no pongs, no frames) but stays open.
    pub stalled: bool,
    /// The socket takes no frames (the driver passes `writable: false`).
    pub blocked: bool,
    /// One-way delay of every delivery.
    pub latency: Duration,
    socket: Option<u64>,
    /// A socket closed gracefully whose last frames are still on their way to the server.
    closing_socket: Option<u64>,
    next_socket: u64,
    server_socket_open: bool,
    timeline: Vec<(Instant, u64, Pending)>,
    seq: u64,
    pub events: Vec<(Instant, Event)>,
    pub transmits: Vec<(Instant, Transmit)>,
    pub connect_times: Vec<Instant>,
    pub frame_errors: Vec<(Instant, vantiq_proto::FrameError)>,
}

impl Sim {
    pub fn new(cfg: ConnectionConfig) -> Self {
        Self::with_server(cfg, FakeServer::new())
    }

    pub fn with_server(cfg: ConnectionConfig, server: FakeServer) -> Self {
        let epoch = epoch();
        let conn = Connection::new(cfg, epoch);
        let mut sim = Sim {
            epoch,
            now: epoch,
            conn,
            server,
            server_up: true,
            stalled: false,
            blocked: false,
            latency: Duration::from_millis(5),
            socket: None,
            closing_socket: None,
            next_socket: 0,
            server_socket_open: false,
            timeline: Vec::new(),
            seq: 0,
            events: Vec::new(),
            transmits: Vec::new(),
            connect_times: Vec::new(),
            frame_errors: Vec::new(),
        };
        sim.drain();
        sim
    }

    /// Seconds since the start, for messages.
    pub fn t(&self) -> f64 {
        self.now.duration_since(self.epoch).as_secs_f64()
    }

    fn schedule(&mut self, at: Instant, p: Pending) {
        self.seq += 1;
        self.timeline.push((at, self.seq, p));
    }

    /// Moves the connection's output into the world, then the server's.
    pub fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.conn.poll_transmit(!self.blocked) {
                progressed = true;
                self.transmits.push((self.now, t.clone()));
                self.perform(t);
            }
            while let Some(e) = self.conn.poll_event() {
                progressed = true;
                self.events.push((self.now, e));
            }
            while let Some(out) = self.server.out.pop_front() {
                progressed = true;
                let Some(socket) = self.socket.filter(|_| self.server_socket_open) else {
                    continue;
                };
                match out {
                    ServerOut::Frame(text) => {
                        if !self.stalled {
                            let at = self.now + self.latency;
                            self.schedule(at, Pending::ToClient { socket, text });
                        }
                    }
                    ServerOut::Drop => {
                        self.server_socket_open = false;
                        self.server.on_close();
                        let at = self.now + self.latency;
                        self.schedule(at, Pending::Dropped { socket });
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        if let Some(t) = self.conn.poll_timeout() {
            assert!(
                t > self.now || self.conn.is_closed(),
                "poll_timeout {t:?} is not after now"
            );
        }
    }

    fn perform(&mut self, t: Transmit) {
        match t {
            Transmit::Connect { .. } => {
                assert!(
                    self.socket.is_none(),
                    "Connect while a socket is still held"
                );
                if self.closing_socket.take().is_some() && self.server_socket_open {
                    self.server_socket_open = false;
                    self.server.on_close();
                }
                self.next_socket += 1;
                let socket = self.next_socket;
                self.socket = Some(socket);
                self.connect_times.push(self.now);
                let ok = self.server_up;
                let at = self.now + self.latency;
                self.schedule(at, Pending::ConnectResult { socket, ok });
            }
            Transmit::Frame(text) => {
                let socket = self.socket.expect("frame sent with no socket");
                if !self.stalled {
                    let at = self.now + self.latency;
                    self.schedule(at, Pending::ToServer { socket, text });
                }
            }
            Transmit::Ping { payload } => {
                let socket = self.socket.expect("ping sent with no socket");
                if !self.stalled && self.server_socket_open {
                    let at = self.now + self.latency * 2;
                    self.schedule(at, Pending::Pong { socket, payload });
                }
            }
            Transmit::Close { .. } => {
                // Frames already sent still arrive; then the server sees the close.
                if let Some(socket) = self.socket.take() {
                    self.closing_socket = Some(socket);
                    let at = self.now + self.latency;
                    self.schedule(at, Pending::CloseFrame { socket });
                }
            }
            Transmit::Abort => {
                if self.socket.take().is_some() && self.server_socket_open {
                    self.server_socket_open = false;
                    self.server.on_close();
                }
            }
        }
    }

    /// The next instant anything happens, if any.
    fn next_instant(&self) -> Option<Instant> {
        let timeline = self.timeline.iter().map(|(at, _, _)| *at).min();
        match (timeline, self.conn.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Processes everything due at or before `deadline`, advancing virtual time.
    pub fn run_until(&mut self, deadline: Instant) {
        while let Some(at) = self.next_instant() {
            if at > deadline {
                break;
            }
            self.now = self.now.max(at);
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        self.run_until(deadline);
    }

    /// Runs until `pred` holds, at most `limit` of virtual time; panics with `what` otherwise.
    pub fn run_until_pred(
        &mut self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&Sim) -> bool,
    ) {
        let deadline = self.now + limit;
        while !pred(self) {
            let Some(at) = self.next_instant().filter(|at| *at <= deadline) else {
                panic!(
                    "at t={:.3}s: {what} did not happen within {limit:?}",
                    self.t()
                );
            };
            self.now = self.now.max(at);
            self.step();
        }
    }

    fn step(&mut self) {
        // Deliver every timeline entry due now, in schedule order.
        let now = self.now;
        let mut due: Vec<(Instant, u64, Pending)> = Vec::new();
        let mut i = 0;
        while i < self.timeline.len() {
            if self.timeline[i].0 <= now {
                due.push(self.timeline.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|(at, seq, _)| (*at, *seq));
        for (_, _, p) in due {
            self.deliver(p);
            self.drain();
        }
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
            self.drain();
        }
    }

    fn deliver(&mut self, p: Pending) {
        let now = self.now;
        let current = self.socket;
        match p {
            Pending::ConnectResult { socket, ok } => {
                if current != Some(socket) {
                    return; // aborted meanwhile
                }
                if ok && self.server_up {
                    self.server_socket_open = true;
                    self.server.on_open();
                    self.conn.handle_open(now);
                } else {
                    self.socket = None;
                    self.conn
                        .handle_closed(now, SocketEnd::ConnectFailed("connection refused".into()));
                }
            }
            Pending::ToClient { socket, text } => {
                if current == Some(socket)
                    && !self.stalled
                    && let Err(e) = self.conn.handle_frame(now, text.as_bytes())
                {
                    self.frame_errors.push((now, e));
                }
            }
            Pending::ToServer { socket, text } => {
                let live = current == Some(socket) || self.closing_socket == Some(socket);
                if live && self.server_socket_open && !self.stalled {
                    self.server.on_frame(&text);
                }
            }
            Pending::CloseFrame { socket } => {
                if self.closing_socket == Some(socket) {
                    self.closing_socket = None;
                    if self.server_socket_open {
                        self.server_socket_open = false;
                        self.server.on_close();
                    }
                }
            }
            Pending::Pong { socket, payload } => {
                if current == Some(socket) && !self.stalled {
                    self.conn.handle_pong(now, &payload);
                }
            }
            Pending::Dropped { socket } => {
                if current == Some(socket) {
                    self.socket = None;
                    self.conn
                        .handle_closed(now, SocketEnd::Error("connection reset by peer".into()));
                }
            }
        }
    }

    /// The server drops the current socket abruptly.
    pub fn drop_socket(&mut self) {
        self.server.out.push_back(ServerOut::Drop);
        self.drain();
    }

    /// The server's side of the world: queue frames via `self.server`, then call this.
    pub fn flush_server(&mut self) {
        self.drain();
    }

    pub fn is_configured(&self) -> bool {
        self.conn.state() == vantiq_proto::ConnectionState::Configured
    }

    pub fn events_only(&self) -> Vec<Event> {
        self.events.iter().map(|(_, e)| e.clone()).collect()
    }

    pub fn frames_sent(&self) -> Vec<String> {
        self.transmits
            .iter()
            .filter_map(|(_, t)| match t {
                Transmit::Frame(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn count_transmits(&self, pred: impl Fn(&Transmit) -> bool) -> usize {
        self.transmits.iter().filter(|(_, t)| pred(t)).count()
    }
}
