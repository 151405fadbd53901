//! ONVIF events: one PullPoint subscription per `[[onvif]]` camera.
//!
//! For each camera a task asks the device service for the event service
//! address (`GetCapabilities`, falling back to the device URL), creates a
//! PullPoint subscription with an initial termination time, and pulls
//! messages in a loop (each pull waits up to `pull_timeout_secs` on the
//! camera). The subscription is renewed when half of its lease (as the
//! camera's own clock states it) has passed, and unsubscribed on shutdown.
//! Any fault, timeout, malformed answer or connection error ends the
//! subscription; a new one is made after a backoff that doubles up to
//! `backoff_max_secs`.
//!
//! Every request carries a WS-Security UsernameToken with a password
//! digest. Notifications become [`Detection`]s through the one mapping
//! table ([`super::by_topic`]) and go into the outbox through
//! [`CameraInput::record`], exactly like HTTP pushes.
//!
//! A camera that has no working subscription (one that answered a pull)
//! for `unreachable_after_secs` (from the gateway's start, or from losing
//! it) raises one `PostHealth` CAMERA_UNREACHABLE fault; the next working
//! subscription raises its restore.

pub mod soap;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri, header::CONTENT_TYPE};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use vigil_proto::v1::{CameraEventState, HealthState};

use self::soap::{Credentials, Fault, Notification, SubscriptionRef, XmlError};
use super::{CameraInput, Detection, by_topic, push::MAX_ATTRIBUTES, push::MAX_FIELD_CHARS};

/// Largest answer read from a camera; a pull of `message_limit` messages
/// is far below this.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// First wait before re-subscribing after an error.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// How long `Unsubscribe` may take on shutdown.
pub const UNSUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// One camera, checked (see `[[onvif]]` in the config).
#[derive(Debug, Clone)]
pub struct OnvifSettings {
    pub camera: String,
    /// The device service URL.
    pub url: Uri,
    pub credentials: Credentials,
    /// Requested lease of a subscription.
    pub subscription: Duration,
    /// How long one PullMessages waits on the camera.
    pub pull_timeout: Duration,
    /// Most messages per pull.
    pub message_limit: u32,
    /// Longest wait between re-subscription attempts.
    pub backoff_max: Duration,
    /// Without a working subscription this long: CAMERA_UNREACHABLE.
    pub unreachable_after: Duration,
    /// Longest a request may take beyond its pull timeout.
    pub request_timeout: Duration,
}

/// Counters over every ONVIF camera, for tests and metrics.
#[derive(Debug, Default)]
pub struct OnvifMetrics {
    /// Subscriptions created.
    pub subscriptions: AtomicU64,
    pub renewals: AtomicU64,
    /// PullMessages answered.
    pub pulls: AtomicU64,
    /// Notification messages received.
    pub messages: AtomicU64,
    /// SOAP faults other than refused credentials.
    pub faults: AtomicU64,
    /// Credentials refused (SOAP NotAuthorized or HTTP 401).
    pub auth_failures: AtomicU64,
    /// Answers that were not the expected SOAP (bad XML, wrong element).
    pub bad_responses: AtomicU64,
    /// Connection errors, timeouts, HTTP errors without a fault.
    pub transport_errors: AtomicU64,
    /// Times a subscription was lost or could not be made, and is retried.
    pub reconnects: AtomicU64,
    pub unsubscribes: AtomicU64,
    /// CAMERA_UNREACHABLE faults and restores stored.
    pub health_events: AtomicU64,
    /// Last error per camera, for operators and tests.
    pub last_error: Mutex<BTreeMap<String, String>>,
}

impl OnvifMetrics {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The last error of `camera`, if any.
    pub fn last_error(&self, camera: &str) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(camera)
            .cloned()
    }
}

/// Why a request to a camera failed.
#[derive(Debug, thiserror::Error)]
pub enum OnvifError {
    #[error("camera refused the credentials: {0}")]
    NotAuthorized(String),
    #[error("SOAP fault: {0}")]
    Fault(Fault),
    #[error("bad answer: {0}")]
    BadResponse(#[from] XmlError),
    #[error("HTTP {status}: {body}")]
    Http { status: StatusCode, body: String },
    #[error("connection: {0}")]
    Connection(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("bad URL {0:?}: {1}")]
    Url(String, String),
}

impl OnvifError {
    fn count(&self, m: &OnvifMetrics) {
        let counter = match self {
            Self::NotAuthorized(_) => &m.auth_failures,
            Self::Fault(_) => &m.faults,
            Self::BadResponse(_) => &m.bad_responses,
            Self::Http { .. } | Self::Connection(_) | Self::Timeout(_) | Self::Url(..) => {
                &m.transport_errors
            }
        };
        OnvifMetrics::add(counter);
    }
}

/// A SOAP-over-HTTP client for one camera.
#[derive(Debug)]
pub struct OnvifClient {
    http: Client<HttpConnector, Full<Bytes>>,
    credentials: Credentials,
    request_timeout: Duration,
}

/// A parsed answer and the text it came from.
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    pub envelope: soap::Element,
}

impl OnvifClient {
    pub fn new(credentials: Credentials, request_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(request_timeout));
        connector.set_nodelay(true);
        Self {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            credentials,
            request_timeout,
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// POSTs `envelope` to `url` and reads the SOAP answer; `wait` is how
    /// long the camera may legitimately hold the request (a pull timeout).
    pub async fn call(
        &self,
        url: &str,
        action: &str,
        envelope: String,
        wait: Duration,
    ) -> Result<Answer, OnvifError> {
        let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| {
            OnvifError::Url(url.to_owned(), e.to_string())
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(OnvifError::Url(
                url.to_owned(),
                "only http:// is supported".into(),
            ));
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(
                CONTENT_TYPE,
                format!("application/soap+xml; charset=utf-8; action=\"{action}\""),
            )
            .body(Full::new(Bytes::from(envelope)))
            .map_err(|e| OnvifError::Url(url.to_owned(), e.to_string()))?;
        let limit = wait + self.request_timeout;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| OnvifError::Connection(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| OnvifError::Connection(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, OnvifError>((status, body))
        };
        let (status, body) = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| OnvifError::Timeout(limit))??;
        let text = String::from_utf8_lossy(&body).into_owned();
        let parsed = soap::parse(&text);
        if let Ok(envelope) = &parsed
            && let Some(fault) = soap::fault(envelope)
        {
            return Err(if fault.is_not_authorized() {
                OnvifError::NotAuthorized(fault.to_string())
            } else {
                OnvifError::Fault(fault)
            });
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(OnvifError::NotAuthorized(format!("HTTP {status}")));
        }
        if !status.is_success() {
            let mut snippet: String = text.chars().take(200).collect();
            if snippet.len() < text.len() {
                snippet.push('…');
            }
            return Err(OnvifError::Http {
                status,
                body: snippet,
            });
        }
        Ok(Answer {
            envelope: parsed?,
            text,
        })
    }

    /// The event service address the device names, or `None`.
    pub async fn events_address(&self, device_url: &str) -> Result<Option<String>, OnvifError> {
        let request = soap::service_request(
            device_url,
            soap::action::GET_CAPABILITIES,
            &self.credentials,
            soap::get_capabilities_body(),
        );
        let answer = self
            .call(
                device_url,
                soap::action::GET_CAPABILITIES,
                request,
                Duration::ZERO,
            )
            .await?;
        Ok(soap::read_events_address(&answer.envelope)?)
    }

    pub async fn subscribe(
        &self,
        events_url: &str,
        lease_secs: u64,
    ) -> Result<(SubscriptionRef, soap::Lease), OnvifError> {
        let request = soap::service_request(
            events_url,
            soap::action::CREATE_PULL_POINT,
            &self.credentials,
            &soap::create_pull_point_body(lease_secs),
        );
        let answer = self
            .call(
                events_url,
                soap::action::CREATE_PULL_POINT,
                request,
                Duration::ZERO,
            )
            .await?;
        Ok(soap::read_subscription(&answer.envelope, &answer.text)?)
    }

    pub async fn pull(
        &self,
        sub: &SubscriptionRef,
        timeout: Duration,
        limit: u32,
    ) -> Result<(Vec<Notification>, soap::Lease), OnvifError> {
        let request = soap::subscription_request(
            sub,
            soap::action::PULL_MESSAGES,
            &self.credentials,
            &soap::pull_messages_body(timeout.as_secs(), limit),
        );
        let answer = self
            .call(&sub.address, soap::action::PULL_MESSAGES, request, timeout)
            .await?;
        Ok(soap::read_pull(&answer.envelope)?)
    }

    pub async fn renew(
        &self,
        sub: &SubscriptionRef,
        lease_secs: u64,
    ) -> Result<soap::Lease, OnvifError> {
        let request = soap::subscription_request(
            sub,
            soap::action::RENEW,
            &self.credentials,
            &soap::renew_body(lease_secs),
        );
        let answer = self
            .call(&sub.address, soap::action::RENEW, request, Duration::ZERO)
            .await?;
        Ok(soap::read_renew(&answer.envelope)?)
    }

    pub async fn unsubscribe(&self, sub: &SubscriptionRef) -> Result<(), OnvifError> {
        let request = soap::subscription_request(
            sub,
            soap::action::UNSUBSCRIBE,
            &self.credentials,
            soap::unsubscribe_body(),
        );
        self.call(
            &sub.address,
            soap::action::UNSUBSCRIBE,
            request,
            Duration::ZERO,
        )
        .await?;
        Ok(())
    }
}

/// An error and its sources on one line ("connect: refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn bounded(s: &str) -> String {
    s.chars().take(MAX_FIELD_CHARS).collect()
}

fn boolean(v: &str) -> Option<bool> {
    match v.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Source items naming the video source, in order of preference.
const VIDEO_SOURCE_ITEMS: &[&str] = &[
    "VideoSourceConfigurationToken",
    "VideoSourceToken",
    "VideoSource",
    "Source",
];
/// Data items read as the state of a topic not in the table.
const GENERIC_STATE_ITEMS: &[&str] = &["State", "LogicalState", "IsMotion", "IsInside", "IsTamper"];

/// One notification as a detection of `camera`, or `None` when it carries
/// nothing to report: an `Initialized` property whose state is off (the
/// camera listing what is idle when the subscription starts).
pub fn detection(camera: &str, n: &Notification) -> Option<Detection> {
    let mapping = by_topic(&n.topic);
    fn item<'a>(items: &'a [(String, String)], name: &str) -> Option<&'a str> {
        items
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    // The state: the table's item; a camera that names it differently
    // still gets a state from the first boolean data item. A topic not in
    // the table is stateful only if it carries a usual state item.
    let (state_name, state_value) = match mapping.state_item {
        Some(name) => match item(&n.data, name).and_then(boolean) {
            Some(v) => (Some(name.to_owned()), Some(v)),
            None => n
                .data
                .iter()
                .find_map(|(k, v)| boolean(v).map(|b| (Some(k.clone()), Some(b))))
                .unwrap_or((None, None)),
        },
        None => GENERIC_STATE_ITEMS
            .iter()
            .find_map(|name| {
                item(&n.data, name)
                    .and_then(boolean)
                    .map(|b| (Some((*name).to_owned()), Some(b)))
            })
            .unwrap_or((None, None)),
    };
    let state = match state_value {
        Some(true) => CameraEventState::Start,
        Some(false) => CameraEventState::Stop,
        None => CameraEventState::OneShot,
    };
    if n.property_operation.as_deref() == Some("Initialized") && state != CameraEventState::Start {
        return None;
    }
    let region = item(&n.source, "Rule").map(bounded).unwrap_or_default();
    let video_source = VIDEO_SOURCE_ITEMS
        .iter()
        .find_map(|name| item(&n.source, name))
        .map(bounded)
        .unwrap_or_default();
    let mut attributes = BTreeMap::new();
    for (k, v) in n.source.iter().chain(&n.data) {
        if Some(k) == state_name.as_ref() || k == "Rule" || attributes.len() >= MAX_ATTRIBUTES {
            continue;
        }
        attributes.insert(bounded(k), bounded(v));
    }
    if let Some(op) = &n.property_operation
        && attributes.len() < MAX_ATTRIBUTES
    {
        attributes.insert("property_operation".into(), bounded(op));
    }
    Some(Detection {
        camera: camera.to_owned(),
        mapping,
        topic: bounded(&n.topic),
        state,
        region,
        confidence: None,
        video_source,
        // A camera clock outside years 1-9999 (UTC) is ignored, not stored.
        occurred_at: n
            .utc_time
            .as_deref()
            .and_then(soap::parse_time)
            .and_then(super::device_time),
        attributes,
        dedup_key: None,
    })
}

/// Whether the camera is reachable, and the health events that says so.
#[derive(Debug)]
struct Reachability {
    camera: String,
    /// Since when there is no working subscription.
    down_since: Option<Instant>,
    faulted: bool,
    last_error: String,
}

impl Reachability {
    async fn up(&mut self, input: &CameraInput, metrics: &OnvifMetrics) {
        self.down_since = None;
        if self.faulted {
            let detail = "event subscription working again".to_owned();
            match input
                .record_camera_health(&self.camera, HealthState::Restored, detail)
                .await
            {
                Ok(()) => {
                    info!(camera = %self.camera, "camera reachable again");
                    self.faulted = false;
                    OnvifMetrics::add(&metrics.health_events);
                }
                // Stays faulted; the restore is tried again at the next
                // successful subscription.
                Err(e) => warn!(camera = %self.camera, error = %e, "cannot store camera restore"),
            }
        }
    }

    fn down(&mut self) {
        self.down_since.get_or_insert_with(Instant::now);
    }

    /// Raises the fault when the grace period has passed; returns when to
    /// look again (`None`: nothing left to raise).
    async fn check(
        &mut self,
        grace: Duration,
        input: &CameraInput,
        metrics: &OnvifMetrics,
    ) -> Option<Instant> {
        let since = self.down_since?;
        if self.faulted {
            return None;
        }
        let due = since + grace;
        if Instant::now() < due {
            return Some(due);
        }
        let detail = format!(
            "no event subscription for {} s: {}",
            since.elapsed().as_secs(),
            self.last_error
        );
        match input
            .record_camera_health(&self.camera, HealthState::Fault, detail)
            .await
        {
            Ok(()) => {
                warn!(camera = %self.camera, error = %self.last_error, "camera unreachable");
                self.faulted = true;
                OnvifMetrics::add(&metrics.health_events);
                None
            }
            Err(e) => {
                warn!(camera = %self.camera, error = %e, "cannot store camera fault; retrying");
                Some(Instant::now() + BACKOFF_MIN)
            }
        }
    }
}

/// Runs the subscription of one camera until `shutdown`.
pub async fn run(
    settings: OnvifSettings,
    input: Arc<CameraInput>,
    metrics: Arc<OnvifMetrics>,
    shutdown: CancellationToken,
) {
    let span = info_span!("onvif", camera = %settings.camera);
    run_camera(settings, input, metrics, shutdown)
        .instrument(span)
        .await;
}

async fn run_camera(
    settings: OnvifSettings,
    input: Arc<CameraInput>,
    metrics: Arc<OnvifMetrics>,
    shutdown: CancellationToken,
) {
    let client = OnvifClient::new(settings.credentials.clone(), settings.request_timeout);
    let mut reach = Reachability {
        camera: settings.camera.clone(),
        down_since: Some(Instant::now()),
        faulted: false,
        last_error: "not subscribed yet".into(),
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut working = false;
        let result = session(
            &client,
            &settings,
            &input,
            &metrics,
            &shutdown,
            &mut reach,
            &mut working,
        )
        .await;
        let error = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        error.count(&metrics);
        OnvifMetrics::add(&metrics.reconnects);
        if working {
            backoff = BACKOFF_MIN;
        }
        reach.down();
        reach.last_error = error.to_string();
        metrics
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(settings.camera.clone(), reach.last_error.clone());
        warn!(error = %error, retry_in = ?backoff, "camera event subscription lost");
        // A little jitter so cameras that failed together do not retry in
        // lockstep.
        let jitter = backoff.mul_f64(rand::random::<f64>() * 0.2);
        let wake = Instant::now() + backoff + jitter;
        loop {
            let next = match reach
                .check(settings.unreachable_after, &input, &metrics)
                .await
            {
                Some(at) => at.min(wake),
                None => wake,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            if Instant::now() >= wake {
                break;
            }
        }
        backoff = (backoff * 2).min(settings.backoff_max);
    }
}

/// The renewal point of a lease: half of what the camera granted (or of
/// what was asked, when it did not say).
fn renew_at(lease: &soap::Lease, asked: Duration) -> Instant {
    let granted = lease.remaining().unwrap_or(asked);
    Instant::now() + granted / 2
}

/// One subscription, from discovery to its loss (`Err`) or shutdown
/// (`Ok`, after unsubscribing).
async fn session(
    client: &OnvifClient,
    settings: &OnvifSettings,
    input: &CameraInput,
    metrics: &OnvifMetrics,
    shutdown: &CancellationToken,
    reach: &mut Reachability,
    working: &mut bool,
) -> Result<(), OnvifError> {
    let device_url = settings.url.to_string();
    let discovered = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = client.events_address(&device_url) => r,
    };
    let events_url = match discovered {
        Ok(Some(url)) => url,
        Ok(None) => device_url.clone(),
        // Some devices do not answer GetCapabilities usefully; the device
        // URL often serves the event service too. Refused credentials and
        // unreachable devices are not worth a second request.
        Err(e @ (OnvifError::Fault(_) | OnvifError::BadResponse(_) | OnvifError::Http { .. })) => {
            debug!(error = %e, "GetCapabilities failed; using the device URL for events");
            device_url.clone()
        }
        Err(e) => return Err(e),
    };
    let lease_secs = settings.subscription.as_secs();
    let created = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = client.subscribe(&events_url, lease_secs) => r,
    };
    let (sub, lease) = created?;
    OnvifMetrics::add(&metrics.subscriptions);
    info!(events = %events_url, subscription = %sub.address, "subscribed to camera events");
    let mut renew = renew_at(&lease, settings.subscription);
    let result = loop {
        if Instant::now() >= renew {
            let renewed = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                r = client.renew(&sub, lease_secs) => r,
            };
            match renewed {
                Ok(lease) => {
                    OnvifMetrics::add(&metrics.renewals);
                    renew = renew_at(&lease, settings.subscription);
                    debug!("subscription renewed");
                }
                Err(e) => break Err(e),
            }
        }
        let pulled = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = client.pull(&sub, settings.pull_timeout, settings.message_limit) => r,
        };
        let notifications = match pulled {
            Ok((n, _)) => n,
            Err(e) => break Err(e),
        };
        OnvifMetrics::add(&metrics.pulls);
        // The subscription counts as working once a pull succeeded: one
        // that fails at once, again and again, is not a camera that works.
        if !*working {
            *working = true;
            reach.up(input, metrics).await;
        }
        metrics
            .messages
            .fetch_add(notifications.len() as u64, Ordering::Relaxed);
        let detections: Vec<Detection> = notifications
            .iter()
            .filter_map(|n| detection(&settings.camera, n))
            .collect();
        if detections.is_empty() {
            continue;
        }
        // The camera has handed these over; if the outbox refuses them
        // they are lost, and said so.
        if let Err(e) = input.record(detections).await {
            tracing::error!(error = %e, "camera events not stored");
        }
    };
    // On shutdown, and after an answer that was wrong but came from a
    // camera that is there (the subscription may still be alive on it),
    // give the pull point back: cameras have only a few. After a timeout
    // or a connection error there is no one to tell.
    let tell = match &result {
        Ok(()) => true,
        Err(OnvifError::Timeout(_) | OnvifError::Connection(_)) => false,
        Err(_) => true,
    };
    if tell {
        match tokio::time::timeout(UNSUBSCRIBE_WAIT, client.unsubscribe(&sub)).await {
            Ok(Ok(())) => {
                OnvifMetrics::add(&metrics.unsubscribes);
                debug!("unsubscribed");
            }
            Ok(Err(e)) => debug!(error = %e, "unsubscribe failed"),
            Err(_) => debug!("unsubscribe timed out"),
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::v1::CameraEventKind;

    fn note(
        topic: &str,
        op: Option<&str>,
        source: &[(&str, &str)],
        data: &[(&str, &str)],
    ) -> Notification {
        let pairs = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        Notification {
            topic: topic.into(),
            utc_time: Some("2026-11-26T09:00:00.250Z".into()),
            property_operation: op.map(str::to_owned),
            source: pairs(source),
            data: pairs(data),
        }
    }

    #[test]
    fn camera_times_outside_years_1_to_9999_are_dropped_not_stored() {
        let motion = |utc: &str| {
            let mut n = note(
                "tns1:RuleEngine/CellMotionDetector/Motion",
                Some("Changed"),
                &[],
                &[("IsMotion", "true")],
            );
            n.utc_time = Some(utc.into());
            detection("cam-1", &n).unwrap()
        };
        let now = time::macros::datetime!(2026-11-26 09:00:01 UTC);
        for bad in [
            "0000-01-01T00:00:00Z",
            // Year 1 in its own offset, year 0 in UTC.
            "0001-01-01T00:30:00+01:00",
            // Year 9999 in its own offset, year 10000 in UTC.
            "9999-12-31T23:30:00-01:00",
        ] {
            let d = motion(bad);
            assert_eq!(d.occurred_at, None, "{bad}");
            let event = d.to_event(now).event;
            assert_eq!(event.occurred_at, None, "{bad}");
            assert_eq!(event.received_at.unwrap().seconds, now.unix_timestamp());
        }
        for good in ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"] {
            let d = motion(good);
            let t = d.to_event(now).event.occurred_at.unwrap();
            assert!(vigil_proto::time_in_range(&t), "{good}");
        }
    }

    #[test]
    fn notifications_become_detections() {
        let d = detection(
            "cam-1",
            &note(
                "tns1:RuleEngine/CellMotionDetector/Motion",
                Some("Changed"),
                &[
                    ("VideoSourceConfigurationToken", "vsc-1"),
                    ("VideoAnalyticsConfigurationToken", "va-1"),
                    ("Rule", "Yard"),
                ],
                &[("IsMotion", "true")],
            ),
        )
        .unwrap();
        assert_eq!(d.mapping.kind, CameraEventKind::Motion);
        assert_eq!(d.state, CameraEventState::Start);
        assert_eq!(
            (d.region.as_str(), d.video_source.as_str()),
            ("Yard", "vsc-1")
        );
        assert_eq!(d.attributes["VideoAnalyticsConfigurationToken"], "va-1");
        assert!(!d.attributes.contains_key("IsMotion"));
        assert!(d.occurred_at.is_some());

        let crossed = detection(
            "cam-1",
            &note(
                "tns1:RuleEngine/LineDetector/Crossed",
                None,
                &[("Rule", "Fence")],
                &[("ObjectId", "12")],
            ),
        )
        .unwrap();
        assert_eq!(crossed.state, CameraEventState::OneShot);
        assert_eq!(crossed.attributes["ObjectId"], "12");

        let loss = detection(
            "cam-1",
            &note(
                "tns1:VideoSource/SignalLoss",
                Some("Changed"),
                &[("Source", "vs-1")],
                &[("State", "false")],
            ),
        )
        .unwrap();
        assert_eq!(
            (loss.mapping.kind, loss.state, loss.video_source.as_str()),
            (CameraEventKind::VideoLoss, CameraEventState::Stop, "vs-1")
        );

        // Unknown topics are kept; a digital input carries LogicalState.
        let input = detection(
            "cam-1",
            &note(
                "tns1:Device/Trigger/DigitalInput",
                Some("Changed"),
                &[("InputToken", "in-1")],
                &[("LogicalState", "true")],
            ),
        )
        .unwrap();
        assert_eq!(
            (input.mapping.kind, input.state),
            (CameraEventKind::Other, CameraEventState::Start)
        );
        assert_eq!(input.topic, "tns1:Device/Trigger/DigitalInput");

        // A camera naming the state item differently still has a state.
        let odd = detection(
            "cam-1",
            &note(
                "tns1:RuleEngine/FieldDetector/ObjectsInside",
                None,
                &[],
                &[("Inside", "1")],
            ),
        )
        .unwrap();
        assert_eq!(odd.state, CameraEventState::Start);

        // The idle state listed at subscription start is not an event; an
        // active one is.
        let idle = note(
            "tns1:RuleEngine/CellMotionDetector/Motion",
            Some("Initialized"),
            &[],
            &[("IsMotion", "false")],
        );
        assert!(detection("cam-1", &idle).is_none());
        let active = note(
            "tns1:RuleEngine/CellMotionDetector/Motion",
            Some("Initialized"),
            &[],
            &[("IsMotion", "true")],
        );
        assert_eq!(
            detection("cam-1", &active).unwrap().state,
            CameraEventState::Start
        );
    }

    #[test]
    fn long_and_many_items_are_bounded() {
        let long = "x".repeat(1000);
        let many: Vec<(String, String)> =
            (0..100).map(|i| (format!("k{i}"), long.clone())).collect();
        let n = Notification {
            topic: long.clone(),
            utc_time: Some("not a time".into()),
            property_operation: None,
            source: vec![("Rule".into(), long)],
            data: many,
        };
        let d = detection("cam-1", &n).unwrap();
        assert_eq!(d.topic.chars().count(), MAX_FIELD_CHARS);
        assert_eq!(d.region.chars().count(), MAX_FIELD_CHARS);
        assert_eq!(d.attributes.len(), MAX_ATTRIBUTES);
        assert!(d.occurred_at.is_none());
    }
}
