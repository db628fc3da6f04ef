//! What every control command shares: loading the configuration, connecting to the store, errors and exit
//! statuses.
//!
//! Keel's control commands never prompt. Where patronictl would ask a question, Keel either needs the answer on
//! the command line (a member name, a candidate, `--force` to act on every member, the cluster name for
//! `remove`) or goes ahead (confirmations such as "Are you sure you want to switchover?"); `--force` is accepted
//! everywhere patronictl accepts it.

use std::path::Path;
use std::time::Duration;

use keel_core::view::ClusterView;

use crate::cli::rest::Rest;
use crate::config::{self, Config};
use crate::dcs::{self, DcsError, Store};

/// Exit status for operational failures (store unreachable, refused request, conflicting change).
pub const EXIT_FAILED: u8 = 1;

/// The longest a single store call may take: an unreachable etcd fails fast rather than after `retry_timeout`.
const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a control command failed: [`CtlError::Usage`] exits with 2, [`CtlError::Failed`] with 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlError {
    Usage(String),
    Failed(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => super::EXIT_USAGE,
            CtlError::Failed(_) => EXIT_FAILED,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            CtlError::Usage(m) | CtlError::Failed(m) => m,
        }
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl From<DcsError> for CtlError {
    fn from(e: DcsError) -> Self {
        match e {
            DcsError::Config(_) => CtlError::Usage(e.to_string()),
            _ => CtlError::Failed(e.to_string()),
        }
    }
}

pub type CtlResult<T = ()> = Result<T, CtlError>;

pub fn usage<T>(msg: impl Into<String>) -> CtlResult<T> {
    Err(CtlError::Usage(msg.into()))
}

pub fn failed<T>(msg: impl Into<String>) -> CtlResult<T> {
    Err(CtlError::Failed(msg.into()))
}

/// The configuration and the store of the cluster a control command works on.
#[derive(Debug)]
pub struct Ctl {
    pub config: Config,
    /// The cluster: the configuration's `scope`, or a cluster name given on the command line.
    pub scope: String,
    pub store: Store,
}

impl Ctl {
    /// Loads `path` and prepares (without connecting yet) the store of `cluster` (default: the `scope`).
    pub fn open(path: &Path, cluster: Option<&str>) -> CtlResult<Ctl> {
        let loaded = Config::load(path, &config::env::from_process()).map_err(|e| CtlError::Usage(e.one_line()))?;
        let config = loaded.config;
        let scope = cluster.filter(|c| !c.is_empty()).unwrap_or(&config.scope).to_string();
        let timeout = Duration::from_secs(config.timing.retry_timeout).min(MAX_STORE_TIMEOUT);
        let store = dcs::store_from_config(&config, Some(&scope), timeout)?;
        Ok(Ctl { config, scope, store })
    }

    /// Reads the whole cluster from the store.
    pub async fn load(&self) -> CtlResult<ClusterView> {
        Ok(self.store.load().await?)
    }

    /// Like [`load`](Self::load), but a cluster with no keys at all is an error naming the cluster.
    pub async fn load_existing(&self) -> CtlResult<ClusterView> {
        let view = self.load().await?;
        if view.initialize.is_none() && view.config.is_none() && view.leader.is_none() && view.members.is_empty() {
            return failed(format!(
                "cluster {} does not exist in the store (no keys under {})",
                self.scope,
                self.store.prefix()
            ));
        }
        Ok(view)
    }

    /// A client for the members' REST APIs, with `ctl.authentication` or `restapi.authentication` when configured.
    pub fn rest(&self) -> CtlResult<Rest> {
        Rest::new(&self.config)
    }
}

/// Runs a control command's future on a small runtime of its own and turns the outcome into an exit status,
/// printing an error as one line on stderr.
pub fn run_async<F>(fut: F) -> u8
where
    F: std::future::Future<Output = CtlResult>,
{
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => super::EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Splits patronictl-style positionals `[CLUSTER_NAME] [MEMBER...]`: a leading argument equal to the cluster
/// name (and not itself a member) is the cluster name; the rest are member names.
pub fn split_cluster_arg<'a>(scope: &str, args: &'a [String], view: &ClusterView) -> &'a [String] {
    match args.first() {
        Some(first) if first == scope && !view.members.contains_key(first) => &args[1..],
        _ => args,
    }
}
