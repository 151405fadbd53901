//! End to end on loopback: simulated panels → gateway (DC-09, outbox) →
//! broker (mTLS, ACL) → operations center (store) → receipts → gateway.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;
use vigil_ops::store::Store;
use vigil_proto::v1::{Event, event};
use vigil_sim::panel::{self as simulator, PanelConfig, Protocol};
use vigil_tests::{Region, eventually, open_store};

/// Sends `count` messages from panel account 1234 to `dc09` and returns
/// the (panel sequence, data block) of every message the gateway ACKed.
async fn panel(
    dc09: std::net::SocketAddr,
    count: u64,
    first_seq: u16,
    protocol: Protocol,
) -> Vec<(u16, String)> {
    let mut config = PanelConfig::new(dc09.to_string(), "1234");
    config.count = Some(count);
    config.interval = std::time::Duration::from_millis(5);
    config.first_seq = first_seq;
    config.protocol = protocol;
    config.seed = Some(u64::from(first_seq));
    let summary = simulator::run(config, CancellationToken::new())
        .await
        .expect("panel runs");
    assert_eq!(summary.counts.failed, 0, "{summary}");
    summary
        .acked_events()
        .filter(|id| id.token != vigil_dc09::Token::Null)
        .map(|id| (id.seq, id.payload.clone()))
        .collect()
}

/// Every stored alarm of `post`, by panel sequence, with the post seqs.
fn stored_alarms(store: &dyn Store, post: &str) -> (Vec<u64>, BTreeMap<u16, String>) {
    let events: Vec<Event> = store
        .events(post, 1, 100_000)
        .expect("read events")
        .into_iter()
        .filter_map(|s| s.event)
        .collect();
    let seqs = events.iter().map(|e| e.seq).collect();
    let alarms = events
        .iter()
        .filter_map(|e| match &e.body {
            Some(event::Body::Alarm(a)) => Some((a.dc09_sequence as u16, a.raw_data.clone())),
            _ => None,
        })
        .collect();
    (seqs, alarms)
}

fn assert_every_acked_alarm_is_stored(acked: &[(u16, String)], alarms: &BTreeMap<u16, String>) {
    for (seq, payload) in acked {
        let stored = alarms
            .get(seq)
            .unwrap_or_else(|| panic!("ACKed panel message {seq} ({payload}) was lost"));
        assert!(
            stored.ends_with(payload.as_str()),
            "{seq}: stored {stored:?}, sent {payload:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_alarms_reach_the_ops_store_exactly_once() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops(broker.addr()).await;
    let gw1 = region.start_gateway("p-1", broker.addr(), "").await;
    let gw2 = region.start_gateway("p-2", broker.addr(), "").await;

    let (acked1, acked2) = tokio::join!(
        panel(gw1.dc09, 40, 1, Protocol::Sia),
        panel(gw2.dc09, 40, 500, Protocol::Cid)
    );
    assert!(!acked1.is_empty() && !acked2.is_empty());

    // The outbox empties only through receipts from the operations center.
    for gw in [&gw1, &gw2] {
        eventually("every event receipted", || {
            let (last, receipted, depth) = gw.outbox();
            last > 0 && receipted == last && depth == 0
        })
        .await;
    }
    let (last1, ..) = gw1.outbox();
    let (last2, ..) = gw2.outbox();
    gw1.stop().await;
    gw2.stop().await;
    let data = ops.stop().await;
    broker.stop().await;

    let store = open_store(&data);
    for (post, last, acked) in [("p-1", last1, &acked1), ("p-2", last2, &acked2)] {
        let (seqs, alarms) = stored_alarms(&store, post);
        // Exactly once: seqs 1..=last, each once, nothing else.
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{post}");
        assert_eq!(store.durable_through(post).unwrap(), last, "{post}");
        assert_every_acked_alarm_is_stored(acked, &alarms);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let addr = broker.addr();
    let ops = region.start_ops(addr).await;
    let gw = region.start_gateway("p-1", addr, "").await;

    let mut acked = panel(gw.dc09, 15, 1, Protocol::Sia).await;
    eventually("first events receipted", || {
        let (last, receipted, _) = gw.outbox();
        last > 0 && receipted == last
    })
    .await;

    // Broker down: panels are still ACKed (the outbox holds their alarms),
    // and nothing leaves the outbox without a receipt.
    broker.stop().await;
    acked.extend(panel(gw.dc09, 15, 100, Protocol::Cid).await);
    let (last, receipted, depth) = gw.outbox();
    assert!(
        last > receipted && depth == last - receipted,
        "outbox keeps them: {last} {receipted} {depth}"
    );

    // Broker back on the same port: the gateway and the operations center
    // reconnect, the backlog goes through, in order, and is receipted.
    let broker = region.start_broker(addr).await;
    acked.extend(panel(gw.dc09, 10, 200, Protocol::Sia).await);
    eventually("backlog receipted", || {
        let (last, receipted, depth) = gw.outbox();
        receipted == last && depth == 0
    })
    .await;
    let (last, ..) = gw.outbox();
    gw.stop().await;
    let data = ops.stop().await;
    broker.stop().await;

    let store = open_store(&data);
    let (seqs, alarms) = stored_alarms(&store, "p-1");
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    assert_eq!(store.durable_through("p-1").unwrap(), last);
    assert_every_acked_alarm_is_stored(&acked, &alarms);
}

/// An alarm a gateway published while no operations center was subscribed
/// (the broker keeps nothing for an absent clean session) reaches the store
/// as soon as one subscribes: it asks the connected posts to re-send,
/// instead of leaving them to their re-send timer (an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_sent_before_the_ops_center_subscribed_arrive_promptly() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let gw = region
        .start_gateway_resending("p-1", broker.addr(), 3600, "")
        .await;
    let acked = panel(gw.dc09, 5, 1, Protocol::Sia).await;
    // Published into the void: nothing is receipted.
    eventually("the outbox has published its events", || {
        gw.metrics
            .publisher
            .events_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5
    })
    .await;
    assert_eq!(gw.outbox().1, 0, "nothing can be receipted yet");

    let ops = region.start_ops(broker.addr()).await;
    eventually("every event receipted without the re-send timer", || {
        let (last, receipted, _) = gw.outbox();
        last > 0 && receipted == last
    })
    .await;
    assert!(
        ops.metrics
            .resend_requests
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    gw.stop().await;
    let data = ops.stop().await;
    broker.stop().await;
    let store = open_store(&data);
    let (_, alarms) = stored_alarms(&store, "p-1");
    assert_every_acked_alarm_is_stored(&acked, &alarms);
}
