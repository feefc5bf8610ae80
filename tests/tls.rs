//! TLS (`server.tls_cert` / `server.tls_key`): `https://` and `wss://` on the same port,
//! with a certificate made for the test and a client that trusts only it.

mod common;

use std::sync::Arc;

use common::{TestServer, WsClient};
use serde_json::json;

struct Cert {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn self_signed() -> Cert {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    Cert {
        _dir: dir,
        cert,
        key,
        der: made.cert.der().clone(),
    }
}

fn trusting(der: &rustls::pki_types::CertificateDer<'static>) -> awc::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::new(config)))
        .finish()
}

#[actix_rt::test]
async fn https_and_wss_with_a_configured_certificate() {
    let cert = self_signed();
    let (c, k) = (cert.cert.clone(), cert.key.clone());
    let server = TestServer::with(move |config| {
        config.server.tls_cert = c;
        config.server.tls_key = k;
    })
    .await;
    let port = server.addr.port();
    let client = trusting(&cert.der);

    let mut res = client
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(body["status"], "ok");

    let url = format!("wss://localhost:{port}/ws");
    let mut sub = WsClient::connect_with(&client, &url).await;
    sub.subscribe(json!({"type": "all"})).await;
    let mut publisher = WsClient::connect_with(&client, &url).await;
    publisher.publish(json!({"type": "over_tls"})).await;
    assert_eq!(sub.recv_event().await["event"]["type"], "over_tls");

    // Plain HTTP on the TLS port gets no answer.
    let plain = awc::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP must not be served: {plain:?}");
    // A client that does not trust the certificate is refused.
    let untrusted = trusting(&self_signed().der)
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await;
    assert!(
        untrusted.is_err(),
        "an unknown certificate must fail the handshake"
    );
    server.stop().await;
}
