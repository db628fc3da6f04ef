//! Helpers shared by the integration tests that start real PostgreSQL servers (`postgres.rs`, `slot_copy.rs`).
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel::postgres::bins::Tool;
use keel::postgres::conf::{RecoveryConf, ServerConf};
use keel::postgres::pg_ctl::PgCtl;
use keel::postgres::process::RunAs;

/// The PostgreSQL versions to test: `KEEL_TEST_PG_VERSIONS=15,16,17,18`, else 15 plus 16 and 18 when installed
/// (16 has its own slot file format; 17 shares 18's).
pub fn versions() -> Vec<(u32, PathBuf)> {
    let dir = |major: u32| -> PathBuf {
        if major == 15 {
            PathBuf::from("/usr/lib/postgresql/15/bin")
        } else {
            PathBuf::from(format!("/opt/keel/pg/{major}/bin"))
        }
    };
    match std::env::var("KEEL_TEST_PG_VERSIONS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|v| {
                let major: u32 =
                    v.trim().parse().unwrap_or_else(|_| panic!("KEEL_TEST_PG_VERSIONS: bad version {v:?}"));
                let path = dir(major);
                assert!(
                    path.join("initdb").exists(),
                    "PostgreSQL {major} is not in {}: run scripts/setup.sh",
                    path.display()
                );
                (major, path)
            })
            .collect(),
        _ => [15, 16, 18]
            .into_iter()
            .map(|m| (m, dir(m)))
            .filter(|(m, p)| *m == 15 || p.join("initdb").exists())
            .collect(),
    }
}

pub fn run_as() -> RunAs {
    RunAs::auto("postgres")
}

/// A temporary directory the PostgreSQL user owns (under /tmp, which everybody may traverse).
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("create a temporary directory");
    run_as().chown(dir.path()).expect("give the temporary directory to postgres");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local address").port()
}

/// Stops every server it knows about with `pg_ctl stop -m immediate`, whatever happened to the test.
#[derive(Default)]
pub struct Guard(pub Vec<PgCtl>);

impl Guard {
    pub fn watch(&mut self, ctl: &PgCtl) {
        self.0.push(ctl.clone());
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for ctl in &self.0 {
            if !ctl.is_running() {
                continue;
            }
            let pg_ctl = ctl.bins.path(Tool::PgCtl);
            let mut cmd = match &ctl.run_as.user {
                Some(user) => {
                    let mut cmd = std::process::Command::new("runuser");
                    cmd.args(["-u", user, "--"]).arg(pg_ctl);
                    cmd
                }
                None => std::process::Command::new(pg_ctl),
            };
            cmd.current_dir("/").args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"]).arg(&ctl.data_dir);
            let _ = cmd.status();
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, panicking with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn hba() -> Vec<String> {
    vec![
        "local all all trust".to_string(),
        "host all all 127.0.0.1/32 scram-sha-256".to_string(),
        "host replication replicator 127.0.0.1/32 scram-sha-256".to_string(),
    ]
}

/// A small server on 127.0.0.1:`port` with its socket in `socket_dir`, keeping 128MB of WAL (pg_rewind reads the
/// old primary's WAL back to the last common checkpoint; a copied slot needs the WAL from its restart_lsn).
pub fn server_conf(socket_dir: &Path, port: u16, recovery: Option<RecoveryConf>) -> ServerConf {
    let mut conf = ServerConf::new("127.0.0.1", port);
    conf.parameters.insert("unix_socket_directories".into(), socket_dir.display().to_string());
    conf.parameters.insert("shared_buffers".into(), "16MB".into());
    conf.parameters.insert("max_connections".into(), "20".into());
    conf.parameters.insert("wal_keep_size".into(), "128MB".into());
    conf.recovery = recovery;
    conf
}
