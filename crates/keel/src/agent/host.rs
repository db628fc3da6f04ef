//! The agent's [`Host`]: the effects `keel_core::exec` asks for, carried out on the store and the local
//! PostgreSQL. Nothing here decides; each method is one effect and its log line.

use std::sync::{Arc, RwLock};

use anyhow::{Error, Result};
use keel_core::divergence::{DivergenceFacts, WipeReason};
use keel_core::exec::{Event, Host, RewindResult};
use keel_core::fence::{self, FenceInput};
use keel_core::ha::{DemoteMode, PromoteCause};
use keel_core::lsn::Lsn;
use keel_core::member_state::MemberState;
use keel_core::time::Millis;
use keel_core::timeline_history::Promotion;
use keel_core::view::{HistoryEntry, Member, Status};
use tracing::{info, warn};

use super::failsafe::FailsafeState;
use super::local::Local;
use super::publish::write_status;
use super::slot_manager::SlotManager;
use crate::dcs::{ClusterStore, KvBackend};
use crate::fence::Fence;
use crate::status::NodeStatus;

/// The parts of the agent an executed action touches, borrowed for one execution.
pub(super) struct AgentHost<'a, B: KvBackend> {
    /// The cycle's clock reading.
    pub now: Millis,
    pub store: &'a ClusterStore<B>,
    pub local: &'a mut Local,
    pub slots: &'a mut SlotManager,
    pub status: &'a Arc<RwLock<NodeStatus>>,
    pub failsafe: &'a FailsafeState,
    pub bootstrap_dcs: &'a serde_json::Value,
    /// The `status` this node last published as leader.
    pub last_status: &'a mut Option<Status>,
    /// Armed as soon as the leader key is acquired or refreshed, before anything else can block.
    pub fence: &'a mut Fence,
    pub ttl_secs: u64,
    pub safety_margin_secs: u64,
    pub paused: bool,
}

impl<B: KvBackend> AgentHost<'_, B> {
    fn update_status(&self, f: impl FnOnce(&mut NodeStatus)) {
        if let Ok(mut st) = self.status.write() {
            f(&mut st);
        }
    }

    /// The key was just acquired or refreshed: push the fence's deadline out.
    fn arm_fence(&mut self) {
        let input = FenceInput {
            holds_leader: true,
            may_write: true,
            paused: self.paused,
            refreshed: Some(self.now),
            ttl_secs: self.ttl_secs,
            safety_margin_secs: self.safety_margin_secs,
        };
        self.fence.set(fence::arming(&input));
    }
}

impl<B: KvBackend> Host for AgentHost<'_, B> {
    type Error = Error;

    fn now(&self) -> Millis {
        self.now
    }

    fn set_state(&mut self, state: MemberState) {
        self.update_status(|st| st.state = state);
    }

    fn event(&mut self, event: Event) {
        if event.is_warning() {
            warn!("{event}");
        } else {
            info!("{event}");
        }
    }

    async fn take_initialize(&mut self) -> Result<bool> {
        Ok(self.store.initialize("", true).await?)
    }

    async fn write_initialize(&mut self, sysid: &str) -> Result<()> {
        self.store.initialize(sysid, false).await?;
        Ok(())
    }

    async fn write_config(&mut self) -> Result<()> {
        self.store.set_config(self.bootstrap_dcs, Some(0)).await?;
        Ok(())
    }

    async fn acquire_leader(&mut self) -> Result<bool> {
        let won = self.store.acquire_leader().await?;
        if won {
            self.arm_fence();
        }
        Ok(won)
    }

    async fn update_leader(&mut self) -> Result<bool> {
        let kept = self.store.update_leader().await?;
        if kept {
            self.arm_fence();
        }
        Ok(kept)
    }

    async fn release_leader(&mut self, last_lsn: Option<Lsn>) -> Result<()> {
        write_status(self.store, self.last_status, last_lsn).await;
        self.store.delete_leader().await?;
        Ok(())
    }

    async fn clear_failover(&mut self, version: i64) -> Result<()> {
        self.store.clear_failover(Some(version)).await?;
        Ok(())
    }

    async fn write_history(&mut self, history: &[HistoryEntry]) -> Result<()> {
        Ok(self.store.set_history(history).await?)
    }

    async fn bootstrap(&mut self) -> Result<()> {
        self.local.bootstrap().await
    }

    async fn create_replica(&mut self, source: &Member, leader: Option<&Member>) -> Result<()> {
        self.local.create_replica(source, leader).await
    }

    async fn start_replica(&mut self, upstream: Option<&Member>) -> Result<()> {
        self.local.start_replica(upstream).await
    }

    async fn hold_commits_for_sync(&mut self, names: &str) -> Result<()> {
        info!("synchronous_mode_strict: setting synchronous_standby_names to '{names}' before promoting");
        self.local.set_synchronous_standby_names_now(names).await
    }

    async fn promote(&mut self, cause: PromoteCause) -> Result<Promotion> {
        info!("promoting PostgreSQL ({cause:?})");
        self.failsafe.reset();
        let promotion = self.local.promote().await?;
        self.slots.promoted(promotion.switched_at.filter(|l| *l != Lsn::ZERO));
        Ok(promotion)
    }

    async fn demote(&mut self, mode: DemoteMode) -> Result<()> {
        info!("demoting PostgreSQL ({mode:?})");
        // Peers probing us during the leader race must not see a running primary any more, nor may load
        // balancers: /primary answers 503 from here on (the next publish reports the new role).
        self.update_status(|st| st.role = None);
        self.local.demote(mode).await
    }

    async fn follow(&mut self, upstream: &Member) -> Result<()> {
        self.local.follow(upstream).await
    }

    async fn divergence_facts(&mut self, leader: &Member) -> Result<DivergenceFacts> {
        self.local.divergence_facts(leader).await
    }

    async fn rewind(&mut self, leader: &Member) -> Result<RewindResult> {
        self.local.rewind(leader).await
    }

    async fn wipe_data_dir(&mut self, _reason: &WipeReason) -> Result<()> {
        self.local.wipe_data_dir().await
    }
}
