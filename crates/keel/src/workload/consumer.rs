//! The consumer: `pg_recvlogical --start` on a permanent logical slot (test_decoding) against the current
//! primary, writing to a pipe this module reads; every inserted id of the workload table is counted as received.
//! When `pg_recvlogical` exits (its primary died or was demoted) it is started again on the primary the REST API
//! names, from the same slot there, as a CDC client of a Keel cluster would do.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{find_primary, Target, WorkloadError, RETRY_PAUSE};
use crate::cluster_runner::{self, SUPERUSER};

/// How long a stopped `pg_recvlogical` gets to confirm and exit after SIGINT before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Shared {
    /// id → how many times it was received.
    received: Mutex<BTreeMap<i64, u32>>,
    node: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    starts: AtomicUsize,
    stop: AtomicBool,
}

/// A running consumer (a supervising thread and its `pg_recvlogical`); [`Consumer::stop`] ends it.
#[derive(Debug)]
pub struct Consumer {
    shared: Arc<Shared>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Consumer {
    /// Starts consuming `slot` (in `target.database`); `pg_recvlogical`'s messages are appended to `log`.
    pub fn start(target: Target, slot: &str, log: PathBuf) -> Consumer {
        let shared = Arc::new(Shared::default());
        let handle = {
            let (shared, slot) = (shared.clone(), slot.to_string());
            thread::spawn(move || supervise(&target, &slot, &log, &shared))
        };
        Consumer { shared, handle: Some(handle) }
    }

    /// The member the running `pg_recvlogical` streams from (`None` between runs).
    pub fn node(&self) -> Option<String> {
        lock(&self.shared.node).clone()
    }

    /// How many times `pg_recvlogical` was started.
    pub fn starts(&self) -> usize {
        self.shared.starts.load(Ordering::SeqCst)
    }

    /// The ids received so far, with how often each was received.
    pub fn received(&self) -> BTreeMap<i64, u32> {
        lock(&self.shared.received).clone()
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// Stops `pg_recvlogical` (SIGINT: it confirms what it wrote and exits) and returns what was received.
    pub fn stop(&mut self) -> BTreeMap<i64, u32> {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.received()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The id of a test_decoding line for an insert into `public.<table>` (first column, e.g.
/// `table public.x: INSERT: id[integer]:7`); `None` for any other line.
pub fn parse_inserted_id(line: &str, table: &str) -> Option<i64> {
    let cols = line.strip_prefix("table public.")?.strip_prefix(table)?.strip_prefix(": INSERT: ")?;
    let (_, value) = cols.split_once("]:")?;
    value.split(' ').next()?.parse().ok()
}

fn supervise(target: &Target, slot: &str, log: &PathBuf, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        if let Err(e) = run_once(target, slot, log, shared) {
            *lock(&shared.last_error) = Some(e.to_string());
        }
        *lock(&shared.node) = None;
        thread::sleep(RETRY_PAUSE);
    }
}

/// One `pg_recvlogical` on the current primary, until it exits or the consumer is stopped.
fn run_once(target: &Target, slot: &str, log: &PathBuf, shared: &Arc<Shared>) -> Result<(), WorkloadError> {
    let (name, port) = find_primary(target)?;
    // Never decode on a standby (16+ could, from a slot copy): only on a node that is out of recovery.
    let in_recovery = cluster_runner::psql_db(&target.bin_dir, port, &target.database, "SELECT pg_is_in_recovery()")
        .map_err(|detail| WorkloadError::Query { what: format!("asking {name} whether it is primary"), detail })?;
    if in_recovery != "f" {
        return Err(WorkloadError::NoPrimary(format!("{name} is still in recovery")));
    }
    let mut child = spawn(target, slot, port, log)?;
    shared.starts.fetch_add(1, Ordering::SeqCst);
    *lock(&shared.node) = Some(name);
    let reader = child.stdout.take().map(|out| {
        let (table, shared) = (target.table.clone(), shared.clone());
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(id) = parse_inserted_id(&line, &table) {
                    *lock(&shared.received).entry(id).or_insert(0) += 1;
                }
            }
        })
    });
    while !shared.stop.load(Ordering::SeqCst) && matches!(child.try_wait(), Ok(None)) {
        thread::sleep(Duration::from_millis(100));
    }
    stop_child(&mut child);
    if let Some(r) = reader {
        let _ = r.join();
    }
    Ok(())
}

/// `pg_recvlogical --start` on `slot` at 127.0.0.1:`port`, output to a pipe, messages appended to `log`;
/// confirms every second, does not retry by itself (`--no-loop`): the supervisor picks the next primary.
fn spawn(target: &Target, slot: &str, port: u16, log: &PathBuf) -> Result<Child, WorkloadError> {
    let program = target.bin_dir.join("pg_recvlogical");
    let err = |source| WorkloadError::Spawn { program: program.clone(), source };
    let log: File = OpenOptions::new().create(true).append(true).open(log).map_err(err)?;
    Command::new(&program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER.0, "-d", &target.database])
        .args(["--slot", slot, "--start", "--no-loop", "-s", "1", "-f", "-"])
        .env("PGPASSWORD", SUPERUSER.1)
        .env("PGCONNECT_TIMEOUT", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(err)
}

/// SIGINT (pg_recvlogical confirms what it wrote and exits), SIGKILL after [`STOP_GRACE`].
fn stop_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = cluster_runner::send_signal(child.id(), libc::SIGINT);
        let start = Instant::now();
        while matches!(child.try_wait(), Ok(None)) && start.elapsed() < STOP_GRACE {
            thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_decoding_insert_lines_give_the_id() {
        let t = "demo_changes";
        assert_eq!(parse_inserted_id("table public.demo_changes: INSERT: id[integer]:42", t), Some(42));
        assert_eq!(parse_inserted_id("table public.demo_changes: INSERT: id[integer]:7 v[text]:'x'", t), Some(7));
        assert_eq!(parse_inserted_id("table public.demo_changes_old: INSERT: id[integer]:7", t), None);
        assert_eq!(parse_inserted_id("table public.demo_changes: UPDATE: id[integer]:7", t), None);
        assert_eq!(parse_inserted_id("BEGIN 750", t), None);
        assert_eq!(parse_inserted_id("COMMIT 750", t), None);
    }
}
