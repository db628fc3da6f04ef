//! Slot lag benchmark: how far behind the primary the replicas' copies of permanent slots trail, in time, under a
//! steady write load with a consumer on the primary's logical slot.
//!
//! A three-node cluster with a permanent logical slot (`bench_logical`, test_decoding) and a permanent physical
//! slot (`bench_physical`). A writer inserts a row every 20 ms; a consumer on the primary reads the logical slot
//! every 50 ms (`pg_logical_slot_get_changes`), and the physical slot is advanced to the flush position at the same
//! pace (as an external standby would). Every 25 ms the driver samples each slot's position on the primary and on
//! both replicas. For every primary sample (t, p) the delay is the time until a replica's copy reached p; the
//! p50/p95/max of those delays per replica and slot are printed. Figures go into docs/benchmarks.md.
//!
//! `cargo build --bin keel && cargo run --example slot_lag -- [SECONDS]` (as root or a user that can run
//! PostgreSQL). `KEEL_TEST_PG_VERSION` picks the PostgreSQL version (default 15).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_testkit::{KeelCluster, KeelOptions};

const DEADLINE: Duration = Duration::from_secs(180);
const SLOTS: [&str; 2] = ["bench_logical", "bench_physical"];

fn position(c: &KeelCluster, node: &str, slot: &str) -> Option<u64> {
    let sql = format!(
        "SELECT (CASE WHEN slot_type = 'logical' THEN confirmed_flush_lsn ELSE restart_lsn END - '0/0')::bigint \
         FROM pg_replication_slots WHERE slot_name = '{slot}'"
    );
    c.psql(node, &sql).ok()?.trim().parse().ok()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let opts = KeelOptions {
        logical: true,
        extra_dcs_yaml: "    slots:\n      bench_logical:\n        type: logical\n        database: postgres\n        \
                         plugin: test_decoding\n      bench_physical:\n        type: physical\n"
            .into(),
        ..KeelOptions::default()
    };
    let c = KeelCluster::start(3, opts).expect("start the cluster");
    let (leader, _) = c.wait_replicas_streaming(2, DEADLINE).expect("bootstrap");
    let replicas: Vec<String> = c.names().into_iter().filter(|n| *n != leader).collect();
    c.psql(&leader, "CREATE TABLE IF NOT EXISTS bench(id bigserial primary key, at timestamptz default now())")
        .expect("create table");
    // Wait until every replica has both copies.
    c.wait("slot copies on the replicas", DEADLINE, || {
        let all = replicas.iter().all(|r| SLOTS.iter().all(|s| position(&c, r, s).is_some()));
        Ok(all.then_some(()))
    })
    .expect("slot copies");
    println!("leader {leader}, replicas {replicas:?}, sampling for {seconds} s");

    let stop = Instant::now() + Duration::from_secs(seconds);
    let load_leader = leader.clone();
    let bin_dir = c.opts.bin_dir.clone();
    let port = c.node(&leader).pg_port;
    let load = std::thread::spawn(move || {
        let mut n = 0u64;
        while Instant::now() < stop {
            let _ = keel::cluster_runner::psql(&bin_dir, port, "INSERT INTO bench DEFAULT VALUES");
            n += 1;
            if n.is_multiple_of(3) {
                let _ = keel::cluster_runner::psql(
                    &bin_dir,
                    port,
                    "SELECT count(*) FROM pg_logical_slot_get_changes('bench_logical', NULL, NULL); \
                     SELECT pg_replication_slot_advance('bench_physical', pg_current_wal_flush_lsn())",
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = load_leader;
        n
    });

    // Samples: (time, slot) → position, per node.
    let mut primary: BTreeMap<&str, Vec<(Instant, u64)>> = BTreeMap::new();
    let mut copies: BTreeMap<(String, &str), Vec<(Instant, u64)>> = BTreeMap::new();
    let sampling = Instant::now();
    let mut rounds = 0u32;
    while Instant::now() < stop {
        rounds += 1;
        let t = Instant::now();
        for s in SLOTS {
            if let Some(p) = position(&c, &leader, s) {
                primary.entry(s).or_default().push((t, p));
            }
            for r in &replicas {
                if let Some(p) = position(&c, r, s) {
                    copies.entry((r.clone(), s)).or_default().push((Instant::now(), p));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let writes = load.join().unwrap_or(0);
    let period = sampling.elapsed().as_secs_f64() / f64::from(rounds.max(1));
    // Let the copies catch up with the last primary samples.
    std::thread::sleep(Duration::from_secs(2));
    for s in SLOTS {
        for r in &replicas {
            if let Some(p) = position(&c, r, s) {
                copies.entry((r.clone(), s)).or_default().push((Instant::now(), p));
            }
        }
    }
    println!(
        "{writes} writes; one sampling round (6 psql calls) took {period:.3} s on average, which bounds the resolution"
    );
    println!("\n| replica | slot | samples | p50 (s) | p95 (s) | max (s) |\n|---|---|---|---|---|---|");
    for s in SLOTS {
        let prim = primary.get(s).cloned().unwrap_or_default();
        for r in &replicas {
            let copy = copies.get(&(r.clone(), s)).cloned().unwrap_or_default();
            let mut delays: Vec<f64> = prim
                .iter()
                .filter_map(|(t, p)| {
                    copy.iter().find(|(t2, q)| t2 >= t && q >= p).map(|(t2, _)| (*t2 - *t).as_secs_f64())
                })
                .collect();
            let n = delays.len();
            let (p50, p95, max) =
                (percentile(&mut delays, 0.5), percentile(&mut delays, 0.95), percentile(&mut delays, 1.0));
            println!("| {r} | {s} | {n} | {p50:.3} | {p95:.3} | {max:.3} |");
        }
    }
}
