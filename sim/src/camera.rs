//! A simulated camera, for tests, `vigil simulate camera` and `vigil dev`.
//!
//! [`OnvifCamera`] serves an ONVIF device on a TCP listener: it answers
//! `GetCapabilities` (naming its event service), `CreatePullPointSubscription`,
//! `PullMessages` (held until an event is queued or the pull's timeout
//! passes), `Renew` and `Unsubscribe`, checks every request's WS-Security
//! UsernameToken digest and creation time (a bad one gets HTTP 400 with a
//! `ter:NotAuthorized` fault), and lets subscriptions that are not renewed
//! expire. Its [`SimHandle`] injects events, makes the camera go away and
//! come back (a reboot: subscriptions are forgotten), and breaks the next
//! answer on purpose.
//!
//! [`push_event`] is the other kind of camera: it POSTs one event to the
//! gateway's HTTP push endpoint.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header::AUTHORIZATION,
    header::CONTENT_TYPE, service::service_fn,
};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use time::OffsetDateTime;
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use vigil_gateway::camera::onvif::soap::{self, Credentials, Notification};

/// Path of the device service.
pub const DEVICE_PATH: &str = "/onvif/device_service";
/// Path of the event service.
pub const EVENTS_PATH: &str = "/onvif/events";
/// Subscriptions live at this path followed by their number.
pub const SUBSCRIPTION_PATH: &str = "/onvif/subscription/";
/// With [`SimConfig::reference_parameters`], every subscription lives at
/// this one path and is told apart by a `SubscriptionId` header block.
pub const PULLPOINT_PATH: &str = "/onvif/pullpoint";
/// Namespace of that header block.
pub const SIM_NS: &str = "urn:vigil:camera-simulator";
/// Largest request body read.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Longest pull timeout honoured.
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(60);
/// Most subscriptions at once; more get a fault.
pub const MAX_SUBSCRIPTIONS: usize = 16;

/// Why the simulator failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("push: {0}")]
    Push(String),
}

/// How the simulated camera behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The only credentials it accepts.
    pub credentials: Credentials,
    /// Generate an event at this interval, cycling through `events`.
    pub every: Option<Duration>,
    /// Event names for [`by_name`]; stateful ones alternate between start
    /// and stop each time they come round.
    pub events: Vec<String>,
    /// Events kept per subscription while nobody pulls; the oldest go
    /// first when it is full, as on a real camera.
    pub queue_limit: usize,
    /// Name subscriptions by a WS-Addressing reference parameter on one
    /// shared address (as some cameras do) instead of one address each.
    pub reference_parameters: bool,
}

impl SimConfig {
    pub fn new(username: &str, password: &str) -> Self {
        Self {
            credentials: Credentials {
                username: username.into(),
                password: password.into(),
            },
            every: None,
            events: vec!["motion".into()],
            queue_limit: 256,
            reference_parameters: false,
        }
    }
}

/// What the simulated camera has seen.
#[derive(Debug, Default)]
pub struct SimStats {
    pub requests: AtomicU64,
    pub auth_failures: AtomicU64,
    pub subscriptions: AtomicU64,
    pub pulls: AtomicU64,
    pub renewals: AtomicU64,
    pub unsubscribes: AtomicU64,
    /// Subscriptions that ran out without a renewal.
    pub expired: AtomicU64,
    /// Events handed out by pulls.
    pub delivered: AtomicU64,
}

impl SimStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A deliberately broken answer for the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakage {
    /// HTTP 200 with a body that is not XML.
    MalformedXml,
    /// HTTP 500 with a SOAP fault (`s:Receiver`).
    Fault,
}

#[derive(Debug)]
struct Subscription {
    queue: VecDeque<Notification>,
    terminates: Instant,
    wake: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    subscriptions: HashMap<u64, Subscription>,
    next_id: u64,
    breakages: VecDeque<Breakage>,
    /// Every PullMessages gets a fault (the camera takes subscriptions
    /// but cannot deliver).
    failing_pulls: bool,
}

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    config: SimConfig,
    state: Mutex<State>,
    stats: SimStats,
    shutdown: CancellationToken,
    server: tokio::sync::Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulated ONVIF camera.
#[derive(Debug)]
pub struct OnvifCamera;

impl OnvifCamera {
    /// Serves on `listener` until `shutdown` (or [`SimHandle::stop`]).
    pub fn start(
        listener: TcpListener,
        config: SimConfig,
        shutdown: CancellationToken,
    ) -> SimHandle {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let shared = Arc::new(Shared {
            addr,
            config,
            state: Mutex::new(State::default()),
            stats: SimStats::default(),
            shutdown,
            server: tokio::sync::Mutex::new(None),
        });
        let handle = SimHandle { shared };
        handle.serve(listener);
        if let Some(every) = handle.shared.config.every {
            let h = handle.clone();
            tokio::spawn(async move {
                let names = h.shared.config.events.clone();
                let mut active: HashMap<String, bool> = HashMap::new();
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                for name in names.iter().cycle() {
                    tokio::select! {
                        _ = h.shared.shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let on = active.entry(name.clone()).or_insert(false);
                    *on = !*on;
                    if let Some(event) = by_name(name, *on) {
                        h.inject(&event);
                    }
                }
            });
        }
        handle
    }
}

/// Controls a running [`OnvifCamera`].
#[derive(Debug, Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The device service URL to configure in `[[onvif]] url`.
    pub fn device_url(&self) -> String {
        format!("http://{}{DEVICE_PATH}", self.shared.addr)
    }

    pub fn stats(&self) -> &SimStats {
        &self.shared.stats
    }

    /// Live subscriptions.
    pub fn subscriptions(&self) -> usize {
        lock(&self.shared.state).subscriptions.len()
    }

    /// Queues `event` for every live subscription.
    pub fn inject(&self, event: &Notification) {
        let mut state = lock(&self.shared.state);
        let limit = self.shared.config.queue_limit.max(1);
        for sub in state.subscriptions.values_mut() {
            if sub.queue.len() >= limit {
                sub.queue.pop_front();
            }
            sub.queue.push_back(event.clone());
            sub.wake.notify_one();
        }
    }

    /// While `on`, every PullMessages is answered with a fault.
    pub fn fail_pulls(&self, on: bool) {
        lock(&self.shared.state).failing_pulls = on;
    }

    /// Answers the next request with `breakage` instead.
    pub fn break_next(&self, breakage: Breakage) {
        lock(&self.shared.state).breakages.push_back(breakage);
    }

    fn serve(&self, listener: TcpListener) {
        let run = self.shared.shutdown.child_token();
        let shared = self.shared.clone();
        let task = tokio::spawn(accept_loop(listener, shared, run.clone()));
        // Only called from `start` (no server yet) and `restart` (after
        // `stop` took the previous one), so the slot is free.
        if let Ok(mut slot) = self.shared.server.try_lock() {
            *slot = Some((run, task));
        }
    }

    /// The camera goes away: the listener closes, open connections are
    /// cut, subscriptions are forgotten.
    pub async fn stop(&self) {
        let server = self.shared.server.lock().await.take();
        if let Some((run, task)) = server {
            run.cancel();
            let _ = task.await;
        }
        lock(&self.shared.state).subscriptions.clear();
    }

    /// The camera comes back on the same address (after [`Self::stop`]).
    pub async fn restart(&self) -> Result<(), SimError> {
        self.stop().await;
        let addr = self.shared.addr;
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => return Err(SimError::Bind(addr, e)),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let run = self.shared.shutdown.child_token();
        let task = tokio::spawn(accept_loop(listener, self.shared.clone(), run.clone()));
        *self.shared.server.lock().await = Some((run, task));
        Ok(())
    }
}

/// The simulated camera's listener: the shared plumbing, generous caps,
/// and no grace on stop (a camera going away cuts its connections, pulls
/// in flight included).
const SIM_LIMITS: vigil_net::Limits = vigil_net::Limits {
    max_connections: 256,
    max_per_source: 256,
    preauth_deadline: Duration::from_secs(10),
    idle_timeout: Some(Duration::from_secs(300)),
    grace: Duration::ZERO,
};

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, run: CancellationToken) {
    let front = vigil_net::Front::new("camera_sim", SIM_LIMITS);
    let conn_run = run.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let run = conn_run.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req, &run).await) }
    });
    vigil_net::http::serve(&front, listener, run, service).await;
}

fn xml(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/soap+xml; charset=utf-8"),
    );
    r
}

fn fault(status: StatusCode, code: &str, subcode: &str, reason: &str) -> Response<Full<Bytes>> {
    xml(status, crate::soap::fault_xml(code, subcode, reason))
}

fn ok(body: &str) -> Response<Full<Bytes>> {
    xml(StatusCode::OK, soap::envelope("", body, &[]))
}

async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    run: &CancellationToken,
) -> Response<Full<Bytes>> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    if req.method() != Method::POST {
        return fault(
            StatusCode::METHOD_NOT_ALLOWED,
            "s:Sender",
            "ter:InvalidArgVal",
            "POST SOAP requests",
        );
    }
    let path = req.uri().path().to_owned();
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return fault(
                StatusCode::BAD_REQUEST,
                "s:Sender",
                "ter:InvalidArgVal",
                &format!("body: {e}"),
            );
        }
    };
    let breakage = lock(&shared.state).breakages.pop_front();
    match breakage {
        Some(Breakage::MalformedXml) => {
            return xml(StatusCode::OK, "<s:Envelope><s:Body><oops".into());
        }
        Some(Breakage::Fault) => {
            return fault(
                StatusCode::INTERNAL_SERVER_ERROR,
                "s:Receiver",
                "ter:Action",
                "simulated failure",
            );
        }
        None => {}
    }
    let text = String::from_utf8_lossy(&body);
    let Ok(envelope) = soap::parse(&text) else {
        return fault(
            StatusCode::BAD_REQUEST,
            "s:Sender",
            "ter:WellFormed",
            "not well-formed XML",
        );
    };
    if let Err(why) = crate::soap::check_security(
        &envelope,
        &shared.config.credentials,
        OffsetDateTime::now_utc(),
    ) {
        shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        return fault(
            StatusCode::BAD_REQUEST,
            "s:Sender",
            "ter:NotAuthorized",
            &format!("Sender not authorized: {why}"),
        );
    }
    let Some(op) = soap::body(&envelope).ok().and_then(|b| b.children.first()) else {
        return fault(
            StatusCode::BAD_REQUEST,
            "s:Sender",
            "ter:InvalidArgVal",
            "empty Body",
        );
    };
    let now = OffsetDateTime::now_utc();
    match (path.as_str(), op.name.as_str()) {
        (DEVICE_PATH, "GetCapabilities") => ok(&format!(
            "<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Events><tt:XAddr>http://{}{EVENTS_PATH}</tt:XAddr>\
             <tt:WSSubscriptionPolicySupport>false</tt:WSSubscriptionPolicySupport>\
             <tt:WSPullPointSupport>true</tt:WSPullPointSupport>\
             <tt:WSPausableSubscriptionManagerInterfaceSupport>false</tt:WSPausableSubscriptionManagerInterfaceSupport>\
             </tt:Events></tds:Capabilities></tds:GetCapabilitiesResponse>",
            shared.addr
        )),
        (DEVICE_PATH | EVENTS_PATH, "CreatePullPointSubscription") => {
            let lease = lease_of(op.child("InitialTerminationTime"), now);
            let mut state = lock(&shared.state);
            if state.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return fault(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "s:Receiver",
                    "ter:Action",
                    "too many subscriptions",
                );
            }
            state.next_id += 1;
            let id = state.next_id;
            let mut queue = VecDeque::new();
            // A real camera lists the current state of its properties first.
            queue.push_back(Notification {
                property_operation: Some("Initialized".into()),
                ..motion(false)
            });
            let wake = Arc::new(Notify::new());
            wake.notify_one();
            state.subscriptions.insert(
                id,
                Subscription {
                    queue,
                    terminates: Instant::now() + lease,
                    wake,
                },
            );
            shared.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
            let (reference, ns) = if shared.config.reference_parameters {
                (
                    format!(
                        "<wsa:Address>http://{}{PULLPOINT_PATH}</wsa:Address>\
                         <wsa:ReferenceParameters><sim:SubscriptionId>{id}</sim:SubscriptionId></wsa:ReferenceParameters>",
                        shared.addr
                    ),
                    vec![("xmlns:sim".to_owned(), SIM_NS.to_owned())],
                )
            } else {
                (
                    format!(
                        "<wsa:Address>http://{}{SUBSCRIPTION_PATH}{id}</wsa:Address>",
                        shared.addr
                    ),
                    Vec::new(),
                )
            };
            xml(
                StatusCode::OK,
                soap::envelope(
                    "",
                    &format!(
                        "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference>{reference}</tev:SubscriptionReference>\
                         <wsnt:CurrentTime>{}</wsnt:CurrentTime><wsnt:TerminationTime>{}</wsnt:TerminationTime>\
                         </tev:CreatePullPointSubscriptionResponse>",
                        soap::format_time(now),
                        soap::format_time(now + lease)
                    ),
                    &ns,
                ),
            )
        }
        (PULLPOINT_PATH, name) if shared.config.reference_parameters => {
            let id = envelope
                .child("Header")
                .and_then(|h| h.child("SubscriptionId"))
                .and_then(|e| e.trimmed().parse::<u64>().ok());
            let Some(id) = id else {
                return fault(
                    StatusCode::BAD_REQUEST,
                    "s:Sender",
                    "ter:InvalidArgVal",
                    "no SubscriptionId header",
                );
            };
            subscription_op(shared, id, name, op, now, run).await
        }
        (p, name) if p.starts_with(SUBSCRIPTION_PATH) => {
            let Some(id) = p[SUBSCRIPTION_PATH.len()..].parse::<u64>().ok() else {
                return fault(
                    StatusCode::BAD_REQUEST,
                    "s:Sender",
                    "ter:InvalidArgVal",
                    "no such subscription",
                );
            };
            subscription_op(shared, id, name, op, now, run).await
        }
        (_, name) => fault(
            StatusCode::BAD_REQUEST,
            "s:Sender",
            "ter:ActionNotSupported",
            &format!("{name} is not supported at {path}"),
        ),
    }
}

/// The lease a request asks for: a duration or an absolute time; 60 s
/// when it names none.
fn lease_of(e: Option<&soap::Element>, now: OffsetDateTime) -> Duration {
    let Some(text) = e.map(|e| e.trimmed()) else {
        return Duration::from_secs(60);
    };
    if let Some(secs) = soap::parse_duration(text) {
        return Duration::from_secs_f64(secs.clamp(1.0, 86_400.0));
    }
    soap::parse_time(text)
        .map(|t| {
            (t - now)
                .clamp(time::Duration::SECOND, time::Duration::DAY)
                .unsigned_abs()
        })
        .unwrap_or(Duration::from_secs(60))
}

async fn subscription_op(
    shared: &Shared,
    id: u64,
    name: &str,
    op: &soap::Element,
    now: OffsetDateTime,
    run: &CancellationToken,
) -> Response<Full<Bytes>> {
    let unknown = || {
        fault(
            StatusCode::BAD_REQUEST,
            "s:Sender",
            "ter:InvalidArgVal",
            "unknown or expired subscription",
        )
    };
    let wake = {
        let mut state = lock(&shared.state);
        let expired = state
            .subscriptions
            .get(&id)
            .is_some_and(|s| Instant::now() >= s.terminates);
        if expired {
            state.subscriptions.remove(&id);
            shared.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
        let failing = state.failing_pulls;
        match state.subscriptions.get_mut(&id) {
            None => return unknown(),
            Some(sub) => match name {
                "Renew" => {
                    let lease = lease_of(op.child("TerminationTime"), now);
                    sub.terminates = Instant::now() + lease;
                    shared.stats.renewals.fetch_add(1, Ordering::Relaxed);
                    return ok(&format!(
                        "<wsnt:RenewResponse><wsnt:TerminationTime>{}</wsnt:TerminationTime>\
                         <wsnt:CurrentTime>{}</wsnt:CurrentTime></wsnt:RenewResponse>",
                        soap::format_time(now + lease),
                        soap::format_time(now)
                    ));
                }
                "Unsubscribe" => {
                    state.subscriptions.remove(&id);
                    shared.stats.unsubscribes.fetch_add(1, Ordering::Relaxed);
                    return ok("<wsnt:UnsubscribeResponse/>");
                }
                "PullMessages" if failing => {
                    return fault(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "s:Receiver",
                        "ter:Action",
                        "simulated event service failure",
                    );
                }
                "PullMessages" => sub.wake.clone(),
                other => {
                    return fault(
                        StatusCode::BAD_REQUEST,
                        "s:Sender",
                        "ter:ActionNotSupported",
                        &format!("{other} is not supported on a subscription"),
                    );
                }
            },
        }
    };
    let wait = op
        .child("Timeout")
        .and_then(|t| soap::parse_duration(&t.text))
        .map_or(Duration::from_secs(10), |s| {
            Duration::from_secs_f64(s.clamp(0.0, MAX_PULL_WAIT.as_secs_f64()))
        });
    let limit = op
        .child("MessageLimit")
        .and_then(|m| m.trimmed().parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let deadline = Instant::now() + wait;
    loop {
        let taken: Option<Vec<Notification>> = {
            let mut state = lock(&shared.state);
            let Some(sub) = state.subscriptions.get_mut(&id) else {
                return unknown();
            };
            let n = sub.queue.len().min(limit);
            (n > 0 || Instant::now() >= deadline).then(|| sub.queue.drain(..n).collect())
        };
        if let Some(messages) = taken {
            shared.stats.pulls.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .delivered
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            let now = OffsetDateTime::now_utc();
            let terminates = lock(&shared.state)
                .subscriptions
                .get(&id)
                .map(|s| s.terminates.saturating_duration_since(Instant::now()))
                .unwrap_or_default();
            let items: String = messages.iter().map(crate::soap::notification_xml).collect();
            return ok(&format!(
                "<tev:PullMessagesResponse><tev:CurrentTime>{}</tev:CurrentTime>\
                 <tev:TerminationTime>{}</tev:TerminationTime>{items}</tev:PullMessagesResponse>",
                soap::format_time(now),
                soap::format_time(now + terminates)
            ));
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = run.cancelled() => return unknown(),
        }
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn changed(topic: &str, source: &[(&str, &str)], data: &[(&str, &str)]) -> Notification {
    Notification {
        topic: topic.into(),
        utc_time: Some(soap::format_time(OffsetDateTime::now_utc())),
        property_operation: Some("Changed".into()),
        source: pairs(source),
        data: pairs(data),
    }
}

fn flag(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Cell motion detection on rule "MotionRule".
pub fn motion(active: bool) -> Notification {
    changed(
        "tns1:RuleEngine/CellMotionDetector/Motion",
        &[
            ("VideoSourceConfigurationToken", "VideoSourceConfig_1"),
            ("VideoAnalyticsConfigurationToken", "VideoAnalyticsConfig_1"),
            ("Rule", "MotionRule"),
        ],
        &[("IsMotion", flag(active))],
    )
}

/// Objects inside the field of rule `rule`.
pub fn field(rule: &str, inside: bool) -> Notification {
    changed(
        "tns1:RuleEngine/FieldDetector/ObjectsInside",
        &[
            ("VideoSourceConfigurationToken", "VideoSourceConfig_1"),
            ("VideoAnalyticsConfigurationToken", "VideoAnalyticsConfig_1"),
            ("Rule", rule),
        ],
        &[("IsInside", flag(inside))],
    )
}

/// An object crossed the line of rule `rule` (one-shot).
pub fn line_crossed(rule: &str, object_id: &str) -> Notification {
    Notification {
        property_operation: None,
        ..changed(
            "tns1:RuleEngine/LineDetector/Crossed",
            &[
                ("VideoSourceConfigurationToken", "VideoSourceConfig_1"),
                ("VideoAnalyticsConfigurationToken", "VideoAnalyticsConfig_1"),
                ("Rule", rule),
            ],
            &[("ObjectId", object_id)],
        )
    }
}

/// Camera tampering.
pub fn tamper(active: bool) -> Notification {
    changed(
        "tns1:RuleEngine/TamperDetector/Tamper",
        &[
            ("VideoSourceConfigurationToken", "VideoSourceConfig_1"),
            ("VideoAnalyticsConfigurationToken", "VideoAnalyticsConfig_1"),
            ("Rule", "TamperRule"),
        ],
        &[("IsTamper", flag(active))],
    )
}

/// Video signal lost on the video source.
pub fn signal_loss(lost: bool) -> Notification {
    changed(
        "tns1:VideoSource/SignalLoss",
        &[("Source", "VideoSource_1")],
        &[("State", flag(lost))],
    )
}

/// The whole scene changed (camera moved or covered).
pub fn scene_change(changed_now: bool) -> Notification {
    changed(
        "tns1:VideoSource/GlobalSceneChange/ImagingService",
        &[("Source", "VideoSource_1")],
        &[("State", flag(changed_now))],
    )
}

/// A digital input of the camera changed (a topic Vigil has no kind for).
pub fn digital_input(token: &str, active: bool) -> Notification {
    changed(
        "tns1:Device/Trigger/DigitalInput",
        &[("InputToken", token)],
        &[("LogicalState", flag(active))],
    )
}

/// The notification for a simulator event name: `motion`, `field`,
/// `line`, `tamper`, `signal_loss`, `scene_change`, `input`; `active`
/// is ignored for the one-shot `line`.
pub fn by_name(name: &str, active: bool) -> Option<Notification> {
    Some(match name {
        "motion" => motion(active),
        "field" => field("FieldRule", active),
        "line" => line_crossed("LineRule", "1"),
        "tamper" => tamper(active),
        "signal_loss" => signal_loss(active),
        "scene_change" => scene_change(active),
        "input" => digital_input("DigitalInput_1", active),
        _ => return None,
    })
}

/// The JSON body of one pushed event (see `vigil_gateway::camera::push`).
pub fn push_body(camera: &str, kind: &str, state: &str, region: Option<&str>) -> serde_json::Value {
    let mut body = serde_json::json!({ "camera": camera, "kind": kind, "state": state });
    if let Some(region) = region {
        body["region"] = region.into();
    }
    body
}

/// POSTs one JSON event to a gateway's push endpoint (`url` is
/// `http://HOST:PORT/v1/camera-events`); returns the status and body.
pub async fn push_event(
    url: &str,
    token: &str,
    event: &serde_json::Value,
    timeout: Duration,
) -> Result<(StatusCode, String), SimError> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::from(event.to_string())))
        .map_err(|e| SimError::Push(format!("{url}: {e}")))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| SimError::Push(format!("{url}: {e}")))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| SimError::Push(format!("{url}: reading the answer: {e}")))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SimError::Push(format!("{url}: no answer within {timeout:?}")))?
}
