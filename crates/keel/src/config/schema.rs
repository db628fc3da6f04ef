//! Patroni's YAML schema as data, and the walk that checks a document against it.
//!
//! The walk checks types, reports unknown keys with their full path and line, collects the keys Patroni knows but
//! Keel does not implement yet, and returns the document as normalized JSON (booleans parsed, seconds as numbers,
//! scalars given where strings are expected turned into strings) for the typed structs to read.

use serde_json::{Map, Value as J};

use super::yaml::{Node, Origin, Value};
use super::ConfigError;
use keel_core::dynconfig::{parse_bool, parse_seconds};

/// What a setting may hold.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Anything (kept as given).
    Any,
    /// A scalar, read as a string.
    Str,
    /// `host:port` (the host part may be a comma-separated list, as in `postgresql.listen`).
    Address,
    /// An integer (or a string holding one).
    Int,
    /// A boolean, Patroni style (`on`/`off`, `yes`/`no`, `true`/`false`, 1/0).
    Bool,
    /// Seconds: a number or a string with a unit (`30`, `"30s"`, `"30min"`).
    Seconds,
    /// `synchronous_mode`: a boolean or `quorum`.
    SyncMode,
    /// A list of strings, or one comma-separated string.
    StrList,
    /// A list of strings.
    Lines,
    /// A mapping with known keys; others are errors.
    Map(&'static [Field]),
    /// A mapping with known keys, where the keys named by the sibling setting `.1` (a string or a list of strings,
    /// e.g. `create_replica_methods`) are also accepted (as not implemented).
    MapWithNamed(&'static [Field], &'static str),
    /// A mapping with known keys (typed) plus any other keys (kept as given), like `tags`.
    OpenMap(&'static [Field]),
    /// A mapping with any keys whose values are all of one kind (null allowed).
    MapOf(&'static Kind),
    /// A list whose items are all of one kind.
    ListOf(&'static Kind),
    /// `bootstrap.initdb`: strings or single-key mappings (`- encoding: UTF8`, `- data-checksums`).
    Initdb,
    /// A permanent slot (`slots:` entry): null or a falsy scalar (physical), or a mapping.
    Slot,
    /// Checked like the inner kind, but the JSON returned is the document as written (for `bootstrap.dcs`).
    Raw(&'static Kind),
    /// A setting Patroni knows and Keel does not implement yet: accepted as given, reported in one warning.
    Unimplemented,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field { name, kind, required: false }
}
const fn req(name: &'static str, kind: Kind) -> Field {
    Field { name, kind, required: true }
}
const fn todo(name: &'static str) -> Field {
    Field { name, kind: Kind::Unimplemented, required: false }
}

pub const ROOT: &[Field] = &[
    req("scope", Kind::Str),
    opt("namespace", Kind::Str),
    req("name", Kind::Str),
    req("restapi", Kind::Map(RESTAPI)),
    req("etcd3", Kind::Map(ETCD3)),
    opt("bootstrap", Kind::MapWithNamed(BOOTSTRAP, "method")),
    req("postgresql", Kind::MapWithNamed(POSTGRESQL, "create_replica_methods")),
    opt("tags", Kind::OpenMap(TAGS)),
    opt("keel", Kind::Map(KEEL)),
    todo("log"),
    todo("ctl"),
    todo("watchdog"),
    todo("citus"),
    todo("consul"),
    todo("etcd"),
    todo("exhibitor"),
    todo("zookeeper"),
    todo("kubernetes"),
    todo("raft"),
    todo("standby_cluster"),
    // Patroni ignores these at the top level (they belong in bootstrap.dcs); old configurations still have them.
    todo("ttl"),
    todo("loop_wait"),
    todo("retry_timeout"),
    todo("maximum_lag_on_failover"),
];

const AUTH: &[Field] = &[
    opt("username", Kind::Str),
    opt("password", Kind::Str),
    todo("sslmode"),
    todo("sslkey"),
    todo("sslpassword"),
    todo("sslcert"),
    todo("sslrootcert"),
    todo("sslcrl"),
    todo("sslcrldir"),
    todo("gssencmode"),
    todo("channel_binding"),
    todo("sslnegotiation"),
];

const RESTAPI: &[Field] = &[
    req("listen", Kind::Address),
    opt("connect_address", Kind::Address),
    opt("authentication", Kind::Map(AUTH)),
    todo("proxy_address"),
    todo("certfile"),
    todo("keyfile"),
    todo("keyfile_password"),
    todo("cafile"),
    todo("ciphers"),
    todo("verify_client"),
    todo("allowlist"),
    todo("allowlist_include_members"),
    todo("http_extra_headers"),
    todo("https_extra_headers"),
    todo("request_queue_size"),
    todo("server_tokens"),
];

const ETCD3: &[Field] = &[
    opt("host", Kind::Str),
    opt("hosts", Kind::StrList),
    opt("protocol", Kind::Str),
    opt("username", Kind::Str),
    opt("password", Kind::Str),
    opt("cacert", Kind::Str),
    opt("cert", Kind::Str),
    opt("key", Kind::Str),
    todo("key_password"),
    todo("url"),
    todo("proxy"),
    todo("srv"),
    todo("srv_suffix"),
    todo("use_proxies"),
    todo("retry_timeout"),
];

const BOOTSTRAP: &[Field] = &[
    opt("dcs", Kind::Raw(&Kind::Map(DCS))),
    opt("initdb", Kind::Initdb),
    opt("method", Kind::Str),
    todo("pg_hba"),
    todo("users"),
    todo("post_bootstrap"),
    todo("post_init"),
];

const DCS: &[Field] = &[
    // Keel's failover-slot settings (read by keel_core::slots from the dynamic configuration).
    opt("failover_slot_readiness", Kind::Str),
    opt("failover_slot_recreate", Kind::Bool),
    opt("ttl", Kind::Seconds),
    opt("loop_wait", Kind::Seconds),
    opt("retry_timeout", Kind::Seconds),
    opt("maximum_lag_on_failover", Kind::Int),
    opt("maximum_lag_on_syncnode", Kind::Int),
    opt("max_timelines_history", Kind::Int),
    opt("primary_start_timeout", Kind::Seconds),
    opt("master_start_timeout", Kind::Seconds),
    opt("primary_stop_timeout", Kind::Seconds),
    opt("master_stop_timeout", Kind::Seconds),
    opt("primary_race_backoff", Kind::Seconds),
    opt("check_timeline", Kind::Bool),
    opt("pause", Kind::Bool),
    opt("synchronous_mode", Kind::SyncMode),
    opt("synchronous_mode_strict", Kind::Bool),
    opt("synchronous_node_count", Kind::Int),
    opt("failsafe_mode", Kind::Bool),
    opt("member_slots_ttl", Kind::Seconds),
    opt("postgresql", Kind::Map(DCS_POSTGRESQL)),
    opt("slots", Kind::MapOf(&Kind::Slot)),
    opt("permanent_slots", Kind::MapOf(&Kind::Slot)),
    opt("permanent_replication_slots", Kind::MapOf(&Kind::Slot)),
    opt("ignore_slots", Kind::ListOf(&Kind::Map(IGNORE_SLOT))),
    todo("standby_cluster"),
];

const DCS_POSTGRESQL: &[Field] = &[
    opt("use_pg_rewind", Kind::Bool),
    opt("use_slots", Kind::Bool),
    opt("parameters", Kind::MapOf(&Kind::Any)),
    opt("pg_hba", Kind::Lines),
    opt("pg_ident", Kind::Lines),
    opt("remove_data_directory_on_rewind_failure", Kind::Bool),
    opt("remove_data_directory_on_diverged_timelines", Kind::Bool),
    todo("recovery_conf"),
];

const SLOT: &[Field] = &[
    opt("type", Kind::Str),
    opt("database", Kind::Str),
    opt("plugin", Kind::Str),
    opt("cluster_type", Kind::Str),
    // Patroni removes a configured `lsn`; accepted so such configurations still load.
    opt("lsn", Kind::Any),
];

const IGNORE_SLOT: &[Field] =
    &[opt("name", Kind::Str), opt("type", Kind::Str), opt("database", Kind::Str), opt("plugin", Kind::Str)];

const POSTGRESQL: &[Field] = &[
    req("listen", Kind::Address),
    req("connect_address", Kind::Address),
    req("data_dir", Kind::Str),
    opt("bin_dir", Kind::Str),
    opt("pgpass", Kind::Str),
    opt("authentication", Kind::Map(PG_AUTH)),
    opt("parameters", Kind::MapOf(&Kind::Any)),
    opt("pg_hba", Kind::Lines),
    opt("pg_ident", Kind::Lines),
    opt("use_unix_socket", Kind::Bool),
    opt("use_unix_socket_repl", Kind::Bool),
    opt("config_dir", Kind::Str),
    opt("pg_ctl_timeout", Kind::Seconds),
    opt("use_pg_rewind", Kind::Bool),
    opt("use_slots", Kind::Bool),
    opt("remove_data_directory_on_rewind_failure", Kind::Bool),
    opt("remove_data_directory_on_diverged_timelines", Kind::Bool),
    todo("bin_name"),
    todo("callbacks"),
    todo("create_replica_methods"),
    todo("basebackup"),
    todo("recovery_conf"),
    todo("custom_conf"),
    todo("proxy_address"),
    todo("pre_promote"),
    todo("before_stop"),
    todo("retry_timeout"),
    // Pre-`authentication` spellings (Patroni still reads them).
    todo("superuser"),
    todo("replication"),
    todo("pg_rewind"),
];

const PG_AUTH: &[Field] =
    &[opt("superuser", Kind::Map(AUTH)), opt("replication", Kind::Map(AUTH)), opt("rewind", Kind::Map(AUTH))];

pub const TAGS: &[Field] = &[
    opt("nofailover", Kind::Bool),
    opt("failover_priority", Kind::Int),
    opt("noloadbalance", Kind::Bool),
    opt("clonefrom", Kind::Bool),
    opt("replicatefrom", Kind::Str),
    opt("nosync", Kind::Bool),
    opt("nostream", Kind::Bool),
    opt("sync_priority", Kind::Int),
];

/// Keel's own settings (none yet).
const KEEL: &[Field] = &[];

/// The schema walk's state.
pub struct Walk<'a> {
    pub file: &'a str,
    /// Paths of the settings Keel does not implement yet, in document order.
    pub unimplemented: Vec<String>,
    pub warnings: Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Walk<'a> {
    pub fn new(file: &'a str) -> Self {
        Walk { file, unimplemented: Vec::new(), warnings: Vec::new() }
    }

    fn wrong(&self, node: &Node, path: &str, expected: &str) -> ConfigError {
        let found = match &node.value {
            Value::Str(s) => format!("{:?}", s.chars().take(60).collect::<String>()),
            other => other.kind().to_string(),
        };
        ConfigError::WrongType {
            file: self.file.to_string(),
            path: path.to_string(),
            expected: expected.to_string(),
            found,
            origin: node.origin.clone(),
        }
    }

    fn invalid(&self, node: &Node, path: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            path: path.to_string(),
            message,
            origin: node.origin.clone(),
        }
    }

    /// Checks `node` against `kind` and returns its normalized JSON.
    pub fn check(&mut self, node: &Node, kind: &Kind, path: &str) -> Result<J, ConfigError> {
        match kind {
            Kind::Any => Ok(node.to_json()),
            Kind::Unimplemented => {
                self.unimplemented.push(path.to_string());
                Ok(node.to_json())
            }
            Kind::Raw(inner) => {
                self.check(node, inner, path)?;
                Ok(match node.value {
                    Value::Null => J::Object(Map::new()),
                    _ => node.to_json(),
                })
            }
            Kind::Str => match (&node.value, node.scalar_text()) {
                (Value::Map(_) | Value::Seq(_) | Value::Null, _) | (_, None) => Err(self.wrong(node, path, "a string")),
                (_, Some(s)) => Ok(J::String(s)),
            },
            Kind::Address => {
                let Some(s) = node.scalar_text().filter(|_| matches!(node.value, Value::Str(_))) else {
                    return Err(self.wrong(node, path, "an address (host:port)"));
                };
                if super::split_port(&s).is_none() {
                    return Err(self.invalid(node, path, format!("{s:?} is not host:port (e.g. 127.0.0.1:5432)")));
                }
                Ok(J::String(s))
            }
            Kind::Int => {
                let n = match &node.value {
                    Value::Int(i) => i64::try_from(*i).ok(),
                    Value::Str(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                };
                n.map(J::from).ok_or_else(|| self.wrong(node, path, "an integer"))
            }
            Kind::Bool => parse_bool(&node.to_json())
                .map(J::Bool)
                .ok_or_else(|| self.wrong(node, path, "a boolean (true/false, on/off, yes/no)")),
            Kind::Seconds => parse_seconds(&node.to_json())
                .map(J::from)
                .ok_or_else(|| self.wrong(node, path, "seconds (e.g. 30, \"30s\" or \"10min\")")),
            Kind::SyncMode => match &node.value {
                Value::Str(s) if s.trim().eq_ignore_ascii_case("quorum") => Ok(J::String("quorum".into())),
                _ => {
                    parse_bool(&node.to_json()).map(J::Bool).ok_or_else(|| self.wrong(node, path, "on, off or quorum"))
                }
            },
            Kind::StrList => match &node.value {
                Value::Str(s) => Ok(J::Array(
                    s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| J::String(s.into())).collect(),
                )),
                Value::Seq(items) => {
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        out.push(self.check(item, &Kind::Str, &format!("{path}[{i}]"))?);
                    }
                    Ok(J::Array(out))
                }
                _ => Err(self.wrong(node, path, "a list of strings or a comma-separated string")),
            },
            Kind::Lines => match &node.value {
                Value::Seq(_) => self.check(node, &Kind::ListOf(&Kind::Str), path),
                _ => Err(self.wrong(node, path, "a list of strings")),
            },
            Kind::ListOf(inner) => match &node.value {
                Value::Seq(items) => {
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        out.push(self.check(item, inner, &format!("{path}[{i}]"))?);
                    }
                    Ok(J::Array(out))
                }
                _ => Err(self.wrong(node, path, "a list")),
            },
            Kind::Initdb => {
                let Value::Seq(items) = &node.value else {
                    return Err(self.wrong(node, path, "a list of options (`- data-checksums`, `- encoding: UTF8`)"));
                };
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    match &item.value {
                        Value::Str(_) => {}
                        Value::Map(entries) if entries.len() == 1 => {
                            if entries[0].value.scalar_text().is_none() {
                                return Err(self.wrong(
                                    &entries[0].value,
                                    &join(&item_path, &entries[0].key),
                                    "a scalar",
                                ));
                            }
                        }
                        _ => return Err(self.wrong(item, &item_path, "an option name or a single `option: value`")),
                    }
                }
                Ok(node.to_json())
            }
            Kind::Slot => match &node.value {
                Value::Null => Ok(J::Null),
                Value::Map(_) => self.check(node, &Kind::Map(SLOT), path),
                _ if parse_bool(&node.to_json()) == Some(false) || node.value == Value::Str(String::new()) => {
                    Ok(node.to_json())
                }
                _ => {
                    Err(self.wrong(node, path, "a slot definition ({type: physical} or {type: logical, ...}) or null"))
                }
            },
            Kind::MapOf(inner) => {
                let Value::Map(entries) = &node.value else {
                    return Err(self.wrong(node, path, "a mapping"));
                };
                let mut out = Map::new();
                for e in entries {
                    let p = join(path, &e.key);
                    let v = if e.value.value == Value::Null { J::Null } else { self.check(&e.value, inner, &p)? };
                    out.insert(e.key.clone(), v);
                }
                Ok(J::Object(out))
            }
            Kind::Map(fields) => self.map(node, fields, path, false, &[]),
            Kind::OpenMap(fields) => self.map(node, fields, path, true, &[]),
            Kind::MapWithNamed(fields, sibling) => {
                let mut named = Vec::new();
                if let Some(n) = node.get(sibling) {
                    match &n.value {
                        Value::Seq(items) => named.extend(items.iter().filter_map(Node::scalar_text)),
                        _ => named.extend(n.scalar_text()),
                    }
                }
                self.map(node, fields, path, false, &named)
            }
        }
    }

    fn map(
        &mut self,
        node: &Node,
        fields: &[Field],
        path: &str,
        open: bool,
        named: &[String],
    ) -> Result<J, ConfigError> {
        let entries = match &node.value {
            Value::Map(entries) => entries.as_slice(),
            Value::Null => &[],
            _ => return Err(self.wrong(node, path, "a mapping")),
        };
        let mut out = Map::new();
        let mut seen: Vec<&str> = Vec::new();
        for e in entries {
            let p = join(path, &e.key);
            if seen.contains(&e.key.as_str()) {
                self.warnings.push(format!(
                    "{}: `{p}` is given more than once; the last one wins (as in Patroni)",
                    super::Where { file: self.file, origin: &e.key_origin }
                ));
            }
            seen.push(&e.key);
            let kind = match fields.iter().find(|f| f.name == e.key) {
                Some(f) => f.kind,
                None if open => Kind::Any,
                None if named.contains(&e.key) => Kind::Unimplemented,
                None => {
                    return Err(ConfigError::UnknownKey {
                        file: self.file.to_string(),
                        path: p,
                        origin: e.key_origin.clone(),
                    })
                }
            };
            if e.value.value == Value::Null {
                // `key:` with nothing after it: the same as leaving the key out.
                out.remove(&e.key);
                continue;
            }
            // A missing key inside this value is reported at the line of the key that holds it.
            let v = self.check(&e.value, &kind, &p).map_err(|err| match err {
                ConfigError::Missing { file, path, origin } if origin == e.value.origin => {
                    ConfigError::Missing { file, path, origin: e.key_origin.clone() }
                }
                other => other,
            })?;
            out.insert(e.key.clone(), v);
        }
        for f in fields.iter().filter(|f| f.required) {
            if !out.contains_key(f.name) {
                return Err(ConfigError::Missing {
                    file: self.file.to_string(),
                    path: join(path, f.name),
                    origin: match node.value {
                        Value::Null if path.is_empty() => Origin::Unknown,
                        _ => node.origin.clone(),
                    },
                });
            }
        }
        Ok(J::Object(out))
    }
}
