//! `keel fence --data-dir DIR`: reads `arm <unix ms>` and `disarm` lines on stdin; when an armed deadline passes it
//! SIGKILLs the data directory's postmaster and its process group, without waiting for PostgreSQL to answer.
//! When stdin closes (the agent died) it keeps its last arming: a dead agent's primary is fenced too; it exits
//! once disarmed or fired.

use std::io::BufRead;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::clock::unix_ms;
use crate::postgres::postmaster::{self, Postmaster};

/// How often the deadline is checked.
const TICK: Duration = Duration::from_millis(100);

/// One line of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Arm { deadline_ms: u64 },
    Disarm,
}

impl Command {
    pub fn parse(line: &str) -> Option<Command> {
        let mut words = line.split_whitespace();
        match (words.next()?, words.next(), words.next()) {
            ("arm", Some(ms), None) => ms.parse().ok().map(|deadline_ms| Command::Arm { deadline_ms }),
            ("disarm", None, None) => Some(Command::Disarm),
            _ => None,
        }
    }

    pub fn line(&self) -> String {
        match self {
            Command::Arm { deadline_ms } => format!("arm {deadline_ms}\n"),
            Command::Disarm => "disarm\n".to_string(),
        }
    }
}

/// Runs the fence until stdin is closed and it is disarmed (or has fired).
pub fn run(data_dir: &Path) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match Command::parse(&line) {
                Some(c) => {
                    if tx.send(c).is_err() {
                        return;
                    }
                }
                None => eprintln!("keel fence: ignoring unknown command {line:?}"),
            }
        }
    });
    let mut armed: Option<u64> = None;
    let mut agent_gone = false;
    loop {
        match rx.recv_timeout(TICK) {
            Ok(Command::Arm { deadline_ms }) => armed = Some(deadline_ms),
            Ok(Command::Disarm) => armed = None,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => agent_gone = true,
        }
        if armed.is_some_and(|deadline| unix_ms() >= deadline) {
            fire(data_dir);
            armed = None;
        }
        if agent_gone && armed.is_none() {
            return;
        }
        if agent_gone {
            std::thread::sleep(TICK);
        }
    }
}

/// Kills the postmaster now.
fn fire(data_dir: &Path) {
    match postmaster::find(data_dir) {
        Postmaster::Running(pid) => match postmaster::kill_hard(pid) {
            Ok(()) => eprintln!(
                "keel fence: the leader key was not refreshed in time: killed PostgreSQL (postmaster {pid}) in {} so \
                 that it cannot accept writes once another node may be promoted",
                data_dir.display()
            ),
            Err(e) => eprintln!("keel fence: could not kill postmaster {pid} in {}: {e}", data_dir.display()),
        },
        Postmaster::Stale { pid } => {
            eprintln!("keel fence: deadline passed; postmaster.pid names {pid}, which is not this server's postmaster")
        }
        Postmaster::Unknown { why } => eprintln!("keel fence: deadline passed, but cannot tell the postmaster: {why}"),
        Postmaster::NotRunning => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_round_trips() {
        for c in [Command::Arm { deadline_ms: 1_700_000_000_123 }, Command::Disarm] {
            assert_eq!(Command::parse(c.line().trim_end()), Some(c));
        }
        for bad in ["", "arm", "arm x", "arm 1 2", "disarm now", "fire"] {
            assert_eq!(Command::parse(bad), None, "{bad:?}");
        }
    }
}
