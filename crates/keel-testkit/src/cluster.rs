//! A whole Keel cluster for scenario tests: one [`EtcdServer`] and n agents (`keel run CONFIG`) with generated
//! configurations, built on [`keel::cluster_runner`] (which `keel demo` uses too).
//!
//! Dropping a [`KeelCluster`] kills every agent and every postmaster it started, even when the test panics; when
//! it panics, the tail of each agent's log (and PostgreSQL's) is printed first.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use keel::cluster_runner::{ClusterOptions, LocalCluster, SecurityOptions};
use serde_json::Value;
use tempfile::TempDir;

use crate::{EtcdServer, EtcdServerTls, EtcdctlTls};

/// What a [`KeelCluster`] differs in from the defaults (ttl 20, loop_wait 2, retry_timeout 5, PostgreSQL from
/// `KEEL_TEST_PG_VERSION`, default 15).
#[derive(Debug, Clone, Default)]
pub struct KeelOptions {
    /// The `keel` binary; default `$KEEL_BIN`, else `keel` in the target directory of the running test or example.
    pub keel_bin: Option<PathBuf>,
    /// PostgreSQL major version; default `KEEL_TEST_PG_VERSION` or 15.
    pub pg_version: Option<u32>,
    pub synchronous_mode: bool,
    pub failsafe_mode: bool,
    /// `wal_level: logical` in the dynamic configuration (for logical slots); `replica` otherwise.
    pub logical: bool,
    /// Extra `bootstrap.dcs` YAML lines, indented four spaces.
    pub extra_dcs_yaml: String,
    pub scope: Option<String>,
    /// `(ttl, loop_wait, retry_timeout)` in seconds instead of the test defaults (20, 2, 5).
    pub timing: Option<(u64, u64, u64)>,
    /// TLS and authentication in the nodes' files (see [`SecurityOptions`]).
    pub security: SecurityOptions,
    /// etcd with TLS on its client port.
    pub etcd_tls: Option<EtcdServerTls>,
    /// etcd with authentication on, the user limited to the cluster's prefix.
    pub etcd_auth: Option<EtcdAuth>,
}

/// etcd users for [`KeelOptions::etcd_auth`].
#[derive(Debug, Clone)]
pub struct EtcdAuth {
    pub root_password: String,
    pub user: String,
    pub password: String,
    /// How etcdctl reaches a TLS etcd.
    pub etcdctl: Option<EtcdctlTls>,
}

impl KeelOptions {
    /// The `keel` binary these options name (see [`KeelOptions::keel_bin`]).
    pub fn resolve_keel_bin(&self) -> PathBuf {
        if let Some(p) = &self.keel_bin {
            return p.clone();
        }
        if let Some(p) = std::env::var_os("KEEL_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().unwrap_or_default();
        // Tests live in target/<profile>/deps, examples in target/<profile>/examples.
        let dir =
            exe.parent()
                .map(|d| if d.ends_with("deps") || d.ends_with("examples") { d.parent().unwrap_or(d) } else { d });
        dir.map(|d| d.join("keel")).unwrap_or_else(|| PathBuf::from("keel"))
    }
}

/// A running cluster: etcd, the agents and their files. Derefs to [`LocalCluster`] for the node helpers
/// (`kill9`, `stop_agent`, `start_agent`, `leader`, `wait_for_leader`, `wait_replicas_streaming`, `psql`, ...).
pub struct KeelCluster {
    // Field order is drop order: agents and postmasters first, then etcd, then the files.
    cluster: LocalCluster,
    etcd: EtcdServer,
    dir: Option<TempDir>,
}

impl std::fmt::Debug for KeelCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeelCluster").field("cluster", &self.cluster).field("etcd", &self.etcd).finish()
    }
}

impl KeelCluster {
    /// Starts etcd and `n` agents (`node1`..`nodeN`). Does not wait for them: see
    /// [`LocalCluster::wait_replicas_streaming`].
    pub fn start(n: usize, opts: KeelOptions) -> Result<KeelCluster, String> {
        let etcd = EtcdServer::start_with(opts.etcd_tls.clone()).map_err(|e| e.to_string())?;
        let scope = opts.scope.clone().unwrap_or_else(|| "keel-test".into());
        if let Some(a) = &opts.etcd_auth {
            let prefix = format!("/service/{scope}/");
            etcd.enable_auth(&a.root_password, &a.user, &a.password, &prefix, a.etcdctl.as_ref())
                .map_err(|e| e.to_string())?;
        }
        let dir = tempfile::Builder::new().prefix("keel-scen-").tempdir().map_err(|e| e.to_string())?;
        let defaults = ClusterOptions::default();
        let copts = ClusterOptions {
            scope: opts.scope.clone().unwrap_or_else(|| "keel-test".into()),
            nodes: n,
            bin_dir: keel::cluster_runner::pg_bin_dir(
                opts.pg_version.unwrap_or_else(keel::cluster_runner::pg_version_from_env),
            ),
            keel_bin: opts.resolve_keel_bin(),
            synchronous_mode: opts.synchronous_mode,
            failsafe_mode: opts.failsafe_mode,
            wal_level: if opts.logical { "logical" } else { "replica" }.into(),
            extra_dcs_yaml: opts.extra_dcs_yaml.clone(),
            ttl: opts.timing.map_or(defaults.ttl, |t| t.0),
            loop_wait: opts.timing.map_or(defaults.loop_wait, |t| t.1),
            retry_timeout: opts.timing.map_or(defaults.retry_timeout, |t| t.2),
            security: opts.security.clone(),
            ..defaults
        };
        let hosts = format!("127.0.0.1:{}", etcd.client_port());
        let mut cluster = LocalCluster::create(copts, dir.path(), &hosts)?;
        cluster.start_all()?;
        Ok(KeelCluster { cluster, etcd, dir: Some(dir) })
    }

    pub fn etcd(&self) -> &EtcdServer {
        &self.etcd
    }

    /// Freezes etcd (SIGSTOP): a store outage.
    pub fn etcd_pause(&self) {
        self.etcd.pause().expect("SIGSTOP etcd");
    }

    /// Thaws etcd (SIGCONT).
    pub fn etcd_resume(&self) {
        self.etcd.resume().expect("SIGCONT etcd");
    }

    /// Kills etcd (SIGKILL): a store that is down, not merely hung. [`KeelCluster::etcd_start`] brings it back.
    pub fn etcd_stop(&mut self) {
        self.etcd.stop().expect("stop etcd");
    }

    /// Starts a stopped etcd again on its data directory and ports (its keys and leases survive).
    pub fn etcd_start(&mut self) {
        self.etcd.restart().expect("restart etcd");
    }

    /// `GET path` on `node`'s REST API: status and JSON body.
    pub fn http_get(&self, node: &str, path: &str) -> Result<(u16, Value), String> {
        self.cluster.http(node, "GET", path, None)
    }

    /// `POST path` with a JSON body on `node`'s REST API.
    pub fn http_post(&self, node: &str, path: &str, body: &Value) -> Result<(u16, Value), String> {
        self.cluster.http(node, "POST", path, Some(body))
    }

    /// Runs `keel -c <node's config> ARGS...` and returns its output.
    pub fn ctl(&self, node: &str, args: &[&str]) -> Output {
        let cfg = &self.cluster.node(node).config_path;
        Command::new(&self.cluster.opts.keel_bin)
            .arg("-c")
            .arg(cfg)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the keel binary")
    }

    /// The cluster's working directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default()
    }

    /// The tail of each agent's and PostgreSQL's log.
    pub fn logs(&self, lines: usize) -> String {
        self.cluster.log_tails(lines)
    }

    /// Waits `deadline` for `probe`, then fails with the agent logs appended.
    pub fn wait<T>(
        &self,
        what: &str,
        deadline: Duration,
        probe: impl FnMut() -> Result<Option<T>, String>,
    ) -> Result<T, String> {
        keel::cluster_runner::wait_until(what, deadline, Duration::from_millis(250), probe)
    }
}

/// The `keel list` table of a local cluster's store view (for progress and failure messages).
pub fn members_table(c: &LocalCluster) -> String {
    match c.view() {
        Ok(view) => keel::cli::list::render(&c.opts.scope, &view, keel::cli::output::Format::Pretty, false, false),
        Err(e) => format!("(cannot read the store: {e})\n"),
    }
}

impl KeelCluster {
    /// The `keel list` table.
    pub fn table(&self) -> String {
        members_table(&self.cluster)
    }
}

impl Deref for KeelCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl DerefMut for KeelCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }
}

impl Drop for KeelCluster {
    fn drop(&mut self) {
        let keep = std::env::var_os("KEEL_TEST_KEEP").is_some();
        if std::thread::panicking() {
            eprintln!("=== cluster in {} failed; store view and log tails ===", self.dir().display());
            eprint!("{}", members_table(&self.cluster));
            eprint!("{}", self.cluster.log_tails(60));
        }
        // Resume a paused etcd so nothing hangs on it while stopping.
        let _ = self.etcd.resume();
        self.cluster.shutdown();
        if keep || std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                let path = d.keep();
                eprintln!("kept {}", path.display());
            }
        }
    }
}
