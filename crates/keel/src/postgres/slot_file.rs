//! Installing a logical slot's state file, read from the primary, into a stopped standby's data directory.
//!
//! PostgreSQL reads `pg_replslot/*/state` only at startup and PANICs on a file it cannot read, so the bytes are
//! first checked with [`keel_core::slotfile::validate`] against the standby's major version and the primary's
//! slot: an invalid file is never written. The write follows PostgreSQL's own `CreateSlotOnDisk`: the file goes
//! into `pg_replslot/<slot>.tmp/` (which PostgreSQL removes at startup if a crash leaves it behind), is fsynced,
//! and the directory is renamed into place and `pg_replslot` fsynced.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use keel_core::slotfile::{self, Expectation, SlotFile, SlotFileError};

/// Why a slot file was not installed. Nothing is left behind in `pg_replslot` except, after an I/O error, a
/// `*.tmp` directory PostgreSQL removes at startup.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("refusing to write slot {slot:?}: {source}")]
    Invalid { slot: String, source: SlotFileError },
    #[error("asked to write slot {given:?} but the expectation is for slot {expected:?}")]
    NameMismatch { given: String, expected: String },
    #[error(
        "{data_dir} is a PostgreSQL {found} data directory (PG_VERSION), but the slot file was checked for PostgreSQL \
         {expected}"
    )]
    WrongMajor { data_dir: PathBuf, found: String, expected: u32 },
    #[error("PostgreSQL is running on {data_dir} (postmaster pid {pid}): slot files can only be installed while it is stopped")]
    Running { data_dir: PathBuf, pid: i32 },
    #[error("{path} does not exist: {data_dir} is not a PostgreSQL data directory")]
    NoReplslot { path: PathBuf, data_dir: PathBuf },
    #[error("{path} already exists: the standby already has slot {slot:?}; pass replace to overwrite it")]
    AlreadyExists { path: PathBuf, slot: String },
    #[error("could not {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CopyError {
    let path = path.to_path_buf();
    move |source| CopyError::Io { what, path, source }
}

/// `pg_replslot/<slot>.tmp`: where the new directory is built (PostgreSQL's own staging name).
fn staging_dir(replslot: &Path, slot: &str) -> PathBuf {
    replslot.join(format!("{slot}.tmp"))
}

/// `pg_replslot/<slot>.replaced.tmp`: where a replaced slot directory goes before it is removed. Slot names have
/// no dots, so this never names a slot, and PostgreSQL removes `*.tmp` directories at startup.
fn aside_dir(replslot: &Path, slot: &str) -> PathBuf {
    replslot.join(format!("{slot}.replaced.tmp"))
}

fn fsync_dir(path: &Path) -> Result<(), CopyError> {
    std::fs::File::open(path).and_then(|dir| dir.sync_all()).map_err(io("fsync", path))
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), CopyError> {
    let Some((uid, gid)) = owner else { return Ok(()) };
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| CopyError::Io {
        what: "chown",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path contains a NUL byte"),
    })?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::chown(c_path.as_ptr(), uid, gid) } != 0 {
        return Err(CopyError::Io { what: "chown", path: path.to_path_buf(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

fn remove_dir_if_present(path: &Path) -> Result<(), CopyError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// The pid in `postmaster.pid` when that process is alive.
fn running_postmaster(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let alive =
        unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(pid)
}

/// Checks `bytes` (see [`slotfile::validate`]) and installs them as `<data_dir>/pg_replslot/<slot_name>/state`.
///
/// - `data_dir` must be a stopped PostgreSQL data directory of `expectation.major` (its `PG_VERSION`).
/// - `owner`: `Some((uid, gid))` gives the new directory and file to PostgreSQL's OS user (when the agent runs
///   as root); `None` leaves them to the current user.
/// - `replace`: an existing slot directory of that name is moved aside and removed; without it, an existing slot
///   is an error and nothing changes.
///
/// Modes follow the data directory: 0700/0600, or 0750/0640 when it allows group access. Returns the decoded
/// slot that was written.
pub fn write_slot_file(
    data_dir: &Path,
    slot_name: &str,
    bytes: &[u8],
    expectation: &Expectation,
    owner: Option<(u32, u32)>,
    replace: bool,
) -> Result<SlotFile, CopyError> {
    if slot_name != expectation.slot_name {
        return Err(CopyError::NameMismatch { given: slot_name.to_string(), expected: expectation.slot_name.clone() });
    }
    // The validated name is 1-63 characters of [a-z0-9_], so it is a safe single path component.
    let slot = slotfile::validate(bytes, expectation)
        .map_err(|source| CopyError::Invalid { slot: slot_name.to_string(), source })?;

    let version_file = data_dir.join("PG_VERSION");
    let found = std::fs::read_to_string(&version_file).map_err(io("read", &version_file))?;
    if found.trim() != expectation.major.to_string() {
        return Err(CopyError::WrongMajor {
            data_dir: data_dir.to_path_buf(),
            found: found.trim().to_string(),
            expected: expectation.major,
        });
    }
    if let Some(pid) = running_postmaster(data_dir) {
        return Err(CopyError::Running { data_dir: data_dir.to_path_buf(), pid });
    }
    let replslot = data_dir.join("pg_replslot");
    if !replslot.is_dir() {
        return Err(CopyError::NoReplslot { path: replslot, data_dir: data_dir.to_path_buf() });
    }
    let final_dir = replslot.join(&slot.name);
    if !replace && std::fs::symlink_metadata(&final_dir).is_ok() {
        return Err(CopyError::AlreadyExists { path: final_dir, slot: slot.name.clone() });
    }
    let group_access = std::fs::metadata(data_dir).map(|m| m.permissions().mode() & 0o070 != 0).unwrap_or(false);
    let (dir_mode, file_mode) = if group_access { (0o750, 0o640) } else { (0o700, 0o600) };

    // Build pg_replslot/<slot>.tmp/state.
    let tmp = staging_dir(&replslot, &slot.name);
    remove_dir_if_present(&tmp)?;
    std::fs::DirBuilder::new().mode(dir_mode).create(&tmp).map_err(io("create", &tmp))?;
    // The umask may have narrowed the mode; set it exactly.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(dir_mode)).map_err(io("chmod", &tmp))?;
    chown(&tmp, owner)?;
    let state = tmp.join("state");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file_mode)
        .open(&state)
        .map_err(io("create", &state))?;
    file.write_all(bytes).map_err(io("write", &state))?;
    file.set_permissions(std::fs::Permissions::from_mode(file_mode)).map_err(io("chmod", &state))?;
    file.sync_all().map_err(io("fsync", &state))?;
    drop(file);
    chown(&state, owner)?;
    fsync_dir(&tmp)?;

    // Move an existing slot aside, then put the new one in place.
    let aside = aside_dir(&replslot, &slot.name);
    let replaced = replace && std::fs::symlink_metadata(&final_dir).is_ok();
    if replaced {
        remove_dir_if_present(&aside)?;
        std::fs::rename(&final_dir, &aside).map_err(io("move aside", &final_dir))?;
        fsync_dir(&replslot)?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io("rename into place", &tmp))?;
    fsync_dir(&replslot)?;
    if replaced {
        remove_dir_if_present(&aside)?;
        fsync_dir(&replslot)?;
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../keel-core/tests/fixtures/slotfile").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    fn expectation(major: u32, slot: &str, plugin: &str) -> Expectation {
        Expectation { major, slot_name: slot.into(), database_oid: 5, plugin: plugin.into() }
    }

    /// A stand-in data directory: PG_VERSION and an empty pg_replslot.
    fn data_dir(major: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(dir.path().join("PG_VERSION"), format!("{major}\n")).expect("PG_VERSION");
        std::fs::create_dir(dir.path().join("pg_replslot")).expect("pg_replslot");
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_a_valid_file_with_postgresql_modes() {
        let dir = data_dir(15);
        let bytes = fixture("pg15_logical.state");
        let slot = write_slot_file(
            dir.path(),
            "keel_logical",
            &bytes,
            &expectation(15, "keel_logical", "test_decoding"),
            None,
            false,
        )
        .expect("write");
        assert_eq!(slot.name, "keel_logical");
        let replslot = dir.path().join("pg_replslot");
        assert_eq!(entries(&replslot), ["keel_logical"]);
        let state = replslot.join("keel_logical/state");
        assert_eq!(std::fs::read(&state).expect("read back"), bytes);
        assert_eq!(std::fs::metadata(&state).expect("stat").permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(replslot.join("keel_logical")).expect("stat").permissions().mode() & 0o777, 0o700);
        assert_eq!(entries(&replslot.join("keel_logical")), ["state"]);
    }

    #[test]
    fn follows_group_access_and_owner() {
        let dir = data_dir(18);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let owner = (crate::postgres::process::current_euid(), crate::postgres::process::current_egid());
        let bytes = fixture("pg18_pgoutput.state");
        write_slot_file(
            dir.path(),
            "keel_pgoutput",
            &bytes,
            &expectation(18, "keel_pgoutput", "pgoutput"),
            Some(owner),
            false,
        )
        .expect("write");
        let state = dir.path().join("pg_replslot/keel_pgoutput/state");
        assert_eq!(std::fs::metadata(&state).expect("stat").permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn never_writes_an_invalid_file() {
        let dir = data_dir(18);
        let mut bytes = fixture("pg18_logical.state");
        bytes[100] ^= 1;
        let err = write_slot_file(
            dir.path(),
            "keel_logical",
            &bytes,
            &expectation(18, "keel_logical", "test_decoding"),
            None,
            false,
        )
        .expect_err("corrupt");
        assert!(err.to_string().starts_with("refusing to write slot \"keel_logical\": checksum mismatch"), "{err}");
        // Another major's file.
        let err = write_slot_file(
            dir.path(),
            "keel_logical",
            &fixture("pg15_logical.state"),
            &expectation(18, "keel_logical", "test_decoding"),
            None,
            false,
        )
        .expect_err("15 on 18");
        assert!(err.to_string().contains("format version 2 is PostgreSQL 10–15's"), "{err}");
        assert!(entries(&dir.path().join("pg_replslot")).is_empty());
    }

    #[test]
    fn checks_the_data_directory() {
        let bytes = fixture("pg17_logical.state");
        let want = expectation(17, "keel_logical", "test_decoding");
        let dir = data_dir(16);
        let err = write_slot_file(dir.path(), "keel_logical", &bytes, &want, None, false).expect_err("PG_VERSION 16");
        assert!(matches!(err, CopyError::WrongMajor { .. }), "{err}");
        let dir = data_dir(17);
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n/data\n", std::process::id())).expect("pid");
        let err = write_slot_file(dir.path(), "keel_logical", &bytes, &want, None, false).expect_err("running");
        assert!(err.to_string().contains("can only be installed while it is stopped"), "{err}");
        std::fs::remove_file(dir.path().join("postmaster.pid")).expect("rm pid");
        std::fs::remove_dir(dir.path().join("pg_replslot")).expect("rmdir");
        let err = write_slot_file(dir.path(), "keel_logical", &bytes, &want, None, false).expect_err("no pg_replslot");
        assert!(matches!(err, CopyError::NoReplslot { .. }), "{err}");
        let err = write_slot_file(dir.path(), "other", &bytes, &want, None, false).expect_err("name");
        assert!(matches!(err, CopyError::NameMismatch { .. }), "{err}");
    }

    #[test]
    fn existing_slot_needs_replace_and_stale_tmp_is_removed() {
        let dir = data_dir(17);
        let replslot = dir.path().join("pg_replslot");
        let want = expectation(17, "keel_logical", "test_decoding");
        let bytes = fixture("pg17_logical.state");
        // A stale staging directory from an interrupted copy.
        std::fs::create_dir(replslot.join("keel_logical.tmp")).expect("mkdir");
        std::fs::write(replslot.join("keel_logical.tmp/state"), b"junk").expect("junk");
        write_slot_file(dir.path(), "keel_logical", &bytes, &want, None, false).expect("first write");
        assert_eq!(entries(&replslot), ["keel_logical"]);

        let err = write_slot_file(dir.path(), "keel_logical", &bytes, &want, None, false).expect_err("exists");
        assert!(matches!(err, CopyError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("pass replace to overwrite it"), "{err}");

        // Replace with a newer file (here: the same slot with another confirmed_flush and a fixed checksum).
        let mut newer = bytes.clone();
        newer[112] = newer[112].wrapping_add(8);
        slotfile::fix_checksum(&mut newer);
        std::fs::write(replslot.join("keel_logical/extra"), b"left over").expect("extra");
        write_slot_file(dir.path(), "keel_logical", &newer, &want, None, true).expect("replace");
        assert_eq!(entries(&replslot), ["keel_logical"]);
        assert_eq!(entries(&replslot.join("keel_logical")), ["state"]);
        assert_eq!(std::fs::read(replslot.join("keel_logical/state")).expect("read"), newer);
    }
}
