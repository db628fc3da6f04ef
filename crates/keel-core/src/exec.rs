//! The executor: carries out a [`Decision`] through a [`Host`], the way applications drive raft-rs's `RawNode`.
//!
//! The executor owns everything about *running* a decision that is not an effect: the order of the actions, the
//! guard and its fallbacks (`on_guard_failure` when a guard says no, `on_guard_error` when it could not be
//! evaluated), what a divergence check leads to (follow, rewind, wipe, wait for an operator: see
//! [`crate::divergence`]), the `history` line after a promotion, and what the node knows about its leader key.
//! The [`Host`] only performs effects: store writes, PostgreSQL operations, reading facts, logging. The agent's
//! host talks to etcd and PostgreSQL; the simulation's host (`tests/sim.rs`) to an in-memory store and simulated
//! servers, so every simulated schedule runs this code.

use crate::divergence::{self, DivergenceFacts, DivergencePolicy, Remedy, WipeReason};
use crate::dynconfig::DynamicConfig;
use crate::ha::{Action, Decision, DemoteMode, HaInput, PromoteCause, StartAs};
use crate::lsn::Lsn;
use crate::member_state::MemberState;
use crate::time::Millis;
use crate::timeline_history::{self, Promotion};
use crate::view::{ClusterView, HistoryEntry, Member};

mod events;

pub use events::{Event, ExecError};

/// What pg_rewind did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewindResult {
    /// Rewound (or nothing to rewind): the node can stream from the leader.
    Done,
    /// pg_rewind cannot repair this data directory; `detail` says why.
    Impossible { detail: String },
}

/// The effects the executor asks for. Each method is one effect and decides nothing.
///
/// The methods are `async fn`s: the executor runs on the agent's own task, and for a concrete host the futures are
/// `Send` exactly when the host's are, so no bound is imposed here.
#[allow(async_fn_in_trait)]
pub trait Host {
    type Error: std::fmt::Display;

    /// The time now (Unix epoch milliseconds in the agent).
    fn now(&self) -> Millis;
    /// The state to publish from now on (`creating replica`, `starting`, `stopping`, ...).
    fn set_state(&mut self, state: MemberState);
    /// Something worth a log line.
    fn event(&mut self, event: Event);

    async fn take_initialize(&mut self) -> Result<bool, Self::Error>;
    async fn write_initialize(&mut self, sysid: &str) -> Result<(), Self::Error>;
    /// Writes the bootstrap configuration (`bootstrap.dcs`) as the `config` key.
    async fn write_config(&mut self) -> Result<(), Self::Error>;
    async fn acquire_leader(&mut self) -> Result<bool, Self::Error>;
    async fn update_leader(&mut self) -> Result<bool, Self::Error>;
    /// Writes `status` with `last_lsn` (when known), then deletes the leader key.
    async fn release_leader(&mut self, last_lsn: Option<Lsn>) -> Result<(), Self::Error>;
    async fn clear_failover(&mut self, version: i64) -> Result<(), Self::Error>;
    async fn write_history(&mut self, history: &[HistoryEntry]) -> Result<(), Self::Error>;

    async fn bootstrap(&mut self) -> Result<(), Self::Error>;
    async fn create_replica(&mut self, source: &Member, leader: Option<&Member>) -> Result<(), Self::Error>;
    async fn start_replica(&mut self, upstream: Option<&Member>) -> Result<(), Self::Error>;
    /// Puts `synchronous_standby_names` in effect (reloaded) while still a replica, so that the promoted server
    /// holds every commit until a synchronous standby has it (`synchronous_mode_strict`).
    async fn hold_commits_for_sync(&mut self, names: &str) -> Result<(), Self::Error>;
    /// Promotes PostgreSQL; returns where the old timeline ended, as far as it could be read.
    async fn promote(&mut self, cause: PromoteCause) -> Result<Promotion, Self::Error>;
    async fn demote(&mut self, mode: DemoteMode) -> Result<(), Self::Error>;
    async fn follow(&mut self, upstream: &Member) -> Result<(), Self::Error>;
    /// Reads the facts of a divergence check (an error: the check cannot run; facts may also be partly unknown).
    async fn divergence_facts(&mut self, leader: &Member) -> Result<DivergenceFacts, Self::Error>;
    /// Runs pg_rewind from `leader` (stopping PostgreSQL cleanly first).
    async fn rewind(&mut self, leader: &Member) -> Result<RewindResult, Self::Error>;
    /// Stops PostgreSQL if it runs and empties the data directory. Called only for [`Action::WipeDataDir`].
    async fn wipe_data_dir(&mut self, reason: &WipeReason) -> Result<(), Self::Error>;
}

/// How one action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    /// A guard's compare did not hold (or its check said no).
    GuardFailed,
    /// A guard could not be evaluated.
    GuardError,
}

/// What a decision is executed against: the view and configuration it was made from.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// This node's member name.
    pub name: &'a str,
    pub view: &'a ClusterView,
    pub config: &'a DynamicConfig,
}

impl<'a> From<&'a HaInput> for Context<'a> {
    fn from(input: &'a HaInput) -> Self {
        Context { name: &input.name, view: &input.view, config: &input.config }
    }
}

/// What the executor knows about this node's leadership across cycles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Executor {
    /// This node holds the leader key (its last acquire or refresh succeeded, and it did not release it since).
    pub holds_leader: bool,
    /// When the leader key was last acquired or refreshed.
    pub last_leader_refresh: Option<Millis>,
    /// The optime an `UpdateLeader` asked to publish this cycle (the runtime writes it with the slot positions).
    pub pending_optime: Option<Lsn>,
}

impl Executor {
    /// Executes `decision`'s actions in order. Returns the decision that was carried out (a fallback when the
    /// guard failed or could not be evaluated) for the cycle's log line, and the first error.
    pub async fn execute<'d, H: Host>(
        &mut self,
        host: &mut H,
        input: Context<'_>,
        decision: &'d Decision,
    ) -> (&'d Decision, Result<(), ExecError<H::Error>>) {
        let mut current = decision;
        'decision: loop {
            for (i, action) in current.actions.iter().enumerate() {
                let outcome = match self.act(host, input, action).await {
                    Ok(o) => o,
                    Err(e) if action.is_guard() => {
                        host.event(Event::GuardError { action: format!("{action:?}"), error: e.to_string() });
                        Outcome::GuardError
                    }
                    Err(e) => return (current, Err(e)),
                };
                let next = match outcome {
                    Outcome::Done => continue,
                    Outcome::GuardFailed => &current.on_guard_failure,
                    Outcome::GuardError => &current.on_guard_error,
                };
                if let (0, Some(next)) = (i, next) {
                    current = next;
                    continue 'decision;
                }
                return (current, Ok(()));
            }
            return (current, Ok(()));
        }
    }

    async fn act<H: Host>(
        &mut self,
        host: &mut H,
        input: Context<'_>,
        action: &Action,
    ) -> Result<Outcome, ExecError<H::Error>> {
        let view = input.view;
        let guard = |ok: bool| if ok { Outcome::Done } else { Outcome::GuardFailed };
        let failed = |e| ExecError::Host { action: format!("{action:?}"), error: e };
        match action {
            // Probes are answered by the runtime before execution.
            Action::ProbePeers { .. } => Ok(Outcome::Done),
            Action::TakeInitialize => Ok(guard(host.take_initialize().await.map_err(failed)?)),
            Action::Bootstrap => {
                host.set_state(MemberState::InitializingNewCluster);
                host.bootstrap().await.map_err(failed)?;
                Ok(Outcome::Done)
            }
            Action::WriteInitialize { sysid } => {
                host.write_initialize(sysid).await.map_err(failed).map(|()| Outcome::Done)
            }
            Action::WriteConfig => host.write_config().await.map_err(failed).map(|()| Outcome::Done),
            Action::CreateReplica { source } => {
                let src = member(view, source)?;
                host.set_state(MemberState::CreatingReplica);
                host.create_replica(src, view.leader_member()).await.map_err(failed)?;
                Ok(Outcome::Done)
            }
            Action::StartPostgres { start_as: StartAs::Replica { upstream } } => {
                let up = upstream.as_deref().map(|n| member(view, n)).transpose()?;
                host.set_state(MemberState::Starting);
                host.start_replica(up).await.map_err(failed)?;
                Ok(Outcome::Done)
            }
            Action::AcquireLeader => {
                let ok = host.acquire_leader().await.map_err(failed)?;
                if ok {
                    self.holds_leader = true;
                    self.last_leader_refresh = Some(host.now());
                }
                Ok(guard(ok))
            }
            Action::UpdateLeader { optime } => {
                let ok = host.update_leader().await.map_err(failed)?;
                self.holds_leader = ok;
                if ok {
                    self.last_leader_refresh = Some(host.now());
                    self.pending_optime = *optime;
                }
                Ok(guard(ok))
            }
            Action::ReleaseLeader { last_lsn } => {
                host.release_leader(*last_lsn).await.map_err(failed)?;
                self.holds_leader = false;
                Ok(Outcome::Done)
            }
            Action::Promote { cause } => {
                if let Some(names) = crate::sync::names_before_promotion(input.config) {
                    host.hold_commits_for_sync(names).await.map_err(failed)?;
                }
                let promotion = host.promote(*cause).await.map_err(failed)?;
                self.record_promotion(host, input, &promotion).await;
                Ok(Outcome::Done)
            }
            Action::Demote { mode } => {
                host.set_state(MemberState::Stopping);
                host.demote(*mode).await.map_err(failed)?;
                Ok(Outcome::Done)
            }
            Action::Follow { upstream } => {
                host.follow(member(view, upstream)?).await.map_err(failed)?;
                Ok(Outcome::Done)
            }
            Action::CheckDivergence { leader, policy } => self.check_divergence(host, input, leader, *policy).await,
            Action::WipeDataDir { reason } => {
                host.event(Event::Wiping(reason.clone()));
                host.set_state(MemberState::CreatingReplica);
                host.wipe_data_dir(reason).await.map_err(failed)?;
                Ok(Outcome::Done)
            }
            Action::ClearFailover { version } => {
                host.clear_failover(*version).await.map_err(failed).map(|()| Outcome::Done)
            }
            Action::RefuseToRun { why } => Err(ExecError::Refused(why.clone())),
        }
    }

    /// Appends the timeline switch to `history` (nothing when the switch point is unknown).
    async fn record_promotion<H: Host>(&mut self, host: &mut H, input: Context<'_>, promotion: &Promotion) {
        let max = input.config.max_timelines_history;
        match timeline_history::after_promotion(&input.view.history, promotion, input.name, host.now(), max) {
            Some(history) => {
                if let Err(e) = host.write_history(&history).await {
                    host.event(Event::HistoryNotWritten { why: e.to_string() });
                }
            }
            None => {
                host.event(Event::HistoryNotWritten { why: format!("the switch point is unknown ({promotion:?})") })
            }
        }
    }

    /// The divergence guard: reads the facts, then follows, rewinds, wipes or waits as [`divergence`] says.
    async fn check_divergence<H: Host>(
        &mut self,
        host: &mut H,
        input: Context<'_>,
        leader: &str,
        policy: DivergencePolicy,
    ) -> Result<Outcome, ExecError<H::Error>> {
        let failed = |e| ExecError::Host { action: format!("divergence check against {leader}"), error: e };
        let l = member(input.view, leader)?;
        let facts = host.divergence_facts(l).await.map_err(failed)?;
        let verdict = divergence::assess(&facts);
        host.event(Event::Divergence { leader: leader.to_string(), verdict });
        let remedy = match divergence::remedy(&verdict, policy) {
            Remedy::Rewind => match host.rewind(l).await.map_err(failed)? {
                RewindResult::Done => Remedy::Follow,
                RewindResult::Impossible { detail } => divergence::after_rewind_impossible(&detail, policy),
            },
            other => other,
        };
        match remedy {
            Remedy::Follow => Ok(Outcome::Done),
            Remedy::Unknown(_) => Ok(Outcome::GuardError),
            Remedy::Rewind => Ok(Outcome::GuardFailed),
            Remedy::WaitForReinit(why) => {
                host.event(Event::NeedsReinit(why));
                Ok(Outcome::GuardFailed)
            }
            Remedy::Wipe(reason) => {
                Box::pin(self.act(host, input, &Action::WipeDataDir { reason })).await?;
                Ok(Outcome::GuardFailed)
            }
        }
    }
}

fn member<'v, E: std::fmt::Display>(view: &'v ClusterView, name: &str) -> Result<&'v Member, ExecError<E>> {
    view.members.get(name).ok_or_else(|| ExecError::UnknownMember(name.to_string()))
}

#[cfg(test)]
#[path = "exec_tests.rs"]
mod tests;
