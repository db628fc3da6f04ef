//! Synchronous replication (`synchronous_mode`): which standbys the leader makes synchronous, and the order in
//! which it changes `synchronous_standby_names` and the store's `sync` key so that the key never lists a standby
//! that might lack an acknowledged commit.
//!
//! The `sync` key names the members allowed to win a leader race. The safe order, as in Patroni:
//! - **removing** a standby: first drop it from the key, then from `synchronous_standby_names`;
//! - **adding** a standby: first put it in `synchronous_standby_names`, and only once `pg_stat_replication` reports
//!   it `sync`, add it to the key.
//!
//! [`plan`] is called each cycle on the leader and returns at most one key write and the parameter value; the
//! runtime writes the key (compare-and-swap on its revision) before applying the parameter, and skips the
//! parameter when the write fails.

use crate::dynconfig::{DynamicConfig, SynchronousMode};
use crate::lsn::Lsn;
use crate::view::{ClusterView, SyncState};

/// One row of the leader's `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyConn {
    /// `application_name`: Keel sets it to the member name.
    pub name: String,
    /// `state = 'streaming'`.
    pub streaming: bool,
    /// `sync_state` is `sync` or `quorum`: PostgreSQL currently waits for this standby's acknowledgement.
    pub is_sync: bool,
    pub flush_lsn: Option<Lsn>,
}

/// What the leader should do about synchronous replication this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPlan {
    /// Write the `sync` key with this value (guarded by `version`: `None` = only if absent).
    pub write_key: Option<(SyncState, Option<i64>)>,
    /// The value for `synchronous_standby_names` (empty: asynchronous).
    pub standby_names: String,
}

/// The placeholder Patroni puts in `synchronous_standby_names` when strict mode has no standby: every commit
/// waits, so nothing is acknowledged that no standby has.
pub const STRICT_PLACEHOLDER: &str = "*";

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The `synchronous_standby_names` value for these standbys.
/// `synchronous_standby_names` to put in place *before* promoting (Patroni's `_enforce_primary_role`): with
/// `synchronous_mode_strict` the new primary must not acknowledge a single commit before a synchronous standby
/// has it, so it starts with `*` (any standby) until the leader's plan names one. `None`: nothing to do.
pub fn names_before_promotion(config: &DynamicConfig) -> Option<&'static str> {
    (config.synchronous_mode == SynchronousMode::On && config.synchronous_mode_strict).then_some(STRICT_PLACEHOLDER)
}

pub fn standby_names(names: &[String], count: usize, strict: bool) -> String {
    if names.is_empty() {
        return if strict { STRICT_PLACEHOLDER.to_string() } else { String::new() };
    }
    let list: Vec<String> = names.iter().map(|n| quote(n)).collect();
    format!("FIRST {} ({})", count.clamp(1, names.len()), list.join(","))
}

/// Patroni's `maximum_lag_on_syncnode`: the candidates whose flush position is within `max_lag` bytes of the
/// reference, which is the most advanced candidate's position when there are several, else `leader_lsn` (the
/// leader's own flush position). `max_lag <= 0` turns the check off. A candidate whose position is unknown is
/// left out (its lag cannot be shown to be small); when the reference itself is unknown nobody is left out,
/// since no lag can be measured.
pub fn within_syncnode_lag(candidates: Vec<&StandbyConn>, leader_lsn: Option<Lsn>, max_lag: i64) -> Vec<&StandbyConn> {
    let Ok(max_lag) = u64::try_from(max_lag) else { return candidates };
    if max_lag == 0 {
        return candidates;
    }
    let reference = if candidates.len() > 1 { candidates.iter().filter_map(|c| c.flush_lsn).max() } else { leader_lsn };
    let Some(reference) = reference else { return candidates };
    candidates.into_iter().filter(|c| c.flush_lsn.is_some_and(|lsn| reference.saturating_sub(lsn) <= max_lag)).collect()
}

/// A member's `sync_priority` tag (default 1): higher is preferred as a synchronous standby.
fn sync_priority(view: &ClusterView, name: &str) -> i64 {
    let member = view.members.values().find(|m| m.name.eq_ignore_ascii_case(name));
    member.and_then(|m| m.tags.sync_priority).unwrap_or(1)
}

/// Plans synchronous replication for the leader `me`, whose own flush position is `leader_lsn`. `None` when
/// `synchronous_mode` is off (the runtime then clears `synchronous_standby_names` and leaves the key alone), and
/// also for `quorum`, which Keel does not implement: the configuration check refuses it, and a `quorum` found in
/// the store is never run as `FIRST n` (the leader race refuses automatic promotion instead, see `ha`).
pub fn plan(
    me: &str,
    view: &ClusterView,
    cfg: &DynamicConfig,
    standbys: &[StandbyConn],
    leader_lsn: Option<Lsn>,
) -> Option<SyncPlan> {
    if cfg.synchronous_mode != SynchronousMode::On {
        return None;
    }
    let count = cfg.synchronous_node_count.max(1) as usize;
    let strict = cfg.synchronous_mode_strict;
    // Candidates: streaming standbys that are members allowed to be synchronous and within
    // `maximum_lag_on_syncnode`; higher `sync_priority` first, then the ones already synchronous (so a healthy
    // sync standby is not swapped needlessly), then the most advanced.
    let candidates: Vec<&StandbyConn> = standbys
        .iter()
        .filter(|s| s.streaming && !s.name.eq_ignore_ascii_case(me))
        .filter(|s| {
            view.members
                .values()
                .find(|m| m.name.eq_ignore_ascii_case(&s.name))
                .is_some_and(|m| !m.tags.no_sync() && !m.tags.no_failover())
        })
        .collect();
    let mut candidates = within_syncnode_lag(candidates, leader_lsn, cfg.maximum_lag_on_syncnode);
    candidates.sort_by(|a, b| {
        let prio = |s: &StandbyConn| sync_priority(view, &s.name);
        prio(b)
            .cmp(&prio(a))
            .then(b.is_sync.cmp(&a.is_sync))
            .then(b.flush_lsn.cmp(&a.flush_lsn))
            .then(a.name.cmp(&b.name))
    });
    let desired: Vec<String> = candidates.iter().take(count).map(|s| s.name.clone()).collect();

    let (listed, version) = match &view.sync {
        Some(v) if v.value.leader.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(me)) => {
            (v.value.sync_standby.clone(), Some(v.version))
        }
        Some(v) => (Vec::new(), Some(v.version)),
        None => (Vec::new(), None),
    };
    let contains = |list: &[String], n: &str| list.iter().any(|x| x.eq_ignore_ascii_case(n));
    let key =
        |names: Vec<String>| SyncState { leader: Some(me.to_string()), sync_standby: names, ..SyncState::default() };
    let key_is_ours = view.sync.as_ref().is_some_and(|v| v.value.leader.as_deref() == Some(me));

    // Strict mode with nobody to replace the listed standbys: keep what the key says, block commits otherwise.
    if strict && desired.is_empty() {
        let write_key = (!key_is_ours).then(|| (key(listed.clone()), version));
        return Some(SyncPlan { write_key, standby_names: standby_names(&listed, count, true) });
    }

    let kept: Vec<String> = listed.iter().filter(|n| contains(&desired, n)).cloned().collect();
    if kept.len() != listed.len() || !key_is_ours {
        // Removal first: the key shrinks to the standbys we keep; the parameter still covers the old set so
        // PostgreSQL keeps waiting for them until the key no longer lists them.
        let mut names = listed.clone();
        for d in &desired {
            if !contains(&names, d) {
                names.push(d.clone());
            }
        }
        let names = if key_is_ours { names } else { desired.clone() };
        return Some(SyncPlan {
            write_key: Some((key(kept), version)),
            standby_names: standby_names(&names, count, false),
        });
    }
    // Addition: list a desired standby in the key only once PostgreSQL reports it synchronous.
    let confirmed: Vec<String> = desired
        .iter()
        .filter(|d| contains(&kept, d) || standbys.iter().any(|s| s.is_sync && s.name.eq_ignore_ascii_case(d)))
        .cloned()
        .collect();
    let write_key = (confirmed.len() != kept.len()).then(|| (key(confirmed), version));
    Some(SyncPlan { write_key, standby_names: standby_names(&desired, count, false) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Member, Versioned};
    use serde_json::json;

    fn view(members: &[&str], sync: Option<(&str, &[&str])>) -> ClusterView {
        let mut v = ClusterView::default();
        for m in members {
            v.members.insert(m.to_string(), Member { name: m.to_string(), ..Default::default() });
        }
        v.sync = sync.map(|(l, s)| Versioned {
            value: SyncState {
                leader: Some(l.into()),
                sync_standby: s.iter().map(|x| x.to_string()).collect(),
                ..SyncState::default()
            },
            version: 7,
        });
        v
    }

    fn conn(name: &str, is_sync: bool, lsn: u64) -> StandbyConn {
        StandbyConn { name: name.into(), streaming: true, is_sync, flush_lsn: Some(Lsn(lsn)) }
    }

    fn on(strict: bool) -> DynamicConfig {
        DynamicConfig::from_value(json!({"synchronous_mode": true, "synchronous_mode_strict": strict}))
    }

    #[test]
    fn off_means_no_plan() {
        assert_eq!(
            plan("a", &view(&["a", "b"], None), &DynamicConfig::default(), &[conn("b", false, 1)], Some(Lsn(10))),
            None
        );
    }

    #[test]
    fn a_new_standby_enters_the_parameter_before_the_key() {
        let v = view(&["a", "b", "c"], Some(("a", &[])));
        let p = plan("a", &v, &on(false), &[conn("b", false, 10), conn("c", false, 5)], Some(Lsn(10))).unwrap();
        assert_eq!(p.standby_names, "FIRST 1 (\"b\")");
        assert_eq!(p.write_key, None, "b is not confirmed synchronous yet");
        let p = plan("a", &v, &on(false), &[conn("b", true, 10), conn("c", false, 5)], Some(Lsn(10))).unwrap();
        assert_eq!(p.write_key.unwrap().0.sync_standby, vec!["b".to_string()]);
    }

    #[test]
    fn a_gone_standby_leaves_the_key_before_the_parameter() {
        let v = view(&["a", "b", "c"], Some(("a", &["b"])));
        let p = plan("a", &v, &on(false), &[conn("c", false, 5)], Some(Lsn(10))).unwrap();
        let (key, version) = p.write_key.unwrap();
        assert!(key.sync_standby.is_empty());
        assert_eq!(version, Some(7));
        assert!(p.standby_names.contains("\"b\""), "PostgreSQL keeps waiting for b until the key dropped it");
    }

    #[test]
    fn a_new_leader_takes_the_key_over() {
        let v = view(&["a", "b"], Some(("old", &["a"])));
        let p = plan("a", &v, &on(false), &[conn("b", false, 5)], Some(Lsn(10))).unwrap();
        let (key, _) = p.write_key.unwrap();
        assert_eq!(key.leader.as_deref(), Some("a"));
        assert!(key.sync_standby.is_empty());
    }

    #[test]
    fn strict_without_standbys_blocks_commits() {
        let v = view(&["a", "b"], Some(("a", &["b"])));
        let p = plan("a", &v, &on(true), &[], Some(Lsn(10))).unwrap();
        assert_eq!(p.write_key, None);
        assert_eq!(p.standby_names, "FIRST 1 (\"b\")");
        let v = view(&["a"], Some(("a", &[])));
        assert_eq!(plan("a", &v, &on(true), &[], Some(Lsn(10))).unwrap().standby_names, STRICT_PLACEHOLDER);
        let p = plan("a", &v, &on(false), &[], Some(Lsn(10))).unwrap();
        assert_eq!(p.standby_names, "");
    }

    #[test]
    fn nosync_members_are_never_chosen() {
        let mut v = view(&["a", "b", "c"], Some(("a", &[])));
        if let Some(m) = v.members.get_mut("b") {
            m.tags.nosync = true;
        }
        let p = plan("a", &v, &on(false), &[conn("b", false, 10), conn("c", false, 5)], Some(Lsn(10))).unwrap();
        assert_eq!(p.standby_names, "FIRST 1 (\"c\")");
    }

    fn cfg(v: serde_json::Value) -> DynamicConfig {
        DynamicConfig::from_value(v)
    }

    #[test]
    fn syncnode_lag_table() {
        let (a, b, c) = (conn("a", true, 100), conn("b", false, 900), conn("c", false, 1000));
        let unknown = StandbyConn { flush_lsn: None, ..conn("u", false, 0) };
        let names = |v: Vec<&StandbyConn>| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>().join(",");
        // (candidates, leader lsn, maximum_lag_on_syncnode, kept)
        let cases: Vec<(Vec<&StandbyConn>, Option<Lsn>, i64, &str)> = vec![
            (vec![&a, &b, &c], Some(Lsn(1000)), -1, "a,b,c"),
            (vec![&a, &b, &c], Some(Lsn(1000)), 0, "a,b,c"),
            // Several candidates: measured against the most advanced one, not the leader.
            (vec![&a, &b, &c], Some(Lsn(5000)), 100, "b,c"),
            (vec![&a, &b, &c], Some(Lsn(5000)), 900, "a,b,c"),
            (vec![&a, &b, &c], Some(Lsn(5000)), 899, "b,c"),
            // A single candidate: measured against the leader's position.
            (vec![&a], Some(Lsn(1000)), 100, ""),
            (vec![&c], Some(Lsn(1000)), 100, "c"),
            (vec![&c], None, 100, "c"),
            (vec![&unknown, &c], Some(Lsn(1000)), 100, "c"),
        ];
        for (candidates, leader, max, kept) in cases {
            assert_eq!(names(within_syncnode_lag(candidates, leader, max)), kept, "max {max}, leader {leader:?}");
        }
    }

    #[test]
    fn a_lagging_sync_standby_is_swapped_for_a_healthy_one() {
        let v = view(&["a", "b", "c"], Some(("a", &["b"])));
        let lagging = cfg(json!({"synchronous_mode": true, "maximum_lag_on_syncnode": 1000}));
        let standbys = [conn("b", true, 10), conn("c", false, 50_000)];
        let p = plan("a", &v, &lagging, &standbys, Some(Lsn(50_000))).unwrap();
        assert_eq!(p.write_key.unwrap().0.sync_standby, Vec::<String>::new(), "b leaves the key first");
        let p = plan("a", &v, &on(false), &standbys, Some(Lsn(50_000))).unwrap();
        assert_eq!((p.write_key, p.standby_names.as_str()), (None, "FIRST 1 (\"b\")"), "off: b is kept");
    }

    #[test]
    fn higher_sync_priority_is_preferred() {
        let mut v = view(&["a", "b", "c"], Some(("a", &[])));
        if let Some(m) = v.members.get_mut("c") {
            m.tags.sync_priority = Some(5);
        }
        let p = plan("a", &v, &on(false), &[conn("b", false, 10), conn("c", false, 5)], Some(Lsn(10))).unwrap();
        assert_eq!(p.standby_names, "FIRST 1 (\"c\")");
    }

    #[test]
    fn quorum_is_never_run_as_first_n() {
        let v = view(&["a", "b"], Some(("a", &["b"])));
        let quorum = cfg(json!({"synchronous_mode": "quorum"}));
        assert_eq!(plan("a", &v, &quorum, &[conn("b", true, 10)], Some(Lsn(10))), None);
    }
}
