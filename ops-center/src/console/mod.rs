//! The browser console: the analysts' queue, incident detail, posts and
//! replay, served over HTTPS by the operations center on `[console] listen`.
//!
//! It is a second front end on the gRPC API, not a second API. The
//! listener is the API's: `vigil-net` (caps, deadlines, HTTP/1), mutual TLS
//! with the region's CA and CRL (`vigil-pki`), and the caller's identity and
//! role from its certificate's CN and OU. Each HTTP request becomes a call
//! of the in-process [`Api`] with that identity attached, so the role rules
//! ([`crate::api::allowed`]), the workflow through the writer and the
//! version check are the gRPC API's own; only the encoding changes (JSON,
//! server-sent events).
//!
//! - `GET /`, `/style.css`, `/js/*.js`: the page (embedded, [`assets`]).
//! - `GET /api/me`: who is calling and what that role may do.
//! - `GET /api/feed`: the live feed as server-sent events; each `id:` is the
//!   gRPC feed's cursor, so a browser that reconnects with `Last-Event-ID`
//!   resumes with nothing missed or repeated.
//! - `GET /api/incidents/{id}`: an incident with its events, notes, audit
//!   trail and its post's status.
//! - `POST /api/incidents/{id}/{action}`: acknowledge, assign, escalate,
//!   resolve, reopen, note; JSON carrying `expected_version`. A version
//!   conflict is `409` with the current incident.
//! - `GET /api/posts`; `GET /api/replay?…`: stored events as JSON lines.
//! - `GET /api/incidents/{id}` also carries the incident's action plan and
//!   its post's record (`plan`, secrets withheld as the role says);
//!   `POST /api/incidents/{id}/step` checks off or skips a step (`step`,
//!   `outcome` done or skipped, `note`), 409 on a version conflict.
//! - `GET /api/posts/{id}/record`: a post's record.
//! - `GET /api/posts/{id}/history?from_ms&to_ms&categories&limit&page_token`:
//!   its incidents and events, newest first, a page at a time.
//! - `GET /api/report?from_ms&to_ms&posts[&format=csv]`: per-post figures
//!   for a period, JSON or a CSV download (supervisors and admins).
//!
//! Who may use it: people (analyst, supervisor, engineer, admin). Post,
//! broker and ops certificates get `403`; a browser without a certificate
//! does not finish the TLS handshake. A state-changing request must come
//! from the console's own page: `Sec-Fetch-Site: same-origin` (or, from a
//! client that sends no fetch metadata, an `Origin` equal to the console's)
//! and the header `X-Vigil-Action: 1`, which no cross-site form can set.
//! Otherwise `403` with the reason.
//!
//! Layout:
//! - [`assets`]: the embedded page (TypeScript compiled to JS, committed).
//! - [`json`]: protobuf messages as the page reads them.

pub mod assets;
pub mod json;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Extension, Json, Router,
    body::Body,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use vigil_pki::Peer;
use vigil_proto::v1::{
    AcknowledgeRequest, AddNoteRequest, AssignRequest, Disposition, EscalateRequest, EventKind,
    GetIncidentRequest, GetPostHistoryRequest, GetPostRecordRequest, GetReportRequest,
    ListPostsRequest, MarkStepRequest, Pacing, ReopenRequest, ReplayRequest, ResolveRequest,
    StepOutcome, WatchIncidentsRequest, feed_item::Item, ops_center_server::OpsCenter,
};

use crate::api::{Api, ApiContext, Op, allowed, conn::ConnInfo, current_incident};
use json::to_json;

/// After shutdown, how long open requests (feeds, downloads) get.
pub const GRACE: Duration = Duration::from_secs(5);
/// An established connection with no byte either way for this long is
/// closed. The feed sends a keep-alive comment every [`KEEP_ALIVE`], so only
/// dead peers reach it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a quiet feed sends a comment line.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events a replay download holds at most (`limit` above it is capped).
pub const MAX_REPLAY: u64 = 100_000;

/// The `[console]` table. `listen` is a stable key; absent table: no
/// console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    /// Connections open at once (a browser opens up to six).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    #[serde(default = "default_max_per_source")]
    pub max_connections_per_source: usize,
    /// From accept to the first request's headers, TLS handshake included.
    #[serde(default = "default_preauth_timeout")]
    pub preauth_timeout_secs: u64,
}

fn default_max_connections() -> usize {
    256
}
fn default_max_per_source() -> usize {
    64
}
fn default_preauth_timeout() -> u64 {
    10
}

impl ConsoleConfig {
    /// On `listen`, with the default caps.
    pub fn on(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_per_source(),
            preauth_timeout_secs: default_preauth_timeout(),
        }
    }

    /// The listener's limits.
    pub fn limits(&self) -> vigil_net::Limits {
        vigil_net::Limits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            preauth_deadline: Duration::from_secs(self.preauth_timeout_secs),
            idle_timeout: Some(IDLE_TIMEOUT),
            grace: GRACE,
        }
    }

    /// Checks values; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_connections == 0 {
            return Err((
                "console.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        if !(1..=self.max_connections).contains(&self.max_connections_per_source) {
            return Err((
                "console.max_connections_per_source".into(),
                "must be between 1 and console.max_connections".into(),
            ));
        }
        if self.preauth_timeout_secs == 0 {
            return Err((
                "console.preauth_timeout_secs".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Binds `[console] listen` and serves the console there in a task, until
/// `shutdown`; nothing when `config` is `None`.
pub async fn start(
    config: Option<&ConsoleConfig>,
    ctx: ApiContext,
    store_ok: watch::Receiver<bool>,
    tls: &vigil_pki::tls::TlsMaterial,
    shutdown: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, crate::OpsError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let addr = config.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| crate::OpsError::ConsoleBind { addr, source })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "console listening");
    let front = vigil_net::Front::with_stats(
        "console",
        config.limits(),
        ctx.metrics.console_listener.clone(),
    );
    Ok(Some(tokio::spawn(serve(
        ctx,
        store_ok,
        front,
        listener,
        tls.server_config()?,
        shutdown,
    ))))
}

/// Serves the console on `listener` through `front` until `shutdown`.
/// `server_config` is the API's (`TlsMaterial::server_config`: client
/// certificates required, CRL checked); HTTP/1.1 is offered over it.
pub async fn serve(
    ctx: ApiContext,
    store_ok: watch::Receiver<bool>,
    front: vigil_net::Front,
    listener: TcpListener,
    mut server_config: rustls::ServerConfig,
    shutdown: CancellationToken,
) {
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let api = Arc::new(Api::new(ctx, store_ok, shutdown.clone()));
    let app = router(api);
    let header_timeout = front.limits().preauth_deadline;
    front
        .serve_tls(listener, acceptor, shutdown, move |conn| {
            // rustls verified the chain against the CA and the CRL; the
            // identity and role come from that certificate.
            let peer = match conn.get_ref().get_ref().1.peer_certificates() {
                Some([leaf, ..]) => Peer::from_cert(leaf).map_err(|e| e.to_string()),
                _ => Err("no client certificate".to_owned()),
            };
            let info = ConnInfo {
                addr: conn.peer_addr(),
                peer,
            };
            let app = app.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(info.clone());
                let mut app = app.clone();
                // A Router is always ready: `call` without `poll_ready`.
                async move { tower_service::Service::call(&mut app, req).await }
            });
            vigil_net::http::serve_connection(conn, service, header_timeout)
        })
        .await;
    tracing::debug!("console stopped");
}

/// The console's routes, with the role gate, the same-origin rule and the
/// security headers around them.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/me", get(me))
        .route("/api/feed", get(feed))
        .route("/api/posts", get(posts))
        .route("/api/posts/{id}/record", get(post_record))
        .route("/api/posts/{id}/history", get(post_history))
        .route("/api/report", get(report))
        .route("/api/emergency", get(emergency))
        .route("/api/replay", get(replay))
        .route("/api/incidents/{id}", get(incident))
        .route("/api/incidents/{id}/{action}", post(action))
        .fallback(assets::serve)
        .with_state(api)
        .layer(middleware::from_fn(same_origin))
        .layer(middleware::from_fn(people_only))
        .layer(middleware::from_fn(headers))
}

type Shared = State<Arc<Api>>;

/// A plain JSON error body: `{"error": "…"}`.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, Json(body)).into_response()
}

/// The one place a gRPC status becomes an HTTP answer. A version conflict
/// (FAILED_PRECONDITION with the current incident attached) is `409` with
/// `current`; an invalid transition (acknowledging a resolved incident) is
/// `409` without it.
fn http_error(status: &Status) -> Response {
    let code = match status.code() {
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut body = serde_json::json!({ "error": status.message() });
    if let Some(current) = current_incident(status) {
        body["current"] = to_json(&current, "Incident");
    }
    (code, Json(body)).into_response()
}

/// A gRPC request from the console's caller.
fn call<T>(info: &ConnInfo, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.extensions_mut().insert(info.clone());
    req
}

/// Only people: a role that may read incidents (post, broker and ops
/// certificates may not). Everything, the page included, is behind it.
async fn people_only(req: Request, next: Next) -> Response {
    match req.extensions().get::<ConnInfo>().map(|i| &i.peer) {
        Some(Ok(peer)) if allowed(peer.role, Op::Read) => next.run(req).await,
        Some(Ok(peer)) => {
            tracing::info!(identity = %peer.identity, role = %peer.role, "console: role refused");
            refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "the console is for people: role {} may not use it",
                    peer.role
                ),
            )
        }
        Some(Err(reason)) => refuse(
            StatusCode::FORBIDDEN,
            format!("client certificate not accepted: {reason}"),
        ),
        None => refuse(
            StatusCode::FORBIDDEN,
            "a client certificate issued by the region CA is required",
        ),
    }
}

/// The header every state-changing request must carry.
pub const ACTION_HEADER: &str = "x-vigil-action";

/// State-changing requests only from the console's own page (see the
/// module docs).
async fn same_origin(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    match check_same_origin(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            tracing::info!(why, "console: cross-origin or unmarked request refused");
            refuse(StatusCode::FORBIDDEN, why)
        }
    }
}

/// Why a state-changing request with these headers is refused, if it is.
pub fn check_same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    if headers.get(ACTION_HEADER).map(HeaderValue::as_bytes) != Some(b"1") {
        return Err(
            "refused: a change must come from the console page (header X-Vigil-Action: 1 missing)",
        );
    }
    match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
        Some(b"same-origin") => return Ok(()),
        Some(_) => return Err("refused: a change must come from the console's own origin"),
        None => {}
    }
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST))
    else {
        return Err("refused: a change must come from the console's own origin (no Origin)");
    };
    let expected = [b"https://".as_slice(), host.as_bytes()].concat();
    if origin.as_bytes() == expected.as_slice() {
        Ok(())
    } else {
        Err("refused: a change must come from the console's own origin")
    }
}

/// Headers on every answer: a strict content policy (only our own scripts
/// and styles, nothing framed), no sniffing, no referrer, no caching.
async fn headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// `GET /api/me`: the caller, and what its role may do (the page disables
/// the rest).
async fn me(Extension(info): Extension<ConnInfo>) -> Response {
    let Ok(peer) = &info.peer else {
        return refuse(StatusCode::FORBIDDEN, "no identity");
    };
    let may = |op| allowed(peer.role, op);
    Json(serde_json::json!({
        "identity": peer.identity.as_str(),
        "role": peer.role.as_str(),
        "may": {
            "acknowledge": may(Op::Acknowledge),
            "take": may(Op::Take),
            "assign_other": may(Op::AssignOther),
            "escalate": may(Op::Escalate),
            "resolve": may(Op::Resolve),
            "reopen": may(Op::Reopen),
            "note": may(Op::Note),
            "test_mode": may(Op::SetTestMode),
            "replay": may(Op::Replay),
            "step": may(Op::Step),
            "history": may(Op::History),
            "report": may(Op::Report),
            "see_secrets": may(Op::SeeSecrets),
        },
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct FeedQuery {
    cursor: Option<String>,
}

/// `GET /api/feed`: the gRPC feed as server-sent events. Events: `update`
/// (`{incident, cause, snapshot}`), `ready` (the snapshot is complete),
/// `resync` (start again without a cursor), `heartbeat`, `failed` (the
/// feed ended with an error; the browser reconnects by itself).
async fn feed(
    State(api): Shared,
    Extension(info): Extension<ConnInfo>,
    headers: HeaderMap,
    Query(q): Query<FeedQuery>,
) -> Response {
    let cursor = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(q.cursor)
        .unwrap_or_default();
    let request = WatchIncidentsRequest {
        cursor,
        post_ids: Vec::new(),
        include_logged: false,
    };
    let items = match api.watch_incidents(call(&info, request)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return http_error(&status),
    };
    let events = items.map(|item| Ok::<_, Infallible>(sse_event(item)));
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn sse_event(item: Result<vigil_proto::v1::FeedItem, Status>) -> Event {
    let item = match item {
        Ok(item) => item,
        Err(status) => {
            return Event::default()
                .event("failed")
                .data(status.message().replace('\n', " "));
        }
    };
    let event = if item.cursor.is_empty() {
        Event::default()
    } else {
        Event::default().id(item.cursor)
    };
    match item.item {
        Some(Item::Update(u)) => {
            let data = serde_json::json!({
                "incident": u.incident.as_ref().map(|i| to_json(i, "Incident")),
                "cause": vigil_proto::v1::AuditAction::try_from(u.cause)
                    .map(|a| a.as_str_name())
                    .unwrap_or("AUDIT_ACTION_UNSPECIFIED"),
                "snapshot": u.snapshot,
            });
            event.event("update").data(data.to_string())
        }
        Some(Item::SnapshotComplete(_)) => event.event("ready").data("{}"),
        Some(Item::Resync(r)) => event.event("resync").data(r.reason.replace('\n', " ")),
        Some(Item::Heartbeat(_)) | None => event.event("heartbeat").data("{}"),
    }
}

/// `GET /api/incidents/{id}`: the incident's detail and its post's status.
async fn incident(
    State(api): Shared,
    Extension(info): Extension<ConnInfo>,
    Path(id): Path<String>,
) -> Response {
    let request = GetIncidentRequest { incident_id: id };
    let detail = match api.get_incident(call(&info, request)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return http_error(&status),
    };
    let post_id = detail
        .incident
        .as_ref()
        .map(|i| i.post_id.clone())
        .unwrap_or_default();
    let mut body = to_json(&detail, "IncidentDetail");
    let request = ListPostsRequest {
        post_ids: vec![post_id],
    };
    body["post"] = match api.list_posts(call(&info, request)).await {
        Ok(r) => r
            .into_inner()
            .posts
            .first()
            .map(|p| to_json(p, "PostInfo"))
            .unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    };
    // The action plan and the post's record (secrets as the role allows)
    // come with the detail, under `plan`.
    Json(body).into_response()
}

/// The body of `POST /api/incidents/{id}/{action}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    expected_version: u64,
    #[serde(default)]
    note: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    text: String,
    /// `assign`: to whom; empty: the caller.
    #[serde(default)]
    assignee: String,
    /// `resolve`: `GENUINE`, `USER_ERROR`, … (or the full enum name).
    #[serde(default)]
    disposition: String,
    /// For `step`: the plan step, from 1…
    #[serde(default)]
    step: u32,
    /// …`done` or `skipped`…
    #[serde(default)]
    outcome: String,
    /// …and the step's text as the page showed it (refused if the plan
    /// now says otherwise).
    #[serde(default)]
    step_text: String,
}

/// A disposition by its short or full name.
fn disposition(name: &str) -> Option<Disposition> {
    let upper = name.trim().to_ascii_uppercase();
    Disposition::from_str_name(&upper)
        .or_else(|| Disposition::from_str_name(&format!("DISPOSITION_{upper}")))
        .filter(|d| *d != Disposition::Unspecified)
}

/// `POST /api/incidents/{id}/{action}`: the gRPC workflow call of the same
/// name, with the caller's identity.
async fn action(
    State(api): Shared,
    Extension(info): Extension<ConnInfo>,
    Path((id, action)): Path<(String, String)>,
    body: Result<Json<ActionBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (v, incident_id) = (b.expected_version, id);
    let result = match action.as_str() {
        "acknowledge" => {
            let r = AcknowledgeRequest {
                incident_id,
                expected_version: v,
                note: b.note,
            };
            api.acknowledge(call(&info, r)).await
        }
        "assign" => {
            let r = AssignRequest {
                incident_id,
                expected_version: v,
                assignee: b.assignee,
            };
            api.assign(call(&info, r)).await
        }
        "escalate" => {
            let r = EscalateRequest {
                incident_id,
                expected_version: v,
                reason: b.reason,
            };
            api.escalate(call(&info, r)).await
        }
        "resolve" => {
            let Some(d) = disposition(&b.disposition) else {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "disposition: one of GENUINE, USER_ERROR, EQUIPMENT_FAULT, ENVIRONMENTAL, TEST, UNKNOWN, DUPLICATE",
                );
            };
            let r = ResolveRequest {
                incident_id,
                expected_version: v,
                disposition: d as i32,
                note: b.note,
            };
            api.resolve(call(&info, r)).await
        }
        "reopen" => {
            let r = ReopenRequest {
                incident_id,
                expected_version: v,
                reason: b.reason,
            };
            api.reopen(call(&info, r)).await
        }
        "note" => {
            let r = AddNoteRequest {
                incident_id,
                expected_version: v,
                text: b.text,
            };
            api.add_note(call(&info, r)).await
        }
        "step" => {
            let outcome = match b.outcome.trim() {
                "done" => StepOutcome::Done,
                "skipped" => StepOutcome::Skipped,
                _ => return refuse(StatusCode::BAD_REQUEST, "outcome: done or skipped"),
            };
            let r = MarkStepRequest {
                incident_id,
                expected_version: v,
                step: b.step,
                outcome: outcome as i32,
                note: b.note,
                step_text: b.step_text,
            };
            api.mark_step(call(&info, r)).await
        }
        other => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!(
                    "no action {other:?}: acknowledge, assign, escalate, resolve, reopen, note \
                     or step"
                ),
            );
        }
    };
    match result {
        Ok(r) => Json(to_json(r.get_ref(), "Incident")).into_response(),
        Err(status) => http_error(&status),
    }
}

/// `GET /api/posts`: every known post's status.
async fn posts(State(api): Shared, Extension(info): Extension<ConnInfo>) -> Response {
    let request = ListPostsRequest::default();
    match api.list_posts(call(&info, request)).await {
        Ok(r) => Json(to_json(r.get_ref(), "ListPostsResponse")).into_response(),
        Err(status) => http_error(&status),
    }
}

/// `GET /api/emergency`: emergency mode, if it is on (`{}` when off).
async fn emergency(State(api): Shared, Extension(info): Extension<ConnInfo>) -> Response {
    let request = vigil_proto::v1::GetEmergencyRequest {};
    match api.get_emergency(call(&info, request)).await {
        Ok(r) => Json(to_json(r.get_ref(), "GetEmergencyResponse")).into_response(),
        Err(status) => http_error(&status),
    }
}

/// `GET /api/replay` parameters; every one optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayQuery {
    /// One post.
    post: Option<String>,
    /// `alarm`, `camera` or `health`.
    kind: Option<String>,
    /// Received at or after (milliseconds since the epoch)…
    from_ms: Option<u64>,
    /// …and before.
    to_ms: Option<u64>,
    /// At most this many events (capped by [`MAX_REPLAY`]).
    limit: Option<u64>,
}

/// `GET /api/posts/{id}/record`: one post's record.
async fn post_record(
    State(api): Shared,
    Extension(info): Extension<ConnInfo>,
    Path(id): Path<String>,
) -> Response {
    let request = GetPostRecordRequest { post_id: id };
    match api.get_post_record(call(&info, request)).await {
        Ok(r) => Json(to_json(r.get_ref(), "PostRecord")).into_response(),
        Err(status) => http_error(&status),
    }
}

/// `GET /api/posts/{id}/history` parameters; every one optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// From (inclusive) and to (exclusive), milliseconds since the epoch.
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    /// Category names separated by commas (`burglary,fire`).
    categories: Option<String>,
    limit: Option<u32>,
    page_token: Option<String>,
}

/// Names separated by commas, blanks left out.
fn names(list: Option<&str>) -> Vec<String> {
    list.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `GET /api/posts/{id}/history`: one page of a post's history, newest
/// first (`GetPostHistoryResponse`).
async fn post_history(
    State(api): Shared,
    Extension(info): Extension<ConnInfo>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let mut categories = Vec::new();
    for name in names(q.categories.as_deref()) {
        match crate::engine::category_from_name(&name) {
            Some(c) => categories.push(c as i32),
            None => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("categories: {name:?} is not an event category"),
                );
            }
        }
    }
    let request = GetPostHistoryRequest {
        post_id: id,
        from_time: q.from_ms.map(timestamp),
        to_time: q.to_ms.map(timestamp),
        categories,
        page_size: q.limit.unwrap_or(0),
        page_token: q.page_token.unwrap_or_default(),
    };
    match api.get_post_history(call(&info, request)).await {
        Ok(r) => Json(to_json(r.get_ref(), "GetPostHistoryResponse")).into_response(),
        Err(status) => http_error(&status),
    }
}

/// `GET /api/report` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    /// The period, milliseconds since the epoch: from (inclusive), to
    /// (exclusive). Both required.
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    /// Post ids separated by commas; none for every post.
    posts: Option<String>,
    /// `csv` for a download; JSON otherwise.
    format: Option<String>,
}

/// `GET /api/report`: per-post figures for a period (`Report` as JSON, or
/// the CSV of `vigil report` as a download).
async fn report(
    State(api): Shared,
    Extension(info): Extension<ConnInfo>,
    Query(q): Query<ReportQuery>,
) -> Response {
    let csv = match q.format.as_deref() {
        None | Some("" | "json") => false,
        Some("csv") => true,
        Some(_) => return refuse(StatusCode::BAD_REQUEST, "format: json or csv"),
    };
    let (Some(from), Some(to)) = (q.from_ms, q.to_ms) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "a report needs a period: from_ms and to_ms",
        );
    };
    let request = GetReportRequest {
        from_time: Some(timestamp(from)),
        to_time: Some(timestamp(to)),
        post_ids: names(q.posts.as_deref()),
    };
    let report = match api.get_report(call(&info, request)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return http_error(&status),
    };
    if !csv {
        return Json(to_json(&report, "Report")).into_response();
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .header(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"vigil-report.csv\"",
        )
        .body(Body::from(crate::report::to_csv(&report)))
        .unwrap_or_else(|_| refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// `GET /api/replay`: stored events as JSON lines (one `StoredEvent` a
/// line), as a download; the gRPC `Replay` with its role rule (engineers,
/// admins).
async fn replay(
    State(api): Shared,
    Extension(info): Extension<ConnInfo>,
    Query(q): Query<ReplayQuery>,
) -> Response {
    let kinds = match q.kind.as_deref().map(str::trim) {
        None | Some("") => Vec::new(),
        Some("alarm") => vec![EventKind::Alarm as i32],
        Some("camera") => vec![EventKind::Camera as i32],
        Some("health") => vec![EventKind::Health as i32],
        Some(_) => return refuse(StatusCode::BAD_REQUEST, "kind: alarm, camera or health"),
    };
    let request = ReplayRequest {
        post_ids: q.post.filter(|p| !p.is_empty()).into_iter().collect(),
        kinds,
        from_time: q.from_ms.map(timestamp),
        to_time: q.to_ms.map(timestamp),
        pacing: Pacing::AsFastAsPossible as i32,
        limit: q.limit.unwrap_or(MAX_REPLAY).clamp(1, MAX_REPLAY),
        ..Default::default()
    };
    let items = match api.replay(call(&info, request)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return http_error(&status),
    };
    // A failure half-way is the last line, `{"error": …}`: the status line
    // has gone out already.
    let lines = items.map(|item| {
        let value = match item {
            Ok(item) => match item.event {
                Some(e) => to_json(&e, "StoredEvent"),
                None => serde_json::json!({}),
            },
            Err(status) => serde_json::json!({ "error": status.message() }),
        };
        let mut line = value.to_string();
        line.push('\n');
        Ok::<_, Infallible>(line)
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"vigil-replay.jsonl\"",
        )
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn changes_need_the_header_and_the_same_origin() {
        let ok = check_same_origin(&headers(&[
            ("x-vigil-action", "1"),
            ("sec-fetch-site", "same-origin"),
        ]));
        assert_eq!(ok, Ok(()));
        let ok = check_same_origin(&headers(&[
            ("x-vigil-action", "1"),
            ("host", "127.0.0.1:8443"),
            ("origin", "https://127.0.0.1:8443"),
        ]));
        assert_eq!(ok, Ok(()));
        for refused in [
            headers(&[("sec-fetch-site", "same-origin")]),
            headers(&[("x-vigil-action", "1"), ("sec-fetch-site", "cross-site")]),
            headers(&[("x-vigil-action", "1"), ("sec-fetch-site", "same-site")]),
            headers(&[("x-vigil-action", "1"), ("host", "127.0.0.1:8443")]),
            headers(&[
                ("x-vigil-action", "1"),
                ("host", "127.0.0.1:8443"),
                ("origin", "https://evil.example"),
            ]),
            headers(&[
                ("x-vigil-action", "1"),
                ("host", "127.0.0.1:8443"),
                ("origin", "http://127.0.0.1:8443"),
            ]),
            // Fetch metadata wins over a matching Origin.
            headers(&[
                ("x-vigil-action", "1"),
                ("sec-fetch-site", "cross-site"),
                ("host", "127.0.0.1:8443"),
                ("origin", "https://127.0.0.1:8443"),
            ]),
        ] {
            assert!(check_same_origin(&refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn dispositions_by_short_or_full_name() {
        assert_eq!(disposition("genuine"), Some(Disposition::Genuine));
        assert_eq!(
            disposition("DISPOSITION_USER_ERROR"),
            Some(Disposition::UserError)
        );
        assert_eq!(disposition(""), None);
        assert_eq!(disposition("unspecified"), None);
        assert_eq!(disposition("bogus"), None);
    }

    #[test]
    fn a_version_conflict_is_409_with_the_current_incident() {
        let current = vigil_proto::v1::Incident {
            id: "inc-000001".into(),
            version: 4,
            ..Default::default()
        };
        let status = crate::api::workflow_status(crate::engine::WorkflowError::VersionMismatch {
            current: Box::new(current),
        });
        let response = http_error(&status);
        assert_eq!(response.status(), StatusCode::CONFLICT);
        let denied = http_error(&Status::permission_denied("role analyst may not escalate"));
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn config_is_checked() {
        let mut c = ConsoleConfig::on("127.0.0.1:0".parse().unwrap());
        assert_eq!(c.validate(), Ok(()));
        c.max_connections_per_source = c.max_connections + 1;
        assert!(c.validate().is_err());
        c = ConsoleConfig::on("127.0.0.1:0".parse().unwrap());
        c.preauth_timeout_secs = 0;
        assert_eq!(
            c.validate().unwrap_err().0,
            "console.preauth_timeout_secs".to_string()
        );
    }
}
