//! The kinds of Patroni's settings, and the walk that checks a document against the schema in `fields.rs`.
//!
//! The walk checks types, reports unknown keys with their full path and line, collects the settings Keel refuses
//! and the ones it accepts without effect (the tables and their fates are in `fields.rs`), and returns the document as normalized JSON (booleans parsed, seconds as numbers,
//! scalars given where strings are expected turned into strings) for the typed structs to read.

use serde_json::{Map, Value as J};

use super::fields::SLOT;
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
    /// e.g. `create_replica_methods`) are Patroni settings Keel refuses, with the hint `.2`.
    MapWithNamed(&'static [Field], &'static str, &'static str),
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
    /// Checked like the inner kind; a value whose text form (`true`/`false`, lower-case string, comma-joined list)
    /// is not among `.1` is refused with the hint `.2` (e.g. `synchronous_mode: quorum`).
    Limited(&'static Kind, &'static [&'static str], &'static str),
    /// A Patroni setting Keel does not implement: refused with what to do instead.
    Refused(&'static str),
    /// A Patroni setting whose absence cannot surprise anyone (logging cosmetics, Python thread tuning): accepted
    /// and named in one warning, with why it does not matter.
    Ignored(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

/// A setting Keel refuses to run with: where it is and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub path: String,
    pub origin: Origin,
    pub hint: String,
}

/// The schema walk's state.
pub struct Walk<'a> {
    pub file: &'a str,
    /// The settings accepted without effect ([`Kind::Ignored`]): path and why, in document order.
    pub ignored: Vec<(String, &'static str)>,
    /// The settings Keel refuses ([`Kind::Refused`], [`Kind::Limited`]), in document order.
    pub refused: Vec<Refused>,
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
        Walk { file, ignored: Vec::new(), refused: Vec::new(), warnings: Vec::new() }
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

    fn refuse(&mut self, node: &Node, path: &str, hint: &str) {
        self.refused.push(Refused { path: path.to_string(), origin: node.origin.clone(), hint: hint.to_string() });
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
            Kind::Ignored(why) => {
                self.ignored.push((path.to_string(), why));
                Ok(node.to_json())
            }
            Kind::Refused(hint) => {
                self.refuse(node, path, hint);
                Ok(node.to_json())
            }
            Kind::Limited(inner, allowed, hint) => {
                let v = self.check(node, inner, path)?;
                if !allowed.contains(&value_text(&v).as_str()) {
                    self.refuse(node, path, hint);
                }
                Ok(v)
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
            Kind::Map(fields) => self.map(node, fields, path, false, (&[], "")),
            Kind::OpenMap(fields) => self.map(node, fields, path, true, (&[], "")),
            Kind::MapWithNamed(fields, sibling, hint) => {
                let mut named = Vec::new();
                if let Some(n) = node.get(sibling) {
                    match &n.value {
                        Value::Seq(items) => named.extend(items.iter().filter_map(Node::scalar_text)),
                        _ => named.extend(n.scalar_text()),
                    }
                }
                self.map(node, fields, path, false, (&named, hint))
            }
        }
    }

    fn map(
        &mut self,
        node: &Node,
        fields: &[Field],
        path: &str,
        open: bool,
        (named, named_hint): (&[String], &'static str),
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
                None if named.contains(&e.key) => Kind::Refused(named_hint),
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

/// The text a [`Kind::Limited`] value is compared by: `true`/`false`, a lower-case string, a comma-joined list.
fn value_text(v: &J) -> String {
    match v {
        J::String(s) => s.trim().to_ascii_lowercase(),
        J::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}
