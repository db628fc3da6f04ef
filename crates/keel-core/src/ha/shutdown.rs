//! What an agent does when told to stop (SIGTERM, SIGINT): Patroni's `Ha.shutdown`. In pause PostgreSQL keeps
//! running and the leader key stays (it expires with the lease); otherwise PostgreSQL is stopped first, and the
//! leader key is released only once PostgreSQL is known to be down: a primary that is still running (a failed
//! or timed-out `pg_ctl stop`), or whose state cannot be told, keeps the key until its lease runs out, so no
//! replica is promoted beside it by our hand.

/// The first step of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownStart {
    /// Maintenance mode: leave PostgreSQL running and the leader key in place.
    LeaveRunning,
    /// Stop PostgreSQL (fast; immediately if that fails), then see [`after_stop`].
    StopPostgres,
}

/// What to do with the store after PostgreSQL was (or was not) stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownEnd {
    /// Write `status` with the last position, delete the leader key, revoke the lease.
    ReleaseLeader,
    /// Not the leader: revoke the lease (the member key goes with it).
    LeaveStore,
    /// Keep the leader key and the lease: PostgreSQL may still accept writes here.
    KeepLeaderKey,
    /// Paused: keep everything; the keys expire with the lease.
    KeepAll,
}

pub fn shutdown_start(paused: bool) -> ShutdownStart {
    if paused {
        ShutdownStart::LeaveRunning
    } else {
        ShutdownStart::StopPostgres
    }
}

/// `still_running`: whether PostgreSQL runs after the stop (`None`: cannot tell, which is never "stopped").
pub fn after_stop(paused: bool, holds_leader: bool, still_running: Option<bool>) -> ShutdownEnd {
    match (paused, holds_leader, still_running) {
        (true, _, _) => ShutdownEnd::KeepAll,
        (false, true, Some(false)) => ShutdownEnd::ReleaseLeader,
        (false, true, _) => ShutdownEnd::KeepLeaderKey,
        (false, false, _) => ShutdownEnd::LeaveStore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(shutdown_start(true), ShutdownStart::LeaveRunning);
        assert_eq!(shutdown_start(false), ShutdownStart::StopPostgres);
        let cases = [
            ((false, true, Some(false)), ShutdownEnd::ReleaseLeader),
            ((false, true, Some(true)), ShutdownEnd::KeepLeaderKey),
            ((false, true, None), ShutdownEnd::KeepLeaderKey),
            ((false, false, Some(true)), ShutdownEnd::LeaveStore),
            ((false, false, Some(false)), ShutdownEnd::LeaveStore),
            ((true, true, Some(true)), ShutdownEnd::KeepAll),
            ((true, false, None), ShutdownEnd::KeepAll),
        ];
        for ((paused, leader, running), want) in cases {
            assert_eq!(after_stop(paused, leader, running), want, "{paused} {leader} {running:?}");
        }
    }
}
