//! The HA loop: one cycle every `loop_wait` (sooner when the leader key, a switchover request or the
//! configuration changes, or an API request arrives). A cycle reads the clock once, reads the store and
//! PostgreSQL, asks the core (`keel_core::ha::decide`), has the core's executor carry the decision out through the
//! agent's host, then runs the per-cycle duties (synchronous mode, slots, parameters) and publishes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use keel_core::dynconfig::DynamicConfig;
use keel_core::exec::{Context, ExecError, Executor};
use keel_core::ha::{self, Action, AgentState, Decision, HaInput};
use keel_core::time::Millis;
use keel_core::view::{ClusterKey, ClusterView, Status};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::failsafe::FailsafeState;
use super::host::AgentHost;
use super::local::Local;
use super::request_channel::{AgentRequest, RestartRequest};
use super::slot_manager::{SlotCycle, SlotManager};
use super::{cost as cycle_cost, probe};
use crate::clock::unix_ms;
use crate::config::Config;
use crate::dcs::{ClusterStore, KvBackend};
use crate::fence::watchdog::Watchdog;
use crate::fence::Fence;
use crate::postgres::observe::Observation;
use crate::status::NodeStatus;

/// How soon the loop runs again while the cluster has no leader.
const UNLOCKED_RETRY: Duration = Duration::from_millis(500);

/// How soon the loop runs again after a cycle that left PostgreSQL short of its final role
/// (`keel_core::ha::next_cycle_soon`).
const SETTLE_RETRY: Duration = Duration::from_millis(500);

/// While the store is unreachable: how often the loop looks whether it answers again.
const STORE_POLL: Duration = Duration::from_secs(1);

/// The agent on one node: what it knows between cycles.
pub(crate) struct Agent<B: KvBackend> {
    pub(super) cfg: Config,
    /// The local file's `postgresql` settings that win over the dynamic configuration's (re-read on reload).
    pub(super) local_pg: serde_json::Map<String, serde_json::Value>,
    /// The revision of the store's `config` key last checked against the schema (see `check_store_config`).
    pub(super) checked_config: Option<i64>,
    pub(super) conn_url: String,
    pub(super) api_url: String,
    pub(super) bootstrap_dcs: serde_json::Value,
    pub(super) store: ClusterStore<B>,
    pub(super) local: Local,
    pub(super) status: Arc<RwLock<NodeStatus>>,
    pub(super) http: reqwest::Client,
    /// The last view read from the store.
    pub(super) view: ClusterView,
    /// The last readable `config` key: garbage written over it never replaces it with defaults.
    pub(super) last_good_config: Option<DynamicConfig>,
    pub(super) last_lease_ok: Option<Instant>,
    /// Runs the core's decisions; knows whether this node holds the leader key.
    pub(super) exec: Executor,
    pub(super) last_obs: Option<Observation>,
    pub(super) requests: mpsc::Receiver<AgentRequest>,
    pub(super) failsafe: Arc<FailsafeState>,
    /// Failsafe mode kept this node going through a store outage in the last cycle (see `cycle`).
    pub(super) failsafe_active: bool,
    /// The last cycle could read the store.
    pub(super) store_reachable: bool,
    pub(super) slots: SlotManager,
    /// The `status` this node last published as leader.
    pub(super) last_status: Option<Status>,
    /// A restart requested for later (`POST /restart` with `schedule`), as Unix epoch milliseconds.
    pub(super) scheduled_restart: Option<(Millis, RestartRequest)>,
    /// The last cycle asked for the next one soon (`ha::next_cycle_soon`).
    pub(super) next_soon: bool,
    /// The running cycle is such an early one.
    pub(super) after_quick: bool,
    /// The next clone takes its base backup from the leader (`POST /reinitialize` with `from_leader`).
    pub(super) clone_from_leader: bool,
    /// Kills PostgreSQL if the leader key is not refreshed in time (see `keel_core::fence`).
    pub(super) fence: Fence,
    /// Patroni's `watchdog` device, fed while this node is a writable leader.
    pub(super) watchdog: Watchdog,
    pub(super) config_path: PathBuf,
    /// What else a reload (SIGHUP) renews, e.g. the REST API's certificate.
    pub(super) on_reload: Option<Box<dyn Fn() + Send>>,
}

/// What the agent is built from (see `crate::node`).
pub(crate) struct AgentParts<'a, B: KvBackend> {
    pub cfg: Config,
    pub store: ClusterStore<B>,
    pub local: Local,
    pub status: Arc<RwLock<NodeStatus>>,
    pub requests: mpsc::Receiver<AgentRequest>,
    pub failsafe: Arc<FailsafeState>,
    /// The client for peers' REST APIs (with the `ctl` section's TLS settings).
    pub http: reqwest::Client,
    /// What else a reload (SIGHUP) renews, e.g. the REST API's certificate.
    pub on_reload: Option<Box<dyn Fn() + Send>>,
    pub config_path: &'a std::path::Path,
}

impl<B: KvBackend> Agent<B> {
    pub(crate) fn new(p: AgentParts<'_, B>) -> Agent<B> {
        Agent {
            local_pg: p.cfg.postgresql.dynamic_overrides(),
            checked_config: None,
            conn_url: p.cfg.postgres_url(),
            api_url: p.cfg.restapi_url(),
            bootstrap_dcs: p.cfg.bootstrap_dcs().clone(),
            fence: Fence::new(Path::new(&p.cfg.postgresql.data_dir)),
            watchdog: Watchdog::new(p.cfg.watchdog.clone()),
            cfg: p.cfg,
            store: p.store,
            local: p.local,
            status: p.status,
            http: p.http,
            view: ClusterView::default(),
            last_good_config: None,
            last_lease_ok: None,
            exec: Executor::default(),
            last_obs: None,
            requests: p.requests,
            failsafe: p.failsafe,
            failsafe_active: false,
            store_reachable: true,
            slots: SlotManager::new(),
            last_status: None,
            scheduled_restart: None,
            clone_from_leader: false,
            next_soon: false,
            after_quick: false,
            config_path: p.config_path.to_path_buf(),
            on_reload: p.on_reload,
        }
    }
}

/// An error that stops the agent.
#[derive(Debug)]
pub(crate) struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refusing to run: {}", self.0)
    }
}

impl std::error::Error for Fatal {}

/// Sleeps up to `wait`, returning early once the store answers again (a lease keepalive with a short deadline
/// every [`STORE_POLL`]): after an outage the next cycle runs within about a second of the store's return.
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

/// Waits `wait`, or less when the leader key, a switchover request or the configuration changes (so that
/// failovers and switchovers do not wait for the next loop), or when the store answers again after an outage.
async fn wake_after<B: KvBackend>(store: &ClusterStore<B>, store_reachable: bool, wait: Duration) {
    let keys = [ClusterKey::Leader, ClusterKey::Failover, ClusterKey::Config];
    if wait.is_zero() {
        tokio::task::yield_now().await;
    } else if !store_reachable {
        wait_for_store(store, wait).await;
    } else if let Err(e) = store.watch_keys(&keys, wait).await {
        warn!("watching the store failed: {e}");
        tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
    }
}

impl<B: KvBackend> Agent<B> {
    /// Runs cycles until SIGTERM or SIGINT, then shuts down.
    pub(crate) async fn main_loop(&mut self) -> Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        loop {
            let started = Instant::now();
            let cost = cycle_cost::CycleCost::start();
            let result = self.cycle().await;
            cost.log();
            if let Err(e) = result {
                if e.downcast_ref::<Fatal>().is_some() {
                    error!("{e:#}");
                    return Err(e);
                }
                error!("HA cycle failed: {e:#}");
            }
            self.after_quick = std::mem::take(&mut self.next_soon);
            let wait = self.next_wait().saturating_sub(started.elapsed());
            let woke = wake_after(&self.store, self.store_reachable, wait);
            let request = tokio::select! {
                _ = woke => None,
                r = self.requests.recv() => r,
                _ = sigterm.recv() => return self.shutdown().await,
                _ = sigint.recv() => return self.shutdown().await,
                _ = sighup.recv() => {
                    self.on_hangup();
                    None
                }
            };
            let now = Millis(unix_ms());
            if let Some(r) = request {
                self.handle_request(r, now).await;
            }
            while let Ok(r) = self.requests.try_recv() {
                self.handle_request(r, now).await;
            }
        }
    }

    /// How long after this cycle's start the next one runs.
    fn next_wait(&self) -> Duration {
        let loop_wait = Duration::from_secs(self.dynamic_config().timing.loop_wait);
        if self.view.leader.is_none() && self.view.initialize.is_some() {
            // Nobody holds the leader key of an initialized cluster: look again soon rather than a loop later.
            return loop_wait.min(UNLOCKED_RETRY);
        }
        if self.after_quick {
            return loop_wait.min(SETTLE_RETRY);
        }
        loop_wait
    }

    /// One HA cycle.
    async fn cycle(&mut self) -> Result<()> {
        let now = Millis(unix_ms());
        self.store.begin_cycle();
        let store_ok = self.read_store().await;
        self.store_reachable = store_ok;
        self.check_store_config()?;
        let config = self.dynamic_config();
        self.local.set_dynamic(&config);
        if store_ok {
            self.failsafe.set_config(config.failsafe_mode, self.view.failsafe.clone());
        }
        self.run_scheduled_restart(now).await;
        let (pg, obs) = self.local.observe(now).await;
        let ttl = Duration::from_secs(config.timing.ttl);
        let failsafe_positions = self.failsafe_exchange(store_ok, &pg, &config).await;
        if let Some(positions) = &failsafe_positions {
            self.view.apply_failsafe_positions(positions);
        }
        let failsafe_confirmed = failsafe_positions.is_some();
        // Patroni's `failsafe_mode_is_active`: the primary kept its role through the exchange, or a replica holds
        // a fresh announcement from it, while the store is unreachable.
        self.failsafe_active =
            !store_ok && config.failsafe_mode && (failsafe_confirmed || self.failsafe.active(ttl).is_some());
        let agent = AgentState {
            store_ok,
            lease_valid: self.last_lease_ok.is_some_and(|t| t.elapsed() < ttl),
            last_leader_refresh: self.exec.last_leader_refresh,
            failsafe_confirmed,
            failsafe_leader: self.failsafe.active(ttl).map(|a| a.name),
            clone_from_leader: self.clone_from_leader,
            watchdog_unavailable: self.watchdog_unavailable(),
        };
        let input = HaInput {
            now,
            name: self.cfg.name.clone(),
            tags: self.cfg.tags.clone(),
            view: self.view.clone(),
            config,
            pg,
            agent,
            probes: None,
            local_slots: self.slots.summary.clone(),
        };
        self.last_obs = obs;
        let (decision, input) = self.decide(input).await;
        let (applied, result) = self.execute(&decision, Context::from(&input), now).await;
        self.next_soon = store_ok && result.is_ok() && ha::next_cycle_soon(applied, self.after_quick);
        info!("{applied}");
        self.after_actions(&input, applied, now).await;
        // Permanent slots left to create (their time in this cycle ran out): go on soon.
        self.next_soon |= store_ok && self.slots.creations_deferred;
        self.publish(store_ok, now).await;
        result
    }

    /// Keeps the lease alive and reads the view. `false` (and the last view kept) when the store did not answer.
    async fn read_store(&mut self) -> bool {
        match self.store.refresh_lease().await {
            Ok(_) => {
                self.last_lease_ok = Some(Instant::now());
                match self.store.load().await {
                    Ok(view) => {
                        if view.config_unreadable {
                            warn!("the store's config key is unreadable: running with the last readable configuration");
                        } else {
                            self.last_good_config = view.config.as_ref().map(|c| c.value.clone());
                        }
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
        }
    }

    /// Asks the core, answering its probe request (at most one) with the peers' `GET /patroni`.
    async fn decide(&mut self, mut input: HaInput) -> (Decision, HaInput) {
        let mut decision = ha::decide(&input);
        if let Some(members) = decision.probe_request() {
            input.probes = Some(probe::probe_peers(&self.http, &self.view, members).await);
            decision = ha::decide(&input);
        }
        (decision, input)
    }

    /// Carries a decision out through the core's executor. Returns the decision that ran (a fallback when its
    /// guard failed) and the first error.
    pub(super) async fn execute<'d>(
        &mut self,
        decision: &'d Decision,
        context: Context<'_>,
        now: Millis,
    ) -> (&'d Decision, Result<()>) {
        let config = self.dynamic_config();
        let mut host = AgentHost {
            fence: &mut self.fence,
            ttl_secs: config.timing.ttl,
            safety_margin_secs: self.watchdog.config().fence_margin_secs(config.timing.ttl),
            paused: config.pause,
            now,
            store: &self.store,
            local: &mut self.local,
            slots: &mut self.slots,
            status: &self.status,
            failsafe: &self.failsafe,
            bootstrap_dcs: &self.bootstrap_dcs,
            last_status: &mut self.last_status,
        };
        let (applied, result) = self.exec.execute(&mut host, context, decision).await;
        if result.is_ok() && applied.actions.iter().any(|a| matches!(a, Action::CreateReplica { .. })) {
            self.clone_from_leader = false;
        }
        let result = result.map_err(|e| match e {
            ExecError::Refused(why) => anyhow!(Fatal(format!("{why:?}"))),
            other => anyhow!("{other:#}"),
        });
        (applied, result)
    }

    /// What every cycle does after the decision: observe again if PostgreSQL changed, synchronous mode, slots,
    /// `status`, the `failsafe` key and PostgreSQL parameters.
    async fn after_actions(&mut self, input: &HaInput, applied: &Decision, now: Millis) {
        let decided = |d: &Decision| d.actions.iter().any(Action::changes_postgres);
        if decided(applied) {
            // Publish what PostgreSQL is now, not what it was before a demotion or promotion: a node that just
            // stepped down must not keep answering 200 on /primary until the next cycle (a loop_wait later).
            self.last_obs = self.local.observe(now).await.1;
        }
        let is_primary = self.last_obs.as_ref().is_some_and(|o| !o.in_recovery);
        self.update_fence(input, is_primary, now);
        self.manage_sync(is_primary).await;
        let optime = self.exec.pending_optime.take();
        let cycle = SlotCycle {
            me: &self.cfg.name,
            tags: &self.cfg.tags,
            view: &self.view,
            dynamic: &input.config,
            leader_primary: self.exec.holds_leader && is_primary,
            running: self.last_obs.is_some() && self.local.ctl.is_running(),
            replay_lsn: self.last_obs.as_ref().and_then(|o| o.replay_lsn),
            flush_lsn: self.last_obs.as_ref().and_then(|o| o.wal_flush_lsn),
            paused: input.config.pause,
            failsafe_active: !input.agent.store_ok && input.config.failsafe_mode,
            now,
        };
        if let Some(mut status) = self.slots.cycle(&cycle, &mut self.local).await {
            status.optime = optime.or(status.optime);
            self.last_status = Some(status);
        }
        if optime.is_some() {
            super::publish::write_status(&self.store, &mut self.last_status, optime).await;
            self.write_failsafe_key(&input.config).await;
        }
        if let Err(e) = self.local.apply_parameters(is_primary).await {
            warn!("cannot apply PostgreSQL parameters: {e:#}");
        }
    }
}
