//! Fencing: a primary that cannot keep its leader key must stop accepting writes *before* the key can expire,
//! whatever its HA loop is doing. The agent arms a fence (a separate process, `keel fence`) with a deadline each
//! time it refreshes the key; if no newer deadline arrives in time (the loop is blocked, frozen or dead), the fence
//! kills PostgreSQL without waiting for it to answer.
//!
//! The deadline is `refresh + ttl - safety_margin`, where `refresh` is a time no later than the keep-alive that
//! restarted the lease: the key cannot expire before `refresh + ttl`, so PostgreSQL is gone at least
//! `safety_margin` seconds before any other node can take the key.

use crate::time::Millis;

/// Patroni's default `watchdog.safety_margin`, in seconds.
pub const DEFAULT_SAFETY_MARGIN: u64 = 5;

/// What the fence should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arming {
    /// Kill PostgreSQL at this time unless re-armed before.
    Armed { deadline: Millis },
    /// Nothing to guard: not the leader, not a running primary, or in maintenance mode (as Patroni's watchdog).
    Disarmed,
}

/// This node's situation at the end of an action or cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceInput {
    /// We hold the leader key.
    pub holds_leader: bool,
    /// PostgreSQL may accept writes here (running, not in recovery, or unknown while we hold the key).
    pub may_write: bool,
    pub paused: bool,
    /// When the key (and lease) was last refreshed, or failsafe mode last confirmed us as primary.
    pub refreshed: Option<Millis>,
    pub ttl_secs: u64,
    pub safety_margin_secs: u64,
}

/// The fence's arming for `input`.
pub fn arming(input: &FenceInput) -> Arming {
    if input.paused || !input.holds_leader || !input.may_write {
        return Arming::Disarmed;
    }
    match input.refreshed {
        Some(at) => Arming::Armed { deadline: deadline(at, input.ttl_secs, input.safety_margin_secs) },
        // Holding the key without a known refresh: the key may already be gone.
        None => Arming::Armed { deadline: Millis(0) },
    }
}

/// `refreshed + ttl - safety_margin` (at least `refreshed`: a margin as large as `ttl` fences at once).
pub fn deadline(refreshed: Millis, ttl_secs: u64, safety_margin_secs: u64) -> Millis {
    refreshed.plus_secs(ttl_secs.saturating_sub(safety_margin_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> FenceInput {
        FenceInput {
            holds_leader: true,
            may_write: true,
            paused: false,
            refreshed: Some(Millis(100_000)),
            ttl_secs: 30,
            safety_margin_secs: 5,
        }
    }

    #[test]
    fn armed_only_for_a_writable_leader_outside_pause() {
        assert_eq!(arming(&input()), Arming::Armed { deadline: Millis(125_000) });
        assert_eq!(arming(&FenceInput { holds_leader: false, ..input() }), Arming::Disarmed);
        assert_eq!(arming(&FenceInput { may_write: false, ..input() }), Arming::Disarmed);
        assert_eq!(arming(&FenceInput { paused: true, ..input() }), Arming::Disarmed);
        assert_eq!(arming(&FenceInput { refreshed: None, ..input() }), Arming::Armed { deadline: Millis(0) });
    }

    #[test]
    fn the_deadline_comes_before_the_key_can_expire() {
        assert_eq!(deadline(Millis(1_000), 30, 5), Millis(26_000));
        assert_eq!(deadline(Millis(1_000), 30, 40), Millis(1_000));
    }
}
