//! `keel list` and `keel topology`: the members as patronictl shows them (`cluster_as_json` + `output_members`
//! in Patroni), read from the store only.

use clap::Args;
use keel_core::dynconfig::SynchronousMode;
use keel_core::view::{ClusterView, Member};
use serde_json::{json, Value};

use crate::cli::ctl::{usage, Ctl, CtlResult};
use crate::cli::output::{Format, Table};
use crate::cli::timefmt;

#[derive(Debug, Args, Default)]
pub struct ListArgs {
    /// Cluster name (default: the configuration's scope).
    pub cluster_name: Option<String>,
    /// Output format.
    #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Pretty)]
    pub format: Format,
    /// Always show the Pending restart, Scheduled restart and Tags columns.
    #[arg(short = 'e', long = "extended")]
    pub extended: bool,
    /// Print the time before the table.
    #[arg(short = 't', long = "timestamp")]
    pub timestamp: bool,
    /// Refresh the output every 2 seconds until interrupted.
    #[arg(short = 'W')]
    pub watch_default: bool,
    /// Refresh the output every SECONDS seconds until interrupted.
    #[arg(short = 'w', long = "watch", value_name = "SECONDS")]
    pub watch: Option<f64>,
}

/// Where a member's WAL is behind the leader's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// The leader itself (no lag shown).
    None,
    /// The member or the leader did not publish a position.
    Unknown,
    Bytes(u64),
}

impl Lag {
    /// patronictl's `Lag in MB` cell: `round(lag / 1024 / 1024)` (ties to even, as Python rounds).
    pub fn cell(self) -> Value {
        match self {
            Lag::None => json!(""),
            Lag::Unknown => json!("unknown"),
            Lag::Bytes(b) => json!((b as f64 / 1024.0 / 1024.0).round_ties_even() as u64),
        }
    }
}

/// One member as `list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    pub name: String,
    /// `leader`, `standby_leader`, `sync_standby`, `quorum_standby` or `replica`.
    pub role: &'static str,
    pub state: String,
    pub host: String,
    pub port: Option<u16>,
    pub timeline: Option<u32>,
    pub lag: Lag,
    pub pending_restart: bool,
    pub scheduled_restart: Option<String>,
    pub tags: Value,
    pub replicatefrom: Option<String>,
}

/// The highest WAL position the leader published: `status.optime`, or the leader member's `xlog_location`.
pub fn cluster_lsn(view: &ClusterView) -> Option<u64> {
    let leader = view.leader_member().and_then(|m| m.xlog_location).map(|l| l.0);
    match (view.status.optime.map(|l| l.0), leader) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// A member's WAL position: `xlog_location`, else the furthest of what it received and replayed.
fn member_lsn(m: &Member) -> Option<u64> {
    m.xlog_location.or(m.replay_lsn.max(m.receive_lsn)).map(|l| l.0)
}

/// Bytes `member` is behind `cluster` (0 when ahead), `Unknown` when either is unknown.
pub fn lag(cluster: Option<u64>, member: Option<u64>) -> Lag {
    match (cluster, member) {
        (Some(c), Some(m)) => Lag::Bytes(c.saturating_sub(m)),
        _ => Lag::Unknown,
    }
}

/// `host` and `port` of a `postgres://[user[:pw]@]host[:port][/db][?...]` URL.
pub fn parse_conn_url(url: &str) -> Option<(String, Option<u16>)> {
    let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((host.to_string(), port))
}

/// Whether the dynamic configuration makes this a standby cluster (`standby_cluster` set to a non-empty object).
fn is_standby_cluster(view: &ClusterView) -> bool {
    view.config
        .as_ref()
        .and_then(|c| c.value.raw.get("standby_cluster"))
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
}

/// The members, sorted by name, with Patroni's roles, states and lags.
pub fn members(view: &ClusterView) -> Vec<MemberInfo> {
    let config = view.dynamic_config();
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let cluster = cluster_lsn(view);
    let standby = is_standby_cluster(view);
    let sync = view.sync.as_ref().map(|s| &s.value);
    view.members
        .values()
        .map(|m| {
            let is_leader = Some(m.name.as_str()) == leader;
            let role = if is_leader {
                if standby {
                    "standby_leader"
                } else {
                    "leader"
                }
            } else if config.synchronous_mode != SynchronousMode::Off && sync.is_some_and(|s| s.matches(&m.name)) {
                if config.synchronous_mode == SynchronousMode::Quorum {
                    "quorum_standby"
                } else {
                    "sync_standby"
                }
            } else {
                "replica"
            };
            let replication_state = if is_leader { None } else { m.replication_state.clone() };
            let state = replication_state.filter(|s| !s.is_empty()).or_else(|| m.state.clone()).unwrap_or_default();
            let (host, port) = m.conn_url.as_deref().and_then(parse_conn_url).unwrap_or_default();
            let scheduled_restart = m
                .data
                .get("scheduled_restart")
                .and_then(|s| s.get("schedule"))
                .and_then(Value::as_str)
                .map(str::to_string);
            MemberInfo {
                name: m.name.clone(),
                role,
                state,
                host,
                port,
                timeline: m.timeline,
                lag: if is_leader { Lag::None } else { lag(cluster, member_lsn(m)) },
                pending_restart: m.pending_restart,
                scheduled_restart,
                tags: m
                    .data
                    .get("tags")
                    .cloned()
                    .filter(|t| t.as_object().is_some_and(|o| !o.is_empty()))
                    .unwrap_or(Value::Null),
                replicatefrom: m.tags.replicatefrom.clone(),
            }
        })
        .collect()
}

/// patronictl's topology order: the leader, then its replicas, each followed by the replicas cascading from it,
/// names indented by depth (`+ name`, `  + name`).
pub fn topology_order(members: Vec<MemberInfo>) -> Vec<MemberInfo> {
    let is_leader = |m: &MemberInfo| m.role.ends_with("leader");
    let leader = members.iter().find(|m| is_leader(m)).map(|m| m.name.clone());
    let replicas: Vec<String> = members.iter().filter(|m| !is_leader(m)).map(|m| m.name.clone()).collect();
    let mut children: std::collections::BTreeMap<Option<String>, Vec<MemberInfo>> = Default::default();
    let mut out = Vec::new();
    let mut leader_member = None;
    for m in members {
        if is_leader(&m) {
            leader_member = Some(m);
            continue;
        }
        let parent = m.replicatefrom.clone().filter(|p| *p != m.name && replicas.contains(p)).or(leader.clone());
        children.entry(parent).or_default().push(m);
    }
    fn walk(
        level: usize,
        name: Option<String>,
        children: &mut std::collections::BTreeMap<Option<String>, Vec<MemberInfo>>,
        out: &mut Vec<MemberInfo>,
    ) {
        for mut m in children.remove(&name).unwrap_or_default() {
            let own = m.name.clone();
            if level > 0 {
                m.name = format!("{}+ {}", " ".repeat((level - 1) * 2), m.name);
            }
            out.push(m);
            walk(level + 1, Some(own), children, out);
        }
    }
    match leader_member {
        Some(l) => {
            let name = l.name.clone();
            out.push(l);
            walk(1, Some(name), &mut children, &mut out);
        }
        // No leader: the members hang below "nobody" and are shown at depth 1, as patronictl does.
        None => walk(1, None, &mut children, &mut out),
    }
    // Members in a replicatefrom cycle are never reached from the leader: show them at the end.
    for (_, rest) in children {
        out.extend(rest);
    }
    out
}

/// The `Cluster: <scope> (<sysid>)` title: `uninitialized` without an `initialize` key, `initializing` while empty.
pub fn title(scope: &str, view: &ClusterView) -> String {
    let init = match view.initialize.as_deref() {
        None => "uninitialized",
        Some("") => "initializing",
        Some(s) => s,
    };
    format!(" Cluster: {scope} ({init}) ")
}

/// The members table (`list`, or `topology` when `topology` is set).
pub fn members_table(scope: &str, view: &ClusterView, extended: bool, topology: bool) -> Table {
    let mut infos = members(view);
    let append_port = infos.iter().any(|m| m.port.is_some_and(|p| p != 5432)) || {
        let hosts: std::collections::BTreeSet<&str> = infos.iter().map(|m| m.host.as_str()).collect();
        hosts.len() < infos.len()
    };
    let pending = extended || infos.iter().any(|m| m.pending_restart);
    let scheduled = extended || infos.iter().any(|m| m.scheduled_restart.is_some());
    let tags = extended || infos.iter().any(|m| !m.tags.is_null());
    if topology {
        infos = topology_order(infos);
    }
    let mut columns = vec!["Cluster", "Member", "Host", "Role", "State", "TL", "Lag in MB"];
    if pending {
        columns.push("Pending restart");
    }
    if scheduled {
        columns.push("Scheduled restart");
    }
    if tags {
        columns.push("Tags");
    }
    let mut table = Table::new(&columns);
    table.right = vec!["TL", "Lag in MB"];
    table.title = Some(title(scope, view));
    for m in infos {
        let host = match m.port {
            Some(p) if append_port && !m.host.is_empty() => format!("{}:{p}", m.host),
            _ => m.host.clone(),
        };
        let mut row = vec![
            json!(scope),
            json!(m.name),
            json!(host),
            json!(title_case(m.role)),
            json!(m.state),
            m.timeline.map_or(json!(""), |t| json!(t)),
            m.lag.cell(),
        ];
        if pending {
            row.push(json!(if m.pending_restart { "*" } else { "" }));
        }
        if scheduled {
            row.push(json!(m.scheduled_restart.unwrap_or_default()));
        }
        if tags {
            row.push(if m.tags.is_null() { json!("") } else { m.tags.clone() });
        }
        table.rows.push(row);
    }
    table
}

/// `sync_standby` → `Sync Standby`.
pub fn title_case(role: &str) -> String {
    role.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lines printed below a pretty table: maintenance mode and a scheduled switchover.
pub fn service_info(view: &ClusterView) -> Vec<String> {
    let mut info = Vec::new();
    if view.is_paused() {
        info.push("Maintenance mode: on".to_string());
    }
    if let Some(f) = view.failover.as_ref().map(|f| &f.value) {
        if let Some(at) = &f.scheduled_at {
            let mut line = format!("Switchover scheduled at: {at}");
            if let Some(l) = &f.leader {
                line.push_str(&format!("\n{:>24}: {l}", "from"));
            }
            if let Some(m) = &f.member {
                line.push_str(&format!("\n{:>24}: {m}", "to"));
            }
            info.push(line);
        }
    }
    info
}

/// The whole `list`/`topology` output for `view`.
pub fn render(scope: &str, view: &ClusterView, format: Format, extended: bool, topology: bool) -> String {
    let mut out = members_table(scope, view, extended, topology).render(format);
    if format == Format::Pretty {
        let info = service_info(view);
        if !info.is_empty() {
            out.push_str(&format!(" {}\n", info.join("\n ")));
        }
    }
    out
}

pub async fn list(ctl: &Ctl, args: &ListArgs, topology: bool) -> CtlResult {
    let interval = match (args.watch, args.watch_default) {
        (Some(s), _) if !(s.is_finite() && s > 0.0) => return usage("--watch needs a positive number of seconds"),
        (Some(s), _) => Some(std::time::Duration::from_secs_f64(s)),
        (None, true) => Some(std::time::Duration::from_secs(2)),
        (None, false) => None,
    };
    loop {
        let view = ctl.load().await?;
        if interval.is_some() {
            // Clear the terminal, as patronictl's watch mode does.
            print!("\x1b[2J\x1b[H");
        }
        if args.timestamp {
            println!("{}", &timefmt::now_string()[..19]);
        }
        print!("{}", render(&ctl.scope, &view, args.format, args.extended, topology));
        match interval {
            Some(i) => tokio::time::sleep(i).await,
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::view::RawEntry;

    fn e(key: &str, value: &str) -> RawEntry {
        RawEntry { key: key.into(), value: value.into(), mod_revision: 1, lease: 0 }
    }

    fn view() -> ClusterView {
        ClusterView::from_entries([
            e("initialize", "7372788412164034329"),
            e("leader", "n1"),
            e("status", r#"{"optime":50331648}"#),
            e(
                "members/n1",
                r#"{"conn_url":"postgres://10.0.0.1:5432/postgres","state":"running","role":"primary","xlog_location":50331648,"timeline":2}"#,
            ),
            e(
                "members/n2",
                r#"{"conn_url":"postgres://10.0.0.2:5432/postgres","state":"running","role":"replica","replication_state":"streaming","xlog_location":16777216,"timeline":2}"#,
            ),
            e(
                "members/n3",
                r#"{"conn_url":"postgres://10.0.0.3:5432/postgres","state":"running","role":"replica","timeline":2,"tags":{"replicatefrom":"n2"}}"#,
            ),
        ])
    }

    #[test]
    fn lag_is_in_megabytes_rounded_like_python() {
        assert_eq!(lag(Some(100), Some(40)), Lag::Bytes(60));
        assert_eq!(lag(Some(40), Some(100)), Lag::Bytes(0));
        assert_eq!(lag(None, Some(1)), Lag::Unknown);
        assert_eq!(lag(Some(1), None), Lag::Unknown);
        assert_eq!(Lag::Bytes(3 * 1024 * 1024 / 2).cell(), json!(2));
        assert_eq!(Lag::Bytes(5 * 1024 * 1024 / 2).cell(), json!(2));
        assert_eq!(Lag::Bytes(1024 * 1024 + 600 * 1024).cell(), json!(2));
        assert_eq!(Lag::Unknown.cell(), json!("unknown"));
        assert_eq!(Lag::None.cell(), json!(""));
    }

    #[test]
    fn cluster_lsn_prefers_the_furthest_leader_position() {
        let v = view();
        assert_eq!(cluster_lsn(&v), Some(50331648));
        let only_member = ClusterView::from_entries([e("leader", "a"), e("members/a", r#"{"xlog_location":7}"#)]);
        assert_eq!(cluster_lsn(&only_member), Some(7));
        assert_eq!(cluster_lsn(&ClusterView::default()), None);
    }

    #[test]
    fn members_get_roles_states_and_lag() {
        let m = members(&view());
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].role, m[0].state.as_str(), m[0].lag), ("leader", "running", Lag::None));
        assert_eq!((m[1].role, m[1].state.as_str(), m[1].lag), ("replica", "streaming", Lag::Bytes(33554432)));
        assert_eq!(m[2].lag, Lag::Unknown);
        assert_eq!(m[1].host, "10.0.0.2");
    }

    #[test]
    fn pretty_list() {
        let out = render("batman", &view(), Format::Pretty, false, false);
        let expected = "\
+ Cluster: batman (7372788412164034329) --+----+-----------+-------------------+
| Member | Host     | Role    | State     | TL | Lag in MB | Tags              |
+--------+----------+---------+-----------+----+-----------+-------------------+
| n1     | 10.0.0.1 | Leader  | running   |  2 |           |                   |
| n2     | 10.0.0.2 | Replica | streaming |  2 |        32 |                   |
| n3     | 10.0.0.3 | Replica | running   |  2 |   unknown | replicatefrom: n2 |
+--------+----------+---------+-----------+----+-----------+-------------------+
";
        assert_eq!(out, expected, "\n{out}");
    }

    #[test]
    fn topology_indents_cascading_replicas() {
        let out = render("batman", &view(), Format::Tsv, false, true);
        let names: Vec<&str> = out.lines().skip(1).map(|l| l.split('\t').nth(1).unwrap()).collect();
        assert_eq!(names, ["n1", "+ n2", "  + n3"]);
    }

    #[test]
    fn sync_standby_role_and_service_info() {
        let v = ClusterView::from_entries([
            e("config", r#"{"synchronous_mode":true,"pause":true}"#),
            e("leader", "a"),
            e("sync", r#"{"leader":"a","sync_standby":"b"}"#),
            e("members/a", r#"{"conn_url":"postgres://h:5432/postgres"}"#),
            e("members/b", r#"{"conn_url":"postgres://h:5433/postgres"}"#),
            e("failover", r#"{"leader":"a","member":"b","scheduled_at":"2030-01-01T00:00:00+00:00"}"#),
        ]);
        let t = members_table("c", &v, false, false);
        assert_eq!(t.rows[1][3], json!("Sync Standby"));
        assert_eq!(t.rows[0][2], json!("h:5432"), "same host twice: ports are shown");
        assert_eq!(t.title.as_deref(), Some(" Cluster: c (uninitialized) "));
        let out = render("c", &v, Format::Pretty, false, false);
        assert!(out.ends_with(
            " Maintenance mode: on\n Switchover scheduled at: 2030-01-01T00:00:00+00:00\n                    from: a\n                      to: b\n"
        ), "{out}");
    }

    #[test]
    fn conn_urls() {
        assert_eq!(parse_conn_url("postgres://10.0.0.1:5433/postgres"), Some(("10.0.0.1".into(), Some(5433))));
        assert_eq!(parse_conn_url("postgresql://u:p@h/db?x=1"), Some(("h".into(), None)));
        assert_eq!(parse_conn_url("postgres://[::1]:5432/postgres"), Some(("::1".into(), Some(5432))));
        assert_eq!(parse_conn_url("http://h:1"), None);
        assert_eq!(parse_conn_url("postgres://h:x/"), None);
    }

    #[test]
    fn role_titles() {
        assert_eq!(title_case("sync_standby"), "Sync Standby");
        assert_eq!(title_case("leader"), "Leader");
    }
}
