//! Cluster-level steps and waits shared by the slot scenario suites: one cluster at a time, every wait a condition
//! with a deadline that fails with the agents' log tails.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use keel_testkit::{KeelCluster, KeelOptions};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// One cluster at a time per test binary.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a three-node cluster and waits (up to `deadline`) for a writable leader with two streaming replicas and
/// settled member keys.
pub fn up(opts: KeelOptions, deadline: Duration) -> (KeelCluster, String) {
    let mut c = KeelCluster::start(3, opts).expect("start etcd and three agents");
    let start = Instant::now();
    let mut last;
    loop {
        for name in c.names() {
            if let Some(st) = c.agent_exit(&name) {
                panic!("the agent of {name} exited ({st}) during bootstrap");
            }
        }
        match c.wait_replicas_streaming(2, Duration::ZERO) {
            Ok((leader, _)) if c.writable(&leader) && c.members_settled().unwrap_or(false) => {
                eprintln!("cluster up in {:.1}s, leader {leader}", start.elapsed().as_secs_f64());
                return (c, leader);
            }
            Ok((leader, _)) if c.writable(&leader) => last = format!("member keys not settled:\n{}", c.table()),
            Ok((leader, _)) => last = format!("leader {leader} not writable"),
            Err(e) => last = e,
        }
        assert!(start.elapsed() < deadline, "no leader with two streaming replicas after {deadline:?}: {last}");
        thread::sleep(Duration::from_millis(250));
    }
}

pub fn replicas(c: &KeelCluster, leader: &str) -> Vec<String> {
    c.names().into_iter().filter(|n| n != leader).collect()
}

pub fn slot_names(c: &KeelCluster, node: &str) -> Result<BTreeSet<String>, String> {
    Ok(c.psql(node, "SELECT slot_name FROM pg_replication_slots")?.lines().map(str::to_string).collect())
}

pub fn has_slot(c: &KeelCluster, node: &str, slot: &str) -> bool {
    slot_names(c, node).map(|s| s.contains(slot)).unwrap_or(false)
}

/// Waits until `slot` exists (or, with `present == false`, no longer exists) on `node`.
pub fn wait_slot(c: &KeelCluster, node: &str, slot: &str, present: bool, deadline: Duration) {
    let what = format!("slot {slot} {} on {node}", if present { "present" } else { "gone" });
    c.wait(&what, deadline, || {
        let names = slot_names(c, node)?;
        if names.contains(slot) == present {
            Ok(Some(()))
        } else {
            Err(format!("slots: {names:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(30)));
}

/// Waits until the leader key names someone other than `old` who accepts writes; returns them.
pub fn wait_new_leader(c: &KeelCluster, old: &str, deadline: Duration) -> String {
    c.wait(&format!("a new writable leader instead of {old}"), deadline, || match c.leader() {
        Some(l) if l != old && c.writable(&l) => Ok(Some(l)),
        other => Err(format!("leader key: {other:?}")),
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)))
}

/// Restarts `cascade`'s agent with `replicatefrom: <upstream>` and waits until it streams from `upstream`.
pub fn make_cascade(c: &mut KeelCluster, cascade: &str, upstream: &str, deadline: Duration) {
    assert!(c.stop_agent(cascade, Duration::from_secs(60)), "the agent of {cascade} did not stop");
    let path = c.node(cascade).config_path.clone();
    let mut text = std::fs::read_to_string(&path).expect("read the config");
    text.push_str(&format!("tags:\n  replicatefrom: {upstream}\n"));
    std::fs::write(&path, text).expect("write the config");
    c.start_agent(cascade).expect("start the agent");
    wait_streaming_from(c, upstream, cascade, deadline);
}

pub fn wait_streaming_from(c: &KeelCluster, leader: &str, replica: &str, deadline: Duration) {
    c.wait(&format!("{replica} streaming from {leader}"), deadline, || {
        let names = c.streaming_replicas(leader)?;
        Ok(names.iter().any(|n| n == replica).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
}

/// `GET /slots` on `node`.
pub fn slots_api(c: &KeelCluster, node: &str) -> Result<Value, String> {
    match c.http_get(node, "/slots")? {
        (200, v) => Ok(v),
        (code, v) => Err(format!("GET /slots on {node}: {code} {v}")),
    }
}

/// The promotion check `node` recorded for `slot` (`/slots` → `promotion`), once present.
pub fn promotion_check(c: &KeelCluster, node: &str, slot: &str) -> Value {
    c.wait(&format!("{node}'s promotion check of {slot} in /slots"), Duration::from_secs(60), || {
        let v = slots_api(c, node)?;
        let found = v
            .pointer("/promotion/slots")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|s| s["slot"] == slot).cloned());
        match found {
            Some(s) => Ok(Some(s)),
            None => Err(format!("/slots: {v}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)))
}
