//! `keel switchover` and `keel failover`, as patronictl does them: validate against the store, then
//! `POST /switchover` (or `/failover`) to the leader's REST API (to the candidate when there is no leader). When
//! the API cannot be reached, the request is written to the store's `failover` key instead, for the agents to
//! act on. Unless the switchover is scheduled, Keel then watches the store until the leader changes (at most
//! `--wait-timeout` seconds, default 2 × ttl) and prints the new member list.

use std::time::Duration;

use clap::Args;
use keel_core::dynconfig::SynchronousMode;
use keel_core::view::{ClusterView, FailoverRequest};
use serde_json::{json, Value};

use crate::cli::ctl::{failed, usage, Ctl, CtlResult};
use crate::cli::list;
use crate::cli::output::Format;
use crate::cli::timefmt;

#[derive(Debug, Args, Default)]
pub struct SwitchoverArgs {
    /// Cluster name (default: the configuration's scope).
    pub cluster_name: Option<String>,
    /// The current leader (checked against the store).
    #[arg(long = "leader", visible_alias = "primary", alias = "master", value_name = "NAME")]
    pub leader: Option<String>,
    /// The member to switch over to (default: the healthiest replica, chosen by the leader).
    #[arg(long, value_name = "NAME")]
    pub candidate: Option<String>,
    /// When to switch over: an ISO 8601 time (`2030-01-01T10:00+00:00`; no zone means UTC) or `now`.
    #[arg(long, value_name = "TIME")]
    pub scheduled: Option<String>,
    /// Proceed even when the candidate's copies of logical slots are not ready (their consumers may miss
    /// changes). Keel never asks for confirmation.
    #[arg(long)]
    pub force: bool,
    /// How long to wait for the new leader, in seconds (default: 2 × ttl; 0: do not wait).
    #[arg(long = "wait-timeout", value_name = "SECONDS")]
    pub wait_timeout: Option<u64>,
}

#[derive(Debug, Args, Default)]
pub struct FailoverArgs {
    /// Cluster name (default: the configuration's scope).
    pub cluster_name: Option<String>,
    /// The member to fail over to (required).
    #[arg(long, value_name = "NAME")]
    pub candidate: Option<String>,
    /// Proceed even when the candidate's copies of logical slots are not ready (their consumers may miss
    /// changes). Keel never asks for confirmation.
    #[arg(long)]
    pub force: bool,
    /// How long to wait for the new leader, in seconds (default: 2 × ttl; 0: do not wait).
    #[arg(long = "wait-timeout", value_name = "SECONDS")]
    pub wait_timeout: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Switchover,
    Failover,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Switchover => "switchover",
            Action::Failover => "failover",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Action::Switchover => "Switchover",
            Action::Failover => "Failover",
        }
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    pub leader: Option<String>,
    pub candidate: Option<String>,
    /// ISO 8601 with offset, and seconds since the epoch.
    pub scheduled_at: Option<String>,
    /// Go ahead although logical slots are at risk (sent as `"force": true`).
    pub force: bool,
}

impl Plan {
    /// The REST body Patroni expects.
    pub fn body(&self) -> Value {
        let mut b = serde_json::Map::new();
        if self.action == Action::Switchover {
            if let Some(l) = &self.leader {
                b.insert("leader".into(), json!(l));
            }
        }
        if let Some(c) = &self.candidate {
            b.insert("candidate".into(), json!(c));
        }
        if let Some(s) = &self.scheduled_at {
            b.insert("scheduled_at".into(), json!(s));
        }
        if self.force {
            b.insert("force".into(), json!(true));
        }
        Value::Object(b)
    }

    /// The `failover` key written when the REST API cannot be reached (patronictl's `dcs.manual`).
    pub fn failover_key(&self) -> FailoverRequest {
        FailoverRequest {
            leader: if self.action == Action::Switchover { self.leader.clone() } else { None },
            member: self.candidate.clone(),
            scheduled_at: self.scheduled_at.clone(),
        }
    }
}

/// patronictl's checks: a leader for a switchover (matching `--leader`), a candidate for a failover, the
/// candidate a member other than the leader and not tagged `nofailover`, a future time when scheduled, and no
/// scheduling while paused. Keel's own: no member with unready logical slot copies unless `force`.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    view: &ClusterView,
    scope: &str,
    action: Action,
    leader: Option<&str>,
    candidate: Option<&str>,
    scheduled: Option<&str>,
    force: bool,
    now: f64,
) -> CtlResult<Plan> {
    let current = view.leader.as_ref().map(|l| l.name.clone());
    if action == Action::Switchover {
        let Some(current) = &current else { return failed("This cluster has no leader") };
        if let Some(l) = leader {
            if l != current {
                return failed(format!("Member {l} is not the leader of cluster {scope}"));
            }
        }
    }
    let mut candidates: Vec<&str> = view
        .members
        .values()
        .filter(|m| Some(&m.name) != current.as_ref() && !m.tags.no_failover())
        .map(|m| m.name.as_str())
        .collect();
    candidates.sort();
    if candidates.is_empty() {
        return failed(format!("No candidates found to {} to", action.name()));
    }
    if action == Action::Failover && candidate.is_none() {
        return usage(
            "Failover could be performed only to a specific candidate: pass --candidate NAME (or use switchover)",
        );
    }
    if let Some(c) = candidate {
        if Some(c) == current.as_deref() {
            return failed(format!("{} target and source are the same.", action.title()));
        }
        if !candidates.contains(&c) {
            return failed(format!(
                "{}: Member {c} does not exist in cluster {scope} or is tagged as nofailover",
                action.title()
            ));
        }
    }
    if action == Action::Switchover {
        // Patroni's own rules (the REST API answers 412/400 for these; checking here keeps the store fallback
        // from writing a request the leader would refuse).
        if view.is_paused() && candidate.is_none() {
            return failed("Switchover is possible only to a specific candidate in a paused state: pass --candidate");
        }
        let config = view.dynamic_config();
        if config.synchronous_mode == SynchronousMode::On {
            if let Some(c) = candidate {
                if !view.sync.as_ref().is_some_and(|s| s.value.matches(c)) {
                    return failed(format!(
                        "Switchover: candidate {c} is not a synchronous standby (synchronous_mode is on)"
                    ));
                }
            }
        }
    }
    let scheduled_at = match scheduled.map(str::trim) {
        None | Some("now") | Some("") => None,
        Some(s) => {
            let (at, iso) = timefmt::parse_iso(s).map_err(crate::cli::ctl::CtlError::Usage)?;
            if at < now {
                return usage(format!("Can not schedule switchover in the past ({iso})"));
            }
            if view.is_paused() {
                return failed("Can't schedule switchover in the paused state");
            }
            Some(iso)
        }
    };
    if let Some(risk) = keel_core::slots::manual_failover_risk(view, candidate) {
        let message = crate::api::control::slots_at_risk_message(action.title(), &risk);
        if !force {
            return failed(format!("{message} with --force"));
        }
        eprintln!("warning: {message}; going ahead (--force)");
    }
    Ok(Plan { action, leader: current, candidate: candidate.map(str::to_string), scheduled_at, force })
}

pub async fn switchover(ctl: &Ctl, args: &SwitchoverArgs) -> CtlResult {
    let view = ctl.load_existing().await?;
    let p = plan(
        &view,
        &ctl.scope,
        Action::Switchover,
        args.leader.as_deref(),
        args.candidate.as_deref(),
        args.scheduled.as_deref(),
        args.force,
        timefmt::now_epoch(),
    )?;
    execute(ctl, &view, &p, args.wait_timeout).await
}

pub async fn failover(ctl: &Ctl, args: &FailoverArgs) -> CtlResult {
    let view = ctl.load_existing().await?;
    let p = plan(
        &view,
        &ctl.scope,
        Action::Failover,
        None,
        args.candidate.as_deref(),
        None,
        args.force,
        timefmt::now_epoch(),
    )?;
    execute(ctl, &view, &p, args.wait_timeout).await
}

async fn execute(ctl: &Ctl, view: &ClusterView, p: &Plan, wait_timeout: Option<u64>) -> CtlResult {
    println!("Current cluster topology");
    print!("{}", list::render(&ctl.scope, view, Format::Pretty, false, false));
    let config = view.dynamic_config();
    // The REST API polls for up to 2 × max(10, loop_wait) seconds before answering an unscheduled request.
    let rest_timeout = Duration::from_secs(2 * config.timing.loop_wait.max(10) + 15);
    let target = match &p.leader {
        Some(l) => view.members.get(l),
        None => p.candidate.as_ref().and_then(|c| view.members.get(c)),
    };
    let rest = ctl.rest()?;
    let body = p.body();
    let api_url = target.and_then(|m| m.api_url.as_deref());
    let mut reply = rest.post(api_url, p.action.name(), Some(&body), rest_timeout).await;
    if let Ok(r) = &reply {
        // An agent without /switchover (old Patroni) takes the request on /failover.
        if r.status == 501
            && p.action == Action::Switchover
            && r.body.contains("Server does not support this operation")
        {
            reply = rest.post(api_url, "failover", Some(&body), rest_timeout).await;
        }
    }
    match reply {
        Ok(r) if r.status == 200 || r.status == 202 => println!("{} {}", timefmt::now_string(), r.body),
        Ok(r) => return failed(format!("{} failed, details: {}, {}", p.action.title(), r.status, r.body)),
        Err(why) => {
            println!(
                "{} Could not {} using Patroni api ({why}), falling back to DCS",
                timefmt::now_string(),
                p.action.name()
            );
            ctl.store.set_failover(&p.failover_key(), None).await?;
            println!("{} wrote the failover key: {}", timefmt::now_string(), p.failover_key().to_json());
        }
    }
    if p.scheduled_at.is_some() {
        return Ok(());
    }
    let limit = Duration::from_secs(wait_timeout.unwrap_or(2 * config.timing.ttl));
    if limit.is_zero() {
        return Ok(());
    }
    let old = p.leader.clone();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let now = ctl.load().await?;
        let new = now.leader.as_ref().map(|l| l.name.clone());
        if new.is_some() && new != old {
            print!("{}", list::render(&ctl.scope, &now, Format::Pretty, false, false));
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return failed(format!(
                "the leader is still {} after {}s; the {} request stays in the store for the agents to act on",
                old.as_deref().unwrap_or("(none)"),
                limit.as_secs(),
                p.action.name()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ctl::CtlError;
    use keel_core::view::RawEntry;

    fn e(key: &str, value: &str) -> RawEntry {
        RawEntry { key: key.into(), value: value.into(), mod_revision: 1, lease: 0 }
    }

    fn view() -> ClusterView {
        ClusterView::from_entries([
            e("leader", "n1"),
            e("members/n1", "{}"),
            e("members/n2", "{}"),
            e("members/n3", r#"{"tags":{"nofailover":true}}"#),
        ])
    }

    fn msg(r: CtlResult<Plan>) -> String {
        match r {
            Err(CtlError::Failed(m)) | Err(CtlError::Usage(m)) => m,
            Ok(p) => panic!("unexpected plan {p:?}"),
        }
    }

    #[test]
    fn switchover_validation() {
        let v = view();
        let sw = |l: Option<&str>, c: Option<&str>| plan(&v, "b", Action::Switchover, l, c, None, false, 0.0);
        assert_eq!(msg(sw(Some("n2"), None)), "Member n2 is not the leader of cluster b");
        assert_eq!(msg(sw(None, Some("n1"))), "Switchover target and source are the same.");
        assert_eq!(
            msg(sw(None, Some("n3"))),
            "Switchover: Member n3 does not exist in cluster b or is tagged as nofailover"
        );
        assert!(msg(sw(None, Some("zz"))).contains("does not exist"));
        let p = sw(Some("n1"), Some("n2")).unwrap();
        assert_eq!(p.body(), json!({"leader": "n1", "candidate": "n2"}));
        let p = sw(None, None).unwrap();
        assert_eq!(p.body(), json!({"leader": "n1"}));
        assert_eq!(p.failover_key().to_json(), json!({"leader": "n1"}));
        let no_leader = ClusterView::from_entries([e("members/n1", "{}")]);
        assert_eq!(
            msg(plan(&no_leader, "b", Action::Switchover, None, None, None, false, 0.0)),
            "This cluster has no leader"
        );
    }

    #[test]
    fn pause_and_synchronous_mode_rules() {
        let paused = ClusterView::from_entries([
            e("config", r#"{"pause":true,"synchronous_mode":true}"#),
            e("leader", "n1"),
            e("sync", r#"{"leader":"n1","sync_standby":"n2"}"#),
            e("members/n1", "{}"),
            e("members/n2", "{}"),
            e("members/n3", "{}"),
        ]);
        let sw = |c: Option<&str>| plan(&paused, "b", Action::Switchover, None, c, None, false, 0.0);
        assert!(msg(sw(None)).contains("only to a specific candidate in a paused state"));
        assert!(msg(sw(Some("n3"))).contains("not a synchronous standby"));
        assert!(sw(Some("n2")).is_ok());
        // A failover may go to an asynchronous replica.
        assert!(plan(&paused, "b", Action::Failover, None, Some("n3"), None, false, 0.0).is_ok());
    }

    #[test]
    fn scheduling() {
        let v = view();
        let p = plan(&v, "b", Action::Switchover, None, Some("n2"), Some("2030-01-01T10:00Z"), false, 0.0).unwrap();
        assert_eq!(p.scheduled_at.as_deref(), Some("2030-01-01T10:00:00+00:00"));
        assert_eq!(p.body()["scheduled_at"], json!("2030-01-01T10:00:00+00:00"));
        let past = plan(&v, "b", Action::Switchover, None, Some("n2"), Some("2000-01-01T10:00Z"), false, 1e9);
        assert!(msg(past).contains("in the past"));
        let p = plan(&v, "b", Action::Switchover, None, Some("n2"), Some("now"), false, 1e9).unwrap();
        assert_eq!(p.scheduled_at, None);
    }

    #[test]
    fn unready_slot_copies_need_force() {
        let v = ClusterView::from_entries([
            e("config", r#"{"slots":{"cdc":{"type":"logical","database":"postgres","plugin":"test_decoding"}}}"#),
            e("leader", "n1"),
            e("members/n1", "{}"),
            e("members/n2", r#"{"state":"running","keel_slots":{"ready":false,"unready":["cdc"]}}"#),
        ]);
        let m = msg(plan(&v, "b", Action::Failover, None, Some("n2"), None, false, 0.0));
        assert!(m.contains("n2: cdc not ready") && m.contains("--force"), "{m}");
        let p = plan(&v, "b", Action::Failover, None, Some("n2"), None, true, 0.0).unwrap();
        assert_eq!(p.body(), json!({"candidate": "n2", "force": true}));
    }

    #[test]
    fn failover_needs_a_candidate_and_works_without_leader() {
        let v = view();
        assert!(matches!(plan(&v, "b", Action::Failover, None, None, None, false, 0.0), Err(CtlError::Usage(_))));
        let no_leader = ClusterView::from_entries([e("members/n1", "{}"), e("members/n2", "{}")]);
        let p = plan(&no_leader, "b", Action::Failover, None, Some("n2"), None, false, 0.0).unwrap();
        assert_eq!(p.body(), json!({"candidate": "n2"}));
        assert_eq!(p.failover_key().to_json(), json!({"member": "n2"}));
    }
}
