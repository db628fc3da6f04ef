//! `keel restart`: `POST /restart` to each chosen member's REST API.

use std::time::Duration;

use clap::Args;
use serde_json::{json, Map, Value};

use crate::cli::ctl::{usage, Ctl, CtlError, CtlResult};
use crate::cli::members::{select, summary, RoleFilter};
use crate::cli::timefmt;

#[derive(Debug, Args, Default)]
pub struct RestartArgs {
    /// `[CLUSTER_NAME] [MEMBER...]`: the members to restart (all, with --force, when none is named).
    pub names: Vec<String>,
    /// Restart only members with this role.
    #[arg(short = 'r', long = "role", value_enum, default_value_t = RoleFilter::Any)]
    pub role: RoleFilter,
    /// Restart one of the selected members, picked at random.
    #[arg(long)]
    pub any: bool,
    /// Restart only members with pending restart.
    #[arg(long)]
    pub pending: bool,
    /// Restart only members running an older PostgreSQL version than this.
    #[arg(long = "pg-version", value_name = "VERSION")]
    pub pg_version: Option<String>,
    /// Fail the restart if PostgreSQL does not come up within this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Schedule the restart: an ISO 8601 time (no zone means UTC).
    #[arg(long, value_name = "TIME")]
    pub scheduled: Option<String>,
    /// Act on every member when none is named (patronictl would ask); no confirmation is ever asked.
    #[arg(long)]
    pub force: bool,
}

/// The `POST /restart` body patronictl sends.
pub fn body(args: &RestartArgs) -> CtlResult<Value> {
    let mut b = Map::new();
    if args.pending {
        b.insert("restart_pending".into(), json!(true));
    }
    if let Some(v) = &args.pg_version {
        b.insert("postgres_version".into(), json!(v));
    }
    if let Some(t) = args.timeout {
        b.insert("timeout".into(), json!(t));
    }
    if let Some(s) = args.scheduled.as_deref().filter(|s| *s != "now") {
        let (at, iso) = timefmt::parse_iso(s).map_err(CtlError::Usage)?;
        if at < timefmt::now_epoch() {
            return usage(format!("Can not schedule restart in the past ({iso})"));
        }
        b.insert("schedule".into(), json!(iso));
    }
    Ok(Value::Object(b))
}

pub async fn restart(ctl: &Ctl, args: &RestartArgs) -> CtlResult {
    let body = body(args)?;
    let view = ctl.load_existing().await?;
    if body.get("schedule").is_some() && view.is_paused() {
        return usage("Can't schedule restart in the paused state");
    }
    let mut members = select(&view, &ctl.scope, &args.names, args.role, args.force || args.any, "restart")?;
    if args.any {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let pick = nanos as usize % members.len().max(1);
        members = members.into_iter().skip(pick).take(1).collect();
    }
    let rest = ctl.rest()?;
    // PostgreSQL may take a while to come back: the member answers when the restart is done.
    let timeout = Duration::from_secs(args.timeout.unwrap_or(300) + 30);
    let mut failures = 0;
    for m in &members {
        let reply = rest.post(m.api_url.as_deref(), "restart", Some(&body), timeout).await;
        match &reply {
            Ok(r) if r.status == 200 => println!("Success: restart on member {}", m.name),
            Ok(r) if r.status == 202 => println!("Success: restart scheduled on member {}", m.name),
            Ok(r) if r.status == 409 => {
                failures += 1;
                println!("Failed: another restart is already scheduled on member {}", m.name);
            }
            Ok(r) => {
                failures += 1;
                println!("Failed: restart for member {}, status code={}, ({})", m.name, r.status, r.body);
            }
            Err(e) => {
                failures += 1;
                println!("Failed: restart for member {}, the REST API is unreachable: {e}", m.name);
            }
        }
    }
    summary("restart", failures, members.len())
}
