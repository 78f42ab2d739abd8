//! The test of docs/guide.md ("Test your connector"), which shows this file whole:
//! `tests/guide.rs` checks that the two stay identical.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use vantiq_connector_tokio::{
    ConnectorSet, Handler, HandlerResult, Json, Query, ServerConfig, Source,
};
use vantiq_testkit::{TestServer, TestkitError};

const WAIT: Duration = Duration::from_secs(10);

/// The connector under test: remembers the set points published to it, notifies each one,
/// and answers queries with the latest ones.
#[derive(Default)]
struct Thermostat {
    set_points: Mutex<Vec<f64>>,
}

#[derive(Deserialize)]
struct SetPoint {
    #[serde(rename = "setPoint")]
    set_point: f64,
}

#[derive(Deserialize)]
struct Latest {
    last: usize,
}

impl Handler for Thermostat {
    async fn on_publish(&self, source: &Source, message: Json) -> HandlerResult {
        let SetPoint { set_point } = message.parse()?;
        self.set_points.lock().unwrap().push(set_point);
        source.notify(&json!({ "setPoint": set_point })).await?;
        Ok(())
    }

    async fn on_query(&self, _source: &Source, query: Query) -> HandlerResult {
        let Latest { last } = query.parse()?;
        // Take the rows out of the lock before awaiting: a guard held across an
        // `.await` would make the handler's future not `Send`.
        let rows: Vec<_> = {
            let all = self.set_points.lock().unwrap();
            all.iter()
                .rev()
                .take(last)
                .map(|v| json!({ "setPoint": v }))
                .collect()
        };
        query.stream(rows).await?;
        Ok(())
    }
}

#[tokio::test]
async fn thermostat_notifies_and_answers_queries() -> Result<(), Box<dyn std::error::Error>> {
    // A Vantiq server on a free local port, with the source and its configuration.
    let server = TestServer::builder()
        .token("test-token")
        .source("Thermo", json!({ "room": "kitchen" }))
        .start()
        .await?;
    let config = ServerConfig::parse(
        &format!(
            "targetServer = {}\nauthToken = test-token\nsources = Thermo\ntcpProbePort = 0\n",
            server.url()
        ),
        "test server.config",
        |_| None,
    )?;
    let set = ConnectorSet::new(config).handler(Thermostat::default());
    let stop = set.shutdown_handle();
    let connector = tokio::spawn(set.run());

    // Vantiq's side: wait for the connector, publish, read the notifications.
    let thermo = server.source("Thermo")?;
    assert_eq!(
        thermo.wait_configured(WAIT).await?.to_value()?,
        json!({ "room": "kitchen" })
    );
    thermo.publish(json!({ "setPoint": 21.5 })).await?;
    thermo.publish(json!({ "setPoint": 19.0 })).await?;
    let notes = thermo.wait_notifications(2, WAIT).await?;
    assert_eq!(notes[0].to_value()?, json!({ "setPoint": 21.5 }));
    assert_eq!(notes[1].to_value()?, json!({ "setPoint": 19.0 }));

    // A query, as `SELECT * FROM SOURCE Thermo WITH last = 1` sends it.
    let result = thermo.query(json!({ "last": 1 })).await?;
    assert_eq!(result.rows, vec![json!({ "setPoint": 19.0 })]);

    // Parameters of the wrong shape: the handler's error is the query's error reply.
    match thermo.query(json!({ "last": "all" })).await {
        Err(TestkitError::QueryFailed { result, .. }) => {
            let error = result.error_body().unwrap().to_value()?;
            assert_eq!(error["messageCode"], "io.vantiq.connector.queryFailed");
        }
        other => panic!("expected a query error, got {other:?}"),
    }

    // A graceful stop: the socket closes with 1000 and `run` returns Ok.
    stop.shutdown();
    connector.await??;
    thermo.wait_disconnected(WAIT).await?;
    assert_eq!(thermo.close_frames().last().unwrap().0, Some(1000));
    server.shutdown().await;
    Ok(())
}
