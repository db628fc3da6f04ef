//! Native failover slots (PostgreSQL 17+, `failover_slots: native` or `auto`): PostgreSQL's slotsync worker keeps
//! the standbys' copies, Keel sets it up, watches it and clears what blocks it (postgresql-slots.md §4).
//!
//! - [`node_method`]: a standby cascading from another standby keeps copies as in copy mode (PostgreSQL syncs
//!   slots only from the primary);
//! - [`plan_for_method`]: in native mode a replica makes no copies of its own (no file copy, no restart);
//! - [`failover_switches`]: permanent logical slots on the primary still without `failover` (made by copy mode,
//!   an older Keel, or by hand) are switched to it;
//! - [`leftovers`]: on a standby, a logical slot with `synced = false` whose name the primary has as a failover
//!   slot blocks the slotsync worker ("same name slot already exists"): it is dropped, only when the primary has
//!   that slot (an old primary's originals after a switchover, or copy mode's copies);
//! - [`readiness`]: from PostgreSQL's own state: the synced copy exists, is persistent, is not invalidated, and its
//!   `confirmed_flush_lsn` is within the lag bound of the primary's; every failover slot on the primary counts,
//!   the ones consumers created themselves too; a standby that is not in the primary's managed
//!   `synchronized_standby_slots` is not ready (consumers are not held back for it), so the gate agrees with the
//!   list;
//! - [`lag_bound`]: `failover_slots_max_lag`, else `maximum_lag_on_failover` (also the bound of
//!   [`super::standby_slots`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::config::{SlotKind, SlotSyncMethod};
use super::desired::{DesiredSlots, NodeRole};
use super::readiness::SlotsReadiness;
use super::reconcile::{DropReason, SlotAction};
use crate::dynconfig::{parse_uint, DynamicConfig};
use crate::lsn::Lsn;

/// The dynamic-configuration key of the lag bound for native failover slots.
pub const MAX_LAG_KEY: &str = "failover_slots_max_lag";

/// One logical slot with the native columns (`pg_replication_slots`, 17+), on this node or on the primary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NativeSlot {
    pub name: String,
    pub database: String,
    pub plugin: String,
    pub failover: bool,
    pub synced: bool,
    /// A synced slot is temporary until it is sync-ready (and lost at promotion while it is).
    pub temporary: bool,
    /// `invalidation_reason`, `None` when valid.
    pub invalidated: Option<String>,
    pub confirmed_flush: Option<Lsn>,
}

/// The bytes a standby (or a synced copy) may trail the primary and still count.
pub fn lag_bound(cfg: &DynamicConfig) -> u64 {
    cfg.raw.get(MAX_LAG_KEY).and_then(parse_uint).unwrap_or(cfg.maximum_lag_on_failover)
}

/// The method of one node. Native needs PostgreSQL's slot synchronization, which 17 and 18 run only against the
/// primary: a standby that cascades from another standby would never get synced copies, so it keeps them as in
/// copy mode (made on the standby, advanced by Keel, judged by copy readiness). The primary keeps the configured
/// method (its slots carry `failover`).
pub fn node_method(configured: SlotSyncMethod, role: NodeRole, cascading: bool) -> SlotSyncMethod {
    match (configured, role, cascading) {
        (SlotSyncMethod::Native, NodeRole::Replica, true) => SlotSyncMethod::Copy,
        (method, _, _) => method,
    }
}

/// The slot plan as executed under `method`: in native mode a replica copies no logical slot itself.
pub fn plan_for_method(method: SlotSyncMethod, role: NodeRole, plan: Vec<SlotAction>) -> Vec<SlotAction> {
    if method == SlotSyncMethod::Copy || role == NodeRole::Primary {
        return plan;
    }
    plan.into_iter().filter(|a| !matches!(a, SlotAction::CopyLogical { .. })).collect()
}

/// Primary, native mode: the permanent logical slots that exist here without `failover`.
pub fn failover_switches(desired: &DesiredSlots, here: &[NativeSlot]) -> Vec<String> {
    here.iter()
        .filter(|s| !s.failover && !s.temporary)
        .filter(|s| desired.slots.get(&s.name).is_some_and(|d| matches!(d.kind, SlotKind::Logical { .. })))
        .map(|s| s.name.clone())
        .collect()
}

/// Standby, native mode: `synced = false` logical slots that block the slotsync worker, as drops. Nothing when
/// the primary's slots are unknown, and nothing the primary does not have as a failover slot.
pub fn leftovers(here: &[NativeSlot], primary: Option<&BTreeMap<String, NativeSlot>>) -> Vec<SlotAction> {
    let Some(primary) = primary else { return Vec::new() };
    here.iter()
        .filter(|s| !s.synced && !s.temporary)
        .filter(|s| primary.get(&s.name).is_some_and(|p| p.failover && !p.temporary))
        .map(|s| SlotAction::Drop { slot: s.name.clone(), reason: DropReason::NativeLeftover { failover: s.failover } })
        .collect()
}

/// Where a failover slot's copy on this standby stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NativeState {
    Ready {
        behind: u64,
    },
    /// No copy here yet.
    Missing,
    /// A slot of that name exists here but was not made by the slotsync worker.
    NotSynced,
    /// The worker made it but it is not sync-ready (it would be lost at promotion).
    Temporary,
    Invalidated {
        reason: String,
    },
    /// The copy trails the primary's `confirmed_flush_lsn` by more than the bound (or has none).
    Behind {
        behind: Option<u64>,
        bound: u64,
    },
    /// A permanent logical slot the primary does not have (yet) as a failover slot.
    NotOnPrimary,
    /// This standby is not in the primary's `synchronized_standby_slots`: consumers may have received changes
    /// its WAL lacks.
    NotListed,
    /// The primary could not be asked and nothing is known from before.
    PrimaryUnknown,
}

impl NativeState {
    pub fn is_ready(&self) -> bool {
        matches!(self, NativeState::Ready { .. })
    }

    /// A stable code for the API and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            NativeState::Ready { .. } => "ready",
            NativeState::Missing => "not_synced_yet",
            NativeState::NotSynced => "not_synced_slot",
            NativeState::Temporary => "temporary",
            NativeState::Invalidated { .. } => "invalidated",
            NativeState::Behind { .. } => "behind",
            NativeState::NotOnPrimary => "not_on_primary",
            NativeState::NotListed => "not_in_synchronized_standby_slots",
            NativeState::PrimaryUnknown => "primary_unknown",
        }
    }
}

impl fmt::Display for NativeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NativeState::Ready { behind } => write!(f, "ready ({behind} bytes behind the primary)"),
            NativeState::Missing => write!(f, "not synchronized to this standby yet"),
            NativeState::NotSynced => write!(f, "a slot of that name here was not made by the slotsync worker"),
            NativeState::Temporary => write!(f, "synchronized but not persistent yet (not sync-ready)"),
            NativeState::Invalidated { reason } => write!(f, "invalidated here ({reason})"),
            NativeState::Behind { behind: Some(b), bound } => write!(f, "{b} bytes behind the primary, bound {bound}"),
            NativeState::Behind { behind: None, .. } => write!(f, "no confirmed position yet"),
            NativeState::NotOnPrimary => write!(f, "not a failover slot on the primary yet"),
            NativeState::NotListed => write!(
                f,
                "this standby is not in the primary's synchronized_standby_slots: consumers may be ahead of its WAL"
            ),
            NativeState::PrimaryUnknown => write!(f, "the primary's slots could not be read"),
        }
    }
}

/// Everything [`readiness`] reads.
#[derive(Debug, Clone)]
pub struct NativeReadinessInput<'a> {
    /// Permanent logical slots of the configuration.
    pub permanent: &'a BTreeSet<String>,
    /// This standby's logical slots, temporary ones included.
    pub here: &'a [NativeSlot],
    /// The primary's non-temporary failover slots; `None` when they could not be read this cycle.
    pub primary: Option<&'a BTreeMap<String, NativeSlot>>,
    /// The last verdicts, kept for the in-step part while the primary cannot be asked (it may be gone: that is
    /// when the gate is read).
    pub previous: &'a BTreeMap<String, NativeState>,
    pub bound: u64,
    /// Whether this standby's slot is in the primary's `synchronized_standby_slots` (`None`: not known).
    pub listed: Option<bool>,
}

/// Per slot, whether this standby's copy could serve its consumers after a promotion.
pub fn readiness(input: &NativeReadinessInput) -> BTreeMap<String, NativeState> {
    let here: BTreeMap<&str, &NativeSlot> = input.here.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut names: BTreeSet<String> = input.permanent.clone();
    match input.primary {
        Some(p) => names.extend(p.keys().cloned()),
        None => names.extend(input.previous.keys().cloned()),
    }
    names
        .into_iter()
        .map(|name| {
            let state = slot_state(&name, here.get(name.as_str()).copied(), input);
            (name, state)
        })
        .collect()
}

fn slot_state(name: &str, copy: Option<&NativeSlot>, input: &NativeReadinessInput) -> NativeState {
    let primary = match input.primary {
        Some(p) => match p.get(name) {
            Some(s) => Some(s),
            None => return NativeState::NotOnPrimary,
        },
        None => None,
    };
    let Some(copy) = copy else { return NativeState::Missing };
    if !copy.synced {
        return NativeState::NotSynced;
    }
    if copy.temporary {
        return NativeState::Temporary;
    }
    if let Some(reason) = &copy.invalidated {
        return NativeState::Invalidated { reason: reason.clone() };
    }
    let Some(primary) = primary else {
        return input.previous.get(name).cloned().unwrap_or(NativeState::PrimaryUnknown);
    };
    if input.listed == Some(false) {
        return NativeState::NotListed;
    }
    let behind = match (primary.confirmed_flush, copy.confirmed_flush) {
        (Some(p), Some(c)) => Some(p.0.saturating_sub(c.0)),
        (None, Some(_)) => Some(0),
        (_, None) => None,
    };
    match behind {
        Some(b) if b <= input.bound => NativeState::Ready { behind: b },
        _ => NativeState::Behind { behind, bound: input.bound },
    }
}

/// The member-key summary: ready when every slot is.
pub fn summarize(states: &BTreeMap<String, NativeState>) -> SlotsReadiness {
    let unready: Vec<String> = states.iter().filter(|(_, s)| !s.is_ready()).map(|(n, _)| n.clone()).collect();
    SlotsReadiness { ready: unready.is_empty(), unready }
}

#[cfg(test)]
#[path = "native_tests.rs"]
mod tests;
