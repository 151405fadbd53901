//! The analyst's view, end to end on loopback: a panel alarm at a post
//! becomes an incident on the live gRPC feed, a camera watching its zone
//! verifies it, an analyst acknowledges and resolves it, an engineer
//! replays what was stored, and a post that drops off shows offline.

use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use vigil_dc09::{Message, Token};
use vigil_pki::Role;
use vigil_proto::v1::{
    AcknowledgeRequest, AuditAction, Disposition, EventKind, FeedItem, GetIncidentRequest,
    Incident, IncidentState, ListPostsRequest, Pacing, PostState, ReplayRequest, ResolveRequest,
    WatchIncidentsRequest, event, feed_item::Item,
};
use vigil_sim::{
    camera as sim,
    panel::{Panel, PanelConfig},
};
use vigil_tests::{Region, WAIT};

const CAMERA_TOKEN: &str = "e2e-camera-token-0123456789";

/// Reads the feed until an update satisfies `want`; returns its incident.
async fn next_update(
    feed: &mut Streaming<FeedItem>,
    what: &str,
    want: impl Fn(&Incident, AuditAction) -> bool,
) -> Incident {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let item = tokio::time::timeout_at(deadline, feed.message())
            .await
            .unwrap_or_else(|_| panic!("no feed update with {what} within {WAIT:?}"))
            .expect("feed stream")
            .expect("feed open");
        if let Some(Item::Update(update)) = item.item {
            let incident = update.incident.expect("update carries its incident");
            let cause = AuditAction::try_from(update.cause).unwrap_or_default();
            if want(&incident, cause) {
                return incident;
            }
        }
    }
}

/// Sends one SIA burglary alarm for `zone` from panel account 1234.
async fn burglary(dc09: std::net::SocketAddr, zone: u16) {
    let config = PanelConfig::new(dc09.to_string(), "1234");
    let alarm = Message {
        token: Token::SiaDcs,
        seq: 1,
        data: format!("#1234|Nri1/BA{zone:03}"),
        ..config.header()
    };
    let summary = Panel::with_messages(config, vec![alarm])
        .expect("panel")
        .run(CancellationToken::new())
        .await
        .expect("panel runs");
    assert_eq!(summary.counts.acked, 1, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_is_verified_worked_replayed_and_an_offline_post_shows() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region
        .start_ops_with(
            broker.addr(),
            "[[engine.zone_cameras]]\npost = \"p-1\"\nzone = 5\ncameras = [\"cam-1\"]\n",
        )
        .await;
    let gw1 = region
        .start_gateway(
            "p-1",
            broker.addr(),
            &format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n[[http.cameras]]\ncamera = \"cam-1\"\ntoken = \"{CAMERA_TOKEN}\"\n"
            ),
        )
        .await;
    let gw2 = region.start_gateway("p-2", broker.addr(), "").await;

    let mut analyst = region.api_client(Role::Analyst, "alice", ops.api).await;
    let mut feed = analyst
        .watch_incidents(WatchIncidentsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    // The alarm opens an incident on the feed.
    burglary(gw1.dc09, 5).await;
    let opened = next_update(&mut feed, "the burglary opened", |i, cause| {
        i.post_id == "p-1" && cause == AuditAction::Opened && i.title.contains("zone 5")
    })
    .await;
    assert_eq!(opened.state(), IncidentState::Open);
    assert!(!opened.verified);

    // The camera watching zone 5 sees motion: the same incident is verified.
    let (status, answer) = sim::push_event(
        &format!(
            "http://{}/v1/camera-events",
            gw1.push.expect("push endpoint")
        ),
        CAMERA_TOKEN,
        &sim::push_body("cam-1", "motion", "start", Some("Gate")),
        WAIT,
    )
    .await
    .expect("push");
    assert_eq!(status.as_u16(), 202, "{answer}");
    let verified = next_update(&mut feed, "the incident verified", |i, _| {
        i.id == opened.id && i.verified
    })
    .await;
    assert!(
        verified.priority < opened.priority,
        "verification raises the priority"
    );

    // The analyst takes it and resolves it; the feed shows both.
    let current = analyst
        .get_incident(GetIncidentRequest {
            incident_id: opened.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .incident
        .expect("incident");
    let acked = analyst
        .acknowledge(AcknowledgeRequest {
            incident_id: opened.id.clone(),
            expected_version: current.version,
            note: "on it".into(),
        })
        .await
        .expect("acknowledge")
        .into_inner();
    assert_eq!(acked.state(), IncidentState::Acknowledged);
    assert_eq!(acked.acknowledged_by, "alice");
    next_update(&mut feed, "the acknowledgment", |i, _| {
        i.id == opened.id && i.state() == IncidentState::Acknowledged
    })
    .await;
    let resolved = analyst
        .resolve(ResolveRequest {
            incident_id: opened.id.clone(),
            expected_version: acked.version,
            disposition: Disposition::Genuine.into(),
            note: "guard found the gate forced".into(),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(resolved.state(), IncidentState::Resolved);
    next_update(&mut feed, "the resolution", |i, _| {
        i.id == opened.id && i.state() == IncidentState::Resolved
    })
    .await;
    let detail = analyst
        .get_incident(GetIncidentRequest {
            incident_id: opened.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    let audited: Vec<(AuditAction, String)> = detail
        .audit
        .iter()
        .map(|a| (a.action(), a.actor.clone()))
        .collect();
    for action in [AuditAction::Acknowledged, AuditAction::Resolved] {
        assert!(
            audited.contains(&(action, "alice".to_owned())),
            "{action:?} by alice missing from {audited:?}"
        );
    }
    assert_eq!(detail.events.len(), 2, "the alarm and the detection");

    // An engineer replays the post: exactly the stored alarm and
    // detection, in seq order, with nothing between.
    let mut engineer = region.api_client(Role::Engineer, "eve", ops.api).await;
    let mut replay = engineer
        .replay(ReplayRequest {
            post_ids: vec!["p-1".into()],
            kinds: vec![EventKind::Alarm.into(), EventKind::Camera.into()],
            pacing: Pacing::AsFastAsPossible.into(),
            ..ReplayRequest::default()
        })
        .await
        .expect("replay")
        .into_inner();
    let mut replayed = Vec::new();
    while let Some(item) = tokio::time::timeout(WAIT, replay.message())
        .await
        .expect("replay in time")
        .expect("replay stream")
    {
        replayed.push(item.event.and_then(|s| s.event).expect("event"));
    }
    assert_eq!(replayed.len(), 2, "{replayed:?}");
    assert!(replayed.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        matches!(&replayed[0].body, Some(event::Body::Alarm(a)) if a.raw_data.ends_with("Nri1/BA005"))
    );
    assert!(matches!(&replayed[1].body, Some(event::Body::Camera(c)) if c.camera_id == "cam-1"));

    // p-2 goes away: its incident and its status say so.
    gw2.stop().await;
    let offline = next_update(&mut feed, "p-2 offline", |i, cause| {
        i.post_id == "p-2" && cause == AuditAction::Opened && i.subject == "post:offline"
    })
    .await;
    assert_eq!(offline.state(), IncidentState::Open);
    let posts = analyst
        .list_posts(ListPostsRequest::default())
        .await
        .expect("posts")
        .into_inner()
        .posts;
    let state = |id: &str| {
        posts
            .iter()
            .find(|p| p.post_id == id)
            .and_then(|p| p.status.as_ref())
            .map(|s| s.state())
    };
    assert_eq!(state("p-2"), Some(PostState::Offline), "{posts:?}");
    assert_eq!(state("p-1"), Some(PostState::Online), "{posts:?}");

    gw1.stop().await;
    ops.stop().await;
    broker.stop().await;
}
