//! The PostgreSQL half of a divergence check: reading the facts ([`DivergenceFacts`]), running pg_rewind, and
//! emptying the data directory. What to do with the facts is `keel_core::divergence`'s decision, carried out by
//! `keel_core::exec`.

use anyhow::{anyhow, Context, Result};
use keel_core::divergence::{DivergenceFacts, LocalEnd};
use keel_core::exec::RewindResult;
use keel_core::lsn::Lsn;
use keel_core::view::Member;
use tracing::info;

use super::{Local, BASEBACKUP_TIMEOUT, QUERY_TIMEOUT};
use crate::postgres::datadir;
use crate::postgres::observe;
use crate::postgres::pg_ctl::{RewindOutcome, StopMode};

impl Local {
    /// Reads our end of WAL and the leader's timeline and history. An error: the leader cannot be asked at all.
    /// A fact that cannot be read is `None` (unknown), never a default.
    pub async fn divergence_facts(&mut self, leader: &Member) -> Result<DivergenceFacts> {
        let su = self.member_params(leader, &self.superuser)?;
        let remote = observe::connect(&su, QUERY_TIMEOUT).await.context("connecting to the leader")?;
        let leader_timeline = Self::leader_timeline(&remote).await?;
        let local = self.local_end().await?;
        let leader_history = match (leader_timeline, local.timeline) {
            (Some(theirs), Some(ours)) if ours < theirs => Self::history_file(&remote, theirs).await.ok(),
            _ => None,
        };
        Ok(DivergenceFacts { local, leader_timeline, leader_history })
    }

    /// The leader's current timeline; `None` while it is still in recovery.
    async fn leader_timeline(remote: &observe::Session) -> Result<Option<u32>> {
        let rows = remote
            .query(
                "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int \
                 WHERE NOT pg_is_in_recovery()",
                &[],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let tl: i32 = row.try_get(0).context("reading the leader's timeline")?;
        Ok(u32::try_from(tl).ok().filter(|t| *t > 0))
    }

    /// Where our WAL ends: from the running server, or from `pg_controldata` when it is stopped.
    async fn local_end(&mut self) -> Result<LocalEnd> {
        if self.ctl.is_running() {
            let o = self.session().await?.observe().await?;
            let lsn = if o.in_recovery { o.replay_lsn } else { o.wal_flush_lsn };
            return Ok(LocalEnd { timeline: o.timeline, lsn, clean: o.in_recovery });
        }
        let cd = datadir::controldata(&self.data_dir, &self.bins, &self.run_as).await?;
        Ok(LocalEnd {
            timeline: Some(cd.timeline).filter(|t| *t > 0),
            lsn: Some(cd.checkpoint_lsn.max(cd.min_recovery_end_lsn)),
            clean: cd.cluster_state.is_clean_shutdown(),
        })
    }

    /// The (parent timeline, switchpoint) lines of `tl`'s history file on `remote`, oldest first.
    pub(super) async fn history_file(remote: &observe::Session, tl: u32) -> Result<Vec<(u32, Lsn)>> {
        let file = format!("pg_wal/{tl:08X}.history");
        let rows = remote.query("SELECT convert_from(pg_read_binary_file($1), 'UTF8')", &[&file]).await?;
        let row = rows.first().ok_or_else(|| anyhow!("{file} returned no row"))?;
        let text: String = row.try_get(0).with_context(|| format!("reading {file}"))?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
            })
            .collect())
    }

    /// Runs pg_rewind from `leader` after a clean shutdown (crash recovery first if needed), then writes our
    /// configuration back as a replica of the leader.
    pub async fn rewind(&mut self, leader: &Member) -> Result<RewindResult> {
        if self.ctl.is_running() {
            self.stop_pg(StopMode::Fast, false).await?;
        }
        let cd = datadir::controldata(&self.data_dir, &self.bins, &self.run_as).await?;
        if !cd.cluster_state.is_clean_shutdown() {
            // pg_rewind (13+) finishes crash recovery itself in single-user mode: no connection can reach the
            // server meanwhile, and there is no start and stop to wait for. Single-user mode refuses standby mode,
            // so the recovery settings go first; they are written again after the rewind.
            info!("not shut down cleanly: pg_rewind runs crash recovery first (single-user mode)");
            self.write_conf(None)?;
        }
        let params = self.with_pgpass(self.member_params(leader, &self.rewind)?)?;
        info!("running pg_rewind from {}", leader.name);
        match self.ctl.rewind(&params, BASEBACKUP_TIMEOUT).await? {
            RewindOutcome::Done | RewindOutcome::NotNeeded => {
                // Even "not needed" ran against a diverged timeline: the slots here are from before it.
                self.rebuilt = Some(keel_core::slots::copycheck::Rebuild::Rewind);
                // pg_rewind copied the leader's configuration files: write ours back, as a replica of the leader.
                // The action after this check starts (or re-points) PostgreSQL.
                let recovery = self.recovery_for(Some(leader))?;
                self.write_conf(Some(recovery))?;
                self.following = Some(leader.name.clone());
                Ok(RewindResult::Done)
            }
            RewindOutcome::Impossible { reason } => Ok(RewindResult::Impossible { detail: reason }),
        }
    }

    /// Stops PostgreSQL (immediately) and empties the data directory. Only the executor's `WipeDataDir` calls it.
    pub async fn wipe_data_dir(&mut self) -> Result<()> {
        if self.ctl.is_running() {
            self.stop_pg(StopMode::Immediate, false).await?;
        }
        if self.data_dir.exists() {
            let entries = std::fs::read_dir(&self.data_dir)
                .with_context(|| format!("listing the data directory {}", self.data_dir.display()))?;
            for entry in entries {
                let p = entry.with_context(|| format!("listing {}", self.data_dir.display()))?.path();
                let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                removed.with_context(|| format!("removing {}", p.display()))?;
            }
        }
        self.following = None;
        Ok(())
    }
}
