//! Copying logical slots to a replica, decided here so that the agent only executes:
//!
//! - [`recopy_due`]: the re-copy backoff, so that a copy that keeps failing never restarts PostgreSQL in a loop;
//! - [`recopy_wanted`]: whether a checked copy is dropped and copied again now;
//! - [`copy_source`]: whether the leader's slot may be copied (it exists, matches the configuration, and its
//!   `restart_lsn` is in WAL this replica has);
//! - [`advance_event`]: the readiness event of the follower's last attempts.

use super::copycheck::{copyable, CopyFailure, CopyProblem, CopyVerdict, Copyable, PrimarySlot, SlotPositions};
use super::readiness::ReadinessEvent;
use crate::lsn::Lsn;
use crate::time::Millis;

/// Re-copies of one slot so far (reset when its copy becomes ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecopyHistory {
    pub attempts: u32,
    pub last: Option<Millis>,
}

/// The first re-copy waits this long after the last one; each further one twice as long, up to [`RECOPY_MAX_WAIT`].
pub const RECOPY_FIRST_WAIT: Millis = Millis::from_secs(10);
pub const RECOPY_MAX_WAIT: Millis = Millis::from_secs(600);

/// The wait before the next re-copy after `attempts` of them.
pub fn recopy_wait(attempts: u32) -> Millis {
    if attempts == 0 {
        return Millis(0);
    }
    let factor = 1u64 << (attempts - 1).min(16);
    Millis(RECOPY_FIRST_WAIT.0.saturating_mul(factor).min(RECOPY_MAX_WAIT.0))
}

/// Whether a re-copy may run now. Pure.
pub fn recopy_due(h: &RecopyHistory, now: Millis) -> bool {
    match h.last {
        None => true,
        Some(last) => now.since(last) >= recopy_wait(h.attempts).0,
    }
}

/// Whether a checked copy is dropped and copied again now: it must be replaced (or must go, as it claims positions
/// the primary lacks) and the backoff allows it. Pure.
pub fn recopy_wanted(verdict: &CopyVerdict, history: &RecopyHistory, now: Millis) -> bool {
    let wanted = matches!(verdict, CopyVerdict::Recopy(_) | CopyVerdict::Blocked { drop: true, .. });
    wanted && recopy_due(history, now)
}

/// The leader's slot, as read for a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSlot<'a> {
    pub database: Option<&'a str>,
    pub plugin: Option<&'a str>,
    pub positions: SlotPositions,
}

/// Whether to copy the leader's slot now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// Read its state file and install it.
    Copy,
    /// The leader has no such slot (yet): copied later.
    NotOnLeader,
    /// Its database or plugin differ from the configuration: not copied.
    Mismatch,
    /// The copy would need WAL this replica lacks: not copied until the leader's slot moves past it.
    Blocked(CopyProblem),
    /// The leader's slot has no `restart_lsn`: nothing to copy.
    NothingToCopy,
}

/// Decides whether the leader's slot `src` is copied for a slot configured in `database` with `plugin`, given this
/// replica's oldest WAL (unknown: copied, bounded by the backoff). Pure.
pub fn copy_source(src: Option<&SourceSlot<'_>>, database: &str, plugin: &str, oldest_wal: Option<Lsn>) -> CopySource {
    let Some(src) = src else { return CopySource::NotOnLeader };
    if src.database != Some(database) || src.plugin != Some(plugin) {
        return CopySource::Mismatch;
    }
    match copyable(&PrimarySlot::Known(src.positions), oldest_wal) {
        Copyable::Yes | Copyable::Unknown => CopySource::Copy,
        Copyable::No(problem) => CopySource::Blocked(problem),
        Copyable::NothingToCopy => CopySource::NothingToCopy,
    }
}

/// The readiness event from the follower's counters: more successful advances than `before` is a success; else
/// the current failure, if any. Pure.
pub fn advance_event(before: u64, advances: u64, failure: Option<&CopyFailure>) -> Option<ReadinessEvent> {
    if advances > before {
        Some(ReadinessEvent::AdvanceSucceeded)
    } else {
        failure.cloned().map(ReadinessEvent::AdvanceFailed)
    }
}

#[cfg(test)]
#[path = "recopy_tests.rs"]
mod tests;
