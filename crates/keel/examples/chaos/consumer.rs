//! The logical consumer: `pg_recvlogical` on the permanent slot `cdc`, run from the root namespace against the
//! node whose `/primary` health check answers 200, restarted on the new primary after a failover. Records every
//! id it received (test_decoding's `id[bigint]:N`) with the node it came from.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use keel::cluster_runner::{http_request_to, SUPERUSER};

use crate::net::{ChaosEnv, NodeAddr};

/// Every id received, with the node it was first received from.
type Received = Arc<Mutex<BTreeMap<u64, String>>>;

pub struct Consumer {
    received: Received,
    restarts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Setup {
    nodes: Vec<NodeAddr>,
    bin: PathBuf,
    log: PathBuf,
}

impl Consumer {
    pub fn start(env: &ChaosEnv) -> Result<Consumer> {
        let received: Received = Arc::default();
        let restarts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let setup = Setup {
            nodes: env.nodes(),
            bin: env.bin_dir().join("pg_recvlogical"),
            log: env.base.path().join("consumer.log"),
        };
        let (r, n, s) = (received.clone(), restarts.clone(), stop.clone());
        let thread = std::thread::spawn(move || follow(&setup, &r, &n, &s));
        Ok(Consumer { received, restarts, stop, thread: Some(thread) })
    }

    /// The ids received in `[from, to)`, with the node each came from.
    pub fn received(&self, from: u64, to: u64) -> BTreeMap<u64, String> {
        let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        r.range(from..to).map(|(k, v)| (*k, v.clone())).collect()
    }

    /// How many times the consumer (re)connected.
    pub fn starts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn is_primary(node: &NodeAddr) -> bool {
    matches!(http_request_to((&node.host, node.api_port), "GET", "/primary", None), Ok((200, _)))
}

fn follow(setup: &Setup, received: &Received, starts: &AtomicU64, stop: &AtomicBool) {
    let halted = || stop.load(Ordering::SeqCst) || crate::interrupted();
    while !halted() {
        let Some(primary) = setup.nodes.iter().find(|n| is_primary(n)) else {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        let Ok(mut child) = spawn(setup, primary) else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        starts.fetch_add(1, Ordering::SeqCst);
        let reader = child.stdout.take().map(|out| {
            let (received, name) = (received.clone(), primary.name.clone());
            std::thread::spawn(move || read_ids(out, &received, &name))
        });
        let mut misses = 0;
        while !halted() {
            std::thread::sleep(Duration::from_secs(1));
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            misses = if is_primary(primary) { 0 } else { misses + 1 };
            if misses >= 2 {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        if let Some(r) = reader {
            let _ = r.join();
        }
    }
}

fn spawn(setup: &Setup, node: &NodeAddr) -> std::io::Result<Child> {
    let log = File::options().create(true).append(true).open(&setup.log)?;
    Command::new(&setup.bin)
        .args(["-h", &node.host, "-p", &node.pg_port.to_string(), "-U", SUPERUSER.0, "-d", "app"])
        .args(["--slot", "cdc", "--start", "-f", "-", "-F", "1", "-s", "1", "--no-loop"])
        .env("PGPASSWORD", SUPERUSER.1)
        .env("PGCONNECT_TIMEOUT", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
}

fn read_ids(out: impl std::io::Read, received: &Received, node: &str) {
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        if let Some(id) = parse_id(&line) {
            received.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_insert_with(|| node.to_string());
        }
    }
}

/// The id of a test_decoding line `table public.chaos: INSERT: id[bigint]:42 node[text]:'node1' ...`.
fn parse_id(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("table public.chaos: INSERT: id[bigint]:")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_test_decoding_inserts() {
        let line = "table public.chaos: INSERT: id[bigint]:42 node[text]:'node1' at[timestamp with time zone]:'x'";
        assert_eq!(super::parse_id(line), Some(42));
        assert_eq!(super::parse_id("BEGIN 7"), None);
    }
}
