//! A fault-injecting TCP proxy for placing between a connector and the test server.
//!
//! [`Proxy`] listens on `127.0.0.1:0` and forwards every connection it accepts to an upstream
//! address (the [`Kit`](crate::Kit)'s server), byte for byte. Tests break the links on
//! command:
//!
//! * [`Proxy::cut`]: every open link is reset at once (`SO_LINGER` 0, so both peers get a
//!   TCP RST): a crashed middlebox or a lost NAT entry. Bytes the proxy had read and not yet
//!   written are lost.
//! * [`Proxy::stall`]: every open link stops forwarding in both directions while both
//!   sockets stay open (a black hole: what a connector sees when a route dies silently).
//!   The proxy keeps reading, up to [`STALL_HOLD`] bytes per direction, and never delivers
//!   them; when either peer closes, the link is closed.
//! * [`Proxy::set_delay`]: every chunk is held this long before it is forwarded (latency,
//!   applied to links open now and later).
//! * [`Proxy::refuse`] / [`Proxy::set_refuse_all`]: new connections are accepted and reset
//!   at once, before anything is forwarded.
//!
//! The proxy runs on a tokio runtime of its own; every control method is synchronous and
//! may be called from any runtime or thread. [`Proxy::set_upstream`] re-points it, so a long
//! test can replace the server behind a connector that keeps running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes a stalled link keeps reading (and never delivers) per direction before it stops
/// reading.
pub const STALL_HOLD: usize = 4 << 20;

/// What a link does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Stalled,
    Cut,
}

/// Counters of a proxy since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and forwarded.
    pub links: u64,
    /// Connections refused (reset before anything was forwarded).
    pub refused: u64,
    /// Links reset by [`Proxy::cut`].
    pub cut: u64,
    /// Links stalled by [`Proxy::stall`].
    pub stalled: u64,
    /// Bytes forwarded from clients to the upstream.
    pub bytes_up: u64,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_down: u64,
    /// Bytes read on stalled links and never delivered.
    pub bytes_swallowed: u64,
    /// Connections to the upstream that failed (the client was reset).
    pub upstream_failures: u64,
}

#[derive(Default)]
struct Counters {
    links: AtomicU64,
    refused: AtomicU64,
    cut: AtomicU64,
    stalled: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    bytes_swallowed: AtomicU64,
    upstream_failures: AtomicU64,
}

struct Control {
    upstream: SocketAddr,
    refuse_next: u64,
    refuse_all: bool,
    delay: Duration,
    next_link: u64,
    links: HashMap<u64, watch::Sender<Mode>>,
}

struct Inner {
    addr: SocketAddr,
    control: Mutex<Control>,
    delay: watch::Sender<Duration>,
    counters: Counters,
    /// Woken whenever a link opens or ends.
    changed: tokio::sync::Notify,
}

/// A fault-injecting TCP proxy (see the [module documentation](self)).
pub struct Proxy {
    inner: Arc<Inner>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.inner.addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Starts a proxy to `upstream` on a runtime of its own.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        // Bound here (callers may be inside another runtime), served on the proxy's own.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let (delay, _) = watch::channel(Duration::ZERO);
        let inner = Arc::new(Inner {
            addr,
            control: Mutex::new(Control {
                upstream,
                refuse_next: 0,
                refuse_all: false,
                delay: Duration::ZERO,
                next_link: 0,
                links: HashMap::new(),
            }),
            delay,
            counters: Counters::default(),
            changed: tokio::sync::Notify::new(),
        });
        rt.spawn(accept_loop(inner.clone(), listener));
        Proxy {
            inner,
            rt: Some(rt),
        }
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `targetServer` for a connector that goes through the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Sends new connections to `upstream` from now on (open links are left alone).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.inner.control.lock().unwrap().upstream = upstream;
    }

    /// Resets every open link. Returns how many there were.
    pub fn cut(&self) -> usize {
        self.set_mode_all(Mode::Cut, |c| &c.cut)
    }

    /// Stalls every open link (no bytes delivered either way, sockets left open). Returns
    /// how many there were.
    pub fn stall(&self) -> usize {
        self.set_mode_all(Mode::Stalled, |c| &c.stalled)
    }

    fn set_mode_all(&self, mode: Mode, counter: fn(&Counters) -> &AtomicU64) -> usize {
        let ctl = self.inner.control.lock().unwrap();
        let mut n = 0;
        for tx in ctl.links.values() {
            if *tx.borrow() == Mode::Forward {
                tx.send_replace(mode);
                n += 1;
            }
        }
        counter(&self.inner.counters).fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Holds every chunk for `delay` before forwarding it (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.inner.control.lock().unwrap().delay = delay;
        self.inner.delay.send_replace(delay);
    }

    /// The current delay.
    pub fn delay(&self) -> Duration {
        self.inner.control.lock().unwrap().delay
    }

    /// Refuses (resets) the next `n` connections.
    pub fn refuse(&self, n: u64) {
        self.inner.control.lock().unwrap().refuse_next = n;
    }

    /// Refuses every new connection while on.
    pub fn set_refuse_all(&self, on: bool) {
        self.inner.control.lock().unwrap().refuse_all = on;
    }

    /// Links open now (forwarding or stalled).
    pub fn open_links(&self) -> usize {
        self.inner.control.lock().unwrap().links.len()
    }

    /// Waits until no link is open.
    pub async fn wait_no_links(&self) {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open_links() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The counters.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            links: get(&c.links),
            refused: get(&c.refused),
            cut: get(&c.cut),
            stalled: get(&c.stalled),
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
            bytes_swallowed: get(&c.bytes_swallowed),
            upstream_failures: get(&c.upstream_failures),
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: std::net::TcpListener) {
    let listener = TcpListener::from_std(listener).expect("proxy listener");
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let (refuse, upstream) = {
            let mut ctl = inner.control.lock().unwrap();
            let refuse = ctl.refuse_all || ctl.refuse_next > 0;
            if !ctl.refuse_all && ctl.refuse_next > 0 {
                ctl.refuse_next -= 1;
            }
            (refuse, ctl.upstream)
        };
        if refuse {
            inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        tokio::spawn(link(inner.clone(), client, upstream));
    }
}

async fn link(inner: Arc<Inner>, client: TcpStream, upstream: SocketAddr) {
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => {
            inner
                .counters
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mode_tx, mode_rx) = watch::channel(Mode::Forward);
    let id = {
        let mut ctl = inner.control.lock().unwrap();
        ctl.next_link += 1;
        let id = ctl.next_link;
        ctl.links.insert(id, mode_tx);
        id
    };
    inner.counters.links.fetch_add(1, Ordering::Relaxed);
    inner.changed.notify_waiters();

    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let reset_both = {
        let up = pump(&inner, &mut cr, &mut sw, mode_rx.clone(), Direction::Up);
        let down = pump(&inner, &mut sr, &mut cw, mode_rx, Direction::Down);
        tokio::pin!(up, down);
        // A cut or a reset ends the link at once; an orderly end (EOF) of one direction is
        // passed on and the other direction runs until it ends too.
        tokio::select! {
            e = &mut up => e == End::Reset || down.await == End::Reset,
            e = &mut down => e == End::Reset || up.await == End::Reset,
        }
    };
    if reset_both {
        let _ = cr.as_ref().set_zero_linger();
        let _ = sr.as_ref().set_zero_linger();
    }
    drop((cr, cw, sr, sw));
    inner.control.lock().unwrap().links.remove(&id);
    inner.changed.notify_waiters();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The reading side closed in order; the write side was shut down.
    Eof,
    /// An error, a cut, or the other direction failed: both sockets are reset.
    Reset,
}

/// Moves bytes from `rd` to `wr` as the link's mode says, until the reading side ends.
async fn pump(
    inner: &Inner,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    dir: Direction,
) -> End {
    let forwarded = match dir {
        Direction::Up => &inner.counters.bytes_up,
        Direction::Down => &inner.counters.bytes_down,
    };
    let delay = inner.delay.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    let mut held = 0usize;
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Cut {
            return End::Reset;
        }
        let can_read = current == Mode::Forward || held < STALL_HOLD;
        let n = tokio::select! {
            r = rd.read(&mut buf), if can_read => match r {
                Ok(0) => {
                    if current == Mode::Forward {
                        let _ = wr.shutdown().await;
                        return End::Eof;
                    }
                    // A stalled link delivers nothing, not even the end.
                    return End::Reset;
                }
                Ok(n) => n,
                Err(_) => {
                    return End::Reset;
                }
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return End::Reset;
                }
                continue;
            }
        };
        // The mode may have changed while reading.
        match *mode.borrow() {
            Mode::Forward => {}
            Mode::Stalled => {
                held += n;
                inner
                    .counters
                    .bytes_swallowed
                    .fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            Mode::Cut => {
                return End::Reset;
            }
        }
        let d = *delay.borrow();
        if !d.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(d) => {}
                _ = mode.changed() => {}
            }
            if *mode.borrow() != Mode::Forward {
                // Cut or stalled while the chunk waited: it is never delivered.
                inner
                    .counters
                    .bytes_swallowed
                    .fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
        }
        let chunk = buf.get(..n).unwrap_or_default();
        let write = wr.write_all(chunk);
        tokio::pin!(write);
        let written = loop {
            tokio::select! {
                r = &mut write => break r.is_ok(),
                changed = mode.changed() => {
                    if changed.is_err() || *mode.borrow() == Mode::Cut {
                        return End::Reset;
                    }
                    // Stalled mid-write: the write completes or blocks; either is a stall.
                }
            }
        };
        if !written {
            return End::Reset;
        }
        forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
}
