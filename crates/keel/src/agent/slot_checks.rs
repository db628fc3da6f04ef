//! The replica's per-cycle check of its logical copies: reads the leader's slots and this node's oldest WAL,
//! runs `keel_core::slots::copycheck::check_copy` (stale, ahead of the primary, needing missing WAL, failures a
//! re-copy cannot fix) and the readiness step for each permanent logical slot, asks for re-copies with backoff,
//! and logs each change of reason once.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_core::lsn::Lsn;
use keel_core::slots::copycheck::{check_copy, CopyCheckInput, CopyFailure, PrimarySlot, SlotPositions};
use keel_core::slots::online_copy::{self, OnlineGate};
use keel_core::slots::readiness::{
    self, LocalLogicalSlot, PrimaryPhysicalSlot, ReadinessEvent, ReadinessObservation, ReadinessReason, SlotReadiness,
    Xid,
};
use keel_core::slots::recopy::{advance_event, recopy_wanted};
use keel_core::slots::{self, ActualSlot, ActualSlots, DesiredSlots, SlotKind, SlotsReadiness, WalStatus};
use keel_core::view::Member;
use tracing::{info, warn};

use super::{SlotCycle, SlotManager};
use crate::agent::follower::SlotProgress;
use crate::agent::local::Local;
use crate::postgres::replication_slots::{self as pg_slots, PgSlot};

const LEADER_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's slots as this cycle read them.
/// What the copy check of one slot reads besides the slot's name.
struct CopyInputs<'a> {
    copy: Option<&'a ActualSlot>,
    on_leader: &'a LeaderSlots,
    oldest: Option<Lsn>,
    progress: &'a BTreeMap<String, SlotProgress>,
}

struct LeaderSlots {
    physical: PrimaryPhysicalSlot,
    /// `None`: the leader could not be asked.
    logical: Option<BTreeMap<String, PgSlot>>,
}

/// Reads the leader's slots: this replica's physical slot there and every logical slot (bounded in time).
async fn read_leader(local: &Local, leader: Option<&Member>, own_slot: &str) -> LeaderSlots {
    let unknown = LeaderSlots { physical: PrimaryPhysicalSlot::Unknown, logical: None };
    let Some(l) = leader else { return unknown };
    let Ok(Ok(s)) = tokio::time::timeout(LEADER_QUERY_TIMEOUT, local.leader_session(l, local.database())).await else {
        return unknown;
    };
    match tokio::time::timeout(LEADER_QUERY_TIMEOUT, pg_slots::list_on_primary(&s)).await {
        Ok(Ok(answer)) => leader_slots(answer, own_slot),
        _ => unknown,
    }
}

/// The leader's slots from its answer; a leader in recovery, or an answer that cannot be read (`None`), tells
/// nothing about the primary's slots.
fn leader_slots(answer: Option<Vec<PgSlot>>, own_slot: &str) -> LeaderSlots {
    let Some(list) = answer else { return LeaderSlots { physical: PrimaryPhysicalSlot::Unknown, logical: None } };
    let physical = match list.iter().find(|x| x.name == own_slot) {
        None => PrimaryPhysicalSlot::Missing,
        Some(p) => match p.catalog_xmin {
            Some(x) => PrimaryPhysicalSlot::CatalogXmin(Xid(x)),
            None => PrimaryPhysicalSlot::NullCatalogXmin,
        },
    };
    let logical = list.into_iter().filter(PgSlot::is_logical).map(|x| (x.name.clone(), x)).collect();
    LeaderSlots { physical, logical: Some(logical) }
}

/// The start of this node's oldest WAL segment; `None` when it cannot be read (logged).
pub(super) async fn oldest_wal(local: &mut Local) -> Option<Lsn> {
    let session = match local.local_session().await {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot read this node's oldest WAL segment: {e:#}");
            return None;
        }
    };
    match tokio::time::timeout(LEADER_QUERY_TIMEOUT, pg_slots::oldest_wal(session)).await {
        Ok(Ok(lsn)) => lsn,
        Ok(Err(e)) => {
            warn!("cannot read this node's oldest WAL segment: {e}");
            None
        }
        Err(_) => None,
    }
}

fn positions(s: &PgSlot) -> SlotPositions {
    SlotPositions { restart_lsn: s.restart_lsn, confirmed_flush_lsn: s.confirmed_flush_lsn }
}

impl SlotManager {
    /// The readiness event since the last cycle and the current advance failure, from the follower's table.
    fn advance_event(&mut self, name: &str, p: Option<&SlotProgress>) -> (Option<ReadinessEvent>, Option<CopyFailure>) {
        if let Some(event) = self.events.remove(name) {
            return (Some(event), None);
        }
        let Some(p) = p else { return (None, None) };
        let before = self.last_advances.insert(name.to_string(), p.advances).unwrap_or(0);
        let failure = p.last_error.as_ref().map(|e| e.failure.clone());
        match advance_event(before, p.advances, failure.as_ref()) {
            Some(ReadinessEvent::AdvanceSucceeded) => (Some(ReadinessEvent::AdvanceSucceeded), None),
            event => (event, failure),
        }
    }

    pub(super) async fn update_readiness(
        &mut self,
        c: &SlotCycle<'_>,
        local: &mut Local,
        desired: &DesiredSlots,
        actual: &ActualSlots,
        leader: Option<&Member>,
    ) {
        let logical: Vec<(String, String)> = desired
            .slots
            .iter()
            .filter_map(|(n, d)| match &d.kind {
                SlotKind::Logical { database, .. } => Some((n.clone(), database.clone())),
                SlotKind::Physical => None,
            })
            .collect();
        if logical.is_empty() {
            self.summary = None;
            self.readiness.clear();
            self.reasons.clear();
            self.problems.clear();
            return;
        }
        let ActualSlots::Known(have) = actual else { return };
        let own_slot = slots::slot_name_on_primary(c.view, c.me, c.tags)
            .unwrap_or_else(|| slots::slot_name_from_member_name(c.me));
        let on_leader = read_leader(local, leader, &own_slot).await;
        let oldest = oldest_wal(local).await;
        let progress = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
        for (name, database) in &logical {
            let inputs = CopyInputs { copy: have.get(name), on_leader: &on_leader, oldest, progress: &progress };
            self.check_one(c, name, database, &inputs);
        }
        let names: Vec<&str> = logical.iter().map(|(n, _)| n.as_str()).collect();
        self.readiness.retain(|n, _| names.contains(&n.as_str()));
        self.reasons.retain(|n, _| names.contains(&n.as_str()));
        self.problems.retain(|n, _| names.contains(&n.as_str()));
        self.summary = Some(SlotsReadiness::summarize(names, &self.readiness));
    }

    /// The copy check and the readiness step of one logical copy.
    fn check_one(&mut self, c: &SlotCycle<'_>, name: &str, database: &str, inputs: &CopyInputs<'_>) {
        let (copy, on_leader, oldest) = (inputs.copy, inputs.on_leader, inputs.oldest);
        let (event, failure) = self.advance_event(name, inputs.progress.get(name));
        let primary = match &on_leader.logical {
            None => PrimarySlot::Unknown,
            Some(m) => m.get(name).map_or(PrimarySlot::Missing, |s| PrimarySlot::Known(positions(s))),
        };
        let verdict = check_copy(&CopyCheckInput {
            database,
            copy: copy
                .map(|a| SlotPositions { restart_lsn: a.restart_lsn, confirmed_flush_lsn: a.confirmed_flush_lsn }),
            primary,
            oldest_wal: oldest,
            made_here: self.made_here.contains(name),
            rebuilt: self.rebuilt.get(name).copied(),
            failure,
        });
        let gate = self.online_gate(name, on_leader);
        let verdict = match &gate {
            Some(g) => online_copy::gate_verdict(verdict, g),
            None => verdict,
        };
        if recopy_wanted(&verdict, &self.recopies.get(name).copied().unwrap_or_default(), c.now) {
            self.recopy.insert(name.to_string());
        }
        let problem = verdict.problem().cloned();
        match &problem {
            Some(p) => self.problems.insert(name.to_string(), p.clone()),
            None => self.problems.remove(name),
        };
        let obs = ReadinessObservation {
            event,
            local: copy.map(|a| LocalLogicalSlot {
                catalog_xmin: a.catalog_xmin,
                restart_lsn: a.restart_lsn,
                confirmed_flush_lsn: a.confirmed_flush_lsn,
                wal_status: a.wal_status,
                invalidated: a.wal_status == Some(WalStatus::Lost),
            }),
            replay_lsn: c.replay_lsn,
            primary_physical: on_leader.physical,
            primary_logical_catalog_xmin: on_leader
                .logical
                .as_ref()
                .and_then(|m| m.get(name))
                .and_then(|s| s.catalog_xmin)
                .map(Xid),
            problem,
        };
        let prev = self.readiness.get(name).cloned().unwrap_or(SlotReadiness::MISSING);
        let (next, reason) = readiness::step(&prev, &obs);
        let (next, reason) = match &gate {
            Some(g) => online_copy::gate_readiness(next, reason, g),
            None => (next, reason),
        };
        self.log_change(name, &prev, &next, &reason);
        if next.is_ready() {
            self.recopies.remove(name);
        }
        self.reasons.insert(name.to_string(), reason);
        self.readiness.insert(name.to_string(), next);
    }

    /// The start-point gate of a copy created on this standby (`None`: not one, or its gate has passed, which
    /// is remembered). A leader that could not be asked keeps the gate closed.
    fn online_gate(&mut self, name: &str, on_leader: &LeaderSlots) -> Option<OnlineGate> {
        let start = *self.online_start.get(name)?;
        let primary = on_leader.logical.as_ref().and_then(|m| m.get(name)).and_then(|s| s.confirmed_flush_lsn);
        let gate = online_copy::online_gate(start, primary);
        if gate == OnlineGate::Passed {
            info!("logical slot {name}: the leader's consumer confirmed past this copy's start; it is advanced from now on");
            self.online_start.remove(name);
            return None;
        }
        Some(gate)
    }

    /// One line per change: stage changes as info, a new reason that makes the copy unusable as a warning.
    fn log_change(&self, name: &str, prev: &SlotReadiness, next: &SlotReadiness, reason: &ReadinessReason) {
        let before = self.reasons.get(name);
        let changed = before.map(ReadinessReason::code) != Some(reason.code());
        match reason {
            ReadinessReason::Unusable(_) | ReadinessReason::AdvanceFailed(_) if changed => {
                warn!("logical slot {name} is not ready: {reason} ({})", reason.code());
            }
            _ if next.stage != prev.stage => {
                info!("logical slot {name}: {:?} -> {:?} ({reason})", prev.stage, next.stage);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use keel_core::slots::readiness::{PrimaryPhysicalSlot, Xid};
    use serde_json::json;

    use super::{leader_slots, PgSlot};

    fn slot(v: serde_json::Value) -> PgSlot {
        PgSlot::from_json(&v).expect("a slot row")
    }

    /// A leader restarted read-only (demoted when it lost the store) reads its logical slots back from disk,
    /// older than what their consumers confirmed: this replica's copy then looked "ahead of the primary", was
    /// dropped and copied again, and a promotion right after reported a continuity break the consumer never had
    /// (chaos suite, primary cut off from etcd). A leader in recovery tells nothing about the primary's slots.
    #[test]
    fn a_leader_in_recovery_is_unknown_not_behind() {
        let in_recovery = leader_slots(None, "node3");
        assert_eq!(in_recovery.physical, PrimaryPhysicalSlot::Unknown);
        assert!(in_recovery.logical.is_none());

        let list = vec![
            slot(json!({"slot_name": "node3", "slot_type": "physical", "catalog_xmin": "740", "active": true})),
            slot(json!({"slot_name": "cdc", "slot_type": "logical", "database": "app", "plugin": "pgoutput",
                "confirmed_flush_lsn": "0/4671300", "active": true})),
        ];
        let primary = leader_slots(Some(list), "node3");
        assert_eq!(primary.physical, PrimaryPhysicalSlot::CatalogXmin(Xid(740)));
        assert!(primary.logical.is_some_and(|m| m.contains_key("cdc")));
        assert_eq!(leader_slots(Some(Vec::new()), "node3").physical, PrimaryPhysicalSlot::Missing);
    }
}
