//! Patroni's DCS semantics, implemented once on top of any [`KvBackend`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use keel_core::store::{ClusterOps, Txn};
use keel_core::view::{ClusterKey, ClusterView, FailoverRequest, HistoryEntry, LeaderKey, Status, SyncState};
use serde_json::Value;
use tracing::{debug, warn};

use super::follow::{self, Follower};
use super::{DcsError, KvBackend, Range, WatchKey};

/// A lease refreshed this recently counts as just refreshed (the leader's refresh right after the cycle's).
const LEASE_FRESH: Duration = Duration::from_secs(1);

/// One node's view of one cluster in the store: its lease, the leader race and the writes Patroni makes.
///
/// Methods take `&self` (the small amount of state is behind a mutex that is never held across an await), so the
/// HA loop and, say, the REST API can share one store.
#[derive(Debug)]
pub struct ClusterStore<B: KvBackend> {
    backend: B,
    ops: ClusterOps,
    name: String,
    ttl: u64,
    state: Mutex<State>,
    /// The cluster's keys as the long-lived watch reports them (see [`ClusterStore::follow`]).
    follower: Arc<Follower>,
    follow_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<B: KvBackend> Drop for ClusterStore<B> {
    fn drop(&mut self) {
        if let Some(t) = self.follow_task.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            t.abort();
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Our lease, once granted.
    lease: Option<i64>,
    /// The store revision of the last [`ClusterStore::load`].
    revision: i64,
    /// The leader key as last loaded or written by us.
    leader: Option<LeaderKey>,
    /// Our member key's content and lease, as last loaded or written.
    member: Option<(Value, i64)>,
    /// The `status` value we last wrote.
    status: Option<String>,
    /// We wrote since the last [`ClusterStore::load`]: the next one reads the store, not the watch's cache.
    dirty: bool,
    /// When our lease was last refreshed.
    refreshed: Option<Instant>,
    /// Set by [`ClusterStore::begin_cycle`] (the HA loop's store): a call the store did not answer makes the
    /// cycle's later calls fail at once, so one outage costs a cycle one timeout, not one per call.
    per_cycle: bool,
    /// The store did not answer a call since the last [`ClusterStore::begin_cycle`].
    unanswered: bool,
}

impl<B: KvBackend> ClusterStore<B> {
    /// The store of member `name` in cluster `scope` under `namespace` (Patroni default `/service/`), whose
    /// lease lives `ttl` seconds.
    pub fn new(backend: B, namespace: &str, scope: &str, name: &str, ttl: u64) -> Self {
        ClusterStore {
            backend,
            ops: ClusterOps::new(namespace, scope),
            name: name.to_string(),
            ttl,
            state: Mutex::new(State::default()),
            follower: Arc::new(Follower::default()),
            follow_task: Mutex::new(None),
        }
    }

    /// Keeps one watch on the cluster prefix for this store's lifetime (a background task; call it inside the
    /// runtime): [`load`](Self::load) then reads the watch's cache instead of sending a range request, and
    /// [`watch_keys`](Self::watch_keys) waits on it. While the watch is down both fall back to requests.
    pub fn follow(&self)
    where
        B: Clone,
    {
        let mut task = self.follow_task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.is_none() {
            let prefix = self.ops.prefix().to_string();
            *task = Some(follow::spawn(self.backend.clone(), prefix, self.follower.clone()));
        }
    }

    /// Whether the long-lived watch is established (see [`follow`](Self::follow)).
    pub fn following(&self) -> bool {
        self.follower.is_live()
    }

    /// Runs a write; the next [`load`](Self::load) reads the store so that it sees it.
    async fn txn(&self, txn: &Txn) -> Result<bool, DcsError> {
        self.state().dirty = true;
        self.call("txn", self.backend.txn(txn)).await
    }

    /// Starts an HA cycle: the store is asked again, and from now on a call it does not answer makes the later
    /// calls of this cycle fail at once ([`DcsError::NotTried`]). Without this, a cycle that found the store
    /// answering and then lost it would wait out one timeout per write (leader key, status, member key) and could
    /// overrun the fence's deadline before the next cycle even notices the outage.
    pub fn begin_cycle(&self) {
        let mut st = self.state();
        st.per_cycle = true;
        st.unanswered = false;
    }

    /// One call to the store, unless it already failed to answer in this cycle.
    async fn call<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T, DcsError>>,
    ) -> Result<T, DcsError> {
        if self.state().unanswered {
            return Err(DcsError::NotTried { op });
        }
        let result = call.await;
        if let Err(e) = &result {
            if e.is_unavailable() {
                let mut st = self.state();
                st.unanswered = st.per_cycle;
            }
        }
        result
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn ops(&self) -> &ClusterOps {
        &self.ops
    }

    /// The cluster prefix, e.g. `/service/batman/`.
    pub fn prefix(&self) -> &str {
        self.ops.prefix()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ttl(&self) -> u64 {
        self.ttl
    }

    /// Our current lease, if one was granted (it may have expired since).
    pub fn lease(&self) -> Option<i64> {
        self.state().lease
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the whole cluster. Values that do not parse are logged and tolerated, never an error.
    /// With [`follow`](Self::follow), the keys come from the watch's cache when it is live, has reached the last
    /// read's revision, and this store wrote nothing since; otherwise from a range request.
    pub async fn load(&self) -> Result<ClusterView, DcsError> {
        let cached = {
            let st = self.state();
            if st.dirty {
                None
            } else {
                self.follower.snapshot(st.revision)
            }
        };
        let range: Range = match cached {
            Some(r) => r,
            None => {
                let r = self.call("range", self.backend.range(self.ops.prefix())).await?;
                self.follower.absorb(&r);
                r
            }
        };
        let view = ClusterView::from_entries(range.entries);
        for note in &view.notes {
            warn!(prefix = self.ops.prefix(), "ignoring part of a store value: {note}");
        }
        let mut st = self.state();
        st.revision = range.revision;
        st.dirty = false;
        st.leader = view.leader.clone();
        st.member = view.members.get(&self.name).map(|m| (m.data.clone(), m.lease));
        Ok(view)
    }

    /// Our lease: the current one, or a newly granted one with TTL `ttl`.
    pub async fn ensure_lease(&self) -> Result<i64, DcsError> {
        if let Some(l) = self.state().lease {
            return Ok(l);
        }
        self.grant().await
    }

    async fn grant(&self) -> Result<i64, DcsError> {
        let lease = self.call("grant", self.backend.grant_lease(self.ttl)).await?;
        debug!(lease, ttl = self.ttl, "granted a new lease");
        let mut st = self.state();
        st.lease = Some(lease);
        st.refreshed = Some(Instant::now());
        // Keys on the old lease are gone (or will be): write them again.
        st.member = None;
        Ok(lease)
    }

    /// Forgets `lease` after the store said it does not exist.
    fn lost(&self, lease: i64) {
        let mut st = self.state();
        if st.lease == Some(lease) || lease == 0 {
            warn!(lease, "our lease expired or was revoked; granting a new one (the member key is rewritten)");
            st.lease = None;
            st.member = None;
        }
    }

    /// Keeps our lease alive; a lost lease is replaced by a new one. Returns the lease in use.
    pub async fn refresh_lease(&self) -> Result<i64, DcsError> {
        let Some(lease) = self.state().lease else { return self.grant().await };
        match self.call("keepalive", self.backend.keepalive(lease)).await {
            Ok(()) => {
                self.state().refreshed = Some(Instant::now());
                Ok(lease)
            }
            Err(DcsError::LeaseNotFound(_)) => {
                self.lost(lease);
                self.grant().await
            }
            Err(e) => Err(e),
        }
    }

    /// Runs a transaction that puts keys on our lease; when the lease is gone, re-grants it and retries once.
    async fn txn_with_lease(&self, build: impl Fn(i64) -> Txn) -> Result<(bool, i64), DcsError> {
        let lease = self.ensure_lease().await?;
        match self.txn(&build(lease)).await {
            Ok(ok) => Ok((ok, lease)),
            Err(DcsError::LeaseNotFound(l)) => {
                self.lost(if l == 0 { lease } else { l });
                let lease = self.ensure_lease().await?;
                Ok((self.txn(&build(lease)).await?, lease))
            }
            Err(e) => Err(e),
        }
    }

    fn remember_leader(&self, lease: i64) {
        self.state().leader = Some(LeaderKey { name: self.name.clone(), version: 0, lease });
    }

    /// Takes the leader key if nobody holds it. `Ok(false)`: someone else does.
    pub async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let (ok, lease) = self.txn_with_lease(|l| self.ops.acquire_leader(&self.name, l)).await?;
        if ok {
            self.remember_leader(lease);
        }
        Ok(ok)
    }

    /// Keeps our leadership: refreshes the lease and, when the leader key (as last loaded) is on another lease
    /// than ours, moves it to ours if it still names us, or takes it if it vanished (Patroni's etcd3
    /// `_update_leader`). `Ok(false)`: the key names someone else, we are no longer the leader.
    /// A refresh that succeeded less than a second ago (the cycle's own) is not repeated.
    pub async fn update_leader(&self) -> Result<bool, DcsError> {
        let fresh = {
            let st = self.state();
            st.lease.filter(|_| st.refreshed.is_some_and(|t| t.elapsed() < LEASE_FRESH))
        };
        let lease = match fresh {
            Some(l) => l,
            None => self.refresh_lease().await?,
        };
        let attached = self.state().leader.as_ref().is_some_and(|l| l.name == self.name && l.lease == lease);
        if attached {
            return Ok(true);
        }
        let (mut ok, mut lease) = self.txn_with_lease(|l| self.ops.update_leader(&self.name, l)).await?;
        if !ok {
            (ok, lease) = self.txn_with_lease(|l| self.ops.acquire_leader(&self.name, l)).await?;
        }
        if ok {
            self.remember_leader(lease);
        }
        Ok(ok)
    }

    /// Releases the leader key if it names us. `Ok(false)`: it did not.
    pub async fn delete_leader(&self) -> Result<bool, DcsError> {
        let ok = self.txn(&self.ops.delete_leader(&self.name)).await?;
        if ok {
            self.state().leader = None;
        }
        Ok(ok)
    }

    /// Publishes our member key on our lease, unless the store already holds this value on this lease.
    /// `Ok(true)` when it was written.
    pub async fn touch_member(&self, data: &Value) -> Result<bool, DcsError> {
        let lease = self.ensure_lease().await?;
        if self.state().member.as_ref().is_some_and(|(v, l)| v == data && *l == lease) {
            return Ok(false);
        }
        let json = data.to_string();
        let (_, lease) = self.txn_with_lease(|l| self.ops.touch_member(&self.name, &json, l)).await?;
        self.state().member = Some((data.clone(), lease));
        Ok(true)
    }

    /// Writes the `initialize` key: only if absent (`create_only`, the bootstrap race), or overwriting.
    pub async fn initialize(&self, sysid: &str, create_only: bool) -> Result<bool, DcsError> {
        self.txn(&self.ops.initialize(sysid, create_only)).await
    }

    /// Puts a permanent key: guarded by its modification revision when `version` is given (compare-and-swap;
    /// `Some(0)` means "only if absent"), unconditionally otherwise (Patroni's `mod_revision=None`).
    async fn put_versioned(&self, key: &ClusterKey, value: &str, version: Option<i64>) -> Result<bool, DcsError> {
        let txn = match version {
            Some(_) => self.ops.cas(key, value, version),
            None => self.ops.put_plain(key, value),
        };
        self.txn(&txn).await
    }

    /// Writes the dynamic configuration. `Ok(false)`: `version` is stale.
    pub async fn set_config(&self, config: &Value, version: Option<i64>) -> Result<bool, DcsError> {
        self.put_versioned(&ClusterKey::Config, &config.to_string(), version).await
    }

    /// Requests a switchover or failover. `Ok(false)`: `version` is stale.
    pub async fn set_failover(&self, request: &FailoverRequest, version: Option<i64>) -> Result<bool, DcsError> {
        self.put_versioned(&ClusterKey::Failover, &request.to_json().to_string(), version).await
    }

    /// Clears the failover key the way Patroni does (writes `{}`). `Ok(false)`: `version` is stale.
    pub async fn clear_failover(&self, version: Option<i64>) -> Result<bool, DcsError> {
        self.put_versioned(&ClusterKey::Failover, "{}", version).await
    }

    /// Writes the synchronous replication state. `Ok(false)`: `version` is stale.
    pub async fn set_sync(&self, sync: &SyncState, version: Option<i64>) -> Result<bool, DcsError> {
        self.put_versioned(&ClusterKey::Sync, &sync.to_json().to_string(), version).await
    }

    /// Deletes the sync key (guarded by `version` when given). `Ok(false)`: `version` is stale.
    pub async fn delete_sync(&self, version: Option<i64>) -> Result<bool, DcsError> {
        self.txn(&self.ops.delete(&ClusterKey::Sync, version)).await
    }

    /// Publishes the leader's status, unless it equals what we last wrote. `Ok(true)` when written.
    pub async fn set_status(&self, status: &Status) -> Result<bool, DcsError> {
        let json = status.to_json().to_string();
        if self.state().status.as_deref() == Some(json.as_str()) {
            return Ok(false);
        }
        self.txn(&self.ops.put_plain(&ClusterKey::Status, &json)).await?;
        self.state().status = Some(json);
        Ok(true)
    }

    /// Writes the timeline history.
    pub async fn set_history(&self, history: &[HistoryEntry]) -> Result<(), DcsError> {
        let json = Value::Array(history.iter().map(HistoryEntry::to_json).collect()).to_string();
        self.txn(&self.ops.put_plain(&ClusterKey::History, &json)).await.map(|_| ())
    }

    /// Writes the failsafe member list (`{name: api_url}`).
    pub async fn set_failsafe(&self, members: &BTreeMap<String, String>) -> Result<(), DcsError> {
        let json = serde_json::to_string(members).unwrap_or_else(|_| "{}".to_string());
        self.txn(&self.ops.put_plain(&ClusterKey::Failsafe, &json)).await.map(|_| ())
    }

    /// Deletes every key of the cluster.
    pub async fn remove_cluster(&self) -> Result<(), DcsError> {
        self.txn(&self.ops.remove_cluster()).await?;
        let mut st = self.state();
        st.leader = None;
        st.member = None;
        st.status = None;
        Ok(())
    }

    /// Revokes our lease (our member key and, if we lead, the leader key vanish at once).
    pub async fn revoke_lease(&self) -> Result<(), DcsError> {
        let lease = self.state().lease.take();
        if let Some(l) = lease {
            self.state().dirty = true;
            self.backend.revoke(l).await?;
        }
        self.state().member = None;
        Ok(())
    }

    /// Waits until the leader key changes after the last [`load`](Self::load), or `timeout` elapses.
    /// `Ok(true)` on a change.
    ///
    /// Only the leader key is watched, as Patroni's etcd3 does: the leader rewrites `status` and every member
    /// its own key each cycle, and waking on those would make every loop run early.
    pub async fn watch(&self, timeout: Duration) -> Result<bool, DcsError> {
        self.watch_keys(&[ClusterKey::Leader], timeout).await
    }

    /// Waits until one of `keys` changes after the last [`load`](Self::load), or `timeout` elapses.
    ///
    /// With [`follow`](Self::follow) this waits on the long-lived watch (no request); while it is down, on a
    /// watch opened for this call.
    pub async fn watch_keys(&self, keys: &[ClusterKey], timeout: Duration) -> Result<bool, DcsError> {
        let after = self.state().revision;
        let relative: Vec<String> = keys.iter().map(|k| k.relative()).collect();
        let deadline = Instant::now() + timeout;
        if let Some(changed) = self.follower.wait(&relative, after, timeout).await {
            return Ok(changed);
        }
        let keys: Vec<WatchKey> = keys.iter().map(|k| WatchKey::Key(self.ops.key(k))).collect();
        self.backend.watch(&keys, after, deadline.saturating_duration_since(Instant::now())).await
    }

    /// Waits until any key of the cluster changes after the last [`load`](Self::load), or `timeout` elapses.
    pub async fn watch_prefix(&self, timeout: Duration) -> Result<bool, DcsError> {
        let after = self.state().revision;
        self.backend.watch(&[WatchKey::Prefix(self.ops.prefix().to_string())], after, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{Backend, EtcdBackend, MemoryBackend};

    fn assert_send<T: Send>(_: &T) {}

    /// The agent spawns store calls on a multi-threaded runtime: no state guard may be held across an await.
    #[allow(dead_code)]
    fn futures_are_send<B: KvBackend>(s: &ClusterStore<B>) {
        assert_send(&s.load());
        assert_send(&s.ensure_lease());
        assert_send(&s.refresh_lease());
        assert_send(&s.acquire_leader());
        assert_send(&s.update_leader());
        assert_send(&s.delete_leader());
        assert_send(&s.touch_member(&Value::Null));
        assert_send(&s.initialize("", true));
        assert_send(&s.set_status(&Status::default()));
        assert_send(&s.revoke_lease());
        assert_send(&s.remove_cluster());
        assert_send(&s.watch(Duration::ZERO));
    }

    #[allow(dead_code)]
    fn both_backends(e: &ClusterStore<EtcdBackend>, m: &ClusterStore<MemoryBackend>, b: &ClusterStore<Backend>) {
        futures_are_send(e);
        futures_are_send(m);
        futures_are_send(b);
    }

    #[tokio::test]
    async fn lost_lease_is_regranted_on_memory_backend() {
        let s = ClusterStore::new(MemoryBackend::new(), "service", "c", "a", 30);
        let l1 = s.ensure_lease().await.unwrap();
        assert_eq!(s.ensure_lease().await.unwrap(), l1);
        assert_eq!(s.refresh_lease().await.unwrap(), l1);
        s.backend().revoke(l1).await.unwrap();
        let l2 = s.refresh_lease().await.unwrap();
        assert_ne!(l1, l2);
        assert_eq!(s.lease(), Some(l2));
    }
}
