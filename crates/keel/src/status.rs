//! What this node knows about itself, as the agent last observed it: the snapshot the REST API and the member
//! key are built from. The agent replaces it once per cycle; readers never block the HA loop.

use std::time::SystemTime;

use keel_core::lsn::Lsn;
use keel_core::member_state::MemberState;
use keel_core::time::Millis;
use keel_core::view::{Role, Tags};
use serde_json::{json, Map, Value};

/// One row of `pg_stat_replication` on a primary.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplicationRow {
    pub usename: Option<String>,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    pub sync_priority: Option<i32>,
}

/// The node's state for REST responses and health checks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeStatus {
    pub scope: String,
    pub name: String,
    /// Patroni's member state: `running`, `stopped`, `starting`, `creating replica`, ...
    pub state: MemberState,
    /// The role PostgreSQL reports (primary when not in recovery).
    pub role: Option<Role>,
    /// This node holds the leader key.
    pub is_leader: bool,
    /// Unix milliseconds when the leader key, as last refreshed (or confirmed in failsafe mode), expires: after
    /// that the key may be someone else's, and the write health checks answer 503 (Patroni's `is_leader()`).
    pub leader_expiry_ms: Option<u64>,
    pub server_version: Option<u32>,
    pub postmaster_start_time: Option<SystemTime>,
    pub timeline: Option<u32>,
    /// `pg_current_wal_flush_lsn()` on a primary.
    pub wal_location: Option<Lsn>,
    pub received_location: Option<Lsn>,
    pub replayed_location: Option<Lsn>,
    /// `pg_last_xact_replay_timestamp()` on a replica.
    pub replayed_timestamp: Option<SystemTime>,
    pub replay_paused: bool,
    /// `pg_stat_wal_receiver.latest_end_lsn` on a replica.
    pub latest_end_lsn: Option<Lsn>,
    pub replication_state: Option<String>,
    pub replication: Vec<ReplicationRow>,
    pub cluster_unlocked: bool,
    /// Unix seconds of the last successful read of the store.
    pub dcs_last_seen: Option<u64>,
    pub tags: Tags,
    pub system_identifier: Option<String>,
    pub pending_restart: bool,
    pub pause: bool,
    pub failsafe_mode_is_active: bool,
    /// Members the `sync` key lists as synchronous standbys.
    pub sync_standbys: Vec<String>,
    /// `synchronous_mode: quorum`: the `sync` key's members are quorum standbys, not synchronous ones.
    pub quorum_commit: bool,
    /// The leader's last published WAL position (`status.optime`).
    pub cluster_optime: Option<Lsn>,
    pub maximum_lag_on_failover: u64,
    pub ttl: u64,
    /// Unix milliseconds when the HA loop last finished a cycle.
    pub last_cycle_ms: Option<u64>,
    pub version: String,
    /// `GET /slots`: this node's replication slots with positions, lag and readiness.
    pub slots: Value,
}

impl NodeStatus {
    pub fn is_running(&self) -> bool {
        self.state == MemberState::Running
    }

    fn in_sync_key(&self) -> bool {
        self.sync_standbys.iter().any(|s| s.eq_ignore_ascii_case(&self.name))
    }

    /// Listed in the `sync` key with `synchronous_mode: on`.
    pub fn is_sync_standby(&self) -> bool {
        !self.quorum_commit && self.in_sync_key()
    }

    /// Listed in the `sync` key with `synchronous_mode: quorum`.
    pub fn is_quorum_standby(&self) -> bool {
        self.quorum_commit && self.in_sync_key()
    }

    /// Bytes this replica's replay is behind the cluster (Patroni: max(optime, latest_end_lsn) - replayed).
    pub fn replica_lag(&self) -> Option<u64> {
        let target = self.cluster_optime.max(self.latest_end_lsn)?;
        let replayed = self.replayed_location.or(self.received_location)?;
        Some(target.saturating_sub(replayed))
    }

    /// The role shown in `/patroni`: what PostgreSQL reports (`primary` when not in recovery, lock or not, as
    /// Patroni does; the health checks are what require the lock).
    pub fn display_role(&self) -> &'static str {
        self.role.map(Role::as_str).unwrap_or("uninitialized")
    }

    /// `GET /patroni`: Patroni's node status document.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("state".into(), self.state.as_str().into());
        if let Some(t) = self.postmaster_start_time {
            m.insert("postmaster_start_time".into(), iso8601(t).into());
        }
        m.insert("role".into(), self.display_role().into());
        if let Some(v) = self.server_version {
            m.insert("server_version".into(), v.into());
        }
        let xlog = if self.role == Some(Role::Primary) {
            json!({"location": self.wal_location.map(|l| l.0)})
        } else {
            json!({
                "received_location": self.received_location.map(|l| l.0),
                "replayed_location": self.replayed_location.map(|l| l.0),
                "replayed_timestamp": self.replayed_timestamp.map(iso8601),
                "paused": self.replay_paused,
            })
        };
        if self.is_running() {
            m.insert("xlog".into(), xlog);
        }
        if let Some(t) = self.timeline {
            m.insert("timeline".into(), t.into());
        }
        if !self.replication.is_empty() {
            let rows: Vec<Value> = self
                .replication
                .iter()
                .map(|r| {
                    json!({"usename": r.usename, "application_name": r.application_name, "client_addr": r.client_addr,
                       "state": r.state, "sync_state": r.sync_state, "sync_priority": r.sync_priority})
                })
                .collect();
            m.insert("replication".into(), rows.into());
        }
        if let Some(rs) = &self.replication_state {
            m.insert("replication_state".into(), rs.clone().into());
        }
        if self.cluster_unlocked {
            m.insert("cluster_unlocked".into(), true.into());
        }
        if self.failsafe_mode_is_active {
            m.insert("failsafe_mode_is_active".into(), true.into());
        }
        if let Some(s) = self.dcs_last_seen {
            m.insert("dcs_last_seen".into(), s.into());
        }
        let tags = self.tags.to_json();
        if tags.as_object().is_some_and(|t| !t.is_empty()) {
            m.insert("tags".into(), tags);
        }
        if let Some(id) = &self.system_identifier {
            m.insert("database_system_identifier".into(), id.clone().into());
        }
        if self.pending_restart {
            m.insert("pending_restart".into(), true.into());
        }
        if self.pause {
            m.insert("pause".into(), true.into());
        }
        if self.is_sync_standby() {
            m.insert("sync_standby".into(), true.into());
        }
        if self.is_quorum_standby() {
            m.insert("quorum_standby".into(), true.into());
        }
        m.insert("patroni".into(), json!({"version": self.version, "scope": self.scope, "name": self.name}));
        Value::Object(m)
    }
}

impl NodeStatus {
    /// The member key's JSON, with Patroni's field names (`xlog_location` is the flush LSN on a primary and
    /// `max(received, replayed)` on a replica, present only while PostgreSQL runs).
    pub fn member_json(&self, conn_url: &str, api_url: &str) -> Value {
        let mut m = Map::new();
        m.insert("conn_url".into(), conn_url.into());
        m.insert("api_url".into(), api_url.into());
        m.insert("state".into(), self.state.as_str().into());
        m.insert("role".into(), self.display_role().into());
        m.insert("version".into(), self.version.clone().into());
        if self.is_running() {
            let xlog = match self.role {
                Some(Role::Primary) => self.wal_location,
                _ => self.received_location.max(self.replayed_location),
            };
            if let Some(x) = xlog {
                m.insert("xlog_location".into(), x.0.into());
            }
            if self.role == Some(Role::Replica) {
                if let Some(r) = self.replayed_location {
                    m.insert("replay_lsn".into(), r.0.into());
                }
                if let Some(r) = self.received_location {
                    m.insert("receive_lsn".into(), r.0.into());
                }
                if let Some(s) = &self.replication_state {
                    m.insert("replication_state".into(), s.clone().into());
                }
            }
        }
        if let Some(t) = self.timeline {
            m.insert("timeline".into(), t.into());
        }
        let tags = self.tags.to_json();
        if tags.as_object().is_some_and(|t| !t.is_empty()) {
            m.insert("tags".into(), tags);
        }
        if self.pending_restart {
            m.insert("pending_restart".into(), true.into());
        }
        if self.pause {
            m.insert("pause".into(), true.into());
        }
        Value::Object(m)
    }
}

/// A `SystemTime` as Patroni's ISO 8601 text.
pub fn iso8601(t: SystemTime) -> String {
    keel_core::time::format_iso8601(Millis(unix_seconds(t) as u64 * 1000))
}

/// Seconds since the Unix epoch (0 before it), as Patroni's metrics show times.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::view::Member;

    #[test]
    fn member_json_round_trips_through_the_view_parser() {
        let st = NodeStatus {
            name: "n2".into(),
            state: MemberState::Running,
            role: Some(Role::Replica),
            received_location: Some(Lsn(300)),
            replayed_location: Some(Lsn(200)),
            replication_state: Some("streaming".into()),
            timeline: Some(4),
            version: "0.1.0".into(),
            ..Default::default()
        };
        let json = st.member_json("postgres://127.0.0.1:5433/postgres", "http://127.0.0.1:8009/patroni");
        let m = Member::parse("n2", &json.to_string(), &mut Vec::new());
        assert_eq!(m.role, Some(Role::Replica));
        assert_eq!(m.xlog_location, Some(Lsn(300)));
        assert_eq!(m.replay_lsn, Some(Lsn(200)));
        assert_eq!(m.timeline, Some(4));
        assert_eq!(m.replication_state.as_deref(), Some("streaming"));
        assert_eq!(m.api_url.as_deref(), Some("http://127.0.0.1:8009/patroni"));
    }
}
