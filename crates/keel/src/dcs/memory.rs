//! [`KvBackend`] over the in-memory [`MemStore`], on a real monotonic clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_core::store::{MemStore, MemStoreError, Txn};
use keel_core::time::Millis;
use tokio::sync::{Mutex, Notify};

use super::{DcsError, KvBackend, Range, WatchKey};

/// How many change events are kept for watchers that start late.
const EVENT_LOG: usize = 10_000;
/// How often a waiting watcher re-checks the store, so lease expiry (which [`MemStore`] applies lazily) is seen.
const WATCH_TICK: Duration = Duration::from_millis(50);

/// An etcd-like store in this process. Clones share the same store, like clients of one etcd.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    origin: Instant,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    store: MemStore,
    /// Every key's modification revision as of the last operation, to derive change events.
    seen: BTreeMap<String, i64>,
    /// (revision, absolute key) of every change, oldest first, at most [`EVENT_LOG`].
    events: Vec<(i64, String)>,
    /// Events at or below this revision were dropped from the log.
    forgotten_up_to: i64,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        MemoryBackend {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Runs `f` on the store at the current time and records which keys it (or lease expiry) changed.
    async fn with_store<T>(&self, f: impl FnOnce(&mut MemStore, Millis) -> T) -> T {
        let now = self.now();
        let mut st = self.inner.state.lock().await;
        let out = f(&mut st.store, now);
        if st.record_changes(now) {
            self.inner.changed.notify_waiters();
        }
        out
    }
}

impl State {
    /// Diffs the store against `seen`; returns whether anything changed.
    fn record_changes(&mut self, now: Millis) -> bool {
        let current: BTreeMap<String, i64> =
            self.store.range(now, "").into_iter().map(|e| (e.key, e.mod_revision)).collect();
        let rev = self.store.revision();
        let mut changed: Vec<String> =
            current.iter().filter(|(k, r)| self.seen.get(*k) != Some(r)).map(|(k, _)| k.clone()).collect();
        changed.extend(self.seen.keys().filter(|k| !current.contains_key(*k)).cloned());
        if changed.is_empty() {
            return false;
        }
        self.events.extend(changed.into_iter().map(|k| (rev, k)));
        if self.events.len() > EVENT_LOG {
            let drop = self.events.len() - EVENT_LOG;
            self.forgotten_up_to = self.events[drop - 1].0;
            self.events.drain(..drop);
        }
        self.seen = current;
        true
    }

    fn changed_since(&self, keys: &[WatchKey], after: i64) -> bool {
        after < self.forgotten_up_to
            || self.events.iter().rev().take_while(|(r, _)| *r > after).any(|(_, k)| keys.iter().any(|w| w.matches(k)))
    }
}

fn lease_err(e: MemStoreError) -> DcsError {
    match e {
        MemStoreError::LeaseNotFound(id) => DcsError::LeaseNotFound(id),
    }
}

impl KvBackend for MemoryBackend {
    async fn range(&self, prefix: &str) -> Result<Range, DcsError> {
        Ok(self
            .with_store(|s, now| {
                let entries = s.range(now, prefix);
                Range { entries, revision: s.revision() }
            })
            .await)
    }

    async fn txn(&self, txn: &Txn) -> Result<bool, DcsError> {
        self.with_store(|s, now| s.txn(now, txn)).await.map_err(lease_err)
    }

    async fn grant_lease(&self, ttl_secs: u64) -> Result<i64, DcsError> {
        Ok(self.with_store(|s, now| s.grant_lease(now, ttl_secs)).await)
    }

    async fn keepalive(&self, lease: i64) -> Result<(), DcsError> {
        self.with_store(|s, now| s.keepalive(now, lease)).await.map_err(lease_err)
    }

    async fn revoke(&self, lease: i64) -> Result<(), DcsError> {
        self.with_store(|s, now| s.revoke(now, lease)).await;
        Ok(())
    }

    async fn watch(&self, keys: &[WatchKey], after_revision: i64, timeout: Duration) -> Result<bool, DcsError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let after = if after_revision > 0 { after_revision } else { self.with_store(|s, _| s.revision()).await };
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let changed = {
                let now = self.now();
                let mut st = self.inner.state.lock().await;
                if st.record_changes(now) {
                    self.inner.changed.notify_waiters();
                }
                st.changed_since(keys, after)
            };
            if changed {
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let tick = (deadline - now).min(WATCH_TICK);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }
}
