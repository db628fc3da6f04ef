//! PostgreSQL's control file (`global/pg_control`): whether it is intact, without knowing its layout.
//!
//! The file is `PG_CONTROL_FILE_SIZE` (8192) bytes; its `ControlFileData` ends with a CRC-32C of every byte
//! before it, stored in the machine's byte order. The offset of that CRC differs between majors, so the check
//! looks for a 4-byte aligned position where the CRC of the bytes before it is stored: a real file always has
//! one, a garbled or zeroed one has none (a chance match on random bytes is about 2,000 in 2^32).

/// The size PostgreSQL writes `pg_control` with (`PG_CONTROL_FILE_SIZE`).
pub const PG_CONTROL_FILE_SIZE: usize = 8192;

/// What is wrong with a control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFileProblem {
    /// It is not 8192 bytes long.
    Size { len: usize },
    /// No stored CRC-32C matches the bytes before it.
    Checksum,
}

impl std::fmt::Display for ControlFileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlFileProblem::Size { len } => write!(f, "it is {len} bytes long, not {PG_CONTROL_FILE_SIZE}"),
            ControlFileProblem::Checksum => write!(f, "its checksum does not match its contents"),
        }
    }
}

/// Checks a control file's size and checksum. Pure.
pub fn check(bytes: &[u8]) -> Result<(), ControlFileProblem> {
    if bytes.len() != PG_CONTROL_FILE_SIZE {
        return Err(ControlFileProblem::Size { len: bytes.len() });
    }
    let mut crc = 0u32;
    let mut at = 0;
    // The smallest ControlFileData (PostgreSQL 9.x) is well over 64 bytes; all-zero prefixes never count.
    while at + 4 <= bytes.len() {
        if at >= 64 {
            let stored = u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            if stored == crc && bytes[..at].iter().any(|b| *b != 0) {
                return Ok(());
            }
        }
        crc = crc32c::crc32c_append(crc, &bytes[at..at + 4]);
        at += 4;
    }
    Err(ControlFileProblem::Checksum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_file(crc_at: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; PG_CONTROL_FILE_SIZE];
        for (i, b) in bytes.iter_mut().enumerate().take(crc_at) {
            *b = (i * 7 % 251) as u8;
        }
        let crc = crc32c::crc32c(&bytes[..crc_at]);
        bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_ne_bytes());
        bytes
    }

    #[test]
    fn intact_files_of_any_layout_pass() {
        for at in [248, 296, 304] {
            assert_eq!(check(&control_file(at)), Ok(()), "crc at {at}");
        }
    }

    #[test]
    fn garbled_short_and_zeroed_files_fail() {
        let mut garbled = control_file(296);
        garbled[10] ^= 0xff;
        assert_eq!(check(&garbled), Err(ControlFileProblem::Checksum));
        assert_eq!(check(&[0u8; PG_CONTROL_FILE_SIZE]), Err(ControlFileProblem::Checksum));
        assert_eq!(check(&control_file(296)[..100]), Err(ControlFileProblem::Size { len: 100 }));
        assert_eq!(check(&[]), Err(ControlFileProblem::Size { len: 0 }));
    }
}
