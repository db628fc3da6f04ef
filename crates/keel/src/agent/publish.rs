//! What the agent publishes: the status snapshot (REST API), the member key, the leader's `status` and `failsafe`
//! keys.

use keel_core::dynconfig::{DynamicConfig, SynchronousMode};
use keel_core::lsn::Lsn;
use keel_core::member_state::MemberState;
use keel_core::time::Millis;
use keel_core::view::{Role, Status};
use tracing::warn;

use super::runtime::Agent;
use crate::dcs::{ClusterStore, KvBackend};
use crate::postgres::observe::{Observation, ReplicationState};
use crate::status::{NodeStatus, ReplicationRow};

/// Writes `status` with this optime and the slot positions last published (the store client skips the write
/// when nothing changed). Keeping the slots when the leader hands over lets the next leader see every position
/// consumers may have reached.
pub(super) async fn write_status<B: KvBackend>(
    store: &ClusterStore<B>,
    last_status: &mut Option<Status>,
    optime: Option<Lsn>,
) {
    let Some(optime) = optime else { return };
    let mut status = last_status.clone().unwrap_or_default();
    status.optime = Some(optime);
    if let Err(e) = store.set_status(&status).await {
        warn!("cannot write the status key: {e}");
    }
    *last_status = Some(status);
}

/// Copies what PostgreSQL reports into the snapshot.
fn apply_observation(st: &mut NodeStatus, o: &Observation) {
    st.role = Some(o.role());
    st.server_version = Some(o.server_version_num);
    st.postmaster_start_time = o.postmaster_start_time;
    st.timeline = o.timeline;
    st.wal_location = o.wal_flush_lsn;
    st.received_location = o.receive_lsn;
    st.replayed_location = o.replay_lsn;
    st.replayed_timestamp = o.last_replay_time;
    st.replay_paused = o.replay_paused;
    st.replication_state = o.replication_state.as_ref().map(|r| match r {
        ReplicationState::Streaming => "streaming".to_string(),
        other => other.as_str().to_string(),
    });
    st.system_identifier = Some(o.system_identifier.to_string());
    st.replication = o
        .replication
        .iter()
        .map(|r| ReplicationRow {
            usename: r.usename.clone(),
            application_name: r.application_name.clone(),
            client_addr: r.client_addr.clone(),
            state: r.state.clone(),
            sync_state: r.sync_state.clone(),
            sync_priority: r.sync_priority,
        })
        .collect();
}

impl<B: KvBackend> Agent<B> {
    pub(super) fn set_state(&self, state: MemberState) {
        if let Ok(mut s) = self.status.write() {
            s.state = state;
        }
    }

    /// The snapshot as of now, from the last observation and view.
    fn snapshot(&self, store_ok: bool, now: Millis, cfg: &DynamicConfig) -> Option<NodeStatus> {
        let running = self.local.ctl.is_running();
        let mut st = self.status.read().ok()?.clone();
        st.is_leader = self.exec.holds_leader;
        let ttl_ms = cfg.timing.ttl.saturating_mul(1000);
        // In failsafe mode a confirmed primary counts as refreshed this cycle (Patroni's `update_failsafe`).
        let refreshed =
            if self.failsafe_active && self.exec.holds_leader { Some(now) } else { self.exec.last_leader_refresh };
        st.leader_expiry_ms = refreshed.filter(|_| self.exec.holds_leader).map(|t| t.0.saturating_add(ttl_ms));
        st.cluster_unlocked = self.view.leader.is_none();
        st.failsafe_mode_is_active = self.failsafe_active;
        st.pause = cfg.pause;
        st.pending_restart = !self.local.pending_restart.is_empty();
        st.maximum_lag_on_failover = cfg.maximum_lag_on_failover;
        st.ttl = cfg.timing.ttl;
        st.cluster_optime = self.view.status.optime;
        st.sync_standbys = self.view.sync.as_ref().map(|s| s.value.sync_standby.clone()).unwrap_or_default();
        st.quorum_commit = cfg.synchronous_mode == SynchronousMode::Quorum;
        if store_ok {
            st.dcs_last_seen = Some(now.0 / 1000);
        }
        st.last_cycle_ms = Some(now.0);
        let current = self.last_obs.as_ref().and_then(|o| o.wal_flush_lsn.or(o.replay_lsn));
        st.slots = self.slots.to_json(&self.view.status, current);
        let observed = running.then_some(self.last_obs.as_ref()).flatten();
        st.state = st.state.settle(running, observed.is_some());
        match observed {
            Some(o) => apply_observation(&mut st, o),
            None if !running => {
                st.role = if self.view.initialize.is_some() { Some(Role::Replica) } else { None };
                st.replication_state = None;
                st.replication.clear();
            }
            None => {}
        }
        Some(st)
    }

    /// Refreshes the status snapshot and writes the member key.
    pub(super) async fn publish(&mut self, store_ok: bool, now: Millis) {
        let cfg = self.dynamic_config();
        let Some(st) = self.snapshot(store_ok, now, &cfg) else { return };
        if let Ok(mut s) = self.status.write() {
            *s = st.clone();
        }
        if !store_ok {
            return;
        }
        let mut json = st.member_json(&self.conn_url, &self.api_url);
        if let (Some(summary), Some(obj)) = (&self.slots.summary, json.as_object_mut()) {
            obj.insert(keel_core::slots::MEMBER_KEY_FIELD.into(), summary.to_json());
        }
        if let Err(e) = self.store.touch_member(&json).await {
            warn!("cannot write the member key: {e}");
        }
    }

    /// The leader keeps the `failsafe` key listing every member's REST API (and its own) while failsafe mode is on.
    pub(super) async fn write_failsafe_key(&mut self, config: &DynamicConfig) {
        if !config.failsafe_mode || !self.exec.holds_leader {
            return;
        }
        let mut members: std::collections::BTreeMap<String, String> =
            self.view.members.values().filter_map(|m| m.api_url.clone().map(|u| (m.name.clone(), u))).collect();
        members.insert(self.cfg.name.clone(), self.api_url.clone());
        if self.view.failsafe.as_ref() != Some(&members) {
            match self.store.set_failsafe(&members).await {
                // What we wrote is the list an outage starting before the next read must ask: without this, a
                // store lost right after the write left the exchange with the old list and the primary demoted.
                Ok(()) => {
                    self.failsafe.set_config(config.failsafe_mode, Some(members.clone()));
                    self.view.failsafe = Some(members);
                }
                Err(e) => warn!("cannot write the failsafe key: {e}"),
            }
        }
    }
}
