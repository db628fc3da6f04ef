//! A throw-away single-node etcd on loopback ports.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{free_port, send_signal, wait_until};

/// How long etcd may take to start answering (generous: CI machines are slow and busy).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Attempts with fresh ports when etcd exits early (usually because another process took a port).
const START_ATTEMPTS: usize = 3;

/// A running etcd (`/usr/bin/etcd`, or `$KEEL_ETCD_BIN`) with its own data directory.
///
/// Dropping the handle kills the process (SIGKILL, then waits for it) and removes the data directory.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` (and metrics) listener, used when the client port speaks TLS.
    metrics_port: u16,
    tls: Option<EtcdServerTls>,
    dir: TempDir,
}

/// TLS for etcd's client port: `--cert-file`, `--key-file` and, with `client_ca`, `--client-cert-auth
/// --trusted-ca-file` (clients must present a certificate signed by that CA).
#[derive(Debug, Clone)]
pub struct EtcdServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What `etcdctl` needs to reach a TLS etcd: the CA and a client certificate.
#[derive(Debug, Clone)]
pub struct EtcdctlTls {
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdServer {
    /// The etcd binary: `$KEEL_ETCD_BIN` or `/usr/bin/etcd`.
    pub fn binary() -> PathBuf {
        std::env::var_os("KEEL_ETCD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
    }

    /// Starts etcd on free loopback client and peer ports and waits until `/health` says it is healthy.
    pub fn start() -> io::Result<EtcdServer> {
        Self::start_with(None)
    }

    /// Like [`EtcdServer::start`], with TLS on the client port when `tls` is given.
    pub fn start_with(tls: Option<EtcdServerTls>) -> io::Result<EtcdServer> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(tls.clone()) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    fn try_start(tls: Option<EtcdServerTls>) -> io::Result<EtcdServer> {
        let dir = tempfile::Builder::new().prefix("keel-etcd-").tempdir()?;
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = free_port()?;
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let (client_port, peer_port, metrics_port) = (ports[0], ports[1], ports[2]);
        let mut server = EtcdServer { child: None, client_port, peer_port, metrics_port, tls, dir };
        server.spawn_and_wait()?;
        Ok(server)
    }

    /// Starts the process again after [`EtcdServer::stop`], on the same data directory and ports: the store
    /// comes back with its keys and leases, as after a crash and restart of the etcd server.
    pub fn restart(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Err(io::Error::other("etcd is still running: stop it first"));
        }
        self.spawn_and_wait()
    }

    /// Spawns etcd on this server's ports and data directory and waits until `/health` says it is healthy.
    fn spawn_and_wait(&mut self) -> io::Result<()> {
        let bin = Self::binary();
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--listen-metrics-urls").arg(format!("http://127.0.0.1:{}", self.metrics_port));
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.cert).arg("--key-file").arg(&tls.key);
            if let Some(ca) = &tls.client_ca {
                cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(ca);
            }
        }
        let child = cmd
            .arg("--name")
            .arg("keel-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("keel-test={peer_url}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}; set KEEL_ETCD_BIN", bin.display())))?;
        self.child = Some(child);
        let ready = wait_until("etcd", START_DEADLINE, Duration::from_millis(50), || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("etcd exited early with {status}"));
                }
            }
            self.healthy().map(|ok| ok.then_some(()))
        });
        if let Err(e) = ready {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let tail: String =
                log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            let _ = self.stop();
            return Err(io::Error::new(e.kind(), format!("{e}\netcd log tail:\n{tail}")));
        }
        Ok(())
    }

    /// One `/health` probe over plain HTTP; `Ok(false)` while etcd answers but is not healthy yet.
    fn healthy(&self) -> Result<bool, String> {
        let mut s =
            TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, self.metrics_port).into(), Duration::from_secs(1))
                .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| format!("write: {e}"))?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| format!("read: {e}"))?;
        Ok(body.contains("\"health\":\"true\""))
    }

    /// The client URL, e.g. `http://127.0.0.1:23790` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Turns on etcd authentication: a `root` user with `root_password`, and `user`/`password` with a role that
    /// may read and write only the keys under `prefix`. `tls`: how etcdctl reaches a TLS client port.
    pub fn enable_auth(
        &self,
        root_password: &str,
        user: &str,
        password: &str,
        prefix: &str,
        tls: Option<&EtcdctlTls>,
    ) -> io::Result<()> {
        let role = format!("{user}-role");
        self.etcdctl(tls, None, &["user", "add", &format!("root:{root_password}"), "--interactive=false"])?;
        self.etcdctl(tls, None, &["user", "grant-role", "root", "root"])?;
        self.etcdctl(tls, None, &["role", "add", &role])?;
        self.etcdctl(tls, None, &["role", "grant-permission", &role, "--prefix=true", "readwrite", prefix])?;
        self.etcdctl(tls, None, &["user", "add", &format!("{user}:{password}"), "--interactive=false"])?;
        self.etcdctl(tls, None, &["user", "grant-role", user, &role])?;
        self.etcdctl(tls, None, &["auth", "enable"])?;
        // Proves auth is on: root can still read.
        self.etcdctl(tls, Some(&format!("root:{root_password}")), &["get", "--prefix", "/"])?;
        Ok(())
    }

    /// Runs `etcdctl` (next to the etcd binary, or on the PATH) against this server.
    pub fn etcdctl(&self, tls: Option<&EtcdctlTls>, user: Option<&str>, args: &[&str]) -> io::Result<String> {
        let bin = Self::binary().with_file_name("etcdctl");
        let bin = if bin.exists() { bin } else { PathBuf::from("etcdctl") };
        let mut cmd = Command::new(&bin);
        cmd.env("ETCDCTL_API", "3").arg("--endpoints").arg(self.endpoint()).arg("--dial-timeout=10s");
        if let Some(t) = tls {
            cmd.arg("--cacert").arg(&t.cacert).arg("--cert").arg(&t.cert).arg("--key").arg(&t.key);
        }
        if let Some(u) = user {
            cmd.arg("--user").arg(u);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "etcdctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where etcd's output goes (for failure messages).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing answers, like a hung server.
    pub fn pause(&self) -> io::Result<()> {
        self.signal(libc::SIGSTOP)?;
        // SIGSTOP takes effect asynchronously: a thread already running may answer one more request. Return only
        // once every thread is stopped, so that "paused" means no answer from here on.
        let pid = self.pid().ok_or_else(|| io::Error::other("etcd is already stopped"))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !all_threads_stopped(pid) {
            if std::time::Instant::now() > deadline {
                return Err(io::Error::other("etcd did not stop within 5 s of SIGSTOP"));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&self) -> io::Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        let pid = self.pid().ok_or_else(|| io::Error::other("etcd is already stopped"))?;
        send_signal(pid, sig)
    }

    /// Kills the process (SIGKILL works on a paused process too) and waits for it. Idempotent.
    pub fn stop(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            if child.try_wait()?.is_none() {
                child.kill()?;
            }
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in `/proc/<pid>/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.filter_map(Result::ok).all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string)))
            .is_some_and(|state| state == "T" || state == "t")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_pauses_and_stops() {
        if !EtcdServer::binary().exists() {
            eprintln!("skipping: no etcd binary");
            return;
        }
        let mut etcd = EtcdServer::start().unwrap();
        assert_eq!(etcd.healthy(), Ok(true));
        let pid = etcd.pid().unwrap();
        etcd.pause().unwrap();
        assert!(etcd.healthy().is_err(), "a paused etcd must not answer");
        etcd.resume().unwrap();
        wait_until("resumed etcd", START_DEADLINE, Duration::from_millis(50), || {
            etcd.healthy().map(|ok| ok.then_some(()))
        })
        .unwrap();
        etcd.stop().unwrap();
        // The process is gone (reaped): signal 0 fails.
        assert!(send_signal(pid, 0).is_err());
        etcd.stop().unwrap();
    }
}
