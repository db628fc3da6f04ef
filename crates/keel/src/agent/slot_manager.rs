//! The slot manager: executes the core's slot plan each HA cycle (`keel_core::slots`), keeps the follower task
//! pointed at the leader, tracks the readiness of copied logical slots, and builds what the leader publishes.
//!
//! Division of work:
//! - the plan (creates, drops, physical advances, copies, continuity breaks) runs once per cycle in
//!   `slot_exec.rs`, logical copies in `slot_copy.rs`;
//! - advancing slot copies on a replica is the follower's job (`follower.rs`, every 100 ms, per-slot tasks with
//!   time limits), so this module never waits on an advance;
//! - on the leader, physical slots of cascading members are advanced here, bounded by a short timeout;
//! - the replica's check of its copies and readiness is in `slot_checks.rs`, the API view and the promotion check
//!   in `slot_report.rs`.
//!
//! Logical slots are created, copied and advanced over connections to their own database.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keel_core::lsn::Lsn;
use keel_core::slots::copycheck::{CopyProblem, Rebuild, RecopyHistory};
use keel_core::slots::readiness::{ReadinessEvent, ReadinessReason, SlotReadiness};
use keel_core::slots::{
    self, desired_slots, enforce_hot_standby_feedback, published_status, reconcile, ActualSlots, DesiredInput,
    DesiredSlots, LeaderState, NodeRole, ReconcileContext, RetainClock, SlotKind, SlotSyncMethod, SlotsConfig,
    SlotsReadiness,
};
use keel_core::time::Millis;
use keel_core::view::{ClusterView, Member, Status, Tags};
use tokio::sync::watch;
use tracing::{info, warn};

use super::follower::{self, FollowPlan, Progress};
use super::local::Local;
use crate::postgres::replication_slots::{self as pg_slots, PgSlot};

#[path = "slot_checks.rs"]
mod checks;
#[path = "slot_copy.rs"]
mod copy;
#[path = "slot_exec.rs"]
mod exec;
#[path = "slot_native.rs"]
pub mod native;
#[path = "slot_online.rs"]
mod online;
#[path = "slot_report.rs"]
mod report;

use exec::SlotError;
pub use report::PromotionReport;

const COPY_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What one cycle of slot work needs to know.
pub struct SlotCycle<'a> {
    pub me: &'a str,
    pub tags: &'a Tags,
    pub view: &'a ClusterView,
    pub dynamic: &'a keel_core::dynconfig::DynamicConfig,
    /// This node holds the leader key and PostgreSQL runs out of recovery.
    pub leader_primary: bool,
    /// PostgreSQL runs (as a replica or primary) and answered this cycle.
    pub running: bool,
    pub replay_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub paused: bool,
    /// The store is unreachable and failsafe mode is on: logical copies wait for the store (Patroni's rule);
    /// advancing existing copies goes on.
    pub failsafe_active: bool,
    pub now: Millis,
}

/// Per-node slot state across cycles.
pub struct SlotManager {
    retain: Option<RetainClock>,
    readiness: BTreeMap<String, SlotReadiness>,
    reasons: BTreeMap<String, ReadinessReason>,
    events: BTreeMap<String, ReadinessEvent>,
    recopy: BTreeSet<String>,
    /// What is wrong with each unusable copy (or with copying it), from the last check.
    problems: BTreeMap<String, CopyProblem>,
    /// Copies (and re-copies) per slot, for the backoff; cleared once the copy is ready.
    recopies: BTreeMap<String, RecopyHistory>,
    /// Copies this agent installed: their `restart_lsn` moves by this node's own decoding.
    made_here: BTreeSet<String>,
    /// The leader's `confirmed_flush_lsn` of each slot when this agent copied it: a position the old leader is
    /// known to have reached, for the promotion check (the follower's reads start over with each copy).
    copied_at: BTreeMap<String, Lsn>,
    /// Copies created on this standby (16+) whose start the leader's consumer has not confirmed yet: slot →
    /// start (`keel_core::slots::online_copy`). Removed once the gate passes or the copy is replaced.
    online_start: BTreeMap<String, Option<Lsn>>,
    /// On the leader: each logical slot's consumer against each failover candidate (`keel_core::slots::ahead`).
    pub consumers_ahead: Vec<keel_core::slots::ahead::ConsumerAhead>,
    /// A rebuild (pg_rewind, pg_basebackup) seen by `Local` and not yet applied to the slot list.
    pending_rebuild: Option<Rebuild>,
    /// Logical slots found after a rebuild, stale until copied again.
    rebuilt: BTreeMap<String, Rebuild>,
    /// Leader: logical slots it could not create (e.g. their database does not exist).
    slot_errors: BTreeMap<String, SlotError>,
    /// Operator requests (`keel slots recreate NAME`).
    pub recreate: BTreeSet<String>,
    /// Continuity breaks seen on this node as leader: slot → last published position.
    pub breaks: BTreeMap<String, Lsn>,
    last_notes: Vec<String>,
    plan_tx: watch::Sender<Option<FollowPlan>>,
    progress: Progress,
    last_advances: BTreeMap<String, u64>,
    /// The local slots as last listed (for the API).
    pub last_actual: Vec<PgSlot>,
    /// The readiness summary this node publishes in its member key.
    pub summary: Option<SlotsReadiness>,
    /// Set when this node was promoted; the next cycle as leader runs the promotion check with it.
    pending_promotion: Option<PendingPromotion>,
    /// The promotion check of this node's last promotion (for the API and metrics).
    pub promotion: Option<PromotionReport>,
    /// Logical copies are paused because failsafe mode is active.
    copies_paused: bool,
    /// Native failover slots (17+): readiness from PostgreSQL, the managed `synchronized_standby_slots`.
    pub native: native::NativeSlots,
    /// The last cycle left permanent logical slots to create (its time for creating them ran out): the HA loop
    /// runs the next cycle soon instead of a `loop_wait` later.
    pub creations_deferred: bool,
}

/// What was known at the moment of promotion.
struct PendingPromotion {
    wal_end: Option<Lsn>,
    /// The old leader's slot positions as the follower last read them.
    followed: BTreeMap<String, Lsn>,
    /// Copies that were unusable at promotion: slot → why.
    unusable: BTreeMap<String, String>,
}

impl SlotManager {
    pub fn new() -> SlotManager {
        let (plan_tx, progress, _task) = follower::spawn();
        SlotManager {
            retain: None,
            readiness: BTreeMap::new(),
            reasons: BTreeMap::new(),
            events: BTreeMap::new(),
            recopy: BTreeSet::new(),
            recreate: BTreeSet::new(),
            breaks: BTreeMap::new(),
            last_notes: Vec::new(),
            plan_tx,
            progress,
            last_advances: BTreeMap::new(),
            last_actual: Vec::new(),
            summary: None,
            problems: BTreeMap::new(),
            recopies: BTreeMap::new(),
            made_here: BTreeSet::new(),
            copied_at: BTreeMap::new(),
            online_start: BTreeMap::new(),
            consumers_ahead: Vec::new(),
            pending_rebuild: None,
            rebuilt: BTreeMap::new(),
            slot_errors: BTreeMap::new(),
            pending_promotion: None,
            promotion: None,
            copies_paused: false,
            native: native::NativeSlots::new(),
            creations_deferred: false,
        }
    }

    /// Records that this node was just promoted with its WAL ending at `wal_end`, keeping the old leader's slot
    /// positions the follower last read before they are forgotten.
    pub fn promoted(&mut self, wal_end: Option<Lsn>) {
        let progress = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
        let mut followed: BTreeMap<String, Lsn> = self.copied_at.clone();
        for (n, p) in progress {
            if let Some(l) = p.highest_leader_lsn {
                let known = followed.entry(n).or_insert(l);
                *known = (*known).max(l);
            }
        }
        let unusable = self.problems.iter().map(|(n, p)| (n.clone(), p.to_string())).collect();
        self.pending_promotion = Some(PendingPromotion { wal_end, followed, unusable });
    }

    fn log_notes(&mut self, notes: Vec<String>) {
        if notes != self.last_notes {
            for n in &notes {
                warn!("{n}");
            }
            self.last_notes = notes;
        }
    }

    /// One cycle. Returns the `status` the leader should publish (only on the leader).
    /// The local slots as PostgreSQL lists them (`Unknown` when they cannot be read).
    async fn list_actual(&mut self, local: &mut Local) -> ActualSlots {
        let session = match local.local_session().await {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot connect to list replication slots: {e:#}");
                return ActualSlots::Unknown;
            }
        };
        match pg_slots::list(session).await {
            Ok(list) => {
                self.last_actual = list.clone();
                ActualSlots::Known(list.iter().map(|s| (s.name.clone(), exec::to_actual(s))).collect())
            }
            Err(e) => {
                warn!("cannot list replication slots: {e}");
                ActualSlots::Unknown
            }
        }
    }

    /// Logs when failsafe mode starts or stops holding logical copies back.
    fn note_failsafe(&mut self, active: bool) {
        if active == self.copies_paused {
            return;
        }
        self.copies_paused = active;
        if active {
            warn!("failsafe mode is active: logical slot copies wait until the store is reachable again");
        } else {
            info!("the store is reachable again: logical slot copies resume");
        }
    }

    /// The leader's part of a cycle: the promotion check, and the `status` to publish.
    fn publish_as_leader(
        &mut self,
        c: &SlotCycle<'_>,
        config: &SlotsConfig,
        desired: &DesiredSlots,
        actual: &ActualSlots,
        pg_major: u32,
    ) -> Status {
        self.check_promotion(c, desired, actual);
        self.follow(None);
        let clock = self.retain.get_or_insert_with(|| RetainClock::on_promotion(&c.view.status.retain_slots, c.now));
        let publish =
            slots::PublishInput { me: c.me, view: c.view, config, desired, actual, flush_lsn: c.flush_lsn, pg_major };
        let (status, notes) = published_status(&publish, clock, c.now);
        for n in notes {
            info!("{n}");
        }
        // Readiness describes copies on replicas; a leader serves the originals.
        self.summary = None;
        self.readiness.clear();
        self.reasons.clear();
        self.problems.clear();
        status
    }

    pub async fn cycle(&mut self, c: &SlotCycle<'_>, local: &mut Local) -> Option<Status> {
        let config = SlotsConfig::from_dynamic(c.dynamic);
        let role = if c.leader_primary { NodeRole::Primary } else { NodeRole::Replica };
        let (desired, method) = self.desired_and_method(c, local, &config, role);
        let native_mode = method == SlotSyncMethod::Native;
        if !c.leader_primary {
            self.retain = None;
        }
        if let Some(r) = local.rebuilt.take() {
            self.pending_rebuild = Some(r);
        }
        if !c.running {
            self.follow(None);
            return None;
        }
        let actual = self.list_actual(local).await;
        self.apply_rebuild(c.leader_primary, &actual);
        let leader = match &c.view.leader {
            None => LeaderState::NoLeader,
            Some(l) if l.name == c.me => LeaderState::Me,
            Some(l) => LeaderState::Other(l.name.clone()),
        };
        self.note_failsafe(c.failsafe_active);
        let recreate = std::mem::take(&mut self.recreate);
        let recopy = std::mem::take(&mut self.recopy);
        let ctx = ReconcileContext {
            role,
            pg_major: local.bins.major,
            config: &config,
            paused: c.paused,
            leader: leader.clone(),
            running_primary: c.leader_primary,
            replay_lsn: c.replay_lsn,
            failsafe_active: c.failsafe_active,
            recreate_requested: &recreate,
            recopy_requested: &recopy,
        };
        let plan = slots::native::plan_for_method(method, role, reconcile(&desired, &actual, &ctx));
        let leader_member = c.view.leader_member().filter(|m| m.name != c.me).cloned();
        self.execute(&plan, local, leader_member.as_ref(), c.now).await;
        self.native_cycle(c, local, &config, &desired, leader_member.as_ref()).await;
        self.slot_errors.retain(|n, _| desired.logical_names().any(|d| d == n));

        if c.leader_primary {
            self.measure_ahead(c, local).await;
            return Some(self.publish_as_leader(c, &config, &desired, &actual, local.bins.major));
        }

        // A replica: follow the leader's positions and track readiness of logical copies.
        self.slot_errors.clear();
        self.consumers_ahead.clear();
        self.follow_leader(local, &desired, &actual, leader_member.as_ref());
        if !native_mode {
            self.update_readiness(c, local, &desired, &actual, leader_member.as_ref()).await;
        }
        None
    }

    /// The slots this node should have and how copies are kept (native or copy), with the configuration notes
    /// logged once; sets `hot_standby_feedback` and the slotsync worker for that method.
    fn desired_and_method(
        &mut self,
        c: &SlotCycle<'_>,
        local: &mut Local,
        config: &SlotsConfig,
        role: NodeRole,
    ) -> (DesiredSlots, SlotSyncMethod) {
        let input = DesiredInput { name: c.me, role, tags: c.tags, pg_major: local.bins.major, view: c.view, config };
        let desired = desired_slots(&input);
        let mut notes: Vec<String> = config.notes.iter().map(|n| n.to_string()).collect();
        notes.extend(desired.notes.iter().map(|n| n.to_string()));
        self.log_notes(notes);
        let cascading = slots::cascades(c.view, c.me, c.tags);
        let method = slots::native::node_method(config.sync_method(local.bins.major), role, cascading);
        let native_mode = method == SlotSyncMethod::Native;
        self.native.method = Some(method);
        local.force_hot_standby_feedback(enforce_hot_standby_feedback(&input) || native_mode);
        local.set_slot_sync(native_mode);
        (desired, method)
    }

    /// After pg_rewind or pg_basebackup, every logical slot on this replica describes another history: stale
    /// until copied again. A primary's slots are its consumers' originals.
    fn apply_rebuild(&mut self, primary: bool, actual: &ActualSlots) {
        if primary {
            self.pending_rebuild = None;
            self.rebuilt.clear();
            return;
        }
        let (Some(cause), ActualSlots::Known(have)) = (self.pending_rebuild, actual) else { return };
        self.pending_rebuild = None;
        self.made_here.clear();
        for (name, _) in have.iter().filter(|(_, a)| a.kind.is_logical()) {
            warn!("logical slot {name} predates this node's {cause:?}: it is stale until copied again");
            self.rebuilt.insert(name.clone(), cause);
        }
    }

    fn follow(&self, plan: Option<FollowPlan>) {
        self.plan_tx.send_if_modified(|cur| {
            if *cur != plan {
                *cur = plan;
                true
            } else {
                false
            }
        });
    }

    fn follow_leader(&self, local: &Local, desired: &DesiredSlots, actual: &ActualSlots, leader: Option<&Member>) {
        let (Some(leader), ActualSlots::Known(have)) = (leader, actual) else {
            self.follow(None);
            return;
        };
        let Ok(leader_params) = local.leader_params(leader, local.database()) else {
            self.follow(None);
            return;
        };
        let mut slots = BTreeMap::new();
        let mut published = BTreeMap::new();
        for (name, want) in &desired.slots {
            if want.expected_active || !have.contains_key(name) {
                continue;
            }
            // Native mode: the slotsync worker moves logical copies (PostgreSQL refuses advances of synced slots).
            if want.kind.is_logical() && self.native.method == Some(SlotSyncMethod::Native) {
                continue;
            }
            let database = match &want.kind {
                SlotKind::Logical { database, .. } => Some(database.clone()),
                SlotKind::Physical => None,
            };
            slots.insert(name.clone(), database);
            if let Some(lsn) = want.lsn {
                published.insert(name.clone(), lsn);
            }
        }
        let pg_major = local.bins.major;
        let plan = FollowPlan { leader: leader_params, local: local.local_params(), slots, published, pg_major };
        self.follow(Some(plan));
    }
}

impl Default for SlotManager {
    fn default() -> Self {
        Self::new()
    }
}
