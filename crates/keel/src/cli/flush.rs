//! `keel flush [CLUSTER_NAME] [MEMBER...] restart|switchover`: cancel scheduled actions. `restart`: `DELETE
//! /restart` on each chosen member that has a scheduled restart. `switchover`: `DELETE /switchover` on the
//! leader; when its REST API cannot be reached (or there is no leader), the `failover` key is cleared directly
//! (compare-and-swap on its revision), as patronictl does.

use std::time::Duration;

use clap::Args;

use crate::cli::ctl::{failed, usage, Ctl, CtlResult};
use crate::cli::members::{select, summary, RoleFilter};
use crate::cli::timefmt;

#[derive(Debug, Args, Default)]
pub struct FlushArgs {
    /// `[CLUSTER_NAME] [MEMBER...] restart|switchover`.
    #[arg(required = true, num_args = 1..)]
    pub args: Vec<String>,
    /// With `restart`: only members with this role.
    #[arg(short = 'r', long = "role", value_enum, default_value_t = RoleFilter::Any)]
    pub role: RoleFilter,
    /// With `restart`: act on every member when none is named; no confirmation is ever asked.
    #[arg(long)]
    pub force: bool,
}

const TIMEOUT: Duration = Duration::from_secs(30);

pub async fn flush(ctl: &Ctl, args: &FlushArgs) -> CtlResult {
    let Some((target, names)) = args.args.split_last() else {
        return usage("flush needs a target: restart or switchover");
    };
    match target.as_str() {
        "restart" => flush_restart(ctl, names, args).await,
        "switchover" => flush_switchover(ctl).await,
        other => usage(format!("flush target must be restart or switchover, not {other:?}")),
    }
}

async fn flush_restart(ctl: &Ctl, names: &[String], args: &FlushArgs) -> CtlResult {
    let view = ctl.load_existing().await?;
    let members = select(&view, &ctl.scope, names, args.role, args.force, "flush")?;
    let rest = ctl.rest()?;
    let mut failures = 0;
    let mut total = 0;
    for m in members.iter().filter(|m| m.data.get("scheduled_restart").is_some()) {
        total += 1;
        match rest.delete(m.api_url.as_deref(), "restart", TIMEOUT).await {
            Ok(r) if r.ok() => println!("Success: flush scheduled restart for member {}", m.name),
            Ok(r) => {
                failures += 1;
                println!(
                    "Failed: flush scheduled restart for member {}, status code={}, ({})",
                    m.name, r.status, r.body
                );
            }
            Err(e) => {
                failures += 1;
                println!("Failed: flush scheduled restart for member {}: {e}", m.name);
            }
        }
    }
    if total == 0 {
        println!("No scheduled restart on the selected members");
    }
    summary("flush", failures, total)
}

async fn flush_switchover(ctl: &Ctl) -> CtlResult {
    let view = ctl.load_existing().await?;
    if let Some(leader) = view.leader_member() {
        match ctl.rest()?.delete(leader.api_url.as_deref(), "switchover", TIMEOUT).await {
            Ok(r) if r.status == 200 => {
                println!("Success: {}", r.body);
                return Ok(());
            }
            Ok(r) if r.status == 404 => return failed(r.body),
            Ok(r) => println!("Failed: {}", r.body),
            Err(e) => println!("{} Could not reach the leader {} ({e})", timefmt::now_string(), leader.name),
        }
    }
    let Some(request) = &view.failover else {
        return failed(format!("no switchover is scheduled in cluster {}", ctl.scope));
    };
    if ctl.store.clear_failover(Some(request.version)).await? {
        println!("Success: cleared the failover key {}", request.value.to_json());
        Ok(())
    } else {
        failed("the failover key changed while it was being cleared; run the command again")
    }
}
