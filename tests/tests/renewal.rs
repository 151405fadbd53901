//! Running daemons switch to a renewed certificate without a restart, and
//! certificates that expire soon are seen: the serial a new client sees
//! changes (ops center, broker), a gateway reconnects with its renewed
//! certificate, within the 10 s each daemon takes between two looks at its
//! files; a gateway whose certificate expires in 10 days raises a health
//! event that opens a low-priority incident, restored by the renewal; the
//! broker and the ops center count peers whose certificates expire soon.
//! (Broken and mismatched pairs are refused in `pki/tests/reload.rs`, at a
//! short period.)

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use vigil_pki::{Identity, Role, TlsConfig, authority};
use vigil_proto::v1::{HealthKind, HealthState, ListIncidentsRequest, Priority, event::Body};
use vigil_tests::Region;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Longer than the daemon's 10 s between two looks at its files (and the
/// gateway's 10 s between two looks at its certificate's expiry).
const FOLLOW: Duration = Duration::from_secs(40);

const DAY: i64 = 86_400;

fn serial(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .expect("certificate")
        .1
        .raw_serial_as_string()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The serial of the certificate the server at `addr` presents to a new
/// client (a config of its own: no session to resume), offering `alpn`.
async fn served_serial(region: &Region, addr: SocketAddr, alpn: &[u8]) -> String {
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
    if !alpn.is_empty() {
        client.alpn_protocols = vec![alpn.to_vec()];
    }
    let tcp = TcpStream::connect(addr).await.expect("connect");
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

/// Polls until the server at `addr` presents `want`, at most [`FOLLOW`].
async fn until_served(region: &Region, addr: SocketAddr, alpn: &[u8], want: &str) -> bool {
    let deadline = tokio::time::Instant::now() + FOLLOW;
    while tokio::time::Instant::now() < deadline {
        if served_serial(region, addr, alpn).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Polls `check` every 250 ms for at most [`FOLLOW`].
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + FOLLOW;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn on_disk(region: &Region, id: &str) -> String {
    serial(
        CertificateDer::from_pem_file(region.path("pki").join(format!("{id}.pem")))
            .unwrap()
            .as_ref(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_ops_center_serves_its_renewed_certificate() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops(broker.addr()).await;
    region.issue(Role::Analyst, "alice");
    let pki = region.path("pki");
    let first = on_disk(&region, "ops-1");
    assert_eq!(served_serial(&region, ops.api, b"h2").await, first);

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
    let renewed = on_disk(&region, "ops-1");
    assert_ne!(renewed, first);
    assert!(
        until_served(&region, ops.api, b"h2", &renewed).await,
        "the renewed certificate is served without a restart"
    );
    ops.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_broker_serves_its_renewed_certificate() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    region.issue(Role::Analyst, "alice");
    let first = on_disk(&region, "broker-1");
    assert_eq!(served_serial(&region, broker.addr(), b"").await, first);

    // As an operator runs it: `vigil pki renew` (same key, new serial).
    authority::renew(
        &region.path("pki"),
        &Identity::new("broker-1").unwrap(),
        400,
        false,
    )
    .unwrap();
    let renewed = on_disk(&region, "broker-1");
    assert_ne!(renewed, first);
    assert!(
        until_served(&region, broker.addr(), b"", &renewed).await,
        "the renewed certificate is served without a restart"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_post_certificate_is_reported_counted_and_renewed_in_place() {
    let region = Region::new();
    let pki = region.path("pki");
    // As `vigil pki issue --days 10` makes it.
    authority::issue(
        &pki,
        Role::Post,
        &Identity::new("p-9").unwrap(),
        &[],
        10,
        false,
    )
    .unwrap();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let addr = broker.addr();
    let ops = region.start_ops(addr).await;
    let gateway = region.start_gateway("p-9", addr, "").await;

    // The broker sees a client whose certificate expires within 30 days:
    // the gateway's, about 10 days out.
    let counters = broker.broker.counters();
    until("the broker counts the gateway's certificate", async || {
        counters.peer_expiry.soon_at(unix_now()) == 1
    })
    .await;
    let earliest = counters.peer_expiry.earliest().unwrap();
    assert!((earliest - unix_now() - 10 * DAY).abs() < DAY, "{earliest}");
    assert!(counters.peer_expiry.soon_total() >= 1);

    // The gateway reported it; the ops center opened a P4 incident.
    let mut analyst = region.api_client(Role::Analyst, "alice", ops.api).await;
    let incident = async |analyst: &mut vigil_proto::v1::ops_center_client::OpsCenterClient<_>| {
        analyst
            .list_incidents(ListIncidentsRequest {
                post_ids: vec!["p-9".into()],
                ..Default::default()
            })
            .await
            .expect("list incidents")
            .into_inner()
            .incidents
            .into_iter()
            .find(|i| i.subject == "gateway:certificate")
    };
    let mut found = None;
    until("a certificate incident for p-9", async || {
        found = incident(&mut analyst).await;
        found.is_some()
    })
    .await;
    let opened = found.unwrap();
    assert_eq!(opened.priority(), Priority::P4);
    assert!(!opened.restored);
    assert!(
        opened.title.contains("10 days") || opened.title.contains("9 days"),
        "{opened:?}"
    );

    // The ops center counts its API clients the same way: alice's
    // certificate has a year, bob's 10 days.
    let ops_expiry = &ops.metrics.peer_expiry;
    assert_eq!(ops_expiry.soon_at(unix_now()), 0);
    authority::issue(
        &pki,
        Role::Analyst,
        &Identity::new("bob").unwrap(),
        &[],
        10,
        false,
    )
    .unwrap();
    let bob = region.api_client(Role::Analyst, "bob", ops.api).await;
    until("the ops center counts bob's certificate", async || {
        ops_expiry.soon_at(unix_now()) == 1
    })
    .await;
    assert!(ops_expiry.earliest().unwrap() < unix_now() + 11 * DAY);
    drop(bob);

    // Renewed for a year, in place: the running gateway picks it up and
    // reports the restore, which the incident shows.
    authority::renew(&pki, &Identity::new("p-9").unwrap(), 365, false).unwrap();
    until("the certificate incident restored", async || {
        incident(&mut analyst).await.is_some_and(|i| i.restored)
    })
    .await;

    // A broker that starts now sees the gateway come back with the renewed
    // certificate: nothing connected expires within 30 days.
    broker.stop().await;
    let broker = region.start_broker(addr).await;
    let counters = broker.broker.counters();
    until(
        "the gateway reconnects with its renewed certificate",
        async || {
            broker.broker.metrics().authenticated >= 2
                && counters.peer_expiry.earliest().is_some()
                && counters.peer_expiry.soon_at(unix_now()) == 0
        },
    )
    .await;
    assert_eq!(counters.peer_expiry.soon_total(), 0);

    // The events stored are the fault and its restore, of the new kind.
    gateway.stop().await;
    ops.stop().await;
    broker.stop().await;
    let store = vigil_tests::open_store(&region.path("ops-data"));
    let kinds = health_kinds(&store, "p-9");
    assert_eq!(
        kinds,
        [
            (HealthKind::CertificateExpiry, HealthState::Fault),
            (HealthKind::CertificateExpiry, HealthState::Restored),
        ]
    );
}

/// The health kinds and states of the events stored for `post`.
fn health_kinds(
    store: &vigil_ops::store::SqliteStore,
    post: &str,
) -> Vec<(HealthKind, HealthState)> {
    use vigil_ops::store::Store;
    store
        .events(post, 1, 1000)
        .expect("read events")
        .into_iter()
        .filter_map(|s| s.event)
        .filter_map(|e| match e.body {
            Some(Body::Health(h)) => Some((h.kind(), h.state())),
            _ => None,
        })
        .collect()
}
