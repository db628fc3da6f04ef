//! The local PostgreSQL as the agent drives it: observation for the core, and the PostgreSQL half of each action
//! (bootstrap, clone, start, promote, demote, follow, rewind).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use keel_core::dynconfig::{DynamicConfig, SynchronousMode};
use keel_core::ha::DemoteMode;
use keel_core::pgconfig::PgSettings;
use keel_core::time::Millis;
use keel_core::timeline_history::Promotion;
use keel_core::view::{ClusterView, Member};
use tracing::{info, warn};

mod config_files;
mod rewind;
mod sessions;

use super::pgauth::{pgpass_text, Cred, Pgpass};
use crate::config::Config;
use crate::postgres::bins::PgBinaries;
use crate::postgres::conf::{self, ServerConf};
use crate::postgres::observe;
use crate::postgres::pg_ctl::{InitdbOption, InitdbParams, PgCtl, StopMode};
use crate::postgres::process::RunAs;
use crate::postgres::roles::{self, RoleKind, RoleSpec};

/// Generous limits for the slow PostgreSQL operations (`pg_ctl start`/`stop`/`restart` use `pg_ctl_timeout`).
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(120);
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(3600);
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an immediate stop may take before the postmaster's process group is killed.
const IMMEDIATE_STOP_GRACE: Duration = Duration::from_secs(10);

/// The local node's PostgreSQL.
pub struct Local {
    pub ctl: PgCtl,
    pub bins: PgBinaries,
    run_as: RunAs,
    data_dir: PathBuf,
    name: String,
    listen_host: String,
    /// `listen_addresses` from `postgresql.listen`.
    listen_addresses: String,
    port: u16,
    superuser: Cred,
    replication: Cred,
    rewind: Cred,
    local_params: serde_json::Map<String, serde_json::Value>,
    /// The `postgresql` settings in effect (local file over dynamic configuration): pg_hba, pg_ident,
    /// pg_ctl_timeout, remove_data_directory_*.
    settings: PgSettings,
    /// `primary_stop_timeout` when synchronous mode is on (Patroni applies it only then).
    kill_after: Option<Duration>,
    /// `postgresql.database`: the database of the agent's own connections.
    database: String,
    pgpass: Option<Pgpass>,
    initdb: Vec<serde_json::Value>,
    use_slots: bool,
    /// The member `primary_conninfo` points at, as last written by this agent (`None` after start-up).
    pub following: Option<String>,
    /// When PostgreSQL was last seen stopped after running (for `primary_start_timeout`).
    down_since: Option<Millis>,
    session: Option<observe::Session>,
    /// The dynamic `postgresql.parameters` last applied.
    dynamic_params: serde_json::Map<String, serde_json::Value>,
    /// The configuration last written to `postgresql.conf` (`None` before the first write of this agent).
    written: Option<ServerConf>,
    /// Parameters PostgreSQL reports as waiting for a restart.
    pub pending_restart: Vec<String>,
    /// `synchronous_standby_names` as the leader's synchronous-mode plan wants it (`None`: not managed).
    pub synchronous_standby_names: Option<String>,
    /// `hot_standby_feedback` forced on for logical slots.
    force_hsf: bool,
    /// Native failover slots (17+): `sync_replication_slots = on` (reloadable; PostgreSQL ignores it on a primary).
    slot_sync: bool,
    /// `postgresql.conf`/`pg_hba.conf`/`pg_ident.conf` must be written again even if the parameters did not change.
    rewrite_conf: bool,
    /// Set when pg_rewind or pg_basebackup rebuilt the data directory; the slot manager takes it and treats every
    /// logical slot found afterwards as stale (pg_rewind keeps `pg_replslot` from before the rewind).
    pub rebuilt: Option<keel_core::slots::copycheck::Rebuild>,
}

/// Host and port of a `postgres://host:port/...` URL.
pub fn host_port(conn_url: &str) -> Option<(String, u16)> {
    let rest = conn_url.split_once("://").map(|(_, r)| r).unwrap_or(conn_url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let hostport = rest.split(['/', '?']).next()?;
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    Some((host.trim_matches(['[', ']']).to_string(), port.parse().ok()?))
}

fn to_string_param(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
        other => other.to_string(),
    }
}

impl Local {
    pub fn new(cfg: &Config) -> Result<Local> {
        let bins = PgBinaries::find(cfg.postgresql.bin_dir.as_deref().map(std::path::Path::new))?;
        let run_as = RunAs::current();
        let data_dir = PathBuf::from(&cfg.postgresql.data_dir);
        let (listen, port) = conf::parse_listen(&cfg.postgresql.listen)?;
        let first = listen.split(',').next().unwrap_or("127.0.0.1").trim();
        let listen_host = match first {
            "*" | "0.0.0.0" | "" => "127.0.0.1".to_string(),
            "::" => "::1".to_string(),
            h => h.to_string(),
        };
        let auth = &cfg.postgresql.authentication;
        let initdb = cfg.bootstrap.initdb.clone();
        let superuser = Cred::from(auth.superuser.as_ref(), "postgres");
        let replication = Cred::from(auth.replication.as_ref(), "replicator");
        let rewind = Cred::from(auth.rewind.as_ref().or(auth.superuser.as_ref()), "postgres");
        let pgpass =
            cfg.postgresql.pgpass.as_ref().filter(|p| !p.is_empty()).map(|path| Pgpass {
                path: PathBuf::from(path),
                text: pgpass_text(&[&replication, &rewind, &superuser]),
            });
        // Until the store's configuration is read: bootstrap.dcs under the local settings.
        let dynamic = DynamicConfig::from_value(cfg.bootstrap.dcs.clone())
            .with_local_postgresql(&cfg.postgresql.dynamic_overrides());
        Ok(Local {
            ctl: PgCtl::new(bins.clone(), run_as.clone(), data_dir.clone()),
            bins,
            run_as,
            data_dir,
            name: cfg.name.clone(),
            listen_host,
            listen_addresses: listen.clone(),
            port,
            superuser,
            replication,
            rewind,
            local_params: cfg.postgresql.parameters.clone(),
            settings: dynamic.postgresql.clone(),
            kill_after: None,
            database: cfg.postgresql.database().to_string(),
            pgpass,
            initdb,
            use_slots: true,
            following: None,
            down_since: None,
            session: None,
            dynamic_params: serde_json::Map::new(),
            written: None,
            pending_restart: Vec::new(),
            synchronous_standby_names: None,
            force_hsf: false,
            slot_sync: false,
            rewrite_conf: false,
            rebuilt: None,
        })
    }

    /// Applies the effective dynamic configuration (the store's, with the local `postgresql` section laid over
    /// it): parameters, pg_hba and pg_ident are written when the config files are next written.
    pub fn set_dynamic(&mut self, cfg: &DynamicConfig) {
        self.use_slots = cfg.use_slots;
        self.dynamic_params = cfg.pg_parameters();
        if self.settings.pg_hba != cfg.postgresql.pg_hba || self.settings.pg_ident != cfg.postgresql.pg_ident {
            self.rewrite_conf = true;
        }
        self.settings = cfg.postgresql.clone();
        let sync = cfg.synchronous_mode != SynchronousMode::Off;
        self.kill_after = (sync && cfg.primary_stop_timeout > 0).then(|| Duration::from_secs(cfg.primary_stop_timeout));
    }

    /// `pg_ctl_timeout`: the deadline of `pg_ctl start`, `stop` and `restart`.
    fn pg_ctl_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.pg_ctl_timeout.max(1))
    }

    /// Stops PostgreSQL within `pg_ctl_timeout`; a running primary in synchronous mode is killed after
    /// `primary_stop_timeout` (Patroni's rule).
    async fn stop_pg(&mut self, mode: StopMode, primary: bool) -> Result<()> {
        self.session = None;
        let kill_after = if primary { self.kill_after } else { None };
        self.ctl.stop_or_kill(mode, self.pg_ctl_timeout(), kill_after).await?;
        Ok(())
    }

    /// The database of the agent's own connections (`postgresql.database`, default `postgres`).
    pub fn database(&self) -> &str {
        &self.database
    }

    async fn start(&mut self) -> Result<()> {
        self.session = None;
        self.ctl.start(true, self.pg_ctl_timeout()).await?;
        Ok(())
    }

    /// initdb, configuration, start as a primary, then the roles from `postgresql.authentication`.
    pub async fn bootstrap(&mut self) -> Result<()> {
        let options = self
            .initdb
            .iter()
            .map(InitdbOption::from_json)
            .collect::<std::result::Result<Vec<_>, _>>()
            .context("bootstrap.initdb")?;
        let params = InitdbParams {
            superuser: self.superuser.user.clone(),
            superuser_password: self.superuser.password.clone(),
            options,
        };
        info!("bootstrapping a new cluster with initdb in {}", self.data_dir.display());
        self.ctl.initdb(&params, Duration::from_secs(600)).await?;
        self.write_conf(None)?;
        self.start().await?;
        let specs = [
            RoleSpec {
                name: self.replication.user.clone(),
                password: self.replication.password.clone(),
                kind: RoleKind::Replication,
            },
            RoleSpec { name: self.rewind.user.clone(), password: self.rewind.password.clone(), kind: RoleKind::Rewind },
        ];
        let session = self.session().await?;
        for spec in specs.iter().filter(|s| s.name != params.superuser) {
            roles::ensure_role(session, spec).await.with_context(|| format!("creating role {}", spec.name))?;
        }
        Ok(())
    }

    /// pg_basebackup from `source`, then start as its replica.
    pub async fn create_replica(&mut self, source: &Member, leader: Option<&Member>) -> Result<()> {
        let params = self.with_pgpass(self.member_params(source, &self.replication)?)?;
        info!("creating a replica from {} with pg_basebackup", source.name);
        self.ctl.basebackup(&params, BASEBACKUP_TIMEOUT).await?;
        self.rebuilt = Some(keel_core::slots::copycheck::Rebuild::Reclone);
        let upstream = leader.unwrap_or(source);
        let recovery = self.recovery_for(Some(upstream))?;
        self.write_conf(Some(recovery))?;
        self.following = Some(upstream.name.clone());
        self.start().await
    }

    /// Starts in recovery, streaming from `upstream` when given.
    pub async fn start_replica(&mut self, upstream: Option<&Member>) -> Result<()> {
        let recovery = self.recovery_for(upstream)?;
        self.write_conf(Some(recovery))?;
        self.following = upstream.map(|m| m.name.clone());
        self.start().await
    }

    /// Points `primary_conninfo` at `upstream` and reloads (PostgreSQL 13+ applies it without a restart).
    pub async fn follow(&mut self, upstream: &Member) -> Result<()> {
        let recovery = self.recovery_for(Some(upstream))?;
        self.write_conf(Some(recovery))?;
        self.following = Some(upstream.name.clone());
        if self.ctl.is_running() {
            self.ctl.reload(QUERY_TIMEOUT).await?;
        } else {
            self.start().await?;
        }
        Ok(())
    }

    /// `pg_ctl promote`, then a CHECKPOINT so that pg_rewind on the old primary sees the new timeline.
    /// Returns where the old timeline ended (for `history`), as far as it could be read.
    pub async fn promote(&mut self) -> Result<Promotion> {
        let before = match self.session().await {
            Ok(s) => s.observe().await.ok(),
            Err(_) => None,
        };
        self.ctl.promote(true, PROMOTE_TIMEOUT).await?;
        // Keel owns postgresql.conf: drop the recovery settings so a restart does not re-enter recovery.
        self.write_conf(None)?;
        self.following = None;
        let session = self.session().await?;
        if let Err(e) = session.checkpoint().await {
            warn!("CHECKPOINT after promote failed: {e}");
        }
        // The new timeline's history file ends with the line "parent timeline, switchpoint": the exact end of the old
        // timeline here. The timeline and replay position read before promoting are the fallback: a replica's
        // reported timeline can be an older one (its last restartpoint's), and replay can trail the switchpoint.
        let new_tl = match session.observe().await {
            Ok(o) => o.timeline,
            Err(e) => {
                warn!("cannot read the timeline after promote: {e}");
                None
            }
        };
        let switched = match new_tl {
            Some(tl) => match Self::history_file(session, tl).await {
                Ok(lines) => lines.last().copied(),
                Err(e) => {
                    warn!("cannot read timeline {tl}'s history file: {e:#}");
                    None
                }
            },
            None => None,
        };
        Ok(match switched {
            Some((tl, lsn)) => Promotion { old_timeline: Some(tl), switched_at: Some(lsn) },
            None => Promotion {
                old_timeline: before.as_ref().and_then(|o| o.timeline),
                switched_at: before.and_then(|o| o.replay_lsn),
            },
        })
    }

    /// Steps down. `Graceful`: CHECKPOINT and a fast shutdown (walsenders send the shutdown checkpoint to the
    /// replicas before exiting), `ImmediateNoLock`: immediate stop; both restart in recovery without upstream.
    /// `Offline`: fast stop, then read-only without upstream until the store is back.
    pub async fn demote(&mut self, mode: DemoteMode) -> Result<()> {
        match mode {
            DemoteMode::Graceful => {
                if let Ok(s) = self.session().await {
                    if let Err(e) = s.checkpoint().await {
                        warn!("CHECKPOINT before switchover failed: {e}");
                    }
                }
                self.stop_pg(StopMode::Fast, true).await?;
                self.start_replica(None).await
            }
            DemoteMode::ImmediateNoLock => {
                // A server that ignores even an immediate stop (frozen, a stalled disk) is killed: the key is
                // being given up, and nothing may keep accepting writes here.
                self.session = None;
                self.ctl.stop_or_kill(StopMode::Immediate, self.pg_ctl_timeout(), Some(IMMEDIATE_STOP_GRACE)).await?;
                self.start_replica(None).await
            }
            DemoteMode::Offline => {
                self.stop_pg(StopMode::Fast, true).await?;
                self.start_replica(None).await
            }
        }
    }

    /// Installs validated logical slot state files: stops PostgreSQL (fast), writes every file atomically, starts
    /// PostgreSQL again with the same configuration.
    pub async fn install_slot_files(
        &mut self,
        files: &[(String, Vec<u8>, keel_core::slotfile::Expectation)],
    ) -> Result<()> {
        let owner = self.run_as.owner().ok();
        self.stop_pg(StopMode::Fast, false).await?;
        let mut result = Ok(());
        for (name, bytes, expectation) in files {
            if let Err(e) =
                crate::postgres::slot_file::write_slot_file(&self.data_dir, name, bytes, expectation, owner, true)
            {
                result = Err(anyhow!(e).context(format!("installing logical slot {name}")));
                break;
            }
        }
        self.start().await?;
        result
    }

    /// Restarts PostgreSQL with a fast shutdown, keeping its current configuration.
    pub async fn restart(&mut self) -> Result<()> {
        self.session = None;
        self.ctl.restart(StopMode::Fast, self.pg_ctl_timeout()).await?;
        Ok(())
    }

    /// Stops PostgreSQL (fast) for a clean agent shutdown; `primary`: it runs as the primary (for
    /// `primary_stop_timeout`).
    pub async fn stop(&mut self, primary: bool) -> Result<()> {
        self.stop_pg(StopMode::Fast, primary).await
    }

    /// Stops PostgreSQL immediately (after a fast stop failed, at shutdown).
    pub async fn stop_immediately(&mut self) -> Result<()> {
        self.stop_pg(StopMode::Immediate, false).await
    }
}

/// The view's member entry for `name`.
pub fn member<'a>(view: &'a ClusterView, name: &str) -> Result<&'a Member> {
    view.members.get(name).ok_or_else(|| anyhow!("member {name} is not in the store"))
}
