//! A running operations center switches to a renewed certificate without a
//! restart: the serial a new client sees changes, within the 10 s the
//! daemon takes between two looks at its files. (Broken and mismatched
//! pairs are refused in `pki/tests/reload.rs`, at a short period.)

use std::{sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use vigil_pki::{Identity, Role, TlsConfig, authority};
use vigil_tests::Region;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Longer than the daemon's 10 s between two looks at its files.
const FOLLOW: Duration = Duration::from_secs(40);

fn serial(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .expect("certificate")
        .1
        .raw_serial_as_string()
}

/// The serial of the certificate the API presents to a new client (a
/// config of its own: no session to resume).
async fn served_serial(region: &Region, api: std::net::SocketAddr) -> String {
    let pki = region.path("pki");
    let client = TlsConfig {
        ca: pki.join("ca.pem"),
        cert: pki.join("alice.pem"),
        key: pki.join("alice.key"),
        crl: None,
    }
    .load()
    .expect("client tls")
    .client_config()
    .expect("client config");
    let mut client = client;
    client.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(api).await.expect("connect");
    let tls = TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    serial(
        tls.get_ref()
            .1
            .peer_certificates()
            .expect("server certificate")[0]
            .as_ref(),
    )
}

/// Polls until the API presents `want`, at most [`FOLLOW`].
async fn until_served(region: &Region, api: std::net::SocketAddr, want: &str) -> bool {
    let deadline = tokio::time::Instant::now() + FOLLOW;
    while tokio::time::Instant::now() < deadline {
        if served_serial(region, api).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_ops_center_serves_its_renewed_certificate() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops(broker.addr()).await;
    region.issue(Role::Analyst, "alice");
    let pki = region.path("pki");
    let on_disk = || {
        serial(
            CertificateDer::from_pem_file(pki.join("ops-1.pem"))
                .unwrap()
                .as_ref(),
        )
    };
    let first = on_disk();
    assert_eq!(served_serial(&region, ops.api).await, first);

    // Renewal as `vigil pki renew` does it: same identity, role and SANs,
    // new files written beside the old ones and renamed into place.
    let sans = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    authority::issue(
        &pki,
        Role::Ops,
        &Identity::new("ops-1").unwrap(),
        &sans,
        30,
        true,
    )
    .unwrap();
    let renewed = on_disk();
    assert_ne!(renewed, first);
    assert!(
        until_served(&region, ops.api, &renewed).await,
        "the renewed certificate is served without a restart"
    );
    ops.stop().await;
    broker.stop().await;
}
