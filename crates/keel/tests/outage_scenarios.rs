//! Store outages with a writer and a logical consumer (issue 9, section 0): Patroni's default timing (ttl 30,
//! loop_wait 10, retry_timeout 10), a permanent logical slot `cdc` in the application's database, a writer that
//! writes to whichever node accepts writes, and a `pg_recvlogical` consumer that follows whichever node answers
//! `GET /primary`. etcd is frozen (SIGSTOP) and then killed and restarted, each for longer than `ttl`, with
//! `failsafe_mode` on and off. After each outage the cluster must settle on one primary without flapping, never
//! with two writable nodes, and the consumer must resume on the final primary and miss nothing it has; with
//! failsafe the primary keeps its role throughout. Redelivered changes and the time writes were unavailable are
//! printed.
//!
//! One cluster at a time; `KEEL_TEST_PG_VERSION` selects the major (test_decoding, or pgoutput where the build
//! lacks it).

mod slotkit;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use keel::cluster_runner::{self, pg_bin_dir, pg_version_from_env, NodeSpec};
use keel_testkit::{KeelCluster, KeelOptions};
use serde_json::json;
use slotkit::cdc::{spawn_recvlogical, stop_recvlogical, TABLE};
use slotkit::cluster::serial;
use slotkit::{decoded_ids, Plugin, Stream};

/// Patroni's defaults.
const TIMING: (u64, u64, u64) = (30, 10, 10);
/// Longer than ttl: every lease expires while the store is away (unless a restarted etcd keeps them): the last
/// keepalive came at most a loop_wait before the outage.
const OUTAGE: Duration = Duration::from_secs(35);
const DB: &str = "app";
const SLOT: &str = "cdc";

/// test_decoding, or pgoutput through `cdc_pub` where the build lacks it (asked once).
fn plugin() -> &'static Plugin {
    static PLUGIN: OnceLock<Plugin> = OnceLock::new();
    PLUGIN.get_or_init(|| Plugin::text_or_pgoutput(&pg_bin_dir(pg_version_from_env()), "cdc_pub"))
}

fn options(failsafe_mode: bool) -> KeelOptions {
    let plugin = plugin().name();
    KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        logical: true,
        failsafe_mode,
        timing: Some(TIMING),
        extra_dcs_yaml: format!(
            "    slots:\n      {SLOT}:\n        type: logical\n        database: {DB}\n        plugin: {plugin}\n"
        ),
        ..KeelOptions::default()
    }
}

/// Starts three nodes and creates the application database and table.
fn up(failsafe_mode: bool) -> (KeelCluster, String) {
    let c = KeelCluster::start(3, options(failsafe_mode)).expect("start etcd and three agents");
    let (leader, _) =
        c.wait_replicas_streaming(2, Duration::from_secs(180)).unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    c.wait("a writable leader", Duration::from_secs(60), || Ok(c.writable(&leader).then_some(())))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    c.psql(&leader, &format!("CREATE DATABASE {DB}")).unwrap();
    c.psql_db(&leader, DB, &format!("CREATE TABLE {TABLE} (id int PRIMARY KEY)")).unwrap();
    if let Some(sql) = plugin().publication_sql(&format!("TABLE {TABLE}")) {
        c.psql_db(&leader, DB, &sql).unwrap();
    }
    // The leader creates the permanent slot once the database exists (within a loop_wait).
    c.wait(&format!("{SLOT} on {leader}"), Duration::from_secs(60), || {
        let n = c.psql(&leader, &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}'"))?;
        Ok((n == "1").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    (c, leader)
}

/// Inserts sequential ids, one transaction each, into whichever node accepts them; records the acknowledged ids.
struct Writer {
    acked: Arc<Mutex<Vec<i32>>>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Writer {
    /// Writes ids from `first` on.
    fn start(c: &KeelCluster, first: i32) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (bin, nodes) = (c.opts.bin_dir.clone(), nodes(c));
        let (a, s) = (acked.clone(), stop.clone());
        let handle = thread::spawn(move || {
            let (mut id, mut at) = (first - 1, 0);
            while !s.load(Ordering::SeqCst) {
                id += 1;
                let sql = format!("INSERT INTO {TABLE} VALUES ({id})");
                match cluster_runner::psql_db(&bin, nodes[at].pg_port, DB, &sql) {
                    Ok(_) => a.lock().unwrap().push(id),
                    Err(_) => {
                        at = (at + 1) % nodes.len();
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        });
        Writer { acked, stop, handle: Some(handle) }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn stop(&mut self) -> Vec<i32> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.acked.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nodes(c: &KeelCluster) -> Vec<NodeSpec> {
    c.names().iter().map(|n| c.node(n).clone()).collect()
}

/// The node whose REST API answers `GET /primary` with 200, if exactly one does.
fn api_primary(nodes: &[NodeSpec]) -> Option<NodeSpec> {
    let up: Vec<&NodeSpec> = nodes
        .iter()
        .filter(|n| matches!(cluster_runner::http_request(n.api_port, "GET", "/primary", None), Ok((200, _))))
        .collect();
    (up.len() == 1).then(|| up[0].clone())
}

/// `pg_recvlogical --start` on the slot, restarted on whichever node answers `GET /primary` whenever it exits;
/// each run writes its own file.
struct Consumer {
    stop: Arc<AtomicBool>,
    files: Arc<Mutex<Vec<(String, PathBuf)>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Consumer {
    /// Output files are `<name>-<run>.txt` in the cluster's directory (pg_recvlogical appends to an existing file).
    fn start(c: &KeelCluster, name: &str) -> Consumer {
        let stop = Arc::new(AtomicBool::new(false));
        let files = Arc::new(Mutex::new(Vec::new()));
        let (bin, nodes, dir, name) = (c.opts.bin_dir.clone(), nodes(c), c.dir(), name.to_string());
        let (s, f) = (stop.clone(), files.clone());
        let stream = Stream { slot: SLOT.into(), database: DB.into(), plugin: plugin().clone() };
        let handle = thread::spawn(move || {
            let mut child: Option<(Child, String)> = None;
            while !s.load(Ordering::SeqCst) {
                let primary = api_primary(&nodes);
                if let Some((ch, on)) = child.as_mut() {
                    // A consumer may keep decoding on a node that became a standby (16+ decodes on standbys):
                    // a real one follows the primary, so move it when another node answers /primary.
                    let moved = primary.as_ref().is_some_and(|p| p.name != *on);
                    if ch.try_wait().ok().flatten().is_none() && !moved {
                        thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    stop_recvlogical(ch);
                    child = None;
                }
                let Some(p) = primary else {
                    thread::sleep(Duration::from_millis(200));
                    continue;
                };
                let n = f.lock().unwrap().len();
                let out = dir.join(format!("{name}-{n}.txt"));
                let spawned = spawn_recvlogical(&bin, p.pg_port, &stream, &out);
                f.lock().unwrap().push((p.name.clone(), out));
                child = Some((spawned, p.name));
                thread::sleep(Duration::from_millis(500));
            }
            if let Some((mut ch, _)) = child {
                stop_recvlogical(&mut ch);
            }
        });
        Consumer { stop, files, handle: Some(handle) }
    }

    fn files(&self) -> Vec<PathBuf> {
        self.files.lock().unwrap().iter().map(|(_, p)| p.clone()).collect()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A load balancer's view: `GET /primary` must not answer 200 on a node that does not accept writes (it was seen
/// doing so while a primary demoted itself). `/primary` is asked before and after the write check, so a role
/// change between the two requests is not mistaken for a lie.
fn assert_primary_check_truthful(c: &KeelCluster, node: &str, writable: bool) {
    let primary = || matches!(c.http_get(node, "/primary"), Ok((200, _)));
    if !writable && primary() && !c.writable(node) && primary() {
        panic!("{node} answers 200 on /primary but does not accept writes\n{}", c.logs(40));
    }
}

/// Watches the cluster from the store's return until it has been stable for `ttl + loop_wait` (failsafe
/// announcements stay valid for ttl, so a flap would show within that): never two writable nodes,
/// and counts the leader changes since `before_outage` led. Returns (final leader, leader changes, seconds until writes were accepted).
fn settle(c: &KeelCluster, writer: &Writer, back: Instant, before_outage: &str) -> (String, usize, f64) {
    let (stable, names) = (Duration::from_secs(TIMING.0 + TIMING.1), c.names());
    let (mut leaders, mut last_change, mut writes_back) = (vec![before_outage.to_string()], Instant::now(), None);
    let before = writer.count();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let writable: Vec<&String> = names.iter().filter(|n| c.writable(n)).collect();
        assert!(writable.len() <= 1, "two writable primaries after the outage: {writable:?}\n{}", c.logs(60));
        if writes_back.is_none() && writer.count() > before + 5 {
            writes_back = Some(back.elapsed().as_secs_f64());
        }
        let leader = c.leader().filter(|l| writable.first() == Some(&l));
        if let Some(l) = leader {
            if leaders.last() != Some(&l) {
                leaders.push(l);
                last_change = Instant::now();
            }
        }
        if last_change.elapsed() > stable && writes_back.is_some() {
            let last = leaders.last().cloned().unwrap_or_default();
            return (last, leaders.len() - 1, writes_back.unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "no stable writable leader after the outage: {leaders:?}\n{}", c.logs(60));
        thread::sleep(Duration::from_millis(500));
    }
}

/// Stops the writer, waits until the consumer has every acknowledged id the final primary holds, and checks that
/// no acknowledged id was lost. Prints duplicates.
fn check(c: &KeelCluster, mut writer: Writer, mut consumer: Consumer, primary: &str, what: &str) {
    let acked = writer.stop();
    let first = acked.first().copied().unwrap_or(0);
    let sql = format!("SELECT id FROM {TABLE} WHERE id >= {first}");
    let on_primary: BTreeSet<i32> =
        c.psql_db(primary, DB, &sql).unwrap().lines().filter_map(|l| l.parse().ok()).collect();
    let lost: Vec<i32> = acked.iter().copied().filter(|i| !on_primary.contains(i)).collect();
    let res = c.wait(&format!("{what}: the consumer has every id on {primary}"), Duration::from_secs(120), || {
        let seen = decoded_ids(&consumer.files(), plugin(), TABLE);
        let missing: Vec<&i32> = on_primary.iter().filter(|i| !seen.contains_key(i)).collect();
        if missing.is_empty() {
            Ok(Some(()))
        } else {
            Err(format!("{} missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(20)]))
        }
    });
    consumer.stop();
    let seen = decoded_ids(&consumer.files(), plugin(), TABLE);
    let dups = seen.values().filter(|n| **n > 1).count();
    let runs: Vec<String> = consumer.files.lock().unwrap().iter().map(|(n, _)| n.clone()).collect();
    eprintln!(
        "{what}: {} acknowledged, {} on {primary}, {} lost, {} decoded, {dups} redelivered; consumer ran on {runs:?}",
        acked.len(),
        on_primary.len(),
        lost.len(),
        seen.len()
    );
    res.unwrap_or_else(|e| panic!("{e}\n{}", c.logs(60)));
    assert!(lost.is_empty(), "{what}: acknowledged ids lost: {:?}", &lost[..lost.len().min(50)]);
}

#[derive(Clone, Copy, Debug)]
enum Outage {
    Frozen,
    Stopped,
}

/// One outage of `kind` under load; returns the final leader.
fn outage(c: &mut KeelCluster, kind: Outage, failsafe: bool, leader: &str) -> String {
    let what = format!("{kind:?} store, failsafe_mode {failsafe}");
    let max = c.psql_db(leader, DB, &format!("SELECT coalesce(max(id), 0) FROM {TABLE}")).unwrap();
    let writer = Writer::start(c, max.parse::<i32>().unwrap() + 1);
    let consumer = Consumer::start(c, &format!("consumer-{kind:?}"));
    c.wait(&format!("{what}: writes before the outage"), Duration::from_secs(60), || {
        Ok((writer.count() > 100).then_some(()))
    })
    .unwrap();
    // Copies become ready once consumers move the slot on the primary and the replicas decode past it.
    for n in c.names().into_iter().filter(|n| n != leader) {
        c.wait(&format!("{SLOT} ready on {n}"), Duration::from_secs(240), || {
            let (_, v) = c.http_get(&n, "/slots")?;
            let slot = v["slots"].as_array().and_then(|a| a.iter().find(|s| s["name"] == SLOT)).cloned();
            match slot {
                Some(s) if s["readiness"] == json!("Ready") => Ok(Some(())),
                other => Err(format!("{SLOT} on {n}: {other:?}")),
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    }
    match kind {
        Outage::Frozen => c.etcd_pause(),
        Outage::Stopped => c.etcd_stop(),
    }
    let start = Instant::now();
    let mut primary_throughout = true;
    while start.elapsed() < OUTAGE {
        let writable = c.writable(leader);
        primary_throughout &= writable;
        assert_primary_check_truthful(c, leader, writable);
        thread::sleep(Duration::from_millis(500));
    }
    let during = writer.count();
    match kind {
        Outage::Frozen => c.etcd_resume(),
        Outage::Stopped => c.etcd_start(),
    }
    let back = Instant::now();
    let (last, changes, writes_back) = settle(c, &writer, back, leader);
    eprintln!(
        "{what}: final leader {last} (was {leader}), {changes} leader changes after the store returned, writes \
         accepted {writes_back:.1}s after it returned, {during} writes acknowledged by the end of the outage, \
         {leader} writable throughout the outage: {primary_throughout}"
    );
    if failsafe {
        assert!(primary_throughout, "{what}: {leader} stopped accepting writes during the outage\n{}", c.logs(60));
        assert_eq!(last, leader, "{what}: the healthy primary must keep its role\n{}", c.logs(60));
        assert_eq!(changes, 0, "{what}: the leader changed after the store returned");
    }
    check(c, writer, consumer, &last, &what);
    last
}

fn frozen_then_stopped(failsafe: bool) {
    let _serial = serial();
    let (mut c, leader) = up(failsafe);
    let leader = outage(&mut c, Outage::Frozen, failsafe, &leader);
    outage(&mut c, Outage::Stopped, failsafe, &leader);
}

#[test]
fn store_outages_with_failsafe_keep_the_primary_and_the_consumer() {
    frozen_then_stopped(true);
}

#[test]
fn store_outages_without_failsafe_settle_on_one_primary_and_the_consumer_resumes() {
    frozen_then_stopped(false);
}
