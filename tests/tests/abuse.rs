//! The abuse suite: every listener that goes through the shared plumbing
//! (`vigil-net`) keeps serving valid clients while a flood of hostile
//! sockets — idle ones, and ones stopped halfway through their first
//! message (a TLS ClientHello, a DC-09 frame, an HTTP header) — holds more
//! connections than its caps allow, from many source addresses, coming back
//! whenever the server closes them.
//!
//! Each listener: a baseline of valid exchanges, then the same number under
//! the flood. Every valid exchange must succeed; the server must have shed
//! or timed out attackers (the caps were reached). Latencies are printed
//! (attack vs baseline), never asserted. Listeners: the broker's MQTT front,
//! the ops API, the gateway's DC-09 TCP and camera push, `/metrics`, the
//! camera simulator.
//!
//! `VIGIL_ABUSE_SEED=N` replays a run, `VIGIL_ABUSE_LONG=1` makes it long.

use std::{sync::Arc, time::Duration};

use rumqttc::{
    AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};

use time::OffsetDateTime;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};
use vigil_dc09::{KeyLookup, Message, Token, decode, encode};
use vigil_pki::Role;
use vigil_proto::{
    Timestamp,
    topics::{TopicKind, topic},
    v1::{
        AlarmSignal, Event, EventBatch, ListPostsRequest, Receipt, event::Body,
        ops_center_client::OpsCenterClient,
    },
};
use vigil_tests::{
    Region,
    abuse::{
        Attack, Flood, HALF_CLIENT_HELLO, Latencies, http_status, long_run, measure, report,
        seeded_rng,
    },
    faults::eventually_within,
};

/// Longest one valid exchange may take before it counts as failed.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);
/// Push token of the camera the suite posts as.
const TOKEN: &str = "abuse-suite-camera-token";

fn valid_exchanges() -> usize {
    if long_run() { 200 } else { 20 }
}

/// 1,000 idle sockets and 200 partial ones from 40 addresses: above every
/// listener's total and per-source caps.
fn flood(partial_bytes: &[u8]) -> Flood {
    Flood {
        idle: 1000,
        partial: 200,
        partial_bytes: partial_bytes.to_vec(),
        sources: 40,
    }
}

/// Baseline, flood, the same exchanges under it once the flood reached the
/// listener's caps (`at_caps`); prints the figures and checks every valid
/// exchange succeeded.
async fn under_flood<F, Fut>(
    listener: &str,
    target: std::net::SocketAddr,
    flood: Flood,
    mut exchange: F,
    at_caps: impl FnMut() -> bool,
    server: impl Fn() -> String,
) where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    // One flood at a time: the tests of this file run in parallel, and
    // three floods of 1,200 sockets on two cores measure the machine, not
    // the listener.
    static ONE_FLOOD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_FLOOD.lock().await;
    let (_, mut rng) = seeded_rng(listener);
    let n = valid_exchanges();
    let baseline: Latencies = measure(n, EXCHANGE_LIMIT, &mut exchange).await;
    assert!(
        baseline.failed.is_empty(),
        "{listener} baseline: {:?}",
        baseline.failed
    );
    let attack = Attack::start(target, &flood, &mut rng).await;
    // Connections wait in the kernel's backlog until accepted: measure
    // once the server has taken in enough of them to be at its caps.
    eventually_within("the flood reaches the caps", EXCHANGE_LIMIT, at_caps).await;
    let attacked = measure(n, EXCHANGE_LIMIT, |i| exchange(n + i)).await;
    let counts = attack.stop().await;
    report(listener, &flood, &baseline, &attacked, counts, &server());
    assert!(
        attacked.failed.is_empty(),
        "{listener}: valid exchanges failed under attack: {:?}",
        attacked.failed
    );
}

fn listener_figures(s: &vigil_net::StatsSnapshot) -> String {
    format!(
        "shed={} preauth_timeouts={} refused={} tls_failures={} authenticated={}",
        s.shed,
        s.preauth_timeouts,
        s.refused_source + s.refused_full,
        s.tls_failures,
        s.authenticated
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_api_serves_analysts_through_a_flood() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    // Caps below the flood, as for the broker: 1,200 connects at once can
    // overflow the kernel's accept queue, and the connections it drops
    // never reach the listener, so a cap of 1,024 might never be met.
    let ops = region
        .start_ops_with(
            broker.addr(),
            "[api]\nmax_connections = 512\nmax_connections_per_source = 16\n",
        )
        .await;
    region.issue(Role::Analyst, "alice");
    let read = |name: &str| std::fs::read(region.path("pki").join(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(TlsIdentity::from_pem(read("alice.pem"), read("alice.key")))
        .domain_name("localhost");
    let api = ops.api;
    let stats = ops.metrics.api_listener.clone();
    under_flood(
        "ops-api",
        api,
        flood(HALF_CLIENT_HELLO),
        |_| {
            let tls = tls.clone();
            async move {
                // A new connection (TCP and TLS) for every call.
                let channel = Channel::from_shared(format!("https://{api}"))
                    .map_err(|e| e.to_string())?
                    .tls_config(tls)
                    .map_err(|e| e.to_string())?
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                OpsCenterClient::new(channel)
                    .list_posts(ListPostsRequest::default())
                    .await
                    .map_err(|e| format!("ListPosts: {e}"))?;
                Ok(())
            }
        },
        || stats.snapshot().shed > 0,
        || listener_figures(&stats.snapshot()),
    )
    .await;
    let s = stats.snapshot();
    assert!(
        s.shed + s.preauth_timeouts > 0,
        "the caps were reached: {s:?}"
    );
    ops.stop().await;
    broker.stop().await;
}

/// One ADM-CID frame for account 1234 with `seq`; true when ACKed.
async fn dc09_exchange(addr: std::net::SocketAddr, seq: u16) -> Result<(), String> {
    let msg = Message {
        seq,
        receiver: Some("1".into()),
        data: "#1234|1130 01 001".into(),
        timestamp: Some(OffsetDateTime::now_utc()),
        ..Message::new(Token::AdmCid, "1234")
    };
    let frame = encode(&msg, None, &mut |pad: &mut [u8]| pad.fill(0)).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.last() != Some(&b'\r') {
        match tcp.read(&mut byte).await {
            Ok(0) => return Err("closed before the answer".into()),
            Ok(_) => answer.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let reply = decode(&answer, &|_: &str| KeyLookup::Plaintext).map_err(|e| e.to_string())?;
    match reply.token {
        Token::Ack => Ok(()),
        other => Err(format!("answered {}", other.as_str())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_listeners_serve_panels_and_cameras_through_a_flood() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let http = format!(
        "\n[http]\nlisten = \"127.0.0.1:0\"\n\n[[http.cameras]]\ncamera = \"cam-2\"\ntoken = \"{TOKEN}\"\n"
    );
    let gw = region.start_gateway("p-1", broker.addr(), &http).await;

    let dc09 = gw.dc09;
    let stats = gw.metrics.dc09.listener.clone();
    under_flood(
        "dc09-tcp",
        dc09,
        flood(b"\n1234\"SIA-DCS\"0001"),
        |i| dc09_exchange(dc09, u16::try_from(i % 9999 + 1).unwrap_or(1)),
        || stats.snapshot().shed > 0,
        || listener_figures(&stats.snapshot()),
    )
    .await;
    let s = stats.snapshot();
    assert!(
        s.shed + s.preauth_timeouts > 0,
        "the caps were reached: {s:?}"
    );

    let push = gw.push.expect("push endpoint configured");
    let stats = gw.metrics.camera_push.listener.clone();
    under_flood(
        "camera-push",
        push,
        flood(b"POST /v1/camera-events HTTP/1.1\r\nHost: gateway\r\n"),
        |i| async move {
            let body = format!("{{\"camera\":\"cam-2\",\"kind\":\"line_crossing\",\"id\":\"abuse-{i}\"}}");
            let request = format!(
                "POST /v1/camera-events HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            match http_status(push, &request).await? {
                202 => Ok(()),
                other => Err(format!("status {other}")),
            }
        },
        || stats.snapshot().shed > 0,
        || listener_figures(&stats.snapshot()),
    )
    .await;
    let s = stats.snapshot();
    assert!(
        s.shed + s.preauth_timeouts > 0,
        "the caps were reached: {s:?}"
    );
    gw.stop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_camera_simulator_serve_through_a_flood() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let front = vigil_net::Front::new("metrics", vigil_telemetry::limits());
    let render: vigil_telemetry::Render = Arc::new(|| {
        let mut out = vigil_telemetry::Exposition::new();
        out.counter("abuse_total", "A counter.", 1);
        out.render()
    });
    let server = tokio::spawn({
        let (front, shutdown) = (front.clone(), shutdown.clone());
        async move { vigil_telemetry::serve_on(&front, listener, render, shutdown).await }
    });
    let stats = front.stats();
    under_flood(
        "metrics",
        addr,
        flood(b"GET /metrics HTTP/1.1\r\n"),
        |_| async move {
            let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            match http_status(addr, request).await? {
                200 => Ok(()),
                other => Err(format!("status {other}")),
            }
        },
        || stats.snapshot().shed > 0,
        || listener_figures(&stats.snapshot()),
    )
    .await;
    let s = stats.snapshot();
    assert!(
        s.shed + s.preauth_timeouts > 0,
        "the caps were reached: {s:?}"
    );
    shutdown.cancel();
    server.await.unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let camera_stop = CancellationToken::new();
    let camera = vigil_sim::camera::OnvifCamera::start(
        listener,
        vigil_sim::camera::SimConfig::new("vigil", "camera-password"),
        camera_stop.clone(),
    );
    let cam = camera.addr();
    under_flood(
        "camera-sim",
        cam,
        flood(b"POST /onvif/device_service HTTP/1.1\r\n"),
        |_| async move {
            // Any whole HTTP answer shows the listener served us.
            let request =
                "GET /onvif/device_service HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            http_status(cam, request).await.map(|_| ())
        },
        // Its front is internal: no counters to wait on.
        || true,
        || "n/a (internal front)".to_owned(),
    )
    .await;
    camera.stop().await;
    camera_stop.cancel();
}

/// The broker's caps in the abuse suite: about 30 attackers per source
/// against 16, 1,200 in all against 512.
const BROKER_CAPS: &str = "max_connections = 512\nmax_connections_per_source = 16";

/// A post's whole MQTT exchange on a new connection: TLS, CONNECT, one
/// QoS 1 PUBLISH on its events topic, its PUBACK.
async fn mqtt_exchange(
    broker: std::net::SocketAddr,
    post: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let mut options = MqttOptions::new(post, "127.0.0.1", broker.port());
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    client
        .publish(
            topic(post, TopicKind::Events),
            QoS::AtLeastOnce,
            false,
            b"abuse".to_vec(),
        )
        .await
        .map_err(|e| e.to_string())?;
    // The publish waits in the client's queue until CONNACK; at most a
    // handful of events come before its PUBACK.
    for _ in 0..16 {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::PubAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("mqtt: {e}")),
        }
    }
    Err("no PUBACK among the first events".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_serves_posts_through_a_flood() {
    let region = Region::new();
    // Caps the flood surely exceeds: when 1,200 connections arrive at once,
    // the kernel's accept queue (1,024) overflows and the client side of
    // some believes itself connected while the server never sees them.
    let broker = region
        .start_broker_with("127.0.0.1:0".parse().unwrap(), BROKER_CAPS)
        .await;
    let addr = broker.addr();
    // One identity per exchange: a post reconnecting right after it left
    // could meet its own session still closing (a takeover).
    let n = valid_exchanges();
    let posts: Vec<String> = (0..2 * n).map(|i| format!("abuse-{i}")).collect();
    let mut configs = Vec::new();
    for post in &posts {
        region.issue(Role::Post, post);
        let pki = region.path("pki");
        let tls = vigil_pki::TlsConfig {
            ca: pki.join("ca.pem"),
            cert: pki.join(format!("{post}.pem")),
            key: pki.join(format!("{post}.key")),
            crl: None,
        }
        .load()
        .expect("post tls");
        configs.push(Arc::new(tls.client_config().expect("client config")));
    }
    let counters = broker.broker.counters();
    under_flood(
        "broker",
        addr,
        flood(HALF_CLIENT_HELLO),
        |i| mqtt_exchange(addr, &posts[i], configs[i].clone()),
        || counters.snapshot().listener.shed > 0,
        || {
            let m = counters.snapshot();
            format!(
                "{} handshake_timeouts={} connect_timeouts={}",
                listener_figures(&m.listener),
                m.rejected(vigil_broker::Reject::HandshakeTimeout),
                m.rejected(vigil_broker::Reject::ConnectTimeout)
            )
        },
    )
    .await;
    let m = counters.snapshot();
    assert!(
        m.listener.shed + m.listener.preauth_timeouts > 0,
        "the caps were reached: {m:?}"
    );
    // Every valid exchange was authenticated, and none of them was pushed
    // out once it was.
    assert!(m.authenticated >= 2 * n as u64, "{m:?}");
    broker.stop().await;
}

/// A post (its own certificate, on its own topic) whose events carry times
/// outside years 1-9999: the operations center clears those times, stores
/// and receipts the events, and its receipts keep up with what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_outside_years_1_to_9999_are_cleared_and_receipted() {
    use prost::Message as _;
    use vigil_ops::store::Store as _;

    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops(broker.addr()).await;
    region.issue(Role::Post, "p-7");
    let pki = region.path("pki");
    let tls = vigil_pki::TlsConfig {
        ca: pki.join("ca.pem"),
        cert: pki.join("p-7.pem"),
        key: pki.join("p-7.key"),
        crl: None,
    }
    .load()
    .expect("post tls");
    let mut options = MqttOptions::new("p-7", "127.0.0.1", broker.addr().port());
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
        tls.client_config().expect("client config"),
    ))));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe(topic("p-7", TopicKind::Receipts), QoS::AtLeastOnce)
        .await
        .unwrap();
    let year_0 = Timestamp {
        seconds: -62_167_219_200,
        nanos: 0,
    };
    let year_10000 = Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    };
    let now = Timestamp {
        seconds: OffsetDateTime::now_utc().unix_timestamp(),
        nanos: 0,
    };
    let alarm = |seq: u64, occurred_at, received_at| Event {
        post_id: "p-7".into(),
        seq,
        occurred_at: Some(occurred_at),
        received_at: Some(received_at),
        description: format!("alarm {seq}"),
        body: Some(Body::Alarm(AlarmSignal {
            account: "1234".into(),
            zone: 1,
            ..Default::default()
        })),
        ..Default::default()
    };
    let batch = EventBatch {
        post_id: "p-7".into(),
        events: vec![
            alarm(1, year_0, now),
            alarm(2, now, year_10000),
            alarm(3, now, now),
        ],
    };
    // Sent again every second until receipted, as a gateway re-sends (the
    // operations center may not have subscribed yet).
    let receipted = async {
        let mut resend = tokio::time::interval(Duration::from_secs(1));
        loop {
            let polled = tokio::select! {
                _ = resend.tick() => {
                    client
                        .publish(
                            topic("p-7", TopicKind::Events),
                            QoS::AtLeastOnce,
                            false,
                            batch.encode_to_vec(),
                        )
                        .await
                        .unwrap();
                    continue;
                }
                polled = eventloop.poll() => polled,
            };
            match polled {
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let r = Receipt::decode(p.payload.as_ref()).expect("a receipt");
                    if r.durable_through_seq >= 3 {
                        return r.durable_through_seq;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("post connection: {e}"),
            }
        }
    };
    let through = tokio::time::timeout(vigil_tests::WAIT, receipted)
        .await
        .expect("a receipt covering every event");
    assert_eq!(through, 3);
    // Two bad times per copy of the batch received (it may have been sent
    // again before the receipt came); nothing dropped.
    let m = ops.metrics.snapshot();
    assert!(m.event_times_cleared >= 2, "{m:?}");
    assert_eq!(m.rejected_out_of_range, 0, "{m:?}");
    drop(client);
    let data = ops.stop().await;
    broker.stop().await;
    let store = vigil_tests::open_store(&data);
    let times: Vec<_> = (1..=3)
        .map(|seq| {
            let e = store
                .event("p-7", seq)
                .unwrap()
                .and_then(|s| s.event)
                .expect("stored");
            (e.occurred_at, e.received_at)
        })
        .collect();
    assert_eq!(
        times,
        [(None, Some(now)), (Some(now), None), (Some(now), Some(now))]
    );
}
