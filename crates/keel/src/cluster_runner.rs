//! Local clusters on loopback: one etcd and n Keel agents with generated Patroni-style configurations.
//!
//! Shared by `keel demo`, the scenario tests (through `keel-testkit`'s `KeelCluster`) and the benchmark. Everything
//! here is synchronous: processes are plain [`std::process::Child`]ren, HTTP is a one-shot HTTP/1.0 request, and the
//! store is read through a small private tokio runtime.
//!
//! Processes: each agent runs in its own process group (so killing the group also kills `pg_ctl`,
//! `pg_basebackup` or `pg_rewind` it may be running), as the `postgres` OS user when this process is root.
//! PostgreSQL detaches from the agent (`pg_ctl` starts it in a new session), so the postmaster is found through
//! `postmaster.pid` in the data directory and killed separately, together with its children.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use keel_core::view::ClusterView;
use serde_json::Value;

use crate::dcs::{ClusterStore, EtcdBackend, EtcdConfig};
use crate::postgres::process::{current_euid, lookup_user};

/// PostgreSQL major version used when none is asked for.
pub const DEFAULT_PG_VERSION: u32 = 15;
/// Superuser password in generated configurations.
pub const SUPERUSER: (&str, &str) = ("postgres", "keel-super");
/// Replication user in generated configurations.
pub const REPLICATION: (&str, &str) = ("replicator", "keel-repl");
/// pg_rewind user in generated configurations.
pub const REWIND: (&str, &str) = ("rewind_user", "keel-rewind");

/// The directory holding `pg_ctl` for PostgreSQL `version`: Debian's `/usr/lib/postgresql/N/bin`, else
/// `/opt/keel/pg/N/bin` (where `scripts/setup.sh` installs 16, 17 and 18).
pub fn pg_bin_dir(version: u32) -> PathBuf {
    let candidates = [
        PathBuf::from(format!("/usr/lib/postgresql/{version}/bin")),
        PathBuf::from(format!("/opt/keel/pg/{version}/bin")),
    ];
    candidates.iter().find(|d| d.join("pg_ctl").exists()).cloned().unwrap_or_else(|| candidates[0].clone())
}

/// The PostgreSQL major version from `KEEL_TEST_PG_VERSION`, else [`DEFAULT_PG_VERSION`].
pub fn pg_version_from_env() -> u32 {
    std::env::var("KEEL_TEST_PG_VERSION").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_PG_VERSION)
}

/// The etcd binary: `$KEEL_ETCD_BIN`, `etcd` on `PATH`, else `/usr/bin/etcd`.
pub fn etcd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEL_ETCD_BIN") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("etcd");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("/usr/bin/etcd")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// `n` distinct free ports.
fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    // Hold the listeners until all ports are picked so the OS does not hand out one twice.
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).collect::<io::Result<_>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Polls `probe` every `interval` until it returns `Some`, or fails with the last probe's description after
/// `deadline`.
pub fn wait_until<T>(
    what: &str,
    deadline: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut last = String::from("not probed yet");
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if start.elapsed() >= deadline {
            return Err(format!("{what}: not reached after {deadline:?} (last check: {last})"));
        }
        std::thread::sleep(interval);
    }
}

/// How to build a local cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub scope: String,
    pub nodes: usize,
    /// PostgreSQL's `bin` directory ([`pg_bin_dir`] of [`pg_version_from_env`] by default).
    pub bin_dir: PathBuf,
    /// The `keel` binary to run agents with.
    pub keel_bin: PathBuf,
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
    pub synchronous_mode: bool,
    pub failsafe_mode: bool,
    /// `wal_level` in the dynamic configuration (`replica`; `logical` for logical slots).
    pub wal_level: String,
    /// Extra `bootstrap.dcs` keys, as YAML lines (indented by the caller to the `dcs:` level, i.e. 4 spaces).
    pub extra_dcs_yaml: String,
    /// `postgresql.remove_data_directory_on_rewind_failure` in each node's file (off by default, as in Patroni;
    /// `keel demo` turns it on: its data is throw-away and a node that cannot be rewound should still rejoin).
    pub reclone_on_rewind_failure: bool,
    /// OS user the agents (and so PostgreSQL) run as; `None` runs them as the current user. Defaults to
    /// `postgres` when this process is root.
    pub run_as: Option<String>,
    /// TLS and authentication settings written into each node's file (empty by default).
    pub security: SecurityOptions,
    /// Node i runs inside network namespace `node_netns[i].0` and listens on its address `node_netns[i].1` with
    /// the default ports (8008, 5432); empty (the default): every node on 127.0.0.1 with free ports. Used by the
    /// fault-injection program (`examples/chaos`), which creates the namespaces.
    pub node_netns: Vec<(String, String)>,
}

/// Security settings for a test cluster's files, as YAML lines, and how the runner itself reaches etcd.
#[derive(Debug, Clone, Default)]
pub struct SecurityOptions {
    /// Extra lines under `etcd3:` (indented two spaces), e.g. `  protocol: https`.
    pub etcd3_yaml: String,
    /// Extra lines under `restapi:` (two spaces).
    pub restapi_yaml: String,
    /// Extra top-level sections (e.g. `ctl:`).
    pub extra_yaml: String,
    /// Lines added under each of the superuser, replication and rewind users (six spaces).
    pub pg_auth_yaml: String,
    /// Extra `postgresql.parameters` lines (four spaces).
    pub pg_parameters_yaml: String,
    /// `pg_hba` lines instead of the runner's.
    pub pg_hba: Option<Vec<String>>,
    /// How the runner's own store client reaches etcd (`https` when it has TLS settings).
    pub etcd: crate::dcs::EtcdSecurity,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            scope: "keel-test".into(),
            nodes: 3,
            bin_dir: pg_bin_dir(pg_version_from_env()),
            keel_bin: PathBuf::from("keel"),
            ttl: 20,
            loop_wait: 2,
            retry_timeout: 5,
            synchronous_mode: false,
            failsafe_mode: false,
            wal_level: "replica".into(),
            extra_dcs_yaml: String::new(),
            reclone_on_rewind_failure: false,
            run_as: (current_euid() == 0).then(|| "postgres".to_string()),
            security: SecurityOptions::default(),
            node_netns: Vec::new(),
        }
    }
}

/// One node's ports and files.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub api_port: u16,
    pub pg_port: u16,
    /// The node's own directory (owned by the run-as user); holds the data directory, logs and the config.
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    /// The agent's stdout and stderr.
    pub log_path: PathBuf,
    /// The address PostgreSQL and the REST API listen on (127.0.0.1 unless in a network namespace).
    pub host: String,
    /// The network namespace the agent (and so PostgreSQL) runs in; `None`: this process's.
    pub netns: Option<String>,
}

impl NodeSpec {
    pub fn api_url(&self) -> String {
        format!("http://{}:{}", self.host, self.api_port)
    }

    /// PostgreSQL's server log (`pg_ctl -l`), beside the data directory.
    /// The regular file the node's agent uses as its watchdog device.
    pub fn watchdog_path(&self) -> PathBuf {
        self.dir.join("watchdog")
    }

    pub fn pg_log_path(&self) -> PathBuf {
        self.dir.join("data.log")
    }
}

/// The YAML configuration of `node`.
pub fn render_config(opts: &ClusterOptions, node: &NodeSpec, etcd_hosts: &str) -> String {
    let ClusterOptions { scope, ttl, loop_wait, retry_timeout, synchronous_mode, failsafe_mode, .. } = opts;
    let name = &node.name;
    let (host, api, pg) = (&node.host, node.api_port, node.pg_port);
    let dir = node.dir.display();
    let data_dir = node.data_dir.display();
    let bin_dir = opts.bin_dir.display();
    let (su, su_pw) = SUPERUSER;
    let (repl, repl_pw) = REPLICATION;
    let (rw, rw_pw) = REWIND;
    let extra = &opts.extra_dcs_yaml;
    let wal_level = &opts.wal_level;
    // Only written when on: a local value would win over the dynamic configuration's.
    let reclone = if opts.reclone_on_rewind_failure { "  remove_data_directory_on_rewind_failure: true\n" } else { "" };
    let sec = &opts.security;
    let (etcd3_extra, restapi_extra, top_extra) = (&sec.etcd3_yaml, &sec.restapi_yaml, &sec.extra_yaml);
    let (pg_auth, pg_params) = (&sec.pg_auth_yaml, &sec.pg_parameters_yaml);
    let default_hba = ["local all all trust", "host all all 127.0.0.1/32 md5", "host replication all 127.0.0.1/32 md5"];
    let hba: Vec<String> = match &sec.pg_hba {
        Some(lines) => lines.clone(),
        None => default_hba.iter().map(|l| l.to_string()).collect(),
    };
    let hba: String = hba.iter().map(|l| format!("  - {l}\n")).collect();
    format!(
        r#"# Generated by keel's cluster runner.
scope: {scope}
namespace: /service/
name: {name}

restapi:
  listen: {host}:{api}
  connect_address: {host}:{api}
{restapi_extra}
etcd3:
  hosts: {etcd_hosts}
{etcd3_extra}{top_extra}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry_timeout}
    maximum_lag_on_failover: 1048576
    synchronous_mode: {synchronous_mode}
    failsafe_mode: {failsafe_mode}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: {wal_level}
        max_connections: 30
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: "on"
        wal_keep_size: 128MB
{extra}  initdb:
  - encoding: UTF8
  - data-checksums

postgresql:
  listen: {host}:{pg}
  connect_address: {host}:{pg}
  data_dir: {data_dir}
  bin_dir: {bin_dir}
  pgpass: {dir}/pgpass
  use_pg_rewind: true
{reclone}  authentication:
    superuser:
      username: {su}
      password: {su_pw}
{pg_auth}    replication:
      username: {repl}
      password: {repl_pw}
{pg_auth}    rewind:
      username: {rw}
      password: {rw_pw}
{pg_auth}  pg_hba:
{hba}  parameters:
    unix_socket_directories: {dir}
    shared_buffers: 16MB
    wal_keep_size: 128MB
    max_connections: 30
{pg_params}
# A regular file stands in for /dev/watchdog: the leader's agent writes to it as to a device.
watchdog:
  mode: automatic
  device: {dir}/watchdog
"#
    )
}

/// The uid and gid of `user`, or an error naming it.
fn user_ids(user: &str) -> io::Result<(u32, u32)> {
    lookup_user(user).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("OS user {user:?} not found")))
}

/// Creates `path` (and parents) and gives it to `owner` (mode 0755 so others can traverse it).
fn make_dir(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Sends `signal` to `pid` (a negative pid signals a process group).
fn signal(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions; it only takes integers.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether process `pid` exists.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    signal(pid, 0).is_ok() || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The postmaster pid from `data_dir/postmaster.pid`, when that process exists.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    (pid > 0 && process_alive(pid)).then_some(pid)
}

/// The direct children of `pid` (from `/proc/*/stat`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| proc_stat_field(*p, 1).and_then(|f| f.parse::<u32>().ok()) == Some(pid))
        .collect()
}

/// Field `index` after the command name of `/proc/pid/stat` (0 = state, 1 = ppid, ...).
fn proc_stat_field(pid: u32, index: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(index).map(str::to_string)
}

/// Kills the postmaster of `data_dir` and its children with SIGKILL (a crash, not a shutdown). Returns its pid.
pub fn kill_postmaster(data_dir: &Path) -> Option<u32> {
    let pid = postmaster_pid(data_dir)?;
    let children = children_of(pid);
    let _ = signal(pid as i32, libc::SIGKILL);
    for c in children {
        let _ = signal(c as i32, libc::SIGKILL);
    }
    Some(pid)
}

/// Runs `sql` with `bin_dir/psql` as the generated superuser on `127.0.0.1:port`; stdout (unaligned, tuples only)
/// or psql's error message. A statement gets 20 s, a connection attempt 3 s.
pub fn psql(bin_dir: &Path, port: u16, sql: &str) -> Result<String, String> {
    psql_db(bin_dir, port, "postgres", sql)
}

/// [`psql`] in database `database`.
pub fn psql_db(bin_dir: &Path, port: u16, database: &str, sql: &str) -> Result<String, String> {
    psql_db_timeout(bin_dir, port, database, sql, Duration::from_secs(20))
}

/// [`psql_db`] with `statement_timeout` instead of 20 s (bulk loads in tests).
pub fn psql_db_timeout(
    bin_dir: &Path,
    port: u16,
    database: &str,
    sql: &str,
    timeout: Duration,
) -> Result<String, String> {
    psql_at(bin_dir, ("127.0.0.1", port), database, sql, timeout)
}

/// [`psql_db_timeout`] against `host:port` (a node in a network namespace).
pub fn psql_at(
    bin_dir: &Path,
    (host, port): (&str, u16),
    database: &str,
    sql: &str,
    timeout: Duration,
) -> Result<String, String> {
    let out = Command::new(bin_dir.join("psql"))
        .args(["-h", host, "-p", &port.to_string(), "-U", SUPERUSER.0, "-d", database])
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", SUPERUSER.1)
        .env("PGCONNECT_TIMEOUT", "3")
        .env("PGOPTIONS", format!("-c statement_timeout={}", timeout.as_millis()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("psql: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The pids of `pid`'s children whose command line contains `needle` (e.g. the `walreceiver` of a postmaster).
pub fn children_named(pid: u32, needle: &str) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|c| {
            fs::read(format!("/proc/{c}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Sends `sig` to process `pid`.
pub fn send_signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid too large"))?;
    signal(pid, sig)
}

/// Resident memory (VmRSS, KiB) of `pid`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of `pid` in clock ticks (see `sysconf(_SC_CLK_TCK)`).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let utime: u64 = proc_stat_field(pid, 11)?.parse().ok()?;
    let stime: u64 = proc_stat_field(pid, 12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second for [`cpu_ticks`].
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// A running `keel run CONFIG` in its own process group.
#[derive(Debug)]
pub struct Agent {
    child: Child,
}

impl Agent {
    /// Starts `keel_bin run config` with stdout and stderr appended to `log`, as `user` when given.
    pub fn spawn(keel_bin: &Path, config: &Path, log: &Path, user: Option<&str>) -> io::Result<Agent> {
        Agent::spawn_in(keel_bin, config, log, user, None)
    }

    /// [`Agent::spawn`] inside network namespace `netns` (`ip netns exec NS setpriv ... keel run CONFIG`: both
    /// exec, so the child's pid is the agent's). Entering a namespace needs root, so the user switch happens
    /// after it, in `setpriv`.
    pub fn spawn_in(
        keel_bin: &Path,
        config: &Path,
        log: &Path,
        user: Option<&str>,
        netns: Option<&str>,
    ) -> io::Result<Agent> {
        let log_file = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut cmd = match netns {
            None => Command::new(keel_bin),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                if let Some(user) = user {
                    let (uid, gid) = user_ids(user)?;
                    c.args(["setpriv", &format!("--reuid={uid}"), &format!("--regid={gid}"), "--init-groups"]);
                }
                c.arg(keel_bin);
                c
            }
        };
        cmd.arg("run").arg(config).stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file);
        cmd.process_group(0).current_dir("/");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        if let Some(user) = user {
            let (uid, gid) = user_ids(user)?;
            if netns.is_none() {
                cmd.uid(uid).gid(gid);
            }
            let home = passwd_home(user).unwrap_or_else(|| "/".into());
            cmd.env("HOME", home).env("USER", user).env("LOGNAME", user);
        }
        let child =
            cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", keel_bin.display())))?;
        Ok(Agent { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status once the agent has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL to the agent's process group, then reaps the agent.
    pub fn kill(&mut self) {
        let _ = signal(-(self.child.id() as i32), libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (the agent's clean shutdown), SIGKILL after `timeout`. Returns whether it exited by itself.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        if self.exited().is_some() {
            return true;
        }
        let _ = signal(self.child.id() as i32, libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.exited().is_some() {
                // Helpers it started may linger in its group.
                let _ = signal(-(self.child.id() as i32), libc::SIGKILL);
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }
}

fn passwd_home(user: &str) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 5 && f[0] == user).then(|| f[5].to_string())
    })
}

/// A one-shot HTTP/1.0 request to `127.0.0.1:port`; the status and the body parsed as JSON (`Value::Null` when
/// empty, a JSON string when not JSON).
pub fn http_request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    http_request_to(("127.0.0.1", port), method, path, body)
}

/// [`http_request`] to `host:port` (a node in a network namespace).
pub fn http_request_to(
    (host, port): (&str, u16),
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let addr = (host, port).to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect :{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n");
    if body.is_some() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", payload.len()));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    s.write_all(req.as_bytes()).map_err(|e| format!("write :{port}{path}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read :{port}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad HTTP answer from :{port}{path}: {head:?}"))?;
    let body = body.trim();
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()))
    };
    Ok((status, json))
}

/// A local etcd for the demo (the tests use `keel-testkit`'s `EtcdServer`, which can also pause it).
#[derive(Debug)]
pub struct LocalEtcd {
    child: Option<Child>,
    pub client_port: u16,
    pub log_path: PathBuf,
}

impl LocalEtcd {
    /// Starts etcd with its data in `dir/etcd-data` and waits until it answers `/health`.
    pub fn start(dir: &Path) -> Result<LocalEtcd, String> {
        let bin = etcd_binary();
        let ports = free_ports(2).map_err(|e| e.to_string())?;
        let (client, peer) = (ports[0], ports[1]);
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log_path = dir.join("etcd.log");
        let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(&bin)
            .args(["--name", "keel-demo", "--data-dir"])
            .arg(dir.join("etcd-data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .arg("--initial-cluster")
            .arg(format!("keel-demo={peer_url}"))
            .args(["--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e} (install etcd or set KEEL_ETCD_BIN)", bin.display()))?;
        let mut etcd = LocalEtcd { child: Some(child), client_port: client, log_path };
        wait_until("etcd", Duration::from_secs(60), Duration::from_millis(100), || {
            if let Some(Ok(Some(st))) = etcd.child.as_mut().map(Child::try_wait) {
                return Err(format!("etcd exited with {st}; see {}", etcd.log_path.display()));
            }
            match http_request(client, "GET", "/health", None) {
                Ok((200, v)) if v.get("health").and_then(Value::as_str) == Some("true") => Ok(Some(())),
                Ok((code, v)) => Err(format!("{code} {v}")),
                Err(e) => Err(e),
            }
        })?;
        Ok(etcd)
    }

    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// n agents with their files, ports and processes. Dropping it kills every agent and every postmaster.
pub struct LocalCluster {
    pub opts: ClusterOptions,
    pub nodes: Vec<NodeSpec>,
    agents: Vec<Option<Agent>>,
    etcd_hosts: String,
    rt: tokio::runtime::Runtime,
    store: ClusterStore<EtcdBackend>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster").field("nodes", &self.nodes).finish_non_exhaustive()
    }
}

impl LocalCluster {
    /// Lays the cluster out under `base_dir` (created and given to the run-as user) and writes each node's
    /// configuration. Starts nothing.
    pub fn create(opts: ClusterOptions, base_dir: &Path, etcd_hosts: &str) -> Result<LocalCluster, String> {
        let owner = opts.run_as.as_deref().map(user_ids).transpose().map_err(|e| e.to_string())?;
        make_dir(base_dir, owner).map_err(|e| format!("{}: {e}", base_dir.display()))?;
        let ports = if opts.node_netns.is_empty() {
            free_ports(2 * opts.nodes).map_err(|e| e.to_string())?
        } else {
            [8008, 5432].repeat(opts.nodes)
        };
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let name = format!("node{}", i + 1);
            let dir = base_dir.join(&name);
            make_dir(&dir, owner).map_err(|e| format!("{}: {e}", dir.display()))?;
            let (netns, host) = match opts.node_netns.get(i) {
                Some((ns, addr)) => (Some(ns.clone()), addr.clone()),
                None => (None, "127.0.0.1".to_string()),
            };
            let node = NodeSpec {
                api_port: ports[2 * i],
                pg_port: ports[2 * i + 1],
                host,
                netns,
                data_dir: dir.join("data"),
                config_path: dir.join(format!("{name}.yml")),
                log_path: dir.join("keel.log"),
                dir,
                name,
            };
            fs::write(&node.config_path, render_config(&opts, &node, etcd_hosts))
                .map_err(|e| format!("{}: {e}", node.config_path.display()))?;
            fs::write(node.watchdog_path(), "").map_err(|e| format!("{}: {e}", node.watchdog_path().display()))?;
            if let Some((uid, gid)) = owner {
                let _ = std::os::unix::fs::chown(&node.config_path, Some(uid), Some(gid));
                let _ = std::os::unix::fs::chown(node.watchdog_path(), Some(uid), Some(gid));
            }
            nodes.push(node);
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let security = opts.security.etcd.clone();
        let endpoint = if security.tls.is_some() { format!("https://{etcd_hosts}") } else { etcd_hosts.to_string() };
        let etcd = EtcdConfig::from_hosts(&[endpoint], Duration::from_secs(3)).with_security(security);
        let backend = EtcdBackend::new(etcd).map_err(|e| e.to_string())?;
        let store = ClusterStore::new(backend, "/service/", &opts.scope, "keel-cluster-runner", opts.ttl);
        let agents = nodes.iter().map(|_| None).collect();
        Ok(LocalCluster { opts, nodes, agents, etcd_hosts: etcd_hosts.to_string(), rt, store })
    }

    pub fn etcd_hosts(&self) -> &str {
        &self.etcd_hosts
    }

    /// The index of the node called `name`; panics on an unknown name (a bug in the caller).
    pub fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no node called {name:?}"))
    }

    pub fn node(&self, name: &str) -> &NodeSpec {
        &self.nodes[self.index(name)]
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Starts the agent of `name` (no-op when it runs).
    pub fn start_agent(&mut self, name: &str) -> Result<(), String> {
        let i = self.index(name);
        if let Some(a) = self.agents[i].as_mut() {
            if a.exited().is_none() {
                return Ok(());
            }
        }
        let node = &self.nodes[i];
        let (bin, user) = (&self.opts.keel_bin, self.opts.run_as.as_deref());
        let agent = Agent::spawn_in(bin, &node.config_path, &node.log_path, user, node.netns.as_deref())
            .map_err(|e| e.to_string())?;
        self.agents[i] = Some(agent);
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<(), String> {
        for name in self.names() {
            self.start_agent(&name)?;
        }
        Ok(())
    }

    /// The agent's pid while it runs.
    pub fn agent_pid(&mut self, name: &str) -> Option<u32> {
        let i = self.index(name);
        let a = self.agents[i].as_mut()?;
        a.exited().is_none().then(|| a.pid())
    }

    /// The exit status of `name`'s agent if it was started and has exited by itself.
    pub fn agent_exit(&mut self, name: &str) -> Option<ExitStatus> {
        let i = self.index(name);
        self.agents[i].as_mut()?.exited()
    }

    pub fn postmaster_pid(&self, name: &str) -> Option<u32> {
        postmaster_pid(&self.node(name).data_dir)
    }

    /// kill -9 of the agent (and its process group) and of the postmaster (and its children).
    pub fn kill9(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut a) = self.agents[i].take() {
            a.kill();
        }
        kill_postmaster(&self.nodes[i].data_dir);
    }

    /// Stops the agent cleanly (SIGTERM; SIGKILL after `timeout`). PostgreSQL is left to the agent's shutdown.
    pub fn stop_agent(&mut self, name: &str, timeout: Duration) -> bool {
        let i = self.index(name);
        match self.agents[i].take() {
            Some(mut a) => a.terminate(timeout),
            None => true,
        }
    }

    /// Reads the cluster from the store.
    pub fn view(&self) -> Result<ClusterView, String> {
        self.rt.block_on(self.store.load()).map_err(|e| e.to_string())
    }

    /// Merges `patch` into the store's `config` key (JSON merge patch: `null` deletes), as `PATCH /config` does,
    /// with a compare-and-swap on the key's revision.
    pub fn patch_store_config(&self, patch: &Value) -> Result<(), String> {
        let view = self.view()?;
        let (mut doc, version) = match view.config {
            Some(c) => (c.value.raw, Some(c.version)),
            None => (Value::Object(Default::default()), None),
        };
        merge_patch(&mut doc, patch);
        match self.rt.block_on(self.store.set_config(&doc, version)) {
            Ok(true) => Ok(()),
            Ok(false) => Err("the config key changed meanwhile".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The leader key's owner.
    pub fn leader(&self) -> Option<String> {
        self.view().ok()?.leader.map(|l| l.name)
    }

    /// A REST call to node `name`.
    pub fn http(&self, name: &str, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        let node = self.node(name);
        http_request_to((&node.host, node.api_port), method, path, body)
    }

    /// Runs `sql` with `psql` as the superuser on node `name`; stdout (unaligned, tuples only) or the error.
    pub fn psql(&self, name: &str, sql: &str) -> Result<String, String> {
        let node = self.node(name);
        psql_at(&self.opts.bin_dir, (&node.host, node.pg_port), "postgres", sql, Duration::from_secs(20))
            .map_err(|e| format!("{name}: {e}"))
    }

    /// [`LocalCluster::psql`] in database `database`.
    pub fn psql_db(&self, name: &str, database: &str, sql: &str) -> Result<String, String> {
        let node = self.node(name);
        psql_at(&self.opts.bin_dir, (&node.host, node.pg_port), database, sql, Duration::from_secs(20))
            .map_err(|e| format!("{name}/{database}: {e}"))
    }

    /// Whether `name`'s PostgreSQL accepts writes (a primary that is not read-only).
    pub fn writable(&self, name: &str) -> bool {
        self.psql(name, "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool")
            .map(|s| s == "f")
            .unwrap_or(false)
    }

    /// Waits for a leader key whose owner runs a writable primary; returns its name.
    pub fn wait_for_leader(&self, deadline: Duration) -> Result<String, String> {
        wait_until("a writable leader", deadline, Duration::from_millis(250), || {
            let leader = self.leader().ok_or("no leader key")?;
            if self.writable(&leader) {
                Ok(Some(leader))
            } else {
                Err(format!("leader key names {leader}, which does not accept writes yet"))
            }
        })
    }

    /// The members streaming from `leader` (its `pg_stat_replication`, by application name; `pg_basebackup`'s
    /// WAL stream does not count).
    pub fn streaming_replicas(&self, leader: &str) -> Result<Vec<String>, String> {
        let out = self.psql(leader, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")?;
        let known = self.names();
        let mut names: Vec<String> = out.lines().map(str::to_string).filter(|l| known.contains(l)).collect();
        names.sort();
        Ok(names)
    }

    /// Waits for a leader with at least `n` streaming replicas; returns the leader and the replicas.
    pub fn wait_replicas_streaming(&self, n: usize, deadline: Duration) -> Result<(String, Vec<String>), String> {
        wait_until(&format!("{n} streaming replicas"), deadline, Duration::from_millis(250), || {
            let leader = self.leader().ok_or("no leader key")?;
            let streaming = self.streaming_replicas(&leader)?;
            if streaming.len() >= n {
                Ok(Some((leader, streaming)))
            } else {
                Err(format!("leader {leader} has streaming replicas {streaming:?}"))
            }
        })
    }

    /// The members as `GET /cluster` (and `keel list`) shows them, from the store: Patroni's `cluster_as_json`.
    pub fn members(&self) -> Result<Vec<serde_json::Value>, String> {
        let cluster = crate::api::control::cluster_as_json(&self.view()?, &self.opts.scope);
        Ok(cluster.get("members").and_then(serde_json::Value::as_array).cloned().unwrap_or_default())
    }

    /// Whether every node has a member key saying it runs (or streams) on the leader's timeline: what `keel list`
    /// (and a switchover's candidate check) sees once the agents have caught up with PostgreSQL.
    pub fn members_settled(&self) -> Result<bool, String> {
        let rows = self.members()?;
        let field = |r: &serde_json::Value, k: &str| r.get(k).cloned().unwrap_or_default();
        let leader_tl = rows.iter().find(|r| field(r, "role") == "leader").map(|r| field(r, "timeline"));
        let settled = |r: &serde_json::Value| {
            let state = field(r, "state");
            (state == "running" || state == "streaming") && Some(field(r, "timeline")) == leader_tl
        };
        Ok(leader_tl.as_ref().is_some_and(|t| !t.is_null())
            && rows.len() == self.nodes.len()
            && rows.iter().all(settled))
    }

    /// The last `lines` lines of each agent's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!("----- {} agent log ({}) -----\n", n.name, n.log_path.display()));
            out.push_str(&tail(&n.log_path, lines));
            out.push_str(&format!("----- {} PostgreSQL log ({}) -----\n", n.name, n.pg_log_path().display()));
            out.push_str(&tail(&n.pg_log_path(), lines / 2));
        }
        out
    }

    /// Kills every agent and every postmaster (SIGKILL, then `pg_ctl stop -m immediate` for safety).
    pub fn shutdown(&mut self) {
        for a in self.agents.iter_mut() {
            if let Some(mut a) = a.take() {
                a.kill();
            }
        }
        for n in &self.nodes {
            if kill_postmaster(&n.data_dir).is_some() || n.data_dir.join("postmaster.pid").exists() {
                let mut cmd = Command::new(self.opts.bin_dir.join("pg_ctl"));
                cmd.args(["stop", "-m", "immediate", "-w", "-t", "10", "-D"])
                    .arg(&n.data_dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .current_dir("/");
                if let Some(user) = &self.opts.run_as {
                    if let Ok((uid, gid)) = user_ids(user) {
                        cmd.uid(uid).gid(gid);
                    }
                }
                let _ = cmd.status();
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(doc: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Default::default());
    }
    let Value::Object(d) = doc else { return };
    for (k, v) in p {
        if v.is_null() {
            d.remove(k);
        } else {
            merge_patch(d.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})\n"));
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> (ClusterOptions, NodeSpec) {
        let opts = ClusterOptions { run_as: None, ..ClusterOptions::default() };
        let node = NodeSpec {
            name: "node1".into(),
            api_port: 8008,
            pg_port: 5432,
            dir: "/tmp/x/node1".into(),
            data_dir: "/tmp/x/node1/data".into(),
            config_path: "/tmp/x/node1/node1.yml".into(),
            log_path: "/tmp/x/node1/keel.log".into(),
            host: "127.0.0.1".into(),
            netns: None,
        };
        (opts, node)
    }

    #[test]
    fn generated_config_is_valid() {
        let (opts, node) = spec();
        let yaml = render_config(&opts, &node, "127.0.0.1:2379");
        let loaded = crate::config::Config::from_str(&yaml, &Default::default()).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let c = loaded.config;
        assert_eq!(c.name, "node1");
        assert_eq!(c.postgresql.port(), 5432);
        assert_eq!(c.bootstrap.dcs["ttl"], 20);
        assert_eq!(c.bootstrap.dcs["postgresql"]["use_pg_rewind"], true);
        assert_eq!(c.postgresql.remove_data_directory_on_rewind_failure, None);
        assert!(c.postgresql.pgpass.is_some());
        let demo = ClusterOptions { reclone_on_rewind_failure: true, ..opts.clone() };
        let c = crate::config::Config::from_str(&render_config(&demo, &node, "h:1"), &Default::default()).unwrap();
        assert_eq!(c.config.postgresql.remove_data_directory_on_rewind_failure, Some(true));
        // Patroni's timing rule: loop_wait + 2 * retry_timeout <= ttl.
        assert!(opts.loop_wait + 2 * opts.retry_timeout <= opts.ttl);
    }

    #[test]
    fn merge_patch_merges_and_deletes() {
        let mut doc = serde_json::json!({"ttl": 20, "postgresql": {"parameters": {"a": 1, "b": 2}}});
        merge_patch(&mut doc, &serde_json::json!({"pause": true, "postgresql": {"parameters": {"a": null, "c": 3}}}));
        assert_eq!(doc, serde_json::json!({"ttl": 20, "pause": true, "postgresql": {"parameters": {"b": 2, "c": 3}}}));
    }

    #[test]
    fn proc_helpers_see_this_process() {
        let me = std::process::id();
        assert!(process_alive(me));
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
    }
}
