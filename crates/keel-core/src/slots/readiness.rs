//! Readiness of a copied logical slot on a replica: is it safe to use after promoting this replica?
//!
//! Notation (postgresql-slots.md §8): A is the primary with logical slot S, B this replica with the copy S′, and
//! P B's physical slot on A (for a cascading replica: the first hop's slot, [`super::slot_name_on_primary`]).
//!
//! The state machine, per replica and logical slot, advanced once per cycle by [`step`]:
//!
//! ```text
//! Missing ──copy installed──▶ Copied ──R2 holds──▶ Protected ──advance ok (R3)──▶ Advanced ──R1,R4,R5──▶ Ready
//!    ▲                          ▲  ▲                    │                              │                   │
//!    └──── slot gone ───────────┘  └── P missing, P.catalog_xmin NULL, re-copy, advance error ◀────────────┘
//! ```
//!
//! - **R2 (catalog protection)**: at the first observation after installation at which P.catalog_xmin is not
//!   NULL, record p0 = S.catalog_xmin on A. Protected while `p0 ≤ P.catalog_xmin ≤ S′.catalog_xmin`. Seeing P
//!   missing or its catalog_xmin NULL afterwards restarts the procedure (p0 is forgotten). A leader that could not
//!   be asked changes nothing: unknown is not NULL.
//! - **R3 (WAL present)**: at least one `pg_replication_slot_advance` of S′ succeeded since it was installed.
//! - **R1 (health)**: `restart_lsn` set, `wal_status` reserved/extended (or unknown before PG 13), not
//!   invalidated/conflicting. **R4 (local snapshot)**: S′.restart_lsn moved since installation, i.e. B's own
//!   decoding serialized a snapshot. **R5**: S′.confirmed_flush ≤ B's replay LSN.
//!
//! # Transaction ids
//!
//! catalog_xmin values are 32-bit xids that wrap around. [`Xid::precedes`] is PostgreSQL's
//! `TransactionIdPrecedes`: for two normal xids (≥ 3) `a` precedes `b` when `(a - b) mod 2³²`, read as a signed
//! 32-bit number, is negative, i.e. `a` is less than 2³¹ transactions behind `b` on the circle; the special xids
//! 0–2 (invalid, bootstrap, frozen) compare as plain unsigned numbers. This is only meaningful for xids less than
//! 2³¹ apart, which PostgreSQL guarantees for live xids (wraparound protection).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::copycheck::{CopyFailure, CopyProblem};
use super::reconcile::WalStatus;
use crate::lsn::Lsn;

/// A 32-bit transaction id as `pg_replication_slots` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Xid(pub u32);

/// The first normal xid (`FirstNormalTransactionId`).
pub const FIRST_NORMAL_XID: u32 = 3;

impl Xid {
    pub fn is_normal(self) -> bool {
        self.0 >= FIRST_NORMAL_XID
    }

    /// `TransactionIdPrecedes(self, other)`: modulo-2³² comparison for normal xids.
    pub fn precedes(self, other: Xid) -> bool {
        if !self.is_normal() || !other.is_normal() {
            return self.0 < other.0;
        }
        (self.0.wrapping_sub(other.0) as i32) < 0
    }

    /// `TransactionIdPrecedesOrEquals(self, other)`.
    pub fn precedes_or_equals(self, other: Xid) -> bool {
        self == other || self.precedes(other)
    }
}

/// The stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Missing,
    Copied,
    Protected,
    Advanced,
    Ready,
}

/// The tracked state of one logical slot on this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotReadiness {
    pub stage: Stage,
    /// S.catalog_xmin on A at the first observation of a non-NULL P.catalog_xmin since installation.
    pub p0: Option<Xid>,
    /// An advance succeeded since installation (R3).
    pub advanced: bool,
    /// S′.restart_lsn right after installation (R4 compares with it).
    pub installed_restart_lsn: Option<Lsn>,
}

impl SlotReadiness {
    pub const MISSING: SlotReadiness =
        SlotReadiness { stage: Stage::Missing, p0: None, advanced: false, installed_restart_lsn: None };

    pub fn is_ready(&self) -> bool {
        self.stage == Stage::Ready
    }

    fn installed(restart_lsn: Option<Lsn>) -> SlotReadiness {
        SlotReadiness { stage: Stage::Copied, p0: None, advanced: false, installed_restart_lsn: restart_lsn }
    }
}

/// Something the runtime did to this slot since the last step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadinessEvent {
    /// The state file was written and PostgreSQL restarted.
    Copied,
    AdvanceSucceeded,
    AdvanceFailed(CopyFailure),
}

/// The local slot S′ as `pg_replication_slots` shows it on this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLogicalSlot {
    pub catalog_xmin: Option<Xid>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    pub wal_status: Option<WalStatus>,
    /// PG 16 `conflicting` or PG 17+ `invalidation_reason IS NOT NULL`.
    pub invalidated: bool,
}

/// P.catalog_xmin as read on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryPhysicalSlot {
    /// The leader could not be asked (or there is none): no conclusion.
    Unknown,
    /// P does not exist on the primary.
    Missing,
    /// P exists with a NULL catalog_xmin (no feedback, or hot_standby_feedback off).
    NullCatalogXmin,
    CatalogXmin(Xid),
}

/// One cycle's observations for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessObservation {
    pub event: Option<ReadinessEvent>,
    /// `None`: the slot does not exist locally.
    pub local: Option<LocalLogicalSlot>,
    /// `pg_last_wal_replay_lsn()` on this replica.
    pub replay_lsn: Option<Lsn>,
    pub primary_physical: PrimaryPhysicalSlot,
    /// S.catalog_xmin on the primary now (`None` when unknown or S is missing there).
    pub primary_logical_catalog_xmin: Option<Xid>,
    /// What [`super::copycheck::check_copy`] found wrong with the copy (or with copying it): never ready then.
    pub problem: Option<CopyProblem>,
}

/// Why a slot is at its stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadinessReason {
    SlotMissing,
    /// The primary could not be asked this cycle; the previous protection state is kept.
    PrimaryUnknown,
    PrimaryPhysicalSlotMissing,
    /// P.catalog_xmin is NULL: check `hot_standby_feedback` and that this replica streams through its slot.
    CatalogXminNull,
    /// p0 could not be recorded: S's catalog_xmin on the primary is unknown.
    PrimaryLogicalUnknown,
    /// The copy has no catalog_xmin.
    CopyCatalogXminNull,
    /// P.catalog_xmin has not yet overtaken p0.
    WaitingForPrimaryHorizon {
        p0: Xid,
        primary: Xid,
    },
    /// P.catalog_xmin is newer than the copy's: rows the copy needs may already be gone. Re-copy.
    CopyOlderThanPrimaryHorizon {
        copy: Xid,
        primary: Xid,
    },
    WaitingForAdvance,
    AdvanceFailed(CopyFailure),
    /// The copy cannot be used (or not be made) as it is: see [`CopyProblem`].
    Unusable(CopyProblem),
    /// R1: restart_lsn NULL, wal_status unreserved/lost, or invalidated.
    Unhealthy,
    /// R4: restart_lsn has not moved since installation (an idle primary may need `pg_log_standby_snapshot()`).
    WaitingForLocalSnapshot,
    /// R5: the slot is ahead of this replica's replay position.
    AheadOfReplay {
        confirmed_flush: Lsn,
        replay: Option<Lsn>,
    },
    /// A copy created on this standby (16+) starts at `start`; the primary's consumer has confirmed only up to
    /// `primary` (`super::online_copy`).
    WaitingForPrimaryConsumer {
        start: Option<Lsn>,
        primary: Option<Lsn>,
    },
    Ready,
}

impl fmt::Display for ReadinessReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ReadinessReason::*;
        match self {
            SlotMissing => write!(f, "slot does not exist locally"),
            PrimaryUnknown => write!(f, "primary could not be asked"),
            PrimaryPhysicalSlotMissing => write!(f, "our physical slot does not exist on the primary"),
            CatalogXminNull => {
                write!(f, "our physical slot on the primary has no catalog_xmin (hot_standby_feedback?)")
            }
            PrimaryLogicalUnknown => write!(f, "catalog_xmin of the slot on the primary is unknown"),
            CopyCatalogXminNull => write!(f, "local copy has no catalog_xmin"),
            WaitingForPrimaryHorizon { p0, primary } => {
                write!(f, "primary physical catalog_xmin {} has not reached {}", primary.0, p0.0)
            }
            CopyOlderThanPrimaryHorizon { copy, primary } => {
                write!(f, "local catalog_xmin {} is older than the primary's horizon {}", copy.0, primary.0)
            }
            WaitingForAdvance => write!(f, "waiting for a successful advance"),
            AdvanceFailed(why) => write!(f, "advance failed: {why}"),
            Unusable(problem) => write!(f, "{problem}"),
            Unhealthy => write!(f, "slot is invalidated, lost or has no restart_lsn"),
            WaitingForLocalSnapshot => write!(f, "restart_lsn has not moved since the copy"),
            AheadOfReplay { confirmed_flush, replay } => {
                write!(f, "confirmed_flush {confirmed_flush} is ahead of replay {replay:?}")
            }
            WaitingForPrimaryConsumer { start, primary } => {
                let at = |l: &Option<Lsn>| l.map_or_else(|| "unknown".to_string(), |l| l.to_string());
                write!(f, "created here at {}; the primary's consumer has confirmed only {}", at(start), at(primary))
            }
            Ready => write!(f, "safe to use after a failover"),
        }
    }
}

impl ReadinessReason {
    /// A short snake_case code (API, metric labels).
    pub fn code(&self) -> &'static str {
        use ReadinessReason::*;
        match self {
            SlotMissing => "slot_missing",
            PrimaryUnknown => "primary_unknown",
            PrimaryPhysicalSlotMissing => "primary_physical_slot_missing",
            CatalogXminNull => "catalog_xmin_null",
            PrimaryLogicalUnknown => "primary_logical_unknown",
            CopyCatalogXminNull => "copy_catalog_xmin_null",
            WaitingForPrimaryHorizon { .. } => "waiting_for_primary_horizon",
            CopyOlderThanPrimaryHorizon { .. } => "copy_older_than_primary_horizon",
            WaitingForAdvance => "waiting_for_advance",
            AdvanceFailed(_) => "advance_failed",
            Unusable(p) => p.code(),
            Unhealthy => "unhealthy",
            WaitingForLocalSnapshot => "waiting_for_local_snapshot",
            AheadOfReplay { .. } => "ahead_of_replay",
            WaitingForPrimaryConsumer { .. } => "waiting_for_primary_consumer",
            Ready => "ready",
        }
    }
}

/// Advances one slot's readiness by one observation.
pub fn step(prev: &SlotReadiness, obs: &ReadinessObservation) -> (SlotReadiness, ReadinessReason) {
    // A copy with a known problem is never ready, whatever else holds; it starts over once replaced.
    if let Some(problem) = &obs.problem {
        let st = match &obs.local {
            None => SlotReadiness::MISSING,
            Some(l) => SlotReadiness { stage: Stage::Copied, p0: None, ..SlotReadiness::installed(l.restart_lsn) },
        };
        return (st, ReadinessReason::Unusable(problem.clone()));
    }
    let Some(local) = &obs.local else { return (SlotReadiness::MISSING, ReadinessReason::SlotMissing) };
    let mut st = match (&obs.event, prev.stage) {
        (Some(ReadinessEvent::Copied), _) | (_, Stage::Missing) => SlotReadiness::installed(local.restart_lsn),
        _ => prev.clone(),
    };
    match &obs.event {
        Some(ReadinessEvent::AdvanceSucceeded) => st.advanced = true,
        Some(ReadinessEvent::AdvanceFailed(why)) => {
            st.advanced = false;
            st.stage = Stage::Copied;
            return (st, ReadinessReason::AdvanceFailed(why.clone()));
        }
        _ => {}
    }
    // R2.
    let protected = match obs.primary_physical {
        // The leader cannot be asked (typically: it is gone and a failover is under way). Keep the protection we
        // had established: a primary that is gone prunes nothing any more. Never claim more than we had.
        PrimaryPhysicalSlot::Unknown if st.stage >= Stage::Protected => Ok(()),
        PrimaryPhysicalSlot::Unknown => Err((ReadinessReason::PrimaryUnknown, false)),
        PrimaryPhysicalSlot::Missing => Err((ReadinessReason::PrimaryPhysicalSlotMissing, true)),
        PrimaryPhysicalSlot::NullCatalogXmin => Err((ReadinessReason::CatalogXminNull, true)),
        PrimaryPhysicalSlot::CatalogXmin(p) => {
            if st.p0.is_none() {
                st.p0 = obs.primary_logical_catalog_xmin;
            }
            match (st.p0, local.catalog_xmin) {
                (None, _) => Err((ReadinessReason::PrimaryLogicalUnknown, false)),
                (_, None) => Err((ReadinessReason::CopyCatalogXminNull, false)),
                (Some(p0), Some(copy)) => {
                    if !p0.precedes_or_equals(p) {
                        Err((ReadinessReason::WaitingForPrimaryHorizon { p0, primary: p }, false))
                    } else if !p.precedes_or_equals(copy) {
                        Err((ReadinessReason::CopyOlderThanPrimaryHorizon { copy, primary: p }, false))
                    } else {
                        Ok(())
                    }
                }
            }
        }
    };
    if let Err((reason, restart)) = protected {
        if restart {
            st.p0 = None;
        }
        st.stage = Stage::Copied;
        return (st, reason);
    }
    if !st.advanced {
        st.stage = Stage::Protected;
        return (st, ReadinessReason::WaitingForAdvance);
    }
    st.stage = Stage::Advanced;
    let healthy = local.restart_lsn.is_some()
        && !local.invalidated
        && !matches!(local.wal_status, Some(WalStatus::Lost | WalStatus::Unreserved));
    if !healthy {
        return (st, ReadinessReason::Unhealthy);
    }
    let moved = match (local.restart_lsn, st.installed_restart_lsn) {
        (Some(now), Some(then)) => now > then,
        (Some(_), None) => true,
        _ => false,
    };
    if !moved {
        return (st, ReadinessReason::WaitingForLocalSnapshot);
    }
    if let Some(cf) = local.confirmed_flush_lsn {
        if obs.replay_lsn.is_none_or(|r| cf > r) {
            return (st, ReadinessReason::AheadOfReplay { confirmed_flush: cf, replay: obs.replay_lsn });
        }
    }
    st.stage = Stage::Ready;
    (st, ReadinessReason::Ready)
}

/// What a member publishes in its key as `"keel_slots": {"ready": bool, "unready": [names]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SlotsReadiness {
    pub ready: bool,
    #[serde(default)]
    pub unready: Vec<String>,
}

/// The member-key field name of [`SlotsReadiness`].
pub const MEMBER_KEY_FIELD: &str = "keel_slots";

impl SlotsReadiness {
    /// Ready when every desired logical slot is `Ready` (a slot with no tracked state is unready).
    pub fn summarize<'a>(
        desired_logical: impl IntoIterator<Item = &'a str>,
        states: &BTreeMap<String, SlotReadiness>,
    ) -> SlotsReadiness {
        let unready: Vec<String> = desired_logical
            .into_iter()
            .filter(|n| !states.get(*n).is_some_and(SlotReadiness::is_ready))
            .map(str::to_string)
            .collect();
        SlotsReadiness { ready: unready.is_empty(), unready }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"ready": self.ready, "unready": self.unready})
    }

    /// Lenient reading: `ready` defaults to "no unready slots listed"; non-string names are skipped. `None` when
    /// the value is not an object or says nothing.
    pub fn from_json(v: &serde_json::Value) -> Option<SlotsReadiness> {
        let m = v.as_object()?;
        let unready: Vec<String> = m
            .get("unready")
            .and_then(serde_json::Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let ready = match m.get("ready").and_then(crate::dynconfig::parse_bool) {
            Some(r) => r,
            None if m.contains_key("unready") => unready.is_empty(),
            None => return None,
        };
        Some(SlotsReadiness { ready: ready && unready.is_empty(), unready })
    }
}
