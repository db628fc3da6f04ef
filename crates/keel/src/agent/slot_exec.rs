//! Executing the core's slot plan (`keel_core::slots::reconcile`) on this node: creates, drops, physical
//! advances and continuity breaks run here once per cycle; logical copies are collected and made in one
//! PostgreSQL restart (`slot_copy.rs`). What the plan is and when a copy may run are the core's decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use keel_core::lsn::Lsn;
use keel_core::slots::copycheck::{self, recopy_due, CopyFailure, FailureContext};
use keel_core::slots::online_copy::{copy_technique, CopyTechnique};
use keel_core::slots::readiness::Xid;
use keel_core::slots::{ActualSlot, SlotAction, SlotKind, WalStatus};
use keel_core::time::Millis;
use keel_core::view::Member;
use tracing::{error, info, warn};

use super::SlotManager;
use crate::agent::local::Local;
use crate::postgres::observe::{PgError, Session};
use crate::postgres::replication_slots::{self as pg_slots, PgSlot};

/// How long one cycle may spend creating logical slots. The HA loop waits for the slot cycle, and a leader that
/// spends its whole TTL creating hundreds of slots (each waits for a snapshot of running transactions) loses its
/// key and is fenced; the slots left over are created in the next cycles, which then run soon.
const CREATE_BUDGET: Duration = Duration::from_secs(2);

/// A logical slot the leader could not create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotError {
    pub database: String,
    pub failure: CopyFailure,
    pub message: String,
}

impl SlotError {
    /// One line naming the slot, what failed and what to do.
    pub fn describe(&self, slot: &str) -> String {
        match self.failure {
            CopyFailure::DatabaseMissing => format!(
                "cannot create permanent logical slot {slot}: database {:?} does not exist on the primary; create it \
                 or change the slot's database in the configuration",
                self.database
            ),
            _ => format!(
                "cannot create permanent logical slot {slot} in database {:?}: {} ({})",
                self.database, self.failure, self.message
            ),
        }
    }
}

impl SlotManager {
    /// Records a failure to create a logical slot on the leader (logged once per change of cause).
    fn create_failed(&mut self, slot: &str, database: &str, e: &anyhow::Error) {
        let pg = e.downcast_ref::<PgError>();
        let failure = copycheck::classify(&FailureContext {
            sqlstate: pg.and_then(PgError::sqlstate),
            timed_out: false,
            connected_database: database,
            slot_database: Some(database),
            pg_major: 0,
            target: None,
            position: None,
        });
        let error = SlotError {
            database: database.to_string(),
            failure,
            message: pg.map_or_else(|| format!("{e:#}"), PgError::message),
        };
        if self.slot_errors.get(slot).map(|e| &e.failure) != Some(&error.failure) {
            error!("{}", error.describe(slot));
        }
        self.slot_errors.insert(slot.to_string(), error);
    }

    async fn create_logical(
        &mut self,
        local: &mut Local,
        sessions: &mut BTreeMap<String, Session>,
        slot: &str,
        database: &str,
        plugin: &str,
        reason: &impl std::fmt::Debug,
    ) {
        let failover = self.native.method == Some(keel_core::slots::SlotSyncMethod::Native);
        let created: Result<Lsn> = async {
            // One session per database for the cycle: a new connection per slot (authentication included) cost
            // more than the creation itself when hundreds of slots are added at once.
            let s = match sessions.remove(database) {
                Some(s) if !s.is_closed() => s,
                _ => local.session_on(database).await?,
            };
            let lsn = if failover {
                pg_slots::create_logical_failover(&s, slot, plugin).await?
            } else {
                pg_slots::create_logical(&s, slot, plugin).await?
            };
            sessions.insert(database.to_string(), s);
            Ok(lsn)
        }
        .await;
        match created {
            Ok(lsn) => {
                self.slot_errors.remove(slot);
                info!(
                    "created logical replication slot {slot} in {database} with {plugin} at {lsn} (failover = \
                     {failover}, {reason:?})"
                );
            }
            Err(e) => self.create_failed(slot, database, &e),
        }
    }

    async fn drop_slot(&mut self, local: &mut Local, slot: &str, reason: &impl std::fmt::Display) -> Result<()> {
        pg_slots::drop(local.local_session().await?, slot).await.map_err(|e| anyhow!(e))?;
        info!("dropped replication slot {slot} ({reason})");
        self.readiness.remove(slot);
        self.made_here.remove(slot);
        self.online_start.remove(slot);
        self.rebuilt.remove(slot);
        Ok(())
    }

    fn record_break(&mut self, slot: &str, last_published: Lsn) {
        if self.breaks.insert(slot.to_string(), last_published).is_none() {
            error!(
                "CONTINUITY BREAK: permanent logical slot {slot} was at {last_published} on the old primary but does \
                 not exist here. Keel will not re-create it silently, because its consumers would skip changes. \
                 Re-create it on purpose with `keel slots recreate {slot}` (consumers must resynchronise), or remove \
                 it from the configuration."
            );
        }
    }

    pub(super) async fn execute(
        &mut self,
        plan: &[SlotAction],
        local: &mut Local,
        leader: Option<&Member>,
        now: Millis,
    ) {
        let mut skip: BTreeSet<String> = BTreeSet::new();
        let mut batch = Batch { started: Instant::now(), deferred: 0, copies: Vec::new(), sessions: BTreeMap::new() };
        for action in plan {
            if skip.contains(action.slot()) {
                continue;
            }
            let result = self.execute_one(action, local, now, &mut batch).await;
            if let Err(e) = result {
                if matches!(action, SlotAction::Drop { .. }) {
                    skip.insert(action.slot().to_string());
                }
                warn!("slot action {action:?} failed: {e:#}");
            }
        }
        if batch.deferred > 0 {
            info!(
                "{} permanent logical slots left for the next cycle: one cycle creates slots for at most \
                 {CREATE_BUDGET:?}, so that the leader key is refreshed in time",
                batch.deferred
            );
        }
        self.creations_deferred = batch.deferred > 0;
        if !batch.copies.is_empty() {
            match leader {
                Some(l) => self.copy_all(batch.copies, local, l, now).await,
                None => warn!("cannot copy logical slots: no leader"),
            }
        }
    }

    /// Runs one action of the plan; logical copies and creations over the budget are only collected in `batch`.
    async fn execute_one(
        &mut self,
        action: &SlotAction,
        local: &mut Local,
        now: Millis,
        batch: &mut Batch,
    ) -> Result<()> {
        match action {
            SlotAction::CreatePhysical { slot, reason } => {
                pg_slots::create_physical(local.local_session().await?, slot).await?;
                info!("created physical replication slot {slot} ({reason:?})");
            }
            SlotAction::CreateLogical { .. } if batch.started.elapsed() >= CREATE_BUDGET => batch.deferred += 1,
            SlotAction::CreateLogical { slot, database, plugin, reason } => {
                self.create_logical(local, &mut batch.sessions, slot, database, plugin, reason).await;
            }
            SlotAction::CopyLogical { slot, database, plugin, .. } => {
                // Every copy restarts PostgreSQL: repeated ones back off.
                if recopy_due(&self.recopies.get(slot).copied().unwrap_or_default(), now) {
                    batch.copies.push((slot.clone(), database.clone(), plugin.clone()));
                }
            }
            SlotAction::AdvancePhysical { slot, to } => {
                let s = local.local_session().await?;
                tokio::time::timeout(Duration::from_secs(5), pg_slots::advance(s, slot, *to))
                    .await
                    .map_err(|_| anyhow!("advance did not finish within 5 s"))??;
            }
            SlotAction::Drop { slot, reason } => self.drop_slot(local, slot, reason).await?,
            SlotAction::ContinuityBreak { slot, last_published } => self.record_break(slot, *last_published),
        }
        Ok(())
    }
}

/// What one cycle's plan collects while it runs: when it started (the creation budget), the creations left for
/// the next cycle, the logical copies to make together (slot, database, plugin), and one session per database
/// for the slots it creates.
struct Batch {
    started: Instant,
    deferred: usize,
    copies: Vec<(String, String, String)>,
    sessions: BTreeMap<String, Session>,
}

impl SlotManager {
    /// Makes the copies with the technique for this node's major (`keel_core::slots::online_copy`): created on a
    /// 16+ standby without a restart, by file copy and restart otherwise and for creations that fell back.
    async fn copy_all(&mut self, copies: Vec<(String, String, String)>, local: &mut Local, l: &Member, now: Millis) {
        let by_file = match copy_technique(local.bins.major) {
            CopyTechnique::FileAndRestart => copies,
            CopyTechnique::CreateOnStandby => match self.create_on_standby(&copies, local, l, now).await {
                Ok(rest) => rest,
                Err(e) => {
                    warn!("creating logical slot copies on this standby failed: {e:#}; trying again later");
                    Vec::new()
                }
            },
        };
        if by_file.is_empty() {
            return;
        }
        if let Err(e) = self.copy_logical(&by_file, local, l, now).await {
            warn!("copying logical slots from {} failed: {e:#}", l.name);
        }
    }
}

pub(super) fn to_actual(s: &PgSlot) -> ActualSlot {
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
