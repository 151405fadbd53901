//! The HTTP push endpoint: cameras and NVRs that can call a URL on an event
//! POST it here, one event per request.
//!
//! ```text
//! POST /v1/camera-events
//! Authorization: Bearer <the camera's token from [[http.cameras]]>
//! Content-Type: application/json
//!
//! {"camera": "cam-2", "kind": "motion", "state": "start",
//!  "region": "North fence", "confidence": 0.8,
//!  "time": "2026-11-26T09:00:00Z", "video_source": "1",
//!  "id": "evt-4711", "attributes": {"object": "human"}}
//! ```
//!
//! `camera` and `kind` are required. `kind` is one of `motion`,
//! `line_crossing`, `intrusion`, `tamper`, `video_loss`, `scene_change`, or
//! any other word (stored as kind OTHER with the word as its topic).
//! `state` is `start`, `stop` or `one_shot`; it defaults to `one_shot` and
//! is required for the stateful kinds. `id`, when given, makes a retried
//! request idempotent: the same `id` from the same camera is stored once.
//! Attribute values may be strings, numbers or booleans.
//!
//! Answers (all with a JSON body): 202 `{"seq": N, "duplicate": false}`
//! only after the event is durable in the outbox; 400 bad JSON or field;
//! 401 missing or wrong token; 404 unknown path or camera; 405 not POST;
//! 408 body too slow; 413 body over `http.max_body_bytes`; 415 not JSON;
//! 503 the outbox refused the event (the camera should retry).
//!
//! The token is checked before the body is read, so a caller without one
//! costs only its headers.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue},
    service::service_fn,
};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vigil_net::Front;
use vigil_proto::v1::CameraEventState;

use super::{CameraInput, Detection, by_push_name};
use crate::outbox::Appended;

/// The one path events are posted to.
pub const PATH: &str = "/v1/camera-events";
/// Longest `kind`, `region`, `video_source`, `id` or attribute string.
pub const MAX_FIELD_CHARS: usize = 256;
/// Most attributes on one event.
pub const MAX_ATTRIBUTES: usize = 32;

/// A camera allowed to push, with its bearer token.
#[derive(Debug, Clone)]
pub struct PushCamera {
    pub camera: String,
    pub token: String,
}

/// Limits and cameras of the endpoint.
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub cameras: Vec<PushCamera>,
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// Connections open at once; at the cap the oldest one that has not
    /// sent a request yet is closed for the newcomer.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_source: usize,
    /// Headers and body must arrive within this; then 408 or a close. Also
    /// how long a new connection has to send its first request.
    pub request_timeout: Duration,
}

impl PushConfig {
    /// The listener's limits.
    pub fn limits(&self) -> vigil_net::Limits {
        vigil_net::Limits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            preauth_deadline: self.request_timeout,
            idle_timeout: Some(IDLE_TIMEOUT),
            grace: Duration::from_secs(5),
        }
    }
}

/// A push connection with no byte either way for this long is closed (a
/// kept-alive one goes sooner: its next request's headers are due within
/// `request_timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct PushMetrics {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// The listener's counters: connections, caps, shedding, deadlines.
    pub listener: Arc<vigil_net::Stats>,
}

#[derive(Debug)]
struct Handler {
    config: PushConfig,
    input: Arc<CameraInput>,
    metrics: Arc<PushMetrics>,
}

/// Serves the push endpoint on `listener` until `shutdown`; requests in
/// flight get their answer first. The listener is a `vigil_net` front: a
/// connection counts as authenticated at its first request (the bearer
/// token is checked per request, by the handler).
pub async fn serve(
    listener: TcpListener,
    config: PushConfig,
    input: Arc<CameraInput>,
    metrics: Arc<PushMetrics>,
    shutdown: CancellationToken,
) {
    let front = Front::with_stats("camera_push", config.limits(), metrics.listener.clone());
    let handler = Arc::new(Handler {
        config,
        input,
        metrics,
    });
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.handle(req).await) }
    });
    vigil_net::http::serve(&front, listener, shutdown, service).await;
}

/// The JSON body (see the module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    camera: String,
    kind: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    confidence: Option<f32>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    video_source: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, serde_json::Value>,
}

/// A refusal: status and the message sent back.
struct Refusal(StatusCode, String);

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal(status, message.into())
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

impl Handler {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match self.accept(req).await {
            Ok((seq, duplicate)) => {
                self.metrics.accepted.fetch_add(1, Ordering::Relaxed);
                json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({ "seq": seq, "duplicate": duplicate }),
                )
            }
            Err(Refusal(status, message)) => {
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                info!(status = status.as_u16(), reason = %message, "camera push refused");
                json(status, &serde_json::json!({ "error": message }))
            }
        }
    }

    async fn accept(&self, req: Request<Incoming>) -> Result<(u64, bool), Refusal> {
        if req.uri().path() != PATH {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!("no such path; events go to POST {PATH}"),
            ));
        }
        if req.method() != Method::POST {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("use POST {PATH}"),
            ));
        }
        let authorized = self.authorize(req.headers().get(AUTHORIZATION))?;
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            ));
        }
        let max = self.config.max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large(max));
        }
        let body = Limited::new(req.into_body(), max);
        let bytes = match tokio::time::timeout(self.config.request_timeout, body.collect()).await {
            Err(_) => return Err(refuse(StatusCode::REQUEST_TIMEOUT, "body too slow")),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(too_large(max));
            }
            Ok(Err(e)) => {
                return Err(refuse(StatusCode::BAD_REQUEST, format!("body: {e}")));
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let body: PushBody = serde_json::from_slice(&bytes)
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
        if body.camera != authorized.camera {
            if self.config.cameras.iter().any(|c| c.camera == body.camera) {
                return Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    format!("the token is not the token of camera {:?}", body.camera),
                ));
            }
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!("unknown camera {:?}", body.camera),
            ));
        }
        let detection = detection(body).map_err(|m| refuse(StatusCode::BAD_REQUEST, m))?;
        let appended = self.input.record(vec![detection]).await.map_err(|e| {
            warn!(error = %e, "camera event not stored");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway cannot store events right now; retry",
            )
        })?;
        match appended.first() {
            Some(Appended::Stored(seq)) => Ok((*seq, false)),
            Some(Appended::Duplicate(seq)) => Ok((*seq, true)),
            None => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "not stored; retry")),
        }
    }

    /// The camera whose token the request carries. Every configured token
    /// is compared in constant time, so timing tells nothing about them.
    fn authorize(&self, header: Option<&HeaderValue>) -> Result<&PushCamera, Refusal> {
        let token = header
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "missing Authorization: Bearer <token>",
                )
            })?;
        let mut found = None;
        for camera in &self.config.cameras {
            if bool::from(camera.token.as_bytes().ct_eq(token.as_bytes())) {
                found = Some(camera);
            }
        }
        found.ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "unknown token"))
    }
}

fn too_large(max: usize) -> Refusal {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body larger than {max} bytes"),
    )
}

fn bounded(name: &str, value: Option<String>) -> Result<String, String> {
    let value = value.unwrap_or_default();
    if value.chars().count() > MAX_FIELD_CHARS {
        return Err(format!("{name}: longer than {MAX_FIELD_CHARS} characters"));
    }
    Ok(value)
}

/// Checks a body and turns it into a detection.
fn detection(body: PushBody) -> Result<Detection, String> {
    let kind = bounded("kind", Some(body.kind))?;
    if kind.is_empty() {
        return Err("kind: must not be empty".into());
    }
    let mapping = by_push_name(&kind);
    let state = match body.state.as_deref() {
        Some("start") => CameraEventState::Start,
        Some("stop") => CameraEventState::Stop,
        Some("one_shot") => CameraEventState::OneShot,
        None if mapping.state_item.is_some() => {
            return Err(format!("state: required for {kind} (start or stop)"));
        }
        None => CameraEventState::OneShot,
        Some(other) => {
            return Err(format!("state: {other:?} is not start, stop or one_shot"));
        }
    };
    if let Some(c) = body.confidence
        && !(0.0..=1.0).contains(&c)
    {
        return Err(format!("confidence: {c} is not between 0 and 1"));
    }
    let occurred_at = body
        .time
        .as_deref()
        .map(|t| {
            let parsed = OffsetDateTime::parse(t, &Rfc3339)
                .map_err(|e| format!("time: {t:?} is not RFC 3339: {e}"))?;
            // In UTC, as stored: years 1-9999 only (what every client can
            // print).
            super::device_time(parsed)
                .ok_or_else(|| format!("time: {t:?} is outside years 1-9999 (UTC)"))
        })
        .transpose()?;
    if body.attributes.len() > MAX_ATTRIBUTES {
        return Err(format!("attributes: more than {MAX_ATTRIBUTES}"));
    }
    let mut attributes = BTreeMap::new();
    for (k, v) in body.attributes {
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "attributes.{k}: must be a string, number or boolean"
                ));
            }
        };
        let k = bounded("attribute name", Some(k))?;
        let text = bounded(&format!("attributes.{k}"), Some(text))?;
        attributes.insert(k, text);
    }
    let id = bounded("id", body.id)?;
    Ok(Detection {
        dedup_key: (!id.is_empty()).then(|| format!("camera-push:{}:{id}", body.camera)),
        camera: body.camera,
        mapping,
        topic: kind,
        state,
        region: bounded("region", body.region)?,
        confidence: body.confidence,
        video_source: bounded("video_source", body.video_source)?,
        occurred_at,
        attributes,
    })
}
