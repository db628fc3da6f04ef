//! The cluster view: what the store says about the cluster, parsed from the values Patroni writes.
//!
//! Every parser here is lenient the way Patroni is: a value that does not parse becomes an empty or default
//! value and a note (for the caller to log), never a panic and never an error that stops the HA loop.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::dynconfig::{parse_bool, parse_uint, DynamicConfig};
use crate::lsn::Lsn;
use crate::slots::readiness::{SlotsReadiness, MEMBER_KEY_FIELD};

/// A store key below the cluster prefix (`<namespace><scope>/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterKey {
    Initialize,
    Config,
    Leader,
    Status,
    History,
    Failover,
    Sync,
    Failsafe,
    /// The legacy `optime/leader` key of Patroni < 2.1.
    LegacyOptime,
    Member(String),
}

impl ClusterKey {
    /// The key's path relative to the cluster prefix.
    pub fn relative(&self) -> String {
        match self {
            ClusterKey::Initialize => "initialize".into(),
            ClusterKey::Config => "config".into(),
            ClusterKey::Leader => "leader".into(),
            ClusterKey::Status => "status".into(),
            ClusterKey::History => "history".into(),
            ClusterKey::Failover => "failover".into(),
            ClusterKey::Sync => "sync".into(),
            ClusterKey::Failsafe => "failsafe".into(),
            ClusterKey::LegacyOptime => "optime/leader".into(),
            ClusterKey::Member(name) => format!("members/{name}"),
        }
    }

    /// Recognises a relative path; `None` for keys Keel does not use.
    pub fn parse(relative: &str) -> Option<ClusterKey> {
        Some(match relative {
            "initialize" => ClusterKey::Initialize,
            "config" => ClusterKey::Config,
            "leader" => ClusterKey::Leader,
            "status" => ClusterKey::Status,
            "history" => ClusterKey::History,
            "failover" => ClusterKey::Failover,
            "sync" => ClusterKey::Sync,
            "failsafe" => ClusterKey::Failsafe,
            "optime/leader" => ClusterKey::LegacyOptime,
            other => {
                let name = other.strip_prefix("members/")?;
                if name.is_empty() || name.contains('/') {
                    return None;
                }
                ClusterKey::Member(name.to_string())
            }
        })
    }
}

/// The cluster prefix: `/<namespace>/<scope>/` with Patroni's normalisation of the namespace slashes.
pub fn cluster_prefix(namespace: &str, scope: &str) -> String {
    let ns = namespace.trim_matches('/');
    if ns.is_empty() {
        format!("/{scope}/")
    } else {
        format!("/{ns}/{scope}/")
    }
}

/// One raw key as read from the store, relative to the cluster prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub key: String,
    pub value: String,
    /// The store's modification revision (etcd `mod_revision`), used for compare-and-swap.
    pub mod_revision: i64,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// A value together with the revision it was read at, for compare-and-swap writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: i64,
}

/// The `role` a member reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Replica,
    StandbyLeader,
    Demoted,
    Uninitialized,
    Promoted,
}

impl Role {
    /// Reads a role, accepting Patroni < 4's `master`.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "primary" | "master" => Role::Primary,
            "replica" => Role::Replica,
            "standby_leader" | "standby-leader" => Role::StandbyLeader,
            "demoted" => Role::Demoted,
            "uninitialized" => Role::Uninitialized,
            "promoted" => Role::Promoted,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
            Role::Uninitialized => "uninitialized",
            Role::Promoted => "promoted",
        }
    }
}

/// A member's tags, as configured under `tags:` and published in its member key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tags {
    pub nofailover: Option<bool>,
    pub failover_priority: Option<i64>,
    pub noloadbalance: bool,
    pub clonefrom: bool,
    pub replicatefrom: Option<String>,
    pub nosync: bool,
    pub sync_priority: Option<i64>,
    pub nostream: bool,
    /// Custom tags, kept as given.
    pub other: BTreeMap<String, Value>,
}

impl Tags {
    /// Patroni's rule: the `nofailover` tag wins; otherwise `failover_priority <= 0` means no failover.
    pub fn no_failover(&self) -> bool {
        match (self.nofailover, self.failover_priority) {
            (Some(nf), _) => nf,
            (None, Some(p)) => p <= 0,
            (None, None) => false,
        }
    }

    /// The priority among equally advanced candidates (default 1; 0 when `nofailover`).
    pub fn effective_failover_priority(&self) -> i64 {
        if self.no_failover() {
            0
        } else {
            self.failover_priority.unwrap_or(1).max(1)
        }
    }

    /// `nosync` or `sync_priority <= 0` or `nostream` keep a member out of the synchronous set.
    pub fn no_sync(&self) -> bool {
        self.nosync || self.nostream || self.sync_priority.is_some_and(|p| p <= 0)
    }

    /// Reads tags from a JSON object (member key or configuration). Unknown keys go to `other`.
    pub fn from_json(v: &Value) -> Tags {
        let mut t = Tags::default();
        let Some(obj) = v.as_object() else { return t };
        for (k, v) in obj {
            match k.as_str() {
                "nofailover" => t.nofailover = parse_bool(v),
                "failover_priority" => t.failover_priority = int(v),
                "noloadbalance" => t.noloadbalance = parse_bool(v).unwrap_or(false),
                "clonefrom" => t.clonefrom = parse_bool(v).unwrap_or(false),
                "replicatefrom" => t.replicatefrom = v.as_str().filter(|s| !s.is_empty()).map(str::to_string),
                "nosync" => t.nosync = parse_bool(v).unwrap_or(false),
                "sync_priority" => t.sync_priority = int(v),
                "nostream" => t.nostream = parse_bool(v).unwrap_or(false),
                _ => {
                    t.other.insert(k.clone(), v.clone());
                }
            }
        }
        t
    }

    /// The JSON Patroni publishes: only enabled tags, `nofailover` always with `failover_priority`,
    /// `nosync` always with `sync_priority`, and custom tags.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.nofailover == Some(true) || self.failover_priority.is_some() {
            m.insert("nofailover".into(), Value::Bool(self.no_failover()));
        }
        if let Some(p) = self.failover_priority {
            m.insert("failover_priority".into(), p.into());
        }
        if self.noloadbalance {
            m.insert("noloadbalance".into(), true.into());
        }
        if self.clonefrom {
            m.insert("clonefrom".into(), true.into());
        }
        if let Some(r) = &self.replicatefrom {
            m.insert("replicatefrom".into(), r.clone().into());
        }
        if self.nosync || self.sync_priority.is_some() {
            m.insert("nosync".into(), self.no_sync().into());
        }
        if let Some(p) = self.sync_priority {
            m.insert("sync_priority".into(), p.into());
        }
        if self.nostream {
            m.insert("nostream".into(), true.into());
        }
        for (k, v) in &self.other {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn lsn(v: Option<&Value>) -> Option<Lsn> {
    v.and_then(parse_uint).map(Lsn)
}

/// A member key's content.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Member {
    pub name: String,
    pub conn_url: Option<String>,
    pub api_url: Option<String>,
    pub state: Option<String>,
    pub role: Option<Role>,
    pub version: Option<String>,
    pub xlog_location: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub receive_lsn: Option<Lsn>,
    pub replication_state: Option<String>,
    pub timeline: Option<u32>,
    pub tags: Tags,
    pub pending_restart: bool,
    pub pause: bool,
    pub checkpoint_after_promote: Option<bool>,
    /// Keel's failover-slot readiness (`"keel_slots": {"ready": bool, "unready": [names]}`); `None` when the
    /// member publishes none (Patroni, an older Keel) or garbage.
    pub slots_readiness: Option<SlotsReadiness>,
    /// The whole document as stored (fields Keel does not model are kept here).
    pub data: Value,
    pub version_rev: i64,
    pub lease: i64,
}

impl Member {
    /// Parses a member value leniently: legacy `postgres://...?application_name=<api_url>` URLs are understood,
    /// invalid JSON becomes an empty member (with a note).
    pub fn parse(name: &str, raw: &str, notes: &mut Vec<String>) -> Member {
        let data: Value = if raw.starts_with("postgres") {
            let (conn, api) = match raw.split_once("?application_name=") {
                Some((c, a)) => (c.to_string(), Some(a.to_string())),
                None => (raw.to_string(), None),
            };
            let mut m = Map::new();
            m.insert("conn_url".into(), conn.into());
            if let Some(a) = api {
                m.insert("api_url".into(), a.into());
            }
            Value::Object(m)
        } else {
            match serde_json::from_str::<Value>(raw) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) | Err(_) => {
                    notes.push(format!("member {name}: value is not a JSON object; treating it as empty"));
                    Value::Object(Map::new())
                }
            }
        };
        let s = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
        Member {
            name: name.to_string(),
            conn_url: s("conn_url"),
            api_url: s("api_url"),
            state: s("state"),
            role: data.get("role").and_then(Value::as_str).and_then(Role::parse),
            version: s("version"),
            xlog_location: lsn(data.get("xlog_location")),
            replay_lsn: lsn(data.get("replay_lsn")),
            receive_lsn: lsn(data.get("receive_lsn")),
            replication_state: s("replication_state"),
            timeline: data.get("timeline").and_then(parse_uint).and_then(|t| u32::try_from(t).ok()),
            tags: data.get("tags").map(Tags::from_json).unwrap_or_default(),
            pending_restart: data.get("pending_restart").and_then(parse_bool).unwrap_or(false),
            pause: data.get("pause").and_then(parse_bool).unwrap_or(false),
            checkpoint_after_promote: data.get("checkpoint_after_promote").and_then(parse_bool),
            slots_readiness: data.get(MEMBER_KEY_FIELD).and_then(SlotsReadiness::from_json),
            data,
            version_rev: 0,
            lease: 0,
        }
    }

    pub fn is_running(&self) -> bool {
        self.state.as_deref() == Some("running")
    }
}

/// The `leader` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: String,
    pub version: i64,
    pub lease: i64,
}

/// The `status` key: the leader's last WAL position and the slot positions it publishes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Status {
    pub optime: Option<Lsn>,
    pub slots: BTreeMap<String, Lsn>,
    pub retain_slots: Vec<String>,
}

impl Status {
    /// Accepts `{"optime":..,"slots":{..},"retain_slots":[..]}` or a bare integer (the legacy optime form).
    pub fn parse(raw: &str, notes: &mut Vec<String>) -> Status {
        let mut st = Status::default();
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => {
                st.optime = lsn(m.get("optime"));
                if let Some(Value::Object(slots)) = m.get("slots") {
                    for (k, v) in slots {
                        match parse_uint(v) {
                            Some(n) => {
                                st.slots.insert(k.clone(), Lsn(n));
                            }
                            None => notes.push(format!("status: slot {k} has a non-integer position {v}; ignored")),
                        }
                    }
                }
                if let Some(Value::Array(names)) = m.get("retain_slots") {
                    st.retain_slots = names.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
                }
            }
            Ok(v) if parse_uint(&v).is_some() => st.optime = parse_uint(&v).map(Lsn),
            _ => notes.push("status: value is neither a JSON object nor an integer; ignored".to_string()),
        }
        st
    }

    /// The JSON Patroni writes (`slots` and `retain_slots` omitted when empty).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("optime".into(), self.optime.map(|l| l.0).unwrap_or(0).into());
        if !self.slots.is_empty() {
            let slots: Map<String, Value> = self.slots.iter().map(|(k, v)| (k.clone(), v.0.into())).collect();
            m.insert("slots".into(), Value::Object(slots));
        }
        if !self.retain_slots.is_empty() {
            m.insert("retain_slots".into(), self.retain_slots.clone().into());
        }
        Value::Object(m)
    }
}

/// The `failover` key: a manual switchover (with `leader`) or failover (without), maybe scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailoverRequest {
    pub leader: Option<String>,
    pub member: Option<String>,
    /// ISO 8601 timestamp as written by the requester.
    pub scheduled_at: Option<String>,
}

impl FailoverRequest {
    /// Accepts the JSON form and the legacy `leader:candidate` form. `None` for `{}` or empty values.
    pub fn parse(raw: &str, notes: &mut Vec<String>) -> Option<FailoverRequest> {
        let req = match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => {
                let s = |k: &str| m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
                FailoverRequest { leader: s("leader"), member: s("member"), scheduled_at: s("scheduled_at") }
            }
            _ if raw.contains(':') && !raw.trim_start().starts_with('{') => {
                let (l, m) = raw.split_once(':').unwrap_or((raw, ""));
                let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
                FailoverRequest { leader: opt(l), member: opt(m), scheduled_at: None }
            }
            _ => {
                if !raw.trim().is_empty() {
                    notes.push(format!("failover: value {raw:?} is not understood; ignored"));
                }
                return None;
            }
        };
        (req.leader.is_some() || req.member.is_some()).then_some(req)
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(l) = &self.leader {
            m.insert("leader".into(), l.clone().into());
        }
        if let Some(c) = &self.member {
            m.insert("member".into(), c.clone().into());
        }
        if let Some(t) = &self.scheduled_at {
            m.insert("scheduled_at".into(), t.clone().into());
        }
        Value::Object(m)
    }
}

/// The `sync` key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncState {
    /// The value was not a JSON object: nobody's membership can be told (in synchronous mode nobody but a running
    /// primary is eligible until the leader writes it again).
    pub unreadable: bool,
    pub leader: Option<String>,
    pub sync_standby: Vec<String>,
    pub quorum: Option<u32>,
}

impl SyncState {
    pub fn parse(raw: &str, notes: &mut Vec<String>) -> SyncState {
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => SyncState {
                unreadable: false,
                leader: m.get("leader").and_then(Value::as_str).map(str::to_string),
                sync_standby: m
                    .get("sync_standby")
                    .and_then(Value::as_str)
                    .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
                    .unwrap_or_default(),
                quorum: m.get("quorum").and_then(parse_uint).and_then(|q| u32::try_from(q).ok()),
            },
            _ => {
                notes.push("sync: value is not a JSON object; no member counts as synchronous".to_string());
                SyncState { unreadable: true, ..SyncState::default() }
            }
        }
    }

    /// Whether `name` is the sync leader or a listed standby (names compare case-insensitively, as in Patroni).
    pub fn matches(&self, name: &str) -> bool {
        self.leader.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(name))
            || self.sync_standby.iter().any(|s| s.eq_ignore_ascii_case(name))
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("leader".into(), self.leader.clone().map(Value::from).unwrap_or(Value::Null));
        m.insert("quorum".into(), self.quorum.map(Value::from).unwrap_or(Value::Null));
        let standbys = (!self.sync_standby.is_empty()).then(|| self.sync_standby.join(","));
        m.insert("sync_standby".into(), standbys.map(Value::from).unwrap_or(Value::Null));
        Value::Object(m)
    }
}

/// One line of the `history` key: `[timeline, lsn, reason, timestamp?, new_leader?]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub timeline: u32,
    pub lsn: Lsn,
    pub reason: String,
    pub timestamp: Option<String>,
    pub new_leader: Option<String>,
}

impl HistoryEntry {
    pub fn parse_list(raw: &str, notes: &mut Vec<String>) -> Vec<HistoryEntry> {
        let Ok(Value::Array(lines)) = serde_json::from_str::<Value>(raw) else {
            notes.push("history: value is not a JSON list; ignored".to_string());
            return Vec::new();
        };
        lines
            .iter()
            .filter_map(|line| {
                let a = line.as_array()?;
                Some(HistoryEntry {
                    timeline: a.first().and_then(parse_uint).and_then(|t| u32::try_from(t).ok())?,
                    lsn: Lsn(a.get(1).and_then(parse_uint)?),
                    reason: a.get(2).and_then(Value::as_str).unwrap_or_default().to_string(),
                    timestamp: a.get(3).and_then(Value::as_str).map(str::to_string),
                    new_leader: a.get(4).and_then(Value::as_str).map(str::to_string),
                })
            })
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let mut a = vec![Value::from(self.timeline), Value::from(self.lsn.0), Value::from(self.reason.clone())];
        if let Some(t) = &self.timestamp {
            a.push(t.clone().into());
            if let Some(n) = &self.new_leader {
                a.push(n.clone().into());
            }
        }
        Value::Array(a)
    }
}

/// Everything the store holds about one cluster, parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterView {
    /// The `initialize` key: `Some("")` while the winner has not yet written the system identifier.
    pub initialize: Option<String>,
    pub config: Option<Versioned<DynamicConfig>>,
    /// The `config` key exists but is not a JSON object: `config` holds defaults, which must not replace a
    /// configuration read before (see [`ClusterView::readable_config`]).
    pub config_unreadable: bool,
    pub leader: Option<LeaderKey>,
    pub members: BTreeMap<String, Member>,
    pub status: Status,
    pub failover: Option<Versioned<FailoverRequest>>,
    /// The failover key's revision even when its value is empty (`{}`), for compare-and-swap.
    pub failover_version: Option<i64>,
    pub sync: Option<Versioned<SyncState>>,
    pub history: Vec<HistoryEntry>,
    pub failsafe: Option<BTreeMap<String, String>>,
    /// Parse problems, for the caller to log.
    pub notes: Vec<String>,
}

impl ClusterView {
    /// Builds the view from the raw keys below the cluster prefix. Unknown keys are ignored.
    pub fn from_entries<I: IntoIterator<Item = RawEntry>>(entries: I) -> ClusterView {
        let mut view = ClusterView::default();
        let mut legacy_optime = None;
        let mut notes = Vec::new();
        for e in entries {
            match ClusterKey::parse(&e.key) {
                Some(ClusterKey::Initialize) => view.initialize = Some(e.value.trim().to_string()),
                Some(ClusterKey::Config) => {
                    let raw = match serde_json::from_str::<Value>(&e.value) {
                        Ok(v @ Value::Object(_)) => v,
                        Ok(other) => {
                            notes.push(format!("config: not a JSON object ({other}); keeping the last readable one"));
                            view.config_unreadable = true;
                            Value::Object(Map::new())
                        }
                        Err(err) => {
                            notes.push(format!("config: invalid JSON ({err}); keeping the last readable one"));
                            view.config_unreadable = true;
                            Value::Object(Map::new())
                        }
                    };
                    let cfg = DynamicConfig::from_value(raw);
                    notes.extend(cfg.notes.iter().map(|n| format!("config: {n}")));
                    view.config = Some(Versioned { value: cfg, version: e.mod_revision });
                }
                Some(ClusterKey::Leader) => {
                    let name = e.value.trim().to_string();
                    if !name.is_empty() {
                        view.leader = Some(LeaderKey { name, version: e.mod_revision, lease: e.lease });
                    }
                }
                Some(ClusterKey::Status) => view.status = Status::parse(&e.value, &mut notes),
                Some(ClusterKey::LegacyOptime) => legacy_optime = e.value.trim().parse::<u64>().ok().map(Lsn),
                Some(ClusterKey::History) => view.history = HistoryEntry::parse_list(&e.value, &mut notes),
                Some(ClusterKey::Failover) => {
                    view.failover_version = Some(e.mod_revision);
                    view.failover = FailoverRequest::parse(&e.value, &mut notes)
                        .map(|value| Versioned { value, version: e.mod_revision });
                }
                Some(ClusterKey::Sync) => {
                    view.sync =
                        Some(Versioned { value: SyncState::parse(&e.value, &mut notes), version: e.mod_revision })
                }
                Some(ClusterKey::Failsafe) => match serde_json::from_str::<Value>(&e.value) {
                    Ok(Value::Object(m)) => {
                        view.failsafe =
                            Some(m.into_iter().filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string()))).collect())
                    }
                    _ => notes.push("failsafe: value is not a JSON object; ignored".to_string()),
                },
                Some(ClusterKey::Member(name)) => {
                    let mut m = Member::parse(&name, &e.value, &mut notes);
                    m.version_rev = e.mod_revision;
                    m.lease = e.lease;
                    view.members.insert(name, m);
                }
                None => {}
            }
        }
        if view.status.optime.is_none() {
            view.status.optime = legacy_optime;
        }
        view.notes = notes;
        view
    }

    /// The stored configuration to run with: the `config` key when it is readable, else `last_good` (the one read
    /// before). Garbage in the store never replaces a configuration with defaults, which could be less safe (e.g.
    /// `synchronous_mode` off).
    pub fn readable_config<'a>(&'a self, last_good: Option<&'a DynamicConfig>) -> Option<&'a DynamicConfig> {
        if self.config_unreadable {
            return last_good;
        }
        self.config.as_ref().map(|c| &c.value)
    }

    /// The effective dynamic configuration (defaults when the key is missing).
    pub fn dynamic_config(&self) -> DynamicConfig {
        self.config.as_ref().map(|c| c.value.clone()).unwrap_or_default()
    }

    /// Patroni's `Failsafe.update_cluster`: during a store outage the member keys are stale, so the WAL positions
    /// cascading members (`replicatefrom`) reported in their `POST /failsafe` answers replace their
    /// `xlog_location`, which is what the primary advances their physical slots to.
    pub fn apply_failsafe_positions(&mut self, positions: &BTreeMap<String, Option<Lsn>>) {
        for (name, lsn) in positions {
            if let (Some(m), Some(lsn)) = (self.members.get_mut(name), lsn) {
                if m.tags.replicatefrom.is_some() {
                    m.xlog_location = Some(*lsn);
                }
            }
        }
    }

    pub fn leader_member(&self) -> Option<&Member> {
        self.leader.as_ref().and_then(|l| self.members.get(&l.name))
    }

    pub fn is_paused(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.value.pause)
    }

    /// The timeline the cluster is on according to `history` (1 when there is none).
    pub fn history_timeline(&self) -> u32 {
        self.history.iter().map(|h| h.timeline + 1).max().unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: &str, value: &str, rev: i64) -> RawEntry {
        RawEntry { key: key.into(), value: value.into(), mod_revision: rev, lease: 0 }
    }

    #[test]
    fn failsafe_positions_replace_cascading_members_positions() {
        let mut v = ClusterView::from_entries([
            e("members/a", r#"{"xlog_location":10,"tags":{"replicatefrom":"b"}}"#, 1),
            e("members/b", r#"{"xlog_location":10}"#, 2),
        ]);
        let positions: BTreeMap<String, Option<Lsn>> =
            [("a".to_string(), Some(Lsn(50))), ("b".to_string(), Some(Lsn(60))), ("zz".to_string(), Some(Lsn(1)))]
                .into_iter()
                .collect();
        v.apply_failsafe_positions(&positions);
        assert_eq!(v.members["a"].xlog_location, Some(Lsn(50)));
        // Members streaming from the primary itself keep their position: their slot moves with their stream.
        assert_eq!(v.members["b"].xlog_location, Some(Lsn(10)));
    }

    #[test]
    fn parses_patroni_values() {
        let v = ClusterView::from_entries([
            e("initialize", "7000000000000000001", 1),
            e("config", r#"{"ttl":30,"loop_wait":10,"postgresql":{"use_pg_rewind":true}}"#, 2),
            e("leader", "node1", 3),
            e(
                "members/node1",
                r#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"master","xlog_location":100,"timeline":2,"tags":{"failover_priority":0}}"#,
                4,
            ),
            e("status", r#"{"optime":200,"slots":{"node2":150,"bad":"x"},"retain_slots":["node2"]}"#, 5),
            e("failover", r#"{"leader":"node1","member":"node2"}"#, 6),
            e("sync", r#"{"leader":"node1","sync_standby":"node2,node3","quorum":1}"#, 7),
            e("history", r#"[[1,25165984,"no recovery target specified","2026-01-01T00:00:00+00:00","node1"]]"#, 8),
            e("failsafe", r#"{"node1":"http://127.0.0.1:8008/patroni"}"#, 9),
            e("unrelated/key", "x", 10),
        ]);
        assert_eq!(v.initialize.as_deref(), Some("7000000000000000001"));
        assert!(v.dynamic_config().use_pg_rewind);
        assert_eq!(v.leader.as_ref().map(|l| l.name.as_str()), Some("node1"));
        let m = v.leader_member().unwrap();
        assert_eq!(m.role, Some(Role::Primary));
        assert_eq!(m.xlog_location, Some(Lsn(100)));
        assert!(m.tags.no_failover());
        assert_eq!(v.status.optime, Some(Lsn(200)));
        assert_eq!(v.status.slots.get("node2"), Some(&Lsn(150)));
        assert_eq!(v.status.retain_slots, vec!["node2".to_string()]);
        assert_eq!(v.failover.as_ref().unwrap().value.member.as_deref(), Some("node2"));
        assert!(v.sync.as_ref().unwrap().value.matches("NODE3"));
        assert_eq!(v.history_timeline(), 2);
        assert_eq!(v.failsafe.as_ref().unwrap().len(), 1);
        assert_eq!(v.notes.len(), 1, "{:?}", v.notes);
    }

    #[test]
    fn tolerates_garbage_and_legacy_forms() {
        let v = ClusterView::from_entries([
            e("config", "{not json", 1),
            e("members/a", "garbage", 2),
            e("members/b", "postgres://h:5432/postgres?application_name=http://h:8008/patroni", 3),
            e("status", "12345", 4),
            e("failover", "node1:node2", 5),
            e("history", "[[1], \"x\"]", 6),
            e("sync", "[]", 7),
            e("failsafe", "1", 8),
            e("leader", "", 9),
        ]);
        assert!(v.leader.is_none());
        assert_eq!(v.members["a"].conn_url, None);
        assert_eq!(v.members["b"].api_url.as_deref(), Some("http://h:8008/patroni"));
        assert_eq!(v.status.optime, Some(Lsn(12345)));
        let f = &v.failover.as_ref().unwrap().value;
        assert_eq!((f.leader.as_deref(), f.member.as_deref()), (Some("node1"), Some("node2")));
        assert!(v.history.is_empty());
        assert!(v.failsafe.is_none());
        assert!(v.notes.len() >= 4);
        let empty = ClusterView::from_entries([e("failover", "{}", 3)]);
        assert!(empty.failover.is_none());
        assert_eq!(empty.failover_version, Some(3));
    }

    #[test]
    fn prefix_and_keys() {
        assert_eq!(cluster_prefix("/service/", "batman"), "/service/batman/");
        assert_eq!(cluster_prefix("service", "batman"), "/service/batman/");
        assert_eq!(ClusterKey::parse("members/n1"), Some(ClusterKey::Member("n1".into())));
        assert_eq!(ClusterKey::parse("members/"), None);
        assert_eq!(ClusterKey::Member("n1".into()).relative(), "members/n1");
    }

    #[test]
    fn status_round_trip() {
        let mut notes = vec![];
        let s = Status::parse(r#"{"optime":5,"slots":{"a":1},"retain_slots":["a"]}"#, &mut notes);
        let again = Status::parse(&s.to_json().to_string(), &mut notes);
        assert_eq!(s, again);
        assert!(notes.is_empty());
    }

    #[test]
    fn an_unreadable_config_key_keeps_the_last_readable_configuration() {
        let entry = |v: &str| RawEntry { key: "config".into(), value: v.into(), mod_revision: 3, lease: 0 };
        let good = ClusterView::from_entries(vec![entry(r#"{"synchronous_mode":true}"#)]);
        assert!(!good.config_unreadable);
        let last = good.readable_config(None).cloned();
        assert_eq!(last.as_ref().map(|c| c.synchronous_mode), Some(crate::dynconfig::SynchronousMode::On));
        for garbage in ["{not json", "[1,2]", "\"on\""] {
            let bad = ClusterView::from_entries(vec![entry(garbage)]);
            assert!(bad.config_unreadable, "{garbage}");
            let kept = bad.readable_config(last.as_ref()).map(|c| c.synchronous_mode);
            assert_eq!(kept, Some(crate::dynconfig::SynchronousMode::On), "{garbage} must not fall back to defaults");
        }
    }
}
