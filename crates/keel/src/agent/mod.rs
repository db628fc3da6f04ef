//! `keel run`: the agent on one node. Each cycle it reads the store and PostgreSQL, asks the core what to do
//! (`keel_core::ha::decide`), executes the actions, publishes its member key, and logs one line saying what was
//! decided and why.

pub mod local;
pub mod probe;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use keel_core::ha::{self, Action, AgentState, Decision, HaInput, StartAs};
use keel_core::lsn::Lsn;
use keel_core::time::Millis;
use keel_core::view::{ClusterView, HistoryEntry, Role, Status};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::api::server::{router, unix_ms, ApiBackend, BasicAuth};
use crate::config::{self, Config};
use crate::dcs::{ClusterStore, EtcdBackend, EtcdConfig, KvBackend};
use crate::postgres::observe::{Observation, ReplicationState};
use crate::status::{NodeStatus, ReplicationRow};
use local::{iso8601, member, Local};

/// The REST API's view of the running agent.
pub struct AgentApi {
    status: Arc<RwLock<NodeStatus>>,
}

impl ApiBackend for AgentApi {
    fn node_status(&self) -> NodeStatus {
        self.status.read().map(|s| s.clone()).unwrap_or_default()
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
    let etcd = EtcdConfig::from_hosts(&cfg.etcd3_endpoints(), Duration::from_secs(timing.retry_timeout.max(1)));
    let backend = EtcdBackend::new(etcd)?;
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
    let auth = cfg.restapi.authentication.as_ref().and_then(|a| match (&a.username, &a.password) {
        (Some(u), Some(p)) => Some(BasicAuth { username: u.clone(), password: p.clone() }),
        _ => None,
    });
    let app = router(Arc::new(AgentApi { status: status.clone() }), auth);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("REST API stopped: {e}");
        }
    });
    let mut agent = Agent {
        conn_url: cfg.postgres_url(),
        api_url: cfg.restapi_url(),
        bootstrap_dcs: cfg.bootstrap_dcs().clone(),
        cfg,
        store,
        local,
        status,
        http: reqwest::Client::new(),
        view: ClusterView::default(),
        last_lease_ok: None,
        last_leader_refresh: None,
        holds_leader: false,
        last_obs: None,
    };
    agent.main_loop().await
}

struct Agent<B: KvBackend> {
    cfg: Config,
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
}

/// Why an action did not complete.
enum Outcome {
    Done,
    /// A guard's compare did not hold (or its check said no).
    GuardFailed,
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
            let loop_wait = Duration::from_secs(self.dynamic_config().timing.loop_wait);
            let wait = loop_wait.saturating_sub(started.elapsed());
            let woke = async {
                if self.holds_leader || wait.is_zero() {
                    tokio::time::sleep(wait).await;
                } else if let Err(e) = self.store.watch(wait).await {
                    warn!("watching the store failed: {e}");
                    tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                }
            };
            tokio::select! {
                _ = woke => {}
                _ = sigterm.recv() => return self.shutdown().await,
                _ = sigint.recv() => return self.shutdown().await,
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
        let lease_valid = self.last_lease_ok.is_some_and(|t| t.elapsed() < ttl);
        let dynamic = self.dynamic_config();
        self.local.set_dynamic(&dynamic);
        let (pg, obs) = self.local.observe(now).await;
        let mut input = HaInput {
            now,
            name: self.cfg.name.clone(),
            tags: self.cfg.tags.clone(),
            view: self.view.clone(),
            pg,
            agent: AgentState { store_ok, lease_valid, last_leader_refresh: self.last_leader_refresh },
            probes: None,
        };
        let mut decision = ha::decide(&input);
        if let Some(members) = decision.probe_request() {
            input.probes = Some(probe::probe_peers(&self.http, &self.view, members).await);
            decision = ha::decide(&input);
        }
        self.last_obs = obs;
        let (applied, result) = self.execute(&decision).await;
        let is_primary = self.last_obs.as_ref().is_some_and(|o| !o.in_recovery);
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
                    warn!("{action:?} failed: {e:#}");
                    Outcome::GuardFailed
                }
                Err(e) => return (decision, Err(e.context(format!("{action:?}")))),
            };
            if let Outcome::GuardFailed = outcome {
                if i == 0 {
                    if let Some(fallback) = &decision.on_guard_failure {
                        return Box::pin(self.execute(fallback)).await;
                    }
                }
                return (decision, Ok(()));
            }
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
                    self.write_status(*optime).await;
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
                let (old_tl, lsn) = self.local.promote().await?;
                self.append_history(old_tl, lsn).await;
                Ok(Outcome::Done)
            }
            Action::Demote { mode } => {
                info!("demoting PostgreSQL ({mode:?})");
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

    /// The dynamic configuration: the store's, or `bootstrap.dcs` until the store has one (as Patroni does).
    fn dynamic_config(&self) -> keel_core::dynconfig::DynamicConfig {
        match &self.view.config {
            Some(c) => c.value.clone(),
            None => keel_core::dynconfig::DynamicConfig::from_value(self.bootstrap_dcs.clone()),
        }
    }

    async fn write_status(&mut self, optime: Option<Lsn>) {
        let Some(optime) = optime else { return };
        let status = Status { optime: Some(optime), ..Default::default() };
        if let Err(e) = self.store.set_status(&status).await {
            warn!("cannot write the status key: {e}");
        }
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
            st.pause = cfg.pause;
            st.pending_restart = !self.local.pending_restart.is_empty();
            st.maximum_lag_on_failover = cfg.maximum_lag_on_failover;
            st.ttl = cfg.timing.ttl;
            st.cluster_optime = self.view.status.optime;
            st.sync_standbys = self.view.sync.as_ref().map(|s| s.value.sync_standby.clone()).unwrap_or_default();
            if store_ok {
                st.dcs_last_seen = Some(now.0 / 1000);
            }
            st.last_cycle_ms = Some(now.0);
            match (&self.last_obs, running) {
                (Some(o), true) => {
                    st.state = "running".into();
                    st.role = Some(o.role());
                    st.server_version = Some(o.server_version_num);
                    st.postmaster_start_time = o.postmaster_start_time.map(iso8601);
                    st.timeline = o.timeline;
                    st.wal_location = o.wal_flush_lsn;
                    st.received_location = o.receive_lsn;
                    st.replayed_location = o.replay_lsn;
                    st.replayed_timestamp = o.last_replay_time.map(iso8601);
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
                            application_name: r.application_name.clone(),
                            state: r.state.clone(),
                            sync_state: r.sync_state.clone(),
                            ..Default::default()
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
            let json = st.member_json(&self.conn_url, &self.api_url);
            if let Err(e) = self.store.touch_member(&json).await {
                warn!("cannot write the member key: {e}");
            }
        }
    }

    /// SIGTERM/SIGINT: stop PostgreSQL, hand the leader key over, and leave the store.
    async fn shutdown(&mut self) -> Result<()> {
        info!("shutting down: stopping PostgreSQL");
        let last = self.local.observe(Millis(unix_ms())).await.0.wal_position();
        if let Err(e) = self.local.stop().await {
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
