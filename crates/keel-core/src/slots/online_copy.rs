//! Copying a permanent logical slot to a replica without restarting it (PostgreSQL 16+), decided here so that the
//! agent only executes (postgresql-slots.md §8, "PG 16 without file copying"):
//!
//! - [`copy_technique`]: per major, create the copy on the standby with `pg_create_logical_replication_slot`
//!   (logical decoding on standbys exists from 16 on) or copy the state file and restart (15 and older);
//! - [`create_failed`]: what a failed creation calls for, by SQLSTATE: fall back to the file copy (named in the
//!   log), or try again later with the re-copy backoff;
//! - [`online_gate`]: a created copy starts where this standby's decoding found a consistent point, which may be
//!   ahead of what the primary's consumer confirmed. Until the primary's slot has confirmed past that start, the
//!   copy would skip changes the consumer has not confirmed: it is not ready ([`gate_readiness`]), and being
//!   ahead of the primary is the expected wait, not a reason to drop it ([`gate_verdict`]).
//!
//! Once the gate has passed, the copy is advanced and judged exactly like a file copy.

use std::fmt;

use super::copycheck::{CopyProblem, CopyVerdict, Position};
use super::readiness::{ReadinessReason, SlotReadiness, Stage};
use crate::lsn::Lsn;

/// Logical slots can be created on a standby from this major on.
pub const CREATE_ON_STANDBY_MAJOR: u32 = 16;

/// How a copy is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyTechnique {
    /// `pg_create_logical_replication_slot` on the standby, no restart (16+).
    CreateOnStandby,
    /// The leader's state file installed in one stop/start of PostgreSQL (every major; the only way before 16).
    FileAndRestart,
}

impl fmt::Display for CopyTechnique {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyTechnique::CreateOnStandby => "created on the standby",
            CopyTechnique::FileAndRestart => "state file copy and restart",
        })
    }
}

/// The technique for a replica running PostgreSQL `pg_major`. Pure.
pub fn copy_technique(pg_major: u32) -> CopyTechnique {
    if pg_major >= CREATE_ON_STANDBY_MAJOR {
        CopyTechnique::CreateOnStandby
    } else {
        CopyTechnique::FileAndRestart
    }
}

/// Why creating a copy on the standby failed, from its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateFailure {
    /// 55000: a prerequisite is missing (e.g. the primary's `wal_level` is below `logical`).
    Prerequisite,
    /// 0A000: the server cannot decode in recovery.
    Unsupported,
    /// 53400: `max_replication_slots` is reached.
    NoFreeSlot,
    /// 42710: a slot of that name exists already (seen on the next cycle).
    Exists,
    /// 3D000: the slot's database does not exist.
    DatabaseMissing,
    /// 58P01: the output plugin is not installed on this node.
    PluginMissing,
    /// 57014, or no consistent point within the deadline.
    Timeout,
    /// No SQLSTATE, class 08, or the server is shutting down or starting (57P01–57P03).
    Connection,
    Other {
        sqlstate: String,
    },
}

impl CreateFailure {
    /// Classifies a failed creation by SQLSTATE (`timed_out`: the client's deadline passed). Pure.
    pub fn classify(sqlstate: Option<&str>, timed_out: bool) -> CreateFailure {
        if timed_out {
            return CreateFailure::Timeout;
        }
        match sqlstate {
            None => CreateFailure::Connection,
            Some("55000") => CreateFailure::Prerequisite,
            Some("0A000") => CreateFailure::Unsupported,
            Some("53400") => CreateFailure::NoFreeSlot,
            Some("42710") => CreateFailure::Exists,
            Some("3D000") => CreateFailure::DatabaseMissing,
            Some("58P01") => CreateFailure::PluginMissing,
            Some("57014") => CreateFailure::Timeout,
            Some("57P01" | "57P02" | "57P03") => CreateFailure::Connection,
            Some(c) if c.starts_with("08") => CreateFailure::Connection,
            Some(c) => CreateFailure::Other { sqlstate: c.to_string() },
        }
    }
}

impl fmt::Display for CreateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateFailure::Prerequisite => write!(f, "a prerequisite of decoding on a standby is missing (55000)"),
            CreateFailure::Unsupported => write!(f, "this server cannot decode in recovery (0A000)"),
            CreateFailure::NoFreeSlot => write!(f, "max_replication_slots is reached (53400); raise it"),
            CreateFailure::Exists => write!(f, "a slot of that name exists already (42710)"),
            CreateFailure::DatabaseMissing => write!(f, "the slot's database does not exist here (3D000)"),
            CreateFailure::PluginMissing => write!(f, "the output plugin is not installed on this node (58P01)"),
            CreateFailure::Timeout => write!(f, "no consistent point within the deadline"),
            CreateFailure::Connection => write!(f, "connection failed"),
            CreateFailure::Other { sqlstate } => write!(f, "SQLSTATE {sqlstate}"),
        }
    }
}

/// What a failed creation calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateRemedy {
    /// Copy the state file and restart instead, now.
    FallBackToFileCopy,
    /// Try creating it again after the re-copy backoff (a file copy would not help, or the cause is transient).
    RetryLater,
}

/// What to do after a failed creation. Only the causes a file copy avoids fall back to it: the standby cannot
/// decode in recovery (55000, 0A000). A missing plugin, database or free slot would break a file copy too (worse:
/// PostgreSQL refuses to start with more slot files than `max_replication_slots`). Pure.
pub fn create_failed(failure: &CreateFailure) -> CreateRemedy {
    match failure {
        CreateFailure::Prerequisite | CreateFailure::Unsupported => CreateRemedy::FallBackToFileCopy,
        _ => CreateRemedy::RetryLater,
    }
}

/// Where a copy created on this standby starts: its `confirmed_flush_lsn` (else `restart_lsn`) right after the
/// creation. `None` when PostgreSQL showed neither (the gate then never passes: re-created by the backoff).
pub fn start_point(confirmed_flush: Option<Lsn>, restart_lsn: Option<Lsn>) -> Option<Lsn> {
    confirmed_flush.or(restart_lsn)
}

/// Whether the primary's consumer has confirmed past where a created copy starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnlineGate {
    /// The primary's slot has confirmed at or past the start: the copy is judged like any other from now on.
    Passed,
    /// Not yet (`primary`: the primary's `confirmed_flush_lsn`, `None` when unknown).
    Waiting { start: Option<Lsn>, primary: Option<Lsn> },
}

/// The gate of a copy created at `start`, given the primary's `confirmed_flush_lsn`. Pure.
pub fn online_gate(start: Option<Lsn>, primary_confirmed: Option<Lsn>) -> OnlineGate {
    match (start, primary_confirmed) {
        (Some(s), Some(p)) if p >= s => OnlineGate::Passed,
        _ => OnlineGate::Waiting { start, primary: primary_confirmed },
    }
}

/// While the gate waits, a created copy's `confirmed_flush_lsn` ahead of the primary's is the wait itself, not
/// a copy to drop (the follower never advances it past the primary). Every other verdict stands. Pure.
pub fn gate_verdict(verdict: CopyVerdict, gate: &OnlineGate) -> CopyVerdict {
    let ahead = matches!(
        verdict.problem(),
        Some(CopyProblem::AheadOfPrimary { position: Position::ConfirmedFlush | Position::RestartLsn, .. })
    );
    match gate {
        OnlineGate::Waiting { .. } if ahead => CopyVerdict::Fine,
        _ => verdict,
    }
}

/// A created copy whose gate waits is never more than `Advanced`, with the reason that names the wait; earlier
/// reasons (protection, advance failures, problems) are kept as they are more telling. Pure.
pub fn gate_readiness(
    next: SlotReadiness,
    reason: ReadinessReason,
    gate: &OnlineGate,
) -> (SlotReadiness, ReadinessReason) {
    let OnlineGate::Waiting { start, primary } = *gate else { return (next, reason) };
    if next.stage < Stage::Advanced {
        return (next, reason);
    }
    let st = SlotReadiness { stage: Stage::Advanced, ..next };
    (st, ReadinessReason::WaitingForPrimaryConsumer { start, primary })
}

#[cfg(test)]
#[path = "online_copy_tests.rs"]
mod tests;
