//! Certificates issued by `authority` work in real TLS handshakes over
//! loopback, both ways, and are refused when revoked or from another CA.

use std::{path::Path, sync::Arc};

use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use vigil_pki::{Identity, Peer, Role, TlsConfig, authority};

fn issue(dir: &Path, role: Role, id: &str, sans: &[&str]) {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    authority::issue(dir, role, &Identity::new(id).unwrap(), &sans, 30, false).unwrap();
}

fn tls_config(dir: &Path, id: &str, crl: bool) -> TlsConfig {
    TlsConfig {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{id}.pem")),
        key: dir.join(format!("{id}.key")),
        crl: crl.then(|| dir.join("crl.pem")),
    }
}

/// What each side saw of one handshake attempt.
struct Outcome {
    /// The peer the server authenticated, if the handshake completed.
    server_saw: Result<Peer, String>,
    /// Whether the client got the server's reply through the TLS session.
    client_ok: Result<(), String>,
}

/// Runs one handshake between a server configured from `server` and a client
/// configured from `client` on 127.0.0.1, and exchanges one message.
async fn handshake(server: &TlsConfig, client: &TlsConfig) -> Outcome {
    vigil_pki::install_crypto_provider();
    let server_cfg = server.load().unwrap().server_config().unwrap();
    handshake_with(Arc::new(server_cfg), client).await
}

/// One handshake and exchange against a server config built by the caller.
async fn handshake_with(server_cfg: Arc<rustls::ServerConfig>, client: &TlsConfig) -> Outcome {
    vigil_pki::install_crypto_provider();
    let client_cfg = client.load().unwrap().client_config().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let acceptor = TlsAcceptor::from(server_cfg);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no client certificate")?;
        let peer = Peer::from_cert(&cert).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });

    let connector = TlsConnector::from(Arc::new(client_cfg));
    let client_ok = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        if buf == b"pong" {
            Ok(())
        } else {
            Err(format!("unexpected reply {buf:?}"))
        }
    }
    .await;
    let server_saw = server_task.await.unwrap();
    Outcome {
        server_saw,
        client_ok,
    }
}

#[tokio::test]
async fn issued_certificates_authenticate_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    authority::init(dir.path(), "test CA").unwrap();
    issue(
        dir.path(),
        Role::Broker,
        "broker",
        &["localhost", "127.0.0.1"],
    );
    issue(dir.path(), Role::Post, "p-017", &[]);

    let out = handshake(
        &tls_config(dir.path(), "broker", true),
        &tls_config(dir.path(), "p-017", true),
    )
    .await;
    assert_eq!(out.client_ok, Ok(()));
    let peer = out.server_saw.unwrap();
    assert_eq!(peer.identity.as_str(), "p-017");
    assert_eq!(peer.role, Role::Post);
}

#[tokio::test]
async fn ops_certificate_serves_and_connects() {
    let dir = tempfile::tempdir().unwrap();
    authority::init(dir.path(), "test CA").unwrap();
    issue(dir.path(), Role::Broker, "broker", &["localhost"]);
    issue(dir.path(), Role::Ops, "ops-1", &["localhost"]);
    issue(dir.path(), Role::Analyst, "alice", &[]);

    // ops as a client of the broker.
    let out = handshake(
        &tls_config(dir.path(), "broker", false),
        &tls_config(dir.path(), "ops-1", false),
    )
    .await;
    assert_eq!(out.client_ok, Ok(()));
    assert_eq!(out.server_saw.unwrap().role, Role::Ops);

    // ops as the server an analyst connects to.
    let out = handshake(
        &tls_config(dir.path(), "ops-1", false),
        &tls_config(dir.path(), "alice", false),
    )
    .await;
    assert_eq!(out.client_ok, Ok(()));
    let peer = out.server_saw.unwrap();
    assert_eq!(
        (peer.identity.as_str(), peer.role),
        ("alice", Role::Analyst)
    );
}

#[tokio::test]
async fn revoked_client_is_refused_once_crl_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    authority::init(dir.path(), "test CA").unwrap();
    issue(dir.path(), Role::Broker, "broker", &["localhost"]);
    issue(dir.path(), Role::Post, "p-001", &[]);
    issue(dir.path(), Role::Post, "p-002", &[]);
    let revoked = authority::revoke(dir.path(), &Identity::new("p-001").unwrap()).unwrap();
    assert!(revoked.newly_revoked);
    assert_eq!(revoked.revoked_count, 1);

    // Without the CRL the revoked certificate still works ...
    let out = handshake(
        &tls_config(dir.path(), "broker", false),
        &tls_config(dir.path(), "p-001", false),
    )
    .await;
    assert_eq!(out.client_ok, Ok(()));

    // ... with it, the server refuses it ...
    let out = handshake(
        &tls_config(dir.path(), "broker", true),
        &tls_config(dir.path(), "p-001", false),
    )
    .await;
    let err = out.server_saw.unwrap_err();
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    assert!(out.client_ok.is_err());

    // ... and still accepts the others.
    let out = handshake(
        &tls_config(dir.path(), "broker", true),
        &tls_config(dir.path(), "p-002", false),
    )
    .await;
    assert_eq!(out.client_ok, Ok(()));

    // Revoking twice changes nothing.
    let again = authority::revoke(dir.path(), &Identity::new("p-001").unwrap()).unwrap();
    assert!(!again.newly_revoked);
    assert_eq!(again.revoked_count, 1);
}

#[tokio::test]
async fn a_running_server_follows_its_crl_file() {
    let dir = tempfile::tempdir().unwrap();
    authority::init(dir.path(), "test CA").unwrap();
    issue(dir.path(), Role::Broker, "broker", &["localhost"]);
    issue(dir.path(), Role::Post, "p-001", &[]);
    issue(dir.path(), Role::Post, "p-002", &[]);
    vigil_pki::install_crypto_provider();
    let every = std::time::Duration::from_millis(50);
    // Built once, as a running server does.
    let server = Arc::new(
        tls_config(dir.path(), "broker", true)
            .load()
            .unwrap()
            .server_config_checking_crl_every(every)
            .unwrap(),
    );
    let client = |id: &str| tls_config(dir.path(), id, false);
    assert_eq!(
        handshake_with(server.clone(), &client("p-001"))
            .await
            .client_ok,
        Ok(())
    );

    authority::revoke(dir.path(), &Identity::new("p-001").unwrap()).unwrap();
    tokio::time::sleep(every * 2).await;
    let out = handshake_with(server.clone(), &client("p-001")).await;
    let err = out.server_saw.unwrap_err();
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    assert_eq!(
        handshake_with(server.clone(), &client("p-002"))
            .await
            .client_ok,
        Ok(())
    );

    // A broken CRL file (say, half copied) keeps the last good one.
    let crl = dir.path().join("crl.pem");
    let good = std::fs::read(&crl).unwrap();
    std::fs::write(&crl, &good[..good.len() / 2]).unwrap();
    tokio::time::sleep(every * 2).await;
    assert!(
        handshake_with(server.clone(), &client("p-001"))
            .await
            .client_ok
            .is_err()
    );
    assert_eq!(
        handshake_with(server.clone(), &client("p-002"))
            .await
            .client_ok,
        Ok(())
    );
}

#[tokio::test]
async fn revoked_server_is_refused_by_clients_with_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    authority::init(dir.path(), "test CA").unwrap();
    issue(dir.path(), Role::Broker, "broker", &["localhost"]);
    issue(dir.path(), Role::Post, "p-001", &[]);
    authority::revoke(dir.path(), &Identity::new("broker").unwrap()).unwrap();

    let out = handshake(
        &tls_config(dir.path(), "broker", false),
        &tls_config(dir.path(), "p-001", true),
    )
    .await;
    let err = out.client_ok.unwrap_err();
    assert!(err.to_lowercase().contains("revoked"), "{err}");
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let region = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    authority::init(region.path(), "region CA").unwrap();
    authority::init(other.path(), "other CA").unwrap();
    issue(region.path(), Role::Broker, "broker", &["localhost"]);
    issue(other.path(), Role::Post, "p-017", &[]);

    // The client trusts the other CA's certificate of its own, but presents a
    // certificate the region CA never issued.
    let out = handshake(
        &tls_config(region.path(), "broker", true),
        &TlsConfig {
            ca: region.path().join("ca.pem"),
            ..tls_config(other.path(), "p-017", false)
        },
    )
    .await;
    assert!(out.server_saw.is_err());
    assert!(out.client_ok.is_err());

    // And a client that trusts only the other CA refuses the region's broker.
    let out = handshake(
        &tls_config(region.path(), "broker", false),
        &tls_config(other.path(), "p-017", false),
    )
    .await;
    let err = out.client_ok.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );
}

#[test]
fn load_reports_bad_files_with_their_field() {
    vigil_pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    authority::init(dir.path(), "test CA").unwrap();
    issue(dir.path(), Role::Post, "p-1", &[]);
    issue(dir.path(), Role::Post, "p-2", &[]);

    let missing = TlsConfig {
        key: dir.path().join("nope.key"),
        ..tls_config(dir.path(), "p-1", true)
    };
    let err = missing.load().unwrap_err().to_string();
    assert!(
        err.starts_with("tls.key = ") && err.contains("nope.key"),
        "{err}"
    );

    let mismatched = TlsConfig {
        key: dir.path().join("p-2.key"),
        ..tls_config(dir.path(), "p-1", true)
    };
    assert!(mismatched.load().is_err());

    let not_a_cert = TlsConfig {
        ca: dir.path().join("p-1.key"),
        ..tls_config(dir.path(), "p-1", true)
    };
    let err = not_a_cert.load().unwrap_err().to_string();
    assert!(err.starts_with("tls.ca = "), "{err}");

    let loaded = tls_config(dir.path(), "p-1", true).load().unwrap();
    assert_eq!(loaded.own_peer().identity.as_str(), "p-1");
    assert!(loaded.has_crl());
}

#[test]
fn pki_refuses_to_overwrite_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    authority::init(dir.path(), "test CA").unwrap();
    assert!(matches!(
        authority::init(dir.path(), "again"),
        Err(authority::AuthorityError::CaExists(_))
    ));
    issue(dir.path(), Role::Post, "p-1", &[]);
    let id = Identity::new("p-1").unwrap();
    assert!(matches!(
        authority::issue(dir.path(), Role::Post, &id, &[], 30, false),
        Err(authority::AuthorityError::CertExists(_))
    ));
    assert!(authority::issue(dir.path(), Role::Post, &id, &[], 30, true).is_ok());
    assert!(matches!(
        authority::issue(
            dir.path(),
            Role::Ops,
            &Identity::new("ops").unwrap(),
            &[],
            30,
            false
        ),
        Err(authority::AuthorityError::MissingSan(Role::Ops))
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        authority::issue(empty.path(), Role::Post, &id, &[], 30, false),
        Err(authority::AuthorityError::NoCa(_))
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "p-1.key"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
}
