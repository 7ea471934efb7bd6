//! `wss://` over real sockets: the server's TLS (`ServeOptions::tls`) and the Rust client's
//! (system roots by default, or a given root store), with a certificate made in the test.

mod support;

use std::time::Duration;
use support::bounded;
use tokio::io::AsyncReadExt;
use ws_kit::client::{Client, ClientError, Reconnect};
use ws_kit::{Router, ServeOptions, Server, TlsConfig, routes};
use ws_kit_tests::{Ping, ping};

/// A self-signed certificate for `localhost`: its PEM chain and key, and a root store trusting it.
fn certificate() -> (String, String, rustls::RootCertStore) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certified.cert.der().clone())
        .expect("the certificate is a root");
    (
        certified.cert.pem(),
        certified.signing_key.serialize_pem(),
        roots,
    )
}

/// A `wss://` server of the PING echo; returns its service, its port and the trusting roots.
async fn tls_server(
    handshake_timeout: Duration,
) -> (ws_kit::Service<()>, u16, rustls::RootCertStore) {
    let (chain, key, roots) = certificate();
    let tls = TlsConfig::from_pem(chain.as_bytes(), key.as_bytes()).expect("TLS config");
    let options = ServeOptions::new()
        .port(0)
        .tls(tls)
        .handshake_timeout(handshake_timeout);
    let server = Server::bind(Router::new().routes(routes![ping]), options)
        .await
        .expect("bind");
    assert!(
        server.url().starts_with("wss://127.0.0.1:"),
        "{}",
        server.url()
    );
    let (service, port) = (server.service(), server.local_addr().port());
    tokio::spawn(server.run());
    (service, port, roots)
}

/// The Rust client on `wss://localhost:port`, trusting `roots`.
async fn trusting_client(port: u16, roots: rustls::RootCertStore) -> Client {
    Client::builder(format!("wss://localhost:{port}"))
        .tls_roots(roots)
        .connect()
        .await
        .expect("connect over TLS")
}

#[test]
fn the_rust_client_speaks_wss_with_a_given_root_store() {
    bounded(async {
        let (service, port, roots) = tls_server(Duration::from_secs(5)).await;
        let client = trusting_client(port, roots).await;
        let pong = client
            .request(&Ping {
                text: "sealed by TLS".into(),
            })
            .await
            .unwrap();
        assert_eq!(pong.reply, "sealed by TLS");
        assert_eq!(service.connection_count(), 1);
        client.close().await;
        service.shutdown();
    });
}

#[test]
fn an_untrusted_certificate_is_refused_by_the_client() {
    bounded(async {
        let (service, port, _roots) = tls_server(Duration::from_secs(5)).await;
        // The system's roots do not know a certificate made a moment ago.
        let result = Client::builder(format!("wss://localhost:{port}"))
            .reconnect(Reconnect::never())
            .connect()
            .await;
        match result {
            Err(ClientError::Connect(e)) => {
                let text = e.to_string();
                assert!(text.to_lowercase().contains("certificate"), "{text}");
            }
            Err(other) => panic!("expected a TLS failure, got {other}"),
            Ok(_) => panic!("connected to an untrusted certificate"),
        }
        service.shutdown();
    });
}

#[test]
fn plain_sockets_and_silent_ones_get_nothing_and_the_server_goes_on() {
    bounded(async {
        let (service, port, roots) = tls_server(Duration::from_millis(300)).await;
        // A plain-text upgrade to the TLS port fails its handshake.
        let plain = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}")).await;
        assert!(plain.is_err(), "a plain upgrade passed the TLS port");
        // A socket that never starts TLS is closed after the handshake timeout.
        let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "silent socket not closed: {read:?}"
        );
        // Meanwhile a real client is served.
        let client = trusting_client(port, roots).await;
        let pong = client
            .request(&Ping {
                text: "still here".into(),
            })
            .await
            .unwrap();
        assert_eq!(pong.reply, "still here");
        client.close().await;
        service.shutdown();
    });
}

#[test]
fn unreadable_certificates_are_a_clear_error() {
    let (chain, key, _) = certificate();
    for (chain, key) in [
        ("not pem".to_string(), key.clone()),
        (chain.clone(), "not a key".to_string()),
        (String::new(), key),
    ] {
        match TlsConfig::from_pem(chain.as_bytes(), key.as_bytes()) {
            Err(ws_kit::Error::Tls(e)) => assert!(!e.to_string().is_empty()),
            other => panic!("expected a TLS error, got {other:?}"),
        }
    }
    let missing = TlsConfig::from_pem_files("/nonexistent/chain.pem", "/nonexistent/key.pem");
    assert!(matches!(missing, Err(ws_kit::Error::Io(_))));
}
