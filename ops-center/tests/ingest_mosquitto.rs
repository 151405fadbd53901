//! Ingest end to end through a real MQTT broker (Mosquitto) with mutual TLS:
//! a post publishes batches (re-sent, out of order, and one claiming another
//! post), the ops-center stores each event once and publishes receipts; after
//! a restart on the same store, re-sent events are no-ops and receipts
//! resume. Skipped, with a notice, when `mosquitto` is not installed.

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use prost::Message;
use rumqttc::{
    AsyncClient, Event as MqttEvent, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio_util::sync::CancellationToken;
use vigil_ops::{
    config::{ApiConfig, MqttConfig, OpsConfig},
    engine::EngineConfig,
    metrics::Metrics,
};
use vigil_pki::{Identity, Role, TlsConfig, authority};
use vigil_proto::{
    topics::{self, TopicKind},
    v1::{Event, EventBatch, Receipt},
};

/// Kills the broker when the test ends, however it ends.
struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_installed() -> bool {
    match Command::new("mosquitto").arg("-h").output() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("mosquitto: {e}"),
    }
}

fn issue(pki: &Path, role: Role, id: &str, sans: &[&str]) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    authority::issue(pki, role, &Identity::new(id).unwrap(), &sans, 30, false).unwrap();
}

fn start_broker(dir: &Path, pki: &Path) -> Broker {
    // A port that was free a moment ago; mosquitto takes it at once.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.join("mosquitto.conf");
    let p = |f: &str| pki.join(f).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\n\
             cafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nuse_identity_as_username true\n\
             persistence false\nlog_type error\nlog_dest stderr\n\
             # Stay the user who runs the test: the PKI files are private to it.\n\
             user {}\n",
            p("ca.pem"),
            p("broker.pem"),
            p("broker.key"),
            whoami(),
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mosquitto");
    let broker = Broker { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    broker
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn tls(pki: &Path, id: &str) -> TlsConfig {
    TlsConfig {
        ca: pki.join("ca.pem"),
        cert: pki.join(format!("{id}.pem")),
        key: pki.join(format!("{id}.key")),
        crl: None,
    }
}

fn ops_config(data_dir: PathBuf, pki: &Path, port: u16) -> OpsConfig {
    OpsConfig {
        metrics: None,
        console: None,
        data_dir,
        mqtt: MqttConfig {
            max_batch_bytes: 64 * 1024,
            ..MqttConfig::single(format!("127.0.0.1:{port}"))
        },
        // Loopback, a port of the system's choosing: tests never take the
        // default 0.0.0.0:50051.
        api: ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ApiConfig::default()
        },
        tls: tls(pki, "ops-1"),
        engine: EngineConfig::default(),
        budget: Default::default(),
        store: Default::default(),
        retention: Default::default(),
        notify: Default::default(),
    }
}

struct RunningOps {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

fn start_ops(cfg: &OpsConfig) -> RunningOps {
    let material = cfg.tls.load().unwrap();
    let (store, engine) = vigil_ops::open(cfg).unwrap();
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        async move {
            vigil_ops::run(cfg, store, engine, &material, metrics, shutdown)
                .await
                .unwrap();
        }
    });
    RunningOps {
        shutdown,
        task,
        metrics,
    }
}

impl RunningOps {
    async fn stop(self) -> Arc<Metrics> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("ops-center stops in time")
            .unwrap();
        self.metrics
    }
}

/// A post's MQTT client, standing in for the gateway.
struct Post {
    id: String,
    client: AsyncClient,
    eventloop: EventLoop,
}

async fn connect_post(pki: &Path, id: &str, port: u16) -> Post {
    let material = tls(pki, id).load().unwrap();
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
        material.client_config().unwrap(),
    ))));
    let (client, eventloop) = AsyncClient::new(options, 64);
    client
        .subscribe(topics::topic(id, TopicKind::Receipts), QoS::AtLeastOnce)
        .await
        .unwrap();
    Post {
        id: id.into(),
        client,
        eventloop,
    }
}

fn batch(post: &str, seqs: &[u64]) -> Vec<u8> {
    EventBatch {
        post_id: post.into(),
        events: seqs
            .iter()
            .map(|&seq| Event {
                post_id: post.into(),
                seq,
                description: format!("event {seq}"),
                ..Default::default()
            })
            .collect(),
    }
    .encode_to_vec()
}

impl Post {
    fn publish(&self, topic_post: &str, payload: Vec<u8>) {
        // Goes out with the next poll of the event loop (in until_receipt).
        self.client
            .try_publish(
                topics::topic(topic_post, TopicKind::Events),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .unwrap();
    }

    /// Polls until a receipt covering `seq` arrives, re-sending `resend`
    /// every half second meanwhile (as a gateway re-sends what is not yet
    /// receipted). Returns the receipt.
    async fn until_receipt(&mut self, seq: u64, resend: Option<&[u64]>) -> Receipt {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut every = tokio::time::interval(Duration::from_millis(500));
        let Post {
            id,
            client,
            eventloop,
        } = self;
        loop {
            tokio::select! {
                _ = every.tick() => {
                    if let Some(seqs) = resend {
                        // try_: never wait on the request channel while this
                        // task is the one polling the event loop.
                        let _ = client.try_publish(
                            topics::topic(id, TopicKind::Events),
                            QoS::AtLeastOnce,
                            false,
                            batch(id, seqs),
                        );
                    }
                }
                ev = eventloop.poll() => {
                    if let MqttEvent::Incoming(Packet::Publish(p)) = ev.expect("post connection") {
                        let r = Receipt::decode(p.payload.as_ref()).unwrap();
                        assert_eq!(&r.post_id, id);
                        if r.durable_through_seq >= seq {
                            return r;
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => panic!("no receipt through {seq}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_through_mosquitto_are_stored_once_and_receipted() {
    if !mosquitto_installed() {
        eprintln!("mosquitto not installed: skipping the broker test");
        return;
    }
    vigil_pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    authority::init(&pki, "test CA").unwrap();
    issue(&pki, Role::Broker, "broker", &["127.0.0.1", "localhost"]);
    issue(&pki, Role::Ops, "ops-1", &["localhost"]);
    issue(&pki, Role::Post, "p-1", &[]);
    let broker = start_broker(dir.path(), &pki);
    let cfg = ops_config(dir.path().join("ops-data"), &pki, broker.port);

    let ops = start_ops(&cfg);
    let mut post = connect_post(&pki, "p-1", broker.port).await;
    // Until the ops-center has subscribed, batches find no subscriber; the
    // post re-sends until the first receipt, like a gateway.
    let r = post.until_receipt(3, Some(&[1, 2, 3])).await;
    assert_eq!(r.durable_through_seq, 3);
    // Out of order: 5 and 6 wait for 4.
    post.publish("p-1", batch("p-1", &[5, 6]));
    // A batch for another post on p-1's topic, and garbage: dropped, counted.
    post.publish("p-1", batch("p-2", &[1]));
    post.publish("p-1", vec![0xff; 10]);
    post.publish("p-1", batch("p-1", &[4]));
    let r = post.until_receipt(6, None).await;
    assert_eq!(r.durable_through_seq, 6);
    let m = ops.stop().await.snapshot();
    assert_eq!(m.events_stored, 6);
    assert!(m.duplicates > 0 || m.batches == 3, "{m:?}");
    assert_eq!(m.rejected_post_mismatch, 1);
    assert_eq!(m.rejected_malformed, 1);

    // Restart on the same store: everything re-sent is a no-op, receipts
    // resume where they were, and new events continue the sequence.
    let ops = start_ops(&cfg);
    let r = post.until_receipt(7, Some(&[1, 2, 3, 4, 5, 6, 7])).await;
    assert_eq!(r.durable_through_seq, 7);
    let m = ops.stop().await.snapshot();
    assert_eq!(m.events_stored, 1, "only seq 7 is new");

    let (storage, _) = vigil_ops::open(&cfg).unwrap();
    let store = storage.writer.expect("SQLite opens its writer");
    assert_eq!(store.event_count().unwrap(), 7);
    assert_eq!(store.durable_through("p-1").unwrap(), 7);
    let seqs: Vec<u64> = store
        .events("p-1", 1, 100)
        .unwrap()
        .iter()
        .map(|e| e.event.as_ref().unwrap().seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7]);
    drop(broker);
}
