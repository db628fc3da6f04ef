//! `keel show-config` and `keel edit-config`: the dynamic configuration in the store's `config` key, written
//! with compare-and-swap on the key's modification revision (patronictl's `edit-config`).
//!
//! Changes are applied in patronictl's order: `--replace` (a whole new document), then `--apply` (a merge patch
//! where `null` deletes), then every `-s key.path=value` and `-p pgparam=value` (values read as YAML scalars;
//! an empty value or `null` deletes). There is no interactive editor: one of these options is required.

use std::io::Read;

use clap::Args;
use serde_json::{Map, Value};

use crate::cli::ctl::{failed, usage, Ctl, CtlError, CtlResult};
use crate::cli::output;
use crate::dcs::{ClusterStore, KvBackend};

#[derive(Debug, Args, Default)]
pub struct ShowConfigArgs {
    /// Cluster name (default: the configuration's scope).
    pub cluster_name: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct EditConfigArgs {
    /// Cluster name (default: the configuration's scope).
    pub cluster_name: Option<String>,
    /// Set a value: `key.path=value` (YAML scalar; empty or `null` deletes the key). Repeatable.
    #[arg(short = 's', long = "set", value_name = "CONFIG=VALUE")]
    pub set: Vec<String>,
    /// Set a PostgreSQL parameter: same as `-s postgresql.parameters.NAME=VALUE`. Repeatable.
    #[arg(short = 'p', long = "pg", value_name = "PG_CONFIG=PG_VALUE")]
    pub pg: Vec<String>,
    /// Merge a YAML file (`-` for stdin) into the configuration; `null` values delete keys.
    #[arg(long = "apply", value_name = "CONFIG_FILE")]
    pub apply: Option<String>,
    /// Replace the whole configuration with a YAML file (`-` for stdin).
    #[arg(long = "replace", value_name = "CONFIG_FILE")]
    pub replace: Option<String>,
    /// Do not show the diff.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Accepted for patronictl compatibility; Keel never asks for confirmation.
    #[arg(long)]
    pub force: bool,
}

pub async fn show_config(ctl: &Ctl) -> CtlResult {
    let view = ctl.load().await?;
    let raw = view.config.map(|c| c.value.raw).unwrap_or_else(|| Value::Object(Map::new()));
    print!("{}", output::yaml(&raw));
    Ok(())
}

/// Reads a YAML value as patronictl's `yaml.safe_load` would for `-s`: empty means `null`.
pub fn parse_scalar(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
}

/// Sets `path` to `value` in `config` (patronictl's `set_path_value`): `null` deletes, intermediate objects are
/// created, objects left empty are removed, and below `postgresql.parameters` the rest of the path is one
/// parameter name (GUCs such as `pg_stat_statements.track` contain dots).
pub fn set_path(config: &mut Map<String, Value>, path: &[&str], value: Value) {
    set_path_in(config, path, value, &[]);
}

fn set_path_in(config: &mut Map<String, Value>, path: &[&str], value: Value, prefix: &[&str]) {
    let joined;
    let path: Vec<&str> = if prefix == ["postgresql", "parameters"] {
        joined = path.join(".");
        vec![joined.as_str()]
    } else {
        path.to_vec()
    };
    let Some((key, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        if value.is_null() {
            config.remove(*key);
        } else {
            config.insert(key.to_string(), value);
        }
        return;
    }
    if !config.get(*key).is_some_and(Value::is_object) {
        config.insert(key.to_string(), Value::Object(Map::new()));
    }
    let mut sub_prefix = prefix.to_vec();
    sub_prefix.push(key);
    if let Some(Value::Object(sub)) = config.get_mut(*key) {
        set_path_in(sub, rest, value, &sub_prefix);
        if sub.is_empty() {
            config.remove(*key);
        }
    }
}

/// Applies one `key.path=value` pair.
pub fn apply_pair(config: &mut Map<String, Value>, pair: &str) -> CtlResult {
    let Some((path, value)) = pair.split_once('=') else {
        return usage(format!("invalid parameter setting {pair:?}: expected key.path=value"));
    };
    let path = path.trim();
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return usage(format!("invalid parameter setting {pair:?}: empty key"));
    }
    let value = parse_scalar(value).map_err(|e| CtlError::Usage(format!("cannot read the value in {pair:?}: {e}")))?;
    let parts: Vec<&str> = path.split('.').collect();
    set_path(config, &parts, value);
    Ok(())
}

/// Patroni's `patch_config`: merges `patch` into `config`; `null` deletes an existing key; nested objects merge.
pub fn patch_config(config: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (name, value) in patch {
        match value {
            Value::Null => {
                config.remove(name);
            }
            Value::Object(sub) => match config.get_mut(name) {
                Some(Value::Object(existing)) => patch_config(existing, sub),
                _ => {
                    config.insert(name.clone(), value.clone());
                }
            },
            _ => {
                config.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Reads a YAML file (`-`: stdin) holding a mapping (an empty document is an empty mapping).
fn read_yaml_file(name: &str) -> CtlResult<Map<String, Value>> {
    let text = if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CtlError::Usage(format!("cannot read the configuration from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(name).map_err(|e| CtlError::Usage(format!("cannot read {name}: {e}")))?
    };
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_saphyr::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => usage(format!("{name}: the configuration must be a YAML mapping")),
        Err(e) => usage(format!("{name}: invalid YAML: {}", e.to_string().lines().next().unwrap_or_default())),
    }
}

/// The new configuration: `before` with every change of `args` applied.
pub fn edited(before: &Map<String, Value>, args: &EditConfigArgs) -> CtlResult<Map<String, Value>> {
    let mut after = match &args.replace {
        Some(file) => read_yaml_file(file)?,
        None => before.clone(),
    };
    if let Some(file) = &args.apply {
        let patch = read_yaml_file(file)?;
        patch_config(&mut after, &patch);
    }
    let pg_pairs = args.pg.iter().map(|p| format!("postgresql.parameters.{p}"));
    for pair in args.set.iter().cloned().chain(pg_pairs) {
        apply_pair(&mut after, &pair)?;
    }
    Ok(after)
}

/// A unified diff of two texts (3 lines of context), empty when they are equal.
pub fn unified_diff(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    // Longest common subsequence table, from the end.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    // Edit script: (' ' | '-' | '+', line, index in a, index in b).
    let mut ops: Vec<(char, &str, usize, usize)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i], i, j));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i], i, j));
            i += 1;
        } else {
            ops.push(('+', b[j], i, j));
            j += 1;
        }
    }
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, o)| o.0 != ' ').map(|(k, _)| k).collect();
    if changed.is_empty() {
        return String::new();
    }
    // Group changes whose context overlaps into hunks of op indices.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &k in &changed {
        let start = k.saturating_sub(CONTEXT);
        let end = (k + CONTEXT + 1).min(ops.len());
        match hunks.last_mut() {
            Some(h) if start <= h.1 => h.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    let mut out = String::from("--- before\n+++ after\n");
    for (start, end) in hunks {
        let slice = &ops[start..end];
        let a_start = slice.first().map_or(0, |o| o.2);
        let b_start = slice.first().map_or(0, |o| o.3);
        let a_len = slice.iter().filter(|o| o.0 != '+').count();
        let b_len = slice.iter().filter(|o| o.0 != '-').count();
        let range = |s: usize, n: usize| match n {
            0 => format!("{s},0"),
            1 => format!("{}", s + 1),
            _ => format!("{},{n}", s + 1),
        };
        out.push_str(&format!("@@ -{} +{} @@\n", range(a_start, a_len), range(b_start, b_len)));
        for (c, line, _, _) in slice {
            out.push_str(&format!("{c}{line}\n"));
        }
    }
    out
}

/// Writes `config` if the `config` key is still at `version` (`Some(0)`: only if it does not exist).
pub async fn write_config<B: KvBackend>(store: &ClusterStore<B>, config: &Value, version: Option<i64>) -> CtlResult {
    if store.set_config(config, version).await? {
        Ok(())
    } else {
        failed(format!(
            "config changed in the store since it was read (the {}config key is no longer at revision {}); nothing \
             was written, run the command again",
            store.prefix(),
            version.unwrap_or_default()
        ))
    }
}

pub async fn edit_config(ctl: &Ctl, args: &EditConfigArgs) -> CtlResult {
    if args.set.is_empty() && args.pg.is_empty() && args.apply.is_none() && args.replace.is_none() {
        return usage(
            "edit-config needs a change: -s key.path=value, -p pgparam=value, --apply FILE or --replace FILE \
             (Keel has no interactive editor)",
        );
    }
    if args.apply.as_deref() == Some("-") && args.replace.as_deref() == Some("-") {
        return usage("--apply and --replace cannot both read stdin");
    }
    let view = ctl.load().await?;
    let (before, version) = match &view.config {
        Some(c) => (c.value.raw.as_object().cloned().unwrap_or_default(), c.version),
        None => (Map::new(), 0),
    };
    let after = edited(&before, args)?;
    if after == before {
        println!("Not changed");
        return Ok(());
    }
    let (before, after) = (Value::Object(before), Value::Object(after));
    if let Err(e) = crate::config::dynamic::check(&after) {
        return failed(format!("configuration not changed: {}", e.one_line()));
    }
    if !args.quiet {
        print!("{}", unified_diff(&output::yaml(&before), &output::yaml(&after)));
    }
    write_config(&ctl.store, &after, Some(version)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn scalars_are_read_as_yaml() {
        assert_eq!(parse_scalar("true").unwrap(), json!(true));
        assert_eq!(parse_scalar("200").unwrap(), json!(200));
        assert_eq!(parse_scalar("1.5").unwrap(), json!(1.5));
        assert_eq!(parse_scalar("null").unwrap(), Value::Null);
        assert_eq!(parse_scalar("").unwrap(), Value::Null);
        assert_eq!(parse_scalar("1min").unwrap(), json!("1min"));
        assert_eq!(parse_scalar("'200'").unwrap(), json!("200"));
        assert_eq!(parse_scalar("[a, b]").unwrap(), json!(["a", "b"]));
        assert_eq!(parse_scalar("{a: 1}").unwrap(), json!({"a": 1}));
    }

    #[test]
    fn set_paths_create_and_delete() {
        let mut c = obj(json!({"ttl": 30, "postgresql": {"use_pg_rewind": true}}));
        apply_pair(&mut c, "a.b=1").unwrap();
        apply_pair(&mut c, "ttl=40").unwrap();
        apply_pair(&mut c, "postgresql.parameters.max_connections=200").unwrap();
        apply_pair(&mut c, "postgresql.parameters.pg_stat_statements.track=all").unwrap();
        assert_eq!(
            Value::Object(c.clone()),
            json!({"ttl": 40, "a": {"b": 1}, "postgresql": {"use_pg_rewind": true,
                "parameters": {"max_connections": 200, "pg_stat_statements.track": "all"}}})
        );
        apply_pair(&mut c, "a.b=null").unwrap();
        apply_pair(&mut c, "postgresql.parameters.max_connections=").unwrap();
        apply_pair(&mut c, "missing.key=null").unwrap();
        assert_eq!(
            Value::Object(c),
            json!({"ttl": 40, "postgresql": {"use_pg_rewind": true, "parameters": {"pg_stat_statements.track": "all"}}})
        );
        let mut c = Map::new();
        assert!(matches!(apply_pair(&mut c, "novalue"), Err(CtlError::Usage(_))));
        assert!(matches!(apply_pair(&mut c, "a..b=1"), Err(CtlError::Usage(_))));
        assert!(matches!(apply_pair(&mut c, "a=[1"), Err(CtlError::Usage(_))));
    }

    #[test]
    fn pg_option_is_a_parameter_shortcut() {
        let args = EditConfigArgs {
            pg: vec!["max_connections=200".into()],
            set: vec!["pause=true".into()],
            ..Default::default()
        };
        let after = edited(&obj(json!({"ttl": 30})), &args).unwrap();
        assert_eq!(
            Value::Object(after),
            json!({"ttl": 30, "pause": true, "postgresql": {"parameters": {"max_connections": 200}}})
        );
    }

    #[test]
    fn patch_merges_and_null_deletes() {
        let mut c = obj(json!({"a": 1, "b": {"x": 1, "y": 2}, "c": 3}));
        patch_config(&mut c, &obj(json!({"a": null, "b": {"y": null, "z": 3}, "c": {"n": 1}, "d": 4})));
        assert_eq!(Value::Object(c), json!({"b": {"x": 1, "z": 3}, "c": {"n": 1}, "d": 4}));
    }

    #[test]
    fn diff_shows_changed_lines_with_context() {
        let before = "a: 1\nb: 2\nc: 3\nd: 4\ne: 5\nf: 6\ng: 7\nh: 8\n";
        let after = "a: 1\nb: 2\nc: 3\nd: 40\ne: 5\nf: 6\ng: 7\nh: 8\ni: 9\n";
        assert_eq!(
            unified_diff(before, after),
            "--- before\n+++ after\n@@ -1,8 +1,9 @@\n a: 1\n b: 2\n c: 3\n-d: 4\n+d: 40\n e: 5\n f: 6\n g: 7\n h: 8\n+i: 9\n"
        );
        assert_eq!(unified_diff("x\n", "x\n"), "");
        assert_eq!(unified_diff("", "x: 1\n"), "--- before\n+++ after\n@@ -0,0 +1 @@\n+x: 1\n");
    }
}
