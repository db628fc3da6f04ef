//! Which process is this data directory's postmaster. `postmaster.pid` can outlive its server (a crash, a
//! reboot) and name a pid reused by another process, possibly of another user; such a file must neither block a
//! start nor make a failover believe a primary still runs. A pid counts only when the process exists and its
//! working directory is the data directory (the postmaster changes into it at start).

use std::path::{Path, PathBuf};

/// What `postmaster.pid` tells, checked against the process table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Postmaster {
    /// The pid names a live process working in this data directory.
    Running(u32),
    /// No file, or no such process (left behind by a crash).
    NotRunning,
    /// The pid names a process that is not this data directory's postmaster (reused pid, another user's).
    Stale { pid: u32 },
    /// The file cannot be read or holds no valid pid (PostgreSQL refuses to start on it too: "bogus data in lock
    /// file"), or the process check failed: whether PostgreSQL runs is unknown.
    Unknown { why: String },
}

impl Postmaster {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Postmaster::Running(pid) => Some(*pid),
            _ => None,
        }
    }
}

/// Reads `<data_dir>/postmaster.pid` and checks the process it names.
pub fn find(data_dir: &Path) -> Postmaster {
    let path = data_dir.join("postmaster.pid");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Postmaster::NotRunning,
        Err(e) => return Postmaster::Unknown { why: format!("cannot read {}: {e}", path.display()) },
    };
    let first = text.lines().next().unwrap_or("").trim();
    let Some(pid) = first.parse::<i32>().ok().filter(|p| *p > 0) else {
        let why = format!("{} holds {first:?}, not a process id (starting, or left by a crash)", path.display());
        return Postmaster::Unknown { why };
    };
    let pid_u = pid.unsigned_abs();
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(pid, 0) } != 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            // Exists but belongs to someone else: not a postmaster we (its data directory's owner) started.
            Some(libc::EPERM) => Postmaster::Stale { pid: pid_u },
            Some(libc::ESRCH) => Postmaster::NotRunning,
            _ => Postmaster::Unknown { why: format!("cannot check process {pid} of {}: {err}", path.display()) },
        };
    }
    match process_cwd(pid_u) {
        Some(cwd) if same_dir(&cwd, data_dir) => Postmaster::Running(pid_u),
        Some(_) => Postmaster::Stale { pid: pid_u },
        // The directory cannot be read: a process of a user other than the data directory's owner is not its
        // postmaster; otherwise trust the file, as pg_ctl does.
        None => match (process_uid(pid_u), dir_owner(data_dir)) {
            (Some(uid), Some(owner)) if uid != owner => Postmaster::Stale { pid: pid_u },
            _ => Postmaster::Running(pid_u),
        },
    }
}

fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn dir_owner(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| m.uid())
}

fn process_cwd(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// SIGKILL to the postmaster and every process it started (each PostgreSQL child runs in its own session, so a
/// process-group signal would miss them): every backend goes at once, without waiting for a process that may be
/// frozen.
pub fn kill_hard(pid: u32) -> std::io::Result<()> {
    let children = children_of(pid);
    let signed = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) on the postmaster checked by `find`; stopping it first keeps it from starting new children.
    if unsafe { libc::kill(signed, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for child in children.into_iter().filter_map(|c| i32::try_from(c).ok()) {
        // SAFETY: kill(2) on a process whose parent was the postmaster.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    Ok(())
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_pid(pid: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("postmaster.pid"), format!("{pid}\n/data\n")).expect("write");
        dir
    }

    #[test]
    fn a_pid_file_naming_another_process_is_stale() {
        // This test process runs, but not in the temporary directory: a reused pid.
        let me = std::process::id();
        assert_eq!(find(dir_with_pid(me).path()), Postmaster::Stale { pid: me });
        // pid 1: from a non-root user another user's process; as root its directory is `/` (or unreadable, and
        // then compared by owner: skip when it runs as the same user as this test).
        let dir = dir_with_pid(1);
        if process_uid(1) != dir_owner(dir.path()) || process_cwd(1).is_some() {
            assert_eq!(find(dir.path()), Postmaster::Stale { pid: 1 });
        }
    }

    #[test]
    fn no_file_or_a_dead_pid_is_not_running_and_garbage_is_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(find(dir.path()), Postmaster::NotRunning);
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let gone = child.id();
        child.wait().expect("wait");
        assert_eq!(find(dir_with_pid(gone).path()), Postmaster::NotRunning, "left by a crash");
        let pid_file = dir.path().join("postmaster.pid");
        for garbled in ["", "\n", "abc\n", "0\n", "-5\n"] {
            std::fs::write(&pid_file, garbled).expect("write");
            assert!(matches!(find(dir.path()), Postmaster::Unknown { .. }), "{garbled:?}");
        }
        std::fs::remove_file(&pid_file).expect("remove");
        std::fs::create_dir(&pid_file).expect("mkdir");
        assert!(matches!(find(dir.path()), Postmaster::Unknown { .. }), "unreadable");
    }

    #[test]
    fn a_process_working_in_the_directory_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep").arg("30").current_dir(dir.path()).spawn().expect("sleep");
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n", child.id())).expect("write");
        assert_eq!(find(dir.path()), Postmaster::Running(child.id()));
        let _ = child.kill();
        let _ = child.wait();
    }
}
