//! A connector written by hand against the embedded server: the whole protocol, frame by
//! frame, with `vantiq_proto` frames over a raw WebSocket.
//!
//! ```text
//! cargo run -p vantiq-testkit --example raw_client
//! ```

use std::error::Error;
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use serde_json::json;
use vantiq_proto::frame::{ClientFrame, QueryReply, ServerFrame};
use vantiq_proto::{Json, Status};
use vantiq_testkit::TestServer;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let server = TestServer::builder()
        .token("example-token")
        .source("Thermostat", json!({"unit": "C"}))
        .print_frames(true)
        .start()
        .await?;
    println!(
        "server at {} (targetServer={})",
        server.ws_url(),
        server.url()
    );
    let source = server.source("Thermostat")?;

    // The connector side runs as its own task.
    let url = server.ws_url();
    let addr = server.addr();
    let connector = tokio::spawn(async move { run_connector(addr, url).await });

    let config = source.wait_configured(Duration::from_secs(5)).await?;
    println!("the connector was configured with {config}");

    source.publish(json!({"setPoint": 21.5})).await?;
    let echoed = source.next_notification(Duration::from_secs(5)).await?;
    println!("notification: {echoed}");

    let result = source.query(json!({"count": 3})).await?;
    println!(
        "query: status {}, {} rows in {} replies: {:?}",
        result.status,
        result.rows.len(),
        result.parts.len(),
        result.rows
    );

    source.drop_connection().await?;
    connector.await??;
    server.shutdown().await;
    Ok(())
}

/// A minimal connector: authenticate, attach, echo publishes, answer queries in two parts.
async fn run_connector(addr: std::net::SocketAddr, url: String) -> Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut ws, _) = async_tungstenite::tokio::client_async(url, tcp).await?;
    let frame = |f: ClientFrame| Message::text(f.encode());

    ws.send(frame(ClientFrame::Validate {
        token: Some("example-token".into()),
    }))
    .await?;
    ws.send(frame(ClientFrame::ConnectExtension {
        source: "Thermostat".into(),
        reconnect_secret: Some("Thermostat_example".into()),
    }))
    .await?;

    while let Some(msg) = ws.next().await {
        let data = match msg {
            Ok(Message::Text(_) | Message::Binary(_)) => msg?.into_data(),
            Ok(_) => continue,
            // The server dropped us (drop_connection): done.
            Err(_) => break,
        };
        match ServerFrame::decode(&data)? {
            ServerFrame::Publish { object, .. } => {
                let echo = Json::from_serialize(&json!({"echo": object}))?;
                ws.send(frame(ClientFrame::Notification {
                    source: "Thermostat".into(),
                    object: echo,
                }))
                .await?;
            }
            ServerFrame::Query { reply_address, .. } => {
                for (status, body) in [
                    (Status::PARTIAL, json!([{"t": 20.0}, {"t": 20.5}])),
                    (Status::OK, json!([{"t": 21.0}])),
                ] {
                    ws.send(frame(ClientFrame::QueryReply(QueryReply {
                        status,
                        reply_address: reply_address.clone(),
                        body: Some(Json::from(body)),
                    })))
                    .await?;
                }
            }
            // Authentication reply, configureExtension, acknowledgements.
            _ => {}
        }
    }
    Ok(())
}
