//! Slot lag benchmark: how far behind the primary the replicas' copies of permanent slots trail, in time, under a
//! steady write load with a consumer on the primary's logical slot.
//!
//! A three-node cluster with a permanent logical slot (`bench_logical`, test_decoding) and a permanent physical
//! slot (`bench_physical`). A writer inserts a row every 20 ms; every third insert, the primary's logical slot is
//! consumed (`pg_logical_slot_get_changes`) and its physical slot advanced to the flush position (as an external
//! standby would). Every node is sampled every 10 ms over its own persistent connection (both slots' positions in
//! one query, plus the replay position on replicas). For every primary sample (t, p) the delay is the time until a
//! replica's copy reached p; the p50/p95/max of those delays per replica and slot are printed, and, for comparison,
//! the replay delay (time until the replica replayed the primary's flush position of the same moment). Figures go
//! into docs/benchmarks.md.
//!
//! `cargo build --release --bin keel --example slot_lag && target/release/examples/slot_lag [SECONDS]` (as root or
//! a user that can run PostgreSQL). `KEEL_TEST_PG_VERSION` picks the PostgreSQL version (default 15).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::cluster_runner::SUPERUSER;
use keel_testkit::{KeelCluster, KeelOptions};
use tokio_postgres::{Client, NoTls};

const DEADLINE: Duration = Duration::from_secs(180);
const SLOTS: [&str; 2] = ["bench_logical", "bench_physical"];
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Load runs this long before measuring: the first advance of a fresh copy decodes all WAL since the slot was
/// created, which is set-up cost, not the steady state being measured.
const WARMUP: Duration = Duration::from_secs(5);
/// The pseudo-slot name under which the WAL position (flush on the primary, replay on replicas) is recorded.
const WAL: &str = "(wal)";

/// One node's samples: slot → (time, position).
type Samples = BTreeMap<String, Vec<(Instant, u64)>>;

async fn connect(port: u16) -> Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(SUPERUSER.0)
        .password(SUPERUSER.1)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5))
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    tokio::spawn(conn);
    client
}

/// Both slots' positions and the WAL position, in one round trip.
async fn sample(client: &Client, samples: &mut Samples) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT slot_name::text, (CASE WHEN slot_type = 'logical' THEN confirmed_flush_lsn ELSE restart_lsn END \
             - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = ANY($1) \
             UNION ALL SELECT $2, (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_flush_lsn() END - '0/0')::bigint",
            &[&SLOTS.to_vec(), &WAL],
        )
        .await?;
    let t = Instant::now();
    for r in rows {
        let (name, pos): (String, Option<i64>) = (r.get(0), r.get(1));
        if let Some(pos) = pos.and_then(|p| u64::try_from(p).ok()) {
            samples.entry(name).or_default().push((t, pos));
        }
    }
    Ok(())
}

async fn sampler(port: u16, until: Instant) -> Samples {
    let mut client = connect(port).await;
    let mut samples = Samples::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        if let Err(e) = sample(&client, &mut samples).await {
            eprintln!("sampling 127.0.0.1:{port}: {e}");
            if client.is_closed() {
                client = connect(port).await;
            }
        }
    }
    samples
}

async fn writer(port: u16, until: Instant) -> u64 {
    let client = connect(port).await;
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while Instant::now() < until {
        tick.tick().await;
        if client.batch_execute("INSERT INTO bench DEFAULT VALUES").await.is_ok() {
            n += 1;
        }
        if n.is_multiple_of(3) {
            let _ = client
                .batch_execute(
                    "SELECT count(*) FROM pg_logical_slot_get_changes('bench_logical', NULL, NULL); \
                     SELECT pg_replication_slot_advance('bench_physical', pg_current_wal_flush_lsn())",
                )
                .await;
        }
    }
    n
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// For every primary sample (t, p): the time until the copy first showed a position ≥ p.
fn delays(primary: &[(Instant, u64)], copy: &[(Instant, u64)]) -> Vec<f64> {
    primary
        .iter()
        .filter_map(|(t, p)| copy.iter().find(|(t2, q)| t2 >= t && q >= p).map(|(t2, _)| (*t2 - *t).as_secs_f64()))
        .collect()
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
    let has_copies = |node: &str| {
        let sql =
            format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('{}', '{}')", SLOTS[0], SLOTS[1]);
        c.psql(node, &sql).map(|n| n.trim() == "2").unwrap_or(false)
    };
    c.wait("slot copies on the replicas", DEADLINE, || Ok(replicas.iter().all(|r| has_copies(r)).then_some(())))
        .expect("slot copies");
    // A copy becomes ready once the primary's slot moved past it; until then a replica may copy it again (one
    // PostgreSQL restart), which is bootstrap, not what is measured.
    c.wait("ready copies on the replicas", DEADLINE, || {
        let _ = c.psql(
            &leader,
            "INSERT INTO bench DEFAULT VALUES; SELECT count(*) FROM pg_logical_slot_get_changes('bench_logical', NULL, NULL)",
        );
        let ready = |r: &String| c.http_get(r, "/slots").is_ok_and(|(_, v)| v["ready"] == serde_json::json!(true));
        Ok(replicas.iter().all(ready).then_some(()))
    })
    .expect("ready copies");
    println!("leader {leader}, replicas {replicas:?}, sampling every {SAMPLE_EVERY:?} for {seconds} s");

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let nodes: Vec<String> = std::iter::once(leader.clone()).chain(replicas.iter().cloned()).collect();
    let ports: Arc<Vec<u16>> = Arc::new(nodes.iter().map(|n| c.node(n).pg_port).collect());
    let measure_from = Instant::now() + WARMUP;
    let (writes, samples) = rt.block_on(async {
        let load_until = Instant::now() + WARMUP + Duration::from_secs(seconds);
        // Sample a little longer than the load, so the copies can catch up with the last primary samples.
        let sample_until = load_until + Duration::from_secs(2);
        let load = tokio::spawn(writer(ports[0], load_until));
        let samplers: Vec<_> = ports.iter().map(|p| tokio::spawn(sampler(*p, sample_until))).collect();
        let writes = load.await.unwrap_or(0);
        let mut samples = Vec::new();
        for s in samplers {
            samples.push(s.await.unwrap_or_default());
        }
        (writes, samples)
    });
    let per_node: BTreeMap<&str, &Samples> = nodes.iter().map(String::as_str).zip(samples.iter()).collect();
    let rounds = per_node[leader.as_str()].get(WAL).map_or(0, |v| v.iter().filter(|x| x.0 >= measure_from).count());
    println!(
        "{writes} writes; {rounds} samples of the primary ({:.1} ms apart on average)",
        (seconds * 1000) as f64 / rounds.max(1) as f64
    );
    println!("\n| replica | slot | samples | p50 (s) | p95 (s) | max (s) |\n|---|---|---|---|---|---|");
    let empty = Vec::new();
    for s in SLOTS.iter().copied().chain([WAL]) {
        let primary = per_node[leader.as_str()].get(s).unwrap_or(&empty);
        for r in &replicas {
            let copy = per_node[r.as_str()].get(s).unwrap_or(&empty);
            // Only primary samples that changed position (a slot that did not move has no delay to measure), after
            // the warm-up.
            let moved: Vec<(Instant, u64)> =
                primary.windows(2).filter(|w| w[1].1 > w[0].1 && w[1].0 >= measure_from).map(|w| w[1]).collect();
            let mut d = delays(&moved, copy);
            let n = d.len();
            let (p50, p95, max) = (percentile(&mut d, 0.5), percentile(&mut d, 0.95), percentile(&mut d, 1.0));
            if std::env::var_os("SLOT_LAG_DEBUG").is_some() {
                let span = |v: &[(Instant, u64)]| (v.first().map(|x| x.1), v.last().map(|x| x.1), v.len());
                eprintln!("{s}: primary {:?}, {r} {:?}, moved {}", span(primary), span(copy), moved.len());
                let t0 = primary.first().map(|x| x.0).unwrap_or_else(Instant::now);
                for (t, p) in &moved {
                    if let Some((t2, _)) = copy.iter().find(|(t2, q)| t2 >= t && q >= p) {
                        if (*t2 - *t).as_secs_f64() > 0.3 {
                            eprintln!(
                                "  at {:.2}s: {p} reached after {:.2}s",
                                (*t - t0).as_secs_f64(),
                                (*t2 - *t).as_secs_f64()
                            );
                        }
                    }
                }
            }
            let label = if s == WAL { "replay (for comparison)" } else { s };
            println!("| {r} | {label} | {n} | {p50:.3} | {p95:.3} | {max:.3} |");
        }
    }
}
