#![allow(clippy::unwrap_used, clippy::panic)]

//! Replays every checked-in corpus file through its fuzz target body.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        body(&data);
        n += 1;
    }
    assert!(
        n >= 5,
        "{target}: only {n} corpus files in {}",
        dir.display()
    );
}

#[test]
fn frame_decode_corpus() {
    replay("frame_decode", vantiq_fuzz::frame_decode);
}

#[test]
fn server_config_corpus() {
    replay("server_config", vantiq_fuzz::server_config);
}

#[test]
fn connection_ops_corpus() {
    replay("connection_ops", vantiq_fuzz::connection_ops);
}
