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
    for m in &members {
        let reply = rest.post(m.api_url.as_deref(), "reinitialize", Some(&body), Duration::from_secs(30)).await;
        if !report(&m.name, "reinitialize", &reply) {
            failures += 1;
        }
    }
    summary("reinitialize", failures, members.len())
}
