//! The writer: one thread per node, from the root namespace, each inserting the next id of a shared counter into
//! `app.chaos` on its node and recording every acknowledged id with the node, the time the statement was sent,
//! the time it was acknowledged, and the timeline the node wrote it on. Replicas refuse (read-only); a node that
//! accepts is a primary at that moment, which is what the two-primaries check needs.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use keel::cluster_runner::SUPERUSER;

use crate::net::{clock, ChaosEnv, NodeAddr};

/// One acknowledged insert.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: u64,
    pub node: String,
    /// When the statement was sent and when its success came back (seconds since the run started).
    pub sent: f64,
    pub acked: f64,
    pub timeline: u32,
}

/// A failed insert that may still have committed (a timeout, or a commit whose synchronous-replication wait was
/// cancelled: PostgreSQL then reports success with a WARNING, which the writer does not count as acknowledged).
#[derive(Debug, Default)]
pub struct Counts {
    pub sync_wait_cancelled: u64,
    pub timeouts: u64,
}

pub struct Writer {
    acks: Arc<Mutex<Vec<Ack>>>,
    counts: Arc<Mutex<Counts>>,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The longest a single insert may take, client side (connection 2 s + statement 3 s + margin).
pub const DEADLINE: Duration = Duration::from_secs(7);

impl Writer {
    pub fn start(env: &ChaosEnv) -> Result<Writer> {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let next = Arc::new(AtomicU64::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for node in env.nodes() {
            let (acks, counts, next, stop) = (acks.clone(), counts.clone(), next.clone(), stop.clone());
            let psql = env.bin_dir().join("psql");
            threads.push(std::thread::spawn(move || write_loop(&psql, &node, &acks, &counts, &next, &stop)));
        }
        Ok(Writer { acks, counts, next, stop, threads })
    }

    /// The next id the writer will use.
    pub fn next_id(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// The acknowledgements that came back between `from` and `to`.
    pub fn acks_between(&self, from: f64, to: f64) -> Vec<Ack> {
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        acks.iter().filter(|a| a.acked >= from && a.acked < to).cloned().collect()
    }

    /// Unacknowledged inserts that may have committed, so far.
    pub fn uncertain(&self) -> (u64, u64) {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        (c.sync_wait_cancelled, c.timeouts)
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn write_loop(
    psql: &Path,
    node: &NodeAddr,
    acks: &Mutex<Vec<Ack>>,
    counts: &Mutex<Counts>,
    next: &AtomicU64,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) && !crate::interrupted() {
        let id = next.fetch_add(1, Ordering::SeqCst);
        let sent = clock();
        match insert(psql, node, id) {
            Outcome::Acked(timeline) => {
                let ack = Ack { id, node: node.name.clone(), sent, acked: clock(), timeline };
                acks.lock().unwrap_or_else(|e| e.into_inner()).push(ack);
                std::thread::sleep(Duration::from_millis(50));
            }
            Outcome::SyncWaitCancelled => {
                counts.lock().unwrap_or_else(|e| e.into_inner()).sync_wait_cancelled += 1;
            }
            Outcome::TimedOut => counts.lock().unwrap_or_else(|e| e.into_inner()).timeouts += 1,
            Outcome::Refused => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

enum Outcome {
    Acked(u32),
    SyncWaitCancelled,
    TimedOut,
    Refused,
}

fn insert(psql: &Path, node: &NodeAddr, id: u64) -> Outcome {
    let sql = format!(
        "INSERT INTO chaos (id, node) VALUES ({id}, '{}') RETURNING substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
        node.name
    );
    let child = Command::new(psql)
        .args(["-h", &node.host, "-p", &node.pg_port.to_string(), "-U", SUPERUSER.0, "-d", "app"])
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-c", &sql])
        .env("PGPASSWORD", SUPERUSER.1)
        .env("PGCONNECT_TIMEOUT", "2")
        .env("PGOPTIONS", "-c statement_timeout=3000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else { return Outcome::Refused };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < DEADLINE => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::TimedOut;
            }
        }
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    classify(status.success(), &out, &err)
}

fn classify(success: bool, out: &str, err: &str) -> Outcome {
    // This WARNING has no SQLSTATE of its own (01000), so its text is the only sign: the commit is local only.
    if err.contains("canceling wait for synchronous replication") {
        return Outcome::SyncWaitCancelled;
    }
    // 57014: query_canceled (statement_timeout).
    if err.contains("57014") {
        return Outcome::TimedOut;
    }
    match (success, u32::from_str_radix(out.trim(), 16)) {
        (true, Ok(timeline)) => Outcome::Acked(timeline),
        _ => Outcome::Refused,
    }
}
