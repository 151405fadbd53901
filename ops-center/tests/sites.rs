//! Post records and action plans through the gRPC API over real mutual TLS
//! on 127.0.0.1:0 (`vigil_tests::center`): import all or nothing, with
//! every change audited; export; secrets only for the roles that may see
//! them; the plan that applies to an incident.

use tonic::Code;
use vigil_ops::{site, store::Store};
use vigil_pki::Role;
use vigil_proto::v1::{
    AuditAction, ExportSiteRequest, GetIncidentPlanRequest, GetPostRecordRequest,
    ImportSiteRequest, ListIncidentsRequest, MarkStepRequest, StepKind, StepOutcome,
};
use vigil_tests::center::{Center, alarm, now_secs};

const SITE: &str = r#"
[[post]]
id = "p-1"
name = "Embassy Vienna"
address = "Ringstrasse 1"
timezone = "Europe/Vienna"
duress_words = ["bluebird"]
passcodes = ["4711", "0815"]
[[post.contact]]
role = "guard"
name = "Gate desk"
phone = "+43 1 555 0100"
[[post.contact]]
role = "police"
name = "Station Innere Stadt"
phone = "133"
[[post.zone]]
number = 1
name = "Front door"

[[post]]
id = "p-2"
name = "Consulate Graz"
timezone = "Europe/Vienna"

[[plan]]
category = "burglary"
steps = ["Check the zone list"]

[[plan]]
category = "burglary"
post = "p-1"
steps = [
  { kind = "verify_cameras", text = "Look at the front door camera" },
  { kind = "call_contact", role = "guard", text = "Ask the gate for a patrol" },
  { kind = "dispatch", text = "Police if not cleared in 5 minutes" },
]

[[plan]]
category = "duress"
steps = [{ kind = "call_contact", role = "police", text = "Police at once" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_document_is_imported_whole_audited_and_served_by_role() {
    let ops = Center::start().await;
    let mut admin = ops.client(Role::Admin, "ada").await;
    let mut analyst = ops.client(Role::Analyst, "alice").await;
    let mut supervisor = ops.client(Role::Supervisor, "sam").await;
    let doc = site::parse(SITE).unwrap();

    let changes = admin
        .import_site(ImportSiteRequest {
            site: Some(doc.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(
        changes,
        [
            "post p-1 added",
            "post p-2 added",
            "plan burglary (every post) added",
            "plan burglary for p-1 added",
            "plan duress (every post) added",
        ]
    );
    let exported = admin
        .export_site(ExportSiteRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exported, doc);
    // The same document again changes nothing.
    let again = supervisor
        .import_site(ImportSiteRequest {
            site: Some(doc.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.changes.is_empty(), "{:?}", again.changes);

    // A bad document is refused whole, every problem named; nothing changes.
    let mut bad = doc.clone();
    bad.posts[0].name = "Embassy Vienna (new)".into();
    bad.posts[1].timezone = "+01:00".into();
    bad.plans[2].steps[0].contact_role = "premises".into();
    let refused = admin
        .import_site(ImportSiteRequest { site: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let m = refused.message();
    assert!(m.contains("[[post]] #2, timezone"), "{m}");
    assert!(m.contains("[[plan]] #3 step #1, role"), "{m}");
    assert!(m.contains("never call the premises"), "{m}");
    let exported = admin
        .export_site(ExportSiteRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exported, doc);

    // An analyst sees that secrets exist, not what they are.
    let record = analyst
        .get_post_record(GetPostRecordRequest {
            post_id: "p-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(record.secrets_withheld);
    assert!(record.duress_words.is_empty() && record.passcodes.is_empty());
    assert_eq!((record.duress_word_count, record.passcode_count), (1, 2));
    assert_eq!(record.contacts.len(), 2);
    let record = supervisor
        .get_post_record(GetPostRecordRequest {
            post_id: "p-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!record.secrets_withheld);
    assert_eq!(record.duress_words, ["bluebird"]);
    let missing = analyst
        .get_post_record(GetPostRecordRequest {
            post_id: "p-9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // A burglary at p-1 gets p-1's own plan, at p-2 the plan of every post.
    ops.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    ops.submit(vec![alarm("p-2", 1, 1, now_secs())]).await;
    let incidents = analyst
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert_eq!(incidents.len(), 2);
    for inc in &incidents {
        let plan = analyst
            .get_incident_plan(GetIncidentPlanRequest {
                incident_id: inc.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(plan.category, "burglary");
        let steps = plan.plan.expect("a plan applies").steps;
        let post = plan.post.expect("the post has a record");
        assert_eq!(post.post_id, inc.post_id);
        assert!(post.secrets_withheld);
        if inc.post_id == "p-1" {
            assert_eq!(steps.len(), 3);
            assert_eq!(steps[1].kind(), StepKind::CallContact);
            assert_eq!(steps[1].contact_role, "guard");
        } else {
            assert_eq!(steps.len(), 1);
            assert_eq!(steps[0].text, "Check the zone list");
        }
    }

    // A change is audited: who, when, what; never a secret's value.
    let mut changed = doc.clone();
    changed.posts[0].passcodes = vec!["9999".into()];
    changed.posts.remove(1);
    let changes = supervisor
        .import_site(ImportSiteRequest {
            site: Some(changed),
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(changes, ["post p-1 changed: passcodes", "post p-2 removed"]);
    let store = ops.store();
    let audit = store.post_audit("p-1").unwrap();
    let details: Vec<(&str, &str, &str)> = audit
        .iter()
        .filter(|a| a.action() == AuditAction::SiteChanged)
        .map(|a| (a.actor.as_str(), a.actor_role.as_str(), a.detail.as_str()))
        .collect();
    assert_eq!(
        details,
        [
            ("ada", "admin", "post p-1 added"),
            ("ada", "admin", "plan burglary for p-1 added"),
            ("sam", "supervisor", "post p-1 changed: passcodes"),
        ]
    );
    assert!(audit.iter().all(|a| a.at.is_some()));
    assert!(!format!("{audit:?}").contains("9999"));
    assert_eq!(store.post_audit("p-2").unwrap().len(), 2);
    ops.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_steps_are_checked_off_or_skipped_and_audited() {
    let ops = Center::start().await;
    let mut admin = ops.client(Role::Admin, "ada").await;
    let mut alice = ops.client(Role::Analyst, "alice").await;
    admin
        .import_site(ImportSiteRequest {
            site: Some(site::parse(SITE).unwrap()),
        })
        .await
        .unwrap();
    ops.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let inc = alice
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents
        .remove(0);
    let mark = |version, step, outcome: StepOutcome, note: &str| MarkStepRequest {
        incident_id: inc.id.clone(),
        expected_version: version,
        step,
        outcome: outcome as i32,
        note: note.into(),
        step_text: String::new(),
    };

    let after = alice
        .mark_step(mark(inc.version, 1, StepOutcome::Done, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.version, inc.version + 1);
    // A skip must say why.
    let e = alice
        .mark_step(mark(after.version, 2, StepOutcome::Skipped, " "))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let after = alice
        .mark_step(mark(
            after.version,
            2,
            StepOutcome::Skipped,
            "the gate does not answer",
        ))
        .await
        .unwrap()
        .into_inner();
    // Only steps of the plan; only the version seen; a known outcome.
    let e = alice
        .mark_step(mark(after.version, 4, StepOutcome::Done, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("steps 1 to 3"), "{}", e.message());
    let e = alice
        .mark_step(mark(inc.version, 3, StepOutcome::Done, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = alice
        .mark_step(mark(after.version, 3, StepOutcome::Unspecified, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let plan = alice
        .get_incident_plan(GetIncidentPlanRequest {
            incident_id: inc.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let progress: Vec<(u32, StepOutcome, &str, &str)> = plan
        .progress
        .iter()
        .map(|p| (p.step, p.outcome(), p.actor.as_str(), p.detail.as_str()))
        .collect();
    assert_eq!(
        progress,
        [
            (
                1,
                StepOutcome::Done,
                "alice",
                "step 1 done: verify cameras: Look at the front door camera"
            ),
            (
                2,
                StepOutcome::Skipped,
                "alice",
                "step 2 skipped: call guard: Ask the gate for a patrol; note: the gate does not answer"
            ),
        ]
    );
    // Each mark is in the incident's audit trail, with its step, and the
    // reason for the skip is a note.
    let store = ops.store();
    let audit = store.audit(&inc.id).unwrap();
    let steps: Vec<(AuditAction, u32)> = audit
        .iter()
        .filter(|a| matches!(a.action(), AuditAction::StepDone | AuditAction::StepSkipped))
        .map(|a| (a.action(), a.step))
        .collect();
    assert_eq!(
        steps,
        [(AuditAction::StepDone, 1), (AuditAction::StepSkipped, 2)]
    );
    let notes = store.notes(&inc.id).unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].text, "the gate does not answer");
    ops.stop().await;
}

/// A plan changed after steps were marked: the marks keep the steps they
/// were made on (shown apart when the plan's step of that number now says
/// something else), and a mark sent for a step as the caller saw it before
/// the change is refused rather than put on another step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_keep_their_steps_when_the_plan_changes() {
    let ops = Center::start().await;
    let mut admin = ops.client(Role::Admin, "ada").await;
    let mut alice = ops.client(Role::Analyst, "alice").await;
    let import = |text: &str| ImportSiteRequest {
        site: Some(site::parse(text).unwrap()),
    };
    admin.import_site(import(SITE)).await.unwrap();
    ops.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let inc = alice
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents
        .remove(0);
    let mark = |version, step, text: &str| MarkStepRequest {
        incident_id: inc.id.clone(),
        expected_version: version,
        step,
        outcome: StepOutcome::Done as i32,
        note: String::new(),
        step_text: text.into(),
    };
    let after = alice
        .mark_step(mark(inc.version, 1, "Look at the front door camera"))
        .await
        .unwrap()
        .into_inner();
    let after = alice
        .mark_step(mark(after.version, 3, ""))
        .await
        .unwrap()
        .into_inner();

    // The post's plan now starts with a new step: the old steps 1 and 2
    // move down one.
    let changed = SITE.replace(
        "  { kind = \"verify_cameras\", text = \"Look at the front door camera\" },",
        "  \"Read the post's standing orders\",\n  { kind = \"verify_cameras\", text = \"Look at the front door camera\" },",
    );
    assert_ne!(changed, SITE);
    admin.import_site(import(&changed)).await.unwrap();

    let plan = alice
        .get_incident_plan(GetIncidentPlanRequest {
            incident_id: inc.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.plan.as_ref().unwrap().steps.len(), 4);
    let marks: Vec<(u32, &str, bool)> = plan
        .progress
        .iter()
        .map(|p| (p.step, p.summary.as_str(), p.plan_changed))
        .collect();
    assert_eq!(
        marks,
        [
            (1, "verify cameras: Look at the front door camera", true),
            (3, "dispatch: Police if not cleared in 5 minutes", true),
        ]
    );

    // Step 1 as the analyst saw it before the change: refused, nothing
    // marked; as the plan says it now: marked.
    let e = alice
        .mark_step(mark(after.version, 1, "Look at the front door camera"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("the plan changed"), "{}", e.message());
    alice
        .mark_step(mark(after.version, 2, "Look at the front door camera"))
        .await
        .unwrap();
    let plan = alice
        .get_incident_plan(GetIncidentPlanRequest {
            incident_id: inc.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let current: Vec<u32> = plan
        .progress
        .iter()
        .filter(|p| !p.plan_changed)
        .map(|p| p.step)
        .collect();
    assert_eq!(current, [2]);
    ops.stop().await;
}
