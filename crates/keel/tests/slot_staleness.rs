//! Replicas' copies of a permanent logical slot in an application database (`cdc` in `app`, the usual CDC
//! setup), against a real etcd, three agents and PostgreSQL (15 by default, `KEEL_TEST_PG_VERSION=18`):
//!
//! - the copies follow and become ready without PostgreSQL restarting again and again (PostgreSQL 16 and older
//!   refuse to advance another database's slot); a slot whose database does not exist yet is a named error;
//! - a copy that would need WAL the replica does not have is not made, its reason is shown, and it is made once
//!   the primary's slot has moved on;
//! - an old primary that rejoins does not keep its own slot ahead of the new primary's: a switchover back to it
//!   skips nothing.
//!
//! One cluster at a time (the `SERIAL` lock); every wait is a condition with a generous deadline.

use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use keel::cluster_runner;
use keel_testkit::{KeelCluster, KeelOptions};
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

const UP: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(90);
const SLOTS: Duration = Duration::from_secs(120);
const SLOT: &str = "cdc";
const DB: &str = "app";

const SLOTS_YAML: &str = "    slots:
      cdc:
        type: logical
        database: app
        plugin: test_decoding
";

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts three nodes with the permanent slot `cdc` in database `app` and waits for a writable leader with two
/// streaming replicas whose member keys are settled.
fn up() -> (KeelCluster, String) {
    up_with("")
}

/// As [`up`], with extra `bootstrap.dcs` lines.
fn up_with(extra: &str) -> (KeelCluster, String) {
    let opts = KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        logical: true,
        extra_dcs_yaml: format!("{SLOTS_YAML}{extra}"),
        ..KeelOptions::default()
    };
    let c = KeelCluster::start(3, opts).expect("start etcd and three agents");
    let leader = c
        .wait("a writable leader with two streaming replicas", UP, || {
            match c.wait_replicas_streaming(2, Duration::ZERO) {
                Ok((l, _)) if c.writable(&l) && c.members_settled().unwrap_or(false) => Ok(Some(l)),
                Ok((l, _)) => Err(format!("{l} not writable or member keys not settled")),
                Err(e) => Err(e),
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    (c, leader)
}

fn replicas(c: &KeelCluster, leader: &str) -> Vec<String> {
    c.names().into_iter().filter(|n| n != leader).collect()
}

/// `sql` in database `db` on `node` (psql, unaligned, tuples only), with a minute for the bulk loads.
fn sql(c: &KeelCluster, node: &str, db: &str, sql: &str) -> Result<String, String> {
    cluster_runner::psql_db_timeout(&c.opts.bin_dir, c.node(node).pg_port, db, sql, Duration::from_secs(60))
        .map_err(|e| format!("{node}: {e}"))
}

fn slots_api(c: &KeelCluster, node: &str) -> Result<Value, String> {
    match c.http_get(node, "/slots")? {
        (200, v) => Ok(v),
        (code, v) => Err(format!("GET /slots on {node}: {code} {v}")),
    }
}

/// `cdc`'s entry in `node`'s `/slots`, and the whole document.
fn cdc_entry(c: &KeelCluster, node: &str) -> Result<(Option<Value>, Value), String> {
    let v = slots_api(c, node)?;
    let entry = v["slots"].as_array().and_then(|a| a.iter().find(|s| s["name"] == SLOT)).cloned();
    Ok((entry, v))
}

/// Writes a row and consumes the slot on the primary, so that it moves (its consumers confirm).
fn consume(c: &KeelCluster, primary: &str) {
    let _ = sql(
        c,
        primary,
        DB,
        &format!(
            "INSERT INTO t (v) VALUES ('x'); SELECT count(*) FROM pg_logical_slot_get_changes('{SLOT}', NULL, NULL)"
        ),
    );
}

/// Waits until `node`'s copy of `cdc` is ready (`/slots` and its member key), consuming on `primary` meanwhile.
fn wait_ready(c: &KeelCluster, primary: &str, node: &str, deadline: Duration) {
    c.wait(&format!("{SLOT} ready on {node}"), deadline, || {
        consume(c, primary);
        let (entry, v) = cdc_entry(c, node)?;
        let member_ready =
            c.view()?.members.get(node).is_some_and(|m| m.data.pointer("/keel_slots/ready") == Some(&json!(true)));
        match entry {
            Some(s) if s["readiness"] == "Ready" && member_ready => Ok(Some(())),
            _ => Err(format!("/slots: {v}; member key ready: {member_ready}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
}

fn lsn_le(c: &KeelCluster, node: &str, a: &str, b: &str) -> bool {
    sql(c, node, "postgres", &format!("SELECT '{a}'::pg_lsn <= '{b}'::pg_lsn")).is_ok_and(|r| r == "t")
}

fn slot_position(c: &KeelCluster, node: &str) -> Result<String, String> {
    sql(
        c,
        node,
        "postgres",
        &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
    )
}

/// Section 1: a permanent logical slot outside `postgres` is a named error while its database is missing, then is
/// created, copied, followed and ready on every replica, without PostgreSQL restarting again and again.
#[test]
fn slot_in_application_database_follows_on_replicas() {
    let _serial = serial();
    let (c, leader) = up();
    let reps = replicas(&c, &leader);

    // The database does not exist yet: a named error in the leader's /slots and in `keel slots`.
    c.wait("the leader names the missing database", Duration::from_secs(60), || {
        let v = slots_api(&c, &leader)?;
        let named = v["slot_errors"].as_array().is_some_and(|a| {
            a.iter().any(|e| e["slot"] == SLOT && e["code"] == "database_missing" && e["database"] == DB)
        });
        Ok(named.then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    let out = c.ctl(&leader, &["slots"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("database \"app\" does not exist"), "keel slots:\n{text}");

    sql(&c, &leader, "postgres", "CREATE DATABASE app").unwrap();
    sql(&c, &leader, DB, "CREATE TABLE t (id serial primary key, v text)").unwrap();
    c.wait("cdc created on the leader, error cleared", Duration::from_secs(60), || {
        let (entry, v) = cdc_entry(&c, &leader)?;
        let cleared = v["slot_errors"].as_array().is_some_and(Vec::is_empty);
        Ok((entry.is_some_and(|s| s["database"] == DB) && cleared).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));

    let t0 = Instant::now();
    for r in &reps {
        wait_ready(&c, &leader, r, SLOTS);
    }
    eprintln!("copies of {SLOT} in {DB} ready on {reps:?} after {:.1}s", t0.elapsed().as_secs_f64());

    // From now on nothing restarts: the copies just follow.
    let pids: Vec<Option<u32>> = reps.iter().map(|r| c.postmaster_pid(r)).collect();
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        consume(&c, &leader);
        thread::sleep(Duration::from_millis(300));
    }
    let target = slot_position(&c, &leader).unwrap();
    for (r, pid) in reps.iter().zip(&pids) {
        c.wait(&format!("{r}'s copy at {target}"), Duration::from_secs(30), || {
            let at = slot_position(&c, r)?;
            Ok(lsn_le(&c, r, &target, &at).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
        assert_eq!(c.postmaster_pid(r), *pid, "{r}'s PostgreSQL restarted while its copy was followed");
        let (entry, v) = cdc_entry(&c, r).unwrap();
        assert_eq!(entry.map(|s| s["readiness"].clone()), Some(json!("Ready")), "{r}: {v}");
    }
}

/// Section 0: a replica re-cloned while the primary's slot still needs older WAL does not make a copy that could
/// never advance (nor restart PostgreSQL for one); it shows why, and copies once the primary's slot moved on.
#[test]
fn copy_needing_missing_wal_is_withheld_with_its_reason_until_the_primary_moves() {
    let _serial = serial();
    let (c, leader) = up();
    sql(&c, &leader, "postgres", "CREATE DATABASE app").unwrap();
    sql(&c, &leader, DB, "CREATE TABLE t (id serial primary key, v text)").unwrap();
    let reps = replicas(&c, &leader);
    let fresh = reps[0].clone();
    c.wait("cdc created on the leader", Duration::from_secs(60), || Ok(cdc_entry(&c, &leader)?.0.map(|_| ())))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));

    // Nobody consumes: the primary's slot keeps needing its old WAL while the primary writes new segments.
    for _ in 0..3 {
        sql(&c, &leader, DB, "INSERT INTO t (v) SELECT 'filler' FROM generate_series(1, 1000)").unwrap();
        sql(&c, &leader, "postgres", "SELECT pg_switch_wal()").unwrap();
    }
    sql(&c, &leader, "postgres", "CHECKPOINT").unwrap();
    let needs = sql(
        &c,
        &leader,
        "postgres",
        &format!("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
    )
    .unwrap();

    // Re-clone one replica: its WAL starts after what the primary's slot needs.
    let old_pm = c.postmaster_pid(&fresh);
    let (code, body) = c.http_post(&fresh, "/reinitialize", &json!({ "force": true })).unwrap();
    assert_eq!(code, 200, "POST /reinitialize on {fresh}: {body}");
    let reason = c
        .wait(&format!("{fresh} re-cloned and reporting why it has no usable copy"), UP, || {
            let pm = c.postmaster_pid(&fresh);
            let v = slots_api(&c, &fresh)?;
            let unready = v["unready"].as_array().and_then(|a| a.iter().find(|u| u["slot"] == SLOT)).cloned();
            match unready {
                Some(u) if pm.is_some() && pm != old_pm && u["code"] == "needs_missing_wal" => Ok(Some(u)),
                _ => Err(format!("postmaster {pm:?}; /slots: {v}")),
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    eprintln!("{fresh}: {reason} (the primary's slot needs {needs})");
    let member_ready = c.view().unwrap().members[&fresh].data.pointer("/keel_slots/ready").cloned();
    assert_eq!(member_ready, Some(json!(false)), "{fresh} must publish unready slots");
    // No restart loop: PostgreSQL stays up while the copy is withheld.
    let pm = c.postmaster_pid(&fresh);
    thread::sleep(Duration::from_secs(10));
    assert_eq!(c.postmaster_pid(&fresh), pm, "{fresh}'s PostgreSQL restarted while no copy could be made");
    let (_, metrics) = cluster_runner::http_request(c.node(&fresh).api_port, "GET", "/metrics", None).unwrap();
    let series = metrics.as_str().unwrap_or_default().lines().find(|l| l.starts_with("keel_slot_unusable{"));
    assert!(
        series.is_some_and(|l| l.contains("slot=\"cdc\"") && l.contains("reason=\"needs_missing_wal\"")),
        "{fresh} /metrics: {series:?}"
    );

    // Consumers move the primary's slot on: the copy is made and becomes ready.
    wait_ready(&c, &leader, &fresh, SLOTS);
}

/// Section 2: consumers confirm changes on the primary that its replicas never receive; the primary dies and
/// rejoins (pg_rewind, which on its own already empties `pg_replslot`); then its copy is pushed ahead of the new
/// primary's slot: it is dropped and copied again, so a switchover back to it skips none of the changes written
/// on the new primary.
#[test]
fn old_primary_rejoining_does_not_keep_a_slot_ahead_of_the_new_primary() {
    let _serial = serial();
    // The replicas deliberately miss WAL the primary wrote: let them take over anyway.
    let (mut c, first) = up_with("    maximum_lag_on_failover: 1073741824\n");
    sql(&c, &first, "postgres", "CREATE DATABASE app").unwrap();
    sql(&c, &first, DB, "CREATE TABLE t (id serial primary key, v text); CREATE TABLE filler (v text)").unwrap();
    let reps = replicas(&c, &first);
    for r in &reps {
        wait_ready(&c, &first, r, SLOTS);
    }

    // Freeze both replicas' WAL receivers; write a lot on the primary and let its consumer confirm all of it.
    let receivers: Vec<u32> = reps
        .iter()
        .flat_map(|r| cluster_runner::children_named(c.postmaster_pid(r).expect("postmaster"), "walreceiver"))
        .collect();
    assert_eq!(receivers.len(), 2, "one WAL receiver per replica");
    for p in &receivers {
        cluster_runner::send_signal(*p, libc::SIGSTOP).unwrap();
    }
    sql(&c, &first, DB, "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 40000)").unwrap();
    sql(&c, &first, DB, &format!("SELECT count(*) FROM pg_logical_slot_get_changes('{SLOT}', NULL, NULL)")).unwrap();
    sql(&c, &first, "postgres", "CHECKPOINT").unwrap();
    let confirmed_on_first = slot_position(&c, &first).unwrap();
    c.kill9(&first);
    for p in &receivers {
        let _ = cluster_runner::send_signal(*p, libc::SIGCONT);
    }
    eprintln!("{first}'s consumer confirmed {confirmed_on_first}");
    let second = c
        .wait(&format!("a new writable leader instead of {first}"), FAILOVER, || match c.leader() {
            Some(l) if l != first && c.writable(&l) => Ok(Some(l)),
            other => Err(format!("leader key: {other:?}")),
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    let end = sql(&c, &second, "postgres", "SELECT pg_current_wal_lsn()").unwrap();
    assert!(
        lsn_le(&c, &second, &end, &confirmed_on_first) && end != confirmed_on_first,
        "{second} must lack WAL that {first}'s consumer confirmed ({end} vs {confirmed_on_first})"
    );
    // Changes on the new primary, nobody consumes them yet.
    sql(&c, &second, DB, "INSERT INTO t (v) SELECT 'after failover' FROM generate_series(1, 20)").unwrap();
    let expected: Vec<String> = sql(&c, &second, DB, "SELECT id FROM t WHERE v = 'after failover' ORDER BY id")
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(expected.len(), 20);

    // The old primary rejoins: its slot must not stay ahead of the new primary's.
    c.start_agent(&first).unwrap();
    c.wait(&format!("{first} streaming from {second}"), UP, || {
        Ok(c.streaming_replicas(&second)?.contains(&first).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    // Its copy is then pushed past the new primary's slot (an advance on the replica, as a consumer or an operator
    // could run there): it must be dropped and copied again, never kept ahead.
    let current = sql(&c, &second, "postgres", "SELECT pg_current_wal_lsn()").unwrap();
    c.wait(&format!("{first} has a copy of {SLOT} and replayed {current}"), SLOTS, || {
        let replayed = sql(&c, &first, "postgres", &format!("SELECT pg_last_wal_replay_lsn() >= '{current}'"))?;
        Ok((!slot_position(&c, &first)?.is_empty() && replayed == "t").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    let pushed = sql(
        &c,
        &first,
        DB,
        &format!("SELECT end_lsn FROM pg_replication_slot_advance('{SLOT}', pg_last_wal_replay_lsn())"),
    )
    .unwrap();
    let theirs = slot_position(&c, &second).unwrap();
    assert!(!lsn_le(&c, &second, &pushed, &theirs), "{first}'s copy at {pushed} must be ahead of {theirs}");
    eprintln!("{first}'s copy pushed to {pushed}, {second}'s slot at {theirs}");
    c.wait(&format!("{first}'s copy of {SLOT} no further than {second}'s"), SLOTS, || {
        let theirs = slot_position(&c, &second)?;
        let ours = slot_position(&c, &first)?;
        let (entry, v) = cdc_entry(&c, &first)?;
        let code = entry.as_ref().and_then(|e| e["readiness_code"].as_str().map(str::to_string));
        let fresh = !matches!(code.as_deref(), Some("stale" | "ahead_of_primary") | None);
        if !ours.is_empty() && lsn_le(&c, &second, &ours, &theirs) && fresh {
            eprintln!("{first}'s copy at {ours} ({code:?}), {second}'s slot at {theirs}");
            Ok(Some(()))
        } else {
            Err(format!("{first} at {ours:?}, {second} at {theirs}; /slots: {v}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));

    // Switch over back to it: its consumer gets every change written on the second primary.
    c.wait(&format!("{first} streaming from {second} again"), UP, || {
        Ok(c.streaming_replicas(&second)?.contains(&first).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    let out = c.ctl(&second, &["switchover", "--candidate", &first, "--force"]);
    assert!(out.status.success(), "keel switchover: {}", String::from_utf8_lossy(&out.stderr));
    c.wait(&format!("{first} writable leader again"), FAILOVER, || {
        Ok((c.leader().as_deref() == Some(first.as_str()) && c.writable(&first)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    let decoded =
        sql(&c, &first, DB, &format!("SELECT data FROM pg_logical_slot_get_changes('{SLOT}', NULL, NULL)")).unwrap();
    let missing: Vec<&String> =
        expected.iter().filter(|id| !decoded.contains(&format!("INSERT: id[integer]:{id} "))).collect();
    assert!(missing.is_empty(), "{first}'s consumer skipped ids {missing:?} written on {second}");
}
