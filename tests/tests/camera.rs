//! End to end on loopback: a simulated ONVIF camera → the gateway's
//! PullPoint client (outbox) → broker (mTLS) → operations center (store).

use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vigil_ops::store::Store;
use vigil_proto::v1::{CameraEventKind, CameraEventState, Event, event};
use vigil_sim::camera::{self as sim, OnvifCamera, SimConfig};
use vigil_tests::{Region, eventually, open_store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onvif_camera_events_reach_the_ops_store() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops(broker.addr()).await;

    let camera_stop = CancellationToken::new();
    let camera = OnvifCamera::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig::new("vigil", "camera-password"),
        camera_stop.clone(),
    );
    let onvif = format!(
        "[[onvif]]\ncamera = \"cam-1\"\nurl = \"{}\"\nusername = \"vigil\"\npassword = \"camera-password\"\npull_timeout_secs = 1\n",
        camera.device_url()
    );
    let gw = region.start_gateway("p-1", broker.addr(), &onvif).await;
    eventually("the gateway subscribed to the camera", || {
        gw.metrics.onvif.subscriptions.load(Ordering::Relaxed) >= 1 && camera.subscriptions() == 1
    })
    .await;

    camera.inject(&sim::motion(true));
    camera.inject(&sim::line_crossed("Gate line", "5"));
    camera.inject(&sim::motion(false));
    eventually("three camera events pulled", || {
        gw.metrics.onvif.messages.load(Ordering::Relaxed) >= 4 // with the initial idle state
    })
    .await;
    eventually("every event receipted", || {
        let (last, receipted, depth) = gw.outbox();
        last >= 3 && receipted == last && depth == 0
    })
    .await;
    gw.stop().await;
    camera_stop.cancel();
    let data = ops.stop().await;
    broker.stop().await;

    let store = open_store(&data);
    let cameras: Vec<(CameraEventKind, CameraEventState, String, String)> = store
        .events("p-1", 1, 1000)
        .expect("read events")
        .into_iter()
        .filter_map(|s| s.event)
        .filter_map(|e: Event| match e.body {
            Some(event::Body::Camera(c)) => Some((c.kind(), c.state(), c.region, c.camera_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        cameras,
        vec![
            (
                CameraEventKind::Motion,
                CameraEventState::Start,
                "MotionRule".to_owned(),
                "cam-1".to_owned()
            ),
            (
                CameraEventKind::LineCrossing,
                CameraEventState::OneShot,
                "Gate line".to_owned(),
                "cam-1".to_owned()
            ),
            (
                CameraEventKind::Motion,
                CameraEventState::Stop,
                "MotionRule".to_owned(),
                "cam-1".to_owned()
            ),
        ]
    );
}
