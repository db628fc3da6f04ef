//! The one seam between Keel and its store: [`Backend`], chosen at run time from the configuration.
//!
//! Everything outside `dcs/` works with [`Store`] (a [`ClusterStore`] over a [`Backend`]) and never names a
//! particular store. Adding a store (ZooKeeper, Kubernetes) means a new variant here, its `KvBackend` in its own
//! file, and a branch in [`backend_from_config`].

use std::time::Duration;

use keel_core::store::Txn;

use super::etcd::EtcdBackend;
use super::memory::MemoryBackend;
use super::{ClusterStore, DcsError, KvBackend, Range, WatchKey, WatchSink};
use crate::config::Config;

/// A store backend: etcd v3, or the in-memory store (tests and single-process simulations).
#[derive(Debug, Clone)]
pub enum Backend {
    Etcd(EtcdBackend),
    Memory(MemoryBackend),
}

/// A member's view of its cluster in whatever store the configuration names.
pub type Store = ClusterStore<Backend>;

/// The store the configuration names, each call bounded by `call_timeout` (normally `retry_timeout`).
/// Connecting happens on the first call.
pub fn backend_from_config(config: &Config, call_timeout: Duration) -> Result<Backend, DcsError> {
    // The etcd3 section with its TLS files and credentials, checked (see `Config::etcd_config`).
    Ok(Backend::Etcd(EtcdBackend::new(config.etcd_config(call_timeout)?)?))
}

/// [`Store`] of member `config.name` in cluster `scope` (the configuration's `scope` when `None`).
pub fn store_from_config(config: &Config, scope: Option<&str>, call_timeout: Duration) -> Result<Store, DcsError> {
    let backend = backend_from_config(config, call_timeout)?;
    let scope = scope.unwrap_or(&config.scope);
    Ok(ClusterStore::new(backend, &config.namespace, scope, &config.name, config.timing.ttl))
}

/// Runs the same call on whichever backend this is.
macro_rules! each {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Backend::Etcd($b) => $call,
            Backend::Memory($b) => $call,
        }
    };
}

impl KvBackend for Backend {
    async fn range(&self, prefix: &str) -> Result<Range, DcsError> {
        each!(self, b => b.range(prefix).await)
    }

    async fn txn(&self, txn: &Txn) -> Result<bool, DcsError> {
        each!(self, b => b.txn(txn).await)
    }

    async fn grant_lease(&self, ttl_secs: u64) -> Result<i64, DcsError> {
        each!(self, b => b.grant_lease(ttl_secs).await)
    }

    async fn keepalive(&self, lease: i64) -> Result<(), DcsError> {
        each!(self, b => b.keepalive(lease).await)
    }

    async fn revoke(&self, lease: i64) -> Result<(), DcsError> {
        each!(self, b => b.revoke(lease).await)
    }

    async fn watch(&self, keys: &[WatchKey], after_revision: i64, timeout: Duration) -> Result<bool, DcsError> {
        each!(self, b => b.watch(keys, after_revision, timeout).await)
    }

    async fn follow_prefix(&self, prefix: &str, sink: &WatchSink) -> Result<(), DcsError> {
        each!(self, b => b.follow_prefix(prefix, sink).await)
    }
}
