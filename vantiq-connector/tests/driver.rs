//! The real driver on a runtime with a virtual clock (`SimRuntime`), against a server each
//! test plays frame by frame. No sleeps and no wall clock: when every task waits, virtual
//! time jumps to the next deadline, so these tests are exact about *when* things happen and
//! always see the same interleaving.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::Logs;
use vantiq_connector::test_util::SimRuntime;
use vantiq_connector::{ConnectionState, ReplyError, Runtime as _};
use vantiq_proto::frame::ClientFrame;

const SEC: Duration = Duration::from_secs(1);

/// Publishes are echoed, queries answered, and the session's state is visible.
#[test]
fn a_session_echoes_and_answers() {
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    let set = common::set(&sim, "")
        .on_publish(|s, m| async move {
            s.notify_json(m).await?;
            Ok(())
        })
        .on_query(|_s, q| async move {
            q.complete(&serde_json::json!([{"a": 1}])).await?;
            Ok(())
        });
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        async move {
            let mut peer = common::session(&server, &source).await;
            peer.publish(common::json(r#"{"n":7}"#)).await.unwrap();
            assert_eq!(common::numbers(&mut peer, Some(1)).await, [7]);
            let address = peer.query(common::json("{}"), 60 * SEC).await.unwrap();
            match peer.next_frame().await {
                Some(ClientFrame::QueryReply(r)) => {
                    assert_eq!(r.status.0, 200);
                    assert_eq!(r.reply_address, address);
                    assert_eq!(r.body.unwrap().as_str(), r#"[{"a":1}]"#);
                }
                other => panic!("{other:?}"),
            }
            stop.shutdown();
            assert!(peer.next_frame().await.is_none());
            run.await.unwrap();
            assert_eq!(source.state(), ConnectionState::Closed);
        }
    });
}

/// What a handler sends while the driver polls it is applied to the connection directly,
/// but never ahead of what the source's queue already holds: here a notification queued from
/// another thread during the handler stays ahead of the handler's own notifications and of
/// its query reply.
#[test]
fn a_handler_send_never_overtakes_what_was_queued_before_it() {
    fn from_another_thread(source: &vantiq_connector::Source, n: u64) {
        std::thread::scope(|s| {
            s.spawn(|| source.try_notify(&serde_json::json!({ "n": n })).unwrap());
        });
    }
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    let set = common::set(&sim, "")
        .on_publish(|s, _m| async move {
            from_another_thread(&s, 0);
            s.notify(&serde_json::json!({ "n": 1 })).await?;
            s.notify(&serde_json::json!({ "n": 2 })).await?;
            Ok(())
        })
        .on_query(|s, q| async move {
            from_another_thread(&s, 3);
            q.complete(&serde_json::json!([{ "a": 1 }])).await?;
            s.notify(&serde_json::json!({ "n": 4 })).await?;
            Ok(())
        });
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on(async move {
        let mut peer = common::session(&server, &source).await;
        peer.publish(common::json("{}")).await.unwrap();
        assert_eq!(common::numbers(&mut peer, Some(3)).await, [0, 1, 2]);
        peer.query(common::json("{}"), 60 * SEC).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match peer.next_frame().await {
                Some(ClientFrame::Notification { object, .. }) => {
                    seen.push(object.to_value().unwrap()["n"].to_string());
                }
                Some(ClientFrame::QueryReply(r)) => seen.push(format!("reply {}", r.status.0)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, ["3", "reply 200", "4"]);
        stop.shutdown();
        assert!(peer.next_frame().await.is_none());
        run.await.unwrap();
    });
}

/// Finding of the adversarial server: a graceful server close in the middle of a
/// notification burst lost exactly one notification (the frame the driver had taken when
/// the WebSocket layer refused to send after the close). The server here reads the socket to
/// its end after its close frame, as a real server does; every notification must arrive
/// exactly once, in order, across the two sessions.
#[test]
fn a_graceful_server_close_mid_burst_loses_nothing() {
    for acks in [false, true] {
        for close_after in [1usize, 10, 137] {
            graceful_close_mid_burst(acks, close_after);
        }
    }
}

fn graceful_close_mid_burst(acks: bool, close_after: usize) {
    const TOTAL: u64 = 500;
    // Small socket buffers, so that notifications are still queued when the close arrives.
    let sim = SimRuntime::with_options(1024, Duration::from_secs(3_600));
    let server = common::server(&sim);
    // With acks, the server acknowledges every notification it reads (until its close).
    server.with_registry(|r| r.options_mut().ack_notifications = acks);
    let set = common::set(&sim, "");
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut first = common::session(&server, &source).await;
            let burst = sim.spawn_task({
                let source = source.clone();
                async move {
                    let pad = "m".repeat(100);
                    for n in 0..TOTAL {
                        source
                            .notify(&serde_json::json!({ "n": n, "pad": pad }))
                            .await
                            .unwrap();
                    }
                }
            });
            let mut got = Vec::new();
            while got.len() < close_after {
                if let Some(ClientFrame::Notification { object, .. }) = first.next_frame().await {
                    got.push(object.to_value().unwrap()["n"].as_u64().unwrap());
                }
            }
            first.close(1001, "bye").await.unwrap();
            // Read to the end of the socket, as the server does after its close frame.
            got.extend(common::numbers(&mut first, None).await);
            let mut second = server.session().await.unwrap();
            let rest = (TOTAL as usize).saturating_sub(got.len());
            got.extend(common::numbers(&mut second, Some(rest)).await);
            assert_eq!(
                got,
                (0..TOTAL).collect::<Vec<_>>(),
                "acks {acks}, close after {close_after}: every notification once, in order"
            );
            burst.await;
            stop.shutdown();
            assert!(second.next_frame().await.is_none());
            run.await.unwrap();
        }
    });
}

/// Finding of the adversarial server: the server stopped reading but kept sending pings;
/// incoming traffic counted as liveness, so the connector sat on the dead socket. A socket
/// that takes no bytes for the write timeout while something waits is dead, whatever
/// arrives.
#[test]
fn a_write_stall_is_caught_while_the_server_keeps_pinging() {
    let sim = SimRuntime::with_options(16 * 1024, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let set = common::set(&sim, "");
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let first = common::session(&server, &source).await;
            // The connector has more to say than the socket takes: 200 KiB.
            let pad = "x".repeat(1024);
            for n in 0..200 {
                source
                    .notify(&serde_json::json!({ "n": n, "pad": pad }))
                    .await
                    .unwrap();
            }
            let stalled_at = sim.now();
            // The server stops reading and pings every 5 s, raw, under the WebSocket layer
            // (a masked-free server ping frame: 0x89, length 0).
            let pinger = sim.spawn_task({
                let sim = sim.clone();
                let pipe = first.pipe().clone();
                async move {
                    loop {
                        sim.sleep(5 * SEC).await;
                        pipe.inject(&[0x89, 0x00]);
                    }
                }
            });
            let second = sim
                .timeout(60 * SEC, server.accept())
                .await
                .map(Result::unwrap);
            let after = sim.now() - stalled_at;
            assert!(second.is_some(), "still on the dead socket after 60 s");
            // The default write timeout is 20 s; the pong deadline (also 20 s) may catch it
            // first, but not 5 s pings.
            assert!(
                after >= 20 * SEC && after < 21 * SEC,
                "given up after {after:?}"
            );
            drop(pinger);
            drop(first);
            let mut second = second.unwrap();
            assert!(second.serve_until_configured().await);
            // Everything the first socket never took arrives on the second, in order.
            let got = common::numbers(&mut second, None);
            stop.shutdown();
            let got = got.await;
            assert!(
                got.windows(2).all(|w| w[1] == w[0] + 1),
                "in order: {got:?}"
            );
            assert_eq!(got.last(), Some(&199));
            run.await.unwrap();
        }
    });
}

/// The same stall with keep-alive off: only the write timeout can catch it.
#[test]
fn a_write_stall_is_caught_without_pings() {
    let sim = SimRuntime::with_options(16 * 1024, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let set = common::set(&sim, "sendPings=false");
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let first = common::session(&server, &source).await;
            let pad = "x".repeat(1024);
            for n in 0..200 {
                source
                    .notify(&serde_json::json!({ "n": n, "pad": pad }))
                    .await
                    .unwrap();
            }
            let stalled_at = sim.now();
            let second = sim
                .timeout(60 * SEC, server.accept())
                .await
                .map(Result::unwrap);
            let after = sim.now() - stalled_at;
            assert!(second.is_some(), "still on the dead socket after 60 s");
            assert!(
                after >= 20 * SEC && after < 21 * SEC,
                "given up after {after:?}"
            );
            drop(first);
            stop.shutdown();
            drop(second);
            run.await.unwrap();
        }
    });
}

/// Finding of the adversarial server: after a close frame without the TCP close, the
/// connector reconnected only at the next ping (20 s), and never with `sendPings=false`.
/// The session is over when the close frame arrives.
#[test]
fn a_close_frame_without_the_tcp_close_reconnects_at_once() {
    for pings in ["", "sendPings=false"] {
        let sim = SimRuntime::new();
        let server = common::server(&sim);
        let set = common::set(&sim, pings);
        let common::Running { source, stop, run } = common::start(&sim, set);
        sim.block_on({
            let sim = sim.clone();
            async move {
                let mut first = common::session(&server, &source).await;
                let closed_at = sim.now();
                first.close(1001, "bye").await.unwrap();
                // The server keeps the TCP connection open and reads nothing more.
                let second = sim
                    .timeout(60 * SEC, server.accept())
                    .await
                    .map(Result::unwrap);
                let after = sim.now() - closed_at;
                assert!(second.is_some(), "{pings}: no reconnect within 60 s");
                // A clean close (1001) resets the back-off: the next attempt waits half the
                // initial delay (100 ms here) at most … the initial delay.
                assert!(
                    after <= Duration::from_millis(100),
                    "{pings}: reconnected after {after:?}"
                );
                let mut second = second.unwrap();
                assert!(second.serve_until_configured().await);
                source.wait_configured().await.unwrap();
                stop.shutdown();
                assert!(second.next_frame().await.is_none());
                run.await.unwrap();
                drop(first);
            }
        });
    }
}

/// Finding of the adversarial server: SIGTERM while the server had stopped reading dropped
/// the notifications still queued, without a word. Now the close timeout bounds the flush,
/// and whatever could not be delivered is counted and logged.
#[test]
fn shutdown_on_a_stalled_link_counts_what_it_could_not_deliver() {
    let (logs, _guard) = Logs::capture(tracing::Level::WARN);
    let sim = SimRuntime::with_options(8 * 1024, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let mut set = common::set(&sim, "");
    // No WebSocket write buffer: what the transport holds is at most the frame being written.
    set.transport_options().write_buffer_size = 0;
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut peer = common::session(&server, &source).await;
            // The server stops reading; the connector takes all it can.
            let pad = "y".repeat(200);
            let accepted = common::fill(&sim, &source, &pad).await;
            assert!(accepted > 100, "only {accepted} taken");
            let stop_at = sim.now();
            stop.shutdown();
            run.await.unwrap();
            let took = sim.now() - stop_at;
            // The close timeout (5 s) bounds the flush, then the close handshake its own
            // grace (2 s): the server never answers.
            assert!(
                took <= 7 * SEC + Duration::from_millis(50),
                "shutdown took {took:?}"
            );
            // Now the server reads what reached the socket.
            let received = common::numbers(&mut peer, None).await;
            let undelivered = source.undelivered_notifications();
            assert!(undelivered > 0);
            assert_eq!(
                received,
                (0..received.len() as u64).collect::<Vec<_>>(),
                "a prefix, in order"
            );
            // Received, or counted as undelivered, or the one frame the transport held.
            let lost = accepted - received.len() as u64 - undelivered;
            assert!(lost <= 1, "{lost} notifications vanished without a word");
            let text = logs.text();
            assert!(
                text.contains(&format!("undelivered={undelivered}")),
                "no warning with the count: {text}"
            );
        }
    });
}

/// Finding of the adversarial server: queues were bounded by count, not bytes (10,000
/// offline notifications of 32 KiB took 299 MiB). Offline, the connector takes notifications
/// only up to its byte budgets.
#[test]
fn offline_notifications_are_bounded_in_bytes() {
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    sim.refuse_connects(true);
    let set = common::set(&sim, "");
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let pad = "z".repeat(32 * 1024);
            let accepted = common::fill(&sim, &source, &pad).await;
            let limits = vantiq_connector::Limits::default();
            let budget = (limits.offline_bytes + limits.application_queue_bytes) as u64;
            let held = accepted * (32 * 1024 + 20);
            assert!(
                held <= budget + 2 * 33 * 1024,
                "{accepted} notifications of 32 KiB held offline ({held} bytes; budget {budget})"
            );
            assert!(accepted >= 200, "only {accepted} taken");
            // They all go out, in order, once the server is back.
            sim.refuse_connects(false);
            let mut peer = server.session().await.unwrap();
            let got = common::numbers(&mut peer, Some(accepted as usize)).await;
            assert_eq!(got, (0..accepted).collect::<Vec<_>>());
            stop.shutdown();
            run.await.unwrap();
            assert_eq!(source.undelivered_notifications(), 0);
        }
    });
}

/// Finding of the adversarial server: while the server stopped reading, 400 echoes of
/// 900 KiB took 343 MiB. With byte bounds, the server can only push so much before the
/// connector stops reading: what it managed to write is bounded by the budgets, not by a
/// count of messages.
#[test]
fn a_server_that_stops_reading_cannot_make_the_connector_hold_more_than_its_budgets() {
    const BLOB: usize = 900 * 1024;
    let pipe = 64 * 1024;
    let sim = SimRuntime::with_options(pipe, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let handled = Arc::new(AtomicU64::new(0));
    let set = common::set(&sim, "sendPings=false").on_publish({
        let handled = handled.clone();
        move |s, m| {
            let handled = handled.clone();
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                s.notify_json(m).await?;
                Ok(())
            }
        }
    });
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let peer = common::session(&server, &source).await;
            let blob = "b".repeat(BLOB);
            // Publish until the connector stops taking them.
            let (writer, sent) = common::publisher(&sim, peer, 400, move |n| {
                format!(r#"{{"n":{n},"blob":"{blob}"}}"#)
            });
            let sent = common::until_stable(&sim, &sent, 10 * SEC).await;
            assert!(sent < 400, "the connector took 400 echoes of 900 KiB");
            drop(writer);
            let limits = vantiq_connector::Limits::default();
            // Where those bytes can be: the pipe both ways, the WebSocket layers' buffers,
            // the events waiting (budget + one), the command queue (budget + one), the
            // outbox (budget + one), the handler holding one.
            let budget = 2 * pipe
                + limits.pending_event_bytes
                + limits.application_queue_bytes
                + limits.outbox_bytes
                + 5 * BLOB;
            let written = sent as usize * BLOB;
            assert!(
                written <= budget,
                "the server wrote {sent} echoes ({written} bytes) into a connector whose budgets hold {budget}"
            );
            assert!(handled.load(Ordering::SeqCst) < sent, "reading never paused");
            stop.shutdown();
            run.await.unwrap();
        }
    });
}

/// A query streamed to a server that stopped reading: the parts wait in the command queue
/// once the outbox holds its byte budget, so the handler waits in `partial` instead of the
/// connector holding the whole result (replies were taken into the outbox without bound).
#[test]
fn a_query_streamed_to_a_server_that_stopped_reading_stays_within_the_budgets() {
    const PART: usize = 32 * 1024;
    const PARTS: u64 = 2_000; // 64 MiB in all
    let pipe = 64 * 1024;
    let sim = SimRuntime::with_options(pipe, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let sent = Arc::new(AtomicU64::new(0));
    let set = common::set(&sim, "sendPings=false").on_query({
        let sent = sent.clone();
        move |_s, mut q| {
            let sent = sent.clone();
            async move {
                let row = serde_json::json!([{ "pad": "q".repeat(PART) }]);
                for _ in 0..PARTS {
                    q.partial(&row).await?;
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                q.complete(&serde_json::json!([])).await?;
                Ok(())
            }
        }
    });
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut peer = common::session(&server, &source).await;
            // One query; then the server reads nothing more.
            peer.query(common::json("{}"), 3_600 * SEC).await.unwrap();
            let taken = common::until_stable(&sim, &sent, 10 * SEC).await;
            let limits = vantiq_connector::Limits::default();
            // Where the parts can be: the pipe, the WebSocket layer's buffer, the outbox
            // (budget + one), the command queue (budget + one), the handler holding one.
            let budget = pipe
                + vantiq_connector::TransportOptions::default().write_buffer_size
                + limits.outbox_bytes
                + limits.application_queue_bytes
                + 3 * PART;
            let held = taken as usize * PART;
            assert!(
                held <= budget,
                "{taken} parts of 32 KiB ({held} bytes) taken from a handler while the server read nothing; the budgets hold {budget}"
            );
            assert!(taken > 0, "nothing was sent");
            stop.shutdown();
            drop(peer);
            run.await.unwrap();
        }
    });
}

/// Back-pressure: a handler that is behind stops the reading of the socket (the server's
/// writes wait), and reading resumes when it catches up; nothing is lost or reordered.
#[test]
fn back_pressure_pauses_reading_and_resumes() {
    let sim = SimRuntime::with_options(4 * 1024, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let gate = Arc::new(event_listener::Event::new());
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let set = common::set(&sim, "").on_publish({
        let (gate, open, seen) = (gate.clone(), open.clone(), seen.clone());
        move |_s, m| {
            let (gate, open, seen) = (gate.clone(), open.clone(), seen.clone());
            async move {
                while !open.load(Ordering::SeqCst) {
                    let l = gate.listen();
                    if open.load(Ordering::SeqCst) {
                        break;
                    }
                    l.await;
                }
                seen.lock()
                    .unwrap()
                    .push(m.to_value().unwrap()["n"].as_u64().unwrap());
                Ok(())
            }
        }
    });
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let peer = common::session(&server, &source).await;
            const TOTAL: u64 = 2_000;
            let (writer, sent) =
                common::publisher(&sim, peer, TOTAL, |n| format!(r#"{{"n":{n}}}"#));
            let paused_at = common::until_stable(&sim, &sent, SEC).await;
            let limits = vantiq_connector::Limits::default();
            // Paused: the handler holds one, the queue its 64, the rest waits in the
            // socket's buffers; the server's writes wait.
            assert!(
                paused_at as usize > limits.pending_events,
                "sent {paused_at}"
            );
            assert!(
                paused_at < TOTAL,
                "reading never paused: all {TOTAL} publishes taken"
            );
            // Time passes while paused: a minute, three ping intervals; the link stays up
            // (the pong deadline waits while reading is paused).
            sim.sleep(60 * SEC).await;
            assert_eq!(source.state(), ConnectionState::Configured);
            assert_eq!(
                sent.load(Ordering::SeqCst),
                paused_at,
                "nothing read while paused"
            );
            open.store(true, Ordering::SeqCst);
            gate.notify(usize::MAX);
            // Reading resumes: every publish is handled, in order.
            let mut peer = writer.await;
            while (seen.lock().unwrap().len() as u64) < TOTAL {
                sim.sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(*seen.lock().unwrap(), (0..TOTAL).collect::<Vec<_>>());
            stop.shutdown();
            assert!(peer.next_frame().await.is_none());
            run.await.unwrap();
        }
    });
}

/// While reading is paused, the pong deadline waits (a pong may sit unread behind the
/// publishes), but a link that stops taking writes is still found dead by the write timeout.
#[test]
fn a_paused_link_that_stops_taking_writes_is_found_dead() {
    let sim = SimRuntime::with_options(4 * 1024, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let set = common::set(&sim, "").on_publish(|s, m| async move {
        // Echo: blocks once the socket takes no more.
        s.notify_json(m).await?;
        Ok(())
    });
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let peer = common::session(&server, &source).await;
            let pad = "p".repeat(2048);
            let dead_at = sim.now();
            // The server writes until it cannot, and never reads.
            let (writer, _sent) = common::publisher(&sim, peer, u64::MAX, move |n| {
                format!(r#"{{"n":{n},"pad":"{pad}"}}"#)
            });
            let second = sim
                .timeout(120 * SEC, server.accept())
                .await
                .map(Result::unwrap);
            assert!(second.is_some(), "the dead link was kept for 2 minutes");
            let after = sim.now() - dead_at;
            assert!(after <= 21 * SEC, "found dead after {after:?}");
            drop(writer);
            stop.shutdown();
            drop(second);
            run.await.unwrap();
        }
    });
}

/// Our close: the socket lingers for the close handshake, at most its grace period.
#[test]
fn the_close_handshake_has_its_grace_period() {
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    let set = common::set(&sim, "");
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let peer = common::session(&server, &source).await;
            let at = sim.now();
            stop.shutdown();
            // The server never reads the close frame nor answers it.
            run.await.unwrap();
            assert_eq!(sim.now() - at, 2 * SEC, "the default close grace is 2 s");
            drop(peer);
        }
    });
    // And a server that answers closes it at once.
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    let set = common::set(&sim, "");
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut peer = common::session(&server, &source).await;
            let at = sim.now();
            stop.shutdown();
            match peer.next_message().await {
                Some(async_tungstenite::tungstenite::Message::Close(Some(f))) => {
                    assert_eq!(u16::from(f.code), 1000);
                }
                other => panic!("{other:?}"),
            }
            // The WebSocket layer answers the close, and the server closes the connection (it
            // is the server's to close first).
            while peer.next_message().await.is_some() {}
            drop(peer);
            run.await.unwrap();
            assert_eq!(sim.now() - at, Duration::ZERO, "no time passes");
        }
    });
}

/// A handler that never returns: the rest goes on (keep-alive, the session), and shutdown
/// still ends, giving the handler the close timeout.
#[test]
fn a_handler_that_never_returns_does_not_stop_the_connector() {
    let (logs, _guard) = Logs::capture(tracing::Level::WARN);
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    let set = common::set(&sim, "").on_publish(|_s, _m| std::future::pending());
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut peer = common::session(&server, &source).await;
            peer.publish(common::json("{}")).await.unwrap();
            // Ten minutes pass; the link stays up (pings answered), notifications still flow.
            let reader = sim.spawn_task(async move {
                let mut got = Vec::new();
                while let Some(f) = peer.next_frame().await {
                    if let ClientFrame::Notification { object, .. } = f {
                        got.push(object.to_value().unwrap()["n"].as_u64().unwrap());
                    }
                }
                got
            });
            sim.sleep(600 * SEC).await;
            assert_eq!(source.state(), ConnectionState::Configured);
            source.notify(&serde_json::json!({"n": 1})).await.unwrap();
            let at = sim.now();
            stop.shutdown();
            run.await.unwrap();
            assert_eq!(reader.await, [1]);
            // The handler got the close timeout (5 s), then was given up.
            assert_eq!(sim.now() - at, 5 * SEC);
            assert!(
                logs.text()
                    .contains("did not finish within the close timeout")
            );
        }
    });
}

/// A reply's verdict reaches the caller: a reply for a query of an ended session is refused
/// with `SessionEnded`, by the connection itself.
#[test]
fn a_reply_after_the_session_ended_is_refused_by_the_connection() {
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    let (tx, rx) = async_channel::unbounded();
    let set = common::set(&sim, "").on_query(move |_s, q| {
        let tx = tx.clone();
        async move {
            tx.send(q).await.unwrap();
            Ok(())
        }
    });
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        async move {
            let mut first = common::session(&server, &source).await;
            first.query(common::json("{}"), 60 * SEC).await.unwrap();
            let query = rx.recv().await.unwrap();
            first.close(1000, "bye").await.unwrap();
            let mut second = common::session(&server, &source).await;
            assert_eq!(
                query.complete(&serde_json::json!([])).await,
                Err(ReplyError::SessionEnded)
            );
            stop.shutdown();
            // No reply reached the new session: the next frame is the close.
            assert!(second.next_frame().await.is_none());
            run.await.unwrap();
            drop(first);
        }
    });
}

/// Decisions on frames the peers never checked (docs/design.md#d22-frames-for-another-source):
/// a query naming another source is still answered (the caller would otherwise wait for its
/// timeout), and a publish without `object` reaches the handler as null.
#[test]
fn a_query_for_another_source_is_answered_and_a_publish_without_object_is_null() {
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    let published = Arc::new(std::sync::Mutex::new(Vec::new()));
    let set = common::set(&sim, "")
        .on_publish({
            let published = published.clone();
            move |_s, m| {
                published.lock().unwrap().push(m.as_str().to_owned());
                async { Ok(()) }
            }
        })
        .on_query(|_s, q| async move {
            q.empty().await?;
            Ok(())
        });
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut peer = common::session(&server, &source).await;
            peer.send_raw(
                r#"{"op":"query","resourceName":"sources","resourceId":"other","messageHeaders":{"REPLY_ADDR_HEADER":"r9"},"object":{}}"#,
            )
            .await
            .unwrap();
            match peer.next_frame().await {
                Some(ClientFrame::QueryReply(r)) => {
                    assert_eq!((r.status.0, r.reply_address.as_str()), (204, "r9"));
                }
                other => panic!("{other:?}"),
            }
            peer.send_raw(r#"{"op":"publish","resourceName":"sources","resourceId":"s1"}"#)
                .await
                .unwrap();
            peer.publish(common::json(r#"{"after":1}"#)).await.unwrap();
            while published.lock().unwrap().len() < 2 {
                sim.sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(*published.lock().unwrap(), ["null", r#"{"after":1}"#]);
            stop.shutdown();
            assert!(peer.next_frame().await.is_none());
            run.await.unwrap();
        }
    });
}

/// Shutdown while the source waits to reconnect (the server refuses connections): it ends
/// at once, without waiting for the back-off.
#[test]
fn shutdown_while_waiting_to_reconnect_ends_at_once() {
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    let set = common::set(&sim, "").connection_config(|c| {
        c.backoff.initial = Duration::from_secs(30);
        c.backoff.max = Duration::from_secs(30);
    });
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let peer = common::session(&server, &source).await;
            sim.refuse_connects(true);
            drop(peer);
            source.wait_change(ConnectionState::Configured).await;
            let at = sim.now();
            stop.shutdown();
            run.await.unwrap();
            assert_eq!(sim.now() - at, Duration::ZERO);
            assert_eq!(source.state(), ConnectionState::Closed);
        }
    });
}

/// A graceful stop delivers every notification accepted before it, then closes with 1000.
#[test]
fn shutdown_flushes_every_queued_notification() {
    let sim = SimRuntime::with_options(4 * 1024, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let set = common::set(&sim, "");
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut peer = common::session(&server, &source).await;
            let pad = "f".repeat(64);
            let taken = common::fill(&sim, &source, &pad).await;
            stop.shutdown();
            let got = common::numbers(&mut peer, None).await;
            assert_eq!(got, (0..taken).collect::<Vec<_>>());
            drop(peer);
            run.await.unwrap();
            assert_eq!(source.undelivered_notifications(), 0);
        }
    });
}

/// Dropping the `run()` future (cancellation) is not a graceful stop, but nothing accepted
/// vanishes without a word: the handles say the connector stopped, and every notification
/// that was accepted and never written is counted and logged.
#[test]
fn cancellation_counts_what_it_could_not_deliver() {
    let (logs, _guard) = Logs::capture(tracing::Level::WARN);
    let sim = SimRuntime::with_options(8 * 1024, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let mut set = common::set(&sim, "");
    set.transport_options().write_buffer_size = 0;
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut peer = common::session(&server, &source).await;
            // The server stops reading; the connector takes all it can, then is cancelled.
            let accepted = common::fill(&sim, &source, &"c".repeat(200)).await;
            assert!(accepted > 100, "only {accepted} taken");
            drop(run);
            drop(stop);
            source.wait_change(ConnectionState::Configured).await;
            assert_eq!(source.state(), ConnectionState::Closed);
            assert!(source.wait_configured().await.is_err());
            let received = common::numbers(&mut peer, None).await;
            assert_eq!(
                received,
                (0..received.len() as u64).collect::<Vec<_>>(),
                "a prefix, in order"
            );
            let undelivered = source.undelivered_notifications();
            assert!(undelivered > 0);
            // Received, or counted, or the one frame the transport held when it was dropped.
            let lost = accepted - received.len() as u64 - undelivered;
            assert!(lost <= 1, "{lost} notifications vanished without a word");
            let text = logs.text();
            assert!(
                text.contains(&format!("undelivered={undelivered}")),
                "no warning with the count: {text}"
            );
        }
    });
}
