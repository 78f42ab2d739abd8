//! The driver on an in-memory transport (`vantiq_fuzz::mem`): the real driver runs over a
//! pipe whose server end these tests play, so they know exactly which bytes reached the
//! socket and can stop a peer from reading, which loopback TCP makes slow and imprecise.
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

use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt as _;
use serde_json::json;
use vantiq_connector::{ConnectorSet, ServerConfig, TryNotifyError};
use vantiq_fuzz::mem::{Duplex, MemRuntime};
use vantiq_proto::Json;
use vantiq_proto::frame::ClientFrame;

/// Bytes each direction of a pipe holds.
const PIPE: usize = 16 * 1024;

async fn handshake(pipe: Duplex) -> WebSocketStream<Duplex> {
    let mut ws = async_tungstenite::accept_async(pipe).await.unwrap();
    let _validate = ws.next().await.unwrap().unwrap();
    ws.send(Message::text(
        r#"{"status":200,"body":{"anonymous":false}}"#,
    ))
    .await
    .unwrap();
    let _connect = ws.next().await.unwrap().unwrap();
    ws.send(Message::text(
        r#"{"op":"configureExtension","resourceName":"sources","resourceId":"s1","object":{"config":{}}}"#,
    ))
    .await
    .unwrap();
    ws
}

/// Collects the numbers of the notifications that arrive on `ws` into `got`: until it ends,
/// or, with `until`, until there are that many.
async fn notifications(ws: &mut WebSocketStream<Duplex>, got: &mut Vec<u64>, until: Option<usize>) {
    while until.is_none_or(|n| got.len() < n) {
        let Some(Ok(msg)) = ws.next().await else {
            break;
        };
        if let Ok(ClientFrame::Notification { object, .. }) = ClientFrame::decode(&msg.into_data())
        {
            got.push(object.to_value().unwrap()["n"].as_u64().unwrap());
        }
    }
}

async fn sleep(ms: u64) {
    async_io::Timer::after(Duration::from_millis(ms)).await;
}

/// Hands notifications over until the SDK has taken all it can without waiting, for
/// 100 ms in a row. Returns how many it took.
async fn fill(source: &vantiq_connector::Source, pad: &str) -> u64 {
    let mut handed = 0u64;
    let mut refused_since = None;
    loop {
        match source.try_notify(&json!({ "n": handed, "pad": pad })) {
            Ok(()) => {
                handed += 1;
                refused_since = None;
            }
            Err(TryNotifyError::Full(_)) => {
                let since = *refused_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_millis(100) {
                    return handed;
                }
                sleep(5).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Fills the SDK as the server stops reading, resets the socket, and checks that every
/// notification handed over is on the wire of the failed socket, delivered on the next
/// session, or in the WebSocket layer's write buffer when the socket failed.
/// `write_buffer` sets that buffer's size (`None`: the default).
fn held_notifications_survive_a_reset(write_buffer: Option<usize>) {
    smol::block_on(async {
        let (runtime, accepts) = MemRuntime::new(PIPE);
        let config = ServerConfig::parse(
            "targetServer=http://mem.invalid:8080\nauthToken=T\nsources=s1\ntcpProbePort=0\n",
            "held/server.config",
            |_| None,
        )
        .unwrap();
        let mut set = ConnectorSet::with_runtime(runtime, config).connection_config(|c| {
            c.keepalive = None;
            c.backoff.initial = Duration::from_millis(5);
            c.backoff.max = Duration::from_millis(20);
        });
        if let Some(bytes) = write_buffer {
            set.transport_options().write_buffer_size = bytes;
        }
        let source = set.source("s1").unwrap();
        let stop = set.shutdown_handle();
        let run = smol::spawn(set.run());

        let pipe = accepts.recv().await.unwrap();
        // The server end's handle on the pipe.
        let socket = pipe.control();
        let mut first = handshake(pipe).await;
        source.wait_configured().await.unwrap();

        // The server stops reading: the pipe fills, then the WebSocket layer's buffer, then
        // the driver's queue, then the channel.
        let pad = "x".repeat(100);
        let handed = fill(&source, &pad).await;
        let frame_len = 40 + pad.len() as u64;
        assert!(
            handed * frame_len > 2 * PIPE as u64,
            "only {handed} notifications were taken"
        );

        // The link fails (a reset).
        socket.fail_peer(std::io::ErrorKind::ConnectionReset);
        let mut on_wire = Vec::new();
        notifications(&mut first, &mut on_wire, None).await;
        let written = socket.bytes_received();
        let mut second = handshake(accepts.recv().await.unwrap()).await;
        let rest = handed as usize - on_wire.len();
        let mut after = Vec::new();
        smol::future::or(
            notifications(&mut second, &mut after, Some(rest)),
            sleep(2_000),
        )
        .await;

        // On the wire of the first socket: a prefix, in order.
        let n = on_wire.len() as u64;
        assert_eq!(on_wire, (0..n).collect::<Vec<_>>());
        // Everything else on the second, in order, once, except what the WebSocket layer
        // held: one run right after the wire's last frame, within the write buffer (which
        // fills to its size plus one frame before writing), plus one frame half written.
        let missing: Vec<u64> = (n..handed).filter(|k| !after.contains(k)).collect();
        let buffer = write_buffer
            .unwrap_or_else(|| vantiq_connector::TransportOptions::default().write_buffer_size);
        // The smallest notification on the wire: the frame for n = 0 plus a 2-byte header,
        // 2-byte length and 4-byte mask.
        let smallest = ClientFrame::Notification {
            source: "s1".into(),
            object: Json::from_serialize(&json!({ "n": 0, "pad": pad })).unwrap(),
        };
        let wire_len = smallest.encode().len() as u64 + 8;
        let in_buffer = buffer as u64 / wire_len + 2;
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
            "{} notifications held when the socket failed were never sent (at most {in_buffer} \
             in the write buffer of {buffer} bytes, right after {n})",
            missing.len()
        );
        assert!(after.windows(2).all(|w| w[0] < w[1]), "out of order");

        stop.shutdown();
        // Serve the close.
        smol::future::or(async { while second.next().await.is_some() {} }, async {
            run.await.unwrap();
        })
        .await;
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
    smol::block_on(async {
        let (runtime, accepts) = MemRuntime::new(8 * 1024);
        let config = ServerConfig::parse(
            "targetServer=http://mem.invalid:8080\nauthToken=T\nsources=s1\ntcpProbePort=0\n",
            "dead/server.config",
            |_| None,
        )
        .unwrap();
        let set = ConnectorSet::with_runtime(runtime, config)
            .handler(vantiq_connector::echo::Echo::without_health())
            .connection_config(|c| {
                c.keepalive = Some(vantiq_connector::KeepAlive::new(
                    Duration::from_millis(50),
                    Duration::from_millis(100),
                ));
                c.backoff.initial = Duration::from_millis(5);
                c.backoff.max = Duration::from_millis(20);
                c.close_timeout = Duration::from_millis(100);
            });
        let source = set.source("s1").unwrap();
        let stop = set.shutdown_handle();
        let run = smol::spawn(set.run());

        let mut first = handshake(accepts.recv().await.unwrap()).await;
        source.wait_configured().await.unwrap();
        // A burst of publishes, each echoed with a 1 KiB notification, written for as long
        // as the connector reads; then the server goes silent and reads nothing.
        let blob = "b".repeat(1024);
        let burst = smol::spawn(async move {
            for n in 0..1_000 {
                let publish = format!(
                    r#"{{"op":"publish","resourceId":"s1","object":{{"n":{n},"blob":"{blob}"}}}}"#
                );
                if first.send(Message::text(publish)).await.is_err() {
                    break;
                }
            }
            // Keep the socket open, silent.
            std::future::pending::<()>().await;
        });
        // The keep-alive (50 ms + 100 ms) must notice; allow a generous 5 s.
        let silent = std::time::Instant::now();
        let reconnected = smol::future::or(async { accepts.recv().await.ok() }, async {
            sleep(5_000).await;
            None
        })
        .await;
        assert!(
            reconnected.is_some(),
            "the connector kept the dead link for 5 s (state {:?})",
            source.state()
        );
        eprintln!(
            "the dead link was given up after {} ms",
            silent.elapsed().as_millis()
        );
        drop(burst);
        stop.shutdown();
        drop(reconnected);
        run.await.unwrap();
    });
}
