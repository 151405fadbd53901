//! Emergency mode through the gRPC API over real mutual TLS on 127.0.0.1:0
//! (`vigil_tests::center`): who may start it, what it logs, how lists and
//! the live feed leave logged incidents out, and its audit trail.

use tonic::Code;
use vigil_ops::store::Store;
use vigil_pki::Role;
use vigil_proto::v1::{
    AuditAction, EventCategory, GetEmergencyRequest, ListIncidentsRequest, SetEmergencyRequest,
    WatchIncidentsRequest, feed_item::Item,
};
use vigil_tests::center::{Center, alarm, now_secs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_mode_is_for_supervisors_logs_low_priorities_and_is_audited() {
    let ops = Center::start().await;
    let mut analyst = ops.client(Role::Analyst, "alice").await;
    let mut supervisor = ops.client(Role::Supervisor, "sam").await;
    let start = |secs: u32, reason: &str| SetEmergencyRequest {
        duration_seconds: secs,
        post_ids: Vec::new(),
        reason: reason.into(),
    };

    // Analysts may look, not start it.
    let refused = analyst
        .set_emergency(start(3600, "storm"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let off = analyst
        .get_emergency(GetEmergencyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.emergency, None);
    // A reason and a bounded duration.
    let e = supervisor.set_emergency(start(3600, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = supervisor
        .set_emergency(start(30 * 24 * 3600, "storm"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("max_emergency_secs"),
        "{}",
        e.message()
    );

    let on = supervisor
        .set_emergency(start(3600, "storm"))
        .await
        .unwrap()
        .into_inner()
        .emergency
        .unwrap();
    assert_eq!(on.reason, "storm");
    assert_eq!(on.started_by, "sam");
    let seen = analyst
        .get_emergency(GetEmergencyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.emergency, Some(on));

    // A P3 (power) alarm is logged; a P2 (burglary) alarm is queued.
    let mut power = alarm("p-1", 1, 0, now_secs());
    power.category = EventCategory::Power as i32;
    ops.submit(vec![power, alarm("p-1", 2, 7, now_secs())])
        .await;
    let list = |include_logged| ListIncidentsRequest {
        include_logged,
        ..Default::default()
    };
    let queued = analyst
        .list_incidents(list(false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(queued.incidents.len(), 1, "{queued:#?}");
    assert_eq!(queued.incidents[0].category(), EventCategory::Burglary);
    let all = analyst
        .list_incidents(list(true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.incidents.len(), 2);
    let logged: Vec<_> = all.incidents.iter().filter(|i| i.logged).collect();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].category(), EventCategory::Power);
    assert!(logged[0].ack_deadline.is_none());

    // The live feed's snapshot leaves it out too, unless asked.
    for (include_logged, want) in [(false, 1), (true, 2)] {
        let mut feed = analyst
            .watch_incidents(WatchIncidentsRequest {
                cursor: String::new(),
                post_ids: Vec::new(),
                include_logged,
            })
            .await
            .unwrap()
            .into_inner();
        let mut updates = 0;
        loop {
            let item = tokio::time::timeout(std::time::Duration::from_secs(10), feed.message())
                .await
                .expect("feed answers")
                .unwrap()
                .unwrap();
            match item.item {
                Some(Item::Update(_)) => updates += 1,
                Some(Item::SnapshotComplete(_)) => break,
                _ => {}
            }
        }
        assert_eq!(updates, want, "include_logged = {include_logged}");
    }

    // Ended early; start and end are audited on the region (no post).
    let ended = supervisor
        .set_emergency(start(0, "storm passed"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.emergency, None);
    let audit = ops.store().post_audit("").unwrap();
    let actions: Vec<AuditAction> = audit.iter().map(|a| a.action()).collect();
    assert_eq!(
        actions,
        [AuditAction::EmergencyStarted, AuditAction::EmergencyEnded]
    );
    assert!(
        audit[1].detail.contains("storm passed"),
        "{}",
        audit[1].detail
    );
    assert_eq!(audit[0].actor, "sam");
    ops.stop().await;
}
