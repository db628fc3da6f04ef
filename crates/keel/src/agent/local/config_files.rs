//! The local PostgreSQL's configuration as the agent writes it: `postgresql.conf` (parameters, recovery settings,
//! `synchronous_standby_names`), connection parameters to other members, and applying changes by reload.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};
use keel_core::view::Member;
use tracing::info;

use super::{host_port, to_string_param, Local, QUERY_TIMEOUT};
use crate::agent::pgauth::Cred;
use crate::config::Config;
use crate::postgres::conf::{self, RecoveryConf, ServerConf};
use crate::postgres::ConnParams;

impl Local {
    pub(super) fn server_conf(&self, recovery: Option<RecoveryConf>) -> ServerConf {
        let mut sc = ServerConf::new(self.listen_addresses.clone(), self.port);
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in self.dynamic_params.iter().chain(self.local_params.iter()) {
            params.insert(k.clone(), to_string_param(v));
        }
        if let Some(wl) = params.remove("wal_level") {
            if wl == "logical" {
                sc.wal_level = conf::WalLevel::Logical;
            }
        }
        if let Some(n) = params.remove("max_wal_senders").and_then(|v| v.parse().ok()) {
            sc.max_wal_senders = n;
        }
        if let Some(n) = params.remove("max_replication_slots").and_then(|v| v.parse().ok()) {
            sc.max_replication_slots = n;
        }
        if let Some(v) = params.remove("hot_standby_feedback") {
            sc.hot_standby_feedback = matches!(v.as_str(), "on" | "true" | "1" | "yes");
        }
        sc.hot_standby_feedback |= self.force_hsf || self.slot_sync;
        if self.slot_sync {
            params.insert("sync_replication_slots".into(), "on".into());
        }
        if let Some(ssn) = &self.synchronous_standby_names {
            params.insert("synchronous_standby_names".into(), ssn.clone());
        }
        sc.parameters = params;
        sc.recovery = recovery;
        sc
    }

    /// Connection to another member, from its `conn_url`, with the given credentials.
    pub(super) fn member_params(&self, member: &Member, cred: &Cred) -> Result<ConnParams> {
        let url = member.conn_url.as_deref().ok_or_else(|| anyhow!("member {} has no conn_url", member.name))?;
        let (host, port) =
            host_port(url).ok_or_else(|| anyhow!("member {}: cannot read host and port from {url}", member.name))?;
        Ok(cred.params(&host, port, &self.database).with_application_name(self.name.clone()))
    }

    /// `params` reading their password from `postgresql.pgpass` when it is configured.
    pub(super) fn with_pgpass(&self, params: ConnParams) -> Result<ConnParams> {
        match &self.pgpass {
            Some(p) => p.apply(params, &self.run_as),
            None => Ok(params),
        }
    }

    pub(super) fn recovery_for(&self, upstream: Option<&Member>) -> Result<RecoveryConf> {
        let primary = match upstream {
            Some(m) => Some(self.with_pgpass(self.member_params(m, &self.replication)?)?),
            None => None,
        };
        let slot =
            (self.use_slots && upstream.is_some()).then(|| keel_core::slots::slot_name_from_member_name(&self.name));
        Ok(RecoveryConf { primary, primary_slot_name: slot })
    }

    pub(super) fn write_conf(&mut self, recovery: Option<RecoveryConf>) -> Result<()> {
        let sc = self.server_conf(recovery);
        let hba = self.settings.pg_hba.as_deref();
        conf::write_config(&self.data_dir, &sc, hba, &self.run_as).context("writing postgresql.conf")?;
        if let Some(lines) = &self.settings.pg_ident {
            conf::write_pg_ident(&self.data_dir, lines, &self.run_as).context("writing pg_ident.conf")?;
        }
        self.written = Some(sc);
        Ok(())
    }

    /// Re-writes `postgresql.conf` when the parameters changed (dynamic or local), reloads PostgreSQL, and
    /// records which changed parameters wait for a restart (`pending_restart`).
    /// `is_primary`: PostgreSQL runs out of recovery (a primary's configuration has no recovery settings, so
    /// it can be written even when this agent has not written one yet).
    pub async fn apply_parameters(&mut self, is_primary: bool) -> Result<()> {
        if !self.ctl.is_running() {
            return Ok(());
        }
        let (recovery, changed) = match &self.written {
            Some(w) => (w.recovery.clone(), self.rewrite_conf || self.server_conf(w.recovery.clone()) != *w),
            // Nothing written by this agent yet: a primary's configuration can be written without knowing more.
            None if is_primary => (None, true),
            None => return Ok(()),
        };
        if changed {
            self.rewrite_conf = false;
            info!("PostgreSQL parameters changed: rewriting postgresql.conf and reloading");
            self.write_conf(recovery)?;
            self.ctl.reload(QUERY_TIMEOUT).await?;
        }
        let session = self.session().await?;
        self.pending_restart = conf::pending_restart(&session.settings().await?);
        Ok(())
    }

    /// Sets `synchronous_standby_names` and reloads now (the configuration keeps the current recovery settings).
    pub async fn set_synchronous_standby_names_now(&mut self, names: &str) -> Result<()> {
        self.synchronous_standby_names = Some(names.to_string());
        let recovery = self.written.as_ref().and_then(|w| w.recovery.clone());
        self.write_conf(recovery)?;
        self.ctl.reload(QUERY_TIMEOUT).await?;
        Ok(())
    }

    /// `hot_standby_feedback` forced on (where this node or a cascade from it keeps logical slots), or left to the
    /// configuration.
    pub fn force_hot_standby_feedback(&mut self, force: bool) {
        self.force_hsf = force;
    }

    /// Native failover slots (17+): `sync_replication_slots` and `hot_standby_feedback` on. Both are reloadable,
    /// and `primary_conninfo` already names a database (`dbname`), as the slotsync worker needs.
    pub fn set_slot_sync(&mut self, on: bool) {
        self.slot_sync = on;
    }

    /// Takes the run-time changeable parts of a re-read configuration file; `apply_parameters` writes them.
    pub fn reload_local(&mut self, cfg: &Config) {
        // pg_hba and pg_ident arrive through `set_dynamic` (the agent lays the re-read local section over the
        // dynamic configuration).
        self.local_params = cfg.postgresql.parameters.clone();
        // Rewrite (and reload) on the next cycle even if only pg_hba changed.
        self.rewrite_conf = true;
    }
}
