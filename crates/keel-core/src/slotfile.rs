//! PostgreSQL's on-disk replication slot state file, `pg_replslot/<slot>/state`.
//!
//! Keel copies a logical slot to a standby by reading this file from the primary (`pg_read_binary_file`) and
//! writing it into the stopped standby's data directory. PostgreSQL reads slot files only at startup and PANICs
//! (the server does not come up) on a wrong magic number, format version, length or checksum, so a file must be
//! checked here, against the standby's major version, before it is ever written.
//!
//! The file is a `ReplicationSlotOnDisk` (slot.c, the same container in 12–18), little-endian on every platform
//! Keel runs on:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `0x1051CA1` (not checksummed) |
//! | 4 | 4 | CRC-32C of bytes `[8, 16 + length)` (not checksummed) |
//! | 8 | 4 | format version (`SLOT_VERSION`) |
//! | 12 | 4 | length of the slot data that follows (`sizeof(ReplicationSlotPersistentData)`) |
//! | 16 | length | `ReplicationSlotPersistentData`, whose layout depends on the major version |
//!
//! Format per major ([`format_for_major`]): 13 → version 2, 168 bytes; 14 and 15 → version 2, 184 bytes;
//! 16 → version 3, 184 bytes; 17 and 18 → version 5, 184 bytes. 17 and 18 share the layout; only the meaning of
//! the invalidation cause differs (a sequence in 16–17, bit flags in 18). PostgreSQL reads only its own version:
//! there is no cross-version reading at all.
//!
//! Everything here is a pure function over `&[u8]`: no input makes it panic.

use std::fmt;

use crate::lsn::Lsn;

/// `SLOT_MAGIC`; on disk `a1 1c 05 01`.
pub const SLOT_MAGIC: u32 = 0x0105_1CA1;
/// magic, checksum, version, length.
pub const HEADER_LEN: usize = 16;
/// `NAMEDATALEN`: a `NameData` is a NUL-padded `char[64]`, so a name has at most 63 bytes.
pub const NAMEDATALEN: usize = 64;
/// Bytes at the start of the file the checksum does not cover (magic and checksum).
const NOT_CHECKSUMMED: usize = 8;

/// The oldest and newest majors whose format this module knows.
pub const OLDEST_MAJOR: u32 = 13;
pub const NEWEST_MAJOR: u32 = 18;

/// A format: the file's `version` and `length` header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFormat {
    pub version: u32,
    /// Bytes of slot data after the 16-byte header; the file is `16 + length` bytes.
    pub length: u32,
}

impl SlotFormat {
    /// The whole file's size.
    pub fn file_len(self) -> usize {
        HEADER_LEN + self.length as usize
    }
}

/// The format PostgreSQL `major` writes and, at startup, requires; `None` for a major this module does not know.
pub fn format_for_major(major: u32) -> Option<SlotFormat> {
    let (version, length) = match major {
        13 => (2, 168),
        14 | 15 => (2, 184),
        16 => (3, 184),
        17 | 18 => (5, 184),
        _ => return None,
    };
    Some(SlotFormat { version, length })
}

/// Which PostgreSQL majors write format `version`, for error messages.
pub fn majors_for_version(version: u32) -> Option<&'static str> {
    match version {
        2 => Some("PostgreSQL 10–15"),
        3 => Some("PostgreSQL 16"),
        4 => Some("a PostgreSQL 17 development build"),
        5 => Some("PostgreSQL 17–18"),
        _ => None,
    }
}

/// Which PostgreSQL majors write a file with this version and length, for error messages.
pub fn majors_for_format(format: SlotFormat) -> Option<&'static str> {
    match (format.version, format.length) {
        (2, 160) => Some("PostgreSQL 10–12"),
        (2, 168) => Some("PostgreSQL 13"),
        (2, 184) => Some("PostgreSQL 14–15"),
        (3, 184) => Some("PostgreSQL 16"),
        (5, 184) => Some("PostgreSQL 17–18"),
        _ => None,
    }
}

/// A slot's lifetime (`ReplicationSlotPersistency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistency {
    /// Survives restarts: the only kind worth copying.
    Persistent,
    /// Being created; dropped at restart.
    Ephemeral,
    /// Dropped at the end of the session and at restart.
    Temporary,
    Unknown(u32),
}

impl Persistency {
    fn from_raw(raw: u32) -> Persistency {
        match raw {
            0 => Persistency::Persistent,
            1 => Persistency::Ephemeral,
            2 => Persistency::Temporary,
            other => Persistency::Unknown(other),
        }
    }
}

impl fmt::Display for Persistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Persistency::Persistent => f.write_str("persistent"),
            Persistency::Ephemeral => f.write_str("ephemeral"),
            Persistency::Temporary => f.write_str("temporary"),
            Persistency::Unknown(raw) => write!(f, "unknown persistency {raw}"),
        }
    }
}

/// Whether, and why, PostgreSQL invalidated the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    None,
    /// The WAL it needed was removed (`max_slot_wal_keep_size`). In 13–15 the file only says where
    /// (`invalidated_at`, the restart_lsn it had); in 16+ it is cause 1.
    WalRemoved {
        at: Option<Lsn>,
    },
    /// Catalog rows it needed were removed (16+ standbys, `rows_removed`).
    RowsRemoved,
    /// The primary's `wal_level` went below `logical` (16+ standbys, `wal_level_insufficient`).
    WalLevelInsufficient,
    /// Unused for longer than `idle_replication_slot_timeout` (18, `idle_timeout`).
    IdleTimeout,
    /// A cause code this major does not define.
    Unknown(u32),
}

impl Invalidation {
    /// The cause as `pg_replication_slots.invalidation_reason` (17+) names it; `None` when not invalidated.
    pub fn reason(&self) -> Option<String> {
        match self {
            Invalidation::None => None,
            Invalidation::WalRemoved { .. } => Some("wal_removed".to_string()),
            Invalidation::RowsRemoved => Some("rows_removed".to_string()),
            Invalidation::WalLevelInsufficient => Some("wal_level_insufficient".to_string()),
            Invalidation::IdleTimeout => Some("idle_timeout".to_string()),
            Invalidation::Unknown(raw) => Some(format!("unknown cause {raw}")),
        }
    }

    /// 16 and 17 number the causes 1, 2, 3; 18 made them bit flags 1, 2, 4, 8.
    fn from_cause(raw: u32, major: u32) -> Invalidation {
        match (raw, major >= 18) {
            (0, _) => Invalidation::None,
            (1, _) => Invalidation::WalRemoved { at: None },
            (2, _) => Invalidation::RowsRemoved,
            (3, false) | (4, true) => Invalidation::WalLevelInsufficient,
            (8, true) => Invalidation::IdleTimeout,
            (other, _) => Invalidation::Unknown(other),
        }
    }
}

impl fmt::Display for Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalidation::None => f.write_str("not invalidated"),
            Invalidation::WalRemoved { at: Some(at) } => write!(f, "wal_removed (invalidated_at {at})"),
            other => f.write_str(&other.reason().unwrap_or_default()),
        }
    }
}

/// A decoded slot state file. Fields that the major's format does not have are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotFile {
    /// The major whose layout the data was decoded with (the one it was checked against).
    pub major: u32,
    pub magic: u32,
    /// The stored CRC-32C; it matched the computed one.
    pub checksum: u32,
    pub version: u32,
    pub length: u32,
    pub name: String,
    /// The database oid; 0 for a physical slot.
    pub database: u32,
    pub persistency: Persistency,
    /// 0 when unset (`InvalidTransactionId`).
    pub xmin: u32,
    pub catalog_xmin: u32,
    pub restart_lsn: Lsn,
    /// 13–15: the raw `invalidated_at` (0 unless invalidated).
    pub invalidated_at: Option<Lsn>,
    /// 16+: the raw `invalidated` cause code (0 unless invalidated).
    pub invalidated_cause: Option<u32>,
    /// Decoded from whichever of the two fields above this major has.
    pub invalidation: Invalidation,
    pub confirmed_flush: Lsn,
    /// 14 only: `initial_consistent_point`.
    pub initial_consistent_point: Option<Lsn>,
    /// 15+: `two_phase_at` (the same bytes as 14's `initial_consistent_point`, with another meaning).
    pub two_phase_at: Option<Lsn>,
    /// 14+.
    pub two_phase: Option<bool>,
    /// The output plugin; empty for a physical slot.
    pub plugin: String,
    /// 17+: created by the slot sync worker on a standby.
    pub synced: Option<bool>,
    /// 17+: the slot is to be synced to standbys (`failover`).
    pub failover: Option<bool>,
}

impl SlotFile {
    /// A logical slot has a database (physical slots have oid 0).
    pub fn is_logical(&self) -> bool {
        self.database != 0
    }
}

/// What the standby expects of a logical slot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// The standby's PostgreSQL major version (from its `PG_VERSION`): the file must be in exactly its format.
    pub major: u32,
    /// The slot's name on the primary, which is also the directory name under `pg_replslot`.
    pub slot_name: String,
    /// The slot's database oid on the primary (`pg_replication_slots.datoid`).
    pub database_oid: u32,
    /// The slot's output plugin on the primary (`pg_replication_slots.plugin`).
    pub plugin: String,
}

/// Why a slot state file is refused. Each message says what is wrong; none of these files may be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotFileError {
    #[error(
        "PostgreSQL {major} is not supported for slot file copies: Keel knows the slot file formats of PostgreSQL \
         {OLDEST_MAJOR} to {NEWEST_MAJOR}"
    )]
    UnsupportedMajor { major: u32 },
    #[error(
        "the file is {len} bytes, shorter than {needed} ({what}): it is truncated; PostgreSQL would refuse it \
         (\"could not read file\")"
    )]
    Truncated { len: usize, needed: usize, what: &'static str },
    #[error(
        "the file is {len} bytes, {} more than the {expected} its header describes: it is not a slot state file as \
         PostgreSQL writes it",
        len.saturating_sub(*expected)
    )]
    Extended { len: usize, expected: usize },
    #[error(
        "wrong magic number 0x{found:08X} instead of 0x{SLOT_MAGIC:08X}: this is not a replication slot state file"
    )]
    BadMagic { found: u32 },
    #[error(
        "format version {found} is {}, but this standby runs PostgreSQL {major}, which reads version {expected} only \
         (it would PANIC with \"unsupported version {found}\"){}",
        majors_for_version(*.found).map_or_else(|| "not one PostgreSQL 10–18 writes".to_string(), |m| format!("{m}'s")),
        corrupt_note(*.checksum_ok)
    )]
    VersionMismatch { found: u32, expected: u32, major: u32, checksum_ok: bool },
    #[error(
        "the slot data length is {found} bytes{}, but PostgreSQL {major} expects exactly {expected} (it would PANIC \
         with \"corrupted length {found}\"){}",
        majors_for_format(SlotFormat { version: *.version, length: *.found })
            .map_or_else(String::new, |m| format!(" ({m}'s layout)")),
        corrupt_note(*.checksum_ok)
    )]
    LengthMismatch { found: u32, expected: u32, version: u32, major: u32, checksum_ok: bool },
    #[error(
        "checksum mismatch: file says 0x{stored:08X}, computed 0x{computed:08X}; the file is corrupt or truncated"
    )]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("the {field} field is not a valid name: {reason}")]
    BadName { field: &'static str, reason: String },
    #[error("the {field} flag is the byte {value}, not 0 or 1: the file is corrupt")]
    BadFlag { field: &'static str, value: u8 },
    #[error("the file is for slot {found:?}, not {expected:?}")]
    NameMismatch { found: String, expected: String },
    #[error("slot {name:?} is a physical slot (database oid 0); only logical slots are copied this way")]
    NotLogical { name: String },
    #[error("slot {name:?} belongs to database oid {found}, but the primary's slot is in database oid {expected}")]
    DatabaseMismatch { name: String, found: u32, expected: u32 },
    #[error("slot {name:?} is logical but has no output plugin: the file is corrupt")]
    EmptyPlugin { name: String },
    #[error("slot {name:?} uses output plugin {found:?}, but the primary's slot uses {expected:?}")]
    PluginMismatch { name: String, found: String, expected: String },
    #[error("slot {name:?} was invalidated ({invalidation}): it can no longer be used and must not be copied")]
    Invalidated { name: String, invalidation: Invalidation },
    #[error("slot {name:?} is {persistency}: PostgreSQL drops such slots at startup, so it must not be copied")]
    NotPersistent { name: String, persistency: Persistency },
}

fn corrupt_note(checksum_ok: bool) -> &'static str {
    if checksum_ok {
        ""
    } else {
        "; its checksum does not match either, so the file is probably corrupt"
    }
}

/// CRC-32C over what PostgreSQL covers: from byte 8 (`version`) to the end of the slot data the header's length
/// describes (or to the end of `file`, whichever comes first).
pub fn compute_checksum(file: &[u8]) -> u32 {
    let end = match u32_at(file, 12) {
        Some(length) => HEADER_LEN.saturating_add(length as usize).min(file.len()),
        None => file.len(),
    };
    crc32c::crc32c(file.get(NOT_CHECKSUMMED..end).unwrap_or_default())
}

/// Rewrites the stored checksum of a whole file to match its content; for building test files. Does nothing to a
/// file shorter than the header.
pub fn fix_checksum(file: &mut [u8]) {
    let crc = compute_checksum(file);
    if let Some(slot) = file.get_mut(4..8) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Reads fields of a file whose size was checked, still without indexing that could panic.
struct Fields<'a> {
    bytes: &'a [u8],
}

impl Fields<'_> {
    fn short(&self, at: usize, size: usize) -> SlotFileError {
        SlotFileError::Truncated { len: self.bytes.len(), needed: at + size, what: "the slot data" }
    }

    fn u32(&self, at: usize) -> Result<u32, SlotFileError> {
        u32_at(self.bytes, at).ok_or_else(|| self.short(at, 4))
    }

    fn lsn(&self, at: usize) -> Result<Lsn, SlotFileError> {
        let b: [u8; 8] = self.bytes.get(at..at + 8).and_then(|s| s.try_into().ok()).ok_or_else(|| self.short(at, 8))?;
        Ok(Lsn(u64::from_le_bytes(b)))
    }

    fn flag(&self, at: usize, field: &'static str) -> Result<bool, SlotFileError> {
        match self.bytes.get(at) {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            Some(&value) => Err(SlotFileError::BadFlag { field, value }),
            None => Err(self.short(at, 1)),
        }
    }

    /// A NUL-terminated `NameData`; what follows the NUL is not looked at (PostgreSQL pads with zeros).
    fn name(&self, at: usize, field: &'static str) -> Result<String, SlotFileError> {
        let raw = self.bytes.get(at..at + NAMEDATALEN).ok_or_else(|| self.short(at, NAMEDATALEN))?;
        let bad = |reason: String| SlotFileError::BadName { field, reason };
        let end = raw
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad(format!("no NUL terminator within {NAMEDATALEN} bytes")))?;
        let text = std::str::from_utf8(&raw[..end]).map_err(|_| bad("not UTF-8".to_string()))?;
        Ok(text.to_string())
    }
}

/// Whether PostgreSQL accepts `name` as a replication slot name (`ReplicationSlotValidateName`): 1 to 63 bytes of
/// `[a-z0-9_]`. Such a name is also safe as a single path component.
pub fn is_valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < NAMEDATALEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Decodes a slot state file and checks it the way a PostgreSQL `expected_major` server checks it at startup
/// (magic, version, length, checksum) plus the file's exact size and well-formed name, plugin and flags.
/// The slot's identity and state are checked by [`validate`].
pub fn parse(bytes: &[u8], expected_major: u32) -> Result<SlotFile, SlotFileError> {
    let format = format_for_major(expected_major).ok_or(SlotFileError::UnsupportedMajor { major: expected_major })?;
    let (Some(magic), Some(stored), Some(version), Some(length)) =
        (u32_at(bytes, 0), u32_at(bytes, 4), u32_at(bytes, 8), u32_at(bytes, 12))
    else {
        return Err(SlotFileError::Truncated { len: bytes.len(), needed: HEADER_LEN, what: "the 16-byte header" });
    };
    if magic != SLOT_MAGIC {
        return Err(SlotFileError::BadMagic { found: magic });
    }
    let covered_whole = HEADER_LEN.saturating_add(length as usize) == bytes.len();
    let checksum_ok = covered_whole && compute_checksum(bytes) == stored;
    if version != format.version {
        return Err(SlotFileError::VersionMismatch {
            found: version,
            expected: format.version,
            major: expected_major,
            checksum_ok,
        });
    }
    if length != format.length {
        return Err(SlotFileError::LengthMismatch {
            found: length,
            expected: format.length,
            version,
            major: expected_major,
            checksum_ok,
        });
    }
    let expected_len = format.file_len();
    if bytes.len() < expected_len {
        return Err(SlotFileError::Truncated { len: bytes.len(), needed: expected_len, what: "header plus slot data" });
    }
    if bytes.len() > expected_len {
        return Err(SlotFileError::Extended { len: bytes.len(), expected: expected_len });
    }
    let computed = compute_checksum(bytes);
    if computed != stored {
        return Err(SlotFileError::ChecksumMismatch { stored, computed });
    }

    let f = Fields { bytes };
    let name = f.name(16, "slot name")?;
    if !is_valid_slot_name(&name) {
        return Err(SlotFileError::BadName {
            field: "slot name",
            reason: format!("{name:?} is not 1 to 63 characters of a-z, 0-9 and _"),
        });
    }
    let mut slot = SlotFile {
        major: expected_major,
        magic,
        checksum: stored,
        version,
        length,
        name,
        database: f.u32(80)?,
        persistency: Persistency::from_raw(f.u32(84)?),
        xmin: f.u32(88)?,
        catalog_xmin: f.u32(92)?,
        restart_lsn: f.lsn(96)?,
        invalidated_at: None,
        invalidated_cause: None,
        invalidation: Invalidation::None,
        confirmed_flush: f.lsn(112)?,
        initial_consistent_point: None,
        two_phase_at: None,
        two_phase: None,
        plugin: String::new(),
        synced: None,
        failover: None,
    };
    if expected_major <= 15 {
        let at = f.lsn(104)?;
        slot.invalidated_at = Some(at);
        if at != Lsn::ZERO {
            slot.invalidation = Invalidation::WalRemoved { at: Some(at) };
        }
    } else {
        let cause = f.u32(104)?;
        slot.invalidated_cause = Some(cause);
        slot.invalidation = Invalidation::from_cause(cause, expected_major);
    }
    let plugin_at = if expected_major == 13 {
        120
    } else {
        let lsn = f.lsn(120)?;
        if expected_major == 14 {
            slot.initial_consistent_point = Some(lsn);
        } else {
            slot.two_phase_at = Some(lsn);
        }
        slot.two_phase = Some(f.flag(128, "two_phase")?);
        129
    };
    slot.plugin = f.name(plugin_at, "plugin")?;
    if expected_major >= 17 {
        // `synced` is a char, `failover` a bool; PostgreSQL only ever writes 0 or 1.
        slot.synced = Some(f.flag(193, "synced")?);
        slot.failover = Some(f.flag(194, "failover")?);
    }
    Ok(slot)
}

/// [`parse`]s the file for the standby's major, then checks it is the primary's logical slot in a usable state:
/// the expected name, database and plugin, persistent, and not invalidated. Only a file that passes may be
/// written into a data directory.
pub fn validate(bytes: &[u8], expected: &Expectation) -> Result<SlotFile, SlotFileError> {
    let slot = parse(bytes, expected.major)?;
    let name = || slot.name.clone();
    if slot.name != expected.slot_name {
        return Err(SlotFileError::NameMismatch { found: name(), expected: expected.slot_name.clone() });
    }
    if !slot.is_logical() {
        return Err(SlotFileError::NotLogical { name: name() });
    }
    if slot.database != expected.database_oid {
        return Err(SlotFileError::DatabaseMismatch {
            name: name(),
            found: slot.database,
            expected: expected.database_oid,
        });
    }
    if slot.plugin.is_empty() {
        return Err(SlotFileError::EmptyPlugin { name: name() });
    }
    if slot.plugin != expected.plugin {
        return Err(SlotFileError::PluginMismatch {
            name: name(),
            found: slot.plugin.clone(),
            expected: expected.plugin.clone(),
        });
    }
    if slot.persistency != Persistency::Persistent {
        return Err(SlotFileError::NotPersistent { name: name(), persistency: slot.persistency });
    }
    if slot.invalidation != Invalidation::None {
        return Err(SlotFileError::Invalidated { name: name(), invalidation: slot.invalidation });
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PostgreSQL 13 layout file (no real 13 server here): version 2, length 168, plugin at 120.
    fn pg13_file() -> Vec<u8> {
        let mut f = vec![0u8; 184];
        f[0..4].copy_from_slice(&SLOT_MAGIC.to_le_bytes());
        f[8..12].copy_from_slice(&2u32.to_le_bytes());
        f[12..16].copy_from_slice(&168u32.to_le_bytes());
        f[16..20].copy_from_slice(b"s_13");
        f[80..84].copy_from_slice(&16384u32.to_le_bytes());
        f[92..96].copy_from_slice(&731u32.to_le_bytes());
        f[96..104].copy_from_slice(&0x0150_0000u64.to_le_bytes());
        f[112..120].copy_from_slice(&0x0150_0100u64.to_le_bytes());
        f[120..128].copy_from_slice(b"pgoutput");
        fix_checksum(&mut f);
        f
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn version_map() {
        let f = |major| format_for_major(major).map(|f| (f.version, f.length));
        assert_eq!(f(12), None);
        assert_eq!(f(13), Some((2, 168)));
        assert_eq!(f(14), Some((2, 184)));
        assert_eq!(f(15), Some((2, 184)));
        assert_eq!(f(16), Some((3, 184)));
        assert_eq!(f(17), Some((5, 184)));
        assert_eq!(f(18), Some((5, 184)));
        assert_eq!(f(19), None);
        assert_eq!(format_for_major(18).map(SlotFormat::file_len), Some(200));
    }

    #[test]
    fn pg13_layout() {
        let file = pg13_file();
        let slot = parse(&file, 13).expect("a 13 file");
        assert_eq!(slot.name, "s_13");
        assert_eq!(slot.database, 16384);
        assert_eq!(slot.catalog_xmin, 731);
        assert_eq!(slot.restart_lsn, Lsn(0x0150_0000));
        assert_eq!(slot.confirmed_flush, Lsn(0x0150_0100));
        assert_eq!(slot.plugin, "pgoutput");
        assert_eq!(slot.invalidated_at, Some(Lsn::ZERO));
        assert_eq!((slot.two_phase, slot.two_phase_at, slot.failover), (None, None, None));
        let err = parse(&file, 15).expect_err("13 is not 15");
        assert!(err.to_string().contains("168 bytes (PostgreSQL 13's layout)"), "{err}");
    }

    #[test]
    fn invalidation_causes_per_major() {
        assert_eq!(Invalidation::from_cause(3, 17), Invalidation::WalLevelInsufficient);
        assert_eq!(Invalidation::from_cause(3, 18), Invalidation::Unknown(3));
        assert_eq!(Invalidation::from_cause(4, 18), Invalidation::WalLevelInsufficient);
        assert_eq!(Invalidation::from_cause(4, 16), Invalidation::Unknown(4));
        assert_eq!(Invalidation::from_cause(8, 18), Invalidation::IdleTimeout);
        assert_eq!(Invalidation::from_cause(2, 16).reason().as_deref(), Some("rows_removed"));
    }

    #[test]
    fn slot_names() {
        assert!(is_valid_slot_name("a_1"));
        assert!(is_valid_slot_name(&"a".repeat(63)));
        for bad in ["", "A", "a-b", "../x", "a/b", "a.tmp", &"a".repeat(64)] {
            assert!(!is_valid_slot_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn no_panic_on_tiny_inputs() {
        for len in 0..HEADER_LEN {
            let file = pg13_file();
            assert!(parse(&file[..len], 13).is_err());
            assert_eq!(compute_checksum(&file[..len]), compute_checksum(&file[..len]));
        }
        let mut huge_length = pg13_file();
        huge_length[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge_length, 13).is_err());
        let _ = compute_checksum(&huge_length);
    }
}
