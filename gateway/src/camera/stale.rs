//! The stale-state timer's bookkeeping: which stateful detections are
//! running, and since when they were last confirmed. A START (or a repeated
//! START) arms the detection's deadline; its STOP disarms it; past the
//! deadline the detection is closed with a STOP marked `stale = "true"`.
//!
//! Pure and clock-free (the caller passes `Instant`s), so it is tested
//! without a runtime; [`super::CameraInput`] drives it.

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;
use vigil_proto::v1::CameraEventState;

use super::Detection;

/// Most running detections tracked at once. Each is keyed by camera, kind,
/// topic, region and video source, and the region is the camera's string:
/// a camera inventing regions must not grow memory without bound. Past
/// this, new STARTs are stored as usual but not timed (and logged).
pub const MAX_TRACKED: usize = 4096;

type Key = (String, i32, String, String, String);

fn key(d: &Detection) -> Key {
    (
        d.camera.clone(),
        d.mapping.kind as i32,
        d.topic.clone(),
        d.region.clone(),
        d.video_source.clone(),
    )
}

/// Running stateful detections and their deadlines.
#[derive(Debug)]
pub struct StaleTracker {
    timeout: Duration,
    running: HashMap<Key, (Detection, Instant)>,
}

impl StaleTracker {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            running: HashMap::new(),
        }
    }

    /// Notes a stored detection seen at `at`.
    pub fn observe(&mut self, d: &Detection, at: Instant) {
        match d.state {
            CameraEventState::Start => {
                let k = key(d);
                if self.running.len() >= MAX_TRACKED && !self.running.contains_key(&k) {
                    tracing::warn!(camera = %d.camera, topic = %d.topic,
                        "too many running camera detections; this one is not timed");
                    return;
                }
                self.running.insert(k, (d.clone(), at + self.timeout));
            }
            CameraEventState::Stop => {
                self.running.remove(&key(d));
            }
            _ => {}
        }
    }

    /// Removes and returns, as STOPs, the detections whose deadline is at
    /// or before `at`.
    pub fn expired(&mut self, at: Instant) -> Vec<Detection> {
        let due: Vec<Key> = self
            .running
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= at)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<Detection> = due
            .into_iter()
            .filter_map(|k| self.running.remove(&k))
            .map(|(start, _)| Detection {
                state: CameraEventState::Stop,
                confidence: None,
                occurred_at: None,
                attributes: [("stale".to_owned(), "true".to_owned())].into(),
                dedup_key: None,
                ..start
            })
            .collect();
        out.sort_by(|a, b| (&a.camera, &a.topic, &a.region).cmp(&(&b.camera, &b.topic, &b.region)));
        out
    }

    /// Puts back a stale STOP that could not be stored, due at `at`.
    pub fn restore(&mut self, stop: &Detection, at: Instant) {
        let start = Detection {
            state: CameraEventState::Start,
            ..stop.clone()
        };
        self.running.entry(key(&start)).or_insert((start, at));
    }

    /// How many detections are running.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::by_push_name;

    fn det(kind: &str, region: &str, state: CameraEventState) -> Detection {
        Detection {
            camera: "cam-1".into(),
            mapping: by_push_name(kind),
            topic: kind.into(),
            state,
            region: region.into(),
            confidence: Some(0.5),
            video_source: String::new(),
            occurred_at: None,
            attributes: Default::default(),
            dedup_key: None,
        }
    }

    #[test]
    fn start_without_stop_expires_once() {
        let t0 = Instant::now();
        let mut s = StaleTracker::new(Duration::from_secs(60));
        s.observe(&det("motion", "a", CameraEventState::Start), t0);
        s.observe(&det("motion", "b", CameraEventState::Start), t0);
        s.observe(&det("motion", "b", CameraEventState::Stop), t0);
        s.observe(&det("line_crossing", "a", CameraEventState::OneShot), t0);
        assert_eq!(s.len(), 1);
        assert!(s.expired(t0 + Duration::from_secs(59)).is_empty());
        let stale = s.expired(t0 + Duration::from_secs(60));
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].state, CameraEventState::Stop);
        assert_eq!(stale[0].region, "a");
        assert_eq!(stale[0].attributes["stale"], "true");
        assert!(s.expired(t0 + Duration::from_secs(600)).is_empty());
    }

    #[test]
    fn repeated_start_rearms_the_deadline() {
        let t0 = Instant::now();
        let mut s = StaleTracker::new(Duration::from_secs(60));
        s.observe(&det("tamper", "", CameraEventState::Start), t0);
        s.observe(
            &det("tamper", "", CameraEventState::Start),
            t0 + Duration::from_secs(50),
        );
        assert!(s.expired(t0 + Duration::from_secs(100)).is_empty());
        assert_eq!(s.expired(t0 + Duration::from_secs(110)).len(), 1);
    }

    #[test]
    fn tracking_is_bounded() {
        let t0 = Instant::now();
        let mut s = StaleTracker::new(Duration::from_secs(60));
        for i in 0..MAX_TRACKED + 10 {
            s.observe(&det("motion", &i.to_string(), CameraEventState::Start), t0);
        }
        assert_eq!(s.len(), MAX_TRACKED);
    }
}
