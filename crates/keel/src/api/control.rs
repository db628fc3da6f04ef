//! The pure parts of the control endpoints: request validation with Patroni's messages and status codes,
//! `cluster_as_json`, and `patch_config`. Nothing here does I/O, so every rule is unit-tested directly.

use std::time::Duration;

use axum::http::StatusCode;
use keel_core::dynconfig::{parse_bool, SynchronousMode};
use keel_core::ha::parse_iso8601;
use keel_core::lsn::Lsn;
use keel_core::view::{ClusterView, FailoverRequest, Member, Role};
use serde_json::{Map, Value};

use crate::agent::request_channel::RestartRequest;
use crate::status::NodeStatus;

/// A refusal: the status code and Patroni's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

/// Parses a request body that must be a non-empty JSON object (Patroni's `_read_json_content`).
pub fn json_object(body: &[u8], optional: bool) -> Result<Map<String, Value>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if optional { Ok(Map::new()) } else { Err(Refusal::bad("the request body must be a JSON object")) };
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) if !m.is_empty() || optional => Ok(m),
        Ok(Value::Object(_)) => Err(Refusal::bad("the request body must be a non-empty JSON object")),
        Ok(_) => Err(Refusal::bad("the request body must be a JSON object")),
        Err(e) => Err(Refusal::bad(format!("the request body is not valid JSON: {e}"))),
    }
}

/// A new dynamic configuration must be one Keel runs: a refused setting (e.g. `synchronous_mode: quorum`), an
/// unknown key or a wrong type is refused with 422 and the message naming each setting and what to do.
pub fn check_dynamic(config: &Value) -> Result<(), Refusal> {
    crate::config::dynamic::check(config)
        .map(drop)
        .map_err(|e| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, format!("configuration not changed: {e}")))
}

/// Patroni's `patch_config`: a JSON merge patch where `null` deletes an existing key, objects merge recursively
/// into existing objects, and anything else (including a new object, stored as given with its nulls) replaces.
/// Returns whether `config` changed.
pub fn patch_config(config: &mut Map<String, Value>, patch: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (name, value) in patch {
        match (value, config.get_mut(name)) {
            (Value::Null, _) => changed |= config.remove(name).is_some_and(|old| !old.is_null()),
            (Value::Object(sub), Some(Value::Object(existing))) => changed |= patch_config(existing, sub),
            (_, Some(existing)) => {
                // Patroni compares `str()` forms, so 5 and "5" are equal and nothing is written.
                if loose_text(existing) != loose_text(value) {
                    *existing = value.clone();
                    changed = true;
                }
            }
            (_, None) => {
                config.insert(name.clone(), value.clone());
                changed = true;
            }
        }
    }
    changed
}

fn loose_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `host` and `port` of a member, from `conn_kwargs` or its `conn_url` (`postgres://[user@]host[:port]/db`).
fn host_port(m: &Member) -> (Option<String>, Option<u16>) {
    if let Some(kw) = m.data.get("conn_kwargs").and_then(Value::as_object) {
        let host = kw.get("host").and_then(Value::as_str).filter(|h| !h.is_empty()).map(str::to_string);
        let port = kw.get("port").and_then(|p| match p {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(s) => s.parse().ok(),
            _ => None,
        });
        return (host, port);
    }
    let Some(url) = m.conn_url.as_deref() else { return (None, None) };
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else { return (None, None) };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (v6, None),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let host = (!host.is_empty()).then(|| host.to_string());
    (host, port.and_then(|p| p.parse().ok()))
}

/// Whether the dynamic configuration describes a standby cluster (Patroni's `is_standby_cluster`).
fn is_standby_cluster(raw: &Value) -> bool {
    raw.get("standby_cluster").and_then(Value::as_object).is_some_and(|s| {
        ["host", "port", "restore_command"].iter().any(|k| s.get(*k).is_some_and(|v| !v.is_null() && v != ""))
    })
}

/// `GET /cluster`: Patroni's `cluster_as_json` plus `scope`.
pub fn cluster_as_json(view: &ClusterView, scope: &str) -> Value {
    let cfg = view.dynamic_config();
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let cluster_lsn = view.status.optime.unwrap_or_default();
    let sync = view.sync.as_ref().map(|s| &s.value);
    let sync_role = if cfg.synchronous_mode == SynchronousMode::Quorum { "quorum_standby" } else { "sync_standby" };
    let mut members = Vec::new();
    for m in view.members.values() {
        let is_leader = leader == Some(m.name.as_str());
        let role = if is_leader {
            if is_standby_cluster(&cfg.raw) {
                "standby_leader"
            } else {
                "leader"
            }
        } else if cfg.synchronous_mode != SynchronousMode::Off && sync.is_some_and(|s| s.matches(&m.name)) {
            sync_role
        } else {
            "replica"
        };
        let text = |k: &str| m.data.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let state = if role == "leader" { None } else { text("replication_state") };
        let state = state.or(text("state")).unwrap_or("");
        let mut o = Map::new();
        o.insert("name".into(), m.name.clone().into());
        o.insert("role".into(), role.into());
        o.insert("state".into(), state.into());
        o.insert("api_url".into(), m.api_url.clone().map(Value::from).unwrap_or(Value::Null));
        let (host, port) = host_port(m);
        if let Some(h) = host {
            o.insert("host".into(), h.into());
            if let Some(p) = port {
                o.insert("port".into(), p.into());
            }
        }
        for k in ["timeline", "pending_restart", "pending_restart_reason", "scheduled_restart", "tags"] {
            if let Some(v) = m.data.get(k) {
                o.insert(k.into(), v.clone());
            }
        }
        if !is_leader {
            for (prefix, lsn) in [("receive_", m.receive_lsn), ("replay_", m.replay_lsn), ("", m.xlog_location)] {
                let (lsn_key, lag_key) = (format!("{prefix}lsn"), format!("{prefix}lag"));
                match lsn.filter(|l| *l != Lsn::ZERO) {
                    None => {
                        o.insert(lsn_key, "unknown".into());
                        o.insert(lag_key, "unknown".into());
                    }
                    Some(l) => {
                        o.insert(lag_key, cluster_lsn.saturating_sub(l).into());
                        o.insert(lsn_key, l.to_string().into());
                    }
                }
            }
        }
        members.push(Value::Object(o));
    }
    let mut out = Map::new();
    out.insert("members".into(), members.into());
    if cfg.pause {
        out.insert("pause".into(), true.into());
    }
    if let Some(fo) = view.failover.as_ref().map(|f| &f.value) {
        if let Some(at) = &fo.scheduled_at {
            let mut s = Map::new();
            s.insert("at".into(), at.clone().into());
            if let Some(l) = &fo.leader {
                s.insert("from".into(), l.clone().into());
            }
            if let Some(c) = &fo.member {
                s.insert("to".into(), c.clone().into());
            }
            out.insert("scheduled_switchover".into(), Value::Object(s));
        }
    }
    out.insert("scope".into(), scope.into());
    Value::Object(out)
}

/// `GET /history`: the history lines as stored.
pub fn history_json(view: &ClusterView) -> Value {
    Value::Array(view.history.iter().map(|h| h.to_json()).collect())
}

/// Whether an ISO 8601 timestamp names its time zone (`Z` or an offset after the time).
fn has_timezone(s: &str) -> bool {
    let s = s.trim();
    let time = s.get(10..).unwrap_or("");
    s.ends_with(['Z', 'z']) || time.contains(['+', '-'])
}

/// Patroni's `parse_schedule`: 400 without a time zone, 422 when unparsable or in the past.
pub fn parse_schedule(value: &Value, action: &str, now_ms: u64) -> Result<String, Refusal> {
    let unparsable = || {
        Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601",
        )
    };
    let text = value.as_str().ok_or_else(unparsable)?.trim();
    let at = parse_iso8601(text).ok_or_else(unparsable)?;
    if !has_timezone(text) {
        return Err(Refusal::bad(format!("Timezone information is mandatory for the scheduled {action}")));
    }
    if at.0 < now_ms {
        return Err(Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, format!("Cannot schedule {action} in the past")));
    }
    Ok(text.to_string())
}

/// `POST /switchover` or `POST /failover`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManualAction {
    Switchover,
    Failover,
}

impl ManualAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ManualAction::Switchover => "switchover",
            ManualAction::Failover => "failover",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ManualAction::Switchover => "Switchover",
            ManualAction::Failover => "Failover",
        }
    }

    /// "switched" / "failed".
    pub fn past(self) -> &'static str {
        match self {
            ManualAction::Switchover => "switched",
            ManualAction::Failover => "failed",
        }
    }
}

/// A validated manual switchover or failover, ready to be written to the `failover` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualPlan {
    /// A failover request that names a leader is a switchover.
    pub action: ManualAction,
    pub request: FailoverRequest,
    /// The leader when the request was accepted: the wait is over when someone else holds the key.
    pub leader_before: Option<String>,
}

/// A healthy candidate per the member keys (Patroni asks each member's `/patroni`; we read what each member
/// publishes every cycle): PostgreSQL running and failover allowed.
fn member_healthy(m: &Member) -> bool {
    m.is_running() && !m.tags.no_failover()
}

/// Patroni's `do_POST_failover` validation, in Patroni's order, with its messages and status codes.
pub fn plan_manual(
    action: ManualAction,
    body: &Map<String, Value>,
    view: &ClusterView,
    now_ms: u64,
) -> Result<ManualPlan, Refusal> {
    let name = |k: &str| -> Result<Option<String>, Refusal> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Refusal::bad(format!("\"{k}\" must be a string"))),
        }
    };
    let leader = name("leader")?;
    let candidate = match name("candidate")? {
        Some(c) => Some(c),
        None => name("member")?,
    };
    let scheduled = body.get("scheduled_at").filter(|v| !v.is_null() && *v != "");
    let cfg = view.dynamic_config();
    let paused = cfg.pause;
    let mut action = action;

    if action == ManualAction::Failover && candidate.is_none() {
        return Err(Refusal::bad("Failover could be performed only to a specific candidate"));
    }
    if action == ManualAction::Switchover && leader.is_none() {
        return Err(Refusal::bad("Switchover could be performed only from a specific leader"));
    }
    let mut scheduled_at = None;
    if let Some(at) = scheduled {
        if action == ManualAction::Failover {
            return Err(Refusal::bad("Failover can't be scheduled"));
        }
        if paused {
            return Err(Refusal::bad("Can't schedule switchover in the paused state"));
        }
        scheduled_at = Some(parse_schedule(at, action.as_str(), now_ms)?);
    }
    if paused && candidate.is_none() {
        return Err(Refusal::bad("Switchover is possible only to a specific candidate in a paused state"));
    }
    if action == ManualAction::Failover && leader.is_some() {
        action = ManualAction::Switchover;
    }
    if leader.is_some() && leader == candidate {
        return Err(Refusal::bad("Switchover target and source are the same"));
    }
    if scheduled_at.is_none() {
        failover_possible(view, leader.as_deref(), candidate.as_deref(), action)
            .map_err(|m| Refusal::new(StatusCode::PRECONDITION_FAILED, m))?;
    }
    // Keel's readiness gate: a member whose logical slot copies are not ready is not made primary on request
    // unless the request says `"force": true`.
    let forced = body.get("force").and_then(parse_bool).unwrap_or(false);
    if !forced {
        if let Some(risk) = keel_core::slots::manual_failover_risk(view, candidate.as_deref()) {
            return Err(Refusal::new(StatusCode::PRECONDITION_FAILED, slots_at_risk_message(action.title(), &risk)));
        }
    }
    Ok(ManualPlan {
        action,
        request: FailoverRequest { leader, member: candidate, scheduled_at },
        leader_before: view.leader.as_ref().map(|l| l.name.clone()),
    })
}

/// The refusal text for a manual failover or switchover that would put logical slots at risk (shared with the
/// CLI, which adds how to force it).
pub fn slots_at_risk_message(title: &str, risk: &keel_core::slots::SlotsAtRisk) -> String {
    format!(
        "{title} would put logical replication slots at risk: {risk}. Their consumers may miss changes after the \
         switch; wait until `keel slots` shows the copies ready, or force it"
    )
}

/// Patroni's `is_failover_possible`: `Err(message)` when no member could take over.
fn failover_possible(
    view: &ClusterView,
    leader: Option<&str>,
    candidate: Option<&str>,
    action: ManualAction,
) -> Result<(), String> {
    let cfg = view.dynamic_config();
    let current = view.leader.as_ref().map(|l| l.name.as_str());
    if leader.is_some() && current != leader {
        return Err("leader name does not match".into());
    }
    let strict_sync = cfg.synchronous_mode == SynchronousMode::On;
    let in_sync = |n: &str| view.sync.as_ref().is_some_and(|s| s.value.matches(n));
    let act = action.as_str();
    let members: Vec<&Member> = if let Some(c) = candidate {
        if action == ManualAction::Switchover && strict_sync && !in_sync(c) {
            return Err("candidate name does not match with sync_standby".into());
        }
        let found: Vec<&Member> = view.members.values().filter(|m| m.name == c).collect();
        if found.is_empty() {
            return Err("candidate does not exists".into());
        }
        found
    } else if strict_sync {
        let found: Vec<&Member> = view.members.values().filter(|m| in_sync(&m.name)).collect();
        if found.is_empty() {
            return Err(format!("{act} is not possible: can not find sync_standby"));
        }
        found
    } else {
        let found: Vec<&Member> =
            view.members.values().filter(|m| current != Some(m.name.as_str()) && m.api_url.is_some()).collect();
        if found.is_empty() {
            return Err(format!("{act} is not possible: cluster does not have members except leader"));
        }
        found
    };
    if members.iter().any(|m| member_healthy(m)) {
        Ok(())
    } else {
        Err(format!("{act} is not possible: no good candidates have been found"))
    }
}

/// Patroni's `postgres_version_to_int`: `15.2` → 150002, `9.6.24` → 90624.
pub fn postgres_version_to_int(v: &str) -> Result<u32, String> {
    let err = || format!("Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {v}");
    let parts: Vec<u32> = v.split('.').map(|p| p.parse::<u32>().map_err(|_| err())).collect::<Result<_, _>>()?;
    let parts = match parts.as_slice() {
        [major, minor] if *major >= 10 => vec![*major, 0, *minor],
        [_, _, _] => parts,
        _ => return Err(err()),
    };
    if parts[1] > 99 || parts[2] > 99 {
        return Err(err());
    }
    Ok(parts[0] * 10_000 + parts[1] * 100 + parts[2])
}

/// Patroni's `parse_int(value, 's')` for a timeout: an integer, or digits with a unit (`ms`, `s`, `min`, `h`, `d`).
fn parse_seconds(v: &Value) -> Option<Duration> {
    match v {
        Value::Number(n) => n.as_u64().map(Duration::from_secs),
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: u64 = num.parse().ok()?;
            let ms = match unit.trim() {
                "" | "s" => n.checked_mul(1000)?,
                "ms" => n,
                "min" => n.checked_mul(60_000)?,
                "h" => n.checked_mul(3_600_000)?,
                "d" => n.checked_mul(86_400_000)?,
                _ => return None,
            };
            Some(Duration::from_millis(ms))
        }
        _ => None,
    }
}

/// Patroni's `do_POST_restart` validation.
pub fn parse_restart(body: &Map<String, Value>, paused: bool, now_ms: u64) -> Result<RestartRequest, Refusal> {
    if paused && body.contains_key("schedule") {
        return Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "Can't schedule restart in the paused state"));
    }
    let mut req = RestartRequest::default();
    for (k, v) in body {
        match k.as_str() {
            "schedule" => req.schedule = Some(parse_schedule(v, "restart", now_ms)?),
            "role" => {
                let role = v
                    .as_str()
                    .and_then(Role::parse)
                    .filter(|r| matches!(r, Role::Primary | Role::StandbyLeader | Role::Replica));
                let Some(role) = role else {
                    return Err(Refusal::bad("PostgreSQL role should be either primary, standby_leader, or replica"));
                };
                req.role = Some(role.as_str().to_string());
            }
            "postgres_version" => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => String::new(),
                };
                req.postgres_version = Some(postgres_version_to_int(&text).map_err(Refusal::bad)?);
            }
            "timeout" => match parse_seconds(v).filter(|d| !d.is_zero()) {
                Some(d) => req.timeout = Some(d),
                None => return Err(Refusal::bad("Timeout should be a positive number of seconds")),
            },
            "restart_pending" => {
                req.restart_pending = parse_bool(v).ok_or_else(|| Refusal::bad("restart_pending must be a boolean"))?
            }
            other => return Err(Refusal::bad(format!("Unknown filter for the scheduled restart: {other}"))),
        }
    }
    Ok(req)
}

/// Patroni's `Ha.restart_matches`: whether this node passes the restart filters now.
pub fn restart_matches(req: &RestartRequest, st: &NodeStatus) -> bool {
    if let Some(role) = &req.role {
        let mine = if st.is_leader && st.role == Some(Role::StandbyLeader) {
            "standby_leader"
        } else {
            st.role.map(Role::as_str).unwrap_or("")
        };
        if role != mine {
            return false;
        }
    }
    if let Some(v) = req.postgres_version {
        if st.server_version.is_some_and(|mine| v <= mine) {
            return false;
        }
    }
    !req.restart_pending || st.pending_restart
}

/// `POST /reinitialize` body: `{"force": bool, "from_leader": bool}` (both optional).
pub fn parse_reinitialize(body: &Map<String, Value>) -> Result<(bool, bool), Refusal> {
    let flag = |k: &str| match body.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => parse_bool(v).ok_or_else(|| Refusal::bad(format!("\"{k}\" must be a boolean"))),
    };
    Ok((flag("force")?, flag("from_leader")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::view::RawEntry;
    use serde_json::json;

    fn view(entries: &[(&str, &str)]) -> ClusterView {
        ClusterView::from_entries(entries.iter().enumerate().map(|(i, (k, v))| RawEntry {
            key: k.to_string(),
            value: v.to_string(),
            mod_revision: i as i64 + 1,
            lease: 0,
        }))
    }

    const RUNNING_REPLICA: &str = r#"{"state":"running","role":"replica","api_url":"http://h2:8008/patroni","conn_url":"postgres://h2:5433/postgres","xlog_location":90,"receive_lsn":95,"replay_lsn":90,"replication_state":"streaming","timeline":1}"#;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn patch_config_follows_patroni() {
        let mut cfg = body(json!({"ttl": 30, "postgresql": {"parameters": {"a": 1, "b": 2}}, "x": 5, "gone": null}));
        assert!(!patch_config(&mut cfg, &body(json!({"ttl": "30", "absent": null, "gone": null}))));
        let changed = patch_config(
            &mut cfg,
            &body(json!({"postgresql": {"parameters": {"a": null, "c": 3}}, "x": {"y": null}, "new": {"k": null}})),
        );
        assert!(changed);
        assert_eq!(
            Value::Object(cfg),
            json!({"ttl": 30, "postgresql": {"parameters": {"b": 2, "c": 3}}, "x": {"y": null}, "new": {"k": null}})
        );
    }

    #[test]
    fn cluster_json_has_patroni_shape() {
        let v = view(&[
            ("config", r#"{"synchronous_mode":true,"pause":true}"#),
            ("leader", "n1"),
            ("status", r#"{"optime":100}"#),
            ("sync", r#"{"leader":"n1","sync_standby":"n2"}"#),
            (
                "members/n1",
                r#"{"state":"running","role":"primary","api_url":"http://h1:8008/patroni","conn_url":"postgres://u@h1:5432/postgres","timeline":1,"tags":{"x":1}}"#,
            ),
            ("members/n2", RUNNING_REPLICA),
            ("members/n3", r#"{"state":"stopped","conn_url":"postgres://[::1]:5434/postgres"}"#),
            ("failover", r#"{"leader":"n1","member":"n2","scheduled_at":"2030-01-01T00:00:00+00:00"}"#),
        ]);
        let j = cluster_as_json(&v, "batman");
        assert_eq!(j["scope"], "batman");
        assert_eq!(j["pause"], true);
        assert_eq!(j["scheduled_switchover"], json!({"at":"2030-01-01T00:00:00+00:00","from":"n1","to":"n2"}));
        let m = j["members"].as_array().unwrap();
        assert_eq!(m[0]["role"], "leader");
        assert_eq!((m[0]["host"].as_str(), m[0]["port"].as_u64()), (Some("h1"), Some(5432)));
        assert_eq!(m[0]["tags"], json!({"x":1}));
        assert!(m[0].get("lag").is_none());
        assert_eq!(m[1]["role"], "sync_standby");
        assert_eq!(m[1]["state"], "streaming");
        assert_eq!((m[1]["lag"].as_u64(), m[1]["receive_lag"].as_u64()), (Some(10), Some(5)));
        assert_eq!(m[1]["lsn"], "0/5A");
        assert_eq!(m[2]["role"], "replica");
        assert_eq!(m[2]["host"], "::1");
        assert_eq!(m[2]["lag"], "unknown");
        assert_eq!(m[2]["api_url"], Value::Null);
    }

    #[test]
    fn schedules_need_a_zone_and_the_future() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_schedule(&json!("2030-01-01T00:00:00Z"), "switchover", now).unwrap(), "2030-01-01T00:00:00Z");
        assert!(parse_schedule(&json!("2030-01-01T00:00:00-05:00"), "switchover", now).is_ok());
        assert_eq!(parse_schedule(&json!("2030-01-01T00:00:00"), "restart", now).unwrap_err().code, 400);
        assert_eq!(parse_schedule(&json!("2020-01-01T00:00:00Z"), "restart", now).unwrap_err().code, 422);
        assert_eq!(parse_schedule(&json!("tomorrow"), "restart", now).unwrap_err().code, 422);
        assert_eq!(parse_schedule(&json!(5), "restart", now).unwrap_err().code, 422);
    }

    #[test]
    fn manual_validation_messages() {
        let leader = r#"{"state":"running","role":"primary","api_url":"http://h1:8008/patroni"}"#;
        let v = view(&[("leader", "n1"), ("members/n1", leader), ("members/n2", RUNNING_REPLICA)]);
        let now = 1_800_000_000_000;
        let err = |a, b: Value, v: &ClusterView| {
            let r = plan_manual(a, &body(b), v, now).unwrap_err();
            (r.code.as_u16(), r.message)
        };
        use ManualAction::*;
        assert_eq!(err(Failover, json!({"x":1}), &v).1, "Failover could be performed only to a specific candidate");
        assert_eq!(
            err(Switchover, json!({"candidate":"n2"}), &v).1,
            "Switchover could be performed only from a specific leader"
        );
        assert_eq!(err(Switchover, json!({"leader":5}), &v).0, 400);
        assert_eq!(err(Switchover, json!({"leader":"n9"}), &v), (412, "leader name does not match".into()));
        assert_eq!(
            err(Switchover, json!({"leader":"n1","candidate":"n9"}), &v),
            (412, "candidate does not exists".into())
        );
        assert_eq!(err(Switchover, json!({"leader":"n1","candidate":"n1"}), &v).0, 400);
        assert_eq!(
            err(Failover, json!({"candidate":"n2","scheduled_at":"2040-01-01T00:00:00Z"}), &v).1,
            "Failover can't be scheduled"
        );
        let p = plan_manual(Switchover, &body(json!({"leader":"n1"})), &v, now).unwrap();
        assert_eq!(p.request.member, None);
        assert_eq!(p.leader_before.as_deref(), Some("n1"));
        let p = plan_manual(Failover, &body(json!({"leader":"n1","candidate":"n2"})), &v, now).unwrap();
        assert_eq!(p.action, Switchover);
        let p = plan_manual(
            Switchover,
            &body(json!({"leader":"n1","candidate":"n2","scheduled_at":"2040-01-01T00:00:00Z"})),
            &v,
            now,
        )
        .unwrap();
        assert_eq!(p.request.scheduled_at.as_deref(), Some("2040-01-01T00:00:00Z"));

        let alone = view(&[("leader", "n1"), ("members/n1", leader)]);
        assert_eq!(
            err(Switchover, json!({"leader":"n1"}), &alone),
            (412, "switchover is not possible: cluster does not have members except leader".into())
        );
        let stopped = view(&[("leader", "n1"), ("members/n1", leader), ("members/n2", r#"{"state":"stopped"}"#)]);
        assert_eq!(
            err(Failover, json!({"candidate":"n2"}), &stopped),
            (412, "failover is not possible: no good candidates have been found".into())
        );
        let paused = view(&[("config", r#"{"pause":true}"#), ("leader", "n1"), ("members/n2", RUNNING_REPLICA)]);
        assert_eq!(
            err(Switchover, json!({"leader":"n1"}), &paused).1,
            "Switchover is possible only to a specific candidate in a paused state"
        );
        assert_eq!(
            err(Switchover, json!({"leader":"n1","candidate":"n2","scheduled_at":"2040-01-01T00:00:00Z"}), &paused).1,
            "Can't schedule switchover in the paused state"
        );
        let sync = view(&[
            ("config", r#"{"synchronous_mode":true}"#),
            ("leader", "n1"),
            ("sync", r#"{"leader":"n1","sync_standby":null}"#),
            ("members/n2", RUNNING_REPLICA),
        ]);
        assert_eq!(err(Switchover, json!({"leader":"n1","candidate":"n2"}), &sync).0, 412);
        assert_eq!(
            err(Switchover, json!({"leader":"n1"}), &sync).1,
            "switchover is not possible: can not find sync_standby"
        );
    }

    #[test]
    fn unready_candidate_needs_force() {
        let config = r#"{"slots":{"cdc":{"type":"logical","database":"postgres","plugin":"test_decoding"}}}"#;
        let leader = r#"{"state":"running","role":"primary","api_url":"http://h1:8008/patroni"}"#;
        let unready = RUNNING_REPLICA.replacen('{', r#"{"keel_slots":{"ready":false,"unready":["cdc"]},"#, 1);
        let v = view(&[("config", config), ("leader", "n1"), ("members/n1", leader), ("members/n2", &unready)]);
        let now = 1_800_000_000_000;
        use ManualAction::*;
        for (action, b) in
            [(Switchover, json!({"leader":"n1","candidate":"n2"})), (Failover, json!({"candidate":"n2"}))]
        {
            let r = plan_manual(action, &body(b.clone()), &v, now).unwrap_err();
            assert_eq!(r.code, StatusCode::PRECONDITION_FAILED);
            assert!(r.message.contains("n2: cdc not ready"), "{}", r.message);
            let mut forced = body(b);
            forced.insert("force".into(), json!(true));
            assert!(plan_manual(action, &forced, &v, now).is_ok());
        }
        // Without a candidate the race picks; with no ready member it would pick an unready one.
        let r = plan_manual(Switchover, &body(json!({"leader":"n1"})), &v, now).unwrap_err();
        assert!(r.message.contains("n2: cdc not ready"), "{}", r.message);
    }

    #[test]
    fn restart_filters() {
        let now = 1_800_000_000_000;
        let r = parse_restart(
            &body(json!({"role":"master","postgres_version":"15.2","restart_pending":true,"timeout":"30s"})),
            false,
            now,
        )
        .unwrap();
        assert_eq!(r.role.as_deref(), Some("primary"));
        assert_eq!(r.postgres_version, Some(150002));
        assert_eq!(r.timeout, Some(Duration::from_secs(30)));
        for bad in [json!({"role":"x"}), json!({"postgres_version":"9.6"}), json!({"timeout":0}), json!({"foo":1})] {
            assert_eq!(parse_restart(&body(bad.clone()), false, now).unwrap_err().code, 400, "{bad}");
        }
        let sched = json!({"schedule":"2040-01-01T00:00:00Z"});
        assert_eq!(parse_restart(&body(sched.clone()), true, now).unwrap_err().code, 500);
        assert!(parse_restart(&body(sched), false, now).unwrap().schedule.is_some());
        assert_eq!(postgres_version_to_int("9.6.24"), Ok(90624));
        let st = NodeStatus {
            role: Some(Role::Replica),
            server_version: Some(150004),
            pending_restart: false,
            ..Default::default()
        };
        assert!(restart_matches(&RestartRequest::default(), &st));
        assert!(!restart_matches(&RestartRequest { role: Some("primary".into()), ..Default::default() }, &st));
        assert!(!restart_matches(&RestartRequest { postgres_version: Some(150004), ..Default::default() }, &st));
        assert!(restart_matches(&RestartRequest { postgres_version: Some(160000), ..Default::default() }, &st));
        assert!(!restart_matches(&RestartRequest { restart_pending: true, ..Default::default() }, &st));
    }
}
