//! The HTTP server: routes Patroni's paths to the health rules, the status document and the control operations.
//!
//! Read endpoints (`/cluster`, `/history`, `/config`, `/failsafe`) read the store directly, without touching the
//! agent's cached state. Write endpoints require basic auth when `restapi.authentication` is set, validate the
//! body (400 on malformed JSON or wrong types, before anything changes), then either write the store with
//! compare-and-swap (`/config`, `/switchover`, `/failover`) or ask the HA loop through the [`AgentHandle`]
//! (`/restart`, `/reload`, `/reinitialize`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine;
use keel_core::view::ClusterView;
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::access::{member_addresses, sender_is_member, Allowlist};
use super::control::{self, ManualAction, ManualPlan, Refusal};
use super::health::{passes, Check};
use super::listener::Peer;
use super::metrics;
use super::tls::{ServerTls, VerifyClient};
use crate::agent::failsafe::{FailsafeAnnouncement, FailsafeState};
use crate::agent::request_channel::{AgentHandle, AgentReply, AgentRequest};
use crate::clock::unix_ms;
use crate::dcs::{ClusterStore, DcsError, KvBackend, WatchKey};
use crate::status::NodeStatus;

/// What the API needs from the running agent.
///
/// Every method is cheap and never waits on the HA loop; what needs the loop goes through [`ApiBackend::agent`].
pub trait ApiBackend: Send + Sync + 'static {
    /// The store backend (etcd in production, [`MemoryBackend`](crate::dcs::MemoryBackend) in tests).
    type Kv: KvBackend;

    /// The node's latest status snapshot.
    fn node_status(&self) -> NodeStatus;

    /// The store this node uses (shared with the HA loop; the API only reads whole views and writes `config`
    /// and `failover`).
    fn store(&self) -> &ClusterStore<Self::Kv>;

    /// The request-reply channel to the HA loop.
    fn agent(&self) -> &AgentHandle;

    /// Failsafe announcements received by `POST /failsafe`, and the agent's failsafe settings.
    fn failsafe(&self) -> &FailsafeState;
}

/// Basic-auth credentials that write endpoints require (`restapi.authentication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl BasicAuth {
    /// Whether the request's `Authorization` header carries these credentials.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some(encoded) = value.strip_prefix("Basic ") else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        let expected = format!("{}:{}", self.username, self.password);
        // Constant time: how much of a guess matched must not show in the answer's timing.
        bool::from(subtle::ConstantTimeEq::ct_eq(decoded.as_slice(), expected.as_bytes()))
    }
}

/// How the API behaves, beyond what the backend provides.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// `restapi.authentication`: required by every write endpoint when set.
    pub auth: Option<BasicAuth>,
    /// How long an unscheduled switchover/failover request waits for the leader key to move. `None`: Patroni's
    /// `2 * max(10, loop_wait)` seconds, `loop_wait` from the dynamic configuration.
    pub switchover_wait: Option<Duration>,
    /// The longest pause between two store reads while waiting (a store watch wakes the wait earlier).
    pub poll_interval: Duration,
    /// HTTPS: reloaded from its files on `POST /reload`; with `verify_client`, unsafe requests need a client
    /// certificate.
    pub tls: Option<Arc<ServerTls>>,
    /// `restapi.allowlist` and `allowlist_include_members` for unsafe methods.
    pub allowlist: Allowlist,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            auth: None,
            switchover_wait: None,
            poll_interval: Duration::from_secs(1),
            tls: None,
            allowlist: Allowlist::default(),
        }
    }
}

impl ApiOptions {
    pub fn with_auth(auth: Option<BasicAuth>) -> Self {
        ApiOptions { auth, ..Default::default() }
    }
}

pub(crate) struct AppState<B> {
    pub backend: Arc<B>,
    pub auth: Option<BasicAuth>,
    pub options: ApiOptions,
}

type St<B> = State<Arc<AppState<B>>>;

/// Builds the router for a backend.
pub fn router<B: ApiBackend>(backend: Arc<B>, options: ApiOptions) -> Router {
    let state = Arc::new(AppState { backend, auth: options.auth.clone(), options });
    Router::new()
        .route("/patroni", get(patroni::<B>))
        .route("/metrics", get(metrics_handler::<B>))
        .route("/cluster", get(get_cluster::<B>))
        .route("/history", get(get_history::<B>))
        .route("/config", get(get_config::<B>).patch(patch_config::<B>).put(put_config::<B>))
        .route("/switchover", post(post_switchover::<B>).delete(delete_switchover::<B>))
        .route("/failover", post(post_failover::<B>))
        .route("/restart", post(post_restart::<B>).delete(delete_restart::<B>))
        .route("/reload", post(post_reload::<B>))
        .route("/reinitialize", post(post_reinitialize::<B>))
        .route("/failsafe", get(get_failsafe::<B>).post(post_failsafe::<B>))
        .route("/slots", get(get_slots::<B>))
        .route("/slots/recreate", post(post_slots_recreate::<B>))
        .fallback(any(health::<B>))
        .layer(axum::middleware::from_fn_with_state(state.clone(), access::<B>))
        .with_state(state)
}

/// Patroni's access check for unsafe methods (everything but GET, HEAD, OPTIONS), before any handler: the
/// allowlist (403 "Access is denied"; the members' addresses count with `allowlist_include_members`, except for
/// `POST /failsafe`), then with `verify_client` optional or required a valid client certificate (403). Basic
/// auth is checked by each handler.
async fn access<B: ApiBackend>(State(s): St<B>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<Peer>().copied();
    let with_members = req.uri().path() != "/failsafe";
    let allowlist = &s.options.allowlist;
    if allowlist.applies(with_members) {
        let members = if with_members && allowlist.include_members {
            member_addresses(s.backend.store()).await
        } else {
            Vec::new()
        };
        // A request whose address is unknown cannot be on the list.
        if !peer.is_some_and(|p| allowlist.allows(p.addr.ip(), &members)) {
            return text(StatusCode::FORBIDDEN, "Access is denied");
        }
    }
    let verify = s.options.tls.as_ref().map(|t| t.verify_client()).unwrap_or_default();
    if verify != VerifyClient::None && !peer.is_some_and(|p| p.client_cert) {
        return text(StatusCode::FORBIDDEN, "client certificate required");
    }
    next.run(req).await
}

async fn patroni<B: ApiBackend>(State(s): St<B>) -> Response {
    Json(s.backend.node_status().to_json()).into_response()
}

async fn metrics_handler<B: ApiBackend>(State(s): St<B>) -> Response {
    match metrics::render(&s.backend.node_status()) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "could not encode metrics").into_response(),
    }
}

async fn health<B: ApiBackend>(
    State(s): St<B>,
    method: Method,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let Some(check) = Check::from_path(uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    if method != Method::GET && method != Method::HEAD && method != Method::OPTIONS {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let st = s.backend.node_status();
    let code = if passes(check, &st, &query, unix_ms()) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if method == Method::OPTIONS || check == Check::Liveness {
        return code.into_response();
    }
    (code, Json(st.to_json())).into_response()
}

// ---- helpers ------------------------------------------------------------------------------------------------

fn text(code: StatusCode, message: impl Into<String>) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message.into()).into_response()
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        text(self.code, self.message)
    }
}

/// `Some(401)` when authentication is configured and the request does not carry it.
fn unauthorized<B>(s: &AppState<B>, headers: &HeaderMap) -> Option<Response> {
    let auth = s.auth.as_ref()?;
    if auth.allows(headers) {
        return None;
    }
    let why = if headers.contains_key(header::AUTHORIZATION) { "not authenticated" } else { "no auth header received" };
    let mut r = text(StatusCode::UNAUTHORIZED, why);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Keel\""));
    Some(r)
}

/// Reads the whole cluster at one revision, leaving the agent's cached store state alone.
async fn read_view<K: KvBackend>(store: &ClusterStore<K>) -> Result<(ClusterView, i64), DcsError> {
    let range = store.backend().range(store.prefix()).await?;
    Ok((ClusterView::from_entries(range.entries), range.revision))
}

fn store_down(e: &DcsError) -> Response {
    text(StatusCode::SERVICE_UNAVAILABLE, format!("DCS is not accessible: {e}"))
}

macro_rules! view_or_503 {
    ($s:expr) => {
        match read_view($s.backend.store()).await {
            Ok(v) => v,
            Err(e) => return store_down(&e),
        }
    };
}

macro_rules! try_refusal {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return Refusal::into_response(r),
        }
    };
}

// ---- read endpoints -----------------------------------------------------------------------------------------

async fn get_cluster<B: ApiBackend>(State(s): St<B>) -> Response {
    let (view, _) = view_or_503!(s);
    let scope = s.backend.node_status().scope;
    Json(control::cluster_as_json(&view, &scope)).into_response()
}

async fn get_history<B: ApiBackend>(State(s): St<B>) -> Response {
    let (view, _) = view_or_503!(s);
    Json(control::history_json(&view)).into_response()
}

async fn get_config<B: ApiBackend>(State(s): St<B>) -> Response {
    let (view, _) = view_or_503!(s);
    match view.config {
        Some(c) => Json(c.value.raw).into_response(),
        None => text(StatusCode::BAD_GATEWAY, "the config key is missing in the DCS"),
    }
}

async fn get_failsafe<B: ApiBackend>(State(s): St<B>) -> Response {
    let members = match read_view(s.backend.store()).await {
        Ok((view, _)) => view.failsafe,
        // The store being down is when this matters: serve what the agent last read.
        Err(_) => s.backend.failsafe().members(),
    };
    match members {
        Some(m) => Json(m).into_response(),
        None => text(StatusCode::BAD_GATEWAY, "failsafe mode is not enabled or the failsafe key is not set"),
    }
}

// ---- config -------------------------------------------------------------------------------------------------

async fn patch_config<B: ApiBackend>(State(s): St<B>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let patch = try_refusal!(control::json_object(&body, false));
    let (view, _) = view_or_503!(s);
    let Some(current) = view.config else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the config key is missing in the DCS; use PUT /config");
    };
    let mut data = match current.value.raw {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if control::patch_config(&mut data, &patch) {
        let value = Value::Object(data.clone());
        try_refusal!(control::check_dynamic(&value));
        match s.backend.store().set_config(&value, Some(current.version)).await {
            Ok(true) => info!("dynamic configuration patched through the REST API"),
            Ok(false) => {
                return text(StatusCode::CONFLICT, "the configuration was changed concurrently; read it and retry")
            }
            Err(e) => return store_down(&e),
        }
        s.backend.agent().wakeup();
    }
    Json(Value::Object(data)).into_response()
}

async fn put_config<B: ApiBackend>(State(s): St<B>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let new = Value::Object(try_refusal!(control::json_object(&body, false)));
    try_refusal!(control::check_dynamic(&new));
    let current = read_view(s.backend.store()).await.ok().and_then(|(v, _)| v.config).map(|c| c.value.raw);
    if current.as_ref() != Some(&new) {
        match s.backend.store().set_config(&new, None).await {
            Ok(_) => info!("dynamic configuration replaced through the REST API"),
            Err(e) => return text(StatusCode::BAD_GATEWAY, format!("failed to write the config key: {e}")),
        }
        s.backend.agent().wakeup();
    }
    Json(new).into_response()
}

// ---- switchover / failover ----------------------------------------------------------------------------------

async fn post_switchover<B: ApiBackend>(State(s): St<B>, headers: HeaderMap, body: Bytes) -> Response {
    manual::<B>(s, headers, body, ManualAction::Switchover).await
}

async fn post_failover<B: ApiBackend>(State(s): St<B>, headers: HeaderMap, body: Bytes) -> Response {
    manual::<B>(s, headers, body, ManualAction::Failover).await
}

async fn manual<B: ApiBackend>(s: Arc<AppState<B>>, headers: HeaderMap, body: Bytes, action: ManualAction) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let req = try_refusal!(control::json_object(&body, false));
    let (view, _) = view_or_503!(s);
    let plan = try_refusal!(control::plan_manual(action, &req, &view, unix_ms()));
    info!(
        action = plan.action.as_str(),
        leader = ?plan.request.leader,
        candidate = ?plan.request.member,
        scheduled_at = ?plan.request.scheduled_at,
        "received a manual {} request",
        plan.action.as_str()
    );
    // While a live leader has a request to process, a second one would silently replace the first.
    if let (Some(pending), Some(_)) = (&view.failover, &view.leader) {
        let p = &pending.value;
        return text(
            StatusCode::CONFLICT,
            format!(
                "another switchover/failover is already pending (leader={:?}, candidate={:?}, scheduled_at={:?}); \
                 wait for it, or cancel a scheduled one with DELETE /switchover",
                p.leader, p.member, p.scheduled_at
            ),
        );
    }
    let version = view.failover_version.unwrap_or(0);
    match s.backend.store().set_failover(&plan.request, Some(version)).await {
        Ok(true) => {}
        Ok(false) => {
            return text(
                StatusCode::CONFLICT,
                "failed to write failover key into DCS: another switchover/failover request was written concurrently",
            )
        }
        Err(e) => {
            warn!("could not write the failover key: {e}");
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("failed to write failover key into DCS: {e}"));
        }
    }
    s.backend.agent().wakeup();
    if plan.request.scheduled_at.is_some() {
        return text(StatusCode::ACCEPTED, format!("{} scheduled", plan.action.title()));
    }
    let wait = s.options.switchover_wait.unwrap_or_else(|| {
        let loop_wait = view.dynamic_config().timing.loop_wait;
        Duration::from_secs(2 * loop_wait.max(10))
    });
    let (code, msg) = wait_for_new_leader(s.backend.store(), &plan, wait, s.options.poll_interval).await;
    text(code, msg)
}

/// Patroni's `poll_failover_result`: waits until someone other than the old leader holds the leader key (200),
/// the failover key is cleared without that happening (503 failed), or `timeout` passes (503 status unknown).
async fn wait_for_new_leader<K: KvBackend>(
    store: &ClusterStore<K>,
    plan: &ManualPlan,
    timeout: Duration,
    poll: Duration,
) -> (StatusCode, String) {
    let deadline = Instant::now() + timeout;
    let title = plan.action.title();
    let candidate = plan.request.member.as_deref();
    let keys = [WatchKey::Prefix(store.prefix().to_string())];
    loop {
        let mut after = 0;
        match read_view(store).await {
            Ok((view, rev)) => {
                after = rev;
                if let Some(l) = view.leader.as_ref().filter(|l| Some(&l.name) != plan.leader_before.as_ref()) {
                    return match candidate {
                        Some(c) if c != l.name => {
                            (StatusCode::OK, format!("{title}ed over to \"{}\" instead of \"{c}\"", l.name))
                        }
                        _ => (StatusCode::OK, format!("Successfully {} over to \"{}\"", plan.action.past(), l.name)),
                    };
                }
                if view.failover.is_none() {
                    return (StatusCode::SERVICE_UNAVAILABLE, format!("{title} failed"));
                }
            }
            Err(e) => warn!("reading the store while waiting for the {}: {e}", plan.action.as_str()),
        }
        let now = Instant::now();
        if now >= deadline {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{title} status unknown"));
        }
        let step = (deadline - now).min(poll);
        // A change anywhere in the cluster ends the wait early; without a revision to watch from, just pause.
        let watched = after > 0 && store.backend().watch(&keys, after, step).await.is_ok();
        if !watched {
            tokio::time::sleep(step).await;
        }
    }
}

async fn delete_switchover<B: ApiBackend>(State(s): St<B>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let (view, _) = view_or_503!(s);
    let Some(fo) = view.failover.filter(|f| f.value.scheduled_at.is_some()) else {
        return text(StatusCode::NOT_FOUND, "no switchover is scheduled");
    };
    match s.backend.store().clear_failover(Some(fo.version)).await {
        Ok(true) => {
            s.backend.agent().wakeup();
            text(StatusCode::OK, "scheduled switchover deleted")
        }
        Ok(false) => text(StatusCode::CONFLICT, "the failover key was changed concurrently; nothing was deleted"),
        Err(e) => store_down(&e),
    }
}

// ---- agent operations ---------------------------------------------------------------------------------------

fn agent_down(e: impl std::fmt::Display) -> Response {
    text(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn post_restart<B: ApiBackend>(State(s): St<B>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let req = try_refusal!(control::json_object(&body, true));
    let st = s.backend.node_status();
    let paused = match read_view(s.backend.store()).await {
        Ok((view, _)) => view.is_paused(),
        Err(_) => st.pause,
    };
    let request = try_refusal!(control::parse_restart(&req, paused, unix_ms()));
    if request.schedule.is_none() && !control::restart_matches(&request, &st) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "restart conditions are not satisfied");
    }
    match s.backend.agent().call(|reply| AgentRequest::Restart { request, reply }).await {
        Ok(AgentReply::Done(m)) => text(StatusCode::OK, m),
        Ok(AgentReply::Scheduled(m)) => text(StatusCode::ACCEPTED, m),
        Ok(AgentReply::Conflict(m)) => text(StatusCode::CONFLICT, m),
        Ok(AgentReply::Failed(m)) => text(StatusCode::SERVICE_UNAVAILABLE, m),
        Err(e) => agent_down(e),
    }
}

async fn delete_restart<B: ApiBackend>(State(s): St<B>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    match s.backend.agent().call(|reply| AgentRequest::CancelScheduledRestart { reply }).await {
        Ok(AgentReply::Done(_)) => text(StatusCode::OK, "scheduled restart deleted"),
        Ok(_) => text(StatusCode::NOT_FOUND, "no restarts are scheduled"),
        Err(e) => agent_down(e),
    }
}

async fn post_reload<B: ApiBackend>(State(s): St<B>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    // A renewed certificate is served to new connections from now on; a broken one keeps the old in place.
    if let Some(tls) = &s.options.tls {
        match tls.reload() {
            Ok(()) => info!("REST API certificate reloaded"),
            Err(e) => warn!("{e}; the REST API keeps serving the previous certificate"),
        }
    }
    match s.backend.agent().call(|reply| AgentRequest::Reload { reply }).await {
        Ok(AgentReply::Failed(m)) | Ok(AgentReply::Conflict(m)) => text(StatusCode::SERVICE_UNAVAILABLE, m),
        Ok(_) => text(StatusCode::ACCEPTED, "reload scheduled"),
        Err(e) => agent_down(e),
    }
}

/// `GET /slots`: this node's replication slots (type, position, lag, readiness, WAL retained) and any continuity
/// breaks it recorded as leader.
async fn get_slots<B: ApiBackend>(State(s): St<B>) -> Response {
    Json(s.backend.node_status().slots).into_response()
}

/// `POST /slots/recreate {"slot": NAME}` on the leader: re-create a permanent logical slot after a continuity
/// break, knowingly (its consumers must resynchronise).
async fn post_slots_recreate<B: ApiBackend>(State(s): St<B>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let req = try_refusal!(control::json_object(&body, false));
    let Some(slot) = req.get("slot").and_then(serde_json::Value::as_str).map(str::to_string) else {
        return text(StatusCode::BAD_REQUEST, "the body must name the slot: {\"slot\": \"NAME\"}");
    };
    match s.backend.agent().call(|reply| AgentRequest::RecreateSlot { slot, reply }).await {
        Ok(AgentReply::Done(m)) | Ok(AgentReply::Scheduled(m)) => text(StatusCode::OK, m),
        Ok(AgentReply::Failed(m)) | Ok(AgentReply::Conflict(m)) => text(StatusCode::PRECONDITION_FAILED, m),
        Err(e) => agent_down(e),
    }
}

async fn post_reinitialize<B: ApiBackend>(State(s): St<B>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let req = try_refusal!(control::json_object(&body, true));
    let (_force, from_leader) = try_refusal!(control::parse_reinitialize(&req));
    if s.backend.node_status().is_leader {
        return text(StatusCode::SERVICE_UNAVAILABLE, "I am the leader, can not reinitialize");
    }
    if let Ok((view, _)) = read_view(s.backend.store()).await {
        if view.leader.is_none() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "Cluster has no leader, can not reinitialize");
        }
    }
    match s.backend.agent().call(|reply| AgentRequest::Reinitialize { from_leader, reply }).await {
        Ok(AgentReply::Done(_)) | Ok(AgentReply::Scheduled(_)) => text(StatusCode::OK, "reinitialize started"),
        Ok(AgentReply::Failed(m)) | Ok(AgentReply::Conflict(m)) => text(StatusCode::SERVICE_UNAVAILABLE, m),
        Err(e) => agent_down(e),
    }
}

// ---- failsafe -----------------------------------------------------------------------------------------------

async fn post_failsafe<B: ApiBackend>(
    State(s): St<B>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = unauthorized(&s, &headers) {
        return r;
    }
    let fs = s.backend.failsafe();
    if !fs.enabled() {
        return text(StatusCode::BAD_GATEWAY, "failsafe mode is not enabled");
    }
    let req = try_refusal!(control::json_object(&body, false));
    let st = s.backend.node_status();
    if st.is_running() && st.role == Some(keel_core::view::Role::Primary) {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "Running as a leader");
    }
    let announcement = match FailsafeAnnouncement::from_json(&Value::Object(req), Instant::now()) {
        Ok(a) => a,
        Err(m) => return text(StatusCode::BAD_REQUEST, m),
    };
    if let Err(why) = sender_is_member(fs.members().as_ref(), &announcement.name, peer.map(|p| p.0)).await {
        warn!("POST /failsafe refused: {why}");
        return text(StatusCode::FORBIDDEN, why);
    }
    fs.record(announcement);
    let mut r = text(StatusCode::OK, "Accepted");
    let lsn = match (st.received_location, st.replayed_location) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b).or(st.wal_location),
    };
    if let Some(l) = lsn {
        if let Ok(v) = HeaderValue::from_str(&l.0.to_string()) {
            r.headers_mut().insert("lsn", v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::view::Role;

    use crate::agent::request_channel::agent_channel;
    use crate::dcs::MemoryBackend;

    struct Fixed {
        st: NodeStatus,
        store: ClusterStore<MemoryBackend>,
        agent: AgentHandle,
        failsafe: FailsafeState,
    }

    impl ApiBackend for Fixed {
        type Kv = MemoryBackend;
        fn node_status(&self) -> NodeStatus {
            self.st.clone()
        }
        fn store(&self) -> &ClusterStore<MemoryBackend> {
            &self.store
        }
        fn agent(&self) -> &AgentHandle {
            &self.agent
        }
        fn failsafe(&self) -> &FailsafeState {
            &self.failsafe
        }
    }

    async fn start(st: NodeStatus) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (agent, _rx) = agent_channel(Duration::from_secs(1));
        let store = ClusterStore::new(MemoryBackend::new(), "service", "c", "n1", 30);
        let app = router(Arc::new(Fixed { st, store, agent, failsafe: FailsafeState::new() }), ApiOptions::default());
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn health_checks_answer_per_role_for_get_head_and_options() {
        let base = start(NodeStatus {
            scope: "c".into(),
            name: "n1".into(),
            state: keel_core::member_state::MemberState::Running,
            role: Some(Role::Primary),
            is_leader: true,
            leader_expiry_ms: Some(u64::MAX),
            ..Default::default()
        })
        .await;
        crate::cli::tls::install_crypto_provider();
        let client = reqwest::Client::new();
        for (method, path, code) in [
            (Method::GET, "/", 200),
            (Method::GET, "/primary", 200),
            (Method::HEAD, "/read-write", 200),
            (Method::OPTIONS, "/leader", 200),
            (Method::GET, "/replica", 503),
            (Method::OPTIONS, "/replica", 503),
            (Method::GET, "/health", 200),
            (Method::GET, "/nope", 404),
        ] {
            let resp = client.request(method.clone(), format!("{base}{path}")).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), code, "{method} {path}");
        }
        let body: serde_json::Value = client.get(format!("{base}/patroni")).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["role"], "primary");
        assert_eq!(body["patroni"]["name"], "n1");
        let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(text.contains("patroni_primary"));
    }

    #[test]
    fn basic_auth_checks_the_header() {
        let auth = BasicAuth { username: "u".into(), password: "p".into() };
        let mut h = HeaderMap::new();
        assert!(!auth.allows(&h));
        let good = base64::engine::general_purpose::STANDARD.encode("u:p");
        h.insert(header::AUTHORIZATION, format!("Basic {good}").parse().unwrap());
        assert!(auth.allows(&h));
        h.insert(header::AUTHORIZATION, "Basic dTp4".parse().unwrap());
        assert!(!auth.allows(&h));
    }
}
