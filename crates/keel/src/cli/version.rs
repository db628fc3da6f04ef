//! `keel version [CLUSTER_NAME] [MEMBER...]`: Keel's version, and with members (or a cluster name) the Keel and
//! PostgreSQL versions each member reports on `GET /patroni`.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::cli::ctl::{Ctl, CtlResult};
use crate::cli::members::{select, RoleFilter};

#[derive(Debug, Args, Default)]
pub struct VersionArgs {
    /// `[CLUSTER_NAME] [MEMBER...]`: a cluster name alone asks every member.
    pub names: Vec<String>,
}

/// PostgreSQL's `server_version_num` as text: `160001` → `16.1`, `90624` → `9.6.24`.
pub fn format_pg_version(v: u64) -> String {
    if v < 100_000 {
        format!("{}.{}.{}", v / 10_000, v % 10_000 / 100, v % 100)
    } else {
        format!("{}.{}", v / 10_000, v % 100)
    }
}

pub async fn version(ctl: &Ctl, args: &VersionArgs) -> CtlResult {
    println!("keel version {}", env!("CARGO_PKG_VERSION"));
    if args.names.is_empty() {
        return Ok(());
    }
    let view = ctl.load_existing().await?;
    // A cluster name alone means every member.
    let all = args.names.len() == 1 && args.names[0] == ctl.scope && !view.members.contains_key(&ctl.scope);
    let members = select(&view, &ctl.scope, &args.names, RoleFilter::Any, all, "ask")?;
    let rest = ctl.rest()?;
    for m in members {
        match rest.get_json(m.api_url.as_deref(), "patroni", Duration::from_secs(5)).await {
            Ok((_, Some(data))) => {
                let agent = data.pointer("/patroni/version").and_then(Value::as_str).unwrap_or("?");
                let pg = data.get("server_version").and_then(Value::as_u64).map(format_pg_version);
                match pg {
                    Some(pg) => println!("{}: Keel {agent} PostgreSQL {pg}", m.name),
                    None => println!("{}: Keel {agent}", m.name),
                }
            }
            Ok((r, None)) => println!("{}: failed to get version: status code={}, ({})", m.name, r.status, r.body),
            Err(e) => println!("{}: failed to get version: {e}", m.name),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_versions() {
        assert_eq!(format_pg_version(160001), "16.1");
        assert_eq!(format_pg_version(90624), "9.6.24");
        assert_eq!(format_pg_version(100000), "10.0");
    }
}
