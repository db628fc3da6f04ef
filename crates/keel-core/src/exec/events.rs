//! What the executor reports to its host: log-worthy events and errors.

use crate::divergence::{Divergence, ReinitNeeded, WipeReason};
use crate::ha::FatalReason;

/// Something the host should log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A guard could not be evaluated (its fallback for errors runs instead).
    GuardError { action: String, error: String },
    /// The verdict of a divergence check.
    Divergence { leader: String, verdict: Divergence },
    /// Diverged and no repair is allowed: an operator must reinitialize this node.
    NeedsReinit(ReinitNeeded),
    /// The data directory is about to be wiped.
    Wiping(WipeReason),
    /// The `history` key was not updated after a promotion.
    HistoryNotWritten { why: String },
}

impl Event {
    /// Whether the event is a warning (else informational).
    pub fn is_warning(&self) -> bool {
        !matches!(self, Event::Divergence { verdict: Divergence::Same, .. })
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::GuardError { action, error } => write!(f, "{action} could not be carried out: {error}"),
            Event::Divergence { leader, verdict } => match verdict {
                Divergence::Same => write!(f, "my history is on the timeline of the leader {leader}"),
                Divergence::Diverged { timeline, lsn, leader_timeline } => write!(
                    f,
                    "my timeline {timeline} at {lsn} diverged from the leader {leader}'s timeline {leader_timeline}"
                ),
                Divergence::Unknown(what) => {
                    write!(f, "cannot tell whether I diverged from the leader {leader}: {what}")
                }
            },
            Event::NeedsReinit(why) => write!(f, "{why}"),
            Event::Wiping(reason) => write!(f, "removing the data directory to clone it again: {reason}"),
            Event::HistoryNotWritten { why } => write!(f, "the history key was not updated: {why}"),
        }
    }
}

/// Why executing a decision stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecError<E: std::fmt::Display> {
    #[error("{action}: {error}")]
    Host { action: String, error: E },
    #[error("member {0} is not in the store (it left since the decision was made); the next cycle decides again")]
    UnknownMember(String),
    /// The node must not run (the agent stops).
    #[error("refusing to run: {0:?}")]
    Refused(FatalReason),
}
