//! The benchmark harness of the Vantiq connector SDK.
//!
//! * [`server`]: a lean load-generating Vantiq server (tokio + async-tungstenite, one thread)
//!   that performs the server side of the handshake for any number of sources and, on
//!   command, drives one source with a load pattern: a notification burst, publish → echo
//!   round trips, queries (many in flight, or one at a time for latency);
//! * [`proc`]: the connectors under test as processes (a generated `server.config` in a
//!   temporary directory; memory and CPU from `/proc`);
//! * [`harness`]: the rounds (connectors take turns, A B C D A B C D …) and the report;
//! * [`criterion_report`]: the table of the core's criterion micro-benchmarks;
//! * the `raw-echo` binary: the same echo contract written straight on async-tungstenite and
//!   serde_json, the baseline every ratio refers to.
//!
//! Run everything with `scripts/bench.sh`; results and method are in `BENCHMARKS.md`.

pub mod criterion_report;
pub mod harness;
pub mod proc;
pub mod scan;
pub mod server;
pub mod stats;
