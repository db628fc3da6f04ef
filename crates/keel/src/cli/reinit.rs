//! `keel reinit`: `POST /reinitialize` to each chosen replica's REST API (rebuild it from the leader).

use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::cli::ctl::{failed, Ctl, CtlResult};
use crate::cli::members::{report, select, summary, RoleFilter};

#[derive(Debug, Args, Default)]
pub struct ReinitArgs {
    /// `[CLUSTER_NAME] [MEMBER...]`: the replicas to rebuild (all, with --force, when none is named).
    pub names: Vec<String>,
    /// Take the base backup from the leader even if another member is configured as the source.
    #[arg(long = "from-leader")]
    pub from_leader: bool,
    /// Cancel a running action on the member first (sent as `force` in the request); also allows acting on
    /// every replica when none is named. No confirmation is ever asked.
    #[arg(long)]
    pub force: bool,
    /// Wait until the members are no longer `creating replica` (asked on `GET /patroni`, as patronictl does).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (default: 3600).
    #[arg(long = "wait-timeout", value_name = "SECONDS")]
    pub wait_timeout: Option<u64>,
}

pub async fn reinit(ctl: &Ctl, args: &ReinitArgs) -> CtlResult {
    let view = ctl.load_existing().await?;
    if let Some(l) = &view.leader {
        if args.names.contains(&l.name) {
            return failed(format!("{} is the leader of cluster {}; reinit only rebuilds replicas", l.name, ctl.scope));
        }
    }
    let members = select(&view, &ctl.scope, &args.names, RoleFilter::Replica, args.force, "reinitialize")?;
    let rest = ctl.rest()?;
    let body = json!({"force": args.force, "from_leader": args.from_leader});
    let mut failures = 0;
    let mut started = Vec::new();
    for m in &members {
        let reply = rest.post(m.api_url.as_deref(), "reinitialize", Some(&body), Duration::from_secs(30)).await;
        if report(&m.name, "reinitialize", &reply) {
            started.push(*m);
        } else {
            failures += 1;
        }
    }
    if args.wait && !started.is_empty() {
        let names: Vec<&str> = started.iter().map(|m| m.name.as_str()).collect();
        println!("Waiting for reinitialize to complete on: {}", names.join(", "));
        let limit = Duration::from_secs(args.wait_timeout.unwrap_or(3600));
        let deadline = tokio::time::Instant::now() + limit;
        while !started.is_empty() {
            let mut still = Vec::new();
            for m in started {
                let state = match rest.get_json(m.api_url.as_deref(), "patroni", Duration::from_secs(5)).await {
                    Ok((_, Some(data))) => data.get("state").and_then(|s| s.as_str()).map(str::to_string),
                    // Not answering (restarting, say) counts as not done yet.
                    _ => Some("creating replica".to_string()),
                };
                if state.as_deref() == Some("creating replica") {
                    still.push(m);
                } else {
                    println!("Reinitialize is completed on: {}", m.name);
                }
            }
            started = still;
            if started.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<&str> = started.iter().map(|m| m.name.as_str()).collect();
                return failed(format!(
                    "reinitialize still running after {}s on: {}",
                    limit.as_secs(),
                    names.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    summary("reinitialize", failures, members.len())
}
