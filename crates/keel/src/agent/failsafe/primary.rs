//! The failsafe exchange as the HA loop runs it on a primary whose store is unreachable.

use std::collections::BTreeMap;

use keel_core::dynconfig::DynamicConfig;
use keel_core::lsn::Lsn;

use crate::agent::runtime::Agent;
use crate::dcs::KvBackend;

impl<B: KvBackend> Agent<B> {
    /// Failsafe mode: with the store down, a primary that was the leader asks every member listed in the
    /// `failsafe` key to accept it. Runs only in that situation; when all accepted, each member's reported WAL
    /// position (the `lsn` header).
    pub(in crate::agent) async fn failsafe_exchange(
        &self,
        store_ok: bool,
        pg: &keel_core::ha::PgObservation,
        config: &DynamicConfig,
    ) -> Option<BTreeMap<String, Option<Lsn>>> {
        let was_leader = self.view.leader.as_ref().is_some_and(|l| l.name == self.cfg.name);
        if store_ok || !config.failsafe_mode || !was_leader || !pg.is_running_primary() {
            return None;
        }
        let slots = self.last_status.as_ref().map(|s| s.slots.clone()).unwrap_or_default();
        let body = super::exchange::announcement(&self.cfg.name, &self.conn_url, &self.api_url, &slots);
        let auth = self.cfg.restapi.authentication.as_ref().and_then(|a| match (&a.username, &a.password) {
            (Some(u), Some(p)) => Some((u.as_str(), p.as_str())),
            _ => None,
        });
        super::exchange::confirm(&self.http, &self.cfg.name, self.view.failsafe.as_ref(), &body, auth).await
    }
}
