//! The broker against real MQTT clients (rumqttc, 3.1.1 and 5) over mTLS:
//! authentication, the topic ACL, limits, retained status and the last will.

use std::{sync::Arc, time::Duration};

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use vigil_broker::{Limits, Reject};
use vigil_proto::topics::{TopicKind, all_posts, topic};
use vigil_tests::broker::{BOTH, Ev, Mqtt, Pki, TestBroker, expect_publish};

fn events(post: &str) -> String {
    topic(post, TopicKind::Events)
}

fn status(post: &str) -> String {
    topic(post, TopicKind::Status)
}

fn receipts(post: &str) -> String {
    topic(post, TopicKind::Receipts)
}

/// An ops-center subscribed to every post's events.
async fn ops_on_events(b: &TestBroker, version: Mqtt) -> vigil_tests::broker::Client {
    let mut ops = b.client(version, "ops-1", "ops-1").connect().await;
    ops.subscribe_ok(&all_posts(TopicKind::Events)).await;
    ops
}

#[tokio::test]
async fn post_events_reach_the_ops_subscriber() {
    let b = TestBroker::start().await;
    for (post_v, ops_v) in [
        (Mqtt::V4, Mqtt::V4),
        (Mqtt::V4, Mqtt::V5),
        (Mqtt::V5, Mqtt::V4),
        (Mqtt::V5, Mqtt::V5),
    ] {
        let mut ops = ops_on_events(&b, ops_v).await;
        // A shared subscription works too (an ops-center replica group).
        let mut replica = b.client(ops_v, "ops-2", "").connect().await;
        replica
            .subscribe_ok(&format!("$share/ops/{}", all_posts(TopicKind::Status)))
            .await;

        let mut post = b.client(post_v, "p-1", "p-1").connect().await;
        let payload = format!("batch {post_v:?}->{ops_v:?}");
        post.publish(&events("p-1"), payload.as_bytes(), false)
            .await;
        post.expect(Ev::PubAck {
            reason: "Success".into(),
        })
        .await;
        assert_eq!(
            expect_publish(&mut ops, &events("p-1")).await,
            payload.as_bytes()
        );

        post.publish(&status("p-1"), b"online", true).await;
        assert_eq!(
            expect_publish(&mut replica, &status("p-1")).await,
            b"online"
        );
        post.kill();
    }
    let m = b.metrics();
    assert!(m.publishes_in >= 8 && m.publishes_out >= 8, "{m:?}");
    assert_eq!(m.rejected_total(), 0, "{m:?}");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let b = TestBroker::start().await;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(b.pki.path("ca.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(b.addr()).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    // With TLS 1.3 the client finishes its side before the server checks
    // its (missing) certificate: the refusal shows on the first read.
    let refused = match connector.connect(name, tcp).await {
        Err(_) => true,
        Ok(mut tls) => {
            let _ = tls.write_all(&[0xC0, 0x00]).await;
            let mut buf = [0u8; 16];
            matches!(
                tokio::time::timeout(vigil_tests::broker::WAIT, tls.read(&mut buf)).await,
                Ok(Err(_) | Ok(0))
            )
        }
    };
    assert!(refused);
    b.wait_metrics("no_certificate", |m| m.rejected(Reject::NoCertificate) == 1)
        .await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let b = TestBroker::start().await;
    let other = Pki::new();
    // Trusts our CA, presents a certificate from another one.
    let forged = vigil_pki::TlsConfig {
        ca: b.pki.path("ca.pem"),
        crl: None,
        ..other.tls("p-1")
    };
    let forged = Arc::new(forged.load().unwrap().client_config().unwrap());
    for version in BOTH {
        let mut client = vigil_tests::broker::ClientOptions::from_parts(
            version,
            b.addr(),
            forged.clone(),
            "p-1",
        )
        .start();
        let ev = client
            .expect_match("refusal", |ev| matches!(ev, Ev::Closed(_)))
            .await;
        assert!(matches!(ev, Ev::Closed(_)), "{ev:?}");
    }
    b.wait_metrics("bad_certificate", |m| {
        m.rejected(Reject::BadCertificate) == 2
    })
    .await;
    assert_eq!(b.metrics().authenticated, 0);
}

#[tokio::test]
async fn revoked_certificate_is_refused() {
    let b = TestBroker::start().await;
    for version in BOTH {
        let mut client = b.client(version, "p-9", "p-9").start();
        client.expect_closed().await;
    }
    b.wait_metrics("revoked", |m| m.rejected(Reject::Revoked) == 2)
        .await;
    assert_eq!(b.metrics().authenticated, 0);
}

#[tokio::test]
async fn roles_without_mqtt_rights_are_refused_at_connect() {
    let b = TestBroker::start().await;
    for version in BOTH {
        let mut client = b.client(version, "alice", "alice").start();
        client.expect(Ev::Refused("NotAuthorized".into())).await;
    }
    assert_eq!(b.metrics().rejected(Reject::NotAuthorized), 2);
}

#[tokio::test]
async fn publishing_as_another_post_is_refused() {
    let b = TestBroker::start().await;
    let mut ops = ops_on_events(&b, Mqtt::V5).await;

    // 3.1.1: no way to say no but to close the connection.
    let mut post = b.client(Mqtt::V4, "p-1", "p-1").connect().await;
    post.publish(&events("p-2"), b"forged", false).await;
    let seen = post.expect_closed().await;
    assert!(
        !seen.iter().any(|ev| matches!(ev, Ev::PubAck { .. })),
        "{seen:?}"
    );

    // 5: PUBACK 0x87, and the session goes on.
    let mut post = b.client(Mqtt::V5, "p-1", "p-1").connect().await;
    post.publish(&events("p-2"), b"forged", false).await;
    post.expect(Ev::PubAck {
        reason: "NotAuthorized".into(),
    })
    .await;
    // Also refused: topics outside the contract, and receipts.
    post.publish("vigil/v1/posts/p-1/events/x", b"forged", false)
        .await;
    post.expect(Ev::PubAck {
        reason: "NotAuthorized".into(),
    })
    .await;
    post.publish(&receipts("p-1"), b"forged", false).await;
    post.expect(Ev::PubAck {
        reason: "NotAuthorized".into(),
    })
    .await;
    post.publish(&events("p-1"), b"genuine", false).await;
    post.expect(Ev::PubAck {
        reason: "Success".into(),
    })
    .await;

    // The ops-center sees only the genuine batch.
    let ev = ops
        .expect_match("publish", |ev| matches!(ev, Ev::Publish { .. }))
        .await;
    assert_eq!(
        ev,
        Ev::Publish {
            topic: events("p-1"),
            payload: b"genuine".to_vec()
        }
    );
    ops.expect_no_publish().await;
    assert_eq!(b.metrics().rejected(Reject::Publish), 4);
}

#[tokio::test]
async fn topic_aliases_cannot_bypass_the_acl() {
    let b = TestBroker::start().await;
    let mut ops = ops_on_events(&b, Mqtt::V5).await;
    let mut post = b.client(Mqtt::V5, "p-1", "p-1").connect().await;

    // Alias 1 set up on the post's own topic, then used without a topic.
    post.publish_aliased(&events("p-1"), 1, b"first").await;
    post.expect(Ev::PubAck {
        reason: "Success".into(),
    })
    .await;
    post.publish_aliased("", 1, b"second").await;
    post.expect(Ev::PubAck {
        reason: "Success".into(),
    })
    .await;
    for payload in [&b"first"[..], b"second"] {
        let ev = ops
            .expect_match("publish", |ev| matches!(ev, Ev::Publish { .. }))
            .await;
        assert_eq!(
            ev,
            Ev::Publish {
                topic: events("p-1"),
                payload: payload.to_vec()
            }
        );
    }

    // Alias 2 asked for on another post's topic: refused, and not set up,
    // so using it afterwards is a protocol error that ends the session.
    post.publish_aliased(&events("p-2"), 2, b"forged").await;
    post.expect(Ev::PubAck {
        reason: "NotAuthorized".into(),
    })
    .await;
    post.publish_aliased("", 2, b"forged again").await;
    let seen = post.expect_closed().await;
    assert!(
        seen.iter()
            .any(|ev| matches!(ev, Ev::Disconnect { reason } if reason.contains("Protocol"))),
        "{seen:?}"
    );
    ops.expect_no_publish().await;
    assert_eq!(b.metrics().rejected(Reject::Publish), 1);
    assert_eq!(b.metrics().rejected(Reject::Protocol), 1);
}

#[tokio::test]
async fn subscribing_beyond_own_topics_is_refused() {
    let b = TestBroker::start().await;
    let ops = b.client(Mqtt::V4, "ops-1", "ops-1").connect().await;

    // 3.1.1: closed.
    for filter in ["#", &receipts("p-2")] {
        let mut post = b.client(Mqtt::V4, "p-1", "p-1").connect().await;
        post.subscribe(filter).await;
        let seen = post.expect_closed().await;
        assert!(
            !seen.iter().any(|ev| matches!(ev, Ev::SubAck { .. })),
            "{seen:?}"
        );
    }

    // 5: SUBACK 0x87, and nothing delivered.
    let mut post = b.client(Mqtt::V5, "p-1", "p-1").connect().await;
    for filter in ["#", &receipts("p-2"), &all_posts(TopicKind::Receipts)] {
        post.subscribe(filter).await;
        post.expect(Ev::SubAck {
            codes: vec!["NotAuthorized".into()],
        })
        .await;
    }
    post.subscribe_ok(&receipts("p-1")).await;
    ops.publish(&receipts("p-2"), b"for p-2", false).await;
    ops.publish(&receipts("p-1"), b"for p-1", false).await;
    let ev = post
        .expect_match("publish", |ev| matches!(ev, Ev::Publish { .. }))
        .await;
    assert_eq!(
        ev,
        Ev::Publish {
            topic: receipts("p-1"),
            payload: b"for p-1".to_vec()
        }
    );
    post.expect_no_publish().await;
    assert_eq!(b.metrics().rejected(Reject::Subscribe), 5);
}

#[tokio::test]
async fn another_posts_client_id_cannot_take_over_its_session() {
    let b = TestBroker::start().await;
    for version in BOTH {
        let mut victim = b.client(Mqtt::V4, "p-1", "p-1").connect().await;
        victim.subscribe_ok(&receipts("p-1")).await;

        let mut thief = b.client(version, "p-2", "p-1").start();
        thief.expect(Ev::Refused("NotAuthorized".into())).await;

        // The victim's session is intact: it still gets its receipts.
        let ops = b.client(Mqtt::V4, "ops-1", "ops-1").connect().await;
        ops.publish(&receipts("p-1"), b"r", false).await;
        assert_eq!(expect_publish(&mut victim, &receipts("p-1")).await, b"r");
        victim.kill();
        ops.kill();
    }
    assert_eq!(b.metrics().rejected(Reject::NotAuthorized), 2);
}

#[tokio::test]
async fn oversize_payload_is_refused() {
    let b = TestBroker::with_limits(Limits {
        max_payload_bytes: 1024,
        ..Limits::default()
    })
    .await;
    let mut ops = ops_on_events(&b, Mqtt::V4).await;
    for version in BOTH {
        let mut post = b.client(version, "p-1", "p-1").connect().await;
        post.publish(&events("p-1"), &[1u8; 1024], false).await;
        assert_eq!(expect_publish(&mut ops, &events("p-1")).await.len(), 1024);
        post.publish(&events("p-1"), &[2u8; 1025], false).await;
        let seen = post.expect_closed().await;
        if version == Mqtt::V5 {
            assert!(
                seen.contains(&Ev::Disconnect {
                    reason: "PacketTooLarge".into()
                }),
                "{seen:?}"
            );
        }
    }
    ops.expect_no_publish().await;
    assert_eq!(b.metrics().rejected(Reject::PayloadTooLarge), 2);
}

#[tokio::test]
async fn will_on_a_foreign_topic_is_refused() {
    let b = TestBroker::start().await;
    for version in BOTH {
        let mut post = b
            .client(version, "p-1", "p-1")
            .will(&status("p-2"), b"offline")
            .start();
        post.expect(Ev::Refused("NotAuthorized".into())).await;
    }
    assert_eq!(b.metrics().rejected(Reject::Will), 2);
}

#[tokio::test]
async fn retained_status_and_last_will_reach_ops() {
    let b = TestBroker::start().await;
    for version in BOTH {
        let post_id = if version == Mqtt::V4 { "p-1" } else { "p-2" };
        let mut ops = b.client(Mqtt::V5, "ops-1", "ops-1").connect().await;
        ops.subscribe_ok(&all_posts(TopicKind::Status)).await;

        let post = b
            .client(version, post_id, post_id)
            .will(&status(post_id), b"offline")
            .connect()
            .await;
        post.publish(&status(post_id), b"online", true).await;
        assert_eq!(expect_publish(&mut ops, &status(post_id)).await, b"online");

        // The post drops off the network: no DISCONNECT, the socket closes.
        post.kill();
        assert_eq!(expect_publish(&mut ops, &status(post_id)).await, b"offline");

        // A subscriber arriving later finds the retained will.
        let mut late = b.client(Mqtt::V4, "ops-2", "").connect().await;
        late.subscribe(&status(post_id)).await;
        assert_eq!(
            expect_publish(&mut late, &status(post_id)).await,
            b"offline"
        );
        ops.kill();
        late.kill();
    }
}

#[tokio::test]
async fn idle_sockets_do_not_delay_a_valid_client() {
    let b = TestBroker::start().await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(b.addr()).await.unwrap());
    }
    b.wait_metrics("200 pending handshakes", |m| {
        m.handshakes_in_progress == 200
    })
    .await;
    for version in BOTH {
        let mut ops = ops_on_events(&b, version).await;
        let post = b.client(version, "p-1", "p-1").connect().await;
        post.publish(&events("p-1"), b"through", false).await;
        assert_eq!(expect_publish(&mut ops, &events("p-1")).await, b"through");
    }
    // Served while every idle socket still held its handshake: none of them
    // timed out, so none delayed the clients.
    let m = b.metrics();
    assert_eq!(m.rejected(Reject::HandshakeTimeout), 0, "{m:?}");
    assert_eq!(m.handshakes_in_progress, 200, "{m:?}");
    drop(idle);
}

#[tokio::test]
async fn idle_sockets_are_shed_at_the_cap_and_time_out() {
    let b = TestBroker::with_limits(Limits {
        max_connections: 4,
        max_connections_per_source: 4,
        max_handshakes: 2,
        handshake_timeout_ms: 300,
        ..Limits::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(TcpStream::connect(b.addr()).await.unwrap());
    }
    // The two oldest make room for the last two (nothing is refused while
    // a connection is still unauthenticated); the four others time out
    // waiting for their ClientHello.
    b.wait_metrics("shedding and timeouts", |m| {
        m.rejected(Reject::Shed) == 2 && m.rejected(Reject::HandshakeTimeout) == 4
    })
    .await;
    b.wait_metrics("slots freed", |m| m.active == 0).await;
    let m = b.metrics();
    assert_eq!(m.rejected(Reject::Capacity), 0, "{m:?}");
    assert_eq!((m.accepted, m.listener.shed), (6, 2), "{m:?}");
    // The server closed every one of them.
    for mut socket in idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(vigil_tests::broker::WAIT, socket.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    }
    // Slots are free again.
    let mut ops = ops_on_events(&b, Mqtt::V4).await;
    let post = b.client(Mqtt::V5, "p-1", "").connect().await;
    post.publish(&events("p-1"), b"after", false).await;
    assert_eq!(expect_publish(&mut ops, &events("p-1")).await, b"after");
}

#[tokio::test]
async fn valid_clients_get_in_while_idle_sockets_hold_every_slot() {
    let b = TestBroker::with_limits(Limits {
        max_connections: 8,
        max_connections_per_source: 8,
        max_handshakes: 2,
        ..Limits::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(b.addr()).await.unwrap());
    }
    b.wait_metrics("every connection held", |m| m.handshakes_in_progress == 8)
        .await;
    // Each client takes the place of the oldest idle socket, which could
    // otherwise hold it for the whole handshake timeout; and the idle ones,
    // without a ClientHello, hold none of the two handshake slots.
    let mut clients = Vec::new();
    for (version, ops_id, post_id) in [(Mqtt::V4, "ops-1", "p-1"), (Mqtt::V5, "ops-2", "p-2")] {
        let mut ops = b.client(version, ops_id, ops_id).connect().await;
        ops.subscribe_ok(&all_posts(TopicKind::Events)).await;
        let post = b.client(version, post_id, post_id).connect().await;
        post.publish(&events(post_id), b"through", false).await;
        assert_eq!(expect_publish(&mut ops, &events(post_id)).await, b"through");
        clients.extend([ops, post]);
    }
    let m = b.metrics();
    assert_eq!(m.rejected(Reject::Shed), 4, "{m:?}");
    assert_eq!(m.rejected(Reject::HandshakeTimeout), 0, "{m:?}");
    assert_eq!(m.rejected(Reject::Capacity), 0, "{m:?}");
    // The four oldest idle sockets were the ones closed.
    for socket in &mut idle[..4] {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(vigil_tests::broker::WAIT, socket.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    }
}

#[tokio::test]
async fn connected_clients_are_never_shed_and_a_newcomer_is_refused() {
    let b = TestBroker::with_limits(Limits {
        max_connections: 2,
        max_connections_per_source: 2,
        max_handshakes: 2,
        ..Limits::default()
    })
    .await;
    let mut ops = ops_on_events(&b, Mqtt::V4).await;
    let post = b.client(Mqtt::V5, "p-1", "p-1").connect().await;
    // Both slots are held by authenticated clients: the third is closed at
    // once, and the two keep working.
    let mut third = b.client(Mqtt::V4, "p-2", "p-2").start();
    third.expect_closed().await;
    b.wait_metrics("the newcomer refused", |m| {
        m.rejected(Reject::Capacity) >= 1
    })
    .await;
    post.publish(&events("p-1"), b"still here", false).await;
    assert_eq!(
        expect_publish(&mut ops, &events("p-1")).await,
        b"still here"
    );
    let m = b.metrics();
    assert_eq!(m.rejected(Reject::Shed), 0, "{m:?}");
    // Counted at the per-source cap (all three come from 127.0.0.1).
    assert_eq!(
        m.listener.refused_source + m.listener.refused_full,
        m.rejected(Reject::Capacity),
        "{m:?}"
    );
}

#[tokio::test]
async fn shutdown_disconnects_clients_and_stops_accepting() {
    let b = TestBroker::start().await;
    let mut v5 = b.client(Mqtt::V5, "p-1", "p-1").connect().await;
    let mut v4 = b.client(Mqtt::V4, "p-2", "p-2").connect().await;
    let addr = b.addr();
    b.shutdown.cancel();
    let seen = v5.expect_closed().await;
    assert!(
        seen.contains(&Ev::Disconnect {
            reason: "ServerShuttingDown".into()
        }),
        "{seen:?}"
    );
    v4.expect_closed().await;
    tokio::time::timeout(vigil_tests::broker::WAIT, b.broker.wait())
        .await
        .expect("broker stops within the grace period");
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn empty_client_id_becomes_the_identity() {
    let b = TestBroker::start().await;
    // Sessions are keyed by identity: a second empty-id connection of the
    // same post takes over the first one, as a reconnecting gateway should.
    let mut first = b.client(Mqtt::V4, "p-1", "").connect().await;
    let _second = b.client(Mqtt::V4, "p-1", "").connect().await;
    first.expect_closed().await;
}

#[tokio::test]
async fn a_newer_session_takes_over_and_fighting_is_backed_off() {
    let b = TestBroker::start().await;
    let mut ops = ops_on_events(&b, Mqtt::V4).await;
    let mut first = b.client(Mqtt::V5, "p-1", "p-1").connect().await;
    let second = b.client(Mqtt::V5, "p-1", "p-1").connect().await;
    first
        .expect(Ev::Disconnect {
            reason: "SessionTakenOver".into(),
        })
        .await;
    assert_eq!(b.metrics().takeovers, 1);
    // The new session works.
    second
        .publish(&events("p-1"), b"after takeover", false)
        .await;
    assert_eq!(
        expect_publish(&mut ops, &events("p-1")).await,
        b"after takeover"
    );
    // A client that keeps coming back is let in a few times at once (a
    // reconnect while the broker still holds the dead connection is a
    // takeover too), then refused until its backoff has passed.
    let mut refused = None;
    let mut last = second;
    for _ in 0..6 {
        let mut next = b.client(Mqtt::V5, "p-1", "p-1").start();
        let ev = next
            .expect_match("CONNACK", |ev| matches!(ev, Ev::Connected | Ev::Refused(_)))
            .await;
        if let Ev::Refused(code) = ev {
            refused = Some(code);
            break;
        }
        last = next;
    }
    assert_eq!(refused.as_deref(), Some("ServerBusy"));
    let m = b.metrics();
    assert_eq!(m.rejected(Reject::Takeover), 1, "{m:?}");
    // The connected session is untouched by the refused one.
    last.publish(&events("p-1"), b"still here", false).await;
    assert_eq!(
        expect_publish(&mut ops, &events("p-1")).await,
        b"still here"
    );
}

#[tokio::test]
async fn retained_events_are_refused() {
    let b = TestBroker::start().await;
    let mut v5 = b.client(Mqtt::V5, "p-1", "p-1").connect().await;
    v5.publish(&events("p-1"), b"retained event", true).await;
    v5.expect(Ev::PubAck {
        reason: "NotAuthorized".into(),
    })
    .await;
    let mut v4 = b.client(Mqtt::V4, "p-2", "p-2").connect().await;
    v4.publish(&events("p-2"), b"retained event", true).await;
    v4.expect_closed().await;
    // Status stays retained, and nothing else is handed to a new subscriber.
    v5.publish(&status("p-1"), b"online", true).await;
    v5.expect(Ev::PubAck {
        reason: "Success".into(),
    })
    .await;
    let mut ops = b.client(Mqtt::V4, "ops-1", "ops-1").connect().await;
    ops.subscribe_ok(&all_posts(TopicKind::Events)).await;
    ops.subscribe_ok(&all_posts(TopicKind::Status)).await;
    assert_eq!(expect_publish(&mut ops, &status("p-1")).await, b"online");
    ops.expect_no_publish().await;
    assert_eq!(b.metrics().rejected(Reject::Publish), 2);
}

/// rumqttd keeps one read cursor per shared group: a group over two filters
/// mixed their logs and lost messages. The front gives each filter its own
/// group, so two replicas sharing both filters between them receive every
/// message once.
#[tokio::test]
async fn a_shared_group_over_two_filters_delivers_every_message_once() {
    let b = TestBroker::start().await;
    let mut replicas = Vec::new();
    for (id, version) in [("ops-1", Mqtt::V4), ("ops-2", Mqtt::V5)] {
        let mut r = b.client(version, id, id).connect().await;
        for kind in [TopicKind::Events, TopicKind::Status] {
            r.subscribe_ok(&format!("$share/ops/{}", all_posts(kind)))
                .await;
        }
        replicas.push(r);
    }
    let post = b.client(Mqtt::V4, "p-1", "p-1").connect().await;
    const EVENTS: usize = 40;
    const STATUSES: usize = 5;
    let mut sent = Vec::new();
    for i in 0..EVENTS {
        let payload = format!("event {i}");
        post.publish(&events("p-1"), payload.as_bytes(), false)
            .await;
        sent.push((events("p-1"), payload));
        if i % (EVENTS / STATUSES) == 0 {
            let payload = format!("status {i}");
            post.publish(&status("p-1"), payload.as_bytes(), false)
                .await;
            sent.push((status("p-1"), payload));
        }
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + vigil_tests::broker::WAIT;
    while got.len() < sent.len() && tokio::time::Instant::now() < deadline {
        for r in &mut replicas {
            if let Some(Ev::Publish { topic, payload }) =
                r.next_within(Duration::from_millis(20)).await
            {
                got.push((topic, String::from_utf8(payload).unwrap()));
            }
        }
    }
    // Nothing more: every message went to one replica only.
    for r in &mut replicas {
        r.expect_no_publish().await;
    }
    sent.sort();
    got.sort();
    assert_eq!(got, sent);
}

/// Receipts and commands reach their post through the front, in order,
/// more than one delivery window's worth, in both protocol versions; a post
/// that has not subscribed gets nothing, and that is counted.
#[tokio::test]
async fn receipts_and_commands_reach_their_post_in_order() {
    let b = TestBroker::start().await;
    let ops = b.client(Mqtt::V4, "ops-1", "ops-1").connect().await;
    for (post, version) in [("p-1", Mqtt::V4), ("p-2", Mqtt::V5)] {
        let mut client = b.client(version, post, post).connect().await;
        client.subscribe_ok(&receipts(post)).await;
        client.subscribe_ok(&topic(post, TopicKind::Commands)).await;
        const N: usize = 250;
        for i in 0..N {
            ops.publish(&receipts(post), format!("r{i}").as_bytes(), false)
                .await;
        }
        ops.publish(&topic(post, TopicKind::Commands), b"c", false)
            .await;
        for i in 0..N {
            assert_eq!(
                expect_publish(&mut client, &receipts(post)).await,
                format!("r{i}").as_bytes(),
                "{post} {version:?}"
            );
        }
        assert_eq!(
            expect_publish(&mut client, &topic(post, TopicKind::Commands)).await,
            b"c"
        );
    }
    let dropped = b.metrics().post_messages_dropped;
    let mut quiet = b.client(Mqtt::V4, "p-1", "p-1").connect().await;
    ops.publish(&receipts("p-1"), b"unsubscribed", false).await;
    b.wait_metrics("the receipt counted as dropped", |m| {
        m.post_messages_dropped > dropped
    })
    .await;
    quiet.expect_no_publish().await;
}

/// A gateway's goodbye is a retained OFFLINE status then DISCONNECT, often
/// in one TCP segment: the status must reach the ops center all the same.
#[tokio::test]
async fn a_publish_right_before_disconnect_is_delivered() {
    let b = TestBroker::start().await;
    let mut ops = b.client(Mqtt::V4, "ops-1", "ops-1").connect().await;
    ops.subscribe_ok(&all_posts(TopicKind::Status)).await;
    let connector = tokio_rustls::TlsConnector::from(b.pki.client("p-1"));
    let tcp = TcpStream::connect(b.addr()).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    // MQTT 3.1.1 CONNECT, client id "p-1", clean session, keep-alive 30 s.
    let mut bytes = vec![0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 3];
    bytes.extend_from_slice(b"p-1");
    // QoS 1 retained PUBLISH of "offline" on p-1's status, packet id 1.
    let topic = status("p-1");
    let payload = b"offline";
    bytes.push(0x33);
    bytes.push((2 + topic.len() + 2 + payload.len()) as u8);
    bytes.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    bytes.extend_from_slice(topic.as_bytes());
    bytes.extend_from_slice(&[0, 1]);
    bytes.extend_from_slice(payload);
    // DISCONNECT.
    bytes.extend_from_slice(&[0xE0, 0]);
    tls.write_all(&bytes).await.unwrap();
    tls.flush().await.unwrap();
    assert_eq!(expect_publish(&mut ops, &status("p-1")).await, b"offline");
}

/// A writer that keeps what the broker logs, for counting lines.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread runtime: the broker's tasks log through this thread's
// subscriber.
#[tokio::test]
async fn failed_handshakes_are_each_counted_but_logged_once_per_interval() {
    let b = TestBroker::start().await;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Not TLS at all: each handshake fails at its first record.
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(b.addr()).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(vigil_tests::broker::WAIT, tcp.read_to_end(&mut sink)).await;
    }
    b.wait_metrics("50 failed handshakes", |m| m.rejected(Reject::Tls) == 50)
        .await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines = text
        .lines()
        .filter(|l| l.contains("TLS handshake failed"))
        .count();
    // At most one: the limiter is the process's, so another test of this
    // file may have taken this interval's line already.
    assert!(lines <= 1, "{lines} lines: {text}");
}
