//! Engine rules, driven by explicit times: every test is deterministic and
//! walks the clock by hand across windows and deadlines.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vigil_proto::v1::{
    AlarmSignal, AuditAction, CameraEvent, CameraEventKind, CameraEventState, Disposition, Event,
    EventCategory, HealthKind, HealthState, Incident, IncidentState, PostHealth, PostState,
    PostStatus, Priority, Severity, Source, SourceKind, event::Body,
};

use super::*;
use crate::store::{Changes, EngineSnapshot};

const POST: &str = "p-017";

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000 + secs)
}

fn cfg() -> EngineConfig {
    let mut cfg = EngineConfig {
        correlation_window_secs: 60,
        verification_window_secs: 30,
        reactivation_window_secs: 300,
        ack_deadline_secs: AckDeadlines {
            p1: 30,
            p2: 60,
            p3: 120,
            p4: 600,
        },
        max_escalation_level: 2,
        flood_limit: 3,
        flood_window_secs: 60,
        max_test_mode_secs: 3600,
        ..EngineConfig::default()
    };
    cfg.procedures
        .insert("burglary".into(), "Call the guard post.".into());
    cfg.procedures
        .insert("default".into(), "Follow the general procedure.".into());
    cfg.zone_cameras.push(ZoneCameras {
        post: POST.into(),
        zone: 15,
        cameras: vec!["cam-2".into()],
    });
    cfg.validate().unwrap();
    cfg
}

fn engine() -> Engine {
    Engine::new(cfg(), EngineSnapshot::default())
}

struct Seq(u64);

impl Seq {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

fn alarm(seq: u64, zone: u32, category: EventCategory, restore: bool, at: SystemTime) -> Event {
    Event {
        post_id: POST.into(),
        seq,
        received_at: Some(at.into()),
        source: Some(Source {
            device_id: "1234".into(),
            kind: SourceKind::AlarmPanel as i32,
        }),
        severity: Severity::High as i32,
        category: category as i32,
        restore,
        description: format!("{} zone {zone}", category_name(category)),
        body: Some(Body::Alarm(AlarmSignal {
            account: "1234".into(),
            zone,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn camera(seq: u64, cam: &str, state: CameraEventState, at: SystemTime) -> Event {
    Event {
        post_id: POST.into(),
        seq,
        received_at: Some(at.into()),
        source: Some(Source {
            device_id: cam.into(),
            kind: SourceKind::Camera as i32,
        }),
        severity: Severity::Medium as i32,
        category: EventCategory::VideoDetection as i32,
        description: format!("intrusion on {cam}"),
        body: Some(Body::Camera(CameraEvent {
            camera_id: cam.into(),
            kind: CameraEventKind::Intrusion as i32,
            state: state as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn health(seq: u64, kind: HealthKind, state: HealthState, at: SystemTime) -> Event {
    Event {
        post_id: POST.into(),
        seq,
        received_at: Some(at.into()),
        source: Some(Source {
            device_id: "gateway".into(),
            kind: SourceKind::Gateway as i32,
        }),
        body: Some(Body::Health(PostHealth {
            kind: kind as i32,
            state: state as i32,
            subject: "1234".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn status(state: PostState, at: SystemTime) -> PostStatus {
    PostStatus {
        post_id: POST.into(),
        state: state as i32,
        at: Some(at.into()),
        boot_id: "b1".into(),
        ..Default::default()
    }
}

fn get(e: &Engine, id: &str) -> Incident {
    e.incident(id).unwrap().clone()
}

fn actions(out: &Changes) -> Vec<AuditAction> {
    out.audit.iter().map(|a| a.action()).collect()
}

fn analyst() -> Actor {
    Actor::new("alice", "analyst")
}

#[test]
fn burglary_opens_an_incident_with_priority_procedure_and_deadline() {
    let mut e = engine();
    let mut out = Changes::default();
    let id = e
        .on_event(
            &alarm(1, 3, EventCategory::Burglary, false, t(0)),
            t(1),
            &mut out,
        )
        .unwrap();
    let inc = get(&e, &id);
    assert_eq!(inc.state(), IncidentState::Open);
    assert_eq!(inc.priority(), Priority::P2);
    assert_eq!(inc.category(), EventCategory::Burglary);
    assert_eq!(inc.procedure, "Call the guard post.");
    assert_eq!(inc.subject, "zone:3");
    assert_eq!(inc.version, 1);
    assert_eq!(inc.event_count, 1);
    assert_eq!(inc.ack_deadline, Some(t(61).into()));
    assert_eq!(actions(&out), [AuditAction::Opened]);
    assert_eq!(out.audit[0].actor, SYSTEM);
    assert_eq!((out.audit[0].from_version, out.audit[0].to_version), (0, 1));
    assert_eq!(out.incidents().len(), 1);
    assert_eq!(out.incidents()[0].prev_version, None);
    assert_eq!(out.links.len(), 1);

    // A category without its own procedure gets the default one.
    let mut out = Changes::default();
    let id = e
        .on_event(
            &alarm(2, 0, EventCategory::Power, false, t(2)),
            t(2),
            &mut out,
        )
        .unwrap();
    assert_eq!(get(&e, &id).procedure, "Follow the general procedure.");
    assert_eq!(get(&e, &id).priority(), Priority::P3);
}

#[test]
fn informational_events_open_nothing() {
    let mut e = engine();
    let mut out = Changes::default();
    for (seq, cat) in [
        EventCategory::Test,
        EventCategory::OpenClose,
        EventCategory::System,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            e.on_event(&alarm(seq as u64 + 1, 1, cat, false, t(0)), t(0), &mut out),
            None
        );
    }
    let start = health(9, HealthKind::GatewayStart, HealthState::Restored, t(0));
    assert_eq!(e.on_event(&start, t(0), &mut out), None);
    assert!(out.is_empty());
    // An alarm signal Vigil cannot classify is never ignored: P4, "other".
    let id = e
        .on_event(
            &alarm(10, 1, EventCategory::Unspecified, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    assert_eq!(get(&e, &id).category(), EventCategory::Other);
    assert_eq!(get(&e, &id).priority(), Priority::P4);
}

#[test]
fn same_zone_within_the_window_joins_and_later_opens_a_new_one() {
    let mut e = engine();
    let mut s = Seq(0);
    let mut out = Changes::default();
    let a = e
        .on_event(
            &alarm(s.next(), 15, EventCategory::Burglary, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    let b = e
        .on_event(
            &alarm(s.next(), 15, EventCategory::Burglary, false, t(50)),
            t(50),
            &mut out,
        )
        .unwrap();
    assert_eq!(a, b, "within 60 s");
    // The window runs from the last event, so a chain of events stays one.
    let c = e
        .on_event(
            &alarm(s.next(), 15, EventCategory::Burglary, false, t(100)),
            t(100),
            &mut out,
        )
        .unwrap();
    assert_eq!(a, c);
    assert_eq!(get(&e, &a).event_count, 3);
    // Another zone is another incident.
    let d = e
        .on_event(
            &alarm(s.next(), 4, EventCategory::Burglary, false, t(101)),
            t(101),
            &mut out,
        )
        .unwrap();
    assert_ne!(a, d);
    // Past the window from the last event: a new incident.
    let f = e
        .on_event(
            &alarm(s.next(), 15, EventCategory::Burglary, false, t(161)),
            t(161),
            &mut out,
        )
        .unwrap();
    assert_ne!(a, f);
    // Changes hold one write per incident; the first keeps prev None.
    assert_eq!(out.incidents().len(), 3);
    assert_eq!(out.links.len(), 5);
    let first = &out.incidents()[0];
    assert_eq!((first.prev_version, first.incident.version), (None, 3));
}

#[test]
fn a_more_urgent_event_raises_the_incident() {
    let mut e = engine();
    let mut out = Changes::default();
    let a = e
        .on_event(
            &alarm(1, 7, EventCategory::Burglary, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    e.on_event(
        &alarm(2, 7, EventCategory::Fire, false, t(10)),
        t(10),
        &mut out,
    );
    let inc = get(&e, &a);
    assert_eq!(inc.priority(), Priority::P1);
    assert_eq!(inc.category(), EventCategory::Fire);
    // The P1 deadline from now is sooner than the P2 one.
    assert_eq!(inc.ack_deadline, Some(t(40).into()));
}

#[test]
fn panel_alarm_and_mapped_camera_make_one_verified_incident() {
    let mut e = engine();
    let mut out = Changes::default();
    // Camera first: an unverified video detection in zone 15.
    let a = e
        .on_event(
            &camera(1, "cam-2", CameraEventState::Start, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    assert_eq!(get(&e, &a).priority(), Priority::P3);
    assert_eq!(get(&e, &a).subject, "zone:15");
    // The panel reports zone 15 within the verification window.
    let b = e
        .on_event(
            &alarm(2, 15, EventCategory::Burglary, false, t(20)),
            t(20),
            &mut out,
        )
        .unwrap();
    assert_eq!(a, b);
    let inc = get(&e, &a);
    assert!(inc.verified);
    assert_eq!(
        inc.priority(),
        Priority::P1,
        "burglary P2 raised by verification"
    );
    assert_eq!(inc.category(), EventCategory::Burglary);
    assert!(inc.title.ends_with("(verified)"), "{}", inc.title);
    assert_eq!(
        actions(&out),
        [
            AuditAction::Opened,
            AuditAction::EventAdded,
            AuditAction::Verified
        ]
    );
    // The audit line names the priority as people write it.
    assert_eq!(
        out.audit[2].detail,
        "panel alarm and camera detection agree; priority P1"
    );
    // Versions chain without gaps.
    for pair in out.audit.windows(2) {
        assert_eq!(pair[0].to_version, pair[1].from_version);
    }
}

#[test]
fn camera_and_alarm_too_far_apart_or_unmapped_do_not_verify() {
    let mut e = engine();
    let mut out = Changes::default();
    let a = e
        .on_event(
            &alarm(1, 15, EventCategory::Burglary, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    // Mapped camera, joins (within correlation) but 45 s > 30 s verification.
    let b = e
        .on_event(
            &camera(2, "cam-2", CameraEventState::OneShot, t(45)),
            t(45),
            &mut out,
        )
        .unwrap();
    assert_eq!(a, b);
    assert!(!get(&e, &a).verified);
    // An unmapped camera is its own subject.
    let c = e
        .on_event(
            &camera(3, "cam-9", CameraEventState::OneShot, t(46)),
            t(46),
            &mut out,
        )
        .unwrap();
    assert_ne!(a, c);
    assert_eq!(get(&e, &c).subject, "camera:cam-9");
    assert!(!get(&e, &c).verified);
}

#[test]
fn restore_is_recorded_but_the_alarm_still_needs_acknowledgment() {
    let mut e = engine();
    let mut out = Changes::default();
    let id = e
        .on_event(
            &alarm(1, 5, EventCategory::Burglary, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    // The restore comes long after the correlation window: it still finds
    // its incident.
    let r = e.on_event(
        &alarm(2, 5, EventCategory::Burglary, true, t(500)),
        t(500),
        &mut out,
    );
    assert_eq!(r.as_deref(), Some(id.as_str()));
    let inc = get(&e, &id);
    assert!(inc.restored);
    assert!(inc.active_conditions.is_empty());
    assert_eq!(
        inc.state(),
        IncidentState::Open,
        "restore does not acknowledge"
    );
    assert_eq!(inc.event_count, 2);
    assert_eq!(*actions(&out).last().unwrap(), AuditAction::Restored);
    // It still escalates when nobody acknowledges it.
    let mut later = Changes::default();
    e.tick(t(501), &mut later);
    assert_eq!(actions(&later), [AuditAction::AutoEscalated]);
    // A new alarm in the window after the restore makes it active again.
    e.on_event(
        &alarm(3, 5, EventCategory::Burglary, false, t(520)),
        t(520),
        &mut later,
    );
    assert!(!get(&e, &id).restored);
    // A restore without an incident is stored but changes nothing.
    let mut none = Changes::default();
    assert_eq!(
        e.on_event(
            &alarm(4, 6, EventCategory::Burglary, true, t(521)),
            t(521),
            &mut none
        ),
        None
    );
    assert!(none.is_empty());
}

#[test]
fn a_camera_stop_restores_its_condition() {
    let mut e = engine();
    let mut out = Changes::default();
    let id = e
        .on_event(
            &camera(1, "cam-9", CameraEventState::Start, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    assert_eq!(get(&e, &id).active_conditions, ["camera:cam-9:intrusion"]);
    e.on_event(
        &camera(2, "cam-9", CameraEventState::Stop, t(5)),
        t(5),
        &mut out,
    );
    assert!(get(&e, &id).restored);
}

#[test]
fn resolved_incident_reopens_on_a_new_alarm_within_the_reactivation_window() {
    let mut e = engine();
    let mut out = Changes::default();
    let id = e
        .on_event(
            &alarm(1, 2, EventCategory::Burglary, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    let v = get(&e, &id).version;
    let inc = e
        .apply(
            &id,
            None,
            v,
            &Action::Acknowledge {
                note: String::new(),
            },
            &analyst(),
            t(10),
            &mut out,
        )
        .unwrap();
    let inc = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::Resolve {
                disposition: Disposition::EquipmentFault,
                note: "detector 2 faulty".into(),
            },
            &analyst(),
            t(20),
            &mut out,
        )
        .unwrap();
    assert_eq!(inc.state(), IncidentState::Resolved);
    // 200 s after resolution (< 300 s): reopens.
    let mut out = Changes::default();
    let again = e
        .on_event(
            &alarm(2, 2, EventCategory::Burglary, false, t(220)),
            t(220),
            &mut out,
        )
        .unwrap();
    assert_eq!(again, id);
    let inc = get(&e, &id);
    assert_eq!(inc.state(), IncidentState::Open);
    assert_eq!(inc.reopen_count, 1);
    assert_eq!(inc.disposition(), Disposition::Unspecified);
    assert!(inc.acknowledged_by.is_empty());
    assert_eq!(inc.ack_deadline, Some(t(280).into()));
    assert_eq!(
        actions(&out),
        [AuditAction::Reopened, AuditAction::EventAdded]
    );

    // Resolve again, then an alarm after the reactivation window: new incident.
    let v = inc.version;
    let inc = e
        .apply(
            &id,
            None,
            v,
            &Action::Acknowledge {
                note: String::new(),
            },
            &analyst(),
            t(230),
            &mut out,
        )
        .unwrap();
    e.apply(
        &id,
        None,
        inc.version,
        &Action::Resolve {
            disposition: Disposition::Genuine,
            note: String::new(),
        },
        &analyst(),
        t(240),
        &mut out,
    )
    .unwrap();
    let mut out = Changes::default();
    let fresh = e
        .on_event(
            &alarm(3, 2, EventCategory::Burglary, false, t(541)),
            t(541),
            &mut out,
        )
        .unwrap();
    assert_ne!(fresh, id);
    // The old one is forgotten by the next tick (past reactivation).
    e.tick(t(600), &mut out);
    assert!(e.incident(&id).is_none());
}

#[test]
fn post_offline_opens_its_own_incident_and_online_restores_it() {
    let mut e = engine();
    let mut out = Changes::default();
    let id = e
        .on_status(&status(PostState::Offline, t(0)), t(0), &mut out)
        .unwrap();
    let inc = get(&e, &id);
    assert_eq!(inc.category(), EventCategory::Supervisory);
    assert_eq!(inc.subject, "post:offline");
    assert_eq!(out.statuses.len(), 1);
    // The same retained status again: nothing.
    let mut again = Changes::default();
    assert_eq!(
        e.on_status(&status(PostState::Offline, t(0)), t(5), &mut again),
        None
    );
    assert!(again.is_empty());
    // Online: restored, still needs acknowledgment.
    e.on_status(&status(PostState::Online, t(30)), t(30), &mut out);
    let inc = get(&e, &id);
    assert!(inc.restored);
    assert_eq!(inc.state(), IncidentState::Open);
}

#[test]
fn losing_panel_or_camera_supervision_opens_an_incident() {
    let mut e = engine();
    let mut out = Changes::default();
    let a = e
        .on_event(
            &health(1, HealthKind::PanelSupervision, HealthState::Fault, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    assert_eq!(get(&e, &a).subject, "supervision:panel:1234");
    assert_eq!(get(&e, &a).category(), EventCategory::Supervisory);
    let b = e
        .on_event(
            &health(2, HealthKind::CameraUnreachable, HealthState::Fault, t(1)),
            t(1),
            &mut out,
        )
        .unwrap();
    assert_ne!(a, b);
    e.on_event(
        &health(
            3,
            HealthKind::PanelSupervision,
            HealthState::Restored,
            t(90),
        ),
        t(90),
        &mut out,
    );
    assert!(get(&e, &a).restored);
    assert!(!get(&e, &b).restored);
}

#[test]
fn a_post_certificate_expiring_opens_one_low_priority_incident() {
    let mut e = engine();
    let mut out = Changes::default();
    // As the gateway sends it: category supervisory, at 30 then 14 days.
    let expiry = |seq, state, at| Event {
        category: EventCategory::Supervisory as i32,
        ..health(seq, HealthKind::CertificateExpiry, state, at)
    };
    let a = e
        .on_event(&expiry(1, HealthState::Fault, t(0)), t(0), &mut out)
        .unwrap();
    let inc = get(&e, &a);
    assert_eq!(inc.subject, "gateway:certificate");
    assert_eq!(inc.priority(), Priority::P4);
    let b = e
        .on_event(&expiry(2, HealthState::Fault, t(60)), t(60), &mut out)
        .unwrap();
    assert_eq!(a, b, "the next stage folds into the open incident");
    e.on_event(&expiry(3, HealthState::Restored, t(120)), t(120), &mut out);
    assert!(get(&e, &a).restored);
}

#[test]
fn test_mode_stores_but_opens_nothing_until_it_expires() {
    let mut e = engine();
    let mut out = Changes::default();
    // Asked for 2 h, over the 1 h cap: refused, naming the cap, nothing set.
    let refused = e
        .set_test_mode(
            POST,
            Duration::from_secs(7200),
            "panel service",
            &analyst(),
            t(0),
            &mut out,
        )
        .unwrap_err();
    let WorkflowError::InvalidArgument(why) = refused else {
        panic!("{refused:?}");
    };
    assert!(why.contains("at most 1h") && why.contains("2h"), "{why}");
    assert!(out.audit.is_empty() && out.test_modes.is_empty());
    // The cap itself is allowed.
    let until = e
        .set_test_mode(
            POST,
            Duration::from_secs(3600),
            "panel service",
            &analyst(),
            t(0),
            &mut out,
        )
        .unwrap();
    assert_eq!(until, Some(t(3600)));
    assert_eq!(actions(&out), [AuditAction::TestModeStarted]);
    assert_eq!(out.audit[0].post_id, POST);
    assert_eq!(out.audit[0].actor, "alice");
    assert_eq!(out.test_modes.len(), 1);

    let mut quiet = Changes::default();
    assert_eq!(
        e.on_event(
            &alarm(1, 1, EventCategory::Fire, false, t(10)),
            t(10),
            &mut quiet
        ),
        None
    );
    assert_eq!(
        e.on_status(&status(PostState::Offline, t(11)), t(11), &mut quiet),
        None
    );
    assert!(quiet.audit.is_empty() && quiet.incidents().is_empty());

    // Expiry is audited by the engine.
    let mut out = Changes::default();
    e.tick(t(3599), &mut out);
    assert!(out.audit.is_empty());
    e.tick(t(3600), &mut out);
    assert_eq!(actions(&out), [AuditAction::TestModeEnded]);
    assert_eq!(out.audit[0].actor, SYSTEM);
    assert_eq!(out.test_modes[0].until, None);
    assert!(
        e.on_event(
            &alarm(2, 1, EventCategory::Fire, false, t(3601)),
            t(3601),
            &mut out
        )
        .is_some()
    );

    // Ending test mode by hand.
    let mut out = Changes::default();
    e.set_test_mode(
        POST,
        Duration::from_secs(60),
        "",
        &analyst(),
        t(4000),
        &mut out,
    )
    .unwrap();
    e.set_test_mode(POST, Duration::ZERO, "done", &analyst(), t(4010), &mut out)
        .unwrap();
    assert_eq!(
        actions(&out),
        [AuditAction::TestModeStarted, AuditAction::TestModeEnded]
    );
    assert!(e.test_mode_until(POST, t(4011)).is_none());
}

#[test]
fn a_flooding_source_folds_into_one_incident_but_life_safety_never_folds() {
    let mut e = engine();
    let mut out = Changes::default();
    let mut ids = Vec::new();
    // Ten zones of one panel in 10 s: 3 open (the limit), the rest fold.
    for zone in 1..=10u32 {
        let at = t(u64::from(zone));
        ids.push(
            e.on_event(
                &alarm(u64::from(zone), zone, EventCategory::Burglary, false, at),
                at,
                &mut out,
            )
            .unwrap(),
        );
    }
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 4, "3 incidents + 1 flood incident");
    let flood = get(&e, &ids[9]);
    assert!(flood.flood_folded);
    assert_eq!(flood.subject, "flood:1234");
    assert_eq!(flood.event_count, 7);
    // A fire from the flooding panel still gets its own incident.
    let fire = e
        .on_event(
            &alarm(11, 11, EventCategory::Fire, false, t(11)),
            t(11),
            &mut out,
        )
        .unwrap();
    assert!(!get(&e, &fire).flood_folded);
    assert_eq!(get(&e, &fire).priority(), Priority::P1);
    // Another source of the same post is not affected.
    let cam = e
        .on_event(
            &camera(12, "cam-9", CameraEventState::OneShot, t(12)),
            t(12),
            &mut out,
        )
        .unwrap();
    assert!(!get(&e, &cam).flood_folded);
    // After the flood window the source may open incidents again.
    let later = e
        .on_event(
            &alarm(13, 20, EventCategory::Burglary, false, t(200)),
            t(200),
            &mut out,
        )
        .unwrap();
    assert!(!get(&e, &later).flood_folded);
}

#[test]
fn unacknowledged_incidents_escalate_at_each_deadline_up_to_the_limit() {
    let mut e = engine();
    let mut out = Changes::default();
    let id = e
        .on_event(
            &alarm(1, 1, EventCategory::Burglary, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    let mut out = Changes::default();
    e.tick(t(59), &mut out);
    assert!(out.is_empty(), "deadline is 60 s");
    e.tick(t(60), &mut out);
    assert_eq!(actions(&out), [AuditAction::AutoEscalated]);
    let inc = get(&e, &id);
    assert_eq!(inc.escalation_level, 1);
    assert_eq!(inc.ack_deadline, Some(t(120).into()));
    e.tick(t(119), &mut out);
    e.tick(t(120), &mut out);
    assert_eq!(get(&e, &id).escalation_level, 2);
    // max_escalation_level = 2: no further automatic escalation.
    let mut out = Changes::default();
    e.tick(t(1000), &mut out);
    assert!(out.is_empty());

    // An acknowledged incident never escalates by itself.
    let id2 = e
        .on_event(
            &alarm(2, 2, EventCategory::Burglary, false, t(1000)),
            t(1000),
            &mut out,
        )
        .unwrap();
    let v = get(&e, &id2).version;
    e.apply(
        &id2,
        None,
        v,
        &Action::Acknowledge {
            note: String::new(),
        },
        &analyst(),
        t(1001),
        &mut out,
    )
    .unwrap();
    let mut out = Changes::default();
    e.tick(t(5000), &mut out);
    assert!(out.is_empty());
}

#[test]
fn workflow_uses_compare_and_set_and_audits_every_step() {
    let mut e = engine();
    let mut out = Changes::default();
    let id = e
        .on_event(
            &alarm(1, 1, EventCategory::Burglary, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    let alice = analyst();
    let bob = Actor::new("bob", "supervisor");
    let mut out = Changes::default();

    // Stale version: refused with the current incident.
    let err = e
        .apply(
            &id,
            None,
            0,
            &Action::Acknowledge {
                note: String::new(),
            },
            &alice,
            t(1),
            &mut out,
        )
        .unwrap_err();
    match &err {
        WorkflowError::VersionMismatch { current } => assert_eq!(current.version, 1),
        other => panic!("{other:?}"),
    }
    // Resolve before acknowledging: invalid.
    let err = e
        .apply(
            &id,
            None,
            1,
            &Action::Resolve {
                disposition: Disposition::Genuine,
                note: String::new(),
            },
            &alice,
            t(1),
            &mut out,
        )
        .unwrap_err();
    assert!(
        matches!(err, WorkflowError::InvalidTransition { .. }),
        "{err}"
    );
    assert!(out.is_empty(), "refused actions change nothing");

    let inc = e
        .apply(
            &id,
            None,
            1,
            &Action::Acknowledge {
                note: "looking".into(),
            },
            &alice,
            t(2),
            &mut out,
        )
        .unwrap();
    assert_eq!(inc.state(), IncidentState::Acknowledged);
    assert_eq!(inc.acknowledged_by, "alice");
    assert_eq!(inc.ack_deadline, None);
    assert_eq!(out.notes.len(), 1);
    let err = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::Acknowledge {
                note: String::new(),
            },
            &bob,
            t(3),
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(err, WorkflowError::InvalidTransition { .. }));

    let inc = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::Assign {
                assignee: String::new(),
            },
            &bob,
            t(3),
            &mut out,
        )
        .unwrap();
    assert_eq!(inc.assignee, "bob", "empty assignee = take");
    let err = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::Assign {
                assignee: "Not Valid".into(),
            },
            &bob,
            t(3),
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(err, WorkflowError::InvalidArgument(_)));
    let inc = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::Escalate {
                reason: "needs police".into(),
            },
            &bob,
            t(4),
            &mut out,
        )
        .unwrap();
    assert_eq!(inc.escalation_level, 1);
    let err = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::AddNote { text: "  ".into() },
            &bob,
            t(5),
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(err, WorkflowError::InvalidArgument(_)));
    let inc = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::AddNote {
                text: "police on site".into(),
            },
            &bob,
            t(5),
            &mut out,
        )
        .unwrap();
    let err = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::Resolve {
                disposition: Disposition::Unspecified,
                note: String::new(),
            },
            &alice,
            t(6),
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(err, WorkflowError::InvalidArgument(_)));
    let inc = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::Resolve {
                disposition: Disposition::Genuine,
                note: "intruder detained".into(),
            },
            &alice,
            t(6),
            &mut out,
        )
        .unwrap();
    assert_eq!(inc.state(), IncidentState::Resolved);
    assert_eq!(inc.resolved_by, "alice");
    let err = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::Escalate {
                reason: String::new(),
            },
            &bob,
            t(7),
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(err, WorkflowError::InvalidTransition { .. }));
    let inc = e
        .apply(
            &id,
            None,
            inc.version,
            &Action::Reopen {
                reason: "not over".into(),
            },
            &bob,
            t(8),
            &mut out,
        )
        .unwrap();
    assert_eq!(inc.state(), IncidentState::Open);
    assert_eq!(inc.reopen_count, 1);

    assert_eq!(
        actions(&out),
        [
            AuditAction::Acknowledged,
            AuditAction::Assigned,
            AuditAction::Escalated,
            AuditAction::NoteAdded,
            AuditAction::Resolved,
            AuditAction::Reopened,
        ]
    );
    let who: Vec<_> = out.audit.iter().map(|a| a.actor.as_str()).collect();
    assert_eq!(who, ["alice", "bob", "bob", "bob", "alice", "bob"]);
    assert_eq!(
        out.audit[4].detail,
        "disposition GENUINE; note: intruder detained"
    );
    for pair in out.audit.windows(2) {
        assert_eq!(pair[0].to_version, pair[1].from_version);
    }
    assert_eq!(out.audit[0].from_version, 1);
    assert_eq!(out.incidents().len(), 1);
    assert_eq!(out.incidents()[0].prev_version, Some(1));
    assert_eq!(out.notes.len(), 3);

    let err = e
        .apply(
            "inc-999999",
            None,
            1,
            &Action::AddNote { text: "x".into() },
            &bob,
            t(9),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(err, WorkflowError::NotFound("inc-999999".into()));
}

#[test]
fn a_long_resolved_incident_is_taken_from_the_store_and_can_be_reopened() {
    let mut e = engine();
    let stored = Incident {
        id: crate::store::incident_id(42),
        post_id: POST.into(),
        state: IncidentState::Resolved as i32,
        priority: Priority::P2 as i32,
        subject: "zone:9".into(),
        version: 7,
        ..Default::default()
    };
    let mut out = Changes::default();
    let inc = e
        .apply(
            &stored.id,
            Some(stored.clone()),
            7,
            &Action::Reopen {
                reason: "re-check".into(),
            },
            &analyst(),
            t(0),
            &mut out,
        )
        .unwrap();
    assert_eq!((inc.state(), inc.version), (IncidentState::Open, 8));
    // Now it is in memory and the zone's next alarm joins it.
    let joined = e.on_event(
        &alarm(1, 9, EventCategory::Burglary, false, t(0)),
        t(0),
        &mut out,
    );
    // last_event_at is unknown (epoch), so the window has passed: new one.
    assert_ne!(joined.as_deref(), Some(stored.id.as_str()));
}

#[test]
fn engine_resumes_from_a_snapshot() {
    let mut e = engine();
    let mut out = Changes::default();
    let id = e
        .on_event(
            &alarm(1, 15, EventCategory::Burglary, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    e.set_test_mode(
        "p-020",
        Duration::from_secs(600),
        "",
        &analyst(),
        t(0),
        &mut out,
    )
    .unwrap();
    let snapshot = EngineSnapshot {
        incidents: vec![get(&e, &id)],
        test_modes: vec![("p-020".into(), t(600))],
        last_incident_number: 1,
        statuses: Vec::new(),
        ..Default::default()
    };
    let mut e = Engine::new(cfg(), snapshot);
    let mut out = Changes::default();
    let again = e
        .on_event(
            &alarm(2, 15, EventCategory::Burglary, false, t(30)),
            t(30),
            &mut out,
        )
        .unwrap();
    assert_eq!(again, id);
    assert!(e.test_mode_until("p-020", t(10)).is_some());
    let other = e
        .on_event(
            &alarm(3, 1, EventCategory::Burglary, false, t(31)),
            t(31),
            &mut out,
        )
        .unwrap();
    assert_eq!(other, crate::store::incident_id(2), "numbers continue");
}

#[test]
fn config_validation_names_the_field() {
    let mut c = cfg();
    c.procedures.insert("firee".into(), "x".into());
    let err = c.validate().unwrap_err();
    assert_eq!(err.field, "procedures.firee");
    let mut c = cfg();
    c.flood_limit = 0;
    assert_eq!(c.validate().unwrap_err().field, "flood_limit");
    let mut c = cfg();
    c.zone_cameras[0].zone = 0;
    assert_eq!(c.validate().unwrap_err().field, "zone_cameras.zone");
}

fn alarm_from(seq: u64, device: &str, category: EventCategory, at: SystemTime) -> Event {
    // Each device its own panel account: every alarm has its own subject.
    let mut ev = alarm(seq, 0, category, false, at);
    ev.source = Some(Source {
        device_id: device.into(),
        kind: SourceKind::AlarmPanel as i32,
    });
    ev.body = Some(Body::Alarm(AlarmSignal {
        account: device.into(),
        ..Default::default()
    }));
    ev
}

#[test]
fn many_devices_of_one_post_fold_per_category_then_per_post() {
    let mut e = Engine::new(
        EngineConfig {
            flood_post_category_limit: 5,
            flood_post_limit: 8,
            ..cfg()
        },
        EngineSnapshot::default(),
    );
    let mut out = Changes::default();
    // 2,000 burglary alarms, each from its own device, within the window.
    let mut ids = std::collections::BTreeSet::new();
    for n in 0..2000u64 {
        let at = t(n / 100);
        let ev = alarm_from(n + 1, &format!("dev-{n}"), EventCategory::Burglary, at);
        ids.insert(e.on_event(&ev, at, &mut out).unwrap());
    }
    assert_eq!(ids.len(), 6, "5 incidents + 1 per-category flood incident");
    let folded: Vec<_> = ids.iter().filter(|id| get(&e, id).flood_folded).collect();
    assert_eq!(folded.len(), 1);
    let flood = get(&e, folded[0]);
    assert_eq!(flood.subject, "flood:category:burglary");
    assert_eq!(flood.event_count, 1995);
    // Another category from fresh devices opens until the post's limit (8
    // openings in all), then folds per post.
    let mut more = std::collections::BTreeSet::new();
    for n in 0..10u64 {
        let at = t(30);
        let ev = alarm_from(3000 + n, &format!("cam-{n}"), EventCategory::Tamper, at);
        more.insert(e.on_event(&ev, at, &mut out).unwrap());
    }
    assert_eq!(more.len(), 4, "3 incidents + 1 per-post flood incident");
    let post_flood: Vec<_> = more.iter().filter(|id| get(&e, id).flood_folded).collect();
    assert_eq!(get(&e, post_flood[0]).subject, "flood:post");
    // Life safety still opens its own incident from a flooding post.
    let fire = alarm_from(4000, "dev-x", EventCategory::Fire, t(31));
    let fire = e.on_event(&fire, t(31), &mut out).unwrap();
    assert!(!get(&e, &fire).flood_folded);
    // After the window, the post may open incidents again.
    let later = alarm_from(5000, "dev-y", EventCategory::Burglary, t(200));
    let later = e.on_event(&later, t(200), &mut out).unwrap();
    assert!(!get(&e, &later).flood_folded);
}

#[test]
fn default_flood_limits_keep_two_thousand_devices_to_a_handful_of_incidents() {
    let mut e = Engine::new(
        EngineConfig {
            flood_window_secs: 60,
            ..EngineConfig::default()
        },
        EngineSnapshot::default(),
    );
    let mut out = Changes::default();
    let mut ids = std::collections::BTreeSet::new();
    for n in 0..2000u64 {
        let at = t(n / 100);
        let ev = alarm_from(n + 1, &format!("dev-{n}"), EventCategory::Burglary, at);
        ids.insert(e.on_event(&ev, at, &mut out).unwrap());
    }
    let cfg = EngineConfig::default();
    assert_eq!(ids.len(), cfg.flood_post_category_limit as usize + 1);
}

#[test]
fn a_plan_step_is_marked_with_its_number_and_a_skip_needs_a_reason() {
    let mut e = engine();
    let mut out = Changes::default();
    let id = e
        .on_event(
            &alarm(1, 3, EventCategory::Burglary, false, t(0)),
            t(1),
            &mut out,
        )
        .unwrap();
    let step = |step, skipped, note: &str| Action::Step {
        step,
        skipped,
        summary: "call guard: ask for a patrol".into(),
        note: note.into(),
    };
    let mut out = Changes::default();
    for (number, note) in [(0, "x"), (2, "  ")] {
        let err = e
            .apply(
                &id,
                None,
                1,
                &step(number, true, note),
                &analyst(),
                t(2),
                &mut out,
            )
            .unwrap_err();
        assert!(matches!(err, WorkflowError::InvalidArgument(_)), "{err:?}");
    }
    assert!(out.is_empty(), "a refused mark changes nothing");
    let inc = e
        .apply(
            &id,
            None,
            1,
            &step(2, true, "no answer"),
            &analyst(),
            t(2),
            &mut out,
        )
        .unwrap();
    assert_eq!(inc.version, 2);
    // Marking a step does not acknowledge the incident.
    assert_eq!(inc.state(), IncidentState::Open);
    assert_eq!(actions(&out), [AuditAction::StepSkipped]);
    assert_eq!(out.audit[0].step, 2);
    assert_eq!(
        out.audit[0].detail,
        "step 2 skipped: call guard: ask for a patrol; note: no answer"
    );
    assert_eq!(out.notes.len(), 1);
    let inc = e
        .apply(
            &id,
            None,
            2,
            &step(1, false, ""),
            &analyst(),
            t(3),
            &mut out,
        )
        .unwrap();
    assert_eq!(out.audit[1].action(), AuditAction::StepDone);
    assert_eq!(out.audit[1].step, 1);
    assert_eq!(out.notes.len(), 1, "no note for a done step without one");
    assert_eq!(inc.version, 3);
}

#[test]
fn an_alarm_not_restored_in_time_escalates_once_and_says_why() {
    let mut c = cfg();
    c.restore_minutes.insert("fire".into(), 30);
    c.restore_minutes.insert("burglary".into(), 0);
    c.restore_minutes.insert("default".into(), 120);
    c.validate().unwrap();
    let mut e = Engine::new(c, EngineSnapshot::default());
    let mut out = Changes::default();
    let fire = e
        .on_event(
            &alarm(1, 3, EventCategory::Fire, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    let burglary = e
        .on_event(
            &alarm(2, 4, EventCategory::Burglary, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    let power = e
        .on_event(
            &alarm(3, 0, EventCategory::Power, false, t(0)),
            t(0),
            &mut out,
        )
        .unwrap();
    // Acknowledged, so that only the restore timer can escalate them.
    for id in [&fire, &burglary, &power] {
        let v = get(&e, id).version;
        e.apply(
            id,
            None,
            v,
            &Action::Acknowledge {
                note: String::new(),
            },
            &Actor::system(),
            t(1),
            &mut out,
        )
        .unwrap();
    }
    let level = |e: &Engine, id: &str| get(e, id).escalation_level;
    let mut out = Changes::default();
    let mut now = t(2);
    while now < t(30 * 60 - 1) {
        e.tick(now, &mut out);
        now += Duration::from_secs(10);
    }
    assert_eq!(level(&e, &fire), 0);
    e.tick(t(30 * 60), &mut out);
    assert_eq!(level(&e, &fire), 1);
    assert!(get(&e, &fire).restore_overdue);
    let why: Vec<&str> = out
        .audit
        .iter()
        .filter(|a| a.incident_id == fire && a.action == AuditAction::AutoEscalated as i32)
        .map(|a| a.detail.as_str())
        .collect();
    assert_eq!(why.len(), 1);
    assert!(
        why[0].starts_with("not restored within 30 minutes"),
        "{why:?}"
    );
    // Once only, however long it stays unrestored.
    let mut out = Changes::default();
    while now < t(119 * 60) {
        e.tick(now, &mut out);
        now += Duration::from_secs(60);
    }
    assert_eq!(level(&e, &fire), 1);
    // Burglary has no timer (0); power falls under the default (120 min),
    // unless it restores first.
    e.on_event(
        &alarm(4, 0, EventCategory::Power, true, t(119 * 60)),
        t(119 * 60),
        &mut out,
    );
    e.tick(t(121 * 60), &mut out);
    assert_eq!(level(&e, &burglary), 0);
    assert!(!get(&e, &burglary).restore_overdue);
    assert_eq!(level(&e, &power), 0, "restored in time");
}

#[test]
fn restore_timers_name_categories() {
    let mut c = cfg();
    c.restore_minutes.insert("fyre".into(), 30);
    let e = c.validate().unwrap_err();
    assert_eq!(e.field, "restore_minutes.fyre");
}

#[test]
fn emergency_mode_logs_less_urgent_incidents_and_ends_by_itself() {
    let mut e = engine();
    let mut out = Changes::default();
    let sup = Actor::new("sam", "supervisor");
    // A reason and a bounded duration are required.
    let err = e
        .set_emergency(Duration::from_secs(600), &[], " ", &sup, t(0), &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("needs a reason"), "{err}");
    let cap = e.config().max_emergency_secs;
    let err = e
        .set_emergency(
            Duration::from_secs(cap + 1),
            &[],
            "storm",
            &sup,
            t(0),
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("max_emergency_secs"), "{err}");
    assert!(out.is_empty());

    let mode = e
        .set_emergency(
            Duration::from_secs(3600),
            &[],
            "storm",
            &sup,
            t(0),
            &mut out,
        )
        .unwrap()
        .unwrap();
    assert_eq!(mode.keep_priority, Priority::P2 as i32);
    assert_eq!(out.emergency, Some(Some(mode)));
    assert_eq!(out.audit[0].action(), AuditAction::EmergencyStarted);
    assert_eq!(out.audit[0].post_id, "");
    assert!(
        out.audit[0].detail.contains("over the whole region"),
        "{}",
        out.audit[0].detail
    );

    // P3 (power) is logged: no deadline, never escalates; P1 (fire) and
    // P2 (burglary) are queued as usual.
    let mut out = Changes::default();
    let power = e
        .on_event(
            &alarm(1, 0, EventCategory::Power, false, t(10)),
            t(10),
            &mut out,
        )
        .unwrap();
    let fire = e
        .on_event(
            &alarm(2, 3, EventCategory::Fire, false, t(10)),
            t(10),
            &mut out,
        )
        .unwrap();
    let burglary = e
        .on_event(
            &alarm(3, 4, EventCategory::Burglary, false, t(10)),
            t(10),
            &mut out,
        )
        .unwrap();
    assert!(get(&e, &power).logged && get(&e, &power).ack_deadline.is_none());
    assert!(!get(&e, &fire).logged && get(&e, &fire).ack_deadline.is_some());
    assert!(!get(&e, &burglary).logged);
    let mut now = t(11);
    while now < t(3000) {
        e.tick(now, &mut out);
        now += Duration::from_secs(10);
    }
    assert_eq!(get(&e, &power).escalation_level, 0);
    assert!(get(&e, &fire).escalation_level > 0);
    assert!(e.emergency(t(3000)).is_some());

    // It ends by itself at its time, audited; what was logged stays so.
    let mut out = Changes::default();
    e.tick(t(3600), &mut out);
    assert!(e.emergency(t(3600)).is_none());
    assert_eq!(out.emergency, Some(None));
    assert!(
        out.audit
            .iter()
            .any(|a| a.action() == AuditAction::EmergencyEnded && a.detail.contains("time was up"))
    );
    assert!(get(&e, &power).logged);
    // Resolved and reactivated by a new alarm: still logged, no deadline.
    let mut out = Changes::default();
    let sam = Actor::new("sam", "supervisor");
    let v = get(&e, &power).version;
    e.apply(
        &power,
        None,
        v,
        &Action::Acknowledge {
            note: String::new(),
        },
        &sam,
        t(3601),
        &mut out,
    )
    .unwrap();
    let v = get(&e, &power).version;
    let resolve = Action::Resolve {
        disposition: Disposition::Genuine,
        note: "generator".into(),
    };
    e.apply(&power, None, v, &resolve, &sam, t(3602), &mut out)
        .unwrap();
    e.on_event(
        &alarm(5, 0, EventCategory::Power, false, t(3610)),
        t(3610),
        &mut out,
    );
    assert_eq!(get(&e, &power).state(), IncidentState::Open);
    assert!(get(&e, &power).logged && get(&e, &power).ack_deadline.is_none());
    let mut out = Changes::default();
    let later = e
        .on_event(
            &alarm(4, 0, EventCategory::Trouble, false, t(3700)),
            t(3700),
            &mut out,
        )
        .unwrap();
    assert!(!get(&e, &later).logged);
}

#[test]
fn emergency_mode_over_some_posts_survives_a_restart_and_ends_early() {
    let mut e = engine();
    let mut out = Changes::default();
    let sup = Actor::new("sam", "supervisor");
    e.set_emergency(
        Duration::from_secs(7200),
        &["p-099".to_owned()],
        "flood at the river",
        &sup,
        t(0),
        &mut out,
    )
    .unwrap();
    // Another post: not covered.
    let id = e
        .on_event(
            &alarm(1, 0, EventCategory::Power, false, t(5)),
            t(5),
            &mut out,
        )
        .unwrap();
    assert!(!get(&e, &id).logged);
    // A restart from what was written keeps the mode.
    let mode = out.emergency.clone().unwrap();
    let mut e = Engine::new(
        cfg(),
        EngineSnapshot {
            emergency: mode,
            last_incident_number: 1,
            ..Default::default()
        },
    );
    let mut covered = alarm(2, 0, EventCategory::Power, false, t(10));
    covered.post_id = "p-099".into();
    let mut out = Changes::default();
    let id = e.on_event(&covered, t(10), &mut out).unwrap();
    assert!(get(&e, &id).logged);
    // Ended early by a supervisor.
    let mut out = Changes::default();
    assert_eq!(
        e.set_emergency(Duration::ZERO, &[], "river down", &sup, t(20), &mut out),
        Ok(None)
    );
    assert_eq!(out.audit[0].action(), AuditAction::EmergencyEnded);
    assert!(
        out.audit[0]
            .detail
            .contains("ended early (posts p-099): river down")
    );
    assert!(e.emergency(t(21)).is_none());
}

#[test]
fn a_logged_incident_that_becomes_urgent_enough_is_queued_again() {
    let mut e = engine();
    let mut out = Changes::default();
    let sup = Actor::new("sam", "supervisor");
    e.set_emergency(
        Duration::from_secs(3600),
        &[],
        "storm",
        &sup,
        t(0),
        &mut out,
    )
    .unwrap();
    // An environmental (P3) alarm in zone 15 is logged...
    let id = e
        .on_event(
            &alarm(1, 15, EventCategory::Environmental, false, t(10)),
            t(10),
            &mut out,
        )
        .unwrap();
    assert!(get(&e, &id).logged);
    // ...until cam-2 (zone 15) verifies it: P2, queued with a deadline.
    e.on_event(
        &camera(2, "cam-2", CameraEventState::Start, t(15)),
        t(15),
        &mut out,
    );
    let inc = get(&e, &id);
    assert!(inc.verified);
    assert_eq!(inc.priority(), Priority::P2);
    assert!(!inc.logged && inc.ack_deadline.is_some(), "{inc:#?}");
}
