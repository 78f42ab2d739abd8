//! Scenarios on the deterministic simulation: a whole connector life in virtual time, the
//! client `Connection` paired with the sans-IO server (`vantiq_proto::testing::Pair`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use vantiq_proto::frame::{ClientFrame, QueryReply, ServerFrame};
use vantiq_proto::server::ConnectOutcome;
use vantiq_proto::testing::{Pair as Sim, SOURCE, TOKEN, json, test_config as config};
use vantiq_proto::{
    ConnectionState, DisconnectReason, Event, Failure, FatalError, FrameError, Json, KeepAlive,
    NotifyRefused, QueryError, Reply, ReplyError, Status, Transmit,
};

const SEC: Duration = Duration::from_secs(1);

fn configured(sim: &mut Sim) {
    sim.run_until_pred(5 * SEC, "configuration", Sim::is_configured);
}

#[test]
fn full_session_frame_by_frame() {
    let mut options = Sim::server_options();
    options.status_before_configure = true;
    let mut sim = Sim::with_options(config(1), options);
    configured(&mut sim);
    assert_eq!(
        sim.received(),
        vec![
            ClientFrame::Validate {
                token: Some(TOKEN.into())
            },
            ClientFrame::ConnectExtension {
                source: SOURCE.into(),
                reconnect_secret: Some(format!("{SOURCE}_secret"))
            }
        ]
    );
    assert_eq!(
        sim.client_events(),
        vec![Event::Configured {
            config: json(r#"{"rate":1}"#)
        }]
    );

    // publish → event
    sim.server_publish(r#"{"hello":"world"}"#).unwrap();
    sim.run_for(SEC);
    assert_eq!(
        sim.client_events().last(),
        Some(&Event::Publish {
            object: json(r#"{"hello":"world"}"#)
        })
    );

    // query → partial, partial, final
    let addr = sim.server_query(r#"{"bundleFactor":2}"#).unwrap();
    sim.run_for(SEC);
    let Some(Event::Query { id, params, .. }) = sim.client_events().last().cloned() else {
        panic!("no query event")
    };
    assert_eq!(params, json(r#"{"bundleFactor":2}"#));
    assert_eq!(id.session(), 1);
    sim.client
        .respond(id, Reply::Partial(json(r#"[{"id":1},{"id":2}]"#)))
        .unwrap();
    sim.client
        .respond(id, Reply::Partial(json(r#"[{"id":3},{"id":4}]"#)))
        .unwrap();
    sim.client
        .respond(id, Reply::Complete(json(r#"[{"id":5}]"#)))
        .unwrap();
    assert_eq!(
        sim.client.respond(id, Reply::Empty),
        Err(ReplyError::QueryFinished)
    );
    sim.drain();
    sim.run_for(SEC);
    let rows = |s: u16, b: &str| QueryReply {
        status: Status(i64::from(s)),
        reply_address: addr.clone(),
        body: Some(json(b)),
    };
    assert_eq!(
        sim.replies(),
        vec![
            rows(100, r#"[{"id":1},{"id":2}]"#),
            rows(100, r#"[{"id":3},{"id":4}]"#),
            rows(200, r#"[{"id":5}]"#),
        ]
    );

    // notification (acked; acks are ignored)
    sim.client.notify(json(r#"{"temp":21.5}"#)).unwrap();
    sim.drain();
    sim.run_for(SEC);
    assert_eq!(sim.notifications(), vec![json(r#"{"temp":21.5}"#)]);
    assert!(sim.frame_errors.is_empty(), "{:?}", sim.frame_errors);

    // graceful close
    sim.client.close(sim.now);
    sim.drain();
    assert_eq!(
        sim.transmits.last().map(|(_, t)| t.clone()),
        Some(Transmit::Close {
            code: 1000,
            reason: "Closed by client"
        })
    );
    let ev = sim.client_events();
    assert_eq!(
        &ev[ev.len() - 2..],
        &[
            Event::Disconnected {
                reason: DisconnectReason::Shutdown
            },
            Event::Closed {
                error: None,
                undelivered: 0
            }
        ]
    );
    assert_eq!(sim.client.poll_timeout(), None);
    let before = sim.transmits.len();
    sim.run_for(60 * SEC);
    assert_eq!(sim.transmits.len(), before, "nothing after Closed");
    assert_eq!(sim.client.stats().connect_attempts, 1);
}

#[test]
fn auth_rejected_is_fatal_with_details() {
    let mut options = Sim::server_options();
    options.token = Some("another-token".into());
    let mut sim = Sim::with_options(config(2), options);
    sim.run_for(10 * 60 * SEC);
    assert_eq!(
        sim.client_events(),
        vec![Event::Closed {
            error: Some(FatalError::AuthRejected {
                status: Status(401),
                code: Some("io.vantiq.authentication.failed".into()),
                message: Some(
                    "Authentication failed: the credentials are invalid or have expired.".into()
                ),
            }),
            undelivered: 0
        }]
    );
    assert_eq!(sim.client.stats().connect_attempts, 1);
    assert_eq!(sim.auth_attempts(), 1);
    assert_eq!(sim.client.state(), ConnectionState::Failed);
    assert!(matches!(
        sim.transmits.last(),
        Some((_, Transmit::Close { code: 1000, .. }))
    ));
    let e = FatalError::AuthRejected {
        status: Status(401),
        code: Some("c".into()),
        message: Some("m".into()),
    };
    assert_eq!(
        e.to_string(),
        "authentication rejected by the server: status 401, c: m"
    );
}

#[test]
fn connect_refused_five_times_then_accepted() {
    let mut sim = Sim::new(config(3));
    sim.registry.refuse_connects(SOURCE, 5);
    sim.run_until_pred(60 * SEC, "configuration after refusals", Sim::is_configured);
    assert_eq!(sim.connect_attempts().len(), 6);
    assert_eq!(
        sim.connect_attempts().last().map(|(_, o)| *o),
        Some(ConnectOutcome::Accepted)
    );
    assert_eq!(sim.client.stats().connect_attempts, 6);
    // Every retry waited: never a hot loop, and ceilings double (0.5, 1, 2, 4, 8 s).
    let gaps: Vec<Duration> = sim.connect_times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.len(), 5);
    for (i, g) in gaps.iter().enumerate() {
        let ceiling = Duration::from_millis(500 << i);
        assert!(*g >= Duration::from_millis(10), "gap {i} = {g:?}");
        // connect + auth + refusal take 4 one-way trips of 5 ms before the wait starts.
        assert!(
            *g <= ceiling + Duration::from_millis(20),
            "gap {i} = {g:?} > {ceiling:?}"
        );
    }
    // The same secret every time.
    assert!(
        sim.connect_attempts()
            .iter()
            .all(|(s, _)| s.as_deref() == Some("S1_secret"))
    );
    match sim.client.last_failure() {
        Some(Failure::Refused {
            status, message, ..
        }) => {
            assert_eq!(*status, Status(400));
            assert!(
                message
                    .as_deref()
                    .unwrap()
                    .contains("does not have an associated stream")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reconnect_required_reattaches_on_the_same_socket() {
    let mut sim = Sim::new(config(4));
    configured(&mut sim);
    let addr = sim.server_query("{}").unwrap();
    sim.run_for(SEC);
    let Some(Event::Query { id, .. }) = sim.client_events().last().cloned() else {
        panic!()
    };
    sim.server_reconnect_required(r#"{"rate":2}"#).unwrap();
    sim.run_until_pred(5 * SEC, "second configuration", |s| {
        s.client.stats().sessions == 2
    });
    assert_eq!(
        sim.count_transmits(|t| matches!(t, Transmit::Connect { .. })),
        1
    );
    assert_eq!(sim.auth_attempts(), 1, "no second authentication");
    assert_eq!(
        sim.connect_attempts(),
        [
            (Some("S1_secret".to_owned()), ConnectOutcome::Accepted),
            (Some("S1_secret".to_owned()), ConnectOutcome::Accepted)
        ]
    );
    let ev = sim.client_events();
    assert_eq!(
        &ev[ev.len() - 2..],
        &[
            Event::Disconnected {
                reason: DisconnectReason::ReconnectRequired
            },
            Event::Configured {
                config: json(r#"{"rate":2}"#)
            }
        ]
    );
    // The old session's query can no longer be answered.
    let sent = sim.transmits.len();
    assert_eq!(
        sim.client.respond(id, Reply::Empty),
        Err(ReplyError::SessionEnded)
    );
    sim.drain();
    assert_eq!(sim.transmits.len(), sent);
    assert!(sim.replies().iter().all(|r| r.reply_address != addr));
}

#[test]
fn socket_dropped_mid_query() {
    let mut sim = Sim::new(config(5));
    configured(&mut sim);
    sim.server_query(r#"{"q":1}"#).unwrap();
    sim.run_for(SEC);
    let Some(Event::Query { id, .. }) = sim.client_events().last().cloned() else {
        panic!()
    };
    sim.client
        .respond(id, Reply::Partial(json(r#"{"a":1}"#)))
        .unwrap();
    sim.drain();
    sim.drop_socket();
    sim.run_until_pred(SEC, "disconnect", |s| !s.is_configured());
    assert!(matches!(
        sim.client_events().last(),
        Some(Event::Disconnected {
            reason: DisconnectReason::Failure(Failure::SocketError(_))
        })
    ));
    let sent = sim.transmits.len();
    assert_eq!(
        sim.client.respond(id, Reply::Complete(json("[]"))),
        Err(ReplyError::SessionEnded)
    );
    assert_eq!(
        sim.transmits.len(),
        sent,
        "nothing transmitted for a stale id"
    );
    // After a stable session, the first reconnect waits at most the initial ceiling.
    configured(&mut sim);
    assert_eq!(sim.client.stats().sessions, 2);
    // A new query in the new session works; ids of the old one stay refused.
    sim.server_query(r#"{"q":2}"#).unwrap();
    sim.run_for(SEC);
    let Some(Event::Query { id: id2, .. }) = sim.client_events().last().cloned() else {
        panic!()
    };
    assert_eq!(id2.session(), 2);
    sim.client.respond(id2, Reply::Empty).unwrap();
    assert_eq!(
        sim.client.respond(id, Reply::Empty),
        Err(ReplyError::SessionEnded)
    );
}

/// A server that drops every session right after configuring it: the number of attempts
/// over 60 s must grow logarithmically (exponential ceilings), not linearly.
#[test]
fn flapping_server_is_not_hammered() {
    for seed in [1u64, 7, 42, 1234, 99_999] {
        let mut sim = Sim::new(config(seed));
        sim.registry.set_flapping(SOURCE, true);
        sim.run_for(60 * SEC);
        let attempts = sim.connect_times.len();
        // Ceilings 0.5, 1, 2, 4, 8, 16, 30, 30 …: expected ~9 attempts in 60 s. Python's
        // linear 0.5·n back-off (reset after each clean pass) would reconnect at once, forever.
        assert!(
            (5..=13).contains(&attempts),
            "seed {seed}: {attempts} attempts in 60 s"
        );
        // Sessions were configured each time, yet the failure count never reset.
        assert_eq!(sim.client.stats().sessions as usize, attempts);
        assert!(sim.client.stats().consecutive_failures as usize >= attempts - 1);
        let gaps: Vec<f64> = sim
            .connect_times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        let first_half: f64 = gaps[..gaps.len() / 2].iter().sum();
        let second_half: f64 = gaps[gaps.len() / 2..].iter().sum();
        assert!(second_half > first_half, "seed {seed}: gaps {gaps:?}");
    }
}

/// A 10-minute outage: every wait stays under the 30 s cap, and the connector is back within
/// one cap of the server's return.
#[test]
fn ten_minute_outage() {
    let mut sim = Sim::new(config(6));
    configured(&mut sim);
    sim.run_for(15 * SEC); // a stable session
    sim.server_up = false;
    sim.drop_socket();
    let outage_start = sim.now;
    sim.run_for(600 * SEC);
    let back = sim.now;
    sim.server_up = true;
    sim.run_until_pred(
        31 * SEC + 100 * sim.latency,
        "reconnection after the outage",
        Sim::is_configured,
    );
    let during: Vec<_> = sim
        .connect_times
        .iter()
        .filter(|t| **t >= outage_start)
        .copied()
        .collect();
    for w in during.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap <= 30 * SEC + 10 * sim.latency, "gap {gap:?}");
    }
    // Capped, not growing without bound (Python: 0.5 s × n, unbounded): over 10 minutes at
    // an average of 15 s per attempt, roughly 40 attempts.
    assert!(during.len() >= 20, "{} attempts", during.len());
    assert!(sim.now - back <= 30 * SEC + 10 * sim.latency);
    assert_eq!(sim.client.stats().sessions, 2);
}

#[test]
fn stable_session_resets_the_failure_count() {
    let mut sim = Sim::new(config(8));
    sim.registry.refuse_connects(SOURCE, 3);
    configured(&mut sim);
    assert_eq!(sim.client.stats().consecutive_failures, 3);
    sim.run_for(11 * SEC);
    sim.drop_socket();
    sim.run_until_pred(SEC, "disconnect", |s| !s.is_configured());
    assert_eq!(sim.client.stats().consecutive_failures, 1);
    let dropped_at = sim.now;
    configured(&mut sim);
    assert!(sim.now - dropped_at <= Duration::from_millis(500) + 10 * sim.latency);
    // A session shorter than the stable period does not reset it.
    sim.registry.refuse_connects(SOURCE, 0);
    sim.run_for(SEC);
    sim.drop_socket();
    sim.run_until_pred(SEC, "disconnect", |s| !s.is_configured());
    assert_eq!(sim.client.stats().consecutive_failures, 2);
}

#[test]
fn keepalive_detects_a_stalled_link() {
    let mut cfg = config(9);
    cfg.keepalive = Some(KeepAlive::new(20 * SEC, 20 * SEC));
    let mut sim = Sim::new(cfg);
    configured(&mut sim);
    // Healthy link: pings are answered, the session stays up for minutes.
    sim.run_for(300 * SEC);
    assert!(sim.is_configured());
    let pings = sim.count_transmits(|t| matches!(t, Transmit::Ping { .. }));
    assert!((14..=15).contains(&pings), "{pings} pings in 300 s");
    // Stall: no data either way, socket open.
    sim.stalled = true;
    let stalled_at = sim.now;
    sim.run_until_pred(60 * SEC, "keep-alive timeout", |s| !s.is_configured());
    let detected = sim.now - stalled_at;
    assert!(
        detected <= 40 * SEC && detected > 20 * SEC,
        "detected after {detected:?}"
    );
    assert!(matches!(sim.transmits.last(), Some((_, Transmit::Abort))));
    assert_eq!(sim.client.last_failure(), Some(&Failure::KeepAliveTimeout));
    sim.stalled = false;
    configured(&mut sim);
}

#[test]
fn no_keepalive_deadline_while_reading_is_paused_for_back_pressure() {
    let mut sim = Sim::new(config(24));
    configured(&mut sim);
    // The application is slow: the driver stops reading, so pongs sit unread.
    sim.client.set_reading_paused(true);
    sim.stalled = true;
    sim.run_for(300 * SEC);
    assert!(sim.is_configured(), "a paused reader is not a dead link");
    assert!(
        sim.count_transmits(|t| matches!(t, Transmit::Ping { .. })) >= 15,
        "pings still go out"
    );
    // Reading again: a link that still answers nothing is detected by the next deadline.
    sim.client.set_reading_paused(false);
    let resumed = sim.now;
    sim.run_until_pred(60 * SEC, "keep-alive timeout", |s| !s.is_configured());
    assert!(sim.now - resumed <= 40 * SEC);
    assert_eq!(sim.client.last_failure(), Some(&Failure::KeepAliveTimeout));
}

#[test]
fn pings_can_be_turned_off() {
    let mut cfg = config(10);
    cfg.keepalive = None;
    let mut sim = Sim::new(cfg);
    configured(&mut sim);
    sim.run_for(600 * SEC);
    assert_eq!(
        sim.count_transmits(|t| matches!(t, Transmit::Ping { .. })),
        0
    );
    assert_eq!(sim.client.poll_timeout(), None);
}

#[test]
fn handshake_timeout_when_the_server_is_mute() {
    let mut sim = Sim::new(config(11));
    sim.server_deaf = true;
    sim.run_until_pred(25 * SEC, "handshake timeout", |s| {
        s.client.last_failure().is_some()
    });
    assert_eq!(
        sim.client.last_failure(),
        Some(&Failure::HandshakeTimeout {
            stage: "authenticating"
        })
    );
    assert!(sim.now - sim.epoch >= 20 * SEC && sim.now - sim.epoch < 21 * SEC);
    assert!(matches!(sim.transmits.last(), Some((_, Transmit::Abort))));
    sim.server_deaf = false;
    sim.run_until_pred(5 * SEC, "configuration", Sim::is_configured);
}

#[test]
fn server_down_at_start_then_up() {
    let mut sim = Sim::new(config(12));
    sim.server_up = false;
    // The first connect was already asked for; it fails, as do the retries.
    sim.run_for(20 * SEC);
    assert!(sim.connect_times.len() >= 3);
    assert!(matches!(
        sim.client.last_failure(),
        Some(Failure::ConnectFailed(_))
    ));
    assert!(
        sim.events.is_empty(),
        "no session, so no Disconnected events"
    );
    sim.server_up = true;
    sim.run_until_pred(31 * SEC, "configuration", Sim::is_configured);
}

#[test]
fn notifications_queue_while_disconnected_and_flush_in_order() {
    let mut cfg = config(13);
    cfg.limits.offline_notifications = 3;
    let mut sim = Sim::new(cfg);
    // Not configured yet: these wait.
    for i in 0..3 {
        sim.client.notify(json(&format!(r#"{{"n":{i}}}"#))).unwrap();
    }
    assert!(!sim.client.can_notify());
    match sim.client.notify(json(r#"{"n":3}"#)) {
        Err(NotifyRefused::QueueFull(j)) => assert_eq!(j, json(r#"{"n":3}"#)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        sim.client.notify(json("[1]")),
        Err(NotifyRefused::NotAnObject(_))
    ));
    configured(&mut sim);
    sim.client.notify(json(r#"{"n":3}"#)).unwrap();
    sim.drain();
    sim.run_for(SEC);
    assert_eq!(
        sim.notifications(),
        (0..4)
            .map(|i| json(&format!(r#"{{"n":{i}}}"#)))
            .collect::<Vec<_>>()
    );
    // Disconnected again: queue, then flush after the reconnect, still in order.
    sim.drop_socket();
    sim.run_until_pred(SEC, "disconnect", |s| !s.is_configured());
    for i in 4..7 {
        sim.client.notify(json(&format!(r#"{{"n":{i}}}"#))).unwrap();
    }
    configured(&mut sim);
    sim.run_for(SEC);
    assert_eq!(
        sim.notifications(),
        (0..7)
            .map(|i| json(&format!(r#"{{"n":{i}}}"#)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn notifications_never_written_to_a_failed_socket_are_sent_in_the_next_session() {
    let mut cfg = config(31);
    cfg.limits.offline_notifications = 2;
    let mut sim = Sim::new(cfg);
    configured(&mut sim);
    for i in 0..4 {
        sim.client.notify(json(&format!(r#"{{"n":{i}}}"#))).unwrap();
    }
    // The runtime takes one frame and writes it to the socket (it is lost with the socket:
    // it was on its way); the socket fails before the runtime could take the other three.
    assert!(matches!(
        sim.client.poll_transmit(true),
        Some(Transmit::Frame(_))
    ));
    assert_eq!(sim.client.queued_notifications(), 3);
    sim.blocked = true;
    sim.drop_socket();
    sim.run_until_pred(SEC, "disconnect", |s| !s.is_configured());
    sim.blocked = false;
    // Back in the queue, past its capacity (they were accepted already): it takes no more.
    assert_eq!(sim.client.queued_notifications(), 3);
    assert_eq!(sim.client.stats().notifications_requeued, 3);
    assert!(!sim.client.can_notify());
    configured(&mut sim);
    sim.client.notify(json(r#"{"n":4}"#)).unwrap();
    sim.run_for(SEC);
    assert_eq!(
        sim.notifications(),
        (1..5)
            .map(|i| json(&format!(r#"{{"n":{i}}}"#)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        sim.count_transmits(|t| matches!(t, Transmit::Frame(f) if f.starts_with(r#"{"status""#))),
        0
    );
}

#[test]
fn close_flushes_queued_notifications_within_the_deadline() {
    let mut sim = Sim::new(config(14));
    sim.server_up = false;
    sim.run_for(2 * SEC);
    sim.client.notify(json(r#"{"last":1}"#)).unwrap();
    // The server is back, but the connection is waiting out its back-off: close() does not
    // wait for it, it connects at once to deliver what is queued.
    sim.server_up = true;
    assert_eq!(sim.client.state(), ConnectionState::WaitingToReconnect);
    let closed_at = sim.now;
    sim.client.close(sim.now);
    sim.drain();
    sim.run_for(10 * SEC);
    let (at, _) = sim.events.last().unwrap();
    assert!(
        *at - closed_at < Duration::from_millis(100),
        "{:?}",
        *at - closed_at
    );
    assert_eq!(sim.notifications(), vec![json(r#"{"last":1}"#)]);
    assert_eq!(
        sim.client_events().last(),
        Some(&Event::Closed {
            error: None,
            undelivered: 0
        })
    );
    // The application never saw that session: it was only for the flush.
    assert!(
        !sim.client_events()
            .iter()
            .any(|e| matches!(e, Event::Configured { .. }))
    );
}

#[test]
fn close_gives_up_after_the_deadline_and_counts_what_was_lost() {
    let mut sim = Sim::new(config(15));
    sim.server_up = false;
    sim.run_for(SEC);
    sim.client.notify(json(r#"{"a":1}"#)).unwrap();
    sim.client.notify(json(r#"{"a":2}"#)).unwrap();
    let closed_at = sim.now;
    sim.client.close(sim.now);
    sim.drain();
    sim.run_for(60 * SEC);
    assert_eq!(
        sim.client_events().last(),
        Some(&Event::Closed {
            error: None,
            undelivered: 2
        })
    );
    let (at, _) = sim.events.last().unwrap();
    assert_eq!(*at - closed_at, 5 * SEC);
    assert!(matches!(
        sim.client.notify(json("{}")),
        Err(NotifyRefused::Closed(_))
    ));
}

#[test]
fn fail_on_connection_error_makes_the_first_failure_fatal() {
    let mut cfg = config(16);
    cfg.fail_on_connection_error = true;
    let mut sim = Sim::new(cfg);
    configured(&mut sim);
    sim.drop_socket();
    sim.run_for(60 * SEC);
    let ev = sim.client_events();
    assert!(
        matches!(
            &ev[..],
            [
                Event::Configured { .. },
                Event::Disconnected {
                    reason: DisconnectReason::Failure(Failure::SocketError(_))
                },
                Event::Closed {
                    error: Some(FatalError::ConnectionFailed(Failure::SocketError(_))),
                    undelivered: 0
                }
            ]
        ),
        "{ev:?}"
    );
    assert_eq!(sim.client.stats().connect_attempts, 1);

    let mut cfg = config(17);
    cfg.fail_on_connection_error = true;
    let mut sim = Sim::new(cfg);
    sim.server_up = false;
    sim.run_for(60 * SEC);
    assert!(matches!(
        sim.client_events()[..],
        [Event::Closed {
            error: Some(FatalError::ConnectionFailed(Failure::ConnectFailed(_))),
            ..
        }]
    ));
}

/// Neither Vantiq SDK checks `resourceId`; dropping a query that names another source would
/// leave its caller waiting for a timeout. Such frames are handled as this source's (with a
/// warning in the log), and a publish without `object` reaches the handler as null.
#[test]
fn frames_naming_another_source_are_handled_and_a_missing_object_is_null() {
    let mut sim = Sim::new(config(32));
    configured(&mut sim);
    sim.server_raw(r#"{"op":"publish","resourceId":"OtherSource","object":{"a":1}}"#)
        .unwrap();
    sim.server_raw(r#"{"op":"publish","resourceId":"S1"}"#)
        .unwrap();
    sim.server_raw(
        r#"{"op":"query","resourceId":"OtherSource","messageHeaders":{"REPLY_ADDR_HEADER":"r7"},"object":{}}"#,
    )
    .unwrap();
    sim.run_for(SEC);
    assert!(sim.frame_errors.is_empty(), "{:?}", sim.frame_errors);
    let events = sim.client_events();
    assert_eq!(
        events[events.len() - 3..events.len() - 1],
        [
            Event::Publish {
                object: json(r#"{"a":1}"#)
            },
            Event::Publish {
                object: Json::null()
            },
        ]
    );
    let Some(Event::Query {
        id, reply_address, ..
    }) = events.last().cloned()
    else {
        panic!("{events:?}")
    };
    assert_eq!(reply_address, "r7");
    sim.client.respond(id, Reply::Empty).unwrap();
    sim.drain();
    sim.run_for(SEC);
    assert_eq!(sim.replies().last().map(|r| r.status.0), Some(204));
}

#[test]
fn bad_frames_are_dropped_and_the_session_goes_on() {
    let mut sim = Sim::new(config(18));
    configured(&mut sim);
    for raw in [
        "not json",
        "[1,2,3]",
        r#"{"op":"testRequestsClientClose"}"#,
        r#"{"op":"configureExtension","resourceId":"S1","object":{"config":{}}}"#,
        r#"{"op":"query","resourceId":"S1","object":{}}"#,
        r#"{"op":42}"#,
        r#"{"status":"bad"}"#,
        r#"{"status":500,"body":[{"code":"io.vantiq.server.error","message":"boom"}]}"#,
    ] {
        sim.server_raw(raw).unwrap();
    }
    sim.server_publish(r#"{"still":"alive"}"#).unwrap();
    sim.run_for(SEC);
    let kinds: Vec<String> = sim
        .frame_errors
        .iter()
        .map(|(_, e)| e.to_string())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "frame is not valid JSON: expected ident at line 1 column 2".to_owned(),
            "frame is JSON but not an object (found an array)".to_owned(),
            "unknown op `testRequestsClientClose`".to_owned(),
            "unexpected configureExtension frame while configured".to_owned(),
            "`query` frame lacks `messageHeaders.REPLY_ADDR_HEADER`".to_owned(),
            "frame field `op` is not a string".to_owned(),
            "frame has neither `op` nor a numeric `status`".to_owned(),
        ]
    );
    assert!(sim.is_configured());
    assert_eq!(
        sim.client_events().last(),
        Some(&Event::Publish {
            object: json(r#"{"still":"alive"}"#)
        })
    );
    assert_eq!(sim.client.stats().frames_rejected, 7);
    assert_eq!(sim.client.stats().connect_attempts, 1);
}

#[test]
fn frames_before_configuration_are_unexpected() {
    let mut sim = Sim::new(config(19));
    sim.server_deaf = true;
    sim.run_for(SEC);
    // Sent by hand: the server itself publishes only to a configured source.
    let publish = ServerFrame::Publish {
        resource_id: Some(SOURCE.into()),
        object: json("{}"),
    };
    sim.server_raw(&publish.encode()).unwrap();
    sim.server_raw(r#"{"op":"reconnectRequired","resourceId":"S1"}"#)
        .unwrap();
    sim.run_for(SEC);
    assert_eq!(
        sim.frame_errors
            .iter()
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>(),
        vec![
            FrameError::Unexpected {
                frame: "publish",
                state: "authenticating"
            },
            FrameError::Unexpected {
                frame: "reconnectRequired",
                state: "authenticating"
            },
        ]
    );
    // With no socket, frames cannot arrive.
    let mut sim = Sim::new(config(20));
    sim.server_up = false;
    sim.run_for(SEC);
    assert_eq!(
        sim.client.handle_frame(sim.now, b"{}"),
        Err(FrameError::NoSocket)
    );
}

/// What a runtime does for a query its application dropped: an error reply, in order after
/// the replies the application sent before. The connection ends the query with it, refuses
/// later replies, and refuses an error for a query that is already finished.
#[test]
fn an_error_reply_ends_a_query_and_a_finished_query_refuses_more() {
    let mut sim = Sim::new(config(21));
    configured(&mut sim);
    let a = sim.server_query("{}").unwrap();
    let b = sim.server_query("{}").unwrap();
    sim.run_for(SEC);
    let ids: Vec<_> = sim
        .client_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Query { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    let err = QueryError::new("app.dropped", "dropped {0}", ["x"]);
    // Query a: one partial reply, then dropped.
    sim.client
        .respond(ids[0], Reply::Partial(json("{}")))
        .unwrap();
    sim.client
        .respond(ids[0], Reply::Error(err.clone()))
        .unwrap();
    assert_eq!(
        sim.client.respond(ids[0], Reply::Partial(json("{}"))),
        Err(ReplyError::QueryFinished)
    );
    // Query b: answered, then dropped: the error is refused, nothing is sent twice.
    sim.client.respond(ids[1], Reply::Empty).unwrap();
    assert_eq!(
        sim.client.respond(ids[1], Reply::Error(err.clone())),
        Err(ReplyError::QueryFinished)
    );
    sim.drain();
    sim.run_for(SEC);
    let summary: Vec<(String, i64)> = sim
        .replies()
        .iter()
        .map(|r| (r.reply_address.clone(), r.status.0))
        .collect();
    assert_eq!(summary, vec![(a.clone(), 100), (a, 400), (b, 204)]);
    assert_eq!(
        sim.replies()[1].body,
        Some(json(
            r#"{"messageCode":"app.dropped","messageTemplate":"dropped {0}","parameters":["x"]}"#
        ))
    );
    assert_eq!(sim.client.open_queries(), 0);
}

#[test]
fn replies_must_be_objects_or_arrays() {
    let mut sim = Sim::new(config(22));
    configured(&mut sim);
    sim.server_query("{}").unwrap();
    sim.run_for(SEC);
    let Some(Event::Query { id, .. }) = sim.client_events().last().cloned() else {
        panic!()
    };
    assert_eq!(
        sim.client.respond(id, Reply::Complete(json("42"))),
        Err(ReplyError::InvalidRows)
    );
    sim.client.respond(id, Reply::Complete(json("{}"))).unwrap();
}

#[test]
fn username_password_authentication() {
    let mut cfg = config(23);
    cfg.credentials = vantiq_proto::Credentials::UserPassword {
        username: "u".into(),
        password: vantiq_proto::Secret::new("p"),
    };
    let mut options = Sim::server_options();
    options.credentials = Some(("u".into(), "p".into()));
    let mut sim = Sim::with_options(cfg, options);
    configured(&mut sim);
    assert_eq!(
        sim.frames_sent().first().map(String::as_str),
        Some(
            r#"{"op":"authenticate","resourceName":"system.credentials","object":{"username":"u","password":"p"}}"#
        )
    );
}

/// The link dies without the server noticing (half-open): the client's next
/// `connectExtension` carries the same secret and takes the source over; the server drops
/// the stale socket.
#[test]
fn a_half_open_session_is_taken_over_with_the_same_secret() {
    let mut sim = Sim::new(config(25));
    configured(&mut sim);
    sim.half_open = true;
    sim.stalled = true;
    sim.run_until_pred(60 * SEC, "keep-alive timeout", |s| !s.is_configured());
    sim.stalled = false;
    configured(&mut sim);
    assert_eq!(
        sim.connect_attempts(),
        [
            (Some("S1_secret".to_owned()), ConnectOutcome::Accepted),
            (Some("S1_secret".to_owned()), ConnectOutcome::TookOver)
        ]
    );
    assert!(matches!(
        &sim.registry_events[..],
        [(_, vantiq_proto::server::RegistryEvent::Displaced { source, .. })] if source == SOURCE
    ));
    // The new session works.
    sim.server_publish(r#"{"after":"takeover"}"#).unwrap();
    sim.run_for(SEC);
    assert_eq!(
        sim.client_events().last(),
        Some(&Event::Publish {
            object: json(r#"{"after":"takeover"}"#)
        })
    );
    assert!(sim.anomalies().is_empty(), "{:?}", sim.anomalies());
}

/// A server restart: the server closes with 1001; the client reconnects with back-off and
/// is configured again.
#[test]
fn a_server_closing_with_1001_is_reconnected_to() {
    let mut sim = Sim::new(config(26));
    configured(&mut sim);
    sim.run_for(15 * SEC);
    sim.server_close(1001).unwrap();
    sim.run_until_pred(SEC, "disconnect", |s| !s.is_configured());
    assert_eq!(
        sim.client_events().last(),
        Some(&Event::Disconnected {
            reason: DisconnectReason::Failure(Failure::SocketClosed {
                code: Some(1001),
                reason: "closed by the simulation".into()
            })
        })
    );
    configured(&mut sim);
    assert_eq!(sim.client.stats().sessions, 2);
    assert_eq!(
        sim.registry.holder(SOURCE).map(|h| h.configured),
        Some(true)
    );
}

/// With jitter on the link, every delivery is late by a different amount, yet each
/// direction keeps its order: publishes arrive as sent, notifications too.
#[test]
fn jitter_delays_but_never_reorders() {
    let mut sim = Sim::new(config(27));
    sim.jitter = Duration::from_millis(40);
    configured(&mut sim);
    for i in 0..50 {
        sim.server_publish(&format!(r#"{{"n":{i}}}"#)).unwrap();
        sim.client.notify(json(&format!(r#"{{"m":{i}}}"#))).unwrap();
        sim.drain();
    }
    sim.run_for(SEC);
    let publishes: Vec<Json> = sim
        .client_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Publish { object } => Some(object),
            _ => None,
        })
        .collect();
    assert_eq!(
        publishes,
        (0..50)
            .map(|i| json(&format!(r#"{{"n":{i}}}"#)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        sim.notifications(),
        (0..50)
            .map(|i| json(&format!(r#"{{"m":{i}}}"#)))
            .collect::<Vec<_>>()
    );
}

/// The server's query deadline runs in virtual time too.
#[test]
fn an_unanswered_query_times_out_on_the_server() {
    let mut sim = Sim::new(config(28));
    configured(&mut sim);
    let addr = sim.server_query("{}").unwrap();
    sim.run_for(3599 * SEC);
    assert!(sim.registry_events.is_empty());
    sim.run_for(2 * SEC);
    assert!(matches!(
        &sim.registry_events[..],
        [(_, vantiq_proto::server::RegistryEvent::QueryTimedOut(r))] if r.reply_address == addr
    ));
}

/// Many seeded runs of a session under a jittery link with drops, clean server restarts,
/// reconfigurations, publishes, queries and notifications: the server never sees a frame it
/// would not expect, every query the client answered completes on the server, and
/// notifications arrive in order, never twice, and all of them once the link stays up (only
/// those in flight on a socket that died may be lost, as with TCP).
#[test]
fn chaos_keeps_the_protocol_and_the_order() {
    let mut total_finished = 0;
    for seed in 0..16u64 {
        let mut sim = Sim::new(config(seed));
        sim.jitter = Duration::from_millis(15);
        let mut rng = vantiq_proto::Rng::new(seed);
        let mut next_note = 0u64;
        let mut accepted = Vec::new();
        let mut last_break = 0u64;
        let mut queries_since_break = Vec::new();
        for _ in 0..300 {
            match rng.next_u64() % 10 {
                0 if sim.is_configured() => {
                    sim.drop_socket();
                    last_break = next_note;
                    queries_since_break.clear();
                }
                1 if sim.is_configured() => {
                    sim.server_close(1001).unwrap();
                    last_break = next_note;
                    queries_since_break.clear();
                }
                2 => {
                    if sim.server_reconnect_required(r#"{"rate":3}"#).is_ok() {
                        queries_since_break.clear();
                    }
                }
                3 | 4 => {
                    let _ = sim.server_publish(r#"{"p":1}"#);
                }
                5 => {
                    if let Ok(address) = sim.server_query("{}") {
                        queries_since_break.push(address);
                    }
                }
                _ => {
                    let note = json(&format!(r#"{{"n":{next_note}}}"#));
                    if sim.client.notify(note).is_ok() {
                        accepted.push(next_note);
                    }
                    next_note += 1;
                }
            }
            // The application answers every query it got.
            let ids: Vec<_> = sim
                .events
                .drain(..)
                .filter_map(|(_, e)| match e {
                    Event::Query { id, .. } => Some(id),
                    _ => None,
                })
                .collect();
            for id in ids {
                let _ = sim.client.respond(id, Reply::Complete(json("[]")));
            }
            sim.drain();
            sim.run_for(Duration::from_millis(rng.next_u64() % 400));
        }
        // Let the link stay up until everything queued is delivered.
        sim.run_until_pred(120 * SEC, "a final session", Sim::is_configured);
        sim.run_for(5 * SEC);
        assert!(
            sim.anomalies().is_empty(),
            "seed {seed}: {:?}",
            sim.anomalies()
        );
        let got: Vec<u64> = sim
            .notifications()
            .iter()
            .map(|j| j.to_value().unwrap()["n"].as_u64().unwrap())
            .collect();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: out of order or twice: {got:?}"
        );
        let tail: Vec<u64> = accepted
            .iter()
            .copied()
            .filter(|n| *n >= last_break)
            .collect();
        assert!(
            tail.iter().all(|n| got.contains(n)),
            "seed {seed}: accepted after the last break but never delivered: {tail:?} vs {got:?}"
        );
        assert!(got.iter().all(|n| accepted.contains(n)), "seed {seed}");
        // Queries sent on a session that later broke may be lost with it (the server waits
        // for their deadline, as Vantiq does); every later one finished.
        let finished: Vec<String> = sim
            .registry_events
            .iter()
            .filter_map(|(_, e)| match e {
                vantiq_proto::server::RegistryEvent::QueryFinished(r) => {
                    Some(r.reply_address.clone())
                }
                _ => None,
            })
            .collect();
        total_finished += finished.len();
        for q in &queries_since_break {
            assert!(
                finished.contains(q),
                "seed {seed}: query {q} never finished"
            );
        }
    }
    assert!(
        total_finished >= 50,
        "only {total_finished} queries finished in all runs"
    );
}
