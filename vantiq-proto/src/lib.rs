//! The sans-IO core of the Vantiq extension-source (connector) protocol.
//!
//! This crate knows the protocol and nothing about sockets, async runtimes, threads or
//! clocks: frames ([`frame`]), `server.config` ([`ServerConfig`], [`Properties`]), the URL
//! rules ([`TargetUrl`]), and [`Connection`], the state machine that carries one source
//! through authentication, attachment, configuration, publishes, queries, notifications,
//! `reconnectRequired`, keep-alive and reconnection with back-off. Time comes in as an
//! argument; randomness comes from a seed. The runtime crates (`vantiq-connector-tokio`,
//! `vantiq-connector-smol`) drive it over real WebSockets; you can drive it over any
//! transport you like (see `examples/blocking/` for one on a plain blocking socket).
//!
//! Connectors do not depend on this crate directly: `vantiq-connector-tokio` and
//! `vantiq-connector-smol` do, and re-export what a connector needs (the whole crate as
//! `proto`). Depend on it to build a transport of your own, or to test at the protocol level.
//!
//! # Feature flags
//!
//! * `server`: the `server` module, the server side of the protocol in the same sans-IO
//!   style (a registry of sources and one `ServerConnection` per socket), for test servers
//!   and simulations. Connectors do not need it.
//! * `test-util` (implies `server`): the `testing` module, which pairs a `Connection` with
//!   that server over a simulated link in virtual time, and a checked driver for property
//!   tests and fuzzing.
//!
//! Why the connection behaves as it does (back-off, bounds, liveness, every query answered,
//! and where Vantiq's Java and Python SDKs differ) is in the repository's design document,
//! `docs/design.md`; its section `#calling-contracts` also describes how the SDK's own
//! driver meets the contract below.
//!
//! # Calling contract
//!
//! A [`Connection`] is fed *inputs* and *commands* and produces *outputs*:
//!
//! * inputs: [`Connection::handle_open`] (the socket asked for is open),
//!   [`Connection::handle_frame`] (a text or binary frame arrived; a bad frame returns an
//!   error and is dropped, the connection goes on), [`Connection::handle_pong`] (with the
//!   pong's payload), [`Connection::handle_closed`] (the socket, or the attempt to open it,
//!   ended), [`Connection::handle_write_status`] (how the socket's write side is doing),
//!   [`Connection::set_reading_paused`] and [`Connection::handle_timeout`] (the instant given
//!   by `poll_timeout` has come);
//! * commands: [`Connection::notify`], [`Connection::respond`] and [`Connection::close`];
//! * outputs: [`Connection::poll_transmit`] (one ordered queue of socket actions: open a
//!   socket, send a frame, ping, close or drop the socket), [`Connection::poll_event`]
//!   (configured, publish, query, disconnected, closed) and [`Connection::poll_timeout`].
//!
//! After every input or command, the driver **drains `poll_transmit` and performs each
//! action in order, then drains `poll_event`, then reads `poll_timeout`** and arranges to call
//! `handle_timeout` at that instant. Each call takes `now`; it must never go backwards.
//!
//! **Writing.** Pass `poll_transmit(writable)` whether the socket can take a frame now. A
//! frame taken counts as *written*, so take one only when you can hand it to the socket at
//! once; with `writable: false` the frames stay in the connection, and only the actions that
//! need no write (connect, close, drop) come out: they are never queued behind a frame. The
//! connection bounds what it holds in bytes ([`Limits`]): [`Connection::notify`] answers
//! `QueueFull` past the bound, and [`Connection::can_notify`] says when to try again.
//!
//! **Requeueing.** When a socket ends (reported by `handle_closed`, or let go of by a
//! [`Transmit::Close`] or [`Transmit::Abort`]), every notification still in the connection is
//! put back at the front of the queue for the next session, in order and without re-parsing;
//! replies of the ended session are dropped (nobody waits for them any more). What was taken
//! was written: on the wire, or in the transport's buffer. A driver therefore loses nothing
//! it did not hand to its transport, whatever the socket does.
//!
//! **While draining.** Commands and inputs may be called at any point, between two
//! `poll_transmit` or `poll_event` calls included (a handler answering a query while the
//! driver hands out events): what they produce is queued behind what is already there, in
//! order. Report a peer's close as soon as its close frame arrives, not when the stream ends.
//!
//! A [`Transmit::Close`] or [`Transmit::Abort`] lets go of the current socket: the driver
//! reports nothing more about that socket. Every [`Transmit::Connect`] is answered by exactly
//! one `handle_open` or `handle_closed` (unless an `Abort` cancels it first).
//!
//! **Liveness.** A link is dead when the pong answering a ping does not arrive in time
//! (only a pong with the ping's payload counts), or when the socket takes no bytes for the
//! write timeout while something waits to be written (report it with
//! `handle_write_status`): a server that keeps sending but stops reading is caught.
//!
//! Fatal outcomes (a rejected token; with `failOnConnectionError`, any connection failure;
//! the end of a graceful close) produce one [`Event::Closed`], always the last event, which
//! counts the notifications that could not be delivered; after it every input is a no-op.
//! Peer input never panics. [`Transmit`] and [`Event`] are exhaustive: a driver handles every
//! variant, and a new one is a compile error rather than something a driver ignores.
//!
//! # Example: a handshake by hand
//!
//! ```
//! use std::time::{Duration, Instant};
//! use vantiq_proto::{
//!     Connection, ConnectionConfig, Credentials, Event, Json, Reply, Secret, TargetUrl,
//!     Transmit,
//! };
//!
//! let url = TargetUrl::parse("http://localhost:8080").unwrap();
//! let creds = Credentials::Token(Secret::new("my-token"));
//! let mut cfg = ConnectionConfig::new("MySource", url, creds, 42);
//! cfg.reconnect_secret = "MySource_fixed".into();
//! let mut now = Instant::now();
//! let mut conn = Connection::new(cfg, now);
//!
//! // 1. The connection asks for a socket; we "open" one.
//! assert!(matches!(conn.poll_transmit(true), Some(Transmit::Connect { .. })));
//! conn.handle_open(now);
//!
//! // 2. It authenticates…
//! assert_eq!(
//!     conn.poll_transmit(true),
//!     Some(Transmit::Frame(
//!         r#"{"op":"validate","resourceName":"system.credentials","object":"my-token"}"#.into()
//!     ))
//! );
//! now += Duration::from_millis(5);
//! conn.handle_frame(now, br#"{"status":200,"body":{"anonymous":false}}"#).unwrap();
//!
//! // 3. …attaches to its source…
//! assert_eq!(
//!     conn.poll_transmit(true),
//!     Some(Transmit::Frame(
//!         r#"{"op":"connectExtension","resourceName":"sources","resourceId":"MySource","parameters":{"reconnectSecret":"MySource_fixed"}}"#.into()
//!     ))
//! );
//! conn.handle_frame(now, br#"{"op":"configureExtension","resourceName":"sources",
//!     "resourceId":"MySource","object":{"config":{"rate":5}}}"#).unwrap();
//! assert_eq!(conn.poll_event(), Some(Event::Configured { config: Json::from_string(r#"{"rate":5}"#.into()).unwrap() }));
//!
//! // 4. …and answers a query.
//! conn.handle_frame(now, br#"{"op":"query","resourceId":"MySource",
//!     "messageHeaders":{"REPLY_ADDR_HEADER":"r1"},"object":{"n":1}}"#).unwrap();
//! let Some(Event::Query { id, params, reply_address }) = conn.poll_event() else { panic!() };
//! assert_eq!(reply_address, "r1");
//! assert_eq!(params.as_str(), r#"{"n":1}"#);
//! conn.respond(id, Reply::Complete(Json::from_string(r#"[{"i":0}]"#.into()).unwrap())).unwrap();
//! assert_eq!(
//!     conn.poll_transmit(true),
//!     Some(Transmit::Frame(r#"{"status":200,"headers":{"X-Reply-Address":"r1"},"body":[{"i":0}]}"#.into()))
//! );
//!
//! // Pings are due 20 s after the socket opened.
//! assert_eq!(conn.poll_timeout(), Some(now - Duration::from_millis(5) + Duration::from_secs(20)));
//! ```

mod backoff;
mod config;
mod connection;
pub mod frame;
pub mod json;
mod notification;
mod properties;
mod query;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "test-util")]
pub mod testing;
mod url;

pub use backoff::{Backoff, Rng};
pub use config::{
    ConfigError, ConnectOptions, Credentials, SEARCH_PATHS, Secret, ServerConfig, TOKEN_ENV, keys,
};
pub use connection::{
    Connection, ConnectionConfig, ConnectionState, DisconnectReason, Event, Failure, FatalError,
    KeepAlive, Limits, NotifyRefused, SocketEnd, Stats, Transmit, random_id,
};
pub use frame::{FrameError, Status};
pub use json::{Json, JsonTreeError};
pub use notification::{Notification, NotificationEncoder};
pub use properties::{Properties, PropertiesError};
pub use query::{
    QueryError, QueryId, REPLY_ADDRESS_TOO_LONG_CODE, Reply, ReplyError, RowChunker,
    TOO_MANY_QUERIES_CODE, reply_overhead,
};
pub use url::{TargetUrl, UrlError, WEBSOCKET_PATH};
