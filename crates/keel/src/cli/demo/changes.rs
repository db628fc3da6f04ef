//! The change stream `keel demo --failover` runs across the failover: a permanent logical slot in database `app`,
//! a writer and a `pg_recvlogical` consumer from [`crate::workload`], and the closing tally.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{wait, Halt};
use crate::cluster_runner::LocalCluster;
use crate::workload::{self, Consumer, Tally, Target, Writer};

/// The permanent logical slot the demo creates and consumes.
pub(super) const SLOT: &str = "keel_demo";
const DATABASE: &str = "app";
const TABLE: &str = "demo_changes";
/// One insert every 10 ms at most: a steady stream without starving the agents on a small machine.
const PACE: Duration = Duration::from_millis(10);
/// Acknowledged inserts to wait for at each step, so every phase of the demo has changes in flight.
const BATCH: usize = 50;

/// The running writer and consumer.
pub(super) struct Changes {
    target: Target,
    writer: Writer,
    consumer: Consumer,
}

/// Why the change stream cannot run with the PostgreSQL in `bin_dir` (it needs test_decoding), if it cannot.
pub(super) fn unavailable(bin_dir: &Path) -> Option<String> {
    let out = match Command::new(bin_dir.join("pg_config")).arg("--pkglibdir").output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => return Some(format!("pg_config --pkglibdir failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => return Some(format!("cannot run {}/pg_config: {e}", bin_dir.display())),
    };
    let lib = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (!lib.join("test_decoding.so").exists())
        .then(|| format!("this PostgreSQL build has no test_decoding ({})", lib.display()))
}

impl Changes {
    /// Creates database `app`, its table and the permanent slot (dynamic configuration `slots`), starts the
    /// consumer and the writer, and waits until every replica's copy of the slot is ready.
    pub(super) fn start(cluster: &mut LocalCluster, leader: &str, dir: &Path) -> Result<Changes, Halt> {
        println!(
            "\n=== a permanent logical slot {SLOT} (test_decoding, database {DATABASE}), a writer and a consumer ==="
        );
        cluster.psql(leader, &format!("CREATE DATABASE {DATABASE}"))?;
        cluster.psql_db(leader, DATABASE, &format!("CREATE TABLE {TABLE} (id integer PRIMARY KEY)"))?;
        let slot = json!({"type": "logical", "database": DATABASE, "plugin": "test_decoding"});
        cluster.patch_store_config(&json!({"slots": {SLOT: slot}}))?;
        let sql = format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}'");
        wait(cluster, &format!("slot {SLOT} on {leader}"), |c| Ok((c.psql(leader, &sql)? == "1").then_some(())))?;
        let target = Target {
            api_ports: cluster.nodes.iter().map(|n| n.api_port).collect(),
            database: DATABASE.into(),
            table: TABLE.into(),
            bin_dir: cluster.opts.bin_dir.clone(),
        };
        let log = dir.join("pg_recvlogical.log");
        println!("consumer: pg_recvlogical --slot {SLOT} -d {DATABASE} on the primary (messages: {})", log.display());
        let consumer = Consumer::start(target.clone(), SLOT, log);
        println!("writer: INSERT INTO {TABLE} of increasing ids on the primary, one per transaction");
        let writer = Writer::start(target.clone(), PACE);
        let changes = Changes { target, writer, consumer };
        changes.wait_written(cluster, BATCH)?;
        let t0 = Instant::now();
        let replicas: Vec<String> = cluster.names().into_iter().filter(|n| n != leader).collect();
        for r in &replicas {
            wait(cluster, &format!("{r}'s copy of {SLOT} ready"), |c| slot_ready(c, r))?;
        }
        println!(
            "{SLOT}: copies ready on {} {:.1}s after the consumer started; {} changes written so far.",
            replicas.join(", "),
            t0.elapsed().as_secs_f64(),
            changes.writer.acknowledged()
        );
        Ok(changes)
    }

    /// Waits until the consumer streams from `new` (after a failover).
    pub(super) fn wait_resumed(&self, cluster: &mut LocalCluster, new: &str, since: Instant) -> Result<(), Halt> {
        let sql = format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT}'");
        let consumer = &self.consumer;
        wait(cluster, &format!("the consumer on {new}"), |c| {
            let on_new = consumer.node().as_deref() == Some(new) && c.psql(new, &sql)? == "t";
            Ok(on_new.then_some(()))
        })
        .map_err(|h| with_errors(h, &self.consumer.last_error()))?;
        println!(
            "Consumer resumed on {new} from its copy of {SLOT} {:.1}s after the kill (pg_recvlogical run {}).",
            since.elapsed().as_secs_f64(),
            self.consumer.starts()
        );
        Ok(())
    }

    /// Writes a last batch, stops the writer, waits for the consumer to receive every acknowledged change the
    /// final primary has, and prints the tally. Fails when a change was lost.
    pub(super) fn finish(mut self, cluster: &mut LocalCluster) -> Result<Tally, Halt> {
        self.wait_written(cluster, BATCH)?;
        let acked = self.writer.stop();
        let primary = cluster.leader().ok_or_else(|| "no leader key at the end of the demo".to_string())?;
        let port = cluster.node(&primary).pg_port;
        let on_primary = workload::final_ids(&self.target, port).map_err(|e| e.to_string())?;
        let expected: Vec<i64> = acked.iter().copied().filter(|id| on_primary.contains(id)).collect();
        let consumer = &self.consumer;
        let _ = wait(cluster, "the consumer to receive every change", |_| {
            let got = consumer.received();
            let missing = expected.iter().filter(|id| !got.contains_key(id)).count();
            if missing == 0 {
                Ok(Some(()))
            } else {
                Err(format!("{missing} acknowledged changes not received yet"))
            }
        });
        let received = self.consumer.stop();
        let tally = Tally::new(&acked, &received, &on_primary);
        println!("\n{tally}");
        println!(
            "  ({} of the written are not on the final primary {primary}; {} received changes it lacks)",
            tally.not_on_final_primary, tally.phantoms
        );
        if tally.lost > 0 {
            return Err(Halt::Failed(format!(
                "{} acknowledged changes on {primary} never reached the consumer",
                tally.lost
            )));
        }
        Ok(tally)
    }

    /// Waits until `n` more inserts than now were acknowledged.
    fn wait_written(&self, cluster: &mut LocalCluster, n: usize) -> Result<(), Halt> {
        let target = self.writer.acknowledged() + n;
        let writer = &self.writer;
        wait(cluster, &format!("{target} acknowledged inserts"), |_| {
            let got = writer.acknowledged();
            if got >= target {
                Ok(Some(()))
            } else {
                Err(format!("{got} acknowledged; last error: {}", writer.last_error().unwrap_or_default()))
            }
        })
    }
}

/// Whether `node`'s `/slots` reports its copy of [`SLOT`] ready.
fn slot_ready(c: &mut LocalCluster, node: &str) -> Result<Option<()>, String> {
    let (_, v) = c.http(node, "GET", "/slots", None)?;
    let slot = v["slots"].as_array().and_then(|a| a.iter().find(|s| s["name"] == SLOT)).cloned();
    match slot {
        Some(s) if s["readiness"] == "Ready" && v["ready"] == Value::Bool(true) => Ok(Some(())),
        _ => Err(format!("/slots on {node}: {v}")),
    }
}

fn with_errors(h: Halt, last: &Option<String>) -> Halt {
    match (h, last) {
        (Halt::Failed(e), Some(l)) => Halt::Failed(format!("{e}; consumer's last error: {l}")),
        (h, _) => h,
    }
}
