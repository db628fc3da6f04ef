//! `keel remove CLUSTER --force`: deletes every key of the cluster from the store. The cluster name must be
//! typed and match the configuration's scope (patronictl asks for it interactively), and `--force` is required.

use clap::Args;

use crate::cli::ctl::{usage, Ctl, CtlResult};

#[derive(Debug, Args, Default)]
pub struct RemoveArgs {
    /// The cluster to remove; must equal the configuration's scope.
    pub cluster_name: String,
    /// Confirm: wipe the cluster's keys from the store.
    #[arg(long)]
    pub force: bool,
}

/// Checks the confirmation before anything is read.
pub fn check(scope: &str, args: &RemoveArgs) -> CtlResult {
    if args.cluster_name != scope {
        return usage(format!(
            "the cluster name {:?} does not match the configuration's scope {scope:?}; nothing was removed",
            args.cluster_name
        ));
    }
    if !args.force {
        return usage(format!(
            "`keel remove {scope}` wipes every key of cluster {scope} from the store; pass --force to confirm"
        ));
    }
    Ok(())
}

pub async fn remove(ctl: &Ctl, args: &RemoveArgs) -> CtlResult {
    check(&ctl.scope, args)?;
    let view = ctl.load_existing().await?;
    if let Some(l) = view.leader_member().filter(|m| m.is_running()) {
        eprintln!(
            "warning: cluster {} still has a running leader ({}); its agents will write their keys again",
            ctl.scope, l.name
        );
    }
    ctl.store.remove_cluster().await?;
    println!("Cluster {} removed from the store (all keys under {})", ctl.scope, ctl.store.prefix());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ctl::CtlError;

    #[test]
    fn needs_name_and_force() {
        let a = |n: &str, force| RemoveArgs { cluster_name: n.into(), force };
        assert!(matches!(check("b", &a("x", true)), Err(CtlError::Usage(_))));
        assert!(matches!(check("b", &a("b", false)), Err(CtlError::Usage(_))));
        assert!(check("b", &a("b", true)).is_ok());
    }
}
