//! Toggling the probes many times leaves no thread, listener or file descriptor behind.
//!
//! This file holds a single test so that, in its own process, the counts of threads
//! (`/proc/self/task`) and file descriptors (`/proc/self/fd`) are not disturbed by other
//! tests running in parallel.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a failed expectation is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{assert_open, assert_refused, free_port, get, local_cfg};
use vantiq_health::{ConnectionState, Health, HealthConfig};

/// Entries of a `/proc/self` directory, or `None` where there is no procfs.
fn count(dir: &str) -> Option<usize> {
    Some(std::fs::read_dir(dir).ok()?.count())
}

/// Waits until `dir` has `expected` entries. A thread that `join` has returned for may be
/// listed by the kernel for a few more microseconds while it is released; this is the one
/// thing here that cannot be awaited otherwise.
fn settles_at(dir: &str, expected: Option<usize>) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = count(dir);
        if now == expected || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn toggling_100_times_leaves_nothing_behind() {
    let port = free_port();
    let h = Health::new(HealthConfig {
        tcp_port: port,
        ..local_cfg()
    });
    let threads_before = count("/proc/self/task");
    let fds_before = count("/proc/self/fd");

    for _ in 0..100 {
        h.declare_healthy().unwrap();
        assert_eq!(h.probe_threads(), 1);
        assert_open(port);
        h.declare_unhealthy().unwrap();
        assert_eq!(h.probe_threads(), 0);
        assert_refused(port);
    }
    assert_eq!(
        settles_at("/proc/self/task", threads_before),
        threads_before
    );
    assert_eq!(settles_at("/proc/self/fd", fds_before), fds_before);

    // The same with the HTTP probe and automatic mode: start, serve, shut down.
    let a = Health::new(HealthConfig {
        auto: true,
        ..local_cfg()
    });
    for _ in 0..20 {
        let http = a.start_http().unwrap().unwrap();
        a.set_source_state("s", ConnectionState::Configured);
        assert_eq!(get(http, "/readyz").code, 200);
        assert_open(a.tcp_probe_port().unwrap());
        a.set_source_state("s", ConnectionState::WaitingToReconnect);
        assert_eq!(get(http, "/readyz").code, 503);
        a.shutdown();
        assert_eq!(a.probe_threads(), 0);
        assert_refused(http);
    }
    drop(a);

    // Dropping a healthy set with a running HTTP probe stops everything too.
    let b = Health::new(local_cfg());
    b.declare_healthy().unwrap();
    let http = b.start_http().unwrap().unwrap();
    let tcp = b.tcp_probe_port().unwrap();
    drop(b);
    assert_refused(tcp);
    assert_refused(http);

    drop(h);
    assert_eq!(
        settles_at("/proc/self/task", threads_before),
        threads_before
    );
    assert_eq!(settles_at("/proc/self/fd", fds_before), fds_before);
}
