//! The dynamic configuration (the store's `config` key) checked with the schema of `bootstrap.dcs`: used by
//! `PATCH`/`PUT /config` and `keel edit-config` before writing, and by the agent on what it reads from the store,
//! so a setting Keel refuses in the file is refused on every path.

use serde_json::Value as J;

use super::fields::DCS;
use super::schema::{Kind, Walk};
use super::yaml::Node;
use super::ConfigError;

/// How the dynamic configuration is named in messages.
pub const NAME: &str = "dynamic configuration";

/// Checks `config`: `Ok(warnings)` when Keel can run it, else the error naming every refused setting (or the
/// first unknown key or wrong type).
pub fn check(config: &J) -> Result<Vec<String>, ConfigError> {
    let mut walk = Walk::new(NAME);
    walk.check(&Node::from_json(config), &Kind::Map(DCS), "")?;
    if !walk.refused.is_empty() {
        return Err(ConfigError::Refused { file: NAME.to_string(), refused: walk.refused });
    }
    let mut warnings = walk.warnings;
    warnings.extend(super::ignored_warning(NAME, &walk.ignored));
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_what_keel_implements() {
        let ok = json!({"ttl": 30, "synchronous_mode": "on", "maximum_lag_on_syncnode": 1000,
            "postgresql": {"pg_hba": ["local all all trust"], "pg_ident": ["m a b"], "pg_ctl_timeout": "1min"},
            "slots": {"cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"}}});
        assert_eq!(check(&ok).unwrap(), Vec::<String>::new());
        assert!(check(&json!({})).is_ok());
        let slots = json!({"failover_slots": "native", "failover_slot_readiness": "strict"});
        assert_eq!(check(&slots).unwrap(), Vec::<String>::new());
    }

    /// Keel's own slot settings take one of their documented values, on every path (file, REST, edit-config).
    #[test]
    fn slot_modes_outside_their_values_are_refused() {
        for (key, value) in [("failover_slots", "sometimes"), ("failover_slot_readiness", "maybe")] {
            let err = check(&json!({ key: value })).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn refuses_quorum_and_standby_clusters_naming_them() {
        let e = check(&json!({"synchronous_mode": "quorum", "standby_cluster": {"host": "x"}})).unwrap_err();
        assert!(matches!(e, ConfigError::Refused { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("`synchronous_mode`") && msg.contains("synchronous_mode: on"), "{msg}");
        assert!(msg.contains("`standby_cluster`"), "{msg}");
        let e = check(&json!({"postgresql": {"recovery_conf": {"restore_command": "cp"}}})).unwrap_err();
        assert_eq!(e.path(), Some("postgresql.recovery_conf"));
    }

    #[test]
    fn wrong_types_and_unknown_keys_are_errors() {
        assert_eq!(check(&json!({"ttl": "soon"})).unwrap_err().path(), Some("ttl"));
        assert_eq!(
            check(&json!({"postgresql": {"use_slotz": true}})).unwrap_err().path(),
            Some("postgresql.use_slotz")
        );
    }
}
