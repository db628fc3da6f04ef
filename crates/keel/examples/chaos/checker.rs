//! One round (mode, faults, heal) and the checks on what the writer and the consumer saw.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::consumer::Consumer;
use crate::faults::{self, FaultKind};
use crate::net::{clock, ChaosEnv};
use crate::writer::{Ack, Writer};

/// What a round found.
#[derive(Debug, Default)]
pub struct RoundOutcome {
    pub round: usize,
    pub sync: bool,
    pub faults: Vec<FaultKind>,
    pub violations: Vec<String>,
    /// The longest time without an acknowledged write, from the fault until the end of the round.
    pub writable_after: Option<f64>,
    /// From healing the faults until one primary with two streaming replicas.
    pub heal: Option<f64>,
    pub acks: usize,
    /// Acknowledged writes the final primary lacks in an asynchronous round (allowed: async replication).
    pub lost_async: usize,
    /// Changes the consumer received that the final primary lacks.
    pub phantoms: usize,
    /// Agent log lines where Keel's promotion check reported a logical slot's continuity break.
    pub continuity_breaks: usize,
}

/// How long the cluster gets to heal.
const HEAL_BOUND: Duration = Duration::from_secs(120);
/// More PostgreSQL starts than this on one node in one round is a crash loop.
const MAX_STARTS: usize = 5;

pub fn run_round(
    env: &mut ChaosEnv,
    writer: &Writer,
    consumer: &Consumer,
    round: usize,
    sync: bool,
    kinds: &[FaultKind],
) -> Result<RoundOutcome> {
    let mut out = RoundOutcome { round, sync, faults: kinds.to_vec(), ..Default::default() };
    env.set_synchronous(sync)?;
    let primary = env.wait_healthy(HEAL_BOUND)?;
    match env.wait_slots_ready(HEAL_BOUND) {
        Ok(d) => println!("   slot copies ready on every replica after {:.1} s", d.as_secs_f64()),
        Err(e) => println!("   WARNING: injecting anyway: {e:#}"),
    }
    let replica = env.cluster.names().into_iter().find(|n| *n != primary).unwrap_or_default();
    let logs = LogMarks::take(env);
    let (first_id, t_start) = (writer.next_id(), clock());
    crate::nap(Duration::from_secs(3))?;
    let t_fault = clock();
    let mut active = Vec::new();
    for kind in kinds {
        active.push((*kind, faults::inject(env, *kind, &primary, &replica)?));
    }
    println!("   primary {primary}, replica {replica}: faults injected at {t_fault:.1} s");
    let hold = kinds.iter().map(|k| k.hold()).max().unwrap_or_default();
    crate::nap(hold)?;
    let t_heal = clock();
    for (kind, a) in active {
        faults::heal(env, a).map_err(|e| anyhow!("healing {}: {e:#}", kind.name()))?;
    }
    match env.wait_healthy(HEAL_BOUND) {
        Ok(p) => {
            out.heal = Some(clock() - t_heal);
            let view = env.cluster.members().unwrap_or_default();
            let states: Vec<String> = view
                .iter()
                .map(|m| {
                    format!(
                        "{}={}/{}/tl{}",
                        m["name"].as_str().unwrap_or("?"),
                        m["role"].as_str().unwrap_or("?"),
                        m["state"].as_str().unwrap_or("?"),
                        m["timeline"]
                    )
                })
                .collect();
            println!("   healed in {:.1} s, primary {p}; members {}", clock() - t_heal, states.join(" "));
        }
        Err(e) => out.violations.push(format!("no heal within {} s: {e:#}", HEAL_BOUND.as_secs())),
    }
    crate::nap(Duration::from_secs(3))?;
    let (last_id, t_end) = (writer.next_id(), clock());
    // Inserts of ids below last_id still in flight end within the writer's deadline: only then is what the final
    // primary has comparable with what the consumer received (else a late commit looks like a phantom).
    crate::nap(crate::writer::DEADLINE + Duration::from_secs(1))?;
    let acks = writer.acks_between(t_start, t_end);
    out.acks = acks.len();
    out.writable_after = longest_gap(&acks, t_fault, t_end);
    out.violations.extend(two_primaries(&acks));
    // An id drawn just before the round started can be acknowledged inside it.
    let first_id = acks.iter().map(|a| a.id).min().unwrap_or(first_id).min(first_id);
    check_data(env, consumer, &acks, (first_id, last_id), &mut out)?;
    out.violations.extend(logs.check(env));
    out.continuity_breaks = logs.notes(env);
    restart_exited_agents(env, &mut out);
    Ok(out)
}

/// The longest stretch without an acknowledged write between `from` and `to`.
pub fn longest_gap(acks: &[Ack], from: f64, to: f64) -> Option<f64> {
    let mut times: Vec<f64> = acks.iter().map(|a| a.acked).filter(|t| *t >= from && *t <= to).collect();
    if times.is_empty() {
        return None;
    }
    times.sort_by(f64::total_cmp);
    let mut prev = from;
    let mut gap: f64 = 0.0;
    for t in times {
        gap = gap.max(t - prev);
        prev = t;
    }
    Some(gap)
}

/// Two primaries: node A acknowledged a write it was sent after node B had acknowledged one on the same or a
/// newer timeline. (A write sent before B's acknowledgement may have committed before B's promotion.)
pub fn two_primaries(acks: &[Ack]) -> Vec<String> {
    let mut found = Vec::new();
    for b in acks {
        let late = acks.iter().find(|a| a.node != b.node && a.sent > b.acked && a.timeline <= b.timeline);
        if let Some(a) = late {
            found.push(format!(
                "two primaries: {} acknowledged id {} (timeline {}, sent at {:.2} s) after {} acknowledged id {} on \
                 timeline {} at {:.2} s",
                a.node, a.id, a.timeline, a.sent, b.node, b.id, b.timeline, b.acked
            ));
            if found.len() >= 3 {
                break;
            }
        }
    }
    found
}

/// The ids the leader has, asked until it answers (a primary may still restart after healing, e.g. fenced by an
/// old deadline: "the database system is starting up" is a wait, not a failure of the run).
fn final_ids(env: &ChaosEnv, (from, to): (u64, u64)) -> Result<BTreeSet<u64>> {
    let sql = format!("SELECT id FROM chaos WHERE id >= {from} AND id < {to}");
    let rows = env.wait("the final primary's ids", Duration::from_secs(60), || {
        let leader = env.cluster.leader().ok_or("no leader after healing")?;
        env.cluster.psql_db(&leader, "app", &sql).map(Some)
    })?;
    Ok(rows.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn check_data(
    env: &ChaosEnv,
    consumer: &Consumer,
    acks: &[Ack],
    range: (u64, u64),
    out: &mut RoundOutcome,
) -> Result<()> {
    let have = final_ids(env, range)?;
    let missing: Vec<&Ack> = acks.iter().filter(|a| !have.contains(&a.id)).collect();
    if out.sync && !missing.is_empty() {
        let ev: Vec<String> =
            missing.iter().take(5).map(|a| format!("{} (by {} at {:.2} s)", a.id, a.node, a.acked)).collect();
        out.violations.push(format!(
            "{} acknowledged id(s) missing on the final primary in a synchronous round: {}",
            missing.len(),
            ev.join(", ")
        ));
    }
    out.lost_async = if out.sync { 0 } else { missing.len() };
    // The consumer follows the new primary: give it time to catch up with the last id the primary has.
    let last = have.iter().next_back().copied();
    let _ = env.wait("the consumer to catch up", Duration::from_secs(30), || {
        Ok(last.is_none_or(|l| consumer.received(l, l + 1).contains_key(&l)).then_some(()))
    });
    let got = consumer.received(range.0, range.1);
    println!("   {} acknowledged, final primary has {}, consumer received {}", acks.len(), have.len(), got.len());
    let lost: Vec<u64> = have.iter().filter(|id| !got.contains_key(id)).copied().collect();
    if !lost.is_empty() {
        env.recreate_slot();
        out.violations.push(format!(
            "the consumer lost {} change(s) the final primary has (first: {:?}; consumer \
            connections so far: {})",
            lost.len(),
            &lost[..lost.len().min(5)],
            consumer.starts()
        ));
    }
    let phantoms: Vec<u64> = got.keys().filter(|id| !have.contains(id)).copied().collect();
    out.phantoms = phantoms.len();
    if !phantoms.is_empty() {
        println!(
            "   phantoms: the consumer received {} change(s) the final primary lacks (first: {:?})",
            phantoms.len(),
            &phantoms[..phantoms.len().min(5)]
        );
        // Where Keel claims to prevent them: synchronous mode on 17+ (synchronized_standby_slots).
        if out.sync && env.pg_version >= 17 {
            out.violations.push(format!(
                "{} phantom change(s) in a synchronous round on {}",
                phantoms.len(),
                env.pg_version
            ));
        }
    }
    Ok(())
}

/// Where each node's PostgreSQL and agent logs stood at the start of the round.
struct LogMarks(Vec<(String, u64, u64)>);

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn read_from(p: &std::path::Path, mark: u64) -> String {
    let text = std::fs::read(p).unwrap_or_default();
    String::from_utf8_lossy(text.get(mark as usize..).unwrap_or_default()).into_owned()
}

impl LogMarks {
    fn take(env: &ChaosEnv) -> LogMarks {
        let nodes = env.cluster.nodes.iter();
        LogMarks(nodes.map(|n| (n.name.clone(), file_len(&n.pg_log_path()), file_len(&n.log_path))).collect())
    }

    /// Keel's own promotion check saying a logical slot's continuity broke: printed as a note (the consumer
    /// checks above are what fails a run).
    fn notes(&self, env: &ChaosEnv) -> usize {
        let mut n = 0;
        for (name, _, mark) in &self.0 {
            for line in
                read_from(&env.cluster.node(name).log_path, *mark).lines().filter(|l| l.contains("CONTINUITY BREAK"))
            {
                println!("   NOTE {name}: {}", line.get(..300).unwrap_or(line));
                n += 1;
            }
        }
        n
    }

    /// Crash loops (too many starts) and slot files PostgreSQL refused, since the marks.
    fn check(&self, env: &ChaosEnv) -> Vec<String> {
        let mut found = Vec::new();
        for (name, mark, _) in &self.0 {
            let new = read_from(&env.cluster.node(name).pg_log_path(), *mark);
            let starts = new.matches("database system is ready to accept").count();
            if starts > MAX_STARTS {
                found.push(format!("crash loop: {name}'s PostgreSQL became ready {starts} times in one round"));
            }
            if let Some(line) = new.lines().find(|l| l.contains("replication slot file")) {
                found.push(format!("invalid slot file on {name}: {line}"));
            }
        }
        found
    }
}

fn restart_exited_agents(env: &mut ChaosEnv, out: &mut RoundOutcome) {
    for name in env.cluster.names() {
        if let Some(status) = env.cluster.agent_exit(&name) {
            out.violations.push(format!("{name}'s agent exited by itself ({status})"));
            let _ = env.cluster.start_agent(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: u64, node: &str, sent: f64, acked: f64, timeline: u32) -> Ack {
        Ack { id, node: node.into(), sent, acked, timeline }
    }

    #[test]
    fn a_failover_is_not_two_primaries_but_a_late_old_primary_is() {
        let normal = [ack(1, "a", 0.0, 0.1, 1), ack(2, "b", 5.0, 5.1, 2), ack(3, "b", 6.0, 6.1, 2)];
        assert!(two_primaries(&normal).is_empty());
        // Sent before b's ack: may have committed before b's promotion.
        let racing = [ack(1, "b", 5.0, 5.1, 2), ack(2, "a", 4.9, 5.3, 1)];
        assert!(two_primaries(&racing).is_empty());
        let split = [ack(1, "b", 5.0, 5.1, 2), ack(2, "a", 5.2, 5.3, 1)];
        assert_eq!(two_primaries(&split).len(), 1);
    }

    #[test]
    fn the_longest_gap_counts_from_the_fault() {
        let acks = [ack(1, "a", 0.0, 1.0, 1), ack(2, "b", 0.0, 9.0, 2), ack(3, "b", 0.0, 10.0, 2)];
        assert_eq!(longest_gap(&acks, 2.0, 20.0), Some(7.0));
        assert_eq!(longest_gap(&[], 2.0, 20.0), None);
    }
}
