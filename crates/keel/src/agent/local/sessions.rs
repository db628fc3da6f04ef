//! Sessions to PostgreSQL (the local server, a slot's database, the leader) and the per-cycle observation for the
//! core: what cannot be known is reported as unknown, never defaulted.

use anyhow::{anyhow, Result};
use keel_core::ha::{DataDir, PgObservation, PgRole, PgRunning};
use keel_core::time::Millis;
use keel_core::view::Member;
use tracing::{info, warn};

use super::{Local, QUERY_TIMEOUT};
use crate::postgres::datadir::{self, DataDirState};
use crate::postgres::observe::{self, Observation};
use crate::postgres::pg_ctl::PostmasterState;
use crate::postgres::ConnParams;

impl Local {
    pub(super) fn local_conn(&self) -> ConnParams {
        self.superuser.params(&self.listen_host, self.port, &self.database).with_application_name("keel")
    }

    pub(super) async fn session(&mut self) -> Result<&observe::Session> {
        let stale = self.session.as_ref().is_none_or(|s| s.is_closed());
        if stale {
            self.session = None;
            let s = observe::connect(&self.local_conn(), QUERY_TIMEOUT).await?;
            self.session = Some(s);
        }
        self.session.as_ref().ok_or_else(|| anyhow!("no session"))
    }

    /// Observes PostgreSQL for the core. Never fails: what cannot be known is reported as unknown.
    pub async fn observe(&mut self, now: Millis) -> (PgObservation, Option<Observation>) {
        let data_dir = match datadir::inspect(&self.data_dir, &self.bins, &self.run_as).await {
            Ok(DataDirState::Absent) | Ok(DataDirState::Empty) => DataDir::Empty,
            Ok(DataDirState::Initialized(info)) => {
                DataDir::Initialized { sysid: info.control.system_identifier.to_string() }
            }
            Ok(DataDirState::Invalid(why)) => {
                warn!("the data directory is not usable: {why}");
                DataDir::Invalid
            }
            Err(e) => {
                warn!("cannot inspect the data directory: {e}");
                DataDir::Unknown
            }
        };
        let state = self.ctl.postmaster_state();
        let running = matches!(state, PostmasterState::Running { .. });
        let obs = PgObservation {
            running: match state {
                PostmasterState::Running { .. } => PgRunning::Running,
                PostmasterState::Stopped => PgRunning::Stopped,
                PostmasterState::Unknown { .. } => PgRunning::Unknown,
            },
            starting: false,
            role: PgRole::Unknown,
            timeline: None,
            received_lsn: None,
            replayed_lsn: None,
            current_lsn: None,
            data_dir,
            following: self.following.clone(),
            down_since: None,
        };
        if let PostmasterState::Unknown { why } = &state {
            // Neither stopped nor running: nothing is started, stopped or decided from it this cycle.
            warn!("cannot tell whether PostgreSQL runs: {why}");
            self.session = None;
            return (obs, None);
        }
        if !running {
            return (self.observe_stopped(obs, now).await, None);
        }
        self.observe_running(obs, now).await
    }

    /// A stopped server: how long it has been down, and where its WAL ends (from `pg_controldata`).
    async fn observe_stopped(&mut self, mut obs: PgObservation, now: Millis) -> PgObservation {
        self.session = None;
        obs.down_since = Some(*self.down_since.get_or_insert(now));
        if let DataDir::Initialized { .. } = obs.data_dir {
            if let Ok(cd) = datadir::controldata(&self.data_dir, &self.bins, &self.run_as).await {
                obs.timeline = Some(cd.timeline);
                obs.current_lsn = Some(cd.checkpoint_lsn);
            }
        }
        obs
    }

    /// A running server: the per-cycle query, or "starting" while it does not answer.
    async fn observe_running(&mut self, mut obs: PgObservation, now: Millis) -> (PgObservation, Option<Observation>) {
        let observed = match self.session().await {
            Ok(s) => s.observe().await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match observed {
            Ok(o) => {
                self.down_since = None;
                obs.role = if o.in_recovery { PgRole::Replica } else { PgRole::Primary };
                obs.timeline = o.timeline;
                obs.received_lsn = o.receive_lsn;
                obs.replayed_lsn = o.replay_lsn;
                obs.current_lsn = o.wal_flush_lsn;
                if obs.data_dir == DataDir::Unknown {
                    obs.data_dir = DataDir::Initialized { sysid: o.system_identifier.to_string() };
                }
                (obs, Some(o))
            }
            Err(e) => {
                self.session = None;
                // The postmaster is up but does not answer: starting, in crash recovery, or shutting down.
                info!("PostgreSQL is running but not accepting connections yet: {e:#}");
                obs.starting = true;
                // Running but not serving counts towards primary_start_timeout like being down: a postmaster that
                // never becomes ready must not hold the leader key for ever.
                obs.down_since = Some(*self.down_since.get_or_insert(now));
                (obs, None)
            }
        }
    }

    /// The session to the local PostgreSQL (reconnecting when needed).
    pub async fn local_session(&mut self) -> Result<&observe::Session> {
        self.session().await
    }

    /// Connection parameters for the local PostgreSQL (superuser).
    pub fn local_params(&self) -> ConnParams {
        self.local_conn()
    }

    /// A new session to the local PostgreSQL in `database` (logical slots are created per database).
    pub async fn session_on(&self, database: &str) -> Result<observe::Session> {
        let mut p = self.local_conn();
        p.dbname = database.to_string();
        Ok(observe::connect(&p, QUERY_TIMEOUT).await?)
    }

    /// Connection parameters for `leader` with the rewind credentials (which may read slot files), in `database`.
    pub fn leader_params(&self, leader: &Member, database: &str) -> Result<ConnParams> {
        let mut p = self.member_params(leader, &self.rewind)?;
        p.dbname = database.to_string();
        Ok(p)
    }

    /// A new session to `leader` with the rewind credentials.
    pub async fn leader_session(&self, leader: &Member, database: &str) -> Result<observe::Session> {
        Ok(observe::connect(&self.leader_params(leader, database)?, QUERY_TIMEOUT).await?)
    }
}
