//! Choosing the members a REST action (`restart`, `reinit`, `reload`) goes to, from patronictl-style positionals
//! `[CLUSTER_NAME] [MEMBER...]`, a `--role` filter and `--force`, and reporting the per-member outcome.

use keel_core::view::{ClusterView, Member};

use crate::cli::ctl::{failed, split_cluster_arg, usage, CtlResult};
use crate::cli::rest::{Reply, Unreachable};

/// `-r/--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RoleFilter {
    #[value(alias = "primary", alias = "master", alias = "standby-leader")]
    Leader,
    #[value(alias = "standby")]
    Replica,
    #[default]
    Any,
}

impl RoleFilter {
    fn accepts(self, view: &ClusterView, m: &Member) -> bool {
        let is_leader = view.leader.as_ref().is_some_and(|l| l.name == m.name);
        match self {
            RoleFilter::Leader => is_leader,
            RoleFilter::Replica => !is_leader,
            RoleFilter::Any => true,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            RoleFilter::Leader => "the leader",
            RoleFilter::Replica => "a replica",
            RoleFilter::Any => "a member",
        }
    }
}

/// The members named in `args` (after an optional leading cluster name), all of which must exist and pass
/// `role`; with no names, every member passing `role`, but only with `force` (patronictl would ask).
pub fn select<'v>(
    view: &'v ClusterView,
    scope: &str,
    args: &[String],
    role: RoleFilter,
    force: bool,
    action: &str,
) -> CtlResult<Vec<&'v Member>> {
    let names = split_cluster_arg(scope, args, view);
    if names.is_empty() {
        let all: Vec<&Member> = view.members.values().filter(|m| role.accepts(view, m)).collect();
        if all.is_empty() {
            return failed(format!("cluster {scope} has no member that is {} to {action}", role.describe()));
        }
        if !force {
            let list: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
            return usage(format!(
                "name the members to {action} ({}), or pass --force to {action} all of them",
                list.join(", ")
            ));
        }
        return Ok(all);
    }
    let mut out = Vec::new();
    for name in names {
        let Some(m) = view.members.get(name) else {
            return failed(format!("{name} is not a member of cluster {scope}"));
        };
        if !role.accepts(view, m) {
            return failed(format!("{name} is not {} of cluster {scope}; cannot {action} it", role.describe()));
        }
        if !out.iter().any(|o: &&Member| o.name == m.name) {
            out.push(m);
        }
    }
    Ok(out)
}

/// patronictl's `check_response`: prints the outcome of `action` on `member`; `true` on success.
pub fn report(member: &str, action: &str, reply: &Result<Reply, Unreachable>) -> bool {
    match reply {
        Ok(r) if r.status < 400 => {
            println!("Success: {action} for member {member}");
            true
        }
        Ok(r) => {
            println!("Failed: {action} for member {member}, status code={}, ({})", r.status, r.body);
            false
        }
        Err(e) => {
            println!("Failed: {action} for member {member}, the REST API is unreachable: {e}");
            false
        }
    }
}

/// The exit outcome after acting on several members.
pub fn summary(action: &str, failures: usize, total: usize) -> CtlResult {
    if failures == 0 {
        Ok(())
    } else {
        failed(format!("{action} failed on {failures} of {total} member(s)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ctl::CtlError;
    use keel_core::view::RawEntry;

    fn view() -> ClusterView {
        let e = |k: &str| RawEntry { key: k.into(), value: "{}".into(), mod_revision: 1, lease: 0 };
        let mut v = ClusterView::from_entries([e("members/a"), e("members/b"), e("members/c")]);
        v.leader = Some(keel_core::view::LeaderKey { name: "a".into(), version: 1, lease: 0 });
        v
    }

    fn names(r: CtlResult<Vec<&Member>>) -> Vec<String> {
        r.unwrap().iter().map(|m| m.name.clone()).collect()
    }

    #[test]
    fn selection() {
        let v = view();
        let s = |a: &[&str], role, force| {
            let args: Vec<String> = a.iter().map(|s| s.to_string()).collect();
            select(&v, "batman", &args, role, force, "restart")
                .map(|m| m.iter().map(|m| m.name.clone()).collect::<Vec<_>>())
        };
        assert_eq!(s(&["batman", "b"], RoleFilter::Any, false).unwrap(), ["b"]);
        assert_eq!(s(&["c", "b", "c"], RoleFilter::Any, false).unwrap(), ["c", "b"]);
        assert_eq!(s(&[], RoleFilter::Replica, true).unwrap(), ["b", "c"]);
        assert_eq!(s(&["batman"], RoleFilter::Leader, true).unwrap(), ["a"]);
        assert!(matches!(s(&[], RoleFilter::Any, false), Err(CtlError::Usage(_))));
        assert!(
            matches!(s(&["x"], RoleFilter::Any, false), Err(CtlError::Failed(m)) if m == "x is not a member of cluster batman")
        );
        assert!(
            matches!(s(&["a"], RoleFilter::Replica, false), Err(CtlError::Failed(m)) if m.contains("not a replica"))
        );
        assert_eq!(names(select(&v, "batman", &[], RoleFilter::Any, true, "reload")).len(), 3);
    }
}
