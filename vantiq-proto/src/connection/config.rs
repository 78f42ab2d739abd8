//! [`ConnectionConfig`] and the settings inside it: keep-alive and queue limits.

use std::fmt;
use std::time::Duration;

use crate::backoff::{Backoff, Rng};
use crate::config::{Credentials, ServerConfig};
use crate::url::TargetUrl;

/// WebSocket keep-alive: a ping every `interval`; the link is dead when the pong answering
/// it has not arrived within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeepAlive {
    /// Time between pings (default 20 s).
    pub interval: Duration,
    /// Time allowed for the pong (default 20 s).
    pub timeout: Duration,
}

impl KeepAlive {
    /// A ping every `interval`, answered within `timeout`.
    #[must_use]
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        KeepAlive { interval, timeout }
    }
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive::new(Duration::from_secs(20), Duration::from_secs(20))
    }
}

/// How much one source holds at most, against a server (or an application) that sends
/// faster than the other side takes.
///
/// Every queue is bounded by count and by bytes: it takes another item only while it is below
/// both, so it holds at most its byte budget plus one item (an item larger than the budget
/// still goes through an empty queue). The
/// [`Connection`](crate::Connection) enforces the first five; the last four are for its
/// driver (the SDK's runtime crates honour them; a custom driver should too). With the
/// defaults one source holds at most about 13 MiB plus one message of each kind, so the
/// sample Kubernetes Deployment (128 MiB, one source) keeps its margin with several sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Notifications held while not configured (default 10 000).
    pub offline_notifications: usize,
    /// Bytes of notifications held while not configured (default 8 MiB): what they hold in
    /// memory, their frames and queue slots, not the length of their objects.
    pub offline_bytes: usize,
    /// Bytes of frames waiting for the socket to take them (default 2 MiB), counted as for
    /// `offline_bytes`: past it,
    /// [`Connection::notify`](crate::Connection::notify) answers
    /// [`NotifyRefused::QueueFull`](crate::NotifyRefused::QueueFull) until the socket catches
    /// up, and [`Connection::can_reply`](crate::Connection::can_reply) tells the driver to
    /// hold query replies back.
    pub outbox_bytes: usize,
    /// Queries awaiting their final reply (default 1 000). A query beyond it is answered at
    /// once with the error [`TOO_MANY_QUERIES_CODE`](crate::TOO_MANY_QUERIES_CODE).
    pub open_queries: usize,
    /// Longest reply address kept for a query (default 1 KiB; Vantiq's are UUIDs). A query
    /// with a longer one is answered at once with the error
    /// [`REPLY_ADDRESS_TOO_LONG_CODE`](crate::REPLY_ADDRESS_TOO_LONG_CODE).
    pub reply_address_bytes: usize,
    /// Events (publishes, queries, …) a driver holds for the application before it stops
    /// reading the socket (default 64).
    pub pending_events: usize,
    /// Bytes of those events (default 2 MiB).
    pub pending_event_bytes: usize,
    /// Commands (notifications, replies) the application hands its driver ahead of the
    /// connection before it has to wait (default 64). The SDK's handlers, run by the driver
    /// itself, hand their sends to the connection directly and wait for its room instead.
    pub application_queue: usize,
    /// Bytes of those commands (default 1 MiB).
    pub application_queue_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            offline_notifications: 10_000,
            offline_bytes: 8 << 20,
            outbox_bytes: 2 << 20,
            open_queries: 1_000,
            reply_address_bytes: 1024,
            pending_events: 64,
            pending_event_bytes: 2 << 20,
            application_queue: 64,
            application_queue_bytes: 1 << 20,
        }
    }
}

/// Everything a [`Connection`](crate::Connection) needs to know. Build it with
/// [`ConnectionConfig::new`] or [`ConnectionConfig::from_server_config`], then adjust the
/// public fields.
///
/// `Debug` shows neither the credentials nor the reconnect secret.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// The source this connection serves.
    pub source: String,
    /// The WebSocket URL.
    pub url: TargetUrl,
    /// How to authenticate.
    pub credentials: Credentials,
    /// Sent with every `connectExtension`: `<source>_<suffix>`, the suffix random per
    /// process unless `server.config` sets `reconnectSecret`.
    pub reconnect_secret: String,
    /// Reconnect back-off.
    pub backoff: Backoff,
    /// Keep-alive pings; `None` turns them off.
    pub keepalive: Option<KeepAlive>,
    /// Time allowed from asking for a socket to being configured (default 20 s).
    pub handshake_timeout: Duration,
    /// Time a graceful close may spend delivering queued notifications (default 5 s).
    pub close_timeout: Duration,
    /// Time a socket may take no bytes while something waits to be written before the link
    /// counts as dead (default 20 s).
    pub write_timeout: Duration,
    /// Make the first connection failure fatal.
    pub fail_on_connection_error: bool,
    /// Queue bounds.
    pub limits: Limits,
    /// Seed for back-off jitter.
    pub seed: u64,
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("source", &self.source)
            .field("url", &self.url)
            .field("credentials", &self.credentials)
            .field("reconnect_secret", &"<redacted>")
            .field("backoff", &self.backoff)
            .field("keepalive", &self.keepalive)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("fail_on_connection_error", &self.fail_on_connection_error)
            .field("limits", &self.limits)
            .field("seed", &self.seed)
            .finish()
    }
}

/// A random `8-4-4-4-12` hex identifier (UUID version 4 layout) from a seeded generator.
#[must_use]
pub fn random_id(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

impl ConnectionConfig {
    /// A configuration with defaults; the reconnect secret is `<source>_<random from seed>`
    /// (a runtime replaces the suffix with one from the operating system's randomness).
    #[must_use]
    pub fn new(
        source: impl Into<String>,
        url: TargetUrl,
        credentials: Credentials,
        seed: u64,
    ) -> Self {
        let source = source.into();
        let mut rng = Rng::new(seed ^ 0x5EC2_E7A1_D00D_F00D);
        let reconnect_secret = format!("{source}_{}", random_id(&mut rng));
        ConnectionConfig {
            source,
            url,
            credentials,
            reconnect_secret,
            backoff: Backoff::default(),
            keepalive: Some(KeepAlive::default()),
            handshake_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(20),
            fail_on_connection_error: false,
            limits: Limits::default(),
            seed,
        }
    }

    /// The configuration for `source` as `server.config` describes it.
    #[must_use]
    pub fn from_server_config(cfg: &ServerConfig, source: &str, seed: u64) -> Self {
        let mut c = Self::new(
            source,
            cfg.target().clone(),
            cfg.credentials().clone(),
            seed,
        );
        if let Some(suffix) = cfg.reconnect_secret() {
            c.reconnect_secret = format!("{source}_{suffix}");
        }
        let opts = cfg.connect_options();
        let timeout = opts.ping_timeout.unwrap_or(KeepAlive::default().timeout);
        c.keepalive = if cfg.send_pings() {
            match opts.ping_interval {
                Some(None) => None,
                Some(Some(interval)) => Some(KeepAlive::new(interval, timeout)),
                None => Some(KeepAlive::new(KeepAlive::default().interval, timeout)),
            }
        } else {
            None
        };
        if let Some(t) = opts.open_timeout {
            c.handshake_timeout = t;
        }
        if let Some(t) = opts.close_timeout {
            c.close_timeout = t;
        }
        c.fail_on_connection_error = cfg.fail_on_connection_error();
        c.limits.offline_notifications = cfg.notification_queue_size();
        c.backoff.initial = cfg.reconnect_initial_delay();
        c.backoff.max = cfg.reconnect_max_delay();
        c
    }
}
