//! The operations-center gRPC API (`vigil.v1.OpsCenter`), with gRPC health
//! and server reflection, over mutual TLS.
//!
//! Reads go to the store through the pool of reader connections (on the
//! blocking pool); every change goes through the writer queue as a
//! [`Job`], and the reply comes only after the writer committed it. Who may
//! do what is decided in one place, [`allowed`]; workflow errors become gRPC
//! statuses in one place, [`workflow_status`].
//!
//! Layout:
//! - [`conn`]: connections from the shared listener plumbing (mutual TLS,
//!   CRL checked, caps and deadlines), peer identity per connection.
//! - [`feed`]: the live incident feed and its cursors.
//! - [`replay`]: stored events by post, kind, time and seq, paced.

pub mod conn;
pub mod feed;
pub mod history;
pub mod replay;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use prost::Message;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Code, Request, Response, Status};
use vigil_pki::{Peer, Role};
use vigil_proto::v1::{
    AcknowledgeRequest, AddNoteRequest, AssignRequest, AuditAction, Disposition, EscalateRequest,
    EventCategory, ExportSiteRequest, FeedItem, GetEmergencyRequest, GetEmergencyResponse,
    GetIncidentPlanRequest, GetIncidentRequest, GetPostHistoryRequest, GetPostHistoryResponse,
    GetPostRecordRequest, GetReportRequest, ImportSiteRequest, ImportSiteResponse, Incident,
    IncidentDetail, IncidentPlan, ListIncidentsRequest, ListIncidentsResponse,
    ListNotificationsRequest, ListNotificationsResponse, ListPostsRequest, ListPostsResponse,
    MarkStepRequest, NotificationState, PostInfo, PostRecord, ReopenRequest, ReplayItem,
    ReplayRequest, Report, ResolveRequest, RetryNotificationRequest, SetEmergencyRequest,
    SetTestModeRequest, SiteDocument, StepOutcome, StepProgress, WatchIncidentsRequest,
    WebhookNotification,
    ops_center_server::{OpsCenter, OpsCenterServer},
};

use crate::{
    engine::{Action, Actor, WorkflowError},
    store::{IncidentFilter, NotifyState, Store, StoreError, incident_number},
    writer::Job,
};
use conn::ConnInfo;
use feed::{Feed, Reader};

/// Default `page_size` of ListIncidents...
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// ...and the most it returns at once.
pub const MAX_PAGE_SIZE: usize = 1000;
/// After shutdown, how long open calls (feeds, replays) get to finish.
pub const GRACE: Duration = Duration::from_secs(5);

/// What a caller asks to do, for [`allowed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Watch,
    /// List or get incidents, list posts.
    Read,
    Acknowledge,
    /// Assign to oneself ("take").
    Take,
    /// Assign to someone else.
    AssignOther,
    Escalate,
    Resolve,
    Reopen,
    Note,
    SetTestMode,
    Replay,
    /// Check off or skip a step of an incident's action plan.
    Step,
    /// Import or export the site document (post records, action plans).
    ManageSite,
    /// See duress words and passcodes in post records.
    SeeSecrets,
    /// Read one post's history (its incidents and events).
    History,
    /// Per-post figures for a period.
    Report,
    /// Start or end emergency mode.
    SetEmergency,
    /// List outbound notifications and retry failed ones.
    Notifications,
}

/// The one place that says which role may do what.
pub fn allowed(role: Role, op: Op) -> bool {
    use Op::*;
    match role {
        Role::Admin => true,
        Role::Supervisor => !matches!(op, Replay),
        Role::Analyst => matches!(
            op,
            Watch | Read | Acknowledge | Take | Note | Resolve | Step | History
        ),
        // History shows engineers nothing Read and Replay do not.
        Role::Engineer => matches!(op, Watch | Read | Replay | History),
        Role::Post | Role::Broker | Role::Ops => false,
    }
}

/// The one place that turns a refused or failed workflow action into a
/// status. A version mismatch carries the current incident, both in the
/// message (its version) and as the status details (an encoded `Incident`).
pub fn workflow_status(e: WorkflowError) -> Status {
    match e {
        WorkflowError::NotFound(id) => Status::not_found(format!("no incident {id}")),
        WorkflowError::VersionMismatch { current } => {
            let message = WorkflowError::VersionMismatch {
                current: current.clone(),
            }
            .to_string();
            Status::with_details(
                Code::FailedPrecondition,
                message,
                current.encode_to_vec().into(),
            )
        }
        e @ WorkflowError::InvalidTransition { .. } => Status::failed_precondition(e.to_string()),
        WorkflowError::Refused(m) => Status::failed_precondition(m),
        WorkflowError::InvalidArgument(m) => Status::invalid_argument(m),
        // The reasons are written for the caller (no internal detail):
        // whether anything changed, and what to do.
        WorkflowError::Unavailable(m) => {
            tracing::warn!(reason = %m, "workflow unavailable");
            Status::unavailable(format!("operations center unavailable: {m}"))
        }
    }
}

/// A store failure as a status: the cause is logged, the client gets a
/// plain message.
pub fn internal(e: &StoreError) -> Status {
    tracing::error!(error = %e, "api: store read failed");
    Status::internal("internal error")
}

/// A failed read as a status: UNAVAILABLE (try again) when the database
/// cannot be reached, INTERNAL otherwise.
pub fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::Unavailable(_) => {
            tracing::warn!(error = %e, "api: store unavailable");
            Status::unavailable("the store cannot be reached; try again")
        }
        _ => internal(e),
    }
}

/// Refuses a filter naming more posts than one query may take as index
/// ranges (`store::shapes::MAX_POSTS_PER_QUERY`).
pub(crate) fn posts_within_cap(posts: &[String], what: &str) -> Result<(), Status> {
    let cap = crate::store::shapes::MAX_POSTS_PER_QUERY;
    if posts.len() > cap {
        return Err(Status::invalid_argument(format!(
            "at most {cap} posts per {what} (name none for every post)"
        )));
    }
    Ok(())
}

/// A request's optional time range: each end a valid time, from not after
/// to.
pub(crate) fn time_range(
    from: Option<prost_types::Timestamp>,
    to: Option<prost_types::Timestamp>,
) -> Result<(Option<SystemTime>, Option<SystemTime>), Status> {
    let time = |t: Option<prost_types::Timestamp>, what: &str| {
        t.map(|t| {
            SystemTime::try_from(t)
                .map_err(|_| Status::invalid_argument(format!("{what}: not a valid time")))
        })
        .transpose()
    };
    let (from, to) = (time(from, "from_time")?, time(to, "to_time")?);
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(Status::invalid_argument("from_time is after to_time"));
    }
    Ok((from, to))
}

/// The current incident attached to a FAILED_PRECONDITION for a version
/// mismatch, if any.
pub fn current_incident(status: &Status) -> Option<Incident> {
    if status.code() != Code::FailedPrecondition || status.details().is_empty() {
        return None;
    }
    Incident::decode(status.details()).ok()
}

/// Everything the API serves from.
#[derive(Clone)]
pub struct ApiContext {
    /// The writer queue.
    pub jobs: mpsc::Sender<Job>,
    /// Reader connections (never the writer's).
    pub readers: Arc<crate::store::Readers>,
    /// The incident feed the writer publishes to.
    pub feed: Feed,
    /// Where open connections and watchers are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What bounds one replay (`[api] replay_max_scan_rows`).
    pub replay: replay::Limits,
}

impl std::fmt::Debug for ApiContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiContext").finish_non_exhaustive()
    }
}

/// Serves the API on `listener` through `front` (caps and deadlines) until
/// `shutdown`, then gives open calls [`GRACE`] to finish. `server_config` is
/// the rustls config from `TlsMaterial::server_config` (client certificates
/// required, CRL checked, our certificate following its files).
pub async fn serve(
    ctx: ApiContext,
    front: vigil_net::Front,
    listener: TcpListener,
    server_config: rustls::ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let healthy = crate::metrics::StoreHealth::default();
    serve_with_health(
        ctx,
        healthy.subscribe(),
        front,
        listener,
        server_config,
        shutdown,
    )
    .await
}

/// [`serve`], with the gRPC health service following `store_ok` (from
/// [`crate::metrics::StoreHealth`]): SERVING while the store can write,
/// NOT_SERVING after a failed commit until one succeeds. Meanwhile changes
/// (workflow actions, test mode) are refused with UNAVAILABLE at once
/// instead of waiting in the writer's queue; reads go on.
pub async fn serve_with_health(
    ctx: ApiContext,
    store_ok: watch::Receiver<bool>,
    front: vigil_net::Front,
    listener: TcpListener,
    mut server_config: rustls::ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    server_config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let tracker = TaskTracker::new();
    let incoming = conn::incoming(
        front,
        listener,
        acceptor,
        shutdown.clone(),
        &tracker,
        ctx.metrics.clone(),
    );
    tracker.close();

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<OpsCenterServer<Api>>().await;
    tracker.spawn({
        let (mut store_ok, cancel) = (store_ok.clone(), shutdown.clone());
        async move {
            loop {
                let ok = *store_ok.borrow_and_update();
                // Both the service and the server as a whole ("").
                if ok {
                    health.set_serving::<OpsCenterServer<Api>>().await;
                    health
                        .set_service_status("", tonic_health::ServingStatus::Serving)
                        .await;
                } else {
                    health.set_not_serving::<OpsCenterServer<Api>>().await;
                    health
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = store_ok.changed() => if changed.is_err() { return },
                }
            }
        }
    });
    // Reflection in both versions: `v1` for grpcurl and current clients,
    // `v1alpha` for the many that still ask only for it (Python's
    // grpcio-reflection, older grpcurl, Postman). Same descriptors in each.
    let reflection = reflection_builder()
        .build_v1()
        .expect("the compiled-in descriptor set is valid");
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .expect("the compiled-in descriptor set is valid");
    let api = Api::new(ctx, store_ok, shutdown.clone());
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(OpsCenterServer::new(api))
        .serve_with_incoming_shutdown(
            ReceiverStream::new(incoming),
            shutdown.clone().cancelled_owned(),
        );
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = shutdown.cancelled() => {
            // Streams end on shutdown by themselves; a stuck client gets
            // the grace period, then its connection is dropped.
            match tokio::time::timeout(GRACE, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("api: calls still open after the grace period; closing");
                    Ok(())
                }
            }
        }
    };
    tracker.wait().await;
    result
}

/// The descriptors reflection serves: ours and the health service's (so
/// `grpcurl list` shows it too, and can describe it).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vigil_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The `OpsCenter` service.
pub struct Api {
    /// False while the store cannot write.
    store_ok: watch::Receiver<bool>,
    jobs: mpsc::Sender<Job>,
    reader: Reader,
    feed: Feed,
    shutdown: CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
    replay: replay::Limits,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("feed", &self.feed)
            .finish_non_exhaustive()
    }
}

/// Who is calling, from the connection's certificate.
fn caller<T>(req: &Request<T>) -> Result<Peer, Status> {
    match req.extensions().get::<ConnInfo>().map(|c| &c.peer) {
        Some(Ok(peer)) => Ok(peer.clone()),
        Some(Err(reason)) => Err(Status::unauthenticated(format!(
            "client certificate not accepted: {reason}"
        ))),
        None => Err(Status::unauthenticated(
            "a client certificate issued by the region CA is required",
        )),
    }
}

/// Checks that the caller may do `op`; returns who it is.
fn authorize<T>(req: &Request<T>, op: Op) -> Result<Peer, Status> {
    let peer = caller(req)?;
    if allowed(peer.role, op) {
        Ok(peer)
    } else {
        tracing::info!(
            identity = %peer.identity,
            role = %peer.role,
            op = op_name(op),
            "api: permission denied"
        );
        Err(Status::permission_denied(format!(
            "role {} may not {}",
            peer.role,
            op_name(op)
        )))
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Watch => "watch incidents",
        Op::Read => "read incidents or posts",
        Op::Acknowledge => "acknowledge incidents",
        Op::Take => "take incidents",
        Op::AssignOther => "assign incidents to others",
        Op::Escalate => "escalate incidents",
        Op::Resolve => "resolve incidents",
        Op::Reopen => "reopen incidents",
        Op::Note => "add notes",
        Op::SetTestMode => "set test mode",
        Op::Replay => "replay events",
        Op::Step => "mark plan steps",
        Op::ManageSite => "import or export post records and plans",
        Op::SeeSecrets => "see duress words and passcodes",
        Op::History => "read post histories",
        Op::Report => "read reports",
        Op::SetEmergency => "start or end emergency mode",
        Op::Notifications => "list or retry notifications",
    }
}

/// A stored notification as the API shows it.
fn notification_message(n: &crate::store::Notification) -> WebhookNotification {
    WebhookNotification {
        id: n.id,
        delivery: n.delivery.clone(),
        webhook: n.webhook.clone(),
        event: n.event.clone(),
        incident_id: n.incident.id.clone(),
        post_id: n.incident.post_id.clone(),
        state: match n.state {
            NotifyState::Pending => NotificationState::Pending,
            NotifyState::Delivered => NotificationState::Delivered,
            NotifyState::Failed => NotificationState::Failed,
        } as i32,
        attempts: n.attempts,
        at: Some(n.at.into()),
        next_at: Some(n.next_at.into()),
        last_error: n.last_error.clone(),
    }
}

fn actor(peer: &Peer) -> Actor {
    Actor::new(peer.identity.as_str(), peer.role.as_str())
}

impl Api {
    /// The service over `ctx`. The browser console (`crate::console`)
    /// holds one too and calls it in process, so both front ends share one
    /// set of role checks and one path to the writer.
    pub(crate) fn new(
        ctx: ApiContext,
        store_ok: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store_ok,
            jobs: ctx.jobs,
            reader: ctx.readers,
            feed: ctx.feed,
            shutdown,
            metrics: ctx.metrics,
            replay: ctx.replay,
        }
    }

    /// Refuses a change at once while the store cannot write. (A standby
    /// replica's store is fine: it forwards changes to the leader.)
    /// Hands a change to the writer (through the standby's forwarding when
    /// this replica stands by) and waits for its outcome: `job` is built
    /// around the reply channel. The store's health is checked first.
    async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, WorkflowError>>) -> Job,
    ) -> Result<T, Status> {
        self.check_store()?;
        let (reply, rx) = oneshot::channel();
        let gone = || Status::unavailable("operations center shutting down");
        self.jobs.send(job(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?.map_err(workflow_status)
    }

    fn check_store(&self) -> Result<(), Status> {
        if *self.store_ok.borrow() {
            Ok(())
        } else {
            Err(Status::unavailable(
                "operations center cannot write to its store; try again later",
            ))
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        self.reader.read(f).await.map_err(|e| store_status(&e))
    }

    /// Queues a workflow action and waits until the writer committed it.
    async fn workflow(
        &self,
        peer: &Peer,
        incident_id: String,
        expected_version: u64,
        action: Action,
    ) -> Result<Response<Incident>, Status> {
        if expected_version == 0 {
            return Err(Status::invalid_argument(
                "expected_version is required: pass the version of the incident you saw",
            ));
        }
        let incident = self
            .submit(|reply| Job::Workflow {
                incident_id,
                expected_version,
                action,
                actor: actor(peer),
                at: SystemTime::now(),
                reply,
            })
            .await?;
        tracing::info!(identity = %peer.identity, incident = %incident.id, version = incident.version, "api: incident changed");
        Ok(Response::new(incident))
    }
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl OpsCenter for Api {
    type WatchIncidentsStream = Stream<FeedItem>;
    type ReplayStream = Stream<ReplayItem>;

    async fn watch_incidents(
        &self,
        request: Request<WatchIncidentsRequest>,
    ) -> Result<Response<Self::WatchIncidentsStream>, Status> {
        authorize(&request, Op::Watch)?;
        let req = request.into_inner();
        posts_within_cap(&req.post_ids, "watch")?;
        let cursor =
            match req.cursor.as_str() {
                "" => None,
                c => Some(c.parse::<u64>().map_err(|_| {
                    Status::invalid_argument("cursor: not one this server handed out")
                })?),
            };
        let (tx, rx) = mpsc::channel(feed::CLIENT_CAPACITY);
        let (feed, reader, shutdown) = (
            self.feed.clone(),
            self.reader.clone(),
            self.shutdown.clone(),
        );
        // Counted as a watcher until its feed ends (the client left, or
        // shutdown).
        let watching = self.metrics.open(crate::metrics::OpenKind::Watcher);
        tokio::spawn(async move {
            feed.watch(
                reader,
                cursor,
                req.post_ids,
                req.include_logged,
                tx,
                shutdown,
            )
            .await;
            drop(watching);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_incidents(
        &self,
        request: Request<ListIncidentsRequest>,
    ) -> Result<Response<ListIncidentsResponse>, Status> {
        authorize(&request, Op::Read)?;
        let req = request.into_inner();
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let before_number = match req.page_token.as_str() {
            "" => None,
            t => Some(t.parse::<u64>().map_err(|_| {
                Status::invalid_argument("page_token: not one this server handed out")
            })?),
        };
        posts_within_cap(&req.post_ids, "listing")?;
        let filter = IncidentFilter {
            states: req.states,
            post_ids: req.post_ids,
            before_number,
            // One more than asked tells whether another page exists.
            limit: limit + 1,
        };
        let mut incidents = self.read(move |s| s.incidents(&filter)).await?;
        let next_page_token = if incidents.len() > limit {
            incidents.truncate(limit);
            incidents
                .last()
                .and_then(|i| incident_number(&i.id))
                .map(|n| n.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        // Logged incidents (emergency mode) only when asked for; the page
        // token follows the unfiltered page.
        if !req.include_logged {
            incidents.retain(|i| !i.logged);
        }
        Ok(Response::new(ListIncidentsResponse {
            incidents,
            next_page_token,
        }))
    }

    async fn get_incident(
        &self,
        request: Request<GetIncidentRequest>,
    ) -> Result<Response<IncidentDetail>, Status> {
        let peer = authorize(&request, Op::Read)?;
        let id = request.into_inner().incident_id;
        let wanted = id.clone();
        let detail = self
            .read(move |s| {
                let Some(incident) = s.incident(&id)? else {
                    return Ok(None);
                };
                let post = s.post_record(&incident.post_id)?;
                let plans = s.plans()?;
                let audit = s.audit(&id)?;
                let plan = incident_plan(&peer, &incident, &plans, post, &audit);
                Ok(Some(IncidentDetail {
                    events: s.incident_events(&id)?,
                    notes: s.notes(&id)?,
                    incident: Some(incident),
                    audit,
                    plan: Some(plan),
                }))
            })
            .await?;
        detail
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no incident {wanted}")))
    }

    async fn acknowledge(
        &self,
        request: Request<AcknowledgeRequest>,
    ) -> Result<Response<Incident>, Status> {
        let peer = authorize(&request, Op::Acknowledge)?;
        let r = request.into_inner();
        self.workflow(
            &peer,
            r.incident_id,
            r.expected_version,
            Action::Acknowledge { note: r.note },
        )
        .await
    }

    async fn assign(&self, request: Request<AssignRequest>) -> Result<Response<Incident>, Status> {
        let peer = caller(&request)?;
        let take = request.get_ref().assignee.is_empty()
            || request.get_ref().assignee == peer.identity.as_str();
        let peer = authorize(&request, if take { Op::Take } else { Op::AssignOther })?;
        let r = request.into_inner();
        self.workflow(
            &peer,
            r.incident_id,
            r.expected_version,
            Action::Assign {
                assignee: r.assignee,
            },
        )
        .await
    }

    async fn escalate(
        &self,
        request: Request<EscalateRequest>,
    ) -> Result<Response<Incident>, Status> {
        let peer = authorize(&request, Op::Escalate)?;
        let r = request.into_inner();
        self.workflow(
            &peer,
            r.incident_id,
            r.expected_version,
            Action::Escalate { reason: r.reason },
        )
        .await
    }

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<Incident>, Status> {
        let peer = authorize(&request, Op::Resolve)?;
        let r = request.into_inner();
        let disposition = Disposition::try_from(r.disposition)
            .map_err(|_| Status::invalid_argument("disposition: unknown value"))?;
        self.workflow(
            &peer,
            r.incident_id,
            r.expected_version,
            Action::Resolve {
                disposition,
                note: r.note,
            },
        )
        .await
    }

    async fn reopen(&self, request: Request<ReopenRequest>) -> Result<Response<Incident>, Status> {
        let peer = authorize(&request, Op::Reopen)?;
        let r = request.into_inner();
        self.workflow(
            &peer,
            r.incident_id,
            r.expected_version,
            Action::Reopen { reason: r.reason },
        )
        .await
    }

    async fn add_note(
        &self,
        request: Request<AddNoteRequest>,
    ) -> Result<Response<Incident>, Status> {
        let peer = authorize(&request, Op::Note)?;
        let r = request.into_inner();
        self.workflow(
            &peer,
            r.incident_id,
            r.expected_version,
            Action::AddNote { text: r.text },
        )
        .await
    }

    async fn list_posts(
        &self,
        request: Request<ListPostsRequest>,
    ) -> Result<Response<ListPostsResponse>, Status> {
        authorize(&request, Op::Read)?;
        let ids = request.into_inner().post_ids;
        let posts = self
            .read(move |s| {
                if ids.is_empty() {
                    return s.posts();
                }
                let mut posts = Vec::new();
                for id in &ids {
                    posts.extend(s.post(id)?);
                }
                Ok(posts)
            })
            .await?;
        Ok(Response::new(ListPostsResponse { posts }))
    }

    async fn set_test_mode(
        &self,
        request: Request<SetTestModeRequest>,
    ) -> Result<Response<PostInfo>, Status> {
        let peer = authorize(&request, Op::SetTestMode)?;
        let r = request.into_inner();
        // Only a post the operations center has heard from: a typo must not
        // create a phantom post.
        let id = r.post_id.clone();
        if self.read(move |s| s.post(&id)).await?.is_none() {
            return Err(Status::not_found(format!("no post {:?}", r.post_id)));
        }
        let until = self
            .submit(|reply| Job::TestMode {
                post_id: r.post_id.clone(),
                duration: Duration::from_secs(r.duration_seconds.into()),
                reason: r.reason,
                actor: actor(&peer),
                at: SystemTime::now(),
                reply,
            })
            .await?;
        let id = r.post_id.clone();
        let info = self.read(move |s| s.post(&id)).await?;
        let mut info = info.unwrap_or(PostInfo {
            post_id: r.post_id,
            ..Default::default()
        });
        info.test_mode_until = until.map(Into::into);
        Ok(Response::new(info))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<Self::ReplayStream>, Status> {
        authorize(&request, Op::Replay)?;
        let plan = replay::Plan::new(request.into_inner())?;
        let (tx, rx) = mpsc::channel(replay::CLIENT_CAPACITY);
        let (reader, shutdown) = (self.reader.clone(), self.shutdown.clone());
        let limits = self.replay;
        tokio::spawn(async move { plan.run(reader, limits, tx, shutdown).await });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn import_site(
        &self,
        request: Request<ImportSiteRequest>,
    ) -> Result<Response<ImportSiteResponse>, Status> {
        let peer = authorize(&request, Op::ManageSite)?;
        let site = request.into_inner().site.unwrap_or_default();
        // The whole document or nothing: every problem named at once.
        let problems = crate::site::validate(&site);
        if !problems.is_empty() {
            return Err(Status::invalid_argument(
                crate::site::SiteErrors(problems).to_string(),
            ));
        }
        let changes = self
            .submit(|reply| Job::Site {
                site,
                actor: actor(&peer),
                at: SystemTime::now(),
                reply,
            })
            .await?;
        tracing::info!(identity = %peer.identity, changes = changes.len(), "api: site document imported");
        Ok(Response::new(ImportSiteResponse { changes }))
    }

    async fn set_emergency(
        &self,
        request: Request<SetEmergencyRequest>,
    ) -> Result<Response<GetEmergencyResponse>, Status> {
        let peer = authorize(&request, Op::SetEmergency)?;
        let r = request.into_inner();
        let emergency = self
            .submit(|reply| Job::Emergency {
                duration: Duration::from_secs(r.duration_seconds.into()),
                post_ids: r.post_ids,
                reason: r.reason,
                actor: actor(&peer),
                at: SystemTime::now(),
                reply,
            })
            .await?;
        tracing::info!(identity = %peer.identity, on = emergency.is_some(), "api: emergency mode set");
        Ok(Response::new(GetEmergencyResponse { emergency }))
    }

    async fn get_emergency(
        &self,
        request: Request<GetEmergencyRequest>,
    ) -> Result<Response<GetEmergencyResponse>, Status> {
        authorize(&request, Op::Read)?;
        let now = SystemTime::now();
        let emergency = self.read(|s| s.emergency()).await?.filter(|m| {
            m.until
                .and_then(|u| SystemTime::try_from(u).ok())
                .is_some_and(|u| u > now)
        });
        Ok(Response::new(GetEmergencyResponse { emergency }))
    }

    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        authorize(&request, Op::Notifications)?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => (n as usize).min(1000),
        };
        let mut states = Vec::new();
        for s in &req.states {
            let state = match NotificationState::try_from(*s) {
                Ok(NotificationState::Pending) => NotifyState::Pending,
                Ok(NotificationState::Delivered) => NotifyState::Delivered,
                Ok(NotificationState::Failed) => NotifyState::Failed,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "states: {s} is not a notification state"
                    )));
                }
            };
            if !states.contains(&state) {
                states.push(state);
            }
        }
        if states.is_empty() {
            states = vec![
                NotifyState::Pending,
                NotifyState::Failed,
                NotifyState::Delivered,
            ];
        }
        let before = (req.before_id > 0).then_some(req.before_id);
        // One index range per state, merged newest first.
        let mut found = self
            .read(move |s| {
                let mut all = Vec::new();
                for state in states {
                    all.extend(s.notifications(state, before, limit)?);
                }
                Ok(all)
            })
            .await?;
        found.sort_unstable_by_key(|n| std::cmp::Reverse(n.id));
        found.truncate(limit);
        Ok(Response::new(ListNotificationsResponse {
            notifications: found.iter().map(notification_message).collect(),
        }))
    }

    async fn retry_notification(
        &self,
        request: Request<RetryNotificationRequest>,
    ) -> Result<Response<WebhookNotification>, Status> {
        let peer = authorize(&request, Op::Notifications)?;
        let id = request.into_inner().id;
        let not_found = || Status::not_found(format!("no notification {id}"));
        let n = self
            .read(move |s| s.notification(id))
            .await?
            .ok_or_else(not_found)?;
        if n.state != NotifyState::Failed {
            return Err(Status::failed_precondition(format!(
                "notification {id} is {}; only a failed one can be retried",
                n.state.name()
            )));
        }
        self.submit(|reply| crate::notify::retry_job(&n, reply))
            .await?;
        let n = self
            .read(move |s| s.notification(id))
            .await?
            .ok_or_else(not_found)?;
        tracing::info!(identity = %peer.identity, id, webhook = %n.webhook, "api: notification put back in the queue");
        Ok(Response::new(notification_message(&n)))
    }

    async fn export_site(
        &self,
        request: Request<ExportSiteRequest>,
    ) -> Result<Response<SiteDocument>, Status> {
        let peer = authorize(&request, Op::ManageSite)?;
        let mut site = self.read(|s| s.site()).await?;
        // The roles that manage sites see secrets today; should the table
        // ever part them, an export still withholds what the caller may
        // not see (and such a document cannot be imported back).
        site.posts = site
            .posts
            .into_iter()
            .map(|p| secrets_for(&peer, p))
            .collect();
        Ok(Response::new(site))
    }

    async fn get_post_record(
        &self,
        request: Request<GetPostRecordRequest>,
    ) -> Result<Response<PostRecord>, Status> {
        let peer = authorize(&request, Op::Read)?;
        let id = request.into_inner().post_id;
        let wanted = id.clone();
        let record = self.read(move |s| s.post_record(&id)).await?;
        let record =
            record.ok_or_else(|| Status::not_found(format!("no record of post {wanted:?}")))?;
        Ok(Response::new(secrets_for(&peer, record)))
    }

    async fn get_incident_plan(
        &self,
        request: Request<GetIncidentPlanRequest>,
    ) -> Result<Response<IncidentPlan>, Status> {
        let peer = authorize(&request, Op::Read)?;
        let id = request.into_inner().incident_id;
        let wanted = id.clone();
        let found = self
            .read(move |s| {
                let Some(incident) = s.incident(&id)? else {
                    return Ok(None);
                };
                let post = s.post_record(&incident.post_id)?;
                let audit = s.audit(&id)?;
                Ok(Some((incident, s.plans()?, post, audit)))
            })
            .await?;
        let (incident, plans, post, audit) =
            found.ok_or_else(|| Status::not_found(format!("no incident {wanted}")))?;
        Ok(Response::new(incident_plan(
            &peer, &incident, &plans, post, &audit,
        )))
    }

    async fn get_post_history(
        &self,
        request: Request<GetPostHistoryRequest>,
    ) -> Result<Response<GetPostHistoryResponse>, Status> {
        authorize(&request, Op::History)?;
        let req = request.into_inner();
        if req.post_id.is_empty() {
            return Err(Status::invalid_argument("post_id is required"));
        }
        let (from, to) = time_range(req.from_time, req.to_time)?;
        for c in &req.categories {
            if EventCategory::try_from(*c).is_err() {
                return Err(Status::invalid_argument(format!(
                    "categories: unknown event category {c}"
                )));
            }
        }
        let q = history::Query {
            post_id: req.post_id.clone(),
            from,
            to,
            categories: req.categories,
            page_size: match req.page_size as usize {
                0 => DEFAULT_PAGE_SIZE,
                n => n.min(MAX_PAGE_SIZE),
            },
            token: history::Token::parse(&req.page_token)?,
        };
        let (post_id, wanted) = (req.post_id.clone(), req.post_id);
        let page = self
            .read(move |s| {
                if s.post(&post_id)?.is_none() && s.post_record(&post_id)?.is_none() {
                    return Ok(None);
                }
                history::page(s, &q).map(Some)
            })
            .await?;
        page.map(Response::new).ok_or_else(|| {
            Status::not_found(format!(
                "no post {wanted}: it never sent an event and has no record"
            ))
        })
    }

    async fn get_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<Report>, Status> {
        authorize(&request, Op::Report)?;
        let req = request.into_inner();
        let (Some(from), Some(to)) = time_range(req.from_time, req.to_time)? else {
            return Err(Status::invalid_argument(
                "a report needs a period: from_time and to_time",
            ));
        };
        if from == to {
            return Err(Status::invalid_argument(
                "the period is empty: from_time equals to_time",
            ));
        }
        posts_within_cap(&req.post_ids, "report")?;
        if req.post_ids.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("post_ids: an empty post id"));
        }
        let posts = req.post_ids;
        let report = self
            .read(move |s| crate::report::build(s, from, to, &posts))
            .await?;
        Ok(Response::new(report))
    }

    async fn mark_step(
        &self,
        request: Request<MarkStepRequest>,
    ) -> Result<Response<Incident>, Status> {
        let peer = authorize(&request, Op::Step)?;
        let r = request.into_inner();
        let skipped = match StepOutcome::try_from(r.outcome) {
            Ok(StepOutcome::Done) => false,
            Ok(StepOutcome::Skipped) => true,
            _ => return Err(Status::invalid_argument("outcome: DONE or SKIPPED")),
        };
        // The step must be one of the plan that applies now; the audit line
        // says what it was, as the plan may change later.
        let id = r.incident_id.clone();
        let found = self
            .read(move |s| {
                let Some(incident) = s.incident(&id)? else {
                    return Ok(None);
                };
                Ok(Some((incident, s.plans()?)))
            })
            .await?;
        let (incident, plans) =
            found.ok_or_else(|| Status::not_found(format!("no incident {}", r.incident_id)))?;
        let category = crate::engine::category_name(incident.category());
        let plan =
            crate::site::plan_for(&plans, &category, &incident.post_id).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "no action plan applies to {} ({category} at {})",
                    incident.id, incident.post_id
                ))
            })?;
        let step = (r.step as usize)
            .checked_sub(1)
            .and_then(|i| plan.steps.get(i))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "step {}: the plan has steps 1 to {}",
                    r.step,
                    plan.steps.len()
                ))
            })?;
        if !r.step_text.is_empty() && r.step_text != step.text {
            return Err(Status::failed_precondition(format!(
                "the plan changed: step {} now says {:?}, not {:?}; look at the plan again",
                r.step, step.text, r.step_text
            )));
        }
        let action = Action::Step {
            step: r.step,
            skipped,
            summary: crate::site::step_summary(step),
            note: r.note,
        };
        self.workflow(&peer, r.incident_id, r.expected_version, action)
            .await
    }
}

/// The plan that applies to `incident` (of the site's `plans`), its
/// post's record as `peer` may see it, and the marks so far (from `audit`).
fn incident_plan(
    peer: &Peer,
    incident: &Incident,
    plans: &[vigil_proto::v1::ActionPlan],
    post: Option<PostRecord>,
    audit: &[vigil_proto::v1::AuditEntry],
) -> IncidentPlan {
    let category = crate::engine::category_name(incident.category());
    let plan = crate::site::plan_for(plans, &category, &incident.post_id).cloned();
    IncidentPlan {
        incident_id: incident.id.clone(),
        category,
        progress: step_progress(audit, plan.as_ref()),
        plan,
        post: post.map(|p| secrets_for(peer, p)),
    }
}

/// The latest mark of each plan step, from an incident's audit trail, by
/// step; a mark whose step the plan (`plan`, as it applies now) no longer
/// has as it was marked says so.
fn step_progress(
    audit: &[vigil_proto::v1::AuditEntry],
    plan: Option<&vigil_proto::v1::ActionPlan>,
) -> Vec<StepProgress> {
    let now_says = |step: u32| {
        (step as usize)
            .checked_sub(1)
            .and_then(|i| plan?.steps.get(i))
            .map(crate::site::step_summary)
    };
    let mut latest = std::collections::BTreeMap::new();
    for a in audit {
        let outcome = match a.action() {
            AuditAction::StepDone => StepOutcome::Done,
            AuditAction::StepSkipped => StepOutcome::Skipped,
            _ => continue,
        };
        latest.insert(
            a.step,
            StepProgress {
                step: a.step,
                outcome: outcome as i32,
                actor: a.actor.clone(),
                at: a.at,
                detail: a.detail.clone(),
                summary: a.step_summary.clone(),
                plan_changed: !a.step_summary.is_empty()
                    && now_says(a.step).as_deref() != Some(a.step_summary.as_str()),
            },
        );
    }
    latest.into_values().collect()
}

/// A post record as `peer` may see it: duress words and passcodes only for
/// roles allowed to see secrets (the others get their counts).
fn secrets_for(peer: &Peer, record: PostRecord) -> PostRecord {
    if allowed(peer.role, Op::SeeSecrets) {
        record
    } else {
        crate::site::withhold_secrets(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_allowed_what_the_contract_says() {
        use Op::*;
        let analyst = [Watch, Read, Acknowledge, Take, Note, Resolve, Step, History];
        let supervisor = [
            AssignOther,
            Escalate,
            Reopen,
            SetTestMode,
            ManageSite,
            SeeSecrets,
            Report,
            SetEmergency,
            Notifications,
        ];
        let all = [
            Watch,
            Read,
            Acknowledge,
            Take,
            AssignOther,
            Escalate,
            Resolve,
            Reopen,
            Note,
            SetTestMode,
            Replay,
            Step,
            ManageSite,
            SeeSecrets,
            History,
            Report,
            SetEmergency,
            Notifications,
        ];
        for op in all {
            assert_eq!(allowed(Role::Analyst, op), analyst.contains(&op), "{op:?}");
            assert_eq!(
                allowed(Role::Supervisor, op),
                analyst.contains(&op) || supervisor.contains(&op),
                "{op:?}"
            );
            assert_eq!(
                allowed(Role::Engineer, op),
                matches!(op, Watch | Read | Replay | History),
                "{op:?}"
            );
            assert!(allowed(Role::Admin, op));
            for role in [Role::Post, Role::Broker, Role::Ops] {
                assert!(!allowed(role, op), "{role:?} {op:?}");
            }
        }
    }

    #[test]
    fn a_version_mismatch_carries_the_current_incident() {
        let current = Incident {
            id: "inc-000001".into(),
            version: 3,
            ..Default::default()
        };
        let status = workflow_status(WorkflowError::VersionMismatch {
            current: Box::new(current.clone()),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().contains("version 3"),
            "{}",
            status.message()
        );
        assert_eq!(current_incident(&status), Some(current));
    }

    #[test]
    fn unavailable_says_why_in_the_callers_words() {
        let status = workflow_status(WorkflowError::Unavailable(
            "no leading replica took the action within 12 s; nothing was changed".into(),
        ));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "operations center unavailable: no leading replica took the action within 12 s; \
             nothing was changed"
        );
    }
}
