//! The store's operations as data, and a pure in-memory store that executes them.
//!
//! Every write Keel makes to the distributed configuration store is a [`Txn`]: compare clauses, then the
//! operations to run when all compares hold (and, optionally, when they do not). The etcd backend translates a
//! [`Txn`] into an etcd v3 transaction one-to-one; [`MemStore`] executes it against an in-memory map with
//! revisions and leases driven by the caller's clock, for simulations and tests. [`ClusterOps`] builds the
//! transactions for Patroni's keys, so both backends share one definition of the compare-and-swap semantics.

use std::collections::BTreeMap;

use crate::time::Millis;
use crate::view::{cluster_prefix, ClusterKey, RawEntry};

/// A condition checked atomically before a transaction's operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist (etcd: `create_revision == 0`).
    Absent(String),
    /// The key exists with exactly this value.
    ValueIs(String, String),
    /// The key's modification revision is exactly this (etcd: `mod_revision == n`).
    ModRevisionIs(String, i64),
}

/// A write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put a value; `lease` 0 means no lease.
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    Delete {
        key: String,
    },
    /// Delete every key that starts with the prefix.
    DeletePrefix {
        prefix: String,
    },
}

/// An atomic transaction: if every compare holds run `success`, else run `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    /// A transaction with no compare clause (always succeeds).
    pub fn unconditional(ops: Vec<Op>) -> Txn {
        Txn { compare: Vec::new(), success: ops, failure: Vec::new() }
    }
}

/// Builds the transactions for Patroni's key layout under `<namespace><scope>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOps {
    prefix: String,
}

impl ClusterOps {
    pub fn new(namespace: &str, scope: &str) -> Self {
        ClusterOps { prefix: cluster_prefix(namespace, scope) }
    }

    /// The prefix every key of this cluster starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn key(&self, k: &ClusterKey) -> String {
        format!("{}{}", self.prefix, k.relative())
    }

    fn put(&self, k: &ClusterKey, value: impl Into<String>, lease: i64) -> Op {
        Op::Put { key: self.key(k), value: value.into(), lease }
    }

    /// Take the leader key only if nobody holds it.
    pub fn acquire_leader(&self, name: &str, lease: i64) -> Txn {
        let key = self.key(&ClusterKey::Leader);
        Txn {
            compare: vec![Compare::Absent(key)],
            success: vec![self.put(&ClusterKey::Leader, name, lease)],
            failure: vec![],
        }
    }

    /// Re-attach the leader key to our (possibly new) lease, only if it still names us.
    pub fn update_leader(&self, name: &str, lease: i64) -> Txn {
        let key = self.key(&ClusterKey::Leader);
        Txn {
            compare: vec![Compare::ValueIs(key, name.to_string())],
            success: vec![self.put(&ClusterKey::Leader, name, lease)],
            failure: vec![],
        }
    }

    /// Release the leader key only if it names us.
    pub fn delete_leader(&self, name: &str) -> Txn {
        let key = self.key(&ClusterKey::Leader);
        Txn {
            compare: vec![Compare::ValueIs(key.clone(), name.to_string())],
            success: vec![Op::Delete { key }],
            failure: vec![],
        }
    }

    /// Write our member key on our lease.
    pub fn touch_member(&self, name: &str, json: &str, lease: i64) -> Txn {
        Txn::unconditional(vec![self.put(&ClusterKey::Member(name.to_string()), json, lease)])
    }

    /// Create `initialize` if absent (`create_only`) or overwrite it.
    pub fn initialize(&self, sysid: &str, create_only: bool) -> Txn {
        let op = self.put(&ClusterKey::Initialize, sysid, 0);
        if create_only {
            Txn {
                compare: vec![Compare::Absent(self.key(&ClusterKey::Initialize))],
                success: vec![op],
                failure: vec![],
            }
        } else {
            Txn::unconditional(vec![op])
        }
    }

    /// Put a key guarded by its modification revision: `None` means "only if absent".
    pub fn cas(&self, k: &ClusterKey, value: &str, version: Option<i64>) -> Txn {
        let key = self.key(k);
        let compare = match version {
            Some(v) => Compare::ModRevisionIs(key, v),
            None => Compare::Absent(key),
        };
        Txn { compare: vec![compare], success: vec![self.put(k, value, 0)], failure: vec![] }
    }

    /// Delete a key guarded by its modification revision (`None`: unconditionally).
    pub fn delete(&self, k: &ClusterKey, version: Option<i64>) -> Txn {
        let key = self.key(k);
        Txn {
            compare: version.map(|v| vec![Compare::ModRevisionIs(key.clone(), v)]).unwrap_or_default(),
            success: vec![Op::Delete { key }],
            failure: vec![],
        }
    }

    /// Plain put without lease (`status`, `history`, `failsafe`).
    pub fn put_plain(&self, k: &ClusterKey, value: &str) -> Txn {
        Txn::unconditional(vec![self.put(k, value, 0)])
    }

    /// Remove the whole cluster from the store.
    pub fn remove_cluster(&self) -> Txn {
        Txn::unconditional(vec![Op::DeletePrefix { prefix: self.prefix.clone() }])
    }
}

/// Errors of the in-memory store (mirroring etcd's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemStoreError {
    #[error("lease {0} not found (expired or revoked); grant a new one")]
    LeaseNotFound(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    value: String,
    create_revision: i64,
    mod_revision: i64,
    lease: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    ttl_ms: u64,
    expires: Millis,
}

/// An etcd-like key-value store in memory: revisions, leases that expire on the caller's clock, transactions.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    kvs: BTreeMap<String, Kv>,
    leases: BTreeMap<i64, Lease>,
    revision: i64,
    next_lease: i64,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The store's current revision (bumped by every write).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Removes leases whose time ran out, with every key attached to them.
    pub fn expire(&mut self, now: Millis) {
        let dead: Vec<i64> = self.leases.iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| *id).collect();
        if dead.is_empty() {
            return;
        }
        for id in &dead {
            self.leases.remove(id);
        }
        let before = self.kvs.len();
        self.kvs.retain(|_, kv| !dead.contains(&kv.lease));
        if self.kvs.len() != before {
            self.revision += 1;
        }
    }

    pub fn grant_lease(&mut self, now: Millis, ttl_secs: u64) -> i64 {
        self.expire(now);
        self.next_lease += 1;
        let ttl_ms = ttl_secs * 1000;
        self.leases.insert(self.next_lease, Lease { ttl_ms, expires: now.plus_millis(ttl_ms) });
        self.next_lease
    }

    pub fn keepalive(&mut self, now: Millis, lease: i64) -> Result<(), MemStoreError> {
        self.expire(now);
        let l = self.leases.get_mut(&lease).ok_or(MemStoreError::LeaseNotFound(lease))?;
        l.expires = now.plus_millis(l.ttl_ms);
        Ok(())
    }

    pub fn revoke(&mut self, now: Millis, lease: i64) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.expires = Millis(0);
        }
        self.expire(now);
    }

    /// Whether `lease` is alive at `now` (without expiring anything).
    pub fn lease_alive(&self, now: Millis, lease: i64) -> bool {
        self.leases.get(&lease).is_some_and(|l| l.expires > now)
    }

    /// Every key starting with `prefix`, with keys made relative to it.
    pub fn range(&mut self, now: Millis, prefix: &str) -> Vec<RawEntry> {
        self.expire(now);
        self.kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, kv)| RawEntry {
                key: k[prefix.len()..].to_string(),
                value: kv.value.clone(),
                mod_revision: kv.mod_revision,
                lease: kv.lease,
            })
            .collect()
    }

    fn holds(&self, c: &Compare) -> bool {
        match c {
            Compare::Absent(k) => !self.kvs.contains_key(k),
            Compare::ValueIs(k, v) => self.kvs.get(k).is_some_and(|kv| &kv.value == v),
            Compare::ModRevisionIs(k, r) => self.kvs.get(k).map(|kv| kv.mod_revision).unwrap_or(0) == *r,
        }
    }

    /// Runs a transaction; `Ok(true)` when the compares held. A put on an unknown lease fails as etcd does.
    pub fn txn(&mut self, now: Millis, txn: &Txn) -> Result<bool, MemStoreError> {
        self.expire(now);
        let ok = txn.compare.iter().all(|c| self.holds(c));
        let ops = if ok { &txn.success } else { &txn.failure };
        for op in ops {
            if let Op::Put { lease, .. } = op {
                if *lease != 0 && !self.leases.contains_key(lease) {
                    return Err(MemStoreError::LeaseNotFound(*lease));
                }
            }
        }
        if !ops.is_empty() {
            self.revision += 1;
        }
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create_revision = self.kvs.get(key).map(|kv| kv.create_revision).unwrap_or(self.revision);
                    self.kvs.insert(
                        key.clone(),
                        Kv { value: value.clone(), create_revision, mod_revision: self.revision, lease: *lease },
                    );
                }
                Op::Delete { key } => {
                    self.kvs.remove(key);
                }
                Op::DeletePrefix { prefix } => self.kvs.retain(|k, _| !k.starts_with(prefix.as_str())),
            }
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_race_and_lease_expiry() {
        let ops = ClusterOps::new("/service/", "c");
        let mut s = MemStore::new();
        let t0 = Millis(0);
        let l1 = s.grant_lease(t0, 30);
        let l2 = s.grant_lease(t0, 30);
        assert_eq!(s.txn(t0, &ops.acquire_leader("a", l1)), Ok(true));
        assert_eq!(s.txn(t0, &ops.acquire_leader("b", l2)), Ok(false));
        assert_eq!(s.txn(t0, &ops.update_leader("b", l2)), Ok(false));
        assert_eq!(s.txn(t0, &ops.update_leader("a", l1)), Ok(true));
        // b keeps its lease alive, a does not: a's leader key vanishes after 30 s.
        s.keepalive(Millis(20_000), l2).unwrap();
        assert_eq!(s.range(Millis(29_999), ops.prefix()).len(), 1);
        assert!(s.range(Millis(30_000), ops.prefix()).is_empty());
        assert_eq!(s.keepalive(Millis(30_000), l1), Err(MemStoreError::LeaseNotFound(l1)));
        assert_eq!(s.txn(Millis(30_000), &ops.acquire_leader("b", l2)), Ok(true));
        assert_eq!(s.txn(Millis(30_000), &ops.touch_member("a", "{}", l1)), Err(MemStoreError::LeaseNotFound(l1)));
    }

    #[test]
    fn compare_and_swap_by_revision() {
        let ops = ClusterOps::new("service", "c");
        let mut s = MemStore::new();
        let now = Millis(0);
        assert_eq!(s.txn(now, &ops.cas(&ClusterKey::Config, "{}", None)), Ok(true));
        let rev = s.range(now, ops.prefix())[0].mod_revision;
        assert_eq!(s.txn(now, &ops.cas(&ClusterKey::Config, "{\"a\":1}", None)), Ok(false));
        assert_eq!(s.txn(now, &ops.cas(&ClusterKey::Config, "{\"a\":1}", Some(rev))), Ok(true));
        assert_eq!(s.txn(now, &ops.cas(&ClusterKey::Config, "{\"a\":2}", Some(rev))), Ok(false));
        assert_eq!(s.txn(now, &ops.initialize("42", true)), Ok(true));
        assert_eq!(s.txn(now, &ops.initialize("43", true)), Ok(false));
        assert_eq!(s.txn(now, &ops.remove_cluster()), Ok(true));
        assert!(s.range(now, ops.prefix()).is_empty());
    }
}
