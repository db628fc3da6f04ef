//! Permanent logical slots in application databases, the usual CDC setup: a real etcd, three real agents and
//! real PostgreSQL (15 by default, `KEEL_TEST_PG_VERSION=16|17|18` for another major).
//!
//! `cdc_app` (pgoutput, publication `app_pub`) in database `app` is declared in `bootstrap.dcs`, before its
//! database exists; `cdc_shop` (test_decoding; pgoutput with `shop_pub` where the build has no test_decoding, as
//! 16) in database `shop` is added with `keel edit-config` once the database exists. Under a writer and a consumer
//! per database, every replica's copies must follow the primary's confirmed positions within [`FOLLOW_LAG`],
//! become ready, and never cost a replica another restart; after a kill -9 of the primary, a consumer restarted on
//! the new primary on each slot gets every acknowledged change the new primary has.
//!
//! PostgreSQL 16 and older refuse `pg_replication_slot_advance` on a slot of another database than the session's
//! (SQLSTATE 55000): a follower that advances every copy over a connection to `postgres` fails this test there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel::cluster_runner::{pg_bin_dir, pg_version_from_env};
use keel_core::lsn::Lsn;
use keel_testkit::{KeelCluster, KeelOptions};
use serde_json::json;

mod slotkit;
use slotkit::cdc::{check_continuity, Consumer, Writer, TABLE};
use slotkit::cluster::{promotion_check, replicas, serial, slots_api, up, wait_new_leader, wait_slot};
use slotkit::{Plugin, Stream};

const UP: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(90);
/// Slot creation on the primary and copies on replicas (a copy costs a replica restart), and readiness.
const SLOTS: Duration = Duration::from_secs(90);
/// How long the copies are watched under load.
const LOAD: Duration = Duration::from_secs(30);
/// How far behind the primary's confirmed position a copy may fall, in time.
const FOLLOW_LAG: Duration = Duration::from_secs(5);

/// The two CDC streams: `app` with pgoutput, `shop` with a text plugin where the build has one.
fn streams() -> [Stream; 2] {
    let bin_dir = pg_bin_dir(pg_version_from_env());
    [
        Stream {
            slot: "cdc_app".into(),
            database: "app".into(),
            plugin: Plugin::PgOutput { publication: "app_pub".into() },
        },
        Stream {
            slot: "cdc_shop".into(),
            database: "shop".into(),
            plugin: Plugin::text_or_pgoutput(&bin_dir, "shop_pub"),
        },
    ]
}

/// `slots:` at the `bootstrap.dcs` level, declaring `s`.
fn bootstrap_yaml(s: &Stream) -> String {
    format!(
        "    slots:\n      {}:\n        type: logical\n        database: {}\n        plugin: {}\n",
        s.slot,
        s.database,
        s.plugin.name()
    )
}

/// The database, its `acked` table and, for pgoutput, the publication, as an application owner would.
fn create_database(c: &KeelCluster, node: &str, s: &Stream) {
    let db = &s.database;
    c.psql(node, &format!("CREATE DATABASE {db}")).unwrap_or_else(|e| panic!("{e}"));
    c.psql_db(node, db, &format!("CREATE TABLE {TABLE} (id int primary key)")).unwrap_or_else(|e| panic!("{e}"));
    if let Some(sql) = s.plugin.publication_sql(&format!("TABLE {TABLE}")) {
        c.psql_db(node, db, &sql).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Adds `s` to the dynamic configuration's `slots` with `keel edit-config`.
fn declare_with_edit_config(c: &KeelCluster, node: &str, s: &Stream) {
    let set = |key: &str, value: &str| format!("slots.{}.{key}={value}", s.slot);
    let (t, d, p) = (set("type", "logical"), set("database", &s.database), set("plugin", s.plugin.name()));
    let out = c.ctl(node, &["edit-config", "--force", "--quiet", "-s", &t, "-s", &d, "-s", &p]);
    assert!(
        out.status.success(),
        "keel edit-config: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The confirmed_flush_lsn of each of `slots` on `node`; an error if one is missing or has none.
fn positions(c: &KeelCluster, node: &str, slots: &[&str]) -> Result<BTreeMap<String, Lsn>, String> {
    let list = slots.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
    let out = c.psql(
        node,
        &format!("SELECT slot_name, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name IN ({list})"),
    )?;
    let mut found = BTreeMap::new();
    for line in out.lines() {
        if let Some((name, lsn)) = line.split_once('|') {
            found.insert(name.to_string(), lsn.parse::<Lsn>().map_err(|e| format!("{node}: {name} at {lsn:?}: {e}"))?);
        }
    }
    match slots.iter().find(|s| !found.contains_key(**s)) {
        Some(missing) => Err(format!("{node}: no confirmed position for {missing} ({out:?})")),
        None => Ok(found),
    }
}

fn postmaster_start(c: &KeelCluster, node: &str) -> Result<String, String> {
    c.psql(node, "SELECT pg_postmaster_start_time()")
}

/// Waits until `node` reports each of `slots` Ready in `GET /slots`, and ready as a whole there and in its member
/// key. Fails with the stages, the follower's last errors and every postmaster start time seen meanwhile.
fn wait_ready(c: &KeelCluster, node: &str, slots: &[&str], deadline: Duration) {
    let mut starts = BTreeSet::new();
    c.wait(&format!("{slots:?} ready on {node}"), deadline, || {
        if let Ok(t) = postmaster_start(c, node) {
            starts.insert(t);
        }
        let v = slots_api(c, node)?;
        let listed = v["slots"].as_array().cloned().unwrap_or_default();
        let entry = |name: &str| listed.iter().find(|s| s["name"] == name).cloned().unwrap_or_default();
        let stages: Vec<String> = slots
            .iter()
            .map(|s| {
                let e = entry(s);
                format!("{s}: {} (last error: {})", e["readiness"], e["last_error"])
            })
            .collect();
        let member_ready = c.view()?.members.get(node).and_then(|m| m.data.pointer("/keel_slots/ready").cloned());
        let all = slots.iter().all(|s| entry(s)["readiness"] == "Ready");
        if all && v["ready"] == json!(true) && member_ready == Some(json!(true)) {
            return Ok(Some(()));
        }
        Err(format!(
            "{}; ready {}, member key ready {member_ready:?}; postmaster start times seen: {starts:?}",
            stages.join("; "),
            v["ready"]
        ))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
}

/// For `period`: each time the primary has confirmed more on every slot, how long until every replica's copies
/// reach those positions. Fails when that takes longer than [`FOLLOW_LAG`].
fn follow_under_load(c: &KeelCluster, primary: &str, reps: &[String], slots: &[&str], period: Duration) -> Vec<f64> {
    let mut last = positions(c, primary, slots).unwrap_or_else(|e| panic!("{e}"));
    let mut lags = Vec::new();
    let start = Instant::now();
    while start.elapsed() < period {
        // The consumers confirm about once a second (pg_recvlogical -s 1).
        let target = c
            .wait(&format!("the primary's slots moving past {last:?}"), Duration::from_secs(30), || {
                let now = positions(c, primary, slots)?;
                if now.iter().all(|(s, l)| last.get(s).is_some_and(|before| l > before)) {
                    Ok(Some(now))
                } else {
                    Err(format!("primary at {now:?}"))
                }
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(30)));
        let t = Instant::now();
        for r in reps {
            c.wait(&format!("{r}'s copies at the primary's {target:?}"), FOLLOW_LAG, || {
                let copies = positions(c, r, slots)?;
                if target.iter().all(|(s, l)| copies.get(s).is_some_and(|at| at >= l)) {
                    Ok(Some(()))
                } else {
                    Err(format!("copies at {copies:?}; /slots: {}", slots_api(c, r).unwrap_or_default()))
                }
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
        }
        lags.push(t.elapsed().as_secs_f64());
        last = target;
    }
    lags
}

#[test]
fn logical_slots_in_application_databases_follow_and_survive_failover() {
    let _serial = serial();
    let streams = streams();
    let names: Vec<&str> = streams.iter().map(|s| s.slot.as_str()).collect();
    let opts = KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        logical: true,
        extra_dcs_yaml: bootstrap_yaml(&streams[0]),
        ..KeelOptions::default()
    };
    let (mut c, first) = up(opts, UP);
    let t0 = Instant::now();
    for s in &streams {
        create_database(&c, &first, s);
    }
    declare_with_edit_config(&c, &first, &streams[1]);
    for s in &streams {
        for n in c.names() {
            wait_slot(&c, &n, &s.slot, true, SLOTS);
            let sql = format!("SELECT database, plugin FROM pg_replication_slots WHERE slot_name = '{}'", s.slot);
            assert_eq!(c.psql(&n, &sql).unwrap(), format!("{}|{}", s.database, s.plugin.name()), "{n}");
        }
    }
    eprintln!("both slots on every node {:.1}s after the databases", t0.elapsed().as_secs_f64());

    // A consumer and a writer per database on the primary; the copies become ready.
    let dir = c.dir();
    let out = |s: &Stream, i: usize| -> PathBuf { dir.join(format!("{}{i}.out", s.database)) };
    let mut files: Vec<Vec<PathBuf>> = streams.iter().map(|s| vec![out(s, 1)]).collect();
    let mut consumers: Vec<Consumer> =
        streams.iter().zip(&files).map(|(s, f)| Consumer::start(&c, &first, s, &f[0])).collect();
    let mut writers: Vec<Writer> = streams.iter().map(|s| Writer::start(&c, &first, &s.database)).collect();
    let reps = replicas(&c, &first);
    let t1 = Instant::now();
    for r in &reps {
        wait_ready(&c, r, &names, SLOTS);
    }
    eprintln!("copies ready on {reps:?} {:.1}s after the consumers started", t1.elapsed().as_secs_f64());

    // Under load, the copies follow and no replica restarts.
    let started: Vec<String> = reps.iter().map(|r| postmaster_start(&c, r).unwrap()).collect();
    let mut lags = follow_under_load(&c, &first, &reps, &names, LOAD);
    lags.sort_by(f64::total_cmp);
    eprintln!(
        "{} samples over {LOAD:?}: copies caught up in median {:.2}s, max {:.2}s (limit {FOLLOW_LAG:?})",
        lags.len(),
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    for (r, before) in reps.iter().zip(&started) {
        assert_eq!(&postmaster_start(&c, r).unwrap(), before, "{r}'s postmaster restarted under load");
        wait_ready(&c, r, &names, Duration::from_secs(10));
    }
    for w in &writers {
        eprintln!("{} writes acknowledged before the failover", w.count());
    }

    // kill -9 of the primary; a consumer per slot on the new primary misses nothing acknowledged that survived.
    c.kill9(&first);
    let second = wait_new_leader(&c, &first, FAILOVER);
    for (i, s) in streams.iter().enumerate() {
        let check = promotion_check(&c, &second, &s.slot);
        eprintln!("failover: promotion check of {} on {second}: {check}", s.slot);
        assert_ne!(check["verdict"], "missing", "{second} must have a copy of {}: {check}", s.slot);
        consumers[i].stop();
        files[i].push(out(s, 2));
        consumers[i] = Consumer::start(&c, &second, s, &files[i][1]);
        writers[i].point_at(&c, &second);
    }
    for w in &writers {
        w.wait_more(&c, 50);
    }
    for (i, s) in streams.iter().enumerate() {
        let acked = writers[i].stop();
        check_continuity(&c, &second, s, &acked, &files[i], &format!("{} after kill -9 of {first}", s.slot));
        consumers[i].stop();
    }
}
