//! What the client commands print: short lines for people, JSON for
//! scripts.
//!
//! JSON is the proto3 JSON mapping of the message (through the descriptors
//! compiled into `vigil-proto`), with the .proto field names (`post_id`),
//! every field present, enums by name, 64-bit numbers as numbers and
//! timestamps in RFC 3339 — so a script sees the same shape whichever
//! command it reads, and can decode it back into the message.
//!
//! [`feed_line`] formats one live-feed item; `vigil watch` prints with it and
//! `vigil dev` can too.

use prost::Message;
use prost_types::Timestamp;
use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description};
use vigil_proto::v1::{
    AuditAction, AuditEntry, CameraEventKind, CameraEventState, ContactIdQualifier, Disposition,
    FeedItem, Incident, IncidentDetail, IncidentPlan, IncidentState, Note, PostInfo, PostState,
    Priority, Severity, StepKind, StepOutcome, StoredEvent, event::Body, feed_item::Item,
};

// ---------------------------------------------------------------- JSON

/// `msg` (of protobuf type `vigil.v1.{name}`) as a JSON value.
pub(crate) fn json<M: Message>(msg: &M, name: &str) -> serde_json::Value {
    vigil_proto::json::to_json(msg, name)
}

/// `msg` as one line of JSON.
pub(crate) fn json_line<M: Message>(msg: &M, name: &str) -> String {
    json(msg, name).to_string()
}

// ---------------------------------------------------------------- names

/// `INCIDENT_STATE_OPEN` → `open`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', "-")
}

pub(crate) fn state(v: i32) -> String {
    IncidentState::try_from(v).map_or_else(
        |_| format!("state-{v}"),
        |s| short(s.as_str_name(), "INCIDENT_STATE_"),
    )
}

fn priority(v: i32) -> String {
    match Priority::try_from(v) {
        Ok(Priority::Unspecified) | Err(_) => "P?".into(),
        Ok(p) => short(p.as_str_name(), "PRIORITY_").to_ascii_uppercase(),
    }
}

fn severity(v: i32) -> String {
    Severity::try_from(v).map_or_else(
        |_| format!("severity-{v}"),
        |s| short(s.as_str_name(), "SEVERITY_"),
    )
}

fn action(v: i32) -> String {
    AuditAction::try_from(v).map_or_else(
        |_| format!("action-{v}"),
        |a| short(a.as_str_name(), "AUDIT_ACTION_").replace('-', " "),
    )
}

fn disposition(v: i32) -> String {
    Disposition::try_from(v).map_or_else(
        |_| format!("disposition-{v}"),
        |d| short(d.as_str_name(), "DISPOSITION_"),
    )
}

fn datetime(ts: &Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// `2026-11-26 10:14:03Z`, or `-`.
pub(crate) fn when(ts: Option<&Timestamp>) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    ts.and_then(datetime)
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| "-".into())
}

/// `10:14:03`, or `--:--:--`.
fn clock(ts: Option<&Timestamp>) -> String {
    let format = format_description!("[hour]:[minute]:[second]");
    ts.and_then(datetime)
        .and_then(|t| t.format(format).ok())
        .unwrap_or_else(|| "--:--:--".into())
}

/// RFC 3339 (`2026-11-26T10:14:03Z`) to a protobuf timestamp.
pub(crate) fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-11-26T10:00:00Z ({e})"))?;
    let nanos = t.unix_timestamp_nanos();
    Ok(Timestamp {
        seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).map_err(|e| e.to_string())?,
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).map_err(|e| e.to_string())?,
    })
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

// ---------------------------------------------------------------- lines

/// Whether lines carry colour: only for a person at a terminal, and never
/// when `NO_COLOR` is set (no-color.org).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Paint {
    colour: bool,
}

impl Paint {
    /// Colour if stdout is a terminal and `NO_COLOR` is unset or empty.
    pub(crate) fn for_stdout() -> Self {
        use std::io::IsTerminal;
        Self {
            colour: std::io::stdout().is_terminal() && !crate::no_color(),
        }
    }

    /// `text` in the SGR colour `code`, or as it is.
    fn paint(self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// SGR colour of a priority: P1 bold red, P2 yellow, P3 cyan, P4 dim.
fn priority_colour(v: i32) -> &'static str {
    match Priority::try_from(v) {
        Ok(Priority::P1) => "1;31",
        Ok(Priority::P2) => "33",
        Ok(Priority::P3) => "36",
        _ => "2",
    }
}

/// SGR colour of a state: open bold, acknowledged green, resolved dim.
fn state_colour(v: i32) -> &'static str {
    match IncidentState::try_from(v) {
        Ok(IncidentState::Open) => "1",
        Ok(IncidentState::Acknowledged) => "32",
        _ => "2",
    }
}

/// Sort key putting the most urgent incident first: priority (P1 first,
/// unset last), then the highest escalation level, then the oldest.
pub(crate) fn urgency(inc: &Incident) -> (i32, std::cmp::Reverse<u32>, i64, i32, String) {
    let rank = match Priority::try_from(inc.priority) {
        Ok(Priority::Unspecified) | Err(_) => i32::MAX,
        Ok(p) => p as i32,
    };
    let opened = inc.opened_at.as_ref();
    (
        rank,
        std::cmp::Reverse(inc.escalation_level),
        opened.map_or(i64::MAX, |t| t.seconds),
        opened.map_or(0, |t| t.nanos),
        inc.id.clone(),
    )
}

/// One live-feed item as a terminal line: time of the change, incident,
/// post, state, priority and severity, escalation level, summary, assignee,
/// and what changed (for the first screen: that this is how it stands).
/// `None` for heartbeats (nothing to show).
pub(crate) fn feed_line(item: &FeedItem, paint: Paint) -> Option<String> {
    match item.item.as_ref()? {
        Item::Update(u) => {
            let inc = u.incident.as_ref()?;
            let cause = if u.snapshot {
                "as it stands".to_owned()
            } else {
                action(u.cause)
            };
            let escalated = if inc.escalation_level > 0 {
                paint.paint("35", &format!("  esc {}", inc.escalation_level))
            } else {
                String::new()
            };
            Some(format!(
                "{}  {}  {:<8} {} {} {:<8} {}{escalated}  [{}]  ({cause})",
                clock(inc.updated_at.as_ref()),
                inc.id,
                inc.post_id,
                paint.paint(
                    state_colour(inc.state),
                    &format!("{:<12}", state(inc.state))
                ),
                paint.paint(priority_colour(inc.priority), &priority(inc.priority)),
                severity(inc.severity),
                inc.title,
                assignee(inc),
            ))
        }
        Item::SnapshotComplete(_) => Some(format!(
            "-- live changes follow (cursor {}) --",
            or_dash(&item.cursor)
        )),
        Item::Resync(r) => Some(format!("-- resynchronising: {} --", r.reason)),
        Item::Heartbeat(_) => None,
    }
}

fn assignee(inc: &Incident) -> &str {
    if inc.assignee.is_empty() {
        "unassigned"
    } else {
        &inc.assignee
    }
}

/// Column titles for [`incident_row`].
pub(crate) const INCIDENT_HEADER: &str =
    "ID          POST     STATE        PRI SEVERITY VER ASSIGNEE     OPENED                TITLE";

/// One incident as a table row under [`INCIDENT_HEADER`].
pub(crate) fn incident_row(inc: &Incident) -> String {
    format!(
        "{:<11} {:<8} {:<12} {:<3} {:<8} {:<3} {:<12} {:<21} {}",
        inc.id,
        inc.post_id,
        state(inc.state),
        priority(inc.priority),
        severity(inc.severity),
        inc.version,
        or_dash(&inc.assignee),
        when(inc.opened_at.as_ref()),
        inc.title,
    )
}

/// One incident in a sentence: for conflicts, where the id is news.
pub(crate) fn incident_summary(inc: &Incident) -> String {
    format!("{} {}", inc.id, incident_state(inc))
}

/// What an incident is now, without its id (a workflow result line has
/// just named it): post, state, priority and title, version, assignee...
pub(crate) fn incident_state(inc: &Incident) -> String {
    let mut s = format!(
        "at {}: {}, {} {}, version {}, {}",
        inc.post_id,
        state(inc.state),
        priority(inc.priority),
        inc.title,
        inc.version,
        assignee(inc)
    );
    if !inc.acknowledged_by.is_empty() {
        s.push_str(&format!(", acknowledged by {}", inc.acknowledged_by));
    }
    if !inc.resolved_by.is_empty() {
        s.push_str(&format!(
            ", resolved by {} ({})",
            inc.resolved_by,
            disposition(inc.disposition)
        ));
    }
    if inc.escalation_level > 0 {
        s.push_str(&format!(", escalation level {}", inc.escalation_level));
    }
    s
}

/// An incident in full, for `vigil incidents ID`.
pub(crate) fn incident_detail(d: &IncidentDetail) -> String {
    let mut out = String::new();
    if let Some(inc) = &d.incident {
        let line = |out: &mut String, k: &str, v: &str| out.push_str(&format!("{k:<16}{v}\n"));
        line(&mut out, "incident", &inc.id);
        line(&mut out, "post", &inc.post_id);
        line(&mut out, "title", &inc.title);
        line(&mut out, "state", &state(inc.state));
        line(&mut out, "version", &inc.version.to_string());
        line(
            &mut out,
            "priority",
            &format!("{} ({})", priority(inc.priority), severity(inc.severity)),
        );
        line(&mut out, "subject", &inc.subject);
        line(
            &mut out,
            "verified",
            if inc.verified { "yes" } else { "no" },
        );
        line(
            &mut out,
            "restored",
            if inc.restored { "yes" } else { "no" },
        );
        line(&mut out, "opened", &when(inc.opened_at.as_ref()));
        line(&mut out, "updated", &when(inc.updated_at.as_ref()));
        line(&mut out, "assignee", or_dash(&inc.assignee));
        if !inc.acknowledged_by.is_empty() {
            let v = format!(
                "{} at {}",
                inc.acknowledged_by,
                when(inc.acknowledged_at.as_ref())
            );
            line(&mut out, "acknowledged", &v);
        }
        if !inc.resolved_by.is_empty() {
            let v = format!(
                "{} at {} ({})",
                inc.resolved_by,
                when(inc.resolved_at.as_ref()),
                disposition(inc.disposition)
            );
            line(&mut out, "resolved", &v);
        }
        if inc.ack_deadline.is_some() {
            line(&mut out, "ack deadline", &when(inc.ack_deadline.as_ref()));
        }
        line(&mut out, "escalation", &inc.escalation_level.to_string());
        line(&mut out, "events", &inc.event_count.to_string());
        if !inc.active_conditions.is_empty() {
            line(&mut out, "active", &inc.active_conditions.join(", "));
        }
        line(&mut out, "procedure", &inc.procedure);
    }
    out.push_str("\nevents:\n");
    for e in &d.events {
        out.push_str(&format!("  {}\n", event_line(e)));
    }
    out.push_str("\nnotes:\n");
    for n in &d.notes {
        out.push_str(&format!("  {}\n", note_line(n)));
    }
    out.push_str("\naudit:\n");
    for a in &d.audit {
        out.push_str(&format!("  {}\n", audit_line(a)));
    }
    out
}

/// A stored event in one line.
pub(crate) fn event_line(e: &StoredEvent) -> String {
    let Some(ev) = &e.event else {
        return "(empty event)".into();
    };
    let described = |fallback: &str| {
        if ev.description.is_empty() {
            fallback.to_owned()
        } else {
            ev.description.clone()
        }
    };
    let what = match &ev.body {
        Some(Body::Alarm(a)) => {
            // The code as the panel sent it: SIA `BA`, or Contact ID `E130`
            // (`R` for a restore, as installers write it).
            let code = match &a.contact_id {
                Some(cid) if a.sia_code.is_empty() => {
                    let q = match ContactIdQualifier::try_from(cid.qualifier) {
                        Ok(ContactIdQualifier::Restore) => 'R',
                        Ok(ContactIdQualifier::Status) => 'S',
                        _ => 'E',
                    };
                    format!("{q}{:03}", cid.event_code)
                }
                _ => or_dash(&a.sia_code).to_owned(),
            };
            format!(
                "alarm: {} [{code}, account {}]",
                described(&format!("zone {}", a.zone)),
                a.account
            )
        }
        Some(Body::Camera(c)) => {
            let kind = CameraEventKind::try_from(c.kind).map_or_else(
                |_| format!("kind-{}", c.kind),
                |k| short(k.as_str_name(), "CAMERA_EVENT_KIND_"),
            );
            let phase = match CameraEventState::try_from(c.state) {
                Ok(CameraEventState::Start) => " started",
                Ok(CameraEventState::Stop) => " stopped",
                _ => "",
            };
            let region = if c.region.is_empty() {
                String::new()
            } else {
                format!(" in {}", c.region)
            };
            format!("camera {}: {kind}{phase}{region}", c.camera_id)
        }
        Some(Body::Health(h)) => format!(
            "health: {}",
            described(&format!("{} {}", h.subject, h.detail))
        ),
        None => described("event"),
    };
    format!(
        "{} {}#{} {} {}{}",
        when(ev.received_at.as_ref()),
        ev.post_id,
        ev.seq,
        severity(ev.severity),
        what,
        if ev.restore { " (restore)" } else { "" }
    )
}

/// The action plan of an incident, step by step (a call names whom to
/// call from the post's contacts), then the post's record: contacts in
/// calling order, and duress words and passcodes if the caller may see
/// them.
pub(crate) fn incident_plan(p: &IncidentPlan) -> String {
    let mut out = String::new();
    let contacts = p.post.as_ref().map(|r| &r.contacts[..]).unwrap_or_default();
    match &p.plan {
        None => out.push_str(&format!("\nplan: none for {} at this post\n", p.category)),
        Some(plan) => {
            let whose = if plan.post_id.is_empty() {
                "every post".to_owned()
            } else {
                plan.post_id.clone()
            };
            out.push_str(&format!("\nplan ({}, {whose}):\n", plan.category));
            for (i, step) in plan.steps.iter().enumerate() {
                let kind = StepKind::try_from(step.kind).unwrap_or(StepKind::Other);
                let tag = match kind {
                    StepKind::CallContact => format!("call {}", step.contact_role),
                    k => vigil_ops::site::step_kind_name(k).replace('_', " "),
                };
                out.push_str(&format!("  {}. [{tag}] {}\n", i + 1, step.text));
                if let Some(mark) = p
                    .progress
                    .iter()
                    .find(|m| m.step as usize == i + 1 && !m.plan_changed)
                {
                    let word = match mark.outcome() {
                        StepOutcome::Skipped => "skipped",
                        _ => "done",
                    };
                    let note = mark
                        .detail
                        .split_once("; note: ")
                        .map(|(_, n)| format!(": {n}"))
                        .unwrap_or_default();
                    out.push_str(&format!(
                        "       {word} by {} at {}{note}\n",
                        mark.actor,
                        when(mark.at.as_ref())
                    ));
                }
                if kind == StepKind::CallContact {
                    let whom: Vec<_> = contacts
                        .iter()
                        .filter(|c| c.role == step.contact_role)
                        .collect();
                    if whom.is_empty() {
                        out.push_str("       (no contact with this role at this post)\n");
                    }
                    for c in whom {
                        out.push_str(&format!("       → {} {}\n", c.name, c.phone));
                    }
                }
            }
        }
    }
    // Marks made on steps the plan has since changed: kept apart, with the
    // step as it was.
    for mark in p.progress.iter().filter(|m| m.plan_changed) {
        let word = match mark.outcome() {
            StepOutcome::Skipped => "skipped",
            _ => "done",
        };
        out.push_str(&format!(
            "  (earlier plan) step {} {word} by {} at {}: {}\n",
            mark.step,
            mark.actor,
            when(mark.at.as_ref()),
            mark.summary
        ));
    }
    let Some(post) = &p.post else {
        out.push_str("\npost record: none\n");
        return out;
    };
    out.push_str(&format!(
        "\npost {} ({}, {}){}\n",
        post.post_id,
        post.name,
        post.timezone,
        if post.address.is_empty() {
            String::new()
        } else {
            format!(", {}", post.address)
        }
    ));
    out.push_str("contacts:\n");
    if post.contacts.is_empty() {
        out.push_str("  none\n");
    }
    for (i, c) in post.contacts.iter().enumerate() {
        out.push_str(&format!(
            "  {}. {:<14} {:<24} {}{}\n",
            i + 1,
            c.role,
            c.name,
            c.phone,
            if c.notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", c.notes)
            }
        ));
    }
    if post.secrets_withheld {
        out.push_str(&format!(
            "duress words: {}, passcodes: {} (shown to supervisors and admins)\n",
            post.duress_word_count, post.passcode_count
        ));
    } else {
        out.push_str(&format!(
            "duress words: {}\npasscodes: {}\n",
            or_dash(&post.duress_words.join(", ")),
            or_dash(&post.passcodes.join(", "))
        ));
    }
    out
}

fn note_line(n: &Note) -> String {
    format!("{} {}: {}", when(n.at.as_ref()), n.author, n.text)
}

fn audit_line(a: &AuditEntry) -> String {
    format!(
        "{} v{}→v{} {} by {} ({}){}",
        when(a.at.as_ref()),
        a.from_version,
        a.to_version,
        action(a.action),
        a.actor,
        a.actor_role,
        if a.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", a.detail)
        }
    )
}

/// Column titles for [`post_row`].
pub(crate) const POST_HEADER: &str =
    "POST     STATUS   LAST SEEN             LAST SEQ DURABLE  MISSING OPEN TEST MODE UNTIL";

pub(crate) fn post_row(p: &PostInfo) -> String {
    let status = p.status.as_ref().map_or_else(
        || "unknown".to_owned(),
        |s| {
            PostState::try_from(s.state).map_or_else(
                |_| "unknown".to_owned(),
                |st| short(st.as_str_name(), "POST_STATE_"),
            )
        },
    );
    format!(
        "{:<8} {:<8} {:<21} {:<8} {:<8} {:<7} {:<4} {}",
        p.post_id,
        status,
        when(p.last_seen.as_ref()),
        p.last_seq,
        p.durable_through_seq,
        p.missing_events,
        p.open_incidents,
        when(p.test_mode_until.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use vigil_proto::v1::{Heartbeat, IncidentUpdate};

    use super::*;

    fn incident() -> Incident {
        Incident {
            id: "inc-000007".into(),
            post_id: "p-17".into(),
            state: IncidentState::Acknowledged as i32,
            priority: Priority::P2 as i32,
            severity: Severity::High as i32,
            title: "Burglary alarm, zone 15".into(),
            assignee: "alice".into(),
            version: 3,
            updated_at: Some(Timestamp {
                // 2025-11-26T03:04:05Z
                seconds: 1_764_115_200 + 3 * 3600 + 4 * 60 + 5,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_feed_line_shows_time_incident_post_state_severity_summary_assignee() {
        let item = FeedItem {
            cursor: "42".into(),
            item: Some(Item::Update(IncidentUpdate {
                incident: Some(incident()),
                cause: AuditAction::Assigned as i32,
                snapshot: false,
            })),
        };
        let line = feed_line(&item, Paint::default()).unwrap();
        assert!(!line.contains('\x1b'), "no colour unless asked: {line:?}");
        for part in [
            "03:04:05",
            "inc-000007",
            "p-17",
            "acknowledged",
            "P2",
            "high",
            "Burglary alarm, zone 15",
            "[alice]",
            "(assigned)",
        ] {
            assert!(line.contains(part), "{part:?} in {line:?}");
        }
        let beat = FeedItem {
            cursor: "42".into(),
            item: Some(Item::Heartbeat(Heartbeat::default())),
        };
        assert_eq!(feed_line(&beat, Paint::default()), None);
    }

    #[test]
    fn the_first_screen_says_how_it_stands_and_shows_escalation() {
        let mut inc = incident();
        inc.escalation_level = 2;
        let item = FeedItem {
            cursor: String::new(),
            item: Some(Item::Update(IncidentUpdate {
                incident: Some(inc),
                cause: 0,
                snapshot: true,
            })),
        };
        let line = feed_line(&item, Paint::default()).unwrap();
        assert!(line.contains("acknowledged"), "{line}");
        assert!(line.contains("esc 2"), "{line}");
        assert!(line.ends_with("(as it stands)"), "{line}");
        assert!(!line.contains("(open)"), "{line}");
        let coloured = feed_line(&item, Paint { colour: true }).unwrap();
        assert!(coloured.contains("\x1b[33mP2\x1b[0m"), "{coloured:?}");
        let done = FeedItem {
            cursor: "17".into(),
            item: Some(Item::SnapshotComplete(Default::default())),
        };
        assert_eq!(
            feed_line(&done, Paint::default()).unwrap(),
            "-- live changes follow (cursor 17) --"
        );
    }

    #[test]
    fn urgency_puts_p1_first_then_escalated_then_oldest() {
        let at = |s: i64| {
            Some(Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        let make = |id: &str, p: Priority, esc: u32, opened: i64| Incident {
            id: id.into(),
            priority: p as i32,
            escalation_level: esc,
            opened_at: at(opened),
            ..Default::default()
        };
        let mut list = [
            make("p3-old", Priority::P3, 0, 1),
            make("p1-new", Priority::P1, 0, 9),
            make("p2-esc", Priority::P2, 1, 8),
            make("p1-old", Priority::P1, 0, 2),
            make("p2", Priority::P2, 0, 3),
            make("none", Priority::Unspecified, 3, 0),
        ];
        list.sort_by_key(urgency);
        let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["p1-old", "p1-new", "p2-esc", "p2", "p3-old", "none"]);
    }

    #[test]
    fn events_read_as_words_not_numbers() {
        use vigil_proto::v1::{AlarmSignal, CameraEvent, ContactId, Event};
        let stored = |body: Body, description: &str| StoredEvent {
            event: Some(Event {
                post_id: "p-1".into(),
                seq: 4,
                description: description.into(),
                body: Some(body),
                ..Default::default()
            }),
            ..Default::default()
        };
        let camera = event_line(&stored(
            Body::Camera(CameraEvent {
                camera_id: "cam-2".into(),
                kind: CameraEventKind::LineCrossing as i32,
                state: CameraEventState::OneShot as i32,
                region: "Gate".into(),
                ..Default::default()
            }),
            "",
        ));
        assert!(
            camera.contains("camera cam-2: line-crossing in Gate"),
            "{camera}"
        );
        let sia = event_line(&stored(
            Body::Alarm(AlarmSignal {
                account: "1001".into(),
                sia_code: "BA".into(),
                zone: 7,
                ..Default::default()
            }),
            "Burglary alarm, zone 7",
        ));
        assert!(
            sia.contains("alarm: Burglary alarm, zone 7 [BA, account 1001]"),
            "{sia}"
        );
        let cid = event_line(&stored(
            Body::Alarm(AlarmSignal {
                account: "1002".into(),
                contact_id: Some(ContactId {
                    qualifier: ContactIdQualifier::Restore as i32,
                    event_code: 130,
                    partition: 1,
                    zone_or_user: 3,
                }),
                ..Default::default()
            }),
            "Burglary alarm, zone 3",
        ));
        assert!(cid.contains("[R130, account 1002]"), "{cid}");
    }

    #[test]
    fn a_plan_names_whom_each_call_reaches_and_hides_withheld_secrets() {
        use vigil_proto::v1::{ActionPlan, Contact, PlanStep, PostRecord};
        let contact = |role: &str, name: &str, phone: &str| Contact {
            role: role.into(),
            name: name.into(),
            phone: phone.into(),
            notes: String::new(),
        };
        let step = |kind: StepKind, role: &str, text: &str| PlanStep {
            kind: kind as i32,
            text: text.into(),
            contact_role: role.into(),
        };
        let p = IncidentPlan {
            incident_id: "inc-000001".into(),
            category: "burglary".into(),
            plan: Some(ActionPlan {
                category: "burglary".into(),
                post_id: String::new(),
                steps: vec![
                    step(StepKind::VerifyCameras, "", "Look at the yard"),
                    step(StepKind::CallContact, "guard", "Ask for a patrol"),
                    step(StepKind::CallContact, "police", "If not cleared"),
                ],
            }),
            post: Some(PostRecord {
                post_id: "p-1".into(),
                name: "Embassy".into(),
                timezone: "Europe/Vienna".into(),
                contacts: vec![contact("guard", "Gate desk", "+43 1 555")],
                secrets_withheld: true,
                duress_word_count: 1,
                passcode_count: 2,
                ..Default::default()
            }),
            progress: vec![
                vigil_proto::v1::StepProgress {
                    step: 2,
                    outcome: StepOutcome::Skipped as i32,
                    actor: "alice".into(),
                    at: None,
                    detail: "step 2 skipped: call guard: Ask for a patrol; note: no answer".into(),
                    summary: "call guard: Ask for a patrol".into(),
                    plan_changed: false,
                },
                // Made on step 3 of an earlier plan.
                vigil_proto::v1::StepProgress {
                    step: 3,
                    outcome: StepOutcome::Done as i32,
                    actor: "bob".into(),
                    at: None,
                    detail: "step 3 done: dispatch: Guard force".into(),
                    summary: "dispatch: Guard force".into(),
                    plan_changed: true,
                },
            ],
        };
        let text = incident_plan(&p);
        assert!(text.contains("plan (burglary, every post):"), "{text}");
        assert!(
            text.contains("1. [verify cameras] Look at the yard"),
            "{text}"
        );
        assert!(
            text.contains(
                "2. [call guard] Ask for a patrol\n       skipped by alice at -: no answer\n       → Gate desk +43 1 555\n  3."
            ),
            "{text}"
        );
        assert!(
            text.contains("3. [call police] If not cleared\n       (no contact"),
            "{text}"
        );
        assert!(
            text.contains("  (earlier plan) step 3 done by bob at -: dispatch: Guard force\n"),
            "{text}"
        );
        assert!(text.contains("post p-1 (Embassy, Europe/Vienna)"), "{text}");
        assert!(
            text.contains("duress words: 1, passcodes: 2 (shown to"),
            "{text}"
        );
    }

    #[test]
    fn json_uses_proto_field_names_enum_names_and_rfc3339_times() {
        let v = json(&incident(), "Incident");
        assert_eq!(v["id"], "inc-000007");
        assert_eq!(v["post_id"], "p-17");
        assert_eq!(v["state"], "INCIDENT_STATE_ACKNOWLEDGED");
        assert_eq!(v["version"], 3);
        assert_eq!(v["updated_at"], "2025-11-26T03:04:05Z");
        // Default fields are present too, so scripts need no special cases.
        assert_eq!(v["escalation_level"], 0);
        assert_eq!(v["resolved_by"], "");
    }

    #[test]
    fn rfc3339_times_parse_and_bad_ones_say_what_is_expected() {
        let t = parse_rfc3339("2025-11-26T03:04:05.5+01:00").unwrap();
        assert_eq!(
            (t.seconds, t.nanos),
            (1_764_115_200 + 2 * 3600 + 245, 500_000_000)
        );
        let err = parse_rfc3339("yesterday").unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }
}
