//! Correlation: which incident an event or a post status belongs to.
//!
//! Rules, in the order they apply to one new (never a duplicate) event:
//! 1. Categories that need nobody's attention (tests, openings and closings,
//!    system messages) are stored and open nothing. A post in test mode
//!    opens nothing at all.
//! 2. Every event has a *subject*: `zone:N` for a panel alarm in zone N and
//!    for a camera detection of a camera mapped to zone N; `camera:ID` for an
//!    unmapped camera or a camera fault; `panel:DEVICE:CATEGORY` for a panel
//!    event without a zone; `supervision:panel:…`, `supervision:camera:…`
//!    and `post:offline` for health and status.
//! 3. A restore (alarm restore, detection stop, fault cleared, post back
//!    online) clears its condition on the newest unresolved incident of the
//!    subject, however old; when no condition is left the incident is marked
//!    restored. It never changes the state: a restored alarm still needs
//!    acknowledgment.
//! 4. A new alarm joins the newest incident of its subject if that is
//!    unresolved and its last event is within the correlation window;
//!    reopens it if it was resolved within the reactivation window; and
//!    otherwise opens a new incident.
//! 5. Opening is limited per source, per post and category, and per post:
//!    past `flood_limit` openings of one source in the flood window, that
//!    source's events fold into one `flood:SOURCE` incident; past
//!    `flood_post_category_limit` openings of one category by any sources of
//!    the post, they fold into one `flood:category:CATEGORY` incident; past
//!    `flood_post_limit` openings of the post in all, into one `flood:post`
//!    incident. The narrowest level that is full decides. Life-safety (P1)
//!    events are never folded.
//! 6. A panel alarm and a camera detection in one incident within the
//!    verification window make it verified, one priority more urgent.
//!
//! An incident's category and priority are those of its most urgent event.

use std::time::{Duration, SystemTime};

use vigil_proto::v1::{
    AuditAction, CameraEventKind, CameraEventState, Event, EventCategory, HealthKind, HealthState,
    Incident, IncidentState, PostState, PostStatus, Priority, event::Body,
};

use super::{Actor, Engine, category_name, record, status_key, time};
use crate::store::{Changes, EventLink};

/// What kind of evidence an event is, for verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evidence {
    PanelAlarm,
    CameraDetection,
    Other,
}

/// The levels at which opening incidents is limited (rule 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloodLevel {
    Source,
    Category,
    Post,
}

impl FloodLevel {
    /// The flood-accounting key of `sig` at this level (the post is the other
    /// half of the key).
    fn key(self, sig: &Signal) -> String {
        match self {
            FloodLevel::Source => format!("source:{}", sig.source),
            FloodLevel::Category => format!("category:{}", category_name(sig.category)),
            FloodLevel::Post => "post".into(),
        }
    }
}

/// An event or status reduced to what correlation needs.
#[derive(Debug)]
struct Signal {
    post: String,
    subject: String,
    category: EventCategory,
    priority: Priority,
    severity: i32,
    restore: bool,
    /// What a later restore clears; `None` for one-shot events.
    condition: Option<String>,
    evidence: Evidence,
    /// Device that produced it (flood accounting).
    source: String,
    title: String,
    /// Event time.
    at: SystemTime,
    /// `(post, seq)` of the event, for status signals none.
    seq: Option<u64>,
}

/// The priority an incident of this category gets, or `None` when events of
/// the category open no incident.
pub fn category_priority(category: EventCategory) -> Option<Priority> {
    use EventCategory as C;
    Some(match category {
        C::Fire | C::Panic | C::Duress | C::Holdup | C::Medical | C::Gas => Priority::P1,
        C::Burglary | C::Tamper => Priority::P2,
        C::VideoDetection
        | C::Supervisory
        | C::Communication
        | C::Power
        | C::Trouble
        | C::Environmental => Priority::P3,
        C::Bypass | C::Access | C::Other => Priority::P4,
        C::Test | C::OpenClose | C::System | C::Unspecified => return None,
    })
}

/// One priority more urgent (P1 stays P1).
fn raise(p: Priority) -> Priority {
    match p {
        Priority::P4 => Priority::P3,
        Priority::P3 => Priority::P2,
        _ => Priority::P1,
    }
}

/// Whether `a` is more urgent than `b` (P1 is the most urgent; unspecified
/// the least).
fn more_urgent(a: i32, b: i32) -> bool {
    let rank = |p: i32| if p == 0 { i32::MAX } else { p };
    rank(a) < rank(b)
}

fn camera_kind_name(kind: CameraEventKind) -> String {
    kind.as_str_name()
        .trim_start_matches("CAMERA_EVENT_KIND_")
        .to_ascii_lowercase()
}

/// A timer's signal (see [`super::timers`]): no event of its own.
pub(super) struct TimerSignal<'a> {
    pub post: &'a str,
    pub subject: &'a str,
    pub category: EventCategory,
    pub priority: Priority,
    pub restore: bool,
    /// Whether a later restore clears it (the subject is the condition).
    pub condition: bool,
    pub title: String,
    pub at: SystemTime,
}

impl Engine {
    /// Correlates one newly stored event. Returns the incident it joined or
    /// opened, if any; the link is recorded in `out`. Openings, closings and
    /// test reports also move the post's timers (see [`super::timers`]).
    pub fn on_event(&mut self, ev: &Event, now: SystemTime, out: &mut Changes) -> Option<String> {
        if matches!(
            ev.category(),
            EventCategory::Test | EventCategory::OpenClose
        ) {
            self.observe_timers(ev, event_time(ev, now), now, out);
        }
        let sig = self.classify(ev, now)?;
        self.on_signal(sig, now, out)
    }

    /// Raises or restores a timer incident through the usual rules.
    pub(super) fn raise_timer(
        &mut self,
        t: TimerSignal<'_>,
        now: SystemTime,
        out: &mut Changes,
    ) -> Option<String> {
        let sig = Signal {
            post: t.post.to_owned(),
            subject: t.subject.to_owned(),
            category: t.category,
            priority: t.priority,
            severity: vigil_proto::v1::Severity::Medium as i32,
            restore: t.restore,
            condition: t.condition.then(|| t.subject.to_owned()),
            evidence: Evidence::Other,
            source: "timer".into(),
            title: t.title,
            at: t.at,
            seq: None,
        };
        self.on_signal(sig, now, out)
    }

    /// Applies a post's status (online/offline). Repeats of the last status
    /// (a retained message seen again after a reconnect) change nothing.
    pub fn on_status(
        &mut self,
        status: &PostStatus,
        now: SystemTime,
        out: &mut Changes,
    ) -> Option<String> {
        let key = status_key(status);
        if self.statuses.get(&status.post_id) == Some(&key) {
            return None;
        }
        self.statuses.insert(status.post_id.clone(), key);
        out.statuses.push((status.clone(), now));
        let offline = match PostState::try_from(status.state) {
            Ok(PostState::Offline) => true,
            Ok(PostState::Online) => false,
            _ => return None,
        };
        let subject = "post:offline".to_owned();
        let sig = Signal {
            post: status.post_id.clone(),
            subject: subject.clone(),
            category: EventCategory::Supervisory,
            priority: Priority::P2,
            severity: vigil_proto::v1::Severity::Medium as i32,
            restore: !offline,
            condition: Some(subject),
            evidence: Evidence::Other,
            source: "gateway".into(),
            title: format!("Post {} offline", status.post_id),
            at: now,
            seq: None,
        };
        // A post that is already known offline stays in its incident.
        if offline
            && self
                .open_incident_for(&sig.post, &sig.subject)
                .is_some_and(|i| i.active_conditions.iter().any(|c| c == "post:offline"))
        {
            return None;
        }
        self.on_signal(sig, now, out)
    }

    fn on_signal(&mut self, sig: Signal, now: SystemTime, out: &mut Changes) -> Option<String> {
        if self.test_mode_until(&sig.post, now).is_some() {
            return None;
        }
        if sig.restore {
            return self.restore(&sig, now, out);
        }
        let key = (sig.post.clone(), sig.subject.clone());
        if let Some(inc) = self.latest.get(&key).and_then(|id| self.incidents.get(id)) {
            let last = inc.last_event_at.map_or(SystemTime::UNIX_EPOCH, time);
            let state = IncidentState::try_from(inc.state).unwrap_or(IncidentState::Open);
            match state {
                IncidentState::Resolved => {
                    let resolved = inc.resolved_at.map_or(SystemTime::UNIX_EPOCH, time);
                    if sig.at <= resolved + self.cfg.reactivation_window() {
                        let id = inc.id.clone();
                        return Some(self.reopen_and_join(&id, &sig, now, out));
                    }
                }
                _ if within(last, sig.at, self.cfg.correlation_window_secs) => {
                    let id = inc.id.clone();
                    return Some(self.join(&id, &sig, now, out));
                }
                _ => {}
            }
        }
        if sig.priority != Priority::P1
            && let Some(level) = self.flooding(&sig)
        {
            return Some(self.fold(sig, level, now, out));
        }
        Some(self.open(&sig, now, out, false))
    }

    pub(super) fn open_incident_for(&self, post: &str, subject: &str) -> Option<&Incident> {
        self.latest
            .get(&(post.to_owned(), subject.to_owned()))
            .and_then(|id| self.incidents.get(id))
            .filter(|i| i.state != IncidentState::Resolved as i32)
    }

    /// Counts an opening at every flood level of the signal (its source, its
    /// post and category, its post); returns the narrowest level that is
    /// already past its limit, in which case nothing is counted.
    fn flooding(&mut self, sig: &Signal) -> Option<FloodLevel> {
        let window = Duration::from_secs(self.cfg.flood_window_secs);
        let levels = [
            (FloodLevel::Source, self.cfg.flood_limit),
            (FloodLevel::Category, self.cfg.flood_post_category_limit),
            (FloodLevel::Post, self.cfg.flood_post_limit),
        ];
        let mut full = None;
        for (level, limit) in levels {
            let times = self
                .flood
                .entry((sig.post.clone(), level.key(sig)))
                .or_default();
            while times.front().is_some_and(|&t| t + window <= sig.at) {
                times.pop_front();
            }
            if full.is_none() && times.len() >= limit as usize {
                full = Some(level);
            }
        }
        if full.is_none() {
            for (level, _) in levels {
                if let Some(times) = self.flood.get_mut(&(sig.post.clone(), level.key(sig))) {
                    times.push_back(sig.at);
                }
            }
        }
        full
    }

    fn fold(
        &mut self,
        mut sig: Signal,
        level: FloodLevel,
        now: SystemTime,
        out: &mut Changes,
    ) -> String {
        match level {
            FloodLevel::Source => {
                sig.subject = format!("flood:{}", sig.source);
                sig.title = format!("Event flood from {} folded", sig.source);
            }
            FloodLevel::Category => {
                let name = category_name(sig.category);
                sig.subject = format!("flood:category:{name}");
                sig.title = format!("Flood of {name} events from many sources folded");
            }
            FloodLevel::Post => {
                sig.subject = "flood:post".into();
                sig.title = format!("Event flood at post {} folded", sig.post);
            }
        }
        sig.condition = None;
        // The flood incident gathers events of any category; it stays at the
        // priority of what it holds, at most P2 (P1 events are never folded).
        if let Some(inc) = self.open_incident_for(&sig.post, &sig.subject) {
            let id = inc.id.clone();
            return self.join(&id, &sig, now, out);
        }
        self.open(&sig, now, out, true)
    }

    fn open(&mut self, sig: &Signal, now: SystemTime, out: &mut Changes, folded: bool) -> String {
        let id = self.next_id();
        let deadline = self.cfg.ack_deadline(sig.priority as i32);
        let mut inc = Incident {
            id: id.clone(),
            post_id: sig.post.clone(),
            state: IncidentState::Open as i32,
            priority: sig.priority as i32,
            category: sig.category as i32,
            title: sig.title.clone(),
            procedure: self.procedure(sig.category as i32),
            verified: false,
            subject: sig.subject.clone(),
            version: 0,
            opened_at: Some(now.into()),
            updated_at: Some(now.into()),
            ack_deadline: Some((now + deadline).into()),
            event_count: 0,
            severity: sig.severity,
            flood_folded: folded,
            last_event_at: Some(sig.at.into()),
            ..Default::default()
        };
        let mut detail = match sig.seq {
            Some(seq) => format!("{} (event {}#{seq})", sig.title, sig.post),
            None => sig.title.clone(),
        };
        if self.logs(&sig.post, sig.priority as i32, now) {
            inc.logged = true;
            inc.ack_deadline = None;
            detail.push_str(" [logged: emergency mode]");
        }
        record(
            &mut inc,
            AuditAction::Opened,
            &Actor::system(),
            now,
            detail,
            out,
        );
        self.add_evidence(&mut inc, sig, now, out);
        out.put_incident(inc.clone(), None);
        self.link(&inc, sig, out);
        self.latest
            .insert((sig.post.clone(), sig.subject.clone()), id.clone());
        self.incidents.insert(id.clone(), inc);
        id
    }

    fn join(&mut self, id: &str, sig: &Signal, now: SystemTime, out: &mut Changes) -> String {
        let mut inc = self.incidents.remove(id).expect("caller checked");
        let prev = inc.version;
        let detail = match sig.seq {
            Some(seq) => format!("{} (event {}#{seq})", sig.title, sig.post),
            None => sig.title.clone(),
        };
        record(
            &mut inc,
            AuditAction::EventAdded,
            &Actor::system(),
            now,
            detail,
            out,
        );
        if more_urgent(sig.priority as i32, inc.priority) {
            inc.priority = sig.priority as i32;
            inc.category = sig.category as i32;
            inc.title.clone_from(&sig.title);
            inc.procedure = self.procedure(sig.category as i32);
            self.requeue_if_urgent(&mut inc, now);
            self.tighten_deadline(&mut inc, now);
        }
        if inc.last_event_at.is_none_or(|t| time(t) < sig.at) {
            inc.last_event_at = Some(sig.at.into());
        }
        self.add_evidence(&mut inc, sig, now, out);
        out.put_incident(inc.clone(), Some(prev));
        self.link(&inc, sig, out);
        self.incidents.insert(id.to_owned(), inc);
        id.to_owned()
    }

    fn reopen_and_join(
        &mut self,
        id: &str,
        sig: &Signal,
        now: SystemTime,
        out: &mut Changes,
    ) -> String {
        let deadline = self.cfg.ack_deadline(self.incidents[id].priority);
        let inc = self.incidents.get_mut(id).expect("caller checked");
        let prev = inc.version;
        super::workflow::reopen(inc, deadline, now);
        record(
            inc,
            AuditAction::Reopened,
            &Actor::system(),
            now,
            "new alarm within the reactivation window".into(),
            out,
        );
        out.put_incident(inc.clone(), Some(prev));
        self.join(id, sig, now, out)
    }

    fn restore(&mut self, sig: &Signal, now: SystemTime, out: &mut Changes) -> Option<String> {
        let id = self.open_incident_for(&sig.post, &sig.subject)?.id.clone();
        let inc = self.incidents.get_mut(&id).expect("found above");
        let prev = inc.version;
        if let Some(cond) = &sig.condition {
            inc.active_conditions.retain(|c| c != cond);
        }
        inc.event_count += 1;
        // A restore is activity too: a new alarm soon after it joins.
        if inc.last_event_at.is_none_or(|t| time(t) < sig.at) {
            inc.last_event_at = Some(sig.at.into());
        }
        let newly_restored = inc.active_conditions.is_empty() && !inc.restored;
        if newly_restored {
            inc.restored = true;
        }
        let (action, detail) = if newly_restored {
            (AuditAction::Restored, format!("restored: {}", sig.title))
        } else {
            (AuditAction::EventAdded, format!("restore: {}", sig.title))
        };
        record(inc, action, &Actor::system(), now, detail, out);
        out.put_incident(inc.clone(), Some(prev));
        if let Some(seq) = sig.seq {
            out.links.push(EventLink {
                incident_id: id.clone(),
                post_id: sig.post.clone(),
                seq,
            });
        }
        Some(id)
    }

    /// Records the signal's condition, severity and evidence on the
    /// incident; verifies it when a panel alarm and a camera detection meet.
    fn add_evidence(&self, inc: &mut Incident, sig: &Signal, now: SystemTime, out: &mut Changes) {
        inc.event_count += 1;
        inc.severity = inc.severity.max(sig.severity);
        if let Some(cond) = &sig.condition
            && !inc.active_conditions.contains(cond)
        {
            inc.active_conditions.push(cond.clone());
        }
        if !inc.active_conditions.is_empty() {
            inc.restored = false;
        }
        let slot = match sig.evidence {
            Evidence::PanelAlarm => &mut inc.last_alarm_at,
            Evidence::CameraDetection => &mut inc.last_detection_at,
            Evidence::Other => return,
        };
        if slot.is_none_or(|t| time(t) < sig.at) {
            *slot = Some(sig.at.into());
        }
        if inc.verified {
            return;
        }
        let (Some(a), Some(d)) = (inc.last_alarm_at, inc.last_detection_at) else {
            return;
        };
        if !within(time(a), time(d), self.cfg.verification_window_secs) {
            return;
        }
        inc.verified = true;
        let raised = raise(Priority::try_from(inc.priority).unwrap_or(Priority::P4));
        let detail = format!(
            "panel alarm and camera detection agree; priority {}",
            raised.as_str_name().trim_start_matches("PRIORITY_")
        );
        if more_urgent(raised as i32, inc.priority) {
            inc.priority = raised as i32;
            self.requeue_if_urgent(inc, now);
            self.tighten_deadline(inc, now);
        }
        inc.title = format!("{} (verified)", inc.title);
        record(
            inc,
            AuditAction::Verified,
            &Actor::system(),
            now,
            detail,
            out,
        );
    }

    /// A logged incident (emergency mode) whose priority rose enough is
    /// queued again, with a deadline if it is open.
    fn requeue_if_urgent(&self, inc: &mut Incident, now: SystemTime) {
        if inc.logged && !self.logs(&inc.post_id, inc.priority, now) {
            inc.logged = false;
            if inc.state == IncidentState::Open as i32 {
                inc.ack_deadline = Some((now + self.cfg.ack_deadline(inc.priority)).into());
            }
        }
    }

    /// After a priority rise, an open incident must be acknowledged by the
    /// new priority's deadline if that is sooner.
    fn tighten_deadline(&self, inc: &mut Incident, now: SystemTime) {
        if inc.state != IncidentState::Open as i32 || inc.logged {
            return;
        }
        let new = now + self.cfg.ack_deadline(inc.priority);
        if inc.ack_deadline.is_none_or(|d| time(d) > new) {
            inc.ack_deadline = Some(new.into());
        }
    }

    fn link(&self, inc: &Incident, sig: &Signal, out: &mut Changes) {
        if let Some(seq) = sig.seq {
            out.links.push(EventLink {
                incident_id: inc.id.clone(),
                post_id: sig.post.clone(),
                seq,
            });
        }
    }

    fn classify(&self, ev: &Event, now: SystemTime) -> Option<Signal> {
        let device = ev
            .source
            .as_ref()
            .map(|s| s.device_id.clone())
            .unwrap_or_default();
        let at = event_time(ev, now);
        let mut category = ev.category();
        let mut restore = ev.restore;
        let mut evidence = Evidence::Other;
        // A certificate coming to its end is work for the week, not the
        // hour: the lowest priority, whatever category the gateway gave.
        let mut low_priority = false;
        let (subject, condition) = match &ev.body {
            Some(Body::Alarm(a)) => {
                if category == EventCategory::Unspecified {
                    category = EventCategory::Other;
                }
                evidence = Evidence::PanelAlarm;
                let account = if a.account.is_empty() {
                    &device
                } else {
                    &a.account
                };
                let cat = category_name(category);
                if a.zone > 0 {
                    (
                        format!("zone:{}", a.zone),
                        Some(format!("alarm:{account}:{}:{cat}", a.zone)),
                    )
                } else {
                    (
                        format!("panel:{account}:{cat}"),
                        Some(format!("alarm:{account}:0:{cat}")),
                    )
                }
            }
            Some(Body::Camera(c)) => {
                let kind = c.kind();
                let detection = matches!(
                    kind,
                    CameraEventKind::Motion
                        | CameraEventKind::LineCrossing
                        | CameraEventKind::Intrusion
                );
                if category == EventCategory::Unspecified {
                    category = match kind {
                        _ if detection => EventCategory::VideoDetection,
                        CameraEventKind::Tamper => EventCategory::Tamper,
                        CameraEventKind::VideoLoss | CameraEventKind::SceneChange => {
                            EventCategory::Trouble
                        }
                        _ => EventCategory::Other,
                    };
                }
                restore |= c.state() == CameraEventState::Stop;
                let condition = (c.state() != CameraEventState::OneShot)
                    .then(|| format!("camera:{}:{}", c.camera_id, camera_kind_name(kind)));
                let subject = if detection {
                    evidence = Evidence::CameraDetection;
                    self.camera_subject(&ev.post_id, &c.camera_id)
                } else {
                    format!("camera:{}", c.camera_id)
                };
                (subject, condition)
            }
            Some(Body::Health(h)) => {
                restore |= h.state() == HealthState::Restored;
                low_priority = h.kind() == HealthKind::CertificateExpiry;
                let subject = match h.kind() {
                    HealthKind::PanelSupervision => format!("supervision:panel:{}", h.subject),
                    HealthKind::CameraUnreachable => format!("supervision:camera:{}", h.subject),
                    HealthKind::Storage => "gateway:storage".to_owned(),
                    HealthKind::CertificateExpiry => "gateway:certificate".to_owned(),
                    HealthKind::GatewayStart | HealthKind::Unspecified => return None,
                };
                if category == EventCategory::Unspecified {
                    category = match h.kind() {
                        HealthKind::Storage => EventCategory::Trouble,
                        _ => EventCategory::Supervisory,
                    };
                }
                (subject.clone(), Some(subject))
            }
            None => {
                let cat = category_name(category);
                (
                    format!("device:{device}:{cat}"),
                    Some(format!("device:{device}:{cat}")),
                )
            }
        };
        let priority = match category_priority(category)? {
            _ if low_priority => Priority::P4,
            p => p,
        };
        let title = if ev.description.is_empty() {
            format!("{} at {subject}", category_name(category).replace('_', " "))
        } else {
            ev.description.clone()
        };
        Some(Signal {
            post: ev.post_id.clone(),
            subject,
            category,
            priority,
            severity: ev.severity,
            restore,
            condition,
            evidence,
            source: if device.is_empty() {
                "unknown".into()
            } else {
                device
            },
            title,
            at,
            seq: Some(ev.seq),
        })
    }

    /// Subject of a camera detection: the zone the camera watches (one with
    /// an unresolved incident first), else the camera itself.
    fn camera_subject(&self, post: &str, camera: &str) -> String {
        let Some(zones) = self.camera_zones.get(&(post.to_owned(), camera.to_owned())) else {
            return format!("camera:{camera}");
        };
        let busy = zones
            .iter()
            .find(|z| self.open_incident_for(post, &format!("zone:{z}")).is_some());
        format!("zone:{}", busy.unwrap_or(&zones[0]))
    }
}

/// Event time: when the gateway received it; never in our future.
fn event_time(ev: &Event, now: SystemTime) -> SystemTime {
    ev.received_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .map_or(now, |t| t.min(now))
}

/// Whether two times are at most `secs` apart.
fn within(a: SystemTime, b: SystemTime, secs: u64) -> bool {
    let gap = a
        .duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap_or_default();
    gap <= Duration::from_secs(secs)
}
