//! Automatic mode (`autoHealth=true`): readiness follows the sources, on real sockets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a failed expectation is a failed test

mod common;

use std::net::{Ipv4Addr, TcpListener};

use common::{assert_open, assert_refused, free_port, get, local_cfg};
use vantiq_health::{ConnectionState, Health, HealthConfig, HealthError};

fn auto() -> HealthConfig {
    HealthConfig {
        auto: true,
        ..local_cfg()
    }
}

#[test]
fn readiness_follows_the_sources() {
    let h = Health::new(auto());
    let http = h.start_http().unwrap().unwrap();
    h.register_source("a");
    h.register_source("b");
    assert_eq!(h.is_healthy(), None);
    assert_eq!(h.source_state("a"), Some(ConnectionState::Connecting));

    h.set_source_state("a", ConnectionState::Configured);
    assert_eq!(h.is_healthy(), None, "b is not configured yet");
    assert_eq!(h.tcp_probe_port(), None);
    assert_eq!(get(http, "/readyz").code, 503);

    h.set_source_state("b", ConnectionState::Configured);
    assert_eq!(h.is_healthy(), Some(true));
    let tcp = h.tcp_probe_port().unwrap();
    assert_open(tcp);
    let a = get(http, "/readyz");
    assert_eq!(a.code, 200);
    assert_eq!(
        a.body,
        r#"{"status":"ready","sources":{"a":"configured","b":"configured"}}"#
    );

    // The server drops b: not ready, TCP probe closed.
    h.set_source_state("b", ConnectionState::WaitingToReconnect);
    assert_eq!(h.is_healthy(), Some(false));
    assert_eq!(h.tcp_probe_port(), None);
    assert_refused(tcp);
    let a = get(http, "/readyz");
    assert_eq!(a.code, 503);
    assert_eq!(
        a.body,
        r#"{"status":"not ready","sources":{"a":"configured","b":"waiting to reconnect"}}"#
    );
    assert_eq!(get(http, "/healthz").code, 200, "liveness is not readiness");

    // Reconnecting keeps it not ready; configured again makes it ready again.
    h.set_source_state("b", ConnectionState::Connecting);
    assert_eq!(h.is_healthy(), Some(false));
    h.set_source_state("b", ConnectionState::Configured);
    assert_eq!(h.is_healthy(), Some(true));
    assert_open(h.tcp_probe_port().unwrap());
    assert_eq!(get(http, "/readyz").code, 200);

    // Repeated reports change nothing.
    let port = h.tcp_probe_port();
    h.set_source_state("b", ConnectionState::Configured);
    assert_eq!(h.tcp_probe_port(), port);

    // Closing on purpose is not ready either.
    for s in [ConnectionState::Closed, ConnectionState::Failed] {
        h.set_source_state("b", ConnectionState::Configured);
        assert_eq!(h.is_healthy(), Some(true));
        h.set_source_state("a", s);
        assert_eq!(h.is_healthy(), Some(false), "{s}");
        h.set_source_state("a", ConnectionState::Configured);
    }
    h.shutdown();
    assert_eq!(h.probe_threads(), 0);
}

#[test]
fn a_new_source_makes_the_connector_unready_until_configured() {
    let h = Health::new(auto());
    h.set_source_state("a", ConnectionState::Configured);
    assert_eq!(
        h.is_healthy(),
        Some(true),
        "set_source_state registers the source"
    );
    h.register_source("b");
    assert_eq!(h.is_healthy(), Some(false));
    h.register_source("a");
    assert_eq!(
        h.source_state("a"),
        Some(ConnectionState::Configured),
        "kept"
    );
    h.set_source_state("b", ConnectionState::Configured);
    assert_eq!(h.is_healthy(), Some(true));
}

#[test]
fn no_sources_is_never_healthy() {
    let h = Health::new(auto());
    h.register_source("a");
    h.set_source_state("a", ConnectionState::WaitingToReconnect);
    assert_eq!(
        h.is_healthy(),
        None,
        "never declared until first configured"
    );
    assert_eq!(h.tcp_probe_port(), None);
    assert_eq!(h.probe_threads(), 0);
}

#[test]
fn a_bind_failure_is_kept_and_retried() {
    let blocker = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = blocker.local_addr().unwrap().port();
    let h = Health::new(HealthConfig {
        tcp_port: port,
        ..auto()
    });
    h.set_source_state("a", ConnectionState::Configured);
    assert_eq!(h.is_healthy(), None, "the state is unchanged");
    let err = h.last_error().unwrap();
    assert!(matches!(err, HealthError::Bind { .. }));
    assert!(err.to_string().contains(&port.to_string()));

    drop(blocker);
    h.set_source_state("a", ConnectionState::Configured);
    assert_eq!(h.is_healthy(), Some(true));
    assert!(h.last_error().is_none());
    assert_open(port);
}

#[test]
fn manual_mode_ignores_the_sources() {
    let h = Health::new(local_cfg());
    h.set_source_state("a", ConnectionState::Configured);
    assert_eq!(h.is_healthy(), None);
    h.declare_healthy().unwrap();
    h.set_source_state("a", ConnectionState::WaitingToReconnect);
    assert_eq!(
        h.is_healthy(),
        Some(true),
        "a lost session is not unhealthy (unlike the Java SDK)"
    );
    assert_open(h.tcp_probe_port().unwrap());
}

#[test]
fn manual_declarations_still_work_in_automatic_mode() {
    let port = free_port();
    let h = Health::new(HealthConfig {
        tcp_port: port,
        ..auto()
    });
    h.set_source_state("a", ConnectionState::Configured);
    assert_eq!(h.is_healthy(), Some(true));
    h.declare_unhealthy().unwrap();
    assert_refused(port);
    // The next change of a source applies the rule again.
    h.set_source_state("a", ConnectionState::Configured);
    assert_eq!(h.is_healthy(), Some(true));
    assert_open(port);
}

#[test]
fn concurrent_source_reports_end_in_the_right_state() {
    let h = Health::new(auto());
    let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    for n in &names {
        h.register_source(n);
    }
    let threads: Vec<_> = names
        .iter()
        .cloned()
        .map(|name| {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let s = if i % 2 == 0 {
                        ConnectionState::WaitingToReconnect
                    } else {
                        ConnectionState::Configured
                    };
                    h.set_source_state(&name, s);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every source ended configured, so the last report declared the connector healthy.
    assert_eq!(h.is_healthy(), Some(true));
    assert_open(h.tcp_probe_port().unwrap());
    assert_eq!(h.probe_threads(), 1);
}

/// What an async task reports: the call returns at once (no bind, no thread join, no
/// connect inside it); readiness reflects it immediately, and the probe follows in the
/// background.
#[test]
fn reported_states_are_applied_in_the_background() {
    let h = Health::new(auto());
    let http = h.start_http().unwrap().unwrap();
    h.register_source("a");
    h.report_source_state("a", ConnectionState::Configured);
    // The source's state at once; the declaration right after, in the background.
    assert_eq!(h.source_state("a"), Some(ConnectionState::Configured));
    assert!(h.wait_settled(std::time::Duration::from_secs(5)));
    assert_eq!(get(http, "/readyz").code, 200);
    assert_eq!(h.is_healthy(), Some(true));
    let tcp = h.tcp_probe_port().unwrap();
    assert_open(tcp);
    h.report_source_state("a", ConnectionState::WaitingToReconnect);
    assert_eq!(
        h.source_state("a"),
        Some(ConnectionState::WaitingToReconnect)
    );
    assert!(h.wait_settled(std::time::Duration::from_secs(5)));
    assert_eq!(get(http, "/readyz").code, 503);
    assert_eq!(h.is_healthy(), Some(false));
    assert_refused(tcp);
    // Many reports in a row settle on the last.
    for _ in 0..50 {
        h.report_source_state("a", ConnectionState::Configured);
        h.report_source_state("a", ConnectionState::Connecting);
    }
    h.report_source_state("a", ConnectionState::Configured);
    assert!(h.wait_settled(std::time::Duration::from_secs(5)));
    assert_eq!(h.is_healthy(), Some(true));
    h.shutdown();
    assert_eq!(h.probe_threads(), 0);
}

/// Dropping the last handle stops the background worker too.
#[test]
fn the_background_worker_ends_with_the_health() {
    let h = Health::new(auto());
    h.register_source("a");
    h.report_source_state("a", ConnectionState::Configured);
    assert!(h.wait_settled(std::time::Duration::from_secs(5)));
    let tcp = h.tcp_probe_port().unwrap();
    drop(h);
    assert_refused(tcp);
}
