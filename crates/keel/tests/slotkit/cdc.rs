//! A CDC setup on a [`KeelCluster`]: a `pg_recvlogical` consumer per slot writing to a file, a writer inserting
//! sequential ids into `acked` and recording the acknowledged ones, and the continuity check between them.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use keel::cluster_runner::{self, SUPERUSER};
use keel_testkit::KeelCluster;

use super::{decoded_ids, Stream};

/// The table consumers follow and writers insert into.
pub const TABLE: &str = "acked";

/// A `pg_recvlogical --start` on one slot, writing to a file.
pub struct Consumer {
    child: Option<Child>,
    pub node: String,
}

impl Consumer {
    /// Starts it on `node`; returns once the slot is active there.
    pub fn start(c: &KeelCluster, node: &str, stream: &Stream, out: &Path) -> Consumer {
        let child = spawn_recvlogical(&c.opts.bin_dir, c.node(node).pg_port, stream, out);
        let consumer = Consumer { child: Some(child), node: node.to_string() };
        let slot = &stream.slot;
        c.wait(&format!("pg_recvlogical streaming {slot} from {node}"), Duration::from_secs(30), || {
            let active =
                c.psql(node, &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"))?;
            Ok((active == "t").then_some(()))
        })
        .unwrap_or_else(|e| {
            let err = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
            panic!("{e}\npg_recvlogical: {err}\n{}", c.logs(40))
        });
        consumer
    }

    /// Stops it with [`stop_recvlogical`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_recvlogical(&mut child);
        }
    }
}

/// `pg_recvlogical --start` on `stream`'s slot at `127.0.0.1:port` as the superuser, writing to `out` (appending)
/// with its messages in `out` with the `.log` extension; confirms every second.
pub fn spawn_recvlogical(bin_dir: &Path, port: u16, stream: &Stream, out: &Path) -> Child {
    let log = File::create(out.with_extension("log")).expect("create the consumer's log");
    Command::new(bin_dir.join("pg_recvlogical"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER.0])
        .args(["-d", &stream.database, "--slot", &stream.slot, "--start", "--no-loop", "-F", "1", "-s", "1"])
        .args(stream.plugin.recvlogical_args())
        .arg("-f")
        .arg(out)
        .env("PGPASSWORD", SUPERUSER.1)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("run pg_recvlogical")
}

/// SIGINT (pg_recvlogical flushes, confirms and exits), SIGKILL if it has not exited after 10 s.
pub fn stop_recvlogical(child: &mut Child) {
    let _ = cluster_runner::send_signal(child.id(), libc::SIGINT);
    let start = Instant::now();
    while child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Inserts sequential ids, one transaction each, into `acked` of one database on whichever port it is pointed
/// at; records the ones PostgreSQL acknowledged.
pub struct Writer {
    acked: Arc<Mutex<Vec<i32>>>,
    port: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(c: &KeelCluster, node: &str, database: &str) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let port = Arc::new(AtomicU16::new(c.node(node).pg_port));
        let stop = Arc::new(AtomicBool::new(false));
        let bin = c.opts.bin_dir.clone();
        let database = database.to_string();
        let handle = {
            let (acked, port, stop) = (acked.clone(), port.clone(), stop.clone());
            thread::spawn(move || {
                let mut id = 0;
                while !stop.load(Ordering::SeqCst) {
                    id += 1;
                    let p = port.load(Ordering::SeqCst);
                    match cluster_runner::psql_db(&bin, p, &database, &format!("INSERT INTO {TABLE} VALUES ({id})")) {
                        Ok(_) => acked.lock().unwrap_or_else(|e| e.into_inner()).push(id),
                        // The primary is gone or read-only: back off, keep going with fresh ids.
                        Err(_) => thread::sleep(Duration::from_millis(200)),
                    }
                }
            })
        };
        Writer { acked, port, stop, handle: Some(handle) }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn point_at(&self, c: &KeelCluster, node: &str) {
        self.port.store(c.node(node).pg_port, Ordering::SeqCst);
    }

    /// Waits until `n` more writes than now were acknowledged.
    pub fn wait_more(&self, c: &KeelCluster, n: usize) {
        let target = self.count() + n;
        c.wait(&format!("{target} acknowledged writes"), Duration::from_secs(60), || {
            let got = self.count();
            if got >= target {
                Ok(Some(()))
            } else {
                Err(format!("{got} acknowledged"))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(30)));
    }

    /// Stops writing; the acknowledged ids.
    pub fn stop(&mut self) -> Vec<i32> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ids in `node`'s `acked` table of `database`.
pub fn table_ids(c: &KeelCluster, node: &str, database: &str) -> BTreeSet<i32> {
    let out = c.psql_db(node, database, &format!("SELECT id FROM {TABLE}")).unwrap_or_else(|e| panic!("{e}"));
    out.lines().map(|l| l.parse().unwrap_or_else(|e| panic!("id {l:?}: {e}"))).collect()
}

/// Waits until the consumer output `files` of `stream` holds every acknowledged id that is in `primary`'s table;
/// panics with the missing ids otherwise. Prints the duplicates (allowed: a consumer restarted from a slot copy
/// replays).
pub fn check_continuity(c: &KeelCluster, primary: &str, stream: &Stream, acked: &[i32], files: &[PathBuf], what: &str) {
    let on_primary = table_ids(c, primary, &stream.database);
    let expected: BTreeSet<i32> = acked.iter().copied().filter(|i| on_primary.contains(i)).collect();
    let decoded = || decoded_ids(files, &stream.plugin, TABLE);
    let res = c.wait(&format!("{what}: every acknowledged id in the consumer output"), Duration::from_secs(60), || {
        let seen = decoded();
        let missing: Vec<i32> = expected.iter().copied().filter(|i| !seen.contains_key(i)).collect();
        if missing.is_empty() {
            Ok(Some(()))
        } else {
            Err(format!("{} missing: {:?}", missing.len(), &missing[..missing.len().min(50)]))
        }
    });
    let seen = decoded();
    let dups: Vec<(i32, usize)> = seen.iter().filter(|(_, n)| **n > 1).map(|(i, n)| (*i, *n)).collect();
    eprintln!(
        "{what}: {} acknowledged, {} of them on {primary}, {} decoded ids, {} duplicated{}",
        acked.len(),
        expected.len(),
        seen.len(),
        dups.len(),
        if dups.is_empty() { String::new() } else { format!(": {:?}", &dups[..dups.len().min(40)]) }
    );
    // Per handover: the ids the consumer after it received again (already in the output before it).
    for (i, pair) in files.windows(2).enumerate() {
        let before = decoded_ids(&files[..=i], &stream.plugin, TABLE);
        let after = decoded_ids(&pair[1..], &stream.plugin, TABLE);
        let again = after.keys().filter(|id| before.contains_key(id)).count();
        eprintln!("{what}: handover {}: {again} ids delivered again by the next consumer", i + 1);
    }
    if let Err(e) = res {
        panic!("{e}\n{}", c.logs(60));
    }
}
