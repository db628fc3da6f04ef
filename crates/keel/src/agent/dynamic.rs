//! The dynamic configuration in the agent: the effective configuration (store or `bootstrap.dcs`, with the local
//! `postgresql` section laid over it), its check against the schema, and synchronous mode on the leader.

use anyhow::{bail, Result};
use tracing::{error, info, warn};

use super::runtime::{Agent, Fatal};
use crate::config;
use crate::dcs::KvBackend;

impl<B: KvBackend> Agent<B> {
    /// Synchronous mode on the leader: write the `sync` key, then set `synchronous_standby_names` (in that
    /// order; see `keel_core::sync`). Anywhere else the parameter is left empty.
    pub(super) async fn manage_sync(&mut self, is_primary: bool) {
        let cfg = self.dynamic_config();
        if cfg.synchronous_mode == keel_core::dynconfig::SynchronousMode::Quorum {
            error!(
                "synchronous_mode is quorum in the dynamic configuration, which Keel does not implement: \
                 synchronous_standby_names is not managed and no replica is promoted automatically (running it as \
                 FIRST n could lose acknowledged commits). Set synchronous_mode to on or off with keel edit-config"
            );
        }
        let plan = match (&self.last_obs, self.exec.holds_leader && is_primary) {
            (Some(obs), true) => {
                let standbys: Vec<keel_core::sync::StandbyConn> = obs
                    .replication
                    .iter()
                    .map(|r| keel_core::sync::StandbyConn {
                        name: r.application_name.clone(),
                        streaming: r.state.as_deref() == Some("streaming"),
                        is_sync: matches!(r.sync_state.as_deref(), Some("sync") | Some("quorum")),
                        flush_lsn: r.flush_lsn,
                    })
                    .collect();
                keel_core::sync::plan(&self.cfg.name, &self.view, &cfg, &standbys, obs.wal_flush_lsn)
            }
            _ => None,
        };
        let Some(plan) = plan else {
            self.local.synchronous_standby_names = None;
            return;
        };
        if let Some((key, version)) = &plan.write_key {
            match self.store.set_sync(key, Some(version.unwrap_or(0))).await {
                Ok(true) => info!("sync key now lists {:?}", key.sync_standby),
                Ok(false) => {
                    warn!("the sync key changed under us; retrying next cycle");
                    return;
                }
                Err(e) => {
                    warn!("cannot write the sync key: {e}");
                    return;
                }
            }
        }
        if self.local.synchronous_standby_names.as_deref() != Some(plan.standby_names.as_str()) {
            info!("setting synchronous_standby_names to '{}'", plan.standby_names);
            self.local.synchronous_standby_names = Some(plan.standby_names);
        }
    }

    /// The effective dynamic configuration (`keel_core::dynconfig::DynamicConfig::effective`: the store's, or
    /// `bootstrap.dcs` until the store has one, with the local `postgresql` settings laid over it).
    pub(super) fn dynamic_config(&self) -> keel_core::dynconfig::DynamicConfig {
        let stored = self.view.readable_config(self.last_good_config.as_ref());
        keel_core::dynconfig::DynamicConfig::effective(stored, &self.bootstrap_dcs, &self.local_pg)
    }

    /// Checks the store's `config` key against the schema each time it changes: refused settings (written by
    /// Patroni, or around `keel edit-config`) are logged as errors naming each one. A `standby_cluster` stops the
    /// agent: Keel would promote the standby leader and split the clusters. `synchronous_mode: quorum` is made
    /// safe by the core (see `manage_sync`).
    pub(super) fn check_store_config(&mut self) -> Result<()> {
        let Some(c) = &self.view.config else { return Ok(()) };
        if self.checked_config == Some(c.version) {
            return Ok(());
        }
        self.checked_config = Some(c.version);
        let raw = &c.value.raw;
        match config::dynamic::check(raw) {
            Ok(warnings) => warnings.iter().for_each(|w| warn!("{w}")),
            Err(e) => error!("the store's configuration holds settings Keel does not run: {e}"),
        }
        if raw.get("standby_cluster").is_some_and(|v| !v.is_null()) {
            bail!(Fatal(
                "the dynamic configuration has standby_cluster, which Keel does not implement (it would promote \
                 this standby cluster's leader); keep running Patroni on this cluster"
                    .into()
            ));
        }
        Ok(())
    }
}
