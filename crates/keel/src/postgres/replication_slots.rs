//! Replication slots over SQL: list, create, advance, drop, and read a slot's state file from a primary.
//!
//! Every statement names the slot as a bind parameter, never by string concatenation.

use std::collections::BTreeMap;

use keel_core::lsn::Lsn;
use keel_core::slots::native::NativeSlot;
use keel_core::slots::standby_slots::PhysicalSlotObs;
use serde_json::Value;

use super::observe::{PgError, Session};

/// One row of `pg_replication_slots` (non-temporary slots), with the columns that exist on every supported major
/// and the newer ones as options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgSlot {
    pub name: String,
    /// `physical` or `logical`.
    pub slot_type: String,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub datoid: Option<u32>,
    pub active: bool,
    pub xmin: Option<u32>,
    pub catalog_xmin: Option<u32>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    /// PostgreSQL 17+: a native failover slot, and whether the slot-sync worker made it.
    pub failover: bool,
    pub synced: bool,
}

impl PgSlot {
    pub fn is_logical(&self) -> bool {
        self.slot_type == "logical"
    }

    /// Reads one `to_jsonb(pg_replication_slots)` row; `None` when it lacks a name or type.
    pub fn from_json(v: &Value) -> Option<PgSlot> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        // `to_jsonb` renders xid and oid columns as strings; accept numbers too.
        let xid = |k: &str| {
            v.get(k).and_then(|x| match x {
                Value::String(t) => t.parse::<u32>().ok(),
                Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                _ => None,
            })
        };
        let lsn = |k: &str| s(k).and_then(|t| t.parse::<Lsn>().ok());
        Some(PgSlot {
            name: s("slot_name")?,
            slot_type: s("slot_type")?,
            plugin: s("plugin"),
            database: s("database"),
            datoid: xid("datoid"),
            // A row that does not say whether the slot is in use counts as in use: never dropped or advanced.
            active: v.get("active").and_then(Value::as_bool).unwrap_or(true),
            xmin: xid("xmin"),
            catalog_xmin: xid("catalog_xmin"),
            restart_lsn: lsn("restart_lsn"),
            confirmed_flush_lsn: lsn("confirmed_flush_lsn"),
            wal_status: s("wal_status"),
            failover: v.get("failover").and_then(Value::as_bool).unwrap_or(false),
            synced: v.get("synced").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// The non-temporary slots as one JSON array. `to_jsonb` keeps the query the same across majors whose views
/// differ in columns.
const SLOTS_AS_JSON: &str = "coalesce(json_agg(to_jsonb(s) ORDER BY s.slot_name), '[]')::text \
                             FROM pg_catalog.pg_replication_slots s WHERE NOT s.temporary";

/// Every non-temporary slot.
pub async fn list(session: &Session) -> Result<Vec<PgSlot>, PgError> {
    let rows = session.query(&format!("SELECT {SLOTS_AS_JSON}"), &[]).await?;
    let text: String = rows.first().map(|r| r.get(0)).unwrap_or_else(|| "[]".into());
    parse_slot_list(text)
}

/// The non-temporary slots of a server that is not in recovery; `None` when it is in recovery (a demoted leader,
/// or one restarting read-only: its slots are not the primary's, and a logical slot's position read back from
/// disk after a restart can be older than what its consumer confirmed).
pub async fn list_on_primary(session: &Session) -> Result<Option<Vec<PgSlot>>, PgError> {
    let rows = session.query(&format!("SELECT pg_catalog.pg_is_in_recovery(), {SLOTS_AS_JSON}"), &[]).await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let in_recovery: Option<bool> = row.try_get(0).ok();
    let text: Option<String> = row.try_get(1).ok();
    match (in_recovery, text) {
        (Some(false), Some(text)) => parse_slot_list(text).map(Some),
        // In recovery, or an answer that cannot be read: nothing is known of the primary's slots.
        _ => Ok(None),
    }
}

fn parse_slot_list(text: String) -> Result<Vec<PgSlot>, PgError> {
    let parsed: Value =
        serde_json::from_str(&text).map_err(|_| PgError::BadValue { what: "pg_replication_slots", value: text })?;
    Ok(parsed.as_array().map(|a| a.iter().filter_map(PgSlot::from_json).collect()).unwrap_or_default())
}

/// Creates a physical slot that reserves WAL immediately.
pub async fn create_physical(session: &Session, name: &str) -> Result<(), PgError> {
    session.query("SELECT pg_catalog.pg_create_physical_replication_slot($1, true)", &[&name]).await?;
    Ok(())
}

/// Creates a logical slot with `plugin` in the database this session is connected to.
pub async fn create_logical(session: &Session, name: &str, plugin: &str) -> Result<Lsn, PgError> {
    let rows = session
        .query("SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, $2)", &[&name, &plugin])
        .await?;
    let text: String = rows.first().map(|r| r.get(0)).unwrap_or_default();
    text.parse().map_err(|_| PgError::BadValue { what: "pg_create_logical_replication_slot", value: text })
}

/// Creates a logical slot with `failover = true` (PostgreSQL 17+: the slotsync worker keeps standbys' copies).
pub async fn create_logical_failover(session: &Session, name: &str, plugin: &str) -> Result<Lsn, PgError> {
    let rows = session
        .query(
            "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, $2, false, false, true)",
            &[&name, &plugin],
        )
        .await?;
    let text: String = rows.first().map(|r| r.get(0)).unwrap_or_default();
    text.parse().map_err(|_| PgError::BadValue { what: "pg_create_logical_replication_slot", value: text })
}

/// Logical slots with the native columns (PostgreSQL 17+). `failover_only`: only non-temporary failover slots
/// (what the slotsync worker reads on a primary); otherwise every logical slot, temporary synced ones included.
pub async fn list_native(session: &Session, failover_only: bool) -> Result<Vec<NativeSlot>, PgError> {
    let filter = if failover_only { "failover AND NOT temporary" } else { "slot_type = 'logical'" };
    let sql = format!(
        "SELECT slot_name, coalesce(database, ''), coalesce(plugin, ''), failover, synced, temporary, \
         invalidation_reason, confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE {filter}"
    );
    let rows = session.query(&sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| NativeSlot {
            name: r.get(0),
            database: r.get(1),
            plugin: r.get(2),
            failover: r.get(3),
            synced: r.get(4),
            temporary: r.get(5),
            invalidated: r.get(6),
            confirmed_flush: r.get::<_, Option<String>>(7).and_then(|t| t.parse().ok()),
        })
        .collect())
}

/// The primary's physical slots with whether a walsender streams on them (`pg_stat_replication.state`), and its
/// flush position: what the managed `synchronized_standby_slots` is decided from.
pub async fn physical_streaming(session: &Session) -> Result<(Lsn, BTreeMap<String, PhysicalSlotObs>), PgError> {
    let rows = session
        .query(
            "SELECT s.slot_name, coalesce(r.state = 'streaming', false), s.restart_lsn::text, \
             pg_catalog.pg_current_wal_flush_lsn()::text \
             FROM pg_catalog.pg_replication_slots s LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_type = 'physical' AND NOT s.temporary",
            &[],
        )
        .await?;
    let mut flush = None;
    let mut out = BTreeMap::new();
    for r in &rows {
        flush = flush.or_else(|| r.get::<_, Option<String>>(3).and_then(|t| t.parse::<Lsn>().ok()));
        let restart_lsn = r.get::<_, Option<String>>(2).and_then(|t| t.parse().ok());
        out.insert(r.get::<_, String>(0), PhysicalSlotObs { streaming: r.get(1), restart_lsn });
    }
    let flush = match flush {
        Some(f) => f,
        None => current_flush(session).await?,
    };
    Ok((flush, out))
}

async fn current_flush(session: &Session) -> Result<Lsn, PgError> {
    let rows = session.query("SELECT pg_catalog.pg_current_wal_flush_lsn()::text", &[]).await?;
    let text: String = rows.first().map(|r| r.get(0)).unwrap_or_default();
    text.parse().map_err(|_| PgError::BadValue { what: "pg_current_wal_flush_lsn", value: text })
}

/// `ALTER SYSTEM SET synchronized_standby_slots` (or `RESET` for `None`) and a reload; the parameter is reloadable.
pub async fn set_synchronized_standby_slots(session: &Session, value: Option<&str>) -> Result<(), PgError> {
    let sql = match value {
        Some(v) => format!("ALTER SYSTEM SET synchronized_standby_slots = '{}'", v.replace('\'', "''")),
        None => "ALTER SYSTEM RESET synchronized_standby_slots".to_string(),
    };
    session.query(&sql, &[]).await?;
    session.query("SELECT pg_catalog.pg_reload_conf()", &[]).await?;
    Ok(())
}

/// The value of `synchronized_standby_slots` in force (after the last reload).
pub async fn synchronized_standby_slots(session: &Session) -> Result<String, PgError> {
    let rows = session.query("SELECT pg_catalog.current_setting('synchronized_standby_slots')", &[]).await?;
    Ok(rows.first().map(|r| r.get(0)).unwrap_or_default())
}

/// Drops a slot (`pg_drop_replication_slot`); an active slot makes PostgreSQL refuse.
pub async fn drop(session: &Session, name: &str) -> Result<(), PgError> {
    session.query("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&name]).await?;
    Ok(())
}

/// Moves a slot forward to `to` (clamped by PostgreSQL to the flush or replay position); returns the new end.
pub async fn advance(session: &Session, name: &str, to: Lsn) -> Result<Option<Lsn>, PgError> {
    let target = to.to_string();
    let rows = session
        .query(
            "SELECT end_lsn::text FROM pg_catalog.pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&name, &target],
        )
        .await?;
    Ok(rows.first().and_then(|r| r.get::<_, Option<String>>(0)).and_then(|t| t.parse().ok()))
}

/// The bytes of `pg_replslot/<name>/state` on the server this session is connected to (needs superuser or the
/// EXECUTE grant on `pg_read_binary_file` that Keel gives the rewind role).
pub async fn read_state_file(session: &Session, name: &str) -> Result<Vec<u8>, PgError> {
    let path = format!("pg_replslot/{name}/state");
    let rows = session.query("SELECT pg_catalog.pg_read_binary_file($1)", &[&path]).await?;
    Ok(rows.first().map(|r| r.get::<_, Vec<u8>>(0)).unwrap_or_default())
}

/// The first position of the oldest WAL segment in this server's `pg_wal` (`pg_ls_waldir()`, superuser or
/// `pg_monitor`); `None` when there is none. A slot whose `restart_lsn` is older cannot be read from here.
pub async fn oldest_wal(session: &Session) -> Result<Option<Lsn>, PgError> {
    let rows = session
        .query(
            "SELECT (SELECT min(substr(name, 9)) FROM pg_catalog.pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'), \
             (SELECT setting FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size')",
            &[],
        )
        .await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let (Some(segment), Some(size)) = (row.get::<_, Option<String>>(0), row.get::<_, Option<String>>(1)) else {
        return Ok(None);
    };
    let size: u64 = size.parse().map_err(|_| PgError::BadValue { what: "wal_segment_size", value: size.clone() })?;
    // The timeline does not matter for the position: compare segment numbers only.
    let name = format!("00000000{segment}");
    Lsn::from_wal_file_name(&name, size).map(Some).ok_or(PgError::BadValue { what: "pg_ls_waldir", value: name })
}

/// The OID of database `name`, as slot files record it.
pub async fn database_oid(session: &Session, name: &str) -> Result<Option<u32>, PgError> {
    let rows = session.query("SELECT oid::bigint FROM pg_catalog.pg_database WHERE datname = $1", &[&name]).await?;
    Ok(rows.first().map(|r| r.get::<_, i64>(0)).and_then(|o| u32::try_from(o).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_rows_of_every_major() {
        let pg15 = json!({"slot_name":"node2","plugin":null,"slot_type":"physical","datoid":null,"database":null,
            "temporary":false,"active":true,"xmin":null,"catalog_xmin":null,"restart_lsn":"0/3000148",
            "confirmed_flush_lsn":null,"wal_status":"reserved","safe_wal_size":null,"two_phase":false});
        let s = PgSlot::from_json(&pg15).unwrap();
        assert_eq!(s.restart_lsn, Some(Lsn(0x3000148)));
        assert!(s.active && !s.is_logical() && !s.failover);
        let pg17 = json!({"slot_name":"cdc","plugin":"pgoutput","slot_type":"logical","datoid":"5","database":"app",
            "active":false,"xmin":null,"catalog_xmin":"745","restart_lsn":"0/1","confirmed_flush_lsn":"0/2",
            "wal_status":"lost","failover":true,"synced":false});
        let s = PgSlot::from_json(&pg17).unwrap();
        assert_eq!((s.catalog_xmin, s.datoid, s.failover), (Some(745), Some(5), true));
        assert_eq!(s.wal_status.as_deref(), Some("lost"));
        assert!(PgSlot::from_json(&json!({"slot_type":"logical"})).is_none());
        // Without an `active` the slot may be in use: it counts as active (never dropped or advanced).
        let unsure = PgSlot::from_json(&json!({"slot_name":"x","slot_type":"physical"})).unwrap();
        assert!(unsure.active && !unsure.failover && !unsure.synced);
    }
}
