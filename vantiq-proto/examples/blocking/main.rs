//! A complete connector on a transport this SDK did not write: a plain blocking
//! `tungstenite` socket over TCP and std threads, no async runtime at all. The driver loop
//! is in `connector.rs` (generic over the byte stream, so the crate's tests run it against
//! the sans-IO server); this file runs it on TCP from the command line.
//!
//! It authenticates, attaches, echoes publishes back as notifications, answers queries,
//! sends a notification from another thread every few seconds, and reconnects after a drop.
//!
//! Run it against the embedded server:
//!
//! ```text
//! cargo run -p vantiq-testkit --bin vantiq-devserver -- --listen 127.0.0.1:8088 \
//!     --token dev-token --source 'Blocking={"hello":"world"}'
//! cargo run -p vantiq-proto --example blocking -- http://127.0.0.1:8088 dev-token Blocking
//! curl -s -X POST localhost:8088/control/sources/Blocking/publish -d '{"ping":1}'
//! curl -s -X POST localhost:8088/control/sources/Blocking/query -d '{"q":1}'
//! curl -s -X POST localhost:8088/control/sources/Blocking/drop     # it reconnects
//! ```
//!
//! (`wss://` works the same way with a TLS stream, rustls's `StreamOwned` for instance,
//! implementing `connector::Stream`.)

// A driver reads the clock, sleeps and owns a socket: that is its job, not the core's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod connector;

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::channel;
use std::time::Duration;

use vantiq_proto::{Json, TargetUrl};

/// Opens a TCP connection to where `url` points.
fn connect_tcp(url: &TargetUrl) -> io::Result<TcpStream> {
    if url.is_secure() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this example speaks plain ws:// only",
        ));
    }
    let tcp = TcpStream::connect((url.host(), url.port()))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, token, source] = args.as_slice() else {
        eprintln!("usage: blocking <targetServer> <token> <source>");
        std::process::exit(2);
    };
    let (note_tx, note_rx) = channel();
    let (report_tx, report_rx) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    // Another thread sends a notification every five seconds.
    std::thread::spawn(move || {
        for n in 0u64.. {
            std::thread::sleep(Duration::from_secs(5));
            let tick = Json::from_string(format!(r#"{{"tick":{n}}}"#));
            if tick.map(|t| note_tx.send(t)).is_err() {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        for r in report_rx {
            println!("{r:?}");
        }
    });
    let result =
        connector::run_connector(url, token, source, connect_tcp, note_rx, report_tx, stop);
    if let Err(e) = result {
        eprintln!("blocking: {e}");
        std::process::exit(1);
    }
}
