//! The fault mix: a connector streams notifications, echoes publishes and answers chunked
//! queries while a [`Proxy`] between it and the test server cuts, stalls, delays and
//! refuses its links at seeded random points. Used by `tests/faults.rs` (a fixed amount of
//! work, on both runtimes, in CI) and by the `soak` binary (`scripts/soak.sh`: the same mix
//! for as long as asked).
//!
//! # What runs
//!
//! One connector set with one source, `s1`, through the proxy. Its handler is the reference
//! [`Echo`] (every publish comes back as a notification; a query `{"rows": N, "chunk": K}`
//! is answered with partial replies of K rows; a query `{"error": M}` with an error reply),
//! plus a log of the reasons its sessions ended. Keep-alive and back-off are short, so a
//! stall is detected in under a second.
//!
//! Three numbered notification streams and a query load run at once:
//!
//! * **A** (`{"a": k}`): a producer hands notifications to [`Source::notify`] as fast as a
//!   window of [`Plan::window_a`] not-yet-received ones allows;
//! * **P** (`{"p": k}`): the server publishes, the connector echoes each one back (window
//!   [`Plan::window_p`]);
//! * **B** (`{"b": k}`): after each fault, once the connector has noticed it and while the
//!   proxy refuses every new connection, a batch is handed to `notify`: these are certainly
//!   queued offline;
//! * queries of 1–400 rows in chunks of 1–12, and error queries, issued in every round.
//!
//! Each round releases a random quota of work, waits until a random part of it has been
//! received, then injects a fault: a **cut** (both sockets reset) or a **stall** (nothing
//! delivered, sockets open); new connections are refused until the connector has noticed,
//! then a random number more are refused, and some rounds add latency. The epoch ends with a
//! fault-free tail; everything sent must then arrive.
//!
//! # What is checked (each failure is a [`Report::violations`] entry)
//!
//! * **Reconnects**: after every fault the connector leaves `Configured` (it noticed) and
//!   the server sees a new configured session.
//! * **Stalls are detected by the ping deadline**: the session end the handler sees for a
//!   stall is `Failure(KeepAliveTimeout)`; for a cut, a socket error or close. No session
//!   ends without a fault.
//! * **Notifications** (per stream, on the server's record, with the socket each arrived
//!   on): strictly increasing (no duplicate, no reordering); every number missing lies in
//!   a contiguous run just before a change of socket (in flight on the socket that was cut;
//!   the protocol has no acknowledgement to resend on), no longer than the stream's window
//!   times the sessions that ended there (the producers' windows restart with each new
//!   session, so each session can take at most one window with it); the last one sent
//!   arrived. For stream P a run is explained instead by the session the publishes were
//!   sent on (an echo queued offline may arrive on the next socket, after the publishes
//!   that went to the cut session). Stream B has no gap at all: every notification queued
//!   while disconnected arrives exactly once, in order.
//! * **Held by the SDK**: a [`Wiretap`] around the connector's sockets sees each message as
//!   the operating system accepts its bytes. Stream A's missing numbers that were never
//!   written to a socket were held by the SDK when the link failed; they are counted
//!   ([`StreamFigures::unwritten`]) and reported.
//! * **Queries**: a query whose session stayed up until its terminal reply gets it (200
//!   with exactly the right rows and parts, or the expected 400 error reply) well within
//!   the query timeout; a query that times out must have seen its session end (the SDK
//!   cannot answer on a session that is gone; Vantiq's caller sees its own timeout, as with
//!   the testkit's). Every query task ends.
//! * **Memory**: the process's resident set grows by less than [`Plan::rss_budget_kib`].

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector::{
    ConnectionState, ConnectorSet, DisconnectReason, Failure, Handler, HandlerResult, Json,
    KeepAlive, Query, Source,
};
use vantiq_proto::Rng;
use vantiq_proto::frame::ClientFrame;
use vantiq_testkit::{ConnectOutcome, SourceHandle, TestkitError};

use crate::proxy::Proxy;
use crate::wiretap::Wiretap;
use crate::{Kit, TestRuntime, WAIT};

/// The source every epoch uses.
const SOURCE: &str = "s1";

/// The environment variable that overrides the seed.
pub const SEED_ENV: &str = "VANTIQ_FAULT_SEED";

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Seed of every random choice.
    pub seed: u64,
    /// Faults per epoch (one test server per epoch).
    pub faults_per_epoch: usize,
    /// Keep starting epochs until this much time has passed; `None`: one epoch.
    pub duration: Option<Duration>,
    /// Stream A's window: notifications handed over and not yet received.
    pub window_a: u64,
    /// Stream P's window: publishes sent and not yet echoed.
    pub window_p: u64,
    /// The connector's keep-alive.
    pub keepalive: KeepAlive,
    /// How long the server waits for a query's terminal reply.
    pub query_timeout: Duration,
    /// Largest allowed growth of the resident set over the run, in KiB.
    pub rss_budget_kib: u64,
    /// Print a line per fault.
    pub verbose: bool,
}

impl Plan {
    /// The CI plan: one epoch of 20 faults; the seed from [`SEED_ENV`] or `default_seed`.
    pub fn ci(default_seed: u64) -> Plan {
        Plan {
            seed: seed_from_env(default_seed),
            faults_per_epoch: 20,
            duration: None,
            window_a: 100,
            window_p: 10,
            keepalive: KeepAlive::new(Duration::from_millis(200), Duration::from_millis(600)),
            query_timeout: Duration::from_secs(3),
            rss_budget_kib: 64 * 1024,
            verbose: std::env::var_os("VANTIQ_FAULT_VERBOSE").is_some(),
        }
    }
}

/// The seed from [`SEED_ENV`] (decimal or `0x` hex), else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{SEED_ENV}={s} is not a number"))
        }
        Err(_) => default,
    }
}

/// One stream's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamFigures {
    /// Handed to the SDK (A, B) or published by the server (P).
    pub sent: u64,
    /// Received by the server.
    pub received: u64,
    /// Missing, in runs just before a change of socket: in flight when a link was cut.
    pub in_flight_at_cut: u64,
    /// Runs of missing numbers.
    pub gaps: u64,
    /// Of the in-flight ones, those never written to a socket (the operating system never
    /// accepted their bytes): held by the SDK when the link failed, and lost. Counted for
    /// stream A only.
    pub unwritten: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// Missing and not explained by a cut.
    pub lost: u64,
}

impl StreamFigures {
    fn add(&mut self, o: &StreamFigures) {
        self.sent += o.sent;
        self.received += o.received;
        self.in_flight_at_cut += o.in_flight_at_cut;
        self.gaps += o.gaps;
        self.unwritten += o.unwritten;
        self.duplicated += o.duplicated;
        self.lost += o.lost;
    }
}

impl fmt::Display for StreamFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} received {} in-flight-at-cut {} ({} runs) duplicated {} lost {}",
            self.sent, self.received, self.in_flight_at_cut, self.gaps, self.duplicated, self.lost
        )
    }
}

/// What the queries came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryFigures {
    /// Issued (the server had a configured session to send them on).
    pub issued: u64,
    /// Terminal 200/204 reply with exactly the expected rows.
    pub completed: u64,
    /// The expected error reply (error queries).
    pub errored: u64,
    /// No terminal reply: their session was cut (the server's timeout ended them).
    pub cut: u64,
    /// Not issued: no configured session at that moment.
    pub not_sent: u64,
    /// Timed out although their session stayed up, or wrong replies.
    pub bad: u64,
    /// Slowest terminal reply, in milliseconds.
    pub slowest_ms: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Runtime name.
    pub runtime: &'static str,
    /// The seed.
    pub seed: u64,
    /// Epochs (test servers) run.
    pub epochs: u64,
    /// Cuts injected.
    pub cuts: u64,
    /// Stalls injected.
    pub stalls: u64,
    /// Connections refused by the proxy.
    pub refused: u64,
    /// Rounds run with added latency.
    pub delayed_rounds: u64,
    /// Sessions the server configured.
    pub sessions: u64,
    /// Faults after which the connector reconnected.
    pub survived: u64,
    /// Stalls whose session ended with a keep-alive timeout.
    pub stalls_by_ping_deadline: u64,
    /// Slowest detection of a stall, in milliseconds.
    pub slowest_stall_detection_ms: u64,
    /// Slowest reconnection after the proxy let connections through again, in ms.
    pub slowest_reconnect_ms: u64,
    /// Stream A.
    pub a: StreamFigures,
    /// Stream B (offline-queued).
    pub b: StreamFigures,
    /// Stream P (publish echoes).
    pub p: StreamFigures,
    /// Queries.
    pub queries: QueryFigures,
    /// Resident set at the start, KiB.
    pub rss_start_kib: u64,
    /// Resident set at the end, KiB.
    pub rss_end_kib: u64,
    /// Peak resident set of the process, KiB.
    pub rss_peak_kib: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Every check that failed.
    pub violations: Vec<String>,
}

impl Report {
    /// Faults injected.
    pub fn faults(&self) -> u64 {
        self.cuts + self.stalls
    }

    /// Notifications missing without a cut to explain them, and duplicates, over all streams.
    pub fn lost(&self) -> u64 {
        self.a.lost + self.b.lost + self.p.lost
    }

    /// Duplicated notifications over all streams.
    pub fn duplicated(&self) -> u64 {
        self.a.duplicated + self.b.duplicated + self.p.duplicated
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = &self.queries;
        writeln!(
            f,
            "fault mix on {} (seed {:#x}, {} epoch(s), {:.1} s)",
            self.runtime,
            self.seed,
            self.epochs,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  faults: {} ({} cuts, {} stalls), survived {}; stalls ended by the ping deadline {}; \
             connections refused {}; rounds with latency {}; sessions {}",
            self.faults(),
            self.cuts,
            self.stalls,
            self.survived,
            self.stalls_by_ping_deadline,
            self.refused,
            self.delayed_rounds,
            self.sessions
        )?;
        writeln!(
            f,
            "  slowest stall detection {} ms; slowest reconnect {} ms",
            self.slowest_stall_detection_ms, self.slowest_reconnect_ms
        )?;
        writeln!(
            f,
            "  stream A (live):    {}; never written to a socket {}",
            self.a, self.a.unwritten
        )?;
        writeln!(f, "  stream B (offline): {}", self.b)?;
        writeln!(f, "  stream P (echoes):  {}", self.p)?;
        writeln!(
            f,
            "  queries: issued {} completed {} errored (expected) {} cut {} not-sent {} bad {}; slowest answer {} ms",
            q.issued, q.completed, q.errored, q.cut, q.not_sent, q.bad, q.slowest_ms
        )?;
        writeln!(
            f,
            "  messages: {} notifications received, {} lost, {} duplicated",
            self.a.received + self.b.received + self.p.received,
            self.lost(),
            self.duplicated()
        )?;
        writeln!(
            f,
            "  RSS: start {} KiB, end {} KiB, peak {} KiB",
            self.rss_start_kib, self.rss_end_kib, self.rss_peak_kib
        )?;
        if self.violations.is_empty() {
            write!(f, "  violations: none")
        } else {
            writeln!(f, "  violations ({}):", self.violations.len())?;
            for v in &self.violations {
                writeln!(f, "    - {v}")?;
            }
            Ok(())
        }
    }
}

/// The resident set and its peak, in KiB, from `/proc/self/status` (zeros elsewhere).
pub fn rss_kib() -> (u64, u64) {
    rss_kib_of("self").unwrap_or((0, 0))
}

/// The resident set and its peak, in KiB, of process `pid` (`"self"` for this one), from
/// `/proc/<pid>/status`; `None` where there is no such file.
pub fn rss_kib_of(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

// -------------------------------------------------------------------------------------------
// Stream analysis
// -------------------------------------------------------------------------------------------

/// What may explain a run of missing numbers in a stream.
#[derive(Debug, Clone, Copy)]
pub enum Cuts<'a> {
    /// Nothing: no number may be missing.
    Nothing,
    /// The sessions (their sockets, in order) that ended between the sockets the numbers
    /// around the run arrived on; each can have taken at most `window` numbers with it. For
    /// notifications the connector sends on its own.
    Sockets {
        /// The sockets of the epoch's sessions, in order.
        sessions: &'a [u64],
        /// Most numbers one session can take with it.
        window: u64,
    },
    /// For echoes of publishes: `published[n]` brackets the session (the server's count of
    /// sessions before and after the publish) that number `n` was published on. A run is
    /// explained when its publishes all went out on an earlier session than the one the
    /// echo after it arrived on: that session ended with the publishes or their echoes in
    /// flight (an echo handed over after the end waits offline and arrives later, on the
    /// next socket). At most `window` per session that ended.
    Published {
        /// Session bracket per number.
        published: &'a [(u64, u64)],
        /// The sockets of the epoch's sessions, in order.
        sessions: &'a [u64],
        /// Most numbers one session can take with it.
        window: u64,
    },
}

impl Cuts<'_> {
    /// For a violation's message: the sessions a run's numbers were published on.
    fn detail(&self, next: u64, k: u64) -> String {
        match *self {
            Cuts::Published { published, .. } => {
                let brackets: Vec<String> = (next..=k)
                    .filter_map(|n| {
                        published
                            .get(n as usize)
                            .map(|p| format!("{n}:{}-{}", p.0, p.1))
                    })
                    .collect();
                format!(" (published on sessions {})", brackets.join(" "))
            }
            _ => String::new(),
        }
    }

    /// How many numbers a run `next..k` between sockets `conn` and `c` may lose, or why
    /// none.
    fn allowance(&self, next: u64, k: u64, conn: u64, c: u64) -> Result<u64, String> {
        match *self {
            Cuts::Nothing => Err("from the offline-queued stream".to_owned()),
            Cuts::Sockets { sessions, window } => {
                let ended = sessions.iter().filter(|&&s| s > conn && s <= c).count() as u64;
                if ended == 0 {
                    Err(format!("within one socket ({c})"))
                } else {
                    Ok(window * ended)
                }
            }
            Cuts::Published {
                published,
                sessions,
                window,
            } => {
                let before = |n: u64| published.get(n as usize).map_or(0, |p| p.0);
                // The session (by count) the echo after the run arrived on.
                let arrived = sessions.iter().position(|&s| s == c).map_or(0, |i| i + 1) as u64;
                if before(k.saturating_sub(1)) < arrived {
                    Ok(window * (arrived - before(next)))
                } else {
                    Err(format!(
                        "although {next}..{k} were published on the session that delivered \
                         {k}'s echo (number {arrived}, socket {c})"
                    ))
                }
            }
        }
    }
}

/// Checks one stream as the server received it: `received` holds each number with the
/// server's socket it arrived on, in arrival order; `first` is the socket of the epoch's
/// first session; `cuts` says what may explain missing numbers. `on_wire`, when known,
/// holds the numbers written to a socket (seen by the [`Wiretap`]); missing ones outside it
/// are counted as [`StreamFigures::unwritten`].
pub fn check_stream(
    name: &str,
    sent: u64,
    received: &[(u64, u64)],
    first: u64,
    cuts: Cuts<'_>,
    on_wire: Option<&HashSet<u64>>,
    violations: &mut Vec<String>,
) -> StreamFigures {
    let mut fig = StreamFigures {
        sent,
        received: received.len() as u64,
        ..StreamFigures::default()
    };
    let mut next = 0u64; // the number expected next
    let mut conn = first;
    for &(k, c) in received {
        if k >= sent {
            violations.push(format!("{name}: received {k}, which was never sent"));
            continue;
        }
        if k < next {
            fig.duplicated += 1;
            violations.push(format!(
                "{name}: {k} received again or out of order (after {})",
                next - 1
            ));
            continue;
        }
        if k > next {
            let missing = k - next;
            match cuts.allowance(next, k, conn, c) {
                Ok(allowed) if missing <= allowed => {
                    fig.gaps += 1;
                    fig.in_flight_at_cut += missing;
                    if let Some(seen) = on_wire {
                        let unwritten: Vec<u64> = (next..k).filter(|n| !seen.contains(n)).collect();
                        fig.unwritten += unwritten.len() as u64;
                        if std::env::var_os("VANTIQ_FAULT_VERBOSE").is_some() {
                            eprintln!(
                                "{name}: {next}..{k} lost across sockets {conn}->{c}; never \
                                 written: {} {:?}",
                                unwritten.len(),
                                unwritten
                            );
                        }
                    }
                }
                Ok(allowed) => {
                    fig.lost += missing;
                    violations.push(format!(
                        "{name}: {next}..{k} ({missing}) missing across sockets {conn}->{c}, \
                         more than the {allowed} the cuts there can explain{}",
                        cuts.detail(next, k)
                    ));
                }
                Err(why) => {
                    fig.lost += missing;
                    violations.push(format!("{name}: {next}..{k} ({missing}) missing {why}"));
                }
            }
        }
        next = k + 1;
        conn = c;
    }
    if next < sent {
        fig.lost += sent - next;
        violations.push(format!(
            "{name}: the last {} sent ({next}..{sent}) never arrived",
            sent - next
        ));
    }
    fig
}

// -------------------------------------------------------------------------------------------
// The connector side
// -------------------------------------------------------------------------------------------

/// The echo handler, plus a log of session ends.
#[derive(Clone)]
struct MixHandler {
    echo: Echo,
    closes: Arc<Mutex<Vec<DisconnectReason>>>,
}

impl Handler for MixHandler {
    async fn on_connect(&self, source: &Source, config: Json) -> HandlerResult {
        self.echo.on_connect(source, config).await
    }

    async fn on_publish(&self, source: &Source, message: Json) -> HandlerResult {
        self.echo.on_publish(source, message).await
    }

    async fn on_query(&self, source: &Source, query: Query) -> HandlerResult {
        self.echo.on_query(source, query).await
    }

    async fn on_close(&self, _source: &Source, reason: &DisconnectReason) -> HandlerResult {
        self.closes.lock().unwrap().push(reason.clone());
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------
// Shared state of one epoch
// -------------------------------------------------------------------------------------------

#[derive(Default)]
struct Seen {
    a_next: u64,
    p_next: u64,
    b_count: u64,
}

#[derive(Debug, Clone)]
enum QueryKind {
    Rows { rows: u64, chunk: u64 },
    Error(String),
}

struct QueryRecord {
    kind: QueryKind,
    disconnects_before: u64,
    disconnects_after: u64,
    elapsed: Duration,
    outcome: Result<vantiq_testkit::QueryResult, TestkitError>,
}

struct Epoch {
    stop: AtomicBool,
    seen: Mutex<Seen>,
    seen_tx: tokio::sync::watch::Sender<u64>,
    a_budget: AtomicU64,
    a_sent: AtomicU64,
    /// Numbers below this were sent before the current session began: received, or lost
    /// with a socket that is gone. The window counts from here or from the highest number
    /// received, whichever is greater.
    a_floor: AtomicU64,
    p_budget: AtomicU64,
    p_sent: AtomicU64,
    /// Per published number: the server's session count before and after its publish.
    p_sessions: Mutex<Vec<(u64, u64)>>,
    queries: Mutex<Vec<QueryRecord>>,
}

impl Epoch {
    fn new() -> Arc<Epoch> {
        Arc::new(Epoch {
            stop: AtomicBool::new(false),
            seen: Mutex::new(Seen::default()),
            seen_tx: tokio::sync::watch::channel(0).0,
            a_budget: AtomicU64::new(0),
            a_sent: AtomicU64::new(0),
            a_floor: AtomicU64::new(0),
            p_budget: AtomicU64::new(0),
            p_sent: AtomicU64::new(0),
            p_sessions: Mutex::new(Vec::new()),
            queries: Mutex::new(Vec::new()),
        })
    }

    fn bump(&self) {
        self.seen_tx.send_modify(|v| *v += 1);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Waits until `pred` holds (checked whenever something is received or released).
    async fn wait(&self, pred: impl Fn(&Epoch, &Seen) -> bool) {
        let mut rx = self.seen_tx.subscribe();
        loop {
            if pred(self, &self.seen.lock().unwrap()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get(key))
        .and_then(Value::as_u64)
}

/// Follows the server's notifications (on the server's runtime).
async fn collect(h: SourceHandle, epoch: Arc<Epoch>) {
    let mut cursor = 0;
    loop {
        let (next, items) = h
            .wait_notifications_after(cursor, Duration::from_millis(50))
            .await;
        if items.is_empty() {
            if epoch.stopped() {
                return;
            }
            continue;
        }
        cursor = next;
        {
            let mut s = epoch.seen.lock().unwrap();
            for item in items {
                let v = item.to_value().expect("a notification tree");
                if let Some(k) = num(&v, "a") {
                    s.a_next = s.a_next.max(k + 1);
                } else if let Some(k) = num(&v, "p") {
                    s.p_next = s.p_next.max(k + 1);
                } else if num(&v, "b").is_some() {
                    s.b_count += 1;
                }
            }
        }
        epoch.bump();
    }
}

/// Stream A: notifications within the budget and the window (on the connector's runtime).
async fn produce(source: Source, epoch: Arc<Epoch>, window: u64) {
    let mut k = 0u64;
    loop {
        epoch
            .wait(|e, s| {
                let base = s.a_next.max(e.a_floor.load(Ordering::Acquire));
                e.stopped() || (k < e.a_budget.load(Ordering::Acquire) && k < base + window)
            })
            .await;
        if epoch.stopped() {
            return;
        }
        source.notify(&json!({ "a": k })).await.expect("notify");
        k += 1;
        epoch.a_sent.store(k, Ordering::Release);
        if k.is_multiple_of(16) {
            yield_now().await;
        }
    }
}

/// Stream P: publishes within the budget and the window (on the server's runtime). The
/// window starts again with each session, at the first number published on it: at most one
/// window per session can be lost with it, which the check relies on.
async fn publish(h: SourceHandle, epoch: Arc<Epoch>, window: u64) {
    let mut k = 0u64;
    // The session of the last publish, and the first number published on it.
    let mut session = h.connections();
    let mut floor = 0u64;
    loop {
        epoch
            .wait(|e, s| {
                let base = if h.connections() == session {
                    s.p_next.max(floor)
                } else {
                    k
                };
                e.stopped() || (k < e.p_budget.load(Ordering::Acquire) && k < base + window)
            })
            .await;
        if epoch.stopped() {
            return;
        }
        let before = h.connections();
        if before != session {
            session = before;
            floor = k;
        }
        match h.publish(Json::from(json!({ "p": k }))).await {
            Ok(()) => {
                let after = h.connections();
                epoch.p_sessions.lock().unwrap().push((before, after));
                k += 1;
                epoch.p_sent.store(k, Ordering::Release);
            }
            Err(TestkitError::NotConnected { .. }) => {
                // No session now: wait for one (or for the stop), then try the same number.
                let _ = h.wait_configured(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("publish: {e}"),
        }
    }
}

/// One query, on the server's runtime.
async fn query(h: SourceHandle, epoch: Arc<Epoch>, kind: QueryKind, timeout: Duration) {
    let params = match &kind {
        QueryKind::Rows { rows, chunk } => json!({"rows": rows, "chunk": chunk}),
        QueryKind::Error(m) => json!({ "error": m }),
    };
    let disconnects_before = h.disconnects();
    let started = Instant::now();
    let outcome = h.query_with_timeout(Json::from(params), timeout).await;
    let elapsed = started.elapsed();
    let disconnects_after = h.disconnects();
    epoch.queries.lock().unwrap().push(QueryRecord {
        kind,
        disconnects_before,
        disconnects_after,
        elapsed,
        outcome,
    });
}

/// Yields once to the executor.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

enum Verdict {
    NotSent,
    Completed,
    Errored,
    Cut,
    Bad(String),
}

fn judge(r: &QueryRecord) -> Verdict {
    let session_ended = r.disconnects_after != r.disconnects_before;
    match (&r.kind, &r.outcome) {
        (_, Err(TestkitError::NotConnected { .. })) => Verdict::NotSent,
        (QueryKind::Rows { rows, chunk }, Ok(result)) => {
            let want: Vec<Value> = (0..*rows).map(|i| json!({ "i": i })).collect();
            let parts = rows.div_ceil(*chunk) as usize;
            if result.status.0 == 200 && result.rows == want && result.parts.len() == parts {
                Verdict::Completed
            } else {
                Verdict::Bad(format!(
                    "status {} with {} rows in {} parts (want 200, {rows} rows, {parts} parts)",
                    result.status.0,
                    result.rows.len(),
                    result.parts.len()
                ))
            }
        }
        (QueryKind::Error(m), Err(TestkitError::QueryFailed { result, .. })) => {
            let expected = result.status.0 == 400
                && result.error().is_some_and(|e| {
                    e.code == "echo.error" && e.parameters == vec![Value::String(m.clone())]
                });
            if expected {
                Verdict::Errored
            } else {
                Verdict::Bad(format!("unexpected error reply {:?}", result.parts.last()))
            }
        }
        // An error reply for a query whose session was cut is an answer too.
        (_, Err(TestkitError::QueryFailed { .. })) if session_ended => Verdict::Errored,
        (_, Err(TestkitError::Timeout { .. })) if session_ended => Verdict::Cut,
        (_, Err(TestkitError::Timeout { .. })) => Verdict::Bad(format!(
            "no terminal reply within {:?} although its session never ended",
            r.elapsed
        )),
        (_, other) => Verdict::Bad(format!("unexpected outcome {other:?}")),
    }
}

fn check_query(r: &QueryRecord, fig: &mut QueryFigures, violations: &mut Vec<String>) {
    let verdict = judge(r);
    if !matches!(verdict, Verdict::NotSent) {
        fig.issued += 1;
    }
    match verdict {
        Verdict::NotSent => fig.not_sent += 1,
        Verdict::Completed => fig.completed += 1,
        Verdict::Errored => fig.errored += 1,
        Verdict::Cut => fig.cut += 1,
        Verdict::Bad(what) => {
            fig.bad += 1;
            violations.push(format!("query {:?}: {what}", r.kind));
        }
    }
    if r.outcome.is_ok() || matches!(r.outcome, Err(TestkitError::QueryFailed { .. })) {
        fig.slowest_ms = fig.slowest_ms.max(r.elapsed.as_millis() as u64);
    }
}

// -------------------------------------------------------------------------------------------
// The run
// -------------------------------------------------------------------------------------------

fn range(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.next_u64() % (hi - lo + 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Cut,
    Stall,
}

/// Waits until the connector has left `Configured`.
async fn left_configured(source: &Source) {
    while source.state() == ConnectionState::Configured {
        source.wait_change(ConnectionState::Configured).await;
    }
}

/// Runs the mix on runtime `R` as `plan` says and reports what it measured.
pub async fn run_mix<R: TestRuntime>(runtime: &'static str, plan: &Plan) -> Report {
    let started = Instant::now();
    let mut rng = Rng::new(plan.seed);
    let mut report = Report {
        runtime,
        seed: plan.seed,
        ..Report::default()
    };
    let mut kit = new_kit(plan).await;
    let proxy = Proxy::start(kit.addr());
    let closes = Arc::new(Mutex::new(Vec::new()));
    let handler = MixHandler {
        echo: Echo::without_health(),
        closes: closes.clone(),
    };
    let keepalive = plan.keepalive;
    let tap = Wiretap::<R>::default();
    let set =
        ConnectorSet::with_runtime(tap.clone(), crate::config_for(&proxy.url(), &[SOURCE], ""))
            .handler(handler)
            .connection_config(move |c| {
                c.keepalive = Some(keepalive);
                c.backoff.initial = Duration::from_millis(20);
                c.backoff.max = Duration::from_millis(200);
            });
    let source = set.source(SOURCE).unwrap();
    let running = crate::start(set);
    kit.source(SOURCE).wait_configured().await;
    kit.within(WAIT, "the connector configured", source.wait_configured())
        .await
        .unwrap();
    report.rss_start_kib = rss_kib().0;

    // Expected session ends, in order: Some(fault) for an injected one.
    let mut expected: Vec<Fault> = Vec::new();
    loop {
        report.epochs += 1;
        run_epoch(
            &kit,
            &proxy,
            &tap,
            &source,
            plan,
            &mut rng,
            &mut report,
            &mut expected,
        )
        .await;
        let more = plan
            .duration
            .is_some_and(|d| started.elapsed() + Duration::from_secs(1) < d);
        if !more {
            break;
        }
        // The next epoch runs against a fresh server (the old one's records are freed); the
        // switch is one more cut.
        let next = new_kit(plan).await;
        proxy.set_upstream(next.addr());
        proxy.set_refuse_all(false);
        report.cuts += 1;
        expected.push(Fault::Cut);
        proxy.cut();
        kit.within(
            WAIT,
            "the connector noticing the switch",
            left_configured(&source),
        )
        .await;
        drop(std::mem::replace(&mut kit, next));
        kit.source(SOURCE).wait_configured().await;
        kit.within(WAIT, "the connector configured", source.wait_configured())
            .await
            .unwrap();
        report.survived += 1;
    }
    (report.rss_end_kib, report.rss_peak_kib) = rss_kib();
    running.stop(&kit).await.expect("run() returns Ok");

    // Every session end but the last (the shutdown) was a fault, in order.
    let closes = closes.lock().unwrap().clone();
    let (last, failures) = closes.split_last().expect("at least the shutdown");
    if !matches!(last, DisconnectReason::Shutdown) {
        report.violations.push(format!(
            "the last session ended with {last:?}, not Shutdown"
        ));
    }
    if failures.len() != expected.len() {
        report.violations.push(format!(
            "{} sessions ended before the shutdown, but {} faults were injected: {failures:?}",
            failures.len(),
            expected.len()
        ));
    }
    for (i, (reason, fault)) in failures.iter().zip(&expected).enumerate() {
        let ok = match (fault, reason) {
            (Fault::Stall, DisconnectReason::Failure(Failure::KeepAliveTimeout)) => {
                report.stalls_by_ping_deadline += 1;
                true
            }
            (
                Fault::Cut,
                DisconnectReason::Failure(Failure::SocketError(_) | Failure::SocketClosed { .. }),
            ) => true,
            _ => false,
        };
        if !ok {
            report.violations.push(format!(
                "fault {i} ({fault:?}) ended its session with {reason:?}"
            ));
        }
    }
    let growth = report.rss_end_kib.saturating_sub(report.rss_start_kib);
    if growth > plan.rss_budget_kib {
        report.violations.push(format!(
            "the resident set grew by {growth} KiB (budget {} KiB)",
            plan.rss_budget_kib
        ));
    }
    report.refused = proxy.stats().refused;
    report.elapsed = started.elapsed();
    report
}

async fn new_kit(plan: &Plan) -> Kit {
    let timeout = plan.query_timeout;
    Kit::start(move |b| {
        b.token("T")
            .source(SOURCE, json!({}))
            .query_timeout(timeout)
    })
    .await
}

#[allow(clippy::too_many_arguments)]
async fn run_epoch<R: TestRuntime>(
    kit: &Kit,
    proxy: &Proxy,
    tap: &Wiretap<R>,
    source: &Source,
    plan: &Plan,
    rng: &mut Rng,
    report: &mut Report,
    expected: &mut Vec<Fault>,
) {
    let h = kit.source(SOURCE).handle().clone();
    let epoch = Epoch::new();
    // Stream A's numbers as they are written to a socket.
    let on_wire: Arc<Mutex<HashSet<u64>>> = Arc::default();
    {
        let on_wire = on_wire.clone();
        tap.set_inspector(Some(Arc::new(move |payload: &[u8]| {
            if let Ok(ClientFrame::Notification { object, .. }) = ClientFrame::decode(payload)
                && let Ok(v) = object.to_value()
                && let Some(k) = num(&v, "a")
            {
                on_wire.lock().unwrap().insert(k);
            }
        })));
    }
    let collector = kit.on(collect(h.clone(), epoch.clone()));
    let publisher = kit.on(publish(h.clone(), epoch.clone(), plan.window_p));
    let producer = produce(source.clone(), epoch.clone(), plan.window_a);
    let mut b_sent = 0u64;
    let mut query_tasks = Vec::new();
    let mut faults = 0u64;

    let control = async {
        let mut rounds = 0;
        loop {
            // A configured session on both ends, and the last offline batch delivered.
            kit.source(SOURCE).wait_configured().await;
            kit.within(WAIT, "the connector configured", source.wait_configured())
                .await
                .unwrap();
            kit.within(
                WAIT,
                "the offline batch delivered",
                epoch.wait(|_, s| s.b_count == b_sent),
            )
            .await;
            let last = rounds == plan.faults_per_epoch;
            // Release this round's work.
            let a_start = epoch.seen.lock().unwrap().a_next;
            let qa = range(rng, 50, 250);
            epoch.a_budget.fetch_add(qa, Ordering::AcqRel);
            epoch
                .p_budget
                .fetch_add(range(rng, 5, 30), Ordering::AcqRel);
            epoch.bump();
            for _ in 0..range(rng, 1, 4) {
                let kind = if rng.next_u64().is_multiple_of(4) {
                    QueryKind::Error(format!("e{}", rng.next_u64() % 1000))
                } else {
                    QueryKind::Rows {
                        rows: range(rng, 1, 400),
                        chunk: range(rng, 1, 12),
                    }
                };
                let fut = query(h.clone(), epoch.clone(), kind, plan.query_timeout);
                query_tasks.push(kit.spawn(fut));
            }
            if last {
                break;
            }
            rounds += 1;
            // Let a random part of it through, then break the link.
            let cut_at = a_start + range(rng, 0, qa - 1);
            kit.within(
                WAIT,
                "stream A progressing",
                epoch.wait(|_, s| s.a_next >= cut_at),
            )
            .await;
            let fault = if rng.next_u64().is_multiple_of(2) {
                Fault::Cut
            } else {
                Fault::Stall
            };
            proxy.set_refuse_all(true);
            let injected = Instant::now();
            let links = match fault {
                Fault::Cut => proxy.cut(),
                Fault::Stall => proxy.stall(),
            };
            assert!(links >= 1, "no link to break");
            expected.push(fault);
            faults += 1;
            match fault {
                Fault::Cut => report.cuts += 1,
                Fault::Stall => report.stalls += 1,
            }
            kit.within(
                WAIT,
                &format!("the connector noticing {fault:?} {faults}"),
                left_configured(source),
            )
            .await;
            let detected = injected.elapsed();
            if fault == Fault::Stall {
                report.slowest_stall_detection_ms = report
                    .slowest_stall_detection_ms
                    .max(detected.as_millis() as u64);
            }
            proxy.set_delay(Duration::ZERO);
            // The connector is offline and cannot come back: this batch is queued.
            let batch = range(rng, 1, 40);
            for _ in 0..batch {
                source
                    .notify(&json!({ "b": b_sent }))
                    .await
                    .expect("notify");
                b_sent += 1;
            }
            let sessions_before = h.connections();
            proxy.refuse(range(rng, 0, 3));
            proxy.set_refuse_all(false);
            let lifted = Instant::now();
            if rng.next_u64().is_multiple_of(4) {
                proxy.set_delay(Duration::from_millis(range(rng, 1, 15)));
                report.delayed_rounds += 1;
            }
            kit.within(
                WAIT,
                &format!("a new session after fault {faults}"),
                async {
                    let h = h.clone();
                    kit.on(async move { h.wait_connections(sessions_before + 1, WAIT).await })
                        .await
                        .unwrap();
                },
            )
            .await;
            // What was sent before this session is received or lost with the old socket:
            // the windows start again.
            epoch
                .a_floor
                .store(epoch.a_sent.load(Ordering::Acquire), Ordering::Release);
            epoch.bump();
            report.slowest_reconnect_ms = report
                .slowest_reconnect_ms
                .max(lifted.elapsed().as_millis() as u64);
            report.survived += 1;
            if plan.verbose {
                eprintln!(
                    "[{}] fault {faults}: {fault:?} detected in {} ms, offline batch {batch}, reconnected in {} ms",
                    report.runtime,
                    detected.as_millis(),
                    lifted.elapsed().as_millis()
                );
            }
        }
        // The fault-free tail: everything sent arrives.
        proxy.set_delay(Duration::ZERO);
        kit.within(
            WAIT,
            "everything sent received",
            epoch.wait(|e, s| {
                let a = e.a_budget.load(Ordering::Acquire);
                let p = e.p_budget.load(Ordering::Acquire);
                e.a_sent.load(Ordering::Acquire) == a
                    && s.a_next == a
                    && e.p_sent.load(Ordering::Acquire) == p
                    && s.p_next == p
                    && s.b_count == b_sent
            }),
        )
        .await;
        kit.within(
            plan.query_timeout + WAIT,
            "every query ending",
            futures_util::future::join_all(std::mem::take(&mut query_tasks)),
        )
        .await
        .into_iter()
        .for_each(|r| r.expect("query task"));
        epoch.stop.store(true, Ordering::Release);
        epoch.bump();
    };
    futures_util::future::join4(producer, collector, publisher, control).await;

    // The server's record of this epoch: every notification with its socket.
    let frames = h.frames();
    let sessions: Vec<u64> = h
        .connect_log()
        .iter()
        .filter(|a| {
            matches!(
                a.outcome,
                ConnectOutcome::Accepted | ConnectOutcome::TookOver
            )
        })
        .map(|a| a.connection)
        .collect();
    let (mut a, mut b, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for f in &frames {
        if let ClientFrame::Notification { object, .. } = &f.frame {
            let v = object.to_value().expect("a notification tree");
            if let Some(k) = num(&v, "a") {
                a.push((k, f.connection));
            } else if let Some(k) = num(&v, "b") {
                b.push((k, f.connection));
            } else if let Some(k) = num(&v, "p") {
                p.push((k, f.connection));
            }
        }
    }
    let v = &mut report.violations;
    let seen = on_wire.lock().unwrap();
    let first = sessions.first().copied().unwrap_or(0);
    let by_sockets = Cuts::Sockets {
        sessions: &sessions,
        window: plan.window_a,
    };
    let a_sent = epoch.a_sent.load(Ordering::Acquire);
    let fa = check_stream("A", a_sent, &a, first, by_sockets, Some(&seen), v);
    let fb = check_stream("B", b_sent, &b, first, Cuts::Nothing, None, v);
    let published = epoch.p_sessions.lock().unwrap();
    let by_publish = Cuts::Published {
        published: &published,
        sessions: &sessions,
        window: plan.window_p,
    };
    let p_sent = epoch.p_sent.load(Ordering::Acquire);
    let fp = check_stream("P", p_sent, &p, first, by_publish, None, v);
    report.a.add(&fa);
    report.b.add(&fb);
    report.p.add(&fp);
    for r in epoch.queries.lock().unwrap().iter() {
        check_query(r, &mut report.queries, &mut report.violations);
    }
    report.sessions += h.connections();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockets(sessions: &[u64], window: u64) -> Cuts<'_> {
        Cuts::Sockets { sessions, window }
    }

    #[test]
    fn streams_without_loss() {
        let mut v = Vec::new();
        let cuts = sockets(&[1, 2], 10);
        let f = check_stream("A", 3, &[(0, 1), (1, 1), (2, 2)], 1, cuts, None, &mut v);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((f.received, f.in_flight_at_cut, f.lost), (3, 0, 0));
    }

    #[test]
    fn a_run_before_a_socket_change_is_in_flight() {
        let mut v = Vec::new();
        let cuts = sockets(&[1, 2, 3, 5], 3);
        let recv = [(0, 1), (1, 1), (4, 2), (7, 3)];
        let wire: HashSet<u64> = [2, 5].into();
        let f = check_stream("A", 8, &recv, 1, cuts, Some(&wire), &mut v);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((f.in_flight_at_cut, f.gaps, f.lost), (4, 2, 0));
        // 3 and 6 were never written to a socket.
        assert_eq!(f.unwritten, 2);
        // A run across two ended sessions may be twice the window.
        let f = check_stream("A", 9, &[(0, 1), (7, 5), (8, 5)], 1, cuts, None, &mut v);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((f.in_flight_at_cut, f.gaps, f.lost), (6, 1, 0));
        // The first numbers may be lost with the epoch's first socket.
        let f = check_stream("A", 3, &[(2, 2)], 1, cuts, None, &mut v);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(f.in_flight_at_cut, 2);
    }

    #[test]
    fn echoes_lost_with_the_session_they_were_published_on() {
        let mut v = Vec::new();
        let sessions = [1, 2];
        let cuts = |published| Cuts::Published {
            published,
            sessions: &sessions,
            window: 5,
        };
        // 1 and 2 were published on session 1, which was cut; 0's echo was queued offline and
        // went out on socket 2 like 3's: explained by the publish sessions, not the sockets.
        let published = [(1, 1), (1, 1), (1, 1), (2, 2)];
        let f = check_stream("P", 4, &[(0, 2), (3, 2)], 1, cuts(&published), None, &mut v);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((f.in_flight_at_cut, f.lost), (2, 0));
        // All published on session 1; 1 and 2 echoed and lost with it, 3's echo waited
        // offline for session 2.
        let published = [(1, 1); 4];
        let f = check_stream("P", 4, &[(0, 1), (3, 2)], 1, cuts(&published), None, &mut v);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((f.in_flight_at_cut, f.lost), (2, 0));
        // Published on the session that delivered the next echo: nothing explains the loss.
        let published = [(1, 1), (2, 2), (2, 2), (2, 2)];
        let f = check_stream("P", 4, &[(0, 2), (3, 2)], 1, cuts(&published), None, &mut v);
        assert_eq!(f.lost, 2);
        assert_eq!(v.len(), 1, "{v:?}");
    }

    #[test]
    fn losses_that_no_cut_explains() {
        let mut v = Vec::new();
        let cuts = sockets(&[1, 2, 3], 3);
        // Within one socket.
        let f = check_stream("A", 4, &[(0, 1), (2, 1), (3, 1)], 1, cuts, None, &mut v);
        assert_eq!(f.lost, 1);
        // Longer than the window.
        let f = check_stream("A", 6, &[(0, 1), (5, 2)], 1, cuts, None, &mut v);
        assert_eq!(f.lost, 4);
        // The tail.
        let f = check_stream("A", 5, &[(0, 1), (1, 1)], 1, cuts, None, &mut v);
        assert_eq!(f.lost, 3);
        // Any gap in an exact stream.
        let f = check_stream("B", 3, &[(0, 1), (2, 2)], 1, Cuts::Nothing, None, &mut v);
        assert_eq!(f.lost, 1);
        assert_eq!(v.len(), 4, "{v:?}");
    }

    #[test]
    fn duplicates_and_reordering() {
        let mut v = Vec::new();
        let cuts = sockets(&[1, 2], 3);
        let recv = [(0, 1), (1, 1), (1, 2), (2, 2)];
        let f = check_stream("A", 3, &recv, 1, cuts, None, &mut v);
        assert_eq!(f.duplicated, 1);
        let f = check_stream("A", 3, &[(0, 1), (2, 1), (1, 1)], 1, cuts, None, &mut v);
        assert_eq!((f.duplicated, f.lost), (1, 1));
        assert_eq!(v.len(), 3, "{v:?}");
    }
}
