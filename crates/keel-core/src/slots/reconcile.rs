//! Reconciling the desired slot set with the slots PostgreSQL has: Patroni's `SlotsHandler.sync_replication_slots`
//! as a pure planner, with Keel's safety rules:
//!
//! - **Unknown is never absent**: when the slot list could not be read, nothing is planned at all.
//! - **Never drop what we are unsure about**: not in pause, not an active slot, not an ignored slot, not a PG 17
//!   `failover`/`synced` logical slot.
//! - **No silent re-creation of a logical slot**: on the primary, a permanent logical slot that is missing while
//!   the leader had published a position for it is reported as [`SlotAction::ContinuityBreak`] instead of being
//!   created afresh at the current LSN (its consumers would silently skip changes), unless the configuration opts
//!   in (`failover_slot_recreate: true`) or an operator asked for this slot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::advance::{advance_step, can_advance_slots, AdvanceInput, AdvanceStep};
use super::config::{SlotKind, SlotsConfig};
use super::desired::{DesiredSlot, DesiredSlots, NodeRole, SlotOrigin};
use super::readiness::Xid;
use crate::lsn::Lsn;

/// `pg_replication_slots.wal_status` (PG 13+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalStatus {
    Reserved,
    Extended,
    Unreserved,
    Lost,
}

impl WalStatus {
    pub fn parse(s: &str) -> Option<WalStatus> {
        Some(match s {
            "reserved" => WalStatus::Reserved,
            "extended" => WalStatus::Extended,
            "unreserved" => WalStatus::Unreserved,
            "lost" => WalStatus::Lost,
            _ => return None,
        })
    }
}

/// One row of `pg_replication_slots` (temporary slots are filtered out by the query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActualSlot {
    /// `Physical`, or `Logical` with the slot's database name and plugin.
    pub kind: SlotKind,
    pub active: bool,
    pub xmin: Option<Xid>,
    pub catalog_xmin: Option<Xid>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    pub wal_status: Option<WalStatus>,
    /// PG 17+ `failover` flag.
    pub failover: bool,
    /// PG 17+ `synced` flag (created by the slotsync worker).
    pub synced: bool,
}

impl ActualSlot {
    pub fn physical(restart_lsn: Option<Lsn>) -> ActualSlot {
        ActualSlot {
            kind: SlotKind::Physical,
            active: false,
            xmin: None,
            catalog_xmin: None,
            restart_lsn,
            confirmed_flush_lsn: None,
            wal_status: None,
            failover: false,
            synced: false,
        }
    }

    pub fn logical(database: &str, plugin: &str, confirmed_flush_lsn: Option<Lsn>) -> ActualSlot {
        ActualSlot {
            kind: SlotKind::Logical { database: database.into(), plugin: plugin.into() },
            restart_lsn: confirmed_flush_lsn,
            confirmed_flush_lsn,
            ..ActualSlot::physical(None)
        }
    }

    /// PG 17 native failover slots (and slots synced by the slotsync worker) belong to PostgreSQL: Keel never
    /// drops, advances or overwrites them.
    pub fn natively_managed(&self) -> bool {
        self.kind.is_logical() && (self.failover || self.synced)
    }

    fn database(&self) -> Option<&str> {
        match &self.kind {
            SlotKind::Logical { database, .. } => Some(database),
            SlotKind::Physical => None,
        }
    }

    fn plugin(&self) -> Option<&str> {
        match &self.kind {
            SlotKind::Logical { plugin, .. } => Some(plugin),
            SlotKind::Physical => None,
        }
    }
}

/// The local slot list, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActualSlots {
    /// The query failed or was not run: nothing may be concluded, least of all that a slot is missing.
    Unknown,
    Known(BTreeMap<String, ActualSlot>),
}

/// The leader as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderState {
    NoLeader,
    Me,
    Other(String),
}

/// Everything [`reconcile`] reads besides the desired and actual sets.
#[derive(Debug, Clone)]
pub struct ReconcileContext<'a> {
    pub role: NodeRole,
    pub pg_major: u32,
    pub config: &'a SlotsConfig,
    /// `pause: true`: create and advance, never drop.
    pub paused: bool,
    pub leader: LeaderState,
    /// This node runs as a primary (not in recovery). With `leader == Me`, enables the xmin cleanup on a primary.
    pub running_primary: bool,
    /// Replica: `pg_last_wal_replay_lsn()`. Advances are capped there; unknown means no advance on a replica.
    pub replay_lsn: Option<Lsn>,
    /// Failsafe mode is active (the store is down): logical copies are suspended.
    pub failsafe_active: bool,
    /// Permanent logical slots an operator asked to (re-)create despite a continuity break.
    pub recreate_requested: &'a BTreeSet<String>,
    /// Replica: logical copies that cannot be used ([`super::copycheck::check_copy`]: stale, ahead of the
    /// primary, needing missing WAL, invalidated): drop them and copy them again from the leader.
    pub recopy_requested: &'a BTreeSet<String>,
}

/// Why a slot is created (or copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateReason {
    /// Desired and not there.
    Missing,
    /// Dropped in this plan (lost, mismatched, xmin, no restart_lsn) and created again.
    Recreate(DropReason),
    /// A permanent logical slot whose consumers lose their position: `failover_slot_recreate` is on.
    ContinuityBreakAllowedByConfig { last_published: Lsn },
    /// As above, because an operator asked for this slot.
    ContinuityBreakRequested { last_published: Lsn },
}

/// Why a slot is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Not desired, not ignored ("Trying to drop unknown replication slot").
    Unknown,
    /// `wal_status = lost`: the WAL it needs is gone.
    Lost,
    /// Type, database or plugin differ from the desired slot.
    Mismatch { desired: SlotKind, actual: SlotKind },
    /// An inactive physical slot that should not be active here holds an `xmin` (fed back to the primary, it
    /// would pin the vacuum horizon).
    Xmin { xmin: Xid },
    /// A physical slot without `restart_lsn` (created without reserving WAL): it cannot be advanced.
    NoRestartLsn,
    /// Replica: a logical copy that cannot be used (see [`ReconcileContext::recopy_requested`]).
    UnusableCopy,
    /// Standby, native mode: a `synced = false` slot the primary has as a failover slot; it blocks the slotsync
    /// worker ([`super::native::leftovers`]). `failover`: the leftover's own flag.
    NativeLeftover { failover: bool },
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Unknown => write!(f, "unknown replication slot"),
            DropReason::Lost => write!(f, "wal_status=lost"),
            DropReason::Mismatch { desired, actual } => write!(f, "value is changing from {actual} to {desired}"),
            DropReason::Xmin { xmin } => write!(f, "inactive physical slot holds xmin {}", xmin.0),
            DropReason::NoRestartLsn => write!(f, "physical slot has no restart_lsn"),
            DropReason::UnusableCopy => write!(f, "the logical copy cannot be used; copying it again"),
            DropReason::NativeLeftover { failover } => write!(
                f,
                "synced=false leftover (failover={failover}) of a failover slot the primary has; it blocks the \
                 slotsync worker"
            ),
        }
    }
}

/// One step for the runtime. Actions for the same slot come in the order they must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    /// `pg_create_physical_replication_slot(slot, true)` (reserve WAL now) unless a physical slot of that name
    /// exists.
    CreatePhysical { slot: String, reason: CreateReason },
    /// Primary only: `pg_create_logical_replication_slot(slot, plugin)` in `database` unless it exists. Publish its
    /// `confirmed_flush_lsn` from then on.
    CreateLogical { slot: String, database: String, plugin: String, reason: CreateReason },
    /// Replica only: copy the slot's state file from `leader` (`pg_read_binary_file`, with the rewind or
    /// superuser credentials), checking there that type, database and plugin still match; all copies of a cycle
    /// are installed in one PostgreSQL stop/start (write to `<slot>.tmp`, fsync, rename). Afterwards reset the
    /// slot's readiness to `Copied` ([`super::readiness::ReadinessEvent::Copied`]).
    CopyLogical { slot: String, database: String, plugin: String, leader: String, reason: CreateReason },
    /// `pg_replication_slot_advance(slot, to)` on a physical slot. Errors are logged, not retried.
    AdvancePhysical { slot: String, to: Lsn },
    /// Drop the slot unless it is active (Patroni's drop-if-not-active statement). If it turns out to be active,
    /// skip the following create/copy of the same slot this cycle.
    Drop { slot: String, reason: DropReason },
    /// Primary only: a permanent logical slot that existed (the leader published `last_published` for it) is
    /// missing. Nothing is created: log it loudly, surface it in the API, and keep publishing `last_published`
    /// (see [`super::status::published_status`]) until an operator requests re-creation or removes the slot.
    ContinuityBreak { slot: String, last_published: Lsn },
}

impl SlotAction {
    pub fn slot(&self) -> &str {
        match self {
            SlotAction::CreatePhysical { slot, .. }
            | SlotAction::CreateLogical { slot, .. }
            | SlotAction::CopyLogical { slot, .. }
            | SlotAction::AdvancePhysical { slot, .. }
            | SlotAction::Drop { slot, .. }
            | SlotAction::ContinuityBreak { slot, .. } => slot,
        }
    }

    pub fn is_drop(&self) -> bool {
        matches!(self, SlotAction::Drop { .. })
    }
}

/// Plans this cycle's slot work.
pub fn reconcile(desired: &DesiredSlots, actual: &ActualSlots, ctx: &ReconcileContext) -> Vec<SlotAction> {
    let ActualSlots::Known(actual) = actual else { return Vec::new() };
    let mut out = Vec::new();
    let ignored = |name: &str, s: &ActualSlot| ctx.config.is_ignored(name, s.kind.type_str(), s.database(), s.plugin());
    // A slot we may drop at all: never in pause, never active, never ignored, never a native failover slot.
    let droppable = |name: &str, s: &ActualSlot| !ctx.paused && !s.active && !ignored(name, s) && !s.natively_managed();

    // Unknown slots.
    for (name, slot) in actual {
        if !desired.slots.contains_key(name) && droppable(name, slot) {
            out.push(SlotAction::Drop { slot: name.clone(), reason: DropReason::Unknown });
        }
    }
    // xmin cleanup only once a leader exists, and on the leader only after promotion (Patroni 4.0.5).
    let clean_xmin = match &ctx.leader {
        LeaderState::NoLeader => false,
        LeaderState::Me => ctx.running_primary,
        LeaderState::Other(_) => true,
    };
    for (name, want) in &desired.slots {
        match actual.get(name) {
            None => plan_missing(name, want, ctx, None, &mut out),
            Some(have) => {
                let drop = drop_reason(name, want, have, clean_xmin, ctx);
                match drop {
                    Some(reason) if droppable(name, have) => {
                        out.push(SlotAction::Drop { slot: name.clone(), reason: reason.clone() });
                        plan_missing(name, want, ctx, Some(reason), &mut out);
                    }
                    // Cannot drop now (paused, active, ignored, native): leave it alone this cycle.
                    Some(_) => {}
                    None => plan_existing(name, want, have, ctx, &mut out),
                }
            }
        }
    }
    out
}

fn drop_reason(
    name: &str,
    want: &DesiredSlot,
    have: &ActualSlot,
    clean_xmin: bool,
    ctx: &ReconcileContext,
) -> Option<DropReason> {
    if want.kind != have.kind {
        return Some(DropReason::Mismatch { desired: want.kind.clone(), actual: have.kind.clone() });
    }
    if have.wal_status == Some(WalStatus::Lost) {
        return Some(DropReason::Lost);
    }
    if want.kind.is_logical() && ctx.role == NodeRole::Replica && ctx.recopy_requested.contains(name) {
        return Some(DropReason::UnusableCopy);
    }
    if want.kind == SlotKind::Physical {
        if let Some(xmin) = have.xmin {
            if clean_xmin && !want.expected_active && want.origin != SlotOrigin::Retained {
                return Some(DropReason::Xmin { xmin });
            }
        }
        if have.restart_lsn.is_none() && can_advance_slots(ctx.pg_major) {
            return Some(DropReason::NoRestartLsn);
        }
    }
    None
}

/// Plans a desired slot that does not exist (or was just dropped by `dropped`).
fn plan_missing(
    name: &str,
    want: &DesiredSlot,
    ctx: &ReconcileContext,
    dropped: Option<DropReason>,
    out: &mut Vec<SlotAction>,
) {
    let slot = name.to_string();
    let SlotKind::Logical { database, plugin } = &want.kind else {
        let reason = dropped.map_or(CreateReason::Missing, CreateReason::Recreate);
        out.push(SlotAction::CreatePhysical { slot, reason });
        return;
    };
    let (database, plugin) = (database.clone(), plugin.clone());
    match ctx.role {
        NodeRole::Primary => {
            // A mismatch means the operator changed the slot's definition: that is the request to re-create it.
            let reason = match (want.lsn, dropped) {
                (_, Some(r @ DropReason::Mismatch { .. })) => CreateReason::Recreate(r),
                (None, Some(r)) => CreateReason::Recreate(r),
                (None, None) => CreateReason::Missing,
                (Some(last_published), _) if ctx.recreate_requested.contains(name) => {
                    CreateReason::ContinuityBreakRequested { last_published }
                }
                (Some(last_published), _) if ctx.config.recreate_missing_logical => {
                    CreateReason::ContinuityBreakAllowedByConfig { last_published }
                }
                (Some(last_published), _) => {
                    out.push(SlotAction::ContinuityBreak { slot, last_published });
                    return;
                }
            };
            out.push(SlotAction::CreateLogical { slot, database, plugin, reason });
        }
        NodeRole::Replica => {
            // Copy only what the leader published a position for, only from a leader that is not us, never while
            // failsafe mode is active.
            let LeaderState::Other(leader) = &ctx.leader else { return };
            if want.lsn.is_none() || ctx.failsafe_active {
                return;
            }
            let reason = dropped.map_or(CreateReason::Missing, CreateReason::Recreate);
            out.push(SlotAction::CopyLogical { slot, database, plugin, leader: leader.clone(), reason });
        }
    }
}

/// Plans a desired slot that exists and matches: advance a physical slot ([`super::advance::advance_step`] with
/// the published position). Logical copies on replicas are advanced by the agent's follower with the same rule
/// (it reads the leader's positions every 100 ms); on the primary their consumers move them.
fn plan_existing(name: &str, want: &DesiredSlot, have: &ActualSlot, ctx: &ReconcileContext, out: &mut Vec<SlotAction>) {
    if !can_advance_slots(ctx.pg_major) || have.active || have.natively_managed() {
        return;
    }
    if want.kind != SlotKind::Physical || want.expected_active || have.xmin.is_some() {
        return;
    }
    let step = advance_step(&AdvanceInput {
        role: ctx.role,
        leader: None,
        published: want.lsn,
        replay: ctx.replay_lsn,
        current: have.restart_lsn,
        unproven: false,
    });
    if let AdvanceStep::To(to) = step {
        out.push(SlotAction::AdvancePhysical { slot: name.to_string(), to });
    }
}
