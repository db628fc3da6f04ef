//! `keel dsn`: the libpq connection parameters of the leader (or of a member), from its `conn_url`.

use clap::Args;
use keel_core::view::{ClusterView, Member};

use crate::cli::ctl::{failed, split_cluster_arg, usage, Ctl, CtlResult};
use crate::cli::list::parse_conn_url;
use crate::cli::members::RoleFilter;

#[derive(Debug, Args, Default)]
pub struct DsnArgs {
    /// `[CLUSTER_NAME] [MEMBER]`.
    pub names: Vec<String>,
    /// The member's role (default: the leader, unless a member is named).
    #[arg(short = 'r', long = "role", value_enum)]
    pub role: Option<RoleFilter>,
    /// The member.
    #[arg(short = 'm', long = "member", value_name = "NAME")]
    pub member: Option<String>,
}

/// The member `dsn` describes: the named one, else the first with the role (the leader by default).
pub fn pick<'v>(view: &'v ClusterView, scope: &str, args: &DsnArgs) -> CtlResult<&'v Member> {
    let names = split_cluster_arg(scope, &args.names, view);
    if names.len() > 1 {
        return usage("dsn takes at most one member name");
    }
    let named = args.member.as_ref().or(names.first());
    if named.is_some() && args.role.is_some() {
        return usage("--role/-r and a member name are mutually exclusive");
    }
    if let Some(n) = named {
        return view
            .members
            .get(n)
            .ok_or_else(|| crate::cli::ctl::CtlError::Failed(format!("{n} is not a member of cluster {scope}")));
    }
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let found = match args.role.unwrap_or(RoleFilter::Leader) {
        RoleFilter::Leader => leader.and_then(|l| view.members.get(l)),
        RoleFilter::Replica => view.members.values().find(|m| Some(m.name.as_str()) != leader),
        RoleFilter::Any => leader.and_then(|l| view.members.get(l)).or_else(|| view.members.values().next()),
    };
    found.map_or_else(|| failed("Can not find a suitable member"), Ok)
}

/// `host=H port=P`, as patronictl prints it (port 5432 when the URL has none).
pub fn dsn_of(m: &Member) -> CtlResult<String> {
    let Some((host, port)) = m.conn_url.as_deref().and_then(parse_conn_url) else {
        return failed(format!("member {} publishes no usable conn_url", m.name));
    };
    Ok(format!("host={host} port={}", port.unwrap_or(5432)))
}

pub async fn dsn(ctl: &Ctl, args: &DsnArgs) -> CtlResult {
    let view = ctl.load_existing().await?;
    println!("{}", dsn_of(pick(&view, &ctl.scope, args)?)?);
    Ok(())
}
