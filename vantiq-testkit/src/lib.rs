//! An embedded Vantiq server for tests, examples and local development.
//!
//! Vantiq extension-source connectors connect *out* to a Vantiq server over a WebSocket,
//! authenticate, attach to a source with `connectExtension`, receive its configuration, then
//! handle `publish` and `query` messages and send `notification`s. This crate is the other
//! end of that socket: [`TestServer`] speaks the server side of the protocol the way the real
//! server does (binary frames, the real reply shapes and error lists, bookkeeping fields, one
//! live connection per source with `reconnectSecret` takeover, acknowledgements), so that
//! connectors — ours, the Java and Python SDKs' — can be tested against something real
//! without a Vantiq installation.
//!
//! * [`TestServer`] listens on `127.0.0.1:0` (or a chosen address) and serves
//!   `/api/v<N>/wsock/websocket`; its [`TestServer::url`] is a connector's `targetServer`.
//! * [`SourceHandle`] drives and observes one source: [`publish`](SourceHandle::publish),
//!   [`query`](SourceHandle::query) (rows once the terminal reply arrives, every partial reply
//!   kept), [`next_notification`](SourceHandle::next_notification),
//!   [`reconnect_required`](SourceHandle::reconnect_required),
//!   [`drop_connection`](SourceHandle::drop_connection),
//!   [`refuse_connects`](SourceHandle::refuse_connects),
//!   [`set_flapping`](SourceHandle::set_flapping), [`send_raw`](SourceHandle::send_raw),
//!   counters and frame logs. Every wait is woken by the event it waits for and fails with a
//!   [`TestkitError::Timeout`] naming what it waited for.
//! * [`TestServer::serve_stream`] serves a connection that did not come through the
//!   listener (an in-memory pipe, a proxy's socket); [`TestServer::restart`] closes every
//!   connection with 1001 as a restarting Vantiq does.
//! * The server side of the protocol itself is sans-IO, in [`protocol`] (re-exported from
//!   `vantiq_proto::server`): drive it directly to test a connector's core without sockets.
//! * Optionally ([`TestServerBuilder::control_api`]) the same port serves a JSON control
//!   API, which the `vantiq-devserver` binary exposes so that `curl` or a script can drive a
//!   connector written in any language:
//!
//! | request | answer |
//! |---|---|
//! | `GET /control/sources` | `200 [{"name","connected","configured","reconnectSecret","connections","connectAttempts","notifications"}]` |
//! | `GET /control/sources/{name}` | `200` that object for one source |
//! | `POST /control/sources/{name}/publish` (body: the object) | `202 {"published":true}` |
//! | `POST /control/sources/{name}/query?timeoutMs=N` (body: the WITH parameters, default `{}`) | `200 {"status","rows","parts"}`; an error reply: `200` with `"status":400` (or whatever the connector sent) and `"error":{messageCode,messageTemplate,parameters}` |
//! | `GET /control/sources/{name}/notifications?after=K&waitMs=N` | `200 {"next":K2,"items":[…]}`; waits up to N ms for something after K |
//! | `POST /control/sources/{name}/reconnect` (optional body: the new config) | `202`; sends `reconnectRequired` |
//! | `POST /control/sources/{name}/drop` | `202`; drops the connection without a close frame |
//! | `POST /control/sources/{name}/refuse?count=N` | `202`; refuses the next N `connectExtension`s |
//! | `POST /control/sources/{name}/close?code=N&reason=R` | `202 {"closed":N}`; a clean close with that code (default 1000) |
//! | `POST /control/sources/{name}/frame[?binary=true]` (body: the frame) | `202`; sends the body as one text (or binary) frame, as is |
//! | `POST /control/restart` | `202 {"closed":N}`; closes every connection with 1001, goes on accepting |
//!
//! Errors are JSON `{"error": "…"}`: `400` bad JSON or parameter, `401` no control token
//! ([`TestServerBuilder::control_token`]), `403` a request a web page could have sent (a
//! `Host` that is not this machine, a foreign `Origin`, `Sec-Fetch-Site: cross-site`), `404`
//! unknown source or path, `405` wrong method, `409` no connector attached, `502` a
//! notification or query error body from the connector has no JSON tree form (nested deeper
//! than 128 levels, see `Json::to_value`), `504` no terminal query reply in time.
//!
//! * Optionally ([`TestServerBuilder::rest_api`]) it serves Vantiq's REST routes for sources,
//!   as Vantiq's client SDKs and connector tests call them, with `Authorization: Bearer
//!   <token>`: `POST /api/v1/resources/sources/{name}` publishes the body (`200 {}`),
//!   `POST /api/v1/resources/sources/{name}/query` answers `200` with the rows, or a Vantiq
//!   error list `[{"code","message","params"}]` (the connector's query error as status 400).
//!
//! # Testing a connector
//!
//! A connector's test starts a [`TestServer`] with its sources, points the connector's
//! `server.config` at [`TestServer::url`] (with `tcpProbePort = 0`, so that tests running
//! at once do not share a probe port), runs the connector in a task, and plays Vantiq's part
//! through [`SourceHandle`]: wait for the connector to be configured, publish, query, read
//! the notifications, and check the close frames after a shutdown. [The guide]
//! (`docs/guide.md`, "Test your connector") shows a whole one, which is also
//! `vantiq-connector-tokio/tests/guide_example.rs`. This crate has no feature flags.
//!
//! [the guide]: https://github.com/vantiq-rs/vantiq-connector-rs/blob/main/docs/guide.md
//!
//! # Example
//!
//! A server with one source, and a hand-written client doing the handshake a connector does:
//!
//! ```
//! use std::time::Duration;
//! use async_tungstenite::tungstenite::Message;
//! use futures_util::{SinkExt, StreamExt};
//! use serde_json::json;
//! use vantiq_proto::frame::{ClientFrame, ServerFrame};
//! use vantiq_testkit::TestServer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = TestServer::builder()
//!     .token("secret-token")
//!     .source("Thermo", json!({"pollMs": 500}))
//!     .start()
//!     .await?;
//! let thermo = server.source("Thermo")?;
//!
//! // A connector would be configured with `targetServer = server.url()`.
//! let tcp = tokio::net::TcpStream::connect(server.addr()).await?;
//! let (mut ws, _) = async_tungstenite::tokio::client_async(server.ws_url(), tcp).await?;
//! let send = |f: ClientFrame| Message::text(f.encode());
//! ws.send(send(ClientFrame::Validate { token: Some("secret-token".into()) })).await?;
//! let auth = ws.next().await.ok_or("closed")??;
//! assert!(matches!(ServerFrame::decode(&auth.into_data())?, ServerFrame::Status(s) if s.status.0 == 200));
//!
//! ws.send(send(ClientFrame::ConnectExtension {
//!     source: "Thermo".into(),
//!     reconnect_secret: Some("Thermo_1".into()),
//! }))
//! .await?;
//! let config = ws.next().await.ok_or("closed")??;
//! match ServerFrame::decode(&config.into_data())? {
//!     ServerFrame::ConfigureExtension { config, .. } => {
//!         assert_eq!(config.to_value()?, json!({"pollMs": 500}))
//!     }
//!     other => panic!("{other:?}"),
//! }
//! thermo.wait_configured(Duration::from_secs(5)).await?;
//! assert_eq!(thermo.reconnect_secret().as_deref(), Some("Thermo_1"));
//!
//! // The test publishes; the connector receives it.
//! thermo.publish(json!({"setPoint": 21})).await?;
//! let publish = ws.next().await.ok_or("closed")??;
//! assert!(matches!(ServerFrame::decode(&publish.into_data())?, ServerFrame::Publish { .. }));
//!
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

// Layers, each using only those above it: util, error, records; hub (the shared state
// around the sans-IO server); socket (one WebSocket's I/O); source (SourceHandle); http
// (request heads and responses); control (the control API and REST routes); server
// (TestServer, the listener and the routing).
mod util;

mod error;
mod records;

mod hub;

mod socket;

mod source;

mod http;

mod control;

mod server;

pub use error::{Result, TestkitError};
pub use records::{
    Anomaly, AnomalyKind, ConnectAttempt, ConnectOutcome, FrameRecord, QueryResult, RawFrame,
    SourceInfo,
};
pub use server::{DEFAULT_RECORD_LIMIT, TestServer, TestServerBuilder, codes};
pub use source::SourceHandle;
/// The server side of the protocol, sans-IO, that this server runs on
/// (`vantiq_proto::server`): a [`Registry`](protocol::Registry) of sources and one
/// [`ServerConnection`](protocol::ServerConnection) per socket. Use it directly to test a
/// connector's core or a custom transport without sockets or a runtime.
pub use vantiq_proto::server as protocol;
