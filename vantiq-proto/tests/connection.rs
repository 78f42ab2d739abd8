//! The connection's contract, call by call, in virtual time: what it hands out when the
//! socket cannot write, what it takes back when a socket ends, how it decides a link is
//! dead, how it backs off, and the bounds it keeps against a hostile server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use vantiq_proto::frame::ClientFrame;
use vantiq_proto::{
    Connection, ConnectionConfig, ConnectionState, Credentials, Event, Failure, FatalError, Json,
    NotifyRefused, REPLY_ADDRESS_TOO_LONG_CODE, Secret, SocketEnd, Status, TOO_MANY_QUERIES_CODE,
    TargetUrl, Transmit,
};

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn json(s: &str) -> Json {
    Json::from_string(s.to_owned()).unwrap()
}

fn config(seed: u64) -> ConnectionConfig {
    let url = TargetUrl::parse("ws://h").unwrap();
    ConnectionConfig::new("S", url, Credentials::Token(Secret::new("tok-123")), seed)
}

/// A connection and a clock, with the steps a driver takes.
struct T {
    conn: Connection,
    now: Instant,
}

impl T {
    fn new(cfg: ConnectionConfig) -> T {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        T {
            conn: Connection::new(cfg, now),
            now,
        }
    }

    /// Every transmit available with the socket `writable` or not.
    fn transmits(&mut self, writable: bool) -> Vec<Transmit> {
        std::iter::from_fn(|| self.conn.poll_transmit(writable)).collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.conn.poll_event()).collect()
    }

    fn frame(&mut self, text: &str) {
        self.conn.handle_frame(self.now, text.as_bytes()).unwrap();
    }

    /// Opens a socket and goes through the handshake.
    fn configure(&mut self) {
        let t = self.transmits(true);
        assert!(matches!(t.last(), Some(Transmit::Connect { .. })), "{t:?}");
        self.conn.handle_open(self.now);
        assert_eq!(self.transmits(true).len(), 1);
        self.frame(r#"{"status":200}"#);
        assert_eq!(self.transmits(true).len(), 1);
        self.frame(r#"{"op":"configureExtension","resourceId":"S","object":{"config":{}}}"#);
        assert!(matches!(
            self.events().last(),
            Some(Event::Configured { .. })
        ));
    }

    /// Moves time to the connection's next deadline and acts on it.
    fn next_deadline(&mut self) -> Instant {
        let at = self.conn.poll_timeout().expect("a deadline");
        self.now = self.now.max(at);
        self.conn.handle_timeout(self.now);
        at
    }

    /// Runs deadlines until `pred`, at most `limit` of time.
    fn until(&mut self, limit: Duration, mut pred: impl FnMut(&mut T) -> bool) {
        let end = self.now + limit;
        while !pred(self) {
            assert!(self.now < end, "not within {limit:?}");
            self.next_deadline();
        }
    }

    fn notify(&mut self, n: u64) -> Result<(), NotifyRefused> {
        self.conn.notify(json(&format!(r#"{{"n":{n}}}"#)))
    }
}

fn numbers(transmits: &[Transmit]) -> Vec<u64> {
    transmits
        .iter()
        .filter_map(|t| match t {
            Transmit::Frame(f) => match ClientFrame::decode(f.as_bytes()).unwrap() {
                ClientFrame::Notification { object, .. } => {
                    object.to_value().unwrap()["n"].as_u64()
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn frames_wait_for_a_writable_socket_and_control_actions_do_not() {
    let mut t = T::new(config(1));
    t.configure();
    for n in 0..3 {
        t.notify(n).unwrap();
    }
    // The socket takes nothing: no frame comes out.
    assert!(t.transmits(false).is_empty());
    assert_eq!(t.conn.queued_notifications(), 3);
    // It takes one.
    assert_eq!(numbers(&[t.conn.poll_transmit(true).unwrap()]), [0]);
    // The link dies (write timeout): the drop comes out although frames wait, and they go
    // back to the queue, in order.
    t.conn.handle_write_status(t.now, true, false);
    t.now += 20 * SEC;
    t.conn.handle_timeout(t.now);
    assert_eq!(t.transmits(false), [Transmit::Abort]);
    assert_eq!(t.conn.last_failure(), Some(&Failure::WriteStalled));
    assert_eq!(t.conn.queued_notifications(), 2);
    assert_eq!(t.conn.stats().notifications_requeued, 2);
    // Next session: the two, then a new one.
    t.until(SEC, |t| t.conn.state() == ConnectionState::Connecting);
    t.configure();
    t.notify(3).unwrap();
    assert_eq!(numbers(&t.transmits(true)), [1, 2, 3]);
}

#[test]
fn a_write_stall_is_measured_from_the_last_progress() {
    let mut t = T::new(config(2));
    t.configure();
    t.notify(0).unwrap();
    let start = t.now;
    // Nothing taken for 15 s, then some bytes move: the clock starts again.
    t.conn.handle_write_status(t.now, true, false);
    t.now += 15 * SEC;
    t.conn.handle_write_status(t.now, true, true);
    t.now += 15 * SEC;
    t.conn.handle_timeout(t.now);
    assert_eq!(
        t.conn.state(),
        ConnectionState::Configured,
        "30 s, but progress at 15 s: {:?}",
        t.conn.last_failure()
    );
    // Everything written (the ping that came due is answered): nothing waits.
    for tr in t.transmits(true) {
        if let Transmit::Ping { payload } = tr {
            t.conn.handle_pong(t.now, &payload);
        }
    }
    t.conn.handle_write_status(t.now, false, true);
    t.now += 60 * SEC;
    // (Pings keep the connection busy; answer them.)
    while t.conn.poll_timeout().is_some_and(|d| d <= t.now) {
        t.conn.handle_timeout(t.now);
        for tr in t.transmits(true) {
            if let Transmit::Ping { payload } = tr {
                t.conn.handle_pong(t.now, &payload);
            }
        }
        t.conn.handle_write_status(t.now, false, true);
    }
    assert_eq!(t.conn.state(), ConnectionState::Configured);
    // Bytes in the transport's buffer that do not move for 20 s: dead.
    t.conn.handle_write_status(t.now, true, false);
    let stalled = t.now;
    t.until(30 * SEC, |t| t.conn.state() != ConnectionState::Configured);
    assert_eq!(t.now - stalled, 20 * SEC);
    assert!(t.now - start > 20 * SEC);
    assert_eq!(t.conn.last_failure(), Some(&Failure::WriteStalled));
}

#[test]
fn only_the_pong_of_the_last_ping_proves_the_link() {
    let mut t = T::new(config(3));
    t.configure();
    t.until(21 * SEC, |t| {
        t.transmits(true)
            .iter()
            .any(|tr| matches!(tr, Transmit::Ping { .. }))
    });
    let pinged = t.now;
    // A server ping's echo, an unsolicited pong, a stale one: none counts.
    t.conn.handle_pong(t.now, b"");
    t.conn.handle_pong(t.now, &[0, 0, 0, 0, 0, 0, 0, 0]);
    t.conn.handle_pong(t.now, b"anything");
    // Frames still arrive, but they say nothing about what this side writes.
    t.frame(r#"{"status":200}"#);
    t.until(60 * SEC, |t| t.conn.state() != ConnectionState::Configured);
    assert_eq!(t.now - pinged, 20 * SEC);
    assert_eq!(t.conn.last_failure(), Some(&Failure::KeepAliveTimeout));
}

#[test]
fn the_right_pong_keeps_the_link() {
    let mut t = T::new(config(4));
    t.configure();
    for _ in 0..10 {
        t.until(21 * SEC, |t| {
            let pings: Vec<[u8; 8]> = t
                .transmits(true)
                .into_iter()
                .filter_map(|tr| match tr {
                    Transmit::Ping { payload } => Some(payload),
                    _ => None,
                })
                .collect();
            for p in &pings {
                t.conn.handle_pong(t.now, p);
            }
            !pings.is_empty()
        });
    }
    assert_eq!(t.conn.state(), ConnectionState::Configured);
}

#[test]
fn a_server_error_during_authentication_is_retried_and_a_rejection_is_final() {
    for (status, body) in [
        (
            500,
            r#"[{"code":"io.vantiq.server.error","message":"boom"}]"#,
        ),
        (503, "null"),
        (400, r#"[{"code":"io.vantiq.something","message":"busy"}]"#),
    ] {
        let mut t = T::new(config(5));
        let _ = t.transmits(true);
        t.conn.handle_open(t.now);
        let _ = t.transmits(true);
        t.frame(&format!(r#"{{"status":{status},"body":{body}}}"#));
        assert!(
            matches!(
                t.conn.last_failure(),
                Some(Failure::AuthFailed { status: s, .. }) if *s == Status(status)
            ),
            "{status}: {:?}",
            t.conn.last_failure()
        );
        assert_eq!(
            t.conn.state(),
            ConnectionState::WaitingToReconnect,
            "{status}"
        );
        // It tries again after the back-off.
        t.until(SEC, |t| t.conn.state() == ConnectionState::Connecting);
        t.configure();
    }
    for (status, body) in [
        (
            401,
            r#"[{"code":"authFailure","message":"invalid authToken"}]"#,
        ),
        (403, "null"),
        (
            400,
            r#"[{"code":"io.vantiq.authentication.failed","message":"no"}]"#,
        ),
    ] {
        let mut t = T::new(config(6));
        let _ = t.transmits(true);
        t.conn.handle_open(t.now);
        let _ = t.transmits(true);
        t.frame(&format!(r#"{{"status":{status},"body":{body}}}"#));
        let events = t.events();
        assert!(
            matches!(
                events.last(),
                Some(Event::Closed {
                    error: Some(FatalError::AuthRejected { .. }),
                    ..
                })
            ),
            "{status}: {events:?}"
        );
    }
}

/// Vantiq's Python SDK's own reconnect test: the server restarts (closes every socket with
/// 1001) every ten publishes, twelve times, and the whole run must fit in 20 s. Publishes
/// come every 10 ms; a restart refuses connects for 50 ms.
#[test]
fn clean_server_restarts_reconnect_quickly() {
    for seed in [1u64, 2, 3, 42, 1234] {
        let mut t = T::new(config(seed));
        let start = t.now;
        for _restart in 0..12 {
            t.until(30 * SEC, |t| t.conn.state() == ConnectionState::Connecting);
            t.configure();
            t.now += 100 * MS; // ten publishes
            t.conn.handle_closed(
                t.now,
                SocketEnd::Closed {
                    code: Some(1001),
                    reason: "going away".into(),
                },
            );
            let down_until = t.now + 50 * MS;
            // Attempts while the server restarts are refused.
            loop {
                t.until(30 * SEC, |t| t.conn.state() == ConnectionState::Connecting);
                if t.now >= down_until {
                    break;
                }
                let _ = t.transmits(true);
                t.conn
                    .handle_closed(t.now, SocketEnd::ConnectFailed("refused".into()));
            }
        }
        t.configure();
        let took = t.now - start;
        assert!(took < 10 * SEC, "seed {seed}: 12 restarts took {took:?}");
    }
}

/// A server that closes every session cleanly right after configuring it still sees at most
/// a few attempts per second; one that drops every session abruptly sees ever longer waits.
#[test]
fn flapping_servers_are_not_hammered() {
    for seed in [1u64, 7, 99] {
        let mut t = T::new(config(seed));
        let start = t.now;
        let mut attempts = 0;
        while t.now - start < 60 * SEC {
            t.until(60 * SEC, |t| t.conn.state() == ConnectionState::Connecting);
            attempts += 1;
            t.configure();
            t.conn.handle_closed(
                t.now,
                SocketEnd::Closed {
                    code: Some(1000),
                    reason: String::new(),
                },
            );
        }
        // At most one attempt per 250 ms (half the initial 500 ms delay).
        assert!(
            attempts <= 4 * 60 + 1,
            "seed {seed}: {attempts} attempts in 60 s"
        );
    }
    for seed in [1u64, 7, 99] {
        let mut t = T::new(config(seed));
        let start = t.now;
        let mut attempts = 0;
        while t.now - start < 60 * SEC {
            t.until(60 * SEC, |t| t.conn.state() == ConnectionState::Connecting);
            attempts += 1;
            t.configure();
            t.conn
                .handle_closed(t.now, SocketEnd::Error("reset".into()));
        }
        assert!(attempts <= 13, "seed {seed}: {attempts} attempts in 60 s");
    }
}

#[test]
fn open_queries_and_reply_addresses_are_bounded() {
    let mut cfg = config(8);
    cfg.limits.open_queries = 3;
    let mut t = T::new(cfg);
    t.configure();
    let query = |addr: &str| {
        format!(
            r#"{{"op":"query","resourceId":"S","messageHeaders":{{"REPLY_ADDR_HEADER":"{addr}"}},"object":{{}}}}"#
        )
    };
    for i in 0..5 {
        t.frame(&query(&format!("q{i}")));
    }
    let asked = t
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Query { .. }))
        .count();
    assert_eq!(asked, 3);
    assert_eq!(t.conn.open_queries(), 3);
    assert_eq!(t.conn.stats().queries_refused, 2);
    // The two beyond the bound were answered at once with an error.
    let replies: Vec<String> = t
        .transmits(true)
        .into_iter()
        .map(|tr| match tr {
            Transmit::Frame(f) => f,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(replies.len(), 2);
    for (r, addr) in replies.iter().zip(["q3", "q4"]) {
        let ClientFrame::QueryReply(r) = ClientFrame::decode(r.as_bytes()).unwrap() else {
            panic!("{r}")
        };
        assert_eq!((r.status, r.reply_address.as_str()), (Status(400), addr));
        assert!(r.body.unwrap().as_str().contains(TOO_MANY_QUERIES_CODE));
    }
    // A reply address beyond 1 KiB is not kept: answered at once.
    let long = "x".repeat(64 * 1024);
    t.frame(&query(&long));
    assert!(t.events().is_empty());
    let out = t.transmits(true);
    let [Transmit::Frame(f)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(f.contains(REPLY_ADDRESS_TOO_LONG_CODE));
    assert_eq!(t.conn.open_queries(), 3);
}

#[test]
fn queues_are_bounded_in_bytes() {
    let mut cfg = config(9);
    cfg.limits.offline_bytes = 10 * 1024;
    cfg.limits.outbox_bytes = 4 * 1024;
    let mut t = T::new(cfg);
    let pad = "p".repeat(1000);
    let big = |n: u64| json(&format!(r#"{{"n":{n},"pad":"{pad}"}}"#));
    // Offline: nine of about 1.1 KiB each (object, frame and slot), then full.
    let one = 1013 + 100;
    let mut n = 0;
    while t.conn.notify(big(n)).is_ok() {
        n += 1;
    }
    // Taken while below the budget: at most the budget plus one.
    assert_eq!(n, 10);
    assert!(t.conn.queued_bytes() <= 10 * 1024 + one);
    assert!(!t.conn.can_notify());
    assert!(matches!(
        t.conn.notify(big(99)),
        Err(NotifyRefused::QueueFull(_))
    ));
    t.configure();
    // Configured: the notifications queued offline are in the outbox and fill it; once the
    // socket took them, it takes about 4 KiB more.
    assert!(!t.conn.can_notify());
    assert_eq!(numbers(&t.transmits(true)).len(), 10);
    let mut m = 0;
    while t.conn.notify(big(100 + m)).is_ok() {
        m += 1;
    }
    assert_eq!(m, 4);
    assert!(t.conn.queued_bytes() <= 4 * 1024 + one);
}

/// The byte budgets count what a notification holds (its frame, its buffer's spare room,
/// its slot in the queue), not the length of its object: a flood of empty objects while the
/// socket takes nothing cannot hold more than the budget in memory.
#[test]
fn tiny_notifications_weigh_what_they_hold() {
    let mut cfg = config(9);
    cfg.limits.offline_bytes = 64 * 1024;
    cfg.limits.offline_notifications = 1_000_000;
    cfg.limits.outbox_bytes = 64 * 1024;
    let mut t = T::new(cfg);
    let frame_len = vantiq_proto::NotificationEncoder::new("S")
        .encode_json(&json("{}"))
        .frame()
        .len();
    let mut offline = 0;
    while t.conn.notify(json("{}")).is_ok() {
        offline += 1;
    }
    // Counted by object length (2 bytes), 32,768 would have been taken.
    assert!(
        offline * frame_len <= 64 * 1024 + frame_len,
        "{offline} empty notifications taken offline"
    );
    assert!(t.conn.queued_bytes() >= offline * frame_len);
    t.configure();
    let delivered = t
        .transmits(true)
        .iter()
        .filter(|x| matches!(x, Transmit::Frame(f) if f.contains(r#""op":"notification""#)))
        .count();
    assert_eq!(delivered, offline);
    // Now the socket takes nothing: the outbox fills to its budget, by what its frames hold.
    let mut sent = 0;
    while t.conn.notify(json("{}")).is_ok() {
        sent += 1;
    }
    assert!(sent > 0);
    assert!(
        sent * frame_len <= 64 * 1024 + frame_len,
        "{sent} empty notifications taken into an outbox of 64 KiB"
    );
    assert!(t.conn.queued_bytes() >= sent * frame_len);
}

#[test]
fn a_graceful_close_waits_for_the_socket_then_counts_what_it_could_not_deliver() {
    let mut t = T::new(config(10));
    t.configure();
    for n in 0..5 {
        t.notify(n).unwrap();
    }
    t.conn.close(t.now);
    // The application's last words are still taken while the socket drains.
    assert!(t.conn.can_notify());
    t.notify(5).unwrap();
    // Two go out, then the socket takes nothing.
    let first = vec![
        t.conn.poll_transmit(true).unwrap(),
        t.conn.poll_transmit(true).unwrap(),
    ];
    assert_eq!(numbers(&first), [0, 1]);
    assert!(t.transmits(false).is_empty());
    // The close timeout (5 s) passes: the socket is closed, four are counted undelivered.
    t.now += 5 * SEC;
    t.conn.handle_timeout(t.now);
    assert!(matches!(
        t.transmits(false).as_slice(),
        [Transmit::Close { code: 1000, .. }]
    ));
    let events = t.events();
    assert!(
        matches!(
            events.last(),
            Some(Event::Closed {
                error: None,
                undelivered: 4
            })
        ),
        "{events:?}"
    );
}

#[test]
fn a_graceful_close_sends_everything_then_closes() {
    let mut t = T::new(config(11));
    t.configure();
    for n in 0..3 {
        t.notify(n).unwrap();
    }
    t.conn.close(t.now);
    let out = t.transmits(true);
    assert_eq!(numbers(&out), [0, 1, 2]);
    assert!(matches!(
        out.last(),
        Some(Transmit::Close { code: 1000, .. })
    ));
    assert!(matches!(
        t.events().last(),
        Some(Event::Closed {
            error: None,
            undelivered: 0
        })
    ));
}

#[test]
fn debug_output_holds_no_secret() {
    let mut cfg = config(12);
    cfg.reconnect_secret = "S_very-secret-suffix".into();
    assert!(!format!("{cfg:?}").contains("very-secret"));
    assert!(!format!("{cfg:?}").contains("tok-123"));
    let mut conn = Connection::new(cfg, {
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    });
    let _ = conn.poll_transmit(true);
    #[allow(clippy::disallowed_methods)]
    conn.handle_open(Instant::now());
    assert!(!format!("{conn:?}").contains("tok-123"));
    let validate = conn.poll_transmit(true).unwrap();
    assert!(matches!(&validate, Transmit::Frame(f) if f.contains("tok-123")));
    let shown = format!("{validate:?}");
    assert!(!shown.contains("tok-123"), "{shown}");
    assert!(shown.contains("validate"), "{shown}");
}

/// `reconnectRequired` ends the session but keeps the socket: nothing of the ended session
/// may go out ahead of the new `connectExtension` (found by fuzzing). Its queued
/// notifications wait for the next configuration, in order; its queued replies are dropped
/// (their queries ended with the session).
#[test]
fn reconnect_required_sends_nothing_of_the_ended_session_first() {
    let mut t = T::new(config(3));
    t.configure();
    t.frame(
        r#"{"op":"query","resourceId":"S","object":{},"messageHeaders":{"REPLY_ADDR_HEADER":"q1"}}"#,
    );
    let Some(Event::Query { id, .. }) = t.events().pop() else {
        panic!("no query event")
    };
    // The socket takes nothing for now: a reply and two notifications wait.
    t.conn
        .respond(id, vantiq_proto::Reply::Complete(json(r#"{"r":1}"#)))
        .unwrap();
    t.notify(0).unwrap();
    t.notify(1).unwrap();
    assert!(t.transmits(false).is_empty());
    t.frame(r#"{"op":"reconnectRequired","resourceId":"S"}"#);
    assert!(matches!(
        t.events()[..],
        [Event::Disconnected {
            reason: vantiq_proto::DisconnectReason::ReconnectRequired
        }]
    ));
    t.notify(2).unwrap();
    // The socket takes frames again: the new connectExtension comes first, and alone.
    let out = t.transmits(true);
    assert_eq!(out.len(), 1, "{out:?}");
    let Transmit::Frame(f) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(matches!(
        ClientFrame::decode(f.as_bytes()).unwrap(),
        ClientFrame::ConnectExtension { .. }
    ));
    // Configured again: the notifications, in order, and never the stale reply.
    t.frame(r#"{"op":"configureExtension","resourceId":"S","object":{"config":{}}}"#);
    let out = t.transmits(true);
    assert_eq!(numbers(&out), [0, 1, 2]);
    assert_eq!(out.len(), 3, "{out:?}");
}

/// Replies count against the outbox's byte budget: `can_reply` turns false once it is full
/// (a driver then holds replies back) and true again once the socket took them.
#[test]
fn replies_are_held_back_once_the_outbox_is_full() {
    let mut t = T::new(config(4));
    t.configure();
    t.frame(
        r#"{"op":"query","resourceId":"S","object":{},"messageHeaders":{"REPLY_ADDR_HEADER":"q1"}}"#,
    );
    let Some(Event::Query { id, .. }) = t.events().pop() else {
        panic!("no query event")
    };
    let budget = t.conn.config().limits.outbox_bytes;
    let part = json(&format!(r#"[{{"pad":"{}"}}]"#, "p".repeat(64 * 1024)));
    let mut queued = 0;
    while t.conn.can_reply() {
        t.conn
            .respond(id, vantiq_proto::Reply::Partial(part.clone()))
            .unwrap();
        queued += 1;
        assert!(
            queued <= budget / part.len() + 1,
            "can_reply never turned false"
        );
    }
    assert!(t.conn.queued_bytes() >= budget);
    // The socket takes them: room again.
    assert_eq!(t.transmits(true).len(), queued);
    assert!(t.conn.can_reply());
    // Without a configured session there is nothing to hold back: a reply is refused at once.
    t.conn
        .handle_closed(t.now, SocketEnd::Error("reset".into()));
    assert!(t.conn.can_reply());
}
