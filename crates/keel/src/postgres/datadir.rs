//! Inspecting a data directory while PostgreSQL is not running: does it exist, is it initialised, what does
//! `pg_controldata` say, and may PostgreSQL use it (owner and mode).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_core::lsn::Lsn;

use super::bins::{PgBinaries, Tool};
use super::process::{self, CommandError, RunAs};

/// What a data directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDirState {
    /// No such directory.
    Absent,
    /// An empty directory (or one holding only `lost+found`).
    Empty,
    /// A PostgreSQL data directory.
    Initialized(DataDirInfo),
    /// Present and not empty, but not a usable data directory: PostgreSQL could not start on it either.
    Invalid(InvalidDataDir),
}

/// Why a present, non-empty directory is not a usable data directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDataDir {
    #[error(
        "{path} is neither empty nor a PostgreSQL data directory (no PG_VERSION): empty it or point postgresql.data_dir elsewhere"
    )]
    NoPgVersion { path: PathBuf },
    #[error("{path} cannot be read ({kind:?}): the data directory is damaged")]
    Unreadable { path: PathBuf, kind: std::io::ErrorKind },
    #[error("{path} holds {text:?}, not a PostgreSQL major version: the data directory is damaged")]
    BadPgVersion { path: PathBuf, text: String },
    #[error("{path} is missing: the data directory is damaged; reinitialize this member (keel reinit)")]
    NoControlFile { path: PathBuf },
    #[error("{path} is damaged ({problem}); reinitialize this member (keel reinit)")]
    BadControlFile { path: PathBuf, problem: keel_core::pgcontrol::ControlFileProblem },
    #[error("pg_controldata on {path}: {problem}; the control file is damaged")]
    BadControldata { path: PathBuf, problem: String },
}

/// An initialised data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDirInfo {
    /// The major version in `PG_VERSION`.
    pub pg_version: u32,
    pub standby_signal: bool,
    pub recovery_signal: bool,
    /// `postmaster.pid` exists (the server runs, or crashed).
    pub postmaster_pid: bool,
    pub control: ControlData,
}

/// The parts of `pg_controldata` Keel uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    pub system_identifier: u64,
    pub cluster_state: ClusterState,
    pub checkpoint_lsn: Lsn,
    pub redo_lsn: Lsn,
    /// `Latest checkpoint's TimeLineID`.
    pub timeline: u32,
    /// `Minimum recovery ending location` (zero on a primary).
    pub min_recovery_end_lsn: Lsn,
    pub min_recovery_end_timeline: u32,
    pub wal_log_hints: bool,
    /// `Data page checksum version` is not 0.
    pub data_checksums: bool,
}

impl ControlData {
    /// `pg_rewind` can work on this cluster (`wal_log_hints` or checksums).
    pub fn rewind_possible(&self) -> bool {
        self.wal_log_hints || self.data_checksums
    }
}

/// `Database cluster state` from `pg_controldata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterState {
    StartingUp,
    ShutDown,
    ShutDownInRecovery,
    ShuttingDown,
    InCrashRecovery,
    InArchiveRecovery,
    InProduction,
    Other(String),
}

impl ClusterState {
    pub fn parse(text: &str) -> ClusterState {
        match text.trim() {
            "starting up" => ClusterState::StartingUp,
            "shut down" => ClusterState::ShutDown,
            "shut down in recovery" => ClusterState::ShutDownInRecovery,
            "shutting down" => ClusterState::ShuttingDown,
            "in crash recovery" => ClusterState::InCrashRecovery,
            "in archive recovery" => ClusterState::InArchiveRecovery,
            "in production" => ClusterState::InProduction,
            other => ClusterState::Other(other.to_string()),
        }
    }

    /// Stopped cleanly (as a primary or as a standby).
    pub fn is_clean_shutdown(&self) -> bool {
        matches!(self, ClusterState::ShutDown | ClusterState::ShutDownInRecovery)
    }
}

/// Why a data directory cannot be used or read.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data directory {path} is owned by {owner}, but PostgreSQL runs as {expected}: run `chown -R {expected_name}: {path}`"
    )]
    WrongOwner { path: PathBuf, owner: String, expected: String, expected_name: String },
    #[error("data directory {path} has mode {mode:04o}; PostgreSQL needs 0700 or 0750: run `chmod 0700 {path}`")]
    WrongMode { path: PathBuf, mode: u32 },
    #[error("{path} is not a directory: point postgresql.data_dir at a directory")]
    NotADirectory { path: PathBuf },
    #[error("could not read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("pg_controldata on {path} failed: {source}")]
    Controldata { path: PathBuf, source: CommandError },
    /// Its output could not be read (see [`InvalidDataDir::BadControldata`] where [`inspect`] decides).
    #[error("pg_controldata on {path}: {problem}")]
    BadControldata { path: PathBuf, problem: String },
    #[error(transparent)]
    User(#[from] process::UnknownUser),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_path_buf(), source }
}

/// Checks that `data_dir` exists, is a directory owned by `uid`, with mode 0700 or 0750.
pub fn check_permissions(data_dir: &Path, uid: u32) -> Result<(), DataDirError> {
    let meta = std::fs::metadata(data_dir).map_err(io(data_dir))?;
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory { path: data_dir.to_path_buf() });
    }
    if meta.uid() != uid {
        let describe = |uid: u32| match process::user_name(uid) {
            Some(name) => format!("{name} (uid {uid})"),
            None => format!("uid {uid}"),
        };
        return Err(DataDirError::WrongOwner {
            path: data_dir.to_path_buf(),
            owner: describe(meta.uid()),
            expected: describe(uid),
            expected_name: process::user_name(uid).unwrap_or_else(|| uid.to_string()),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o700 && mode != 0o750 {
        return Err(DataDirError::WrongMode { path: data_dir.to_path_buf(), mode });
    }
    Ok(())
}

/// Looks at `data_dir`: absent, empty, initialised (then checks owner and mode against `run_as`, the control
/// file's checksum, and runs `pg_controldata`), or invalid (present but not a usable data directory). An error
/// means the inspection itself failed (or owner and mode are wrong): nothing is known about the directory.
pub async fn inspect(data_dir: &Path, bins: &PgBinaries, run_as: &RunAs) -> Result<DataDirState, DataDirError> {
    let meta = match std::fs::metadata(data_dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DataDirState::Absent),
        Err(e) => return Err(io(data_dir)(e)),
    };
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory { path: data_dir.to_path_buf() });
    }
    let mut has_entries = false;
    for entry in std::fs::read_dir(data_dir).map_err(io(data_dir))? {
        let entry = entry.map_err(io(data_dir))?;
        if entry.file_name() != "lost+found" {
            has_entries = true;
            break;
        }
    }
    if !has_entries {
        return Ok(DataDirState::Empty);
    }
    let version_file = data_dir.join("PG_VERSION");
    if !version_file.exists() {
        return Ok(DataDirState::Invalid(InvalidDataDir::NoPgVersion { path: data_dir.to_path_buf() }));
    }
    let (uid, _) = run_as.owner()?;
    check_permissions(data_dir, uid)?;
    let text = match read_file(&version_file)? {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(invalid) => return Ok(DataDirState::Invalid(invalid)),
    };
    let Ok(pg_version) = text.trim().parse() else {
        return Ok(DataDirState::Invalid(InvalidDataDir::BadPgVersion { path: version_file, text }));
    };
    let control_file = data_dir.join("global").join("pg_control");
    match read_file(&control_file)? {
        Ok(bytes) => {
            if let Err(problem) = keel_core::pgcontrol::check(&bytes) {
                return Ok(DataDirState::Invalid(InvalidDataDir::BadControlFile { path: control_file, problem }));
            }
        }
        Err(InvalidDataDir::Unreadable { kind: std::io::ErrorKind::NotFound, .. }) => {
            return Ok(DataDirState::Invalid(InvalidDataDir::NoControlFile { path: control_file }));
        }
        Err(invalid) => return Ok(DataDirState::Invalid(invalid)),
    }
    let control = match controldata(data_dir, bins, run_as).await {
        Ok(c) => c,
        Err(DataDirError::BadControldata { path, problem }) => {
            return Ok(DataDirState::Invalid(InvalidDataDir::BadControldata { path, problem }));
        }
        Err(e) => return Err(e),
    };
    Ok(DataDirState::Initialized(DataDirInfo {
        pg_version,
        standby_signal: data_dir.join("standby.signal").exists(),
        recovery_signal: data_dir.join("recovery.signal").exists(),
        postmaster_pid: data_dir.join("postmaster.pid").exists(),
        control,
    }))
}

/// Reads a file of the data directory. `Ok(Err(..))`: the file is missing or cannot be read for a reason that
/// PostgreSQL would meet too (not there, no permission, not valid data), so the directory is not usable;
/// `Err(..)`: the read itself failed for another reason (nothing is concluded about the directory).
fn read_file(path: &Path) -> Result<Result<Vec<u8>, InvalidDataDir>, DataDirError> {
    use std::io::ErrorKind::{InvalidData, IsADirectory, NotFound, PermissionDenied, UnexpectedEof};
    match std::fs::read(path) {
        Ok(bytes) => Ok(Ok(bytes)),
        Err(e) if matches!(e.kind(), NotFound | PermissionDenied | InvalidData | UnexpectedEof | IsADirectory) => {
            Ok(Err(InvalidDataDir::Unreadable { path: path.to_path_buf(), kind: e.kind() }))
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// Runs `pg_controldata` on `data_dir` and reads its output.
pub async fn controldata(data_dir: &Path, bins: &PgBinaries, run_as: &RunAs) -> Result<ControlData, DataDirError> {
    let mut cmd = run_as.command(&bins.path(Tool::PgControldata));
    cmd.arg("-D").arg(data_dir);
    let out = process::run_ok(cmd, "pg_controldata", Duration::from_secs(30), false)
        .await
        .map_err(|source| DataDirError::Controldata { path: data_dir.to_path_buf(), source })?;
    parse_controldata(&out.stdout)
        .map_err(|problem| DataDirError::BadControldata { path: data_dir.to_path_buf(), problem })
}

/// Reads `pg_controldata` output (untranslated: `LC_MESSAGES=C`).
pub fn parse_controldata(text: &str) -> Result<ControlData, String> {
    let field = |name: &str| -> Result<&str, String> {
        text.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim())
            })
            .ok_or_else(|| format!("no {name:?} line in its output"))
    };
    let number = |name: &str| -> Result<u64, String> {
        let value = field(name)?;
        value.parse().map_err(|_| format!("{name} is {value:?}, not a number"))
    };
    let lsn = |name: &str| -> Result<Lsn, String> {
        let value = field(name)?;
        value.parse().map_err(|e| format!("{name}: {e}"))
    };
    let small = |name: &str| -> Result<u32, String> {
        u32::try_from(number(name)?).map_err(|_| format!("{name} is out of range"))
    };
    Ok(ControlData {
        system_identifier: number("Database system identifier")?,
        cluster_state: ClusterState::parse(field("Database cluster state")?),
        checkpoint_lsn: lsn("Latest checkpoint location")?,
        redo_lsn: lsn("Latest checkpoint's REDO location")?,
        timeline: small("Latest checkpoint's TimeLineID")?,
        min_recovery_end_lsn: lsn("Minimum recovery ending location")?,
        min_recovery_end_timeline: small("Min recovery ending loc's timeline")?,
        wal_log_hints: field("wal_log_hints setting")? == "on",
        data_checksums: number("Data page checksum version")? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7412345678901234567
Database cluster state:               shut down in recovery
pg_control last modified:             Mon 01 Jan 2026 00:00:00 AM UTC
Latest checkpoint location:           0/3000060
Latest checkpoint's REDO location:    0/3000028
Latest checkpoint's REDO WAL file:    000000020000000000000003
Latest checkpoint's TimeLineID:       2
Latest checkpoint's PrevTimeLineID:   2
Minimum recovery ending location:     0/3000110
Min recovery ending loc's timeline:   2
wal_log_hints setting:                on
Data page checksum version:           0
";

    #[test]
    fn reads_controldata() {
        let c = parse_controldata(SAMPLE).unwrap();
        assert_eq!(c.system_identifier, 7412345678901234567);
        assert_eq!(c.cluster_state, ClusterState::ShutDownInRecovery);
        assert!(c.cluster_state.is_clean_shutdown());
        assert_eq!(c.checkpoint_lsn, "0/3000060".parse().unwrap());
        assert_eq!(c.redo_lsn, "0/3000028".parse().unwrap());
        assert_eq!(c.timeline, 2);
        assert_eq!(c.min_recovery_end_lsn, "0/3000110".parse().unwrap());
        assert_eq!(c.min_recovery_end_timeline, 2);
        assert!(c.wal_log_hints && !c.data_checksums && c.rewind_possible());
    }

    #[test]
    fn names_the_missing_line() {
        let err = parse_controldata("Database cluster state: in production\n").unwrap_err();
        assert!(err.contains("Database system identifier"), "{err}");
        assert_eq!(ClusterState::parse("in production"), ClusterState::InProduction);
        assert_eq!(ClusterState::parse("weird"), ClusterState::Other("weird".into()));
    }

    #[test]
    fn wrong_mode_and_owner_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let uid = std::fs::metadata(dir.path()).unwrap().uid();
        let err = check_permissions(dir.path(), uid).unwrap_err();
        assert!(err.to_string().contains("has mode 0755; PostgreSQL needs 0700 or 0750: run `chmod 0700"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        check_permissions(dir.path(), uid).unwrap();
        let err = check_permissions(dir.path(), uid + 12345).unwrap_err();
        assert!(err.to_string().contains("but PostgreSQL runs as"), "{err}");
    }

    #[tokio::test]
    async fn absent_empty_and_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        let bins = PgBinaries { dir: "/nonexistent".into(), major: 15, version: "15".into() };
        let run_as = RunAs::current();
        let absent = dir.path().join("nope");
        assert_eq!(inspect(&absent, &bins, &run_as).await.unwrap(), DataDirState::Absent);
        assert_eq!(inspect(dir.path(), &bins, &run_as).await.unwrap(), DataDirState::Empty);
        std::fs::write(dir.path().join("junk"), "x").unwrap();
        let state = inspect(dir.path(), &bins, &run_as).await.unwrap();
        assert!(matches!(state, DataDirState::Invalid(InvalidDataDir::NoPgVersion { .. })), "{state:?}");
    }

    /// A control file whose CRC-32C (at offset 296, as on 15) matches.
    fn control_file() -> Vec<u8> {
        let mut bytes = vec![0u8; keel_core::pgcontrol::PG_CONTROL_FILE_SIZE];
        bytes[..8].copy_from_slice(&7412345678901234567u64.to_ne_bytes());
        let crc = crc_of(&bytes[..296]);
        bytes[296..300].copy_from_slice(&crc.to_ne_bytes());
        bytes
    }

    /// CRC-32C (Castagnoli), bit by bit: the test's own reference.
    fn crc_of(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in data {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            }
        }
        !crc
    }

    /// Directory contents → what `inspect` concludes. Every case but the last is a directory PostgreSQL could not
    /// start on (`Invalid`); the last one is a good directory whose inspection failed (`pg_controldata` missing).
    #[tokio::test]
    async fn invalid_data_directories_are_told_from_failed_inspections() {
        let bins = PgBinaries { dir: "/nonexistent".into(), major: 15, version: "15".into() };
        let run_as = RunAs::current();
        let garbled = {
            let mut c = control_file();
            c[3] ^= 0x55;
            c
        };
        type Case = (&'static str, Option<&'static [u8]>, Option<Vec<u8>>, bool, fn(&InvalidDataDir) -> bool);
        let cases: Vec<Case> = vec![
            ("garbled PG_VERSION", Some(b"fifteen\n"), Some(control_file()), false, |i| {
                matches!(i, InvalidDataDir::BadPgVersion { .. })
            }),
            ("PG_VERSION is a directory", None, Some(control_file()), true, |i| {
                matches!(i, InvalidDataDir::Unreadable { .. })
            }),
            ("no pg_control", Some(b"15\n"), None, false, |i| matches!(i, InvalidDataDir::NoControlFile { .. })),
            ("short pg_control", Some(b"15\n"), Some(vec![1; 100]), false, |i| {
                matches!(i, InvalidDataDir::BadControlFile { .. })
            }),
            ("garbled pg_control", Some(b"15\n"), Some(garbled), false, |i| {
                matches!(i, InvalidDataDir::BadControlFile { .. })
            }),
        ];
        let data_dir = || {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            dir
        };
        for (label, version, control, version_dir, want) in cases {
            let dir = data_dir();
            match version {
                Some(v) => std::fs::write(dir.path().join("PG_VERSION"), v).unwrap(),
                None if version_dir => std::fs::create_dir(dir.path().join("PG_VERSION")).unwrap(),
                None => {}
            }
            std::fs::create_dir(dir.path().join("global")).unwrap();
            if let Some(c) = control {
                std::fs::write(dir.path().join("global/pg_control"), c).unwrap();
            }
            match inspect(dir.path(), &bins, &run_as).await {
                Ok(DataDirState::Invalid(i)) => assert!(want(&i), "{label}: {i}"),
                other => panic!("{label}: {other:?}"),
            }
        }
        // An intact directory whose pg_controldata cannot run: the inspection failed, nothing is concluded.
        let dir = data_dir();
        std::fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        std::fs::create_dir(dir.path().join("global")).unwrap();
        std::fs::write(dir.path().join("global/pg_control"), control_file()).unwrap();
        let err = inspect(dir.path(), &bins, &run_as).await.unwrap_err();
        assert!(matches!(err, DataDirError::Controldata { .. }), "{err}");
    }
}
