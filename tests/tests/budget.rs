//! Per-post budgets end to end: a noisy post with a valid certificate
//! publishes on its own topic as fast as it can while a quiet post's real
//! gateway takes alarms from a simulated panel. The quiet post's alarms must
//! still be stored and receipted; the noisy post is throttled (deferred, not
//! receipted) and, once it re-sends like a gateway, loses nothing.
//!
//! Prints the quiet post's ACK-to-receipt p50 without and with the noise
//! (time from the panel's ACK to the receipt covering the event, seen in the
//! gateway's outbox). Figures are printed, never asserted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use prost::Message;
use rumqttc::{
    AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio_util::sync::CancellationToken;
use vigil_proto::{
    topics::{self, TopicKind},
    v1::{AlarmSignal, Event, EventBatch, EventCategory, Receipt, event::Body},
};
use vigil_sim::panel::{self as simulator, PanelConfig};
use vigil_tests::{Region, RunningGateway, WAIT, open_store};

/// The budget under test: small enough that the noise is throttled at once.
const BUDGET: &str = "[budget]\nevents_per_sec = 5000\nburst_events = 5000\n";
/// Events the noisy post publishes at full speed.
const NOISE_EVENTS: u64 = 40_000;
/// Events per noisy batch.
const NOISE_BATCH: u64 = 500;
/// Alarms the quiet post's panel sends per phase.
const QUIET_ALARMS: u64 = 40;

/// A post's MQTT connection, standing in for a gateway that misbehaves:
/// publishes what it is told and records the newest receipt.
struct RawPost {
    id: String,
    client: AsyncClient,
    receipted: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl RawPost {
    async fn connect(region: &Region, id: &str, broker: std::net::SocketAddr) -> Self {
        let pki = region.path("pki");
        let tls = vigil_pki::TlsConfig {
            ca: pki.join("ca.pem"),
            cert: pki.join(format!("{id}.pem")),
            key: pki.join(format!("{id}.key")),
            crl: None,
        }
        .load()
        .expect("post tls");
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
        options
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
                tls.client_config().expect("client config"),
            ))))
            .set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client
            .subscribe(topics::topic(id, TopicKind::Receipts), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let receipted = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        tokio::spawn({
            let (receipted, stop) = (receipted.clone(), stop.clone());
            async move {
                loop {
                    let ev = tokio::select! {
                        () = stop.cancelled() => return,
                        ev = eventloop.poll() => ev,
                    };
                    match ev {
                        Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                            if let Ok(r) = Receipt::decode(p.payload.as_ref()) {
                                receipted.fetch_max(r.durable_through_seq, Relaxed);
                            }
                        }
                        Ok(_) => {}
                        // rumqttc reconnects on the next poll; a short pause
                        // keeps a refused connection from spinning.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        Self {
            id: id.into(),
            client,
            receipted,
            stop,
        }
    }

    async fn publish(&self, seqs: std::ops::RangeInclusive<u64>) {
        let batch = EventBatch {
            post_id: self.id.clone(),
            events: seqs.map(|seq| noise(&self.id, seq)).collect(),
        };
        self.client
            .publish(
                topics::topic(&self.id, TopicKind::Events),
                QoS::AtLeastOnce,
                false,
                batch.encode_to_vec(),
            )
            .await
            .expect("publish");
    }
}

impl Drop for RawPost {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn noise(post: &str, seq: u64) -> Event {
    Event {
        post_id: post.into(),
        seq,
        category: EventCategory::Trouble as i32,
        description: format!("noise {seq}"),
        body: Some(Body::Alarm(AlarmSignal {
            account: "9999".into(),
            zone: (seq % 8 + 1) as u32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Runs a panel of `gw` sending `count` messages and measures, for each
/// ACKed message that added an event to the outbox, the time from its ACK
/// to the receipt that covers it. Polls every millisecond (bounded).
async fn ack_to_receipt(gw: &RunningGateway, count: u64, seed: u64) -> Vec<Duration> {
    let mut config = PanelConfig::new(gw.dc09.to_string(), "1234");
    config.count = Some(count);
    config.interval = Duration::from_millis(25);
    config.seed = Some(seed);
    let panel = simulator::Panel::new(config).expect("panel");
    let progress = panel.progress();
    let task = tokio::spawn(panel.run(CancellationToken::new()));
    let mut acked = 0;
    let mut last_seq = gw.outbox().0;
    let mut waiting: Vec<(u64, Instant)> = Vec::new();
    let mut latencies = Vec::new();
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let now = Instant::now();
        let p = *progress.borrow();
        let (last, receipted, _) = gw.outbox();
        if p.acked > acked {
            acked = p.acked;
            if last > last_seq {
                waiting.push((last, now));
                last_seq = last;
            }
        }
        waiting.retain(|&(seq, at)| {
            if receipted >= seq {
                latencies.push(now - at);
                false
            } else {
                true
            }
        });
        if task.is_finished() && waiting.is_empty() {
            break;
        }
        assert!(now < deadline, "quiet post: alarms not receipted in time");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let summary = task.await.expect("panel task").expect("panel run");
    assert_eq!(summary.counts.acked, count, "every quiet message ACKed");
    latencies
}

fn p50(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_post_is_throttled_while_a_quiet_posts_alarms_are_receipted() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops_with(broker.addr(), BUDGET).await;
    let quiet = region.start_gateway("p-2", broker.addr(), "").await;

    // Baseline: the quiet post alone.
    let mut baseline = ack_to_receipt(&quiet, QUIET_ALARMS, 1).await;
    assert!(!baseline.is_empty());

    // The noisy post at full speed, while the quiet post's panel sends again.
    let noisy = RawPost::connect(&region, "p-1", broker.addr()).await;
    let started = Instant::now();
    let noise = async {
        let mut seq = 1;
        while seq <= NOISE_EVENTS {
            let end = (seq + NOISE_BATCH - 1).min(NOISE_EVENTS);
            noisy.publish(seq..=end).await;
            seq = end + 1;
        }
    };
    let (mut loaded, ()) = tokio::join!(ack_to_receipt(&quiet, QUIET_ALARMS, 2), noise);
    let noise_secs = started.elapsed().as_secs_f64();
    assert!(!loaded.is_empty());
    let deferred = ops.metrics.budget_deferred_events.load(Relaxed);
    assert!(deferred > 0, "the noisy post was throttled");
    let receipted_under_noise = noisy.receipted.load(Relaxed);
    assert!(
        receipted_under_noise < NOISE_EVENTS,
        "events over budget are not receipted ({receipted_under_noise})"
    );

    // The noisy post now behaves like a gateway: it re-sends what no receipt
    // covers, and everything is stored in the end.
    let resend_started = Instant::now();
    let resend_deadline = resend_started + WAIT * 4;
    let mut rounds = 0;
    while noisy.receipted.load(Relaxed) < NOISE_EVENTS {
        assert!(
            Instant::now() < resend_deadline,
            "noisy post never fully receipted"
        );
        let from = noisy.receipted.load(Relaxed) + 1;
        let end = (from + NOISE_BATCH - 1).min(NOISE_EVENTS);
        noisy.publish(from..=end).await;
        rounds += 1;
        // Wait (bounded) for this batch's receipt before the next, as a
        // gateway waits for its resend timer.
        let wait_until = Instant::now() + Duration::from_millis(500);
        while noisy.receipted.load(Relaxed) < end && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let (base, load) = (p50(&mut baseline), p50(&mut loaded));
    eprintln!("==== budget: noisy post p-1 vs quiet post p-2 ====");
    eprintln!(
        "  budget: 5000 events/s, burst 5000 per post; noise: {NOISE_EVENTS} events in batches of \
         {NOISE_BATCH} published in {noise_secs:.2} s"
    );
    eprintln!(
        "  deferred under noise: {deferred} events; noisy post receipted through {receipted_under_noise} \
         during the noise; all {NOISE_EVENTS} after {rounds} re-sends in {:.2} s",
        resend_started.elapsed().as_secs_f64()
    );
    eprintln!(
        "  quiet post ACK-to-receipt p50: {:.1} ms alone ({} alarms), {:.1} ms under noise ({} alarms), ratio {:.2}",
        base.as_secs_f64() * 1e3,
        baseline.len(),
        load.as_secs_f64() * 1e3,
        loaded.len(),
        load.as_secs_f64() / base.as_secs_f64().max(1e-6)
    );

    quiet.stop().await;
    drop(noisy);
    let data = ops.stop().await;
    broker.stop().await;
    let store = open_store(&data);
    use vigil_ops::store::Store;
    assert_eq!(
        store.durable_through("p-1").unwrap(),
        NOISE_EVENTS,
        "nothing lost"
    );
    assert!(store.durable_through("p-2").unwrap() > 0);
}
