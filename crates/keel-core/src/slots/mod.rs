//! Replication slots: names, the desired set, reconciliation, publishing, and failover readiness.
//!
//! - [`advance`]: where a slot is advanced to (the cycle's plan and the agent's follower), `can_advance_slots`.
//! - [`config`]: the `slots`, `ignore_slots`, `failover_slot_readiness` and `failover_slot_recreate` settings.
//! - [`desired`]: which slots a node should have ([`desired_slots`]), `hot_standby_feedback` enforcement.
//! - [`reconcile`]: desired vs. actual → [`SlotAction`]s.
//! - [`risk`]: the slots a manual failover to an unready member would put at risk.
//! - [`status`]: what the leader publishes in `status`, the retention clock.
//! - [`promotion`]: at promotion, each logical copy against what its consumers may have seen.
//! - [`readiness`]: whether a copied logical slot is safe to use after promoting this replica.
//! - [`recopy`]: the re-copy backoff, whether to re-copy a checked copy, whether the leader's slot may be copied.
//! - [`online_copy`]: copies created on a 16+ standby without a restart, and when they count.
//! - [`ahead`]: how far each logical slot's consumer is ahead of each failover candidate (on the primary).
//! - [`native`]: native failover slots (17+): no own copies, `failover` switches, leftovers, readiness.
//! - [`standby_slots`]: the managed `synchronized_standby_slots` of a native-mode primary.
//! - [`copycheck`]: typed advance failures (by SQLSTATE), stale copies, copies needing missing WAL, re-copy backoff.
//!
//! See `crates/keel-core/SLOTS.md` for the life cycle of a slot.

pub mod advance;
pub mod ahead;
pub mod config;
pub mod copycheck;
pub mod desired;
pub mod native;
pub mod online_copy;
pub mod promotion;
pub mod readiness;
pub mod reconcile;
pub mod recopy;
pub mod risk;
pub mod schedule;
pub mod standby_slots;
pub mod status;

pub use advance::{
    advance_goal, advance_step, advance_target, can_advance_slots, AdvanceInput, AdvanceStep, SLOT_ADVANCE_MAJOR,
};
pub use config::{
    FailoverSlotReadiness, FailoverSlotsMode, IgnoreMatcher, PermanentSlot, SlotKind, SlotNote, SlotSyncMethod,
    SlotsConfig, NATIVE_SLOT_SYNC_MAJOR,
};
pub use desired::{
    cascades, desired_slots, enforce_hot_standby_feedback, has_permanent_slots, should_query_slots,
    slot_name_on_primary, DesiredInput, DesiredSlot, DesiredSlots, NodeRole, SlotOrigin,
};
pub use readiness::{SlotsReadiness, Xid, MEMBER_KEY_FIELD};
pub use reconcile::{
    reconcile, ActualSlot, ActualSlots, CreateReason, DropReason, LeaderState, ReconcileContext, SlotAction, WalStatus,
};
pub use risk::{manual_failover_risk, SlotsAtRisk};
pub use schedule::fair_pick;
pub use status::{published_slots, published_status, PublishInput, RetainClock};

/// Patroni's mapping from a member name to its physical slot name: lower case, `-` and `.` become `_`, any
/// other character outside `[a-z0-9_]` becomes `u` and its code point as four decimal digits, truncated to 63.
pub fn slot_name_from_member_name(member: &str) -> String {
    let mut out = String::new();
    for c in member.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' | '_' => out.push(c),
            '-' | '.' => out.push('_'),
            other => out.push_str(&format!("u{:04}", other as u32)),
        }
    }
    out.chars().take(63).collect()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn matches_patroni() {
        assert_eq!(slot_name_from_member_name("Node-1.example.COM/x"), "node_1_example_comu0047x");
        assert_eq!(slot_name_from_member_name("ab@c"), "abu0064c");
        assert_eq!(slot_name_from_member_name(&"a".repeat(80)).len(), 63);
    }
}
