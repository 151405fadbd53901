//! Relay benchmark: throughput and latency of the broker front against
//! rumqttd alone and against Mosquitto, under the same load.
//!
//! Load: `PUBLISHERS` rumqttc clients (3.1.1, QoS 1, 200-byte payloads),
//! each on its own post identity and `events` topic, publishing as fast as
//! their in-flight window allows; one subscriber on
//! `vigil/v1/posts/+/events`. The relay rate is messages received by the
//! subscriber per second, from the first publish to the last delivery;
//! latency is publish-to-delivery (the send time travels in the payload).
//!
//! Targets:
//! - `front`: `vigil-broker` over mTLS (TLS, ACL, relay to rumqttd).
//! - `rumqttd`: the same rumqttd configuration alone, on plain TCP (our
//!   build leaves rumqttd's own TLS off, so this is an upper bound for
//!   "rumqttd over mTLS").
//! - `rumqttd + TLS proxy`: rumqttd alone behind a byte-copying mTLS
//!   terminator (same certificates and rustls settings as the front, no
//!   MQTT awareness): clients pay the same TLS cost as with the front, so
//!   the difference is what the front's framing, checks and relay add.
//! - `mosquitto`: Mosquitto over mTLS, when the `mosquitto` binary is
//!   installed.
//!
//! Run: `cargo bench -p vigil-broker --bench relay` (optionally
//! `-- MESSAGES_PER_PUBLISHER`). Prints one line per target.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener as StdListener},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vigil_broker::{Broker, BrokerConfig, Limits};
use vigil_pki::{Identity, Role, TlsConfig, authority};
use vigil_proto::topics::{TopicKind, all_posts, topic};

const PUBLISHERS: usize = 100;
const PAYLOAD: usize = 200;
const DEFAULT_PER_PUBLISHER: usize = 1000;
const DEADLINE: Duration = Duration::from_secs(120);

struct Result {
    received: usize,
    expected: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

fn main() {
    vigil_pki::install_crypto_provider();
    let per_publisher = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_PER_PUBLISHER);
    let pki = tempfile::tempdir().expect("tempdir");
    let dir = pki.path();
    authority::init(dir, "bench CA").expect("CA");
    let issue = |role, id: &str, sans: &[&str]| {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        authority::issue(dir, role, &Identity::new(id).unwrap(), &sans, 2, false).expect("issue");
    };
    issue(Role::Broker, "broker-1", &["127.0.0.1"]);
    issue(Role::Ops, "ops-1", &["127.0.0.1"]);
    for i in 0..PUBLISHERS {
        issue(Role::Post, &post(i), &[]);
    }

    let clients = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "relay benchmark: {PUBLISHERS} publishers x {per_publisher} messages, QoS 1, {PAYLOAD}-byte payloads, 1 subscriber"
    );

    // The front runs on its own runtime, as it would in its own process.
    let front = start_front(dir);
    let r = clients.block_on(run_load(front.addr, Some(dir), per_publisher));
    report("front (mTLS)", &r);
    front.shutdown.cancel();

    let direct = start_rumqttd();
    let r = clients.block_on(run_load(direct, None, per_publisher));
    report("rumqttd alone (TCP)", &r);

    let proxy = start_tls_proxy(dir, direct);
    let r = clients.block_on(run_load(proxy, Some(dir), per_publisher));
    report("rumqttd + TLS proxy", &r);

    match start_mosquitto(dir) {
        Some((mut child, addr)) => {
            let r = clients.block_on(run_load(addr, Some(dir), per_publisher));
            report("mosquitto (mTLS)", &r);
            let _ = child.kill();
            let _ = child.wait();
        }
        None => println!("mosquitto: not installed, skipped"),
    }
}

fn post(i: usize) -> String {
    format!("p-{i:03}")
}

fn report(name: &str, r: &Result) {
    let rate = r.received as f64 / r.elapsed.as_secs_f64();
    println!(
        "{name:22} {rate:>9.0} msg/s  received {}/{} in {:.2}s  latency p50 {:.1} ms  p99 {:.1} ms",
        r.received,
        r.expected,
        r.elapsed.as_secs_f64(),
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
    );
}

struct Front {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

fn start_front(dir: &Path) -> Front {
    let config = BrokerConfig {
        metrics: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: tls(dir, "broker-1"),
        limits: Limits::default(),
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let broker = Broker::start(&config, listener, token).await.unwrap();
            tx.send(broker.local_addr()).unwrap();
            broker.wait().await;
        });
    });
    let addr = rx.recv().expect("front started");
    Front { addr, shutdown }
}

fn tls(dir: &Path, id: &str) -> TlsConfig {
    TlsConfig {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{id}.pem")),
        key: dir.join(format!("{id}.key")),
        crl: Some(dir.join("crl.pem")),
    }
}

fn free_port() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// rumqttd with the router settings the front uses, on plain TCP.
fn start_rumqttd() -> SocketAddr {
    let addr = free_port();
    let server = rumqttd::ServerSettings {
        name: "bench".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 1 << 20,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 1100,
            max_outgoing_packet_count: 200,
            max_segment_size: 8 << 20,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
    };
    std::thread::spawn(move || {
        let _ = rumqttd::Broker::new(config).start();
    });
    wait_listening(addr);
    addr
}

/// A byte-copying mTLS terminator in front of `upstream`, on its own
/// runtime like the front.
fn start_tls_proxy(dir: &Path, upstream: SocketAddr) -> SocketAddr {
    let server = tls(dir, "broker-1")
        .load()
        .unwrap()
        .server_config()
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(mut client) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut router) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = router.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut router).await;
                });
            }
        });
    });
    rx.recv().expect("proxy started")
}

fn start_mosquitto(dir: &Path) -> Option<(Child, SocketAddr)> {
    let addr = free_port();
    let conf = dir.join("mosquitto.conf");
    let p = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nuser root\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nlog_dest none\n",
            port = addr.port(),
            ca = p("ca.pem"),
            cert = p("broker-1.pem"),
            key = p("broker-1.key"),
        ),
    )
    .ok()?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_listening(addr);
    Some((child, addr))
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn options(id: &str, addr: SocketAddr, dir: Option<&Path>) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    if let Some(dir) = dir {
        let config = tls(dir, id).load().unwrap().client_config().unwrap();
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    o
}

async fn run_load(addr: SocketAddr, dir: Option<&Path>, per_publisher: usize) -> Result {
    let expected = PUBLISHERS * per_publisher;
    let base = Instant::now();

    // Subscriber: counts deliveries and records latencies.
    let (sub, mut sub_loop) = AsyncClient::new(options("ops-1", addr, dir), 1000);
    sub.subscribe(all_posts(TopicKind::Events), QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        match sub_loop.poll().await.expect("subscriber connects") {
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => continue,
        }
    }
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(expected);
        let mut last = Instant::now();
        while latencies.len() < expected {
            match tokio::time::timeout(Duration::from_secs(10), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let sent = u64::from_be_bytes(p.payload[..8].try_into().unwrap());
                    last = Instant::now();
                    let now = last.duration_since(base).as_nanos() as u64;
                    latencies.push(Duration::from_nanos(now.saturating_sub(sent)));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("subscriber: {e}");
                    break;
                }
                Err(_) => break,
            }
        }
        (latencies, last)
    });

    // Publishers: connect all first, then start together.
    let start = Arc::new(tokio::sync::Barrier::new(PUBLISHERS + 1));
    let mut tasks = Vec::new();
    for i in 0..PUBLISHERS {
        let id = post(i);
        let (client, mut eventloop) = AsyncClient::new(options(&id, addr, dir), 200);
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if let Event::Incoming(Packet::ConnAck(_)) =
                    eventloop.poll().await.expect("publisher connects")
                {
                    break;
                }
            }
            let driver = tokio::spawn(async move {
                let mut acked = 0;
                while acked < per_publisher {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("publisher: {e}");
                            return;
                        }
                    }
                }
            });
            start.wait().await;
            let t = topic(&id, TopicKind::Events);
            for _ in 0..per_publisher {
                let mut payload = vec![0u8; PAYLOAD];
                let now = base.elapsed().as_nanos() as u64;
                payload[..8].copy_from_slice(&now.to_be_bytes());
                client
                    .publish(t.as_str(), QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
            let _ = tokio::time::timeout(DEADLINE, driver).await;
            let _ = client.disconnect().await;
        }));
    }
    start.wait().await;
    let started = Instant::now();
    let (mut latencies, last) = tokio::time::timeout(DEADLINE, receiver)
        .await
        .expect("load finished in time")
        .unwrap();
    for t in tasks {
        let _ = t.await;
    }
    let _ = sub.disconnect().await;
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Result {
        received: latencies.len(),
        expected,
        elapsed: last.saturating_duration_since(started),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}
