//! `keel slots [-f FORMAT]`: every member's replication slots (type, position, lag behind the primary, readiness
//! and its reason, WAL retained), from each member's `GET /slots`; continuity breaks the leader recorded, and what
//! a member's last promotion check found (consumers ahead of its WAL, or changes to be delivered again), and on
//! the leader, consumers ahead of a failover candidate's flushed WAL.
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

/// Native failover slots: the mode and the managed
/// `synchronized_standby_slots` with each member's reason.
fn native_notes(member: &str, doc: &Value) -> Vec<String> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let mut out = Vec::new();
    if let Some(mode) = doc.get("failover_slots_mode").and_then(Value::as_str) {
        out.push(format!("{member}: failover slots: {mode}"));
    }
    // Unready synced copies are in the table and in `unready` like copy mode's.
    let native = doc.get("native").cloned().unwrap_or(Value::Null);
    if let Some(sss) = native.get("synchronized_standby_slots").filter(|v| !v.is_null()) {
        out.push(format!("{member}: synchronized_standby_slots = '{}'", text(sss, "value")));
        for m in sss.get("members").and_then(Value::as_array).into_iter().flatten() {
            out.push(format!("{member}:   {}: {}", text(m, "member"), text(m, "reason")));
        }
    }
    out
}

/// The lines printed under the table for one member: slots it could not create as leader, logical slots it has
/// no copy of and why, continuity breaks it recorded as leader, and what its last promotion check found other
/// than "in step".
pub fn notes(member: &str, doc: &Value) -> Vec<String> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let mut out = Vec::new();
    for e in doc.get("slot_errors").and_then(Value::as_array).into_iter().flatten() {
        out.push(format!("{member}: {}", text(e, "error")));
    }
    let listed = |name: &str| {
        doc.get("slots")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|s| s.get("name") == Some(&json!(name))))
    };
    for u in doc.get("unready").and_then(Value::as_array).into_iter().flatten() {
        let slot = text(u, "slot");
        if !listed(&slot) {
            out.push(format!("{member}: no usable copy of slot {slot}: {} ({})", text(u, "reason"), text(u, "code")));
        }
    }
    out.extend(native_notes(member, doc));
    for b in doc.get("continuity_breaks").and_then(Value::as_array).into_iter().flatten() {
        out.push(format!(
            "{member}: continuity break on slot {} (last published {})",
            text(b, "slot"),
            text(b, "last_published")
        ));
    }
    for a in doc.get("consumers_ahead").and_then(Value::as_array).into_iter().flatten() {
        let bytes = a.get("bytes").and_then(Value::as_u64).unwrap_or(0);
        let sent = a.get("sent_beyond") == Some(&Value::Bool(true));
        if bytes > 0 || sent {
            out.push(format!(
                "{member}: consumer of slot {} is {bytes} bytes ahead of {}'s flushed WAL{}",
                text(a, "slot"),
                text(a, "member"),
                if sent { " (and was sent changes it lacks)" } else { "" }
            ));
        }
    }
    let promotion = doc.get("promotion").filter(|p| !p.is_null());
    for s in promotion.and_then(|p| p.get("slots")).and_then(Value::as_array).into_iter().flatten() {
        let bytes = s.get("bytes").and_then(Value::as_u64).unwrap_or(0);
        let (slot, known, copy) = (text(s, "slot"), text(s, "last_known"), text(s, "copy"));
        let at = promotion.map(|p| text(p, "at")).unwrap_or_default();
        match s.get("verdict").and_then(Value::as_str) {
            Some("divergence") => out.push(format!(
                "{member}: promoted {at}: consumers of slot {slot} confirmed up to {known}, {bytes} bytes past this \
                 primary's WAL (it ended at {}): they may hold changes this primary lacks",
                promotion.map(|p| text(p, "wal_end")).unwrap_or_default()
            )),
            Some("ahead") => out.push(format!(
                "{member}: promoted {at}: slot {slot} resumed at {copy}, {bytes} bytes past {known}: consumers skip \
                 those changes"
            )),
            Some("unusable") => out.push(format!(
                "{member}: promoted {at}: CONTINUITY BREAK: slot {slot}'s copy was unusable ({}); its consumers must \
                 resynchronise",
                text(s, "problem")
            )),
            Some("redelivery") => out.push(format!(
                "{member}: promoted {at}: slot {slot} resumed at {copy}, {bytes} bytes before {known}: consumers \
                 receive those changes again"
            )),
            _ => {}
        }
    }
    out
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
                breaks.extend(notes(&m.name, &doc));
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

    #[test]
    fn notes_name_breaks_and_promotion_findings() {
        let doc = json!({
            "continuity_breaks": [{"slot": "cdc", "last_published": "0/5000000"}],
            "promotion": {"at": "2026-01-01T00:00:00Z", "wal_end": "0/4FFF000", "slots": [
                {"slot": "cdc", "verdict": "divergence", "bytes": 4096, "last_known": "0/5000000", "copy": "0/4F00000"},
                {"slot": "b", "verdict": "redelivery", "bytes": 16, "last_known": "0/10", "copy": "0/0"},
                {"slot": "c", "verdict": "in_step", "last_known": "0/10", "copy": "0/10"},
            ]},
        });
        let n = notes("node2", &doc);
        assert_eq!(n.len(), 3, "{n:?}");
        assert_eq!(n[0], "node2: continuity break on slot cdc (last published 0/5000000)");
        assert!(n[1].contains("4096 bytes past") && n[1].contains("0/4FFF000"), "{}", n[1]);
        assert!(n[2].contains("16 bytes before 0/10"), "{}", n[2]);
        assert!(notes("n", &json!({"promotion": null})).is_empty());
    }

    #[test]
    fn notes_name_slot_errors_withheld_copies_and_unusable_promotions() {
        let doc = json!({
            "slots": [{"name": "listed"}],
            "slot_errors": [{"slot": "cdc", "code": "database_missing",
                "error": "cannot create permanent logical slot cdc: database \"app\" does not exist on the primary"}],
            "unready": [
                {"slot": "listed", "code": "waiting_for_advance", "reason": "waiting"},
                {"slot": "cdc2", "code": "needs_missing_wal", "reason": "needs WAL from 0/1000000"},
            ],
            "promotion": {"at": "t", "slots": [
                {"slot": "cdc2", "verdict": "unusable", "problem": "needs WAL from 0/1000000"},
                {"slot": "x", "verdict": "ahead", "bytes": 32, "last_known": "0/10", "copy": "0/30"},
            ]},
        });
        let n = notes("node3", &doc);
        assert_eq!(n.len(), 4, "{n:?}");
        assert!(n[0].contains("database \"app\" does not exist"), "{}", n[0]);
        assert_eq!(n[1], "node3: no usable copy of slot cdc2: needs WAL from 0/1000000 (needs_missing_wal)");
        assert!(n[2].contains("CONTINUITY BREAK") && n[2].contains("needs WAL"), "{}", n[2]);
        assert!(n[3].contains("32 bytes past 0/10") && n[3].contains("skip"), "{}", n[3]);
    }

    #[test]
    fn notes_name_consumers_ahead_of_a_candidate() {
        let doc = json!({"consumers_ahead": [
            {"slot": "cdc", "member": "n2", "bytes": 0, "sent_beyond": false},
            {"slot": "cdc", "member": "n3", "bytes": 4096, "sent_beyond": true},
            {"slot": "cdc", "member": "n4", "bytes": null, "sent_beyond": false},
        ]});
        let n = notes("n1", &doc);
        assert_eq!(
            n,
            ["n1: consumer of slot cdc is 4096 bytes ahead of n3's flushed WAL (and was sent changes it lacks)"]
        );
    }

    #[test]
    fn notes_name_the_mode_and_the_standby_slots_with_reasons() {
        let doc = json!({
            "failover_slots_mode": "native",
            "native": {"synchronized_standby_slots": {"value": "node2", "members": [
                {"member": "node2", "listed": true, "reason": "listed: streaming, 0 bytes behind"},
                {"member": "node3", "listed": false, "reason": "not listed: not streaming from this primary"},
            ]}},
        });
        let n = notes("node1", &doc);
        assert_eq!(
            n,
            [
                "node1: failover slots: native",
                "node1: synchronized_standby_slots = 'node2'",
                "node1:   node2: listed: streaming, 0 bytes behind",
                "node1:   node3: not listed: not streaming from this primary",
            ]
        );
    }
}
