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
    #[error(
        "{path} is neither empty nor a PostgreSQL data directory (no PG_VERSION): empty it or point postgresql.data_dir elsewhere"
    )]
    NotADataDirectory { path: PathBuf },
    #[error("could not read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} holds {text:?}, not a PostgreSQL major version: the data directory is damaged")]
    BadPgVersion { path: PathBuf, text: String },
    #[error("pg_controldata on {path} failed: {source}")]
    Controldata { path: PathBuf, source: CommandError },
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

/// Looks at `data_dir`: absent, empty, or initialised (then checks owner and mode against `run_as` and runs
/// `pg_controldata`).
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
        return Err(DataDirError::NotADataDirectory { path: data_dir.to_path_buf() });
    }
    let (uid, _) = run_as.owner()?;
    check_permissions(data_dir, uid)?;
    let text = std::fs::read_to_string(&version_file).map_err(io(&version_file))?;
    let pg_version = text
        .trim()
        .parse()
        .map_err(|_| DataDirError::BadPgVersion { path: version_file.clone(), text: text.clone() })?;
    let control = controldata(data_dir, bins, run_as).await?;
    Ok(DataDirState::Initialized(DataDirInfo {
        pg_version,
        standby_signal: data_dir.join("standby.signal").exists(),
        recovery_signal: data_dir.join("recovery.signal").exists(),
        postmaster_pid: data_dir.join("postmaster.pid").exists(),
        control,
    }))
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
        let err = inspect(dir.path(), &bins, &run_as).await.unwrap_err();
        assert!(matches!(err, DataDirError::NotADataDirectory { .. }), "{err}");
    }
}
