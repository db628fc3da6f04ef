//! Permanent slots at scale against a real etcd, agents and PostgreSQL (15 by default, `KEEL_TEST_PG_VERSION` for
//! another major). Adding hundreds of permanent logical slots at once to a busy primary must not cost the leader
//! its key: creating a logical slot waits for a snapshot of the running transactions; done all in one HA cycle,
//! 300 of them outlast the TTL and the fence kills PostgreSQL. And a replica's copies of more slots than
//! `max_connections` must all be followed: the follower once held a connection per slot.

use std::time::{Duration, Instant};

use keel::workload::{Target, Writer};
use keel_testkit::{KeelCluster, KeelOptions, SecurityOptions};
use serde_json::{json, Value};

const SLOTS: usize = 300;
/// More logical slots than the harness's `max_connections` (30).
const MANY_COPIES: usize = 60;
const UP: Duration = Duration::from_secs(120);
const CREATED: Duration = Duration::from_secs(300);

#[test]
fn leader_keeps_its_key_while_creating_hundreds_of_permanent_slots() {
    // A short TTL (the fence fires 5 s before it ends) makes one long cycle visible quickly.
    let opts = KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        logical: true,
        timing: Some((12, 2, 5)),
        security: SecurityOptions {
            pg_parameters_yaml: format!("    max_replication_slots: {}\n", SLOTS + 10),
            ..SecurityOptions::default()
        },
        ..KeelOptions::default()
    };
    let c = KeelCluster::start(1, opts).expect("start etcd and one agent");
    let leader = c.wait_for_leader(UP).unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    c.psql(&leader, "CREATE TABLE busy (id integer PRIMARY KEY)").unwrap();
    let postmaster = c.postmaster_pid(&leader).expect("postmaster pid");

    // A busy primary: every slot creation waits for the transactions running at that moment.
    let target = Target {
        api_ports: vec![c.node(&leader).api_port],
        database: "postgres".into(),
        table: "busy".into(),
        bin_dir: c.opts.bin_dir.clone(),
    };
    let mut writer = Writer::start(target, Duration::from_millis(5));
    c.wait("the writer going", Duration::from_secs(30), || Ok((writer.acknowledged() >= 20).then_some(()))).unwrap();

    let slots: serde_json::Map<String, Value> = (0..SLOTS)
        .map(|i| {
            (format!("many_{i:03}"), json!({"type": "logical", "database": "postgres", "plugin": "test_decoding"}))
        })
        .collect();
    let t0 = Instant::now();
    c.patch_store_config(&json!({ "slots": slots })).unwrap();
    let count = "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'many_%'";
    let res = c.wait(&format!("{SLOTS} slots on {leader}"), CREATED, || {
        if c.postmaster_pid(&leader) != Some(postmaster) {
            return Ok(Some(Err("PostgreSQL was restarted (fenced?) while the slots were being created")));
        }
        let n: usize = c.psql(&leader, count)?.parse().map_err(|e| format!("{e}"))?;
        Ok((n == SLOTS).then_some(Ok(())))
    });
    let acked = writer.stop().len();
    let log = std::fs::read_to_string(&c.node(&leader).log_path).unwrap_or_default();
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}\n{}", c.logs(40)),
        Err(e) => panic!("{e}\n{}", c.logs(40)),
    }
    eprintln!("{SLOTS} slots created in {:.1}s beside {acked} inserts", t0.elapsed().as_secs_f64());
    assert!(!log.contains("not refreshed in time"), "the fence fired:\n{}", c.logs(40));
    assert_eq!(c.leader().as_deref(), Some(leader.as_str()), "{leader} lost the leader key:\n{}", c.logs(40));
    assert_eq!(c.postmaster_pid(&leader), Some(postmaster), "PostgreSQL was restarted:\n{}", c.logs(40));
}

/// Every copy becomes ready, however many there are: the follower once started its advances in name order, so on
/// a busy primary the first names took every free place and the copies late in that order were never advanced;
/// their old catalog_xmin held the replica's feedback below every other copy's starting horizon, and no copy
/// became ready (24 of 60 copies followed after 300 s in a CI run; 1,000 slots on 15 never ready).
#[test]
fn copies_of_more_slots_than_connections_are_all_followed() {
    let opts = KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        logical: true,
        security: SecurityOptions {
            pg_parameters_yaml: format!("    max_replication_slots: {}\n", MANY_COPIES + 10),
            ..SecurityOptions::default()
        },
        ..KeelOptions::default()
    };
    let c = KeelCluster::start(2, opts).expect("start etcd and two agents");
    let (leader, replicas) = c.wait_replicas_streaming(1, UP).unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    let replica = &replicas[0];
    // CDC slots in the application's database: the follower advances each on a connection to it.
    c.psql(&leader, "CREATE DATABASE app").unwrap_or_else(|e| panic!("{e}"));
    let slots: serde_json::Map<String, Value> = (0..MANY_COPIES)
        .map(|i| (format!("copy_{i:02}"), json!({"type": "logical", "database": "app", "plugin": "test_decoding"})))
        .collect();
    c.patch_store_config(&json!({ "slots": slots })).unwrap();
    // Consumers on the primary: every slot moves, so every copy can prove itself and be advanced.
    let advance = "CREATE TABLE IF NOT EXISTS moved (id serial); INSERT INTO moved DEFAULT VALUES; \
                   SELECT count(pg_replication_slot_advance(slot_name, pg_current_wal_flush_lsn())) \
                   FROM pg_replication_slots WHERE slot_name LIKE 'copy_%'";
    let t0 = Instant::now();
    // Every copy ready (copied, advanced, protected by the replica's feedback) and none failing to advance: more
    // copies than the replica has connections, each advanced in its turn while the primary keeps moving.
    c.wait(&format!("{MANY_COPIES} ready copies on {replica}"), CREATED, || {
        let _ = c.psql_db(&leader, "app", advance);
        let (_, v) = c.http_get(replica, "/slots")?;
        let copies: Vec<&Value> = v["slots"]
            .as_array()
            .map(|a| a.iter().filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("copy_"))).collect())
            .unwrap_or_default();
        let failing: Vec<&Value> = copies.iter().filter(|s| !s["last_error"].is_null()).copied().collect();
        let followed = copies.iter().filter(|s| !s["seconds_since_caught_up"].is_null()).count();
        let ready = copies.iter().filter(|s| s["readiness"] == "Ready").count();
        if copies.len() == MANY_COPIES && ready == MANY_COPIES && failing.is_empty() {
            Ok(Some(()))
        } else {
            let first = failing.first().map(|s| s["last_error"].to_string()).unwrap_or_default();
            Err(format!(
                "{} copies, {followed} followed, {ready} ready, {} failing to advance {first}",
                copies.len(),
                failing.len()
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)));
    eprintln!(
        "all {MANY_COPIES} copies ready on {replica} {:.1}s after the configuration change",
        t0.elapsed().as_secs_f64()
    );
}
