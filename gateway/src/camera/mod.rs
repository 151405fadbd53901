//! Camera events: whatever a camera reports (an ONVIF topic or an HTTP push
//! `kind`) becomes a `vigil.v1.CameraEvent` through one table, [`KINDS`].
//! A topic that is not in the table is kept as kind OTHER with its topic;
//! nothing a camera sends is dropped.
//!
//! Stateful detections (motion, intrusion, tamper, video loss, scene
//! change) are tracked by [`stale::StaleTracker`]: a START that is never
//! followed by its STOP (the camera rebooted, the network dropped the
//! message) gets a STOP of its own after the configured stale timeout, so
//! no incident stays "in progress" for ever.
//!
//! Layout:
//! - this file: the table, [`Detection`] (one report from a camera) and
//!   [`CameraInput`] (detections → durable outbox events).
//! - [`stale`]: the stale-state timer.
//! - [`push`]: the HTTP push endpoint.
//! - [`onvif`]: the ONVIF PullPoint client, one subscription per camera.
//!
//! The simulated camera (ONVIF device and HTTP pusher) is in `vigil-sim`.

pub mod onvif;
pub mod push;
pub mod stale;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use vigil_proto::v1::{
    CameraEvent, CameraEventKind, CameraEventState, Event, EventCategory, HealthKind, HealthState,
    PostHealth, Severity, Source, SourceKind, event,
};

use crate::{
    outbox::{Appended, NewEvent, Outbox, OutboxError},
    signals::timestamp,
};

/// How one kind of camera report maps to Vigil's taxonomy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KindMapping {
    /// The ONVIF topic without its namespace prefix (`tns1:`). An entry
    /// ending in `/` matches every topic below it.
    pub topic: &'static str,
    /// The `kind` an HTTP push uses for it.
    pub push_name: &'static str,
    pub kind: CameraEventKind,
    /// The ONVIF data item whose boolean value is the state (START when
    /// true, STOP when false); `None` for one-shot events.
    pub state_item: Option<&'static str>,
    pub category: EventCategory,
    /// Severity of a START or ONE_SHOT; a STOP is always LOW.
    pub severity: Severity,
    /// Words for the event's description.
    pub label: &'static str,
}

/// The one mapping table. Order matters only for prefixes: the first
/// matching entry wins.
pub const KINDS: &[KindMapping] = &[
    KindMapping {
        topic: "RuleEngine/CellMotionDetector/Motion",
        push_name: "motion",
        kind: CameraEventKind::Motion,
        state_item: Some("IsMotion"),
        category: EventCategory::VideoDetection,
        severity: Severity::Low,
        label: "Motion",
    },
    KindMapping {
        // The older, simpler motion topic many cameras send instead.
        topic: "VideoSource/MotionAlarm",
        push_name: "motion",
        kind: CameraEventKind::Motion,
        state_item: Some("State"),
        category: EventCategory::VideoDetection,
        severity: Severity::Low,
        label: "Motion",
    },
    KindMapping {
        topic: "RuleEngine/FieldDetector/ObjectsInside",
        push_name: "intrusion",
        kind: CameraEventKind::Intrusion,
        state_item: Some("IsInside"),
        category: EventCategory::VideoDetection,
        severity: Severity::High,
        label: "Intrusion",
    },
    KindMapping {
        topic: "RuleEngine/LineDetector/Crossed",
        push_name: "line_crossing",
        kind: CameraEventKind::LineCrossing,
        state_item: None,
        category: EventCategory::VideoDetection,
        severity: Severity::High,
        label: "Line crossed",
    },
    KindMapping {
        topic: "RuleEngine/TamperDetector/Tamper",
        push_name: "tamper",
        kind: CameraEventKind::Tamper,
        state_item: Some("IsTamper"),
        category: EventCategory::Tamper,
        severity: Severity::Medium,
        label: "Camera tamper",
    },
    KindMapping {
        topic: "VideoSource/SignalLoss",
        push_name: "video_loss",
        kind: CameraEventKind::VideoLoss,
        state_item: Some("State"),
        category: EventCategory::Trouble,
        severity: Severity::Medium,
        label: "Video loss",
    },
    KindMapping {
        topic: "VideoSource/GlobalSceneChange/",
        push_name: "scene_change",
        kind: CameraEventKind::SceneChange,
        state_item: Some("State"),
        category: EventCategory::Tamper,
        severity: Severity::Medium,
        label: "Scene change",
    },
];

/// What an unknown topic or push kind maps to: kept, never dropped.
pub const OTHER: KindMapping = KindMapping {
    topic: "",
    push_name: "",
    kind: CameraEventKind::Other,
    state_item: None,
    category: EventCategory::Other,
    severity: Severity::Info,
    label: "Camera event",
};

/// The table entry for an ONVIF topic (`tns1:RuleEngine/...`), or
/// [`OTHER`].
pub fn by_topic(topic: &str) -> &'static KindMapping {
    // Topic expressions carry a namespace prefix per path segment only at
    // the root in practice (`tns1:`); strip any `prefix:` of each segment.
    let bare = topic
        .split('/')
        .map(|seg| seg.rsplit_once(':').map_or(seg, |(_, local)| local))
        .collect::<Vec<_>>()
        .join("/");
    KINDS
        .iter()
        .find(|m| {
            if m.topic.ends_with('/') {
                bare.starts_with(m.topic)
            } else {
                bare == m.topic
            }
        })
        .unwrap_or(&OTHER)
}

/// The table entry for an HTTP push `kind`, or [`OTHER`].
pub fn by_push_name(kind: &str) -> &'static KindMapping {
    KINDS.iter().find(|m| m.push_name == kind).unwrap_or(&OTHER)
}

/// One report from a camera, before it gets a seq.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub camera: String,
    pub mapping: &'static KindMapping,
    /// The topic or push kind as the camera sent it.
    pub topic: String,
    pub state: CameraEventState,
    pub region: String,
    pub confidence: Option<f32>,
    pub video_source: String,
    /// Device time, when the camera sent one.
    pub occurred_at: Option<OffsetDateTime>,
    pub attributes: BTreeMap<String, String>,
    /// Identifies a retransmission of the same report.
    pub dedup_key: Option<String>,
}

/// A camera's event time as the gateway keeps it: within years 1-9999 in
/// UTC (what RFC 3339, proto3 JSON and every client can write). `None` for
/// a time outside: the HTTP push refuses such a request (400), an ONVIF
/// notification keeps its event but not its time (the event then carries
/// only the gateway's receive time), so a camera with a broken clock can
/// never put a time in the outbox that stalls it downstream.
pub fn device_time(t: OffsetDateTime) -> Option<OffsetDateTime> {
    let utc = vigil_proto::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    };
    vigil_proto::time_in_range(&utc).then_some(t)
}

impl Detection {
    /// The outbox event for this detection, received `now`.
    pub fn to_event(&self, now: OffsetDateTime) -> NewEvent {
        let m = self.mapping;
        let stop = self.state == CameraEventState::Stop;
        let what = if m.kind == CameraEventKind::Other {
            format!("{} {}", m.label, self.topic)
        } else {
            m.label.to_owned()
        };
        let mut description = match self.state {
            CameraEventState::Start => format!("{what} started, camera {}", self.camera),
            CameraEventState::Stop => format!("{what} ended, camera {}", self.camera),
            _ => format!("{what}, camera {}", self.camera),
        };
        if !self.region.is_empty() {
            description.push_str(&format!(", {}", self.region));
        }
        NewEvent {
            event: Event {
                occurred_at: self.occurred_at.and_then(device_time).map(timestamp),
                received_at: Some(timestamp(now)),
                source: Some(Source {
                    device_id: self.camera.clone(),
                    kind: SourceKind::Camera.into(),
                }),
                severity: if stop { Severity::Low } else { m.severity }.into(),
                category: m.category.into(),
                restore: stop,
                description,
                body: Some(event::Body::Camera(CameraEvent {
                    camera_id: self.camera.clone(),
                    kind: m.kind.into(),
                    state: self.state.into(),
                    region: self.region.clone(),
                    confidence: self.confidence,
                    topic: self.topic.clone(),
                    video_source: self.video_source.clone(),
                    attributes: self.attributes.clone().into_iter().collect(),
                })),
                ..Default::default()
            },
            dedup_key: self.dedup_key.clone(),
        }
    }
}

/// How often the stale-state timer looks for detections that never
/// stopped. Stale timeouts are minutes; a second of lateness is fine.
pub const STALE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Detections from every camera source (push, ONVIF) into the outbox, with
/// the stale-state timer.
#[derive(Debug)]
pub struct CameraInput {
    outbox: Outbox,
    // A tokio mutex: it is held across the outbox append so a STOP and the
    // timer's stale STOP for the same detection are never both written.
    stale: Mutex<stale::StaleTracker>,
}

impl CameraInput {
    pub fn new(outbox: Outbox, stale_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            outbox,
            stale: Mutex::new(stale::StaleTracker::new(stale_timeout)),
        })
    }

    /// Stores `detections` durably; returns once they are in the outbox.
    pub async fn record(&self, detections: Vec<Detection>) -> Result<Vec<Appended>, OutboxError> {
        let now = OffsetDateTime::now_utc();
        let mut stale = self.stale.lock().await;
        let events = detections.iter().map(|d| d.to_event(now)).collect();
        let appended = self.outbox.append(events).await?;
        let at = tokio::time::Instant::now();
        for d in &detections {
            stale.observe(d, at);
        }
        Ok(appended)
    }

    /// Stores a CAMERA_UNREACHABLE fault or restore for `camera`.
    pub async fn record_camera_health(
        &self,
        camera: &str,
        state: HealthState,
        detail: String,
    ) -> Result<(), OutboxError> {
        let description = match state {
            HealthState::Fault => format!("Camera {camera} unreachable"),
            _ => format!("Camera {camera} reachable again"),
        };
        let event = crate::supervision::health_event(
            camera,
            SourceKind::Camera,
            PostHealth {
                kind: HealthKind::CameraUnreachable.into(),
                state: state.into(),
                subject: camera.to_owned(),
                outbox_depth: self.outbox.state().depth,
                detail,
            },
            description,
        );
        self.outbox.append(vec![event]).await.map(|_| ())
    }

    /// Writes a STOP for every detection stale at `at`.
    pub async fn expire(&self, at: tokio::time::Instant) {
        let mut stale = self.stale.lock().await;
        let expired = stale.expired(at);
        if expired.is_empty() {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let events = expired
            .iter()
            .map(|d| {
                tracing::info!(camera = %d.camera, topic = %d.topic, region = %d.region,
                    "camera detection never stopped; closing it as stale");
                d.to_event(now)
            })
            .collect();
        if let Err(e) = self.outbox.append(events).await {
            tracing::error!(error = %e, "cannot store stale camera stops; retrying");
            // Put them back so the next check tries again.
            for d in &expired {
                stale.restore(d, at);
            }
        }
    }

    /// The stale-state timer, until `shutdown`.
    pub async fn run_stale_timer(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(STALE_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                at = tick.tick() => self.expire(at).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onvif_topics_map_through_the_table() {
        let cases = [
            (
                "tns1:RuleEngine/CellMotionDetector/Motion",
                CameraEventKind::Motion,
                Some("IsMotion"),
            ),
            (
                "tns1:RuleEngine/FieldDetector/ObjectsInside",
                CameraEventKind::Intrusion,
                Some("IsInside"),
            ),
            (
                "tns1:RuleEngine/LineDetector/Crossed",
                CameraEventKind::LineCrossing,
                None,
            ),
            (
                "tns1:RuleEngine/TamperDetector/Tamper",
                CameraEventKind::Tamper,
                Some("IsTamper"),
            ),
            (
                "tns1:VideoSource/SignalLoss",
                CameraEventKind::VideoLoss,
                Some("State"),
            ),
            (
                "tns1:VideoSource/GlobalSceneChange/ImagingService",
                CameraEventKind::SceneChange,
                Some("State"),
            ),
            (
                "tns1:VideoSource/GlobalSceneChange/AnalyticsService",
                CameraEventKind::SceneChange,
                Some("State"),
            ),
            (
                "tns1:VideoSource/MotionAlarm",
                CameraEventKind::Motion,
                Some("State"),
            ),
            (
                "tns1:Device/Trigger/DigitalInput",
                CameraEventKind::Other,
                None,
            ),
            (
                "tnsacme:RuleEngine/CellMotionDetector/MotionX",
                CameraEventKind::Other,
                None,
            ),
        ];
        for (topic, kind, item) in cases {
            let m = by_topic(topic);
            assert_eq!((m.kind, m.state_item), (kind, item), "{topic}");
        }
        // A vendor namespace prefix on a known topic still maps.
        assert_eq!(
            by_topic("ns2:RuleEngine/CellMotionDetector/Motion").kind,
            CameraEventKind::Motion
        );
    }

    #[test]
    fn push_kinds_map_through_the_table() {
        for m in KINDS {
            assert_eq!(by_push_name(m.push_name).kind, m.kind);
        }
        assert_eq!(by_push_name("smoke").kind, CameraEventKind::Other);
        assert_eq!(by_push_name("").kind, CameraEventKind::Other);
    }

    fn detection(kind: &str, state: CameraEventState) -> Detection {
        Detection {
            camera: "cam-1".into(),
            mapping: by_push_name(kind),
            topic: kind.into(),
            state,
            region: "North fence".into(),
            confidence: Some(0.75),
            video_source: String::new(),
            occurred_at: None,
            attributes: BTreeMap::from([("object".into(), "human".into())]),
            dedup_key: None,
        }
    }

    #[test]
    fn events_carry_category_severity_and_restore() {
        let now = OffsetDateTime::now_utc();
        let start = detection("intrusion", CameraEventState::Start).to_event(now);
        let e = start.event;
        assert_eq!(e.category(), EventCategory::VideoDetection);
        assert_eq!(e.severity(), Severity::High);
        assert!(!e.restore);
        assert_eq!(e.source.as_ref().unwrap().kind(), SourceKind::Camera);
        assert_eq!(
            e.description,
            "Intrusion started, camera cam-1, North fence"
        );
        let Some(event::Body::Camera(c)) = e.body else {
            panic!("not a camera event")
        };
        assert_eq!(c.kind(), CameraEventKind::Intrusion);
        assert_eq!(c.state(), CameraEventState::Start);
        assert_eq!(c.confidence, Some(0.75));
        assert_eq!(c.attributes["object"], "human");

        let stop = detection("intrusion", CameraEventState::Stop)
            .to_event(now)
            .event;
        assert_eq!(stop.severity(), Severity::Low);
        assert!(stop.restore);

        let other = detection("smoke", CameraEventState::OneShot)
            .to_event(now)
            .event;
        assert_eq!(other.category(), EventCategory::Other);
        let Some(event::Body::Camera(c)) = other.body else {
            panic!("not a camera event")
        };
        assert_eq!(
            (c.kind(), c.topic.as_str()),
            (CameraEventKind::Other, "smoke")
        );
    }

    async fn stored(outbox: &Outbox) -> Vec<(CameraEventState, bool, String)> {
        use vigil_proto::Message as _;
        outbox
            .read_from(1, 100, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|s| {
                let e = Event::decode(s.bytes.as_slice()).unwrap();
                let Some(event::Body::Camera(c)) = e.body else {
                    panic!("not a camera event")
                };
                let stale = c.attributes.get("stale").is_some_and(|v| v == "true");
                (c.state(), stale, c.region)
            })
            .collect()
    }

    fn open_outbox(dir: &tempfile::TempDir) -> Outbox {
        Outbox::open(
            &dir.path().join("outbox.db"),
            "p-001",
            crate::outbox::OutboxLimits::default(),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn stale_start_gets_one_stop_from_the_timer() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open_outbox(&dir);
        let input = CameraInput::new(outbox.clone(), Duration::from_secs(300));
        let shutdown = CancellationToken::new();
        let timer = tokio::spawn(input.clone().run_stale_timer(shutdown.clone()));
        input
            .record(vec![
                detection("motion", CameraEventState::Start),
                Detection {
                    region: "Gate".into(),
                    ..detection("tamper", CameraEventState::Start)
                },
            ])
            .await
            .unwrap();
        input
            .record(vec![Detection {
                region: "Gate".into(),
                ..detection("tamper", CameraEventState::Stop)
            }])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(250)).await;
        assert_eq!(stored(&outbox).await.len(), 3, "nothing stale yet");
        // Past the timeout the timer closes the motion that never stopped,
        // and only that one, once.
        // Time is paused and jumps ahead whenever the runtime is idle, but
        // the outbox writes on the blocking pool in real time: each step
        // also gives that write a few real milliseconds, so that a slow
        // disk cannot make virtual time outrun it.
        let mut got = Vec::new();
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            got = stored(&outbox).await;
            if got.len() > 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(got.len() > 3, "the timer closed the stale motion: {got:?}");
        assert_eq!(
            got[3],
            (CameraEventState::Stop, true, "North fence".to_owned())
        );
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(stored(&outbox).await.len(), 4);
        shutdown.cancel();
        timer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stop_before_the_timeout_prevents_the_stale_stop() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open_outbox(&dir);
        let input = CameraInput::new(outbox.clone(), Duration::from_secs(60));
        let t0 = tokio::time::Instant::now();
        input
            .record(vec![detection("intrusion", CameraEventState::Start)])
            .await
            .unwrap();
        input.expire(t0 + Duration::from_secs(59)).await;
        input
            .record(vec![detection("intrusion", CameraEventState::Stop)])
            .await
            .unwrap();
        input.expire(t0 + Duration::from_secs(3600)).await;
        let got = stored(&outbox).await;
        assert_eq!(got.len(), 2);
        assert!(!got[1].1, "the camera's own stop, not a stale one");
    }
}
