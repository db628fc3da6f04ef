//! Start-up wiring for `keel run`: the one place that puts the pieces together — the configuration, the store
//! backend, the local PostgreSQL, the REST API and the agent's HA loop.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keel_core::member_state::MemberState;
use tracing::{info, warn};

use crate::agent::failsafe::FailsafeState;
use crate::agent::local::Local;
use crate::agent::request_channel::{agent_channel, AgentHandle};
use crate::agent::{Agent, AgentParts};
use crate::api::server::{router, ApiBackend, ApiOptions};
use crate::config::{self, Config};
use crate::dcs::{self, Backend, ClusterStore, Store};
use crate::status::NodeStatus;

/// How long the REST API waits for the HA loop to answer a request (a restart may take a while).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// The REST API's view of the running agent.
struct AgentApi {
    status: Arc<RwLock<NodeStatus>>,
    /// The API's own store handle (same backend, no lease): it reads and writes `config` and `failover`.
    store: Store,
    handle: AgentHandle,
    failsafe: Arc<FailsafeState>,
}

impl ApiBackend for AgentApi {
    type Kv = Backend;

    fn node_status(&self) -> NodeStatus {
        self.status.read().map(|s| s.clone()).unwrap_or_default()
    }

    fn store(&self) -> &Store {
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
    let backend = dcs::backend_from_config(&cfg, Duration::from_secs(timing.retry_timeout.max(1)))?;
    let api_store = ClusterStore::new(backend.clone(), &cfg.namespace, &cfg.scope, &cfg.name, timing.ttl);
    let store = ClusterStore::new(backend, &cfg.namespace, &cfg.scope, &cfg.name, timing.ttl);
    // One watch on the cluster for the agent's lifetime: cycles read its cache, the loop wakes on it.
    store.follow();
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
        state: MemberState::Starting,
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
    // Peers' REST APIs are reached as patronictl reaches them (the ctl section's TLS settings).
    let http = crate::cli::tls::http_client(&cfg, Duration::from_secs(5)).map_err(anyhow::Error::msg)?;
    let app = router(Arc::new(api), ApiOptions { tls: rest_tls.clone(), allowlist, ..ApiOptions::with_auth(auth) });
    tokio::spawn(crate::api::listener::serve(listener, app, rest_tls.clone(), crate::api::listener::Limits::default()));
    let on_reload: Option<Box<dyn Fn() + Send>> = rest_tls.map(|tls| {
        Box::new(move || match tls.reload() {
            Ok(()) => info!("REST API certificate reloaded"),
            Err(e) => warn!("cannot reload the REST API certificate: {e}"),
        }) as Box<dyn Fn() + Send>
    });
    let parts = AgentParts { cfg, store, local, status, requests, failsafe, http, on_reload, config_path };
    let mut agent = Agent::new(parts);
    agent.main_loop().await
}
