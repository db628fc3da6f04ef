//! `PATRONI_*` environment overrides, as Patroni reads them (they win over the file).
//!
//! The environment is passed in as a map so tests never touch the process environment.

use super::yaml::{Entry, Node, Origin, Value};
use super::Env;

/// Variable → key path. `PATRONI_<TAG>` (tags) is a Keel addition: Patroni has no environment variables for tags.
pub const OVERRIDES: &[(&str, &[&str])] = &[
    ("PATRONI_SCOPE", &["scope"]),
    ("PATRONI_NAME", &["name"]),
    ("PATRONI_NAMESPACE", &["namespace"]),
    ("PATRONI_RESTAPI_LISTEN", &["restapi", "listen"]),
    ("PATRONI_RESTAPI_CONNECT_ADDRESS", &["restapi", "connect_address"]),
    ("PATRONI_RESTAPI_USERNAME", &["restapi", "authentication", "username"]),
    ("PATRONI_RESTAPI_PASSWORD", &["restapi", "authentication", "password"]),
    ("PATRONI_ETCD3_HOST", &["etcd3", "host"]),
    ("PATRONI_ETCD3_HOSTS", &["etcd3", "hosts"]),
    ("PATRONI_ETCD3_PROTOCOL", &["etcd3", "protocol"]),
    ("PATRONI_ETCD3_USERNAME", &["etcd3", "username"]),
    ("PATRONI_ETCD3_PASSWORD", &["etcd3", "password"]),
    ("PATRONI_ETCD3_CACERT", &["etcd3", "cacert"]),
    ("PATRONI_ETCD3_CERT", &["etcd3", "cert"]),
    ("PATRONI_ETCD3_KEY", &["etcd3", "key"]),
    ("PATRONI_POSTGRESQL_LISTEN", &["postgresql", "listen"]),
    ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", &["postgresql", "connect_address"]),
    ("PATRONI_POSTGRESQL_DATA_DIR", &["postgresql", "data_dir"]),
    ("PATRONI_POSTGRESQL_CONFIG_DIR", &["postgresql", "config_dir"]),
    ("PATRONI_POSTGRESQL_BIN_DIR", &["postgresql", "bin_dir"]),
    ("PATRONI_POSTGRESQL_PGPASS", &["postgresql", "pgpass"]),
    ("PATRONI_SUPERUSER_USERNAME", &["postgresql", "authentication", "superuser", "username"]),
    ("PATRONI_SUPERUSER_PASSWORD", &["postgresql", "authentication", "superuser", "password"]),
    ("PATRONI_REPLICATION_USERNAME", &["postgresql", "authentication", "replication", "username"]),
    ("PATRONI_REPLICATION_PASSWORD", &["postgresql", "authentication", "replication", "password"]),
    ("PATRONI_REWIND_USERNAME", &["postgresql", "authentication", "rewind", "username"]),
    ("PATRONI_REWIND_PASSWORD", &["postgresql", "authentication", "rewind", "password"]),
    ("PATRONI_NOFAILOVER", &["tags", "nofailover"]),
    ("PATRONI_FAILOVER_PRIORITY", &["tags", "failover_priority"]),
    ("PATRONI_NOLOADBALANCE", &["tags", "noloadbalance"]),
    ("PATRONI_CLONEFROM", &["tags", "clonefrom"]),
    ("PATRONI_REPLICATEFROM", &["tags", "replicatefrom"]),
    ("PATRONI_NOSYNC", &["tags", "nosync"]),
    ("PATRONI_NOSTREAM", &["tags", "nostream"]),
];

/// The process environment's `PATRONI_*` variables (non-UTF-8 ones are skipped).
pub fn from_process() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("PATRONI_"))
        .collect()
}

/// Writes the overrides into the document. Empty values are ignored, as Patroni does.
pub fn apply(root: &mut Node, env: &Env) {
    for (var, path) in OVERRIDES {
        let Some(value) = env.get(*var).filter(|v| !v.is_empty()) else { continue };
        let origin = Origin::Env(var.to_string());
        let node = if *var == "PATRONI_ETCD3_HOSTS" {
            list_value(value, origin)
        } else {
            Node::new(Value::Str(value.clone()), origin)
        };
        set(root, path, node);
    }
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
