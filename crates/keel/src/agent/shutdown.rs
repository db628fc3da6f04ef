//! SIGTERM/SIGINT: stop PostgreSQL, hand the leader key over, and leave the store.

use std::path::Path;

use anyhow::Result;
use keel_core::time::Millis;
use tracing::{error, info, warn};

use super::publish::write_status;
use super::runtime::Agent;
use crate::clock::unix_ms;
use crate::dcs::KvBackend;
use crate::postgres::{datadir, process::RunAs};

impl<B: KvBackend> Agent<B> {
    pub(super) async fn shutdown(&mut self) -> Result<()> {
        info!("shutting down: stopping PostgreSQL");
        let last = self.local.observe(Millis(unix_ms())).await.0.wal_position();
        let primary = self.last_obs.as_ref().is_some_and(|o| !o.in_recovery);
        if let Err(e) = self.local.stop(primary).await {
            error!("could not stop PostgreSQL: {e:#}");
        }
        if self.exec.holds_leader {
            let data_dir = Path::new(&self.cfg.postgresql.data_dir);
            let last = match datadir::controldata(data_dir, &self.local.bins, &RunAs::current()).await {
                Ok(cd) => Some(cd.checkpoint_lsn),
                Err(_) => last,
            };
            write_status(&self.store, &mut self.last_status, last).await;
            match self.store.delete_leader().await {
                Ok(_) => info!("released the leader key"),
                Err(e) => warn!("could not release the leader key: {e}"),
            }
        }
        if let Err(e) = self.store.revoke_lease().await {
            warn!("could not revoke the store lease: {e}");
        }
        info!("stopped");
        Ok(())
    }
}
