//! `vantiq-devserver`: a local stand-in for a Vantiq server, for developing and poking
//! extension-source connectors by hand.
//!
//! It runs the [`vantiq_testkit::TestServer`] with its JSON control API and Vantiq's REST
//! routes for sources on, prints every frame it receives and sends (tokens and passwords
//! redacted), and serves on one port the connector WebSocket endpoint
//! (`/api/v1/wsock/websocket`), the control API (`/control/...`) and
//! `POST /api/v1/resources/sources/{name}[/query]`. On SIGTERM or SIGINT it closes every
//! connection with close code 1001 (going away), as a Vantiq server shutting down does,
//! then exits.
//!
//! # Using the devserver with curl
//!
//! Start it with a token and a source (the configuration is any JSON document, or `@file`):
//!
//! ```text
//! cargo run -p vantiq-testkit --bin vantiq-devserver -- \
//!     --listen 127.0.0.1:8088 --token dev-token --source 'Thermo={"pollMs":500}'
//! ```
//!
//! Point the connector at it (`server.config`):
//!
//! ```text
//! targetServer=http://127.0.0.1:8088
//! authToken=dev-token
//! sources=Thermo
//! ```
//!
//! Then drive it:
//!
//! ```text
//! # which sources exist, and is the connector attached?
//! curl -s localhost:8088/control/sources
//! # PUBLISH {"setPoint": 21} TO SOURCE Thermo
//! curl -s -X POST localhost:8088/control/sources/Thermo/publish -d '{"setPoint":21}'
//! # SELECT FROM SOURCE Thermo WITH room = "kitchen"  (waits up to 5 s for the last reply)
//! curl -s -X POST 'localhost:8088/control/sources/Thermo/query?timeoutMs=5000' -d '{"room":"kitchen"}'
//! # notifications after the first 0, waiting up to 10 s for one (then ask again with after=<next>)
//! curl -s 'localhost:8088/control/sources/Thermo/notifications?after=0&waitMs=10000'
//! # change the configuration: sends reconnectRequired, the next connect gets the new config
//! curl -s -X POST localhost:8088/control/sources/Thermo/reconnect -d '{"pollMs":100}'
//! # drop the connection without a close frame (test the connector's reconnect)
//! curl -s -X POST localhost:8088/control/sources/Thermo/drop
//! # close it cleanly with a chosen close code and reason
//! curl -s -X POST 'localhost:8088/control/sources/Thermo/close?code=1011&reason=oops'
//! # send any frame as it is (text; add ?binary=true for a binary frame)
//! curl -s -X POST localhost:8088/control/sources/Thermo/frame -d '{"op":"mystery"}'
//! # a server restart: every connection closed with 1001, connectors reconnect
//! curl -s -X POST localhost:8088/control/restart
//! # Vantiq's own REST routes, as Vantiq's client SDKs and tests call them
//! curl -s -H 'Authorization: Bearer dev-token' \
//!     localhost:8088/api/v1/resources/sources/Thermo -d '{"setPoint":21}'
//! curl -s -H 'Authorization: Bearer dev-token' \
//!     localhost:8088/api/v1/resources/sources/Thermo/query -d '{"room":"kitchen"}'
//! ```
//!
//! The control API refuses requests a web page could make (a `Host` that is not this
//! machine, a foreign `Origin`, `Sec-Fetch-Site: cross-site`); `--control-token` also
//! requires `Authorization: Bearer <token>` on it. Listening on a non-loopback address prints
//! a warning.
//!
//! A query answers `{"status":200,"rows":[…],"parts":N}` (`parts`: how many replies the
//! connector sent), or for a query error `{"status":400,…,"error":{"messageCode",…}}`. With
//! no connector attached the control API answers `409`, with no reply in time `504`, for an
//! unknown source `404`, for a bad request `400`; every error body is `{"error":"…"}`.
//!
//! Run with `--help` for every option.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use vantiq_proto::Json;
use vantiq_testkit::TestServer;

const USAGE: &str = "\
vantiq-devserver: a local Vantiq server for extension-source connectors, with a JSON control API

Usage: vantiq-devserver [OPTIONS]

Options:
  --listen ADDR             address to listen on (default 127.0.0.1:8088; port 0 picks one)
  --token TOKEN             the only access token `validate` accepts (default: any token)
  --user NAME:PASSWORD      the credentials `authenticate` accepts (default: none)
  --source NAME[=CONFIG]    a source and its configuration document: JSON text, or @FILE
                            holding JSON (default {}); repeat for several sources
  --namespace NS            the namespace named in the authentication reply (default testkit)
  --text-frames             send text frames (default: binary, like the real server)
  --no-acks                 do not acknowledge notifications with {\"status\":200}
  --ack-query-replies       acknowledge query replies with {\"status\":200}
  --status-before-config    send {\"status\":200} before each configureExtension
  --no-bookkeeping          leave out the real server's bookkeeping fields
  --query-timeout-ms N      timeout of control-API queries without timeoutMs (default 10000)
  --max-message-size BYTES  largest message read from a connector (default 67108864)
  --record-limit N          frames, notifications and anomalies kept per record (default
                            10000; older ones are dropped, counters go on)
  --control-token TOKEN     require `Authorization: Bearer TOKEN` on the control API
  --allow-host NAME         accept this Host name on the control API (besides loopback
                            names and IP addresses); repeat for several
  --quiet                   do not print frames
  -h, --help                print this help

Connectors use targetServer=http://ADDR. Control API (same port):
  GET  /control/sources
  GET  /control/sources/NAME
  POST /control/sources/NAME/publish            body: the object
  POST /control/sources/NAME/query?timeoutMs=N  body: the WITH parameters
  GET  /control/sources/NAME/notifications?after=K&waitMs=N
  POST /control/sources/NAME/reconnect          optional body: the new configuration
  POST /control/sources/NAME/drop
  POST /control/sources/NAME/close?code=N&reason=TEXT
  POST /control/sources/NAME/frame[?binary=true]   body: the frame, as is
  POST /control/sources/NAME/refuse?count=N
  POST /control/restart                         closes every connection with 1001
Vantiq REST routes (Authorization: Bearer TOKEN):
  POST /api/v1/resources/sources/NAME           body: the object to publish
  POST /api/v1/resources/sources/NAME/query     body: the WITH parameters; answers the rows
SIGTERM or SIGINT closes every connection with 1001, then exits.
";

/// The parsed command line.
#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    token: Option<String>,
    user: Option<(String, String)>,
    sources: Vec<(String, Json)>,
    namespace: Option<String>,
    text_frames: bool,
    no_acks: bool,
    ack_query_replies: bool,
    status_before_config: bool,
    no_bookkeeping: bool,
    query_timeout: Duration,
    max_message_size: usize,
    record_limit: usize,
    control_token: Option<String>,
    allow_hosts: Vec<String>,
    quiet: bool,
}

#[derive(Debug)]
enum Parsed {
    Run(Box<Args>),
    Help,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
        token: None,
        user: None,
        sources: Vec::new(),
        namespace: None,
        text_frames: false,
        no_acks: false,
        ack_query_replies: false,
        status_before_config: false,
        no_bookkeeping: false,
        query_timeout: Duration::from_secs(10),
        max_message_size: 64 << 20,
        record_limit: 10_000,
        control_token: None,
        allow_hosts: Vec::new(),
        quiet: false,
    };
    while let Some(arg) = it.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().ok_or_else(|| format!("{name} needs {what}")),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--listen" => {
                let v = value("an address")?;
                args.listen = v
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| format!("--listen: cannot resolve `{v}` (use HOST:PORT)"))?;
            }
            "--token" => args.token = Some(value("a token")?),
            "--user" => {
                let v = value("NAME:PASSWORD")?;
                let (u, p) = v
                    .split_once(':')
                    .ok_or("--user needs NAME:PASSWORD".to_owned())?;
                args.user = Some((u.to_owned(), p.to_owned()));
            }
            "--source" => {
                let v = value("NAME[=CONFIG]")?;
                args.sources.push(parse_source(&v)?);
            }
            "--namespace" => args.namespace = Some(value("a namespace")?),
            "--text-frames" => args.text_frames = true,
            "--no-acks" => args.no_acks = true,
            "--ack-query-replies" => args.ack_query_replies = true,
            "--status-before-config" => args.status_before_config = true,
            "--no-bookkeeping" => args.no_bookkeeping = true,
            "--quiet" => args.quiet = true,
            "--query-timeout-ms" => {
                let v = value("milliseconds")?;
                let ms = v
                    .parse::<u64>()
                    .map_err(|_| format!("--query-timeout-ms: `{v}` is not a number"))?;
                args.query_timeout = Duration::from_millis(ms);
            }
            "--max-message-size" => {
                let v = value("bytes")?;
                args.max_message_size = v
                    .parse::<usize>()
                    .map_err(|_| format!("--max-message-size: `{v}` is not a number"))?;
            }
            "--record-limit" => {
                let v = value("a count")?;
                args.record_limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--record-limit: `{v}` is not a positive number"))?;
            }
            "--control-token" => args.control_token = Some(value("a token")?),
            "--allow-host" => args.allow_hosts.push(value("a host name")?),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Parsed::Run(Box::new(args)))
}

/// `NAME`, `NAME=JSON` or `NAME=@FILE`.
fn parse_source(spec: &str) -> Result<(String, Json), String> {
    let (name, config) = match spec.split_once('=') {
        Some((n, c)) => (n.trim(), Some(c)),
        None => (spec.trim(), None),
    };
    if name.is_empty() {
        return Err(format!("--source `{spec}`: the source name is empty"));
    }
    let config = match config {
        None => Json::empty_object(),
        Some(text) => {
            let text = match text.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("--source {name}: cannot read `{path}`: {e}"))?,
                None => text.to_owned(),
            };
            Json::from_string(text)
                .map_err(|e| format!("--source {name}: the configuration is not JSON: {e}"))?
        }
    };
    Ok((name.to_owned(), config))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("vantiq-devserver: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vantiq-devserver: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(*args))
}

async fn run(args: Args) -> ExitCode {
    // Listen for signals before anything is served: a stop requested at any point after
    // start-up gets the clean close.
    let stop = stop_signal();
    let mut builder = TestServer::builder()
        .bind(args.listen)
        .control_api(true)
        .print_frames(!args.quiet)
        .binary_frames(!args.text_frames)
        .ack_notifications(!args.no_acks)
        .ack_query_replies(args.ack_query_replies)
        .status_before_configure(args.status_before_config)
        .bookkeeping(!args.no_bookkeeping)
        .query_timeout(args.query_timeout)
        .max_message_size(Some(args.max_message_size))
        .record_limit(args.record_limit)
        .rest_api(true);
    if let Some(token) = &args.control_token {
        builder = builder.control_token(token.clone());
    }
    for host in &args.allow_hosts {
        builder = builder.allow_host(host.clone());
    }
    if let Some(token) = &args.token {
        builder = builder.token(token.clone());
    }
    if let Some((user, password)) = &args.user {
        builder = builder.credentials(user.clone(), password.clone());
    }
    if let Some(ns) = &args.namespace {
        builder = builder.namespace(ns.clone());
    }
    for (name, config) in &args.sources {
        builder = builder.source(name.clone(), config.clone());
    }
    let server = match builder.start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vantiq-devserver: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The first line is parsed by scripts (and the Python interop test): keep its shape.
    println!("vantiq-devserver listening on {}", server.url());
    println!("  connectors: targetServer={}", server.url());
    match &args.token {
        Some(_) => println!("  token: as given with --token"),
        None => println!("  token: any token is accepted"),
    }
    if args.sources.is_empty() {
        println!("  no sources defined (add --source NAME[=CONFIG]); every connect gets 404");
    }
    for (name, config) in &args.sources {
        println!("  source {name}: {config}");
    }
    println!("  control API: {}/control/sources", server.url());
    println!(
        "  REST: POST {}/api/v1/resources/sources/NAME[/query] with Authorization: Bearer",
        server.url()
    );
    if !server.addr().ip().is_loopback() {
        eprintln!(
            "vantiq-devserver: warning: listening on {}, not a loopback address: anyone who can \
             reach it can drive your connectors through the control API{}",
            server.addr(),
            if args.control_token.is_some() {
                " (a control token is required)"
            } else {
                "; consider --control-token"
            }
        );
    }
    let signal = stop.await;
    println!("vantiq-devserver: {signal}: closing every connection with 1001");
    let clean = server.close_all(Duration::from_secs(3)).await;
    if !clean {
        eprintln!("vantiq-devserver: some connectors did not answer their close frames in time");
    }
    server.shutdown().await;
    println!("vantiq-devserver: stopped");
    ExitCode::SUCCESS
}

/// Starts listening for SIGTERM and SIGINT (Ctrl-C) at once; the future ends when one comes,
/// naming it.
fn stop_signal() -> impl std::future::Future<Output = &'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match signals {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                },
                _ => {
                    eprintln!("vantiq-devserver: cannot listen for signals; stop it by killing it");
                    std::future::pending().await
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let ctrl_c = tokio::signal::ctrl_c();
        async move {
            match ctrl_c.await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_every_option() {
        let Ok(Parsed::Run(a)) = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--token=T",
            "--user",
            "u:p:w",
            "--source",
            "A",
            "--source",
            r#"B={"x":1}"#,
            "--text-frames",
            "--no-acks",
            "--query-timeout-ms",
            "250",
            "--quiet",
        ]) else {
            panic!("did not parse");
        };
        assert_eq!(a.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
        assert_eq!(a.token.as_deref(), Some("T"));
        assert_eq!(a.user, Some(("u".to_owned(), "p:w".to_owned())));
        assert_eq!(a.sources.len(), 2);
        assert_eq!(a.sources[0].1.as_str(), "{}");
        assert_eq!(a.sources[1].1.as_str(), r#"{"x":1}"#);
        assert!(a.text_frames && a.no_acks && a.quiet);
        assert_eq!(a.query_timeout, Duration::from_millis(250));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
        assert!(parse(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(parse(&["--token"]).unwrap_err().contains("--token needs"));
        assert!(
            parse(&["--source", "A={not json"])
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(parse(&["--source", "=1"]).unwrap_err().contains("empty"));
        assert!(parse(&["--user", "nopassword"]).is_err());
        assert!(parse(&["--query-timeout-ms", "soon"]).is_err());
    }
}
