//! The cluster under test: namespaces, one etcd, three agents; and the helpers the faults and checks use.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use keel::cluster_runner::{self, http_request_to, ClusterOptions, LocalCluster, SecurityOptions};
use keel_testkit::netns::NetLab;
use serde_json::{json, Value};

use crate::faults::FaultKind;

/// The etcd member name inside the lab.
pub const ETCD: &str = "etcd";
const ETCD_PORT: u16 = 2379;
/// Seconds from the start of the run: every timestamp the writer, consumer and checker record.
pub fn clock() -> f64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// How the writer and the consumer reach a node.
#[derive(Debug, Clone)]
pub struct NodeAddr {
    pub name: String,
    pub host: String,
    pub pg_port: u16,
    pub api_port: u16,
}

/// etcd inside its namespace.
struct EtcdProc {
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
}

impl EtcdProc {
    fn spawn(&mut self) -> Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new("ip")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything the run set up. Fields drop in order: agents and PostgreSQL, etcd, the namespaces, the files.
pub struct ChaosEnv {
    pub cluster: LocalCluster,
    etcd: EtcdProc,
    pub lab: NetLab,
    pub base: tempfile::TempDir,
    pub pg_version: u32,
    pub netem: bool,
}

fn keel_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(|d| if d.ends_with("examples") { d.parent().unwrap_or(d) } else { d });
    dir.map(|d| d.join("keel")).unwrap_or_else(|| PathBuf::from("keel"))
}

const SLOTS_YAML: &str =
    "    slots:\n      cdc:\n        type: logical\n        database: app\n        plugin: test_decoding\n";

impl ChaosEnv {
    /// Creates the namespaces, starts etcd and the agents, and waits for a primary with two streaming replicas,
    /// the database `app`, its table and the permanent slot `cdc`.
    pub fn start(pg_version: u32) -> Result<ChaosEnv> {
        clock();
        require_test_decoding(&cluster_runner::pg_bin_dir(pg_version))?;
        let keel = keel_bin();
        if !keel.exists() {
            bail!("{} not found: build it first (cargo build -p keel --bin keel), or set KEEL_BIN", keel.display());
        }
        let lab = NetLab::create(&["node1", "node2", "node3", ETCD]).context("creating network namespaces")?;
        println!("chaos: namespaces {}-* on bridge {} ({}/24)", lab.tag, lab.bridge, lab.root_addr);
        // KEEL_CHAOS_KEEP=1 keeps the logs and data directories for a look after the run.
        let keep = std::env::var_os("KEEL_CHAOS_KEEP").is_some();
        let base = tempfile::Builder::new().prefix("keel-chaos-").disable_cleanup(keep).tempdir()?;
        println!("chaos: files under {}{}", base.path().display(), if keep { " (kept)" } else { "" });
        let etcd = start_etcd(&lab, base.path())?;
        let subnet = format!("{}/24", lab.root_addr);
        let hba = vec![
            "local all all trust".to_string(),
            format!("host all all {subnet} md5"),
            format!("host replication all {subnet} md5"),
        ];
        let node_netns = lab.members[..3].iter().map(|m| (m.netns.clone(), m.addr.clone())).collect();
        let opts = ClusterOptions {
            scope: "chaos".into(),
            bin_dir: cluster_runner::pg_bin_dir(pg_version),
            keel_bin: keel,
            wal_level: "logical".into(),
            extra_dcs_yaml: SLOTS_YAML.into(),
            reclone_on_rewind_failure: true,
            security: SecurityOptions { pg_hba: Some(hba), ..Default::default() },
            node_netns,
            ..ClusterOptions::default()
        };
        let etcd_hosts = format!("{}:{ETCD_PORT}", lab.member(ETCD).addr);
        let cluster = LocalCluster::create(opts, &base.path().join("cluster"), &etcd_hosts).map_err(|e| anyhow!(e))?;
        let mut env = ChaosEnv { cluster, etcd, lab, base, pg_version, netem: false };
        env.netem = env.lab.has_netem();
        env.cluster.start_all().map_err(|e| anyhow!(e))?;
        env.wait_healthy(Duration::from_secs(240)).context("first bootstrap")?;
        env.prepare_app()?;
        Ok(env)
    }

    fn prepare_app(&self) -> Result<()> {
        let leader = self.cluster.leader().ok_or_else(|| anyhow!("no leader"))?;
        self.cluster.psql(&leader, "CREATE DATABASE app").map_err(|e| anyhow!(e))?;
        let table = "CREATE TABLE chaos (id bigint PRIMARY KEY, node text, at timestamptz DEFAULT clock_timestamp())";
        self.cluster.psql_db(&leader, "app", table).map_err(|e| anyhow!(e))?;
        self.wait("slot cdc on the primary", Duration::from_secs(90), || {
            let leader = self.cluster.leader().ok_or("no leader")?;
            let n = self.cluster.psql(&leader, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'cdc'")?;
            Ok((n == "1").then_some(()))
        })
    }

    /// Removes fault kinds this machine cannot inject, saying so.
    pub fn usable(&self, kinds: Vec<FaultKind>) -> Vec<FaultKind> {
        kinds
            .into_iter()
            .filter(|k| {
                let ok = *k != FaultKind::SlowEtcd || self.netem;
                if !ok {
                    println!("chaos: skipping fault {}: this kernel has no netem (tc qdisc netem fails)", k.name());
                }
                ok
            })
            .collect()
    }

    /// Polls `probe` every 500 ms until it returns `Some` or `deadline` passes; stops when interrupted.
    pub fn wait<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut probe: impl FnMut() -> Result<Option<T>, String>,
    ) -> Result<T> {
        let end = Instant::now() + deadline;
        let mut last = String::new();
        while Instant::now() < end {
            match probe() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => last = "not yet".into(),
                Err(e) => last = e,
            }
            crate::nap(Duration::from_millis(500))?;
        }
        bail!("{what}: not reached within {} s (last: {last})", deadline.as_secs())
    }

    /// Waits for one writable primary with both other nodes streaming; returns the primary.
    pub fn wait_healthy(&self, deadline: Duration) -> Result<String> {
        self.wait("one primary and two streaming replicas", deadline, || {
            let leader = self.cluster.leader().ok_or("no leader key")?;
            // A replica cut off keeps its pg_stat_replication row until wal_sender_timeout: count only replicas
            // that answered within the last 12 s (they report every wal_receiver_status_interval, 10 s).
            let sql = "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' \
                       AND reply_time > now() - interval '12 s'";
            let rows = self.cluster.psql(&leader, sql)?;
            let mut streaming: Vec<String> =
                self.cluster.names().into_iter().filter(|n| rows.lines().any(|l| l == n)).collect();
            streaming.retain(|n| *n != leader);
            if streaming.len() < 2 {
                return Err(format!("leader {leader} has streaming replicas {streaming:?}"));
            }
            // And the store agrees: every member key says running or streaming on the leader's timeline.
            if !self.cluster.members_settled()? {
                return Err(format!("leader {leader}: the member keys have not settled"));
            }
            Ok(self.cluster.writable(&leader).then_some(leader))
        })
    }

    /// Waits until every replica's `GET /slots` says its copies of the permanent slots are `ready` (safe to use
    /// after a failover); returns how long that took.
    pub fn wait_slots_ready(&self, deadline: Duration) -> Result<Duration> {
        let start = Instant::now();
        self.wait("the slot copies to be ready on every replica", deadline, || {
            let leader = self.cluster.leader().ok_or("no leader key")?;
            for name in self.cluster.names().into_iter().filter(|n| *n != leader) {
                let (_, slots) = self.cluster.http(&name, "GET", "/slots", None)?;
                if slots.get("ready") != Some(&Value::Bool(true)) {
                    return Err(format!("{name}: slots not ready"));
                }
            }
            Ok(Some(()))
        })?;
        Ok(start.elapsed())
    }

    /// `POST /slots/recreate` of `cdc` on the leader, after a continuity break the suite reported.
    pub fn recreate_slot(&self) {
        if let Some(leader) = self.cluster.leader() {
            let r = self.cluster.http(&leader, "POST", "/slots/recreate", Some(&json!({"slot": "cdc"})));
            println!("   re-created slot cdc on {leader} to go on: {r:?}");
        }
    }

    pub fn nodes(&self) -> Vec<NodeAddr> {
        let n = &self.cluster.nodes;
        n.iter()
            .map(|n| NodeAddr { name: n.name.clone(), host: n.host.clone(), pg_port: n.pg_port, api_port: n.api_port })
            .collect()
    }

    pub fn bin_dir(&self) -> &Path {
        &self.cluster.opts.bin_dir
    }

    pub fn etcd_addr(&self) -> String {
        self.lab.member(ETCD).addr.clone()
    }

    pub fn etcd_kill(&mut self) {
        self.etcd.kill();
    }

    pub fn etcd_restart(&mut self) -> Result<()> {
        if self.etcd.pid().is_none() {
            self.etcd.spawn()?;
        }
        wait_etcd(&self.etcd_addr())
    }

    /// `PATCH /config` through the leader's REST API (any node's when there is no leader).
    pub fn set_synchronous(&self, on: bool) -> Result<()> {
        let patch = json!({"synchronous_mode": on});
        let leader = self.cluster.leader().unwrap_or_else(|| "node1".into());
        match self.cluster.http(&leader, "PATCH", "/config", Some(&patch)) {
            Ok((200, _)) => {}
            other => bail!("PATCH /config on {leader}: {other:?}"),
        }
        self.wait("synchronous_standby_names to follow synchronous_mode", Duration::from_secs(60), || {
            let leader = self.cluster.leader().ok_or("no leader")?;
            let names = self.cluster.psql(&leader, "SHOW synchronous_standby_names")?;
            Ok((names.is_empty() != on).then_some(()))
        })
    }
}

fn start_etcd(lab: &NetLab, base: &Path) -> Result<EtcdProc> {
    let m = lab.member(ETCD);
    let client = format!("http://{}:{ETCD_PORT}", m.addr);
    let data = base.join("etcd-data");
    let bin = cluster_runner::etcd_binary();
    let args = [
        "netns",
        "exec",
        &m.netns,
        bin.to_str().unwrap_or("etcd"),
        "--name",
        "chaos",
        "--data-dir",
        data.to_str().unwrap_or("/tmp/keel-chaos-etcd"),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "chaos=http://127.0.0.1:2380",
    ];
    let mut etcd =
        EtcdProc { child: None, args: args.iter().map(|s| s.to_string()).collect(), log: base.join("etcd.log") };
    etcd.spawn()?;
    wait_etcd(&m.addr)?;
    Ok(etcd)
}

fn wait_etcd(addr: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, v)) = http_request_to((addr, ETCD_PORT), "GET", "/health", None) {
            if v.get("health").and_then(Value::as_str) == Some("true") {
                return Ok(());
            }
        }
        if Instant::now() > end {
            bail!("etcd at {addr}:{ETCD_PORT} not healthy within 60 s");
        }
        crate::nap(Duration::from_millis(200))?;
    }
}

/// The consumer decodes test_decoding's text: refuse a build without it (the PostgreSQL 16 under /opt/keel/pg has
/// only pgoutput) rather than report every change as lost.
fn require_test_decoding(bin_dir: &Path) -> Result<()> {
    let out = Command::new(bin_dir.join("pg_config")).arg("--pkglibdir").output().context("running pg_config")?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !Path::new(&dir).join("test_decoding.so").exists() {
        bail!(
            "this PostgreSQL build has no test_decoding (looked in {dir}): the consumer needs it; use a build with \
               contrib (15, 17 and 18 here)"
        );
    }
    Ok(())
}
