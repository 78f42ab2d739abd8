//! The connector as a process, on both runtimes: the token from the environment, exit
//! codes, and SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::json;
use vantiq_e2e::{Kit, Smol, WAIT, config_dir, run};

const BIN: &str = env!("CARGO_BIN_EXE_e2e-echo");

fn spawn(runtime: &str, dir: &Path, token: Option<&str>) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg(runtime)
        .current_dir(dir)
        .env_remove("CONNECTOR_AUTH_TOKEN")
        .env_remove("VANTIQ_SERVER_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("CONNECTOR_AUTH_TOKEN", t);
    }
    cmd.spawn().unwrap()
}

/// Waits for the process to end (on a thread, so the wait can time out).
async fn exit(kit: &Kit, child: Child) -> (i32, String) {
    let (tx, rx) = async_channel::bounded(1);
    std::thread::spawn(move || {
        let out = child.wait_with_output().unwrap();
        let _ = tx.send_blocking((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    });
    kit.within(WAIT, "the connector process exiting", rx.recv())
        .await
        .unwrap()
}

fn token_from_environment_then_sigterm(runtime: &'static str) {
    run::<Smol, _>(|| async move {
        let kit = Kit::start(|b| b.token("env-token").source("s1", json!({"x": 1}))).await;
        // No authToken in the file: CONNECTOR_AUTH_TOKEN supplies it.
        let dir = config_dir(
            &format!("env-{runtime}"),
            &format!("targetServer={}\nsources=s1\ntcpProbePort=0\n", kit.url()),
        );
        let child = spawn(runtime, &dir, Some("env-token"));
        let s1 = kit.source("s1");
        s1.wait_configured().await;
        assert_eq!(
            s1.notifications(1).await[0],
            json!({"connected": true, "config": {"x": 1}})
        );
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let (code, stderr) = exit(&kit, child).await;
        assert_eq!(code, 0, "stderr: {stderr}");
        s1.wait_disconnected().await;
        assert_eq!(
            s1.handle().close_frames(),
            [(Some(1000), "Closed by client".to_owned())]
        );
        let _ = std::fs::remove_dir_all(dir);
    });
}

fn fatal_and_config_errors_exit_non_zero(runtime: &'static str) {
    run::<Smol, _>(|| async move {
        let kit = Kit::start(|b| b.token("right").source("s1", json!({}))).await;
        // The environment does not override a token in the file.
        let dir = config_dir(
            &format!("fatal-{runtime}"),
            &format!(
                "targetServer={}\nsources=s1\nauthToken=wrong\ntcpProbePort=0\n",
                kit.url()
            ),
        );
        let (code, stderr) = exit(&kit, spawn(runtime, &dir, Some("right"))).await;
        assert_eq!(code, 1);
        assert!(
            stderr.contains("source `s1`: authentication rejected by the server: status 401"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("right") && !stderr.contains("wrong"),
            "a token in the output: {stderr}"
        );
        let _ = std::fs::remove_dir_all(&dir);

        let empty =
            std::env::temp_dir().join(format!("vantiq-e2e-none-{runtime}-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let (code, stderr) = exit(&kit, spawn(runtime, &empty, None)).await;
        assert_eq!(code, 2);
        assert!(stderr.contains("no server.config found"), "{stderr}");
        let _ = std::fs::remove_dir_all(&empty);

        let dir = config_dir(
            &format!("bad-{runtime}"),
            "targetServer=ftp://x\nsources=a\nauthToken=t\n",
        );
        let (code, stderr) = exit(&kit, spawn(runtime, &dir, None)).await;
        assert_eq!(code, 2);
        assert!(
            stderr.contains("key `targetServer`") && stderr.contains("serverConfig/server.config"),
            "{stderr}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn tokio_token_from_environment_then_sigterm() {
    token_from_environment_then_sigterm("tokio");
}

#[test]
fn smol_token_from_environment_then_sigterm() {
    token_from_environment_then_sigterm("smol");
}

#[test]
fn tokio_fatal_and_config_errors_exit_non_zero() {
    fatal_and_config_errors_exit_non_zero("tokio");
}

#[test]
fn smol_fatal_and_config_errors_exit_non_zero() {
    fatal_and_config_errors_exit_non_zero("smol");
}

/// Notifications in the burst `example_stops_gracefully_on_sigterm` publishes: enough (with
/// their payload, about 2 MB) that the handler is still queueing them, and the queue holds
/// some, when the signal arrives.
const BURST: usize = 2000;

/// An echo example (`shutdown_on_signals`), given its `server.config` as its argument:
/// configured, then a burst of notifications under way, then SIGTERM. It exits 0 after
/// closing with code 1000, and every notification it had queued reaches the server first:
/// the server has an unbroken run `seq` 0, 1, … and the connector reports none undelivered
/// (the handler's later `notify` calls fail, as the queue is closed by then).
fn example_stops_gracefully_on_sigterm(bin: &'static str, runtime: &'static str) {
    run::<Smol, _>(|| async move {
        let kit = Kit::start(|b| {
            b.token("t")
                .source("s1", json!({"x": 1}))
                .record_limit(BURST + 10)
        })
        .await;
        let dir =
            std::env::temp_dir().join(format!("vantiq-e2e-sig-{runtime}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("connector.config");
        std::fs::write(
            &file,
            format!(
                "targetServer={}\nauthToken=t\nsources=s1\ntcpProbePort=0\n",
                kit.url()
            ),
        )
        .unwrap();
        // Started elsewhere, so that only the argument can name the file.
        let child = Command::new(bin)
            .arg(&file)
            .current_dir(std::env::temp_dir())
            .env_remove("VANTIQ_SERVER_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let s1 = kit.source("s1");
        s1.wait_configured().await;
        assert_eq!(
            s1.notifications(1).await[0],
            json!({"connected": true, "config": {"x": 1}})
        );
        let payload = "p".repeat(1000);
        s1.publish(json!({"burst": BURST, "payload": payload}))
            .await;
        // The first of the burst is here: the handler is queueing the rest.
        s1.notifications(2).await;
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let (code, stderr) = exit(&kit, child).await;
        assert_eq!(code, 0, "stderr: {stderr}");
        s1.wait_disconnected().await;
        assert_eq!(
            s1.handle().close_frames(),
            [(Some(1000), "Closed by client".to_owned())]
        );
        let all = s1.handle().notifications_snapshot();
        assert!(all.len() >= 2, "{all:?}");
        for (i, n) in all[1..].iter().enumerate() {
            assert_eq!(n.to_value().unwrap(), json!({"seq": i, "payload": payload}));
        }
        assert!(
            stderr.contains("signal received: shutting down"),
            "{stderr}"
        );
        assert!(!stderr.contains("never delivered"), "{stderr}");
        let _ = std::fs::remove_dir_all(dir);
    });
}

#[test]
fn tokio_example_stops_gracefully_on_sigterm() {
    example_stops_gracefully_on_sigterm(env!("CARGO_BIN_EXE_example-echo-tokio"), "tokio");
}

#[test]
fn smol_example_stops_gracefully_on_sigterm() {
    example_stops_gracefully_on_sigterm(env!("CARGO_BIN_EXE_example-echo-smol"), "smol");
}

/// `VANTIQ_SERVER_CONFIG` names the file, wherever the process runs; a path that cannot be
/// read is a configuration error naming the variable and the path.
fn config_from_the_environment_variable(runtime: &'static str) {
    run::<Smol, _>(|| async move {
        let kit = Kit::start(|b| b.token("t").source("s1", json!({"x": 2}))).await;
        let dir = std::env::temp_dir().join(format!(
            "vantiq-e2e-envpath-{runtime}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("named.config");
        std::fs::write(
            &file,
            format!(
                "targetServer={}\nauthToken=t\nsources=s1\ntcpProbePort=0\n",
                kit.url()
            ),
        )
        .unwrap();
        // The working directory has no server.config: only the variable names one.
        let connector = |path: &Path| {
            Command::new(BIN)
                .arg(runtime)
                .current_dir(&dir)
                .env("VANTIQ_SERVER_CONFIG", path)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let child = connector(&file);
        let s1 = kit.source("s1");
        assert_eq!(
            s1.wait_configured().await.to_value().unwrap(),
            json!({"x": 2})
        );
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let (code, stderr) = exit(&kit, child).await;
        assert_eq!(code, 0, "stderr: {stderr}");

        let missing = dir.join("missing.config");
        let (code, stderr) = exit(&kit, connector(&missing)).await;
        assert_eq!(code, 2, "stderr: {stderr}");
        assert!(
            stderr.contains(&format!(
                "could not read {}, named by the environment variable VANTIQ_SERVER_CONFIG",
                missing.display()
            )),
            "{stderr}"
        );
        let _ = std::fs::remove_dir_all(dir);
    });
}

#[test]
fn tokio_config_from_the_environment_variable() {
    config_from_the_environment_variable("tokio");
}

#[test]
fn smol_config_from_the_environment_variable() {
    config_from_the_environment_variable("smol");
}

/// A second SIGTERM while the graceful shutdown waits (here for a server that stopped
/// answering) ends the process at once with status 130.
fn a_second_signal_exits_at_once(bin: &'static str, runtime: &'static str) {
    run::<Smol, _>(|| async move {
        use std::io::BufRead as _;

        let kit = Kit::start(|b| b.token("t").source("s1", json!({}))).await;
        let proxy = vantiq_e2e::proxy::Proxy::start(kit.addr());
        let dir = std::env::temp_dir().join(format!(
            "vantiq-e2e-second-{runtime}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("connector.config");
        std::fs::write(
            &file,
            format!(
                "targetServer={}\nauthToken=t\nsources=s1\ntcpProbePort=0\n",
                proxy.url()
            ),
        )
        .unwrap();
        let mut child = Command::new(bin)
            .arg(&file)
            .env_remove("VANTIQ_SERVER_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The log lines as they come, on a thread.
        let (lines_tx, lines) = async_channel::unbounded();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send_blocking(line).is_err() {
                    break;
                }
            }
        });
        kit.source("s1").wait_configured().await;
        // The server stops answering: the close handshake will wait for its timeout.
        assert_eq!(proxy.stall(), 1);
        let pid = child.id().to_string();
        let term = || {
            assert!(
                Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
        };
        term();
        kit.within(WAIT, "the first signal's log line", async {
            while !lines
                .recv()
                .await
                .unwrap()
                .contains("signal received: shutting down")
            {}
        })
        .await;
        term();
        let mut rest = Vec::new();
        kit.within(WAIT, "the process closing its stderr", async {
            while let Ok(line) = lines.recv().await {
                rest.push(line);
            }
        })
        .await;
        let (tx, rx) = async_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send_blocking(child.wait().unwrap().code());
        });
        let code = kit.within(WAIT, "the exit", rx.recv()).await.unwrap();
        assert_eq!(code, Some(130), "{rest:#?}");
        assert!(
            rest.iter()
                .any(|l| l.contains("second signal while shutting down: exiting at once")),
            "{rest:#?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    });
}

#[test]
fn tokio_example_a_second_signal_exits_at_once() {
    a_second_signal_exits_at_once(env!("CARGO_BIN_EXE_example-echo-tokio"), "tokio");
}

#[test]
fn smol_example_a_second_signal_exits_at_once() {
    a_second_signal_exits_at_once(env!("CARGO_BIN_EXE_example-echo-smol"), "smol");
}

/// The README's first command: the quickstart runs a whole session against the embedded
/// server on its own and exits 0, having seen each step it prints.
#[test]
fn the_readme_quickstart_runs_end_to_end() {
    let child = Command::new(env!("CARGO_BIN_EXE_example-quickstart"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(std::time::Duration::from_secs(120)) else {
        let _ = Command::new("kill").args(["-9", &pid]).status();
        panic!("the quickstart did not end within 120 s");
    };
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("  notification: {\"seq\":").count(),
        3,
        "{stdout}"
    );
    assert_eq!(stdout.matches("  reply ").count(), 3, "{stdout}");
    for step in [
        "Vantiq test server listening on ",
        "configured with {\"pollMs\":500,\"room\":\"kitchen\"}",
        "  declared healthy: Some(true)",
        "published {\"burst\": 3, ...}",
        "  reply 3: status 200 body [{\"i\":4}]",
        "  rows: [{\"i\":0},{\"i\":1},{\"i\":2},{\"i\":3},{\"i\":4}]",
        "after reconnectRequired the connector says: {\"connected\":true,\"config\":{\"pollMs\":250,\"room\":\"attic\"}}",
        "  same socket: 1 socket(s) opened in all",
        "shut down cleanly (close frames seen: [(Some(1000), ",
    ] {
        assert!(stdout.contains(step), "no `{step}` in:\n{stdout}");
    }
}
