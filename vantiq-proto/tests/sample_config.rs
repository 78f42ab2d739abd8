//! The sample `serverConfig/server.config` parses cleanly and documents every key we read.
//!
//! The test reads a copy inside this package (`tests/data/server.config`), so that it runs
//! from the published crate too; `vantiq-e2e`'s `config_files` test keeps the copy identical
//! to the repository's sample.

#![allow(clippy::unwrap_used, clippy::panic)]

use vantiq_proto::{ServerConfig, keys};

const SAMPLE: &str = include_str!("data/server.config");

#[test]
fn sample_parses_without_warnings() {
    let cfg = ServerConfig::parse(SAMPLE, "serverConfig/server.config", |_| None).unwrap();
    assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
    assert_eq!(cfg.sources(), ["MySource"]);
    assert_eq!(
        cfg.target().as_str(),
        "wss://dev.vantiq.com/api/v1/wsock/websocket"
    );
}

#[test]
fn sample_documents_every_key() {
    for key in keys::ALL {
        let line = format!("{key} =");
        assert!(SAMPLE.contains(&line), "the sample does not show `{line}`");
    }
    for option in [
        "disableSslVerification",
        "max_size",
        "open_timeout",
        "ping_interval",
        "ping_timeout",
        "close_timeout",
    ] {
        assert!(
            SAMPLE.contains(option),
            "the sample does not mention connectKWArgs `{option}`"
        );
    }
}
