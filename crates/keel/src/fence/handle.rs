//! The agent's side of the fence: starts `keel fence` for the data directory and sends it each change of
//! [`Arming`]. A fence that died is started again on the next change.
//!
//! A fence outlives an agent killed on its own (kill -9 of the agent's pid, the OOM killer) and keeps its last
//! arming, so a primary whose agent is gone for good is still fenced. An agent started again that takes the key
//! back would then see its PostgreSQL killed by the old fence's deadline. So once this agent's own fence is armed
//! (PostgreSQL is protected by a fresher deadline), fences left for the same data directory are stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command as Process, Stdio};

use keel_core::fence::Arming;
use tracing::{error, info};

use super::process::Command;

/// The running fence process.
pub struct Fence {
    data_dir: PathBuf,
    child: Option<(Child, ChildStdin)>,
    last: Option<Arming>,
    /// Fences left by an earlier agent were looked for since this agent's fence was first armed.
    took_over: bool,
}

impl Fence {
    /// A fence for `data_dir`, started on first use.
    pub fn new(data_dir: &Path) -> Fence {
        Fence { data_dir: data_dir.to_path_buf(), child: None, last: None, took_over: false }
    }

    fn start(&mut self) -> std::io::Result<&mut ChildStdin> {
        if let Some((child, _)) = &mut self.child {
            if child.try_wait()?.is_some() {
                self.child = None;
            }
        }
        if self.child.is_none() {
            let exe = std::env::current_exe()?;
            let mut child =
                Process::new(exe).arg("fence").arg("--data-dir").arg(&self.data_dir).stdin(Stdio::piped()).spawn()?;
            let stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("the fence has no stdin"))?;
            info!("started the fence (pid {}) for {}", child.id(), self.data_dir.display());
            self.child = Some((child, stdin));
        }
        match &mut self.child {
            Some((_, stdin)) => Ok(stdin),
            None => Err(std::io::Error::other("the fence did not start")),
        }
    }

    /// Sends `arming` when it changed (re-sending after a failure).
    pub fn set(&mut self, arming: Arming) {
        if self.last == Some(arming) {
            return;
        }
        if self.child.is_none() && arming == Arming::Disarmed {
            // No fence process runs, so nothing is armed.
            self.last = Some(arming);
            return;
        }
        let command = match arming {
            Arming::Armed { deadline } => Command::Arm { deadline_ms: deadline.0 },
            Arming::Disarmed => Command::Disarm,
        };
        let sent =
            self.start().and_then(|stdin| stdin.write_all(command.line().as_bytes()).and_then(|()| stdin.flush()));
        match sent {
            Ok(()) => {
                self.last = Some(arming);
                if matches!(arming, Arming::Armed { .. }) && !self.took_over {
                    self.took_over = true;
                    self.stop_orphans();
                }
            }
            Err(e) => {
                error!("cannot reach the fence process: {e}; starting it again at the next change");
                self.child = None;
                self.last = None;
            }
        }
    }
}

impl Fence {
    /// Stops the fences an earlier agent left for this data directory (ours is armed now).
    fn stop_orphans(&self) {
        let own = self.child.as_ref().map(|(c, _)| c.id());
        for pid in fences_for(&self.data_dir).into_iter().filter(|p| Some(*p) != own) {
            // SAFETY: kill(2) takes integers only.
            let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            if rc == 0 {
                info!(
                    "stopped the fence an earlier agent left for {} (pid {pid}): ours is armed",
                    self.data_dir.display()
                );
            } else {
                let e = std::io::Error::last_os_error();
                error!("cannot stop the earlier fence (pid {pid}) for {}: {e}", self.data_dir.display());
            }
        }
    }
}

/// The pids of `keel fence --data-dir DIR` processes for `data_dir` (from `/proc/*/cmdline`).
fn fences_for(data_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let dir = data_dir.as_os_str().as_encoded_bytes();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            is_fence_for(&args, dir)
        })
        .collect()
}

/// Whether a command line (its NUL-separated arguments) is `<exe> fence --data-dir <dir>`.
fn is_fence_for(args: &[&[u8]], dir: &[u8]) -> bool {
    matches!(args, [_, b"fence", b"--data-dir", d, ..] if *d == dir)
}

impl Drop for Fence {
    fn drop(&mut self) {
        // Closing stdin lets the fence exit once disarmed; a clean shutdown disarms first.
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.try_wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_told_by_their_command_line() {
        let dir: &[u8] = b"/var/lib/pg/data";
        assert!(is_fence_for(&[b"/usr/bin/keel", b"fence", b"--data-dir", dir, b""], dir));
        assert!(!is_fence_for(&[b"/usr/bin/keel", b"fence", b"--data-dir", b"/other", b""], dir));
        assert!(!is_fence_for(&[b"/usr/bin/keel", b"run", b"/etc/keel.yml", b""], dir));
        assert!(!is_fence_for(&[b"fence", b"--data-dir", dir], dir));
        assert!(!is_fence_for(&[], dir));
    }
}
