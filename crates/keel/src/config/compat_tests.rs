//! Every key of Patroni 4.1.5 (`patroni-keys.txt`) has a row in the table of `docs/patroni-compatibility.md`,
//! and the fate each row states (implemented / refused / warned) is the one Keel gives that value, found by
//! loading a configuration with it (and, for dynamic settings, by checking the dynamic configuration too).

use serde_json::{json, Value};

use super::*;

const KEYS: &str = include_str!("patroni-keys.txt");
const DOC: &str = include_str!("../../../../docs/patroni-compatibility.md");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Implemented,
    Refused,
    Warned,
}

struct Row {
    key: String,
    value: String,
    fate: Fate,
}

/// `a.{b,c}.{d,e}` → `a.b.d`, `a.b.e`, `a.c.d`, `a.c.e`.
fn expand(pattern: &str) -> Vec<String> {
    let Some(open) = pattern.find('{') else { return vec![pattern.to_string()] };
    let close = open + pattern[open..].find('}').expect("unclosed brace in the table");
    let (head, alternatives, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    alternatives.split(',').flat_map(|alt| expand(&format!("{head}{alt}{tail}"))).collect()
}

fn patroni_keys() -> Vec<String> {
    KEYS.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn table() -> Vec<Row> {
    let section = DOC.split("## Configuration keys").nth(1).expect("docs: no `## Configuration keys` section");
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert!(cells.len() >= 3, "docs: bad row {line}");
        let fate = match cells[2] {
            "implemented" => Fate::Implemented,
            "refused" => Fate::Refused,
            "warned" => Fate::Warned,
            other => panic!("docs: unknown fate {other:?} in {line}"),
        };
        let value = cells[1].trim_matches('`').to_string();
        for key in expand(cells[0].trim_matches('`')) {
            rows.push(Row { key, value: value.clone(), fate });
        }
    }
    rows
}

fn minimal() -> Value {
    json!({
        "scope": "batman", "name": "node1",
        "restapi": {"listen": "127.0.0.1:8008"},
        "etcd3": {"host": "127.0.0.1:2379"},
        "postgresql": {"listen": "127.0.0.1:5432", "connect_address": "127.0.0.1:5432", "data_dir": "/x"}
    })
}

fn set(doc: &mut Value, path: &[&str], value: Value) {
    let (first, rest) = path.split_first().expect("empty path");
    let obj = doc.as_object_mut().expect("an object on the way");
    if rest.is_empty() {
        obj.insert(first.to_string(), value);
    } else {
        let next = obj.entry(first.to_string()).or_insert_with(|| json!({}));
        set(next, rest, value);
    }
}

/// The fate Keel gives `path: value` in the file, or why the row cannot be judged.
fn fate_in_file(path: &str, value: &Value) -> Result<Fate, String> {
    let mut doc = minimal();
    set(&mut doc, &path.split('.').collect::<Vec<_>>(), value.clone());
    let yaml = crate::cli::output::yaml(&doc);
    let mentions = |p: &str| p == path || path.starts_with(&format!("{p}."));
    match Config::from_str(&yaml, &Env::new()) {
        Ok(l) if l.warnings.iter().any(|w| w.contains(path)) => Ok(Fate::Warned),
        Ok(l) if l.warnings.is_empty() => Ok(Fate::Implemented),
        Ok(l) => Err(format!("unrelated warnings {:?}", l.warnings)),
        Err(ConfigError::Refused { refused, .. }) if refused.iter().any(|r| mentions(&r.path)) => Ok(Fate::Refused),
        Err(e) => Err(format!("{e}\n{yaml}")),
    }
}

/// The fate the dynamic configuration check gives a `bootstrap.dcs.*` setting.
fn fate_in_store(path: &str, value: &Value) -> Option<Fate> {
    let dcs_path = path.strip_prefix("bootstrap.dcs.")?;
    let mut doc = json!({});
    set(&mut doc, &dcs_path.split('.').collect::<Vec<_>>(), value.clone());
    Some(match dynamic::check(&doc) {
        Ok(w) if w.is_empty() => Fate::Implemented,
        Ok(_) => Fate::Warned,
        Err(ConfigError::Refused { .. }) => Fate::Refused,
        Err(e) => panic!("{path}: {e}"),
    })
}

#[test]
fn every_patroni_key_has_a_row_and_every_row_a_patroni_key() {
    let keys = patroni_keys();
    let rows = table();
    let missing: Vec<&String> = keys.iter().filter(|k| !rows.iter().any(|r| &r.key == *k)).collect();
    assert!(missing.is_empty(), "Patroni keys without a row in docs/patroni-compatibility.md: {missing:?}");
    let extra: Vec<&str> = rows.iter().map(|r| r.key.as_str()).filter(|k| !keys.iter().any(|p| p == k)).collect();
    assert!(extra.is_empty(), "rows for keys that are not in patroni-keys.txt: {extra:?}");
    assert!(keys.len() > 150, "the key list looks truncated: {} keys", keys.len());
}

#[test]
fn every_row_states_the_fate_keel_gives() {
    let mut wrong = Vec::new();
    for row in table() {
        let path = row.key.replace('*', "x");
        let value: Value = serde_saphyr::from_str(&row.value)
            .unwrap_or_else(|e| panic!("docs: {}: value {:?} is not YAML: {e}", row.key, row.value));
        match fate_in_file(&path, &value) {
            Ok(f) if f == row.fate => {}
            Ok(f) => wrong.push(format!("{path}: {}: docs say {:?}, Keel gives {f:?}", row.value, row.fate)),
            Err(e) => wrong.push(format!("{path}: {}: cannot be judged: {e}", row.value)),
        }
        if let Some(f) = fate_in_store(&path, &value) {
            if f != row.fate {
                wrong.push(format!("{path} in the store: {}: docs say {:?}, Keel gives {f:?}", row.value, row.fate));
            }
        }
    }
    assert!(wrong.is_empty(), "docs/patroni-compatibility.md and Keel disagree:\n{}", wrong.join("\n"));
}

#[test]
fn the_table_notices_a_changed_fate() {
    // The judge itself: a refused and a warned key are told apart from an implemented one.
    assert_eq!(fate_in_file("etcd3.key_password", &json!("x")), Ok(Fate::Refused));
    assert_eq!(fate_in_file("log.format", &json!("x")), Ok(Fate::Warned));
    assert_eq!(fate_in_file("tags.nosync", &json!(true)), Ok(Fate::Implemented));
    assert!(fate_in_file("etcd3.nonsense", &json!(1)).is_err());
}
