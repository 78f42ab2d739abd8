//! The simulation's server (`test_util::SimServer`, `SimPeer`): what it adds to the sans-IO
//! server machine — reading while writing, reads bounded in virtual time, takeovers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use common::SOURCE;
use vantiq_connector::Runtime as _;
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector::test_util::{PeerError, SimRuntime};
use vantiq_proto::frame::ClientFrame;
use vantiq_proto::server::{RegistryEvent, ServerError};

/// The number `n` of a `{"n": …}` notification.
fn number(msg: &Message) -> Option<u64> {
    match ClientFrame::decode(&msg.clone().into_data()) {
        Ok(ClientFrame::Notification { object, .. }) => object.to_value().unwrap()["n"].as_u64(),
        _ => None,
    }
}

/// A burst the connector echoes through a 1 KiB pipe: a server that does not read while it
/// writes would wait for the write timeout; one that does writes it all at once, and hands
/// out the echoes it read meanwhile, in order.
#[test]
fn reading_while_writing_takes_echoes_as_the_burst_goes_out() {
    const TOTAL: u64 = 200;
    let sim = SimRuntime::with_options(1024, Duration::from_secs(3_600));
    let server = common::server(&sim);
    let set = common::set(&sim, "sendPings=false").handler(Echo::without_health());
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut peer = common::session(&server, &source).await;
            peer.set_read_while_writing(true);
            let start = sim.now();
            let pad = "e".repeat(512);
            for n in 0..TOTAL {
                let publish = common::json(&format!(r#"{{"n":{n},"pad":"{pad}"}}"#));
                peer.publish(publish).await.unwrap();
            }
            assert_eq!(
                sim.now() - start,
                Duration::ZERO,
                "no write waited for a timeout"
            );
            let mut echoes = Vec::new();
            while (echoes.len() as u64) < TOTAL {
                let msg = peer.next_message().await.unwrap();
                echoes.extend(number(&msg));
            }
            assert_eq!(echoes, (0..TOTAL).collect::<Vec<_>>());
            stop.shutdown();
            assert!(peer.next_frame().await.is_none());
            run.await.unwrap();
        }
    });
}

/// `next_message_within` waits exactly its bound of virtual time for a quiet connector, and
/// hands out the next message when one comes.
#[test]
fn a_bounded_read_gives_up_on_a_quiet_connector() {
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    let set = common::set(&sim, "sendPings=false");
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on({
        let sim = sim.clone();
        async move {
            let mut peer = common::session(&server, &source).await;
            let start = sim.now();
            assert!(
                peer.next_message_within(Duration::from_secs(1))
                    .await
                    .is_none()
            );
            assert_eq!(sim.now() - start, Duration::from_secs(1));
            source.notify(&serde_json::json!({"n": 7})).await.unwrap();
            let msg = peer.next_message_within(Duration::from_secs(1)).await;
            assert_eq!(msg.flatten().as_ref().and_then(number), Some(7));
            stop.shutdown();
            assert!(matches!(
                peer.next_message_within(Duration::from_secs(1)).await,
                Some(Some(Message::Close(_)))
            ));
            run.await.unwrap();
        }
    });
}

/// The connector reconnects while the server never learned that the first socket died: the
/// second connection takes the source over with the same secret, and the first one, told so
/// by the registry, drops its socket the next time it is used.
#[test]
fn a_takeover_drops_the_displaced_socket() {
    let sim = SimRuntime::new();
    let server = common::server(&sim);
    let set = common::set(&sim, "sendPings=false");
    let common::Running { source, stop, run } = common::start(&sim, set);
    sim.block_on(async move {
        let mut first = common::session(&server, &source).await;
        // The connector's end fails; the server does not read, so it does not notice.
        first.pipe().fail_peer(std::io::ErrorKind::ConnectionReset);
        let second = server.session().await.unwrap();
        assert!(second.is_configured());
        assert!(
            server
                .registry_events()
                .contains(&RegistryEvent::Displaced {
                    connection: first.id(),
                    source: SOURCE.into(),
                    by: second.id(),
                })
        );
        assert!(!first.is_ended());
        match first.publish(common::json("{}")).await {
            Err(PeerError::Server(ServerError::Closed { connection })) => {
                assert_eq!(connection, first.id());
            }
            other => panic!("{other:?}"),
        }
        assert!(first.is_ended());
        assert!(first.connection().is_closed());
        stop.shutdown();
        drop(second);
        run.await.unwrap();
    });
}
