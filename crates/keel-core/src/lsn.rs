//! Write-ahead-log positions.
//!
//! Patroni stores LSNs in the store as absolute byte positions (plain JSON integers); PostgreSQL prints them as
//! `X/Y` (two hexadecimal halves). [`Lsn`] is the integer form, with conversions both ways.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An absolute WAL byte position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lsn(pub u64);

/// Why a textual LSN could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal halves like 0/16B3748")]
pub struct LsnParseError(pub String);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// Bytes from `other` up to `self`, zero when `other` is ahead.
    pub fn saturating_sub(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }

    /// The first position of the WAL segment file `name` (`TTTTTTTTXXXXXXXXYYYYYYYY`: timeline, then the
    /// segment number split at 2³² bytes) for segments of `segment_size` bytes. `None` for other file names
    /// (`.history`, `.partial`, ...) or a segment size that is not a power of two of at least 1 MiB.
    pub fn from_wal_file_name(name: &str, segment_size: u64) -> Option<Lsn> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if !segment_size.is_power_of_two() || !((1 << 20)..=(1 << 32)).contains(&segment_size) {
            return None;
        }
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_log = (1u64 << 32) / segment_size;
        if seg >= per_log {
            return None;
        }
        log.checked_mul(per_log)?.checked_add(seg)?.checked_mul(segment_size).map(Lsn)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_file_names_give_their_first_position() {
        let mb16 = 16 << 20;
        assert_eq!(Lsn::from_wal_file_name("000000010000000000000001", mb16), Some(Lsn(0x100_0000)));
        assert_eq!(Lsn::from_wal_file_name("0000000200000001000000FF", mb16), Some("1/FF000000".parse().unwrap()));
        assert_eq!(Lsn::from_wal_file_name("000000010000000000000003", 64 << 20), Some(Lsn(3 * (64 << 20))));
        // Segment number out of range for the size, other files, bad sizes.
        assert_eq!(Lsn::from_wal_file_name("000000010000000000000100", mb16), None);
        assert_eq!(Lsn::from_wal_file_name("00000002.history", mb16), None);
        assert_eq!(Lsn::from_wal_file_name("000000010000000000000001.partial", mb16), None);
        assert_eq!(Lsn::from_wal_file_name("000000010000000000000001", 3 << 20), None);
        assert_eq!(Lsn::from_wal_file_name("000000010000000000000001", 0), None);
    }

    #[test]
    fn round_trips_text_form() {
        for text in ["0/0", "0/16B3748", "1/0", "FFFFFFFF/FFFFFFFF"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "16B3748", "x/1", "1/", "/1", "100000000/0"] {
            assert!(text.parse::<Lsn>().is_err(), "{text}");
        }
    }
}
