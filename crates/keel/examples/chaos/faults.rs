//! The fault kinds, the seeded draw, and how each fault is injected and healed.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use keel::cluster_runner::{children_of, send_signal};

use crate::net::ChaosEnv;

/// What a round can do to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    PrimaryEtcdPartition,
    PrimaryIsolated,
    ReplicaIsolated,
    FreezePrimaryAgent,
    FreezePrimaryPostgres,
    KillPrimaryAgent,
    KillPrimaryPostgres,
    KillPrimaryBoth,
    KillEtcd,
    SlowEtcd,
}

/// ttl in the cluster's dynamic configuration (`ClusterOptions::default()`).
const TTL: u64 = 20;

impl FaultKind {
    /// Whether both faults act on the same process of the primary (its agent, its PostgreSQL): the second would
    /// find it already killed or frozen (seed 100, round 29 drew kill-primary-both + kill-primary-agent and the
    /// run stopped on "node2's agent is not running"), so such a pair is one fault.
    pub fn same_process(self, other: FaultKind) -> bool {
        use FaultKind::*;
        let agent = |k: FaultKind| matches!(k, FreezePrimaryAgent | KillPrimaryAgent | KillPrimaryBoth);
        let postgres = |k: FaultKind| matches!(k, FreezePrimaryPostgres | KillPrimaryPostgres | KillPrimaryBoth);
        (agent(self) && agent(other)) || (postgres(self) && postgres(other))
    }

    pub const ALL: [FaultKind; 10] = [
        FaultKind::PrimaryEtcdPartition,
        FaultKind::PrimaryIsolated,
        FaultKind::ReplicaIsolated,
        FaultKind::FreezePrimaryAgent,
        FaultKind::FreezePrimaryPostgres,
        FaultKind::KillPrimaryAgent,
        FaultKind::KillPrimaryPostgres,
        FaultKind::KillPrimaryBoth,
        FaultKind::KillEtcd,
        FaultKind::SlowEtcd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::PrimaryEtcdPartition => "primary-etcd-partition",
            FaultKind::PrimaryIsolated => "primary-isolated",
            FaultKind::ReplicaIsolated => "replica-isolated",
            FaultKind::FreezePrimaryAgent => "freeze-primary-agent",
            FaultKind::FreezePrimaryPostgres => "freeze-primary-postgres",
            FaultKind::KillPrimaryAgent => "kill-primary-agent",
            FaultKind::KillPrimaryPostgres => "kill-primary-postgres",
            FaultKind::KillPrimaryBoth => "kill-primary-both",
            FaultKind::KillEtcd => "kill-etcd",
            FaultKind::SlowEtcd => "slow-etcd",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            FaultKind::PrimaryEtcdPartition => "blackhole route to etcd in the primary's namespace, ttl+10 s",
            FaultKind::PrimaryIsolated => "the primary's link down (cut from everyone), ttl+10 s",
            FaultKind::ReplicaIsolated => "a replica's link down, ttl+10 s",
            FaultKind::FreezePrimaryAgent => "SIGSTOP of the primary's agent, ttl+5 s",
            FaultKind::FreezePrimaryPostgres => "SIGSTOP of the primary's postmaster and children, ttl+5 s",
            FaultKind::KillPrimaryAgent => "kill -9 of the primary's agent, restarted after 5 s",
            FaultKind::KillPrimaryPostgres => "kill -9 of the primary's postmaster and children",
            FaultKind::KillPrimaryBoth => "kill -9 of the primary's agent and PostgreSQL, agent restarted after 5 s",
            FaultKind::KillEtcd => "kill -9 of etcd, restarted after 15 s",
            FaultKind::SlowEtcd => "netem delay 200 ms on etcd's link, 30 s",
        }
    }

    /// How long the fault stays before it is healed.
    pub fn hold(self) -> Duration {
        Duration::from_secs(match self {
            FaultKind::PrimaryEtcdPartition | FaultKind::PrimaryIsolated | FaultKind::ReplicaIsolated => TTL + 10,
            FaultKind::FreezePrimaryAgent | FaultKind::FreezePrimaryPostgres => TTL + 5,
            FaultKind::KillPrimaryAgent | FaultKind::KillPrimaryBoth | FaultKind::KillPrimaryPostgres => 5,
            FaultKind::KillEtcd => 15,
            FaultKind::SlowEtcd => 30,
        })
    }

    /// `--faults` names (empty: all).
    pub fn parse_list(names: &[String]) -> Result<Vec<FaultKind>> {
        if names.is_empty() {
            return Ok(FaultKind::ALL.to_vec());
        }
        names
            .iter()
            .map(|n| {
                FaultKind::ALL
                    .into_iter()
                    .find(|k| k.name() == n.trim())
                    .ok_or_else(|| anyhow!("unknown fault {n:?}; --list-faults shows the kinds"))
            })
            .collect()
    }
}

/// The names of `faults`, joined.
pub fn names(faults: &[FaultKind]) -> String {
    faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(" + ")
}

/// xorshift64*: a tiny seeded generator, so a seed replays the same faults.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Draws faults: every kind once (in a seeded order) before any repeats, so a short run covers them all.
pub struct Deck {
    rng: Rng,
    kinds: Vec<FaultKind>,
    pile: Vec<FaultKind>,
    double_percent: u64,
}

impl Deck {
    pub fn new(seed: u64, kinds: Vec<FaultKind>, double_percent: u64) -> Deck {
        Deck { rng: Rng::new(seed), kinds, pile: Vec::new(), double_percent }
    }

    fn one(&mut self) -> FaultKind {
        if self.pile.is_empty() {
            self.pile = self.kinds.clone();
            for i in (1..self.pile.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                self.pile.swap(i, j);
            }
        }
        self.pile.pop().unwrap_or(FaultKind::KillPrimaryPostgres)
    }

    /// One fault, or two different ones.
    pub fn draw(&mut self) -> Vec<FaultKind> {
        let first = self.one();
        let mut faults = vec![first];
        if self.kinds.len() > 1 && self.rng.below(100) < self.double_percent {
            let second = self.kinds[self.rng.below(self.kinds.len() as u64) as usize];
            if second != first && !first.same_process(second) {
                faults.push(second);
            }
        }
        faults
    }
}

/// An injected fault, with what healing it needs.
#[derive(Debug)]
pub enum Active {
    EtcdRoute(String),
    LinkDown(String),
    Stopped(Vec<u32>),
    AgentKilled(String),
    Nothing,
    EtcdKilled,
    EtcdDelay,
}

/// Injects `kind`; `primary` and `replica` are the roles at the start of the round.
pub fn inject(env: &mut ChaosEnv, kind: FaultKind, primary: &str, replica: &str) -> Result<Active> {
    let io = |e: std::io::Error| anyhow!("{}: {e}", kind.name());
    Ok(match kind {
        FaultKind::PrimaryEtcdPartition => {
            env.lab.set_blackhole(primary, &env.etcd_addr(), true).map_err(io)?;
            Active::EtcdRoute(primary.into())
        }
        FaultKind::PrimaryIsolated => {
            env.lab.set_link(primary, false).map_err(io)?;
            Active::LinkDown(primary.into())
        }
        FaultKind::ReplicaIsolated => {
            env.lab.set_link(replica, false).map_err(io)?;
            Active::LinkDown(replica.into())
        }
        FaultKind::FreezePrimaryAgent => {
            let pid = env.cluster.agent_pid(primary).ok_or_else(|| anyhow!("{primary}'s agent is not running"))?;
            stop_all(&[pid])?
        }
        FaultKind::FreezePrimaryPostgres => {
            let pm = env.cluster.postmaster_pid(primary).ok_or_else(|| anyhow!("{primary} has no postmaster"))?;
            let mut pids = vec![pm];
            pids.extend(children_of(pm));
            stop_all(&pids)?
        }
        FaultKind::KillPrimaryAgent => {
            kill_agent(env, primary)?;
            Active::AgentKilled(primary.into())
        }
        FaultKind::KillPrimaryPostgres => {
            keel::cluster_runner::kill_postmaster(&env.cluster.node(primary).data_dir);
            Active::Nothing
        }
        FaultKind::KillPrimaryBoth => {
            env.cluster.kill9(primary);
            Active::AgentKilled(primary.into())
        }
        FaultKind::KillEtcd => {
            env.etcd_kill();
            Active::EtcdKilled
        }
        FaultKind::SlowEtcd => {
            env.lab.set_delay(crate::net::ETCD, Some(200)).map_err(io)?;
            Active::EtcdDelay
        }
    })
}

/// SIGSTOP of `pids`: the first (the agent, or the postmaster) must exist; a child that exited since it was
/// listed is skipped (seed 100, round 71: a backend ended between the listing and the signal).
fn stop_all(pids: &[u32]) -> Result<Active> {
    let mut stopped = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        match send_signal(*pid, libc::SIGSTOP) {
            Ok(()) => stopped.push(*pid),
            Err(e) if i > 0 && e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                for p in &stopped {
                    let _ = send_signal(*p, libc::SIGCONT);
                }
                bail!("SIGSTOP {pid}: {e}");
            }
        }
    }
    Ok(Active::Stopped(stopped))
}

/// kill -9 of the agent's process group only (PostgreSQL runs in its own session and stays).
fn kill_agent(env: &mut ChaosEnv, name: &str) -> Result<()> {
    let Some(pid) = env.cluster.agent_pid(name) else { bail!("{name}'s agent is not running") };
    send_signal(pid, libc::SIGKILL).map_err(|e| anyhow!("kill -9 {pid}: {e}"))?;
    Ok(())
}

/// Undoes `active`.
pub fn heal(env: &mut ChaosEnv, active: Active) -> Result<()> {
    match active {
        Active::EtcdRoute(node) => env.lab.set_blackhole(&node, &env.etcd_addr(), false)?,
        Active::LinkDown(node) => env.lab.set_link(&node, true)?,
        Active::Stopped(pids) => {
            for pid in pids {
                let _ = send_signal(pid, libc::SIGCONT);
            }
        }
        Active::AgentKilled(node) => env.cluster.start_agent(&node).map_err(|e| anyhow!(e))?,
        Active::Nothing => {}
        Active::EtcdKilled => env.etcd_restart()?,
        Active::EtcdDelay => env.lab.set_delay(crate::net::ETCD, None)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deck_covers_every_kind_before_repeating() {
        let mut deck = Deck::new(7, FaultKind::ALL.to_vec(), 0);
        let mut seen: Vec<FaultKind> = (0..FaultKind::ALL.len()).flat_map(|_| deck.draw()).collect();
        seen.sort();
        assert_eq!(seen, FaultKind::ALL.to_vec());
    }
}
