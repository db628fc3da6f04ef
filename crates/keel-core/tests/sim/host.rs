//! The simulation's [`Host`]: the effects the shipping executor asks for, applied to the in-memory store and the
//! simulated PostgreSQL of one node. Store calls fail while the node cannot reach the store.

use keel_core::divergence::{DivergenceFacts, LocalEnd, WipeReason};
use keel_core::exec::{Event, Host, RewindResult};
use keel_core::ha::{DemoteMode, PromoteCause};
use keel_core::lsn::Lsn;
use keel_core::member_state::MemberState;
use keel_core::store::Txn;
use keel_core::time::Millis;
use keel_core::timeline_history::Promotion;
use keel_core::view::{ClusterKey, HistoryEntry, Member};

use super::{EpisodeKind, Sim, SimPg, JITTER_MS, LOOP_WAIT, TICK_MS};

/// One node's effects, for one execution.
pub struct SimHost<'a> {
    pub sim: &'a mut Sim,
    pub i: usize,
}

type R<T> = Result<T, String>;

impl SimHost<'_> {
    fn txn(&mut self, txn: &Txn) -> R<bool> {
        if !self.sim.reachable(self.i) {
            return Err("store unreachable".into());
        }
        self.sim.store.txn(Millis(self.sim.now), txn).map_err(|e| e.to_string())
    }

    fn lease(&self) -> i64 {
        self.sim.nodes[self.i].lease.unwrap_or(0)
    }

    fn name(&self) -> String {
        self.sim.nodes[self.i].name.clone()
    }

    fn pg(&mut self) -> &mut SimPg {
        &mut self.sim.nodes[self.i].pg
    }

    fn write_optime(&mut self, lsn: Option<Lsn>) {
        if let Some(o) = lsn {
            let txn = self.sim.ops.put_plain(&ClusterKey::Status, &format!(r#"{{"optime":{}}}"#, o.0));
            let _ = self.txn(&txn);
        }
    }

    /// A running node with data named `name`.
    fn running(&self, name: &str) -> Option<usize> {
        self.sim.idx(name).filter(|j| {
            let n = &self.sim.nodes[*j];
            n.alive && n.pg.running && n.pg.data
        })
    }
}

impl Host for SimHost<'_> {
    type Error = String;

    fn now(&self) -> Millis {
        Millis(self.sim.now)
    }

    fn set_state(&mut self, state: MemberState) {
        self.sim.nodes[self.i].state = state;
    }

    fn event(&mut self, event: Event) {
        let name = self.name();
        self.sim.note(format!("{name}: {event}"));
    }

    async fn take_initialize(&mut self) -> R<bool> {
        let txn = self.sim.ops.initialize("", true);
        self.txn(&txn)
    }

    async fn write_initialize(&mut self, sysid: &str) -> R<()> {
        let txn = self.sim.ops.initialize(sysid, false);
        self.txn(&txn).map(|_| ())
    }

    async fn write_config(&mut self) -> R<()> {
        let txn = self.sim.ops.cas(&ClusterKey::Config, &self.sim.config, None);
        self.txn(&txn).map(|_| ())
    }

    async fn acquire_leader(&mut self) -> R<bool> {
        let txn = self.sim.ops.acquire_leader(&self.name(), self.lease());
        self.txn(&txn)
    }

    async fn update_leader(&mut self) -> R<bool> {
        let txn = self.sim.ops.update_leader(&self.name(), self.lease());
        self.txn(&txn)
    }

    async fn release_leader(&mut self, last_lsn: Option<Lsn>) -> R<()> {
        if !self.sim.reachable(self.i) {
            return Err("store unreachable".into());
        }
        self.write_optime(last_lsn);
        let txn = self.sim.ops.delete_leader(&self.name());
        self.txn(&txn).map(|_| ())
    }

    async fn clear_failover(&mut self, version: i64) -> R<()> {
        let txn = self.sim.ops.cas(&ClusterKey::Failover, "{}", Some(version));
        self.txn(&txn).map(|_| ())
    }

    async fn write_history(&mut self, history: &[HistoryEntry]) -> R<()> {
        let json = serde_json::Value::Array(history.iter().map(HistoryEntry::to_json).collect()).to_string();
        let txn = self.sim.ops.put_plain(&ClusterKey::History, &json);
        self.txn(&txn).map(|_| ())
    }

    async fn bootstrap(&mut self) -> R<()> {
        *self.pg() =
            SimPg { data: true, running: true, primary: true, timeline: 1, lsn: 1000, upstream: None, history: vec![] };
        self.sim.stats.bootstraps += 1;
        Ok(())
    }

    async fn create_replica(&mut self, source: &Member, _leader: Option<&Member>) -> R<()> {
        let s = self.running(&source.name).ok_or_else(|| format!("{} cannot serve a base backup", source.name))?;
        let mut pg = self.sim.nodes[s].pg.clone();
        pg.primary = false;
        pg.upstream = Some(s);
        *self.pg() = pg;
        Ok(())
    }

    async fn start_replica(&mut self, upstream: Option<&Member>) -> R<()> {
        let up = upstream.and_then(|u| self.sim.idx(&u.name));
        let pg = self.pg();
        if !pg.data {
            return Err("no data directory".into());
        }
        pg.running = true;
        pg.primary = false;
        pg.upstream = up;
        Ok(())
    }

    async fn hold_commits_for_sync(&mut self, _names: &str) -> R<()> {
        Ok(())
    }

    async fn promote(&mut self, _cause: PromoteCause) -> R<Promotion> {
        let pg = self.pg();
        if !pg.running || pg.primary {
            return Err("not a running replica".into());
        }
        let promotion = Promotion { old_timeline: Some(pg.timeline), switched_at: Some(Lsn(pg.lsn)) };
        pg.history.push((pg.timeline, pg.lsn));
        pg.timeline += 1;
        pg.primary = true;
        pg.upstream = None;
        self.sim.stats.promotions += 1;
        self.sim.check_one_primary();
        Ok(promotion)
    }

    async fn demote(&mut self, mode: DemoteMode) -> R<()> {
        let sim = &mut *self.sim;
        if mode == DemoteMode::Graceful && sim.quiet() && sim.episode.is_none() {
            // The candidate was checked healthy by the leader; it takes over at its next cycle.
            let deadline = sim.now + LOOP_WAIT * 1000 + JITTER_MS + TICK_MS;
            sim.open_episode(EpisodeKind::Switchover, deadline);
        }
        if mode == DemoteMode::Graceful {
            // The shutdown checkpoint reaches the replicas streaming from us before we stop.
            let (tl, lsn) = (sim.nodes[self.i].pg.timeline, sim.nodes[self.i].pg.lsn);
            for n in sim.nodes.iter_mut() {
                if n.alive && n.pg.running && n.pg.upstream == Some(self.i) && n.pg.timeline == tl {
                    n.pg.lsn = lsn;
                }
            }
        }
        let pg = self.pg();
        pg.primary = false;
        pg.upstream = None;
        pg.running = mode != DemoteMode::Offline;
        Ok(())
    }

    async fn follow(&mut self, upstream: &Member) -> R<()> {
        let up = self.sim.idx(&upstream.name);
        self.pg().upstream = up;
        Ok(())
    }

    async fn divergence_facts(&mut self, leader: &Member) -> R<DivergenceFacts> {
        let l = self.running(&leader.name).ok_or_else(|| format!("{} is not reachable", leader.name))?;
        let lp = self.sim.nodes[l].pg.clone();
        let me = self.sim.nodes[self.i].pg.clone();
        Ok(DivergenceFacts {
            // A primary that stopped without a clean shutdown may have written past what it replicated.
            local: LocalEnd { timeline: Some(me.timeline), lsn: Some(Lsn(me.lsn)), clean: !me.primary },
            leader_timeline: lp.primary.then_some(lp.timeline),
            leader_history: Some(lp.history.iter().map(|(t, l)| (*t, Lsn(*l))).collect()),
        })
    }

    async fn rewind(&mut self, leader: &Member) -> R<RewindResult> {
        let l = self.running(&leader.name).ok_or_else(|| format!("{} is not reachable", leader.name))?;
        if self.sim.rewind_fails() {
            return Ok(RewindResult::Impossible { detail: "simulated: no common checkpoint".into() });
        }
        let lp = self.sim.nodes[l].pg.clone();
        let me = self.pg();
        // pg_rewind: take the leader's history up to its current position, then stream from it.
        me.lsn = lp.switchpoint(me.timeline).unwrap_or(0).min(lp.lsn);
        me.timeline = lp.timeline;
        me.history = lp.history.clone();
        me.primary = false;
        self.sim.stats.rewinds += 1;
        Ok(RewindResult::Done)
    }

    async fn wipe_data_dir(&mut self, reason: &WipeReason) -> R<()> {
        let allowed = match reason {
            WipeReason::DivergedWithoutRewind => self.sim.settings.remove_data_directory_on_diverged_timelines,
            WipeReason::RewindImpossible { .. } => self.sim.settings.remove_data_directory_on_rewind_failure,
            WipeReason::Reinitialize => false,
        };
        if !allowed {
            self.sim.fail(&format!("{} wiped for {reason:?}, which the configuration does not allow", self.name()));
        }
        *self.pg() = SimPg::empty();
        self.sim.nodes[self.i].wiped = true;
        self.sim.stats.wipes += 1;
        Ok(())
    }
}
