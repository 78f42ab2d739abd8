//! `wss://` on both runtimes: a TLS front for the test server with a certificate from a
//! private CA. Verification is on by default (the connection fails), succeeds once the CA is
//! trusted, and `disableSslVerification` skips it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use vantiq_connector::test_util::echo::Echo;
use vantiq_connector::{CertificateDer, ConnectionState, ConnectorSet};
use vantiq_e2e::{Kit, TestRuntime, on_both_runtimes, start};

on_both_runtimes!(tls_verified_rejected_and_disabled);

struct Front {
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    failures: async_channel::Receiver<String>,
}

/// A TLS terminator in front of the kit's server, for `localhost`, signed by a fresh CA.
async fn tls_front(kit: &Kit) -> Front {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let backend = kit.addr();
    let (fail_tx, failures) = async_channel::unbounded();
    let addr = kit
        .on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    let fail_tx = fail_tx.clone();
                    tokio::spawn(async move {
                        match acceptor.accept(tcp).await {
                            Ok(mut tls) => {
                                let mut up = tokio::net::TcpStream::connect(backend).await.unwrap();
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                            }
                            Err(e) => {
                                let _ = fail_tx.send(e.to_string()).await;
                            }
                        }
                    });
                }
            });
            addr
        })
        .await;
    Front {
        addr,
        ca: ca_cert.der().clone(),
        failures,
    }
}

async fn tls_verified_rejected_and_disabled<R: TestRuntime>() {
    let kit = Kit::start(|b| b.token("T").source("s1", json!({"tls": true}))).await;
    let front = tls_front(&kit).await;
    let url = format!("https://localhost:{}", front.addr.port());
    let config = |extra: &str| vantiq_e2e::config_for(&url, &["s1"], extra);
    let s1 = kit.source("s1");

    // 1. Default verification: the private CA is unknown, so the handshake fails.
    let set = ConnectorSet::<R>::new(config("")).handler(Echo::without_health());
    let source = set.source("s1").unwrap();
    let running = start(set);
    let why = kit
        .within(
            vantiq_e2e::WAIT,
            "a refused TLS handshake",
            front.failures.recv(),
        )
        .await
        .unwrap();
    // The server sees the client give up (an UnknownCA alert, or the socket closing).
    assert!(!why.is_empty());
    assert_ne!(source.state(), ConnectionState::Configured);
    running.stop(&kit).await.unwrap();
    assert_eq!(s1.handle().connect_attempts(), 0, "nothing got past TLS");

    // 2. The CA trusted: verified wss:// works end to end.
    let mut set = ConnectorSet::<R>::new(config("")).handler(Echo::without_health());
    set.transport_options()
        .extra_root_certificates
        .push(front.ca.clone());
    let running = start(set);
    assert_eq!(
        s1.wait_configured().await.to_value().unwrap(),
        json!({"tls": true})
    );
    s1.publish(json!({"over": "tls"})).await;
    assert_eq!(s1.notifications(2).await[1], json!({"over": "tls"}));
    running.stop(&kit).await.unwrap();
    s1.wait_disconnected().await;

    // 3. disableSslVerification (inside connectKWArgs, as the Python SDK reads it).
    let set = ConnectorSet::<R>::new(config(r#"connectKWArgs={"disableSslVerification": true}"#))
        .handler(Echo::without_health());
    let running = start(set);
    s1.wait_connections(2).await;
    s1.publish(json!({"unverified": true})).await;
    assert_eq!(s1.notifications(4).await[3], json!({"unverified": true}));
    running.stop(&kit).await.unwrap();
}
