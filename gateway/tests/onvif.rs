//! The ONVIF PullPoint client against the simulated camera, both on real
//! loopback sockets: events arriving in the outbox, refused credentials,
//! the camera going away and coming back, renewal, broken answers, and
//! unsubscribing on shutdown.
//!
//! Every wait is bounded by [`WAIT`]; the leases are a few seconds so the
//! renewal cases run in real time without depending on speed.

use std::{sync::Arc, sync::atomic::AtomicU64, sync::atomic::Ordering, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use vigil_gateway::{
    camera::{
        CameraInput,
        onvif::{self, OnvifMetrics, OnvifSettings, soap::Credentials},
    },
    outbox::{Outbox, OutboxLimits},
};
use vigil_proto::v1::{CameraEventKind, CameraEventState, Event, HealthKind, HealthState, event};
use vigil_sim::camera::{self as sim, Breakage, OnvifCamera, SimConfig, SimHandle, SimStats};
use vigil_tests::{
    WAIT, eventually,
    gateway::{stored, wait_stored},
};

fn n(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

struct Rig {
    camera: SimHandle,
    outbox: Outbox,
    metrics: Arc<OnvifMetrics>,
    client_stop: CancellationToken,
    camera_stop: CancellationToken,
    client: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.client_stop.cancel();
        self.camera_stop.cancel();
    }
}

fn settings(url: &str, password: &str) -> OnvifSettings {
    OnvifSettings {
        camera: "cam-1".into(),
        url: url.parse().unwrap(),
        credentials: Credentials {
            username: "vigil".into(),
            password: password.into(),
        },
        subscription: Duration::from_secs(60),
        pull_timeout: Duration::from_secs(1),
        message_limit: 8,
        backoff_max: Duration::from_secs(1),
        unreachable_after: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
    }
}

async fn start(password: &str, tune: impl FnOnce(&mut OnvifSettings)) -> Rig {
    start_with(password, SimConfig::new("vigil", "right-password"), tune).await
}

async fn start_with(
    password: &str,
    camera_config: SimConfig,
    tune: impl FnOnce(&mut OnvifSettings),
) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(
        &dir.path().join("outbox.db"),
        "p-001",
        OutboxLimits::default(),
    )
    .unwrap();
    let input = CameraInput::new(outbox.clone(), Duration::from_secs(300));
    let camera_stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let camera = OnvifCamera::start(listener, camera_config, camera_stop.clone());
    let mut s = settings(&camera.device_url(), password);
    tune(&mut s);
    let metrics = Arc::new(OnvifMetrics::default());
    let client_stop = CancellationToken::new();
    let client = tokio::spawn(onvif::run(s, input, metrics.clone(), client_stop.clone()));
    Rig {
        camera,
        outbox,
        metrics,
        client_stop,
        camera_stop,
        client,
        _dir: dir,
    }
}

fn camera_body(e: &Event) -> (CameraEventKind, CameraEventState, String, String) {
    let Some(event::Body::Camera(c)) = &e.body else {
        panic!("not a camera event: {e:?}")
    };
    (c.kind(), c.state(), c.region.clone(), c.topic.clone())
}

fn health_body(e: &Event) -> Option<(HealthKind, HealthState, String)> {
    match &e.body {
        Some(event::Body::Health(h)) => Some((h.kind(), h.state(), h.subject.clone())),
        _ => None,
    }
}

async fn subscribed(rig: &Rig, times: u64) {
    let stats: &SimStats = rig.camera.stats();
    eventually("a subscription", || {
        SimStats::get(&stats.subscriptions) >= times && rig.camera.subscriptions() == 1
    })
    .await;
}

#[tokio::test]
async fn each_topic_arrives_mapped_in_the_outbox() {
    let rig = start("right-password", |_| {}).await;
    subscribed(&rig, 1).await;
    let events = [
        sim::motion(true),
        sim::motion(false),
        sim::field("North fence", true),
        sim::line_crossed("Gate line", "17"),
        sim::tamper(true),
        sim::signal_loss(true),
        sim::scene_change(true),
        sim::digital_input("DigitalInput_1", true),
    ];
    for e in &events {
        rig.camera.inject(e);
    }
    let got = wait_stored(&rig.outbox, events.len()).await;
    let mapped: Vec<_> = got.iter().map(camera_body).collect();
    use CameraEventKind as K;
    use CameraEventState as S;
    let expected = [
        (K::Motion, S::Start, "MotionRule"),
        (K::Motion, S::Stop, "MotionRule"),
        (K::Intrusion, S::Start, "North fence"),
        (K::LineCrossing, S::OneShot, "Gate line"),
        (K::Tamper, S::Start, "TamperRule"),
        (K::VideoLoss, S::Start, ""),
        (K::SceneChange, S::Start, ""),
        (K::Other, S::Start, ""),
    ];
    assert_eq!(mapped.len(), expected.len(), "{mapped:?}");
    for (m, e) in mapped.iter().zip(expected) {
        assert_eq!((m.0, m.1, m.2.as_str()), e, "{m:?}");
    }
    assert_eq!(mapped[7].3, "tns1:Device/Trigger/DigitalInput");
    // Every event names the camera and carries the device time.
    for e in &got {
        assert_eq!(e.source.as_ref().unwrap().device_id, "cam-1");
        assert!(e.occurred_at.is_some());
    }
    // The idle state the camera lists at subscription start is not stored.
    assert_eq!(stored(&rig.outbox).await.len(), events.len());
    assert!(n(&rig.metrics.pulls) >= 1);
    assert_eq!(n(&rig.metrics.reconnects), 0);
}

#[tokio::test]
async fn subscriptions_named_by_reference_parameters_work() {
    // One shared pull-point address; the camera tells subscriptions apart
    // by a header block it handed out, in a namespace of its own.
    let mut config = SimConfig::new("vigil", "right-password");
    config.reference_parameters = true;
    let rig = start_with("right-password", config, |s| {
        s.subscription = Duration::from_secs(6)
    })
    .await;
    subscribed(&rig, 1).await;
    rig.camera.inject(&sim::line_crossed("Gate line", "3"));
    let got = wait_stored(&rig.outbox, 1).await;
    assert_eq!(camera_body(&got[0]).0, CameraEventKind::LineCrossing);
    // Renewals reach the right subscription too.
    let stats = rig.camera.stats();
    eventually("a renewal", || SimStats::get(&stats.renewals) >= 1).await;
    assert_eq!(SimStats::get(&stats.expired), 0);
    assert_eq!(n(&rig.metrics.reconnects), 0);
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_counted_error() {
    let rig = start("wrong-password", |_| {}).await;
    eventually("refused credentials counted", || {
        n(&rig.metrics.auth_failures) >= 2
    })
    .await;
    let error = rig.metrics.last_error("cam-1").unwrap();
    assert!(error.contains("refused the credentials"), "{error}");
    assert!(error.contains("NotAuthorized"), "{error}");
    assert!(SimStats::get(&rig.camera.stats().auth_failures) >= 2);
    assert_eq!(SimStats::get(&rig.camera.stats().subscriptions), 0);
    assert_eq!(n(&rig.metrics.subscriptions), 0);
}

#[tokio::test]
async fn an_unreachable_camera_raises_health_and_its_return_restores() {
    let rig = start("right-password", |_| {}).await;
    subscribed(&rig, 1).await;
    rig.camera.stop().await;
    let got = wait_stored(&rig.outbox, 1).await;
    assert_eq!(
        health_body(&got[0]),
        Some((
            HealthKind::CameraUnreachable,
            HealthState::Fault,
            "cam-1".to_owned()
        ))
    );
    assert!(!got[0].restore);
    // Still away: no second fault.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stored(&rig.outbox).await.len(), 1);
    assert!(n(&rig.metrics.reconnects) >= 2);

    rig.camera.restart().await.unwrap();
    let got = wait_stored(&rig.outbox, 2).await;
    assert_eq!(
        health_body(&got[1]),
        Some((
            HealthKind::CameraUnreachable,
            HealthState::Restored,
            "cam-1".to_owned()
        ))
    );
    assert!(got[1].restore);
    // A new subscription on the restarted camera delivers events.
    subscribed(&rig, 1).await;
    assert!(n(&rig.metrics.subscriptions) >= 2);
    rig.camera.inject(&sim::motion(true));
    let got = wait_stored(&rig.outbox, 3).await;
    assert_eq!(camera_body(&got[2]).0, CameraEventKind::Motion);
}

#[tokio::test]
async fn subscriptions_that_never_deliver_count_as_unreachable() {
    // The camera takes every subscription but faults every pull: it is
    // not working, however often a subscription is made.
    let rig = start("right-password", |_| {}).await;
    rig.camera.fail_pulls(true);
    let got = wait_stored(&rig.outbox, 1).await;
    assert_eq!(
        health_body(&got[0]).map(|h| (h.0, h.1)),
        Some((HealthKind::CameraUnreachable, HealthState::Fault))
    );
    assert!(SimStats::get(&rig.camera.stats().subscriptions) >= 2);
    assert!(n(&rig.metrics.faults) >= 2);
    rig.camera.fail_pulls(false);
    let got = wait_stored(&rig.outbox, 2).await;
    assert_eq!(
        health_body(&got[1]).map(|h| (h.0, h.1)),
        Some((HealthKind::CameraUnreachable, HealthState::Restored))
    );
}

#[tokio::test]
async fn a_camera_never_reached_raises_health_once() {
    // Nothing listens on this port.
    let spare = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/onvif/device_service",
        spare.local_addr().unwrap()
    );
    drop(spare);
    let rig = start("right-password", |s| s.url = url.parse().unwrap()).await;
    let got = wait_stored(&rig.outbox, 1).await;
    let (kind, state, _) = health_body(&got[0]).unwrap();
    assert_eq!(
        (kind, state),
        (HealthKind::CameraUnreachable, HealthState::Fault)
    );
    let detail = match &got[0].body {
        Some(event::Body::Health(h)) => h.detail.clone(),
        _ => unreachable!(),
    };
    assert!(detail.contains("connection"), "{detail}");
    assert!(n(&rig.metrics.transport_errors) >= 1);
}

#[tokio::test]
async fn the_subscription_is_renewed_before_it_terminates() {
    // A 6 s lease with 1 s pulls: renewed every 3 s, leaving 2 s of
    // slack. Without renewals the camera would expire it and the next
    // pull would fail.
    let rig = start("right-password", |s| {
        s.subscription = Duration::from_secs(6)
    })
    .await;
    subscribed(&rig, 1).await;
    let stats = rig.camera.stats();
    eventually("two renewals", || SimStats::get(&stats.renewals) >= 2).await;
    assert_eq!(SimStats::get(&stats.expired), 0);
    assert_eq!(SimStats::get(&stats.subscriptions), 1);
    assert_eq!(n(&rig.metrics.reconnects), 0);
    assert!(n(&rig.metrics.renewals) >= 2);
    // Still delivering after more than two leases.
    rig.camera.inject(&sim::tamper(true));
    let got = wait_stored(&rig.outbox, 1).await;
    assert_eq!(camera_body(&got[0]).0, CameraEventKind::Tamper);
}

#[tokio::test]
async fn broken_answers_are_counted_and_the_client_resubscribes() {
    let rig = start("right-password", |_| {}).await;
    subscribed(&rig, 1).await;
    rig.camera.break_next(Breakage::MalformedXml);
    eventually("a bad answer counted", || {
        n(&rig.metrics.bad_responses) >= 1
    })
    .await;
    subscribed(&rig, 2).await;
    rig.camera.break_next(Breakage::Fault);
    eventually("a fault counted", || n(&rig.metrics.faults) >= 1).await;
    subscribed(&rig, 3).await;
    assert!(n(&rig.metrics.reconnects) >= 2);
    let error = rig.metrics.last_error("cam-1").unwrap();
    assert!(error.contains("simulated failure"), "{error}");
    // And it still works.
    rig.camera.inject(&sim::field("Yard", true));
    let got = wait_stored(&rig.outbox, 1).await;
    assert_eq!(
        camera_body(&got[0]).0,
        CameraEventKind::Intrusion,
        "{got:?}"
    );
    assert!(!rig.client.is_finished());
}

#[tokio::test]
async fn shutdown_unsubscribes() {
    let mut rig = start("right-password", |_| {}).await;
    subscribed(&rig, 1).await;
    rig.client_stop.cancel();
    tokio::time::timeout(WAIT, &mut rig.client)
        .await
        .expect("client stops in time")
        .unwrap();
    assert_eq!(SimStats::get(&rig.camera.stats().unsubscribes), 1);
    assert_eq!(rig.camera.subscriptions(), 0);
    assert_eq!(n(&rig.metrics.unsubscribes), 1);
}
