//! The gRPC API over real mutual TLS on 127.0.0.1:0, with the generated
//! tonic client, on the shared operations center without MQTT
//! (`vigil_tests::center`). Incidents are made by submitting events to the
//! writer, as ingest would.

use std::time::{Duration, SystemTime};

use tonic::{Code, Request};
use vigil_ops::api;
use vigil_pki::Role;
use vigil_proto::v1::{
    AcknowledgeRequest, AddNoteRequest, AssignRequest, EscalateRequest, ExportSiteRequest,
    FeedItem, GetIncidentPlanRequest, GetIncidentRequest, GetPostRecordRequest, ImportSiteRequest,
    IncidentState, ListIncidentsRequest, ListPostsRequest, MarkStepRequest, ReopenRequest,
    ReplayRequest, ResolveRequest, SetTestModeRequest, StepOutcome, WatchIncidentsRequest,
    feed_item::Item, ops_center_client::OpsCenterClient,
};
use vigil_tests::center::{Center, Client, alarm, now_secs};

/// Every RPC once, as a role; the status code it got (Ok = `Code::Ok`).
async fn call(client: &mut Client, rpc: &str, me: &str) -> Code {
    let id = "inc-999999".to_string();
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    match rpc {
        "WatchIncidents" => code(
            client
                .watch_incidents(WatchIncidentsRequest::default())
                .await
                .map(drop),
        ),
        "ListIncidents" => code(
            client
                .list_incidents(ListIncidentsRequest::default())
                .await
                .map(drop),
        ),
        "GetIncident" => code(
            client
                .get_incident(GetIncidentRequest { incident_id: id })
                .await
                .map(drop),
        ),
        "Acknowledge" => code(
            client
                .acknowledge(AcknowledgeRequest {
                    incident_id: id,
                    expected_version: 1,
                    note: String::new(),
                })
                .await
                .map(drop),
        ),
        "Assign(self)" => code(
            client
                .assign(AssignRequest {
                    incident_id: id,
                    expected_version: 1,
                    assignee: me.into(),
                })
                .await
                .map(drop),
        ),
        "Assign(other)" => code(
            client
                .assign(AssignRequest {
                    incident_id: id,
                    expected_version: 1,
                    assignee: "someone-else".into(),
                })
                .await
                .map(drop),
        ),
        "Escalate" => code(
            client
                .escalate(EscalateRequest {
                    incident_id: id,
                    expected_version: 1,
                    reason: String::new(),
                })
                .await
                .map(drop),
        ),
        "Resolve" => code(
            client
                .resolve(ResolveRequest {
                    incident_id: id,
                    expected_version: 1,
                    disposition: 1,
                    note: String::new(),
                })
                .await
                .map(drop),
        ),
        "Reopen" => code(
            client
                .reopen(ReopenRequest {
                    incident_id: id,
                    expected_version: 1,
                    reason: String::new(),
                })
                .await
                .map(drop),
        ),
        "AddNote" => code(
            client
                .add_note(AddNoteRequest {
                    incident_id: id,
                    expected_version: 1,
                    text: "x".into(),
                })
                .await
                .map(drop),
        ),
        "ListPosts" => code(
            client
                .list_posts(ListPostsRequest::default())
                .await
                .map(drop),
        ),
        "SetTestMode" => code(
            client
                .set_test_mode(SetTestModeRequest {
                    post_id: "p-1".into(),
                    duration_seconds: 0,
                    reason: String::new(),
                })
                .await
                .map(drop),
        ),
        "Replay" => code(client.replay(ReplayRequest::default()).await.map(drop)),
        // An empty document over an empty store: nothing changes.
        "ImportSite" => code(
            client
                .import_site(ImportSiteRequest::default())
                .await
                .map(drop),
        ),
        "ExportSite" => code(
            client
                .export_site(ExportSiteRequest::default())
                .await
                .map(drop),
        ),
        "GetPostRecord" => code(
            client
                .get_post_record(GetPostRecordRequest {
                    post_id: "p-1".into(),
                })
                .await
                .map(drop),
        ),
        "GetIncidentPlan" => code(
            client
                .get_incident_plan(GetIncidentPlanRequest { incident_id: id })
                .await
                .map(drop),
        ),
        "MarkStep" => code(
            client
                .mark_step(MarkStepRequest {
                    incident_id: id,
                    expected_version: 1,
                    step: 1,
                    outcome: StepOutcome::Done as i32,
                    note: String::new(),
                    step_text: String::new(),
                })
                .await
                .map(drop),
        ),
        // No post "p-1" has been heard from.
        "GetPostHistory" => code(
            client
                .get_post_history(vigil_proto::v1::GetPostHistoryRequest {
                    post_id: "p-1".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "GetReport" => code(
            client
                .get_report(vigil_proto::v1::GetReportRequest {
                    from_time: Some(prost_types::Timestamp::default()),
                    to_time: Some(SystemTime::now().into()),
                    post_ids: vec![],
                })
                .await
                .map(drop),
        ),
        other => panic!("no rpc {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_rpc() {
    let ops = Center::start().await;
    // (rpc, roles allowed, code when allowed: the incident does not exist)
    use Role::*;
    let table: &[(&str, &[Role], Code)] = &[
        (
            "WatchIncidents",
            &[Analyst, Supervisor, Engineer, Admin],
            Code::Ok,
        ),
        (
            "ListIncidents",
            &[Analyst, Supervisor, Engineer, Admin],
            Code::Ok,
        ),
        (
            "GetIncident",
            &[Analyst, Supervisor, Engineer, Admin],
            Code::NotFound,
        ),
        (
            "ListPosts",
            &[Analyst, Supervisor, Engineer, Admin],
            Code::Ok,
        ),
        ("Acknowledge", &[Analyst, Supervisor, Admin], Code::NotFound),
        (
            "Assign(self)",
            &[Analyst, Supervisor, Admin],
            Code::NotFound,
        ),
        ("Assign(other)", &[Supervisor, Admin], Code::NotFound),
        ("Escalate", &[Supervisor, Admin], Code::NotFound),
        ("Resolve", &[Analyst, Supervisor, Admin], Code::NotFound),
        ("Reopen", &[Supervisor, Admin], Code::NotFound),
        ("AddNote", &[Analyst, Supervisor, Admin], Code::NotFound),
        // No post has been heard from: test mode is for known posts only.
        ("SetTestMode", &[Supervisor, Admin], Code::NotFound),
        ("Replay", &[Engineer, Admin], Code::Ok),
        ("MarkStep", &[Analyst, Supervisor, Admin], Code::NotFound),
        ("ImportSite", &[Supervisor, Admin], Code::Ok),
        ("ExportSite", &[Supervisor, Admin], Code::Ok),
        (
            "GetPostRecord",
            &[Analyst, Supervisor, Engineer, Admin],
            Code::NotFound,
        ),
        (
            "GetIncidentPlan",
            &[Analyst, Supervisor, Engineer, Admin],
            Code::NotFound,
        ),
        (
            "GetPostHistory",
            &[Analyst, Supervisor, Engineer, Admin],
            Code::NotFound,
        ),
        ("GetReport", &[Supervisor, Admin], Code::Ok),
    ];
    for role in Role::ALL {
        let id = format!("{}-x", role.as_str());
        let mut client = ops.client(role, &id).await;
        for (rpc, allowed, when_allowed) in table {
            let got = call(&mut client, rpc, &id).await;
            if role == Broker {
                // A broker certificate is for servers only (serverAuth):
                // the TLS handshake already refuses it as a client.
                assert!(
                    got != Code::Ok && got != Code::PermissionDenied,
                    "{rpc}: {got:?}"
                );
                continue;
            }
            let want = if allowed.contains(&role) {
                *when_allowed
            } else {
                Code::PermissionDenied
            };
            assert_eq!(got, want, "{role:?} calling {rpc}");
        }
    }
    ops.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_analysts_acknowledging_at_once_exactly_one_wins() {
    let ops = Center::start().await;
    ops.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let mut alice = ops.client(Role::Analyst, "alice").await;
    let mut bob = ops.client(Role::Analyst, "bob").await;
    let listed = alice
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert_eq!(listed.len(), 1);
    let inc = &listed[0];
    let ack = |id: &str, v| AcknowledgeRequest {
        incident_id: id.into(),
        expected_version: v,
        note: String::new(),
    };
    let (a, b) = tokio::join!(
        alice.acknowledge(ack(&inc.id, inc.version)),
        bob.acknowledge(ack(&inc.id, inc.version)),
    );
    let (won, lost, loser) = match (a, b) {
        (Ok(w), Err(l)) => (w.into_inner(), l, "bob"),
        (Err(l), Ok(w)) => (w.into_inner(), l, "alice"),
        other => panic!("exactly one must win: {other:?}"),
    };
    assert_eq!(won.state(), IncidentState::Acknowledged);
    assert_ne!(won.acknowledged_by, loser);
    assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
    let current = api::current_incident(&lost).expect("current incident attached");
    assert_eq!(current, won);
    // Acknowledging again at the new version is a bad transition, not a
    // version conflict.
    let again = bob
        .acknowledge(ack(&inc.id, won.version))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(api::current_incident(&again).is_none());
    // The missing version is refused outright.
    let zero = bob.acknowledge(ack(&inc.id, 0)).await.unwrap_err();
    assert_eq!(zero.code(), Code::InvalidArgument);
    ops.stop().await;
}

/// Next feed item, failing after a generous bound instead of hanging.
async fn next(stream: &mut tonic::Streaming<FeedItem>) -> FeedItem {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("feed item in time")
        .unwrap()
        .expect("feed open")
}

/// The next item that is not a heartbeat.
async fn next_update(stream: &mut tonic::Streaming<FeedItem>) -> FeedItem {
    loop {
        let item = next(stream).await;
        if !matches!(item.item, Some(Item::Heartbeat(_))) {
            return item;
        }
    }
}

fn incident_of(item: &FeedItem) -> (String, u64) {
    match &item.item {
        Some(Item::Update(u)) => {
            let inc = u.incident.as_ref().unwrap();
            (inc.id.clone(), inc.version)
        }
        other => panic!("expected an update, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_resumes_from_a_cursor_with_nothing_missed_or_repeated() {
    let ops = Center::start().await;
    let t = now_secs();
    ops.submit(vec![alarm("p-1", 1, 1, t)]).await;
    let mut client = ops.client(Role::Analyst, "alice").await;
    let mut feed = client
        .watch_incidents(WatchIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Snapshot: the one open incident, then the marker.
    let first = next_update(&mut feed).await;
    let (id1, v1) = incident_of(&first);
    assert!(matches!(&first.item, Some(Item::Update(u)) if u.snapshot));
    let done = next_update(&mut feed).await;
    assert!(matches!(done.item, Some(Item::SnapshotComplete(_))));

    // A live change.
    let acked = client
        .acknowledge(AcknowledgeRequest {
            incident_id: id1.clone(),
            expected_version: v1,
            note: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let live = next_update(&mut feed).await;
    assert_eq!(incident_of(&live), (id1.clone(), acked.version));
    let cursor = live.cursor.clone();
    drop(feed);

    // While disconnected: a new incident at another post, a note on the
    // first.
    ops.submit(vec![alarm("p-2", 1, 7, t)]).await;
    let noted = client
        .add_note(AddNoteRequest {
            incident_id: id1.clone(),
            expected_version: acked.version,
            text: "on my way".into(),
        })
        .await
        .unwrap()
        .into_inner();

    let mut feed = client
        .watch_incidents(WatchIncidentsRequest {
            cursor: cursor.clone(),
            post_ids: Vec::new(),
            include_logged: false,
        })
        .await
        .unwrap()
        .into_inner();
    let a = next_update(&mut feed).await;
    let b = next_update(&mut feed).await;
    assert_eq!(incident_of(&a).0, "inc-000002");
    assert_eq!(incident_of(&b), (id1.clone(), noted.version));
    let (ca, cb): (u64, u64) = (a.cursor.parse().unwrap(), b.cursor.parse().unwrap());
    assert!(cursor.parse::<u64>().unwrap() < ca && ca < cb);

    // Then live again: the next change, and nothing from before it.
    let escalated = ops
        .client(Role::Supervisor, "sam")
        .await
        .escalate(EscalateRequest {
            incident_id: id1.clone(),
            expected_version: noted.version,
            reason: "no answer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let c = next_update(&mut feed).await;
    assert_eq!(incident_of(&c), (id1.clone(), escalated.version));
    assert!(c.cursor.parse::<u64>().unwrap() > cb);
    ops.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_returns_exactly_the_stored_events_in_order() {
    let ops = Center::start().await;
    // p-1 at t=100..104, p-2 at t=101.5-ish (interleaved by received time).
    ops.submit((1..=5).map(|s| alarm("p-1", s, 1, 100 + s)).collect())
        .await;
    ops.submit(vec![alarm("p-2", 1, 1, 102), alarm("p-2", 2, 1, 104)])
        .await;
    let mut client = ops.client(Role::Engineer, "eve").await;
    async fn replay(client: &mut Client, req: ReplayRequest) -> Vec<(String, u64)> {
        let mut stream = client.replay(Request::new(req)).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(item) = stream.message().await.unwrap() {
            // Progress items (a slow page on a busy machine) carry no event.
            let Some(stored) = item.event else { continue };
            let e = stored.event.unwrap();
            out.push((e.post_id, e.seq));
        }
        out
    }
    let p = |post: &str, seq: u64| (post.to_string(), seq);

    // One post, seq range, both ends inclusive.
    let got = replay(
        &mut client,
        ReplayRequest {
            post_ids: vec!["p-1".into()],
            from_seq: 2,
            to_seq: 4,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(got, vec![p("p-1", 2), p("p-1", 3), p("p-1", 4)]);

    // Everything, in received order (ties by post, then seq).
    let got = replay(&mut client, ReplayRequest::default()).await;
    assert_eq!(
        got,
        vec![
            p("p-1", 1),
            p("p-1", 2),
            p("p-2", 1),
            p("p-1", 3),
            p("p-1", 4),
            p("p-2", 2),
            p("p-1", 5),
        ]
    );

    // A time range: from inclusive, to exclusive; and a limit.
    let at = |s: u64| Some((SystemTime::UNIX_EPOCH + Duration::from_secs(s)).into());
    let got = replay(
        &mut client,
        ReplayRequest {
            from_time: at(102),
            to_time: at(104),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(got, vec![p("p-1", 2), p("p-2", 1), p("p-1", 3)]);
    let got = replay(
        &mut client,
        ReplayRequest {
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(got.len(), 2);

    // Kinds: there are no camera events.
    let got = replay(
        &mut client,
        ReplayRequest {
            kinds: vec![vigil_proto::v1::EventKind::Camera as i32],
            ..Default::default()
        },
    )
    .await;
    assert!(got.is_empty());

    // A seq range across posts is refused.
    let err = client
        .replay(ReplayRequest {
            from_seq: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    ops.stop().await;
}

/// A replay that reads without sending (a time range on a single post's
/// seq-order replay that matches nothing) reports its progress instead of
/// going silent, and every replay stops at the per-request bound on
/// stored events read with RESOURCE_EXHAUSTED and a message saying how to
/// narrow it. Progress is due after every page here (`progress_every`
/// zero) so that the test depends on no clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_reports_progress_and_stops_at_its_scan_bound() {
    let ops = Center::builder()
        .replay_limits(api::replay::Limits {
            max_scan_rows: 1200,
            progress_every: Duration::ZERO,
        })
        .start()
        .await;
    for first in (1..=2000u64).step_by(500) {
        ops.submit(
            (first..first + 500)
                .map(|s| alarm("p-1", s, 1, 1_000 + s))
                .collect(),
        )
        .await;
    }
    let mut client = ops.client(Role::Engineer, "eve").await;
    /// Events and progress items until the end; the final status.
    async fn replay(
        client: &mut Client,
        req: ReplayRequest,
    ) -> (
        Vec<u64>,
        Vec<vigil_proto::v1::ReplayProgress>,
        Result<(), tonic::Status>,
    ) {
        let mut stream = client.replay(Request::new(req)).await.unwrap().into_inner();
        let (mut events, mut progress) = (Vec::new(), Vec::new());
        for _ in 0..10_000 {
            match stream.message().await {
                Ok(Some(item)) => {
                    if let Some(e) = item.event {
                        events.push(e.event.unwrap().seq);
                    }
                    progress.extend(item.progress);
                }
                Ok(None) => return (events, progress, Ok(())),
                Err(status) => return (events, progress, Err(status)),
            }
        }
        panic!("a replay of 2000 events sent more than 10,000 items");
    }
    let at = |s: u64| Some((SystemTime::UNIX_EPOCH + Duration::from_secs(s)).into());

    // Nothing of p-1 is that late: every page is read, none sent.
    let (events, progress, end) = replay(
        &mut client,
        ReplayRequest {
            post_ids: vec!["p-1".into()],
            from_time: at(1_000_000),
            ..Default::default()
        },
    )
    .await;
    assert!(events.is_empty());
    let seen: Vec<(u64, u64, u64)> = progress
        .iter()
        .map(|p| (p.examined, p.sent, p.position_seq))
        .collect();
    assert_eq!(seen, [(500, 0, 500), (1000, 0, 1000)]);
    assert_eq!(progress[1].position, at(2_000));
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    for words in ["1200 stored events", "replay_max_scan_rows", "narrow"] {
        assert!(status.message().contains(words), "{status:?}");
    }

    // Within the bound: a seq range of 1000 is sent whole, and ends well.
    let (events, _, end) = replay(
        &mut client,
        ReplayRequest {
            post_ids: vec!["p-1".into()],
            from_seq: 501,
            to_seq: 1500,
            ..Default::default()
        },
    )
    .await;
    end.unwrap();
    assert_eq!(events, (501..=1500).collect::<Vec<_>>());

    // Everything, in received order: the first 1200 are sent, then the
    // bound ends it.
    let (events, _, end) = replay(&mut client, ReplayRequest::default()).await;
    assert_eq!(events, (1..=1200).collect::<Vec<_>>());
    assert_eq!(end.unwrap_err().code(), Code::ResourceExhausted);
    ops.stop().await;
}

/// Waiting out an original-pace gap is not silence either: progress items
/// come between two events a second apart (here after every 100 ms step of
/// the wait, `progress_every` being zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_replay_reports_progress_while_it_waits() {
    let ops = Center::builder()
        .replay_limits(api::replay::Limits {
            progress_every: Duration::ZERO,
            ..Default::default()
        })
        .start()
        .await;
    ops.submit(vec![alarm("p-1", 1, 1, 5_000), alarm("p-1", 2, 1, 5_001)])
        .await;
    let mut client = ops.client(Role::Engineer, "eve").await;
    let mut stream = client
        .replay(ReplayRequest {
            post_ids: vec!["p-1".into()],
            pacing: vigil_proto::v1::Pacing::Original as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut items = Vec::new();
    for _ in 0..1000 {
        let Some(item) = stream.message().await.unwrap() else {
            break;
        };
        items.push(match (&item.event, &item.progress) {
            (Some(e), None) => format!("event {}", e.event.as_ref().unwrap().seq),
            (None, Some(p)) => format!("progress {} {}", p.examined, p.sent),
            _ => panic!("an item is an event or a progress report: {item:?}"),
        });
    }
    assert_eq!(items.first().map(String::as_str), Some("event 1"));
    let second = items.iter().position(|i| i == "event 2").unwrap();
    let between = &items[1..second];
    assert!(!between.is_empty(), "{items:?}");
    assert!(between.iter().all(|i| i == "progress 2 1"), "{items:?}");
    // After the last event, at most a last report of the page.
    assert!(
        items[second + 1..].iter().all(|i| i == "progress 2 2"),
        "{items:?}"
    );
    ops.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused() {
    // An analyst whose certificate was revoked before the API started.
    let ops = Center::builder().revoked("mallory").start().await;
    // With TLS 1.3 the client may finish its side of the handshake before
    // the server refuses the certificate: the refusal shows either at
    // connect or on the first call. Either way nothing is answered.
    if let Ok(mut client) = ops.try_client(Role::Analyst, "mallory").await {
        let refused = client
            .list_incidents(ListIncidentsRequest::default())
            .await
            .expect_err("a revoked analyst must not be served");
        assert_ne!(refused.code(), Code::Ok);
    }
    // A valid analyst of the same CA is still served.
    let mut alice = ops.client(Role::Analyst, "alice").await;
    alice
        .list_incidents(ListIncidentsRequest::default())
        .await
        .expect("a valid analyst is served");
    ops.stop().await;
}

/// Reads a feed until it has seen an update of each of `want` incidents
/// (by id), following `Resync` items by resuming from their cursor. Returns
/// the items seen and how many resyncs it took.
async fn follow_until(
    client: &mut Client,
    mut feed: tonic::Streaming<FeedItem>,
    want: &std::collections::BTreeSet<String>,
) -> (Vec<FeedItem>, usize) {
    let mut seen = std::collections::BTreeSet::new();
    let mut items = Vec::new();
    let mut resyncs = 0;
    while !want.is_subset(&seen) {
        let item = next_update(&mut feed).await;
        match &item.item {
            Some(Item::Update(_)) => {
                seen.insert(incident_of(&item).0);
            }
            Some(Item::Resync(_)) => {
                resyncs += 1;
                feed = client
                    .watch_incidents(WatchIncidentsRequest {
                        cursor: item.cursor.clone(),
                        post_ids: Vec::new(),
                        include_logged: false,
                    })
                    .await
                    .unwrap()
                    .into_inner();
            }
            other => panic!("unexpected feed item {other:?}"),
        }
        items.push(item);
    }
    (items, resyncs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_gets_a_resync_and_holds_up_neither_ingest_nor_other_watchers() {
    let ops = Center::start().await;
    // A watcher that stops reading after the (empty) snapshot. Its HTTP/2
    // stream window is small, so the server can park only a few items in
    // the connection for it.
    let mut slow = OpsCenterClient::new(
        ops.channel(Role::Analyst, "slow", Some(4096))
            .await
            .unwrap(),
    );
    let mut slow_feed = slow
        .watch_incidents(WatchIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next_update(&mut slow_feed).await.item,
        Some(Item::SnapshotComplete(_))
    ));
    // A watcher that keeps reading.
    let mut other = ops.client(Role::Analyst, "other").await;
    let mut other_feed = other
        .watch_incidents(WatchIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next_update(&mut other_feed).await.item,
        Some(Item::SnapshotComplete(_))
    ));

    // More changes than the broadcast holds: one new incident at each of
    // n posts.
    let n = api::feed::BROADCAST_CAPACITY + api::feed::CLIENT_CAPACITY + 400;
    let want: std::collections::BTreeSet<String> =
        (1..=n as u64).map(vigil_ops::store::incident_id).collect();
    let reader = tokio::spawn({
        let want = want.clone();
        async move { follow_until(&mut other, other_feed, &want).await }
    });
    let t = now_secs();
    let batches = (1..=n)
        .map(|i| vec![alarm(&format!("p-{i}"), 1, 1, t)])
        .collect();
    // If ingest waited for the slow watcher, this would never finish.
    tokio::time::timeout(Duration::from_secs(120), ops.submit_all(batches))
        .await
        .expect("ingest is not held up by a watcher that does not read");
    let (items, resyncs) = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("the reading watcher sees every change")
        .unwrap();
    eprintln!("reading watcher: {} items, {resyncs} resyncs", items.len());

    // The slow watcher now reads: what was queued for it, then a Resync,
    // then the end of that stream.
    let mut before = Vec::new();
    let resync = loop {
        let item = next_update(&mut slow_feed).await;
        match &item.item {
            Some(Item::Update(_)) => before.push(item),
            Some(Item::Resync(_)) => break item,
            other => panic!("unexpected feed item {other:?}"),
        }
    };
    assert!(before.len() < n, "it fell behind: {} of {n}", before.len());
    let end = tokio::time::timeout(Duration::from_secs(20), slow_feed.message())
        .await
        .expect("the stream ends after a resync");
    assert!(matches!(end, Ok(None)), "{end:?}");
    // Resuming from the Resync's cursor brings the rest: every incident,
    // cursors strictly increasing across both streams (nothing repeated).
    let feed = slow
        .watch_incidents(WatchIncidentsRequest {
            cursor: resync.cursor.clone(),
            post_ids: Vec::new(),
            include_logged: false,
        })
        .await
        .unwrap()
        .into_inner();
    let rest: std::collections::BTreeSet<String> = want
        .iter()
        .filter(|id| !before.iter().any(|b| &incident_of(b).0 == *id))
        .cloned()
        .collect();
    let (after, again) = follow_until(&mut slow, feed, &rest).await;
    assert_eq!(again, 0, "nothing new to fall behind on");
    let pos = |i: &FeedItem| i.cursor.parse::<u64>().unwrap();
    let resumed_at = pos(&resync);
    let cursors: Vec<u64> = before.iter().chain(&after).map(pos).collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "each change once, in order: {cursors:?}"
    );
    assert!(before.last().is_none_or(|b| pos(b) <= resumed_at));
    assert!(after.first().is_none_or(|a| pos(a) > resumed_at));
    ops.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_over_mutual_tls() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let ops = Center::start().await;
    let channel = ops.channel(Role::Engineer, "eve", None).await.unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "vigil.v1.OpsCenter"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = tokio_stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "vigil.v1.OpsCenter".into(),
        )),
    ]);
    let mut answers = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let listed = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("{listed:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"vigil.v1.OpsCenter"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let file = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
        panic!("{file:?}");
    };
    let names: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|b| {
            <prost_types::FileDescriptorProto as prost::Message>::decode(b.as_slice())
                .unwrap()
                .name()
                .to_owned()
        })
        .collect();
    assert!(names.iter().any(|n| n == "vigil/v1/ops.proto"), "{names:?}");

    // v1alpha, which Python's grpcio-reflection and older clients speak:
    // the same services, the same descriptors.
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let channel = ops.channel(Role::Analyst, "alma", None).await.unwrap();
        let ask = |m: MessageRequest| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        };
        let requests = tokio_stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "vigil.v1.FeedItem".into(),
            )),
        ]);
        let mut answers = ServerReflectionClient::new(channel)
            .server_reflection_info(requests)
            .await
            .expect("v1alpha reflection is served")
            .into_inner();
        let listed = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
            panic!("{listed:?}");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"vigil.v1.OpsCenter"), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        let file = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
            panic!("{file:?}");
        };
        let names: Vec<String> = files
            .file_descriptor_proto
            .iter()
            .map(|b| {
                <prost_types::FileDescriptorProto as prost::Message>::decode(b.as_slice())
                    .unwrap()
                    .name()
                    .to_owned()
            })
            .collect();
        assert!(names.iter().any(|n| n == "vigil/v1/ops.proto"), "{names:?}");
    }
    ops.stop().await;
}

/// `/metrics` of the ops-center as it would be scraped now.
fn scrape(ops: &Center) -> String {
    let mut out = vigil_telemetry::Exposition::new();
    ops.metrics.export(&mut out);
    out.render()
}

/// Waits (bounded) until `scrape` shows `line`.
async fn until_scraped(ops: &Center, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(ops);
        if text.contains(line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line:?} never in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_backlog_connections_and_watchers() {
    let ops = Center::start().await;
    let open_p2 = "vigil_ops_incidents{state=\"open\",priority=\"P2\"}";
    let acked_p2 = "vigil_ops_incidents{state=\"acknowledged\",priority=\"P2\"}";
    assert!(scrape(&ops).contains(&format!("{open_p2} 0\n")));
    // A burglary opens a P2 incident; the gauge counts it once committed.
    ops.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    assert!(scrape(&ops).contains(&format!("{open_p2} 1\n")));

    let mut client = ops.client(Role::Analyst, "alice").await;
    let mut feed = client
        .watch_incidents(WatchIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = next_update(&mut feed).await;
    let (id, version) = incident_of(&first);
    until_scraped(&ops, "vigil_ops_watchers 1\n").await;
    until_scraped(&ops, "vigil_ops_api_connections 1\n").await;

    // Acknowledged: no longer open work, still backlog.
    client
        .acknowledge(AcknowledgeRequest {
            incident_id: id.clone(),
            expected_version: version,
            note: String::new(),
        })
        .await
        .unwrap();
    let text = scrape(&ops);
    assert!(text.contains(&format!("{open_p2} 0\n")), "{text}");
    assert!(text.contains(&format!("{acked_p2} 1\n")), "{text}");
    // The commit went through the histogram.
    assert!(
        !text.contains("vigil_ops_commit_duration_seconds_count 0\n"),
        "{text}"
    );

    // The watcher leaves; the feed notices at its next item (a change).
    drop(feed);
    client
        .add_note(AddNoteRequest {
            incident_id: id,
            expected_version: version + 1,
            text: "calling the post".into(),
        })
        .await
        .unwrap();
    until_scraped(&ops, "vigil_ops_watchers 0\n").await;
    // The client goes: its connection closes.
    drop(client);
    until_scraped(&ops, "vigil_ops_api_connections 0\n").await;
    ops.stop().await;
}
