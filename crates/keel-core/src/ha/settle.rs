//! When the next HA cycle should run: a `loop_wait` later, or soon because the last one left PostgreSQL in a
//! state that only the next observation can confirm.

use super::{Action, Decision};

/// Whether the runtime should run the next cycle soon rather than a `loop_wait` later.
///
/// `carried_out` is the decision the last cycle carried out without error (the fallback when its guard failed);
/// `after_quick_cycle` says whether that cycle itself ran early because of this rule.
///
/// A cycle that started PostgreSQL as a replica, pointed it at a new upstream, checked divergence (and maybe
/// rewound) or demoted it leaves a server whose role is not yet the final one: a replica that cannot stream
/// (its timeline left the leader's, or the leader's member key still showed the old timeline) or a demoted
/// primary that still has to follow. Looking again soon finds that within a second instead of a `loop_wait`
/// (10 s by default) later. Only one early cycle follows another: a replica whose upstream stays away must not
/// be re-checked in a tight loop.
pub fn next_cycle_soon(carried_out: &Decision, after_quick_cycle: bool) -> bool {
    !after_quick_cycle
        && carried_out.actions.iter().any(|a| {
            matches!(
                a,
                Action::StartPostgres { .. }
                    | Action::Follow { .. }
                    | Action::CheckDivergence { .. }
                    | Action::Demote { .. }
                    | Action::CreateReplica { .. }
                    | Action::WipeDataDir { .. }
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::{DemoteMode, PromoteCause, Reason, StartAs};

    fn decision(actions: Vec<Action>) -> Decision {
        Decision { actions, reason: Reason::PgStarting, on_guard_failure: None, on_guard_error: None }
    }

    #[test]
    fn table() {
        let start = Action::StartPostgres { start_as: StartAs::Replica { upstream: Some("n2".into()) } };
        let follow = Action::Follow { upstream: "n2".into() };
        let check =
            Action::CheckDivergence { leader: "n2".into(), policy: crate::divergence::DivergencePolicy::default() };
        let cases: Vec<(&str, Vec<Action>, bool, bool)> = vec![
            ("started as a replica", vec![start.clone()], false, true),
            ("checked divergence, then started", vec![check.clone(), start.clone()], false, true),
            ("checked divergence, then followed", vec![check, follow.clone()], false, true),
            ("followed a new leader", vec![follow.clone()], false, true),
            ("demoted", vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }], false, true),
            ("cloned", vec![Action::CreateReplica { source: "n2".into() }], false, true),
            ("promoted: final role", vec![Action::Promote { cause: PromoteCause::WonRace }], false, false),
            ("leader refresh only", vec![Action::UpdateLeader { optime: None }], false, false),
            ("nothing to do", vec![], false, false),
            ("a second early cycle never follows an early one", vec![follow], true, false),
            ("nor after a start", vec![start], true, false),
        ];
        for (what, actions, after_quick, soon) in cases {
            assert_eq!(next_cycle_soon(&decision(actions), after_quick), soon, "{what}");
        }
    }
}
