//! The dynamic (cluster-wide) configuration held in the store's `config` key.
//!
//! Patroni keeps this document as free-form JSON; users add keys Keel may not know. [`DynamicConfig`] keeps the
//! raw JSON (so nothing is lost on a round trip) and reads the settings the core needs, with Patroni's defaults,
//! tolerating wrong types (a wrong type falls back to the default and is reported in [`DynamicConfig::notes`]).

use serde_json::{Map, Value};

use crate::pgconfig::PgSettings;

pub const DEFAULT_TTL: u64 = 30;
pub const DEFAULT_LOOP_WAIT: u64 = 10;
pub const DEFAULT_RETRY_TIMEOUT: u64 = 10;
pub const DEFAULT_MAXIMUM_LAG_ON_FAILOVER: u64 = 1_048_576;
pub const DEFAULT_MEMBER_SLOTS_TTL: u64 = 1800;
pub const DEFAULT_PRIMARY_START_TIMEOUT: u64 = 300;
pub const MIN_TTL: u64 = 20;
pub const MIN_LOOP_WAIT: u64 = 1;
pub const MIN_RETRY_TIMEOUT: u64 = 3;
/// The largest `ttl` Keel accepts (a day): a larger one is a typo, and durations built from it must not overflow
/// a clock (a crash loop of every agent reading the same `config` key).
pub const MAX_TTL: u64 = 86_400;
/// The largest value of any other setting in seconds (a year).
pub const MAX_SECONDS: u64 = 365 * 86_400;

/// Which replication guarantee the leader maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynchronousMode {
    #[default]
    Off,
    On,
    Quorum,
}

/// The three timing settings after Patroni's adjustment rule was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { ttl: DEFAULT_TTL, loop_wait: DEFAULT_LOOP_WAIT, retry_timeout: DEFAULT_RETRY_TIMEOUT }
    }
}

impl Timing {
    /// Applies Patroni's minimums (`ttl >= 20`, `loop_wait >= 1`, `retry_timeout >= 3`) and the rule
    /// `loop_wait + 2 * retry_timeout <= ttl` (reduce `loop_wait` first, then `retry_timeout`).
    /// Returns the adjusted timing and one human-readable warning per change.
    pub fn adjusted(ttl: u64, loop_wait: u64, retry_timeout: u64) -> (Timing, Vec<String>) {
        let mut warnings = Vec::new();
        let mut t = Timing { ttl, loop_wait, retry_timeout };
        if t.ttl > MAX_TTL {
            warnings.push(format!("ttl {} is above the maximum {MAX_TTL}; using {MAX_TTL}", t.ttl));
            t.ttl = MAX_TTL;
        }
        for (name, v) in [("loop_wait", &mut t.loop_wait), ("retry_timeout", &mut t.retry_timeout)] {
            if *v > t.ttl {
                warnings.push(format!("{name} {v} is above ttl {}; using {}", t.ttl, t.ttl));
                *v = t.ttl;
            }
        }
        if t.ttl < MIN_TTL {
            warnings.push(format!("ttl {} is below the minimum {MIN_TTL}; using {MIN_TTL}", t.ttl));
            t.ttl = MIN_TTL;
        }
        if t.loop_wait < MIN_LOOP_WAIT {
            warnings
                .push(format!("loop_wait {} is below the minimum {MIN_LOOP_WAIT}; using {MIN_LOOP_WAIT}", t.loop_wait));
            t.loop_wait = MIN_LOOP_WAIT;
        }
        if t.retry_timeout < MIN_RETRY_TIMEOUT {
            warnings.push(format!(
                "retry_timeout {} is below the minimum {MIN_RETRY_TIMEOUT}; using {MIN_RETRY_TIMEOUT}",
                t.retry_timeout
            ));
            t.retry_timeout = MIN_RETRY_TIMEOUT;
        }
        if t.loop_wait + 2 * t.retry_timeout > t.ttl {
            let max_loop_wait = t.ttl.saturating_sub(2 * t.retry_timeout).max(MIN_LOOP_WAIT);
            if max_loop_wait < t.loop_wait {
                warnings.push(format!(
                    "loop_wait {} + 2*retry_timeout {} > ttl {}; reducing loop_wait to {max_loop_wait}",
                    t.loop_wait, t.retry_timeout, t.ttl
                ));
                t.loop_wait = max_loop_wait;
            }
            if t.loop_wait + 2 * t.retry_timeout > t.ttl {
                let max_retry = ((t.ttl - t.loop_wait) / 2).max(MIN_RETRY_TIMEOUT);
                warnings.push(format!(
                    "loop_wait {} + 2*retry_timeout {} > ttl {}; reducing retry_timeout to {max_retry}",
                    t.loop_wait, t.retry_timeout, t.ttl
                ));
                t.retry_timeout = max_retry;
            }
        }
        (t, warnings)
    }
}

/// The parsed dynamic configuration. `raw` is the document exactly as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicConfig {
    pub raw: Value,
    pub timing: Timing,
    pub maximum_lag_on_failover: u64,
    /// `maximum_lag_on_syncnode` in bytes: a synchronous-standby candidate lagging more is not chosen or kept
    /// (`<= 0`: off, Patroni's default -1).
    pub maximum_lag_on_syncnode: i64,
    pub primary_start_timeout: u64,
    /// `primary_stop_timeout` (alias `master_stop_timeout`), seconds: in synchronous mode, a stop of PostgreSQL
    /// running longer is ended with SIGKILL to the postmaster (0: off, Patroni's default).
    pub primary_stop_timeout: u64,
    pub check_timeline: bool,
    pub pause: bool,
    /// `postgresql.use_pg_rewind` (the local file's value wins: see [`DynamicConfig::with_local_postgresql`]).
    pub use_pg_rewind: bool,
    pub use_slots: bool,
    /// The other `postgresql` settings shared with the local file (`pg_hba`, `pg_ident`, `pg_ctl_timeout`, ...).
    pub postgresql: PgSettings,
    pub synchronous_mode: SynchronousMode,
    pub synchronous_mode_strict: bool,
    pub synchronous_node_count: u64,
    pub failsafe_mode: bool,
    pub member_slots_ttl: u64,
    pub max_timelines_history: u64,
    /// Problems found while reading `raw`, for the caller to log.
    pub notes: Vec<String>,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig::from_value(Value::Object(Map::new()))
    }
}

impl DynamicConfig {
    /// Reads a configuration document leniently: wrong types fall back to defaults with a note.
    pub fn from_value(raw: Value) -> Self {
        let mut notes = Vec::new();
        let obj = match &raw {
            Value::Object(m) => m.clone(),
            Value::Null => Map::new(),
            other => {
                notes.push(format!("configuration is not a JSON object ({other}); using defaults"));
                Map::new()
            }
        };
        let pg = obj.get("postgresql").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut r = Reader { notes: &mut notes };
        let ttl = r.seconds(&obj, "ttl", DEFAULT_TTL);
        let loop_wait = r.seconds(&obj, "loop_wait", DEFAULT_LOOP_WAIT);
        let retry_timeout = r.seconds(&obj, "retry_timeout", DEFAULT_RETRY_TIMEOUT);
        let maximum_lag_on_failover = r.uint(&obj, "maximum_lag_on_failover", DEFAULT_MAXIMUM_LAG_ON_FAILOVER);
        let maximum_lag_on_syncnode = r.int(&obj, "maximum_lag_on_syncnode", -1);
        let primary_stop_timeout = if obj.contains_key("primary_stop_timeout") {
            r.seconds(&obj, "primary_stop_timeout", 0)
        } else {
            r.seconds(&obj, "master_stop_timeout", 0)
        };
        let primary_start_timeout = if obj.contains_key("primary_start_timeout") {
            r.seconds(&obj, "primary_start_timeout", DEFAULT_PRIMARY_START_TIMEOUT)
        } else {
            r.seconds(&obj, "master_start_timeout", DEFAULT_PRIMARY_START_TIMEOUT)
        };
        let check_timeline = r.boolean(&obj, "check_timeline", false);
        let pause = r.boolean(&obj, "pause", false);
        let postgresql = PgSettings::merge(&Map::new(), &pg, r.notes);
        let use_pg_rewind = postgresql.use_pg_rewind;
        let use_slots = r.boolean(&pg, "use_slots", true);
        let synchronous_mode = r.sync_mode(&obj);
        let synchronous_mode_strict = r.boolean(&obj, "synchronous_mode_strict", false);
        let synchronous_node_count = r.uint(&obj, "synchronous_node_count", 1);
        let failsafe_mode = r.boolean(&obj, "failsafe_mode", false);
        let member_slots_ttl = r.seconds(&obj, "member_slots_ttl", DEFAULT_MEMBER_SLOTS_TTL);
        let max_timelines_history = r.uint(&obj, "max_timelines_history", 0);
        let (timing, warnings) = Timing::adjusted(ttl, loop_wait, retry_timeout);
        notes.extend(warnings);
        DynamicConfig {
            raw,
            timing,
            maximum_lag_on_failover,
            maximum_lag_on_syncnode,
            primary_start_timeout,
            primary_stop_timeout,
            check_timeline,
            pause,
            use_pg_rewind,
            use_slots,
            postgresql,
            synchronous_mode,
            synchronous_mode_strict,
            synchronous_node_count,
            failsafe_mode,
            member_slots_ttl,
            max_timelines_history,
            notes,
        }
    }

    /// The effective configuration with the local file's `postgresql` section (`local`, as JSON) laid over the
    /// dynamic one, as Patroni merges them: local `pg_hba`, `pg_ident`, `pg_ctl_timeout`, `use_pg_rewind` and
    /// `remove_data_directory_*` win. `raw` stays the document as stored.
    pub fn with_local_postgresql(mut self, local: &Map<String, Value>) -> DynamicConfig {
        let pg = self.raw.get("postgresql").and_then(Value::as_object).cloned().unwrap_or_default();
        self.postgresql = PgSettings::merge(local, &pg, &mut self.notes);
        self.use_pg_rewind = self.postgresql.use_pg_rewind;
        self
    }

    /// The one rule for the configuration a node runs with: the store's `config` when it has one, else the local
    /// `bootstrap.dcs` (as Patroni does before the cluster is initialized), with the local file's `postgresql`
    /// section laid over it.
    pub fn effective(stored: Option<&DynamicConfig>, bootstrap: &Value, local: &Map<String, Value>) -> DynamicConfig {
        let base = match stored {
            Some(c) => c.clone(),
            None => DynamicConfig::from_value(bootstrap.clone()),
        };
        base.with_local_postgresql(local)
    }

    /// `postgresql.parameters` from the document (empty when absent or not an object).
    pub fn pg_parameters(&self) -> Map<String, Value> {
        self.raw
            .get("postgresql")
            .and_then(|p| p.get("parameters"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }
}

struct Reader<'a> {
    notes: &'a mut Vec<String>,
}

impl Reader<'_> {
    fn boolean(&mut self, obj: &Map<String, Value>, key: &str, default: bool) -> bool {
        match obj.get(key) {
            None | Some(Value::Null) => default,
            Some(v) => match parse_bool(v) {
                Some(b) => b,
                None => {
                    self.notes.push(format!("{key}: expected a boolean, got {v}; using {default}"));
                    default
                }
            },
        }
    }

    fn uint(&mut self, obj: &Map<String, Value>, key: &str, default: u64) -> u64 {
        match obj.get(key) {
            None | Some(Value::Null) => default,
            Some(v) => match parse_uint(v) {
                Some(n) => n,
                None => {
                    self.notes.push(format!("{key}: expected a non-negative integer, got {v}; using {default}"));
                    default
                }
            },
        }
    }

    fn int(&mut self, obj: &Map<String, Value>, key: &str, default: i64) -> i64 {
        match obj.get(key) {
            None | Some(Value::Null) => default,
            Some(v) => match v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())) {
                Some(n) => n,
                None => {
                    self.notes.push(format!("{key}: expected an integer, got {v}; using {default}"));
                    default
                }
            },
        }
    }

    fn seconds(&mut self, obj: &Map<String, Value>, key: &str, default: u64) -> u64 {
        match obj.get(key) {
            None | Some(Value::Null) => default,
            Some(v) => match parse_seconds(v) {
                Some(n) if n > MAX_SECONDS => {
                    self.notes.push(format!("{key}: {n} seconds is above the maximum {MAX_SECONDS}; using it"));
                    MAX_SECONDS
                }
                Some(n) => n,
                None => {
                    self.notes
                        .push(format!("{key}: expected seconds (e.g. 30 or \"30min\"), got {v}; using {default}"));
                    default
                }
            },
        }
    }

    fn sync_mode(&mut self, obj: &Map<String, Value>) -> SynchronousMode {
        match obj.get("synchronous_mode") {
            None | Some(Value::Null) => SynchronousMode::Off,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("quorum") => SynchronousMode::Quorum,
            Some(v) => match parse_bool(v) {
                Some(true) => SynchronousMode::On,
                Some(false) => SynchronousMode::Off,
                None => {
                    self.notes.push(format!("synchronous_mode: expected on, off or quorum, got {v}; using off"));
                    SynchronousMode::Off
                }
            },
        }
    }
}

/// Patroni-style boolean: JSON booleans, and the strings on/off, true/false, yes/no, 1/0.
pub fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => Some(true),
            "off" | "false" | "no" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A non-negative integer, given as a number or a numeric string.
pub fn parse_uint(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64))
        }
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Seconds, given as a number or a string with an optional unit (`ms`, `s`, `min`, `h`, `d`), as Patroni accepts.
pub fn parse_seconds(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => parse_duration_secs(s),
        other => parse_uint(other),
    }
}

fn parse_duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let factor_ms: u64 = match unit.trim() {
        "" | "s" => 1000,
        "ms" => 1,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(n.checked_mul(factor_ms)? / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_match_patroni() {
        let c = DynamicConfig::default();
        assert_eq!(c.timing, Timing { ttl: 30, loop_wait: 10, retry_timeout: 10 });
        assert_eq!(c.maximum_lag_on_failover, 1_048_576);
        assert!(c.use_slots);
        assert!(!c.use_pg_rewind);
        assert_eq!(c.member_slots_ttl, 1800);
        assert_eq!(c.maximum_lag_on_syncnode, -1);
        assert_eq!(c.primary_stop_timeout, 0);
        assert_eq!(c.postgresql.pg_ctl_timeout, 60);
        assert!(!c.postgresql.remove_data_directory_on_rewind_failure);
        assert!(c.notes.is_empty());
    }

    #[test]
    fn timing_rule_reduces_loop_wait_then_retry_timeout() {
        let (t, w) = Timing::adjusted(30, 20, 10);
        assert_eq!(t, Timing { ttl: 30, loop_wait: 10, retry_timeout: 10 });
        assert_eq!(w.len(), 1);
        let (t, w) = Timing::adjusted(20, 10, 10);
        assert_eq!(t, Timing { ttl: 20, loop_wait: 1, retry_timeout: 9 });
        assert_eq!(w.len(), 2);
        let (t, w) = Timing::adjusted(5, 0, 1);
        assert_eq!(t.ttl, 20);
        assert!(t.loop_wait + 2 * t.retry_timeout <= t.ttl);
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn reads_units_and_strings() {
        let c = DynamicConfig::from_value(json!({
            "member_slots_ttl": "30min", "ttl": "40", "pause": "on", "synchronous_mode": "quorum",
            "postgresql": {"use_pg_rewind": true, "use_slots": false}
        }));
        assert_eq!(c.member_slots_ttl, 1800);
        assert_eq!(c.timing.ttl, 40);
        assert!(c.pause && c.use_pg_rewind && !c.use_slots);
        assert_eq!(c.synchronous_mode, SynchronousMode::Quorum);
    }

    #[test]
    fn reads_sync_lag_and_stop_timeout_with_the_old_spelling() {
        let c = DynamicConfig::from_value(json!({"maximum_lag_on_syncnode": "1048576", "master_stop_timeout": 30}));
        assert_eq!((c.maximum_lag_on_syncnode, c.primary_stop_timeout), (1_048_576, 30));
        let c = DynamicConfig::from_value(json!({"primary_stop_timeout": "1min", "master_stop_timeout": 30}));
        assert_eq!(c.primary_stop_timeout, 60, "primary_stop_timeout wins over its old name");
    }

    #[test]
    fn the_local_postgresql_section_wins() {
        let c = DynamicConfig::from_value(json!({"postgresql": {"use_pg_rewind": true, "pg_hba": ["a"]}}));
        assert!(c.use_pg_rewind);
        let local = json!({"use_pg_rewind": false, "pg_ctl_timeout": 5});
        let c = c.with_local_postgresql(local.as_object().unwrap());
        assert!(!c.use_pg_rewind && !c.postgresql.use_pg_rewind);
        assert_eq!(c.postgresql.pg_ctl_timeout, 5);
        assert_eq!(c.postgresql.pg_hba, Some(vec!["a".to_string()]));
    }

    #[test]
    fn wrong_types_fall_back_with_a_note() {
        let c = DynamicConfig::from_value(json!({"ttl": [1], "pause": "maybe"}));
        assert_eq!(c.timing.ttl, 30);
        assert!(!c.pause);
        assert_eq!(c.notes.len(), 2);
        let c = DynamicConfig::from_value(json!("garbage"));
        assert_eq!(c.notes.len(), 1);
    }
}

#[cfg(test)]
mod effective_tests {
    use super::*;
    use serde_json::json;

    fn local(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_store_wins_then_bootstrap_then_defaults_with_local_postgresql_over_each() {
        let bootstrap = json!({"loop_wait": 3, "postgresql": {"use_pg_rewind": false}});
        let stored = DynamicConfig::from_value(json!({"loop_wait": 7}));
        let over = local(json!({"use_pg_rewind": true}));
        let c = DynamicConfig::effective(Some(&stored), &bootstrap, &over);
        assert_eq!((c.timing.loop_wait, c.use_pg_rewind), (7, true));
        let c = DynamicConfig::effective(None, &bootstrap, &over);
        assert_eq!((c.timing.loop_wait, c.use_pg_rewind), (3, true));
        let c = DynamicConfig::effective(None, &Value::Null, &Map::new());
        assert_eq!((c.timing.loop_wait, c.use_pg_rewind), (DEFAULT_LOOP_WAIT, false));
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn huge_timing_values_are_bounded_not_overflowed() {
        let c = DynamicConfig::from_value(json!({"ttl": u64::MAX, "loop_wait": u64::MAX, "retry_timeout": u64::MAX}));
        let t = c.timing;
        assert!(t.ttl <= MAX_TTL && t.loop_wait + 2 * t.retry_timeout <= t.ttl, "{t:?}");
        assert!(!c.notes.is_empty());
        let c = DynamicConfig::from_value(json!({"loop_wait": "99999999999d"}));
        assert!(c.timing.loop_wait + 2 * c.timing.retry_timeout <= c.timing.ttl, "{:?}", c.timing);
        let c = DynamicConfig::from_value(json!({"primary_start_timeout": u64::MAX, "member_slots_ttl": "9999999d"}));
        assert_eq!((c.primary_start_timeout, c.member_slots_ttl), (MAX_SECONDS, MAX_SECONDS));
    }

    #[test]
    fn ordinary_values_are_kept() {
        let c = DynamicConfig::from_value(json!({"ttl": 3600, "loop_wait": 60, "retry_timeout": 30}));
        assert_eq!((c.timing.ttl, c.timing.loop_wait, c.timing.retry_timeout), (3600, 60, 30));
        assert!(c.notes.is_empty(), "{:?}", c.notes);
    }
}
