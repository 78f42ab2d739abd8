//! The HTTP probe on real loopback sockets: `/healthz` and `/readyz` codes and exact bodies
//! in every state, and the answers to bad, slow or hostile clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a failed expectation is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use common::{assert_refused, connect, get, half_close, http_raw, local_cfg, read_answer};
use vantiq_health::{ConnectionState, Health, HealthConfig, HealthError, Probe};

fn started(cfg: HealthConfig) -> (Health, u16) {
    let h = Health::new(cfg);
    let port = h.start_http().unwrap().unwrap();
    (h, port)
}

#[test]
fn start_http_reports_its_port_and_is_idempotent() {
    let (h, port) = started(local_cfg());
    assert_ne!(port, 0);
    assert_eq!(h.http_probe_port(), Some(port));
    assert_eq!(h.start_http().unwrap(), Some(port));
    assert_eq!(h.probe_threads(), 1);
    // The HTTP probe does not open the TCP probe.
    assert_eq!(h.tcp_probe_port(), None);
    h.shutdown();
    assert_eq!(h.http_probe_port(), None);
    assert_refused(port);
    assert_eq!(h.probe_threads(), 0);
    // It starts again after a shutdown.
    let again = h.start_http().unwrap().unwrap();
    assert_eq!(get(again, "/healthz").code, 200);
}

#[test]
fn start_http_without_a_port_does_nothing() {
    let h = Health::new(HealthConfig {
        http_port: None,
        ..local_cfg()
    });
    assert_eq!(h.start_http().unwrap(), None);
    assert_eq!(h.probe_threads(), 0);
}

#[test]
fn healthz_follows_liveness() {
    let (h, port) = started(local_cfg());
    let a = get(port, "/healthz");
    assert_eq!(a.code, 200);
    assert_eq!(
        a.head,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\
         Cache-Control: no-store\r\nConnection: close"
    );
    assert_eq!(a.body, r#"{"status":"alive"}"#);

    h.set_alive(false);
    assert!(!h.is_alive());
    let a = get(port, "/healthz");
    assert_eq!(a.code, 503);
    assert!(a.head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    assert_eq!(a.body, r#"{"status":"not alive"}"#);

    h.set_alive(true);
    assert_eq!(get(port, "/healthz").code, 200);
}

#[test]
fn healthz_does_not_depend_on_readiness() {
    let (h, port) = started(local_cfg());
    h.declare_unhealthy().unwrap();
    assert_eq!(get(port, "/healthz").code, 200);
}

#[test]
fn readyz_in_every_state() {
    let (h, port) = started(local_cfg());

    let a = get(port, "/readyz");
    assert_eq!(a.code, 503);
    assert_eq!(a.body, r#"{"status":"never declared","sources":{}}"#);

    h.register_source("b");
    h.register_source("a");
    let a = get(port, "/readyz");
    assert_eq!(a.code, 503);
    assert_eq!(
        a.body,
        r#"{"status":"never declared","sources":{"a":"connecting","b":"connecting"}}"#
    );

    h.set_source_state("a", ConnectionState::Configured);
    h.declare_healthy().unwrap();
    let a = get(port, "/readyz");
    assert_eq!(a.code, 200);
    assert_eq!(a.header("Content-Type"), Some("application/json"));
    assert_eq!(
        a.body,
        r#"{"status":"ready","sources":{"a":"configured","b":"connecting"}}"#
    );

    h.set_source_state("b", ConnectionState::Failed);
    h.declare_unhealthy().unwrap();
    let a = get(port, "/readyz");
    assert_eq!(a.code, 503);
    assert_eq!(
        a.body,
        r#"{"status":"not ready","sources":{"a":"configured","b":"failed"}}"#
    );

    for (state, name) in [
        (ConnectionState::WaitingToReconnect, "waiting to reconnect"),
        (ConnectionState::Closed, "closed"),
    ] {
        h.set_source_state("b", state);
        assert_eq!(
            get(port, "/readyz").body,
            format!(r#"{{"status":"not ready","sources":{{"a":"configured","b":"{name}"}}}}"#)
        );
    }
}

#[test]
fn readyz_matches_status_snapshot() {
    let (h, port) = started(local_cfg());
    h.register_source("x\"y");
    h.declare_healthy().unwrap();
    let body = get(port, "/readyz").body;
    assert_eq!(body, h.report().readyz_json());
    assert_eq!(
        body,
        r#"{"status":"ready","sources":{"x\"y":"connecting"}}"#
    );
}

#[test]
fn head_answers_without_a_body() {
    let (h, port) = started(local_cfg());
    h.declare_healthy().unwrap();
    for (path, len) in [("/healthz", 18), ("/readyz", 31)] {
        let a = http_raw(
            port,
            format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.code, 200, "{path}");
        assert_eq!(a.header("Content-Length"), Some(len.to_string().as_str()));
        assert_eq!(a.body, "");
    }
}

#[test]
fn query_strings_are_ignored_and_http_1_0_works() {
    let (_h, port) = started(local_cfg());
    assert_eq!(get(port, "/healthz?verbose=1").code, 200);
    let a = http_raw(port, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(a.code, 200);
    assert_eq!(a.body, r#"{"status":"alive"}"#);
    // Bare line feeds are tolerated.
    assert_eq!(http_raw(port, b"GET /healthz HTTP/1.1\n\n").code, 200);
}

#[test]
fn unknown_paths_get_404() {
    let (_h, port) = started(local_cfg());
    for path in ["/", "/health", "/healthz/", "/readyz/x", "/metrics"] {
        let a = get(port, path);
        assert_eq!(a.code, 404, "{path}");
        assert!(a.head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert_eq!(a.body, r#"{"error":"not found"}"#);
    }
}

#[test]
fn other_methods_get_405() {
    let (_h, port) = started(local_cfg());
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let a = http_raw(
            port,
            format!("{method} /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        assert_eq!(a.code, 405, "{method}");
        assert_eq!(a.header("Allow"), Some("GET, HEAD"));
        assert_eq!(a.body, r#"{"error":"method not allowed"}"#);
    }
}

#[test]
fn garbage_gets_400() {
    let (_h, port) = started(local_cfg());
    for garbage in [
        &b"hello there\r\n\r\n"[..],
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        let a = http_raw(port, garbage);
        assert_eq!(a.code, 400, "{garbage:?}");
        assert!(a.head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert_eq!(a.body, r#"{"error":"bad request"}"#);
    }
}

#[test]
fn a_tls_client_gets_400_at_once() {
    // A probe configured with scheme HTTPS sends a TLS ClientHello and waits: it must not
    // wait for the timeout.
    let (_h, port) = started(HealthConfig {
        http_timeout: Duration::from_secs(30),
        ..local_cfg()
    });
    let start = Instant::now();
    let a = http_raw(port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03");
    assert_eq!(a.code, 400);
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_truncated_request_gets_400() {
    let (_h, port) = started(local_cfg());
    let mut s = connect(port).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost:").unwrap();
    half_close(&s);
    assert_eq!(read_answer(&mut s).code, 400);
}

#[test]
fn oversized_requests_get_431() {
    let (_h, port) = started(local_cfg());
    let long = format!(
        "GET /healthz HTTP/1.1\r\nX-Long: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let a = http_raw(port, long.as_bytes());
    assert_eq!(a.code, 431);
    assert_eq!(a.body, r#"{"error":"request header fields too large"}"#);

    let mut many = String::from("GET /healthz HTTP/1.1\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(http_raw(port, many.as_bytes()).code, 431);
}

#[test]
fn a_silent_client_gets_408_after_the_timeout() {
    let timeout = Duration::from_millis(200);
    let (_h, port) = started(HealthConfig {
        http_timeout: timeout,
        ..local_cfg()
    });
    let start = Instant::now();
    let mut s = connect(port).unwrap();
    s.write_all(b"GET /healthz HT").unwrap();
    let a = read_answer(&mut s);
    assert_eq!(a.code, 408);
    assert_eq!(a.body, r#"{"error":"request timeout"}"#);
    let waited = start.elapsed();
    assert!(waited >= timeout, "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[test]
fn a_slow_client_does_not_delay_others() {
    let (h, port) = started(HealthConfig {
        http_timeout: Duration::from_secs(60),
        ..local_cfg()
    });
    // Slow clients that never finish their request.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let mut s = connect(port).unwrap();
            s.write_all(b"GET /hea").unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    for _ in 0..10 {
        assert_eq!(get(port, "/healthz").code, 200);
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    // Shutting down closes the slow connections at once and joins every thread.
    let start = Instant::now();
    h.shutdown();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(h.probe_threads(), 0);
    for mut s in slow {
        s.set_read_timeout(Some(common::GUARD)).unwrap();
        let mut buf = Vec::new();
        // Closed by the probe: end of stream (or a reset), no answer.
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    }
    assert_refused(port);
}

#[test]
fn a_client_that_leaves_gets_nothing_and_leaves_nothing() {
    let (h, port) = started(local_cfg());
    for _ in 0..20 {
        drop(connect(port).unwrap());
    }
    let s = connect(port).unwrap();
    half_close(&s);
    drop(s);
    // Still serving.
    assert_eq!(get(port, "/healthz").code, 200);
    h.shutdown();
    assert_eq!(h.probe_threads(), 0);
}

#[test]
fn idle_connections_cannot_lock_a_probe_out() {
    let (h, port) = started(HealthConfig {
        http_timeout: Duration::from_secs(60),
        ..local_cfg()
    });
    // Far more idle connections than the probe serves at once (16)...
    let mut idle: Vec<_> = (0..40).map(|_| connect(port).unwrap()).collect();
    // ...and a real probe is still answered: the oldest idle connections were closed.
    let a = get(port, "/healthz");
    assert_eq!(a.code, 200);
    let first = idle.first_mut().unwrap();
    first.set_read_timeout(Some(common::GUARD)).unwrap();
    let mut buf = Vec::new();
    let _ = first.read_to_end(&mut buf);
    assert!(buf.is_empty());
    drop(idle);
    h.shutdown();
    assert_eq!(h.probe_threads(), 0);
}

#[test]
fn http_bind_conflict_names_the_port() {
    let blocker = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = blocker.local_addr().unwrap().port();
    let h = Health::new(HealthConfig {
        http_port: Some(port),
        ..local_cfg()
    });
    let err = h.start_http().unwrap_err();
    assert!(
        matches!(
            err,
            HealthError::Bind {
                probe: Probe::Http,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("HTTP health probe on port {port}")),
        "{msg}"
    );
    assert_eq!(h.http_probe_port(), None);
    assert_eq!(h.probe_threads(), 0);
    drop(blocker);
    assert_eq!(h.start_http().unwrap(), Some(port));
}

#[test]
fn dropping_the_last_clone_stops_the_http_probe() {
    let (h, port) = started(local_cfg());
    let mut pending = connect(port).unwrap();
    pending.write_all(b"GET /").unwrap();
    drop(h);
    assert_refused(port);
    pending.set_read_timeout(Some(common::GUARD)).unwrap();
    let mut buf = Vec::new();
    let _ = pending.read_to_end(&mut buf);
    assert!(buf.is_empty());
}
