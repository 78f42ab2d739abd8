//! End-to-end scenarios against the embedded server; each runs on tokio and on smol.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector::{
    Backoff, ConnectionState, ConnectorError, ConnectorSet, DisconnectReason, FatalError, Handler,
    HandlerResult, Json, NotifyError, Query, QueryError, Source, TryNotifyError,
};
use vantiq_e2e::{Kit, TestRuntime, WAIT, free_addr, kit_at, on_both_runtimes, start};
use vantiq_proto::{Rng, Status};
use vantiq_testkit::{ConnectOutcome, RawFrame};

on_both_runtimes!(
    handshake_and_config,
    publish_ordering,
    concurrent_queries_are_routed,
    reply_kinds_and_streaming,
    automatic_query_errors,
    reconnect_required_with_new_config,
    abrupt_drop_reconnects_and_delivers_queued_notifications,
    server_down_at_start_then_up,
    connect_refused_then_accepted,
    flapping_server_is_not_hammered,
    rejected_token_ends_run,
    malformed_and_binary_frames,
    multi_megabyte_publish,
    many_sources,
    graceful_shutdown,
    notify_errors_and_back_pressure,
    per_source_handlers,
    slow_handler_pauses_reading_without_losing_the_session,
);

fn echo_set<R: TestRuntime>(kit: &Kit, sources: &[&str], extra: &str) -> ConnectorSet<R> {
    let set = ConnectorSet::<R>::new(kit.config(sources, extra));
    let echo = Echo::new(set.health(), set.sources());
    set.handler(echo)
}

/// Short back-off so reconnection scenarios finish quickly.
fn fast<R: TestRuntime>(set: ConnectorSet<R>) -> ConnectorSet<R> {
    set.connection_config(|c| {
        c.backoff.initial = Duration::from_millis(50);
        c.backoff.max = Duration::from_millis(400);
    })
}

async fn handshake_and_config<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({"a": 1}))).await;
    let set = echo_set::<R>(&kit, &["s1"], "");
    let source = set.source("s1").unwrap();
    let running = start(set);
    let s1 = kit.source("s1");
    assert_eq!(
        s1.wait_configured().await.to_value().unwrap(),
        json!({"a": 1})
    );
    assert_eq!(
        s1.notifications(1).await,
        vec![json!({"connected": true, "config": {"a": 1}})]
    );
    kit.within(WAIT, "connector side configured", source.wait_configured())
        .await
        .unwrap();
    assert_eq!(source.state(), ConnectionState::Configured);
    assert_eq!(
        source.config().unwrap().to_value().unwrap(),
        json!({"a": 1})
    );
    let secret = s1.handle().reconnect_secret().unwrap();
    assert!(
        secret.starts_with("s1_") && secret.len() == "s1_".len() + 36,
        "{secret}"
    );
    assert_eq!(kit.server().auth_attempts(), 1);
    running.stop(&kit).await.unwrap();
    assert_eq!(source.state(), ConnectionState::Closed);
}

async fn publish_ordering<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
    let running = start(echo_set::<R>(&kit, &["s1"], ""));
    let s1 = kit.source("s1");
    s1.wait_configured().await;
    // One publish fanning out into 5000 notifications …
    s1.publish(json!({"burst": 5000, "payload": "p"})).await;
    // … then 2000 publishes, each echoed.
    for i in 0..2000 {
        s1.publish(json!({"n": i})).await;
    }
    let got = s1.notifications(1 + 5000 + 2000).await;
    assert_eq!(got.len(), 7001);
    for (i, n) in got[1..5001].iter().enumerate() {
        assert_eq!(n, &json!({"seq": i, "payload": "p"}));
    }
    for (i, n) in got[5001..].iter().enumerate() {
        assert_eq!(n, &json!({"n": i}));
    }
    running.stop(&kit).await.unwrap();
}

async fn concurrent_queries_are_routed<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
    let running = start(echo_set::<R>(&kit, &["s1"], ""));
    let s1 = kit.source("s1");
    s1.wait_configured().await;
    // 40 queries in flight at once, each with its own size, answered in chunks of 3.
    let handle = s1.handle().clone();
    let results = kit
        .on(async move {
            let mut tasks = Vec::new();
            for k in 1..=40u64 {
                let h = handle.clone();
                tasks.push(tokio::spawn(async move {
                    (
                        k,
                        h.query_with_timeout(Json::from(json!({"rows": k, "chunk": 3})), WAIT)
                            .await,
                    )
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
        .await;
    let mut addresses = std::collections::HashSet::new();
    for (k, r) in results {
        let k: u64 = k;
        let r = r.unwrap();
        assert_eq!(r.status, Status(200), "query {k}");
        let want: Vec<Value> = (0..k).map(|i| json!({"i": i})).collect();
        assert_eq!(r.rows, want, "query {k} got someone else's rows");
        assert_eq!(r.parts.len() as u64, k.div_ceil(3), "query {k}");
        assert!(r.parts.iter().all(|p| p.reply_address == r.reply_address));
        assert!(addresses.insert(r.reply_address.clone()));
    }
    assert!(
        kit.server().anomalies().is_empty(),
        "{:?}",
        kit.server().anomalies()
    );
    running.stop(&kit).await.unwrap();
}

/// A handler exercising every kind of reply.
struct Replies;

impl Handler for Replies {
    async fn on_query(&self, _source: &Source, mut query: Query) -> HandlerResult {
        let kind = query.params().to_value().unwrap()["kind"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        match kind.as_str() {
            "partials" => {
                query.partial(&json!([{"a": 1}, {"a": 2}])).await?;
                query.partial(&json!({"a": 3})).await?;
                query.complete(&json!([{"a": 4}])).await?;
            }
            "empty-after-partial" => {
                query.partial(&json!([{"a": 1}])).await?;
                query.empty().await?;
            }
            "error" => {
                query
                    .error(QueryError::new(
                        "t.bad",
                        "bad {0} {1}",
                        [json!("x"), json!(2)],
                    ))
                    .await?;
            }
            "stream" => {
                query.set_chunk_bytes(400);
                let rows = (0..100).map(|i| json!({"i": i, "pad": "0123456789"}));
                let n = query.stream(rows).await?;
                assert_eq!(n, 100);
            }
            "stream-async" => {
                query.set_chunk_bytes(300);
                let rows = futures_util::stream::iter((0..50).map(|i| json!({"j": i})));
                query.stream_from(rows).await?;
            }
            "stream-nothing" => {
                query.stream(Vec::<Value>::new()).await?;
            }
            "invalid" => {
                assert!(matches!(
                    query.partial(&json!(42)).await,
                    Err(vantiq_connector::ReplyError::InvalidRows)
                ));
                query.complete(&json!({"ok": true})).await?;
            }
            _ => {
                let params = query.params().clone();
                query.complete(&json!({"params": params})).await?;
            }
        }
        Ok(())
    }
}

/// Every reply frame fits the byte budget, all but the last are partial.
fn within_budget(r: &vantiq_testkit::QueryResult, budget: usize) {
    for p in &r.parts {
        let frame_len = vantiq_proto::frame::ClientFrame::QueryReply(p.clone())
            .encode()
            .len();
        assert!(
            frame_len <= budget,
            "a {frame_len}-byte frame exceeds the {budget}-byte budget"
        );
    }
    assert!(
        r.parts[..r.parts.len() - 1]
            .iter()
            .all(|p| p.status == Status(100))
    );
    assert_eq!(r.parts.last().map(|p| p.status), Some(Status(200)));
}

async fn reply_kinds_and_streaming<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
    let running = start(ConnectorSet::<R>::new(kit.config(&["s1"], "")).handler(Replies));
    let s1 = kit.source("s1");
    s1.wait_configured().await;

    let r = s1.query(json!({"kind": "partials"})).await;
    assert_eq!(r.status, Status(200));
    assert_eq!(
        r.rows,
        vec![
            json!({"a": 1}),
            json!({"a": 2}),
            json!({"a": 3}),
            json!({"a": 4})
        ]
    );
    let statuses: Vec<i64> = r.parts.iter().map(|p| p.status.0).collect();
    assert_eq!(statuses, [100, 100, 200]);

    let r = s1.query(json!({"kind": "empty-after-partial"})).await;
    assert_eq!(r.status, Status(204));
    assert_eq!(r.rows, vec![json!({"a": 1})]);
    assert_eq!(r.parts[1].body, None, "204 has no body");

    let r = s1.query(json!({"kind": "error"})).await;
    assert_eq!(r.status, Status(400));
    let e = r.error().unwrap();
    assert_eq!(
        (e.code.as_str(), e.template.as_str(), e.parameters.clone()),
        ("t.bad", "bad {0} {1}", vec![json!("x"), json!(2)])
    );

    let r = s1.query(json!({"kind": "stream"})).await;
    assert_eq!(r.status, Status(200));
    assert_eq!(r.rows.len(), 100);
    assert!(
        r.rows
            .iter()
            .enumerate()
            .all(|(i, row)| row["i"] == json!(i))
    );
    assert!(r.parts.len() >= 10, "{} parts", r.parts.len());
    within_budget(&r, 400);

    let r = s1.query(json!({"kind": "stream-async"})).await;
    assert_eq!(r.rows, (0..50).map(|i| json!({"j": i})).collect::<Vec<_>>());
    assert!(r.parts.len() >= 2, "{} parts", r.parts.len());
    within_budget(&r, 300);

    let r = s1.query(json!({"kind": "stream-nothing"})).await;
    assert_eq!((r.status, r.parts.len()), (Status(204), 1));

    let r = s1.query(json!({"kind": "invalid"})).await;
    assert_eq!(
        (r.status, r.rows.clone()),
        (Status(200), vec![json!({"ok": true})])
    );

    let r = s1.query(json!({"kind": "echo", "x": [1, 2]})).await;
    assert_eq!(
        r.rows,
        vec![json!({"params": {"kind": "echo", "x": [1, 2]}})]
    );
    running.stop(&kit).await.unwrap();
}

/// Drops, fails or panics, depending on the query.
struct Careless;

impl Handler for Careless {
    async fn on_query(&self, _source: &Source, mut query: Query) -> HandlerResult {
        match query.params().to_value().unwrap()["do"]
            .as_str()
            .unwrap_or("")
        {
            "drop" => drop(query),
            "partial-then-drop" => {
                query.partial(&json!([{"x": 1}])).await?;
            }
            "fail" => return Err("the database is on fire".into()),
            "panic" => panic!("handler bug"),
            "later" => {
                // Answer from another task, after the handler has returned.
                std::thread::spawn(move || {
                    smol::block_on(async move {
                        query.complete(&json!({"late": true})).await.unwrap();
                    });
                });
            }
            _ => query.empty().await?,
        }
        Ok(())
    }
}

async fn automatic_query_errors<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({})).source("s2", json!({}))).await;
    let set = ConnectorSet::<R>::new(kit.config(&["s1", "s2"], ""))
        .source_handler("s1", Careless)
        // s2 gets closures without a query handler.
        .on_publish(|_s, _m| async { Ok(()) });
    let running = start(set);
    let s1 = kit.source("s1");
    s1.wait_configured().await;

    let code_params = |r: &vantiq_testkit::QueryResult| {
        let e = r.error().expect("an error reply");
        (e.code, e.parameters)
    };
    let r = s1.query(json!({"do": "drop"})).await;
    assert_eq!(r.status, Status(400));
    assert_eq!(
        code_params(&r),
        ("io.vantiq.connector.queryDropped".into(), vec![json!("s1")])
    );

    let r = s1.query(json!({"do": "partial-then-drop"})).await;
    assert_eq!(
        r.parts.iter().map(|p| p.status.0).collect::<Vec<_>>(),
        [100, 400]
    );
    assert_eq!(r.rows, vec![json!({"x": 1})]);

    let r = s1.query(json!({"do": "fail"})).await;
    assert_eq!(
        code_params(&r),
        (
            "io.vantiq.connector.queryFailed".into(),
            vec![json!("s1"), json!("the database is on fire")]
        )
    );

    let r = s1.query(json!({"do": "panic"})).await;
    assert_eq!(
        code_params(&r),
        (
            "io.vantiq.connector.queryFailed".into(),
            vec![json!("s1"), json!("handler panicked: handler bug")]
        )
    );
    // The source survived the panic.
    let r = s1.query(json!({"do": "later"})).await;
    assert_eq!(r.rows, vec![json!({"late": true})]);

    let s2 = kit.source("s2");
    s2.wait_configured().await;
    let r = s2.query(json!({})).await;
    assert_eq!(r.status, Status(400));
    let e = r.error().unwrap();
    assert_eq!(e.code, "io.vantiq.connector.noQueryHandler");
    assert_eq!(
        e.template,
        "Queries are not supported for source {0}. No handler has been set."
    );
    assert_eq!(e.parameters, vec![json!("s2")]);
    running.stop(&kit).await.unwrap();
}

/// Records the configurations and session ends it sees.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn log(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Handler for Recorder {
    async fn on_connect(&self, source: &Source, config: Json) -> HandlerResult {
        self.0.lock().unwrap().push(format!("connect {config}"));
        source.notify(&json!({"config": config})).await?;
        Ok(())
    }

    async fn on_close(&self, _source: &Source, reason: &DisconnectReason) -> HandlerResult {
        let r = match reason {
            DisconnectReason::ReconnectRequired => "reconnectRequired".to_owned(),
            DisconnectReason::Shutdown => "shutdown".to_owned(),
            DisconnectReason::Failure(_) => "failure".to_owned(),
            _ => "other".to_owned(),
        };
        self.0.lock().unwrap().push(format!("close {r}"));
        Ok(())
    }
}

async fn reconnect_required_with_new_config<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({"v": 1}))).await;
    let rec = Recorder::default();
    let running = start(ConnectorSet::<R>::new(kit.config(&["s1"], "")).handler(rec.clone()));
    let s1 = kit.source("s1");
    s1.wait_configured().await;
    s1.notifications(1).await;
    s1.reconnect_required(Some(json!({"v": 2}))).await;
    assert_eq!(s1.notifications(2).await[1], json!({"config": {"v": 2}}));
    // Re-attached on the same socket: one socket, one authentication, two attachments with
    // the same secret.
    assert_eq!(kit.server().sockets_opened(), 1);
    assert_eq!(kit.server().auth_attempts(), 1);
    let log = s1.handle().connect_log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].reconnect_secret, log[1].reconnect_secret);
    assert_eq!(log[0].connection, log[1].connection);
    running.stop(&kit).await.unwrap();
    assert_eq!(
        rec.log(),
        [
            r#"connect {"v":1}"#,
            "close reconnectRequired",
            r#"connect {"v":2}"#,
            "close shutdown"
        ]
    );
}

async fn abrupt_drop_reconnects_and_delivers_queued_notifications<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
    let rec = Recorder::default();
    let set = fast(ConnectorSet::<R>::new(kit.config(&["s1"], "")).handler(rec.clone()));
    let source = set.source("s1").unwrap();
    let running = start(set);
    let s1 = kit.source("s1");
    s1.wait_configured().await;
    s1.notifications(1).await;
    // Refuse the reconnects for a while so the connector is certainly offline when it
    // notifies.
    s1.handle().refuse_connects(3);
    s1.drop_connection().await;
    kit.within(WAIT, "the connector noticing the drop", async {
        while source.state() == ConnectionState::Configured {
            source.wait_change(ConnectionState::Configured).await;
        }
    })
    .await;
    for i in 0..100 {
        source.notify(&json!({"offline": i})).await.unwrap();
    }
    s1.wait_connections(2).await;
    let got = s1.notifications(2 + 100).await;
    // The queue is flushed in order as soon as the new session is configured.
    let offline: Vec<Value> = got
        .iter()
        .filter(|n| n.get("offline").is_some())
        .cloned()
        .collect();
    assert_eq!(
        offline,
        (0..100).map(|i| json!({"offline": i})).collect::<Vec<_>>()
    );
    let log = s1.handle().connect_log();
    let outcomes: Vec<ConnectOutcome> = log.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            ConnectOutcome::Accepted,
            ConnectOutcome::RefusedNoStream,
            ConnectOutcome::RefusedNoStream,
            ConnectOutcome::RefusedNoStream,
            ConnectOutcome::Accepted
        ]
    );
    assert!(
        log.iter()
            .all(|a| a.reconnect_secret == log[0].reconnect_secret)
    );
    running.stop(&kit).await.unwrap();
    assert_eq!(
        rec.log(),
        [
            "connect {}",
            "close failure",
            "connect {}",
            "close shutdown"
        ]
    );
}

async fn server_down_at_start_then_up<R: TestRuntime>() {
    let addr = free_addr();
    let url = format!("http://{addr}");
    let set = fast(
        ConnectorSet::<R>::new(vantiq_e2e::config_for(&url, &["s1"], ""))
            .handler(Echo::without_health()),
    );
    let source = set.source("s1").unwrap();
    let running = start(set);
    // Nobody listens: the connector fails and waits to reconnect.
    let placeholder = Kit::start(|b| b).await; // only for its clock
    placeholder
        .within(WAIT, "a failed connect", async {
            while source.state() != ConnectionState::WaitingToReconnect {
                source.wait_change(source.state()).await;
            }
        })
        .await;
    let kit = kit_at(addr, |b| b.token("T").source("s1", json!({"up": true}))).await;
    let s1 = kit.source("s1");
    s1.wait_configured().await;
    assert_eq!(
        s1.notifications(1).await[0],
        json!({"connected": true, "config": {"up": true}})
    );
    running.stop(&kit).await.unwrap();
}

async fn connect_refused_then_accepted<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
    kit.source("s1").handle().refuse_connects(4);
    let running = start(fast(echo_set::<R>(&kit, &["s1"], "")));
    let s1 = kit.source("s1");
    s1.wait_configured().await;
    let log = s1.handle().connect_log();
    assert_eq!(log.len(), 5);
    assert!(
        log[..4]
            .iter()
            .all(|a| a.outcome == ConnectOutcome::RefusedNoStream)
    );
    assert_eq!(log[4].outcome, ConnectOutcome::Accepted);
    // Each retry waited at least the 10 ms floor: never a hot loop.
    for w in log.windows(2) {
        assert!(w[1].at - w[0].at >= Duration::from_millis(10));
    }
    running.stop(&kit).await.unwrap();
}

async fn flapping_server_is_not_hammered<R: TestRuntime>() {
    const SEED: u64 = 7;
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
    kit.source("s1").handle().set_flapping(true);
    let set = echo_set::<R>(&kit, &["s1"], "").connection_config(move |c| {
        c.backoff = backoff;
        c.seed = SEED;
    });
    let running = start(set);
    let s1 = kit.source("s1");
    s1.wait_connect_attempts(6).await;
    let log = s1.handle().connect_log();
    // Every session was configured and dropped at once, so the failure count never reset:
    // the waits are the seeded back-off's, growing. Wall time can only exceed them.
    let mut rng = Rng::new(SEED);
    let floor: Duration = (1..=5)
        .map(|n| backoff.delay(n, &mut rng).max(Duration::from_millis(10)))
        .sum();
    let spent = log[5].at - log[0].at;
    assert!(
        spent >= floor,
        "6 attempts took {spent:?}, back-off alone needs {floor:?}"
    );
    assert!(log.iter().all(|a| a.outcome == ConnectOutcome::Accepted));
    running.stop(&kit).await.unwrap();
}

async fn rejected_token_ends_run<R: TestRuntime>() {
    let kit = Kit::start(|b| {
        b.token("right")
            .source("s1", json!({}))
            .source("s2", json!({}))
    })
    .await;
    let set = echo_set::<R>(&kit, &["s1", "s2"], "authToken=wrong");
    let started = Instant::now();
    let running = start(set);
    let err = running.result(&kit).await.unwrap_err();
    match &err {
        ConnectorError::Fatal {
            error: FatalError::AuthRejected { status, code, .. },
            ..
        } => {
            assert_eq!(*status, Status(401));
            assert_eq!(code.as_deref(), Some("io.vantiq.authentication.failed"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("authentication rejected by the server: status 401")
    );
    // No retries: at most one attempt per source. The first rejection is fatal and stops the
    // set, so the other source may never have tried.
    let attempts = kit.server().auth_attempts();
    assert!(
        (1..=2).contains(&attempts),
        "{attempts} authentication attempts"
    );
    assert!(started.elapsed() < WAIT);
}

async fn malformed_and_binary_frames<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({})).binary_frames(false)).await;
    let running = start(echo_set::<R>(&kit, &["s1"], ""));
    let s1 = kit.source("s1");
    s1.wait_configured().await;
    for raw in [
        RawFrame::Text("this is not json".into()),
        RawFrame::Text("[1,2,3]".into()),
        RawFrame::Text("42".into()),
        RawFrame::Text(r#"{"op":"testRequestsClientClose"}"#.into()),
        RawFrame::Text(r#"{"op":17}"#.into()),
        RawFrame::Text(r#"{"op":"query","resourceId":"s1","object":{}}"#.into()),
        RawFrame::Text(r#"{"op":"publish","resourceId":"not-s1","object":{}}"#.into()),
        RawFrame::Text(r#"{"status":"teapot"}"#.into()),
        RawFrame::Binary(vec![0xff, 0xfe, 0x00, 0x01]),
        RawFrame::Binary(
            b"{\"op\":\"publish\",\"resourceId\":\"s1\",\"object\":{\"via\":\"binary\"}}".to_vec(),
        ),
        RawFrame::Text(format!("{}{}", "[".repeat(5000), "]".repeat(5000))),
    ] {
        s1.send_raw(raw).await;
    }
    s1.publish(json!({"still": "alive"})).await;
    // The publish naming another source is handled as this source's (echoed), as neither
    // Vantiq SDK checks `resourceId`.
    let got = s1.notifications(4).await;
    assert_eq!(
        got[1..],
        [
            json!({}),
            json!({"via": "binary"}),
            json!({"still": "alive"})
        ]
    );
    assert_eq!(s1.handle().connections(), 1, "the session went on");
    running.stop(&kit).await.unwrap();
}

async fn multi_megabyte_publish<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
    let running = start(echo_set::<R>(&kit, &["s1"], ""));
    let s1 = kit.source("s1");
    s1.wait_configured().await;
    let big: String = (0..6 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    s1.publish(json!({"blob": big, "n": 1})).await;
    let got = s1.notifications(2).await;
    assert_eq!(got[1]["blob"].as_str().map(str::len), Some(big.len()));
    assert_eq!(got[1], json!({"blob": big, "n": 1}));
    running.stop(&kit).await.unwrap();
}

async fn many_sources<R: TestRuntime>() {
    const N: usize = 100;
    let names: Vec<String> = (0..N).map(|i| format!("src{i}")).collect();
    let kit = {
        let names = names.clone();
        Kit::start(move |mut b| {
            for (i, n) in names.iter().enumerate() {
                b = b.source(n.clone(), json!({ "i": i }));
            }
            b.token("T")
        })
        .await
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let running = start(echo_set::<R>(&kit, &refs, ""));
    for (i, n) in names.iter().enumerate() {
        let s = kit.source(n);
        assert_eq!(
            s.wait_configured().await.to_value().unwrap(),
            json!({"i": i})
        );
        s.publish(json!({"to": n})).await;
    }
    for (i, n) in names.iter().enumerate() {
        let got = kit.source(n).notifications(2).await;
        assert_eq!(
            got,
            vec![
                json!({"connected": true, "config": {"i": i}}),
                json!({"to": n})
            ]
        );
    }
    let secrets: std::collections::HashSet<String> = names
        .iter()
        .map(|n| kit.source(n).handle().reconnect_secret().unwrap())
        .collect();
    assert_eq!(secrets.len(), N, "one reconnect secret per source");
    running.stop(&kit).await.unwrap();
}

async fn graceful_shutdown<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
    let rec = Recorder::default();
    let set = ConnectorSet::<R>::new(kit.config(&["s1"], "")).handler(rec.clone());
    let source = set.source("s1").unwrap();
    let running = start(set);
    let s1 = kit.source("s1");
    s1.wait_configured().await;
    s1.notifications(1).await;
    // Hand over 500 notifications and stop at once: all of them still go out.
    for i in 0..500 {
        source.notify(&json!({"n": i})).await.unwrap();
    }
    running.stop(&kit).await.unwrap();
    let got = s1.notifications(501).await;
    assert_eq!(
        got[1..],
        (0..500).map(|i| json!({"n": i})).collect::<Vec<_>>()[..]
    );
    s1.wait_disconnected().await;
    assert_eq!(
        s1.handle().close_frames(),
        [(Some(1000), "Closed by client".to_owned())],
        "a WebSocket close with code 1000"
    );
    assert_eq!(rec.log(), ["connect {}", "close shutdown"]);
    assert_eq!(source.state(), ConnectionState::Closed);
    assert!(matches!(
        source.notify(&json!({})).await,
        Err(NotifyError::Closed)
    ));
}

async fn notify_errors_and_back_pressure<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({}))).await;
    let set = ConnectorSet::<R>::new(kit.config(&["s1"], "notificationQueueSize=5"));
    let source = set.source("s1").unwrap();
    assert!(matches!(
        source.notify(&json!([1, 2])).await,
        Err(NotifyError::NotAnObject)
    ));
    assert!(matches!(
        source.notify(&json!("text")).await,
        Err(NotifyError::NotAnObject)
    ));
    // Before the set runs, the channel fills and then refuses without waiting.
    let mut accepted = 0;
    loop {
        match source.try_notify(&json!({"n": accepted})) {
            Ok(()) => accepted += 1,
            Err(TryNotifyError::Full(j)) => {
                assert_eq!(j.to_value().unwrap(), json!({"n": accepted}));
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(accepted >= 5, "{accepted}");
    let running = start(set);
    let s1 = kit.source("s1");
    s1.wait_configured().await;
    // Everything handed over before the run is delivered, in order.
    let got = s1.notifications(accepted).await;
    assert_eq!(
        got,
        (0..accepted).map(|n| json!({"n": n})).collect::<Vec<_>>()
    );
    running.stop(&kit).await.unwrap();
}

async fn per_source_handlers<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("a", json!({})).source("b", json!({}))).await;
    let set = ConnectorSet::<R>::new(kit.config(&["a", "b"], ""))
        .source_handler("b", Replies)
        .on_query(|source, query| async move {
            query
                .complete(&json!({"from": source.name(), "closure": true}))
                .await?;
            Ok(())
        });
    let running = start(set);
    kit.source("a").wait_configured().await;
    kit.source("b").wait_configured().await;
    assert_eq!(
        kit.source("a").query(json!({})).await.rows,
        vec![json!({"from": "a", "closure": true})]
    );
    assert_eq!(
        kit.source("b").query(json!({"kind": "x"})).await.rows,
        vec![json!({"params": {"kind": "x"}})]
    );
    running.stop(&kit).await.unwrap();

    // A handler for a source that is not configured is an error at run().
    let set = ConnectorSet::<R>::new(kit.config(&["a"], "")).source_handler("zz", Replies);
    match set.run().await {
        Err(ConnectorError::UnknownSource(s)) => assert_eq!(s, "zz"),
        other => panic!("{other:?}"),
    }
}

/// A publish handler that waits at a gate until the test opens it.
struct Gated {
    gate: async_channel::Receiver<()>,
}

impl Handler for Gated {
    async fn on_publish(&self, source: &Source, message: Json) -> HandlerResult {
        if message.to_value().unwrap()["wait"] == json!(true) {
            let _ = self.gate.recv().await;
        }
        source.notify_json(message).await?;
        Ok(())
    }

    async fn on_query(&self, _source: &Source, query: Query) -> HandlerResult {
        query.complete(&json!({"alive": true})).await?;
        Ok(())
    }
}

async fn slow_handler_pauses_reading_without_losing_the_session<R: TestRuntime>() {
    let kit = Kit::start(|b| {
        b.token("T")
            .source("slow", json!({}))
            .source("other", json!({}))
    })
    .await;
    let (open, gate) = async_channel::bounded::<()>(1);
    let set = ConnectorSet::<R>::new(kit.config(&["slow", "other"], ""))
        .handler(Gated { gate })
        .connection_config(|c| {
            c.keepalive = Some(vantiq_connector::KeepAlive::new(
                Duration::from_millis(100),
                Duration::from_millis(150),
            ));
        });
    let running = start(set);
    let slow = kit.source("slow");
    slow.wait_configured().await;
    kit.source("other").wait_configured().await;
    // The handler blocks on the first publish; 300 more queue up, far beyond the 64 the
    // driver buffers, so it stops reading the socket.
    slow.publish(json!({"wait": true, "n": 0})).await;
    for n in 1..=300 {
        slow.publish(json!({"n": n})).await;
    }
    // Meanwhile the other source is served…
    let r = kit.source("other").query(json!({})).await;
    assert_eq!(r.rows, [json!({"alive": true})]);
    // …and the stalled one is not declared dead although its pongs sit unread for many
    // keep-alive periods.
    kit.sleep(Duration::from_millis(1500)).await;
    open.send(()).await.unwrap();
    let got = slow.notifications(301).await;
    assert_eq!(got[0], json!({"wait": true, "n": 0}));
    assert!(
        got[1..]
            .iter()
            .enumerate()
            .all(|(i, n)| n == &json!({"n": i + 1}))
    );
    assert_eq!(
        slow.handle().connections(),
        1,
        "the session survived the pause"
    );
    running.stop(&kit).await.unwrap();
}
