//! SIGTERM/SIGINT: as `keel_core::ha::shutdown_start` / `after_stop` say — in pause leave PostgreSQL running;
//! otherwise stop it, and hand the leader key over only once it is down.

use std::path::Path;

use anyhow::Result;
use keel_core::fence::Arming;
use keel_core::ha::{after_stop, shutdown_start, ShutdownEnd, ShutdownStart};
use keel_core::time::Millis;
use tracing::{error, info, warn};

use super::publish::write_status;
use super::runtime::Agent;
use crate::clock::unix_ms;
use crate::dcs::KvBackend;
use crate::postgres::{datadir, process::RunAs};

impl<B: KvBackend> Agent<B> {
    pub(super) async fn shutdown(&mut self) -> Result<()> {
        self.store.begin_cycle();
        let paused = self.dynamic_config().pause;
        let still_running = match shutdown_start(paused) {
            ShutdownStart::LeaveRunning => {
                info!("shutting down in maintenance mode: PostgreSQL keeps running and the leader key stays");
                None
            }
            ShutdownStart::StopPostgres => Some(self.stop_postgres().await),
        };
        match after_stop(paused, self.exec.holds_leader, still_running) {
            ShutdownEnd::KeepAll => self.disarm(),
            // The fence stays armed: if PostgreSQL is still writable when the key may expire, it is killed.
            ShutdownEnd::KeepLeaderKey => error!(
                "PostgreSQL may still be running as the primary: not releasing the leader key (it expires with \
                 this node's lease, ttl seconds from the last refresh); stop PostgreSQL by hand"
            ),
            ShutdownEnd::LeaveStore => {
                self.disarm();
                self.revoke_lease().await;
            }
            ShutdownEnd::ReleaseLeader => {
                self.disarm();
                self.release_leader_key().await;
                self.revoke_lease().await;
            }
        }
        info!("stopped");
        Ok(())
    }

    /// Stops PostgreSQL (fast, then immediately if that fails). Whether it still runs afterwards.
    async fn stop_postgres(&mut self) -> bool {
        info!("shutting down: stopping PostgreSQL");
        let primary = self.last_obs.as_ref().is_some_and(|o| !o.in_recovery);
        if let Err(e) = self.local.stop(primary).await {
            error!("could not stop PostgreSQL: {e:#}; trying an immediate stop");
            if let Err(e) = self.local.stop_immediately().await {
                error!("could not stop PostgreSQL immediately: {e:#}");
            }
        }
        self.local.ctl.is_running()
    }

    async fn release_leader_key(&mut self) {
        let data_dir = Path::new(&self.cfg.postgresql.data_dir);
        let last = match datadir::controldata(data_dir, &self.local.bins, &RunAs::current()).await {
            Ok(cd) => Some(cd.checkpoint_lsn),
            Err(_) => self.local.observe(Millis(unix_ms())).await.0.wal_position(),
        };
        write_status(&self.store, &mut self.last_status, last).await;
        match self.store.delete_leader().await {
            Ok(_) => info!("released the leader key"),
            Err(e) => warn!("could not release the leader key: {e}"),
        }
    }

    fn disarm(&mut self) {
        self.fence.set(Arming::Disarmed);
        self.watchdog.disable();
    }

    async fn revoke_lease(&mut self) {
        if let Err(e) = self.store.revoke_lease().await {
            warn!("could not revoke the store lease: {e}");
        }
    }
}
