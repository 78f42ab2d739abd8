//! A hostile server against the connector as a process (the `e2e-echo` binary), on both
//! runtimes: graceful closes in the middle of notification bursts lose nothing, and the
//! process's memory stays within the byte budgets while the server keeps it offline or
//! stops reading in the middle of a flood. The figures RELIABILITY.md quotes are printed
//! (`-- --nocapture`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vantiq_e2e::faults::rss_kib_of;
use vantiq_e2e::proxy::{Proxy, STALL_HOLD};
use vantiq_e2e::{Kit, Smol, config_dir, run};

/// Long enough for a write stall to be found (20 s) and the rest of a flood to arrive.
const LONG: Duration = Duration::from_secs(90);

const BIN: &str = env!("CARGO_BIN_EXE_e2e-echo");

/// The echo connector as a process, connected to `kit` as source `s1`.
struct Connector {
    child: Child,
    dir: PathBuf,
}

impl Connector {
    fn start(kit: &Kit, runtime: &str, test: &str) -> Connector {
        Connector::start_at(&kit.url(), runtime, test)
    }

    /// The echo connector as a process, connected to `target` as source `s1`.
    fn start_at(target: &str, runtime: &str, test: &str) -> Connector {
        let dir = config_dir(
            &format!("hostile-{test}-{runtime}"),
            &format!("targetServer={target}\nauthToken=T\nsources=s1\ntcpProbePort=0\n"),
        );
        let child = Command::new(BIN)
            .arg(runtime)
            .current_dir(&dir)
            .env_remove("CONNECTOR_AUTH_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Connector { child, dir }
    }

    /// The process's resident set and its peak so far, in KiB. Fails (never passes
    /// vacuously) where `/proc` cannot tell.
    fn rss_kib(&self) -> (u64, u64) {
        rss_kib_of(&self.child.id().to_string()).expect("/proc/<pid>/status of the connector")
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `seq` of every notification of burst `round`, in the order the server got them.
fn seqs_of_round(all: &[Value], round: u64) -> Vec<u64> {
    all.iter()
        .filter(|n| n["payload"]["round"] == json!(round))
        .map(|n| n["seq"].as_u64().unwrap())
        .collect()
}

const ROUNDS: u64 = 30;
const BURST: u64 = 600;

/// The adversarial server's first finding: a server that sends its close frame in the middle
/// of a burst and reads the socket to its end got every notification but one. A server
/// restart is such a close, thirty times here, each in the middle of a burst.
fn graceful_closes_lose_nothing(runtime: &'static str) {
    run::<Smol, _>(|| async move {
        let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
        let connector = Connector::start(&kit, runtime, "closes");
        let s1 = kit.source("s1");
        s1.wait_configured().await;
        let started = Instant::now();
        let pad = "r".repeat(512);
        // Each session starts with the echo's `{"connected": true, …}`.
        let mut expected = 1;
        for round in 0..ROUNDS {
            s1.publish(json!({"burst": BURST, "payload": {"round": round, "pad": pad}}))
                .await;
            // Close once part of the burst has arrived (at a different point each round).
            let part = 1 + (round * 197) % (BURST - 1);
            s1.notifications(expected + part as usize).await;
            let code = if round % 2 == 0 { 1001 } else { 1000 };
            s1.handle().close(code, "restart").await.unwrap();
            s1.wait_connections(round + 2).await;
            s1.wait_configured().await;
            expected += BURST as usize + 1;
        }
        let all = s1.notifications(expected).await;
        assert_eq!(all.len(), expected, "duplicates");
        for round in 0..ROUNDS {
            assert_eq!(
                seqs_of_round(&all, round),
                (0..BURST).collect::<Vec<_>>(),
                "burst {round}: every notification, once, in order"
            );
        }
        println!(
            "{runtime}: {ROUNDS} graceful closes mid-burst, {} notifications sent, {} received, 0 lost, 0 duplicated, {:.1} s",
            ROUNDS * BURST,
            ROUNDS * BURST,
            started.elapsed().as_secs_f64()
        );
        drop(connector);
    });
}

const OFFLINE_BURST: u64 = 4_000;
const PAYLOAD_BYTES: usize = 32 * 1024;
/// The sample Kubernetes Deployment's memory limit is 128 MiB; the byte budgets of the
/// queues (8 MiB offline, 2 MiB outbox, 1 MiB application queue, 2 MiB of events) keep the
/// process far below it.
const PEAK_LIMIT_KIB: u64 = 64 * 1024;

/// The adversarial server's second finding: queues were bounded by count, not bytes; while
/// offline, 10,000 notifications of 32 KiB took 299 MiB. Here 4,000 of 32 KiB (125 MiB) are
/// notified while the server keeps the connector out, then let in: everything arrives and
/// the process's peak resident set stays within the budgets.
fn offline_memory_is_bounded_in_bytes(runtime: &'static str) {
    run::<Smol, _>(|| async move {
        let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
        let connector = Connector::start(&kit, runtime, "offline");
        let s1 = kit.source("s1");
        s1.wait_configured().await;
        let (idle_rss, _) = connector.rss_kib();
        let attempts = s1.handle().connect_attempts();
        s1.handle().refuse_connects(u32::MAX);
        let payload = "m".repeat(PAYLOAD_BYTES);
        s1.publish(json!({"burst": OFFLINE_BURST, "payload": payload}))
            .await;
        // A graceful close (a server restart), so nothing is in flight when the link goes.
        s1.handle().close(1001, "restart").await.unwrap();
        // Three refused attempts later (a second or more), the handler has long since filled
        // every queue it may fill and waits in `notify`.
        s1.wait_connect_attempts(attempts + 3).await;
        let (offline_rss, _) = connector.rss_kib();
        s1.handle().refuse_connects(0);
        let all = s1.notifications(OFFLINE_BURST as usize + 2).await;
        let (_, hwm) = connector.rss_kib();
        // The kernel updates the peak lazily; a sample may have seen more.
        let peak = hwm.max(offline_rss);
        let seqs: Vec<u64> = all
            .iter()
            .filter_map(|n| n.get("seq").and_then(Value::as_u64))
            .collect();
        assert_eq!(seqs, (0..OFFLINE_BURST).collect::<Vec<_>>());
        println!(
            "{runtime}: {OFFLINE_BURST} notifications of {} KiB ({} MiB) notified offline; resident set idle {:.1} MiB, offline {:.1} MiB, peak {:.1} MiB",
            PAYLOAD_BYTES / 1024,
            OFFLINE_BURST * PAYLOAD_BYTES as u64 / (1024 * 1024),
            idle_rss as f64 / 1024.0,
            offline_rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
        assert!(
            peak < PEAK_LIMIT_KIB,
            "peak resident set {peak} KiB, over {PEAK_LIMIT_KIB} KiB"
        );
        drop(connector);
    });
}

const FLOOD: u64 = 500_000;
/// The queues' byte budgets add up to about 13 MiB per source (docs/design.md, D24); the
/// resident set may grow by that and a little, never by the flood's 60 MB.
const GROWTH_LIMIT_KIB: u64 = 16 * 1024;

/// "A peer that stops reading", with the cheapest notifications there are: budgets that
/// counted a notification's JSON length (a couple of bytes) let a flood of them hold a
/// hundred times the budget in frames, and a handler that handed its sends to the connection
/// without asking for room would hold the whole flood. Here the server stops reading in the
/// middle of a flood of 500,000 notifications of a few bytes each (about 60 MB in memory if
/// nothing bounded them): a proxy black-holes the link, swallows 4 MiB, then reads nothing
/// more. The connector finds the link dead (its writes stall), reconnects and finishes the
/// flood; its resident set grows by less than the budgets' sum; and what the server got is in
/// order, without duplicates, missing only one run: what the dead link had taken.
fn a_server_that_stops_reading_cannot_grow_memory_with_tiny_notifications(runtime: &'static str) {
    run::<Smol, _>(|| async move {
        let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
        let proxy = Proxy::start(kit.addr());
        let connector = Connector::start_at(&proxy.url(), runtime, "stops-reading");
        let s1 = kit.source("s1");
        s1.wait_configured().await;
        let (idle_rss, _) = connector.rss_kib();
        let started = Instant::now();
        s1.publish(json!({ "burst": FLOOD })).await;
        // The flood is under way (the first notification is the echo's `connected`) ...
        s1.notifications(1 + 1_000).await;
        // ... when the server stops reading.
        assert_eq!(proxy.stall(), 1);
        let handle = s1.handle().clone();
        let (last, reconnected) = kit
            .on(async move {
                // The write stall ends the link (20 s without a byte taken) and the
                // connector comes back through the proxy, whose new links forward again.
                handle.wait_connections(2, LONG).await.unwrap();
                let reconnected = started.elapsed();
                let mut at = 0;
                let mut last = None;
                while last != Some(FLOOD - 1) {
                    let (next, got) = handle.wait_notifications_after(at, LONG).await;
                    assert!(next != at, "the flood stopped at {last:?}");
                    at = next;
                    last = got
                        .iter()
                        .rev()
                        .find_map(|n| n.to_value().ok()?.get("seq")?.as_u64())
                        .or(last);
                }
                (last, reconnected)
            })
            .await;
        assert_eq!(last, Some(FLOOD - 1));
        let (_, peak) = connector.rss_kib();
        let swallowed = proxy.stats().bytes_swallowed;
        let seqs: Vec<u64> = s1
            .handle()
            .notifications_snapshot()
            .iter()
            .filter_map(|n| n.to_value().ok()?.get("seq")?.as_u64())
            .collect();
        let gaps: Vec<(u64, u64)> = seqs
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .map(|w| (w[0], w[1]))
            .collect();
        let lost = FLOOD - seqs.len() as u64;
        println!(
            "{runtime}: {FLOOD} tiny notifications, the server stopped reading after {} KiB more; reconnected after {:.1} s; {lost} lost with the dead link; resident set idle {:.1} MiB, peak {:.1} MiB",
            swallowed / 1024,
            reconnected.as_secs_f64(),
            idle_rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
        assert!(
            swallowed >= STALL_HOLD as u64,
            "the proxy took only {swallowed} bytes: the server never stopped reading"
        );
        assert_eq!(seqs.first(), Some(&0));
        assert!(
            gaps.len() <= 1 && gaps.iter().all(|(a, b)| a < b),
            "duplicates, reordering or more than one run missing: {gaps:?}"
        );
        assert!(
            peak.saturating_sub(idle_rss) < GROWTH_LIMIT_KIB,
            "resident set grew from {idle_rss} KiB to a peak of {peak} KiB, more than {GROWTH_LIMIT_KIB} KiB"
        );
        drop(connector);
    });
}

#[test]
fn tokio_a_server_that_stops_reading_cannot_grow_memory_with_tiny_notifications() {
    a_server_that_stops_reading_cannot_grow_memory_with_tiny_notifications("tokio");
}

#[test]
fn smol_a_server_that_stops_reading_cannot_grow_memory_with_tiny_notifications() {
    a_server_that_stops_reading_cannot_grow_memory_with_tiny_notifications("smol");
}

#[test]
fn tokio_graceful_closes_lose_nothing() {
    graceful_closes_lose_nothing("tokio");
}

#[test]
fn smol_graceful_closes_lose_nothing() {
    graceful_closes_lose_nothing("smol");
}

#[test]
fn tokio_offline_memory_is_bounded_in_bytes() {
    offline_memory_is_bounded_in_bytes("tokio");
}

#[test]
fn smol_offline_memory_is_bounded_in_bytes() {
    offline_memory_is_bounded_in_bytes("smol");
}
