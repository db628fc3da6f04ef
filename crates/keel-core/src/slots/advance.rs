//! Where a slot is advanced to: the one rule for the HA cycle's plan ([`super::reconcile`], physical slots) and
//! for the agent's slot follower (replicas' copies, physical and logical, every 100 ms), and the PostgreSQL
//! capability it depends on.
//!
//! The target is the leader's live position of the slot when it was read (the follower reads it directly on the
//! leader), else the position the leader published in `status` (the desired slot's `lsn`). On a replica the goal
//! is capped at this node's replay position (PostgreSQL cannot advance past it); an unknown replay position or an
//! unknown local position means no advance.

use super::desired::NodeRole;
use crate::lsn::Lsn;

/// `pg_replication_slot_advance` exists from PostgreSQL 11 on; so do member slots on replicas, permanent logical
/// slots, slot positions in `status` and `member_slots_ttl`.
pub const SLOT_ADVANCE_MAJOR: u32 = 11;

/// Whether PostgreSQL `pg_major` can advance slots (`can_advance_slots` in Patroni). The one place the rule is
/// written: callers pass the major version, never the result.
pub fn can_advance_slots(pg_major: u32) -> bool {
    pg_major >= SLOT_ADVANCE_MAJOR
}

/// What [`advance_step`] reads for one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvanceInput {
    pub role: NodeRole,
    /// The slot's position on the leader as just read (`restart_lsn` physical, `confirmed_flush_lsn` logical);
    /// `None` when not read (the HA cycle's plan) or the leader has no such slot.
    pub leader: Option<Lsn>,
    /// The position the leader published in `status` for this slot (the desired slot's `lsn`).
    pub published: Option<Lsn>,
    /// This node's replay position (a replica's cap).
    pub replay: Option<Lsn>,
    /// The local slot's position (`restart_lsn` physical, `confirmed_flush_lsn` logical).
    pub current: Option<Lsn>,
    /// The copy has neither been advanced nor failed to advance since it was first followed: readiness asks for
    /// one successful advance, so a copy already at its goal is advanced once to where it is.
    pub unproven: bool,
}

/// What to do with one slot now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvanceStep {
    /// Nothing to compare: no target, no replay position on a replica, or no local position.
    Unknown,
    /// At or past its goal.
    CaughtUp,
    /// At or past its goal but never advanced: advance once to where it is (readiness asks for one success).
    Prove(Lsn),
    /// Behind its goal: advance to it.
    To(Lsn),
}

/// The leader-side target of a slot: its position on the leader as read, else the published one. Pure.
pub fn advance_target(leader: Option<Lsn>, published: Option<Lsn>) -> Option<Lsn> {
    leader.or(published)
}

/// The goal of a slot: [`advance_target`], capped at replay on a replica. Pure.
pub fn advance_goal(i: &AdvanceInput) -> Option<Lsn> {
    let target = advance_target(i.leader, i.published)?;
    match i.role {
        NodeRole::Primary => Some(target),
        NodeRole::Replica => Some(target.min(i.replay?)),
    }
}

/// The advance to run now for one slot. Pure.
pub fn advance_step(i: &AdvanceInput) -> AdvanceStep {
    let (Some(goal), Some(current)) = (advance_goal(i), i.current) else { return AdvanceStep::Unknown };
    if current < goal {
        AdvanceStep::To(goal)
    } else if i.unproven {
        AdvanceStep::Prove(current)
    } else {
        AdvanceStep::CaughtUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// role, leader, published, replay, current, unproven → step.
    type Row = (NodeRole, Option<u64>, Option<u64>, Option<u64>, Option<u64>, bool, AdvanceStep);

    #[test]
    fn one_rule_for_every_advance() {
        use AdvanceStep::*;
        use NodeRole::*;
        let l = |n: u64| To(Lsn(n));
        let table: &[Row] = &[
            // The leader's live position wins over the published one, capped at replay on a replica.
            (Replica, Some(900), Some(500), Some(1000), Some(100), false, l(900)),
            (Replica, Some(1500), Some(500), Some(1000), Some(100), false, l(1000)),
            // Not read on the leader (the HA cycle's plan, or the leader lacks the slot): the published position.
            (Replica, None, Some(800), Some(1000), Some(100), false, l(800)),
            (Replica, None, Some(2000), Some(1000), Some(100), false, l(1000)),
            // The primary does not cap.
            (Primary, None, Some(2000), None, Some(100), false, l(2000)),
            // Unknowns: nothing.
            (Replica, None, None, Some(1000), Some(100), false, Unknown),
            (Replica, Some(900), None, None, Some(100), false, Unknown),
            (Replica, Some(900), None, Some(1000), None, false, Unknown),
            (Primary, None, Some(900), None, None, true, Unknown),
            // At or past the goal.
            (Replica, Some(900), None, Some(1000), Some(900), false, CaughtUp),
            (Replica, Some(900), None, Some(1000), Some(950), false, CaughtUp),
            (Replica, Some(900), None, Some(800), Some(800), false, CaughtUp),
            // A copy that never moved proves once that it can be advanced, to where it is.
            (Replica, Some(900), None, Some(1000), Some(950), true, Prove(Lsn(950))),
            (Replica, Some(900), None, Some(1000), Some(100), true, l(900)),
        ];
        for (i, (role, leader, published, replay, current, unproven, want)) in table.iter().enumerate() {
            let input = AdvanceInput {
                role: *role,
                leader: leader.map(Lsn),
                published: published.map(Lsn),
                replay: replay.map(Lsn),
                current: current.map(Lsn),
                unproven: *unproven,
            };
            assert_eq!(advance_step(&input), *want, "row {i}: {input:?}");
        }
    }

    #[test]
    fn slots_advance_from_11() {
        assert!(!can_advance_slots(10));
        assert!(can_advance_slots(11) && can_advance_slots(18));
    }
}
