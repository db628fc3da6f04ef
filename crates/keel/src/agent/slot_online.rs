//! Copies created on this standby without a restart (PostgreSQL 16+, `keel_core::slots::online_copy`): each
//! logical slot is created with `pg_create_logical_replication_slot` in its own database (several at once) while
//! the leader is asked for running-xacts records (`pg_log_standby_snapshot()`, once a second) so the creations find
//! their consistent point soon; each creation has a deadline. Where the creation fails with a SQLSTATE that a file copy avoids, the
//! slot is handed back for the file copy and restart, named in the log.

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use keel_core::lsn::Lsn;
use keel_core::slots::copycheck::SlotPositions;
use keel_core::slots::online_copy::{create_failed, start_point, CopyTechnique, CreateFailure, CreateRemedy};
use keel_core::slots::readiness::{ReadinessEvent, SlotReadiness};
use keel_core::slots::recopy::{copy_source, CopySource, SourceSlot};
use keel_core::time::Millis;
use keel_core::view::Member;
use tracing::{info, warn};

use super::{SlotManager, COPY_QUERY_TIMEOUT};
use crate::agent::local::Local;
use crate::postgres::observe::{self, PgError};
use crate::postgres::online_slots;
use crate::postgres::replication_slots::{self as pg_slots, PgSlot};

/// How long one creation may wait for its consistent point (the server cancels it then: 57014).
const CREATE_DEADLINE: Duration = Duration::from_secs(10);
/// Creations under way at once (each holds a connection to this standby).
const CONCURRENT_CREATES: usize = 8;
/// How often the leader is asked for a running-xacts record while a creation waits.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// A copy to make: slot, database, plugin.
type Wanted = (String, String, String);

impl SlotManager {
    /// Creates each copy on this standby; returns those to copy by file instead (their creation failed with a
    /// cause a file copy avoids).
    pub(super) async fn create_on_standby(
        &mut self,
        copies: &[Wanted],
        local: &mut Local,
        leader: &Member,
        now: Millis,
    ) -> Result<Vec<Wanted>> {
        let leader_session = local.leader_session(leader, local.database()).await?;
        let on_leader = pg_slots::list(&leader_session).await?;
        let wanted: Vec<&Wanted> =
            copies.iter().filter(|w| source_ok(w, on_leader.iter().find(|s| s.name == w.0))).collect();
        for w in &wanted {
            let h = self.recopies.entry(w.0.clone()).or_default();
            h.attempts += 1;
            h.last = Some(now);
        }
        let results = create_all(local, &leader_session, &wanted).await;
        let mut by_file = Vec::new();
        for (want, result) in wanted.into_iter().zip(results) {
            let (slot, db) = (&want.0, &want.1);
            let failure = match result {
                Ok(lsn) => {
                    self.created(slot, lsn, on_leader.iter().find(|s| &s.name == slot));
                    continue;
                }
                Err(failure) => failure,
            };
            match create_failed(&failure) {
                CreateRemedy::FallBackToFileCopy => {
                    warn!(
                        "creating logical slot {slot} on this standby in {db} failed: {failure}; falling back to the \
                         {} (PostgreSQL restarts)",
                        CopyTechnique::FileAndRestart
                    );
                    by_file.push(want.clone());
                }
                CreateRemedy::RetryLater => {
                    warn!("creating logical slot {slot} on this standby in {db} failed: {failure}; trying again later")
                }
            }
        }
        Ok(by_file)
    }

    /// Bookkeeping for a copy created here at `lsn`: readiness starts over, and the copy waits for the leader's
    /// consumer to confirm past its start.
    fn created(&mut self, slot: &str, lsn: Lsn, src: Option<&PgSlot>) {
        info!(
            "created logical slot {slot} on this standby at {lsn}, without a restart; it counts once the leader's \
             consumer has confirmed past it"
        );
        self.readiness.insert(slot.to_string(), SlotReadiness::MISSING);
        self.events.insert(slot.to_string(), ReadinessEvent::Copied);
        self.made_here.insert(slot.to_string());
        self.online_start.insert(slot.to_string(), start_point(Some(lsn), None));
        match src.and_then(|s| s.confirmed_flush_lsn) {
            Some(l) => self.copied_at.insert(slot.to_string(), l),
            None => self.copied_at.remove(slot),
        };
        self.rebuilt.remove(slot);
        self.last_advances.remove(slot);
        let mut progress = self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        progress.remove(slot);
    }
}

/// Whether the leader's slot may be copied (`copy_source`; this node's WAL does not matter: the copy starts at
/// this node's own replay position).
fn source_ok((slot, database, plugin): &Wanted, src: Option<&PgSlot>) -> bool {
    let source = src.map(|s| SourceSlot {
        database: s.database.as_deref(),
        plugin: s.plugin.as_deref(),
        positions: SlotPositions { restart_lsn: s.restart_lsn, confirmed_flush_lsn: s.confirmed_flush_lsn },
    });
    match copy_source(source.as_ref(), database, plugin, None) {
        CopySource::Copy => true,
        CopySource::Mismatch => {
            warn!("logical slot {slot} on the leader does not match the configuration; not copying it");
            false
        }
        _ => {
            warn!("logical slot {slot} does not exist on the leader yet (or has no position); will copy it later");
            false
        }
    }
}

/// Creates every copy on this standby, [`CONCURRENT_CREATES`] at a time (they all wait for the same running-xacts
/// record), while the leader writes one every [`SNAPSHOT_EVERY`]. The results are in the order of `wanted`.
async fn create_all(local: &Local, leader: &observe::Session, wanted: &[&Wanted]) -> Vec<Result<Lsn, CreateFailure>> {
    let creating = futures::stream::iter(wanted.iter().enumerate())
        .map(|(i, w)| async move { (i, create_one(local, w).await) })
        .buffer_unordered(CONCURRENT_CREATES)
        .collect::<Vec<_>>();
    tokio::pin!(creating);
    let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
    let mut refused = false;
    let mut done = loop {
        tokio::select! {
            done = &mut creating => break done,
            _ = tick.tick(), if !refused => {
                let asked = tokio::time::timeout(COPY_QUERY_TIMEOUT, online_slots::log_standby_snapshot(leader)).await;
                if let Ok(Err(e)) = asked {
                    // Without it, the creations wait for the leader's own running-xacts records (every 15 s).
                    warn!("pg_log_standby_snapshot() on the leader failed: {e}; creating slot copies may take longer");
                    refused = true;
                }
            }
        }
    };
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Creates one slot on this standby. The creation's session has `statement_timeout` = [`CREATE_DEADLINE`], so the
/// server cancels a creation that waits too long (and the client gives up shortly after).
async fn create_one(local: &Local, (slot, database, plugin): &Wanted) -> Result<Lsn, CreateFailure> {
    let mut params = local.local_params();
    params.dbname = database.clone();
    let session = observe::connect(&params, CREATE_DEADLINE).await.map_err(|e| failure(&e))?;
    session
        .within(format!("creating {slot}"), pg_slots::create_logical(&session, slot, plugin))
        .await
        .map_err(|e| failure(&e))
}

fn failure(e: &PgError) -> CreateFailure {
    CreateFailure::classify(e.sqlstate(), matches!(e, PgError::Timeout { .. }))
}
