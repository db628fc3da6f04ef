//! `PATRONI_*` environment overrides, as Patroni reads them (they win over the file).
//!
//! The environment is passed in as a map so tests never touch the process environment.

use super::yaml::{Entry, Node, Origin, Value};
use super::Env;

/// Variable → key path, for the variables that do not follow the `PATRONI_<SECTION>_<KEY>` rule.
/// `PATRONI_<TAG>` (tags) is a Keel addition: Patroni has no environment variables for tags.
pub const OVERRIDES: &[(&str, &[&str])] = &[
    ("PATRONI_SCOPE", &["scope"]),
    ("PATRONI_NAME", &["name"]),
    ("PATRONI_NAMESPACE", &["namespace"]),
    ("PATRONI_THREAD_POOL_SIZE", &["thread_pool_size"]),
    ("PATRONI_THREAD_STACK_SIZE", &["thread_stack_size"]),
    ("PATRONI_RESTAPI_USERNAME", &["restapi", "authentication", "username"]),
    ("PATRONI_RESTAPI_PASSWORD", &["restapi", "authentication", "password"]),
    ("PATRONI_CTL_USERNAME", &["ctl", "authentication", "username"]),
    ("PATRONI_CTL_PASSWORD", &["ctl", "authentication", "password"]),
    ("PATRONI_RETRIABLE_HTTP_CODES", &["kubernetes", "retriable_http_codes"]),
    ("PATRONI_NOFAILOVER", &["tags", "nofailover"]),
    ("PATRONI_FAILOVER_PRIORITY", &["tags", "failover_priority"]),
    ("PATRONI_NOLOADBALANCE", &["tags", "noloadbalance"]),
    ("PATRONI_CLONEFROM", &["tags", "clonefrom"]),
    ("PATRONI_REPLICATEFROM", &["tags", "replicatefrom"]),
    ("PATRONI_NOSYNC", &["tags", "nosync"]),
    ("PATRONI_NOSTREAM", &["tags", "nostream"]),
];

/// `PATRONI_<SECTION>_<KEY>` → `<section>.<key>` (longest prefix first), as Patroni's documented variables are
/// built; the schema then decides each key's fate like a key in the file.
const SECTIONS: &[(&str, &[&str])] = &[
    ("PATRONI_POSTGRESQL_BIN_", &["postgresql", "bin_name"]),
    ("PATRONI_SUPERUSER_", &["postgresql", "authentication", "superuser"]),
    ("PATRONI_REPLICATION_", &["postgresql", "authentication", "replication"]),
    ("PATRONI_REWIND_", &["postgresql", "authentication", "rewind"]),
    ("PATRONI_POSTGRESQL_", &["postgresql"]),
    ("PATRONI_RESTAPI_", &["restapi"]),
    ("PATRONI_CTL_", &["ctl"]),
    ("PATRONI_LOG_", &["log"]),
    ("PATRONI_ETCD3_", &["etcd3"]),
    ("PATRONI_ETCD_", &["etcd"]),
    ("PATRONI_CONSUL_", &["consul"]),
    ("PATRONI_ZOOKEEPER_", &["zookeeper"]),
    ("PATRONI_EXHIBITOR_", &["exhibitor"]),
    ("PATRONI_KUBERNETES_", &["kubernetes"]),
    ("PATRONI_RAFT_", &["raft"]),
    ("PATRONI_CITUS_", &["citus"]),
];

/// Patroni reads the whole configuration from this variable when it is set; Keel does not.
pub const CONFIGURATION_VAR: &str = "PATRONI_CONFIGURATION";

/// The key path a `PATRONI_*` variable sets, if it is one.
pub fn path_of(var: &str) -> Option<Vec<String>> {
    if let Some((_, path)) = OVERRIDES.iter().find(|(v, _)| *v == var) {
        return Some(path.iter().map(|p| p.to_string()).collect());
    }
    let (prefix, section) = SECTIONS.iter().find(|(prefix, _)| var.starts_with(prefix))?;
    let key = var[prefix.len()..].to_ascii_lowercase();
    if key.is_empty() {
        return None;
    }
    let mut path: Vec<String> = section.iter().map(|p| p.to_string()).collect();
    path.push(key);
    Some(path)
}

/// The process environment's `PATRONI_*` variables (non-UTF-8 ones are skipped).
pub fn from_process() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("PATRONI_"))
        .collect()
}

/// Writes the overrides into the document (empty values are ignored, as Patroni does) and returns a warning for
/// each `PATRONI_*` variable that is no Patroni setting (left alone). `PATRONI_CONFIGURATION` is the caller's.
pub fn apply(root: &mut Node, env: &Env) -> Vec<String> {
    let mut warnings = Vec::new();
    for (var, value) in env.iter().filter(|(k, v)| k.starts_with("PATRONI_") && !v.is_empty()) {
        if var == CONFIGURATION_VAR {
            continue;
        }
        let Some(path) = path_of(var) else {
            warnings.push(format!("environment variable {var} is not a Patroni setting; ignored"));
            continue;
        };
        let origin = Origin::Env(var.to_string());
        let node = if var.ends_with("_HOSTS") {
            list_value(value, origin)
        } else {
            Node::new(Value::Str(value.clone()), origin)
        };
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        set(root, &path, node);
    }
    warnings
}

/// Patroni reads list variables as YAML when they look like a list (`[a, b]`, `- a`), else as `a,b`.
fn list_value(value: &str, origin: Origin) -> Node {
    let t = value.trim();
    if t.starts_with('[') || t.starts_with('-') {
        if let Ok(mut n) = super::yaml::parse(t) {
            if let Value::Seq(items) = &mut n.value {
                for item in items.iter_mut() {
                    item.origin = origin.clone();
                }
                n.origin = origin;
                return n;
            }
        }
    }
    Node::new(Value::Str(value.to_string()), origin)
}

fn set(node: &mut Node, path: &[&str], value: Node) {
    let Some((first, rest)) = path.split_first() else {
        *node = value;
        return;
    };
    if node.value == Value::Null {
        node.value = Value::Map(Vec::new());
    }
    // A non-mapping in the way is left alone: the schema check reports it with its line.
    let Value::Map(entries) = &mut node.value else { return };
    let existing = entries.iter().rposition(|e| e.key == *first);
    let index = match existing {
        Some(i) => i,
        None => {
            let origin = value.origin.clone();
            entries.push(Entry {
                key: first.to_string(),
                key_origin: origin.clone(),
                value: Node::new(Value::Null, origin),
            });
            entries.len() - 1
        }
    };
    if rest.is_empty() {
        // Drop earlier duplicates so the override is the only value.
        let origin = value.origin.clone();
        entries[index].value = value;
        entries[index].key_origin = origin;
        let key = first.to_string();
        let mut i = 0;
        entries.retain(|e| {
            i += 1;
            e.key != key || i - 1 == index
        });
    } else {
        set(&mut entries[index].value, rest, value);
    }
}
