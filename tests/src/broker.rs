//! The broker's own rig: a fresh PKI in a temp dir, a broker on
//! `127.0.0.1:0`, and MQTT clients (rumqttc 3.1.1 and 5) whose events
//! arrive on a channel. Used by the broker crate's integration tests.
//!
//! Every wait is bounded by [`WAIT`]; a test that would hang fails instead.

// The rig's clients hold rumqttc handles and tasks, which print nothing
// useful.
#![allow(missing_debug_implementations)]

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use rumqttc::{TlsConfiguration, Transport};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use vigil_broker::{Broker, BrokerConfig, Limits, MetricsSnapshot};
use vigil_pki::{Identity, Role, TlsConfig, authority};

/// Longest any single expectation waits.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(500);

/// A region CA with a broker, two posts, an ops-center, an analyst, and a
/// revoked post (`p-9`).
#[derive(Debug)]
pub struct Pki {
    pub dir: TempDir,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Self {
        vigil_pki::install_crypto_provider();
        // Logs only when asked for: RUST_LOG=vigil_broker=debug,rumqttd=info
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        authority::init(path, "test CA").unwrap();
        let issue = |role, id: &str, sans: &[&str]| {
            let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
            authority::issue(path, role, &Identity::new(id).unwrap(), &sans, 2, false).unwrap();
        };
        issue(Role::Broker, "broker-1", &["localhost", "127.0.0.1"]);
        for ops in ["ops-1", "ops-2", "ops-3", "ops-4"] {
            issue(Role::Ops, ops, &["localhost"]);
        }
        for post in ["p-1", "p-2", "p-9"] {
            issue(Role::Post, post, &[]);
        }
        issue(Role::Analyst, "alice", &[]);
        authority::revoke(path, &Identity::new("p-9").unwrap()).unwrap();
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn tls(&self, id: &str) -> TlsConfig {
        TlsConfig {
            ca: self.path("ca.pem"),
            cert: self.path(&format!("{id}.pem")),
            key: self.path(&format!("{id}.key")),
            crl: Some(self.path("crl.pem")),
        }
    }

    /// A rustls client config presenting `id`'s certificate.
    pub fn client(&self, id: &str) -> Arc<rustls::ClientConfig> {
        Arc::new(self.tls(id).load().unwrap().client_config().unwrap())
    }
}

/// A broker running in this test's runtime.
pub struct TestBroker {
    pub pki: Pki,
    pub broker: Broker,
    pub shutdown: CancellationToken,
}

impl TestBroker {
    pub async fn start() -> Self {
        Self::with_limits(Limits::default()).await
    }

    pub async fn with_limits(limits: Limits) -> Self {
        let pki = Pki::new();
        let config = BrokerConfig {
            metrics: None,
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: pki.tls("broker-1"),
            limits,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let broker = Broker::start(&config, listener, shutdown.clone())
            .await
            .unwrap();
        Self {
            pki,
            broker,
            shutdown,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.broker.metrics()
    }

    /// Waits until `check` holds for the counters.
    pub async fn wait_metrics(&self, what: &str, check: impl Fn(&MetricsSnapshot) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = self.metrics();
            if check(&m) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Options for a client with `cert`'s certificate and client id `id`.
    pub fn client(&self, version: Mqtt, cert: &str, id: &str) -> ClientOptions {
        ClientOptions {
            version,
            addr: self.addr(),
            tls: self.pki.client(cert),
            id: id.to_owned(),
            will: None,
        }
    }
}

/// MQTT protocol version of a test client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mqtt {
    V4,
    V5,
}

pub const BOTH: [Mqtt; 2] = [Mqtt::V4, Mqtt::V5];

/// What a client saw, in both versions' terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Connected,
    /// CONNACK refusal, or any failure before CONNACK.
    Refused(String),
    Publish {
        topic: String,
        payload: Vec<u8>,
    },
    /// A PUBACK; `reason` is "Success" in 3.1.1.
    PubAck {
        reason: String,
    },
    /// A SUBACK's return codes, as debug strings.
    SubAck {
        codes: Vec<String>,
    },
    /// v5 DISCONNECT from the server.
    Disconnect {
        reason: String,
    },
    /// The connection ended (error text).
    Closed(String),
}

pub struct ClientOptions {
    version: Mqtt,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    id: String,
    will: Option<(String, Vec<u8>)>,
}

impl ClientOptions {
    /// Options for any certificate against any address.
    pub fn from_parts(
        version: Mqtt,
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        id: &str,
    ) -> Self {
        Self {
            version,
            addr,
            tls,
            id: id.to_owned(),
            will: None,
        }
    }

    /// A retained QoS 1 will.
    pub fn will(mut self, topic: &str, payload: &[u8]) -> Self {
        self.will = Some((topic.to_owned(), payload.to_vec()));
        self
    }

    /// Starts the client's event loop; events arrive on [`Client::next`].
    pub fn start(self) -> Client {
        let (tx, rx) = mpsc::channel(1024);
        let transport = Transport::tls_with_config(TlsConfiguration::Rustls(self.tls));
        let host = self.addr.ip().to_string();
        let port = self.addr.port();
        let (handle, task) = match self.version {
            Mqtt::V4 => {
                let mut o = rumqttc::MqttOptions::new(self.id, host, port);
                o.set_transport(transport);
                o.set_keep_alive(Duration::from_secs(5));
                o.set_max_packet_size(1 << 20, 1 << 20);
                if let Some((topic, payload)) = self.will {
                    o.set_last_will(rumqttc::LastWill::new(
                        topic,
                        payload,
                        rumqttc::QoS::AtLeastOnce,
                        true,
                    ));
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(o, 64);
                (Handle::V4(client), tokio::spawn(drive_v4(eventloop, tx)))
            }
            Mqtt::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(self.id, host, port);
                o.set_transport(transport);
                o.set_keep_alive(Duration::from_secs(5));
                if let Some((topic, payload)) = self.will {
                    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                        topic,
                        payload,
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        true,
                        None,
                    ));
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, 64);
                (Handle::V5(client), tokio::spawn(drive_v5(eventloop, tx)))
            }
        };
        Client {
            handle,
            events: rx,
            task,
        }
    }

    /// Starts the client and waits for its CONNACK.
    pub async fn connect(self) -> Client {
        let mut client = self.start();
        client.expect(Ev::Connected).await;
        client
    }
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub struct Client {
    handle: Handle,
    events: mpsc::Receiver<Ev>,
    task: JoinHandle<()>,
}

impl Client {
    /// The next event, or `None` if none arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Ev> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for an event equal to `want`, skipping others.
    pub async fn expect(&mut self, want: Ev) -> Ev {
        self.expect_match(&format!("{want:?}"), |ev| *ev == want)
            .await
    }

    /// Waits for an event matching `pred`, skipping others.
    pub async fn expect_match(&mut self, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) if pred(&ev) => return ev,
                Ok(Some(ev)) => seen.push(ev),
                Ok(None) => panic!("event loop ended before {what}; saw {seen:?}"),
                Err(_) => panic!("timed out waiting for {what}; saw {seen:?}"),
            }
        }
    }

    /// Waits for the connection to end; returns the events seen before.
    pub async fn expect_closed(&mut self) -> Vec<Ev> {
        let mut seen = Vec::new();
        loop {
            let ev = self.expect_match("connection closed", |_| true).await;
            if let Ev::Closed(_) = ev {
                return seen;
            }
            seen.push(ev);
        }
    }

    /// Asserts that no publish arrives for [`QUIET`].
    pub async fn expect_no_publish(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            assert!(!matches!(ev, Ev::Publish { .. }), "unexpected {ev:?}");
        }
    }

    /// Publishes at QoS 1.
    /// A v5 QoS 1 publish carrying topic alias `alias`; an empty `topic`
    /// uses an alias set up before.
    pub async fn publish_aliased(&self, topic: &str, alias: u16, payload: &[u8]) {
        let Handle::V5(c) = &self.handle else {
            panic!("topic aliases are MQTT 5 only");
        };
        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
            topic_alias: Some(alias),
            ..Default::default()
        };
        c.publish_with_properties(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            payload.to_vec(),
            properties,
        )
        .await
        .unwrap();
    }

    pub async fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        match &self.handle {
            Handle::V4(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
                .await
                .unwrap(),
            Handle::V5(c) => c
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload.to_vec(),
                )
                .await
                .unwrap(),
        }
    }

    /// Subscribes at QoS 1.
    pub async fn subscribe(&self, filter: &str) {
        match &self.handle {
            Handle::V4(c) => c
                .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .unwrap(),
            Handle::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .unwrap(),
        }
    }

    /// Subscribes and waits for a SUBACK granting it.
    pub async fn subscribe_ok(&mut self, filter: &str) {
        self.subscribe(filter).await;
        let ev = self
            .expect_match("SUBACK", |ev| matches!(ev, Ev::SubAck { .. }))
            .await;
        assert_eq!(
            ev,
            Ev::SubAck {
                codes: vec![granted()]
            },
            "{filter}"
        );
    }

    /// Ends the connection without DISCONNECT (the TCP socket just closes),
    /// as when a post loses power.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// The SUBACK code of a granted QoS 1 subscription, as [`Ev::SubAck`]
/// spells it (same text for both versions).
pub fn granted() -> String {
    "Success(AtLeastOnce)".to_owned()
}

/// Waits for a publish on `topic` and returns its payload.
pub async fn expect_publish(client: &mut Client, topic: &str) -> Vec<u8> {
    match client
        .expect_match(
            &format!("publish on {topic}"),
            |ev| matches!(ev, Ev::Publish { topic: t, .. } if t == topic),
        )
        .await
    {
        Ev::Publish { payload, .. } => payload,
        _ => unreachable!(),
    }
}

async fn drive_v4(mut eventloop: rumqttc::EventLoop, tx: mpsc::Sender<Ev>) {
    use rumqttc::{ConnectionError, Event, Packet};
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::Connected,
            Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish {
                topic: p.topic,
                payload: p.payload.to_vec(),
            },
            Ok(Event::Incoming(Packet::PubAck(_))) => Ev::PubAck {
                reason: "Success".into(),
            },
            Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck {
                codes: s
                    .return_codes
                    .iter()
                    .map(|c| match c {
                        rumqttc::SubscribeReasonCode::Success(q) => format!("Success({q:?})"),
                        other => format!("{other:?}"),
                    })
                    .collect(),
            },
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => Ev::Refused(format!("{code:?}")),
            Err(e) => Ev::Closed(e.to_string()),
        };
        let end = matches!(ev, Ev::Refused(_) | Ev::Closed(_));
        if tx.send(ev).await.is_err() || end {
            return;
        }
    }
}

async fn drive_v5(mut eventloop: rumqttc::v5::EventLoop, tx: mpsc::Sender<Ev>) {
    use rumqttc::v5::{ConnectionError, Event, StateError, mqttbytes::v5::Packet};
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::Connected,
            Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
            },
            Ok(Event::Incoming(Packet::PubAck(a))) => Ev::PubAck {
                reason: format!("{:?}", a.reason),
            },
            Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck {
                codes: s.return_codes.iter().map(|c| format!("{c:?}")).collect(),
            },
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => Ev::Refused(format!("{code:?}")),
            // rumqttc reports a server DISCONNECT as an error.
            Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code, ..
            })) => {
                let _ = tx
                    .send(Ev::Disconnect {
                        reason: format!("{reason_code:?}"),
                    })
                    .await;
                Ev::Closed("server DISCONNECT".into())
            }
            Err(e) => Ev::Closed(e.to_string()),
        };
        let end = matches!(ev, Ev::Refused(_) | Ev::Closed(_));
        if tx.send(ev).await.is_err() || end {
            return;
        }
    }
}
