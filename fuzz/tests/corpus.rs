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

#[test]
fn driver_frames_corpus() {
    replay("driver_frames", vantiq_fuzz::driver_frames);
}

/// The driver corpus does real work: sessions, echoes, query replies, reconnections.
#[test]
fn driver_frames_seeds_reach_the_handlers() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/driver_frames");
    let run = |name: &str| vantiq_fuzz::driver::run_script(&std::fs::read(dir.join(name)).unwrap());
    let o = run("handshake_publish_query");
    // connected + the echo + 10 burst echoes; both queries answered; a close at shutdown.
    assert_eq!(o.notifications, 12, "{o:?}");
    assert!(o.replies >= 2, "{o:?}");
    assert_eq!(o.closes, 1, "{o:?}");
    let o = run("oversize_and_reconnect");
    assert!(o.connections >= 2, "{o:?}");
    let o = run("auth_rejected");
    assert_eq!((o.connections, o.notifications), (1, 0), "{o:?}");
}
