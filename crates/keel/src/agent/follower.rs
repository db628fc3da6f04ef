//! The slot follower: on a replica, keeps the local copies of the primary's managed slots moving with the primary,
//! between HA cycles and independently of them.
//!
//! Every [`TICK`] it reads the managed slots' positions on the leader (`restart_lsn` for physical slots,
//! `confirmed_flush_lsn` for logical ones) and the local replay position, and advances each local slot where the
//! core's rule says (`keel_core::slots::advance_step`: the leader's position, else the published one, capped at
//! replay; the HA cycle's plan uses the same rule). Each slot advances in its own task, bounded by
//! [`ADVANCE_TIMEOUT`]: a slow or stuck advance delays neither the HA loop nor the other slots. A logical slot
//! advances on a connection to the slot's own database (PostgreSQL 16 and older refuse to advance another
//! database's slot); at most [`MAX_IN_FLIGHT`] advances run at once, on a pool of at most [`MAX_IN_FLIGHT`]
//! connections per database, so hundreds of slots do not exhaust `max_connections`; when more slots want an
//! advance than there are places, the one whose last advance started longest ago goes first
//! ([`keel_core::slots::fair_pick`]), so none is starved by a busy primary. The outcome of each attempt, a failure classified by
//! SQLSTATE ([`keel_core::slots::copycheck::classify`]), is kept in a shared table that the HA loop reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keel_core::lsn::Lsn;
use keel_core::slots::copycheck::{self, CopyFailure, FailureContext};
use keel_core::slots::{advance_step, advance_target, fair_pick, AdvanceInput, AdvanceStep, NodeRole};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::postgres::observe::{self, PgError, Session};
use crate::postgres::replication_slots as pg_slots;
use crate::postgres::ConnParams;

/// How often positions are compared.
pub const TICK: Duration = Duration::from_millis(100);
/// The longest one advance may take before it is abandoned (and retried on a later tick).
pub const ADVANCE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most advances (and so connections opening) at the same time.
pub const MAX_IN_FLIGHT: usize = 8;
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the follower should follow; `None` stops following (this node is the primary, or there is no leader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowPlan {
    pub leader: ConnParams,
    pub local: ConnParams,
    /// Managed slots present on this replica: name → the logical slot's database (`None`: physical).
    pub slots: BTreeMap<String, Option<String>>,
    pub pg_major: u32,
    /// The positions the leader published in `status` (the desired slots' `lsn`): the target of slots the leader
    /// does not have itself (e.g. the slot named after the leader, published at its flush position).
    pub published: BTreeMap<String, Lsn>,
}

/// The last known state of one followed slot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotProgress {
    /// The leader's position for the slot.
    pub leader_lsn: Option<Lsn>,
    /// The highest position read for the slot since it was first followed: what the leader is known to have
    /// reached (the promotion check; `leader_lsn` may fall back to older published positions).
    pub highest_leader_lsn: Option<Lsn>,
    /// The local slot's position after the last successful advance.
    pub local_lsn: Option<Lsn>,
    /// Successful advances since the slot was first followed.
    pub advances: u64,
    /// The last advance error, cleared by a success.
    pub last_error: Option<AdvanceError>,
    /// When the local slot last caught up with the leader (or the replay position).
    pub caught_up_at: Option<Instant>,
}

/// A failed advance: its classification and the server's message (for people, never for decisions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvanceError {
    pub failure: CopyFailure,
    pub message: String,
}

/// Shared table of slot progress, read by the HA loop and the REST API.
pub type Progress = Arc<Mutex<BTreeMap<String, SlotProgress>>>;

/// Starts the follower task. Send plans through the returned sender; dropping it stops the task.
pub fn spawn() -> (watch::Sender<Option<FollowPlan>>, Progress, JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let progress: Progress = Arc::default();
    let handle = tokio::spawn(run(rx, progress.clone()));
    (tx, progress, handle)
}

/// What the follower keeps from one tick to the next.
#[derive(Default)]
struct FollowerState {
    leader: Option<(ConnParams, Session)>,
    local: Option<(ConnParams, Session)>,
    in_flight: BTreeMap<String, JoinHandle<()>>,
    pools: BTreeMap<String, SessionPool>,
    /// When each slot's last advance started: the order in which waiting slots get a place ([`fair_pick`]).
    started: BTreeMap<String, Instant>,
}

async fn run(mut plans: watch::Receiver<Option<FollowPlan>>, progress: Progress) {
    let mut state = FollowerState::default();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = plans.changed() => if changed.is_err() { return },
            _ = interval.tick() => {}
        }
        let plan = plans.borrow().clone();
        match plan {
            Some(plan) => tick(&mut state, &plan, &progress, Instant::now()).await,
            None => {
                state.leader = None;
                state.local = None;
                lock(&progress).clear();
            }
        }
    }
}

/// One tick: read the leader's and the local positions, record them, and start the advances that fit.
async fn tick(st: &mut FollowerState, plan: &FollowPlan, progress: &Progress, now: Instant) {
    st.in_flight.retain(|_, h| !h.is_finished());
    st.pools.retain(|db, _| plan.slots.values().any(|d| pool_key(d) == *db));
    st.started.retain(|name, _| plan.slots.contains_key(name));
    lock(progress).retain(|name, _| plan.slots.contains_key(name));
    if plan.slots.is_empty() {
        return;
    }
    if let Err(e) = ensure(&mut st.leader, &plan.leader).await.and(ensure(&mut st.local, &plan.local).await) {
        debug!("slot follower cannot connect: {e}");
        return;
    }
    let (Some((_, leader_session)), Some((_, local_session))) = (&st.leader, &st.local) else { return };
    let names: Vec<String> = plan.slots.keys().cloned().collect();
    let targets = match leader_positions(leader_session, &names).await {
        Ok(t) => t,
        Err(e) => {
            debug!("slot follower cannot read the leader's slots: {e}");
            st.leader = None;
            return;
        }
    };
    let (replay, locals) = match local_positions(local_session, &names).await {
        Ok(v) => v,
        Err(e) => {
            debug!("slot follower cannot read the local slots: {e}");
            st.local = None;
            return;
        }
    };
    let wanting = wanted_advances(plan, &targets, replay, &locals, progress, now);
    let waiting: Vec<(String, Option<Instant>)> = wanting
        .keys()
        .filter(|name| !st.in_flight.contains_key(*name))
        .map(|name| (name.clone(), st.started.get(name).copied()))
        .collect();
    for name in fair_pick(&waiting, MAX_IN_FLIGHT.saturating_sub(st.in_flight.len())) {
        let (Some(&(goal, position)), Some(database)) = (wanting.get(&name), plan.slots.get(&name)) else { continue };
        let params = match database {
            Some(db) => plan.local.clone().with_database(db.clone()),
            None => plan.local.clone(),
        };
        let pool = st.pools.entry(pool_key(database)).or_insert_with(new_pool).clone();
        let attempt =
            Attempt { params, name: name.clone(), database: database.clone(), pg_major: plan.pg_major, goal, position };
        st.started.insert(name.clone(), now);
        st.in_flight.insert(name, tokio::spawn(advance_task(attempt, progress.clone(), pool)));
    }
}

/// Records each slot's positions in the progress table and returns the slots to advance now, with their goal and
/// local position (the core's [`advance_step`]).
fn wanted_advances(
    plan: &FollowPlan,
    targets: &BTreeMap<String, Option<Lsn>>,
    replay: Option<Lsn>,
    locals: &BTreeMap<String, Option<Lsn>>,
    progress: &Progress,
    now: Instant,
) -> BTreeMap<String, (Lsn, Option<Lsn>)> {
    let mut table = lock(progress);
    let mut wanting = BTreeMap::new();
    for name in plan.slots.keys() {
        let entry = table.entry(name.clone()).or_default();
        let local_lsn = locals.get(name).copied().flatten();
        let input = AdvanceInput {
            role: NodeRole::Replica,
            leader: targets.get(name).copied().flatten(),
            published: plan.published.get(name).copied(),
            replay,
            current: local_lsn,
            unproven: entry.advances == 0 && entry.last_error.is_none(),
        };
        entry.leader_lsn = advance_target(input.leader, input.published);
        entry.highest_leader_lsn = entry.highest_leader_lsn.max(entry.leader_lsn);
        if entry.local_lsn.is_none() || local_lsn > entry.local_lsn {
            entry.local_lsn = local_lsn;
        }
        match advance_step(&input) {
            AdvanceStep::To(goal) => {
                wanting.insert(name.clone(), (goal, input.current));
            }
            AdvanceStep::Prove(goal) => {
                entry.caught_up_at = Some(now);
                wanting.insert(name.clone(), (goal, input.current));
            }
            AdvanceStep::CaughtUp => entry.caught_up_at = Some(now),
            AdvanceStep::Unknown => {}
        }
    }
    wanting
}

fn lock(p: &Progress) -> std::sync::MutexGuard<'_, BTreeMap<String, SlotProgress>> {
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes sure `slot` holds a live session to `params`.
async fn ensure(slot: &mut Option<(ConnParams, Session)>, params: &ConnParams) -> Result<(), PgError> {
    let stale = match slot {
        Some((p, s)) => p != params || s.is_closed(),
        None => true,
    };
    if stale {
        *slot = None;
        *slot = Some((params.clone(), observe::connect(params, QUERY_TIMEOUT).await?));
    }
    Ok(())
}

/// Positions of the named slots on the leader: physical → restart_lsn, logical → confirmed_flush_lsn.
async fn leader_positions(s: &Session, names: &[String]) -> Result<BTreeMap<String, Option<Lsn>>, PgError> {
    let rows = s
        .query(
            "SELECT slot_name::text, CASE WHEN slot_type = 'logical' THEN confirmed_flush_lsn ELSE restart_lsn \
             END::text FROM pg_catalog.pg_replication_slots WHERE slot_name = ANY($1) AND NOT pg_is_in_recovery()",
            &[&names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1).and_then(|t| t.parse().ok())))
        .collect())
}

/// The local replay position and the local positions of the named slots.
async fn local_positions(
    s: &Session,
    names: &[String],
) -> Result<(Option<Lsn>, BTreeMap<String, Option<Lsn>>), PgError> {
    let rows = s
        .query(
            "SELECT slot_name::text, CASE WHEN slot_type = 'logical' THEN confirmed_flush_lsn ELSE restart_lsn \
             END::text, pg_last_wal_replay_lsn()::text FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = ANY($1)",
            &[&names],
        )
        .await?;
    let mut replay = None;
    let mut out = BTreeMap::new();
    for r in &rows {
        replay = r.get::<_, Option<String>>(2).and_then(|t| t.parse().ok());
        out.insert(r.get::<_, String>(0), r.get::<_, Option<String>>(1).and_then(|t| t.parse().ok()));
    }
    if rows.is_empty() {
        let r = s.query("SELECT pg_last_wal_replay_lsn()::text", &[]).await?;
        replay = r.first().and_then(|r| r.get::<_, Option<String>>(0)).and_then(|t| t.parse().ok());
    }
    Ok((replay, out))
}

/// A connection (and the parameters it was opened with), kept between advances (connecting costs more than a
/// small advance).
type SlotSession = Arc<tokio::sync::Mutex<Option<(ConnParams, Session)>>>;

/// The connections of one database: [`MAX_IN_FLIGHT`] of them, so an advance always finds one free (at most
/// [`MAX_IN_FLIGHT`] run at once). One connection per slot held 1,000 connections for 1,000 slots.
type SessionPool = Arc<Vec<SlotSession>>;

fn new_pool() -> SessionPool {
    Arc::new((0..MAX_IN_FLIGHT).map(|_| SlotSession::default()).collect())
}

/// The pool of a slot's database (physical slots use the local connection's database).
fn pool_key(database: &Option<String>) -> String {
    database.clone().unwrap_or_default()
}

/// One advance attempt: where, which slot, to where, and from where.
struct Attempt {
    /// The local server, in the slot's database.
    params: ConnParams,
    name: String,
    database: Option<String>,
    pg_major: u32,
    goal: Lsn,
    position: Option<Lsn>,
}

/// One advance on a free connection of the slot's database, bounded in time; the outcome goes into the progress
/// table. A failed or timed-out attempt drops the connection, so a stuck statement never blocks the next one.
async fn advance_task(a: Attempt, progress: Progress, pool: SessionPool) {
    let free = pool.iter().find_map(|s| s.clone().try_lock_owned().ok());
    let mut guard = match free {
        Some(g) => g,
        // Not expected (no more advances run than the pool has connections): wait for the first one.
        None => match pool.first() {
            Some(s) => s.clone().lock_owned().await,
            None => return,
        },
    };
    let attempt = async {
        let stale = guard.as_ref().is_none_or(|(p, s)| s.is_closed() || *p != a.params);
        if stale {
            *guard = None;
            *guard = Some((a.params.clone(), observe::connect(&a.params, ADVANCE_TIMEOUT).await?));
        }
        match guard.as_ref() {
            Some((_, s)) => pg_slots::advance(s, &a.name, a.goal).await,
            None => Ok(None),
        }
    };
    let outcome = tokio::time::timeout(ADVANCE_TIMEOUT, attempt).await;
    if !matches!(outcome, Ok(Ok(_))) {
        *guard = None;
    }
    drop(guard);
    record_outcome(&a, outcome, &progress);
}

/// Puts one attempt's outcome into the progress table (a failure logged once per change of cause).
fn record_outcome(
    a: &Attempt,
    outcome: Result<Result<Option<Lsn>, PgError>, tokio::time::error::Elapsed>,
    progress: &Progress,
) {
    let error = match &outcome {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(AdvanceError { failure: classify(a, e.sqlstate(), false), message: e.message() }),
        Err(_) => Some(AdvanceError {
            failure: classify(a, None, true),
            message: format!("no answer within {ADVANCE_TIMEOUT:?}"),
        }),
    };
    let mut table = lock(progress);
    let entry = table.entry(a.name.clone()).or_default();
    match (outcome, error) {
        (Ok(Ok(end)), _) => {
            entry.advances += 1;
            entry.last_error = None;
            if end.is_some() && end > entry.local_lsn {
                entry.local_lsn = end;
            }
        }
        (_, Some(error)) => {
            // Once per change of cause, not every tick.
            if entry.last_error.as_ref().map(|e| &e.failure) != Some(&error.failure) {
                let kind = if a.database.is_some() { "logical" } else { "physical" };
                warn!(
                    "advancing {kind} slot {} to {} failed ({}: {}): {}",
                    a.name,
                    a.goal,
                    error.failure.code(),
                    error.failure,
                    error.message
                );
            }
            entry.last_error = Some(error);
        }
        (_, None) => {}
    }
}

fn classify(a: &Attempt, sqlstate: Option<&str>, timed_out: bool) -> CopyFailure {
    copycheck::classify(&FailureContext {
        sqlstate,
        timed_out,
        connected_database: &a.params.dbname,
        slot_database: a.database.as_deref(),
        pg_major: a.pg_major,
        target: Some(a.goal),
        position: a.position,
    })
}
