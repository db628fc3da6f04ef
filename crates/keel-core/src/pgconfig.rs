//! The `postgresql` settings that may come from the dynamic configuration (`config` key, `postgresql.*`) or from
//! the local file's `postgresql` section. As in Patroni (`Config._build_effective_configuration`), a setting in
//! the local file wins over the same setting in the dynamic configuration; an absent one falls back to it, then to
//! Patroni's default.

use serde_json::{Map, Value};

use crate::dynconfig::{parse_bool, parse_seconds, MAX_SECONDS};

/// Patroni's default for `pg_ctl_timeout`, in seconds.
pub const DEFAULT_PG_CTL_TIMEOUT: u64 = 60;

/// The merged `postgresql` settings the agent applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// `pg_hba`: the lines of `pg_hba.conf`. `None`: set nowhere, the file is left as it is.
    pub pg_hba: Option<Vec<String>>,
    /// `pg_ident`: the lines of `pg_ident.conf`. `None`: set nowhere, the file is left as it is.
    pub pg_ident: Option<Vec<String>>,
    /// `pg_ctl_timeout`: how long `pg_ctl start`, `stop` and `restart` may take, in seconds (default 60).
    pub pg_ctl_timeout: u64,
    /// `use_pg_rewind` (default false).
    pub use_pg_rewind: bool,
    /// `remove_data_directory_on_rewind_failure` (default false, as in Patroni).
    pub remove_data_directory_on_rewind_failure: bool,
    /// `remove_data_directory_on_diverged_timelines` (default false, as in Patroni).
    pub remove_data_directory_on_diverged_timelines: bool,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings::merge(&Map::new(), &Map::new(), &mut Vec::new())
    }
}

/// The local value of `key` when set, else the dynamic one (`null` counts as not set).
fn pick<'a>(local: &'a Map<String, Value>, dynamic: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let set = |m: &'a Map<String, Value>| m.get(key).filter(|v| !v.is_null());
    set(local).or_else(|| set(dynamic))
}

impl PgSettings {
    /// Merges the local `postgresql` section over the dynamic one. A value of the wrong type falls back to the
    /// default and is reported in `notes`.
    pub fn merge(local: &Map<String, Value>, dynamic: &Map<String, Value>, notes: &mut Vec<String>) -> PgSettings {
        let mut flag = |key: &str| match pick(local, dynamic, key) {
            None => false,
            Some(v) => parse_bool(v).unwrap_or_else(|| {
                notes.push(format!("postgresql.{key}: expected a boolean, got {v}; using false"));
                false
            }),
        };
        let use_pg_rewind = flag("use_pg_rewind");
        let remove_data_directory_on_rewind_failure = flag("remove_data_directory_on_rewind_failure");
        let remove_data_directory_on_diverged_timelines = flag("remove_data_directory_on_diverged_timelines");
        let pg_ctl_timeout = match pick(local, dynamic, "pg_ctl_timeout") {
            None => DEFAULT_PG_CTL_TIMEOUT,
            Some(v) => parse_seconds(v).map(|n| n.min(MAX_SECONDS)).unwrap_or_else(|| {
                notes.push(format!("postgresql.pg_ctl_timeout: expected seconds, got {v}; using 60"));
                DEFAULT_PG_CTL_TIMEOUT
            }),
        };
        let mut lines = |key: &str| {
            let v = pick(local, dynamic, key)?;
            let lines = v.as_array().and_then(|items| items.iter().map(|l| l.as_str().map(str::to_string)).collect());
            if lines.is_none() {
                notes.push(format!("postgresql.{key}: expected a list of lines, got {v}; leaving the file as it is"));
            }
            lines
        };
        PgSettings {
            pg_hba: lines("pg_hba"),
            pg_ident: lines("pg_ident"),
            pg_ctl_timeout,
            use_pg_rewind,
            remove_data_directory_on_rewind_failure,
            remove_data_directory_on_diverged_timelines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn defaults_are_patronis_and_never_wipe_data() {
        let s = PgSettings::default();
        assert_eq!(s.pg_ctl_timeout, 60);
        assert!(!s.use_pg_rewind);
        assert!(!s.remove_data_directory_on_rewind_failure, "wiping a data directory is never a default");
        assert!(!s.remove_data_directory_on_diverged_timelines, "wiping a data directory is never a default");
        assert_eq!((s.pg_hba, s.pg_ident), (None, None));
    }

    #[test]
    fn local_wins_over_dynamic_which_wins_over_defaults() {
        let dynamic = map(json!({
            "pg_hba": ["host all all 10.0.0.0/8 md5"], "pg_ident": ["m os db"], "pg_ctl_timeout": "2min",
            "use_pg_rewind": true, "remove_data_directory_on_rewind_failure": "on"
        }));
        // (local section, expected pg_hba, pg_ctl_timeout, use_pg_rewind, remove on rewind failure)
        let cases: [(Value, Vec<&str>, u64, bool, bool); 4] = [
            (json!({}), vec!["host all all 10.0.0.0/8 md5"], 120, true, true),
            (json!({"pg_hba": ["local all all trust"]}), vec!["local all all trust"], 120, true, true),
            (json!({"pg_ctl_timeout": 5, "use_pg_rewind": false}), vec!["host all all 10.0.0.0/8 md5"], 5, false, true),
            (
                json!({"pg_hba": null, "remove_data_directory_on_rewind_failure": false}),
                vec!["host all all 10.0.0.0/8 md5"],
                120,
                true,
                false,
            ),
        ];
        for (local, hba, timeout, rewind, remove) in cases {
            let mut notes = Vec::new();
            let s = PgSettings::merge(&map(local.clone()), &dynamic, &mut notes);
            assert_eq!(s.pg_hba, Some(hba.iter().map(|l| l.to_string()).collect()), "{local}");
            assert_eq!(s.pg_ident, Some(vec!["m os db".to_string()]), "{local}");
            assert_eq!((s.pg_ctl_timeout, s.use_pg_rewind), (timeout, rewind), "{local}");
            assert_eq!(s.remove_data_directory_on_rewind_failure, remove, "{local}");
            assert!(notes.is_empty(), "{notes:?}");
        }
    }

    #[test]
    fn an_empty_local_list_is_set_not_absent() {
        let s = PgSettings::merge(&map(json!({"pg_ident": []})), &map(json!({"pg_ident": ["m a b"]})), &mut Vec::new());
        assert_eq!(s.pg_ident, Some(Vec::new()));
    }

    #[test]
    fn wrong_types_fall_back_with_a_note() {
        let mut notes = Vec::new();
        let s = PgSettings::merge(
            &map(json!({"pg_hba": "host all all all md5", "pg_ctl_timeout": "soon"})),
            &map(json!({"use_pg_rewind": "maybe"})),
            &mut notes,
        );
        assert_eq!((s.pg_hba, s.pg_ctl_timeout, s.use_pg_rewind), (None, 60, false));
        assert_eq!(notes.len(), 3, "{notes:?}");
    }
}
