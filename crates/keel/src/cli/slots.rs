//! `keel slots [-f FORMAT]`: every member's replication slots (type, position, lag behind the primary, readiness
//! and its reason, WAL retained), from each member's `GET /slots`; and continuity breaks the leader recorded.
//! `keel slots recreate NAME`: ask the leader to re-create a permanent logical slot after a continuity break.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cli::ctl::{Ctl, CtlError, CtlResult};
use crate::cli::output::{Format, Table};

#[derive(Debug, Args, Default)]
pub struct SlotsArgs {
    #[command(subcommand)]
    pub action: Option<SlotsAction>,
    /// Output format.
    #[arg(short = 'f', long = "format", value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum SlotsAction {
    /// Re-create a permanent logical slot the new primary lacks (its consumers must resynchronise).
    Recreate {
        /// The slot's name.
        name: String,
    },
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// One table row per member and slot.
pub fn rows(member: &str, role: &str, doc: &Value) -> Vec<Vec<Value>> {
    let Some(slots) = doc.get("slots").and_then(Value::as_array) else { return Vec::new() };
    slots
        .iter()
        .map(|s| {
            let get = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
            let readiness = match (s.get("readiness").and_then(Value::as_str), s.get("readiness_reason")) {
                (Some(r), Some(Value::String(why))) => json!(format!("{r} ({why})")),
                (Some(r), _) => json!(r),
                (None, _) => json!(""),
            };
            vec![
                json!(member),
                json!(role),
                get("name"),
                get("type"),
                get("position"),
                get("lag_bytes"),
                readiness,
                get("wal_retained_bytes"),
            ]
        })
        .collect()
}

pub async fn slots(ctl: &Ctl, args: &SlotsArgs) -> CtlResult {
    let view = ctl.load_existing().await?;
    let rest = ctl.rest()?;
    if let Some(SlotsAction::Recreate { name }) = &args.action {
        let leader = view.leader_member().ok_or_else(|| CtlError::Failed("the cluster has no leader".into()))?;
        let reply = rest
            .post(leader.api_url.as_deref(), "slots/recreate", Some(&json!({"slot": name})), TIMEOUT)
            .await
            .map_err(|e| CtlError::Failed(format!("cannot reach the leader {}: {e}", leader.name)))?;
        if reply.status != 200 {
            return Err(CtlError::Failed(format!("{}: {}", leader.name, reply.body)));
        }
        println!("{}", reply.body);
        return Ok(());
    }
    let mut table =
        Table::new(&["Member", "Role", "Slot", "Type", "Position", "Lag (bytes)", "Readiness", "WAL retained"]);
    table.right = vec!["Lag (bytes)", "WAL retained"];
    table.title = None;
    let mut breaks = Vec::new();
    for m in view.members.values() {
        let role = if view.leader.as_ref().is_some_and(|l| l.name == m.name) { "Leader" } else { "Replica" };
        match rest.get_json(m.api_url.as_deref(), "slots", TIMEOUT).await {
            Ok((_, Some(doc))) => {
                table.rows.extend(rows(&m.name, role, &doc));
                for b in doc.get("continuity_breaks").and_then(Value::as_array).into_iter().flatten() {
                    breaks.push(format!(
                        "{}: continuity break on slot {} (last published {})",
                        m.name,
                        b.get("slot").and_then(Value::as_str).unwrap_or("?"),
                        b.get("last_published").and_then(Value::as_str).unwrap_or("?")
                    ));
                }
            }
            Ok((r, None)) => eprintln!("{}: GET /slots answered {}: {}", m.name, r.status, r.body),
            Err(e) => eprintln!("{}: cannot get slots: {e}", m.name),
        }
    }
    print!("{}", table.render(args.format));
    for b in breaks {
        println!("{b}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_readiness_with_its_reason() {
        let doc = json!({"slots": [{"name": "cdc", "type": "logical", "position": "0/3000060", "lag_bytes": 0,
            "readiness": "Ready", "readiness_reason": "Ready", "wal_retained_bytes": 1024}]});
        let r = rows("node2", "Replica", &doc);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0][2], json!("cdc"));
        assert_eq!(r[0][6], json!("Ready (Ready)"));
        assert!(rows("n", "Leader", &json!({})).is_empty());
    }
}
