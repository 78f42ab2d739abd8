//! The files the repository ships in several copies or for a newcomer: the copy of the
//! sample inside `vantiq-proto` stays identical to `serverConfig/server.config`, each
//! library crate's `LICENSE` to the repository's, and `serverConfig/devserver.config`
//! connects to the devserver as the README starts it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;

use serde_json::json;
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector::{ConnectorSet, ServerConfig, load_config_file};
use vantiq_e2e::{Kit, Smol, run, start};

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_proto_crates_copy_of_the_sample_is_identical() {
    assert!(
        repo_file("serverConfig/server.config")
            == repo_file("vantiq-proto/tests/data/server.config"),
        "vantiq-proto/tests/data/server.config differs from serverConfig/server.config: \
         copy the sample over it (`cp serverConfig/server.config vantiq-proto/tests/data/`)"
    );
}

#[test]
fn every_library_crates_license_is_the_repositorys() {
    let license = repo_file("LICENSE");
    for krate in [
        "vantiq-proto",
        "vantiq-health",
        "vantiq-connector",
        "vantiq-connector-tokio",
        "vantiq-connector-smol",
        "vantiq-testkit",
    ] {
        assert!(
            repo_file(&format!("{krate}/LICENSE")) == license,
            "{krate}/LICENSE differs from LICENSE: copy it over (`cp LICENSE {krate}/`)"
        );
    }
}

/// What the README's devserver command starts: `--listen` left at its default
/// 127.0.0.1:8088, `--token dev-token`, `--source Thermo=...`.
#[test]
fn the_devserver_config_matches_the_devserver() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../serverConfig/devserver.config");
    let config = load_config_file(&path).unwrap();
    assert_eq!(
        config.target().as_str(),
        "ws://127.0.0.1:8088/api/v1/wsock/websocket"
    );
    assert_eq!(config.get("authToken"), Some("dev-token"));
    assert_eq!(config.sources(), ["Thermo"]);
    assert_eq!(config.get("tcpProbePort"), Some("0"));
    // The only warning is the file's mode, when the checkout made it readable by others.
    for w in config.warnings() {
        assert!(w.contains("is readable by"), "{w}");
    }

    // The same file, pointed at a test server started as the devserver is: the echo
    // connector is configured.
    let text = repo_file("serverConfig/devserver.config");
    run::<Smol, _>(|| async move {
        let kit = Kit::start(|b| {
            b.token("dev-token")
                .source("Thermo", json!({"pollMs": 500}))
        })
        .await;
        let text = text.replace(
            "targetServer = http://127.0.0.1:8088",
            &format!("targetServer = {}", kit.url()),
        );
        assert!(text.contains(&kit.url()));
        let config = ServerConfig::parse(&text, "devserver.config", |_| None).unwrap();
        let set = ConnectorSet::<Smol>::new(config);
        let echo = Echo::new(set.health(), set.sources());
        let running = start(set.handler(echo));
        let thermo = kit.source("Thermo");
        assert_eq!(
            thermo.wait_configured().await.to_value().unwrap(),
            json!({"pollMs": 500})
        );
        running.stop(&kit).await.unwrap();
    });
}
