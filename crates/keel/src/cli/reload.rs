//! `keel reload`: `POST /reload` to each chosen member's REST API (re-read the configuration file).

use std::time::Duration;

use clap::Args;

use crate::cli::ctl::{Ctl, CtlResult};
use crate::cli::members::{select, summary, RoleFilter};

#[derive(Debug, Args, Default)]
pub struct ReloadArgs {
    /// `[CLUSTER_NAME] [MEMBER...]`: the members to reload (all, with --force, when none is named).
    pub names: Vec<String>,
    /// Reload only members with this role.
    #[arg(short = 'r', long = "role", value_enum, default_value_t = RoleFilter::Any)]
    pub role: RoleFilter,
    /// Act on every member when none is named (patronictl would ask); no confirmation is ever asked.
    #[arg(long)]
    pub force: bool,
}

pub async fn reload(ctl: &Ctl, args: &ReloadArgs) -> CtlResult {
    let view = ctl.load_existing().await?;
    let members = select(&view, &ctl.scope, &args.names, args.role, args.force, "reload")?;
    let loop_wait = view.dynamic_config().timing.loop_wait;
    let rest = ctl.rest()?;
    let mut failures = 0;
    for m in &members {
        match rest.post(m.api_url.as_deref(), "reload", None, Duration::from_secs(30)).await {
            Ok(r) if r.status == 200 => println!("No changes to apply on member {}", m.name),
            Ok(r) if r.status == 202 => println!(
                "Reload request received for member {} and will be processed within {loop_wait} seconds",
                m.name
            ),
            Ok(r) => {
                failures += 1;
                println!("Failed: reload for member {}, status code={}, ({})", m.name, r.status, r.body);
            }
            Err(e) => {
                failures += 1;
                println!("Failed: reload for member {}, the REST API is unreachable: {e}", m.name);
            }
        }
    }
    summary("reload", failures, members.len())
}
