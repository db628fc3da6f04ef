//! Copying logical slots from the leader to this replica: each slot's state file is read on the leader
//! (`pg_read_binary_file`, over the `postgres` database where the rewind role may run it), validated for this
//! node's major
//! (`keel_core::slotfile`), and all copies of a cycle are installed in one stop/start of PostgreSQL
//! (`crate::postgres::slot_file`). A slot whose `restart_lsn` on the leader needs WAL this node no longer has is not copied:
//! such a copy could never advance, and copying it again and again would restart PostgreSQL in a loop.

use anyhow::{anyhow, Context, Result};
use keel_core::lsn::Lsn;
use keel_core::slotfile::Expectation;
use keel_core::slots::copycheck::SlotPositions;
use keel_core::slots::readiness::{ReadinessEvent, SlotReadiness};
use keel_core::slots::recopy::{copy_source, CopySource, SourceSlot};
use keel_core::time::Millis;
use keel_core::view::Member;
use tracing::{info, warn};

use super::{checks, SlotManager, COPY_QUERY_TIMEOUT};
use crate::agent::local::Local;
use crate::postgres::observe;
use crate::postgres::replication_slots::{self as pg_slots, PgSlot};

impl SlotManager {
    /// Reads every slot's state file from the leader over a connection to the slot's database, validates them for
    /// this node's PostgreSQL, then installs them all in one stop/start of PostgreSQL. A slot whose `restart_lsn`
    /// on the leader needs WAL this node no longer has is not copied (the copy could never advance).
    pub(super) async fn copy_logical(
        &mut self,
        copies: &[(String, String, String)],
        local: &mut Local,
        leader: &Member,
        now: Millis,
    ) -> Result<()> {
        let oldest = checks::oldest_wal(local).await;
        // The `postgres` database: the rewind role's EXECUTE grant on pg_read_binary_file is given there (function
        // grants are per database), and pg_replication_slots lists every database's slots.
        let params = local.leader_params(leader, local.database())?;
        let session = observe::connect(&params, COPY_QUERY_TIMEOUT).await?;
        let on_leader = pg_slots::list(&session).await?;
        let mut files = Vec::new();
        for want in copies {
            let src = on_leader.iter().find(|s| s.name == want.0);
            if let Some(f) = self.source_file(&session, want, src, local.bins.major, oldest).await? {
                files.push(f);
            }
        }
        if files.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = files.iter().map(|(n, _, _)| n.as_str()).collect();
        info!("copying logical slots {names:?} from {} (PostgreSQL restarts once)", leader.name);
        let installed = local.install_slot_files(&files).await;
        for (name, _, _) in &files {
            let h = self.recopies.entry(name.clone()).or_default();
            h.attempts += 1;
            h.last = Some(now);
        }
        installed?;
        let mut progress = self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, _, _) in &files {
            self.readiness.insert(name.clone(), SlotReadiness::MISSING);
            self.events.insert(name.clone(), ReadinessEvent::Copied);
            self.made_here.insert(name.clone());
            self.online_start.remove(name);
        }
        for (name, bytes, expectation) in &files {
            // The copy's own position, as the leader had persisted it: validated once more, it cannot fail here.
            match keel_core::slotfile::validate(bytes, expectation) {
                Ok(f) => self.copied_at.insert(name.clone(), f.confirmed_flush),
                Err(_) => self.copied_at.remove(name),
            };
            self.rebuilt.remove(name);
            self.last_advances.remove(name);
            // Failures of the replaced copy say nothing about the new one.
            progress.remove(name);
        }
        Ok(())
    }

    /// The validated state file of the leader's slot `src`, or `None` (logged) when it must not be copied
    /// (`keel_core::slots::recopy::copy_source` decides).
    async fn source_file(
        &self,
        session: &observe::Session,
        (slot, database, plugin): &(String, String, String),
        src: Option<&PgSlot>,
        major: u32,
        oldest: Option<Lsn>,
    ) -> Result<Option<(String, Vec<u8>, Expectation)>> {
        let source = src.map(|s| SourceSlot {
            database: s.database.as_deref(),
            plugin: s.plugin.as_deref(),
            positions: SlotPositions { restart_lsn: s.restart_lsn, confirmed_flush_lsn: s.confirmed_flush_lsn },
        });
        let src = match (copy_source(source.as_ref(), database, plugin, oldest), src) {
            (CopySource::Copy, Some(src)) => src,
            (CopySource::Copy | CopySource::NotOnLeader, _) => {
                warn!("logical slot {slot} does not exist on the leader yet; will copy it later");
                return Ok(None);
            }
            (CopySource::Mismatch, _) => {
                warn!("logical slot {slot} on the leader does not match the configuration; not copying it");
                return Ok(None);
            }
            (CopySource::Blocked(problem), _) => {
                if self.problems.get(slot) != Some(&problem) {
                    warn!("not copying logical slot {slot}: {problem}");
                }
                return Ok(None);
            }
            (CopySource::NothingToCopy, _) => {
                warn!("logical slot {slot} on the leader has no restart_lsn; not copying it");
                return Ok(None);
            }
        };
        let oid = src.datoid.ok_or_else(|| anyhow!("slot {slot} has no database oid on the leader"))?;
        let bytes = pg_slots::read_state_file(session, slot).await.with_context(|| format!("reading {slot}"))?;
        let expectation =
            Expectation { major, slot_name: slot.to_string(), database_oid: oid, plugin: plugin.to_string() };
        match keel_core::slotfile::validate(&bytes, &expectation) {
            Ok(_) => Ok(Some((slot.to_string(), bytes, expectation))),
            Err(e) => {
                warn!("refusing to copy logical slot {slot}: {e}");
                Ok(None)
            }
        }
    }
}
