//! Test tooling for the SDK's driver and for connectors built on it (feature `test-util`;
//! not for production code).
//!
//! * [`SimRuntime`]: a [`Runtime`](crate::Runtime) with a virtual clock on a deterministic,
//!   single-threaded executor, whose TCP connections are in-memory pipes. The real driver
//!   runs on it unchanged, so timing behaviour (keep-alive, write stalls, close grace,
//!   back-off, shutdown) is tested without waiting and without flakiness.
//! * [`Duplex`] and [`PipeControl`]: the pipes, with the means to reach under the WebSocket
//!   layer (raw bytes, resets) and to count what went through. A peer that stops reading is
//!   simply one that does not read: the pipe fills and writes wait, as with a full TCP
//!   window.
//!
//! * [`SimServer`] and [`SimPeer`]: the sans-IO server of `vantiq_proto::server` on the far
//!   end of those pipes. The server state machine produces the protocol frames; the test
//!   decides when the server reads and writes, and what it sends besides (raw frames, pings,
//!   bytes under the WebSocket layer).
//! * [`echo::Echo`]: the reference echo connector, a handler with a fixed contract for
//!   examples, end-to-end tests and benchmarks.
//!
//! The test plays the server on the other end of each pipe: with [`SimServer`], or with
//! anything else on `sim.accept().await`.

pub mod echo;
mod pipe;
mod server;
mod sim;

pub use pipe::{Duplex, PipeControl, duplex};
pub use server::{PeerError, SimPeer, SimServer};
pub use sim::{SimJoin, SimRuntime, SimTask, SimTimer};
