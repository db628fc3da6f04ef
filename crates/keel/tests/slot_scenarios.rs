//! Slot scenario tests: a real etcd and three real agents managing real PostgreSQL (15 by default,
//! `KEEL_TEST_PG_VERSION=18` for 18) with permanent slots in the dynamic configuration, modelled on Patroni's
//! `permanent_slots.feature` and `ignored_slots.feature`, plus Keel's own promises: a logical consumer keeps going
//! across a failover or a switchover without gaps, and a missing logical slot on a new primary is a loud
//! continuity break instead of a silent re-creation.
//!
//! One cluster at a time (the `SERIAL` lock); every wait is a condition with a generous deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use keel::cluster_runner::{self, SUPERUSER};
use keel_testkit::{KeelCluster, KeelOptions};
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

const UP: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(90);
/// Slot copies on replicas: a logical copy costs a PostgreSQL restart on the replica.
const SLOTS: Duration = Duration::from_secs(90);

const LOGICAL: &str = "test_logical";
const PHYSICAL: &str = "test_physical";

/// The permanent slots and the ignore list, at the `bootstrap.dcs` level.
const SLOTS_YAML: &str = "    slots:
      test_logical:
        type: logical
        database: postgres
        plugin: test_decoding
      test_physical:
        type: physical
    ignore_slots:
    - name: ignored_slot
    - name: ignored_logical
      type: logical
      database: postgres
      plugin: test_decoding
";

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn options(extra: &str) -> KeelOptions {
    KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        logical: true,
        extra_dcs_yaml: format!("{SLOTS_YAML}{extra}"),
        ..KeelOptions::default()
    }
}

/// Starts a three-node cluster and waits for a writable leader with two streaming replicas.
fn up(opts: KeelOptions) -> (KeelCluster, String) {
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
        assert!(start.elapsed() < UP, "no leader with two streaming replicas after {UP:?}: {last}");
        thread::sleep(Duration::from_millis(250));
    }
}

fn replicas(c: &KeelCluster, leader: &str) -> Vec<String> {
    c.names().into_iter().filter(|n| n != leader).collect()
}

fn slot_names(c: &KeelCluster, node: &str) -> Result<BTreeSet<String>, String> {
    Ok(c.psql(node, "SELECT slot_name FROM pg_replication_slots")?.lines().map(str::to_string).collect())
}

fn has_slot(c: &KeelCluster, node: &str, slot: &str) -> bool {
    slot_names(c, node).map(|s| s.contains(slot)).unwrap_or(false)
}

/// Waits until `slot` exists (or, with `present == false`, no longer exists) on `node`.
fn wait_slot(c: &KeelCluster, node: &str, slot: &str, present: bool, deadline: Duration) {
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
fn wait_new_leader(c: &KeelCluster, old: &str, deadline: Duration) -> String {
    c.wait(&format!("a new writable leader instead of {old}"), deadline, || match c.leader() {
        Some(l) if l != old && c.writable(&l) => Ok(Some(l)),
        other => Err(format!("leader key: {other:?}")),
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)))
}

fn wait_streaming_from(c: &KeelCluster, leader: &str, replica: &str, deadline: Duration) {
    c.wait(&format!("{replica} streaming from {leader}"), deadline, || {
        let names = c.streaming_replicas(leader)?;
        Ok(names.iter().any(|n| n == replica).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
}

/// `GET /slots` on `node`.
fn slots_api(c: &KeelCluster, node: &str) -> Result<Value, String> {
    match c.http_get(node, "/slots")? {
        (200, v) => Ok(v),
        (code, v) => Err(format!("GET /slots on {node}: {code} {v}")),
    }
}

/// Waits until every node in `nodes` reports its copy of the permanent logical slot ready (`GET /slots` and the
/// member key's `keel_slots`).
fn wait_ready(c: &KeelCluster, nodes: &[String], deadline: Duration) {
    for n in nodes {
        c.wait(&format!("{LOGICAL} ready on {n}"), deadline, || {
            let v = slots_api(c, n)?;
            let slot = v["slots"].as_array().and_then(|a| a.iter().find(|s| s["name"] == LOGICAL)).cloned();
            let member_ready = c
                .view()?
                .members
                .get(n)
                .map(|m| m.data.pointer("/keel_slots/ready") == Some(&json!(true)))
                .unwrap_or(false);
            match slot {
                Some(s) if s["readiness"] == "Ready" && v["ready"] == json!(true) && member_ready => Ok(Some(())),
                _ => Err(format!("/slots: {v}; member key ready: {member_ready}")),
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    }
}

/// Patroni's permanent_slots.feature and ignored_slots.feature.
#[test]
fn permanent_slots_are_copied_followed_and_unknown_ones_dropped() {
    let _serial = serial();
    let (c, leader) = up(options(""));
    let reps = replicas(&c, &leader);

    // The permanent slots exist on the primary and on both replicas.
    for n in c.names() {
        wait_slot(&c, &n, LOGICAL, true, SLOTS);
        wait_slot(&c, &n, PHYSICAL, true, SLOTS);
    }
    assert_eq!(
        c.psql(&leader, &format!("SELECT plugin, database FROM pg_replication_slots WHERE slot_name = '{LOGICAL}'"))
            .unwrap(),
        "test_decoding|postgres"
    );
    // The leader publishes their positions in the status key.
    c.wait("the status key lists the permanent slots", Duration::from_secs(30), || {
        let st = c.view()?.status;
        if st.slots.contains_key(LOGICAL) && st.slots.contains_key(PHYSICAL) {
            Ok(Some(()))
        } else {
            Err(format!("status: {st:?}"))
        }
    })
    .unwrap();

    // Consume on the primary; the replicas' copies follow.
    c.psql(&leader, "CREATE TABLE t (id int primary key); INSERT INTO t SELECT generate_series(1, 1000)").unwrap();
    let consumed =
        c.psql(&leader, &format!("SELECT count(*) FROM pg_logical_slot_get_changes('{LOGICAL}', NULL, NULL)")).unwrap();
    assert!(consumed.parse::<u64>().unwrap() >= 1000, "changes consumed: {consumed}");
    let primary_pos = c
        .psql(&leader, &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{LOGICAL}'"))
        .unwrap();
    let t0 = Instant::now();
    for r in &reps {
        c.wait(&format!("{r}'s copy of {LOGICAL} at {primary_pos}"), SLOTS, || {
            let got = c.psql(
                r,
                &format!(
                    "SELECT confirmed_flush_lsn, confirmed_flush_lsn >= '{primary_pos}'::pg_lsn \
                     FROM pg_replication_slots WHERE slot_name = '{LOGICAL}'"
                ),
            )?;
            if got.ends_with("|t") {
                Ok(Some(()))
            } else {
                Err(format!("copy at {got:?}"))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    }
    eprintln!("replica copies reached {primary_pos} {:.1}s after consumption", t0.elapsed().as_secs_f64());

    // Slots matching ignore_slots are left alone; unknown ones are dropped, on the primary and on a replica.
    c.psql(&leader, "SELECT pg_create_physical_replication_slot('ignored_slot', true)").unwrap();
    c.psql(&leader, "SELECT pg_create_logical_replication_slot('ignored_logical', 'test_decoding')").unwrap();
    c.psql(&leader, "SELECT pg_create_physical_replication_slot('unknown_primary', true)").unwrap();
    c.psql(&reps[0], "SELECT pg_create_physical_replication_slot('unknown_replica', true)").unwrap();
    wait_slot(&c, &leader, "unknown_primary", false, Duration::from_secs(60));
    wait_slot(&c, &reps[0], "unknown_replica", false, Duration::from_secs(60));
    let left = slot_names(&c, &leader).unwrap();
    assert!(left.contains("ignored_slot") && left.contains("ignored_logical"), "ignored slots dropped: {left:?}");
    for n in c.names() {
        let names = slot_names(&c, &n).unwrap();
        assert!(names.contains(LOGICAL) && names.contains(PHYSICAL), "{n} lost a permanent slot: {names:?}");
    }
}

/// A `pg_recvlogical --start` on the permanent logical slot, writing to a file.
struct Consumer {
    child: Option<Child>,
    node: String,
}

impl Consumer {
    fn start(c: &KeelCluster, node: &str, out: &Path) -> Consumer {
        let log = File::create(out.with_extension("log")).unwrap();
        let child = Command::new(c.opts.bin_dir.join("pg_recvlogical"))
            .args(["-h", "127.0.0.1", "-p", &c.node(node).pg_port.to_string(), "-U", SUPERUSER.0, "-d", "postgres"])
            .args(["--slot", LOGICAL, "--start", "--no-loop", "-F", "1", "-s", "1", "-f"])
            .arg(out)
            .env("PGPASSWORD", SUPERUSER.1)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run pg_recvlogical");
        let consumer = Consumer { child: Some(child), node: node.to_string() };
        // It counts as started once the slot is active on the node.
        c.wait(&format!("pg_recvlogical streaming from {node}"), Duration::from_secs(30), || {
            let active =
                c.psql(node, &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{LOGICAL}'"))?;
            Ok((active == "t").then_some(()))
        })
        .unwrap_or_else(|e| {
            let err = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
            panic!("{e}\npg_recvlogical: {err}\n{}", c.logs(40))
        });
        consumer
    }

    /// SIGINT (pg_recvlogical flushes, confirms and exits), SIGKILL if it does not exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = cluster_runner::send_signal(child.id(), libc::SIGINT);
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Inserts sequential ids, one transaction each, into `acked` on whichever port it is pointed at; records the
/// ones PostgreSQL acknowledged.
struct Writer {
    acked: Arc<Mutex<Vec<i32>>>,
    port: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(c: &KeelCluster, node: &str) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let port = Arc::new(AtomicU16::new(c.node(node).pg_port));
        let stop = Arc::new(AtomicBool::new(false));
        let bin = c.opts.bin_dir.clone();
        let handle = {
            let (acked, port, stop) = (acked.clone(), port.clone(), stop.clone());
            thread::spawn(move || {
                let mut id = 0;
                while !stop.load(Ordering::SeqCst) {
                    id += 1;
                    let p = port.load(Ordering::SeqCst);
                    match cluster_runner::psql(&bin, p, &format!("INSERT INTO acked VALUES ({id})")) {
                        Ok(_) => acked.lock().unwrap().push(id),
                        // The primary is gone or read-only: back off, keep going with fresh ids.
                        Err(_) => thread::sleep(Duration::from_millis(200)),
                    }
                }
            })
        };
        Writer { acked, port, stop, handle: Some(handle) }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn point_at(&self, c: &KeelCluster, node: &str) {
        self.port.store(c.node(node).pg_port, Ordering::SeqCst);
    }

    /// Waits until `n` more writes than now were acknowledged.
    fn wait_more(&self, c: &KeelCluster, n: usize) {
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

    fn stop(&mut self) -> Vec<i32> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How often each id of `acked` appears as an INSERT in test_decoding output files.
fn decoded_ids(files: &[PathBuf]) -> BTreeMap<i32, usize> {
    const PREFIX: &str = "table public.acked: INSERT: id[integer]:";
    let mut seen = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            if let Some(id) = line.strip_prefix(PREFIX).and_then(|s| s.trim().parse::<i32>().ok()) {
                *seen.entry(id).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// Ids in `node`'s `acked` table.
fn table_ids(c: &KeelCluster, node: &str) -> BTreeSet<i32> {
    c.psql(node, "SELECT id FROM acked").unwrap().lines().map(|l| l.parse().unwrap()).collect()
}

/// Waits until the consumer output holds every acknowledged id that is in `primary`'s table; panics with the
/// missing ids otherwise. Prints the duplicates (allowed: a consumer restarted from a slot copy replays).
fn check_continuity(c: &KeelCluster, primary: &str, acked: &[i32], files: &[PathBuf], what: &str) {
    let on_primary = table_ids(c, primary);
    let expected: BTreeSet<i32> = acked.iter().copied().filter(|i| on_primary.contains(i)).collect();
    let res = c.wait(&format!("{what}: every acknowledged id in the consumer output"), Duration::from_secs(60), || {
        let seen = decoded_ids(files);
        let missing: Vec<i32> = expected.iter().copied().filter(|i| !seen.contains_key(i)).collect();
        if missing.is_empty() {
            Ok(Some(()))
        } else {
            Err(format!("{} missing: {:?}", missing.len(), &missing[..missing.len().min(50)]))
        }
    });
    let seen = decoded_ids(files);
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
        let before = decoded_ids(&files[..=i]);
        let after = decoded_ids(&pair[1..]);
        let again = after.keys().filter(|id| before.contains_key(id)).count();
        eprintln!("{what}: handover {}: {again} ids delivered again by the next consumer", i + 1);
    }
    if let Err(e) = res {
        panic!("{e}\n{}", c.logs(60));
    }
}

/// The promotion check `node` recorded for the permanent logical slot (`/slots` → `promotion`), once present.
fn promotion_check(c: &KeelCluster, node: &str) -> Value {
    c.wait(&format!("{node}'s promotion check in /slots"), Duration::from_secs(60), || {
        let v = slots_api(c, node)?;
        let slot = v
            .pointer("/promotion/slots")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|s| s["slot"] == LOGICAL).cloned());
        match slot {
            Some(s) => Ok(Some(s)),
            None => Err(format!("/slots: {v}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)))
}

/// Keel's promise for logical consumers: after a kill -9 failover and after a switchover, a consumer restarted
/// on the new primary from the same slot misses nothing that was acknowledged and survived.
#[test]
fn logical_consumer_continues_across_failover_and_switchover() {
    let _serial = serial();
    let (mut c, first) = up(options(""));
    let dir = c.dir();
    c.psql(&first, "CREATE TABLE acked (id int primary key)").unwrap();
    let mut files = vec![dir.join("consumer1.out")];
    let mut consumer = Consumer::start(&c, &first, &files[0]);
    let mut writer = Writer::start(&c, &first);
    writer.wait_more(&c, 50);
    wait_ready(&c, &replicas(&c, &first), SLOTS);
    writer.wait_more(&c, 20);

    // kill -9 of the primary's agent and postmaster.
    let t0 = Instant::now();
    c.kill9(&first);
    let second = wait_new_leader(&c, &first, FAILOVER);
    eprintln!("failover: {second} writable {:.1}s after kill -9 of {first}", t0.elapsed().as_secs_f64());
    let check = promotion_check(&c, &second);
    eprintln!("failover: promotion check on {second}: {check}");
    assert_ne!(check["verdict"], "missing", "{second} must have a copy of {LOGICAL}: {check}");
    consumer.stop();
    assert_eq!(consumer.node, first);
    writer.point_at(&c, &second);
    files.push(dir.join("consumer2.out"));
    consumer = Consumer::start(&c, &second, &files[1]);
    writer.wait_more(&c, 50);

    // The old primary rejoins; once every replica's copy is ready again, switch over.
    c.start_agent(&first).unwrap();
    wait_streaming_from(&c, &second, &first, UP);
    let reps = replicas(&c, &second);
    wait_ready(&c, &reps, SLOTS);
    c.wait("member keys up to date", Duration::from_secs(30), || {
        c.members_settled().map(|ok| ok.then_some(())).map_err(|e| e.to_string())
    })
    .unwrap();
    let target = reps.iter().find(|n| **n != first).unwrap().clone();
    writer.wait_more(&c, 20);
    let t1 = Instant::now();
    let out = c.ctl(&second, &["switchover", "--candidate", &target, "--force"]);
    assert!(
        out.status.success(),
        "keel switchover: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let third = wait_new_leader(&c, &second, FAILOVER);
    assert_eq!(third, target, "the switchover must promote the candidate");
    eprintln!("switchover: {third} writable {:.1}s after the request", t1.elapsed().as_secs_f64());
    // A graceful switchover hands every WAL record to the candidate: consumers cannot be ahead of it.
    let check = promotion_check(&c, &third);
    eprintln!("switchover: promotion check on {third}: {check}");
    assert!(["in_step", "redelivery"].contains(&check["verdict"].as_str().unwrap_or("")), "{check}");
    consumer.stop();
    writer.point_at(&c, &third);
    files.push(dir.join("consumer3.out"));
    consumer = Consumer::start(&c, &third, &files[2]);
    writer.wait_more(&c, 50);
    let acked = writer.stop();
    check_continuity(&c, &third, &acked, &files, "kill -9 failover then switchover");
    consumer.stop();
}

/// A new primary that lacks a permanent logical slot whose position was published does not re-create it
/// silently: `/slots` lists a continuity break until an operator asks for the slot with `POST /slots/recreate`.
#[test]
fn missing_logical_slot_on_new_primary_is_a_continuity_break() {
    let _serial = serial();
    let (mut c, leader) = up(options(""));
    let reps = replicas(&c, &leader);
    let (heir, other) = (reps[0].clone(), reps[1].clone());
    for n in &reps {
        wait_slot(&c, n, LOGICAL, true, SLOTS);
    }
    c.wait("the status key publishes the logical slot", Duration::from_secs(30), || {
        Ok(c.view()?.status.slots.contains_key(LOGICAL).then_some(()))
    })
    .unwrap();

    // Both replicas stop; the heir loses its copy (as if it never received it); the primary dies.
    assert!(c.stop_agent(&other, Duration::from_secs(60)), "{other}'s agent did not stop cleanly");
    assert!(c.stop_agent(&heir, Duration::from_secs(60)), "{heir}'s agent did not stop cleanly");
    c.wait(&format!("{heir}'s PostgreSQL stopped"), Duration::from_secs(60), || {
        Ok(c.postmaster_pid(&heir).is_none().then_some(()))
    })
    .unwrap();
    let slot_dir = c.node(&heir).data_dir.join("pg_replslot").join(LOGICAL);
    assert!(slot_dir.is_dir(), "{} missing", slot_dir.display());
    std::fs::remove_dir_all(&slot_dir).unwrap();
    c.kill9(&leader);
    c.start_agent(&heir).unwrap();
    let new = wait_new_leader(&c, &leader, FAILOVER);
    assert_eq!(new, heir);

    // The break is reported, and the slot is not re-created behind the consumers' backs.
    c.wait(&format!("a continuity break of {LOGICAL} in {new}'s /slots"), Duration::from_secs(60), || {
        let v = slots_api(&c, &new)?;
        let listed = v["continuity_breaks"].as_array().is_some_and(|a| a.iter().any(|b| b["slot"] == LOGICAL));
        if listed {
            Ok(Some(()))
        } else {
            Err(format!("/slots: {v}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    // The physical permanent slot is created as usual, which proves slot cycles ran on the new primary.
    wait_slot(&c, &new, PHYSICAL, true, Duration::from_secs(30));
    assert!(!has_slot(&c, &new, LOGICAL), "{LOGICAL} was re-created silently on {new}");
    let log = std::fs::read_to_string(&c.node(&new).log_path).unwrap_or_default();
    assert!(log.contains(LOGICAL), "{new}'s agent log does not mention {LOGICAL}");

    // Asking for it on purpose re-creates it and clears the break.
    let (code, body) = c.http_post(&new, "/slots/recreate", &json!({ "slot": LOGICAL })).unwrap();
    assert_eq!(code, 200, "POST /slots/recreate: {body}");
    wait_slot(&c, &new, LOGICAL, true, Duration::from_secs(30));
    c.wait("the continuity break cleared", Duration::from_secs(30), || {
        let v = slots_api(&c, &new)?;
        let empty = v["continuity_breaks"].as_array().is_some_and(|a| a.is_empty());
        if empty {
            Ok(Some(()))
        } else {
            Err(format!("/slots: {v}"))
        }
    })
    .unwrap();
}

/// Waits until every node in `nodes` reports its copy ready, writing and consuming on `primary` meanwhile (a
/// copy is ready once the primary's slot has moved on since the copy was installed).
fn wait_ready_consuming(c: &KeelCluster, primary: &str, nodes: &[String]) {
    let consume = || {
        let _ = c.psql(
            primary,
            &format!(
                "INSERT INTO g (v) VALUES ('x'); SELECT count(*) FROM pg_logical_slot_get_changes('{LOGICAL}', NULL, NULL)"
            ),
        );
    };
    for n in nodes {
        c.wait(&format!("{LOGICAL} ready on {n}"), SLOTS, || {
            consume();
            let v = slots_api(c, n)?;
            if v["ready"] == json!(true) {
                Ok(Some(()))
            } else {
                Err(format!("/slots: {v}"))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    }
}

/// The readiness stage of the permanent logical slot in `node`'s `/slots` (`None` when the slot is not listed).
fn readiness_stage(c: &KeelCluster, node: &str) -> Result<Option<String>, String> {
    let v = slots_api(c, node)?;
    Ok(v["slots"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == LOGICAL))
        .and_then(|s| s["readiness"].as_str().map(str::to_string)))
}

/// `failover_slot_readiness: prefer`: a replica whose logical copy is not ready yet is not promoted while a ready
/// one is eligible, even when the unready one has more WAL (which would win the race otherwise).
#[test]
fn prefer_promotes_the_ready_replica_over_an_unready_one_ahead() {
    let _serial = serial();
    // Through PATCH /config: the bootstrap.dcs validation of this build rejects Keel's own dynamic keys.
    let (mut c, leader) = up(options(""));
    let (code, body) =
        c.http(&leader, "PATCH", "/config", Some(&json!({ "failover_slot_readiness": "prefer" }))).unwrap();
    assert_eq!(code, 200, "PATCH /config: {body}");
    let reps = replicas(&c, &leader);
    let (ready, fresh) = (reps[0].clone(), reps[1].clone());
    c.psql(&leader, "CREATE TABLE g (id serial primary key, v text)").unwrap();
    wait_ready_consuming(&c, &leader, &reps);

    // Re-initialise `fresh`: its new copy stays unready, since nobody consumes the primary's slot from now on.
    let old_pm = c.postmaster_pid(&fresh);
    let (code, body) = c.http_post(&fresh, "/reinitialize", &json!({ "force": true })).unwrap();
    assert_eq!(code, 200, "POST /reinitialize on {fresh}: {body}");
    c.wait(&format!("{fresh} re-initialised, streaming, with an unready copy"), UP, || {
        let stage = readiness_stage(&c, &fresh)?;
        let streaming = c.streaming_replicas(&leader)?.contains(&fresh);
        let published = c
            .view()?
            .members
            .get(&fresh)
            .and_then(|m| m.data.pointer("/keel_slots/ready").cloned())
            .unwrap_or_default();
        let pm = c.postmaster_pid(&fresh);
        let copied = matches!(stage.as_deref(), Some("Copied" | "Protected" | "Advanced"));
        if streaming && copied && published == json!(false) && pm.is_some() && pm != old_pm {
            Ok(Some(()))
        } else {
            Err(format!("stage {stage:?}, streaming {streaming}, published ready {published}, postmaster {pm:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    let ready_view = slots_api(&c, &ready).unwrap();
    assert_eq!(ready_view["ready"], json!(true), "{ready} must still be ready: {ready_view}");

    // A manual switchover to the unready replica is refused unless forced, naming the slot at risk.
    let out = c.ctl(&leader, &["switchover", "--candidate", &fresh]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "keel switchover to unready {fresh} must fail: {stderr}");
    assert!(stderr.contains(LOGICAL) && stderr.contains("--force"), "keel switchover: {stderr}");
    let (code, body) = c.http_post(&leader, "/switchover", &json!({ "leader": leader, "candidate": fresh })).unwrap();
    assert_eq!(code, 412, "POST /switchover to unready {fresh}: {body}");
    assert!(body.to_string().contains(LOGICAL), "POST /switchover: {body}");
    assert_eq!(c.view().unwrap().leader.map(|l| l.name), Some(leader.clone()), "nothing may have changed");

    // Put `fresh` ahead of `ready` in WAL: freeze ready's WAL receiver, write, let fresh replay it.
    let pm = c.postmaster_pid(&ready).expect("ready's postmaster");
    let receivers = cluster_runner::children_named(pm, "walreceiver");
    assert_eq!(receivers.len(), 1, "one WAL receiver on {ready}");
    for p in &receivers {
        cluster_runner::send_signal(*p, libc::SIGSTOP).unwrap();
    }
    c.psql(&leader, "INSERT INTO g (v) SELECT 'ahead' FROM generate_series(1, 2000)").unwrap();
    let lsn = c.psql(&leader, "SELECT pg_current_wal_lsn()").unwrap();
    c.wait(&format!("{fresh} replayed {lsn}"), Duration::from_secs(30), || {
        Ok((c.psql(&fresh, &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"))? == "t").then_some(()))
    })
    .unwrap();
    let behind = c.psql(&ready, &format!("SELECT pg_last_wal_replay_lsn() < '{lsn}'::pg_lsn")).unwrap();
    c.kill9(&leader);
    for p in &receivers {
        let _ = cluster_runner::send_signal(*p, libc::SIGCONT);
    }
    assert_eq!(behind, "t", "{ready} should be behind {fresh} in WAL");

    let new = wait_new_leader(&c, &leader, FAILOVER);
    let fresh_log = std::fs::read_to_string(&c.node(&fresh).log_path).unwrap_or_default();
    let reason = fresh_log.lines().rfind(|l| l.contains("failover_slot_readiness")).unwrap_or("").to_string();
    eprintln!("{new} promoted; {fresh}'s last readiness line: {reason}");
    assert_eq!(new, ready, "the replica with ready logical slots must win over the unready one ahead in WAL");
}

/// The slot parts of Patroni's `dcs_failsafe_mode.feature`: with `failsafe_mode`, the primary stays primary while
/// etcd is stopped (SIGSTOP), because every member accepts its `POST /failsafe`; the replicas' copies of the
/// permanent slots keep following the primary's positions during the outage, while making new logical copies
/// waits for the store.
#[test]
fn failsafe_keeps_the_primary_and_slot_copies_follow_during_a_store_outage() {
    let _serial = serial();
    let (c, leader) = up(KeelOptions { failsafe_mode: true, ..options("") });
    let reps = replicas(&c, &leader);
    c.psql(&leader, "CREATE TABLE g (id serial primary key, v text)").unwrap();
    wait_ready_consuming(&c, &leader, &reps);
    // The leader lists every member in the failsafe key before the outage (or it would have to step down).
    c.wait("every member in the failsafe key", Duration::from_secs(60), || {
        let (code, body) = c.http_get(&leader, "/failsafe")?;
        let listed = body.as_object().map_or(0, |m| m.len());
        if code == 200 && listed == 3 {
            Ok(Some(()))
        } else {
            Err(format!("GET /failsafe: {code} {body}"))
        }
    })
    .unwrap();

    c.etcd_pause();
    let outage = Instant::now();
    c.wait(&format!("{leader} primary in failsafe mode"), Duration::from_secs(c.opts.ttl + 30), || {
        let (code, body) = c.http_get(&leader, "/primary")?;
        if code == 200 && body["failsafe_mode_is_active"] == json!(true) {
            Ok(Some(()))
        } else {
            Err(format!("/primary: {code} {body}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    eprintln!("{leader} in failsafe mode {:.1}s into the outage", outage.elapsed().as_secs_f64());

    // Move both slots on the primary; the copies follow without the store.
    c.psql(&leader, "INSERT INTO g (v) SELECT 'outage' FROM generate_series(1, 500)").unwrap();
    c.psql(&leader, &format!("SELECT count(*) FROM pg_logical_slot_get_changes('{LOGICAL}', NULL, NULL)")).unwrap();
    c.psql(&leader, &format!("SELECT pg_replication_slot_advance('{PHYSICAL}', pg_current_wal_flush_lsn())")).unwrap();
    let position = |node: &str, slot: &str| {
        c.psql(
            node,
            &format!(
                "SELECT CASE WHEN slot_type = 'logical' THEN confirmed_flush_lsn ELSE restart_lsn END \
                 FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ),
        )
    };
    for slot in [LOGICAL, PHYSICAL] {
        let target = position(&leader, slot).unwrap();
        for r in &reps {
            c.wait(&format!("{r}'s copy of {slot} at {target} during the outage"), Duration::from_secs(30), || {
                let at = position(r, slot)?;
                let reached = c.psql(r, &format!("SELECT '{at}'::pg_lsn >= '{target}'::pg_lsn"))?;
                if reached == "t" {
                    Ok(Some(()))
                } else {
                    Err(format!("copy at {at}"))
                }
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
        }
    }
    // A replica notices the outage when its own store calls time out (up to retry_timeout into it).
    for r in &reps {
        c.wait(&format!("{r} pauses logical copies during the outage"), Duration::from_secs(60), || {
            let v = slots_api(&c, r)?;
            if v["copies_paused"] == json!(true) {
                Ok(Some(()))
            } else {
                Err(format!("/slots: {v}"))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    }
    assert!(c.writable(&leader), "{leader} must still accept writes in failsafe mode");

    c.etcd_resume();
    c.wait(&format!("{leader} holds the leader key again"), FAILOVER, || {
        let l = c.view()?.leader.map(|l| l.name);
        Ok((l.as_deref() == Some(leader.as_str()) && c.writable(&leader)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    for r in &reps {
        c.wait(&format!("{r} resumes logical copies"), Duration::from_secs(60), || {
            let v = slots_api(&c, r)?;
            Ok((v["copies_paused"] == json!(false)).then_some(()))
        })
        .unwrap();
    }
}
