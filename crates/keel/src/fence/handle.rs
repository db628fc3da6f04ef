//! The agent's side of the fence: starts `keel fence` for the data directory and sends it each change of
//! [`Arming`]. A fence that died is started again on the next change.

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
}

impl Fence {
    /// A fence for `data_dir`, started on first use.
    pub fn new(data_dir: &Path) -> Fence {
        Fence { data_dir: data_dir.to_path_buf(), child: None, last: None }
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
            Ok(()) => self.last = Some(arming),
            Err(e) => {
                error!("cannot reach the fence process: {e}; starting it again at the next change");
                self.child = None;
                self.last = None;
            }
        }
    }
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
