//! The driver on the in-memory transport of `SimRuntime`, against the sans-IO server
//! (`SimServer`): the tests know exactly which bytes reached the socket and can stop the
//! server from reading, which loopback TCP makes slow and imprecise. Time is virtual.
//!
//! * `frames_queued_for_a_failed_socket_are_not_lost` and
//!   `only_the_websocket_write_buffer_is_in_flight_at_a_reset`: the server stops reading, so
//!   the socket's buffer fills, then the WebSocket layer's write buffer, then the driver's
//!   queue of frames to write, then the source's channel (`try_notify` reports it full).
//!   Then the socket is reset. Every notification the SDK still held (its queue, the
//!   channel) must be delivered, in order and once, on the next session. What was handed to
//!   the transport is in flight: on the wire of the failed socket, or in the WebSocket
//!   layer's write buffer (like the kernel's send buffer, nothing tells whether the server
//!   got it; the protocol has no acknowledgement). The second test bounds that: the frames
//!   missing are one run right after the last one on the wire, no more bytes than the write
//!   buffer holds.
//! * `a_dead_link_is_detected_while_the_handler_is_behind`: the server sends a burst of
//!   publishes, then neither reads nor writes (a route that died). The echo handler blocks on
//!   `notify` (nothing can be written), 64 publishes wait, the driver stops reading for
//!   back-pressure. The keep-alive must still find the link dead and reconnect.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::SOURCE;
use serde_json::json;
use vantiq_connector::test_util::SimRuntime;
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector::{Json, KeepAlive, Runtime as _, TransportOptions};
use vantiq_proto::frame::ClientFrame;

/// Bytes each direction of a pipe holds.
const PIPE: usize = 16 * 1024;

/// Fills the SDK as the server stops reading, resets the socket, and checks that every
/// notification handed over is on the wire of the failed socket, delivered on the next
/// session, or in the WebSocket layer's write buffer when the socket failed.
/// `write_buffer` sets that buffer's size (`None`: the default).
fn held_notifications_survive_a_reset(write_buffer: Option<usize>) {
    let sim = SimRuntime::with_options(PIPE, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let mut set = common::set(&sim, "sendPings=false");
    if let Some(bytes) = write_buffer {
        set.transport_options().write_buffer_size = bytes;
    }
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut first = common::session(&server, &source).await;

            // The server stops reading: the pipe fills, then the WebSocket layer's buffer,
            // then the driver's queue, then the channel.
            let pad = "x".repeat(100);
            let handed = common::fill(&sim, &source, &pad).await;
            let frame_len = 40 + pad.len() as u64;
            assert!(
                handed * frame_len > 2 * PIPE as u64,
                "only {handed} notifications were taken"
            );

            // The link fails (a reset).
            first.pipe().fail_peer(std::io::ErrorKind::ConnectionReset);
            let on_wire = common::numbers(&mut first, None).await;
            let written = first.pipe().bytes_received();
            let mut second = common::session(&server, &source).await;
            // A graceful stop flushes everything queued, then closes.
            stop.shutdown();
            let after = common::numbers(&mut second, None).await;
            run.await.unwrap();

            // On the wire of the first socket: a prefix, in order.
            let n = on_wire.len() as u64;
            assert_eq!(on_wire, (0..n).collect::<Vec<_>>());
            // Everything else on the second, in order, once, except what the WebSocket layer
            // held: one run right after the wire's last frame, within the write buffer (which
            // fills to its size plus one frame before writing), plus one frame half written.
            let missing: Vec<u64> = (n..handed).filter(|k| !after.contains(k)).collect();
            let buffer =
                write_buffer.unwrap_or_else(|| TransportOptions::default().write_buffer_size);
            // The smallest notification on the wire: the frame for n = 0 plus a 2-byte
            // header, 2-byte length and 4-byte mask.
            let smallest = ClientFrame::Notification {
                source: SOURCE.into(),
                object: Json::from_serialize(&json!({ "n": 0, "pad": pad })).unwrap(),
            };
            let wire_len = smallest.encode().len() as u64 + 8;
            // With no buffer, at most the one frame being written is in flight.
            let in_buffer = match buffer {
                0 => 1,
                _ => buffer as u64 / wire_len + 2,
            };
            eprintln!(
                "handed over {handed}; on the wire of the failed socket {n} ({written} bytes); \
                 delivered on the next session {}; missing {} ({:?}…)",
                after.len(),
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            );
            assert!(
                missing.len() as u64 <= in_buffer
                    && missing.iter().copied().eq(n..n + missing.len() as u64),
                "{} notifications held when the socket failed were never sent (at most \
                 {in_buffer} in the write buffer of {buffer} bytes, right after {n})",
                missing.len()
            );
            assert!(
                after.windows(2).all(|w| w[0] < w[1]),
                "out of order or duplicated"
            );
            assert_eq!(source.undelivered_notifications(), 0);
        }
    });
}

/// With no WebSocket write buffer (the layer holds at most the one frame the socket could
/// not take), what the SDK holds is its queue of frames to write.
#[test]
fn frames_queued_for_a_failed_socket_are_not_lost() {
    held_notifications_survive_a_reset(Some(0));
}

/// With the default 16 KiB write buffer, the WebSocket layer also holds frames the socket
/// has not taken; they are in flight, as if in the kernel's buffer, and die with the socket.
/// Everything behind them survives.
#[test]
fn only_the_websocket_write_buffer_is_in_flight_at_a_reset() {
    held_notifications_survive_a_reset(None);
}

#[test]
fn a_dead_link_is_detected_while_the_handler_is_behind() {
    let sim = SimRuntime::with_options(8 * 1024, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let set = common::set(&sim, "")
        .handler(Echo::without_health())
        .connection_config(|c| {
            c.keepalive = Some(KeepAlive::new(
                Duration::from_millis(50),
                Duration::from_millis(100),
            ));
            c.close_timeout = Duration::from_millis(100);
            c.backoff.initial = Duration::from_millis(5);
            c.backoff.max = Duration::from_millis(20);
        });
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut first = common::session(&server, &source).await;
            // A burst of publishes, each echoed with a 1 KiB notification, written for as
            // long as the connector reads; then the server goes silent and reads nothing.
            let blob = "b".repeat(1024);
            let burst = sim.spawn_task(async move {
                for n in 0..1_000 {
                    let publish = common::json(&format!(r#"{{"n":{n},"blob":"{blob}"}}"#));
                    if first.publish(publish).await.is_err() {
                        break;
                    }
                }
                // Keep the socket open, silent.
                std::future::pending::<()>().await;
            });
            let silent = sim.now();
            let reconnected = sim.timeout(Duration::from_secs(5), server.accept()).await;
            assert!(
                reconnected.is_some(),
                "the connector kept the dead link for 5 s (state {:?})",
                source.state()
            );
            let after = sim.now() - silent;
            eprintln!("the dead link was given up after {after:?}");
            // A ping interval, the pong deadline, and the back-off (at most 20 ms).
            assert!(
                after <= Duration::from_millis(170),
                "given up after {after:?}"
            );
            drop(burst);
            stop.shutdown();
            drop(reconnected);
            run.await.unwrap();
        }
    });
}
