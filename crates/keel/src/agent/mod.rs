//! `keel run`: the agent on one node. Each cycle it reads the store and PostgreSQL, asks the core what to do
//! (`keel_core::ha::decide`), executes the actions, publishes its member key, and logs one line saying what was
//! decided and why.

mod dynamic;
pub mod failsafe;
pub mod follower;
pub mod local;
pub mod pgauth;
pub mod probe;
pub mod slots;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use keel_core::ha::{self, Action, AgentState, Decision, HaInput, StartAs};
use keel_core::lsn::Lsn;
use keel_core::time::Millis;
use keel_core::view::{ClusterKey, ClusterView, HistoryEntry, Role, Status};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::api::agent::{agent_channel, AgentHandle, AgentReply, AgentRequest, RestartRequest};
use crate::api::failsafe::FailsafeState;
use crate::api::server::{router, unix_ms, ApiBackend, ApiOptions};
use crate::config::{self, Config};
use crate::dcs::{ClusterStore, EtcdBackend, KvBackend};
use crate::postgres::observe::{Observation, ReplicationState};
use crate::status::{iso8601, NodeStatus, ReplicationRow};
use local::{member, Local};
use slots::{SlotCycle, SlotManager};

/// How soon the loop runs again while the cluster has no leader.
const UNLOCKED_RETRY: Duration = Duration::from_millis(500);

/// While the store is unreachable: how often the loop looks whether it answers again.
const STORE_POLL: Duration = Duration::from_secs(1);

/// How long the REST API waits for the HA loop to answer a request (a restart may take a while).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// The REST API's view of the running agent.
pub struct AgentApi {
    status: Arc<RwLock<NodeStatus>>,
    /// The API's own store handle (same etcd, no lease): it reads and writes `config` and `failover`.
    store: ClusterStore<EtcdBackend>,
    handle: AgentHandle,
    failsafe: Arc<FailsafeState>,
}

impl ApiBackend for AgentApi {
    type Kv = EtcdBackend;

    fn node_status(&self) -> NodeStatus {
        self.status.read().map(|s| s.clone()).unwrap_or_default()
    }

    fn store(&self) -> &ClusterStore<EtcdBackend> {
        &self.store
    }

    fn agent(&self) -> &AgentHandle {
        &self.handle
    }

    fn failsafe(&self) -> &FailsafeState {
        &self.failsafe
    }
}

/// Loads CONFIG and runs the agent until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<()> {
    let loaded = Config::load(config_path, &config::env::from_process())?;
    for w in &loaded.warnings {
        warn!("{}: {w}", config_path.display());
    }
    let cfg = loaded.config;
    if crate::postgres::process::current_euid() == 0 {
        bail!(
            "keel run must not run as root: PostgreSQL refuses to run as root. Run it as the user that owns the \
             data directory, e.g. `runuser -u postgres -- keel run {}`",
            config_path.display()
        );
    }
    let timing = cfg.timing;
    let etcd = cfg.etcd_config(Duration::from_secs(timing.retry_timeout.max(1)))?;
    let backend = EtcdBackend::new(etcd)?;
    let api_store = ClusterStore::new(backend.clone(), &cfg.namespace, &cfg.scope, &cfg.name, timing.ttl);
    let store = ClusterStore::new(backend, &cfg.namespace, &cfg.scope, &cfg.name, timing.ttl);
    let local = Local::new(&cfg)?;
    info!(
        "keel {} starting: member {} of cluster {}, PostgreSQL {} in {}",
        env!("CARGO_PKG_VERSION"),
        cfg.name,
        cfg.scope,
        local.bins.version,
        cfg.postgresql.data_dir
    );
    let status = Arc::new(RwLock::new(NodeStatus {
        scope: cfg.scope.clone(),
        name: cfg.name.clone(),
        state: "starting".into(),
        tags: cfg.tags.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        ttl: timing.ttl,
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind(&cfg.restapi.listen)
        .await
        .with_context(|| format!("cannot listen on restapi.listen {}: is the port in use?", cfg.restapi.listen))?;
    let (allowlist, auth) = crate::api::access::from_config(&cfg.restapi).await.map_err(anyhow::Error::msg)?;
    if let Some(w) = crate::api::access::open_endpoints_warning(&allowlist, auth.as_ref()) {
        warn!("{w}");
    }
    let (handle, requests) = agent_channel(REPLY_TIMEOUT);
    let failsafe = Arc::new(FailsafeState::new());
    let api = AgentApi { status: status.clone(), store: api_store, handle, failsafe: failsafe.clone() };
    let rest_tls = crate::api::tls::from_config(&cfg.restapi)?.map(Arc::new);
    let peers_http = crate::cli::tls::http_client(&cfg, Duration::from_secs(5)).map_err(anyhow::Error::msg)?;
    let app = router(Arc::new(api), ApiOptions { tls: rest_tls.clone(), allowlist, ..ApiOptions::with_auth(auth) });
    tokio::spawn(crate::api::listener::serve(listener, app, rest_tls, crate::api::listener::Limits::default()));
    let mut agent = Agent {
        local_pg: cfg.postgresql.dynamic_overrides(),
        checked_config: None,
        conn_url: cfg.postgres_url(),
        api_url: cfg.restapi_url(),
        bootstrap_dcs: cfg.bootstrap_dcs().clone(),
        cfg,
        store,
        local,
        status,
        http: peers_http,
        view: ClusterView::default(),
        last_lease_ok: None,
        last_leader_refresh: None,
        holds_leader: false,
        last_obs: None,
        requests,
        failsafe,
        failsafe_active: false,
        store_reachable: true,
        slots: SlotManager::new(),
        pending_optime: None,
        last_status: None,
        scheduled_restart: None,
        config_path: config_path.to_path_buf(),
    };
    agent.main_loop().await
}

struct Agent<B: KvBackend> {
    cfg: Config,
    /// The local file's `postgresql` settings that win over the dynamic configuration's (re-read on reload).
    local_pg: serde_json::Map<String, serde_json::Value>,
    /// The revision of the store's `config` key last checked against the schema (see `check_store_config`).
    checked_config: Option<i64>,
    conn_url: String,
    api_url: String,
    bootstrap_dcs: serde_json::Value,
    store: ClusterStore<B>,
    local: Local,
    status: Arc<RwLock<NodeStatus>>,
    http: reqwest::Client,
    /// The last view read from the store.
    view: ClusterView,
    last_lease_ok: Option<Instant>,
    last_leader_refresh: Option<Millis>,
    holds_leader: bool,
    last_obs: Option<Observation>,
    requests: mpsc::Receiver<AgentRequest>,
    failsafe: Arc<FailsafeState>,
    /// Failsafe mode kept this node going through a store outage in the last cycle (see `cycle`).
    failsafe_active: bool,
    /// The last cycle could read the store.
    store_reachable: bool,
    slots: SlotManager,
    /// The optime an `UpdateLeader` this cycle asked to publish.
    pending_optime: Option<Lsn>,
    /// The `status` this node last published as leader.
    last_status: Option<Status>,
    /// A restart requested for later (`POST /restart` with `schedule`), as Unix epoch milliseconds.
    scheduled_restart: Option<(Millis, RestartRequest)>,
    config_path: std::path::PathBuf,
}

/// Sleeps up to `wait`, returning early once the store answers again (a lease keepalive with a short deadline
/// every [`STORE_POLL`]): after an outage the next cycle runs within about a second of the store's return, not a
/// `loop_wait` (plus a `retry_timeout` for the first call to time out) later.
async fn wait_for_store<B: KvBackend>(store: &ClusterStore<B>, wait: Duration) {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(STORE_POLL)).await;
        if let Ok(Ok(_)) = tokio::time::timeout(STORE_POLL, store.refresh_lease()).await {
            return;
        }
    }
}

/// Why an action did not complete.
enum Outcome {
    Done,
    /// A guard's compare did not hold (or its check said no).
    GuardFailed,
    /// A guard could not be evaluated (its store call or check returned an error).
    GuardError,
}

impl<B: KvBackend> Agent<B> {
    async fn main_loop(&mut self) -> Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        loop {
            let started = Instant::now();
            if let Err(e) = self.cycle().await {
                if e.downcast_ref::<Fatal>().is_some() {
                    error!("{e:#}");
                    return Err(e);
                }
                error!("HA cycle failed: {e:#}");
            }
            let mut loop_wait = Duration::from_secs(self.dynamic_config().timing.loop_wait);
            if self.view.leader.is_none() && self.view.initialize.is_some() {
                // Nobody holds the leader key of an initialized cluster: look again soon rather than a loop later.
                loop_wait = loop_wait.min(UNLOCKED_RETRY);
            }
            let wait = loop_wait.saturating_sub(started.elapsed());
            let woke = async {
                // Wake early when the leader key, a switchover request or the configuration changes, so that
                // failovers and switchovers do not wait for the next loop.
                let keys = [ClusterKey::Leader, ClusterKey::Failover, ClusterKey::Config];
                if wait.is_zero() {
                    tokio::task::yield_now().await;
                } else if !self.store_reachable {
                    wait_for_store(&self.store, wait).await;
                } else if let Err(e) = self.store.watch_keys(&keys, wait).await {
                    warn!("watching the store failed: {e}");
                    tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                }
            };
            let request = tokio::select! {
                _ = woke => None,
                r = self.requests.recv() => r,
                _ = sigterm.recv() => return self.shutdown().await,
                _ = sigint.recv() => return self.shutdown().await,
            };
            if let Some(r) = request {
                self.handle_request(r).await;
            }
            while let Ok(r) = self.requests.try_recv() {
                self.handle_request(r).await;
            }
        }
    }

    /// One HA cycle.
    async fn cycle(&mut self) -> Result<()> {
        let now = Millis(unix_ms());
        let ttl = Duration::from_secs(self.dynamic_config().timing.ttl);
        let store_ok = match self.store.refresh_lease().await {
            Ok(_) => {
                self.last_lease_ok = Some(Instant::now());
                match self.store.load().await {
                    Ok(view) => {
                        self.view = view;
                        true
                    }
                    Err(e) => {
                        warn!("cannot read the cluster from the store: {e}");
                        false
                    }
                }
            }
            Err(e) => {
                warn!("cannot keep the store lease alive: {e}");
                false
            }
        };
        self.store_reachable = store_ok;
        let lease_valid = self.last_lease_ok.is_some_and(|t| t.elapsed() < ttl);
        if let Some(c) = self.view.config.as_mut() {
            c.value = c.value.clone().with_local_postgresql(&self.local_pg);
        }
        self.check_store_config()?;
        let dynamic = self.dynamic_config();
        self.local.set_dynamic(&dynamic);
        if store_ok {
            self.failsafe.set_config(dynamic.failsafe_mode, self.view.failsafe.clone());
        }
        if let Some((at, req)) = self.scheduled_restart.clone() {
            if now >= at {
                self.scheduled_restart = None;
                match self.restart(&req).await {
                    Ok(msg) => info!("scheduled restart: {msg}"),
                    Err(e) => warn!("scheduled restart failed: {e:#}"),
                }
            }
        }
        let (pg, obs) = self.local.observe(now).await;
        let input_pg = pg.clone();
        let failsafe_positions = self.failsafe_exchange(store_ok, &pg, &dynamic).await;
        if let Some(positions) = &failsafe_positions {
            self.view.apply_failsafe_positions(positions);
        }
        let failsafe_confirmed = failsafe_positions.is_some();
        // Patroni's `failsafe_mode_is_active`: the primary kept its role through the exchange, or a replica holds
        // a fresh announcement from it, while the store is unreachable.
        self.failsafe_active =
            !store_ok && dynamic.failsafe_mode && (failsafe_confirmed || self.failsafe.active(ttl).is_some());
        let mut input = HaInput {
            now,
            name: self.cfg.name.clone(),
            tags: self.cfg.tags.clone(),
            view: self.view.clone(),
            pg: input_pg,
            agent: AgentState {
                store_ok,
                lease_valid,
                last_leader_refresh: self.last_leader_refresh,
                failsafe_confirmed,
                failsafe_leader: self.failsafe.active(ttl).map(|a| a.name),
            },
            probes: None,
            local_slots: self.slots.summary.clone(),
        };
        let mut decision = ha::decide(&input);
        if let Some(members) = decision.probe_request() {
            input.probes = Some(probe::probe_peers(&self.http, &self.view, members).await);
            decision = ha::decide(&input);
        }
        self.last_obs = obs;
        let (applied, result) = self.execute(&decision).await;
        if decision.actions.iter().chain(&applied.actions).any(Action::changes_postgres) {
            // Publish what PostgreSQL is now, not what it was before a demotion or promotion: a node that just
            // stepped down must not keep answering 200 on /primary until the next cycle (a loop_wait later).
            self.last_obs = self.local.observe(Millis(unix_ms())).await.1;
        }
        let is_primary = self.last_obs.as_ref().is_some_and(|o| !o.in_recovery);
        self.manage_sync(is_primary).await;
        let optime = self.pending_optime.take();
        let cycle = SlotCycle {
            me: &self.cfg.name,
            tags: &self.cfg.tags,
            view: &self.view,
            dynamic: &dynamic,
            leader_primary: self.holds_leader && is_primary,
            running: self.last_obs.is_some() && self.local.ctl.is_running(),
            replay_lsn: self.last_obs.as_ref().and_then(|o| o.replay_lsn),
            flush_lsn: self.last_obs.as_ref().and_then(|o| o.wal_flush_lsn),
            paused: dynamic.pause,
            failsafe_active: !store_ok && dynamic.failsafe_mode,
            now,
        };
        let published = self.slots.cycle(&cycle, &mut self.local).await;
        if let Some(mut status) = published {
            status.optime = optime.or(status.optime);
            self.last_status = Some(status);
        }
        if optime.is_some() {
            self.write_status(optime).await;
            self.write_failsafe_key(&dynamic).await;
        }
        if let Err(e) = self.local.apply_parameters(is_primary).await {
            warn!("cannot apply PostgreSQL parameters: {e:#}");
        }
        if self.holds_leader && self.last_obs.as_ref().is_some_and(|o| !o.in_recovery) {
            let slots: Vec<String> = self
                .view
                .members
                .values()
                .filter(|m| m.name != self.cfg.name && !m.tags.nostream)
                .map(|m| keel_core::slots::slot_name_from_member_name(&m.name))
                .collect();
            if let Err(e) = self.local.ensure_physical_slots(&slots).await {
                warn!("cannot create member replication slots: {e:#}");
            }
        }
        info!("{applied}");
        self.publish(store_ok, now).await;
        result
    }

    /// Executes a decision's actions in order. Returns the decision that was carried out (the fallback when the
    /// guard failed), for the cycle's log line, and the first error.
    async fn execute<'d>(&mut self, decision: &'d Decision) -> (&'d Decision, Result<()>) {
        for (i, action) in decision.actions.iter().enumerate() {
            let outcome = match self.act(action).await {
                Ok(o) => o,
                Err(e) if action.is_guard() => {
                    warn!("{action:?} could not be carried out: {e:#}");
                    Outcome::GuardError
                }
                Err(e) => return (decision, Err(e.context(format!("{action:?}")))),
            };
            let next = match outcome {
                Outcome::Done => continue,
                Outcome::GuardFailed => &decision.on_guard_failure,
                Outcome::GuardError => &decision.on_guard_error,
            };
            if let (0, Some(next)) = (i, next) {
                return Box::pin(self.execute(next)).await;
            }
            return (decision, Ok(()));
        }
        (decision, Ok(()))
    }

    async fn act(&mut self, action: &Action) -> Result<Outcome> {
        let guard = |ok: bool| if ok { Outcome::Done } else { Outcome::GuardFailed };
        match action {
            // Probes are resolved in `cycle` before execution.
            Action::ProbePeers { .. } => Ok(Outcome::Done),
            Action::TakeInitialize => Ok(guard(self.store.initialize("", true).await?)),
            Action::Bootstrap => {
                self.local.bootstrap().await?;
                Ok(Outcome::Done)
            }
            Action::WriteInitialize { sysid } => {
                self.store.initialize(sysid, false).await?;
                Ok(Outcome::Done)
            }
            Action::WriteConfig => {
                self.store.set_config(&self.bootstrap_dcs, Some(0)).await?;
                Ok(Outcome::Done)
            }
            Action::CreateReplica { source } => {
                let src = member(&self.view, source)?.clone();
                let leader = self.view.leader_member().cloned();
                self.set_state("creating replica");
                self.local.create_replica(&src, leader.as_ref()).await?;
                Ok(Outcome::Done)
            }
            Action::StartPostgres { start_as: StartAs::Replica { upstream } } => {
                let up = match upstream {
                    Some(name) => Some(member(&self.view, name)?.clone()),
                    None => None,
                };
                self.set_state("starting");
                self.local.start_replica(up.as_ref()).await?;
                Ok(Outcome::Done)
            }
            Action::AcquireLeader => {
                let ok = self.store.acquire_leader().await?;
                if ok {
                    self.holds_leader = true;
                    self.last_leader_refresh = Some(Millis(unix_ms()));
                }
                Ok(guard(ok))
            }
            Action::UpdateLeader { optime } => {
                let ok = self.store.update_leader().await?;
                self.holds_leader = ok;
                if ok {
                    self.last_leader_refresh = Some(Millis(unix_ms()));
                    // Written once per cycle after the slot work, with the slot positions.
                    self.pending_optime = *optime;
                }
                Ok(guard(ok))
            }
            Action::ReleaseLeader { last_lsn } => {
                self.write_status(*last_lsn).await;
                self.store.delete_leader().await?;
                self.holds_leader = false;
                Ok(Outcome::Done)
            }
            Action::Promote { cause } => {
                info!("promoting PostgreSQL ({cause:?})");
                self.failsafe.reset();
                let (old_tl, lsn) = self.local.promote().await?;
                self.slots.promoted((lsn != Lsn::ZERO).then_some(lsn));
                self.append_history(old_tl, lsn).await;
                Ok(Outcome::Done)
            }
            Action::Demote { mode } => {
                info!("demoting PostgreSQL ({mode:?})");
                // Peers probing us during the leader race must not see a running primary any more, nor may load
                // balancers: /primary answers 503 from here on (the next publish reports the new role).
                self.set_state("stopping");
                if let Ok(mut st) = self.status.write() {
                    st.role = None;
                }
                self.local.demote(*mode).await?;
                Ok(Outcome::Done)
            }
            Action::Follow { upstream } => {
                let up = member(&self.view, upstream)?.clone();
                self.local.follow(&up).await?;
                Ok(Outcome::Done)
            }
            Action::CheckDivergence { leader, use_pg_rewind } => {
                let l = member(&self.view, leader)?.clone();
                Ok(guard(self.local.check_divergence(&l, *use_pg_rewind).await?))
            }
            Action::ClearFailover { version } => {
                self.store.clear_failover(Some(*version)).await?;
                Ok(Outcome::Done)
            }
            Action::RefuseToRun { why } => Err(anyhow!(Fatal(format!("{why:?}")))),
        }
    }

    /// Failsafe mode: with the store down, a primary that was the leader asks every member listed in the
    /// `failsafe` key to accept it. Runs only in that situation; when all accepted, each member's reported WAL
    /// position (the `lsn` header).
    async fn failsafe_exchange(
        &self,
        store_ok: bool,
        pg: &keel_core::ha::PgObservation,
        dynamic: &keel_core::dynconfig::DynamicConfig,
    ) -> Option<BTreeMap<String, Option<Lsn>>> {
        let was_leader = self.view.leader.as_ref().is_some_and(|l| l.name == self.cfg.name);
        if store_ok || !dynamic.failsafe_mode || !was_leader || !pg.is_running_primary() {
            return None;
        }
        let slots = self.last_status.as_ref().map(|s| s.slots.clone()).unwrap_or_default();
        let body = failsafe::announcement(&self.cfg.name, &self.conn_url, &self.api_url, &slots);
        let auth = self.cfg.restapi.authentication.as_ref().and_then(|a| match (&a.username, &a.password) {
            (Some(u), Some(p)) => Some((u.as_str(), p.as_str())),
            _ => None,
        });
        failsafe::confirm(&self.http, &self.cfg.name, self.view.failsafe.as_ref(), &body, auth).await
    }

    /// The leader keeps the `failsafe` key listing every member's REST API (and its own) while failsafe mode is on.
    async fn write_failsafe_key(&mut self, dynamic: &keel_core::dynconfig::DynamicConfig) {
        if !dynamic.failsafe_mode || !self.holds_leader {
            return;
        }
        let mut members: std::collections::BTreeMap<String, String> =
            self.view.members.values().filter_map(|m| m.api_url.clone().map(|u| (m.name.clone(), u))).collect();
        members.insert(self.cfg.name.clone(), self.api_url.clone());
        if self.view.failsafe.as_ref() != Some(&members) {
            if let Err(e) = self.store.set_failsafe(&members).await {
                warn!("cannot write the failsafe key: {e}");
            }
        }
    }

    /// Answers a request from the REST API.
    async fn handle_request(&mut self, request: AgentRequest) {
        match request {
            AgentRequest::Wakeup => {}
            AgentRequest::Restart { request, reply } => {
                let answer = match &request.schedule {
                    Some(at) => match (self.scheduled_restart.is_some(), ha::parse_iso8601(at)) {
                        (true, _) => AgentReply::Conflict("Another restart is already scheduled".into()),
                        (false, Some(at)) => {
                            self.scheduled_restart = Some((at, request.clone()));
                            AgentReply::Scheduled("Restart scheduled".into())
                        }
                        (false, None) => AgentReply::Failed(format!("cannot read the schedule {at:?}")),
                    },
                    None => match self.restart(&request).await {
                        Ok(msg) => AgentReply::Done(msg),
                        Err(e) => AgentReply::Failed(format!("{e:#}")),
                    },
                };
                let _ = reply.send(answer);
            }
            AgentRequest::CancelScheduledRestart { reply } => {
                let answer = match self.scheduled_restart.take() {
                    Some(_) => AgentReply::Done("scheduled restart deleted".into()),
                    None => AgentReply::Failed("no restart is scheduled".into()),
                };
                let _ = reply.send(answer);
            }
            AgentRequest::Reload { reply } => {
                let answer = match self.reload_config() {
                    Ok(()) => AgentReply::Done("reload scheduled".into()),
                    Err(e) => AgentReply::Failed(format!("{e:#}")),
                };
                let _ = reply.send(answer);
            }
            AgentRequest::RecreateSlot { slot, reply } => {
                let cfg = keel_core::slots::SlotsConfig::from_dynamic(&self.dynamic_config());
                let logical = cfg.permanent.get(&slot).is_some_and(|p| p.kind.is_logical());
                let answer = if !self.holds_leader {
                    AgentReply::Failed("I am not the leader: ask the leader".into())
                } else if !logical {
                    AgentReply::Failed(format!("{slot} is not a permanent logical slot in the configuration"))
                } else {
                    warn!("operator asked to re-create logical slot {slot}: its consumers must resynchronise");
                    self.slots.breaks.remove(&slot);
                    self.slots.recreate.insert(slot.clone());
                    AgentReply::Done(format!("logical slot {slot} will be re-created in the next cycle"))
                };
                let _ = reply.send(answer);
            }
            AgentRequest::Reinitialize { force: _, from_leader: _, reply } => {
                let answer = if self.holds_leader {
                    AgentReply::Failed("I am the leader, can not reinitialize".into())
                } else if self.view.leader.is_none() {
                    AgentReply::Failed("Cluster has no leader, can not reinitialize".into())
                } else {
                    self.set_state("creating replica");
                    match self.local.remove_data().await {
                        Ok(()) => AgentReply::Done("reinitialize started".into()),
                        Err(e) => AgentReply::Failed(format!("could not remove the data directory: {e:#}")),
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// Restarts PostgreSQL when the request's filters allow it.
    async fn restart(&mut self, req: &RestartRequest) -> Result<String> {
        let st = self.status.read().map(|s| s.clone()).unwrap_or_default();
        let role_ok = req.role.as_deref().is_none_or(|r| {
            r == st.display_role()
                || (r == "primary" && st.role == Some(Role::Primary))
                || (r == "master" && st.is_leader)
        });
        let version_ok = req.postgres_version.is_none_or(|v| st.server_version.is_some_and(|have| have < v));
        let pending_ok = !req.restart_pending || st.pending_restart;
        if !(role_ok && version_ok && pending_ok) {
            bail!("restart conditions are not satisfied");
        }
        self.set_state("restarting");
        let result = self.local.restart().await;
        self.set_state(if result.is_ok() { "running" } else { "restart failed" });
        result.map(|()| "restarted successfully".to_string())
    }

    /// Re-reads the configuration file and applies what can change at run time (PostgreSQL parameters, pg_hba).
    fn reload_config(&mut self) -> Result<()> {
        let loaded = Config::load(&self.config_path, &config::env::from_process())?;
        for w in &loaded.warnings {
            warn!("{}: {w}", self.config_path.display());
        }
        self.local.reload_local(&loaded.config);
        self.local_pg = loaded.config.postgresql.dynamic_overrides();
        info!("reloaded {}", self.config_path.display());
        Ok(())
    }

    /// Writes `status` with this optime and the slot positions last published (the store client skips the write
    /// when nothing changed). Keeping the slots when the leader hands over lets the next leader see every
    /// position consumers may have reached.
    async fn write_status(&mut self, optime: Option<Lsn>) {
        let Some(optime) = optime else { return };
        let mut status = self.last_status.clone().unwrap_or_default();
        status.optime = Some(optime);
        if let Err(e) = self.store.set_status(&status).await {
            warn!("cannot write the status key: {e}");
        }
        self.last_status = Some(status);
    }

    async fn append_history(&mut self, old_tl: u32, lsn: Lsn) {
        let mut history = self.view.history.clone();
        history.push(HistoryEntry {
            timeline: old_tl,
            lsn,
            reason: "no recovery target specified".into(),
            timestamp: Some(iso8601(std::time::SystemTime::now())),
            new_leader: Some(self.cfg.name.clone()),
        });
        let max = self.view.dynamic_config().max_timelines_history as usize;
        if max > 0 && history.len() > max {
            history.drain(..history.len() - max);
        }
        if let Err(e) = self.store.set_history(&history).await {
            warn!("cannot write the history key: {e}");
        }
    }

    fn set_state(&self, state: &str) {
        if let Ok(mut s) = self.status.write() {
            s.state = state.into();
        }
    }

    /// Refreshes the status snapshot and writes the member key.
    async fn publish(&mut self, store_ok: bool, now: Millis) {
        let running = self.local.ctl.is_running();
        let cfg = self.dynamic_config();
        let st = {
            let mut st = match self.status.read() {
                Ok(s) => s.clone(),
                Err(_) => return,
            };
            st.is_leader = self.holds_leader;
            st.cluster_unlocked = self.view.leader.is_none();
            st.failsafe_mode_is_active = self.failsafe_active;
            st.pause = cfg.pause;
            st.pending_restart = !self.local.pending_restart.is_empty();
            st.maximum_lag_on_failover = cfg.maximum_lag_on_failover;
            st.ttl = cfg.timing.ttl;
            st.cluster_optime = self.view.status.optime;
            st.sync_standbys = self.view.sync.as_ref().map(|s| s.value.sync_standby.clone()).unwrap_or_default();
            st.quorum_commit = cfg.synchronous_mode == keel_core::dynconfig::SynchronousMode::Quorum;
            if store_ok {
                st.dcs_last_seen = Some(now.0 / 1000);
            }
            st.last_cycle_ms = Some(now.0);
            let current = self.last_obs.as_ref().and_then(|o| o.wal_flush_lsn.or(o.replay_lsn));
            st.slots = self.slots.to_json(&self.view.status, current);
            match (&self.last_obs, running) {
                (Some(o), true) => {
                    st.state = "running".into();
                    st.role = Some(o.role());
                    st.server_version = Some(o.server_version_num);
                    st.postmaster_start_time = o.postmaster_start_time;
                    st.timeline = o.timeline;
                    st.wal_location = o.wal_flush_lsn;
                    st.received_location = o.receive_lsn;
                    st.replayed_location = o.replay_lsn;
                    st.replayed_timestamp = o.last_replay_time;
                    st.replay_paused = o.replay_paused;
                    st.replication_state = o.replication_state.as_ref().map(|r| match r {
                        ReplicationState::Streaming => "streaming".to_string(),
                        other => other.as_str().to_string(),
                    });
                    st.system_identifier = Some(o.system_identifier.to_string());
                    st.replication = o
                        .replication
                        .iter()
                        .map(|r| ReplicationRow {
                            usename: r.usename.clone(),
                            application_name: r.application_name.clone(),
                            client_addr: r.client_addr.clone(),
                            state: r.state.clone(),
                            sync_state: r.sync_state.clone(),
                            sync_priority: r.sync_priority,
                        })
                        .collect();
                }
                (None, true) => {
                    if st.state == "running" {
                        st.state = "starting".into();
                    }
                }
                (_, false) => {
                    if st.state == "running" || st.state == "starting" {
                        st.state = "stopped".into();
                    }
                    st.role = if self.view.initialize.is_some() { Some(Role::Replica) } else { None };
                    st.replication_state = None;
                    st.replication.clear();
                }
            }
            if !running && st.state != "creating replica" {
                st.state = "stopped".into();
            }
            st
        };
        if let Ok(mut s) = self.status.write() {
            *s = st.clone();
        }
        if store_ok {
            let mut json = st.member_json(&self.conn_url, &self.api_url);
            if let (Some(summary), Some(obj)) = (&self.slots.summary, json.as_object_mut()) {
                obj.insert(keel_core::slots::MEMBER_KEY_FIELD.into(), summary.to_json());
            }
            if let Err(e) = self.store.touch_member(&json).await {
                warn!("cannot write the member key: {e}");
            }
        }
    }

    /// SIGTERM/SIGINT: stop PostgreSQL, hand the leader key over, and leave the store.
    async fn shutdown(&mut self) -> Result<()> {
        info!("shutting down: stopping PostgreSQL");
        let last = self.local.observe(Millis(unix_ms())).await.0.wal_position();
        let primary = self.last_obs.as_ref().is_some_and(|o| !o.in_recovery);
        if let Err(e) = self.local.stop(primary).await {
            error!("could not stop PostgreSQL: {e:#}");
        }
        if self.holds_leader {
            let last = if let Ok(cd) = crate::postgres::datadir::controldata(
                Path::new(&self.cfg.postgresql.data_dir),
                &self.local.bins,
                &crate::postgres::process::RunAs::current(),
            )
            .await
            {
                Some(cd.checkpoint_lsn)
            } else {
                last
            };
            self.write_status(last).await;
            match self.store.delete_leader().await {
                Ok(_) => info!("released the leader key"),
                Err(e) => warn!("could not release the leader key: {e}"),
            }
        }
        if let Err(e) = self.store.revoke_lease().await {
            warn!("could not revoke the store lease: {e}");
        }
        info!("stopped");
        Ok(())
    }
}

/// An error that stops the agent.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refusing to run: {}", self.0)
    }
}

impl std::error::Error for Fatal {}
