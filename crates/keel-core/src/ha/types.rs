//! The values [`super::decide`] reads and returns.

use std::fmt;

use crate::divergence::{DivergencePolicy, WipeReason};
use crate::dynconfig::DynamicConfig;
use crate::lsn::Lsn;
use crate::slots::SlotsReadiness;
use crate::time::Millis;
use crate::view::{ClusterView, Tags};

/// Whether the local PostgreSQL process is up. `Unknown` (the probe itself failed) is never read as `Stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgRunning {
    Running,
    Stopped,
    Unknown,
}

/// The role PostgreSQL reports: `Primary` is `pg_is_in_recovery() = false`, `Replica` is `true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgRole {
    Primary,
    Replica,
    Unknown,
}

/// What the data directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// Missing or empty: bootstrap or clone.
    Empty,
    /// A cluster with this system identifier (from `pg_controldata`).
    Initialized { sysid: String },
    /// Present but unusable (no `PG_VERSION`, unreadable control file, ...). Needs an operator or a reinit.
    Invalid,
    /// Could not be inspected this cycle. Never treated as empty.
    Unknown,
}

/// The local PostgreSQL as observed by the runtime this cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct PgObservation {
    pub running: PgRunning,
    /// Started but not yet accepting connections (crash recovery, `pg_ctl start` in progress).
    pub starting: bool,
    pub role: PgRole,
    /// The timeline: from the server when running, from `pg_controldata` when stopped.
    pub timeline: Option<u32>,
    /// Replica: last WAL received (`max(written_lsn, pg_last_wal_receive_lsn())`).
    pub received_lsn: Option<Lsn>,
    /// Replica: last WAL replayed.
    pub replayed_lsn: Option<Lsn>,
    /// Primary: `pg_current_wal_flush_lsn()`. Stopped: the checkpoint location, if known.
    pub current_lsn: Option<Lsn>,
    pub data_dir: DataDir,
    /// The member name `primary_conninfo` currently points at (`None`: not streaming from anybody).
    pub following: Option<String>,
    /// When the runtime first saw PostgreSQL stopped or starting in the current outage (`None` while it runs).
    /// A key holder gives the key up once this is `primary_start_timeout` old.
    pub down_since: Option<Millis>,
}

impl PgObservation {
    /// `pg_is_in_recovery()`, when known.
    pub fn in_recovery(&self) -> Option<bool> {
        match self.role {
            PgRole::Primary => Some(false),
            PgRole::Replica => Some(true),
            PgRole::Unknown => None,
        }
    }

    /// Patroni's WAL position: the flush LSN on a primary, `max(received, replayed)` on a replica.
    pub fn wal_position(&self) -> Option<Lsn> {
        match self.role {
            PgRole::Primary => self.current_lsn,
            PgRole::Replica => match (self.received_lsn, self.replayed_lsn) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            PgRole::Unknown => None,
        }
    }

    pub fn sysid(&self) -> Option<&str> {
        match &self.data_dir {
            DataDir::Initialized { sysid } => Some(sysid),
            _ => None,
        }
    }

    /// Running (or starting) and not in recovery: this node accepts, or is about to accept, writes.
    pub fn is_running_primary(&self) -> bool {
        self.running == PgRunning::Running && self.role == PgRole::Primary
    }
}

/// What the agent knows about itself and its store session this cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentState {
    /// The view was read from the store this cycle. When false, `view` is the last one read (possibly stale).
    pub store_ok: bool,
    /// The runtime's lease is alive: its last keepalive (or grant) succeeded less than `ttl` ago. Without one
    /// the node does not enter the leader race. (A key holder's refresh is checked by the `UpdateLeader` guard.)
    pub lease_valid: bool,
    /// When the leader key was last refreshed successfully by this node (informational).
    pub last_leader_refresh: Option<Millis>,
    /// Failsafe mode: with the store unreachable, every member listed in the `failsafe` key accepted this
    /// primary's `POST /failsafe` this cycle (Patroni's exchange). The runtime runs the exchange only when the store
    /// is down, `failsafe_mode` is on and this node was the leader and runs as a primary.
    pub failsafe_confirmed: bool,
    /// Failsafe mode, on a replica: the member that announced itself as the primary through `POST /failsafe`
    /// less than `ttl` ago (Patroni's `Failsafe.leader`). While the leader key is missing (it expired during the
    /// outage) this member is still the leader: nobody races it, and it takes the key back itself.
    pub failsafe_leader: Option<String>,
    /// An operator asked to reinitialize from the leader (`POST /reinitialize` with `from_leader`): the next clone
    /// takes its base backup from the leader even when a `clonefrom` member runs.
    pub clone_from_leader: bool,
    /// `watchdog.mode: required` and the device cannot be used: this node must not become the leader.
    pub watchdog_unavailable: bool,
}

/// The answer of one peer's `GET /patroni`.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeResult {
    /// Timed out, refused, or answered garbage. Such a peer is neither counted as a better candidate nor as a
    /// live primary (Patroni's rule); it is not assumed to be gone either.
    Unreachable,
    Reachable(PeerStatus),
}

/// The fields of a peer's `/patroni` answer the leader race uses.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub pg_running: bool,
    pub in_recovery: bool,
    pub wal_position: Option<Lsn>,
    pub timeline: Option<u32>,
    pub tags: Tags,
}

impl PeerStatus {
    pub fn is_running_primary(&self) -> bool {
        self.pg_running && !self.in_recovery
    }
}

/// One probed peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerProbe {
    pub name: String,
    pub result: ProbeResult,
}

/// Everything [`super::decide`] reads.
#[derive(Debug, Clone, PartialEq)]
pub struct HaInput {
    /// Current time. Scheduled switchovers compare it with `scheduled_at`, so in the agent it must be Unix epoch
    /// milliseconds; simulations may use any clock as long as they do not schedule switchovers.
    pub now: Millis,
    /// This node's member name.
    pub name: String,
    /// This node's configured tags (authoritative over what its member key says).
    pub tags: Tags,
    pub view: ClusterView,
    /// The effective dynamic configuration ([`crate::dynconfig::effective`]): the one every part of the agent
    /// uses this cycle.
    pub config: DynamicConfig,
    pub pg: PgObservation,
    pub agent: AgentState,
    /// Peer probes, `None` until [`Action::ProbePeers`] asked for them in this cycle.
    pub probes: Option<Vec<PeerProbe>>,
    /// This node's failover-slot readiness now. `None`: use what our member key in `view` says (and treat a
    /// missing one as not ready when the configuration has permanent logical slots).
    pub local_slots: Option<SlotsReadiness>,
}

/// How a primary steps down (Patroni's demotion modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoteMode {
    /// Switchover: fast stop with a shutdown checkpoint, make sure a candidate received it, then release the key.
    Graceful,
    /// Lost the leader key: immediate stop, keep nothing, then restart as a replica. The key is not ours anyway.
    ImmediateNoLock,
    /// Store unreachable: fast stop without touching the store, then restart read-only without upstream (as
    /// Patroni does): readers keep working, and a node whose key survived the outage is promoted again in one
    /// cycle once the store is back.
    Offline,
}

/// How PostgreSQL is (re)started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAs {
    /// In recovery, streaming from `upstream` (`None`: read-only without upstream, e.g. while holding the key).
    Replica { upstream: Option<String> },
}

/// Why we promote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromoteCause {
    /// The leader key was already ours (e.g. we started read-only while holding it).
    HadLock,
    /// We won the automatic leader race.
    WonRace,
    /// We were the named candidate of a manual failover or switchover.
    Manual,
}

/// Why the agent must not run at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FatalReason {
    /// The data directory belongs to another cluster (`initialize` holds a different system identifier).
    SysidMismatch { ours: String, cluster: String },
}

/// One step for the runtime, executed in order. See the module documentation for the guard rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Probe `GET /patroni` of these members and call `decide` again with [`HaInput::probes`] filled in.
    /// Always the only action of its decision; never returned when probes were supplied.
    ProbePeers { members: Vec<String> },
    /// **Guard.** Create `initialize` with an empty value, only if absent (`ClusterOps::initialize("", true)`).
    TakeInitialize,
    /// Run initdb (or the configured bootstrap method) and start PostgreSQL as a primary, not in recovery.
    Bootstrap,
    /// Overwrite `initialize` with this system identifier (`ClusterOps::initialize(sysid, false)`).
    WriteInitialize { sysid: String },
    /// Create `config` from the local `bootstrap.dcs` section, only if absent (`ClusterOps::cas(Config, .., None)`).
    WriteConfig,
    /// Copy the data directory from `source` (basebackup or a replica method) and start as its replica.
    CreateReplica { source: String },
    /// Start PostgreSQL.
    StartPostgres { start_as: StartAs },
    /// **Guard.** Create the leader key on our lease, only if absent (`ClusterOps::acquire_leader`).
    AcquireLeader,
    /// **Guard.** Keep our lease alive and re-attach the leader key to it, only if it still names us
    /// (`ClusterOps::update_leader`); then write `status` with `optime` (when known) and the slot positions.
    UpdateLeader { optime: Option<Lsn> },
    /// Delete the leader key if it names us (`ClusterOps::delete_leader`), after writing `status` with `last_lsn`.
    ReleaseLeader { last_lsn: Option<Lsn> },
    /// `pg_ctl promote`; then append to `history` and run the post-promote CHECKPOINT.
    Promote { cause: PromoteCause },
    /// Step down in this mode, then restart as a replica without upstream. `Graceful` returns
    /// once a replica confirmed the shutdown checkpoint (or a timeout passed); the `ReleaseLeader` that follows
    /// lets the candidate win.
    Demote { mode: DemoteMode },
    /// Re-point `primary_conninfo` to `upstream` (the leader, or the member named by our `replicatefrom` tag) by
    /// reload or restart, and stream from it.
    Follow { upstream: String },
    /// **Guard.** Compare our timeline/LSN with `leader`'s history (Patroni's `_check_timeline_and_lsn`; the
    /// verdict and remedy are [`crate::divergence`]'s). If diverged and `policy.rewind`, stop PostgreSQL cleanly and
    /// run `pg_rewind` from `leader`; the next action (`Follow` or `StartPostgres`) starts it again as a replica.
    /// The guard fails when the node diverged and could not be rewound (rewind disabled or impossible: then a
    /// reinit is needed, or the data directory is wiped by a [`Action::WipeDataDir`] when `policy` allows it); it
    /// errs (unknown, never "diverged") when a fact could not be read.
    CheckDivergence { leader: String, policy: DivergencePolicy },
    /// Stop PostgreSQL and empty the data directory, for this reason. The only way a data directory is wiped.
    WipeDataDir { reason: WipeReason },
    /// Clear the `failover` key (write `{}` guarded by this revision).
    ClearFailover { version: i64 },
    /// Stop the agent with an error (and PostgreSQL unless paused).
    RefuseToRun { why: FatalReason },
}

impl Action {
    /// Guards are store writes or checks whose failure switches to [`Decision::on_guard_failure`].
    pub fn is_guard(&self) -> bool {
        matches!(
            self,
            Action::TakeInitialize
                | Action::AcquireLeader
                | Action::UpdateLeader { .. }
                | Action::CheckDivergence { .. }
        )
    }

    /// Whether carrying this out may start, stop, promote or demote PostgreSQL: an observation taken before it
    /// no longer describes the server (the runtime observes again before publishing its role).
    pub fn changes_postgres(&self) -> bool {
        matches!(
            self,
            Action::Bootstrap
                | Action::CreateReplica { .. }
                | Action::StartPostgres { .. }
                | Action::Promote { .. }
                | Action::Demote { .. }
                | Action::Follow { .. }
                | Action::CheckDivergence { .. }
                | Action::WipeDataDir { .. }
        )
    }
}

/// Why a node may not take part in (or win) the leader race.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    NoFailoverTag,
    /// `watchdog.mode: required` and the watchdog device cannot be used.
    WatchdogUnavailable,
    /// The runtime holds no live lease to attach the leader key to.
    NoLease,
    PgStarting,
    /// Our WAL position is not known, so the lag cannot be judged.
    WalPositionUnknown,
    Lagging {
        lag: u64,
        max: u64,
    },
    /// `synchronous_mode` is on and we are neither the `/sync` leader nor a listed standby.
    NotSynchronous,
    /// `synchronous_mode: quorum` is in the store: Keel does not implement quorum commit, so it cannot tell which
    /// standbys hold every acknowledged commit and promotes none automatically.
    QuorumNotImplemented,
    TimelineBehind {
        ours: u32,
        cluster: u32,
    },
    /// `failsafe` is non-empty and does not list us.
    NotInFailsafe,
    PrimaryStillAlive {
        member: String,
    },
    PeerAhead {
        member: String,
        theirs: Lsn,
        ours: Lsn,
    },
    PeerHigherPriority {
        member: String,
        theirs: i64,
        ours: i64,
    },
    /// A manual failover names a healthy candidate that is not us.
    OtherCandidateNamed {
        candidate: String,
    },
    /// `failover_slot_readiness: strict` and our logical slots are not ready (`unready` lists them; empty when
    /// our readiness is unknown).
    SlotsNotReady {
        unready: Vec<String>,
    },
    /// `failover_slot_readiness: prefer`: our logical slots are not ready and this eligible peer's are.
    PeerSlotsReady {
        member: String,
    },
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::NoFailoverTag => write!(f, "nofailover is set"),
            Ineligible::WatchdogUnavailable => write!(f, "watchdog.mode is required and the watchdog cannot be used"),
            Ineligible::NoLease => write!(f, "I hold no live store lease"),
            Ineligible::PgStarting => write!(f, "PostgreSQL is still starting"),
            Ineligible::WalPositionUnknown => write!(f, "my WAL position is unknown"),
            Ineligible::Lagging { lag, max } => {
                write!(f, "my lag of {lag} bytes exceeds maximum_lag_on_failover {max}")
            }
            Ineligible::NotSynchronous => write!(f, "I am not a synchronous standby"),
            Ineligible::QuorumNotImplemented => write!(
                f,
                "synchronous_mode is quorum, which Keel does not implement: no automatic failover (it could lose \
                 acknowledged commits); set synchronous_mode to on or off with keel edit-config"
            ),
            Ineligible::TimelineBehind { ours, cluster } => {
                write!(f, "my timeline {ours} is behind the cluster timeline {cluster}")
            }
            Ineligible::NotInFailsafe => write!(f, "I am not listed in the failsafe key"),
            Ineligible::PrimaryStillAlive { member } => write!(f, "primary ({member}) is still alive"),
            Ineligible::PeerAhead { member, theirs, ours } => {
                write!(f, "{member} has a higher WAL position ({theirs} > {ours})")
            }
            Ineligible::PeerHigherPriority { member, theirs, ours } => {
                write!(f, "{member} has the same WAL position and a higher failover priority ({theirs} > {ours})")
            }
            Ineligible::OtherCandidateNamed { candidate } => {
                write!(f, "manual failover names the healthy candidate {candidate}")
            }
            Ineligible::SlotsNotReady { unready } if unready.is_empty() => {
                write!(f, "my failover slots' readiness is unknown (failover_slot_readiness=strict)")
            }
            Ineligible::SlotsNotReady { unready } => {
                write!(f, "my logical slots {unready:?} are not safe to use yet (failover_slot_readiness=strict)")
            }
            Ineligible::PeerSlotsReady { member } => {
                write!(f, "{member}'s logical slots are ready and mine are not (failover_slot_readiness=prefer)")
            }
        }
    }
}

/// Why a manual failover or switchover request was not executed (the key is cleared unless it is waiting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverRefusal {
    /// The request names another leader than the current one.
    LeaderMismatch { requested: String, actual: String },
    /// The request names us, and we are already the leader.
    AlreadyLeader,
    /// Paused clusters only fail over to a named candidate.
    PausedNeedsCandidate,
    /// Paused clusters run no scheduled actions.
    ScheduledInPause,
    /// `scheduled_at` is more than 1.5 × `loop_wait` in the past.
    ScheduleExpired,
    /// `scheduled_at` is not an ISO 8601 timestamp.
    ScheduleUnparseable { value: String },
    /// The named candidate is not a member, unreachable, not a running replica, `nofailover`, lagging, or not a
    /// synchronous standby in synchronous mode.
    CandidateUnhealthy { candidate: String },
    /// No member qualifies as a failover target.
    NoHealthyCandidate,
}

impl fmt::Display for FailoverRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailoverRefusal::LeaderMismatch { requested, actual } => {
                write!(f, "leader name does not match: {requested} != {actual}")
            }
            FailoverRefusal::AlreadyLeader => write!(f, "I am already the leader, no need to failover"),
            FailoverRefusal::PausedNeedsCandidate => {
                write!(f, "failover is possible only to a specific candidate in a paused state")
            }
            FailoverRefusal::ScheduledInPause => write!(f, "scheduled actions are not run in a paused state"),
            FailoverRefusal::ScheduleExpired => write!(f, "the scheduled time has passed long ago"),
            FailoverRefusal::ScheduleUnparseable { value } => write!(f, "scheduled_at {value:?} is not ISO 8601"),
            FailoverRefusal::CandidateUnhealthy { candidate } => write!(f, "candidate {candidate} is not healthy"),
            FailoverRefusal::NoHealthyCandidate => write!(f, "no healthy members found, failover is not possible"),
        }
    }
}

/// The one-line explanation of a decision, printed like Patroni's HA log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    // Store trouble.
    StoreUnreachableDemoting,
    /// Failsafe mode: the store is down but every member accepted us, so we stay primary.
    FailsafeContinuing,
    /// Failsafe mode: the leader key expired during a store outage, but its holder announced itself as the
    /// primary less than `ttl` ago; it takes the key back, nobody races it.
    FailsafeLeaderAnnounced {
        leader: String,
    },
    StoreUnreachable,
    StoreUnreachablePaused,
    // Data directory and bootstrap.
    DataDirUnknown,
    DataDirInvalid,
    DataDirInvalidReleasedLock,
    DataDirEmptyReleasedLock,
    PausedWithEmptyDataDir,
    RacingForInitialize,
    InitializeRaceLost,
    WaitingForLeaderToBootstrap,
    NoFailoverWillNotBootstrap,
    CloningFrom {
        source: String,
        is_leader: bool,
    },
    SysidMismatch {
        ours: String,
        cluster: String,
    },
    SysidMismatchPaused {
        ours: String,
        cluster: String,
    },
    // PostgreSQL state.
    PgStateUnknown,
    PgStarting,
    PgStartingWithLock,
    PgStartingAsPrimaryWithoutLock,
    PrimaryStartTimedOut,
    PgStoppedPaused,
    PgStoppedPausedReleasedLock,
    StartingReadonlyWithLock,
    StartingAsReplica {
        leader: Option<String>,
    },
    // Healthy cluster, we hold the key.
    LeaderWithLock {
        me: String,
    },
    LeaderWithLockPaused {
        me: String,
    },
    PromotedWithLock,
    LockUpdateFailedDemoted,
    LockUpdateFailedPaused,
    LockUpdateFailed,
    PausedReplicaReleasedLock,
    // Healthy cluster, somebody else holds the key.
    DemotingNoLock {
        leader: String,
    },
    PausedPrimaryWithoutLock {
        leader: String,
    },
    Following {
        me: String,
        leader: String,
    },
    StartedFollowing {
        leader: String,
    },
    CheckingDivergence {
        leader: String,
    },
    DivergedNeedsReinit {
        leader: String,
    },
    /// The divergence check could not run (an error, not a verdict): wait and check again next cycle.
    DivergenceUnknown {
        leader: String,
    },
    /// An operator asked to reinitialize this replica (`POST /reinitialize`).
    ReinitializeRequested,
    // Leader race.
    AcquiredLockAsLeader,
    PromotedByRace,
    PromotedByManualFailover,
    LostRace,
    LostRaceDemoted,
    NotHealthiest(Ineligible),
    NotHealthiestDemoting(Ineligible),
    PausedNoLeader,
    ProbingPeers,
    // Manual failover / switchover on the leader.
    SwitchoverDemoting {
        candidate: Option<String>,
    },
    SwitchoverScheduled {
        at: Millis,
    },
    ReleasingForCandidate {
        candidate: String,
    },
    FailoverRefused(FailoverRefusal),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Reason::*;
        match self {
            StoreUnreachableDemoting => write!(f, "demoted self because DCS is not accessible and I was a leader"),
            FailsafeContinuing => {
                write!(f, "continue to run as a leader because failsafe mode is enabled and all members are accessible")
            }
            FailsafeLeaderAnnounced { leader } => write!(
                f,
                "no leader key, but {leader} announced itself as the primary through failsafe less than ttl ago: \
                 not racing it"
            ),
            StoreUnreachable => write!(f, "DCS is not accessible"),
            StoreUnreachablePaused => write!(f, "PAUSE: DCS is not accessible"),
            DataDirUnknown => write!(f, "data directory state is unknown, will try again later"),
            DataDirInvalid => write!(f, "data directory is invalid; reinitialize this member"),
            DataDirInvalidReleasedLock => write!(f, "released leader key voluntarily as data dir is invalid"),
            DataDirEmptyReleasedLock => {
                write!(f, "released leader key voluntarily as data dir empty and currently leader")
            }
            PausedWithEmptyDataDir => write!(f, "PAUSE: running with empty data directory"),
            RacingForInitialize => write!(f, "trying to bootstrap a new cluster"),
            InitializeRaceLost => write!(f, "failed to acquire initialize lock"),
            WaitingForLeaderToBootstrap => write!(f, "waiting for leader to bootstrap"),
            NoFailoverWillNotBootstrap => write!(f, "nofailover is set, waiting for another member to bootstrap"),
            CloningFrom { source, is_leader: true } => write!(f, "trying to bootstrap from leader '{source}'"),
            CloningFrom { source, is_leader: false } => write!(f, "trying to bootstrap from replica '{source}'"),
            SysidMismatch { ours, cluster } => {
                write!(f, "system ID mismatch, node belongs to a different cluster: {ours} != {cluster}")
            }
            SysidMismatchPaused { ours, cluster } => {
                write!(f, "PAUSE: system ID mismatch, node belongs to a different cluster: {ours} != {cluster}")
            }
            PgStateUnknown => write!(f, "Error communicating with PostgreSQL - will try again later"),
            PgStarting => write!(f, "PostgreSQL is still starting up"),
            PgStartingWithLock => write!(f, "updated leader lock during PostgreSQL startup"),
            PgStartingAsPrimaryWithoutLock => write!(f, "stopping PostgreSQL starting as primary without the lock"),
            PrimaryStartTimedOut => write!(f, "primary start has timed out, releasing the leader key"),
            PgStoppedPaused => write!(f, "PAUSE: PostgreSQL is not running"),
            PgStoppedPausedReleasedLock => write!(f, "PAUSE: removed leader lock because PostgreSQL is not running"),
            StartingReadonlyWithLock => write!(f, "starting as readonly because i had the session lock"),
            StartingAsReplica { leader: Some(l) } => write!(f, "starting as a secondary following {l}"),
            StartingAsReplica { leader: None } => write!(f, "starting as a secondary"),
            LeaderWithLock { me } => write!(f, "no action. I am ({me}), the leader with the lock"),
            LeaderWithLockPaused { me } => write!(f, "PAUSE: no action. I am ({me}), the leader with the lock"),
            PromotedWithLock => write!(f, "promoted self to leader because I had the session lock"),
            LockUpdateFailedDemoted => write!(f, "demoted self because failed to update leader lock in DCS"),
            LockUpdateFailedPaused => {
                write!(f, "PAUSE: continue to run as primary after failing to update leader lock in DCS")
            }
            LockUpdateFailed => write!(f, "failed to update leader lock in DCS"),
            PausedReplicaReleasedLock => write!(f, "PAUSE: released leader key as PostgreSQL is not primary"),
            DemotingNoLock { leader } => {
                write!(f, "demoting self because I do not have the lock and I was a leader (leader is {leader})")
            }
            PausedPrimaryWithoutLock { leader } => {
                write!(f, "PAUSE: continue to run as primary without lock (leader is {leader})")
            }
            Following { me, leader } => {
                write!(f, "no action. I am ({me}), a secondary, and following a leader ({leader})")
            }
            StartedFollowing { leader } => write!(f, "following new leader {leader}"),
            CheckingDivergence { leader } => write!(f, "checking divergence from new leader {leader} before following"),
            DivergedNeedsReinit { leader } => {
                write!(f, "diverged from leader {leader} and could not rewind; reinitialize this member")
            }
            DivergenceUnknown { leader } => {
                write!(f, "could not check for divergence from leader {leader}; will check again next cycle")
            }
            ReinitializeRequested => write!(f, "reinitialize requested: removing the data directory to clone it again"),
            AcquiredLockAsLeader => write!(f, "acquired session lock as a leader"),
            PromotedByRace => write!(f, "promoted self to leader by acquiring session lock"),
            PromotedByManualFailover => {
                write!(f, "promoted self to leader by acquiring session lock (manual failover)")
            }
            LostRace => write!(f, "failed to acquire the leader lock; another member won the race"),
            LostRaceDemoted => write!(f, "demoted self after losing the leader race"),
            NotHealthiest(why) => {
                write!(f, "following a different leader because I am not the healthiest node: {why}")
            }
            NotHealthiestDemoting(why) => write!(f, "demoting self because I am not the healthiest node: {why}"),
            PausedNoLeader => write!(f, "PAUSE: no leader and no automatic failover"),
            ProbingPeers => write!(f, "probing other members before the leader race"),
            SwitchoverDemoting { candidate: Some(c) } => write!(f, "manual failover: demoting myself in favour of {c}"),
            SwitchoverDemoting { candidate: None } => write!(f, "manual failover: demoting myself"),
            SwitchoverScheduled { at } => write!(f, "no action. Awaiting scheduled switchover at {} ms", at.0),
            FailoverRefused(why) => write!(f, "manual failover: {why}"),
            ReleasingForCandidate { candidate } => {
                write!(f, "manual failover: releasing the leader key as a replica in favour of {candidate}")
            }
        }
    }
}

/// What to do this cycle.
///
/// The runtime executes `actions` in order. At most one action is a guard ([`Action::is_guard`]) and it comes
/// first. If the guard fails (its compare did not hold, or the check said no), the runtime skips the remaining
/// actions and executes `on_guard_failure` instead (which has no guard). If the guard could not be evaluated (the
/// store call or the check returned an error), it executes `on_guard_error` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub reason: Reason,
    pub on_guard_failure: Option<Box<Decision>>,
    /// What an error of the guard leads to. For the store guards it is `on_guard_failure`: the key is not ours
    /// until the store says so. For a divergence check it is a wait: a check that could not run (the leader
    /// unreachable or still in recovery) is unknown, never "diverged".
    pub on_guard_error: Option<Box<Decision>>,
}

impl Decision {
    /// The probe request, if this decision is one.
    pub fn probe_request(&self) -> Option<&[String]> {
        match self.actions.first() {
            Some(Action::ProbePeers { members }) => Some(members),
            _ => None,
        }
    }

    pub fn guard(&self) -> Option<&Action> {
        self.actions.first().filter(|a| a.is_guard())
    }

    pub fn has(&self, pred: impl Fn(&Action) -> bool) -> bool {
        self.actions.iter().any(pred)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)
    }
}
