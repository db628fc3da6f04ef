//! Patroni's health-check endpoints as a pure function of the node status: which path answers 200 and which 503.
//! Load balancers (HAProxy `option httpchk`) depend on these exact semantics.

use std::collections::BTreeMap;

use keel_core::view::Role;

use crate::status::NodeStatus;

/// A health-check path, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Primary,
    StandbyLeader,
    Leader,
    Replica,
    ReadOnly,
    Sync,
    ReadOnlySync,
    Quorum,
    ReadOnlyQuorum,
    Async,
    Health,
    Liveness,
    Readiness,
}

impl Check {
    /// Recognises Patroni's health-check paths (and their legacy aliases).
    pub fn from_path(path: &str) -> Option<Check> {
        Some(match path.trim_end_matches('/') {
            "" | "/primary" | "/read-write" | "/master" => Check::Primary,
            "/standby-leader" | "/standby_leader" => Check::StandbyLeader,
            "/leader" => Check::Leader,
            "/replica" => Check::Replica,
            "/read-only" => Check::ReadOnly,
            "/sync" | "/synchronous" => Check::Sync,
            "/read-only-sync" | "/read-only-synchronous" => Check::ReadOnlySync,
            "/quorum" => Check::Quorum,
            "/read-only-quorum" => Check::ReadOnlyQuorum,
            "/async" | "/asynchronous" => Check::Async,
            "/health" => Check::Health,
            "/liveness" => Check::Liveness,
            "/readiness" => Check::Readiness,
            _ => return None,
        })
    }
}

/// Parses Patroni's lag values: plain bytes or a size with a unit (`16kB`, `64MB`, `1GB`).
pub fn parse_lag(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Whether `check` answers 200 for this node. `query` holds the request's query parameters; `now_ms` is the
/// current Unix time in milliseconds (for `/liveness`).
pub fn passes(check: Check, st: &NodeStatus, query: &BTreeMap<String, String>, now_ms: u64) -> bool {
    // The key counts only until it expires: an HA loop that stopped refreshing it (wedged, cut off from the store)
    // may have lost it to another node, so load balancers must stop sending writes here.
    let is_leader = st.is_leader && st.leader_expiry_ms.is_some_and(|expiry| now_ms < expiry);
    let is_primary = is_leader && st.role == Some(Role::Primary);
    match check {
        Check::Primary => is_primary,
        // Keel manages no standby clusters yet, so no node is ever a standby leader.
        Check::StandbyLeader => false,
        Check::Leader => is_leader,
        Check::Replica => replica_ok(st, query),
        Check::ReadOnly => is_primary || replica_ok(st, query),
        Check::Sync => replica_ok(st, query) && st.is_sync_standby(),
        Check::ReadOnlySync => is_primary || (replica_ok(st, query) && st.is_sync_standby()),
        Check::Quorum => replica_ok(st, query) && st.is_quorum_standby(),
        Check::ReadOnlyQuorum => is_primary || (replica_ok(st, query) && st.is_quorum_standby()),
        Check::Async => replica_ok(st, query) && !st.is_sync_standby() && !st.is_quorum_standby(),
        Check::Health => st.is_running(),
        Check::Liveness => {
            let limit_ms = st.ttl.max(1) * 1000 * if st.is_leader { 1 } else { 2 };
            st.pause || st.last_cycle_ms.is_some_and(|t| now_ms.saturating_sub(t) <= limit_ms)
        }
        Check::Readiness => {
            if is_leader {
                return true;
            }
            let max_lag = match query.get("lag") {
                Some(l) => match parse_lag(l) {
                    Some(v) => v,
                    None => return false,
                },
                None => st.maximum_lag_on_failover,
            };
            st.is_running()
                && st.replication_state.as_deref() == Some("streaming")
                && st.replica_lag().is_some_and(|lag| lag <= max_lag)
        }
    }
}

fn replica_ok(st: &NodeStatus, query: &BTreeMap<String, String>) -> bool {
    if !st.is_running() || st.role != Some(Role::Replica) || st.tags.noloadbalance {
        return false;
    }
    if let Some(lag) = query.get("lag") {
        match (parse_lag(lag), st.replica_lag()) {
            (Some(max), Some(actual)) if actual <= max => {}
            _ => return false,
        }
    }
    if let Some(want) = query.get("replication_state") {
        if st.replication_state.as_deref() != Some(want.as_str()) {
            return false;
        }
    }
    let tags = st.tags.to_json();
    for (k, want) in query {
        if let Some(tag) = k.strip_prefix("tag_") {
            let have = match tags.get(tag) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => return false,
            };
            if !have.eq_ignore_ascii_case(want) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::lsn::Lsn;

    fn primary() -> NodeStatus {
        NodeStatus {
            state: keel_core::member_state::MemberState::Running,
            role: Some(Role::Primary),
            is_leader: true,
            leader_expiry_ms: Some(1_000_000),
            ttl: 30,
            maximum_lag_on_failover: 1 << 20,
            ..Default::default()
        }
    }

    fn replica(lag: u64) -> NodeStatus {
        NodeStatus {
            state: keel_core::member_state::MemberState::Running,
            role: Some(Role::Replica),
            replication_state: Some("streaming".into()),
            cluster_optime: Some(Lsn(10_000 + lag)),
            replayed_location: Some(Lsn(10_000)),
            ttl: 30,
            maximum_lag_on_failover: 1 << 20,
            ..Default::default()
        }
    }

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn roles_map_to_checks() {
        let none = q(&[]);
        let p = primary();
        let r = replica(0);
        for (check, on_primary, on_replica) in [
            (Check::Primary, true, false),
            (Check::Leader, true, false),
            (Check::StandbyLeader, false, false),
            (Check::Replica, false, true),
            (Check::ReadOnly, true, true),
            (Check::Async, false, true),
            (Check::Sync, false, false),
            (Check::Quorum, false, false),
            (Check::ReadOnlyQuorum, true, false),
            (Check::ReadOnlySync, true, false),
            (Check::Health, true, true),
            (Check::Readiness, true, true),
        ] {
            assert_eq!(passes(check, &p, &none, 0), on_primary, "{check:?} on primary");
            assert_eq!(passes(check, &r, &none, 0), on_replica, "{check:?} on replica");
        }
    }

    #[test]
    fn a_primary_without_the_lock_is_not_primary() {
        let mut p = primary();
        p.is_leader = false;
        assert!(!passes(Check::Primary, &p, &q(&[]), 0));
        assert!(!passes(Check::Replica, &p, &q(&[]), 0));
    }

    #[test]
    fn replica_filters() {
        let mut r = replica(2048);
        assert!(passes(Check::Replica, &r, &q(&[("lag", "4kB")]), 0));
        assert!(!passes(Check::Replica, &r, &q(&[("lag", "1kB")]), 0));
        assert!(!passes(Check::Replica, &r, &q(&[("lag", "garbage")]), 0));
        assert!(passes(Check::Replica, &r, &q(&[("replication_state", "streaming")]), 0));
        r.tags.other.insert("zone".into(), "a".into());
        assert!(passes(Check::Replica, &r, &q(&[("tag_zone", "a")]), 0));
        assert!(!passes(Check::Replica, &r, &q(&[("tag_zone", "b")]), 0));
        r.tags.noloadbalance = true;
        assert!(!passes(Check::Replica, &r, &q(&[]), 0));
        r.tags.noloadbalance = false;
        r.sync_standbys = vec!["N1".into()];
        r.name = "n1".into();
        assert!(passes(Check::Sync, &r, &q(&[]), 0));
        assert!(!passes(Check::Async, &r, &q(&[]), 0));
        assert!(!passes(Check::Quorum, &r, &q(&[]), 0));
        // synchronous_mode: quorum turns the same listing into a quorum standby.
        r.quorum_commit = true;
        assert!(!passes(Check::Sync, &r, &q(&[]), 0));
        assert!(!passes(Check::Async, &r, &q(&[]), 0));
        assert!(passes(Check::Quorum, &r, &q(&[]), 0));
        assert!(passes(Check::ReadOnlyQuorum, &r, &q(&[]), 0));
        assert!(!passes(Check::ReadOnlyQuorum, &r, &q(&[("lag", "1kB")]), 0));
        assert_eq!(r.to_json().get("quorum_standby"), Some(&serde_json::Value::Bool(true)));
    }

    #[test]
    fn readiness_and_liveness() {
        let mut r = replica(2 << 20);
        assert!(!passes(Check::Readiness, &r, &q(&[]), 0));
        assert!(passes(Check::Readiness, &r, &q(&[("lag", "4MB")]), 0));
        r.replication_state = Some("in archive recovery".into());
        assert!(!passes(Check::Readiness, &r, &q(&[("lag", "4MB")]), 0));
        r.last_cycle_ms = Some(1_000);
        assert!(passes(Check::Liveness, &r, &q(&[]), 61_000));
        assert!(!passes(Check::Liveness, &r, &q(&[]), 61_001));
        let mut p = primary();
        p.last_cycle_ms = Some(1_000);
        assert!(!passes(Check::Liveness, &p, &q(&[]), 31_001));
        p.pause = true;
        assert!(passes(Check::Liveness, &p, &q(&[]), 31_001));
    }

    #[test]
    fn a_leader_key_older_than_ttl_no_longer_counts() {
        let p = primary();
        for check in [Check::Primary, Check::Leader, Check::ReadOnly] {
            assert!(passes(check, &p, &q(&[]), 999_999), "{check:?} before expiry");
            assert!(!passes(check, &p, &q(&[]), 1_000_000), "{check:?} at expiry");
        }
        let unknown = NodeStatus { leader_expiry_ms: None, ..primary() };
        assert!(!passes(Check::Primary, &unknown, &q(&[]), 0), "no known refresh: not a leader");
    }

    #[test]
    fn paths_and_sizes() {
        assert_eq!(Check::from_path("/"), Some(Check::Primary));
        assert_eq!(Check::from_path("/master"), Some(Check::Primary));
        assert_eq!(Check::from_path("/read-only/"), Some(Check::ReadOnly));
        assert_eq!(Check::from_path("/read-only-quorum"), Some(Check::ReadOnlyQuorum));
        assert_eq!(Check::from_path("/nope"), None);
        assert_eq!(parse_lag("16kB"), Some(16384));
        assert_eq!(parse_lag("1GB"), Some(1 << 30));
        assert_eq!(parse_lag("1XB"), None);
    }
}
