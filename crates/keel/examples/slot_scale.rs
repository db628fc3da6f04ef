//! Failover slots at scale: a three-node cluster with 200 and with 1,000 permanent logical slots (test_decoding,
//! database `postgres`).
//!
//! For each count: once the cluster is up, the slots are added to the dynamic configuration (`slots`, as
//! `PATCH /config` does) while the primary is busy: a writer inserts a row every 10 ms and every slot is advanced
//! to the flush position every second (`pg_replication_slot_advance`, one statement for all slots), as consumers
//! would. Measured: the time from the configuration change until every replica reports every copy ready (`GET
//! /slots`: each slot's readiness `Ready` and the node's `ready`), and then the agents' CPU (user + system, from
//! /proc) over a window while the copies follow the busy primary.
//!
//! `cargo build --release --bin keel --example slot_scale && target/release/examples/slot_scale [COUNTS...]`
//! (default `200 1000`; as root or a user that can run PostgreSQL). `KEEL_TEST_PG_VERSION` picks PostgreSQL
//! (default 15); `KEEL_BENCH_TIMING=ttl,loop_wait,retry_timeout` the timing (default Patroni's 30,10,10);
//! `SLOT_SCALE_WINDOW` the CPU window in seconds (default 30); `SLOT_SCALE_PLUGIN` the slots' plugin (default
//! test_decoding; `pgoutput` for PostgreSQL 16 from the wheel, which lacks test_decoding).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::cluster_runner::{clock_ticks_per_sec, cpu_ticks, SUPERUSER};
use keel_testkit::{KeelCluster, KeelOptions, SecurityOptions};
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};

/// 1,000 slots are created in 2 s slices of HA cycles and copied in batches: give each step 20 minutes.
const DEADLINE: Duration = Duration::from_secs(1200);
const PREFIX: &str = "scale_";

/// The load on the primary: rows written and advance rounds done.
#[derive(Default)]
struct Load {
    rows: AtomicU64,
    rounds: AtomicU64,
    stop: AtomicBool,
}

async fn connect(port: u16) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(SUPERUSER.0)
        .password(SUPERUSER.1)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5))
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn writer(port: u16, load: Arc<Load>) {
    let Ok(mut client) = connect(port).await else { return };
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !load.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if client.batch_execute("INSERT INTO scale_load DEFAULT VALUES").await.is_ok() {
            load.rows.fetch_add(1, Ordering::SeqCst);
        } else if client.is_closed() {
            if let Ok(c) = connect(port).await {
                client = c;
            }
        }
    }
}

async fn advancer(port: u16, load: Arc<Load>) {
    let Ok(mut client) = connect(port).await else { return };
    let sql = format!(
        "SELECT count(pg_replication_slot_advance(slot_name, pg_current_wal_flush_lsn())) FROM pg_replication_slots \
         WHERE slot_type = 'logical' AND slot_name LIKE '{PREFIX}%' AND NOT active"
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !load.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        match client.batch_execute(&sql).await {
            Ok(()) => {
                load.rounds.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                eprintln!("advance: {e}");
                if client.is_closed() {
                    match connect(port).await {
                        Ok(c) => client = c,
                        Err(e) => eprintln!("advance: reconnecting: {e}"),
                    }
                }
            }
        }
    }
}

/// How many of the scale slots `node` reports ready, whether the node says it is ready, and the mode if `/slots`
/// names one.
fn ready_count(c: &KeelCluster, node: &str) -> Result<(usize, bool, Option<String>), String> {
    let (_, v) = c.http_get(node, "/slots")?;
    let slots = v["slots"].as_array().cloned().unwrap_or_default();
    let ready = slots
        .iter()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with(PREFIX)) && s["readiness"] == "Ready")
        .count();
    let mode =
        ["failover_slots_mode", "failover_slots", "mode"].iter().find_map(|k| v[*k].as_str().map(str::to_string));
    Ok((ready, v["ready"] == json!(true), mode))
}

fn timing() -> (u64, u64, u64) {
    std::env::var("KEEL_BENCH_TIMING")
        .ok()
        .and_then(|t| {
            let v: Vec<u64> = t.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        })
        .unwrap_or((30, 10, 10))
}

fn run(count: usize, window: Duration) {
    let params = format!("    max_replication_slots: {}\n    max_wal_senders: 20\n", count + 20);
    let opts = KeelOptions {
        logical: true,
        timing: Some(timing()),
        security: SecurityOptions { pg_parameters_yaml: params, ..SecurityOptions::default() },
        ..KeelOptions::default()
    };
    let mut c = KeelCluster::start(3, opts).expect("start the cluster");
    let (leader, _) = c.wait_replicas_streaming(2, DEADLINE).expect("bootstrap");
    let postmaster = c.postmaster_pid(&leader);
    let replicas: Vec<String> = c.names().into_iter().filter(|n| *n != leader).collect();
    let version = c.psql(&leader, "SHOW server_version").unwrap_or_default();
    c.psql(&leader, "CREATE TABLE scale_load (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        .expect("create the load table");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let load = Arc::new(Load::default());
    let port = c.node(&leader).pg_port;
    let tasks = [rt.spawn(writer(port, load.clone())), rt.spawn(advancer(port, load.clone()))];

    // pgoutput on PostgreSQL 16 from the wheel, which has no test_decoding (advancing never decodes a change).
    let plugin = std::env::var("SLOT_SCALE_PLUGIN").unwrap_or_else(|_| "test_decoding".into());
    let slots: serde_json::Map<String, Value> = (0..count)
        .map(|i| (format!("{PREFIX}{i:04}"), json!({"type": "logical", "database": "postgres", "plugin": plugin})))
        .collect();
    let t0 = Instant::now();
    c.patch_store_config(&json!({ "slots": slots })).expect("add the slots to the dynamic configuration");
    let on_primary = format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '{PREFIX}%'");
    let created = c
        .wait("the slots on the primary", DEADLINE, || {
            let n: usize = c.psql(&leader, &on_primary)?.parse().map_err(|e| format!("{e}"))?;
            Ok((n == count).then(|| t0.elapsed()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(30)));
    let mut mode = None;
    let mut per_replica = Vec::new();
    for r in &replicas {
        let t = c
            .wait(&format!("{count} ready copies on {r}"), DEADLINE, || {
                let (n, ready, m) = ready_count(&c, r)?;
                mode = mode.clone().or(m);
                if n == count && ready {
                    Ok(Some(t0.elapsed()))
                } else {
                    Err(format!("{n} of {count} ready, node ready: {ready}"))
                }
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(30)));
        per_replica.push((r.clone(), t));
    }
    let all_ready = per_replica.iter().map(|(_, t)| *t).max().unwrap_or_default();

    // CPU while the copies follow the busy primary.
    let pids: Vec<(String, u32)> = c.names().into_iter().filter_map(|n| Some((n.clone(), c.agent_pid(&n)?))).collect();
    let before: Vec<u64> = pids.iter().map(|(_, p)| cpu_ticks(*p).unwrap_or(0)).collect();
    let (rows0, rounds0) = (load.rows.load(Ordering::SeqCst), load.rounds.load(Ordering::SeqCst));
    std::thread::sleep(window);
    let cpu: Vec<f64> = pids
        .iter()
        .zip(before)
        .map(|((_, p), b)| cpu_ticks(*p).unwrap_or(0).saturating_sub(b) as f64 / clock_ticks_per_sec() as f64)
        .collect();
    let rows = load.rows.load(Ordering::SeqCst) - rows0;
    let rounds = load.rounds.load(Ordering::SeqCst) - rounds0;
    load.stop.store(true, Ordering::SeqCst);
    // One advance round over 1,000 slots can take minutes: do not wait for it (stopping the cluster ends it).
    for t in tasks {
        t.abort();
    }

    // A run in which the primary was restarted or lost its key measures a failover, not the slots.
    if c.leader().as_deref() != Some(leader.as_str()) || c.postmaster_pid(&leader) != postmaster {
        println!("\n## {count} slots: INVALID RUN, {leader} lost the leader key or was restarted\n{}", c.logs(20));
    }
    let (ttl, loop_wait, retry) = timing();
    let mode = mode.unwrap_or_else(|| "copy (/slots names no mode: the only one this build has)".into());
    println!("\n## {count} permanent logical slots, PostgreSQL {version}, mode: {mode}");
    println!("timing: ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry}");
    println!("created on the primary {:.1} s after the configuration change", created.as_secs_f64());
    for (r, t) in &per_replica {
        println!("every copy ready on {r}: {:.1} s", t.as_secs_f64());
    }
    println!("every copy ready on every replica: {:.1} s", all_ready.as_secs_f64());
    println!(
        "load over the {} s CPU window: {rows} rows, {rounds} advance rounds of all {count} slots",
        window.as_secs()
    );
    println!("\n| agent | role | CPU (s) | CPU (%) |\n|---|---|---|---|");
    for ((name, _), s) in pids.iter().zip(cpu) {
        let role = if *name == leader { "leader" } else { "replica" };
        println!("| {name} | {role} | {s:.2} | {:.1} |", s * 100.0 / window.as_secs_f64());
    }
}

fn main() {
    let mut counts: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty() {
        counts = vec![200, 1000];
    }
    let window = std::env::var("SLOT_SCALE_WINDOW").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    for count in counts {
        run(count, Duration::from_secs(window));
    }
}
