//! Slot scenario tests: a real etcd and three real agents managing real PostgreSQL (15 by default,
//! `KEEL_TEST_PG_VERSION=16|17|18` for another major) with permanent slots in the dynamic configuration, modelled
//! on Patroni's `permanent_slots.feature` and `ignored_slots.feature`, plus Keel's own promises: a logical consumer
//! keeps going across a failover or a switchover without gaps, and a missing logical slot on a new primary is a
//! loud continuity break instead of a silent re-creation.
//!
//! The permanent logical slot uses test_decoding, or pgoutput with a publication of all tables where the build has
//! no test_decoding (16); the consumers decode either (`slotkit`).
//!
//! One cluster at a time (`slotkit::cluster::serial`); every wait is a condition with a generous deadline.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keel::cluster_runner;
use keel_testkit::{KeelCluster, KeelOptions};
use serde_json::{json, Value};

mod slotkit;
use slotkit::cdc::{check_continuity, Consumer, Writer};
use slotkit::cluster::{
    self, has_slot, make_cascade, replicas, serial, slot_names, slots_api, wait_new_leader, wait_slot,
    wait_streaming_from,
};
use slotkit::{Plugin, Stream};

const UP: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(90);
/// Slot copies on replicas: a logical copy costs a PostgreSQL restart on the replica.
const SLOTS: Duration = Duration::from_secs(90);

const LOGICAL: &str = "test_logical";
const PHYSICAL: &str = "test_physical";

/// The publication pgoutput consumers use (where the permanent logical slot is a pgoutput one).
const PUBLICATION: &str = "keel_pub";

/// The permanent logical slot's plugin on the PostgreSQL under test.
fn plugin() -> &'static Plugin {
    static PLUGIN: OnceLock<Plugin> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        let bin_dir = cluster_runner::pg_bin_dir(cluster_runner::pg_version_from_env());
        Plugin::text_or_pgoutput(&bin_dir, PUBLICATION)
    })
}

fn stream() -> Stream {
    Stream { slot: LOGICAL.into(), database: "postgres".into(), plugin: plugin().clone() }
}

/// The permanent slots and the ignore list, at the `bootstrap.dcs` level.
/// Keel's own copies on every major (`failover_slots: copy`): these scenarios are about copy mode's mechanics
/// (stages, file copies, continuity breaks); native mode on 17+ has `slot_native.rs`, and `slot_databases.rs`
/// runs with the default (native on 17+).
fn slots_yaml(mode: &str) -> String {
    let plugin = plugin().name();
    format!(
        "    failover_slots: {mode}
    slots:
      test_logical:
        type: logical
        database: postgres
        plugin: {plugin}
      test_physical:
        type: physical
    ignore_slots:
    - name: ignored_slot
    - name: ignored_logical
      type: logical
      database: postgres
      plugin: {plugin}
"
    )
}

fn options(extra: &str) -> KeelOptions {
    options_in_mode("copy", extra)
}

/// [`options`] with another `failover_slots` mode.
fn options_in_mode(mode: &str, extra: &str) -> KeelOptions {
    KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        logical: true,
        extra_dcs_yaml: format!("{}{extra}", slots_yaml(mode)),
        ..KeelOptions::default()
    }
}

/// Starts a three-node cluster (see [`cluster::up`]) and creates the publication pgoutput consumers need, before
/// any table is written.
fn up(opts: KeelOptions) -> (KeelCluster, String) {
    let (c, leader) = cluster::up(opts, UP);
    if let Some(sql) = plugin().publication_sql("ALL TABLES") {
        c.psql(&leader, &sql).unwrap_or_else(|e| panic!("{e}"));
    }
    (c, leader)
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

    // The permanent slots exist on the primary and on both replicas (the logical copies once a consumer has moved
    // the primary's slot into WAL the replicas have).
    wait_copies_consuming(&c, &leader, &reps);
    for n in c.names() {
        wait_slot(&c, &n, LOGICAL, true, SLOTS);
        wait_slot(&c, &n, PHYSICAL, true, SLOTS);
    }
    assert_eq!(
        c.psql(&leader, &format!("SELECT plugin, database FROM pg_replication_slots WHERE slot_name = '{LOGICAL}'"))
            .unwrap(),
        format!("{}|postgres", plugin().name())
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
    let consumed = c.psql(&leader, &plugin().consume_sql(LOGICAL)).unwrap();
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
    let sql = format!("SELECT pg_create_logical_replication_slot('ignored_logical', '{}')", plugin().name());
    c.psql(&leader, &sql).unwrap();
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

/// The promotion check `node` recorded for the permanent logical slot.
fn promotion_check(c: &KeelCluster, node: &str) -> Value {
    cluster::promotion_check(c, node, LOGICAL)
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
    let stream = stream();
    let mut consumer = Consumer::start(&c, &first, &stream, &files[0]);
    let mut writer = Writer::start(&c, &first, "postgres");
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
    consumer = Consumer::start(&c, &second, &stream, &files[1]);
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
    consumer = Consumer::start(&c, &third, &stream, &files[2]);
    writer.wait_more(&c, 50);
    let acked = writer.stop();
    check_continuity(&c, &third, &stream, &acked, &files, "kill -9 failover then switchover");
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
    wait_copies_consuming(&c, &leader, &reps);
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
        let _ = c.psql(primary, &format!("INSERT INTO g (v) VALUES ('x'); {}", plugin().consume_sql(LOGICAL)));
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

/// Waits until every node in `nodes` has a copy of the permanent logical slot. A replica gets one only once the
/// primary's slot needs no WAL older than the replica's oldest (a fresh replica's base backup starts after the slot
/// was created), so this writes and consumes on the primary meanwhile, as a consumer would; the CHECKPOINT logs
/// the running-transactions record that lets the slot's `restart_lsn` move.
fn wait_copies_consuming(c: &KeelCluster, primary: &str, nodes: &[String]) {
    c.psql(primary, "CREATE TABLE IF NOT EXISTS copies_kick (v text)").unwrap();
    let sql = format!("INSERT INTO copies_kick VALUES ('x'); CHECKPOINT; {}", plugin().consume_sql(LOGICAL));
    for n in nodes {
        c.wait(&format!("a copy of {LOGICAL} on {n}"), SLOTS, || {
            let _ = c.psql(primary, &sql);
            let names = slot_names(c, n)?;
            if names.contains(LOGICAL) {
                Ok(Some(()))
            } else {
                Err(format!("slots: {names:?}"))
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
        // No copy at all (it would need WAL the re-cloned node lacks) or a copy on its way: unready either way.
        let unready = stage.as_deref() != Some("Ready");
        if streaming && unready && published == json!(false) && pm.is_some() && pm != old_pm {
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
    // The default mode (native on 17+): native copies are ready within a second, so the outage starts right
    // after the leader first wrote the failsafe key, before any cycle read it back (the exchange must use what
    // the leader wrote, or the primary demotes).
    let (c, leader) = up(KeelOptions { failsafe_mode: true, ..options_in_mode("auto", "") });
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
    c.psql(&leader, &plugin().consume_sql(LOGICAL)).unwrap();
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

/// `member_slots_ttl: 0` with a cascading member (`replicatefrom`): the leader keeps no slot for a member that
/// streams from another member (Patroni's pre-4.0 rule), the upstream replica does, and the leader never creates
/// the slot again (the agent used to re-create it after every cycle's plan had dropped it).
#[test]
fn cascading_member_has_no_slot_on_the_leader_with_member_slots_ttl_0() {
    let _serial = serial();
    let opts = KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        extra_dcs_yaml: "    member_slots_ttl: 0\n".into(),
        ..KeelOptions::default()
    };
    let (mut c, leader) = cluster::up(opts, UP);
    let reps = replicas(&c, &leader);
    let (upstream, cascade) = (reps[0].clone(), reps[1].clone());
    wait_slot(&c, &leader, &cascade, true, SLOTS);

    // Restart the cascade's agent with `replicatefrom: <upstream>`.
    make_cascade(&mut c, &cascade, &upstream, FAILOVER);
    wait_slot(&c, &upstream, &cascade, true, SLOTS);
    wait_slot(&c, &leader, &cascade, false, SLOTS);

    // Several HA cycles (loop_wait 2 s): the slot stays gone on the leader, the upstream's member slot stays.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let names = slot_names(&c, &leader).unwrap_or_else(|e| panic!("{e}"));
        assert!(!names.contains(&cascade), "{leader} re-created {cascade}'s slot: {names:?}\n{}", c.logs(30));
        assert!(names.contains(&upstream), "{leader} lost {upstream}'s slot: {names:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(has_slot(&c, &upstream, &cascade), "{upstream} keeps the slot {cascade} streams through");
}
