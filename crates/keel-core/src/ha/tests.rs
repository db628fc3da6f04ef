//! Table tests (one test per rule) and property tests for [`decide`].

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::time::Millis;
use crate::view::{ClusterView, RawEntry, Tags};

const SYSID: &str = "7000000000000000001";
const NOW: Millis = Millis(1_767_225_600_000); // 2026-01-01T00:00:00Z

/// The store contents, as raw keys; `view()` parses them the way the runtime does.
#[derive(Clone)]
struct World {
    keys: BTreeMap<String, String>,
}

fn member_json(role: &str, tl: u32, lsn: u64) -> String {
    json!({"state": "running", "role": role, "timeline": tl, "xlog_location": lsn,
           "api_url": "http://h:8008/patroni", "conn_url": "postgres://h:5432/postgres"})
    .to_string()
}

impl World {
    /// A healthy three-node cluster: n1 leads on timeline 1, everyone at LSN 1000.
    fn healthy() -> World {
        let mut w = World { keys: BTreeMap::new() };
        w.set("initialize", SYSID).set("config", "{}").set("leader", "n1").set("status", r#"{"optime":1000}"#);
        w.set("members/n1", &member_json("primary", 1, 1000));
        w.set("members/n2", &member_json("replica", 1, 1000));
        w.set("members/n3", &member_json("replica", 1, 1000));
        w
    }

    fn empty() -> World {
        World { keys: BTreeMap::new() }
    }

    fn set(&mut self, k: &str, v: &str) -> &mut World {
        self.keys.insert(k.to_string(), v.to_string());
        self
    }

    fn rm(&mut self, k: &str) -> &mut World {
        self.keys.remove(k);
        self
    }

    fn no_leader(mut self) -> World {
        self.rm("leader");
        self
    }

    fn with(mut self, k: &str, v: &str) -> World {
        self.set(k, v);
        self
    }

    fn view(&self) -> ClusterView {
        ClusterView::from_entries(self.keys.iter().enumerate().map(|(i, (k, v))| RawEntry {
            key: k.clone(),
            value: v.clone(),
            mod_revision: i as i64 + 1,
            lease: 0,
        }))
    }
}

fn replica_pg(lsn: u64) -> PgObservation {
    PgObservation {
        running: PgRunning::Running,
        starting: false,
        role: PgRole::Replica,
        timeline: Some(1),
        received_lsn: Some(Lsn(lsn)),
        replayed_lsn: Some(Lsn(lsn)),
        current_lsn: None,
        data_dir: DataDir::Initialized { sysid: SYSID.into() },
        following: Some("n1".into()),
        down_since: None,
    }
}

fn primary_pg(lsn: u64) -> PgObservation {
    PgObservation {
        role: PgRole::Primary,
        received_lsn: None,
        replayed_lsn: None,
        current_lsn: Some(Lsn(lsn)),
        following: None,
        ..replica_pg(lsn)
    }
}

fn stopped_pg() -> PgObservation {
    PgObservation { running: PgRunning::Stopped, role: PgRole::Unknown, following: None, ..replica_pg(1000) }
}

fn empty_pg() -> PgObservation {
    PgObservation { data_dir: DataDir::Empty, timeline: None, ..stopped_pg() }
}

fn input(name: &str, world: &World, pg: PgObservation) -> HaInput {
    let view = world.view();
    HaInput {
        now: NOW,
        name: name.into(),
        tags: Tags::default(),
        config: view.dynamic_config(),
        view,
        pg,
        agent: AgentState {
            store_ok: true,
            lease_valid: true,
            last_leader_refresh: None,
            failsafe_confirmed: false,
            failsafe_leader: None,
            clone_from_leader: false,
            watchdog_unavailable: false,
        },
        probes: None,
        local_slots: None,
    }
}

fn peer(name: &str, running: bool, in_recovery: bool, lsn: u64) -> PeerProbe {
    PeerProbe {
        name: name.into(),
        result: ProbeResult::Reachable(PeerStatus {
            pg_running: running,
            in_recovery,
            wal_position: Some(Lsn(lsn)),
            timeline: Some(1),
            tags: Tags::default(),
        }),
    }
}

fn unreachable(name: &str) -> PeerProbe {
    PeerProbe { name: name.into(), result: ProbeResult::Unreachable }
}

fn with_probes(mut i: HaInput, probes: Vec<PeerProbe>) -> HaInput {
    i.probes = Some(probes);
    i
}

fn with_tags(mut i: HaInput, tags: serde_json::Value) -> HaInput {
    i.tags = Tags::from_json(&tags);
    i
}

fn failsafe_confirmed(mut i: HaInput) -> HaInput {
    i.agent.failsafe_confirmed = true;
    i
}

fn failsafe_leader(mut i: HaInput, leader: &str) -> HaInput {
    i.agent.failsafe_leader = Some(leader.into());
    i
}

fn from_leader(mut i: HaInput) -> HaInput {
    i.agent.clone_from_leader = true;
    i
}

fn watchdog_missing(mut i: HaInput) -> HaInput {
    i.agent.watchdog_unavailable = true;
    i
}

fn store_down(mut i: HaInput) -> HaInput {
    i.agent.store_ok = false;
    i
}

fn healthy_replicas() -> Vec<PeerProbe> {
    vec![peer("n1", false, false, 1000), peer("n3", true, true, 1000)]
}

fn demote(mode: DemoteMode) -> Action {
    Action::Demote { mode }
}

fn start_replica(upstream: Option<&str>) -> Action {
    Action::StartPostgres { start_as: StartAs::Replica { upstream: upstream.map(str::to_string) } }
}

fn update(optime: Option<u64>) -> Action {
    Action::UpdateLeader { optime: optime.map(Lsn) }
}

fn follow(upstream: &str) -> Action {
    Action::Follow { upstream: upstream.into() }
}

fn clear(version: i64) -> Action {
    Action::ClearFailover { version }
}

/// The failover key's revision in a world (keys are numbered in order).
fn fo_rev(w: &World) -> i64 {
    w.view().failover.map(|f| f.version).unwrap_or(-1)
}

fn n2_switchover(extra: &str) -> World {
    World::healthy().with("failover", &format!(r#"{{"leader":"n1","member":"n2"{extra}}}"#))
}

fn check(i: HaInput, actions: Vec<Action>, reason: Reason) -> Decision {
    let d = decide(&i);
    assert_eq!(d.actions, actions, "decision: {d}");
    assert_eq!(d.reason, reason, "decision: {d}");
    if let Some(fb) = &d.on_guard_failure {
        assert!(fb.guard().is_none());
        assert!(d.guard().is_some(), "a fallback without a guard: {d:?}");
    }
    assert!(d.actions.iter().skip(1).all(|a| !a.is_guard()), "guard not first: {d:?}");
    d
}

fn fallback(d: &Decision) -> &Decision {
    d.on_guard_failure.as_deref().expect("decision has a fallback")
}

#[test]
fn a_divergence_check_that_cannot_run_is_unknown_not_diverged() {
    let i = input(
        "n2",
        &World::healthy()
            .with("members/n1", r#"{"state":"running","role":"primary","timeline":2}"#)
            .with("config", r#"{"postgresql":{"use_pg_rewind":true}}"#),
        replica_pg(1000),
    );
    let d = decide(&i);
    assert!(matches!(d.guard(), Some(Action::CheckDivergence { .. })), "{d:?}");
    assert_eq!(fallback(&d).reason, Reason::DivergedNeedsReinit { leader: "n1".into() });
    let on_error = d.on_guard_error.as_deref().expect("an error path");
    assert_eq!(
        (on_error.actions.as_slice(), &on_error.reason),
        (&[][..], &Reason::DivergenceUnknown { leader: "n1".into() })
    );
}

#[test]
fn a_store_guard_error_is_a_failure() {
    let d = decide(&input("n1", &World::healthy(), primary_pg(1000)));
    assert!(matches!(d.guard(), Some(Action::UpdateLeader { .. })), "{d:?}");
    assert_eq!(d.on_guard_error, d.on_guard_failure);
}

/// One `#[test]` per row: `name: input => [actions], reason;`.
macro_rules! rows {
    ($($name:ident: $input:expr => [$($action:expr),* $(,)?], $reason:expr;)*) => {
        $(
            #[test]
            fn $name() {
                check($input, vec![$($action),*], $reason);
            }
        )*
    };
}

rows! {
    // The store.
    store_down_primary_demotes_offline:
        store_down(input("n1", &World::healthy(), primary_pg(1000))) => [demote(DemoteMode::Offline)],
        Reason::StoreUnreachableDemoting;
    store_down_failsafe_confirmed_primary_stays:
        failsafe_confirmed(store_down(input("n1", &World::healthy().with("config", r#"{"failsafe_mode":true}"#),
            primary_pg(1000)))) => [],
        Reason::FailsafeContinuing;
    store_down_failsafe_unconfirmed_primary_demotes:
        store_down(input("n1", &World::healthy().with("config", r#"{"failsafe_mode":true}"#), primary_pg(1000)))
            => [demote(DemoteMode::Offline)],
        Reason::StoreUnreachableDemoting;
    store_down_confirmation_without_failsafe_mode_demotes:
        failsafe_confirmed(store_down(input("n1", &World::healthy(), primary_pg(1000)))) => [demote(DemoteMode::Offline)],
        Reason::StoreUnreachableDemoting;
    store_down_replica_waits:
        store_down(input("n2", &World::healthy(), replica_pg(1000))) => [], Reason::StoreUnreachable;
    store_down_paused_primary_keeps_running:
        store_down(input("n1", &World::healthy().with("config", r#"{"pause":true}"#), primary_pg(1000))) => [],
        Reason::StoreUnreachablePaused;

    // Data directory and bootstrap.
    unknown_data_dir_is_not_empty:
        input("n2", &World::empty(), PgObservation { data_dir: DataDir::Unknown, ..stopped_pg() }) => [],
        Reason::DataDirUnknown;
    empty_uninitialized_races_for_initialize:
        input("n1", &World::empty(), empty_pg()) => [Action::TakeInitialize, Action::Bootstrap],
        Reason::RacingForInitialize;
    empty_nofailover_never_bootstraps:
        with_tags(input("n1", &World::empty(), empty_pg()), json!({"nofailover": true})) => [],
        Reason::NoFailoverWillNotBootstrap;
    empty_waits_for_bootstrapper:
        input("n2", &World::empty().with("initialize", ""), empty_pg()) => [], Reason::WaitingForLeaderToBootstrap;
    empty_never_bootstraps_beside_running_members:
        input("n4", &World::healthy().no_leader().rm("initialize").clone(), empty_pg()) => [],
        Reason::WaitingForLeaderToBootstrap;
    empty_clones_from_leader:
        input("n4", &World::healthy(), empty_pg()) => [Action::CreateReplica { source: "n1".into() }],
        Reason::CloningFrom { source: "n1".into(), is_leader: true };
    empty_clones_from_clonefrom_member:
        input("n4", &World::healthy().with("members/n3",
            r#"{"state":"running","role":"replica","tags":{"clonefrom":true}}"#), empty_pg())
        => [Action::CreateReplica { source: "n3".into() }], Reason::CloningFrom { source: "n3".into(), is_leader: false };
    empty_reinit_from_leader_skips_clonefrom_member:
        from_leader(input("n4", &World::healthy().with("members/n3",
            r#"{"state":"running","role":"replica","tags":{"clonefrom":true}}"#), empty_pg()))
        => [Action::CreateReplica { source: "n1".into() }], Reason::CloningFrom { source: "n1".into(), is_leader: true };
    empty_data_dir_releases_leader_key:
        input("n1", &World::healthy(), empty_pg()) => [Action::ReleaseLeader { last_lsn: None }],
        Reason::DataDirEmptyReleasedLock;
    empty_data_dir_in_pause_waits:
        input("n4", &World::healthy().with("config", r#"{"pause":true}"#), empty_pg()) => [],
        Reason::PausedWithEmptyDataDir;
    invalid_data_dir_waits:
        input("n2", &World::healthy(), PgObservation { data_dir: DataDir::Invalid, ..stopped_pg() }) => [],
        Reason::DataDirInvalid;
    sysid_mismatch_refuses_to_run:
        input("n2", &World::healthy().with("initialize", "1"), replica_pg(1000))
        => [Action::RefuseToRun { why: FatalReason::SysidMismatch { ours: SYSID.into(), cluster: "1".into() } }],
        Reason::SysidMismatch { ours: SYSID.into(), cluster: "1".into() };
    sysid_mismatch_in_pause_only_warns:
        input("n2", &World::healthy().with("initialize", "1").with("config", r#"{"pause":true}"#), replica_pg(1000))
        => [], Reason::SysidMismatchPaused { ours: SYSID.into(), cluster: "1".into() };
    bootstrapper_takes_leader_and_writes_sysid:
        input("n1", &World::empty().with("initialize", ""), primary_pg(10))
        => [Action::AcquireLeader, Action::WriteInitialize { sysid: SYSID.into() }, Action::WriteConfig],
        Reason::AcquiredLockAsLeader;
    leader_writes_missing_config:
        input("n1", &World::healthy().rm("config").clone(), primary_pg(1000)) => [update(Some(1000)), Action::WriteConfig],
        Reason::LeaderWithLock { me: "n1".into() };

    // PostgreSQL state.
    pg_unknown_waits_without_refreshing:
        input("n1", &World::healthy(), PgObservation { running: PgRunning::Unknown, ..primary_pg(1000) }) => [],
        Reason::PgStateUnknown;
    pg_starting_keeps_lock:
        input("n1", &World::healthy(), PgObservation { starting: true, ..primary_pg(1000) }) => [update(None)],
        Reason::PgStartingWithLock;
    pg_starting_as_primary_without_lock_is_stopped:
        input("n2", &World::healthy(), PgObservation { starting: true, ..primary_pg(1000) })
        => [demote(DemoteMode::ImmediateNoLock)], Reason::PgStartingAsPrimaryWithoutLock;
    pg_starting_replica_waits:
        input("n2", &World::healthy(), PgObservation { starting: true, ..replica_pg(1000) }) => [], Reason::PgStarting;
    stopped_starts_as_replica_of_leader:
        input("n2", &World::healthy(), stopped_pg()) => [start_replica(Some("n1"))],
        Reason::StartingAsReplica { leader: Some("n1".into()) };
    stopped_with_lock_starts_readonly:
        input("n1", &World::healthy(), stopped_pg()) => [update(None), start_replica(None)],
        Reason::StartingReadonlyWithLock;
    stopped_primary_gives_up_key_after_primary_start_timeout:
        input("n1", &World::healthy(), PgObservation { down_since: Some(Millis(NOW.0 - 300_000)), ..stopped_pg() })
        => [Action::ReleaseLeader { last_lsn: None }], Reason::PrimaryStartTimedOut;
    stopped_primary_keeps_key_within_primary_start_timeout:
        input("n1", &World::healthy(), PgObservation { down_since: Some(Millis(NOW.0 - 299_999)), ..stopped_pg() })
        => [update(None), start_replica(None)], Reason::StartingReadonlyWithLock;
    starting_primary_times_out:
        input("n1", &World::healthy().with("config", r#"{"primary_start_timeout":0}"#),
            PgObservation { starting: true, down_since: Some(NOW), ..primary_pg(1000) })
        => [demote(DemoteMode::ImmediateNoLock), Action::ReleaseLeader { last_lsn: None }], Reason::PrimaryStartTimedOut;
    stopped_without_leader_starts_readonly:
        input("n2", &World::healthy().no_leader(), stopped_pg()) => [start_replica(None)],
        Reason::StartingAsReplica { leader: None };
    stopped_on_old_timeline_checks_divergence:
        input("n2", &World::healthy().with("members/n1", &member_json("primary", 2, 2000)), stopped_pg())
        => [Action::CheckDivergence { leader: "n1".into(), policy: DivergencePolicy::default() }, start_replica(Some("n1"))],
        Reason::CheckingDivergence { leader: "n1".into() };
    stopped_in_pause_stays_stopped:
        input("n2", &World::healthy().with("config", r#"{"pause":true}"#), stopped_pg()) => [],
        Reason::PgStoppedPaused;
    stopped_in_pause_releases_lock:
        input("n1", &World::healthy().with("config", r#"{"pause":true}"#), stopped_pg())
        => [Action::ReleaseLeader { last_lsn: None }], Reason::PgStoppedPausedReleasedLock;

    // Healthy cluster.
    leader_refreshes_lock:
        input("n1", &World::healthy(), primary_pg(1500)) => [update(Some(1500))], Reason::LeaderWithLock { me: "n1".into() };
    leader_key_holder_promotes:
        input("n1", &World::healthy(), replica_pg(1000)) => [update(None), Action::Promote { cause: PromoteCause::HadLock }],
        Reason::PromotedWithLock;
    replica_with_lock_finishes_switchover:
        input("n1", &n2_switchover(""), replica_pg(1000)) => [Action::ReleaseLeader { last_lsn: Some(Lsn(1000)) }],
        Reason::ReleasingForCandidate { candidate: "n2".into() };
    paused_replica_with_lock_releases:
        input("n1", &World::healthy().with("config", r#"{"pause":true}"#), replica_pg(1000))
        => [Action::ReleaseLeader { last_lsn: Some(Lsn(1000)) }], Reason::PausedReplicaReleasedLock;
    primary_without_lock_demotes:
        input("n2", &World::healthy(), primary_pg(1000)) => [demote(DemoteMode::ImmediateNoLock)],
        Reason::DemotingNoLock { leader: "n1".into() };
    paused_primary_without_lock_keeps_running:
        input("n2", &World::healthy().with("config", r#"{"pause":true}"#), primary_pg(1000)) => [],
        Reason::PausedPrimaryWithoutLock { leader: "n1".into() };
    replica_follows_leader:
        input("n2", &World::healthy(), replica_pg(1000)) => [],
        Reason::Following { me: "n2".into(), leader: "n1".into() };
    replica_repoints_to_new_leader:
        input("n2", &World::healthy().with("leader", "n3"), replica_pg(1000)) => [follow("n3")],
        Reason::StartedFollowing { leader: "n3".into() };
    replica_honours_replicatefrom:
        with_tags(input("n2", &World::healthy(), replica_pg(1000)), json!({"replicatefrom": "n3"})) => [follow("n3")],
        Reason::StartedFollowing { leader: "n3".into() };
    replica_on_old_timeline_checks_divergence_with_rewind:
        input("n2", &World::healthy().with("members/n1", &member_json("primary", 2, 2000))
            .with("config", r#"{"postgresql":{"use_pg_rewind":true}}"#), replica_pg(1000))
        => [Action::CheckDivergence { leader: "n1".into(), policy: DivergencePolicy { rewind: true, ..Default::default() } }, follow("n1")],
        Reason::CheckingDivergence { leader: "n1".into() };

    // The leader race.
    race_asks_for_probes:
        input("n2", &World::healthy().no_leader(), replica_pg(1000))
        => [Action::ProbePeers { members: vec!["n1".into(), "n3".into()] }], Reason::ProbingPeers;
    race_winner_acquires_and_promotes:
        with_probes(input("n2", &World::healthy().no_leader(), replica_pg(1000)), healthy_replicas())
        => [Action::AcquireLeader, Action::Promote { cause: PromoteCause::WonRace }], Reason::PromotedByRace;
    race_ignores_unreachable_peers:
        with_probes(input("n2", &World::healthy().no_leader(), replica_pg(1000)), vec![unreachable("n1"), unreachable("n3")])
        => [Action::AcquireLeader, Action::Promote { cause: PromoteCause::WonRace }], Reason::PromotedByRace;
    race_lagging_node_stays_out:
        input("n2", &World::healthy().no_leader().with("status", r#"{"optime":3000000}"#), replica_pg(1000)) => [],
        Reason::NotHealthiest(Ineligible::Lagging { lag: 2_999_000, max: 1_048_576 });
    race_respects_maximum_lag_setting:
        input("n2", &World::healthy().no_leader().with("config", r#"{"maximum_lag_on_failover":100}"#)
            .with("status", r#"{"optime":1101}"#), replica_pg(1000)) => [],
        Reason::NotHealthiest(Ineligible::Lagging { lag: 101, max: 100 });
    race_nofailover_stays_out:
        with_tags(input("n2", &World::healthy().no_leader(), replica_pg(1000)), json!({"nofailover": true})) => [],
        Reason::NotHealthiest(Ineligible::NoFailoverTag);
    race_failover_priority_zero_stays_out:
        with_tags(input("n2", &World::healthy().no_leader(), replica_pg(1000)), json!({"failover_priority": 0})) => [],
        Reason::NotHealthiest(Ineligible::NoFailoverTag);
    race_defers_to_peer_ahead:
        with_probes(input("n2", &World::healthy().no_leader(), replica_pg(1000)),
            vec![unreachable("n1"), peer("n3", true, true, 1001)]) => [],
        Reason::NotHealthiest(Ineligible::PeerAhead { member: "n3".into(), theirs: Lsn(1001), ours: Lsn(1000) });
    race_defers_to_higher_priority_at_same_lsn:
        with_probes(input("n2", &World::healthy().no_leader(), replica_pg(1000)), vec![PeerProbe {
            name: "n3".into(),
            result: ProbeResult::Reachable(PeerStatus { pg_running: true, in_recovery: true,
                wal_position: Some(Lsn(1000)), timeline: Some(1), tags: Tags::from_json(&json!({"failover_priority": 5})) }),
        }]) => [],
        Reason::NotHealthiest(Ineligible::PeerHigherPriority { member: "n3".into(), theirs: 5, ours: 1 });
    race_ignores_nofailover_peer_ahead:
        with_probes(input("n2", &World::healthy().no_leader(), replica_pg(1000)), vec![PeerProbe {
            name: "n3".into(),
            result: ProbeResult::Reachable(PeerStatus { pg_running: true, in_recovery: true,
                wal_position: Some(Lsn(5000)), timeline: Some(1), tags: Tags::from_json(&json!({"nofailover": true})) }),
        }]) => [Action::AcquireLeader, Action::Promote { cause: PromoteCause::WonRace }], Reason::PromotedByRace;
    race_ignores_longer_wal_on_older_timeline:
        with_probes(input("n2", &World::healthy().no_leader(), PgObservation { timeline: Some(2), ..replica_pg(1000) }),
            vec![unreachable("n1"), peer("n3", true, true, 9000)])
        => [Action::AcquireLeader, Action::Promote { cause: PromoteCause::WonRace }], Reason::PromotedByRace;
    race_required_watchdog_missing_keeps_out:
        watchdog_missing(input("n2", &World::healthy().no_leader(), replica_pg(1000))) => [],
        Reason::NotHealthiest(Ineligible::WatchdogUnavailable);
    race_defers_to_live_primary:
        with_probes(input("n2", &World::healthy().no_leader(), replica_pg(1000)),
            vec![peer("n1", true, false, 1000), peer("n3", true, true, 1000)]) => [],
        Reason::NotHealthiest(Ineligible::PrimaryStillAlive { member: "n1".into() });
    race_sync_mode_excludes_async_standby:
        input("n3", &World::healthy().no_leader().with("config", r#"{"synchronous_mode":true}"#)
            .with("sync", r#"{"leader":"n1","sync_standby":"n2"}"#), replica_pg(1000)) => [],
        Reason::NotHealthiest(Ineligible::NotSynchronous);
    race_sync_mode_unreadable_sync_key_admits_no_replica:
        input("n2", &World::healthy().no_leader().with("config", r#"{"synchronous_mode":true}"#)
            .with("sync", "garbage"), replica_pg(1000)) => [],
        Reason::NotHealthiest(Ineligible::NotSynchronous);
    race_sync_mode_unreadable_sync_key_lets_the_running_primary_take_its_key_back:
        with_probes(input("n1", &World::healthy().no_leader().with("config", r#"{"synchronous_mode":true}"#)
            .with("sync", "[1,2]"), primary_pg(1000)), vec![peer("n2", true, true, 1000), peer("n3", true, true, 1000)])
        => [Action::AcquireLeader], Reason::AcquiredLockAsLeader;
    race_sync_mode_admits_sync_standby_and_ignores_async_peer_ahead:
        with_probes(input("n2", &World::healthy().no_leader().with("config", r#"{"synchronous_mode":true}"#)
            .with("sync", r#"{"leader":"n1","sync_standby":"n2"}"#), replica_pg(1000)),
            vec![unreachable("n1"), peer("n3", true, true, 2000)])
        => [Action::AcquireLeader, Action::Promote { cause: PromoteCause::WonRace }], Reason::PromotedByRace;
    race_quorum_mode_promotes_no_replica_automatically:
        with_probes(input("n2", &World::healthy().no_leader().with("config", r#"{"synchronous_mode":"quorum"}"#)
            .with("sync", r#"{"leader":"n1","sync_standby":"n2","quorum":1}"#), replica_pg(1000)),
            vec![unreachable("n1"), peer("n3", true, true, 900)])
        => [], Reason::NotHealthiest(Ineligible::QuorumNotImplemented);
    race_quorum_mode_primary_without_key_takes_it_back:
        with_probes(input("n1", &World::healthy().no_leader().with("config", r#"{"synchronous_mode":"quorum"}"#),
            primary_pg(1000)), vec![peer("n2", true, true, 1000), peer("n3", true, true, 1000)])
        => [Action::AcquireLeader], Reason::AcquiredLockAsLeader;
    race_check_timeline_excludes_old_timeline:
        input("n2", &World::healthy().no_leader().with("config", r#"{"check_timeline":true}"#)
            .with("history", r#"[[1,500,"no recovery target specified"]]"#), replica_pg(1000)) => [],
        Reason::NotHealthiest(Ineligible::TimelineBehind { ours: 1, cluster: 2 });
    race_failsafe_excludes_unlisted_member:
        input("n2", &World::healthy().no_leader().with("failsafe", r#"{"n1":"http://h"}"#), replica_pg(1000)) => [],
        Reason::NotHealthiest(Ineligible::NotInFailsafe);
    race_not_opened_while_the_failsafe_leader_announcement_is_fresh:
        failsafe_leader(input("n2", &World::healthy().no_leader().rm("members/n1").clone()
            .with("config", r#"{"failsafe_mode":true}"#), replica_pg(1000)), "n1") => [],
        Reason::FailsafeLeaderAnnounced { leader: "n1".into() };
    race_announcement_ignored_without_failsafe_mode:
        failsafe_leader(input("n2", &World::healthy().no_leader(), replica_pg(1000)), "n1")
        => [Action::ProbePeers { members: vec!["n1".into(), "n3".into()] }], Reason::ProbingPeers;
    race_own_announcement_does_not_stop_the_primary_retaking_the_key:
        failsafe_leader(with_probes(input("n1", &World::healthy().no_leader()
            .with("config", r#"{"failsafe_mode":true}"#), primary_pg(2000)), healthy_replicas()), "n1")
        => [Action::AcquireLeader], Reason::AcquiredLockAsLeader;
    race_without_lease_stays_out:
        { let mut i = input("n2", &World::healthy().no_leader(), replica_pg(1000)); i.agent.lease_valid = false; i }
        => [], Reason::NotHealthiest(Ineligible::NoLease);
    race_unknown_wal_position_stays_out:
        input("n2", &World::healthy().no_leader(),
            PgObservation { received_lsn: None, replayed_lsn: None, ..replica_pg(1000) }) => [],
        Reason::NotHealthiest(Ineligible::WalPositionUnknown);
    race_primary_without_key_takes_it:
        with_probes(input("n1", &World::healthy().no_leader(), primary_pg(1000)),
            vec![peer("n2", true, true, 1000), peer("n3", true, true, 1000)])
        => [Action::AcquireLeader], Reason::AcquiredLockAsLeader;
    race_primary_not_healthiest_demotes:
        with_probes(input("n1", &World::healthy().no_leader(), primary_pg(1000)),
            vec![peer("n2", true, true, 1000), peer("n3", true, false, 1000)])
        => [demote(DemoteMode::ImmediateNoLock)],
        Reason::NotHealthiestDemoting(Ineligible::PrimaryStillAlive { member: "n3".into() });
    single_node_race_needs_no_probes:
        input("n1", &World::empty().with("initialize", SYSID).with("config", "{}"), replica_pg(5))
        => [Action::AcquireLeader, Action::Promote { cause: PromoteCause::WonRace }], Reason::PromotedByRace;

    // Manual failover without a leader.
    named_candidate_wins_despite_lag:
        with_probes(input("n3", &World::healthy().no_leader().with("status", r#"{"optime":9000000}"#)
            .with("failover", r#"{"member":"n3"}"#), replica_pg(1000)), healthy_replicas())
        => [Action::AcquireLeader, Action::Promote { cause: PromoteCause::Manual }, clear(2)],
        Reason::PromotedByManualFailover;
    named_candidate_still_refuses_with_live_primary:
        with_probes(input("n3", &World::healthy().no_leader().with("failover", r#"{"member":"n3"}"#), replica_pg(1000)),
            vec![peer("n1", true, false, 1000)]) => [],
        Reason::NotHealthiest(Ineligible::PrimaryStillAlive { member: "n1".into() });
    others_defer_to_healthy_named_candidate:
        with_probes(input("n2", &World::healthy().no_leader().with("failover", r#"{"member":"n3"}"#), replica_pg(1000)),
            healthy_replicas()) => [],
        Reason::NotHealthiest(Ineligible::OtherCandidateNamed { candidate: "n3".into() });
    unhealthy_named_candidate_opens_the_race:
        with_probes(input("n2", &World::healthy().no_leader().with("failover", r#"{"member":"n3"}"#), replica_pg(1000)),
            vec![unreachable("n1"), unreachable("n3")])
        => [Action::AcquireLeader, Action::Promote { cause: PromoteCause::WonRace }, clear(2)], Reason::PromotedByRace;

    // Switchover, on the leader.
    switchover_probes_candidate:
        input("n1", &n2_switchover(""), primary_pg(1000)) => [Action::ProbePeers { members: vec!["n2".into()] }],
        Reason::ProbingPeers;
    switchover_demotes_gracefully:
        with_probes(input("n1", &n2_switchover(""), primary_pg(1000)), vec![peer("n2", true, true, 1000)])
        => [update(Some(1000)), demote(DemoteMode::Graceful), Action::ReleaseLeader { last_lsn: Some(Lsn(1000)) }],
        Reason::SwitchoverDemoting { candidate: Some("n2".into()) };
    switchover_to_unhealthy_candidate_is_cleared:
        with_probes(input("n1", &n2_switchover(""), primary_pg(1000)), vec![unreachable("n2")])
        => [update(Some(1000)), clear(fo_rev(&n2_switchover("")))],
        Reason::FailoverRefused(FailoverRefusal::CandidateUnhealthy { candidate: "n2".into() });
    switchover_to_lagging_candidate_is_cleared:
        with_probes(input("n1", &n2_switchover(""), primary_pg(5_000_000)), vec![peer("n2", true, true, 1000)])
        => [update(Some(5_000_000)), clear(fo_rev(&n2_switchover("")))],
        Reason::FailoverRefused(FailoverRefusal::CandidateUnhealthy { candidate: "n2".into() });
    switchover_naming_other_leader_is_cleared:
        input("n1", &World::healthy().with("failover", r#"{"leader":"n9","member":"n2"}"#), primary_pg(1000))
        => [update(Some(1000)), clear(2)],
        Reason::FailoverRefused(FailoverRefusal::LeaderMismatch { requested: "n9".into(), actual: "n1".into() });
    switchover_to_self_is_cleared:
        input("n1", &World::healthy().with("failover", r#"{"member":"n1"}"#), primary_pg(1000))
        => [update(Some(1000)), clear(2)], Reason::FailoverRefused(FailoverRefusal::AlreadyLeader);
    switchover_to_any_member:
        with_probes(input("n1", &World::healthy().with("failover", r#"{"leader":"n1"}"#), primary_pg(1000)),
            vec![unreachable("n2"), peer("n3", true, true, 1000)])
        => [update(Some(1000)), demote(DemoteMode::Graceful), Action::ReleaseLeader { last_lsn: Some(Lsn(1000)) }],
        Reason::SwitchoverDemoting { candidate: None };
    switchover_to_any_member_without_healthy_one_is_cleared:
        with_probes(input("n1", &World::healthy().with("failover", r#"{"leader":"n1"}"#), primary_pg(1000)),
            vec![unreachable("n2"), peer("n3", false, true, 1000)])
        => [update(Some(1000)), clear(2)], Reason::FailoverRefused(FailoverRefusal::NoHealthyCandidate);
    switchover_to_async_standby_in_sync_mode_is_cleared:
        with_probes(input("n1", &n2_switchover("").with("config", r#"{"synchronous_mode":"on"}"#)
            .with("sync", r#"{"leader":"n1","sync_standby":"n3"}"#), primary_pg(1000)), vec![peer("n2", true, true, 1000)])
        => [update(Some(1000)), clear(2)],
        Reason::FailoverRefused(FailoverRefusal::CandidateUnhealthy { candidate: "n2".into() });
    scheduled_switchover_waits:
        input("n1", &n2_switchover(r#","scheduled_at":"2026-01-01T00:05:00Z""#), primary_pg(1000))
        => [update(Some(1000))], Reason::SwitchoverScheduled { at: NOW.plus_secs(300) };
    scheduled_switchover_runs_when_due:
        with_probes(input("n1", &n2_switchover(r#","scheduled_at":"2025-12-31T23:59:50Z""#), primary_pg(1000)),
            vec![peer("n2", true, true, 1000)])
        => [update(Some(1000)), demote(DemoteMode::Graceful), Action::ReleaseLeader { last_lsn: Some(Lsn(1000)) }],
        Reason::SwitchoverDemoting { candidate: Some("n2".into()) };
    stale_scheduled_switchover_is_cleared:
        input("n1", &n2_switchover(r#","scheduled_at":"2025-12-31T23:59:44Z""#), primary_pg(1000))
        => [update(Some(1000)), clear(2)], Reason::FailoverRefused(FailoverRefusal::ScheduleExpired);
    unparseable_schedule_is_cleared:
        input("n1", &n2_switchover(r#","scheduled_at":"tomorrow""#), primary_pg(1000))
        => [update(Some(1000)), clear(2)],
        Reason::FailoverRefused(FailoverRefusal::ScheduleUnparseable { value: "tomorrow".into() });

    // Pause.
    pause_replica_never_races:
        input("n2", &World::healthy().no_leader().with("config", r#"{"pause":true}"#), replica_pg(1000)) => [],
        Reason::PausedNoLeader;
    pause_primary_takes_free_key:
        input("n1", &World::healthy().no_leader().with("config", r#"{"pause":true}"#), primary_pg(1000))
        => [Action::AcquireLeader], Reason::AcquiredLockAsLeader;
    pause_allows_named_failover:
        with_probes(input("n3", &World::healthy().no_leader().with("config", r#"{"pause":true}"#)
            .with("failover", r#"{"member":"n3"}"#), replica_pg(1000)), healthy_replicas())
        => [Action::AcquireLeader, Action::Promote { cause: PromoteCause::Manual }, clear(2)],
        Reason::PromotedByManualFailover;
    pause_refuses_switchover_to_anyone:
        input("n1", &World::healthy().with("config", r#"{"pause":true}"#).with("failover", r#"{"leader":"n1"}"#),
            primary_pg(1000)) => [update(Some(1000)), clear(2)],
        Reason::FailoverRefused(FailoverRefusal::PausedNeedsCandidate);
    pause_refuses_scheduled_switchover:
        input("n1", &n2_switchover(r#","scheduled_at":"2026-01-01T00:05:00Z""#).with("config", r#"{"pause":true}"#),
            primary_pg(1000)) => [update(Some(1000)), clear(2)],
        Reason::FailoverRefused(FailoverRefusal::ScheduledInPause);
}

#[test]
fn failed_refresh_demotes_immediately() {
    let d = check(
        input("n1", &World::healthy(), primary_pg(1000)),
        vec![update(Some(1000))],
        Reason::LeaderWithLock { me: "n1".into() },
    );
    let fb = fallback(&d);
    assert_eq!(fb.actions, vec![demote(DemoteMode::ImmediateNoLock)]);
    assert_eq!(fb.to_string(), "demoted self because failed to update leader lock in DCS");
}

#[test]
fn failed_refresh_in_pause_keeps_running() {
    let w = World::healthy().with("config", r#"{"pause":true}"#);
    let d = decide(&input("n1", &w, primary_pg(1000)));
    assert_eq!(fallback(&d).actions, vec![]);
    assert_eq!(fallback(&d).reason, Reason::LockUpdateFailedPaused);
}

#[test]
fn lost_race_as_primary_demotes_and_as_replica_waits() {
    let p = decide(&with_probes(input("n1", &World::healthy().no_leader(), primary_pg(1000)), vec![]));
    assert_eq!(fallback(&p).actions, vec![demote(DemoteMode::ImmediateNoLock)]);
    let r = decide(&with_probes(input("n2", &World::healthy().no_leader(), replica_pg(1000)), vec![]));
    assert_eq!(fallback(&r).actions, vec![]);
    assert_eq!(fallback(&r).reason, Reason::LostRace);
}

#[test]
fn lost_initialize_race_waits() {
    let d = decide(&input("n1", &World::empty(), empty_pg()));
    assert_eq!(fallback(&d).reason, Reason::InitializeRaceLost);
    assert!(fallback(&d).actions.is_empty());
}

#[test]
fn never_asks_for_probes_twice() {
    let d = decide(&with_probes(input("n1", &n2_switchover(""), primary_pg(1000)), vec![]));
    assert!(d.probe_request().is_none());
    let d = decide(&with_probes(input("n2", &World::healthy().no_leader(), replica_pg(1000)), vec![]));
    assert!(d.probe_request().is_none());
}

#[test]
fn log_lines_read_like_patroni() {
    let d = decide(&input("n1", &World::healthy(), primary_pg(1000)));
    assert_eq!(d.to_string(), "no action. I am (n1), the leader with the lock");
    let d = decide(&with_probes(input("n2", &World::healthy().no_leader(), replica_pg(1000)), healthy_replicas()));
    assert_eq!(d.to_string(), "promoted self to leader by acquiring session lock");
    let d = decide(&input("n2", &World::healthy(), replica_pg(1000)));
    assert_eq!(d.to_string(), "no action. I am (n2), a secondary, and following a leader (n1)");
    let d = decide(&store_down(input("n1", &World::healthy(), primary_pg(1000))));
    assert_eq!(d.to_string(), "demoted self because DCS is not accessible and I was a leader");
}

mod props {
    //! Property tests over arbitrary clusters: every node decides on the same view, then the guards are executed
    //! against one simulated leader key.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    struct NodeGen {
        running: u8,
        role: u8,
        starting: bool,
        lsn: u64,
        timeline: u32,
        data: u8,
        store_ok: bool,
        nofailover: bool,
        priority: i64,
        reachable: bool,
    }

    fn node_gen() -> impl Strategy<Value = NodeGen> {
        (0u8..4, 0u8..4, prop::bool::weighted(0.1), 0u64..4_000_000, 1u32..4, 0u8..10, prop::bool::weighted(0.85))
            .prop_flat_map(|(running, role, starting, lsn, timeline, data, store_ok)| {
                (prop::bool::weighted(0.2), 0i64..4, prop::bool::weighted(0.8)).prop_map(
                    move |(nofailover, priority, reachable)| NodeGen {
                        running,
                        role,
                        starting,
                        lsn,
                        timeline,
                        data,
                        store_ok,
                        nofailover,
                        priority,
                        reachable,
                    },
                )
            })
    }

    #[derive(Debug, Clone)]
    struct ClusterGen {
        nodes: Vec<NodeGen>,
        leader: Option<usize>,
        initialize: u8,
        pause: bool,
        sync: bool,
        failover: Option<(Option<usize>, Option<usize>)>,
        optime: Option<u64>,
        max_lag: u64,
    }

    fn cluster_gen(pause: impl Strategy<Value = bool>) -> impl Strategy<Value = ClusterGen> {
        (
            prop::collection::vec(node_gen(), 2..6),
            prop::option::of(0usize..6),
            0u8..4,
            pause,
            prop::bool::weighted(0.2),
            prop::option::weighted(0.2, (prop::option::of(0usize..6), prop::option::of(0usize..6))),
            prop::option::of(0u64..4_000_000),
            prop::sample::select(vec![0u64, 1000, 1_048_576]),
        )
            .prop_map(|(nodes, leader, initialize, pause, sync, failover, optime, max_lag)| ClusterGen {
                nodes,
                leader,
                initialize,
                pause,
                sync,
                failover,
                optime,
                max_lag,
            })
    }

    fn name(i: usize) -> String {
        format!("n{i}")
    }

    fn pg_of(n: &NodeGen) -> PgObservation {
        PgObservation {
            running: [PgRunning::Running, PgRunning::Running, PgRunning::Stopped, PgRunning::Unknown]
                [n.running as usize],
            starting: n.starting,
            role: [PgRole::Primary, PgRole::Replica, PgRole::Replica, PgRole::Unknown][n.role as usize],
            timeline: Some(n.timeline),
            received_lsn: Some(Lsn(n.lsn)),
            replayed_lsn: Some(Lsn(n.lsn)),
            current_lsn: Some(Lsn(n.lsn)),
            data_dir: match n.data {
                0 => DataDir::Empty,
                1 => DataDir::Initialized { sysid: "other".into() },
                2 => DataDir::Unknown,
                _ => DataDir::Initialized { sysid: SYSID.into() },
            },
            following: None,
            down_since: None,
        }
    }

    fn tags_of(n: &NodeGen) -> Tags {
        Tags { nofailover: Some(n.nofailover), failover_priority: Some(n.priority), ..Tags::default() }
    }

    /// The store as the nodes' member keys would make it: member keys reflect the observations.
    fn world_of(c: &ClusterGen) -> World {
        let mut w = World::empty();
        match c.initialize {
            0 => {}
            1 => {
                w.set("initialize", "");
            }
            _ => {
                w.set("initialize", SYSID);
            }
        }
        let mut config = json!({"pause": c.pause, "maximum_lag_on_failover": c.max_lag});
        if c.sync {
            config["synchronous_mode"] = json!(true);
            w.set("sync", &json!({"leader": "n0", "sync_standby": "n1"}).to_string());
        }
        w.set("config", &config.to_string());
        if let Some(l) = c.leader.filter(|l| *l < c.nodes.len()) {
            w.set("leader", &name(l));
        }
        if let Some(o) = c.optime {
            w.set("status", &json!({"optime": o}).to_string());
        }
        if let Some((leader, member)) = c.failover {
            let mut fo = serde_json::Map::new();
            if let Some(l) = leader {
                fo.insert("leader".into(), name(l).into());
            }
            if let Some(m) = member {
                fo.insert("member".into(), name(m).into());
            }
            w.set("failover", &serde_json::Value::Object(fo).to_string());
        }
        for (i, n) in c.nodes.iter().enumerate() {
            let pg = pg_of(n);
            let role = match pg.role {
                PgRole::Primary => "primary",
                _ => "replica",
            };
            let state = if pg.running == PgRunning::Stopped { "stopped" } else { "running" };
            let m = json!({"state": state, "role": role, "timeline": n.timeline, "xlog_location": n.lsn,
                           "tags": tags_of(n).to_json()});
            w.set(&format!("members/{}", name(i)), &m.to_string());
        }
        w
    }

    fn probes_for(c: &ClusterGen, me: usize) -> Vec<PeerProbe> {
        c.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(i, n)| {
                let pg = pg_of(n);
                let result = if n.reachable && pg.running != PgRunning::Unknown {
                    ProbeResult::Reachable(PeerStatus {
                        pg_running: pg.running == PgRunning::Running,
                        in_recovery: pg.role != PgRole::Primary,
                        wal_position: Some(Lsn(n.lsn)),
                        timeline: Some(n.timeline),
                        tags: tags_of(n),
                    })
                } else {
                    ProbeResult::Unreachable
                };
                PeerProbe { name: name(i), result }
            })
            .collect()
    }

    /// Runs the probe loop like a runtime would.
    fn decide_node(c: &ClusterGen, world: &World, i: usize) -> (HaInput, Decision) {
        let n = &c.nodes[i];
        let mut inp = input(&name(i), world, pg_of(n));
        inp.tags = tags_of(n);
        inp.agent.store_ok = n.store_ok;
        let d = decide(&inp);
        if d.probe_request().is_some() {
            inp.probes = Some(probes_for(c, i));
            let again = decide(&inp);
            assert!(again.probe_request().is_none(), "asked for probes twice");
            return (inp, again);
        }
        (inp, d)
    }

    /// Whether the node runs as a primary after executing `actions`.
    fn primary_after(pg: &PgObservation, actions: &[Action]) -> bool {
        let stops = actions.iter().any(|a| matches!(a, Action::Demote { .. } | Action::RefuseToRun { .. }));
        let promotes = actions.iter().any(|a| matches!(a, Action::Promote { .. } | Action::Bootstrap));
        promotes || (pg.is_running_primary() && !stops)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Outside pause, a node ends up acting as primary only through a successful leader-key guard, and the
        /// key can be held by one node only: at most one primary per view.
        #[test]
        fn never_two_primaries(c in cluster_gen(Just(false))) {
            let world = world_of(&c);
            let view = world.view();
            let mut key_holder = view.leader.as_ref().map(|l| l.name.clone());
            let mut initialize_taken = view.initialize.is_some();
            let mut primaries = Vec::new();
            for i in 0..c.nodes.len() {
                let (inp, d) = decide_node(&c, &world, i);
                let guard_ok = match d.guard() {
                    Some(Action::AcquireLeader) => {
                        let ok = key_holder.is_none();
                        if ok { key_holder = Some(inp.name.clone()); }
                        ok
                    }
                    Some(Action::UpdateLeader { .. }) => key_holder.as_deref() == Some(inp.name.as_str()),
                    Some(Action::TakeInitialize) => {
                        let ok = !initialize_taken;
                        initialize_taken = true;
                        ok
                    }
                    Some(_) => true,
                    None => true,
                };
                let executed: &[Action] = match (&d.on_guard_failure, guard_ok) {
                    (Some(fb), false) => &fb.actions,
                    _ => &d.actions,
                };
                if primary_after(&inp.pg, executed) {
                    let holds = matches!(d.guard(), Some(Action::AcquireLeader | Action::UpdateLeader { .. }))
                        && guard_ok;
                    let bootstraps = matches!(d.guard(), Some(Action::TakeInitialize)) && guard_ok;
                    prop_assert!(holds || bootstraps, "{} acts as primary without the key: {d:?}", inp.name);
                    primaries.push(inp.name.clone());
                }
            }
            prop_assert!(primaries.len() <= 1, "two primaries: {primaries:?}");
        }

        /// In pause nothing is started, stopped, bootstrapped, cloned, rewound or promoted automatically.
        #[test]
        fn pause_never_promotes(mut c in cluster_gen(Just(true))) {
            c.failover = None;
            let world = world_of(&c);
            for i in 0..c.nodes.len() {
                let (_, d) = decide_node(&c, &world, i);
                let all = d.actions.iter().chain(d.on_guard_failure.iter().flat_map(|f| f.actions.iter()));
                for a in all {
                    prop_assert!(!matches!(a, Action::Promote { .. } | Action::StartPostgres { .. }
                        | Action::Bootstrap | Action::CreateReplica { .. } | Action::Demote { .. }
                        | Action::CheckDivergence { .. } | Action::TakeInitialize), "{a:?} in pause: {d}");
                }
            }
        }

        /// A replica lagging more than `maximum_lag_on_failover` behind `status.optime` never takes the key,
        /// while the healthiest replica does.
        #[test]
        fn lagging_candidate_never_wins(
            lags in prop::collection::vec(0u64..3_000_000, 2..5),
            prios in prop::collection::vec(1i64..3, 5),
        ) {
            let optime = 3_000_000u64;
            let max = 1_048_576u64;
            prop_assume!(lags.iter().any(|l| *l <= max));
            let nodes: Vec<NodeGen> = lags.iter().enumerate().map(|(i, lag)| NodeGen {
                running: 0, role: 1, starting: false, lsn: optime - lag, timeline: 1, data: 9, store_ok: true,
                nofailover: false, priority: prios[i], reachable: true,
            }).collect();
            let c = ClusterGen { nodes, leader: None, initialize: 3, pause: false, sync: false, failover: None,
                optime: Some(optime), max_lag: max };
            let world = world_of(&c);
            // The healthiest: highest LSN, then highest priority (ties: all of them may try).
            let best = c.nodes.iter().map(|n| (n.lsn, n.priority)).max().unwrap();
            for (i, n) in c.nodes.iter().enumerate() {
                let (_, d) = decide_node(&c, &world, i);
                let acquires = d.has(|a| *a == Action::AcquireLeader);
                if optime - n.lsn > max {
                    prop_assert!(!acquires, "lagging n{i} acquires: {d}");
                }
                if (n.lsn, n.priority) == best {
                    prop_assert!(acquires, "healthiest n{i} does not race: {d}");
                }
            }
        }
    }
}

/// `failover_slot_readiness`: the leader race with permanent logical slots.
mod slot_gate {
    use proptest::prelude::*;

    use super::*;

    const LOGICAL: &str = r#""slots":{"lg":{"type":"logical","database":"postgres","plugin":"pgoutput"}}"#;

    /// n1 (old leader) is gone; n2 and n3 are replicas at the given LSNs with the given readiness.
    fn world(policy: &str, n2: (u64, Option<bool>), n3: (u64, Option<bool>)) -> World {
        let mut w = World::healthy().no_leader();
        let policy =
            if policy.is_empty() { String::new() } else { format!(r#","failover_slot_readiness":"{policy}""#) };
        w.set("config", &format!("{{{LOGICAL}{policy}}}"));
        for (name, (lsn, ready)) in [("n2", n2), ("n3", n3)] {
            let mut m: serde_json::Value = serde_json::from_str(&member_json("replica", 1, lsn)).unwrap();
            if let Some(r) = ready {
                let unready: Vec<&str> = if r { vec![] } else { vec!["lg"] };
                m["keel_slots"] = json!({"ready": r, "unready": unready});
            }
            w.set(&format!("members/{name}"), &m.to_string());
        }
        w.rm("members/n1");
        w
    }

    fn race(w: &World, me: &str, lsn: u64, other: (&str, u64)) -> Decision {
        let i = with_probes(input(me, w, replica_pg(lsn)), vec![peer(other.0, true, true, other.1)]);
        decide(&i)
    }

    fn wins(d: &Decision) -> bool {
        d.has(|a| matches!(a, Action::AcquireLeader))
    }

    #[test]
    fn prefer_is_the_default_and_ready_peer_wins() {
        let w = world("", (1000, Some(false)), (1000, Some(true)));
        let d = race(&w, "n2", 1000, ("n3", 1000));
        assert_eq!(d.reason, Reason::NotHealthiest(Ineligible::PeerSlotsReady { member: "n3".into() }));
        assert!(wins(&race(&w, "n3", 1000, ("n2", 1000))));
    }

    #[test]
    fn prefer_ready_beats_a_peer_ahead_within_the_lag_limit() {
        // n2 is ahead but unready: the ready n3 does not defer to it, and n2 defers to n3.
        let w = world("prefer", (1100, Some(false)), (1000, Some(true)));
        assert!(wins(&race(&w, "n3", 1000, ("n2", 1100))));
        assert!(!wins(&race(&w, "n2", 1100, ("n3", 1000))));
    }

    #[test]
    fn prefer_ignores_a_ready_peer_beyond_the_lag_limit() {
        let w = world("prefer", (5_000_000, Some(false)), (1000, Some(true))).with("status", r#"{"optime":5000000}"#);
        assert!(wins(&race(&w, "n2", 5_000_000, ("n3", 1000))));
    }

    #[test]
    fn prefer_keeps_liveness_when_nobody_is_ready() {
        let w = world("prefer", (1000, Some(false)), (1000, None));
        let d = race(&w, "n2", 1000, ("n3", 1000));
        assert!(wins(&d), "{d}");
    }

    #[test]
    fn strict_never_promotes_an_unready_replica_automatically() {
        let w = world("strict", (1000, Some(false)), (1000, Some(false)));
        let d = race(&w, "n2", 1000, ("n3", 1000));
        assert_eq!(d.reason, Reason::NotHealthiest(Ineligible::SlotsNotReady { unready: vec!["lg".into()] }));
        // Unknown readiness is not readiness.
        let w = world("strict", (1000, None), (1000, Some(false)));
        let d = race(&w, "n2", 1000, ("n3", 1000));
        assert_eq!(d.reason, Reason::NotHealthiest(Ineligible::SlotsNotReady { unready: vec![] }));
    }

    #[test]
    fn strict_still_allows_a_named_manual_failover() {
        let w = world("strict", (1000, Some(false)), (1000, Some(false))).with("failover", r#"{"member":"n2"}"#);
        let d = race(&w, "n2", 1000, ("n3", 1000));
        assert_eq!(d.reason, Reason::PromotedByManualFailover);
    }

    #[test]
    fn local_readiness_overrides_the_member_key() {
        let w = world("strict", (1000, Some(false)), (1000, Some(false)));
        let mut i = with_probes(input("n2", &w, replica_pg(1000)), vec![peer("n3", true, true, 1000)]);
        i.local_slots = Some(crate::slots::SlotsReadiness { ready: true, unready: vec![] });
        assert!(wins(&decide(&i)));
    }

    #[test]
    fn off_and_no_logical_slots_behave_like_patroni() {
        let w = world("off", (1000, Some(false)), (1000, Some(true)));
        assert!(wins(&race(&w, "n2", 1000, ("n3", 1000))));
        let mut w = world("strict", (1000, Some(false)), (1000, Some(true)));
        w.set("config", r#"{"failover_slot_readiness":"strict"}"#);
        assert!(wins(&race(&w, "n2", 1000, ("n3", 1000))));
    }

    #[test]
    fn strict_switchover_without_candidate_needs_a_ready_replica() {
        let mut w = world("strict", (1000, Some(false)), (1000, Some(false)));
        w.set("leader", "n1").set("members/n1", &member_json("primary", 1, 1000)).set("failover", r#"{"leader":"n1"}"#);
        let i = with_probes(
            input("n1", &w, primary_pg(1000)),
            vec![peer("n2", true, true, 1000), peer("n3", true, true, 1000)],
        );
        let d = decide(&i);
        assert_eq!(d.reason, Reason::FailoverRefused(FailoverRefusal::NoHealthyCandidate));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Never promote an unready candidate while an eligible ready one exists (prefer and strict); strict never
        /// promotes an unready one automatically.
        #[test]
        fn unready_never_wins_over_ready(
            strict in any::<bool>(),
            lsns in proptest::collection::vec(990u64..1010, 3),
            ready in proptest::collection::vec(proptest::option::of(any::<bool>()), 3),
        ) {
            let names = ["n2", "n3", "n4"];
            let mut w = World::healthy().no_leader();
            w.rm("members/n1").rm("members/n3");
            let policy = if strict { "strict" } else { "prefer" };
            w.set("config", &format!(r#"{{{LOGICAL},"failover_slot_readiness":"{policy}"}}"#));
            for (i, n) in names.iter().enumerate() {
                let mut m: serde_json::Value = serde_json::from_str(&member_json("replica", 1, lsns[i])).unwrap();
                if let Some(r) = ready[i] {
                    m["keel_slots"] = json!({"ready": r});
                }
                w.set(&format!("members/{n}"), &m.to_string());
            }
            let is_ready = |i: usize| ready[i] == Some(true);
            let any_ready = (0..3).any(is_ready);
            for (i, me) in names.iter().enumerate() {
                let probes = names.iter().enumerate().filter(|(j, _)| *j != i)
                    .map(|(j, n)| peer(n, true, true, lsns[j])).collect();
                let d = decide(&with_probes(input(me, &w, replica_pg(lsns[i])), probes));
                if wins(&d) && !is_ready(i) {
                    prop_assert!(!strict, "strict promoted unready {me}: {d}");
                    prop_assert!(!any_ready, "unready {me} won although a ready peer exists: {d}");
                }
            }
            // Liveness: somebody can win (a ready one if any, under prefer anyone otherwise).
            let winners = names.iter().enumerate().filter(|(i, me)| {
                let probes = names.iter().enumerate().filter(|(j, _)| j != i)
                    .map(|(j, n)| peer(n, true, true, lsns[j])).collect();
                wins(&decide(&with_probes(input(me, &w, replica_pg(lsns[*i])), probes)))
            }).count();
            prop_assert!(winners > 0 || (strict && !any_ready));
        }
    }
}
