//! Health probes wired into the connector set, on both runtimes: the TCP probe, the HTTP
//! probe, manual declarations, and automatic mode following a source that the server drops
//! and lets back in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::{Value, json};
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector::{ConnectionState, ConnectorSet, Source};
use vantiq_e2e::{Kit, TestRuntime, on_both_runtimes, start};

on_both_runtimes!(
    manual_declarations_and_probes,
    automatic_mode_follows_the_sources,
    dropping_run_stops_every_task_and_probe
);

fn tcp_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// `GET path` on the HTTP probe: (status, JSON body).
fn get(port: u16, path: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    (status, serde_json::from_str(body).unwrap())
}

async fn until_state(kit: &Kit, source: &Source, pred: impl Fn(ConnectionState) -> bool) {
    kit.within(vantiq_e2e::WAIT, "a source state change", async {
        while !pred(source.state()) {
            source.wait_change(source.state()).await;
        }
    })
    .await;
}

async fn manual_declarations_and_probes<R: TestRuntime>() {
    let kit = Kit::start(|b| {
        b.token("T")
            .source("alpha", json!({}))
            .source("beta", json!({}))
    })
    .await;
    let set = ConnectorSet::<R>::new(kit.config(&["alpha", "beta"], "healthProbePort=0"));
    let health = set.health();
    // The echo connector declares the set healthy once every source is configured.
    let echo = Echo::new(set.health(), set.sources());
    let (alpha, beta) = (set.source("alpha").unwrap(), set.source("beta").unwrap());
    assert_eq!(health.is_healthy(), None, "never declared before running");
    let running = start(set.handler(echo));
    kit.source("alpha").notifications(1).await;
    kit.source("beta").notifications(1).await;
    until_state(&kit, &alpha, |s| s == ConnectionState::Configured).await;
    until_state(&kit, &beta, |s| s == ConnectionState::Configured).await;
    assert_eq!(health.is_healthy(), Some(true));
    let tcp = health.tcp_probe_port().expect("TCP probe open");
    let http = health.http_probe_port().expect("HTTP probe running");
    assert!(tcp_open(tcp));
    assert_eq!(get(http, "/healthz"), (200, json!({"status": "alive"})));
    assert_eq!(
        get(http, "/readyz"),
        (
            200,
            json!({"status": "ready", "sources": {"alpha": "configured", "beta": "configured"}})
        )
    );
    // A dropped source does not change a manual declaration (unlike the Java SDK; see
    // docs/design.md#d17-health)…
    kit.source("alpha").handle().refuse_connects(1_000);
    kit.source("alpha").drop_connection().await;
    until_state(&kit, &alpha, |s| s != ConnectionState::Configured).await;
    assert_eq!(health.is_healthy(), Some(true));
    assert!(tcp_open(tcp));
    let (status, body) = get(http, "/readyz");
    assert_eq!(status, 200);
    assert_reconnecting(&body["sources"]["alpha"]);
    // …the application decides.
    health.declare_unhealthy().unwrap();
    assert_eq!(health.is_healthy(), Some(false));
    assert!(
        !tcp_open(tcp),
        "the TCP probe refuses connections once unhealthy"
    );
    assert_eq!(get(http, "/readyz").0, 503);
    kit.source("alpha").handle().refuse_connects(0);
    running.stop(&kit).await.unwrap();
    // After run() the probes are gone.
    assert!(!tcp_open(http));
    assert!(!health.is_alive());
}

/// A source the server keeps refusing is either trying again or waiting to.
fn assert_reconnecting(state: &serde_json::Value) {
    assert!(
        matches!(state.as_str(), Some("connecting" | "waiting to reconnect")),
        "expected a reconnecting source, got {state}"
    );
}

async fn automatic_mode_follows_the_sources<R: TestRuntime>() {
    let kit = Kit::start(|b| {
        b.token("T")
            .source("alpha", json!({}))
            .source("beta", json!({}))
    })
    .await;
    // No health code at all: autoHealth does it.
    let set = ConnectorSet::<R>::new(
        kit.config(&["alpha", "beta"], "autoHealth=true\nhealthProbePort=0"),
    )
    .on_publish(|_s, _m| async { Ok(()) });
    let health = set.health();
    let (alpha, beta) = (set.source("alpha").unwrap(), set.source("beta").unwrap());
    let running = start(set);
    until_state(&kit, &alpha, |s| s == ConnectionState::Configured).await;
    until_state(&kit, &beta, |s| s == ConnectionState::Configured).await;
    // Health applies source changes in the background (never inside the driver's poll).
    assert!(health.wait_settled(vantiq_e2e::WAIT));
    assert_eq!(health.is_healthy(), Some(true));
    let tcp = health.tcp_probe_port().unwrap();
    let http = health.http_probe_port().unwrap();
    assert!(tcp_open(tcp));
    assert_eq!(get(http, "/readyz").0, 200);

    // The server drops alpha and will not let it back in for now: not ready.
    let a = kit.source("alpha");
    a.handle().refuse_connects(1_000);
    a.drop_connection().await;
    until_state(&kit, &alpha, |s| s != ConnectionState::Configured).await;
    assert!(health.wait_settled(vantiq_e2e::WAIT));
    assert_eq!(health.is_healthy(), Some(false));
    assert!(!tcp_open(tcp));
    let (status, body) = get(http, "/readyz");
    assert_eq!(status, 503);
    assert_eq!(body["status"], json!("not ready"));
    assert_eq!(body["sources"]["beta"], json!("configured"));
    assert_reconnecting(&body["sources"]["alpha"]);
    // Let it back in: ready again, on a TCP port of its own choosing (port 0).
    a.handle().refuse_connects(0);
    until_state(&kit, &alpha, |s| s == ConnectionState::Configured).await;
    assert!(health.wait_settled(vantiq_e2e::WAIT));
    assert_eq!(health.is_healthy(), Some(true));
    assert!(tcp_open(health.tcp_probe_port().unwrap()));
    assert_eq!(get(http, "/readyz").0, 200);
    running.stop(&kit).await.unwrap();
}

/// Cancellation is the same on both runtimes: dropping the `run()` future stops every source
/// task (the server sees its sockets go, the handles say the connector stopped, nothing
/// queued afterwards is accepted) and the probes.
async fn dropping_run_stops_every_task_and_probe<R: TestRuntime>() {
    let kit = Kit::start(|b| {
        b.token("T")
            .source("alpha", json!({}))
            .source("beta", json!({}))
    })
    .await;
    let set = ConnectorSet::<R>::new(kit.config(
        &["alpha", "beta"],
        "healthProbePort=0\ntcpProbePort=0\nautoHealth=true",
    ))
    .on_publish(|_s, _m| async { Ok(()) });
    let health = set.health();
    let sources = set.sources();
    let running = start(set);
    for s in &sources {
        until_state(&kit, s, |st| st == ConnectionState::Configured).await;
    }
    assert!(health.wait_settled(vantiq_e2e::WAIT));
    let http = health.http_probe_port().expect("HTTP probe running");
    let tcp = health.tcp_probe_port().expect("TCP probe open");
    assert!(tcp_open(tcp));
    assert_eq!(get(http, "/healthz").0, 200);

    running.cancel();

    for s in &sources {
        until_state(&kit, s, |st| st == ConnectionState::Closed).await;
        kit.source(s.name()).wait_disconnected().await;
        let waited = kit
            .within(vantiq_e2e::WAIT, "wait_configured", s.wait_configured())
            .await;
        assert!(
            waited.is_err(),
            "{} still waits for a configuration",
            s.name()
        );
        let late = kit
            .within(
                vantiq_e2e::WAIT,
                "a late notify",
                s.notify(&json!({"late": true})),
            )
            .await;
        assert!(
            matches!(late, Err(vantiq_connector::NotifyError::Closed)),
            "{} accepted a notification after cancellation",
            s.name()
        );
        assert_eq!(kit.source(s.name()).handle().connections(), 1);
    }
    assert!(health.wait_settled(vantiq_e2e::WAIT));
    assert!(!health.is_alive());
    assert!(!tcp_open(http), "the HTTP probe stopped");
    assert!(!tcp_open(tcp), "the TCP probe stopped");
}

/// The probes on IPv6: bound to `::1` and to `::`, reachable on `::1`, closed when declared
/// unhealthy.
#[test]
#[cfg_attr(
    no_ipv6_loopback,
    ignore = "no IPv6 loopback on the machine that built this test (tests/build.rs)"
)]
fn probes_work_on_ipv6() {
    use std::net::Ipv6Addr;
    use vantiq_connector::{Health, HealthConfig};
    for bind in [Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED] {
        let h = Health::new(HealthConfig {
            tcp_port: 0,
            bind: bind.into(),
            ..HealthConfig::default()
        });
        h.declare_healthy().unwrap();
        let port = h.tcp_probe_port().unwrap();
        TcpStream::connect((Ipv6Addr::LOCALHOST, port)).unwrap();
        h.declare_unhealthy().unwrap();
        assert!(TcpStream::connect((Ipv6Addr::LOCALHOST, port)).is_err());
        assert_eq!(h.probe_threads(), 0);
    }
}
