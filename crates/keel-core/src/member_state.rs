//! The PostgreSQL state a member publishes (`state` in its member key and `GET /patroni`): Patroni's values, in the
//! order of its `patroni_postgres_state` metric.

/// Patroni's PostgreSQL states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemberState {
    InitializingNewCluster,
    InitdbFailed,
    RunningCustomBootstrap,
    CustomBootstrapFailed,
    CreatingReplica,
    Running,
    #[default]
    Starting,
    StartingAfterCustomBootstrap,
    StartFailed,
    Restarting,
    RestartFailed,
    Stopping,
    Stopped,
    StopFailed,
    Crashed,
}

impl MemberState {
    /// Every state, in metric order.
    pub const ALL: [MemberState; 15] = [
        MemberState::InitializingNewCluster,
        MemberState::InitdbFailed,
        MemberState::RunningCustomBootstrap,
        MemberState::CustomBootstrapFailed,
        MemberState::CreatingReplica,
        MemberState::Running,
        MemberState::Starting,
        MemberState::StartingAfterCustomBootstrap,
        MemberState::StartFailed,
        MemberState::Restarting,
        MemberState::RestartFailed,
        MemberState::Stopping,
        MemberState::Stopped,
        MemberState::StopFailed,
        MemberState::Crashed,
    ];

    /// Patroni's text for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::InitializingNewCluster => "initializing new cluster",
            MemberState::InitdbFailed => "initdb failed",
            MemberState::RunningCustomBootstrap => "running custom bootstrap script",
            MemberState::CustomBootstrapFailed => "custom bootstrap failed",
            MemberState::CreatingReplica => "creating replica",
            MemberState::Running => "running",
            MemberState::Starting => "starting",
            MemberState::StartingAfterCustomBootstrap => "starting after custom bootstrap",
            MemberState::StartFailed => "start failed",
            MemberState::Restarting => "restarting",
            MemberState::RestartFailed => "restart failed",
            MemberState::Stopping => "stopping",
            MemberState::Stopped => "stopped",
            MemberState::StopFailed => "stop failed",
            MemberState::Crashed => "crashed",
        }
    }

    /// The value of the `patroni_postgres_state` metric.
    pub fn metric_value(self) -> i64 {
        Self::ALL.iter().position(|s| *s == self).map_or(-1, |i| i as i64)
    }

    /// Reads Patroni's text; `None` for anything else.
    pub fn parse(s: &str) -> Option<MemberState> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// What publishing does with the state an action left behind, given whether PostgreSQL runs now and whether
    /// its role could be read: a running, observed server is `Running`; one that runs but cannot be observed yet
    /// is still starting; a stopped server is `Stopped`, except while a replica is being created (the data
    /// directory is being filled and nothing runs).
    pub fn settle(self, running: bool, observed: bool) -> MemberState {
        match (running, observed) {
            (true, true) => MemberState::Running,
            (true, false) if self == MemberState::Running => MemberState::Starting,
            (true, false) => self,
            (false, _) if self == MemberState::CreatingReplica => self,
            (false, _) => MemberState::Stopped,
        }
    }
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_in_metric_order() {
        for (i, s) in MemberState::ALL.iter().enumerate() {
            assert_eq!(MemberState::parse(s.as_str()), Some(*s));
            assert_eq!(s.metric_value(), i as i64);
        }
        assert_eq!(MemberState::Running.metric_value(), 5);
        assert_eq!(MemberState::Crashed.metric_value(), 14);
        assert_eq!(MemberState::parse("streaming"), None);
    }

    #[test]
    fn settling() {
        use MemberState::*;
        assert_eq!(Starting.settle(true, true), Running);
        assert_eq!(Running.settle(true, false), Starting);
        assert_eq!(Restarting.settle(true, false), Restarting);
        assert_eq!(Running.settle(false, false), Stopped);
        assert_eq!(Starting.settle(false, true), Stopped);
        assert_eq!(CreatingReplica.settle(false, false), CreatingReplica);
    }
}
