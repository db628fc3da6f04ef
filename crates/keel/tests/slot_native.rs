//! Native failover slots on PostgreSQL 17 and 18 (`KEEL_TEST_PG_VERSION=17|18`; on older majors the test only
//! says it does not apply): a real etcd, three real agents and real PostgreSQL.
//!
//! A permanent logical slot `cdc_app` in database `app` is created with `failover = true`; the standbys get
//! `sync_replication_slots = on` and the slotsync worker's copies become ready without a single restart. The
//! primary keeps `synchronized_standby_slots` equal to the streaming candidates: a standby stopped during the run
//! leaves it within [`LEAVE`] and decoding goes on; it comes back once it streams again. After a kill -9 failover
//! and a switchover, a consumer restarted on the new primary gets every acknowledged change the new primary has,
//! and no consumer ever received a change the new primary lacks (zero phantoms).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel::cluster_runner::{pg_bin_dir, pg_version_from_env};
use keel_testkit::{KeelCluster, KeelOptions};
use serde_json::{json, Value};

mod slotkit;
use slotkit::cdc::{check_continuity, table_ids, Consumer, Writer, TABLE};
use slotkit::cluster::{make_cascade, replicas, serial, slots_api, up, wait_new_leader, wait_streaming_from};
use slotkit::{decoded_ids, Plugin, Stream};

const UP: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(90);
const SLOTS: Duration = Duration::from_secs(90);
/// How soon a stopped standby must leave `synchronized_standby_slots` (the check runs every 500 ms; the rest is
/// slack for two shared cores).
const LEAVE: Duration = Duration::from_secs(5);

/// Whether this run's PostgreSQL has native failover slots (17+); says so when it has not.
fn native_major() -> bool {
    let major = pg_version_from_env();
    let native = major >= keel_core::slots::NATIVE_SLOT_SYNC_MAJOR;
    if !native {
        eprintln!("native failover slots need PostgreSQL 17 or newer; this run uses {major}: nothing to test");
    }
    native
}

fn stream() -> Stream {
    let bin_dir = pg_bin_dir(pg_version_from_env());
    Stream { slot: "cdc_app".into(), database: "app".into(), plugin: Plugin::text_or_pgoutput(&bin_dir, "app_pub") }
}

fn options(s: &Stream) -> KeelOptions {
    KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        logical: true,
        extra_dcs_yaml: format!(
            "    slots:\n      {}:\n        type: logical\n        database: {}\n        plugin: {}\n",
            s.slot,
            s.database,
            s.plugin.name()
        ),
        ..KeelOptions::default()
    }
}

fn create_database(c: &KeelCluster, node: &str, s: &Stream) {
    let db = &s.database;
    c.psql(node, &format!("CREATE DATABASE {db}")).unwrap_or_else(|e| panic!("{e}"));
    c.psql_db(node, db, &format!("CREATE TABLE {TABLE} (id int primary key)")).unwrap_or_else(|e| panic!("{e}"));
    if let Some(sql) = s.plugin.publication_sql(&format!("TABLE {TABLE}")) {
        c.psql_db(node, db, &sql).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn slot_flags(c: &KeelCluster, node: &str, slot: &str) -> Result<String, String> {
    c.psql(node, &format!("SELECT failover, synced, temporary FROM pg_replication_slots WHERE slot_name = '{slot}'"))
}

fn postmaster_start(c: &KeelCluster, node: &str) -> String {
    c.psql(node, "SELECT pg_postmaster_start_time()").unwrap_or_else(|e| panic!("{e}"))
}

fn standby_slots_setting(c: &KeelCluster, node: &str) -> Result<BTreeSet<String>, String> {
    let v = c.psql(node, "SHOW synchronized_standby_slots")?;
    Ok(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

/// Waits until the primary's `synchronized_standby_slots` holds exactly `members`' slots; returns how long it took.
fn wait_standby_slots(c: &KeelCluster, primary: &str, members: &[&str], deadline: Duration) -> Duration {
    let want: BTreeSet<String> = members.iter().map(|m| keel_core::slots::slot_name_from_member_name(m)).collect();
    let t = Instant::now();
    c.wait(&format!("synchronized_standby_slots on {primary} = {want:?}"), deadline, || {
        let have = standby_slots_setting(c, primary)?;
        if have == want {
            Ok(Some(()))
        } else {
            let api = slots_api(c, primary).map(|v| v.pointer("/native/synchronized_standby_slots").cloned());
            Err(format!("{have:?}; /slots: {api:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    t.elapsed()
}

/// Waits until each of `nodes` has a persistent synced copy of `slot` and reports it ready (`GET /slots` native
/// readiness and the member key's `keel_slots`).
fn wait_synced_ready(c: &KeelCluster, nodes: &[String], slot: &str) {
    for n in nodes {
        c.wait(&format!("{slot} synced and ready on {n}"), SLOTS, || {
            let flags = slot_flags(c, n, slot)?;
            let v = slots_api(c, n)?;
            let ready = v
                .pointer("/native/readiness")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|r| r["slot"] == slot && r["ready"] == json!(true)));
            let member = c.view()?.members.get(n.as_str()).and_then(|m| m.data.pointer("/keel_slots/ready").cloned());
            if flags == "t|t|f" && ready && member == Some(json!(true)) && v["failover_slots_mode"] == "native" {
                Ok(Some(()))
            } else {
                Err(format!("flags {flags:?}, member key {member:?}, /slots native: {}", v["native"]))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    }
}

/// Zero phantoms: every id the consumers received is in `primary`'s table.
fn assert_no_phantoms(c: &KeelCluster, primary: &str, s: &Stream, files: &[PathBuf], what: &str) {
    let on_primary = table_ids(c, primary, &s.database);
    let received = decoded_ids(files, &s.plugin, TABLE);
    let phantoms: Vec<i32> = received.keys().copied().filter(|i| !on_primary.contains(i)).collect();
    eprintln!("{what}: {} ids received, {} phantoms", received.len(), phantoms.len());
    assert!(phantoms.is_empty(), "{what}: consumers received ids {primary} lacks: {phantoms:?}");
}

fn switchover(c: &KeelCluster, leader: &str, target: &str) {
    let out = c.ctl(leader, &["switchover", "--candidate", target, "--force"]);
    assert!(
        out.status.success(),
        "keel switchover: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn native_failover_slots_survive_failover_and_switchover_without_restarts() {
    if !native_major() {
        return;
    }
    let _serial = serial();
    let s = stream();
    let (mut c, first) = up(options(&s), UP);
    create_database(&c, &first, &s);
    let reps = replicas(&c, &first);
    c.wait(&format!("{} created with failover on {first}", s.slot), SLOTS, || {
        Ok((slot_flags(&c, &first, &s.slot)? == "t|f|f").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    // A logical slot made by hand without failover, then declared permanent: Keel switches it to failover.
    c.psql_db(
        &first,
        &s.database,
        &format!("SELECT pg_create_logical_replication_slot('legacy', '{}')", s.plugin.name()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let set = |k: &str, v: &str| format!("slots.legacy.{k}={v}");
    let (t, d, p) = (set("type", "logical"), set("database", &s.database), set("plugin", s.plugin.name()));
    let out = c.ctl(&first, &["edit-config", "--force", "--quiet", "-s", &t, "-s", &d, "-s", &p]);
    assert!(out.status.success(), "keel edit-config: {}", String::from_utf8_lossy(&out.stderr));
    c.wait("the hand-made slot switched to failover", SLOTS, || {
        Ok((slot_flags(&c, &first, "legacy")? == "t|f|f").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    // Nobody consumes it: PostgreSQL would keep its synced copies temporary (never sync-ready). Retire it.
    let out = c.ctl(&first, &["edit-config", "--force", "--quiet", "-s", "slots.legacy=null"]);
    assert!(out.status.success(), "keel edit-config: {}", String::from_utf8_lossy(&out.stderr));
    c.wait("the hand-made slot dropped", SLOTS, || {
        Ok(c.psql(&first, "SELECT pg_drop_replication_slot('legacy')").is_ok().then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    for r in &reps {
        assert_eq!(c.psql(r, "SHOW sync_replication_slots").unwrap(), "on", "{r}");
        assert_eq!(c.psql(r, "SHOW hot_standby_feedback").unwrap(), "on", "{r}");
    }

    let dir = c.dir();
    let mut files = vec![dir.join("consumer1.out")];
    let mut consumer = Consumer::start(&c, &first, &s, &files[0]);
    let mut writer = Writer::start(&c, &first, &s.database);
    writer.wait_more(&c, 50);
    let started: Vec<String> = reps.iter().map(|r| postmaster_start(&c, r)).collect();
    let t0 = Instant::now();
    wait_synced_ready(&c, &reps, &s.slot);
    eprintln!("synced copies ready on {reps:?} {:.1}s after the consumer started", t0.elapsed().as_secs_f64());
    let both: Vec<&str> = reps.iter().map(String::as_str).collect();
    wait_standby_slots(&c, &first, &both, SLOTS);

    // A standby stops: it leaves the list at once and decoding goes on without it.
    let (stopped, kept) = (reps[0].clone(), reps[1].clone());
    assert!(c.stop_agent(&stopped, Duration::from_secs(60)), "{stopped}'s agent did not stop cleanly");
    let t1 = Instant::now();
    c.wait(&format!("{stopped}'s PostgreSQL stopped"), Duration::from_secs(60), || {
        Ok(c.postmaster_pid(&stopped).is_none().then_some(()))
    })
    .unwrap();
    let took = wait_standby_slots(&c, &first, &[kept.as_str()], LEAVE);
    eprintln!("{stopped} left synchronized_standby_slots {:.1}s after its agent stopped", t1.elapsed().as_secs_f64());
    assert!(took <= LEAVE);
    let before = decoded_ids(&files, &s.plugin, TABLE).len();
    writer.wait_more(&c, 30);
    c.wait("decoding goes on while a standby is stopped", Duration::from_secs(15), || {
        let now = decoded_ids(&files, &s.plugin, TABLE).len();
        if now >= before + 20 {
            Ok(Some(()))
        } else {
            Err(format!("{now} ids decoded, {before} before the standby stopped"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    c.start_agent(&stopped).unwrap();
    wait_streaming_from(&c, &first, &stopped, UP);
    wait_standby_slots(&c, &first, &both, SLOTS);
    wait_synced_ready(&c, &reps, &s.slot);
    assert_eq!(postmaster_start(&c, &kept), started[1], "{kept} restarted in native mode");

    // kill -9 of the primary: the consumer resumes on the new primary, nothing lost, no phantoms.
    writer.wait_more(&c, 30);
    c.kill9(&first);
    let second = wait_new_leader(&c, &first, FAILOVER);
    consumer.stop();
    assert_no_phantoms(&c, &second, &s, &files, &format!("kill -9 of {first}"));
    writer.point_at(&c, &second);
    files.push(dir.join("consumer2.out"));
    consumer = Consumer::start(&c, &second, &s, &files[1]);
    writer.wait_more(&c, 50);
    let survivor = reps.iter().find(|r| **r != second).unwrap().clone();
    let survivor_start = postmaster_start(&c, &survivor);

    // The old primary rejoins: its own slot (synced = false) is dropped and synchronised again.
    c.start_agent(&first).unwrap();
    wait_streaming_from(&c, &second, &first, UP);
    let now_reps = replicas(&c, &second);
    wait_synced_ready(&c, &now_reps, &s.slot);
    let names: Vec<&str> = now_reps.iter().map(String::as_str).collect();
    wait_standby_slots(&c, &second, &names, SLOTS);
    c.wait("member keys up to date", Duration::from_secs(30), || {
        c.members_settled().map(|ok| ok.then_some(())).map_err(|e| e.to_string())
    })
    .unwrap();
    assert_eq!(postmaster_start(&c, &survivor), survivor_start, "{survivor} restarted in native mode");

    // Switchover to the replica that stayed one throughout.
    writer.wait_more(&c, 20);
    switchover(&c, &second, &survivor);
    let third = wait_new_leader(&c, &second, FAILOVER);
    assert_eq!(third, survivor);
    consumer.stop();
    assert_no_phantoms(&c, &third, &s, &files, "switchover");
    c.wait(&format!("synchronized_standby_slots reset on the demoted {second}"), SLOTS, || {
        Ok(standby_slots_setting(&c, &second)?.is_empty().then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    writer.point_at(&c, &third);
    files.push(dir.join("consumer3.out"));
    consumer = Consumer::start(&c, &third, &s, &files[2]);
    writer.wait_more(&c, 50);
    let acked = writer.stop();
    check_continuity(&c, &third, &s, &acked, &files, "native: kill -9 failover then switchover");
    consumer.stop();
    assert_no_phantoms(&c, &third, &s, &files, "end of run");
    let reps_end = replicas(&c, &third);
    wait_synced_ready(&c, &reps_end, &s.slot);
}

/// A standby cascading from another standby (`replicatefrom`) gets no synced slots (PostgreSQL 17 and 18 sync
/// only from the primary): Keel keeps its copy as in copy mode, made on the standby without a restart and
/// advanced by the follower, and it becomes ready, while its upstream keeps PostgreSQL's synced copy.
#[test]
fn a_cascading_standby_keeps_a_ready_copy_in_native_mode() {
    if !native_major() {
        return;
    }
    let _serial = serial();
    let s = stream();
    let (mut c, leader) = up(options(&s), UP);
    let reps = replicas(&c, &leader);
    let (upstream, cascade) = (reps[0].clone(), reps[1].clone());
    make_cascade(&mut c, &cascade, &upstream, FAILOVER);
    let started = postmaster_start(&c, &cascade);

    create_database(&c, &leader, &s);
    c.wait(&format!("{} created with failover on {leader}", s.slot), SLOTS, || {
        Ok((slot_flags(&c, &leader, &s.slot)? == "t|f|f").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    let file = c.dir().join("cascade.out");
    let mut consumer = Consumer::start(&c, &leader, &s, &file);
    let mut writer = Writer::start(&c, &leader, &s.database);
    writer.wait_more(&c, 30);
    wait_synced_ready(&c, std::slice::from_ref(&upstream), &s.slot);
    c.wait(&format!("a ready copy of {} on the cascading {cascade}", s.slot), SLOTS, || {
        let v = slots_api(&c, &cascade)?;
        let copy = v["slots"].as_array().and_then(|a| a.iter().find(|x| x["name"] == s.slot.as_str()).cloned());
        let readiness = copy.as_ref().map(|x| x["readiness"].clone());
        let flags = slot_flags(&c, &cascade, &s.slot)?;
        let member = c.view()?.members.get(cascade.as_str()).and_then(|m| m.data.pointer("/keel_slots/ready").cloned());
        if v["failover_slots_mode"] == "copy"
            && readiness == Some(json!("Ready"))
            && flags == "f|f|f"
            && member == Some(json!(true))
        {
            Ok(Some(()))
        } else {
            Err(format!(
                "mode {}, readiness {readiness:?}, flags {flags:?}, member key {member:?}",
                v["failover_slots_mode"]
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    assert_eq!(postmaster_start(&c, &cascade), started, "{cascade}'s PostgreSQL was restarted");
    assert_eq!(c.psql(&cascade, "SHOW sync_replication_slots").unwrap(), "off", "{cascade}");
    writer.stop();
    consumer.stop();
}
