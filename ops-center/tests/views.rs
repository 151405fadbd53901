//! `GetPostHistory` and `GetReport` over the real API (mutual TLS on
//! 127.0.0.1, the real writer and engine): who may call them, what they
//! return after real alarms and a real acknowledgment and resolution, and
//! the clear refusal of every bad request.

use std::time::{Duration, SystemTime};

use tonic::Code;
use vigil_pki::Role;
use vigil_proto::v1::{
    AcknowledgeRequest, Disposition, GetPostHistoryRequest, GetReportRequest, ListIncidentsRequest,
    ResolveRequest,
};
use vigil_tests::center::{Center, Client, alarm, now_secs};

fn history(post: &str) -> GetPostHistoryRequest {
    GetPostHistoryRequest {
        post_id: post.into(),
        ..Default::default()
    }
}

/// Every item of a post's history in pages of `size`, as labels: `i<id>`
/// or `e<seq>`.
async fn walk(client: &mut Client, post: &str, size: u32) -> Vec<String> {
    let mut req = history(post);
    req.page_size = size;
    let mut labels = Vec::new();
    for _ in 0..100 {
        let page = client
            .get_post_history(req.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(page.items.len() <= size as usize);
        for item in page.items {
            labels.push(match (item.incident, item.event) {
                (Some(i), None) => format!("i{}", i.id),
                (None, Some(e)) => format!("e{}", e.event.unwrap().seq),
                other => panic!("not one incident or one event: {other:?}"),
            });
        }
        if page.next_page_token.is_empty() {
            return labels;
        }
        req.page_token = page.next_page_token;
    }
    panic!("the history did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_reports_by_role_after_real_alarms() {
    let center = Center::start().await;
    let now = now_secs();
    center
        .submit(vec![alarm("p-1", 1, 7, now), alarm("p-1", 2, 8, now + 1)])
        .await;
    center.submit(vec![alarm("p-2", 1, 3, now)]).await;
    let mut alice = center.client(Role::Analyst, "alice").await;
    let mut bob = center.client(Role::Supervisor, "bob").await;
    let mut carol = center.client(Role::Engineer, "carol").await;

    let incidents = alice
        .list_incidents(ListIncidentsRequest {
            post_ids: vec!["p-1".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert!(!incidents.is_empty());
    // One incident acknowledged and resolved as a user error.
    let first = incidents.last().unwrap().clone();
    let acked = alice
        .acknowledge(AcknowledgeRequest {
            incident_id: first.id.clone(),
            expected_version: first.version,
            note: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    alice
        .resolve(ResolveRequest {
            incident_id: first.id.clone(),
            expected_version: acked.version,
            disposition: Disposition::UserError as i32,
            note: "code typed wrong".into(),
        })
        .await
        .unwrap();

    // The history: every incident of the post and both its events, newest
    // first (both events are newer than or as new as the incidents they
    // opened, so the newest event leads), the same in pages of one.
    let all = walk(&mut alice, "p-1", 100).await;
    let mut expected_incidents: Vec<String> =
        incidents.iter().map(|i| format!("i{}", i.id)).collect();
    let mut got_incidents: Vec<String> =
        all.iter().filter(|l| l.starts_with('i')).cloned().collect();
    expected_incidents.sort();
    got_incidents.sort();
    assert_eq!(got_incidents, expected_incidents, "{all:?}");
    let events: Vec<&String> = all.iter().filter(|l| l.starts_with('e')).collect();
    assert_eq!(events, ["e2", "e1"], "{all:?}");
    assert_eq!(walk(&mut alice, "p-1", 1).await, all);
    assert_eq!(walk(&mut carol, "p-1", 2).await, all);
    assert_eq!(
        walk(&mut bob, "p-2", 100).await.len(),
        2,
        "one event, one incident"
    );
    // A time range before anything happened: nothing.
    let mut before = history("p-1");
    before.to_time = Some((SystemTime::now() - Duration::from_secs(3600)).into());
    let page = alice.get_post_history(before).await.unwrap().into_inner();
    assert!(page.items.is_empty() && page.next_page_token.is_empty());

    // A post's gateway identity may not read it, not even its own.
    center.issue(Role::Post, "p-1");
    let mut post = center.client(Role::Post, "p-1").await;
    let refused = post.get_post_history(history("p-1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Bad requests, each refused with what is wrong.
    let bad = |req: GetPostHistoryRequest| {
        let mut client = alice.clone();
        async move { client.get_post_history(req).await.unwrap_err() }
    };
    let e = bad(history("")).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("post_id"), "{e:?}");
    let e = bad(history("p-404")).await;
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("no post p-404"), "{e:?}");
    let mut req = history("p-1");
    req.page_token = "not-a-token".into();
    assert_eq!(bad(req).await.code(), Code::InvalidArgument);
    let mut req = history("p-1");
    req.categories = vec![999];
    let e = bad(req).await;
    assert!(e.message().contains("category"), "{e:?}");
    let mut req = history("p-1");
    req.from_time = Some(SystemTime::now().into());
    req.to_time = Some((SystemTime::now() - Duration::from_secs(60)).into());
    let e = bad(req).await;
    assert!(e.message().contains("from_time is after to_time"), "{e:?}");

    // The report: supervisors (and admins) only.
    let period = |posts: Vec<String>| GetReportRequest {
        from_time: Some((SystemTime::now() - Duration::from_secs(3600)).into()),
        to_time: Some((SystemTime::now() + Duration::from_secs(3600)).into()),
        post_ids: posts,
    };
    let refused = alice.get_report(period(vec![])).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let report = bob.get_report(period(vec![])).await.unwrap().into_inner();
    let ids: Vec<&str> = report.posts.iter().map(|p| p.post_id.as_str()).collect();
    assert_eq!(ids, ["p-1", "p-2"]);
    let p1 = &report.posts[0];
    assert_eq!(p1.alarm_events, 2);
    assert_eq!(p1.incidents_opened, incidents.len() as u64);
    assert_eq!((p1.incidents_resolved, p1.false_alarms), (1, 1));
    assert_eq!(p1.false_alarm_rate, Some(1.0));
    assert_eq!(p1.acknowledged, 1);
    assert!(p1.ack_p50_ms.is_some() && p1.resolve_p90_ms.is_some());
    assert_eq!(p1.test_failures, 0);
    let p2 = &report.posts[1];
    assert_eq!(
        (p2.alarm_events, p2.incidents_opened, p2.incidents_resolved),
        (1, 1, 0)
    );
    assert_eq!(p2.false_alarm_rate, None);
    // An empty period, no period, too many posts: refused.
    let mut empty = period(vec!["p-2".into()]);
    empty.to_time = empty.from_time;
    let e = bob.get_report(empty).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = bob
        .get_report(GetReportRequest::default())
        .await
        .unwrap_err();
    assert!(e.message().contains("period"), "{e:?}");
    let many = (0..40).map(|n| format!("p-{n}")).collect();
    let e = bob.get_report(period(many)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    center.stop().await;
}
