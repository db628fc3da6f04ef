//! The slot settings of the dynamic configuration: `slots` (permanent slots), `ignore_slots`, and Keel's own
//! `failover_slot_readiness` and `failover_slot_recreate`.
//!
//! Parsing follows Patroni's run-time validation (`Cluster._merge_permanent_slots`): a bad entry is skipped with a
//! [`SlotNote`] for the log, never an error.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::dynconfig::{parse_bool, DynamicConfig};

/// The physical or logical nature of a slot, with what a logical slot decodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SlotKind {
    Physical,
    Logical { database: String, plugin: String },
}

impl SlotKind {
    pub fn is_logical(&self) -> bool {
        matches!(self, SlotKind::Logical { .. })
    }

    pub fn type_str(&self) -> &'static str {
        match self {
            SlotKind::Physical => "physical",
            SlotKind::Logical { .. } => "logical",
        }
    }
}

impl fmt::Display for SlotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotKind::Physical => write!(f, "physical"),
            SlotKind::Logical { database, plugin } => write!(f, "logical (database={database}, plugin={plugin})"),
        }
    }
}

/// Patroni's `cluster_type` of a permanent slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterType {
    /// Absent: the slot exists in any cluster.
    #[default]
    Any,
    Primary,
    /// Only in standby clusters. Keel runs primary clusters only, so such slots are never desired.
    Standby,
}

/// One valid entry of the `slots` map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermanentSlot {
    pub kind: SlotKind,
    pub cluster_type: ClusterType,
}

/// One `ignore_slots` matcher. Absent (or empty) fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IgnoreMatcher {
    pub name: Option<String>,
    /// `physical` or `logical`.
    pub slot_type: Option<String>,
    pub database: Option<String>,
    pub plugin: Option<String>,
}

impl IgnoreMatcher {
    /// Patroni's `ignore_replication_slot` rule for one matcher. A physical slot has no database or plugin, so a
    /// matcher naming either never matches it.
    pub fn matches(&self, name: &str, slot_type: &str, database: Option<&str>, plugin: Option<&str>) -> bool {
        let field = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == have);
        field(&self.name, Some(name))
            && field(&self.slot_type, Some(slot_type))
            && field(&self.database, database)
            && field(&self.plugin, plugin)
    }
}

/// Keel's `failover_slot_readiness`: how logical-slot readiness weighs in the automatic leader race.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailoverSlotReadiness {
    /// An unready replica is never promoted automatically (a forced manual failover still can).
    Strict,
    /// A ready candidate wins over an unready one; if no candidate is ready, an unready one may win.
    #[default]
    Prefer,
    /// Patroni's behaviour: readiness is informational only.
    Off,
}

impl FailoverSlotReadiness {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverSlotReadiness::Strict => "strict",
            FailoverSlotReadiness::Prefer => "prefer",
            FailoverSlotReadiness::Off => "off",
        }
    }
}

/// Keel's `failover_slots`: how replicas keep copies of permanent logical slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailoverSlotsMode {
    /// Native on PostgreSQL 17 and newer, copy on 16 and older.
    #[default]
    Auto,
    /// PostgreSQL's own failover slots (`failover = true`, the slotsync worker): 17 and newer only.
    Native,
    /// Keel makes and advances the copies itself, on every major.
    Copy,
}

/// The way copies are kept on a given major: what [`FailoverSlotsMode`] resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotSyncMethod {
    /// PostgreSQL's slotsync worker keeps the copies (17+).
    Native,
    /// Keel creates and advances the copies.
    Copy,
}

impl SlotSyncMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotSyncMethod::Native => "native",
            SlotSyncMethod::Copy => "copy",
        }
    }
}

/// The first major with native failover slots.
pub const NATIVE_SLOT_SYNC_MAJOR: u32 = 17;

impl FailoverSlotsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverSlotsMode::Auto => "auto",
            FailoverSlotsMode::Native => "native",
            FailoverSlotsMode::Copy => "copy",
        }
    }

    /// The method in force on `major`. `native` on a major without native failover slots falls back to copy
    /// (the configuration note [`SlotNote::NativeNeedsPg17`] says so).
    pub fn method(self, major: u32) -> SlotSyncMethod {
        match self {
            FailoverSlotsMode::Copy => SlotSyncMethod::Copy,
            FailoverSlotsMode::Auto | FailoverSlotsMode::Native if major >= NATIVE_SLOT_SYNC_MAJOR => {
                SlotSyncMethod::Native
            }
            FailoverSlotsMode::Auto | FailoverSlotsMode::Native => SlotSyncMethod::Copy,
        }
    }

    fn parse(v: Option<&Value>, notes: &mut Vec<SlotNote>) -> FailoverSlotsMode {
        match v {
            None | Some(Value::Null) => FailoverSlotsMode::default(),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("auto") => FailoverSlotsMode::Auto,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("native") => FailoverSlotsMode::Native,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("copy") => FailoverSlotsMode::Copy,
            Some(other) => {
                notes.push(SlotNote::BadFailoverSlotsMode { value: other.to_string() });
                FailoverSlotsMode::default()
            }
        }
    }
}

/// A problem in the slot configuration or the slot topology, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotNote {
    /// The `slots` key (or its legacy name) is not a JSON object.
    SlotsNotAMap { key: String },
    /// A permanent slot name does not match `^[a-z0-9_]{1,63}$`.
    InvalidName { name: String },
    /// A permanent slot value is neither physical nor logical.
    BadValue { name: String, value: String },
    /// `cluster_type` is neither `primary` nor `standby`; treated as absent.
    BadClusterType { name: String, value: String },
    /// Permanent logical slots need PostgreSQL 11 (`pg_replication_slot_advance`).
    LogicalNeedsPg11 { names: Vec<String> },
    /// A permanent logical slot has the name of a member's physical slot; the member slot wins.
    LogicalConflictsWithMember { name: String },
    /// Several members map to the same slot name; only one slot exists.
    SharedSlotName { slot: String, members: Vec<String> },
    /// `ignore_slots` is not a list, or one of its entries is not an object.
    BadIgnoreMatcher { value: String },
    /// `failover_slot_readiness` is not `strict`, `prefer` or `off`.
    BadReadinessPolicy { value: String },
    /// `failover_slot_recreate` is not a boolean.
    BadRecreateFlag { value: String },
    /// `failover_slots` is not `auto`, `native` or `copy`.
    BadFailoverSlotsMode { value: String },
    /// `failover_slots: native` on a major without native failover slots.
    NativeNeedsPg17 { major: u32 },
    /// A retained member slot expired on the leader.
    RetainedSlotExpired { slot: String, after_secs: u64 },
}

impl fmt::Display for SlotNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotNote::SlotsNotAMap { key } => write!(f, "{key}: expected a map of slot names; ignored"),
            SlotNote::InvalidName { name } => write!(
                f,
                "Invalid permanent replication slot name '{name}': slot name may only contain lower case letters, \
                 numbers, and the underscore chars"
            ),
            SlotNote::BadValue { name, value } => write!(f, "Bad value for slot '{name}' in permanent_slots: {value}"),
            SlotNote::BadClusterType { name, value } => {
                write!(f, "slot '{name}': cluster_type {value} is neither primary nor standby; ignored")
            }
            SlotNote::LogicalNeedsPg11 { names } => write!(
                f,
                "Permanent logical replication slots supported only starting from PostgreSQL 11. Following slots \
                 will not be created: {names:?}"
            ),
            SlotNote::LogicalConflictsWithMember { name } => write!(
                f,
                "Permanent logical replication slot '{name}' is conflicting with physical replication slot for \
                 cluster member"
            ),
            SlotNote::SharedSlotName { slot, members } => write!(
                f,
                "Following cluster members share a replication slot name: {} map to {slot}",
                members.join(", ")
            ),
            SlotNote::BadIgnoreMatcher { value } => write!(f, "ignore_slots: bad matcher {value}; ignored"),
            SlotNote::BadReadinessPolicy { value } => {
                write!(f, "failover_slot_readiness: expected strict, prefer or off, got {value}; using prefer")
            }
            SlotNote::BadRecreateFlag { value } => {
                write!(f, "failover_slot_recreate: expected a boolean, got {value}; using false")
            }
            SlotNote::BadFailoverSlotsMode { value } => {
                write!(f, "failover_slots: expected auto, native or copy, got {value}; using auto")
            }
            SlotNote::NativeNeedsPg17 { major } => write!(
                f,
                "failover_slots: native needs PostgreSQL {NATIVE_SLOT_SYNC_MAJOR} or newer, this is {major}; Keel \
                 copies the slots instead"
            ),
            SlotNote::RetainedSlotExpired { slot, after_secs } => {
                write!(f, "Replication slot '{slot}' for absent cluster member is expired after {after_secs} sec.")
            }
        }
    }
}

/// Everything about slots the dynamic configuration says, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotsConfig {
    /// `postgresql.use_slots` (default true).
    pub use_slots: bool,
    /// `member_slots_ttl` in seconds (default 1800).
    pub member_slots_ttl: u64,
    /// Valid permanent slots by name.
    pub permanent: BTreeMap<String, PermanentSlot>,
    pub ignore: Vec<IgnoreMatcher>,
    pub readiness: FailoverSlotReadiness,
    /// `failover_slot_recreate: true`: a permanent logical slot missing on the primary is created again even though
    /// its consumers lose their position (otherwise Keel reports a continuity break and waits for an operator).
    pub recreate_missing_logical: bool,
    /// `failover_slots` (default `auto`); [`SlotsConfig::sync_method`] resolves it for a major.
    pub failover_slots: FailoverSlotsMode,
    pub notes: Vec<SlotNote>,
}

impl Default for SlotsConfig {
    fn default() -> Self {
        SlotsConfig::from_dynamic(&DynamicConfig::default())
    }
}

/// Patroni's `slot_name_re`: `^[a-z0-9_]{1,63}$`.
pub fn valid_slot_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Python truthiness of a JSON value (`null`, `false`, `0`, `""`, `{}`, `[]` are falsy).
fn falsy(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn non_empty_str(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

/// Parses one permanent slot value. `Err` carries the note for a bad value.
fn parse_permanent(name: &str, v: &Value, notes: &mut Vec<SlotNote>) -> Option<PermanentSlot> {
    if falsy(v) {
        return Some(PermanentSlot { kind: SlotKind::Physical, cluster_type: ClusterType::Any });
    }
    let bad = || SlotNote::BadValue { name: name.to_string(), value: v.to_string() };
    let Value::Object(m) = v else {
        notes.push(bad());
        return None;
    };
    // `lsn` in the configuration is dropped: only the leader's published positions count.
    let database = non_empty_str(m, "database");
    let plugin = non_empty_str(m, "plugin");
    let declared = m.get("type").map(|t| t.as_str().unwrap_or("<not a string>"));
    let kind = match (declared, database, plugin) {
        (Some("physical"), _, _) => SlotKind::Physical,
        (None | Some("logical"), Some(database), Some(plugin)) => SlotKind::Logical { database, plugin },
        (None, _, _) => SlotKind::Physical,
        _ => {
            notes.push(bad());
            return None;
        }
    };
    let cluster_type = match m.get("cluster_type") {
        None | Some(Value::Null) => ClusterType::Any,
        Some(Value::String(s)) if s == "primary" => ClusterType::Primary,
        Some(Value::String(s)) if s == "standby" => ClusterType::Standby,
        Some(other) => {
            notes.push(SlotNote::BadClusterType { name: name.to_string(), value: other.to_string() });
            ClusterType::Any
        }
    };
    Some(PermanentSlot { kind, cluster_type })
}

impl SlotsConfig {
    /// Reads the slot settings from the dynamic configuration document.
    pub fn from_dynamic(cfg: &DynamicConfig) -> SlotsConfig {
        let mut notes = Vec::new();
        let empty = Map::new();
        let obj = cfg.raw.as_object().unwrap_or(&empty);
        let mut permanent = BTreeMap::new();
        // Patroni's precedence of the legacy names.
        let key =
            ["slots", "permanent_replication_slots", "permanent_slots"].into_iter().find(|k| obj.contains_key(*k));
        if let Some(key) = key {
            match &obj[key] {
                Value::Object(slots) => {
                    for (name, v) in slots {
                        if !valid_slot_name(name) {
                            notes.push(SlotNote::InvalidName { name: name.clone() });
                            continue;
                        }
                        if let Some(slot) = parse_permanent(name, v, &mut notes) {
                            permanent.insert(name.clone(), slot);
                        }
                    }
                }
                Value::Null => {}
                _ => notes.push(SlotNote::SlotsNotAMap { key: key.to_string() }),
            }
        }
        let ignore = parse_ignore(obj.get("ignore_slots"), &mut notes);
        let readiness = match obj.get("failover_slot_readiness") {
            None | Some(Value::Null) => FailoverSlotReadiness::default(),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("strict") => FailoverSlotReadiness::Strict,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("prefer") => FailoverSlotReadiness::Prefer,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("off") => FailoverSlotReadiness::Off,
            Some(Value::Bool(false)) => FailoverSlotReadiness::Off,
            Some(other) => {
                notes.push(SlotNote::BadReadinessPolicy { value: other.to_string() });
                FailoverSlotReadiness::default()
            }
        };
        let recreate_missing_logical = match obj.get("failover_slot_recreate") {
            None | Some(Value::Null) => false,
            Some(v) => parse_bool(v).unwrap_or_else(|| {
                notes.push(SlotNote::BadRecreateFlag { value: v.to_string() });
                false
            }),
        };
        let failover_slots = FailoverSlotsMode::parse(obj.get("failover_slots"), &mut notes);
        SlotsConfig {
            use_slots: cfg.use_slots,
            member_slots_ttl: cfg.member_slots_ttl,
            permanent,
            ignore,
            readiness,
            recreate_missing_logical,
            failover_slots,
            notes,
        }
    }

    /// How copies of permanent logical slots are kept on `major`.
    pub fn sync_method(&self, major: u32) -> SlotSyncMethod {
        self.failover_slots.method(major)
    }

    /// The configuration notes that depend on the server's major (to log once it is known).
    pub fn notes_for_major(&self, major: u32) -> Vec<SlotNote> {
        let native_unavailable = self.failover_slots == FailoverSlotsMode::Native && major < NATIVE_SLOT_SYNC_MAJOR;
        native_unavailable.then_some(SlotNote::NativeNeedsPg17 { major }).into_iter().collect()
    }

    /// Whether any `ignore_slots` matcher matches this slot.
    pub fn is_ignored(&self, name: &str, slot_type: &str, database: Option<&str>, plugin: Option<&str>) -> bool {
        self.ignore.iter().any(|m| m.matches(name, slot_type, database, plugin))
    }

    /// Permanent physical slots that exist in a primary (non-standby) cluster.
    pub fn permanent_physical(&self) -> impl Iterator<Item = &str> {
        self.permanent
            .iter()
            .filter(|(_, s)| s.kind == SlotKind::Physical && s.cluster_type != ClusterType::Standby)
            .map(|(n, _)| n.as_str())
    }

    /// Whether the configuration defines any permanent logical slot (the readiness gate is moot otherwise).
    /// The readiness gate in force: `off` unless member slots are on and permanent logical slots are configured
    /// (only those have copies that can be unready).
    pub fn effective_gate(&self) -> FailoverSlotReadiness {
        if self.use_slots && self.has_logical() {
            self.readiness
        } else {
            FailoverSlotReadiness::Off
        }
    }

    pub fn has_logical(&self) -> bool {
        self.permanent.values().any(|s| s.kind.is_logical() && s.cluster_type != ClusterType::Standby)
    }
}

fn parse_ignore(v: Option<&Value>, notes: &mut Vec<SlotNote>) -> Vec<IgnoreMatcher> {
    let items = match v {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            notes.push(SlotNote::BadIgnoreMatcher { value: other.to_string() });
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Object(m) = item else {
            notes.push(SlotNote::BadIgnoreMatcher { value: item.to_string() });
            continue;
        };
        out.push(IgnoreMatcher {
            name: non_empty_str(m, "name"),
            slot_type: non_empty_str(m, "type"),
            database: non_empty_str(m, "database"),
            plugin: non_empty_str(m, "plugin"),
        });
    }
    out
}
