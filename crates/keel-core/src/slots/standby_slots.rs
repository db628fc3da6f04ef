//! The managed `synchronized_standby_slots` of a PostgreSQL 17+ primary in native mode (postgresql-slots.md §4.4).
//!
//! PostgreSQL sends (and confirms) nothing on a failover slot beyond what every listed physical slot has flushed:
//! consumers never get ahead of the listed standbys, so none of them can become a primary lacking a change a
//! consumer already has. The list is ALL-of-N, so one dead standby on it stalls every failover-slot consumer.
//! [`standby_slots`] therefore lists only the failover candidates that can keep up right now:
//!
//! - not `nofailover` (they can never be promoted, so holding consumers back for them buys nothing);
//! - streaming from this primary on their member slot (a walsender holds the slot, state `streaming`);
//! - within the lag bound (`failover_slots_max_lag`, else `maximum_lag_on_failover`) of the primary's flush
//!   position, measured at the slot's `restart_lsn` (the standby's flush position, what PostgreSQL waits on);
//! - in synchronous mode, only the synchronous standbys of the `sync` key (Patroni's choice), if streaming.
//!
//! A candidate that disconnects or falls behind leaves the list on the next check; it comes back once it streams
//! within the bound again. Every member gets a reason, in or out, for the log and `GET /slots`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::lsn::Lsn;

/// A member that could be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyCandidate {
    pub member: String,
    /// Its physical slot on this primary ([`super::slot_name_from_member_name`]).
    pub slot: String,
    pub nofailover: bool,
    /// Listed as a synchronous standby in the `sync` key.
    pub synchronous: bool,
}

/// What the primary sees of one physical slot (`pg_replication_slots` joined with `pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalSlotObs {
    /// A walsender holds the slot and its state is `streaming`.
    pub streaming: bool,
    /// The standby's flush position as the slot records it.
    pub restart_lsn: Option<Lsn>,
}

/// Everything [`standby_slots`] reads.
#[derive(Debug, Clone)]
pub struct StandbySlotsInput<'a> {
    pub candidates: &'a [StandbyCandidate],
    /// Physical slots on this primary by name; a missing entry is a missing slot.
    pub slots: &'a BTreeMap<String, PhysicalSlotObs>,
    /// `pg_current_wal_flush_lsn()`.
    pub primary_flush: Lsn,
    /// Bytes a listed standby may trail.
    pub max_lag: u64,
    /// `synchronous_mode` is on (`on` or `strict`).
    pub synchronous_mode: bool,
}

/// Why a member is on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Listed {
    /// Streaming and `lag` bytes behind, within the bound.
    Streaming { lag: u64 },
    /// A synchronous standby (synchronous mode), streaming.
    Synchronous { lag: u64 },
}

/// Why a member is not on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Unlisted {
    /// `nofailover` (or `failover_priority <= 0`): never promoted, never waited for.
    NoFailover,
    /// Its physical slot does not exist on this primary.
    NoSlot,
    /// No walsender streams on its slot (stopped, disconnected, cascading from another member).
    NotStreaming,
    /// Its slot records no position yet.
    NoPosition,
    /// More than `bound` bytes behind.
    Lagging { lag: u64, bound: u64 },
    /// Synchronous mode and not a synchronous standby.
    NotSynchronous,
}

/// One member's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Membership {
    In(Listed),
    Out(Unlisted),
}

impl Membership {
    pub fn listed(&self) -> bool {
        matches!(self, Membership::In(_))
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Membership::In(Listed::Streaming { lag }) => write!(f, "listed: streaming, {lag} bytes behind"),
            Membership::In(Listed::Synchronous { lag }) => {
                write!(f, "listed: synchronous standby, {lag} bytes behind")
            }
            Membership::Out(Unlisted::NoFailover) => write!(f, "not listed: nofailover"),
            Membership::Out(Unlisted::NoSlot) => write!(f, "not listed: its physical slot does not exist here"),
            Membership::Out(Unlisted::NotStreaming) => write!(f, "not listed: not streaming from this primary"),
            Membership::Out(Unlisted::NoPosition) => write!(f, "not listed: its slot has no position yet"),
            Membership::Out(Unlisted::Lagging { lag, bound }) => {
                write!(f, "not listed: {lag} bytes behind, more than {bound}")
            }
            Membership::Out(Unlisted::NotSynchronous) => {
                write!(f, "not listed: synchronous mode and not a synchronous standby")
            }
        }
    }
}

/// The list and every candidate's reason.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct StandbySlots {
    /// Slot names, sorted: the value of `synchronized_standby_slots`.
    pub slots: Vec<String>,
    /// Member → why in or out.
    pub members: BTreeMap<String, Membership>,
}

impl StandbySlots {
    /// The parameter value (`''` when nobody qualifies: consumers are then not held back at all).
    pub fn value(&self) -> String {
        self.slots.join(",")
    }

    /// The members whose place changed from `before`, with their new place (for the log).
    pub fn changes<'a>(&'a self, before: &'a StandbySlots) -> Vec<(&'a str, &'a Membership)> {
        self.members
            .iter()
            .filter(|(m, now)| before.members.get(*m).map(Membership::listed) != Some(now.listed()))
            .map(|(m, now)| (m.as_str(), now))
            .collect()
    }
}

/// The managed `synchronized_standby_slots`.
pub fn standby_slots(input: &StandbySlotsInput) -> StandbySlots {
    let mut out = StandbySlots::default();
    for c in input.candidates {
        let place = place(c, input);
        if place.listed() {
            out.slots.push(c.slot.clone());
        }
        out.members.insert(c.member.clone(), place);
    }
    out.slots.sort();
    out.slots.dedup();
    out
}

fn place(c: &StandbyCandidate, input: &StandbySlotsInput) -> Membership {
    if c.nofailover {
        return Membership::Out(Unlisted::NoFailover);
    }
    if input.synchronous_mode && !c.synchronous {
        return Membership::Out(Unlisted::NotSynchronous);
    }
    let Some(obs) = input.slots.get(&c.slot) else { return Membership::Out(Unlisted::NoSlot) };
    if !obs.streaming {
        return Membership::Out(Unlisted::NotStreaming);
    }
    let Some(at) = obs.restart_lsn else { return Membership::Out(Unlisted::NoPosition) };
    let lag = input.primary_flush.0.saturating_sub(at.0);
    if input.synchronous_mode {
        // A synchronous standby confirms every commit already: its lag is not a reason to stop waiting for it.
        return Membership::In(Listed::Synchronous { lag });
    }
    if lag > input.max_lag {
        return Membership::Out(Unlisted::Lagging { lag, bound: input.max_lag });
    }
    Membership::In(Listed::Streaming { lag })
}

#[cfg(test)]
#[path = "standby_slots_tests.rs"]
mod tests;
