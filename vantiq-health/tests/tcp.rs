//! The TCP probe on real loopback sockets: tri-state, open/refused, port 0, idempotence,
//! bind conflicts, shutdown and drop.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a failed expectation is a failed test

mod common;

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_open, assert_refused, connect, free_port, local_cfg};
use vantiq_health::{
    DEFAULT_HTTP_TIMEOUT, DEFAULT_TCP_PROBE_PORT, Health, HealthConfig, HealthError, Probe,
    Readiness,
};

#[test]
fn default_config_matches_the_peers() {
    let cfg = HealthConfig::default();
    assert_eq!(cfg.tcp_port, 8000);
    assert_eq!(DEFAULT_TCP_PROBE_PORT, 8000);
    assert_eq!(cfg.bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(cfg.http_port, None);
    assert!(!cfg.auto);
    assert_eq!(cfg.http_timeout, DEFAULT_HTTP_TIMEOUT);
}

#[test]
fn new_starts_nothing() {
    let h = Health::new(local_cfg());
    assert_eq!(h.is_healthy(), None);
    assert_eq!(h.tcp_probe_port(), None);
    assert_eq!(h.http_probe_port(), None);
    assert_eq!(h.probe_threads(), 0);
    assert!(h.is_alive());
    assert_eq!(h.report().readiness(), Readiness::NeverDeclared);
    assert!(h.last_error().is_none());
}

#[test]
fn tri_state_follows_declarations() {
    let h = Health::new(local_cfg());
    assert_eq!(h.is_healthy(), None);
    h.declare_healthy().unwrap();
    assert_eq!(h.is_healthy(), Some(true));
    h.declare_unhealthy().unwrap();
    assert_eq!(h.is_healthy(), Some(false));
    h.declare_healthy().unwrap();
    assert_eq!(h.is_healthy(), Some(true));
    assert_eq!(h.report().readiness(), Readiness::Ready);
}

#[test]
fn connect_succeeds_after_healthy_and_is_refused_after_unhealthy() {
    let h = Health::new(local_cfg());
    h.declare_healthy().unwrap();
    let port = h.tcp_probe_port().unwrap();
    assert_open(port);
    assert_open(port);
    h.declare_unhealthy().unwrap();
    assert_refused(port);
    assert_eq!(h.probe_threads(), 0);
}

#[test]
fn unhealthy_before_healthy_opens_nothing() {
    let h = Health::new(local_cfg());
    h.declare_unhealthy().unwrap();
    assert_eq!(h.is_healthy(), Some(false));
    assert_eq!(h.tcp_probe_port(), None);
    assert_eq!(h.probe_threads(), 0);
}

#[test]
fn port_zero_reports_the_bound_port() {
    let h = Health::new(local_cfg());
    h.declare_healthy().unwrap();
    let port = h.tcp_probe_port().unwrap();
    assert_ne!(port, 0);
    assert_eq!(h.report().tcp_probe_port, Some(port));
    h.declare_unhealthy().unwrap();
    assert_eq!(h.tcp_probe_port(), None);
}

#[test]
fn declarations_are_idempotent() {
    let h = Health::new(local_cfg());
    h.declare_healthy().unwrap();
    let port = h.tcp_probe_port().unwrap();
    for _ in 0..5 {
        h.declare_healthy().unwrap();
        assert_eq!(h.tcp_probe_port(), Some(port), "the probe is not reopened");
        assert_eq!(h.probe_threads(), 1, "one thread, however often declared");
    }
    assert_open(port);
    for _ in 0..5 {
        h.declare_unhealthy().unwrap();
        assert_eq!(h.is_healthy(), Some(false));
        assert_eq!(h.probe_threads(), 0);
    }
    assert_refused(port);
}

#[test]
fn a_fixed_port_reopens_at_once() {
    let port = free_port();
    let h = Health::new(HealthConfig {
        tcp_port: port,
        ..local_cfg()
    });
    for _ in 0..10 {
        h.declare_healthy().unwrap();
        assert_eq!(h.tcp_probe_port(), Some(port));
        // Leave connections behind in TIME_WAIT: the rebind must still work.
        assert_open(port);
        h.declare_unhealthy().unwrap();
        assert_refused(port);
    }
}

#[test]
fn bind_conflict_names_the_port_and_keeps_the_state() {
    let blocker = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = blocker.local_addr().unwrap().port();
    let h = Health::new(HealthConfig {
        tcp_port: port,
        ..local_cfg()
    });

    // From "never declared".
    let err = h.declare_healthy().unwrap_err();
    assert!(
        matches!(
            err,
            HealthError::Bind {
                probe: Probe::Tcp,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.port(), port);
    assert_eq!(err.probe(), Probe::Tcp);
    assert_eq!(err.io_error().kind(), std::io::ErrorKind::AddrInUse);
    let msg = err.to_string();
    assert!(msg.contains(&format!("port {port}")), "{msg}");
    assert!(msg.contains("TCP health probe"), "{msg}");
    assert_eq!(
        h.is_healthy(),
        None,
        "a bind error leaves the state unchanged (unlike the Python SDK)"
    );
    assert_eq!(h.tcp_probe_port(), None);
    assert_eq!(h.probe_threads(), 0);
    assert_eq!(h.last_error().unwrap().port(), port);

    // From "unhealthy".
    h.declare_unhealthy().unwrap();
    assert!(h.last_error().is_none());
    assert!(h.declare_healthy().is_err());
    assert_eq!(h.is_healthy(), Some(false));

    // Once the port is free, declaring works.
    drop(blocker);
    h.declare_healthy().unwrap();
    assert_eq!(h.is_healthy(), Some(true));
    assert!(h.last_error().is_none());
    assert_open(port);
}

#[test]
fn a_second_set_on_the_same_port_gets_a_bind_error() {
    // Two sets on one port: the second one fails, the first one keeps serving.
    let a = Health::new(local_cfg());
    a.declare_healthy().unwrap();
    let port = a.tcp_probe_port().unwrap();
    let b = Health::new(HealthConfig {
        tcp_port: port,
        ..local_cfg()
    });
    let err = b.declare_healthy().unwrap_err();
    assert!(err.to_string().contains(&port.to_string()));
    assert_eq!(b.is_healthy(), None);
    assert_open(port);
}

#[test]
fn accepted_connections_are_closed_at_once() {
    let h = Health::new(local_cfg());
    h.declare_healthy().unwrap();
    let port = h.tcp_probe_port().unwrap();
    // Many connections held open by the client: each is closed by the probe (EOF).
    let conns: Vec<_> = (0..20).map(|_| connect(port).unwrap()).collect();
    for mut c in conns {
        use std::io::Read;
        c.set_read_timeout(Some(common::GUARD)).unwrap();
        let mut buf = [0u8; 1];
        match c.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
}

#[test]
fn shutdown_then_declare_again_works() {
    let h = Health::new(local_cfg());
    h.declare_healthy().unwrap();
    let first = h.tcp_probe_port().unwrap();
    h.shutdown();
    assert_refused(first);
    assert_eq!(
        h.is_healthy(),
        Some(false),
        "nothing answers for it any more"
    );
    assert_eq!(h.tcp_probe_port(), None);
    assert_eq!(h.probe_threads(), 0);
    // Unlike the Python SDK's (docs/design.md#d17-health), the probe reopens.
    h.declare_healthy().unwrap();
    assert_eq!(h.is_healthy(), Some(true));
    assert_open(h.tcp_probe_port().unwrap());
    h.shutdown();
    h.shutdown();
    assert_eq!(h.probe_threads(), 0);
}

#[test]
fn shutdown_keeps_never_declared() {
    let h = Health::new(local_cfg());
    h.shutdown();
    assert_eq!(h.is_healthy(), None);
}

#[test]
fn clones_share_one_state() {
    let a = Health::new(local_cfg());
    let b = a.clone();
    a.declare_healthy().unwrap();
    assert_eq!(b.is_healthy(), Some(true));
    assert_eq!(b.tcp_probe_port(), a.tcp_probe_port());
    b.declare_unhealthy().unwrap();
    assert_eq!(a.is_healthy(), Some(false));
}

#[test]
fn dropping_the_last_clone_closes_the_probe() {
    let a = Health::new(local_cfg());
    let b = a.clone();
    a.declare_healthy().unwrap();
    let port = a.tcp_probe_port().unwrap();
    drop(a);
    assert_open(port);
    drop(b);
    assert_refused(port);
}

#[test]
fn concurrent_declarations_stay_consistent() {
    let h = Health::new(local_cfg());
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let h = h.clone();
            std::thread::spawn(move || {
                for j in 0..25 {
                    if (i + j) % 2 == 0 {
                        h.declare_healthy().unwrap();
                    } else {
                        h.declare_unhealthy().unwrap();
                    }
                    // The state and the port always agree.
                    let _ = h.report();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let status = h.report();
    assert_eq!(
        status.healthy == Some(true),
        status.tcp_probe_port.is_some()
    );
    assert_eq!(h.probe_threads(), usize::from(status.healthy == Some(true)));
    h.declare_healthy().unwrap();
    let port = h.tcp_probe_port().unwrap();
    assert_open(port);
    h.declare_unhealthy().unwrap();
    assert_refused(port);
    assert_eq!(h.probe_threads(), 0);
}

#[test]
fn health_can_move_across_threads() {
    let h = Arc::new(Health::new(local_cfg()));
    let h2 = Arc::clone(&h);
    std::thread::spawn(move || h2.declare_healthy().unwrap())
        .join()
        .unwrap();
    assert_open(h.tcp_probe_port().unwrap());
}

#[test]
fn unspecified_ipv4_address_is_woken_over_loopback() {
    let h = Health::new(HealthConfig {
        bind: Ipv4Addr::UNSPECIFIED.into(),
        ..local_cfg()
    });
    h.declare_healthy().unwrap();
    let port = h.tcp_probe_port().unwrap();
    assert_open(port);
    h.declare_unhealthy().unwrap();
    assert_refused(port);
    assert_eq!(h.probe_threads(), 0);
}

#[test]
fn stopping_is_prompt() {
    let h = Health::new(local_cfg());
    let start = std::time::Instant::now();
    for _ in 0..20 {
        h.declare_healthy().unwrap();
        h.declare_unhealthy().unwrap();
    }
    // Generous bound: each toggle takes well under a millisecond on loopback.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
