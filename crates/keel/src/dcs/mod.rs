//! The distributed configuration store (DCS): Patroni's etcd v3 key layout, implemented once on top of a small
//! key-value backend trait.
//!
//! - [`KvBackend`] is the handful of etcd v3 calls Keel needs (range, txn, leases, watch). [`EtcdBackend`] talks
//!   to a real etcd; [`MemoryBackend`] runs [`keel_core::store::MemStore`] on a real monotonic clock for tests and
//!   single-process simulations.
//! - [`Backend`] is the one seam: the backend the configuration names ([`backend_from_config`]); everything
//!   outside `dcs/` uses [`Store`] and never names a particular store.
//! - [`follow`] keeps one watch on the cluster prefix for a store's lifetime (a cache of the keys that cycles
//!   read instead of a range request each time, and the wake-ups of the HA loop).
//! - [`ClusterStore`] implements Patroni's semantics (one lease per node, leader race, compare-and-swap writes,
//!   skipped redundant writes) on top of any backend, using the transactions built by
//!   [`keel_core::store::ClusterOps`].

mod backend;
mod cluster_store;
mod etcd;
mod etcd_tls;
mod follow;
mod memory;

use std::future::Future;
use std::time::Duration;

use keel_core::store::Txn;
use keel_core::view::RawEntry;

pub use backend::{backend_from_config, store_from_config, Backend, Store};
pub use cluster_store::ClusterStore;
pub use etcd::{EtcdBackend, EtcdConfig};
pub use etcd_tls::{EtcdSecurity, EtcdTls, EtcdUser};
pub use memory::MemoryBackend;

/// Why a store call failed. Every message names what failed and what to do about it; `store` says which store
/// and where (e.g. `etcd at http://10.0.0.1:2379`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DcsError {
    #[error(
        "the store ({store}) did not answer {op} within {timeout:?}; check that it is running and not overloaded, \
         or raise retry_timeout"
    )]
    Timeout { store: String, op: &'static str, timeout: Duration },
    #[error(
        "cannot reach the store ({store}) for {op}: {detail}; check the store hosts in the configuration and that \
         the store is running"
    )]
    Unreachable { store: String, op: &'static str, detail: String },
    #[error("{op} not tried: the store did not answer an earlier call in this cycle; the next cycle asks it again")]
    NotTried { op: &'static str },
    #[error(
        "TLS with the store ({store}) failed for {op}: {detail}; check etcd3.cacert (the CA that signed etcd's \
         certificate), etcd3.cert and etcd3.key (the client certificate etcd trusts) and etcd3.protocol"
    )]
    Tls { store: String, op: &'static str, detail: String },
    #[error(
        "the store ({store}) refused the credentials of user {user:?} for {op}: {detail}; check etcd3.username and \
         etcd3.password, and that the user's role may read and write the cluster's prefix"
    )]
    Auth { store: String, op: &'static str, user: Option<String>, detail: String },
    #[error("store lease {0} not found (expired or revoked); a new lease has to be granted")]
    LeaseNotFound(i64),
    #[error("the store ({store}) rejected {op}: {detail}; check the store's log and its version")]
    Rejected { store: String, op: &'static str, detail: String },
    #[error("invalid response from the store ({store}) to {op}: {detail}")]
    InvalidResponse { store: String, op: &'static str, detail: String },
    #[error("invalid store configuration: {0}")]
    Config(String),
}

impl DcsError {
    /// Whether the store could not be reached (as opposed to answering with an error): the HA loop treats this
    /// as "DCS unavailable".
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            DcsError::Timeout { .. }
                | DcsError::Unreachable { .. }
                | DcsError::NotTried { .. }
                | DcsError::Tls { .. }
                | DcsError::Auth { .. }
        )
    }
}

/// The keys below a prefix at one store revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Range {
    /// Keys made relative to the prefix.
    pub entries: Vec<RawEntry>,
    /// The store revision the read was served at (for watching changes made after it).
    pub revision: i64,
}

/// What to watch: one key, or every key below a prefix (absolute keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchKey {
    Key(String),
    Prefix(String),
}

impl WatchKey {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            WatchKey::Key(k) => k == key,
            WatchKey::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// What [`KvBackend::follow_prefix`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchUpdate {
    /// Every key below the prefix at one revision: the starting point (again after each reconnection).
    Snapshot(Range),
    /// Keys (relative to the prefix) changed, each with the revision of its change: `Some` is the new entry,
    /// `None` a deletion. `revision` is the store's revision when they were reported.
    Changes { revision: i64, changes: Vec<(String, i64, Option<RawEntry>)> },
}

/// Receives [`WatchUpdate`]s.
pub type WatchSink = dyn Fn(WatchUpdate) + Send + Sync;

/// The etcd v3 calls Keel needs. Every call is bounded in time by the backend's configuration.
pub trait KvBackend: Send + Sync + 'static {
    /// Every key starting with `prefix`, made relative to it, and the revision of the read.
    fn range(&self, prefix: &str) -> impl Future<Output = Result<Range, DcsError>> + Send;

    /// Runs a transaction; `Ok(true)` when all compares held (the success branch ran).
    ///
    /// A transaction that failed with [`DcsError::is_unavailable`] may still have been applied (the request
    /// reached etcd, the answer did not come back in time): reload before acting on the failure.
    fn txn(&self, txn: &Txn) -> impl Future<Output = Result<bool, DcsError>> + Send;

    /// Grants a lease of `ttl_secs` seconds and returns its id.
    fn grant_lease(&self, ttl_secs: u64) -> impl Future<Output = Result<i64, DcsError>> + Send;

    /// Refreshes a lease; [`DcsError::LeaseNotFound`] when it expired or was revoked.
    fn keepalive(&self, lease: i64) -> impl Future<Output = Result<(), DcsError>> + Send;

    /// Revokes a lease, deleting every key attached to it. Revoking an unknown lease is not an error.
    fn revoke(&self, lease: i64) -> impl Future<Output = Result<(), DcsError>> + Send;

    /// Waits until one of `keys` changes at a revision after `after_revision` (0: after the call starts), or
    /// `timeout` elapses. `Ok(true)` on a change, `Ok(false)` on timeout.
    fn watch(
        &self,
        keys: &[WatchKey],
        after_revision: i64,
        timeout: Duration,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;

    /// Follows every key below `prefix`: a [`WatchUpdate::Snapshot`], then [`WatchUpdate::Changes`] as they
    /// happen, on one long-lived watch. Returns only when the watch fails; the caller starts again.
    ///
    /// The default takes a new snapshot after each change seen by [`watch`](Self::watch) (fine in memory).
    fn follow_prefix(&self, prefix: &str, sink: &WatchSink) -> impl Future<Output = Result<(), DcsError>> + Send {
        async move {
            let keys = [WatchKey::Prefix(prefix.to_string())];
            loop {
                let range = self.range(prefix).await?;
                let revision = range.revision;
                sink(WatchUpdate::Snapshot(range));
                while !self.watch(&keys, revision, Duration::from_secs(3600)).await? {}
            }
        }
    }
}
