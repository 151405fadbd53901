//! A running server and a running client follow their own certificate and
//! key files: after a renewal, new handshakes present the new certificate
//! (the serial the other side sees changes) with no restart; a broken or
//! mismatched pair is ignored and the last good one kept.

use std::{path::Path, sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use vigil_pki::{Identity, Role, TlsConfig, authority, tls::TlsMaterial};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Look at the files at every handshake, so the test needs no waits.
const EVERY: Duration = Duration::ZERO;

fn issue(dir: &Path, role: Role, id: &str, sans: &[&str], days: u32) {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    // `force`: replace the files in place, as a renewal does.
    authority::issue(dir, role, &Identity::new(id).unwrap(), &sans, days, true).unwrap();
}

fn config(dir: &Path, id: &str) -> TlsConfig {
    TlsConfig {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{id}.pem")),
        key: dir.join(format!("{id}.key")),
        crl: None,
    }
}

fn serial(cert: &CertificateDer<'_>) -> String {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).unwrap();
    x509.raw_serial_as_string()
}

fn serial_on_disk(path: &Path) -> String {
    use rustls_pki_types::pem::PemObject;
    serial(&CertificateDer::from_pem_file(path).unwrap())
}

/// One connection from a new client (a config of its own, so no session
/// to resume) built from the running client's material: returns (serial
/// the client saw of the server, serial the server saw of the client).
async fn exchange(addr: std::net::SocketAddr, client: &TlsMaterial) -> (String, String) {
    let connector = TlsConnector::from(Arc::new(client.client_config().unwrap()));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let server_serial = serial(&tls.get_ref().1.peer_certificates().unwrap()[0]);
    tls.write_all(b"?").await.unwrap();
    let mut client_serial = String::new();
    tls.read_to_string(&mut client_serial).await.unwrap();
    (server_serial, client_serial)
}

#[tokio::test]
async fn renewed_certificates_are_used_without_a_restart_broken_ones_ignored() {
    vigil_pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    authority::init(pki, "test CA").unwrap();
    issue(pki, Role::Ops, "ops-1", &["127.0.0.1"], 30);
    issue(pki, Role::Post, "p-1", &[], 30);
    issue(pki, Role::Post, "p-2", &[], 30);

    // Built once, as a running daemon does.
    let server_material = config(pki, "ops-1").load_following_every(EVERY).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_material.server_config().unwrap()));
    let client_material = config(pki, "p-1").load_following_every(EVERY).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        // The server answers each client with the serial it saw.
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let seen = serial(&tls.get_ref().1.peer_certificates().unwrap()[0]);
            let mut byte = [0u8; 1];
            let _ = tls.read_exact(&mut byte).await;
            let _ = tls.write_all(seen.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });

    let (ops_1, p_1) = (
        serial_on_disk(&pki.join("ops-1.pem")),
        serial_on_disk(&pki.join("p-1.pem")),
    );
    assert_eq!(
        exchange(addr, &client_material).await,
        (ops_1.clone(), p_1.clone())
    );
    let expiry_before = server_material.own_cert().not_after();

    // Renew both, with a different validity.
    issue(pki, Role::Ops, "ops-1", &["127.0.0.1"], 60);
    issue(pki, Role::Post, "p-1", &[], 60);
    let (ops_2, p_2) = (
        serial_on_disk(&pki.join("ops-1.pem")),
        serial_on_disk(&pki.join("p-1.pem")),
    );
    assert_ne!(ops_1, ops_2);
    assert_eq!(
        exchange(addr, &client_material).await,
        (ops_2.clone(), p_2.clone())
    );
    assert!(server_material.own_cert().not_after() > expiry_before);

    // A half-copied certificate: the last good pair stays.
    let good = std::fs::read(pki.join("ops-1.pem")).unwrap();
    std::fs::write(pki.join("ops-1.pem"), &good[..good.len() / 2]).unwrap();
    assert_eq!(
        exchange(addr, &client_material).await,
        (ops_2.clone(), p_2.clone())
    );

    // A whole certificate with another party's key: still the last good.
    std::fs::write(pki.join("ops-1.pem"), &good).unwrap();
    std::fs::copy(pki.join("p-2.key"), pki.join("ops-1.key")).unwrap();
    assert_eq!(
        exchange(addr, &client_material).await,
        (ops_2.clone(), p_2.clone())
    );

    // Another identity's pair (p-2 copied over p-1): refused, p-1 stays.
    std::fs::copy(pki.join("p-2.pem"), pki.join("p-1.pem")).unwrap();
    std::fs::copy(pki.join("p-2.key"), pki.join("p-1.key")).unwrap();
    assert_eq!(exchange(addr, &client_material).await, (ops_2, p_2));
    assert_eq!(client_material.own_peer().identity.as_str(), "p-1");

    // The right pair lands: it is picked up.
    issue(pki, Role::Ops, "ops-1", &["127.0.0.1"], 90);
    let ops_3 = serial_on_disk(&pki.join("ops-1.pem"));
    assert_eq!(exchange(addr, &client_material).await.0, ops_3);
    server.abort();
}
