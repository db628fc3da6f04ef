//! Deterministic simulation of a Keel cluster: 3–5 agents running [`decide`] against one shared [`MemStore`], each
//! with a simulated PostgreSQL, under seeded random faults. Decisions are carried out by the executor that ships
//! ([`Executor`], `keel_core::exec`) through a simulated host (`sim/host.rs`), so every schedule runs that code.
//!
//! Time advances in ticks of [`TICK_MS`]. Every tick the primary writes WAL, replicas replicate with a small random
//! lag, faults may be injected, and the invariants are checked. Every agent runs its cycle `loop_wait` (+ up to
//! [`JITTER_MS`]) after the previous one, like Patroni's loop: keep the lease alive (re-grant when lost), read the
//! view, decide (with the probe round trip), execute the actions, publish the member key. A cycle takes no
//! simulated time.
//!
//! Faults: agent + PostgreSQL death (maybe restarted later), a PostgreSQL crash under a live agent, a node cut off
//! from the store (its store calls fail), the whole store paused (every call fails), and manual switchover
//! requests.
//!
//! Invariants:
//! - **(a) one primary**: at no tick do two live nodes run PostgreSQL as a primary. This is stronger than "two
//!   primaries holding valid leases", and implies it.
//! - **(b) failover time**: when the primary dies while a healthy candidate exists and no other fault happens
//!   (new faults are held back while the episode is open), a new primary is promoted within
//!   `ttl + loop_wait + JITTER + TICK`. The old lease expires at most `ttl` after the death (its last keepalive
//!   was no later than the death); the healthiest candidate's next cycle starts at most `loop_wait + JITTER`
//!   later and runs on the first tick at or after its due time (`+ TICK`). That cycle wins: all live peers are
//!   reachable and the store answers, so nothing makes the healthiest node defer.
//! - **(d) no silent wipe**: a data directory is emptied only by the executor's `WipeDataDir` action, and only for a
//!   reason the configuration allows (`remove_data_directory_on_*`). Each seed picks one of three configurations:
//!   rewind on; rewind off with wiping of diverged nodes; rewind on with wiping when a rewind is impossible (and
//!   simulated rewinds failing a third of the time).
//! - **(c) switchover time**: after the leader demotes gracefully for a candidate it checked healthy (and no fault
//!   is active), the candidate is primary within `loop_wait + JITTER + TICK`: its next cycle sees no leader and a
//!   failover key naming it.
//!
//! `KEEL_SIM_SCHEDULES` (default 600) sets the number of seeded schedules, `KEEL_SIM_SEED` runs one seed verbosely.

#[path = "sim/host.rs"]
mod host;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use keel_core::dynconfig::DynamicConfig;
use keel_core::exec::{self, Executor};
use keel_core::ha::{
    decide, AgentState, DataDir, HaInput, PeerProbe, PeerStatus, PgObservation, PgRole, PgRunning, ProbeResult,
};
use keel_core::lsn::Lsn;
use keel_core::member_state::MemberState;
use keel_core::pgconfig::PgSettings;
use keel_core::store::{ClusterOps, MemStore};
use keel_core::time::Millis;
use keel_core::view::{ClusterKey, ClusterView, Tags};

use host::SimHost;

const TTL: u64 = 30;
const LOOP_WAIT: u64 = 10;
const TICK_MS: u64 = 100;
const JITTER_MS: u64 = 500;
const SIM_MS: u64 = 300_000;
const SYSID: &str = "7300000000000000001";
/// The configurations a seed may run with (see invariant (d)), and the per-million chance a rewind fails.
const CONFIGS: [(&str, u64); 3] = [
    (r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"postgresql":{"use_pg_rewind":true}}"#, 0),
    (
        r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"postgresql":{"use_pg_rewind":false,
            "remove_data_directory_on_diverged_timelines":true}}"#,
        0,
    ),
    (
        r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"postgresql":{"use_pg_rewind":true,
            "remove_data_directory_on_rewind_failure":true}}"#,
        333_333,
    ),
];

/// Runs a future whose effects are all immediate (the simulated host never waits).
fn run_now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// xorshift64*: small, seedable, good enough to pick schedules.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

#[derive(Debug, Clone)]
struct SimPg {
    data: bool,
    running: bool,
    primary: bool,
    timeline: u32,
    lsn: u64,
    upstream: Option<usize>,
    /// `(timeline, lsn)`: where each earlier timeline ended on this node's history.
    history: Vec<(u32, u64)>,
}

impl SimPg {
    fn empty() -> SimPg {
        SimPg { data: false, running: false, primary: false, timeline: 0, lsn: 0, upstream: None, history: vec![] }
    }
    fn switchpoint(&self, tl: u32) -> Option<u64> {
        self.history.iter().find(|(t, _)| *t == tl).map(|(_, l)| *l)
    }
}

struct Node {
    name: String,
    tags: Tags,
    alive: bool,
    cut_off_until: u64,
    lease: Option<i64>,
    last_view: ClusterView,
    next_cycle: u64,
    pg: SimPg,
    /// The agent's executor (what it knows of its leader key across cycles).
    exec: Executor,
    /// The state the executor last set (published in the member key).
    state: MemberState,
    /// The data directory was emptied by a `WipeDataDir` since the last check (invariant (d)).
    wiped: bool,
    /// It had data at the last check.
    had_data: bool,
}

#[derive(Default, Debug)]
struct Stats {
    cycles: u64,
    bootstraps: u64,
    promotions: u64,
    deaths: u64,
    pg_crashes: u64,
    cutoffs: u64,
    pauses: u64,
    switchovers_requested: u64,
    rewinds: u64,
    wipes: u64,
    failover_episodes: u64,
    max_failover_ms: u64,
    switchovers_done: u64,
    max_switchover_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EpisodeKind {
    /// The primary died.
    Failover,
    /// The primary demoted gracefully and released the key for a named candidate.
    Switchover,
}

struct Episode {
    kind: EpisodeKind,
    started: u64,
    deadline: u64,
}

struct Sim {
    now: u64,
    /// The dynamic configuration of this seed, and its `postgresql` settings.
    config: String,
    settings: PgSettings,
    rewind_fail_per_million: u64,
    store: MemStore,
    ops: ClusterOps,
    nodes: Vec<Node>,
    rng: Rng,
    store_paused_until: u64,
    episode: Option<Episode>,
    stats: Stats,
    log: VecDeque<String>,
    verbose: bool,
}

impl Sim {
    fn new(seed: u64, verbose: bool) -> Sim {
        let mut rng = Rng::new(seed);
        let n = 3 + rng.below(3) as usize;
        let nodes = (0..n)
            .map(|i| Node {
                name: format!("n{i}"),
                // With five nodes the last one never fails over, to exercise the tag.
                tags: if n == 5 && i == 4 {
                    Tags { nofailover: Some(true), ..Tags::default() }
                } else {
                    Tags::default()
                },
                alive: true,
                cut_off_until: 0,
                lease: None,
                last_view: ClusterView::default(),
                next_cycle: rng.below(LOOP_WAIT * 1000),
                pg: SimPg::empty(),
                exec: Executor::default(),
                state: MemberState::Starting,
                wiped: false,
                had_data: false,
            })
            .collect();
        let (config, rewind_fail_per_million) = CONFIGS[rng.below(CONFIGS.len() as u64) as usize];
        let settings = DynamicConfig::from_value(serde_json::from_str(config).expect("config")).postgresql;
        let ops = ClusterOps::new("/service/", "sim");
        let mut store = MemStore::new();
        store.txn(Millis(0), &ops.cas(&ClusterKey::Config, config, None)).expect("config");
        Sim {
            now: 0,
            config: config.to_string(),
            settings,
            rewind_fail_per_million,
            store,
            ops,
            nodes,
            rng,
            store_paused_until: 0,
            episode: None,
            stats: Stats::default(),
            log: VecDeque::new(),
            verbose,
        }
    }

    fn note(&mut self, line: String) {
        let line = format!("{:>7} {line}", self.now);
        if self.verbose {
            println!("{line}");
        }
        self.log.push_back(line);
        if self.log.len() > 60 {
            self.log.pop_front();
        }
    }

    fn fail(&self, what: &str) -> ! {
        let log: Vec<&String> = self.log.iter().collect();
        panic!("{what} at t={} ms\nrecent events:\n{log:#?}", self.now);
    }

    fn reachable(&self, i: usize) -> bool {
        self.now >= self.store_paused_until && self.now >= self.nodes[i].cut_off_until
    }

    fn rewind_fails(&mut self) -> bool {
        let p = self.rewind_fail_per_million;
        self.rng.chance(p)
    }

    fn open_episode(&mut self, kind: EpisodeKind, deadline: u64) {
        self.episode = Some(Episode { kind, started: self.now, deadline });
    }

    /// Invariant (d): data is lost only through a typed wipe.
    fn check_data_dirs(&mut self) {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.had_data && !n.pg.data && !n.wiped {
                self.fail(&format!("{}'s data directory was emptied without a WipeDataDir action", n.name));
            }
            let n = &mut self.nodes[i];
            n.had_data = n.pg.data;
            n.wiped = false;
        }
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    fn run(&mut self) {
        while self.now < SIM_MS {
            self.inject_faults();
            self.replicate();
            for i in 0..self.nodes.len() {
                if self.nodes[i].alive && self.nodes[i].next_cycle <= self.now {
                    self.cycle(i);
                    self.check_one_primary();
                    let next = self.now + LOOP_WAIT * 1000 + self.rng.below(JITTER_MS + 1);
                    self.nodes[i].next_cycle = next;
                }
            }
            self.check_one_primary();
            self.check_data_dirs();
            self.check_episode();
            self.now += TICK_MS;
        }
    }

    fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive && self.nodes[*i].pg.running && self.nodes[*i].pg.primary)
            .collect()
    }

    fn check_one_primary(&self) {
        let p = self.primaries();
        if p.len() > 1 {
            self.fail(&format!("two primaries: {p:?}"));
        }
    }

    fn check_episode(&mut self) {
        let Some(ep) = &self.episode else { return };
        if !self.primaries().is_empty() {
            let took = self.now - ep.started;
            match ep.kind {
                EpisodeKind::Failover => {
                    self.stats.max_failover_ms = self.stats.max_failover_ms.max(took);
                    self.stats.failover_episodes += 1;
                }
                EpisodeKind::Switchover => {
                    self.stats.max_switchover_ms = self.stats.max_switchover_ms.max(took);
                    self.stats.switchovers_done += 1;
                }
            }
            self.note(format!("{:?} completed after {took} ms", ep.kind));
            self.episode = None;
        } else if self.now > ep.deadline {
            self.fail(&format!("{:?}: no new primary within {} ms", ep.kind, ep.deadline - ep.started));
        }
    }

    /// No fault is active: every live node reaches the store.
    fn quiet(&self) -> bool {
        self.now >= self.store_paused_until && self.nodes.iter().all(|n| !n.alive || self.now >= n.cut_off_until)
    }

    /// The leader according to the store (what patronictl would see).
    fn store_leader(&mut self) -> Option<String> {
        let view = ClusterView::from_entries(self.store.range(Millis(self.now), self.ops.prefix()));
        view.leader.map(|l| l.name)
    }

    fn inject_faults(&mut self) {
        if self.episode.is_some() || self.now < 20_000 {
            return;
        }
        let n = self.nodes.len();
        let i = self.rng.below(n as u64) as usize;
        // Per tick: about one death per 60 s, restarts after ~20 s, cut-offs and store pauses rarer.
        if self.rng.chance(1_700) {
            if self.nodes[i].alive && self.nodes.iter().filter(|n| n.alive).count() > 1 {
                self.kill(i);
            }
        } else if self.rng.chance(5_000) {
            if !self.nodes[i].alive {
                self.nodes[i].alive = true;
                self.nodes[i].lease = None;
                self.nodes[i].next_cycle = self.now + self.rng.below(LOOP_WAIT * 1000);
                self.note(format!("{} restarted", self.nodes[i].name));
            }
        } else if self.rng.chance(400) {
            if self.nodes[i].alive && self.nodes[i].pg.running {
                self.nodes[i].pg.running = false;
                self.stats.pg_crashes += 1;
                self.note(format!("{}: PostgreSQL crashed (agent alive)", self.nodes[i].name));
            }
        } else if self.rng.chance(700) {
            let secs = 1 + self.rng.below(2 * TTL);
            self.nodes[i].cut_off_until = self.now + secs * 1000;
            self.stats.cutoffs += 1;
            self.note(format!("{} cut off from the store for {secs} s", self.nodes[i].name));
        } else if self.rng.chance(300) {
            let secs = 1 + self.rng.below(2 * TTL);
            self.store_paused_until = self.now + secs * 1000;
            self.stats.pauses += 1;
            self.note(format!("store paused for {secs} s"));
        } else if self.rng.chance(500) && self.now >= self.store_paused_until {
            if let Some(leader) = self.store_leader() {
                let candidate = self.nodes[i].name.clone();
                let value = format!(r#"{{"leader":"{leader}","member":"{candidate}"}}"#);
                let version =
                    ClusterView::from_entries(self.store.range(Millis(self.now), self.ops.prefix())).failover_version;
                let txn = self.ops.cas(&ClusterKey::Failover, &value, version);
                if self.store.txn(Millis(self.now), &txn) == Ok(true) {
                    self.stats.switchovers_requested += 1;
                    self.note(format!("switchover requested {leader} -> {candidate}"));
                }
            }
        }
    }

    fn kill(&mut self, i: usize) {
        let was_primary = self.nodes[i].pg.running && self.nodes[i].pg.primary;
        self.nodes[i].alive = false;
        self.nodes[i].pg.running = false;
        self.stats.deaths += 1;
        self.note(format!("{} killed (primary: {was_primary})", self.nodes[i].name));
        if was_primary && self.healthy_candidate_exists(i) {
            let deadline = self.now + (TTL + LOOP_WAIT) * 1000 + JITTER_MS + TICK_MS;
            self.open_episode(EpisodeKind::Failover, deadline);
        }
    }

    /// A live replica on the dead primary's timeline, close to its WAL position, allowed to fail over, and the
    /// store reachable for everyone.
    fn healthy_candidate_exists(&self, dead: usize) -> bool {
        if !self.quiet() {
            return false;
        }
        let old = &self.nodes[dead].pg;
        self.nodes.iter().enumerate().any(|(j, n)| {
            j != dead
                && n.alive
                && n.pg.running
                && !n.pg.primary
                && n.pg.timeline == old.timeline
                && old.lsn.saturating_sub(n.pg.lsn) < 100_000
                && !n.tags.no_failover()
        })
    }

    fn replicate(&mut self) {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if !(n.alive && n.pg.running) {
                continue;
            }
            if n.pg.primary {
                let grow = self.rng.below(2000);
                self.nodes[i].pg.lsn += grow;
                continue;
            }
            let Some(u) = n.pg.upstream else { continue };
            let up = &self.nodes[u];
            if !(up.alive && up.pg.running) {
                continue;
            }
            let up_pg = up.pg.clone();
            let lag = self.rng.below(3000);
            let me = &mut self.nodes[i].pg;
            if me.timeline < up_pg.timeline {
                match up_pg.switchpoint(me.timeline) {
                    Some(sp) if me.lsn <= sp => {
                        me.timeline = up_pg.timeline;
                        me.history = up_pg.history.clone();
                    }
                    _ => continue, // diverged: streaming fails until a rewind
                }
            }
            if me.timeline == up_pg.timeline {
                me.lsn = me.lsn.max(up_pg.lsn.saturating_sub(lag));
            }
        }
    }

    fn observe(&self, i: usize) -> PgObservation {
        let pg = &self.nodes[i].pg;
        let lsn = Some(Lsn(pg.lsn));
        PgObservation {
            running: if pg.running { PgRunning::Running } else { PgRunning::Stopped },
            starting: false,
            role: match (pg.running, pg.primary) {
                (false, _) => PgRole::Unknown,
                (true, true) => PgRole::Primary,
                (true, false) => PgRole::Replica,
            },
            timeline: pg.data.then_some(pg.timeline),
            received_lsn: lsn,
            replayed_lsn: lsn,
            current_lsn: lsn,
            data_dir: if pg.data { DataDir::Initialized { sysid: SYSID.into() } } else { DataDir::Empty },
            following: pg.upstream.map(|u| self.nodes[u].name.clone()),
            // Restarts take one cycle here, far below primary_start_timeout (300 s).
            down_since: None,
        }
    }

    fn probe(&self, name: &str) -> PeerProbe {
        let result = match self.idx(name) {
            Some(j) if self.nodes[j].alive => {
                let n = &self.nodes[j];
                ProbeResult::Reachable(PeerStatus {
                    pg_running: n.pg.running,
                    in_recovery: !n.pg.primary,
                    wal_position: Some(Lsn(n.pg.lsn)),
                    timeline: Some(n.pg.timeline),
                    tags: n.tags.clone(),
                })
            }
            _ => ProbeResult::Unreachable,
        };
        PeerProbe { name: name.to_string(), result }
    }

    fn cycle(&mut self, i: usize) {
        self.stats.cycles += 1;
        let now = Millis(self.now);
        let store_ok = self.reachable(i);
        if store_ok {
            let keep = self.nodes[i].lease.is_some_and(|l| self.store.keepalive(now, l).is_ok());
            if !keep {
                self.nodes[i].lease = Some(self.store.grant_lease(now, TTL));
            }
            self.nodes[i].last_view = ClusterView::from_entries(self.store.range(now, self.ops.prefix()));
        }
        let view = self.nodes[i].last_view.clone();
        let mut input = HaInput {
            now,
            name: self.nodes[i].name.clone(),
            tags: self.nodes[i].tags.clone(),
            config: view.dynamic_config(),
            view,
            pg: self.observe(i),
            agent: AgentState {
                store_ok,
                lease_valid: store_ok,
                last_leader_refresh: self.nodes[i].exec.last_leader_refresh,
                failsafe_confirmed: false,
                failsafe_leader: None,
                clone_from_leader: false,
                watchdog_unavailable: false,
            },
            probes: None,
            local_slots: None,
        };
        let mut d = decide(&input);
        if let Some(members) = d.probe_request() {
            input.probes = Some(members.iter().map(|m| self.probe(m)).collect());
            d = decide(&input);
            assert!(d.probe_request().is_none(), "probes requested twice");
        }
        // The executor that ships, through the simulated host.
        let mut executor = std::mem::take(&mut self.nodes[i].exec);
        let (applied, result) = run_now(executor.execute(&mut SimHost { sim: self, i }, (&input).into(), &d));
        let line = match &result {
            Ok(()) if applied == &d => d.to_string(),
            Ok(()) => format!("{d} -> {applied}"),
            Err(exec::ExecError::Refused(why)) => self.fail(&format!("{} refuses to run: {why:?}", input.name)),
            Err(e) => format!("{d} -> failed: {e}"),
        };
        if let Some(optime) = executor.pending_optime.take() {
            let txn = self.ops.put_plain(&ClusterKey::Status, &format!(r#"{{"optime":{}}}"#, optime.0));
            if self.reachable(i) {
                let _ = self.store.txn(now, &txn);
            }
        }
        self.nodes[i].exec = executor;
        let name = self.nodes[i].name.clone();
        self.note(format!("{name}: {line}"));
        if self.reachable(i) {
            self.touch_member(i);
        }
    }

    fn touch_member(&mut self, i: usize) {
        let Some(lease) = self.nodes[i].lease else { return };
        let pg = &self.nodes[i].pg;
        let role = if pg.primary && pg.running { "primary" } else { "replica" };
        let state = self.nodes[i].state.settle(pg.running, pg.running).as_str();
        let mut m = serde_json::json!({"state": state, "role": role, "xlog_location": pg.lsn,
            "api_url": format!("http://{}:8008/patroni", self.nodes[i].name), "tags": self.nodes[i].tags.to_json()});
        if pg.data {
            m["timeline"] = pg.timeline.into();
        }
        let txn = self.ops.touch_member(&self.nodes[i].name, &m.to_string(), lease);
        // A lease lost between keepalive and this write is re-granted next cycle.
        let _ = self.store.txn(Millis(self.now), &txn);
    }
}

fn schedules() -> u64 {
    std::env::var("KEEL_SIM_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(600)
}

#[test]
fn simulated_clusters_keep_one_primary_and_fail_over_in_time() {
    if let Some(seed) = std::env::var("KEEL_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        let mut sim = Sim::new(seed, true);
        sim.run();
        println!("{:?}", sim.stats);
        return;
    }
    let mut total = Stats::default();
    for seed in 0..schedules() {
        let mut sim = Sim::new(seed, false);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
        if let Err(e) = outcome {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            panic!("seed {seed} failed (rerun with KEEL_SIM_SEED={seed}): {msg}");
        }
        let s = &sim.stats;
        assert_eq!(s.bootstraps, 1, "seed {seed}: the cluster was bootstrapped {} times", s.bootstraps);
        total.cycles += s.cycles;
        total.bootstraps += s.bootstraps;
        total.promotions += s.promotions;
        total.deaths += s.deaths;
        total.pg_crashes += s.pg_crashes;
        total.cutoffs += s.cutoffs;
        total.pauses += s.pauses;
        total.switchovers_requested += s.switchovers_requested;
        total.rewinds += s.rewinds;
        total.wipes += s.wipes;
        total.failover_episodes += s.failover_episodes;
        total.max_failover_ms = total.max_failover_ms.max(s.max_failover_ms);
        total.switchovers_done += s.switchovers_done;
        total.max_switchover_ms = total.max_switchover_ms.max(s.max_switchover_ms);
    }
    println!("{total:?}");
    assert!(total.failover_episodes > 0, "no failover episode was exercised");
    assert!(total.wipes > 0 && total.rewinds > 0, "no wipe or rewind was exercised");
    assert!(total.switchovers_done > 0, "no switchover was exercised");
}
