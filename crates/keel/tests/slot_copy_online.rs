//! Copies of permanent logical slots made without restarting the replica (PostgreSQL 16+: created on the
//! standby, `keel_core::slots::online_copy`), file copies on 15, and consumers ahead of the next primary, with a
//! real etcd, three real agents and real PostgreSQL (15 by default, `KEEL_TEST_PG_VERSION=16|17|18`; on 17+ the
//! tests set `failover_slots: copy`, as native sync is another suite's).
//!
//! The slot `cdc_app` (pgoutput, publication `app_pub`) lives in database `app`. A writer acknowledges
//! sequential ids and a `pg_recvlogical` consumer follows the slot; after a kill -9 failover and a switchover no
//! acknowledged id the new primary has is missing from the consumer's output. Ids delivered again and phantoms
//! (decoded ids the new primary lacks) are counted and printed: copy mode cannot prevent phantoms.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel::cluster_runner::pg_version_from_env;
use keel_testkit::{KeelCluster, KeelOptions};
use serde_json::{json, Value};

mod slotkit;
use slotkit::cdc::{check_continuity, table_ids, Consumer, Writer, TABLE};
use slotkit::cluster::{
    make_cascade, promotion_check, replicas, serial, slots_api, up, wait_new_leader, wait_slot, wait_streaming_from,
};
use slotkit::{decoded_ids, Plugin, Stream};

const UP: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(90);
const SLOTS: Duration = Duration::from_secs(120);
const SLOT: &str = "cdc_app";

fn stream() -> Stream {
    Stream { slot: SLOT.into(), database: "app".into(), plugin: Plugin::PgOutput { publication: "app_pub".into() } }
}

fn major() -> u32 {
    pg_version_from_env()
}

/// The slot in `bootstrap.dcs`, before its database exists; copy mode on 17+.
fn options() -> KeelOptions {
    let mode = if major() >= 17 { "    failover_slots: copy\n" } else { "" };
    KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        logical: true,
        extra_dcs_yaml: format!(
            "{mode}    slots:\n      {SLOT}:\n        type: logical\n        database: app\n        plugin: pgoutput\n"
        ),
        ..KeelOptions::default()
    }
}

fn create_database(c: &KeelCluster, node: &str) {
    c.psql(node, "CREATE DATABASE app").unwrap_or_else(|e| panic!("{e}"));
    c.psql_db(node, "app", &format!("CREATE TABLE {TABLE} (id int primary key)")).unwrap_or_else(|e| panic!("{e}"));
    c.psql_db(node, "app", &format!("CREATE PUBLICATION app_pub FOR TABLE {TABLE}")).unwrap_or_else(|e| panic!("{e}"));
}

/// The postmaster's pid and start time: both unchanged means PostgreSQL did not restart.
fn postmaster(c: &KeelCluster, node: &str) -> Result<String, String> {
    c.psql(node, "SELECT pg_postmaster_start_time()").map(|t| format!("{t} pid {:?}", c.postmaster_pid(node)))
}

/// Waits until `node` reports the slot Ready in `/slots` and in its member key.
fn wait_ready(c: &KeelCluster, node: &str, deadline: Duration) {
    c.wait(&format!("{SLOT} ready on {node}"), deadline, || {
        let v = slots_api(c, node)?;
        let entry = v["slots"].as_array().and_then(|a| a.iter().find(|s| s["name"] == SLOT).cloned());
        let member = c.view()?.members.get(node).and_then(|m| m.data.pointer("/keel_slots/ready").cloned());
        match entry {
            Some(e) if e["readiness"] == "Ready" && member == Some(json!(true)) => Ok(Some(())),
            other => Err(format!("{other:?}; member key ready {member:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
}

/// Whether `node`'s agent log says it created the copy on the standby (and never copied a file).
fn made_online(c: &KeelCluster, node: &str) -> (bool, bool) {
    let log = std::fs::read_to_string(&c.node(node).log_path).unwrap_or_default();
    (log.contains(&format!("created logical slot {SLOT} on this standby")), log.contains("PostgreSQL restarts once"))
}

/// Asserts how each replica got its copy: created without a restart on 16+, by file on 15.
fn assert_technique(c: &KeelCluster, reps: &[String], before: &[String]) {
    for (r, start) in reps.iter().zip(before) {
        let (online, by_file) = made_online(c, r);
        if major() >= 16 {
            assert!(online && !by_file, "{r}: expected a copy created on the standby\n{}", c.logs(40));
            assert_eq!(&postmaster(c, r).unwrap(), start, "{r}'s PostgreSQL restarted for its copy");
        } else {
            assert!(by_file, "{r}: expected a file copy on {}\n{}", major(), c.logs(40));
        }
    }
}

/// `keel_slot_consumer_ahead_bytes` and `..._sent_beyond` of the slot against `member` on the leader.
fn ahead(c: &KeelCluster, leader: &str, member: &str) -> Result<(Option<u64>, bool), String> {
    let v = slots_api(c, leader)?;
    let list = v["consumers_ahead"].as_array().cloned().unwrap_or_default();
    let e = list
        .iter()
        .find(|a| a["slot"] == SLOT && a["member"] == member)
        .ok_or_else(|| format!("no consumers_ahead entry for {member}: {v}"))?;
    Ok((e["bytes"].as_u64(), e["sent_beyond"] == json!(true)))
}

fn metric(c: &KeelCluster, leader: &str, member: &str) -> Option<u64> {
    let out = c.http_get(leader, "/metrics").ok()?;
    let text = match out.1 {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let prefix = "keel_slot_consumer_ahead_bytes{";
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(&format!("slot=\"{SLOT}\"")))
        .find(|l| l.contains(&format!("member=\"{member}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Ids decoded from `files` that `node`'s table lacks.
fn phantoms(c: &KeelCluster, node: &str, files: &[PathBuf]) -> usize {
    let on_node = table_ids(c, node, "app");
    let seen: BTreeSet<i32> = decoded_ids(files, &stream().plugin, TABLE).keys().copied().collect();
    seen.difference(&on_node).count()
}

#[test]
fn copies_without_restart_follow_a_consumer_across_failover_and_switchover() {
    let _serial = serial();
    let (mut c, first) = up(options(), UP);
    let reps = replicas(&c, &first);
    let before: Vec<String> = reps.iter().map(|r| postmaster(&c, r).unwrap()).collect();
    create_database(&c, &first);
    for n in c.names() {
        wait_slot(&c, &n, SLOT, true, SLOTS);
    }
    let dir = c.dir();
    let stream = stream();
    let mut files = vec![dir.join("app1.out")];
    let mut consumer = Consumer::start(&c, &first, &stream, &files[0]);
    let mut writer = Writer::start(&c, &first, "app");
    let t0 = Instant::now();
    for r in &reps {
        wait_ready(&c, r, SLOTS);
    }
    eprintln!("copies ready on {reps:?} {:.1}s after the consumer started", t0.elapsed().as_secs_f64());
    assert_technique(&c, &reps, &before);

    // Every candidate is measured; a stopped one falls behind while the consumer goes on.
    for r in &reps {
        let (bytes, _) = ahead(&c, &first, r).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("consumer ahead of {r}: {bytes:?} bytes while it streams");
    }
    let stopped = reps[1].clone();
    c.kill9(&stopped);
    let seen = c
        .wait(&format!("consumer ahead of the stopped {stopped}"), Duration::from_secs(15), || {
            let (bytes, beyond) = ahead(&c, &first, &stopped)?;
            match (bytes, metric(&c, &first, &stopped)) {
                (Some(b), Some(m)) if b > 0 && m > 0 => Ok(Some((b, m, beyond))),
                other => Err(format!("bytes and metric {other:?}")),
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(30)));
    eprintln!("consumer ahead of the stopped {stopped}: {} bytes (metric {}), sent beyond: {}", seen.0, seen.1, seen.2);
    c.start_agent(&stopped).unwrap();
    wait_streaming_from(&c, &first, &stopped, UP);
    wait_ready(&c, &stopped, SLOTS);
    writer.wait_more(&c, 20);

    // kill -9 of the primary: a consumer on the new primary misses nothing acknowledged that survived.
    c.kill9(&first);
    let second = wait_new_leader(&c, &first, FAILOVER);
    let check = promotion_check(&c, &second, SLOT);
    eprintln!("failover: promotion check on {second}: {check}");
    assert_ne!(check["verdict"], "missing", "{second} must have a copy: {check}");
    consumer.stop();
    writer.point_at(&c, &second);
    files.push(dir.join("app2.out"));
    consumer = Consumer::start(&c, &second, &stream, &files[1]);
    writer.wait_more(&c, 50);
    eprintln!("failover: {} phantom ids (decoded, not on {second})", phantoms(&c, &second, &files[..1]));

    // The old primary rejoins; once every replica's copy is ready, switch over.
    c.start_agent(&first).unwrap();
    wait_streaming_from(&c, &second, &first, UP);
    let reps = replicas(&c, &second);
    for r in &reps {
        wait_ready(&c, r, SLOTS);
    }
    let target = reps.iter().find(|n| **n != first).unwrap().clone();
    writer.wait_more(&c, 20);
    let out = c.ctl(&second, &["switchover", "--candidate", &target, "--force"]);
    assert!(out.status.success(), "keel switchover: {}", String::from_utf8_lossy(&out.stderr));
    let third = wait_new_leader(&c, &second, FAILOVER);
    assert_eq!(third, target);
    eprintln!("switchover: promotion check on {third}: {}", promotion_check(&c, &third, SLOT));
    consumer.stop();
    writer.point_at(&c, &third);
    files.push(dir.join("app3.out"));
    consumer = Consumer::start(&c, &third, &stream, &files[2]);
    writer.wait_more(&c, 50);
    let acked = writer.stop();
    check_continuity(&c, &third, &stream, &acked, &files, "kill -9 failover then switchover");
    eprintln!("{} phantom ids over the run (decoded, not on {third})", phantoms(&c, &third, &files));
    consumer.stop();
}

/// A cascading replica (`replicatefrom`) gets a ready copy too, without a restart on 16+.
#[test]
fn cascading_replica_keeps_ready_copies() {
    let _serial = serial();
    let (mut c, leader) = up(options(), UP);
    let reps = replicas(&c, &leader);
    let (upstream, cascade) = (reps[0].clone(), reps[1].clone());
    make_cascade(&mut c, &cascade, &upstream, FAILOVER);
    let before: Vec<String> = [&upstream, &cascade].iter().map(|r| postmaster(&c, r).unwrap()).collect();

    create_database(&c, &leader);
    for n in c.names() {
        wait_slot(&c, &n, SLOT, true, SLOTS);
    }
    let out = c.dir().join("cascade.out");
    let _consumer = Consumer::start(&c, &leader, &stream(), &out);
    let writer = Writer::start(&c, &leader, "app");
    for r in [&upstream, &cascade] {
        wait_ready(&c, r, SLOTS);
    }
    assert_technique(&c, &[upstream.clone(), cascade.clone()], &before);
    writer.wait_more(&c, 20);
    // Still ready while the consumer moves on.
    wait_ready(&c, &cascade, Duration::from_secs(30));
    let (bytes, _) = ahead(&c, &leader, &cascade).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("consumer ahead of the cascading {cascade} (its published position): {bytes:?} bytes");
}
