//! One watch on the cluster prefix for a store's lifetime: a cache of the cluster's keys (so an HA cycle reads
//! the cluster without a request) and the wake-ups of the HA loop when a key it cares about changes.
//!
//! A background task ([`spawn`]) feeds [`Follower`] from [`KvBackend::follow_prefix`]; when the watch fails the
//! cache is marked not live (readers fall back to a range request) and the task starts again after a back-off.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keel_core::view::RawEntry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{KvBackend, Range, WatchUpdate};

/// How many recent changes are remembered for wake-ups.
const LOG: usize = 256;
/// Back-off between attempts to re-establish a failed watch.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// A watch that lasted this long resets the back-off.
const STABLE: Duration = Duration::from_secs(30);

/// The cluster's keys as the watch last reported them.
#[derive(Debug)]
pub struct Follower {
    cache: Mutex<Cache>,
    /// Bumped on every update (and when the watch is lost), to wake waiters.
    generation: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Cache {
    /// The watch is established and the entries are current up to `revision`.
    live: bool,
    entries: BTreeMap<String, RawEntry>,
    revision: i64,
    /// The revision of the last snapshot: changes at or below it are already in `entries`.
    floor: i64,
    /// (revision, relative key) of recent changes, oldest first.
    log: VecDeque<(i64, String)>,
    /// Changes at or below this revision were dropped from `log`.
    forgotten_up_to: i64,
}

impl Default for Follower {
    fn default() -> Self {
        Follower { cache: Mutex::new(Cache::default()), generation: watch::Sender::new(0) }
    }
}

impl Follower {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies what the watch reported.
    pub fn apply(&self, update: WatchUpdate) {
        {
            let mut c = self.cache();
            match update {
                WatchUpdate::Snapshot(range) => {
                    let new: BTreeMap<String, RawEntry> =
                        range.entries.into_iter().map(|e| (e.key.clone(), e)).collect();
                    let mut changed: Vec<String> = new
                        .iter()
                        .filter(|(k, e)| c.entries.get(*k).map(|o| o.mod_revision) != Some(e.mod_revision))
                        .map(|(k, _)| k.clone())
                        .collect();
                    changed.extend(c.entries.keys().filter(|k| !new.contains_key(*k)).cloned());
                    c.entries = new;
                    c.revision = c.revision.max(range.revision);
                    c.floor = range.revision;
                    c.live = true;
                    let rev = c.revision;
                    c.record(rev, changed);
                }
                WatchUpdate::Changes { revision, changes } => {
                    let mut keys = Vec::with_capacity(changes.len());
                    for (key, rev, entry) in changes {
                        if rev <= c.floor {
                            continue;
                        }
                        match entry {
                            Some(e) => c.entries.insert(key.clone(), e),
                            None => c.entries.remove(&key),
                        };
                        keys.push(key);
                    }
                    c.revision = c.revision.max(revision);
                    c.record(revision, keys);
                }
            }
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// A range read made at a later revision than the cache's, while the watch is live: the cache takes it as
    /// its new starting point (changes the watch reports up to its revision are then skipped), so that loads
    /// after it can come from the cache again even when other keys of the store moved the revision on.
    pub fn absorb(&self, range: &Range) {
        let newer = {
            let c = self.cache();
            c.live && range.revision > c.revision
        };
        if newer {
            self.apply(WatchUpdate::Snapshot(range.clone()));
        }
    }

    /// The watch failed: the cache may miss changes from now on.
    pub fn lost(&self) {
        self.cache().live = false;
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn is_live(&self) -> bool {
        self.cache().live
    }

    /// The cached keys, when the watch is live and the cache has reached `min_revision`.
    pub fn snapshot(&self, min_revision: i64) -> Option<Range> {
        let c = self.cache();
        (c.live && c.revision >= min_revision)
            .then(|| Range { entries: c.entries.values().cloned().collect(), revision: c.revision })
    }

    /// Waits until one of `keys` (relative) changes after revision `after`, or `timeout` elapses.
    /// `Some(true)` on a change, `Some(false)` on timeout, `None` when the watch is not live.
    pub async fn wait(&self, keys: &[String], after: i64, timeout: Duration) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.generation.subscribe();
        loop {
            {
                let c = self.cache();
                if !c.live {
                    return None;
                }
                if c.changed_since(keys, after) {
                    return Some(true);
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`.
                Ok(Err(_)) | Err(_) => return Some(false),
            }
        }
    }
}

impl Cache {
    fn record(&mut self, revision: i64, keys: Vec<String>) {
        self.log.extend(keys.into_iter().map(|k| (revision, k)));
        while self.log.len() > LOG {
            if let Some((r, _)) = self.log.pop_front() {
                self.forgotten_up_to = self.forgotten_up_to.max(r);
            }
        }
    }

    fn changed_since(&self, keys: &[String], after: i64) -> bool {
        after < self.forgotten_up_to
            || self.log.iter().rev().take_while(|(r, _)| *r > after).any(|(_, k)| keys.iter().any(|w| w == k))
    }
}

/// Keeps `follower` fed from a watch on `prefix` until the returned task is aborted.
pub fn spawn<B: KvBackend + Clone>(backend: B, prefix: String, follower: Arc<Follower>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = tokio::time::Instant::now();
            let fed = follower.clone();
            let sink = move |u: WatchUpdate| fed.apply(u);
            let result = backend.follow_prefix(&prefix, &sink).await;
            let was_live = follower.is_live();
            follower.lost();
            if started.elapsed() >= STABLE {
                backoff = BACKOFF_MIN;
            }
            match result {
                Err(e) if was_live => warn!("the watch on {prefix} failed, re-establishing it: {e}"),
                Err(e) => debug!("the watch on {prefix} failed again: {e}"),
                Ok(()) => debug!("the watch on {prefix} ended, re-establishing it"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, rev: i64) -> RawEntry {
        RawEntry { key: key.into(), value: format!("v{rev}"), mod_revision: rev, lease: 0 }
    }

    #[tokio::test]
    async fn cache_follows_snapshots_and_changes_and_wakes_on_watched_keys() {
        let f = Follower::default();
        assert!(f.snapshot(0).is_none(), "not live before the first snapshot");
        f.apply(WatchUpdate::Snapshot(Range { entries: vec![entry("leader", 3), entry("members/a", 4)], revision: 5 }));
        assert_eq!(f.snapshot(5).map(|r| r.entries.len()), Some(2));
        assert!(f.snapshot(6).is_none(), "behind the last read");
        let leader = ["leader".to_string()];
        assert_eq!(f.wait(&leader, 5, Duration::from_millis(20)).await, Some(false));
        f.apply(WatchUpdate::Changes {
            revision: 6,
            changes: vec![("members/a".into(), 6, Some(entry("members/a", 6)))],
        });
        assert_eq!(f.wait(&leader, 5, Duration::from_millis(20)).await, Some(false), "member keys do not wake");
        f.apply(WatchUpdate::Changes { revision: 7, changes: vec![("leader".into(), 7, None)] });
        assert_eq!(f.wait(&leader, 5, Duration::from_millis(20)).await, Some(true));
        assert_eq!(f.wait(&leader, 7, Duration::from_millis(20)).await, Some(false));
        let r = f.snapshot(7).unwrap_or_default();
        assert_eq!(r.entries.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["members/a"]);
        f.lost();
        assert!(f.snapshot(0).is_none());
        assert_eq!(f.wait(&leader, 0, Duration::from_millis(20)).await, None);
        // A new snapshot after a gap reports the keys that differ.
        f.apply(WatchUpdate::Snapshot(Range { entries: vec![entry("leader", 9)], revision: 9 }));
        assert_eq!(f.wait(&leader, 7, Duration::from_millis(20)).await, Some(true));
        // A range read at revision 12 (other keys of the store moved it) becomes the cache's starting point;
        // changes the watch reports late, at or below it, are already in it and skipped.
        f.absorb(&Range { entries: vec![entry("leader", 11)], revision: 12 });
        assert_eq!(f.snapshot(12).map(|r| r.entries[0].mod_revision), Some(11));
        f.apply(WatchUpdate::Changes { revision: 12, changes: vec![("leader".into(), 10, None)] });
        assert_eq!(f.snapshot(12).map(|r| r.entries.len()), Some(1), "a stale deletion was applied");
        f.apply(WatchUpdate::Changes { revision: 13, changes: vec![("leader".into(), 13, None)] });
        assert_eq!(f.snapshot(13).map(|r| r.entries.len()), Some(0));
    }
}
