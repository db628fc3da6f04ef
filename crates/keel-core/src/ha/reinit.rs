//! `POST /reinitialize` (`keel reinit`): whether this node may wipe its data directory and clone again
//! (Patroni's `Ha.reinitialize`, same refusals and messages).

use super::{Action, Decision, Reason};
use crate::divergence::WipeReason;
use crate::view::ClusterView;

/// Why a reinitialize request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReinitRefusal {
    #[error("I am the leader, can not reinitialize")]
    Leader,
    #[error("Cluster has no leader, can not reinitialize")]
    NoLeader,
}

/// The decision for a reinitialize request: wipe the data directory (the next cycle clones it from the leader),
/// unless this node holds the leader key or nobody does.
pub fn reinitialize(holds_leader: bool, view: &ClusterView) -> Result<Decision, ReinitRefusal> {
    if holds_leader {
        return Err(ReinitRefusal::Leader);
    }
    if view.leader.is_none() {
        return Err(ReinitRefusal::NoLeader);
    }
    Ok(Decision {
        actions: vec![Action::WipeDataDir { reason: WipeReason::Reinitialize }],
        reason: Reason::ReinitializeRequested,
        on_guard_failure: None,
        on_guard_error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::LeaderKey;

    #[test]
    fn refused_on_the_leader_and_without_one() {
        let mut view = ClusterView::default();
        assert_eq!(reinitialize(false, &view).map(|d| d.actions), Err(ReinitRefusal::NoLeader));
        view.leader = Some(LeaderKey { name: "n1".into(), version: 1, lease: 1 });
        assert_eq!(reinitialize(true, &view).map(|d| d.actions), Err(ReinitRefusal::Leader));
        let d = reinitialize(false, &view).expect("allowed");
        assert_eq!(d.actions, vec![Action::WipeDataDir { reason: WipeReason::Reinitialize }]);
    }
}
