//! SQL for copies created on a standby (16+) and for consumer positions on the primary:
//! `pg_log_standby_snapshot()` (a running-xacts record, so a creation on a standby finds its consistent point
//! soon) and each logical slot's confirmed and sent positions beside each physical walsender's flushed one.

use keel_core::lsn::Lsn;
use keel_core::slots::ahead::{ConsumerSlot, Walsender};
use serde_json::Value;

use super::observe::{PgError, Session};

/// Writes a running-xacts record on the primary (PostgreSQL 16+; superuser or an EXECUTE grant).
pub async fn log_standby_snapshot(session: &Session) -> Result<(), PgError> {
    session.query("SELECT pg_catalog.pg_log_standby_snapshot()::text", &[]).await?;
    Ok(())
}

fn json_rows(text: String, what: &'static str) -> Result<Vec<Value>, PgError> {
    let parsed: Value = serde_json::from_str(&text).map_err(|_| PgError::BadValue { what, value: text })?;
    Ok(parsed.as_array().cloned().unwrap_or_default())
}

fn lsn(v: &Value, key: &str) -> Option<Lsn> {
    v.get(key).and_then(Value::as_str).and_then(|t| t.parse().ok())
}

/// Every non-temporary logical slot with `confirmed_flush_lsn` and the `sent_lsn` of the walsender holding it,
/// and every physical walsender's `flush_lsn` (walsenders holding a logical slot are consumers, not standbys).
pub async fn consumer_positions(session: &Session) -> Result<(Vec<ConsumerSlot>, Vec<Walsender>), PgError> {
    let rows = session
        .query(
            "SELECT (SELECT coalesce(json_agg(json_build_object('slot', s.slot_name, \
                 'confirmed_flush', s.confirmed_flush_lsn::text, 'sent', r.sent_lsn::text) ORDER BY s.slot_name), \
                 '[]')::text \
               FROM pg_catalog.pg_replication_slots s LEFT JOIN pg_catalog.pg_stat_replication r \
                 ON r.pid = s.active_pid WHERE s.slot_type = 'logical' AND NOT s.temporary), \
             (SELECT coalesce(json_agg(json_build_object('application_name', r.application_name, \
                 'flush', r.flush_lsn::text)), '[]')::text \
               FROM pg_catalog.pg_stat_replication r WHERE r.pid NOT IN \
                 (SELECT active_pid FROM pg_catalog.pg_replication_slots \
                  WHERE slot_type = 'logical' AND active_pid IS NOT NULL))",
            &[],
        )
        .await?;
    let Some(row) = rows.first() else { return Ok((Vec::new(), Vec::new())) };
    let slots = json_rows(row.get(0), "pg_replication_slots")?
        .iter()
        .filter_map(|v| {
            Some(ConsumerSlot {
                name: v.get("slot")?.as_str()?.to_string(),
                confirmed_flush: lsn(v, "confirmed_flush"),
                sent: lsn(v, "sent"),
            })
        })
        .collect();
    let walsenders = json_rows(row.get(1), "pg_stat_replication")?
        .iter()
        .filter_map(|v| {
            Some(Walsender {
                application_name: v.get("application_name")?.as_str()?.to_string(),
                flush: lsn(v, "flush"),
            })
        })
        .collect();
    Ok((slots, walsenders))
}
