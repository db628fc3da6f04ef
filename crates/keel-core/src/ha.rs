//! The HA decision: one pure function from (cluster view, local observation, agent state, peer probes, time) to
//! typed actions and a typed reason, following Patroni's `Ha._run_cycle`.
//!
//! # The cycle, as the runtime drives it
//!
//! Every `loop_wait` seconds the runtime:
//! 1. keeps its store lease alive (granting a new one when it was lost) and reads the
//!    [`ClusterView`](crate::view::ClusterView); if either fails it sets [`AgentState::store_ok`] to false and
//!    passes the last view it read;
//! 2. observes PostgreSQL into a [`PgObservation`];
//! 3. calls [`decide`] with `probes: None`. If the decision is [`Action::ProbePeers`], it probes those members'
//!    `GET /patroni` (in parallel, 2 s timeout, no retry) and calls [`decide`] again with `probes: Some(..)`;
//!    `decide` never asks twice in one cycle, so this is a loop of at most two calls;
//! 4. executes [`Decision::actions`] in order. If the first action is a guard ([`Action::is_guard`]) and it
//!    fails, it runs [`Decision::on_guard_failure`] instead of the remaining actions;
//! 5. logs the decision's [`Display`](std::fmt::Display) line and publishes its member key.
//!
//! # The state machine
//!
//! The order of checks (each one ends the decision):
//! - **store unreachable**: a running primary demotes `Offline` (unless paused); everyone else waits.
//! - **data directory**: unknown → wait (never read as empty). Empty → release the leader key if we hold it;
//!   clone from a `clonefrom` member or the leader when there is a leader; race for `initialize` (guard) and
//!   bootstrap when the cluster is not initialized; else wait for the bootstrapper. Invalid → release the key,
//!   wait for an operator. Initialized with a system identifier other than `initialize` → refuse to run.
//! - **PostgreSQL state unknown** → wait. A key holder emits no `UpdateLeader`, but its key stays attached to the
//!   runtime's lease, so nobody else is promoted meanwhile (as in Patroni, where `touch_member` refreshes the
//!   shared lease).
//! - **starting** → keep the leader key if ours; a starting primary without the key is stopped. A key holder
//!   down or starting for `primary_start_timeout` stops and releases the key.
//! - **stopped** → start read-only while holding the key, else start as a replica of the leader (after a
//!   divergence check when timelines differ). Never in pause.
//! - **running, we hold the key** → refresh it (guard); promote if we are a replica; run a manual switchover
//!   (graceful demotion) if one is requested for us and a healthy candidate exists. Refresh failure demotes
//!   `ImmediateNoLock` (unless paused).
//! - **running, another member holds the key** → a primary demotes `ImmediateNoLock`; a replica follows the leader
//!   (or its `replicatefrom` member), checking for divergence first when timelines differ.
//! - **running, nobody holds the key** → the leader race: eligibility (nofailover, lag against `status.optime`,
//!   synchronous standby set, timeline, failsafe list), then peer probes (a live primary elsewhere, a higher
//!   (timeline, WAL position), an equal one with a higher failover priority, a healthy named candidate). The winner
//!   acquires the key (guard) and promotes; losers that are primaries demote. Pause disables the race except
//!   for a running primary taking the free key and a named manual failover candidate.
//!
//! Safety argument: PostgreSQL is never started as a primary, only promoted, and a node only promotes or stays
//! primary after a successful `AcquireLeader` or `UpdateLeader` guard; the store lets only one node hold the
//! leader key. The key lives on the runtime's lease (one lease per node, shared with the member key, as Patroni
//! does on etcd3): it disappears when the agent dies or loses the store for `ttl`, or by `ReleaseLeader`. A primary whose refresh fails, or that cannot reach the
//! store, demotes in the same cycle; since `loop_wait + 2 * retry_timeout <= ttl`, that happens before its lease
//! expires and another node can acquire the key.

mod reinit;
mod schedule;
mod settle;
mod shutdown;
mod types;

pub use shutdown::{after_stop, shutdown_start, ShutdownEnd, ShutdownStart};

pub use reinit::{reinitialize, ReinitRefusal};

pub use schedule::parse_iso8601;
pub use settle::next_cycle_soon;
pub use types::*;

use crate::divergence::DivergencePolicy;
use crate::dynconfig::{DynamicConfig, SynchronousMode};
use crate::lsn::Lsn;
use crate::slots::{FailoverSlotReadiness, SlotsConfig};
use crate::view::{FailoverRequest, Versioned};

/// Decides what this node does in this cycle. Pure: the same input always gives the same decision.
pub fn decide(input: &HaInput) -> Decision {
    let cfg = input.config.clone();
    let slot_gate = SlotsConfig::from_dynamic(&cfg).effective_gate();
    let ctx = Ctx {
        input,
        paused: cfg.pause,
        slot_gate,
        cfg,
        me: input.name.as_str(),
        i_am_leader: input.view.leader.as_ref().is_some_and(|l| l.name == input.name),
    };
    ctx.run()
}

fn plan(actions: Vec<Action>, reason: Reason) -> Decision {
    Decision { actions, reason, on_guard_failure: None, on_guard_error: None }
}

fn wait(reason: Reason) -> Decision {
    plan(Vec::new(), reason)
}

fn guarded(actions: Vec<Action>, reason: Reason, fallback: Decision) -> Decision {
    debug_assert!(actions.first().is_some_and(Action::is_guard));
    debug_assert!(fallback.guard().is_none());
    let on_error = match actions.first() {
        Some(Action::CheckDivergence { leader, .. }) => wait(Reason::DivergenceUnknown { leader: leader.clone() }),
        _ => fallback.clone(),
    };
    Decision { actions, reason, on_guard_failure: Some(Box::new(fallback)), on_guard_error: Some(Box::new(on_error)) }
}

/// Result of the leader's manual-failover handling.
enum Manual {
    NeedProbes(Vec<String>),
    /// Actions to run after the leader refresh, and the reason.
    Plan(Vec<Action>, Reason),
}

struct Ctx<'a> {
    input: &'a HaInput,
    cfg: DynamicConfig,
    /// `failover_slot_readiness`, `Off` when the configuration has no permanent logical slots.
    slot_gate: FailoverSlotReadiness,
    paused: bool,
    me: &'a str,
    i_am_leader: bool,
}

impl Ctx<'_> {
    fn pg(&self) -> &PgObservation {
        &self.input.pg
    }

    fn run(&self) -> Decision {
        if !self.input.agent.store_ok {
            return self.store_down();
        }
        // A running PostgreSQL proves the data directory exists: only its system identifier matters then.
        let running = self.pg().running == PgRunning::Running;
        match &self.pg().data_dir {
            DataDir::Unknown | DataDir::Empty | DataDir::Invalid if running => {}
            DataDir::Unknown => return wait(Reason::DataDirUnknown),
            DataDir::Empty => return self.empty_data_dir(),
            DataDir::Invalid => {
                return if self.i_am_leader {
                    plan(vec![Action::ReleaseLeader { last_lsn: None }], Reason::DataDirInvalidReleasedLock)
                } else {
                    wait(Reason::DataDirInvalid)
                };
            }
            DataDir::Initialized { sysid } => {
                if let Some(cluster) = self.input.view.initialize.as_deref().filter(|s| !s.is_empty()) {
                    if cluster != sysid {
                        let (ours, cluster) = (sysid.clone(), cluster.to_string());
                        if self.paused {
                            return wait(Reason::SysidMismatchPaused { ours, cluster });
                        }
                        let why = FatalReason::SysidMismatch { ours: ours.clone(), cluster: cluster.clone() };
                        return plan(vec![Action::RefuseToRun { why }], Reason::SysidMismatch { ours, cluster });
                    }
                }
            }
        }
        match self.pg().running {
            PgRunning::Unknown => wait(Reason::PgStateUnknown),
            _ if self.pg().starting => self.starting(),
            PgRunning::Stopped => self.stopped(),
            PgRunning::Running => match self.pg().role {
                PgRole::Unknown => wait(Reason::PgStateUnknown),
                _ => match &self.input.view.leader {
                    None => match self.failsafe_leader() {
                        Some(leader) => wait(Reason::FailsafeLeaderAnnounced { leader: leader.to_string() }),
                        None => self.leader_race(),
                    },
                    Some(_) if self.i_am_leader => self.leader_cycle(),
                    Some(l) => self.follower_cycle(&l.name),
                },
            },
        }
    }

    /// Patroni's `_handle_dcs_error`: demote, unless failsafe mode confirmed that every member still accepts us.
    fn store_down(&self) -> Decision {
        if self.paused {
            return wait(Reason::StoreUnreachablePaused);
        }
        if self.pg().is_running_primary() {
            let was_leader = self.input.view.leader.as_ref().is_some_and(|l| l.name == self.input.name);
            let failsafe_mode = self.cfg.failsafe_mode;
            if failsafe_mode && was_leader && self.input.agent.failsafe_confirmed {
                return wait(Reason::FailsafeContinuing);
            }
            return plan(vec![Action::Demote { mode: DemoteMode::Offline }], Reason::StoreUnreachableDemoting);
        }
        wait(Reason::StoreUnreachable)
    }

    /// Failsafe mode: another member announced itself as the primary less than `ttl` ago while the store was
    /// unreachable, so its expired leader key does not open a race (Patroni injects it as the leader).
    fn failsafe_leader(&self) -> Option<&str> {
        if !self.cfg.failsafe_mode {
            return None;
        }
        self.input.agent.failsafe_leader.as_deref().filter(|l| *l != self.me)
    }

    fn empty_data_dir(&self) -> Decision {
        let view = &self.input.view;
        if self.i_am_leader {
            return plan(vec![Action::ReleaseLeader { last_lsn: None }], Reason::DataDirEmptyReleasedLock);
        }
        if self.paused {
            return wait(Reason::PausedWithEmptyDataDir);
        }
        if let Some(leader) = &view.leader {
            let clone = view
                .members
                .values()
                .find(|m| m.name != self.me && m.tags.clonefrom && m.is_running())
                .filter(|_| !self.input.agent.clone_from_leader)
                .map(|m| m.name.clone());
            let source = clone.unwrap_or_else(|| leader.name.clone());
            let is_leader = source == leader.name;
            return plan(
                vec![Action::CreateReplica { source: source.clone() }],
                Reason::CloningFrom { source, is_leader },
            );
        }
        // Keel's addition to Patroni's rule: never bootstrap while a member key reports a running PostgreSQL (the
        // store lost `initialize` but the cluster still exists).
        let running_member = view.members.values().any(|m| m.name != self.me && m.is_running());
        if view.initialize.is_none() && !running_member {
            if self.input.tags.no_failover() {
                return wait(Reason::NoFailoverWillNotBootstrap);
            }
            return guarded(
                vec![Action::TakeInitialize, Action::Bootstrap],
                Reason::RacingForInitialize,
                wait(Reason::InitializeRaceLost),
            );
        }
        wait(Reason::WaitingForLeaderToBootstrap)
    }

    /// Patroni's `primary_start_timeout`: a key holder whose PostgreSQL has been down or starting for that long
    /// stops it and releases the key, so that a replica can take over.
    fn primary_start_timed_out(&self) -> bool {
        let limit = self.cfg.primary_start_timeout.saturating_mul(1000);
        self.i_am_leader && !self.paused && self.pg().down_since.is_some_and(|t| self.input.now.since(t) >= limit)
    }

    fn starting(&self) -> Decision {
        let primary = self.pg().role == PgRole::Primary;
        if self.primary_start_timed_out() {
            return plan(
                vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }, Action::ReleaseLeader { last_lsn: None }],
                Reason::PrimaryStartTimedOut,
            );
        }
        if self.i_am_leader {
            return guarded(
                vec![Action::UpdateLeader { optime: None }],
                Reason::PgStartingWithLock,
                self.lock_lost_fallback(),
            );
        }
        if primary && !self.paused {
            return plan(
                vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }],
                Reason::PgStartingAsPrimaryWithoutLock,
            );
        }
        wait(Reason::PgStarting)
    }

    fn stopped(&self) -> Decision {
        if self.paused {
            return if self.i_am_leader {
                plan(vec![Action::ReleaseLeader { last_lsn: None }], Reason::PgStoppedPausedReleasedLock)
            } else {
                wait(Reason::PgStoppedPaused)
            };
        }
        if self.primary_start_timed_out() {
            return plan(vec![Action::ReleaseLeader { last_lsn: None }], Reason::PrimaryStartTimedOut);
        }
        let readonly = Action::StartPostgres { start_as: StartAs::Replica { upstream: None } };
        if self.i_am_leader {
            return guarded(
                vec![Action::UpdateLeader { optime: None }, readonly.clone()],
                Reason::StartingReadonlyWithLock,
                plan(vec![readonly], Reason::StartingAsReplica { leader: None }),
            );
        }
        match &self.input.view.leader {
            Some(l) => {
                let upstream = self.upstream_for(&l.name);
                let start = Action::StartPostgres { start_as: StartAs::Replica { upstream: Some(upstream.clone()) } };
                if self.needs_divergence_check(&l.name) {
                    guarded(
                        vec![self.divergence_check(&l.name), start],
                        Reason::CheckingDivergence { leader: l.name.clone() },
                        wait(Reason::DivergedNeedsReinit { leader: l.name.clone() }),
                    )
                } else {
                    plan(vec![start], Reason::StartingAsReplica { leader: Some(upstream) })
                }
            }
            None => plan(vec![readonly], Reason::StartingAsReplica { leader: None }),
        }
    }

    /// What a node holding the key does when its refresh fails.
    fn lock_lost_fallback(&self) -> Decision {
        if self.pg().is_running_primary() {
            if self.paused {
                wait(Reason::LockUpdateFailedPaused)
            } else {
                plan(vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }], Reason::LockUpdateFailedDemoted)
            }
        } else {
            wait(Reason::LockUpdateFailed)
        }
    }

    /// Writes only the leader makes: `initialize` when missing or empty, `config` when missing.
    fn leader_writes(&self) -> Vec<Action> {
        let mut out = Vec::new();
        let init_missing = self.input.view.initialize.as_deref().is_none_or(str::is_empty);
        if let (true, Some(sysid)) = (init_missing, self.pg().sysid()) {
            out.push(Action::WriteInitialize { sysid: sysid.to_string() });
        }
        if self.input.view.config.is_none() {
            out.push(Action::WriteConfig);
        }
        out
    }

    fn leader_cycle(&self) -> Decision {
        let pg = self.pg();
        let primary = pg.role == PgRole::Primary;
        if self.paused && !primary {
            return plan(
                vec![Action::ReleaseLeader { last_lsn: pg.wal_position() }],
                Reason::PausedReplicaReleasedLock,
            );
        }
        let optime = if primary { pg.wal_position() } else { None };
        let mut actions = vec![Action::UpdateLeader { optime }];
        actions.extend(self.leader_writes());
        if primary {
            if let Some(fo) = &self.input.view.failover {
                match self.manual_failover_from_leader(fo) {
                    Manual::NeedProbes(members) => {
                        return plan(vec![Action::ProbePeers { members }], Reason::ProbingPeers);
                    }
                    Manual::Plan(more, reason) => {
                        actions.extend(more);
                        return guarded(actions, reason, self.lock_lost_fallback());
                    }
                }
            }
            let me = self.me.to_string();
            let reason = if self.paused { Reason::LeaderWithLockPaused { me } } else { Reason::LeaderWithLock { me } };
            return guarded(actions, reason, self.lock_lost_fallback());
        }
        // A switchover whose key release failed after the graceful demotion: finish it instead of promoting back.
        let handing_over = self
            .input
            .view
            .failover
            .as_ref()
            .and_then(|f| f.value.member.as_deref())
            .filter(|c| *c != self.me && self.input.view.members.get(*c).is_some_and(|m| m.is_running()));
        if let Some(candidate) = handing_over {
            return plan(
                vec![Action::ReleaseLeader { last_lsn: pg.wal_position() }],
                Reason::ReleasingForCandidate { candidate: candidate.to_string() },
            );
        }
        actions.push(Action::Promote { cause: PromoteCause::HadLock });
        guarded(actions, Reason::PromotedWithLock, self.lock_lost_fallback())
    }

    /// Patroni's `process_manual_failover_from_leader`, for a running primary holding the key.
    fn manual_failover_from_leader(&self, fo: &Versioned<FailoverRequest>) -> Manual {
        let req = &fo.value;
        let refuse = |why: FailoverRefusal| {
            Manual::Plan(vec![Action::ClearFailover { version: fo.version }], Reason::FailoverRefused(why))
        };
        if let Some(at_text) = &req.scheduled_at {
            if self.paused {
                return refuse(FailoverRefusal::ScheduledInPause);
            }
            let Some(at) = parse_iso8601(at_text) else {
                return refuse(FailoverRefusal::ScheduleUnparseable { value: at_text.clone() });
            };
            if self.input.now < at {
                return Manual::Plan(Vec::new(), Reason::SwitchoverScheduled { at });
            }
            // Patroni: a schedule more than 1.5 * loop_wait in the past is stale.
            if self.input.now.since(at) > self.cfg.timing.loop_wait * 1500 {
                return refuse(FailoverRefusal::ScheduleExpired);
            }
        }
        if let Some(requested) = &req.leader {
            if requested != self.me {
                return refuse(FailoverRefusal::LeaderMismatch {
                    requested: requested.clone(),
                    actual: self.me.to_string(),
                });
            }
        }
        if req.member.as_deref() == Some(self.me) {
            return refuse(FailoverRefusal::AlreadyLeader);
        }
        if req.member.is_none() && self.paused {
            return refuse(FailoverRefusal::PausedNeedsCandidate);
        }
        let targets: Vec<String> = match &req.member {
            Some(c) => vec![c.clone()],
            None => self.other_members(),
        };
        let Some(probes) = &self.input.probes else {
            return Manual::NeedProbes(targets);
        };
        // Without a named candidate the race decides; under `strict` an unready replica cannot win it, so do not
        // step down unless a ready one exists.
        let ok = targets.iter().any(|t| {
            self.switchover_target_healthy(t, probes)
                && (req.member.is_some() || self.slot_gate != FailoverSlotReadiness::Strict || self.peer_slots_ready(t))
        });
        if ok {
            let actions = vec![
                Action::Demote { mode: DemoteMode::Graceful },
                Action::ReleaseLeader { last_lsn: self.pg().wal_position() },
            ];
            return Manual::Plan(actions, Reason::SwitchoverDemoting { candidate: req.member.clone() });
        }
        match &req.member {
            Some(c) => refuse(FailoverRefusal::CandidateUnhealthy { candidate: c.clone() }),
            None => refuse(FailoverRefusal::NoHealthyCandidate),
        }
    }

    /// A member may take over from us: known, reachable, a running replica, failover allowed, not lagging, and a
    /// synchronous standby when synchronous mode restricts the race.
    fn switchover_target_healthy(&self, name: &str, probes: &[PeerProbe]) -> bool {
        if name == self.me || !self.input.view.members.contains_key(name) {
            return false;
        }
        let Some(st) = reachable(probes, name) else { return false };
        if !st.pg_running || !st.in_recovery || st.tags.no_failover() {
            return false;
        }
        let (Some(theirs), Some(ours)) = (st.wal_position, self.pg().wal_position()) else { return false };
        if ours.saturating_sub(theirs) > self.cfg.maximum_lag_on_failover {
            return false;
        }
        self.sync_allows(name)
    }

    /// In `synchronous_mode: on` with a non-empty `/sync`, only its leader and listed standbys may be promoted.
    fn sync_allows(&self, name: &str) -> bool {
        if self.cfg.synchronous_mode != SynchronousMode::On {
            return true;
        }
        match &self.input.view.sync {
            // Garbage in the key never makes everybody synchronous: only a running primary (it holds every
            // acknowledged commit) may take the key until the leader writes the key again.
            Some(s) if s.value.unreadable => name == self.me && self.pg().is_running_primary(),
            Some(s) if s.value.leader.is_some() || !s.value.sync_standby.is_empty() => s.value.matches(name),
            _ => true,
        }
    }

    fn other_members(&self) -> Vec<String> {
        let mut names: Vec<String> = self.input.view.members.keys().filter(|n| *n != self.me).cloned().collect();
        if let Some(fs) = &self.input.view.failsafe {
            for n in fs.keys() {
                if n != self.me && !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        names
    }

    /// The member to stream from: our `replicatefrom` member when it is running, else the leader.
    fn upstream_for(&self, leader: &str) -> String {
        self.input
            .tags
            .replicatefrom
            .as_ref()
            .filter(|r| r.as_str() != self.me)
            .filter(|r| self.input.view.members.get(*r).is_some_and(|m| m.is_running()))
            .cloned()
            .unwrap_or_else(|| leader.to_string())
    }

    /// Timelines differ (or we are a primary): ask the runtime to compare histories before following.
    fn needs_divergence_check(&self, leader: &str) -> bool {
        let theirs = self.input.view.members.get(leader).and_then(|m| m.timeline);
        match (self.pg().timeline, theirs) {
            (Some(ours), Some(theirs)) => ours != theirs,
            _ => false,
        }
    }

    fn divergence_check(&self, leader: &str) -> Action {
        Action::CheckDivergence {
            leader: leader.to_string(),
            policy: DivergencePolicy::from_settings(&self.cfg.postgresql),
        }
    }

    fn follower_cycle(&self, leader: &str) -> Decision {
        let pg = self.pg();
        if pg.role == PgRole::Primary {
            if self.paused {
                return wait(Reason::PausedPrimaryWithoutLock { leader: leader.to_string() });
            }
            return plan(
                vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }],
                Reason::DemotingNoLock { leader: leader.to_string() },
            );
        }
        let upstream = self.upstream_for(leader);
        if !self.paused && self.needs_divergence_check(leader) {
            return guarded(
                vec![self.divergence_check(leader), Action::Follow { upstream }],
                Reason::CheckingDivergence { leader: leader.to_string() },
                wait(Reason::DivergedNeedsReinit { leader: leader.to_string() }),
            );
        }
        if pg.following.as_deref() != Some(upstream.as_str()) {
            return plan(
                vec![Action::Follow { upstream: upstream.clone() }],
                Reason::StartedFollowing { leader: upstream },
            );
        }
        wait(Reason::Following { me: self.me.to_string(), leader: upstream })
    }

    /// Nobody holds the leader key and our PostgreSQL runs: Patroni's `process_unhealthy_cluster`.
    fn leader_race(&self) -> Decision {
        let pg = self.pg();
        let primary = pg.role == PgRole::Primary;
        let view = &self.input.view;
        let named = view.failover.as_ref().and_then(|f| f.value.member.clone());
        let named_me = named.as_deref() == Some(self.me);
        if self.paused {
            if primary {
                // Only a running primary takes the free key in pause; losing the race changes nothing.
                let mut actions = vec![Action::AcquireLeader];
                actions.extend(self.leader_writes());
                return guarded(actions, Reason::AcquiredLockAsLeader, wait(Reason::LostRace));
            }
            if !named_me || self.input.tags.no_failover() {
                return wait(Reason::PausedNoLeader);
            }
        }
        if let Err(why) = self.eligible(named_me) {
            return self.not_healthiest(why);
        }
        let others = self.other_members();
        let probes: &[PeerProbe] = match &self.input.probes {
            Some(p) => p,
            None if others.is_empty() => &[],
            None => return plan(vec![Action::ProbePeers { members: others }], Reason::ProbingPeers),
        };
        if let Err(why) = self.healthiest(probes, named.as_deref(), named_me) {
            return self.not_healthiest(why);
        }
        let mut actions = vec![Action::AcquireLeader];
        let reason = match (primary, named_me) {
            (true, _) => Reason::AcquiredLockAsLeader,
            (false, true) => Reason::PromotedByManualFailover,
            (false, false) => Reason::PromotedByRace,
        };
        if !primary {
            let cause = if named_me { PromoteCause::Manual } else { PromoteCause::WonRace };
            actions.push(Action::Promote { cause });
        }
        if let Some(fo) = &view.failover {
            actions.push(Action::ClearFailover { version: fo.version });
        }
        actions.extend(self.leader_writes());
        let fallback = if primary && !self.paused {
            plan(vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }], Reason::LostRaceDemoted)
        } else {
            wait(Reason::LostRace)
        };
        guarded(actions, reason, fallback)
    }

    fn not_healthiest(&self, why: Ineligible) -> Decision {
        if self.pg().is_running_primary() && !self.paused {
            plan(vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }], Reason::NotHealthiestDemoting(why))
        } else {
            wait(Reason::NotHealthiest(why))
        }
    }

    /// Checks that need no probes. A named manual-failover candidate skips lag, sync and timeline checks.
    fn eligible(&self, named_me: bool) -> Result<(), Ineligible> {
        let view = &self.input.view;
        if self.input.tags.no_failover() {
            return Err(Ineligible::NoFailoverTag);
        }
        if self.input.agent.watchdog_unavailable {
            return Err(Ineligible::WatchdogUnavailable);
        }
        if !self.input.agent.lease_valid {
            return Err(Ineligible::NoLease);
        }
        if let Some(fs) = &view.failsafe {
            if !fs.is_empty() && !fs.contains_key(self.me) {
                return Err(Ineligible::NotInFailsafe);
            }
        }
        if named_me {
            return Ok(());
        }
        // A running primary (its key expired) holds every commit it acknowledged; any replica might not.
        if self.cfg.synchronous_mode == SynchronousMode::Quorum && !self.pg().is_running_primary() {
            return Err(Ineligible::QuorumNotImplemented);
        }
        let Some(ours) = self.pg().wal_position() else { return Err(Ineligible::WalPositionUnknown) };
        if let Some(optime) = view.status.optime {
            let lag = optime.saturating_sub(ours);
            if lag > self.cfg.maximum_lag_on_failover {
                return Err(Ineligible::Lagging { lag, max: self.cfg.maximum_lag_on_failover });
            }
        }
        if !self.sync_allows(self.me) {
            return Err(Ineligible::NotSynchronous);
        }
        if self.slot_gate == FailoverSlotReadiness::Strict {
            if let Err(unready) = self.my_slots_ready() {
                return Err(Ineligible::SlotsNotReady { unready });
            }
        }
        if self.cfg.check_timeline {
            let cluster = view.history_timeline();
            match self.pg().timeline {
                Some(ours) if ours >= cluster => {}
                ours => return Err(Ineligible::TimelineBehind { ours: ours.unwrap_or(0), cluster }),
            }
        }
        Ok(())
    }

    /// Patroni's `_is_healthiest_node` over the probes.
    fn healthiest(&self, probes: &[PeerProbe], named: Option<&str>, named_me: bool) -> Result<(), Ineligible> {
        for p in probes.iter().filter(|p| p.name != self.me) {
            if let ProbeResult::Reachable(st) = &p.result {
                if st.is_running_primary() {
                    return Err(Ineligible::PrimaryStillAlive { member: p.name.clone() });
                }
            }
        }
        if named_me {
            return Ok(());
        }
        if let Some(candidate) = named {
            if self.race_candidate_healthy(candidate, probes) {
                return Err(Ineligible::OtherCandidateNamed { candidate: candidate.to_string() });
            }
        }
        let ours = self.pg().wal_position().unwrap_or(Lsn::ZERO);
        let gate = self.slot_gate != FailoverSlotReadiness::Off;
        let me_ready = self.my_slots_ready().is_ok();
        if gate && !me_ready {
            // `prefer` (under `strict` we were already ineligible): an eligible peer with ready slots wins.
            let horizon = self.input.view.status.optime.unwrap_or(ours);
            let ready_peer = probes.iter().filter(|p| p.name != self.me && self.sync_allows(&p.name)).find(|p| {
                reachable(probes, &p.name).is_some_and(|st| {
                    st.pg_running
                        && st.in_recovery
                        && !st.tags.no_failover()
                        && st
                            .wal_position
                            .is_some_and(|w| horizon.saturating_sub(w) <= self.cfg.maximum_lag_on_failover)
                        && self.peer_slots_ready(&p.name)
                        && self.peer_could_win(&p.name, st)
                })
            });
            if let Some(p) = ready_peer {
                return Err(Ineligible::PeerSlotsReady { member: p.name.clone() });
            }
        }
        let our_prio = self.input.tags.effective_failover_priority();
        for p in probes.iter().filter(|p| p.name != self.me && self.sync_allows(&p.name)) {
            let Some(st) = reachable(probes, &p.name) else { continue };
            if st.tags.no_failover() || !st.pg_running {
                continue;
            }
            // Within maximum_lag_on_failover (we passed that check), ready slots beat WAL position and priority.
            if gate && me_ready && !self.peer_slots_ready(&p.name) {
                continue;
            }
            let Some(theirs) = st.wal_position else { continue };
            // Keel compares (timeline, LSN) when both timelines are known: WAL on an abandoned timeline is not
            // "ahead" of WAL on a newer one, however long it is.
            let ahead = match (st.timeline, self.pg().timeline) {
                (Some(t), Some(o)) if t != o => t > o,
                _ => theirs > ours,
            };
            if ahead {
                return Err(Ineligible::PeerAhead { member: p.name.clone(), theirs, ours });
            }
            let prio = st.tags.effective_failover_priority();
            if theirs == ours && st.timeline == self.pg().timeline && prio > our_prio {
                return Err(Ineligible::PeerHigherPriority { member: p.name.clone(), theirs: prio, ours: our_prio });
            }
        }
        Ok(())
    }

    /// Our failover-slot readiness: `Err(unready slots)` when not ready (an empty list: unknown).
    fn my_slots_ready(&self) -> Result<(), Vec<String>> {
        let published = self.input.view.members.get(self.me).and_then(|m| m.slots_readiness.as_ref());
        match self.input.local_slots.as_ref().or(published) {
            Some(r) if r.ready => Ok(()),
            Some(r) => Err(r.unready.clone()),
            None => Err(Vec::new()),
        }
    }

    /// The peer passes the eligibility checks we can judge from here (failsafe list, timeline), so deferring to
    /// it does not leave the cluster without a leader.
    fn peer_could_win(&self, name: &str, st: &PeerStatus) -> bool {
        let view = &self.input.view;
        let in_failsafe = view.failsafe.as_ref().is_none_or(|fs| fs.is_empty() || fs.contains_key(name));
        let timeline_ok = !self.cfg.check_timeline || st.timeline.is_some_and(|t| t >= view.history_timeline());
        in_failsafe && timeline_ok
    }

    /// A peer's readiness as its member key publishes it (missing: not ready).
    fn peer_slots_ready(&self, name: &str) -> bool {
        self.input.view.members.get(name).and_then(|m| m.slots_readiness.as_ref()).is_some_and(|r| r.ready)
    }

    /// A named failover candidate (not us) that can take the key itself: reachable, running, failover allowed.
    fn race_candidate_healthy(&self, name: &str, probes: &[PeerProbe]) -> bool {
        self.input.view.members.contains_key(name)
            && reachable(probes, name).is_some_and(|st| st.pg_running && !st.tags.no_failover())
    }
}

fn reachable<'p>(probes: &'p [PeerProbe], name: &str) -> Option<&'p PeerStatus> {
    probes.iter().find(|p| p.name == name).and_then(|p| match &p.result {
        ProbeResult::Reachable(st) => Some(st),
        ProbeResult::Unreachable => None,
    })
}

#[cfg(test)]
mod tests;
