//! Answers the REST API's requests to the HA loop (see [`super::request_channel`]): restart (now or scheduled),
//! reload, reinitialize, re-create a slot. Refusals that depend on the cluster are the core's.

use anyhow::{bail, Result};
use keel_core::exec::Context;
use keel_core::ha;
use keel_core::member_state::MemberState;
use keel_core::time::Millis;
use keel_core::view::Role;
use tracing::{info, warn};

use super::request_channel::{AgentReply, AgentRequest, RestartRequest};
use super::runtime::Agent;
use crate::config::{self, Config};
use crate::dcs::KvBackend;

impl<B: KvBackend> Agent<B> {
    /// Answers one request.
    pub(super) async fn handle_request(&mut self, request: AgentRequest, now: Millis) {
        if !matches!(request, AgentRequest::Wakeup) {
            // Each request asks the store afresh, whatever the last cycle found.
            self.store.begin_cycle();
        }
        let (reply, answer) = match request {
            AgentRequest::Wakeup => return,
            AgentRequest::Restart { request, reply } => (reply, self.restart_request(request).await),
            AgentRequest::CancelScheduledRestart { reply } => {
                let answer = match self.scheduled_restart.take() {
                    Some(_) => AgentReply::Done("scheduled restart deleted".into()),
                    None => AgentReply::Failed("no restart is scheduled".into()),
                };
                (reply, answer)
            }
            AgentRequest::Reload { reply } => {
                let answer = match self.reload_config() {
                    Ok(()) => AgentReply::Done("reload scheduled".into()),
                    Err(e) => AgentReply::Failed(format!("{e:#}")),
                };
                (reply, answer)
            }
            AgentRequest::RecreateSlot { slot, reply } => (reply, self.recreate_slot(slot)),
            AgentRequest::Reinitialize { from_leader, reply } => (reply, self.reinitialize(from_leader, now).await),
        };
        let _ = reply.send(answer);
    }

    async fn restart_request(&mut self, request: RestartRequest) -> AgentReply {
        match &request.schedule {
            Some(at) => match (self.scheduled_restart.is_some(), ha::parse_iso8601(at)) {
                (true, _) => AgentReply::Conflict("Another restart is already scheduled".into()),
                (false, Some(at)) => {
                    self.scheduled_restart = Some((at, request.clone()));
                    AgentReply::Scheduled("Restart scheduled".into())
                }
                (false, None) => AgentReply::Failed(format!("cannot read the schedule {at:?}")),
            },
            None => match self.restart(&request).await {
                Ok(msg) => AgentReply::Done(msg),
                Err(e) => AgentReply::Failed(format!("{e:#}")),
            },
        }
    }

    /// Runs a scheduled restart whose time has come.
    pub(super) async fn run_scheduled_restart(&mut self, now: Millis) {
        let Some((at, req)) = self.scheduled_restart.clone() else { return };
        if now < at {
            return;
        }
        self.scheduled_restart = None;
        match self.restart(&req).await {
            Ok(msg) => info!("scheduled restart: {msg}"),
            Err(e) => warn!("scheduled restart failed: {e:#}"),
        }
    }

    /// Restarts PostgreSQL when the request's filters allow it.
    async fn restart(&mut self, req: &RestartRequest) -> Result<String> {
        let st = self.status.read().map(|s| s.clone()).unwrap_or_default();
        let role_ok = req.role.as_deref().is_none_or(|r| {
            r == st.display_role()
                || (r == "primary" && st.role == Some(Role::Primary))
                || (r == "master" && st.is_leader)
        });
        let version_ok = req.postgres_version.is_none_or(|v| st.server_version.is_some_and(|have| have < v));
        let pending_ok = !req.restart_pending || st.pending_restart;
        if !(role_ok && version_ok && pending_ok) {
            bail!("restart conditions are not satisfied");
        }
        self.set_state(MemberState::Restarting);
        let result = self.local.restart().await;
        self.set_state(if result.is_ok() { MemberState::Running } else { MemberState::RestartFailed });
        result.map(|()| "restarted successfully".to_string())
    }

    /// SIGHUP, as Patroni: re-read the configuration file and renew what a reload renews (the REST certificate).
    pub(super) fn on_hangup(&mut self) {
        info!("SIGHUP: reloading the configuration");
        if let Err(e) = self.reload_config() {
            warn!("reload failed: {e:#}");
        }
        if let Some(hook) = &self.on_reload {
            hook();
        }
    }

    /// Re-reads the configuration file and applies what can change at run time (PostgreSQL parameters, pg_hba).
    fn reload_config(&mut self) -> Result<()> {
        let loaded = Config::load(&self.config_path, &config::env::from_process())?;
        for w in &loaded.warnings {
            warn!("{}: {w}", self.config_path.display());
        }
        self.local.reload_local(&loaded.config);
        self.local_pg = loaded.config.postgresql.dynamic_overrides();
        info!("reloaded {}", self.config_path.display());
        Ok(())
    }

    fn recreate_slot(&mut self, slot: String) -> AgentReply {
        let cfg = keel_core::slots::SlotsConfig::from_dynamic(&self.dynamic_config());
        let logical = cfg.permanent.get(&slot).is_some_and(|p| p.kind.is_logical());
        if !self.exec.holds_leader {
            return AgentReply::Failed("I am not the leader: ask the leader".into());
        }
        if !logical {
            return AgentReply::Failed(format!("{slot} is not a permanent logical slot in the configuration"));
        }
        warn!("operator asked to re-create logical slot {slot}: its consumers must resynchronise");
        self.slots.breaks.remove(&slot);
        self.slots.recreate.insert(slot.clone());
        AgentReply::Done(format!("logical slot {slot} will be re-created in the next cycle"))
    }

    /// Wipes the data directory through the core's executor (a typed `WipeDataDir`); the next cycle clones.
    async fn reinitialize(&mut self, from_leader: bool, now: Millis) -> AgentReply {
        let decision = match ha::reinitialize(self.exec.holds_leader, &self.view) {
            Ok(d) => d,
            Err(refusal) => return AgentReply::Failed(refusal.to_string()),
        };
        let (name, view, config) = (self.cfg.name.clone(), self.view.clone(), self.dynamic_config());
        let context = Context { name: &name, view: &view, config: &config };
        let (applied, result) = self.execute(&decision, context, now).await;
        info!("{applied}");
        match result {
            Ok(()) => {
                self.clone_from_leader = from_leader;
                AgentReply::Done("reinitialize started".into())
            }
            Err(e) => AgentReply::Failed(format!("could not remove the data directory: {e:#}")),
        }
    }
}
