//! Whether a replica's copy of a permanent logical slot can be used, and what to do when it cannot.
//!
//! - [`classify`]: a failed `pg_replication_slot_advance` (or slot statement) as a typed [`CopyFailure`], by
//!   SQLSTATE and the positions involved, never by message text.
//! - [`check_copy`]: one copy against the primary's slot and this replica's WAL: fine, re-copy now, or blocked
//!   (a re-copy cannot help yet), each with a typed [`CopyProblem`] that keeps the copy out of `Ready`.
//! - [`copyable`]: whether copying the primary's slot now would give a usable copy (its `restart_lsn` must be in
//!   WAL this replica still has).
//! - the re-copy backoff and what to copy from the leader are in [`super::recopy`].
//!
//! The stale-copy rule (postgresql-slots.md H3, H10): a copy must never be ahead of the primary's slot. A copy is
//! stale when this node's data directory was rewound or rebuilt since the copy was made (pg_rewind keeps
//! `pg_replslot`), when its `confirmed_flush_lsn` is ahead of the primary's, or when its `restart_lsn` is ahead of
//! the primary's and the copy was not made here. A copy made here moves its `restart_lsn` through this replica's
//! own decoding (readiness R4), which may legitimately pass the primary's; its `confirmed_flush_lsn` never passes
//! the primary's, because the follower advances it to at most the primary's position.

use std::fmt;

use serde::Serialize;

use crate::lsn::Lsn;

/// Why a slot statement failed, from its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CopyFailure {
    /// 58P01: WAL the slot needs (from its `restart_lsn`) is not in this node's `pg_wal`.
    MissingWal,
    /// 3D000: the slot's database does not exist.
    DatabaseMissing,
    /// 55000 on a connection to another database than the slot's, which PostgreSQL 16 and older refuse: a bug.
    WrongDatabase,
    /// 55000 with a target behind the slot's position ("minimum is"): the copy is ahead of the target or of replay.
    TargetBehindCopy,
    /// 55000 otherwise: the slot never reserved WAL, or it was invalidated.
    Invalidated,
    /// 42704: the slot does not exist.
    SlotMissing,
    /// 55006: another process uses the slot.
    SlotActive,
    /// 42501.
    PermissionDenied,
    /// 57014, or no answer within the deadline.
    Timeout,
    /// No SQLSTATE (the connection failed or closed), class 08, or the server shutting down (57P01–57P03).
    Connection,
    /// Any other SQLSTATE.
    Other { sqlstate: String },
}

/// What a [`CopyFailure`] calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// Transient: the follower tries again on a later tick.
    Retry,
    /// The copy cannot be used: copy it again from the primary (when [`copyable`], with backoff).
    Recopy,
    /// Neither retrying nor re-copying helps: report it until the cause is fixed.
    Report,
}

/// A failed statement and the facts that tell its SQLSTATE's causes apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureContext<'a> {
    /// `None`: no server error (connection failure).
    pub sqlstate: Option<&'a str>,
    /// The statement ran out of time on the client side.
    pub timed_out: bool,
    /// The database the statement ran in, and the slot's (`None` for a physical slot).
    pub connected_database: &'a str,
    pub slot_database: Option<&'a str>,
    pub pg_major: u32,
    /// The advance target, and the slot's position (`confirmed_flush_lsn`, or `restart_lsn` for a physical slot)
    /// when it was last read.
    pub target: Option<Lsn>,
    pub position: Option<Lsn>,
}

/// PostgreSQL 17 skips the database check in fast-forward advances; 16 and older refuse another database's slot.
const ADVANCE_ANY_DATABASE_MAJOR: u32 = 17;

/// Classifies a failure by SQLSTATE. Pure.
pub fn classify(c: &FailureContext<'_>) -> CopyFailure {
    if c.timed_out {
        return CopyFailure::Timeout;
    }
    let Some(code) = c.sqlstate else { return CopyFailure::Connection };
    match code {
        "58P01" => CopyFailure::MissingWal,
        "3D000" => CopyFailure::DatabaseMissing,
        "42704" => CopyFailure::SlotMissing,
        "55006" => CopyFailure::SlotActive,
        "42501" => CopyFailure::PermissionDenied,
        "57014" => CopyFailure::Timeout,
        "57P01" | "57P02" | "57P03" => CopyFailure::Connection,
        c8 if c8.starts_with("08") => CopyFailure::Connection,
        "55000" => {
            let other_db = c.slot_database.is_some_and(|db| db != c.connected_database);
            if other_db && c.pg_major < ADVANCE_ANY_DATABASE_MAJOR {
                CopyFailure::WrongDatabase
            } else if matches!((c.target, c.position), (Some(t), Some(p)) if t < p) {
                CopyFailure::TargetBehindCopy
            } else {
                CopyFailure::Invalidated
            }
        }
        other => CopyFailure::Other { sqlstate: other.to_string() },
    }
}

impl CopyFailure {
    pub fn remedy(&self) -> Remedy {
        match self {
            CopyFailure::MissingWal | CopyFailure::Invalidated | CopyFailure::SlotMissing => Remedy::Recopy,
            CopyFailure::DatabaseMissing | CopyFailure::WrongDatabase | CopyFailure::PermissionDenied => Remedy::Report,
            CopyFailure::TargetBehindCopy
            | CopyFailure::SlotActive
            | CopyFailure::Timeout
            | CopyFailure::Connection
            | CopyFailure::Other { .. } => Remedy::Retry,
        }
    }

    /// A short snake_case code (API, metrics labels).
    pub fn code(&self) -> &'static str {
        match self {
            CopyFailure::MissingWal => "missing_wal",
            CopyFailure::DatabaseMissing => "database_missing",
            CopyFailure::WrongDatabase => "wrong_database",
            CopyFailure::TargetBehindCopy => "target_behind_copy",
            CopyFailure::Invalidated => "invalidated",
            CopyFailure::SlotMissing => "slot_missing",
            CopyFailure::SlotActive => "slot_active",
            CopyFailure::PermissionDenied => "permission_denied",
            CopyFailure::Timeout => "timeout",
            CopyFailure::Connection => "connection",
            CopyFailure::Other { .. } => "other",
        }
    }
}

impl fmt::Display for CopyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyFailure::MissingWal => write!(f, "WAL the slot needs is no longer (or never was) on this node"),
            CopyFailure::DatabaseMissing => write!(f, "the slot's database does not exist"),
            CopyFailure::WrongDatabase => write!(f, "advanced over a connection to another database (a Keel bug)"),
            CopyFailure::TargetBehindCopy => write!(f, "the target is behind the slot's position"),
            CopyFailure::Invalidated => write!(f, "the slot never reserved WAL or was invalidated"),
            CopyFailure::SlotMissing => write!(f, "the slot does not exist"),
            CopyFailure::SlotActive => write!(f, "the slot is in use by another process"),
            CopyFailure::PermissionDenied => write!(f, "permission denied (the role needs REPLICATION)"),
            CopyFailure::Timeout => write!(f, "no answer in time"),
            CopyFailure::Connection => write!(f, "connection failed"),
            CopyFailure::Other { sqlstate } => write!(f, "SQLSTATE {sqlstate}"),
        }
    }
}

/// How this node's data directory was rebuilt (and its slot files became someone else's history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rebuild {
    /// pg_rewind: keeps `pg_replslot` from before the rewind.
    Rewind,
    /// Re-cloned from another member (pg_basebackup).
    Reclone,
}

/// Which position of a copy is ahead of the primary's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    ConfirmedFlush,
    RestartLsn,
}

/// Why a copy is not usable, whatever the readiness stages say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CopyProblem {
    /// The copy's (or, before a copy, the primary slot's) `restart_lsn` is older than this node's oldest WAL.
    NeedsMissingWal {
        needs: Option<Lsn>,
        oldest_wal: Option<Lsn>,
    },
    /// The copy is ahead of the primary's slot: promoting with it would skip changes.
    AheadOfPrimary {
        position: Position,
        copy: Lsn,
        primary: Lsn,
    },
    /// The data directory was rewound or re-cloned since the copy was made.
    Stale {
        cause: Rebuild,
    },
    DatabaseMissing {
        database: String,
    },
    WrongDatabase {
        database: String,
    },
    /// The copy never reserved WAL or was invalidated.
    Invalidated,
    PermissionDenied,
}

impl CopyProblem {
    pub fn code(&self) -> &'static str {
        match self {
            CopyProblem::NeedsMissingWal { .. } => "needs_missing_wal",
            CopyProblem::AheadOfPrimary { .. } => "ahead_of_primary",
            CopyProblem::Stale { .. } => "stale",
            CopyProblem::DatabaseMissing { .. } => "database_missing",
            CopyProblem::WrongDatabase { .. } => "wrong_database",
            CopyProblem::Invalidated => "invalidated",
            CopyProblem::PermissionDenied => "permission_denied",
        }
    }

    /// Whether copying the slot again from the primary can fix it.
    pub fn recopy_helps(&self) -> bool {
        !matches!(
            self,
            CopyProblem::DatabaseMissing { .. } | CopyProblem::WrongDatabase { .. } | CopyProblem::PermissionDenied
        )
    }

    /// Whether the copy must go even when it cannot be replaced yet (it claims positions the primary lacks).
    pub fn must_drop(&self) -> bool {
        matches!(self, CopyProblem::AheadOfPrimary { .. } | CopyProblem::Stale { .. })
    }
}

impl fmt::Display for CopyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |l: &Option<Lsn>| l.map_or_else(|| "unknown".to_string(), |l| l.to_string());
        match self {
            CopyProblem::NeedsMissingWal { needs, oldest_wal } => write!(
                f,
                "needs WAL from {} but this node's oldest WAL starts at {}; copied again once the primary's slot \
                 has moved past it",
                at(needs),
                at(oldest_wal)
            ),
            CopyProblem::AheadOfPrimary { position, copy, primary } => {
                let what = match position {
                    Position::ConfirmedFlush => "confirmed_flush_lsn",
                    Position::RestartLsn => "restart_lsn",
                };
                write!(f, "{what} {copy} is ahead of the primary's {primary}; dropped and copied again")
            }
            CopyProblem::Stale { cause } => {
                let how = match cause {
                    Rebuild::Rewind => "rewound",
                    Rebuild::Reclone => "re-cloned",
                };
                write!(f, "this node was {how} since the copy was made; dropped and copied again")
            }
            CopyProblem::DatabaseMissing { database } => {
                write!(f, "database {database:?} does not exist; create it or fix the slot's configuration")
            }
            CopyProblem::WrongDatabase { database } => {
                write!(f, "advanced outside its database {database:?} (a Keel bug; please report it)")
            }
            CopyProblem::Invalidated => write!(f, "the copy never reserved WAL or was invalidated"),
            CopyProblem::PermissionDenied => write!(f, "permission denied advancing the copy"),
        }
    }
}

/// A slot's positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotPositions {
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
}

/// The primary's slot as this replica read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimarySlot {
    /// Could not be read: nothing is concluded from it.
    Unknown,
    Missing,
    Known(SlotPositions),
}

/// Everything [`check_copy`] reads for one permanent logical slot on a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCheckInput<'a> {
    pub database: &'a str,
    /// The local copy (`None`: there is none).
    pub copy: Option<SlotPositions>,
    pub primary: PrimarySlot,
    /// The start of the oldest WAL segment in this node's `pg_wal` (`None`: unknown).
    pub oldest_wal: Option<Lsn>,
    /// The copy was installed by this agent (its `restart_lsn` moves by local decoding).
    pub made_here: bool,
    /// The data directory was rebuilt since the copy was made.
    pub rebuilt: Option<Rebuild>,
    /// The last advance failure, cleared by a success.
    pub failure: Option<CopyFailure>,
}

/// What to do with one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyVerdict {
    /// Nothing wrong is known: readiness decides.
    Fine,
    /// Not usable: drop it and copy it again from the primary now.
    Recopy(CopyProblem),
    /// Not usable, and a copy now would not help. `drop`: remove the copy meanwhile (it claims positions the
    /// primary does not have).
    Blocked { problem: CopyProblem, drop: bool },
}

impl CopyVerdict {
    pub fn problem(&self) -> Option<&CopyProblem> {
        match self {
            CopyVerdict::Fine => None,
            CopyVerdict::Recopy(p) | CopyVerdict::Blocked { problem: p, .. } => Some(p),
        }
    }
}

/// Whether a copy of the primary's slot made now would have its WAL on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copyable {
    Yes,
    /// The primary's slot needs WAL older than this node's oldest.
    No(CopyProblem),
    /// This node's oldest WAL is unknown: a copy may be tried (bounded by the re-copy backoff).
    Unknown,
    /// The primary's slot is unknown, missing or has no `restart_lsn`: nothing to copy.
    NothingToCopy,
}

/// Whether copying the primary's slot now gives a copy whose WAL this node has. Pure.
pub fn copyable(primary: &PrimarySlot, oldest_wal: Option<Lsn>) -> Copyable {
    let PrimarySlot::Known(SlotPositions { restart_lsn: Some(needs), .. }) = primary else {
        return Copyable::NothingToCopy;
    };
    match oldest_wal {
        None => Copyable::Unknown,
        Some(oldest) if *needs < oldest => {
            Copyable::No(CopyProblem::NeedsMissingWal { needs: Some(*needs), oldest_wal: Some(oldest) })
        }
        Some(_) => Copyable::Yes,
    }
}

/// Checks one copy. Pure.
pub fn check_copy(i: &CopyCheckInput<'_>) -> CopyVerdict {
    let Some(copy) = i.copy else {
        // No copy: reconcile copies it, unless the copy would need WAL this node lacks.
        return match copyable(&i.primary, i.oldest_wal) {
            Copyable::No(problem) => CopyVerdict::Blocked { problem, drop: false },
            _ => CopyVerdict::Fine,
        };
    };
    let Some(problem) = problem_of(i, copy) else { return CopyVerdict::Fine };
    if !problem.recopy_helps() {
        return CopyVerdict::Blocked { problem, drop: false };
    }
    match copyable(&i.primary, i.oldest_wal) {
        Copyable::Yes | Copyable::Unknown => CopyVerdict::Recopy(problem),
        // Keep reporting what is wrong with the copy; for missing WAL, what the primary's slot needs is the news.
        Copyable::No(why) => {
            let drop = problem.must_drop();
            let problem = if matches!(problem, CopyProblem::NeedsMissingWal { .. }) { why } else { problem };
            CopyVerdict::Blocked { problem, drop }
        }
        Copyable::NothingToCopy => {
            let drop = problem.must_drop();
            CopyVerdict::Blocked { problem, drop }
        }
    }
}

fn problem_of(i: &CopyCheckInput<'_>, copy: SlotPositions) -> Option<CopyProblem> {
    if let Some(cause) = i.rebuilt {
        return Some(CopyProblem::Stale { cause });
    }
    if let PrimarySlot::Known(p) = i.primary {
        if let (Some(c), Some(pc)) = (copy.confirmed_flush_lsn, p.confirmed_flush_lsn) {
            if c > pc {
                return Some(CopyProblem::AheadOfPrimary { position: Position::ConfirmedFlush, copy: c, primary: pc });
            }
        }
        if let (false, Some(c), Some(pr)) = (i.made_here, copy.restart_lsn, p.restart_lsn) {
            if c > pr {
                return Some(CopyProblem::AheadOfPrimary { position: Position::RestartLsn, copy: c, primary: pr });
            }
        }
    }
    let database = i.database.to_string();
    match &i.failure {
        Some(CopyFailure::MissingWal) => {
            return Some(CopyProblem::NeedsMissingWal { needs: copy.restart_lsn, oldest_wal: i.oldest_wal })
        }
        Some(CopyFailure::DatabaseMissing) => return Some(CopyProblem::DatabaseMissing { database }),
        Some(CopyFailure::WrongDatabase) => return Some(CopyProblem::WrongDatabase { database }),
        Some(CopyFailure::Invalidated) => return Some(CopyProblem::Invalidated),
        Some(CopyFailure::PermissionDenied) => return Some(CopyProblem::PermissionDenied),
        _ => {}
    }
    match (copy.restart_lsn, i.oldest_wal) {
        (Some(r), Some(o)) if r < o => Some(CopyProblem::NeedsMissingWal { needs: Some(r), oldest_wal: Some(o) }),
        _ => None,
    }
}

pub use super::recopy::{recopy_due, recopy_wait, RecopyHistory, RECOPY_FIRST_WAIT, RECOPY_MAX_WAIT};

#[cfg(test)]
#[path = "copycheck_tests.rs"]
mod tests;
