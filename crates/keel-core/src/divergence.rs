//! Whether this node's history left the leader's (Patroni's `_check_timeline_and_lsn`), and what to do about it:
//! follow, rewind, wipe the data directory (only when a `remove_data_directory_*` setting says so), or wait for an
//! operator. The runtime gathers [`DivergenceFacts`]; everything decided from them is here.
//!
//! A fact the runtime could not read is `None`, and a verdict that needs it is [`Divergence::Unknown`]: a check
//! that could not run is never "diverged", so nothing is rewound or wiped on an unknown.

use crate::lsn::Lsn;
use crate::pgconfig::PgSettings;

/// What a diverged node may do, from the merged `postgresql` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DivergencePolicy {
    /// `use_pg_rewind`.
    pub rewind: bool,
    /// `remove_data_directory_on_diverged_timelines`: wipe (and clone again) when diverged and not rewinding.
    pub wipe_when_diverged: bool,
    /// `remove_data_directory_on_rewind_failure`: wipe (and clone again) when pg_rewind is impossible.
    pub wipe_when_rewind_fails: bool,
}

impl DivergencePolicy {
    pub fn from_settings(s: &PgSettings) -> DivergencePolicy {
        DivergencePolicy {
            rewind: s.use_pg_rewind,
            wipe_when_diverged: s.remove_data_directory_on_diverged_timelines,
            wipe_when_rewind_fails: s.remove_data_directory_on_rewind_failure,
        }
    }
}

/// Where this node's WAL ends, as the runtime read it (from the running server, or `pg_controldata`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEnd {
    pub timeline: Option<u32>,
    /// Replay position of a replica, flush position of a primary, or the checkpoint / minimum recovery end of a
    /// stopped server.
    pub lsn: Option<Lsn>,
    /// Shut down cleanly, or running in recovery: nothing past `lsn` was written on this timeline.
    pub clean: bool,
}

/// The facts a divergence check reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivergenceFacts {
    pub local: LocalEnd,
    /// The leader's current timeline (`None`: unreadable, or the leader is still in recovery).
    pub leader_timeline: Option<u32>,
    /// The leader's timeline history file as (parent timeline, switchpoint) lines, oldest first. `None`: not read
    /// or unreadable (only needed when our timeline is older than the leader's).
    pub leader_history: Option<Vec<(u32, Lsn)>>,
}

/// Which fact was missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownFact {
    LocalTimeline,
    LocalPosition,
    LeaderTimeline,
    LeaderHistory,
}

impl std::fmt::Display for UnknownFact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnknownFact::LocalTimeline => "our timeline is unknown",
            UnknownFact::LocalPosition => "our WAL position is unknown",
            UnknownFact::LeaderTimeline => "the leader's timeline is unknown (unreachable or still in recovery)",
            UnknownFact::LeaderHistory => "the leader's timeline history file could not be read",
        })
    }
}

/// The verdict of a divergence check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    /// Our history is a prefix of the leader's: streaming from it works.
    Same,
    /// Our timeline left the leader's history (or we wrote past its switchpoint).
    Diverged {
        timeline: u32,
        lsn: Lsn,
        leader_timeline: u32,
    },
    Unknown(UnknownFact),
}

/// Compares our end of WAL with the leader's history.
pub fn assess(facts: &DivergenceFacts) -> Divergence {
    let Some(ours) = facts.local.timeline else { return Divergence::Unknown(UnknownFact::LocalTimeline) };
    let Some(lsn) = facts.local.lsn else { return Divergence::Unknown(UnknownFact::LocalPosition) };
    let Some(theirs) = facts.leader_timeline else { return Divergence::Unknown(UnknownFact::LeaderTimeline) };
    let diverged = Divergence::Diverged { timeline: ours, lsn, leader_timeline: theirs };
    if ours == theirs {
        return Divergence::Same;
    }
    if ours > theirs {
        return diverged;
    }
    let Some(history) = &facts.leader_history else { return Divergence::Unknown(UnknownFact::LeaderHistory) };
    match history.iter().find(|(tl, _)| *tl == ours) {
        Some((_, switchpoint)) if facts.local.clean && lsn <= *switchpoint => Divergence::Same,
        _ => diverged,
    }
}

/// Why a data directory is wiped. Nothing else wipes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WipeReason {
    /// Diverged, `use_pg_rewind` off, `remove_data_directory_on_diverged_timelines` on.
    DivergedWithoutRewind,
    /// pg_rewind impossible, `remove_data_directory_on_rewind_failure` on.
    RewindImpossible { detail: String },
    /// An operator asked for it (`keel reinit`, `POST /reinitialize`).
    Reinitialize,
}

impl std::fmt::Display for WipeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WipeReason::DivergedWithoutRewind => f.write_str(
                "diverged from the leader and postgresql.use_pg_rewind is off \
                 (remove_data_directory_on_diverged_timelines)",
            ),
            WipeReason::RewindImpossible { detail } => {
                write!(f, "pg_rewind is not possible: {detail} (remove_data_directory_on_rewind_failure)")
            }
            WipeReason::Reinitialize => f.write_str("reinitialize requested"),
        }
    }
}

/// Why a diverged node waits for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReinitNeeded {
    /// `use_pg_rewind` is off and wiping is not allowed.
    RewindOff,
    /// pg_rewind failed and wiping is not allowed.
    RewindImpossible { detail: String },
}

impl std::fmt::Display for ReinitNeeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReinitNeeded::RewindOff => f.write_str(
                "postgresql.use_pg_rewind is off: this node needs a reinit (keel reinit), or set \
                 remove_data_directory_on_diverged_timelines",
            ),
            ReinitNeeded::RewindImpossible { detail } => write!(
                f,
                "pg_rewind is not possible: {detail}; this node needs a reinit (keel reinit), or set \
                 remove_data_directory_on_rewind_failure"
            ),
        }
    }
}

/// What to do after a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    Follow,
    Rewind,
    Wipe(WipeReason),
    WaitForReinit(ReinitNeeded),
    /// The check could not be evaluated: neither follow nor repair this cycle.
    Unknown(UnknownFact),
}

/// The remedy for a verdict under `policy`.
pub fn remedy(verdict: &Divergence, policy: DivergencePolicy) -> Remedy {
    match verdict {
        Divergence::Same => Remedy::Follow,
        Divergence::Unknown(what) => Remedy::Unknown(*what),
        Divergence::Diverged { .. } if policy.rewind => Remedy::Rewind,
        Divergence::Diverged { .. } if policy.wipe_when_diverged => Remedy::Wipe(WipeReason::DivergedWithoutRewind),
        Divergence::Diverged { .. } => Remedy::WaitForReinit(ReinitNeeded::RewindOff),
    }
}

/// The remedy when pg_rewind said it cannot rewind (`detail`: its reason).
pub fn after_rewind_impossible(detail: &str, policy: DivergencePolicy) -> Remedy {
    let detail = detail.to_string();
    if policy.wipe_when_rewind_fails {
        Remedy::Wipe(WipeReason::RewindImpossible { detail })
    } else {
        Remedy::WaitForReinit(ReinitNeeded::RewindImpossible { detail })
    }
}

#[cfg(test)]
#[path = "divergence_tests.rs"]
mod tests;
