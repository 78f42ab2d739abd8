//! Test utilities, behind the `test-util` feature: for this crate's tests, the fuzz targets,
//! and anyone testing a driver of [`Connection`](crate::Connection).
//!
//! * [`Pair`]: a client [`Connection`](crate::Connection) and the sans-IO
//!   [server](crate::server) joined by a seeded link emulator (latency, jitter, outages,
//!   stalls, drops), in virtual time. Nothing reads a clock; [`Pair::run_for`] jumps from
//!   event to event, so minutes of reconnect back-off take microseconds.
//! * [`harness`]: a checked driver that applies arbitrary operations to a `Connection` and
//!   asserts its invariants after every step (property tests, fuzzing).
//!
//! ```
//! use std::time::Duration;
//! use vantiq_proto::testing::{Pair, test_config};
//!
//! let mut pair = Pair::new(test_config(1));
//! pair.run_until_pred(Duration::from_secs(5), "configuration", Pair::is_configured);
//! pair.server_publish(r#"{"hello":"world"}"#).unwrap();
//! pair.run_for(Duration::from_secs(1));
//! assert!(matches!(
//!     pair.client_events().last(),
//!     Some(vantiq_proto::Event::Publish { .. })
//! ));
//! ```

pub mod harness;
mod sim;

pub use sim::{Pair, SOURCE, TOKEN, json, test_config};
