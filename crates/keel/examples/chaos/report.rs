//! The table per fault kind printed at the end of a run (a round with two faults counts for both).

use std::collections::BTreeMap;

use crate::checker::RoundOutcome;
use crate::faults::FaultKind;

#[derive(Default)]
struct Row {
    rounds: usize,
    violations: usize,
    writable: Vec<f64>,
    heal: Vec<f64>,
    phantoms: usize,
    lost_async: usize,
    breaks: usize,
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into())
}

pub fn print(results: &[RoundOutcome], seed: u64) {
    let mut rows: BTreeMap<FaultKind, Row> = BTreeMap::new();
    for r in results {
        for k in &r.faults {
            let row = rows.entry(*k).or_default();
            row.rounds += 1;
            row.violations += r.violations.len();
            row.writable.extend(r.writable_after);
            row.heal.extend(r.heal);
            row.phantoms += r.phantoms;
            row.lost_async += r.lost_async;
            row.breaks += r.continuity_breaks;
        }
    }
    let sync = results.iter().filter(|r| r.sync).count();
    println!(
        "\nchaos: {} rounds, seed {seed} ({sync} synchronous, {} asynchronous)",
        results.len(),
        results.len() - sync
    );
    for r in results.iter().filter(|r| !r.violations.is_empty()) {
        println!("round {} ({} violation(s)): {}", r.round, r.violations.len(), r.violations.join("; "));
    }
    println!(
        "| fault | rounds | violations | no-write window s (median / max) | heal s (median / max) | phantoms | async lost acks | slot continuity breaks (Keel's log) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (kind, mut row) in rows {
        let wmax = row.writable.iter().copied().reduce(f64::max);
        let hmax = row.heal.iter().copied().reduce(f64::max);
        println!(
            "| {} | {} | {} | {} / {} | {} / {} | {} | {} | {} |",
            kind.name(),
            row.rounds,
            row.violations,
            secs(median(&mut row.writable)),
            secs(wmax),
            secs(median(&mut row.heal)),
            secs(hmax),
            row.phantoms,
            row.lost_async,
            row.breaks
        );
    }
}
