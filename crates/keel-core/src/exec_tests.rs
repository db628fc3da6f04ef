use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::*;
use crate::divergence::{LocalEnd, UnknownFact};
use crate::dynconfig::DynamicConfig;
use crate::ha::{AgentState, DataDir, PgObservation, PgRole, PgRunning, Reason};
use crate::view::{ClusterView, RawEntry, Tags};

/// Runs a future whose effects are all immediate (the fake host never waits).
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// A host that records every effect and answers from its fields.
#[derive(Default)]
struct Fake {
    calls: Vec<String>,
    events: Vec<Event>,
    acquire: bool,
    facts: Option<DivergenceFacts>,
    rewind: Option<RewindResult>,
    promotion: Promotion,
    history: Option<Vec<HistoryEntry>>,
}

impl Host for Fake {
    type Error = String;
    fn now(&self) -> Millis {
        Millis(42)
    }
    fn set_state(&mut self, state: MemberState) {
        self.calls.push(format!("state {state}"));
    }
    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
    async fn take_initialize(&mut self) -> Result<bool, String> {
        Ok(true)
    }
    async fn write_initialize(&mut self, _: &str) -> Result<(), String> {
        Ok(())
    }
    async fn write_config(&mut self) -> Result<(), String> {
        Ok(())
    }
    async fn acquire_leader(&mut self) -> Result<bool, String> {
        self.calls.push("acquire".into());
        Ok(self.acquire)
    }
    async fn update_leader(&mut self) -> Result<bool, String> {
        Err("store unreachable".into())
    }
    async fn release_leader(&mut self, _: Option<Lsn>) -> Result<(), String> {
        self.calls.push("release".into());
        Ok(())
    }
    async fn clear_failover(&mut self, _: i64) -> Result<(), String> {
        Ok(())
    }
    async fn write_history(&mut self, h: &[HistoryEntry]) -> Result<(), String> {
        self.history = Some(h.to_vec());
        Ok(())
    }
    async fn bootstrap(&mut self) -> Result<(), String> {
        Ok(())
    }
    async fn create_replica(&mut self, _: &Member, _: Option<&Member>) -> Result<(), String> {
        Ok(())
    }
    async fn start_replica(&mut self, up: Option<&Member>) -> Result<(), String> {
        self.calls.push(format!("start {:?}", up.map(|m| m.name.clone())));
        Ok(())
    }
    async fn hold_commits_for_sync(&mut self, names: &str) -> Result<(), String> {
        self.calls.push(format!("synchronous_standby_names {names}"));
        Ok(())
    }
    async fn promote(&mut self, _: PromoteCause) -> Result<Promotion, String> {
        self.calls.push("promote".into());
        Ok(self.promotion)
    }
    async fn demote(&mut self, _: DemoteMode) -> Result<(), String> {
        self.calls.push("demote".into());
        Ok(())
    }
    async fn follow(&mut self, up: &Member) -> Result<(), String> {
        self.calls.push(format!("follow {}", up.name));
        Ok(())
    }
    async fn divergence_facts(&mut self, _: &Member) -> Result<DivergenceFacts, String> {
        self.facts.clone().ok_or_else(|| "leader unreachable".to_string())
    }
    async fn rewind(&mut self, _: &Member) -> Result<RewindResult, String> {
        self.calls.push("rewind".into());
        Ok(self.rewind.clone().unwrap_or(RewindResult::Done))
    }
    async fn wipe_data_dir(&mut self, reason: &WipeReason) -> Result<(), String> {
        self.calls.push(format!("wipe {reason:?}"));
        Ok(())
    }
}

fn input() -> HaInput {
    let entries = vec![RawEntry {
        key: "members/n1".into(),
        value: r#"{"state":"running","role":"primary","timeline":3}"#.into(),
        mod_revision: 1,
        lease: 0,
    }];
    let view = ClusterView::from_entries(entries);
    HaInput {
        now: Millis(42),
        name: "n2".into(),
        tags: Tags::default(),
        config: DynamicConfig::default(),
        view,
        pg: PgObservation {
            running: PgRunning::Running,
            starting: false,
            role: PgRole::Replica,
            timeline: Some(2),
            received_lsn: None,
            replayed_lsn: None,
            current_lsn: None,
            data_dir: DataDir::Initialized { sysid: "1".into() },
            following: None,
            down_since: None,
        },
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

fn decision(actions: Vec<Action>, failure: Vec<Action>, error: Vec<Action>) -> Decision {
    let d = |actions, reason| Box::new(Decision { actions, reason, on_guard_failure: None, on_guard_error: None });
    Decision {
        actions,
        reason: Reason::PgStarting,
        on_guard_failure: Some(d(failure, Reason::LostRace)),
        on_guard_error: Some(d(error, Reason::StoreUnreachable)),
    }
}

fn check(policy: DivergencePolicy) -> Decision {
    let follow = Action::Follow { upstream: "n1".into() };
    decision(vec![Action::CheckDivergence { leader: "n1".into(), policy }, follow], vec![], vec![])
}

fn diverged_facts() -> DivergenceFacts {
    DivergenceFacts {
        local: LocalEnd { timeline: Some(4), lsn: Some(Lsn(10)), clean: true },
        leader_timeline: Some(3),
        leader_history: None,
    }
}

#[test]
fn a_failed_guard_runs_the_fallback_and_an_erring_guard_the_error_fallback() {
    let (mut ex, mut host, i) = (Executor::default(), Fake::default(), input());
    let d = decision(
        vec![Action::AcquireLeader, Action::Promote { cause: PromoteCause::WonRace }],
        vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }],
        vec![],
    );
    let (applied, r) = run(ex.execute(&mut host, (&i).into(), &d));
    assert!(r.is_ok());
    assert_eq!(applied.reason, Reason::LostRace);
    assert_eq!(host.calls, vec!["acquire", "state stopping", "demote"]);
    assert!(!ex.holds_leader);

    let d = decision(
        vec![Action::UpdateLeader { optime: Some(Lsn(5)) }],
        vec![],
        vec![Action::ReleaseLeader { last_lsn: None }],
    );
    let (applied, _) = run(ex.execute(&mut host, (&i).into(), &d));
    assert_eq!(applied.reason, Reason::StoreUnreachable);
    assert!(matches!(host.events.last(), Some(Event::GuardError { .. })));
    assert_eq!(ex.pending_optime, None, "nothing to publish when the refresh did not happen");
}

#[test]
fn a_won_race_records_the_key_and_the_promotion() {
    let (mut ex, i) = (Executor::default(), input());
    let mut host = Fake {
        acquire: true,
        promotion: Promotion { old_timeline: Some(2), switched_at: Some(Lsn(99)) },
        ..Fake::default()
    };
    let d = decision(vec![Action::AcquireLeader, Action::Promote { cause: PromoteCause::WonRace }], vec![], vec![]);
    let (_, r) = run(ex.execute(&mut host, (&i).into(), &d));
    assert!(r.is_ok());
    assert!(ex.holds_leader);
    assert_eq!(ex.last_leader_refresh, Some(Millis(42)));
    let h = host.history.expect("history written");
    assert_eq!((h[0].timeline, h[0].lsn, h[0].new_leader.as_deref()), (2, Lsn(99), Some("n2")));
}

#[test]
fn strict_synchronous_mode_holds_commits_before_the_promotion() {
    let d = decision(vec![Action::Promote { cause: PromoteCause::WonRace }], vec![], vec![]);
    let strict =
        DynamicConfig::from_value(serde_json::json!({"synchronous_mode": true, "synchronous_mode_strict": true}));
    let on = DynamicConfig::from_value(serde_json::json!({"synchronous_mode": true}));
    for (config, want) in [(strict, vec!["synchronous_standby_names *", "promote"]), (on, vec!["promote"])] {
        let (mut ex, mut host, mut i) = (Executor::default(), Fake::default(), input());
        i.config = config;
        let _ = run(ex.execute(&mut host, (&i).into(), &d));
        assert_eq!(host.calls, want);
    }
}

#[test]
fn a_promotion_with_an_unknown_old_timeline_writes_no_history() {
    let (mut ex, i) = (Executor::default(), input());
    let mut host = Fake { promotion: Promotion { old_timeline: None, switched_at: Some(Lsn(9)) }, ..Fake::default() };
    let d = decision(vec![Action::Promote { cause: PromoteCause::HadLock }], vec![], vec![]);
    let _ = run(ex.execute(&mut host, (&i).into(), &d));
    assert_eq!(host.history, None);
    assert!(matches!(host.events.last(), Some(Event::HistoryNotWritten { .. })));
}

#[test]
fn divergence_checks_follow_rewind_wipe_or_wait() {
    let rewind = DivergencePolicy { rewind: true, ..Default::default() };
    let wipe_on_fail = DivergencePolicy { rewind: true, wipe_when_rewind_fails: true, ..Default::default() };
    let wipe_no_rewind = DivergencePolicy { wipe_when_diverged: true, ..Default::default() };
    let impossible = RewindResult::Impossible { detail: "no common ancestor".into() };
    let same = DivergenceFacts { leader_timeline: Some(4), ..diverged_facts() };
    type Case = (DivergencePolicy, Option<DivergenceFacts>, Option<RewindResult>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (rewind, Some(same), None, vec!["follow n1"]),
        (rewind, Some(diverged_facts()), None, vec!["rewind", "follow n1"]),
        (
            wipe_on_fail,
            Some(diverged_facts()),
            Some(impossible.clone()),
            vec!["rewind", "state creating replica", "wipe RewindImpossible { detail: \"no common ancestor\" }"],
        ),
        (rewind, Some(diverged_facts()), Some(impossible), vec!["rewind"]),
        (wipe_no_rewind, Some(diverged_facts()), None, vec!["state creating replica", "wipe DivergedWithoutRewind"]),
        (DivergencePolicy::default(), Some(diverged_facts()), None, vec![]),
        // The check could not run, or a fact is unknown: nothing is repaired, nothing wiped.
        (wipe_no_rewind, None, None, vec![]),
        (wipe_no_rewind, Some(DivergenceFacts { leader_timeline: None, ..diverged_facts() }), None, vec![]),
    ];
    for (policy, facts, rewind_result, want) in cases {
        let (mut ex, i) = (Executor::default(), input());
        let mut host = Fake { facts: facts.clone(), rewind: rewind_result.clone(), ..Fake::default() };
        let _ = run(ex.execute(&mut host, (&i).into(), &check(policy)));
        assert_eq!(host.calls, want, "{policy:?} {facts:?} {rewind_result:?}");
    }
}

#[test]
fn an_unknown_divergence_runs_the_error_fallback() {
    let (mut ex, i) = (Executor::default(), input());
    let facts = DivergenceFacts {
        leader_history: None,
        local: LocalEnd { timeline: Some(2), ..diverged_facts().local },
        ..diverged_facts()
    };
    let mut host = Fake { facts: Some(facts), ..Fake::default() };
    let d = decision(
        vec![Action::CheckDivergence { leader: "n1".into(), policy: DivergencePolicy::default() }],
        vec![],
        vec![],
    );
    let (applied, _) = run(ex.execute(&mut host, (&i).into(), &d));
    assert_eq!(applied.reason, Reason::StoreUnreachable, "the error fallback, not the failure one");
    assert!(host.events.iter().any(|e| matches!(
        e,
        Event::Divergence { verdict: crate::divergence::Divergence::Unknown(UnknownFact::LeaderHistory), .. }
    )));
}

#[test]
fn an_action_naming_a_member_that_left_is_an_error_not_a_guess() {
    let (mut ex, mut host, i) = (Executor::default(), Fake::default(), input());
    let d = decision(vec![Action::Follow { upstream: "gone".into() }], vec![], vec![]);
    let (_, r) = run(ex.execute(&mut host, (&i).into(), &d));
    assert!(matches!(r, Err(ExecError::UnknownMember(ref m)) if m == "gone"));
    assert!(host.calls.is_empty());
}
