//! The small surface an async runtime must provide: TCP connect, a clock with a resettable
//! timer, spawn.
//!
//! Everything else — TLS (futures-rustls), the WebSocket (async-tungstenite), the driver loop,
//! handlers — is written once, here, over `futures-io`. The runtime crates implement
//! [`Runtime`] in a few dozen lines each.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A timer that fires once at a deadline and can be moved.
pub trait Timer: Send + Unpin + 'static {
    /// Sets (or moves) the deadline.
    fn reset(&mut self, deadline: Instant);
    /// Ready once the deadline has passed (until the next `reset`).
    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// What a connector needs from an async runtime.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// A connected TCP stream speaking `futures-io`.
    type Tcp: futures_io::AsyncRead + futures_io::AsyncWrite + Send + Unpin + 'static;
    /// The runtime's timer.
    type Timer: Timer;
    /// A spawned task; completes when the task does. Dropping it cancels the task (the task
    /// is dropped at its next suspension point): dropping a connector set's `run` future
    /// drops every task it spawned, so nothing is left running detached.
    type Task: Future<Output = ()> + Send + Unpin + 'static;

    /// Whether a source's task should absorb the wake-ups it causes itself while it runs
    /// (a handler sending a reply or a notification to the driver it runs in) instead of
    /// passing them to the executor. Worth it where waking a running task re-queues it and
    /// wakes another worker thread (tokio's multi-threaded runtime). Off by default.
    const ABSORB_SELF_WAKES: bool = false;

    /// Opens a TCP connection to `host:port` (resolving the name), with `TCP_NODELAY` set.
    fn connect_tcp(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Self::Tcp>>;

    /// The runtime's current time: every instant the driver acts on comes from here, so a
    /// runtime with a virtual clock (tokio's paused time, a test executor) drives every
    /// deadline of the SDK.
    fn now(&self) -> Instant;

    /// A timer whose first deadline is `deadline` (on the clock of [`Runtime::now`]).
    fn timer(&self, deadline: Instant) -> Self::Timer;

    /// Runs `future` as a task of its own.
    fn spawn(&self, future: BoxFuture<'static, ()>) -> Self::Task;
}
