//! One behaviour suite for every storage backend: each case takes a fresh,
//! empty [`Backend`] and checks what the port promises (idempotent events
//! and watermarks, compare-and-set incidents, audit positions, readers that
//! see only what is committed, events kept as the bytes received). The
//! SQLite backend runs it in its unit tests, the PostgreSQL backend against
//! a real server in `ops-center/tests/postgres.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use vigil_proto::v1::{
    ActionPlan, AuditAction, AuditEntry, Contact, Event, Incident, IncidentState, Note, PlanStep,
    PostRecord, PostState, PostStatus, SiteDocument, StepKind,
};

use super::{
    Backend, Changes, CommitResult, EventLink, IncidentFilter, NewNotification, NotifyState,
    NotifyUpdate, PostTimers, Received, ReceivedFilter, StoreError, StoreWriter, TestModeWrite,
    incident_id,
};

/// One case: a fresh, empty backend in, panics on a failed check.
pub type Case = fn(&dyn Backend);

/// Every case, by name.
pub const CASES: &[(&str, Case)] = &[
    (
        "events_are_idempotent_and_watermark_follows_gaps",
        events_are_idempotent_and_watermark_follows_gaps,
    ),
    (
        "duplicates_inside_one_transaction_are_counted_once",
        duplicates_inside_one_transaction_are_counted_once,
    ),
    (
        "a_reader_sees_what_is_committed_and_nothing_else",
        a_reader_sees_what_is_committed_and_nothing_else,
    ),
    (
        "rollback_leaves_nothing_and_watermarks_exact",
        rollback_leaves_nothing_and_watermarks_exact,
    ),
    ("everything_survives_reopen", everything_survives_reopen),
    (
        "incident_writes_are_compare_and_set",
        incident_writes_are_compare_and_set,
    ),
    (
        "audit_positions_grow_and_page",
        audit_positions_grow_and_page,
    ),
    (
        "events_are_kept_as_the_bytes_received",
        events_are_kept_as_the_bytes_received,
    ),
    (
        "received_order_pages_by_time_post_and_seq",
        received_order_pages_by_time_post_and_seq,
    ),
    (
        "kinds_filter_both_orders_and_page_across_arms",
        kinds_filter_both_orders_and_page_across_arms,
    ),
    (
        "incident_lists_merge_posts_and_states_newest_first",
        incident_lists_merge_posts_and_states_newest_first,
    ),
    (
        "retention_prunes_by_kind_and_category_keeps_incident_events_and_archives_first",
        retention_prunes_by_kind_and_category_keeps_incident_events_and_archives_first,
    ),
    (
        "site_documents_replace_whole_in_order_and_roll_back",
        site_documents_replace_whole_in_order_and_roll_back,
    ),
    (
        "post_history_and_reports_read_by_time",
        post_history_and_reports_read_by_time,
    ),
    (
        "timer_state_is_kept_per_post_and_read_at_start",
        timer_state_is_kept_per_post_and_read_at_start,
    ),
    (
        "notifications_queue_update_conditionally_and_prune",
        notifications_queue_update_conditionally_and_prune,
    ),
];

fn ev(post: &str, seq: u64) -> Received {
    Event {
        post_id: post.into(),
        seq,
        description: format!("event {seq}"),
        ..Default::default()
    }
    .into()
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn insert(store: &mut dyn StoreWriter, post: &str, seqs: &[u64]) -> (Vec<bool>, CommitResult) {
    let events: Vec<_> = seqs.iter().map(|&s| ev(post, s)).collect();
    let mut tx = store.begin().unwrap();
    let new = tx.insert_events(post, &events, t(0)).unwrap();
    (new, tx.commit().unwrap())
}

fn seqs(events: &[vigil_proto::v1::StoredEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.event.as_ref().unwrap().seq)
        .collect()
}

fn events_are_idempotent_and_watermark_follows_gaps(b: &dyn Backend) {
    let mut store = b.writer().unwrap();
    let (new, res) = insert(&mut *store, "p-1", &[1, 2, 3]);
    assert_eq!(new, [true, true, true]);
    assert_eq!(res.durable, [("p-1".to_string(), 3)]);
    let (new, res) = insert(&mut *store, "p-1", &[2, 3, 5, 6]);
    assert_eq!(new, [false, false, true, true]);
    assert_eq!((res.inserted, res.duplicates), (2, 2));
    assert_eq!(res.durable, [("p-1".to_string(), 3)], "gap at 4");
    let info = store.post("p-1").unwrap().unwrap();
    assert_eq!(
        (info.last_seq, info.durable_through_seq, info.missing_events),
        (6, 3, 1)
    );
    let (_, res) = insert(&mut *store, "p-1", &[4]);
    assert_eq!(res.durable, [("p-1".to_string(), 6)]);
    assert_eq!(store.event_count().unwrap(), 6);
    assert_eq!(
        seqs(&store.events("p-1", 1, 100).unwrap()),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(seqs(&store.events("p-1", 3, 2).unwrap()), [3, 4]);
    // The largest seq a post may use.
    let (new, _) = insert(&mut *store, "p-2", &[i64::MAX as u64]);
    assert_eq!(new, [true]);
    let got = store.event("p-2", i64::MAX as u64).unwrap().unwrap();
    assert_eq!(got.event.unwrap().seq, i64::MAX as u64);
}

fn duplicates_inside_one_transaction_are_counted_once(b: &dyn Backend) {
    let mut store = b.writer().unwrap();
    let mut tx = store.begin().unwrap();
    let a = tx
        .insert_events("p-1", &[ev("p-1", 1), ev("p-1", 2)], t(0))
        .unwrap();
    let bb = tx
        .insert_events("p-1", &[ev("p-1", 2), ev("p-1", 3)], t(0))
        .unwrap();
    let c = tx.insert_events("p-2", &[ev("p-2", 7)], t(0)).unwrap();
    let res = tx.commit().unwrap();
    assert_eq!(
        (a, bb, c),
        (vec![true, true], vec![false, true], vec![true])
    );
    assert_eq!(
        res.durable,
        [("p-1".to_string(), 3), ("p-2".to_string(), 0)]
    );
    assert_eq!((res.inserted, res.duplicates), (4, 1));
}

fn a_reader_sees_what_is_committed_and_nothing_else(b: &dyn Backend) {
    let mut writer = b.writer().unwrap();
    let reader = b.reader().unwrap();
    insert(&mut *writer, "p-1", &[1, 2, 5]);
    let info = reader.post("p-1").unwrap().unwrap();
    assert_eq!(
        (info.last_seq, info.durable_through_seq, info.missing_events),
        (5, 2, 2)
    );
    insert(&mut *writer, "p-2", &[1, 3]);
    insert(&mut *writer, "p-3", &[1]);
    // The list says of each post what asking for it alone says.
    let listed = reader.posts().unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|p| p.post_id.as_str())
            .collect::<Vec<_>>(),
        ["p-1", "p-2", "p-3"]
    );
    for post in &listed {
        assert_eq!(Some(post), reader.post(&post.post_id).unwrap().as_ref());
    }
    assert_eq!(
        listed
            .iter()
            .map(|p| (p.last_seq, p.missing_events))
            .collect::<Vec<_>>(),
        [(5, 2), (3, 1), (1, 0)]
    );
    assert_eq!(reader.durable_through("p-1").unwrap(), 2);
    assert_eq!(reader.durable_through("p-9").unwrap(), 0);
    {
        let mut tx = writer.begin().unwrap();
        tx.insert_events("p-1", &[ev("p-1", 3)], t(0)).unwrap();
        // Not committed yet: the reader does not see it.
        assert_eq!(reader.event_count().unwrap(), 6);
        assert!(reader.event("p-1", 3).unwrap().is_none());
        tx.commit().unwrap();
    }
    assert_eq!(reader.event_count().unwrap(), 7);
    assert_eq!(reader.durable_through("p-1").unwrap(), 3);
}

fn rollback_leaves_nothing_and_watermarks_exact(b: &dyn Backend) {
    let mut store = b.writer().unwrap();
    insert(&mut *store, "p-1", &[1]);
    {
        let mut tx = store.begin().unwrap();
        tx.insert_events("p-1", &[ev("p-1", 2)], t(0)).unwrap();
        // dropped: rolled back
    }
    assert_eq!(store.durable_through("p-1").unwrap(), 1);
    assert_eq!(store.event_count().unwrap(), 1);
    let (new, res) = insert(&mut *store, "p-1", &[2]);
    assert_eq!((new, res.durable[0].1), (vec![true], 2));
}

fn everything_survives_reopen(b: &dyn Backend) {
    let inc = Incident {
        id: incident_id(7),
        post_id: "p-1".into(),
        state: IncidentState::Open as i32,
        version: 1,
        title: "Burglary".into(),
        ..Default::default()
    };
    {
        let mut store = b.writer().unwrap();
        insert(&mut *store, "p-1", &[1, 2, 4]);
        let mut changes = Changes::default();
        changes.put_incident(inc.clone(), None);
        changes.audit.push(AuditEntry {
            incident_id: inc.id.clone(),
            post_id: "p-1".into(),
            action: AuditAction::Opened as i32,
            actor: "system".into(),
            to_version: 1,
            ..Default::default()
        });
        changes.audit.push(AuditEntry {
            post_id: "p-1".into(),
            action: AuditAction::TestModeStarted as i32,
            actor: "alice".into(),
            ..Default::default()
        });
        changes.notes.push(Note {
            incident_id: inc.id.clone(),
            author: "alice".into(),
            text: "on it".into(),
            ..Default::default()
        });
        changes.links.push(EventLink {
            incident_id: inc.id.clone(),
            post_id: "p-1".into(),
            seq: 2,
        });
        changes.statuses.push((
            PostStatus {
                post_id: "p-1".into(),
                state: PostState::Online as i32,
                ..Default::default()
            },
            t(5),
        ));
        changes.test_modes.push(TestModeWrite {
            post_id: "p-1".into(),
            until: Some(t(3600)),
        });
        let mut tx = store.begin().unwrap();
        tx.apply(&changes).unwrap();
        tx.commit().unwrap();
    }
    let mut store = b.writer().unwrap();
    assert_eq!(store.durable_through("p-1").unwrap(), 2);
    let info = store.post("p-1").unwrap().unwrap();
    assert_eq!((info.last_seq, info.missing_events), (4, 1));
    assert_eq!(info.open_incidents, 1);
    assert_eq!(info.status.unwrap().state, PostState::Online as i32);
    assert_eq!(info.test_mode_until, Some(t(3600).into()));
    assert_eq!(store.incident(&inc.id).unwrap(), Some(inc.clone()));
    assert_eq!(store.audit(&inc.id).unwrap().len(), 1);
    assert_eq!(store.post_audit("p-1").unwrap().len(), 1);
    assert_eq!(store.notes(&inc.id).unwrap()[0].text, "on it");
    let linked = store.incident_events(&inc.id).unwrap();
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0].incident_id, inc.id);
    assert_eq!(store.event("p-1", 2).unwrap().unwrap().incident_id, inc.id);
    assert_eq!(store.event("p-1", 1).unwrap().unwrap().incident_id, "");
    let snap = store.engine_snapshot(t(0)).unwrap();
    assert_eq!(snap.incidents, [inc]);
    assert_eq!(snap.last_incident_number, 7);
    assert_eq!(snap.test_modes, [("p-1".to_string(), t(3600))]);
    assert_eq!(snap.statuses.len(), 1);
    // The gap fills after the restart.
    let (_, res) = insert(&mut *store, "p-1", &[3]);
    assert_eq!(res.durable[0].1, 4);
    let (new, _) = insert(&mut *store, "p-1", &[1, 2, 3, 4]);
    assert_eq!(new, [false; 4]);
}

fn incident_writes_are_compare_and_set(b: &dyn Backend) {
    let mut store = b.writer().unwrap();
    let mut inc = Incident {
        id: incident_id(1),
        post_id: "p-1".into(),
        state: IncidentState::Open as i32,
        version: 1,
        ..Default::default()
    };
    let mut c = Changes::default();
    c.put_incident(inc.clone(), None);
    let mut tx = store.begin().unwrap();
    tx.apply(&c).unwrap();
    tx.commit().unwrap();

    inc.version = 2;
    let mut stale = Changes::default();
    stale.put_incident(inc.clone(), Some(5));
    let mut tx = store.begin().unwrap();
    let err = tx.apply(&stale).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::VersionConflict {
                expected: 5,
                found: Some(1),
                ..
            }
        ),
        "{err}"
    );
    drop(tx);
    let mut ok = Changes::default();
    ok.put_incident(inc.clone(), Some(1));
    let mut tx = store.begin().unwrap();
    tx.apply(&ok).unwrap();
    tx.commit().unwrap();
    assert_eq!(store.incident(&inc.id).unwrap().unwrap().version, 2);

    let listed = store
        .incidents(&IncidentFilter {
            states: vec![IncidentState::Open as i32],
            post_ids: vec!["p-1".into()],
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.len(), 1);
    let none = store
        .incidents(&IncidentFilter {
            post_ids: vec!["p-2".into()],
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(none.is_empty());
    let resolved = store
        .incidents(&IncidentFilter {
            states: vec![IncidentState::Resolved as i32],
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(resolved.is_empty());
}

fn audit_positions_grow_and_page(b: &dyn Backend) {
    let mut store = b.writer().unwrap();
    let reader = b.reader().unwrap();
    assert_eq!(reader.last_audit_position().unwrap(), 0);
    let mut all = Vec::new();
    for round in 0..3u64 {
        let mut c = Changes::default();
        for i in 0..4u64 {
            let number = round * 4 + i + 1;
            let inc = Incident {
                id: incident_id(number),
                post_id: format!("p-{i}"),
                state: IncidentState::Open as i32,
                version: 1,
                ..Default::default()
            };
            c.put_incident(inc.clone(), None);
            c.audit.push(AuditEntry {
                incident_id: inc.id.clone(),
                post_id: inc.post_id.clone(),
                action: AuditAction::Opened as i32,
                to_version: 1,
                ..Default::default()
            });
        }
        let mut tx = store.begin().unwrap();
        let positions = tx.apply(&c).unwrap();
        tx.commit().unwrap();
        assert_eq!(positions.len(), 4);
        all.extend(positions);
    }
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert_eq!(reader.last_audit_position().unwrap(), *all.last().unwrap());
    let page = reader.audit_after(all[2], 5).unwrap();
    let got: Vec<u64> = page.iter().map(|(p, _)| *p).collect();
    assert_eq!(got, all[3..8]);
    assert_eq!(page[0].1.incident_id, incident_id(4));
    assert!(reader.audit_after(all[11], 5).unwrap().is_empty());
    // Newest first, and paged by number.
    let listed = reader
        .incidents(&IncidentFilter {
            before_number: Some(6),
            limit: 3,
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, [incident_id(5), incident_id(4), incident_id(3)]);
}

fn events_are_kept_as_the_bytes_received(b: &dyn Backend) {
    let event = Event {
        post_id: "p-1".into(),
        seq: 1,
        description: "door".into(),
        ..Default::default()
    };
    // A field this version does not know (number 999, a string), as a
    // newer gateway might send.
    let mut raw = event.encode_to_vec();
    prost::encoding::string::encode(999, &"from the future".to_string(), &mut raw);
    let received = Received {
        event,
        raw: Bytes::from(raw.clone()),
    };
    let mut store = b.writer().unwrap();
    let mut tx = store.begin().unwrap();
    tx.insert_events("p-1", &[received], t(0)).unwrap();
    tx.commit().unwrap();
    let reader = b.reader().unwrap();
    let stored = reader.event("p-1", 1).unwrap().unwrap();
    assert_eq!(stored.event.unwrap().description, "door");
    // The store holds exactly what was received, the unknown field too.
    assert_eq!(reader.event_bytes("p-1", 1).unwrap(), Some(raw));
    assert_eq!(reader.event_bytes("p-1", 2).unwrap(), None);
}

fn received_order_pages_by_time_post_and_seq(b: &dyn Backend) {
    let mut store = b.writer().unwrap();
    let at = |post: &str, seq: u64, secs: u64| -> Received {
        Event {
            post_id: post.into(),
            seq,
            received_at: Some(t(secs).into()),
            ..Default::default()
        }
        .into()
    };
    let mut tx = store.begin().unwrap();
    tx.insert_events("p-1", &[at("p-1", 1, 10), at("p-1", 2, 30)], t(0))
        .unwrap();
    tx.insert_events("p-2", &[at("p-2", 1, 10), at("p-2", 2, 20)], t(0))
        .unwrap();
    tx.commit().unwrap();
    let reader = b.reader().unwrap();
    let key =
        |r: &(super::ReceivedKey, vigil_proto::v1::StoredEvent)| (r.0.post_id.clone(), r.0.seq);
    let all = reader
        .events_received(&ReceivedFilter::default(), None, 10)
        .unwrap();
    let order: Vec<_> = all.iter().map(key).collect();
    assert_eq!(
        order,
        [
            ("p-1".to_string(), 1),
            ("p-2".to_string(), 1),
            ("p-2".to_string(), 2),
            ("p-1".to_string(), 2)
        ]
    );
    // Keyset paging: after the second, two more.
    let next = reader
        .events_received(&ReceivedFilter::default(), Some(&all[1].0), 2)
        .unwrap();
    assert_eq!(next.iter().map(key).collect::<Vec<_>>(), order[2..4]);
    // One post, from a time (inclusive) to a time (exclusive).
    let filter = ReceivedFilter {
        post_ids: vec!["p-2".into()],
        from: Some(t(15)),
        to: Some(t(25)),
        ..Default::default()
    };
    let some = reader.events_received(&filter, None, 10).unwrap();
    assert_eq!(
        some.iter().map(key).collect::<Vec<_>>(),
        [("p-2".to_string(), 2)]
    );
}

/// Three posts, events of every kind at interleaved times: a kind filter
/// (one kind, two, none) gives exactly those events, in seq order for one
/// post and in received order across posts, and keyset pages of one event
/// walk the merged arms without a gap or a repeat.
fn kinds_filter_both_orders_and_page_across_arms(b: &dyn Backend) {
    use super::{SeqFilter, shapes::kind_of};
    use vigil_proto::v1::{AlarmSignal, CameraEvent, EventKind, PostHealth, event::Body};
    let mut store = b.writer().unwrap();
    let body = |i: u64| match i % 4 {
        0 => Some(Body::Alarm(AlarmSignal::default())),
        1 => Some(Body::Camera(CameraEvent::default())),
        2 => Some(Body::Health(PostHealth::default())),
        _ => None,
    };
    let mut all = Vec::new();
    let mut tx = store.begin().unwrap();
    for post in ["p-1", "p-2", "p-3"] {
        let events: Vec<Received> = (1..=12u64)
            .map(|seq| {
                let n = u64::from(post.as_bytes()[2] - b'0');
                Event {
                    post_id: post.into(),
                    seq,
                    // Posts interleave; two events share a millisecond.
                    received_at: Some(t(seq * 3 + n % 2).into()),
                    body: body(seq + n),
                    ..Default::default()
                }
                .into()
            })
            .collect();
        all.extend(events.iter().map(|r: &Received| r.event.clone()));
        tx.insert_events(post, &events, t(0)).unwrap();
    }
    tx.commit().unwrap();
    let reader = b.reader().unwrap();
    let key = |e: &Event| {
        let at = SystemTime::try_from(e.received_at.unwrap()).unwrap();
        (at, e.post_id.clone(), e.seq)
    };
    let kinds_cases: [Vec<i32>; 3] = [
        vec![EventKind::Health as i32],
        vec![EventKind::Alarm as i32, EventKind::Unspecified as i32],
        vec![],
    ];
    for kinds in kinds_cases {
        let wanted = |e: &Event| kinds.is_empty() || kinds.contains(&kind_of(e));
        // One post, seq order.
        let filter = SeqFilter {
            post_id: "p-2".into(),
            kinds: kinds.clone(),
            from_seq: 2,
            to_seq: Some(11),
        };
        let got = seqs(&reader.events_by_seq(&filter, 100).unwrap());
        let want: Vec<u64> = all
            .iter()
            .filter(|e| e.post_id == "p-2" && (2..=11).contains(&e.seq) && wanted(e))
            .map(|e| e.seq)
            .collect();
        assert_eq!(got, want, "seq order, kinds {kinds:?}");
        // Received order over two named posts and over all, one a page.
        for posts in [vec!["p-1".to_string(), "p-3".to_string()], vec![]] {
            let filter = ReceivedFilter {
                post_ids: posts.clone(),
                kinds: kinds.clone(),
                ..Default::default()
            };
            let mut want: Vec<_> = all
                .iter()
                .filter(|e| (posts.is_empty() || posts.contains(&e.post_id)) && wanted(e))
                .map(key)
                .collect();
            want.sort();
            let mut got = Vec::new();
            let mut after = None;
            for _ in 0..=want.len() {
                let page = reader.events_received(&filter, after.as_ref(), 1).unwrap();
                let Some((k, e)) = page.into_iter().next() else {
                    break;
                };
                got.push(key(e.event.as_ref().unwrap()));
                after = Some(k);
            }
            assert_eq!(
                got, want,
                "received order, posts {posts:?}, kinds {kinds:?}"
            );
        }
    }
}

/// Incident listings by post and state merge their index ranges newest
/// first and page with `before_number`.
fn incident_lists_merge_posts_and_states_newest_first(b: &dyn Backend) {
    let mut store = b.writer().unwrap();
    let mut changes = Changes::default();
    let states = [
        IncidentState::Open,
        IncidentState::Acknowledged,
        IncidentState::Resolved,
    ];
    for n in 1..=12u64 {
        changes.put_incident(
            Incident {
                id: incident_id(n),
                post_id: format!("p-{}", n % 3),
                state: states[(n % 4 % 3) as usize] as i32,
                version: 1,
                ..Default::default()
            },
            None,
        );
    }
    let mut tx = store.begin().unwrap();
    tx.apply(&changes).unwrap();
    tx.commit().unwrap();
    let reader = b.reader().unwrap();
    let numbers = |f: &IncidentFilter| -> Vec<u64> {
        reader
            .incidents(f)
            .unwrap()
            .iter()
            .map(|i| super::incident_number(&i.id).unwrap())
            .collect()
    };
    let expect = |posts: &[&str], st: &[IncidentState], before: u64, limit: usize| -> Vec<u64> {
        (1..before)
            .rev()
            .filter(|n| posts.is_empty() || posts.contains(&format!("p-{}", n % 3).as_str()))
            .filter(|n| st.is_empty() || st.contains(&states[(n % 4 % 3) as usize]))
            .take(limit)
            .collect()
    };
    let open = [IncidentState::Open, IncidentState::Acknowledged];
    for (posts, st) in [
        (&["p-1", "p-2"][..], &open[..]),
        (&["p-0"][..], &[][..]),
        (&[][..], &open[..]),
        (&[][..], &[][..]),
    ] {
        for (before, limit) in [(13, 100), (13, 3), (9, 2)] {
            let filter = IncidentFilter {
                states: st.iter().map(|s| *s as i32).collect(),
                post_ids: posts.iter().map(|p| p.to_string()).collect(),
                before_number: (before != 13).then_some(before),
                limit,
            };
            assert_eq!(
                numbers(&filter),
                expect(posts, st, before, limit),
                "{filter:?}"
            );
        }
    }
}

/// Retention on a store 100 days old: camera events (10 days) and test
/// signals (a category of 5 days) go, other alarms (for ever) stay; an
/// event linked to an open incident stays, one linked to an incident
/// resolved long ago stays until that incident has gone (with its audit
/// and notes); an event above its post's watermark stays. A dry run says
/// exactly this and deletes nothing. What goes is archived first, and
/// reads back from the archive with the replay's filters.
fn retention_prunes_by_kind_and_category_keeps_incident_events_and_archives_first(b: &dyn Backend) {
    use super::{
        archive::{self, Archive, ArchiveFilter},
        retention::{Pruner, RetentionConfig},
    };
    use vigil_proto::v1::{AlarmSignal, CameraEvent, EventCategory, EventKind, event::Body};
    const DAY: u64 = 86_400;
    let mut store = b.writer().unwrap();
    let event = |seq: u64, day: u64, body: Body, category: EventCategory| -> Received {
        Event {
            post_id: "p-1".into(),
            seq,
            received_at: Some(t(day * DAY).into()),
            category: category as i32,
            body: Some(body),
            ..Default::default()
        }
        .into()
    };
    let camera = || Body::Camera(CameraEvent::default());
    let alarm = || Body::Alarm(AlarmSignal::default());
    let mut events = Vec::new();
    // seq 1-20: camera events of days 1-20.
    for seq in 1..=20 {
        events.push(event(seq, seq, camera(), EventCategory::VideoDetection));
    }
    // seq 21-30: panel tests of days 1-10.
    for seq in 21..=30 {
        events.push(event(seq, seq - 20, alarm(), EventCategory::Test));
    }
    // 31: a burglary alarm; 32, 33: camera events of incidents 1 and 2.
    events.push(event(31, 1, alarm(), EventCategory::Burglary));
    events.push(event(32, 2, camera(), EventCategory::VideoDetection));
    events.push(event(33, 3, camera(), EventCategory::VideoDetection));
    // 35: above a gap (34 never came).
    events.push(event(35, 1, camera(), EventCategory::VideoDetection));
    let mut changes = Changes::default();
    for (n, state, resolved_day) in [
        (1, IncidentState::Open, None),
        (2, IncidentState::Resolved, Some(50)),
    ] {
        let inc = Incident {
            id: incident_id(n),
            post_id: "p-1".into(),
            state: state as i32,
            version: 1,
            resolved_at: resolved_day.map(|d: u64| t(d * DAY).into()),
            ..Default::default()
        };
        changes.audit.push(AuditEntry {
            incident_id: inc.id.clone(),
            post_id: "p-1".into(),
            action: AuditAction::Opened as i32,
            ..Default::default()
        });
        changes.notes.push(Note {
            incident_id: inc.id.clone(),
            text: "seen".into(),
            ..Default::default()
        });
        changes.put_incident(inc, None);
        changes.links.push(EventLink {
            incident_id: incident_id(n),
            post_id: "p-1".into(),
            seq: 31 + n,
        });
    }
    let mut tx = store.begin().unwrap();
    tx.insert_events("p-1", &events, t(0)).unwrap();
    tx.apply(&changes).unwrap();
    tx.commit().unwrap();
    let total = store.event_count().unwrap();
    assert_eq!(total, 34);

    let mut config = RetentionConfig {
        alarm_days: 0,
        camera_days: 10,
        incident_days: 20,
        ..Default::default()
    };
    config.categories.insert("test".into(), 5);
    let mut policy = config.policy();
    policy.batch = 3; // many small transactions
    let now = t(100 * DAY);

    let dry = Pruner::open(b, policy.clone(), None)
        .unwrap()
        .run(now, true, 1000)
        .unwrap();
    assert_eq!(
        store.event_count().unwrap(),
        total,
        "a dry run deletes nothing"
    );
    assert_eq!(dry.events.get("camera"), Some(&20), "{dry:?}");
    assert_eq!(dry.events.get("alarm"), Some(&10), "{dry:?}");
    assert_eq!(dry.kept_for_incident, 2);
    assert_eq!(dry.kept_above_watermark, 1);
    assert_eq!(dry.kept_for_category, 1);
    assert_eq!(dry.incidents, 1);

    // A folder of this case's own (the suite is part of the library, so
    // no tempfile): removed at the end.
    let dir = std::env::temp_dir().join(format!(
        "vigil-archive-suite-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let archive = Archive::open(&dir).unwrap();
    let mut pruner = Pruner::open(b, policy, Some(archive)).unwrap();
    let first = pruner.run(now, false, 1000).unwrap();
    assert_eq!(first.events_total(), 30, "{first:?}");
    assert_eq!(
        (first.incidents, first.audit, first.notes, first.links),
        (1, 1, 1, 1)
    );
    assert_eq!(store.event_count().unwrap(), total - 30);
    // Incident 2 is gone, so its event goes on the next pass; incident 1
    // (open) keeps its own.
    let second = pruner.run(now, false, 1000).unwrap();
    assert_eq!(second.events_total(), 1, "{second:?}");
    assert!(store.incident(&incident_id(2)).unwrap().is_none());
    assert!(store.incident(&incident_id(1)).unwrap().is_some());
    assert_eq!(store.audit(&incident_id(1)).unwrap().len(), 1);
    let left: Vec<u64> = seqs(&store.events("p-1", 1, 100).unwrap());
    assert_eq!(left, [31, 32, 35]);
    // Nothing more to do.
    assert_eq!(pruner.run(now, false, 1000).unwrap().events_total(), 0);

    // The archive holds every deleted event, exactly as stored.
    let manifest = archive::read_manifest(&dir).unwrap();
    assert_eq!(manifest.files.iter().map(|f| f.events).sum::<u64>(), 31);
    let cameras = archive::read(
        &dir,
        &ArchiveFilter {
            kinds: vec![EventKind::Camera as i32],
            ..Default::default()
        },
    )
    .unwrap();
    // Received order: seq 1 (day 1), 2 (day 2), 3 and 33 (day 3), 4, …
    let mut want: Vec<u64> = (1..=20).collect();
    want.insert(3, 33);
    let got: Vec<u64> = cameras
        .iter()
        .map(|e| e.event.as_ref().unwrap().seq)
        .collect();
    assert_eq!(got, want);
    let one = archive::read(
        &dir,
        &ArchiveFilter {
            post_ids: vec!["p-1".into()],
            from_seq: 21,
            to_seq: Some(25),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        one.iter()
            .map(|e| e.event.clone().unwrap())
            .collect::<Vec<_>>(),
        events[20..25]
            .iter()
            .map(|r| r.event.clone())
            .collect::<Vec<_>>()
    );
    // A file changed after it was written is refused, by name.
    let name = &manifest.files[0].file;
    let path = &dir.join(name);
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(path, bytes).unwrap();
    let err = archive::read(&dir, &ArchiveFilter::default()).unwrap_err();
    assert!(err.to_string().contains(name.as_str()), "{err}");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn record(id: &str, name: &str) -> PostRecord {
    PostRecord {
        post_id: id.into(),
        name: name.into(),
        timezone: "Europe/Vienna".into(),
        contacts: vec![
            Contact {
                role: "guard".into(),
                name: "Gate".into(),
                phone: "+43 1 555".into(),
                notes: String::new(),
            },
            Contact {
                role: "police".into(),
                name: "Station".into(),
                phone: "133".into(),
                notes: "ask for the duty officer".into(),
            },
        ],
        duress_words: vec!["bluebird".into()],
        passcodes: vec!["4711".into()],
        ..Default::default()
    }
}

fn plan(category: &str, post: &str) -> ActionPlan {
    ActionPlan {
        category: category.into(),
        post_id: post.into(),
        steps: vec![PlanStep {
            kind: StepKind::CallContact as i32,
            text: "call".into(),
            contact_role: "guard".into(),
        }],
    }
}

fn site_change(site: SiteDocument, post: &str, detail: &str) -> Changes {
    Changes {
        audit: vec![AuditEntry {
            action: AuditAction::SiteChanged as i32,
            actor: "alice".into(),
            actor_role: "admin".into(),
            at: Some(t(10).into()),
            detail: detail.into(),
            post_id: post.into(),
            ..Default::default()
        }],
        site: Some(site),
        ..Default::default()
    }
}

fn site_documents_replace_whole_in_order_and_roll_back(b: &dyn Backend) {
    let mut w = b.writer().unwrap();
    let r = b.reader().unwrap();
    assert_eq!(r.site().unwrap(), SiteDocument::default());
    assert_eq!(r.post_record("p-2").unwrap(), None);

    // Not in id order: the document's order is kept.
    let first = SiteDocument {
        posts: vec![record("p-2", "Two"), record("p-1", "One")],
        plans: vec![
            plan("burglary", ""),
            plan("burglary", "p-2"),
            plan("fire", ""),
        ],
    };
    let mut tx = w.begin().unwrap();
    let positions = tx
        .apply(&site_change(first.clone(), "p-2", "post p-2 added"))
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(positions.len(), 1);
    assert_eq!(r.site().unwrap(), first);
    assert_eq!(r.post_record("p-1").unwrap(), Some(record("p-1", "One")));
    // The change is a post-level audit entry, with a feed position.
    let audit = r.post_audit("p-2").unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].detail, "post p-2 added");
    assert_eq!(r.last_audit_position().unwrap(), positions[0]);

    // A transaction that does not commit changes nothing.
    {
        let mut tx = w.begin().unwrap();
        tx.apply(&site_change(
            SiteDocument::default(),
            "",
            "everything removed",
        ))
        .unwrap();
    }
    assert_eq!(r.site().unwrap(), first);

    // A new document replaces the old one whole.
    let second = SiteDocument {
        posts: vec![record("p-3", "Three"), record("p-1", "One again")],
        plans: vec![plan("duress", "")],
    };
    let mut tx = w.begin().unwrap();
    tx.apply(&site_change(second.clone(), "p-2", "post p-2 removed"))
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(r.site().unwrap(), second);
    assert_eq!(r.post_record("p-2").unwrap(), None);
    assert_eq!(r.post_record("p-1").unwrap().unwrap().name, "One again");
    assert_eq!(w.site().unwrap(), second);
    assert_eq!(b.reader().unwrap().site().unwrap(), second);
    assert_eq!(b.reader().unwrap().plans().unwrap(), second.plans);
}

/// One post's events and incidents at known times, another post beside
/// it: the history walks them newest first in one merged order (pages of
/// two give the same as one page of a hundred; a time range and a category
/// filter cut exactly), incidents opened in a period page oldest first, and
/// the report's figures for a period are the ones worked out by hand.
fn post_history_and_reports_read_by_time(b: &dyn Backend) {
    use super::{OpenedFilter, TimeKey};
    use crate::{
        api::history::{Query, Token, page},
        report::{FAIL_TO_TEST_SUBJECT, build},
    };
    use vigil_proto::v1::{
        AlarmSignal, CameraEvent, Disposition, DispositionCount, EventCategory, PostHealth,
        event::Body,
    };
    let mut store = b.writer().unwrap();
    let event = |post: &str, seq: u64, secs: u64, category: EventCategory, body: Body, restore| {
        Received::from(Event {
            post_id: post.into(),
            seq,
            received_at: Some(t(secs).into()),
            category: category as i32,
            restore,
            body: Some(body),
            ..Default::default()
        })
    };
    let alarm = || Body::Alarm(AlarmSignal::default());
    use EventCategory as C;
    let p1 = [
        event("p-1", 1, 10, C::Burglary, alarm(), false),
        event(
            "p-1",
            2,
            20,
            C::VideoDetection,
            Body::Camera(CameraEvent::default()),
            false,
        ),
        event("p-1", 3, 30, C::Burglary, alarm(), true),
        event(
            "p-1",
            4,
            40,
            C::Supervisory,
            Body::Health(PostHealth::default()),
            false,
        ),
        event("p-1", 5, 40, C::Fire, alarm(), false),
        event("p-1", 6, 100, C::Burglary, alarm(), false),
    ];
    let p2 = [event("p-2", 1, 15, C::Burglary, alarm(), false)];
    let mut tx = store.begin().unwrap();
    tx.insert_events("p-1", &p1, t(0)).unwrap();
    tx.insert_events("p-2", &p2, t(0)).unwrap();
    tx.commit().unwrap();

    let ts = |secs: u64| Some(prost_types::Timestamp::from(t(secs)));
    #[allow(clippy::too_many_arguments)]
    let incident = |n: u64,
                    post: &str,
                    opened: u64,
                    category: EventCategory,
                    state: IncidentState,
                    disposition: Disposition,
                    ack: Option<u64>,
                    resolved: Option<u64>,
                    restored: bool| Incident {
        id: incident_id(n),
        post_id: post.into(),
        version: 1,
        opened_at: ts(opened),
        category: category as i32,
        state: state as i32,
        disposition: disposition as i32,
        acknowledged_at: ack.and_then(ts),
        resolved_at: resolved.and_then(ts),
        restored,
        ..Default::default()
    };
    use Disposition as D;
    use IncidentState as S;
    let mut failed_test = incident(
        3,
        "p-1",
        40,
        C::Test,
        S::Open,
        D::Unspecified,
        None,
        None,
        false,
    );
    failed_test.subject = FAIL_TO_TEST_SUBJECT.into();
    let incidents = [
        incident(
            1,
            "p-1",
            12,
            C::Burglary,
            S::Resolved,
            D::Genuine,
            Some(22),
            Some(72),
            true,
        ),
        incident(
            2,
            "p-1",
            35,
            C::Fire,
            S::Resolved,
            D::UserError,
            Some(40),
            Some(55),
            false,
        ),
        failed_test,
        incident(
            4,
            "p-1",
            50,
            C::Burglary,
            S::Resolved,
            D::Test,
            Some(80),
            Some(90),
            true,
        ),
        incident(
            5,
            "p-2",
            16,
            C::Burglary,
            S::Acknowledged,
            D::Unspecified,
            Some(18),
            None,
            true,
        ),
        incident(
            6,
            "p-1",
            200,
            C::Burglary,
            S::Resolved,
            D::EquipmentFault,
            None,
            Some(210),
            true,
        ),
    ];
    let mut changes = Changes::default();
    for inc in incidents {
        changes.put_incident(inc, None);
    }
    let mut tx = store.begin().unwrap();
    tx.apply(&changes).unwrap();
    tx.commit().unwrap();
    // A later change to an incident keeps it where it opened.
    let mut changed = changes.incident(&incident_id(2)).unwrap().clone();
    changed.version = 2;
    changed.title = "changed later".into();
    let mut later = Changes::default();
    later.put_incident(changed, Some(1));
    let mut tx = store.begin().unwrap();
    tx.apply(&later).unwrap();
    tx.commit().unwrap();
    let reader = b.reader().unwrap();

    // The history, merged newest first, whatever the page size.
    let walk = |from: u64, to: u64, categories: Vec<EventCategory>, page_size: usize| {
        let mut token = Token::parse("").unwrap();
        let mut labels = Vec::new();
        for _ in 0..50 {
            let q = Query {
                post_id: "p-1".into(),
                from: Some(t(from)),
                to: Some(t(to)),
                categories: categories.iter().map(|c| *c as i32).collect(),
                page_size,
                token,
            };
            let resp = page(&*reader, &q).unwrap();
            assert!(resp.items.len() <= page_size);
            for item in &resp.items {
                labels.push(match (&item.incident, &item.event) {
                    (Some(i), None) => {
                        assert_eq!(item.at, i.opened_at);
                        format!("i{}", super::incident_number(&i.id).unwrap())
                    }
                    (None, Some(e)) => {
                        let e = e.event.as_ref().unwrap();
                        assert_eq!(item.at, e.received_at);
                        format!("e{}", e.seq)
                    }
                    _ => panic!("an item is one incident or one event: {item:?}"),
                });
            }
            if resp.next_page_token.is_empty() {
                return labels;
            }
            token = Token::parse(&resp.next_page_token).unwrap();
        }
        panic!("the history did not end: {labels:?}");
    };
    let all = ["i4", "i3", "e5", "e4", "i2", "e3", "e2", "i1", "e1"];
    for size in [1, 2, 3, 100] {
        assert_eq!(walk(0, 100, vec![], size), all, "page size {size}");
    }
    assert_eq!(walk(20, 40, vec![], 2), ["i2", "e3", "e2"]);
    for size in [1, 2, 100] {
        assert_eq!(
            walk(0, 100, vec![C::Burglary], size),
            ["i4", "e3", "i1", "e1"],
            "page size {size}"
        );
        assert_eq!(
            walk(0, 1000, vec![C::Fire, C::Test], size),
            ["i3", "e5", "i2"]
        );
    }

    // Incidents opened in a period, oldest first, in pages.
    let opened = |posts: &[&str], limit: usize| {
        let filter = OpenedFilter {
            post_ids: posts.iter().map(|p| p.to_string()).collect(),
            from: Some(t(0)),
            to: Some(t(100)),
        };
        let (mut after, mut numbers): (Option<TimeKey>, Vec<u64>) = (None, Vec::new());
        loop {
            let got = reader.incidents_opened(&filter, after, limit).unwrap();
            numbers.extend(
                got.iter()
                    .map(|(_, i)| super::incident_number(&i.id).unwrap()),
            );
            if got.len() < limit {
                return numbers;
            }
            after = got.last().map(|(k, _)| *k);
        }
    };
    assert_eq!(opened(&[], 2), [1, 5, 2, 3, 4]);
    assert_eq!(opened(&[], 100), [1, 5, 2, 3, 4]);
    assert_eq!(opened(&["p-2", "p-1"], 1), [1, 5, 2, 3, 4]);
    assert_eq!(opened(&["p-2"], 1), [5]);

    // The report, figure by figure.
    let report = build(&*reader, t(0), t(100), &[]).unwrap();
    assert_eq!(report.from_time, ts(0));
    assert_eq!(report.posts.len(), 2, "{report:?}");
    let p1 = &report.posts[0];
    assert_eq!(p1.post_id, "p-1");
    assert_eq!(
        p1.alarm_events, 2,
        "seq 1 and 5: seq 3 is a restore, seq 6 after the period"
    );
    assert_eq!(p1.incidents_opened, 4);
    assert_eq!(p1.incidents_resolved, 3);
    let count = |d: D, n| DispositionCount {
        disposition: d as i32,
        count: n,
    };
    assert_eq!(
        p1.dispositions,
        [
            count(D::Genuine, 1),
            count(D::UserError, 1),
            count(D::Test, 1)
        ]
    );
    assert_eq!(p1.false_alarms, 1);
    assert_eq!(
        p1.false_alarm_rate,
        Some(0.5),
        "one of the two not resolved as tests"
    );
    assert_eq!(p1.acknowledged, 3);
    assert_eq!((p1.ack_p50_ms, p1.ack_p90_ms), (Some(10_000), Some(30_000)));
    assert_eq!(
        (p1.resolve_p50_ms, p1.resolve_p90_ms),
        (Some(40_000), Some(60_000))
    );
    assert_eq!(p1.unrestored, 2);
    assert_eq!(p1.test_failures, 1);
    let p2 = &report.posts[1];
    assert_eq!(p2.post_id, "p-2");
    assert_eq!(
        (p2.alarm_events, p2.incidents_opened, p2.incidents_resolved),
        (1, 1, 0)
    );
    assert_eq!(p2.false_alarm_rate, None);
    assert_eq!((p2.ack_p50_ms, p2.ack_p90_ms), (Some(2000), Some(2000)));
    assert_eq!(
        (p2.resolve_p50_ms, p2.unrestored, p2.test_failures),
        (None, 0, 0)
    );

    // Named posts: each gets a row, one that did nothing too.
    let named = build(&*reader, t(0), t(100), &["p-9".into(), "p-2".into()]).unwrap();
    let ids: Vec<&str> = named.posts.iter().map(|p| p.post_id.as_str()).collect();
    assert_eq!(ids, ["p-2", "p-9"]);
    assert_eq!(named.posts[0], *p2);
    assert_eq!(
        named.posts[1].incidents_opened + named.posts[1].alarm_events,
        0
    );
    // A later period sees only incident 6 and alarm 6.
    let later = build(&*reader, t(100), t(300), &["p-1".into()]).unwrap();
    let p1 = &later.posts[0];
    assert_eq!(
        (p1.alarm_events, p1.incidents_opened, p1.false_alarms),
        (1, 1, 1)
    );
    assert_eq!(p1.false_alarm_rate, Some(1.0));
}

fn timers_change(entries: &[(&str, PostTimers)]) -> Changes {
    let mut c = Changes::default();
    for (post, state) in entries {
        c.timers.insert((*post).to_owned(), state.clone());
    }
    c
}

fn timer_state_is_kept_per_post_and_read_at_start(b: &dyn Backend) {
    let mut w = b.writer().unwrap();
    assert!(w.engine_snapshot(t(0)).unwrap().timers.is_empty());
    let one = PostTimers {
        opened_at: Some(1_000),
        closed_at: None,
        tested_at: Some(500),
        test_periods_missed: 2,
        checked_through: Some(1_200),
    };
    let two = PostTimers {
        closed_at: Some(7),
        ..Default::default()
    };
    let mut tx = w.begin().unwrap();
    tx.apply(&timers_change(&[
        ("p-2", two.clone()),
        ("p-1", one.clone()),
    ]))
    .unwrap();
    tx.commit().unwrap();
    let snap = b.reader().unwrap().engine_snapshot(t(0)).unwrap();
    assert_eq!(
        snap.timers,
        [
            ("p-1".to_owned(), one.clone()),
            ("p-2".to_owned(), two.clone())
        ]
    );

    // A new state replaces the post's row; a rolled-back one changes nothing.
    let newer = PostTimers {
        opened_at: Some(2_000),
        ..one
    };
    let mut tx = w.begin().unwrap();
    tx.apply(&timers_change(&[("p-1", newer.clone())])).unwrap();
    tx.commit().unwrap();
    {
        let mut tx = w.begin().unwrap();
        tx.apply(&timers_change(&[("p-2", PostTimers::default())]))
            .unwrap();
    }
    let snap = w.engine_snapshot(t(0)).unwrap();
    assert_eq!(
        snap.timers,
        [("p-1".to_owned(), newer), ("p-2".to_owned(), two)]
    );

    // The snapshot carries the stored post records too (their schedules).
    let mut post = record("p-1", "One");
    post.schedules = vec![crate::schedule::schedule(
        &["mon"],
        "07:00-08:00",
        "17:00-18:00",
        5,
    )];
    post.test_interval_hours = 24;
    let site = SiteDocument {
        posts: vec![post.clone()],
        plans: Vec::new(),
    };
    let mut tx = w.begin().unwrap();
    tx.apply(&site_change(site, "p-1", "post p-1 added"))
        .unwrap();
    tx.commit().unwrap();
    let snap = b.reader().unwrap().engine_snapshot(t(0)).unwrap();
    assert_eq!(snap.site_posts, [post]);

    // Emergency mode: one row, replaced, then cleared.
    assert_eq!(snap.emergency, None);
    let mode = |reason: &str| vigil_proto::v1::EmergencyMode {
        post_ids: vec!["p-1".into()],
        started_at: Some(t(1).into()),
        until: Some(t(3600).into()),
        reason: reason.into(),
        started_by: "sam".into(),
        keep_priority: 2,
    };
    for m in [Some(mode("storm")), Some(mode("flood")), None] {
        let mut tx = w.begin().unwrap();
        tx.apply(&Changes {
            emergency: Some(m.clone()),
            ..Default::default()
        })
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(
            b.reader().unwrap().engine_snapshot(t(0)).unwrap().emergency,
            m
        );
    }
}

fn notification(delivery: &str, webhook: &str, number: u64, at: SystemTime) -> NewNotification {
    NewNotification {
        delivery: delivery.into(),
        webhook: webhook.into(),
        event: "escalated".into(),
        incident: Incident {
            id: incident_id(number),
            post_id: "p-1".into(),
            escalation_level: 1,
            ..Default::default()
        },
        at,
    }
}

fn notifications_queue_update_conditionally_and_prune(b: &dyn Backend) {
    use NotifyState::{Delivered, Failed, Pending};
    let mut w = b.writer().unwrap();
    let r = b.reader().unwrap();
    assert!(r.notifications_due("pager", t(100), 10).unwrap().is_empty());

    // Enqueued with the change; a transaction that does not commit leaves
    // nothing.
    {
        let mut tx = w.begin().unwrap();
        tx.apply(&Changes {
            notifications: vec![notification("d-0", "pager", 9, t(10))],
            ..Default::default()
        })
        .unwrap();
    }
    assert_eq!(r.notification_count(Pending).unwrap(), 0);
    let mut tx = w.begin().unwrap();
    tx.apply(&Changes {
        notifications: vec![
            notification("d-1", "pager", 1, t(10)),
            notification("d-2", "sms", 2, t(11)),
            notification("d-3", "pager", 3, t(12)),
        ],
        ..Default::default()
    })
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(r.notification_count(Pending).unwrap(), 3);

    // Due per webhook, oldest due first; not before its time.
    let due = r.notifications_due("pager", t(100), 10).unwrap();
    assert_eq!(
        due.iter().map(|n| n.delivery.as_str()).collect::<Vec<_>>(),
        ["d-1", "d-3"]
    );
    assert_eq!(due[0].incident.id, incident_id(1));
    assert_eq!(due[0].incident.escalation_level, 1);
    assert_eq!((due[0].state, due[0].attempts), (Pending, 0));
    assert_eq!(due[0].at, t(10));
    assert_eq!(r.notifications_due("pager", t(11), 10).unwrap().len(), 1);
    assert_eq!(r.notifications_due("pager", t(100), 1).unwrap().len(), 1);
    let (d1, d3) = (due[0].id, due[1].id);
    assert!(d3 > d1);

    // A retry later, one delivered, one failed.
    let update = |id, only_if, state, attempts, at, error: &str| NotifyUpdate {
        id,
        only_if,
        state,
        attempts,
        next_at: at,
        last_error: error.into(),
    };
    let mut tx = w.begin().unwrap();
    tx.apply(&Changes {
        notify_updates: vec![
            update(d1, Pending, Pending, 1, t(50), "HTTP 500"),
            update(d3, Pending, Failed, 1, t(13), "HTTP 400"),
        ],
        ..Default::default()
    })
    .unwrap();
    tx.commit().unwrap();
    assert!(r.notifications_due("pager", t(49), 10).unwrap().is_empty());
    let one = r.notification(d1).unwrap().unwrap();
    assert_eq!((one.attempts, one.last_error.as_str()), (1, "HTTP 500"));
    let failed = r.notifications(Failed, None, 10).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, d3);
    assert_eq!(failed[0].last_error, "HTTP 400");
    assert_eq!(r.notification(u64::MAX).unwrap(), None);

    // An update whose expected state no longer holds changes nothing.
    let mut tx = w.begin().unwrap();
    tx.apply(&Changes {
        notify_updates: vec![update(d3, Pending, Delivered, 2, t(14), "")],
        ..Default::default()
    })
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(r.notification(d3).unwrap().unwrap().state, Failed);

    // Listing by state pages newest first.
    let pending = r.notifications(Pending, None, 10).unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending[0].id > pending[1].id);
    let next = r.notifications(Pending, Some(pending[0].id), 10).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, pending[1].id);

    // Delivered rows older than the cut-off are pruned; others stay.
    let mut tx = w.begin().unwrap();
    tx.apply(&Changes {
        notify_updates: vec![update(d1, Pending, Delivered, 2, t(60), "")],
        ..Default::default()
    })
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(r.notification_count(Delivered).unwrap(), 1);
    let mut tx = w.begin().unwrap();
    tx.apply(&Changes {
        notify_prune_before: Some(t(60)),
        ..Default::default()
    })
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(r.notification_count(Delivered).unwrap(), 1, "not older");
    let mut tx = w.begin().unwrap();
    tx.apply(&Changes {
        notify_prune_before: Some(t(61)),
        ..Default::default()
    })
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(r.notification_count(Delivered).unwrap(), 0);
    assert_eq!(r.notification(d1).unwrap(), None);
    assert_eq!(r.notification_count(Failed).unwrap(), 1);
    assert_eq!(r.notification_count(Pending).unwrap(), 1);
}
