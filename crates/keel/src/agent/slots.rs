//! The slot manager: executes the core's slot plan each HA cycle (`keel_core::slots`), keeps the follower task
//! pointed at the leader, tracks the readiness of copied logical slots, and builds what the leader publishes.
//!
//! Division of work:
//! - creates, drops, copies and continuity breaks run here, once per cycle;
//! - advancing slot copies on a replica is the follower's job (`follower.rs`, every 100 ms, per-slot tasks with
//!   time limits), so this module never waits on an advance;
//! - on the leader, physical slots of cascading members are advanced here, bounded by a short timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use keel_core::lsn::Lsn;
use keel_core::slotfile::Expectation;
use keel_core::slots::promotion::{self, PromotionInput, SlotComparison, Verdict};
use keel_core::slots::readiness::{
    LocalLogicalSlot, PrimaryPhysicalSlot, ReadinessEvent, ReadinessObservation, SlotReadiness, Xid,
};
use keel_core::slots::{
    self, desired_slots, enforce_hot_standby_feedback, published_status, readiness, reconcile, ActualSlot, ActualSlots,
    DesiredInput, DesiredSlots, LeaderState, NodeRole, ReconcileContext, RetainClock, SlotAction, SlotKind,
    SlotsConfig, SlotsReadiness, WalStatus,
};
use keel_core::time::Millis;
use keel_core::view::{ClusterView, Member, Status, Tags};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::follower::{self, FollowPlan, Progress};
use super::local::Local;
use crate::postgres::slots::{self as pg_slots, PgSlot};

const LEADER_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

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
    reasons: BTreeMap<String, String>,
    events: BTreeMap<String, ReadinessEvent>,
    recopy: BTreeSet<String>,
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
    /// The leader's confirmed_flush_lsn of each slot when it was last copied here: a copy is repeated only after
    /// the leader's slot moved on, so a copy that cannot advance (WAL this replica no longer has) does not make
    /// PostgreSQL restart every cycle.
    copied_at: BTreeMap<String, Option<Lsn>>,
    /// Set when this node was promoted; the next cycle as leader runs the promotion check with it.
    pending_promotion: Option<PendingPromotion>,
    /// The promotion check of this node's last promotion (for the API and metrics).
    pub promotion: Option<PromotionReport>,
    /// Logical copies are paused because failsafe mode is active.
    copies_paused: bool,
}

/// What was known at the moment of promotion.
struct PendingPromotion {
    wal_end: Option<Lsn>,
    /// The old leader's slot positions as the follower last read them.
    followed: BTreeMap<String, Lsn>,
}

/// The result of the promotion check.
pub struct PromotionReport {
    pub at: Millis,
    pub wal_end: Option<Lsn>,
    pub slots: Vec<SlotComparison>,
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
            copied_at: BTreeMap::new(),
            pending_promotion: None,
            promotion: None,
            copies_paused: false,
        }
    }

    /// Records that this node was just promoted with its WAL ending at `wal_end`, keeping the old leader's slot
    /// positions the follower last read before they are forgotten.
    pub fn promoted(&mut self, wal_end: Option<Lsn>) {
        let progress = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
        let followed = progress.into_iter().filter_map(|(n, p)| p.leader_lsn.map(|l| (n, l))).collect();
        self.pending_promotion = Some(PendingPromotion { wal_end, followed });
    }

    /// The promotion check: each permanent logical slot here against its last known position on the old primary.
    fn check_promotion(&mut self, c: &SlotCycle<'_>, desired: &DesiredSlots, actual: &ActualSlots) {
        let ActualSlots::Known(have) = actual else { return };
        let Some(pending) = self.pending_promotion.take() else { return };
        let input = PromotionInput {
            logical: desired.logical_names().collect(),
            published: Some(&c.view.status.slots),
            followed: pending.followed,
            copies: have
                .iter()
                .filter(|(_, a)| a.kind.is_logical())
                .map(|(n, a)| (n.clone(), a.confirmed_flush_lsn))
                .collect(),
            wal_end: pending.wal_end,
        };
        let slots = promotion::compare(&input);
        for cmp in &slots {
            match cmp.verdict {
                Verdict::Divergence { .. } => error!("PROMOTION CHECK: {}", cmp.describe()),
                Verdict::Redelivery { .. } => warn!("promotion check: {}", cmp.describe()),
                _ => info!("promotion check: {}", cmp.describe()),
            }
        }
        self.promotion = Some(PromotionReport { at: c.now, wal_end: pending.wal_end, slots });
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
    pub async fn cycle(&mut self, c: &SlotCycle<'_>, local: &mut Local) -> Option<Status> {
        let config = SlotsConfig::from_dynamic(c.dynamic);
        let role = if c.leader_primary { NodeRole::Primary } else { NodeRole::Replica };
        let input =
            DesiredInput { name: c.me, role, tags: c.tags, pg_major: local.bins.major, view: c.view, config: &config };
        let desired = desired_slots(&input);
        let mut notes: Vec<String> = config.notes.iter().map(|n| n.to_string()).collect();
        notes.extend(desired.notes.iter().map(|n| n.to_string()));
        self.log_notes(notes);
        local.force_hot_standby_feedback(enforce_hot_standby_feedback(&input));

        if !c.leader_primary {
            self.retain = None;
        }
        if !c.running {
            self.follow(None);
            return None;
        }
        let actual = match local.local_session().await {
            Ok(s) => match pg_slots::list(s).await {
                Ok(list) => {
                    self.last_actual = list.clone();
                    ActualSlots::Known(list.iter().map(|s| (s.name.clone(), to_actual(s))).collect())
                }
                Err(e) => {
                    warn!("cannot list replication slots: {e}");
                    ActualSlots::Unknown
                }
            },
            Err(e) => {
                warn!("cannot connect to list replication slots: {e:#}");
                ActualSlots::Unknown
            }
        };
        let leader = match &c.view.leader {
            None => LeaderState::NoLeader,
            Some(l) if l.name == c.me => LeaderState::Me,
            Some(l) => LeaderState::Other(l.name.clone()),
        };
        if c.failsafe_active != self.copies_paused {
            self.copies_paused = c.failsafe_active;
            if c.failsafe_active {
                warn!("failsafe mode is active: logical slot copies wait until the store is reachable again");
            } else {
                info!("the store is reachable again: logical slot copies resume");
            }
        }
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
        let plan = reconcile(&desired, &actual, &ctx);
        let leader_member = c.view.leader_member().filter(|m| m.name != c.me).cloned();
        self.execute(&plan, local, leader_member.as_ref()).await;

        if c.leader_primary {
            self.check_promotion(c, &desired, &actual);
            self.follow(None);
            let clock =
                self.retain.get_or_insert_with(|| RetainClock::on_promotion(&c.view.status.retain_slots, c.now));
            let publish = slots::PublishInput {
                me: c.me,
                view: c.view,
                config: &config,
                desired: &desired,
                actual: &actual,
                flush_lsn: c.flush_lsn.unwrap_or_default(),
                can_advance: local.bins.major >= 11,
            };
            let (status, notes) = published_status(&publish, clock, c.now);
            for n in notes {
                info!("{n}");
            }
            // Readiness describes copies on replicas; a leader serves the originals.
            self.summary = None;
            self.readiness.clear();
            self.reasons.clear();
            return Some(status);
        }

        // A replica: follow the leader's positions and track readiness of logical copies.
        self.follow_leader(local, &desired, &actual, leader_member.as_ref());
        self.update_readiness(c, local, &desired, &actual, leader_member.as_ref()).await;
        None
    }

    async fn execute(&mut self, plan: &[SlotAction], local: &mut Local, leader: Option<&Member>) {
        let mut skip: BTreeSet<String> = BTreeSet::new();
        let mut copies: Vec<(String, String, String)> = Vec::new();
        for action in plan {
            if skip.contains(action.slot()) {
                continue;
            }
            let result: Result<()> = match action {
                SlotAction::CreatePhysical { slot, reason } => {
                    async {
                        pg_slots::create_physical(local.local_session().await?, slot).await?;
                        info!("created physical replication slot {slot} ({reason:?})");
                        Ok(())
                    }
                    .await
                }
                SlotAction::CreateLogical { slot, database, plugin, reason } => {
                    async {
                        let s = local.session_on(database).await?;
                        let lsn = pg_slots::create_logical(&s, slot, plugin).await?;
                        info!(
                            "created logical replication slot {slot} in {database} with {plugin} at {lsn} ({reason:?})"
                        );
                        Ok(())
                    }
                    .await
                }
                SlotAction::CopyLogical { slot, database, plugin, .. } => {
                    copies.push((slot.clone(), database.clone(), plugin.clone()));
                    Ok(())
                }
                SlotAction::AdvancePhysical { slot, to } => {
                    async {
                        let s = local.local_session().await?;
                        tokio::time::timeout(Duration::from_secs(5), pg_slots::advance(s, slot, *to))
                            .await
                            .map_err(|_| anyhow!("advance did not finish within 5 s"))??;
                        Ok(())
                    }
                    .await
                }
                // Logical copies on replicas are advanced by the follower task.
                SlotAction::AdvanceLogical { .. } => Ok(()),
                SlotAction::Drop { slot, reason } => {
                    async {
                        match pg_slots::drop(local.local_session().await?, slot).await {
                            Ok(()) => {
                                info!("dropped replication slot {slot} ({reason:?})");
                                self.readiness.remove(slot);
                                Ok(())
                            }
                            Err(e) => {
                                skip.insert(slot.clone());
                                Err(anyhow!(e))
                            }
                        }
                    }
                    .await
                }
                SlotAction::ContinuityBreak { slot, last_published } => {
                    if self.breaks.insert(slot.clone(), *last_published).is_none() {
                        error!(
                            "CONTINUITY BREAK: permanent logical slot {slot} was at {last_published} on the old \
                             primary but does not exist here. Keel will not re-create it silently, because its \
                             consumers would skip changes. Re-create it on purpose with `keel slots recreate \
                             {slot}` (consumers must resynchronise), or remove it from the configuration."
                        );
                    }
                    Ok(())
                }
            };
            if let Err(e) = result {
                warn!("slot action {action:?} failed: {e:#}");
            }
        }
        if !copies.is_empty() {
            match leader {
                Some(l) => {
                    if let Err(e) = self.copy_logical(&copies, local, l).await {
                        warn!("copying logical slots from {} failed: {e:#}", l.name);
                    }
                }
                None => warn!("cannot copy logical slots: no leader"),
            }
        }
    }

    /// Reads every slot's state file from the leader, validates them for this node's PostgreSQL, then installs
    /// them all in one stop/start of PostgreSQL.
    async fn copy_logical(
        &mut self,
        copies: &[(String, String, String)],
        local: &mut Local,
        leader: &Member,
    ) -> Result<()> {
        let session = local.leader_session(leader, local.database()).await?;
        let mut files = Vec::new();
        for (slot, database, plugin) in copies {
            let on_leader = pg_slots::list(&session).await?;
            let Some(src) = on_leader.iter().find(|s| &s.name == slot) else {
                warn!("logical slot {slot} does not exist on the leader yet; will copy it later");
                continue;
            };
            if src.database.as_deref() != Some(database.as_str()) || src.plugin.as_deref() != Some(plugin.as_str()) {
                warn!("logical slot {slot} on the leader does not match the configuration; not copying it");
                continue;
            }
            let oid = src.datoid.ok_or_else(|| anyhow!("slot {slot} has no database oid on the leader"))?;
            let bytes = pg_slots::read_state_file(&session, slot).await.with_context(|| format!("reading {slot}"))?;
            let expectation = Expectation {
                major: local.bins.major,
                slot_name: slot.clone(),
                database_oid: oid,
                plugin: plugin.clone(),
            };
            match keel_core::slotfile::validate(&bytes, &expectation) {
                Ok(_) => {
                    self.copied_at.insert(slot.clone(), src.confirmed_flush_lsn);
                    files.push((slot.clone(), bytes, expectation));
                }
                Err(e) => warn!("refusing to copy logical slot {slot} from {}: {e}", leader.name),
            }
        }
        if files.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = files.iter().map(|(n, _, _)| n.as_str()).collect();
        info!("copying logical slots {names:?} from {} (PostgreSQL restarts once)", leader.name);
        local.install_slot_files(&files).await?;
        for (name, _, _) in &files {
            self.readiness.insert(name.clone(), SlotReadiness::MISSING);
            self.events.insert(name.clone(), ReadinessEvent::Copied);
        }
        Ok(())
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
        let mut fallback = BTreeMap::new();
        for (name, want) in &desired.slots {
            if want.expected_active || !have.contains_key(name) {
                continue;
            }
            slots.insert(name.clone(), want.kind.is_logical());
            if let Some(lsn) = want.lsn {
                fallback.insert(name.clone(), lsn);
            }
        }
        self.follow(Some(FollowPlan { leader: leader_params, local: local.local_params(), slots, fallback }));
    }

    async fn update_readiness(
        &mut self,
        c: &SlotCycle<'_>,
        local: &Local,
        desired: &DesiredSlots,
        actual: &ActualSlots,
        leader: Option<&Member>,
    ) {
        let logical: Vec<String> = desired.logical_names().map(str::to_string).collect();
        if logical.is_empty() {
            self.summary = None;
            self.readiness.clear();
            return;
        }
        let ActualSlots::Known(have) = actual else { return };
        // The leader's view: this replica's physical slot there, and each logical slot's catalog_xmin.
        let own_slot = slots::slot_name_on_primary(c.view, c.me, c.tags)
            .unwrap_or_else(|| slots::slot_name_from_member_name(c.me));
        let mut primary_physical = PrimaryPhysicalSlot::Unknown;
        let mut primary_logical: BTreeMap<String, Option<Xid>> = BTreeMap::new();
        if let Some(l) = leader {
            if let Ok(Ok(s)) =
                tokio::time::timeout(LEADER_QUERY_TIMEOUT, local.leader_session(l, local.database())).await
            {
                if let Ok(list) = pg_slots::list(&s).await {
                    primary_physical = match list.iter().find(|x| x.name == own_slot) {
                        None => PrimaryPhysicalSlot::Missing,
                        Some(p) => match p.catalog_xmin {
                            Some(x) => PrimaryPhysicalSlot::CatalogXmin(Xid(x)),
                            None => PrimaryPhysicalSlot::NullCatalogXmin,
                        },
                    };
                    for x in list.iter().filter(|x| x.is_logical()) {
                        primary_logical.insert(x.name.clone(), x.catalog_xmin.map(Xid));
                    }
                }
            }
        }
        let progress = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
        for name in &logical {
            let local_slot = have.get(name).map(|a| LocalLogicalSlot {
                catalog_xmin: a.catalog_xmin,
                restart_lsn: a.restart_lsn,
                confirmed_flush_lsn: a.confirmed_flush_lsn,
                wal_status: a.wal_status,
                invalidated: a.wal_status == Some(WalStatus::Lost),
            });
            let mut event = self.events.remove(name);
            if event.is_none() {
                if let Some(p) = progress.get(name) {
                    let before = self.last_advances.get(name).copied().unwrap_or(0);
                    if p.advances > before {
                        event = Some(ReadinessEvent::AdvanceSucceeded);
                    } else if let Some((code, _)) = &p.last_error {
                        event = Some(ReadinessEvent::AdvanceFailed);
                        let moved_on = match self.copied_at.get(name) {
                            Some(at) => p.leader_lsn > *at,
                            None => true,
                        };
                        if (code == "58P01" || (code == "55000" && !is_behind_error(p))) && moved_on {
                            self.recopy.insert(name.clone());
                        }
                    }
                    self.last_advances.insert(name.clone(), p.advances);
                }
            }
            let obs = ReadinessObservation {
                event,
                local: local_slot,
                replay_lsn: c.replay_lsn,
                primary_physical,
                primary_logical_catalog_xmin: primary_logical.get(name).copied().flatten(),
            };
            let prev = self.readiness.get(name).cloned().unwrap_or(SlotReadiness::MISSING);
            let (next, reason) = readiness::step(&prev, &obs);
            if next.stage != prev.stage {
                info!("logical slot {name}: {:?} -> {:?} ({reason:?})", prev.stage, next.stage);
            }
            self.reasons.insert(name.clone(), format!("{reason:?}"));
            self.readiness.insert(name.clone(), next);
        }
        self.readiness.retain(|n, _| logical.contains(n));
        self.summary = Some(SlotsReadiness::summarize(logical.iter().map(String::as_str), &self.readiness));
    }

    /// The node's slots for `GET /slots`: type, position, lag behind the leader, readiness, WAL retained.
    pub fn to_json(&self, published: &Status, current_lsn: Option<Lsn>) -> Value {
        let progress = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
        let slots: Vec<Value> = self
            .last_actual
            .iter()
            .map(|s| {
                let position = if s.is_logical() { s.confirmed_flush_lsn } else { s.restart_lsn };
                let leader_pos = progress.get(&s.name).and_then(|p| p.leader_lsn).or(published.slots.get(&s.name).copied());
                let lag = match (leader_pos, position) {
                    (Some(l), Some(p)) => Some(l.saturating_sub(p)),
                    _ => None,
                };
                let retained = match (current_lsn, s.restart_lsn) {
                    (Some(c), Some(r)) => Some(c.saturating_sub(r)),
                    _ => None,
                };
                let caught_up_secs = progress.get(&s.name).and_then(|p| p.caught_up_at).map(|t| t.elapsed().as_secs_f64());
                json!({
                    "name": s.name,
                    "type": s.slot_type,
                    "database": s.database,
                    "plugin": s.plugin,
                    "active": s.active,
                    "position": position.map(|l| l.to_string()),
                    "lag_bytes": lag,
                    "seconds_since_caught_up": caught_up_secs,
                    "wal_retained_bytes": retained,
                    "wal_status": s.wal_status,
                    "readiness": self.readiness.get(&s.name).map(|r| format!("{:?}", r.stage)),
                    "readiness_reason": self.reasons.get(&s.name),
                    "last_error": progress.get(&s.name).and_then(|p| p.last_error.as_ref().map(|(c, m)| format!("{c}: {m}"))),
                })
            })
            .collect();
        let breaks: Vec<Value> =
            self.breaks.iter().map(|(n, l)| json!({"slot": n, "last_published": l.to_string()})).collect();
        let promotion = self.promotion.as_ref().map(|p| {
            json!({
                "at": keel_core::time::format_iso8601(p.at),
                "wal_end": p.wal_end.map(|l| l.to_string()),
                "slots": p.slots.iter().map(SlotComparison::to_json).collect::<Vec<_>>(),
            })
        });
        json!({
            "slots": slots,
            "continuity_breaks": breaks,
            "promotion": promotion,
            "copies_paused": self.copies_paused,
            "ready": self.summary.as_ref().map(|s| s.ready),
        })
    }
}

impl Default for SlotManager {
    fn default() -> Self {
        Self::new()
    }
}

/// "cannot advance replication slot to X, minimum is Y" is not a reason to copy again: the slot is simply ahead.
fn is_behind_error(p: &follower::SlotProgress) -> bool {
    p.last_error.as_ref().is_some_and(|(_, m)| m.contains("minimum is"))
}

fn to_actual(s: &PgSlot) -> ActualSlot {
    let kind = if s.is_logical() {
        SlotKind::Logical {
            database: s.database.clone().unwrap_or_default(),
            plugin: s.plugin.clone().unwrap_or_default(),
        }
    } else {
        SlotKind::Physical
    };
    ActualSlot {
        kind,
        active: s.active,
        xmin: s.xmin.map(Xid),
        catalog_xmin: s.catalog_xmin.map(Xid),
        restart_lsn: s.restart_lsn,
        confirmed_flush_lsn: s.confirmed_flush_lsn,
        wal_status: s.wal_status.as_deref().and_then(WalStatus::parse),
        failover: s.failover,
        synced: s.synced,
    }
}
