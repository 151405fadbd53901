//! The operations center when its store cannot write, and API values that
//! must be refused: real SQLite files, the real writer, the gRPC API over
//! real mutual TLS on 127.0.0.1:0.
//!
//! The disk-full scenario puts the store on a small tmpfs and fills it with
//! a ballast file, as the fault suite does for the gateway; where this
//! machine does not let us mount (not root, no CAP_SYS_ADMIN) it prints
//! `SKIPPED …` and returns.

use std::time::{Duration, SystemTime};

use tonic::{Code, transport::Channel};
use vigil_ops::store::{SqliteStore, Store};
use vigil_pki::Role;
use vigil_proto::v1::{
    AcknowledgeRequest, AlarmSignal, Event, EventCategory, GetIncidentRequest, Pacing,
    ReplayRequest, SetTestModeRequest, event::Body,
};
use vigil_tests::{
    center::{Center, WAIT},
    faults::Tmpfs,
};

/// Alarms of `post` with `seqs`.
fn alarms(post: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<Event> {
    seqs.map(|seq| alarm(post, seq)).collect()
}

/// Sends `seqs` of `post` and waits for their commit; returns the post's
/// receipt then.
async fn committed(ops: &Center, post: &str, seqs: std::ops::RangeInclusive<u64>) -> u64 {
    let token = ops.send(alarms(post, seqs)).await;
    ops.wait_committed(token).await;
    ops.receipt(post)
}

/// A burglary alarm of `post` with a long text, so that a few thousand of
/// them need more room than a full disk has.
fn alarm(post: &str, seq: u64) -> Event {
    Event {
        post_id: post.into(),
        seq,
        category: EventCategory::Burglary as i32,
        description: format!("burglary zone {} {}", seq % 50 + 1, "x".repeat(400)),
        received_at: Some(SystemTime::now().into()),
        body: Some(Body::Alarm(AlarmSignal {
            account: "1234".into(),
            zone: (seq % 50 + 1) as u32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health(channel: Channel) -> tonic_health::pb::health_check_response::ServingStatus {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "vigil.v1.OpsCenter".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// The store's disk in the full-disk test.
const TMPFS_BYTES: usize = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_receipts_and_health_until_the_store_can_write_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tmpfs = match Tmpfs::mount(&data, TMPFS_BYTES) {
        Ok(t) => t,
        Err(why) => {
            eprintln!(
                "SKIPPED a_full_disk_stops_receipts_and_health_until_the_store_can_write_again: \
                 cannot mount a tmpfs ({why})"
            );
            return;
        }
    };
    let ops = Center::builder().data_dir(data.clone()).start().await;
    let engineer = ops.channel(Role::Engineer, "eve", None).await.unwrap();
    let mut analyst = ops.client(Role::Analyst, "ann").await;

    // Healthy: stored and receipted.
    assert_eq!(committed(&ops, "p-1", 1..=10).await, 10);
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(health(engineer.clone()).await, ServingStatus::Serving);

    // The disk fills; a large batch cannot be committed.
    let ballast = tmpfs.fill();
    let reports = ops.commit_reports();
    let big = ops.send(alarms("p-1", 11..=3000)).await;
    let metrics = ops.metrics.clone();
    eventually("a failed commit is reported", || {
        !metrics.store_health.is_healthy()
    })
    .await;
    assert!(
        metrics
            .commit_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    eventually_async_health(&engineer, ServingStatus::NotServing).await;
    // Changes are refused at once; reads go on.
    let refused = analyst
        .acknowledge(AcknowledgeRequest {
            incident_id: "inc-000001".into(),
            expected_version: 1,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        ops.commit_reports(),
        reports,
        "nothing is receipted while the store cannot write"
    );
    // Another post's events wait too (the writer takes nothing new).
    let other = ops.send(alarms("p-2", 1..=5)).await;
    assert_eq!(ops.commit_reports(), reports);
    assert_eq!(ops.receipt("p-2"), 0);

    // Room again: the same batch is committed, receipted, and health is back.
    std::fs::remove_file(&ballast).unwrap();
    ops.wait_committed(big).await;
    ops.wait_committed(other).await;
    assert_eq!(ops.receipt("p-1"), 3000);
    assert_eq!(ops.receipt("p-2"), 5);
    assert!(metrics.store_health.is_healthy());
    eventually_async_health(&engineer, ServingStatus::Serving).await;
    // Changes are taken again (the incident grew with the late events).
    let seen = analyst
        .get_incident(GetIncidentRequest {
            incident_id: "inc-000001".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    let acked = analyst
        .acknowledge(AcknowledgeRequest {
            incident_id: seen.id.clone(),
            expected_version: seen.version,
            note: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.version, seen.version + 1);
    ops.stop().await;

    // Every event once; the incidents the engine rebuilt agree with the store.
    let store = SqliteStore::open(&data).unwrap();
    assert_eq!(store.event_count().unwrap(), 3005);
    assert_eq!(store.durable_through("p-1").unwrap(), 3000);
}

async fn eventually_async_health(
    channel: &Channel,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if health(channel.clone()).await == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_mode_is_only_for_known_posts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ops = Center::builder().data_dir(data.clone()).start().await;
    committed(&ops, "p-1", 1..=1).await;
    let mut sup = ops.client(Role::Supervisor, "sue").await;
    let ask = |post: &str| SetTestModeRequest {
        post_id: post.into(),
        duration_seconds: 600,
        reason: "maintenance".into(),
    };
    let unknown = sup.set_test_mode(ask("p-404")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let known = sup.set_test_mode(ask("p-1")).await.unwrap().into_inner();
    assert!(known.test_mode_until.is_some());
    ops.stop().await;
    let store = SqliteStore::open(&data).unwrap();
    assert!(store.post("p-404").unwrap().is_none(), "no phantom post");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_pace_out_of_bounds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ops = Center::builder()
        .data_dir(dir.path().join("data"))
        .start()
        .await;
    committed(&ops, "p-1", 1..=3).await;
    let mut eng = ops.client(Role::Engineer, "eve").await;
    for speed in [1e-300, 0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
        let status = eng
            .replay(ReplayRequest {
                post_ids: vec!["p-1".into()],
                pacing: Pacing::Speedup as i32,
                speed,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "speed {speed}: {status:?}"
        );
    }
    // The bounds themselves replay every event, as does PACING_FAST.
    for (pacing, speed) in [
        (Pacing::Speedup, vigil_ops::api::replay::MAX_SPEED),
        (Pacing::Speedup, vigil_ops::api::replay::MIN_SPEED),
        (Pacing::AsFastAsPossible, 0.0),
    ] {
        let mut stream = eng
            .replay(ReplayRequest {
                post_ids: vec!["p-1".into()],
                pacing: pacing as i32,
                speed,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(item) = stream.message().await.unwrap() {
            if item.event.is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 3, "{pacing:?} {speed}");
    }
    ops.stop().await;
}
