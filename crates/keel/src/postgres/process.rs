//! Running PostgreSQL's programs: as which OS user, with which environment, with a timeout, and with their output
//! kept for the error message when they fail.
//!
//! PostgreSQL refuses to run as root. When the agent runs as root (tests do), [`RunAs`] wraps every command in
//! `runuser -u <user> --`; otherwise commands run as the current user. `runuser` keeps the environment (apart from
//! `HOME`, `SHELL`, `USER` and `LOGNAME`), so `PGPASSWORD` and `PGOPTIONS` reach the program.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Where `runuser` lives on Debian and most distributions.
const RUNUSER: &str = "runuser";

/// How many bytes of a failed program's output go into its error.
const OUTPUT_TAIL: usize = 2000;

/// Which OS user PostgreSQL's programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// `Some(user)`: wrap commands in `runuser -u user --`. `None`: run as the current user.
    pub user: Option<String>,
}

/// A user name that could not be resolved to ids.
#[derive(Debug, thiserror::Error)]
#[error("OS user {user:?} not found in /etc/passwd: create it or set postgresql.run_as to an existing user")]
pub struct UnknownUser {
    pub user: String,
}

impl RunAs {
    /// `runuser -u user` when this process is root, the current user otherwise.
    pub fn auto(user: &str) -> RunAs {
        if current_euid() == 0 {
            RunAs { user: Some(user.to_string()) }
        } else {
            RunAs { user: None }
        }
    }

    /// Always the current user.
    pub fn current() -> RunAs {
        RunAs { user: None }
    }

    /// A command for `program` as the chosen user, in `/` (the agent's working directory may not be readable by
    /// that user), with `LC_MESSAGES=C` so messages can be recognised. `LC_ALL` would override that, so its value
    /// moves to `LANG`: `initdb` still picks the cluster's locale from the environment.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = match &self.user {
            Some(user) => {
                let mut cmd = Command::new(RUNUSER);
                cmd.arg("-u").arg(user).arg("--").arg(program);
                cmd
            }
            None => Command::new(program),
        };
        if let Some(all) = std::env::var_os("LC_ALL") {
            cmd.env_remove("LC_ALL").env("LANG", all);
        }
        cmd.current_dir("/").env("LC_MESSAGES", "C").stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// The uid and gid files PostgreSQL uses must belong to: the run-as user's, or this process's own.
    pub fn owner(&self) -> Result<(u32, u32), UnknownUser> {
        match &self.user {
            Some(user) => lookup_user(user).ok_or_else(|| UnknownUser { user: user.clone() }),
            None => Ok((current_euid(), current_egid())),
        }
    }

    /// The user's name, for messages.
    pub fn describe(&self) -> String {
        match &self.user {
            Some(user) => user.clone(),
            None => format!("the current user (uid {})", current_euid()),
        }
    }

    /// Gives `path` to the run-as user when the agent is root (so files it writes are PostgreSQL's).
    pub fn chown(&self, path: &Path) -> std::io::Result<()> {
        if self.user.is_none() {
            return Ok(());
        }
        let (uid, gid) = self.owner().map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()))?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
    }
}

pub fn current_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn current_egid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

/// Looks `user` up in `/etc/passwd` (uid, gid).
pub fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    parse_passwd(&passwd, user)
}

fn parse_passwd(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// The user name for `uid` from `/etc/passwd`, for messages.
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// Why a program did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not run {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("{what} did not finish within {}s and was killed; output: {output}", .timeout.as_secs())]
    Timeout { what: String, timeout: Duration, output: String },
    #[error("{what} failed ({status}): {output}")]
    Failed { what: String, status: ExitStatus, output: String },
}

/// What a finished program printed.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The last part of stderr and stdout, for an error message.
    pub fn tail(&self) -> String {
        let both = format!("{} {}", self.stderr.trim(), self.stdout.trim());
        tail(both.trim())
    }
}

fn tail(text: &str) -> String {
    let text = text.trim();
    if text.len() <= OUTPUT_TAIL {
        return text.replace('\n', " | ");
    }
    let mut start = text.len() - OUTPUT_TAIL;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", text[start..].replace('\n', " | "))
}

/// Runs `cmd`, kills it after `timeout`, and returns its output whatever its exit status. Lines it prints are
/// forwarded to tracing (`info` with `progress`, `debug` otherwise) as they come, labelled with `what`.
pub async fn run(mut cmd: Command, what: &str, timeout: Duration, progress: bool) -> Result<Finished, CommandError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let program = PathBuf::from(cmd.as_std().get_program());
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn { program, source })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_buf = Arc::new(Mutex::new(Vec::new()));
    let err_buf = Arc::new(Mutex::new(Vec::new()));
    let out_task = tokio::spawn(forward(stdout, out_buf.clone(), what.to_string(), progress));
    let err_task = tokio::spawn(forward(stderr, err_buf.clone(), what.to_string(), progress));
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let status = match waited {
        Ok(Ok(status)) => Some(status),
        Ok(Err(source)) => {
            return Err(CommandError::Spawn { program: PathBuf::from(what), source });
        }
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    // A grandchild (a server started without a log file) may keep the pipes open: do not wait for it forever.
    let (stdout, stderr) = tokio::join!(collect(out_task, &out_buf), collect(err_task, &err_buf));
    match status {
        Some(status) => Ok(Finished { status, stdout, stderr }),
        None => Err(CommandError::Timeout {
            what: what.to_string(),
            timeout,
            output: tail(&format!("{} {}", stderr.trim(), stdout.trim())),
        }),
    }
}

/// Like [`run`], but a non-zero exit status is an error carrying the output.
pub async fn run_ok(cmd: Command, what: &str, timeout: Duration, progress: bool) -> Result<Finished, CommandError> {
    let finished = run(cmd, what, timeout, progress).await?;
    if finished.status.success() {
        Ok(finished)
    } else {
        tracing::warn!(what, status = %finished.status, stdout = %finished.stdout, stderr = %finished.stderr, "command failed");
        Err(CommandError::Failed { what: what.to_string(), status: finished.status, output: finished.tail() })
    }
}

async fn collect(task: tokio::task::JoinHandle<()>, buf: &Mutex<Vec<u8>>) -> String {
    let abort = task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
        abort.abort();
    }
    let bytes = buf.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads a pipe to the end, logging each line (`\n` or `\r` terminated: progress reports use `\r`).
async fn forward<R: AsyncRead + Unpin>(pipe: Option<R>, all: Arc<Mutex<Vec<u8>>>, what: String, progress: bool) {
    let Some(mut pipe) = pipe else { return };
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Ok(mut all) = all.lock() {
            all.extend_from_slice(&buf[..n]);
        }
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                emit(&line, &what, progress);
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    emit(&line, &what, progress);
}

fn emit(line: &[u8], what: &str, progress: bool) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    if progress {
        tracing::info!(target: "keel::postgres", "{what}: {text}");
    } else {
        tracing::debug!(target: "keel::postgres", "{what}: {text}");
    }
}

/// `program --flag` style helper: the display name of a program path.
pub fn program_name(path: &Path) -> String {
    path.file_name().unwrap_or(OsStr::new("?")).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passwd_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(parse_passwd(passwd, "postgres"), Some((101, 104)));
        assert_eq!(parse_passwd(passwd, "post"), None);
    }

    #[test]
    fn runuser_wraps_the_program_only_when_asked() {
        let cmd = RunAs { user: Some("postgres".into()) }.command(Path::new("/bin/true"));
        let std = cmd.as_std();
        assert_eq!(std.get_program(), "runuser");
        let args: Vec<_> = std.get_args().collect();
        assert_eq!(args, ["-u", "postgres", "--", "/bin/true"]);
        let cmd = RunAs::current().command(Path::new("/bin/true"));
        assert_eq!(cmd.as_std().get_program(), "/bin/true");
    }

    #[tokio::test]
    async fn failures_and_timeouts_carry_the_output() {
        let mut cmd = RunAs::current().command(Path::new("/bin/sh"));
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let err = run_ok(cmd, "sh", Duration::from_secs(10), false).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        let mut cmd = RunAs::current().command(Path::new("/bin/sh"));
        cmd.args(["-c", "echo started; sleep 30"]);
        let err = run_ok(cmd, "sleeper", Duration::from_millis(300), false).await.unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("started"), "{err}");
    }
}
