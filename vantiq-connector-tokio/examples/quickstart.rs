//! Quickstart: an echo connector against the embedded Vantiq server, in one process.
//!
//! ```text
//! cargo run -p vantiq-connector-tokio --example quickstart
//! ```
//!
//! It starts `vantiq-testkit`'s server, runs the echo connector (see
//! `vantiq_connector::test_util::echo`) against it, and drives what Vantiq would: a publish, a
//! query answered in chunks, a configuration change (`reconnectRequired`) and a shutdown,
//! printing what happened at each step.

use std::time::Duration;

use serde_json::json;
use tracing_subscriber::EnvFilter;
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector_tokio::{ConnectorSet, SECRET_SAFE_LOG_DIRECTIVE, ServerConfig};
use vantiq_testkit::TestServer;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 0. Logs to stderr: `RUST_LOG` filters (default `info`); the token never reaches the log
    //    whatever `RUST_LOG` says (see `SECRET_SAFE_LOG_DIRECTIVE`).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(SECRET_SAFE_LOG_DIRECTIVE.parse()?);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();

    // 1. A local Vantiq server with one source, `Thermostat`, and its configuration.
    let server = TestServer::builder()
        .token("quickstart-token")
        .source("Thermostat", json!({"room": "kitchen", "pollMs": 500}))
        .start()
        .await?;
    println!("Vantiq test server listening on {}", server.url());

    // 2. The connector's server.config (normally a file next to the connector).
    let config = ServerConfig::parse(
        &format!(
            "targetServer = {}\nauthToken = quickstart-token\nsources = Thermostat\ntcpProbePort = 0\n",
            server.url()
        ),
        "quickstart server.config",
        |_| None,
    )?;
    let set = ConnectorSet::new(config);
    let echo = Echo::new(set.health(), set.sources());
    // Ctrl-C stops it gracefully too (sockets closed with code 1000).
    let set = set.handler(echo).shutdown_on_signals();
    let stop = set.shutdown_handle();
    let health = set.health();
    let connector = tokio::spawn(set.run());

    // 3. The connector connects, authenticates, and receives its configuration.
    let thermostat = server.source("Thermostat")?;
    let config = thermostat.wait_configured(WAIT).await?;
    println!("\nconfigured with {config}");
    let hello = thermostat.next_notification(WAIT).await?;
    println!("  connector says: {hello}");
    println!("  declared healthy: {:?}", health.is_healthy());

    // 4. Vantiq publishes to the source; the echo connector answers with notifications.
    thermostat
        .publish(json!({"burst": 3, "payload": {"setPoint": 21.5}}))
        .await?;
    println!("\npublished {{\"burst\": 3, ...}}");
    for _ in 0..3 {
        println!(
            "  notification: {}",
            thermostat.next_notification(WAIT).await?
        );
    }

    // 5. A query whose rows come back in chunks of 2 (partial replies, then the last).
    let result = thermostat.query(json!({"rows": 5, "chunk": 2})).await?;
    println!(
        "\nquery {{\"rows\": 5, \"chunk\": 2}} -> status {}",
        result.status
    );
    for (i, part) in result.parts.iter().enumerate() {
        let body = part
            .body
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        println!("  reply {}: status {} body {body}", i + 1, part.status);
    }
    println!("  rows: {}", serde_json::to_string(&result.rows)?);

    // 6. The source's configuration changes in Vantiq: reconnectRequired, new configuration.
    thermostat
        .reconnect_required(Some(json!({"room": "attic", "pollMs": 250}).into()))
        .await?;
    let hello = thermostat.next_notification(WAIT).await?;
    println!("\nafter reconnectRequired the connector says: {hello}");
    println!(
        "  same socket: {} socket(s) opened in all",
        server.sockets_opened()
    );

    // 7. Shut down: sockets close with code 1000 and run() returns Ok.
    stop.shutdown();
    connector.await??;
    thermostat.wait_disconnected(WAIT).await?;
    println!(
        "\nshut down cleanly (close frames seen: {:?})",
        thermostat.close_frames()
    );
    server.shutdown().await;
    Ok(())
}
