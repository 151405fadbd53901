//! The incident engine: deterministic rules that turn stored events, post
//! status and analysts' actions into incidents and their audit trail.
//!
//! The engine holds no clock. Every call takes `now` (the ops-center's time,
//! used for deadlines and for when a change happened); correlation windows
//! are measured on event time (the gateway's `received_at`), so a backlog
//! re-sent after an outage correlates as it happened, not as it arrived.
//! Every call appends what it changed to a [`Changes`], which the writer
//! commits in the same transaction as the events that caused it.
//!
//! In memory it keeps the incidents that can still change by themselves:
//! every unresolved one, and resolved ones within the reactivation window.
//! [`Engine::new`] rebuilds that from an [`EngineSnapshot`] at start. If a
//! commit fails the engine's memory is ahead of the store; the writer then
//! stops (see `writer`), and a restart rebuilds it.
//!
//! Layout: [`correlate`] (events and status → incidents), [`workflow`]
//! (acknowledge, assign, escalate, resolve, reopen, notes, test mode); this
//! module holds the configuration, the state and the timers ([`Engine::tick`]).

pub mod correlate;
pub mod workflow;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use vigil_proto::v1::{
    AuditAction, AuditEntry, EventCategory, Incident, IncidentState, PostStatus, Priority,
};

use crate::store::{Changes, EngineSnapshot, TestModeWrite};

pub use workflow::{Action, Actor, WorkflowError};

/// Actor and role recorded for the engine's own changes.
pub const SYSTEM: &str = "system";

/// The `[engine]` config table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Events of one post and zone (or camera) whose event times are at most
    /// this far apart join one incident.
    pub correlation_window_secs: u64,
    /// A panel alarm and a camera detection in a mapped zone at most this far
    /// apart make the incident verified (and one priority more urgent).
    pub verification_window_secs: u64,
    /// A resolved incident that gets a new alarm within this time reopens.
    pub reactivation_window_secs: u64,
    /// Time to acknowledge, per priority; past it the incident escalates by
    /// itself, and again after each further deadline.
    pub ack_deadline_secs: AckDeadlines,
    /// Automatic escalation stops at this level.
    pub max_escalation_level: u32,
    /// A source (device) of one post may open at most this many incidents per
    /// flood window; beyond that its events fold into one flood incident.
    /// Life-safety (P1) events are never folded.
    pub flood_limit: u32,
    /// All sources of one post together may open at most this many incidents
    /// of one category per flood window (many devices reporting the same
    /// thing); beyond that they fold into one incident per post and category.
    pub flood_post_category_limit: u32,
    /// All sources of one post together may open at most this many incidents
    /// per flood window, whatever the category; beyond that they fold into
    /// one incident per post.
    pub flood_post_limit: u32,
    pub flood_window_secs: u64,
    /// Longest test mode a supervisor may set; longer requests are refused.
    pub max_test_mode_secs: u64,
    /// Standard operating procedure text per event category (`fire`,
    /// `burglary`, `video_detection`, …) and `default` for the others.
    pub procedures: BTreeMap<String, String>,
    /// Which cameras watch which zone of which post.
    pub zone_cameras: Vec<ZoneCameras>,
}

/// Acknowledgment deadlines per priority, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckDeadlines {
    pub p1: u64,
    pub p2: u64,
    pub p3: u64,
    pub p4: u64,
}

/// One zone of a post and the cameras that watch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneCameras {
    pub post: String,
    pub zone: u32,
    pub cameras: Vec<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            correlation_window_secs: 300,
            verification_window_secs: 120,
            reactivation_window_secs: 900,
            ack_deadline_secs: AckDeadlines {
                p1: 60,
                p2: 180,
                p3: 600,
                p4: 1800,
            },
            max_escalation_level: 3,
            flood_limit: 10,
            flood_post_category_limit: 20,
            flood_post_limit: 40,
            flood_window_secs: 60,
            max_test_mode_secs: 8 * 3600,
            procedures: BTreeMap::new(),
            zone_cameras: Vec::new(),
        }
    }
}

/// A config value the engine cannot work with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("engine.{field}: {reason}")]
pub struct EngineConfigError {
    pub field: String,
    pub reason: String,
}

impl EngineConfig {
    /// Checks values and names; called when the config is loaded.
    pub fn validate(&self) -> Result<(), EngineConfigError> {
        let err = |field: &str, reason: &str| EngineConfigError {
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        for (field, v) in [
            ("correlation_window_secs", self.correlation_window_secs),
            ("verification_window_secs", self.verification_window_secs),
            ("flood_window_secs", self.flood_window_secs),
            ("max_test_mode_secs", self.max_test_mode_secs),
            ("ack_deadline_secs.p1", self.ack_deadline_secs.p1),
            ("ack_deadline_secs.p2", self.ack_deadline_secs.p2),
            ("ack_deadline_secs.p3", self.ack_deadline_secs.p3),
            ("ack_deadline_secs.p4", self.ack_deadline_secs.p4),
        ] {
            if v == 0 {
                return Err(err(field, "must be at least 1"));
            }
        }
        for (field, v) in [
            ("flood_limit", self.flood_limit),
            ("flood_post_category_limit", self.flood_post_category_limit),
            ("flood_post_limit", self.flood_post_limit),
        ] {
            if v == 0 {
                return Err(err(field, "must be at least 1"));
            }
        }
        for key in self.procedures.keys() {
            if key != "default" && category_from_name(key).is_none() {
                return Err(err(
                    &format!("procedures.{key}"),
                    "not an event category (use e.g. fire, burglary, video_detection, or default)",
                ));
            }
        }
        for zc in &self.zone_cameras {
            if vigil_pki::Identity::new(&zc.post).is_err() {
                return Err(err(
                    "zone_cameras.post",
                    &format!("{:?} is not a post id", zc.post),
                ));
            }
            if zc.zone == 0 {
                return Err(err("zone_cameras.zone", "zones are numbered from 1"));
            }
            if zc.cameras.is_empty() {
                return Err(err("zone_cameras.cameras", "list at least one camera"));
            }
        }
        Ok(())
    }

    fn ack_deadline(&self, priority: i32) -> Duration {
        let d = &self.ack_deadline_secs;
        Duration::from_secs(match Priority::try_from(priority).unwrap_or(Priority::P4) {
            Priority::P1 => d.p1,
            Priority::P2 => d.p2,
            Priority::P3 => d.p3,
            Priority::P4 | Priority::Unspecified => d.p4,
        })
    }
}

/// Lower-case short name of a category, as used in config and subjects:
/// `EVENT_CATEGORY_VIDEO_DETECTION` → `video_detection`.
pub fn category_name(category: EventCategory) -> String {
    category
        .as_str_name()
        .trim_start_matches("EVENT_CATEGORY_")
        .to_ascii_lowercase()
}

pub fn category_from_name(name: &str) -> Option<EventCategory> {
    let c = EventCategory::from_str_name(&format!("EVENT_CATEGORY_{}", name.to_ascii_uppercase()))?;
    (c != EventCategory::Unspecified).then_some(c)
}

/// The incident engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    procedures: HashMap<i32, String>,
    default_procedure: String,
    /// (post, camera) → zones it watches.
    camera_zones: HashMap<(String, String), Vec<u32>>,
    /// Incidents that can still change by themselves, by id.
    incidents: HashMap<String, Incident>,
    /// (post, subject) → the newest incident about it.
    latest: HashMap<(String, String), String>,
    test_modes: HashMap<String, SystemTime>,
    /// Last status per post: (state, at, boot id), to ignore repeats of a
    /// retained status.
    statuses: HashMap<String, (i32, Option<prost_types::Timestamp>, String)>,
    /// (post, flood key) → event times of the incidents opened recently under
    /// that key (`source:DEVICE`, `category:NAME`, `post`).
    flood: HashMap<(String, String), VecDeque<SystemTime>>,
    last_number: u64,
}

impl Engine {
    /// An engine resuming from `snapshot` (empty for a new store).
    pub fn new(cfg: EngineConfig, snapshot: EngineSnapshot) -> Self {
        let mut procedures = HashMap::new();
        let mut default_procedure = String::new();
        for (name, text) in &cfg.procedures {
            match category_from_name(name) {
                Some(c) => {
                    procedures.insert(c as i32, text.clone());
                }
                None => default_procedure.clone_from(text),
            }
        }
        let mut camera_zones: HashMap<(String, String), Vec<u32>> = HashMap::new();
        for zc in &cfg.zone_cameras {
            for cam in &zc.cameras {
                camera_zones
                    .entry((zc.post.clone(), cam.clone()))
                    .or_default()
                    .push(zc.zone);
            }
        }
        let mut engine = Self {
            cfg,
            procedures,
            default_procedure,
            camera_zones,
            incidents: HashMap::new(),
            latest: HashMap::new(),
            test_modes: snapshot.test_modes.into_iter().collect(),
            statuses: snapshot
                .statuses
                .into_iter()
                .map(|s| (s.post_id.clone(), status_key(&s)))
                .collect(),
            flood: HashMap::new(),
            last_number: snapshot.last_incident_number,
        };
        // Snapshot incidents come in number order, so the newest per subject
        // wins.
        for inc in snapshot.incidents {
            engine
                .latest
                .insert((inc.post_id.clone(), inc.subject.clone()), inc.id.clone());
            engine.incidents.insert(inc.id.clone(), inc);
        }
        engine
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// An incident the engine holds in memory (unresolved or recently
    /// resolved).
    pub fn incident(&self, id: &str) -> Option<&Incident> {
        self.incidents.get(id)
    }

    /// Incidents held in memory, in no particular order.
    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values()
    }

    /// Until when `post` is in test mode, if it is at `now`.
    pub fn test_mode_until(&self, post: &str, now: SystemTime) -> Option<SystemTime> {
        self.test_modes.get(post).copied().filter(|&u| u > now)
    }

    /// Timers: escalates incidents left unacknowledged past their deadline,
    /// ends expired test modes, and forgets resolved incidents past the
    /// reactivation window. Call it about once a second.
    pub fn tick(&mut self, now: SystemTime, out: &mut Changes) {
        let max_level = self.cfg.max_escalation_level;
        let mut overdue: Vec<String> = self
            .incidents
            .values()
            .filter(|i| {
                i.state == IncidentState::Open as i32
                    && i.escalation_level < max_level
                    && i.ack_deadline.is_some_and(|d| time(d) <= now)
            })
            .map(|i| i.id.clone())
            .collect();
        overdue.sort();
        for id in overdue {
            let deadline = self.cfg.ack_deadline(self.incidents[&id].priority);
            let inc = self.incidents.get_mut(&id).expect("listed above");
            let prev = inc.version;
            inc.escalation_level += 1;
            inc.ack_deadline = Some((now + deadline).into());
            let detail = format!(
                "not acknowledged in time: escalation level {}",
                inc.escalation_level
            );
            record(
                inc,
                AuditAction::AutoEscalated,
                &Actor::system(),
                now,
                detail,
                out,
            );
            out.put_incident(inc.clone(), Some(prev));
        }

        let mut expired: Vec<String> = self
            .test_modes
            .iter()
            .filter(|&(_, &until)| until <= now)
            .map(|(post, _)| post.clone())
            .collect();
        expired.sort();
        for post in expired {
            self.test_modes.remove(&post);
            out.test_modes.push(TestModeWrite {
                post_id: post.clone(),
                until: None,
            });
            out.audit.push(post_audit(
                &post,
                AuditAction::TestModeEnded,
                &Actor::system(),
                now,
                "test mode expired".into(),
            ));
        }

        let keep = self.cfg.reactivation_window();
        self.incidents.retain(|_, inc| {
            inc.state != IncidentState::Resolved as i32
                || inc.resolved_at.is_none_or(|r| time(r) + keep > now)
        });
        let incidents = &self.incidents;
        self.latest.retain(|_, id| incidents.contains_key(id));

        let window = Duration::from_secs(self.cfg.flood_window_secs);
        self.flood.retain(|_, times| {
            while times.front().is_some_and(|&t| t + window <= now) {
                times.pop_front();
            }
            !times.is_empty()
        });
    }

    fn next_id(&mut self) -> String {
        self.last_number += 1;
        crate::store::incident_id(self.last_number)
    }

    fn procedure(&self, category: i32) -> String {
        self.procedures
            .get(&category)
            .unwrap_or(&self.default_procedure)
            .clone()
    }
}

impl EngineConfig {
    fn reactivation_window(&self) -> Duration {
        Duration::from_secs(self.reactivation_window_secs)
    }
}

fn status_key(s: &PostStatus) -> (i32, Option<prost_types::Timestamp>, String) {
    (s.state, s.at, s.boot_id.clone())
}

/// Applies one audited change: bumps the version, stamps the time and
/// records who did what.
fn record(
    inc: &mut Incident,
    action: AuditAction,
    actor: &Actor,
    now: SystemTime,
    detail: String,
    out: &mut Changes,
) {
    let from = inc.version;
    inc.version += 1;
    inc.updated_at = Some(now.into());
    out.audit.push(AuditEntry {
        incident_id: inc.id.clone(),
        action: action as i32,
        actor: actor.id.clone(),
        actor_role: actor.role.clone(),
        at: Some(now.into()),
        from_version: from,
        to_version: inc.version,
        detail,
        post_id: inc.post_id.clone(),
        step: 0,
    });
}

fn post_audit(
    post: &str,
    action: AuditAction,
    actor: &Actor,
    now: SystemTime,
    detail: String,
) -> AuditEntry {
    AuditEntry {
        incident_id: String::new(),
        action: action as i32,
        actor: actor.id.clone(),
        actor_role: actor.role.clone(),
        at: Some(now.into()),
        from_version: 0,
        to_version: 0,
        detail,
        post_id: post.to_owned(),
        step: 0,
    }
}

/// A protobuf timestamp as a `SystemTime` (the Unix epoch if out of range).
fn time(ts: prost_types::Timestamp) -> SystemTime {
    SystemTime::try_from(ts).unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
