//! `keel list` and `keel topology`: the members as patronictl shows them (`cluster_as_json` + `output_members`
//! in Patroni), read from the store only.

use clap::Args;
use keel_core::view::ClusterView;
use serde_json::{json, Value};

use crate::api::control::cluster_as_json;
use crate::cli::ctl::{usage, Ctl, CtlResult};
use crate::cli::output::{cell_text, Format, Table};
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

/// One member as `list` shows it: an entry of Patroni's `cluster_as_json` (what `GET /cluster` answers), from
/// which patronictl builds its table too.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    pub name: String,
    /// `leader`, `standby_leader`, `sync_standby`, `quorum_standby` or `replica`.
    pub role: String,
    pub state: String,
    pub host: String,
    pub port: Option<u16>,
    pub timeline: Option<u32>,
    /// The entry as `cluster_as_json` made it (LSNs and lags, pending restart, tags, ...).
    pub json: Value,
}

impl MemberInfo {
    fn from_json(json: Value) -> MemberInfo {
        let text = |k: &str| json.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        MemberInfo {
            name: text("name"),
            role: text("role"),
            state: text("state"),
            host: text("host"),
            port: json.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok()),
            timeline: json.get("timeline").and_then(Value::as_u64).and_then(|t| u32::try_from(t).ok()),
            json,
        }
    }

    fn field(&self, key: &str) -> Value {
        self.json.get(key).cloned().unwrap_or(Value::Null)
    }

    fn replicatefrom(&self) -> Option<String> {
        self.json.pointer("/tags/replicatefrom").and_then(Value::as_str).map(str::to_string)
    }

    /// The receive and replay cells, `(lsn, lag in MB)` each, as patronictl's `output_members` fills them.
    fn positions(&self) -> [(Value, Value); 2] {
        let (mut receive_lsn, mut receive_lag) = (self.field("receive_lsn"), self.field("receive_lag"));
        let (mut replay_lsn, mut replay_lag) = (self.field("replay_lsn"), self.field("replay_lag"));
        let (lsn, lag) = (self.field("lsn"), self.field("lag"));
        // Members that publish only xlog_location: its position goes to the receive side while streaming.
        let unknown = json!("unknown");
        if receive_lsn == unknown && replay_lsn == unknown && lsn.as_str().is_some_and(|l| l != "unknown") {
            if self.state == "streaming" {
                (receive_lsn, receive_lag) = (lsn, lag);
            } else {
                (replay_lsn, replay_lag) = (lsn, lag);
            }
        }
        [(receive_lsn, megabytes(receive_lag)), (replay_lsn, megabytes(replay_lag))]
    }
}

/// patronictl's lag cell: bytes as `round(lag / 1024 / 1024)` (ties to even, as Python rounds); `unknown` blank.
fn megabytes(lag: Value) -> Value {
    match lag {
        Value::Number(n) => {
            n.as_u64().map_or(Value::Number(n), |b| json!((b as f64 / 1048576.0).round_ties_even() as u64))
        }
        Value::String(s) if s == "unknown" => json!(""),
        other => other,
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

/// The members, sorted by name, with Patroni's roles, states, positions and lags.
pub fn members(view: &ClusterView) -> Vec<MemberInfo> {
    let cluster = cluster_as_json(view, "");
    let entries = cluster.get("members").and_then(Value::as_array).cloned().unwrap_or_default();
    entries.into_iter().map(MemberInfo::from_json).collect()
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
        let parent = m.replicatefrom().filter(|p| *p != m.name && replicas.contains(p)).or(leader.clone());
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

/// The members table (`list`, or `topology` when `topology` is set), with patronictl 4's columns: in `pretty`
/// both lag columns are headed `Lag`, in the other formats `Receive Lag` and `Replay Lag`.
pub fn members_table(scope: &str, view: &ClusterView, format: Format, extended: bool, topology: bool) -> Table {
    let mut infos = members(view);
    let append_port = infos.iter().any(|m| m.port.is_some_and(|p| p != 5432)) || {
        let hosts: std::collections::BTreeSet<&str> = infos.iter().map(|m| m.host.as_str()).collect();
        hosts.len() < infos.len()
    };
    // Optional columns: shown with --extended, or when some member has a value for them.
    let optional: Vec<(&str, &str)> = [
        ("Pending restart", "pending_restart"),
        ("Pending restart reason", "pending_restart_reason"),
        ("Scheduled restart", "scheduled_restart"),
        ("Tags", "tags"),
    ]
    .into_iter()
    .filter(|(_, key)| extended || infos.iter().any(|m| is_set(&m.field(key))))
    .collect();
    if topology {
        infos = topology_order(infos);
    }
    let lag = if format == Format::Pretty { ["Lag", "Lag"] } else { ["Receive Lag", "Replay Lag"] };
    let mut columns =
        vec!["Cluster", "Member", "Host", "Role", "State", "TL", "Receive LSN", lag[0], "Replay LSN", lag[1]];
    columns.extend(optional.iter().map(|(column, _)| *column));
    let mut table = Table::new(&columns);
    table.right = vec!["TL", "Receive LSN", "Replay LSN", "Lag"];
    table.title = Some(title(scope, view));
    for m in infos {
        let host = match m.port {
            Some(p) if append_port && !m.host.is_empty() => format!("{}:{p}", m.host),
            _ => m.host.clone(),
        };
        let [(receive_lsn, receive_lag), (replay_lsn, replay_lag)] = m.positions();
        let mut row = vec![
            json!(scope),
            json!(m.name),
            json!(host),
            json!(title_case(&m.role)),
            json!(m.state),
            m.timeline.map_or(json!(""), |t| json!(t)),
            receive_lsn,
            receive_lag,
            replay_lsn,
            replay_lag,
        ];
        for (_, key) in &optional {
            row.push(optional_cell(&m, key, format));
        }
        table.rows.push(row);
    }
    table
}

fn is_set(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// The cell of an optional column, as patronictl fills it.
fn optional_cell(m: &MemberInfo, key: &str, format: Format) -> Value {
    let v = m.field(key);
    match key {
        "pending_restart" => json!(if is_set(&v) { "*" } else { "" }),
        // `param: old->new` per line; long ones hidden in the pretty table.
        "pending_restart_reason" => {
            let Some(diffs) = v.as_object() else { return json!("") };
            let lines: Vec<String> = diffs
                .iter()
                .map(|(param, change)| {
                    let side = |k: &str| change.get(k).map(|v| cell_text(v, true)).unwrap_or_default();
                    let full = format!("{param}: {}->{}", side("old_value"), side("new_value"));
                    if format == Format::Pretty && full.chars().count() > 50 {
                        format!("{param}: [hidden - too long]")
                    } else {
                        full
                    }
                })
                .collect();
            json!(lines.join("\n"))
        }
        "scheduled_restart" => {
            let Some(schedule) = v.get("schedule").and_then(Value::as_str) else { return json!("") };
            match v.get("postgres_version").and_then(Value::as_str) {
                Some(version) => json!(format!("{schedule} if version < {version}")),
                None => json!(schedule),
            }
        }
        _ if is_set(&v) => v,
        _ => json!(""),
    }
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
    let mut out = members_table(scope, view, format, extended, topology).render(format);
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
        assert_eq!(megabytes(json!(3 * 1024 * 1024 / 2)), json!(2));
        assert_eq!(megabytes(json!(5 * 1024 * 1024 / 2)), json!(2));
        assert_eq!(megabytes(json!(1024 * 1024 + 600 * 1024)), json!(2));
        assert_eq!(megabytes(json!("unknown")), json!(""));
        assert_eq!(megabytes(Value::Null), Value::Null);
    }

    #[test]
    fn members_get_roles_states_and_positions() {
        let m = members(&view());
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].role.as_str(), m[0].state.as_str()), ("leader", "running"));
        assert_eq!(m[0].positions(), [(Value::Null, Value::Null), (Value::Null, Value::Null)]);
        assert_eq!((m[1].role.as_str(), m[1].state.as_str()), ("replica", "streaming"));
        // Only xlog_location published: it is the receive position of a streaming member.
        assert_eq!(m[1].positions(), [(json!("0/1000000"), json!(32)), (json!("unknown"), json!(""))]);
        assert_eq!(m[2].positions(), [(json!("unknown"), json!("")), (json!("unknown"), json!(""))]);
        assert_eq!(m[1].host, "10.0.0.2");
    }

    #[test]
    fn receive_and_replay_positions_of_a_current_member() {
        let v = ClusterView::from_entries([
            e("leader", "a"),
            e("status", r#"{"optime":50331648}"#),
            e("members/a", r#"{"conn_url":"postgres://h1:5432/postgres","state":"running","xlog_location":50331648}"#),
            e(
                "members/b",
                r#"{"conn_url":"postgres://h2:5432/postgres","state":"running","replication_state":"streaming",
                    "xlog_location":50331648,"receive_lsn":50331648,"replay_lsn":16777216,"pending_restart":true}"#,
            ),
        ]);
        let m = members(&v);
        assert_eq!(m[1].positions(), [(json!("0/3000000"), json!(0)), (json!("0/1000000"), json!(32))]);
        let json = render("c", &v, Format::Json, false, false);
        assert!(json.contains(r#""Receive LSN": "0/3000000", "Receive Lag": 0, "Replay LSN": "0/1000000", "Replay Lag": 32, "Pending restart": "*""#), "{json}");
    }

    #[test]
    fn pretty_list() {
        let out = render("batman", &view(), Format::Pretty, false, false);
        let expected = "\
+ Cluster: batman (7372788412164034329) --+----+-------------+-----+------------+-----+-------------------+
| Member | Host     | Role    | State     | TL | Receive LSN | Lag | Replay LSN | Lag | Tags              |
+--------+----------+---------+-----------+----+-------------+-----+------------+-----+-------------------+
| n1     | 10.0.0.1 | Leader  | running   |  2 |             |     |            |     |                   |
| n2     | 10.0.0.2 | Replica | streaming |  2 |   0/1000000 |  32 |    unknown |     |                   |
| n3     | 10.0.0.3 | Replica | running   |  2 |     unknown |     |    unknown |     | replicatefrom: n2 |
+--------+----------+---------+-----------+----+-------------+-----+------------+-----+-------------------+
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
        let t = members_table("c", &v, Format::Pretty, false, false);
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
