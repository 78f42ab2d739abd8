//! Fuzz target bodies for `vantiq-proto` and the connector's driver.
//!
//! Each function takes arbitrary bytes and panics only when it finds a bug. The binaries in
//! `fuzz_targets/` hand them to libFuzzer (`cargo fuzz run --features libfuzzer <target>`);
//! `tests/corpus.rs` replays the checked-in corpus through them under plain `cargo test`, so
//! every crash found stays a regression test even without cargo-fuzz.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use vantiq_proto::testing::harness;

pub mod driver;

pub use driver::driver_frames;

use vantiq_proto::frame::{ClientFrame, ServerFrame};
use vantiq_proto::{Properties, ServerConfig};

/// Decodes the bytes as a frame in both directions; whatever decodes must encode and decode
/// back to the same frame.
pub fn frame_decode(data: &[u8]) {
    if let Ok(f) = ServerFrame::decode(data) {
        let again =
            ServerFrame::decode(f.encode().as_bytes()).expect("re-decoding an encoded frame");
        assert_eq!(again, f);
    }
    if let Ok(f) = ClientFrame::decode(data) {
        let again =
            ClientFrame::decode(f.encode().as_bytes()).expect("re-decoding an encoded frame");
        assert_eq!(again, f);
    }
}

/// Parses the bytes as `server.config`; an accepted configuration must be consistent.
pub fn server_config(data: &[u8]) {
    let _ = Properties::parse_bytes(data);
    let env = |k: &str| (k == "CONNECTOR_AUTH_TOKEN").then(|| "env-token".to_owned());
    if let Ok(cfg) = ServerConfig::parse_bytes(data, "fuzz/server.config", env) {
        assert!(!cfg.sources().is_empty());
        let mut names: Vec<&String> = cfg.sources().iter().collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            cfg.sources().len(),
            "duplicate source names accepted"
        );
        assert!(cfg.sources().iter().all(|s| !s.trim().is_empty()));
        assert!(cfg.target().as_str().starts_with("ws"));
        assert!(
            !format!("{cfg:?}").contains("env-token"),
            "token in Debug output"
        );
    }
}

/// Drives a `Connection` through the operations the bytes encode, checking its invariants
/// after every step.
pub fn connection_ops(data: &[u8]) {
    let (head, rest) = data.split_at(data.len().min(3));
    let seed = head.first().copied().map_or(0, u64::from);
    let queue = usize::from(head.get(1).copied().unwrap_or(0) % 5) + 1;
    let fail_fast = head.get(2).is_some_and(|b| b % 8 == 0);
    harness::run(seed, queue, fail_fast, harness::Op::decode_all(rest));
}
