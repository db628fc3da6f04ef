//! A YAML document as a tree of nodes that remember where they came from (line and column in the file,
//! or the environment variable that supplied them). The schema walk in [`super::schema`] reads this tree,
//! so every error can name the key path and the line.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Where a node came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// 1-based line and column in the configuration file.
    File { line: u64, column: u64 },
    /// An environment variable (`PATRONI_...`).
    Env(String),
    /// Nowhere in particular (synthesized; the file position is unknown).
    Unknown,
}

impl Origin {
    pub fn line(&self) -> Option<u64> {
        match self {
            Origin::File { line, .. } if *line > 0 => Some(*line),
            _ => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { line, column } if *line > 0 => write!(f, "line {line}, column {column}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            _ => f.write_str("unknown position"),
        }
    }
}

/// A YAML value with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
}

/// A map entry: the key (as a string, with its own origin) and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_origin: Origin,
    pub value: Node,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; duplicates are kept (the schema walk keeps the last, like PyYAML).
    Map(Vec<Entry>),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    pub fn new(value: Value, origin: Origin) -> Self {
        Node { value, origin }
    }

    /// A tree from JSON (the store's `config` key), with no position.
    pub fn from_json(json: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        let value = match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i128::from(i)),
                None => match n.as_u64() {
                    Some(u) => Value::Int(i128::from(u)),
                    None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
            },
            J::String(s) => Value::Str(s.clone()),
            J::Array(items) => Value::Seq(items.iter().map(Node::from_json).collect()),
            J::Object(m) => Value::Map(
                m.iter()
                    .map(|(k, v)| Entry { key: k.clone(), key_origin: Origin::Unknown, value: Node::from_json(v) })
                    .collect(),
            ),
        };
        Node::new(value, Origin::Unknown)
    }

    /// The scalar as text (strings, numbers and booleans), as Python's `str()` would give it.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The last entry with this key, when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().rev().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    /// Converts to JSON. Integers outside i64/u64 become floats; non-finite floats become strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => {
                if let Ok(v) = i64::try_from(*i) {
                    J::from(v)
                } else if let Ok(v) = u64::try_from(*i) {
                    J::from(v)
                } else {
                    float_json(*i as f64)
                }
            }
            Value::Float(f) => float_json(*f),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => {
                let mut m = serde_json::Map::new();
                for e in entries {
                    m.insert(e.key.clone(), e.value.to_json());
                }
                J::Object(m)
            }
        }
    }
}

fn float_json(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(f.to_string()))
}

/// A YAML parse error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    pub line: Option<u64>,
}

/// Parses a YAML document. An empty document is `Null`. Aliases and merge keys are expanded; duplicate keys are
/// kept in order (see [`Value::Map`]). serde-saphyr's budget limits nesting depth and size, so hostile input
/// cannot exhaust the stack.
pub fn parse(text: &str) -> Result<Node, ParseError> {
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        with_snippet: false,
    };
    if text.trim().is_empty() {
        return Ok(Node::new(Value::Null, Origin::File { line: 1, column: 1 }));
    }
    match serde_saphyr::from_str_with_options::<Spanned<Node>>(text, options) {
        Ok(s) => Ok(spanned_node(s)),
        Err(e) => {
            let line = e.location().map(|l| l.line()).filter(|l| *l > 0);
            let options = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
            let message = e.render_with_options(options);
            let message = message.lines().next().unwrap_or("invalid YAML").trim().to_string();
            Err(ParseError { message, line })
        }
    }
}

fn origin_of<T>(s: &Spanned<T>) -> Origin {
    let loc = s.referenced;
    if loc.line() == 0 {
        Origin::Unknown
    } else {
        Origin::File { line: loc.line(), column: loc.column() }
    }
}

fn spanned_node(s: Spanned<Node>) -> Node {
    let origin = origin_of(&s);
    let mut node = s.value;
    node.origin = origin;
    node
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor).map(|value| Node { value, origin: Origin::Unknown })
    }
}

/// A mapping key: any scalar, as text.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(NodeVisitor)? {
            Value::Null => Ok(Key("null".into())),
            Value::Bool(b) => Ok(Key(if b { "true".into() } else { "false".into() })),
            Value::Int(i) => Ok(Key(i.to_string())),
            Value::Float(f) => Ok(Key(f.to_string())),
            Value::Str(s) => Ok(Key(s)),
            Value::Seq(_) | Value::Map(_) => Err(de::Error::custom("mapping keys must be scalars")),
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i128::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(spanned_node(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Key>>()? {
            let key_origin = origin_of(&key);
            let value = spanned_node(map.next_value::<Spanned<Node>>()?);
            entries.push(Entry { key: key.value.0, key_origin, value });
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_lines() {
        let n = parse("scope: batman\npostgresql:\n  listen: 1.2.3.4:5432\n  parameters:\n    a: 1\nlist: [1, x]\n")
            .unwrap();
        let Value::Map(entries) = &n.value else { panic!("{n:?}") };
        assert_eq!(entries[0].key, "scope");
        assert_eq!(entries[0].key_origin.line(), Some(1));
        let pg = n.get("postgresql").unwrap();
        let Value::Map(pg_entries) = &pg.value else { panic!() };
        assert_eq!(pg_entries[0].key_origin.line(), Some(3));
        assert_eq!(pg_entries[1].key_origin.line(), Some(4));
        assert_eq!(pg.get("parameters").unwrap().get("a").unwrap().origin.line(), Some(5));
        assert_eq!(n.get("list").unwrap().origin.line(), Some(6));
        assert_eq!(n.to_json()["list"], serde_json::json!([1, "x"]));
    }

    #[test]
    fn errors_have_lines() {
        let e = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.line.is_some(), "{e:?}");
        assert!(parse("").unwrap().value == Value::Null);
    }

    #[test]
    fn duplicates_are_kept() {
        let n = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(n.get("a").unwrap().value, Value::Int(2));
    }
}
