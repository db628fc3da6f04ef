//! Controlling PostgreSQL processes: `initdb`, `pg_ctl` (start, stop, promote, reload, restart), `pg_basebackup`
//! and `pg_rewind`, each with a timeout and the program's output in the error when it fails.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::bins::{PgBinaries, Tool};
use super::datadir::{self, DataDirError};
use super::postmaster::Postmaster;
use super::process::{self, CommandError, Finished, RunAs};
use super::ConnParams;

/// One `bootstrap.initdb` entry in Patroni's format: `"data-checksums"` or `{"encoding": "UTF8"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitdbOption {
    Flag(String),
    Value(String, String),
}

/// initdb options Keel sets itself.
const INITDB_OWNED: [&str; 7] = ["pgdata", "D", "username", "U", "pwfile", "pwprompt", "W"];

impl InitdbOption {
    /// Reads one entry: a string, or an object with exactly one key whose value is a string, number or boolean.
    pub fn from_json(value: &serde_json::Value) -> Result<InitdbOption, CtlError> {
        let bad = || CtlError::BadInitdbOption(format!("{value}: expected \"flag\" or {{\"name\": \"value\"}}"));
        let option = match value {
            serde_json::Value::String(flag) => InitdbOption::Flag(flag.clone()),
            serde_json::Value::Object(map) if map.len() == 1 => {
                let (name, v) = map.iter().next().ok_or_else(bad)?;
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return Err(bad()),
                };
                InitdbOption::Value(name.clone(), v)
            }
            _ => return Err(bad()),
        };
        let name = match &option {
            InitdbOption::Flag(n) | InitdbOption::Value(n, _) => n,
        };
        let name = name.trim_start_matches('-').split('=').next().unwrap_or_default();
        if name.is_empty() || INITDB_OWNED.contains(&name) {
            return Err(CtlError::BadInitdbOption(format!(
                "{value}: Keel sets the data directory, superuser and password itself; remove it from bootstrap.initdb"
            )));
        }
        Ok(option)
    }

    /// Reads the whole `bootstrap.initdb` list.
    pub fn list_from_json(value: &serde_json::Value) -> Result<Vec<InitdbOption>, CtlError> {
        match value {
            serde_json::Value::Array(items) => items.iter().map(InitdbOption::from_json).collect(),
            serde_json::Value::Null => Ok(Vec::new()),
            other => Err(CtlError::BadInitdbOption(format!("{other}: bootstrap.initdb must be a list"))),
        }
    }

    fn to_arg(&self) -> String {
        match self {
            InitdbOption::Flag(n) => format!("--{}", n.trim_start_matches('-')),
            InitdbOption::Value(n, v) => format!("--{}={v}", n.trim_start_matches('-')),
        }
    }
}

/// What `initdb` needs besides the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitdbParams {
    /// The bootstrap superuser (`--username`).
    pub superuser: String,
    /// Its password (passed through a temporary `--pwfile`); `None` for none.
    pub superuser_password: Option<String>,
    pub options: Vec<InitdbOption>,
}

/// `pg_ctl stop -m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Smart,
    Fast,
    Immediate,
}

impl StopMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// What `pg_rewind` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewindOutcome {
    /// The data directory was rewound to the source.
    Done,
    /// Source and target were already on the same timeline.
    NotNeeded,
    /// pg_rewind cannot work on this pair (no checksums/`wal_log_hints`, unclean shutdown, different systems, no
    /// common timeline, missing WAL): the data directory has to be recreated from a base backup.
    Impossible { reason: String },
}

/// Why controlling PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(
        "PostgreSQL could not start: {} is already in use ({line}): stop whatever uses it or change postgresql.listen",
        .port.map(|p| format!("port {p}")).unwrap_or_else(|| "its address".to_string())
    )]
    PortInUse { port: Option<u16>, line: String },
    #[error("PostgreSQL did not start: {output}; server log {log_file}: {log}")]
    StartFailed { output: String, log_file: PathBuf, log: String },
    #[error("invalid bootstrap.initdb option {0}")]
    BadInitdbOption(String),
    #[error("{path} is not empty: initdb and pg_basebackup need an empty or absent data directory")]
    NotEmpty { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    User(#[from] process::UnknownUser),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
}

/// Controls one data directory.
#[derive(Debug, Clone)]
pub struct PgCtl {
    pub bins: PgBinaries,
    pub run_as: RunAs,
    pub data_dir: PathBuf,
    /// `pg_ctl start -l` file: by default `<data_dir>.log` beside the data directory, so base backups and rewinds
    /// do not copy it.
    pub log_file: PathBuf,
}

impl PgCtl {
    pub fn new(bins: PgBinaries, run_as: RunAs, data_dir: impl Into<PathBuf>) -> PgCtl {
        let data_dir = data_dir.into();
        let mut log = data_dir.clone().into_os_string();
        log.push(".log");
        PgCtl { bins, run_as, data_dir, log_file: PathBuf::from(log) }
    }

    fn cmd(&self, tool: Tool) -> tokio::process::Command {
        self.run_as.command(&self.bins.path(tool))
    }

    fn pg_ctl(&self, action: &str) -> tokio::process::Command {
        let mut cmd = self.cmd(Tool::PgCtl);
        cmd.arg(action).arg("-D").arg(&self.data_dir);
        cmd
    }

    /// Creates the data directory (mode 0700, owned by the PostgreSQL user) if absent; fails if it is not empty.
    fn prepare_empty_dir(&self) -> Result<(), CtlError> {
        let path = &self.data_dir;
        let io = |what| move |source| CtlError::Io { what, path: path.clone(), source };
        if path.exists() {
            let mut entries = std::fs::read_dir(path).map_err(io("could not read"))?;
            if entries.any(|e| e.map(|e| e.file_name() != "lost+found").unwrap_or(true)) {
                return Err(CtlError::NotEmpty { path: path.clone() });
            }
        } else {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io("could not create"))?;
        }
        self.run_as.chown(path).map_err(io("could not give the PostgreSQL user"))?;
        Ok(())
    }

    /// Runs `initdb` into the (absent or empty) data directory.
    pub async fn initdb(&self, params: &InitdbParams, timeout: Duration) -> Result<(), CtlError> {
        self.prepare_empty_dir()?;
        let mut cmd = self.cmd(Tool::Initdb);
        cmd.arg("-D").arg(&self.data_dir).arg(format!("--username={}", params.superuser));
        let pwfile = match &params.superuser_password {
            Some(password) => {
                let path = std::env::temp_dir().join(format!(
                    "keel-initdb-pw-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
                ));
                let io = |source| CtlError::Io { what: "could not write", path: path.clone(), source };
                let mut file =
                    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(io)?;
                std::io::Write::write_all(&mut file, format!("{password}\n").as_bytes()).map_err(io)?;
                self.run_as.chown(&path).map_err(io)?;
                cmd.arg(format!("--pwfile={}", path.display()));
                Some(path)
            }
            None => None,
        };
        for option in &params.options {
            cmd.arg(option.to_arg());
        }
        let result = process::run_ok(cmd, "initdb", timeout, false).await;
        if let Some(path) = pwfile {
            let _ = std::fs::remove_file(path);
        }
        result?;
        Ok(())
    }

    /// The postmaster's pid from `postmaster.pid`, when that process exists.
    pub fn postmaster_pid(&self) -> Option<u32> {
        match self.postmaster_state() {
            PostmasterState::Running { pid } => Some(pid),
            PostmasterState::Stopped | PostmasterState::Unknown { .. } => None,
        }
    }

    /// A postmaster runs on this data directory (`postmaster.pid` names a live process).
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// Whether a postmaster runs on this data directory, or why that cannot be told.
    pub fn postmaster_state(&self) -> PostmasterState {
        postmaster_state(&self.data_dir)
    }

    /// `pg_ctl start -l <log_file>`, waiting (`-w`) up to `timeout` until it accepts connections when `wait`.
    /// A port already in use gives [`CtlError::PortInUse`]; a data directory with the wrong owner or mode gives
    /// [`CtlError::DataDir`] before anything runs.
    pub async fn start(&self, wait: bool, timeout: Duration) -> Result<(), CtlError> {
        let (uid, _) = self.run_as.owner()?;
        datadir::check_permissions(&self.data_dir, uid)?;
        let log_offset = std::fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        if !self.log_file.exists() {
            let io =
                |source| CtlError::Io { what: "could not create the log file", path: self.log_file.clone(), source };
            std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(&self.log_file).map_err(io)?;
            self.run_as.chown(&self.log_file).map_err(io)?;
        }
        let mut cmd = self.pg_ctl("start");
        cmd.arg("-l").arg(&self.log_file).arg(if wait { "-w" } else { "-W" });
        cmd.arg("-t").arg(timeout.as_secs().max(1).to_string());
        let finished = process::run(cmd, "pg_ctl start", timeout + Duration::from_secs(5), false).await?;
        if finished.status.success() {
            return Ok(());
        }
        let log = read_from(&self.log_file, log_offset);
        if let Some(line) = log.lines().find(|l| l.contains("Address already in use")) {
            let port = log.lines().find_map(port_from_hint);
            let line = line.find("could not bind").map_or(line, |at| &line[at..]).trim().to_string();
            return Err(CtlError::PortInUse { port, line });
        }
        tracing::warn!(stdout = %finished.stdout, stderr = %finished.stderr, log = %log, "pg_ctl start failed");
        Err(CtlError::StartFailed {
            output: finished.tail(),
            log_file: self.log_file.clone(),
            log: last_lines(&log, 10),
        })
    }

    /// `pg_ctl stop -m <mode> -w`. Returns false when no server was running.
    pub async fn stop(&self, mode: StopMode, timeout: Duration) -> Result<bool, CtlError> {
        if !self.is_running() {
            return Ok(false);
        }
        let mut cmd = self.pg_ctl("stop");
        cmd.args(["-m", mode.as_str(), "-w", "-t"]).arg(timeout.as_secs().max(1).to_string());
        let finished = process::run(cmd, "pg_ctl stop", timeout + Duration::from_secs(5), false).await?;
        if !finished.status.success() && self.is_running() {
            return Err(failed("pg_ctl stop", finished));
        }
        Ok(true)
    }

    /// Stops like [`stop`](Self::stop); with `kill_after` (Patroni's `primary_stop_timeout` in synchronous mode),
    /// a stop still running after that long ends with SIGKILL to the postmaster. Returns whether it had to kill.
    pub async fn stop_or_kill(
        &self,
        mode: StopMode,
        timeout: Duration,
        kill_after: Option<Duration>,
    ) -> Result<bool, CtlError> {
        let Some(kill_after) = kill_after.filter(|k| *k < timeout) else {
            self.stop(mode, timeout).await?;
            return Ok(false);
        };
        let err = match self.stop(mode, kill_after).await {
            Ok(_) => return Ok(false),
            Err(e) => e,
        };
        let Some(pid) = self.postmaster_pid() else { return Ok(false) };
        tracing::warn!(
            "PostgreSQL did not stop within {}s (primary_stop_timeout, or the grace of an immediate stop): sending \
             SIGKILL to the postmaster ({pid}) and its process group; pg_ctl said: {err}",
            kill_after.as_secs()
        );
        // With every child: backends of a frozen server must not keep serving their clients.
        if let Err(source) = super::postmaster::kill_hard(pid) {
            return Err(CtlError::Io {
                what: "could not SIGKILL the postmaster of",
                path: self.data_dir.clone(),
                source,
            });
        }
        let deadline = std::time::Instant::now() + timeout.saturating_sub(kill_after).max(Duration::from_secs(5));
        while self.is_running() {
            if std::time::Instant::now() > deadline {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(true)
    }

    /// `pg_ctl promote`, waiting (`-w`) until the server left recovery when `wait`.
    pub async fn promote(&self, wait: bool, timeout: Duration) -> Result<(), CtlError> {
        let mut cmd = self.pg_ctl("promote");
        cmd.arg(if wait { "-w" } else { "-W" }).arg("-t").arg(timeout.as_secs().max(1).to_string());
        process::run_ok(cmd, "pg_ctl promote", timeout + Duration::from_secs(5), false).await?;
        Ok(())
    }

    /// `pg_ctl reload` (SIGHUP).
    pub async fn reload(&self, timeout: Duration) -> Result<(), CtlError> {
        process::run_ok(self.pg_ctl("reload"), "pg_ctl reload", timeout, false).await?;
        Ok(())
    }

    /// Stops with `mode` (if running) and starts again, waiting for each up to `timeout`.
    pub async fn restart(&self, mode: StopMode, timeout: Duration) -> Result<(), CtlError> {
        self.stop(mode, timeout).await?;
        self.start(true, timeout).await
    }

    /// `pg_basebackup -X stream -c fast` from `source` into the (absent or empty) data directory. Progress lines go
    /// to tracing at info. The password travels in `PGPASSWORD`, never on the command line.
    pub async fn basebackup(&self, source: &ConnParams, timeout: Duration) -> Result<(), CtlError> {
        self.prepare_empty_dir()?;
        let mut cmd = self.cmd(Tool::PgBasebackup);
        cmd.arg("-D").arg(&self.data_dir).args(["-X", "stream", "-c", "fast", "--progress", "--verbose"]);
        cmd.arg("-d").arg(source.to_conninfo(false));
        password_env(&mut cmd, source);
        process::run_ok(cmd, "pg_basebackup", timeout, true).await?;
        Ok(())
    }

    /// `pg_rewind -D <data> --source-server=<source>` with `PGOPTIONS=-c statement_timeout=0`. The server must be
    /// stopped. Known "cannot rewind" failures give [`RewindOutcome::Impossible`]; others (connection problems,
    /// a source in recovery) are errors worth retrying.
    pub async fn rewind(&self, source: &ConnParams, timeout: Duration) -> Result<RewindOutcome, CtlError> {
        let mut cmd = self.cmd(Tool::PgRewind);
        cmd.arg("-D").arg(&self.data_dir).arg(format!("--source-server={}", source.to_conninfo(false)));
        cmd.arg("--progress").env("PGOPTIONS", "-c statement_timeout=0");
        password_env(&mut cmd, source);
        let finished = process::run(cmd, "pg_rewind", timeout, true).await?;
        let output = format!("{}\n{}", finished.stderr, finished.stdout);
        if finished.status.success() {
            return Ok(if output.contains("no rewind required") {
                RewindOutcome::NotNeeded
            } else {
                RewindOutcome::Done
            });
        }
        match rewind_impossible(&output) {
            Some(reason) => Ok(RewindOutcome::Impossible { reason }),
            None => Err(failed("pg_rewind", finished)),
        }
    }
}

/// The password for a child process: libpq reads it from `source.passfile` (named in the connection string) when
/// there is one, else it travels in `PGPASSWORD`; never on the command line.
fn password_env(cmd: &mut tokio::process::Command, source: &ConnParams) {
    match (&source.passfile, &source.password) {
        (Some(passfile), _) => {
            cmd.env("PGPASSFILE", passfile).env_remove("PGPASSWORD");
        }
        (None, Some(password)) => {
            cmd.env("PGPASSWORD", password);
        }
        (None, None) => {}
    }
}

fn failed(what: &str, finished: Finished) -> CtlError {
    CtlError::Command(CommandError::Failed { what: what.to_string(), status: finished.status, output: finished.tail() })
}

/// The line of pg_rewind's output saying why it cannot rewind, if it is one of the permanent reasons.
pub fn rewind_impossible(output: &str) -> Option<String> {
    // pg_rewind reads WAL only from the target's own pg_wal: WAL missing there does not come back.
    const PERMANENT: [&str; 7] = [
        "needs to use either data checksums or",
        "must be shut down cleanly",
        "are from different systems",
        "could not find common ancestor",
        "not compatible with this version of pg_rewind",
        "could not find previous WAL record",
        "could not read WAL record",
    ];
    output.lines().find(|line| PERMANENT.iter().any(|p| line.contains(p))).map(|l| l.trim().to_string())
}

/// `HINT:  Is another postmaster already running on port 5432? ...` → 5432.
fn port_from_hint(line: &str) -> Option<u16> {
    let rest = line.split_once("running on port ")?.1;
    rest.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// What `postmaster.pid` says about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostmasterState {
    /// The file names a live process.
    Running { pid: u32 },
    /// No file, or it names a process that no longer exists (left behind by a crash).
    Stopped,
    /// The file cannot be read, holds no valid pid (PostgreSQL refuses to start on it too: "bogus data in lock
    /// file"), or the process check failed: whether PostgreSQL runs is unknown.
    Unknown { why: String },
}

/// Reads `<data_dir>/postmaster.pid` and checks its process ([`super::postmaster::find`]): a stale file (a reused
/// pid, another user's process) is a stopped server.
pub fn postmaster_state(data_dir: &Path) -> PostmasterState {
    match super::postmaster::find(data_dir) {
        Postmaster::Running(pid) => PostmasterState::Running { pid },
        Postmaster::NotRunning | Postmaster::Stale { .. } => PostmasterState::Stopped,
        Postmaster::Unknown { why } => PostmasterState::Unknown { why },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    #[test]
    fn reads_patroni_initdb_options() {
        let options =
            InitdbOption::list_from_json(&json!(["data-checksums", {"encoding": "UTF8"}, {"locale": "C"}])).unwrap();
        assert_eq!(
            options,
            [
                InitdbOption::Flag("data-checksums".into()),
                InitdbOption::Value("encoding".into(), "UTF8".into()),
                InitdbOption::Value("locale".into(), "C".into())
            ]
        );
        let args: Vec<String> = options.iter().map(InitdbOption::to_arg).collect();
        assert_eq!(args, ["--data-checksums", "--encoding=UTF8", "--locale=C"]);
        assert!(InitdbOption::list_from_json(&json!([{"a": "1", "b": "2"}])).is_err());
        assert!(InitdbOption::list_from_json(&json!("data-checksums")).is_err());
        let err = InitdbOption::list_from_json(&json!([{"pgdata": "/x"}])).unwrap_err();
        assert!(err.to_string().contains("remove it from bootstrap.initdb"), "{err}");
        assert!(InitdbOption::list_from_json(&json!(["--username=x"])).is_err());
    }

    #[test]
    fn recognises_permanent_rewind_failures() {
        let out = "pg_rewind: error: target server needs to use either data checksums or \"wal_log_hints = on\"\n";
        assert_eq!(
            rewind_impossible(out).as_deref(),
            Some("pg_rewind: error: target server needs to use either data checksums or \"wal_log_hints = on\"")
        );
        assert_eq!(rewind_impossible("pg_rewind: error: could not connect to server"), None);
        let missing = "pg_rewind: error: could not open file \"/d/pg_wal/000000010000000000000003\": No such file or \
                       directory\npg_rewind: error: could not read WAL record at 0/3000060\n";
        assert_eq!(
            rewind_impossible(missing).as_deref(),
            Some("pg_rewind: error: could not read WAL record at 0/3000060")
        );
    }

    #[test]
    fn reads_the_port_from_the_hint() {
        let line = "HINT:  Is another postmaster already running on port 5433? If not, wait a few seconds and retry.";
        assert_eq!(port_from_hint(line), Some(5433));
        assert_eq!(port_from_hint("LOG: hello"), None);
    }

    #[test]
    fn log_file_sits_beside_the_data_directory() {
        let bins = PgBinaries { dir: "/usr/bin".into(), major: 15, version: "15".into() };
        let ctl = PgCtl::new(bins, RunAs::current(), "/var/lib/postgresql/15/main");
        assert_eq!(ctl.log_file, Path::new("/var/lib/postgresql/15/main.log"));
    }
}
