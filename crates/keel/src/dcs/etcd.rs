//! [`KvBackend`] over etcd's v3 gRPC API (etcd >= 3.4).
//!
//! Every call is bounded by [`EtcdConfig::timeout`] in total, so a hung etcd (e.g. SIGSTOPped) cannot block the
//! HA loop longer than `retry_timeout`. The backend talks to one endpoint at a time; when a call fails because
//! that endpoint is unreachable or silent, the connection is dropped and the next endpoint from the hosts list
//! is tried (within the same time budget), like Patroni's etcd client does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn as EtcdTxn, TxnOp, WatchOptions,
};
use keel_core::store::{Compare, Op, Txn};
use keel_core::view::RawEntry;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::etcd_tls::EtcdSecurity;
use super::{DcsError, KvBackend, Range, WatchKey, WatchSink, WatchUpdate};

/// The shortest time given to one endpoint when several are configured.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// How often a long-lived watch checks that it still runs on the connection the other calls use.
const CONNECTION_CHECK: Duration = Duration::from_secs(1);

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:port`); bare `host:port` entries get `http://`.
    pub endpoints: Vec<String>,
    /// The most a single backend call may take, all retries included (Patroni's `retry_timeout`).
    pub timeout: Duration,
    /// TLS (for `https://` endpoints) and credentials.
    pub security: EtcdSecurity,
}

impl EtcdConfig {
    /// From Patroni's `etcd3.hosts` (a list, or one comma-separated string) and `retry_timeout`.
    pub fn from_hosts<S: AsRef<str>>(hosts: &[S], timeout: Duration) -> EtcdConfig {
        let endpoints = hosts
            .iter()
            .flat_map(|h| h.as_ref().split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| if h.contains("://") { h.to_string() } else { format!("http://{h}") })
            .collect();
        EtcdConfig { endpoints, timeout, security: EtcdSecurity::default() }
    }

    /// With TLS settings and credentials.
    pub fn with_security(self, security: EtcdSecurity) -> EtcdConfig {
        EtcdConfig { security, ..self }
    }
}

/// A connection to etcd. Clones share the connection.
#[derive(Clone)]
pub struct EtcdBackend {
    cfg: Arc<EtcdConfig>,
    conn: Arc<Mutex<Conn>>,
    /// The lease keep-alive stream, kept open between refreshes (one stream for a lease's lifetime).
    keeper: Arc<Mutex<Option<KeepAlive>>>,
}

/// An open keep-alive stream for one lease.
struct KeepAlive {
    lease: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl KeepAlive {
    /// One keep-alive request and its answer: `Ok(false)` when etcd says the lease is gone (TTL 0).
    async fn refresh(&mut self) -> Result<bool, etcd_client::Error> {
        self.keeper.keep_alive().await?;
        match self.stream.message().await? {
            Some(resp) => Ok(resp.ttl() > 0),
            None => Err(etcd_client::Error::LeaseKeepAliveError("etcd closed the keep-alive stream".into())),
        }
    }
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

struct Conn {
    /// Index of the endpoint in use.
    current: usize,
    client: Option<Client>,
    /// Counts dropped connections, so a long-lived watch notices that calls moved to a new one.
    epoch: u64,
}

/// What kind of call failed, to map etcd's "lease not found" answers.
#[derive(Clone, Copy)]
enum LeaseHint {
    None,
    Lease(i64),
}

impl EtcdBackend {
    /// Validates the configuration; connecting happens on the first call (and again after failures).
    pub fn new(cfg: EtcdConfig) -> Result<EtcdBackend, DcsError> {
        if cfg.endpoints.is_empty() {
            return Err(DcsError::Config("no etcd hosts configured; set etcd3.hosts (or etcd3.host)".into()));
        }
        if cfg.timeout.is_zero() {
            return Err(DcsError::Config("the etcd call timeout (retry_timeout) must be positive".into()));
        }
        Ok(EtcdBackend {
            cfg: Arc::new(cfg),
            conn: Arc::new(Mutex::new(Conn { current: 0, client: None, epoch: 0 })),
            keeper: Arc::new(Mutex::new(None)),
        })
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.cfg
    }

    /// The client for the current endpoint, connecting if needed.
    async fn client(&self, op: &'static str, budget: Duration) -> Result<(usize, Client), DcsError> {
        let mut conn = self.conn.lock().await;
        let idx = conn.current % self.cfg.endpoints.len();
        if let Some(c) = &conn.client {
            return Ok((idx, c.clone()));
        }
        let endpoint = &self.cfg.endpoints[idx];
        let opts = ConnectOptions::new()
            .with_connect_timeout(budget)
            .with_keep_alive(Duration::from_secs(5), budget.max(MIN_ATTEMPT))
            .with_keep_alive_while_idle(true);
        let opts = self.cfg.security.apply(opts, endpoint)?;
        let connect = Client::connect([endpoint.as_str()], Some(opts));
        let client = match tokio::time::timeout(budget, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                conn.current = (idx + 1) % self.cfg.endpoints.len();
                let security = self.cfg.security.classify(&e, endpoint, op, true);
                return Err(security.unwrap_or_else(|| classify(e, endpoint, op, LeaseHint::None)));
            }
            Err(_) => {
                conn.current = (idx + 1) % self.cfg.endpoints.len();
                return Err(DcsError::Timeout { store: at(endpoint), op, timeout: budget });
            }
        };
        conn.client = Some(client.clone());
        Ok((idx, client))
    }

    /// Forgets the connection to endpoint `idx` and moves on to the next endpoint.
    async fn failed(&self, idx: usize) {
        let mut conn = self.conn.lock().await;
        if conn.current % self.cfg.endpoints.len() == idx {
            conn.client = None;
            conn.epoch += 1;
            conn.current = (idx + 1) % self.cfg.endpoints.len();
        }
    }

    /// Runs `f` against the endpoints in turn until one answers, all within `cfg.timeout`.
    async fn call<T, F, Fut>(&self, op: &'static str, hint: LeaseHint, f: F) -> Result<T, DcsError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.cfg.timeout;
        let n = self.cfg.endpoints.len();
        let mut last = None;
        for attempt in 0..n {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let left = u32::try_from(n - attempt).unwrap_or(u32::MAX);
            let budget = (remaining / left).max(MIN_ATTEMPT.min(remaining));
            let (idx, client) = match self.client(op, budget).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let endpoint = &self.cfg.endpoints[idx];
            match tokio::time::timeout(budget, f(client)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let security = self.cfg.security.classify(&e, endpoint, op, false);
                    let err = security.unwrap_or_else(|| classify(e, endpoint, op, hint));
                    if !err.is_unavailable() {
                        return Err(err);
                    }
                    self.failed(idx).await;
                    last = Some(err);
                }
                Err(_) => {
                    self.failed(idx).await;
                    last = Some(DcsError::Timeout { store: at(endpoint), op, timeout: budget });
                }
            }
        }
        Err(last.unwrap_or_else(|| DcsError::Timeout {
            store: at(&self.cfg.endpoints.join(",")),
            op,
            timeout: self.cfg.timeout,
        }))
    }
}

/// How errors name the store: `etcd at <endpoint>`.
fn at(endpoint: &str) -> String {
    format!("etcd at {endpoint}")
}

/// Maps an etcd client error: transport problems are "unavailable" (try another endpoint), answers are not.
fn classify(e: etcd_client::Error, endpoint: &str, op: &'static str, hint: LeaseHint) -> DcsError {
    use etcd_client::Error as E;
    use tonic::Code;
    let store = at(endpoint);
    match e {
        E::GRpcStatus(s) => match s.code() {
            Code::NotFound if s.message().contains("lease") => match hint {
                LeaseHint::Lease(id) => DcsError::LeaseNotFound(id),
                LeaseHint::None => DcsError::LeaseNotFound(0),
            },
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted => {
                DcsError::Unreachable { store, op, detail: s.message().to_string() }
            }
            _ => DcsError::Rejected { store, op, detail: format!("{:?}: {}", s.code(), s.message()) },
        },
        E::LeaseKeepAliveError(msg) if msg.contains("not found") => match hint {
            LeaseHint::Lease(id) => DcsError::LeaseNotFound(id),
            LeaseHint::None => DcsError::LeaseNotFound(0),
        },
        E::TransportError(t) => DcsError::Unreachable { store, op, detail: t.to_string() },
        E::IoError(io) => DcsError::Unreachable { store, op, detail: io.to_string() },
        E::WatchError(msg) | E::LeaseKeepAliveError(msg) => DcsError::Unreachable { store, op, detail: msg },
        E::InvalidArgs(msg) | E::EndpointError(msg) => DcsError::Config(format!("{endpoint}: {msg}")),
        E::InvalidUri(u) => DcsError::Config(format!("invalid etcd endpoint {endpoint}: {u}")),
        other => DcsError::InvalidResponse { store, op, detail: other.to_string() },
    }
}

fn to_etcd_txn(txn: &Txn) -> EtcdTxn {
    let compare: Vec<EtcdCompare> = txn
        .compare
        .iter()
        .map(|c| match c {
            Compare::Absent(k) => EtcdCompare::create_revision(k.as_str(), CompareOp::Equal, 0),
            Compare::ValueIs(k, v) => EtcdCompare::value(k.as_str(), CompareOp::Equal, v.as_str()),
            Compare::ModRevisionIs(k, r) => EtcdCompare::mod_revision(k.as_str(), CompareOp::Equal, *r),
        })
        .collect();
    let ops = |ops: &[Op]| -> Vec<TxnOp> {
        ops.iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let opts = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
                    TxnOp::put(key.as_str(), value.as_str(), opts)
                }
                Op::Delete { key } => TxnOp::delete(key.as_str(), None),
                Op::DeletePrefix { prefix } => TxnOp::delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix())),
            })
            .collect()
    };
    EtcdTxn::new().when(compare).and_then(ops(&txn.success)).or_else(ops(&txn.failure))
}

fn txn_lease(txn: &Txn) -> LeaseHint {
    txn.success
        .iter()
        .chain(&txn.failure)
        .find_map(|op| match op {
            Op::Put { lease, .. } if *lease != 0 => Some(LeaseHint::Lease(*lease)),
            _ => None,
        })
        .unwrap_or(LeaseHint::None)
}

impl KvBackend for EtcdBackend {
    async fn range(&self, prefix: &str) -> Result<Range, DcsError> {
        let resp = self
            .call("range", LeaseHint::None, |mut c| async move {
                c.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let entries = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let rel = key.strip_prefix(prefix)?.to_string();
                Some(RawEntry {
                    key: rel,
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                    mod_revision: kv.mod_revision(),
                    lease: kv.lease(),
                })
            })
            .collect();
        Ok(Range { entries, revision })
    }

    async fn txn(&self, txn: &Txn) -> Result<bool, DcsError> {
        let resp = self.call("txn", txn_lease(txn), |mut c| async move { c.txn(to_etcd_txn(txn)).await }).await?;
        Ok(resp.succeeded())
    }

    async fn grant_lease(&self, ttl_secs: u64) -> Result<i64, DcsError> {
        let ttl = i64::try_from(ttl_secs).map_err(|_| DcsError::Config(format!("ttl {ttl_secs} is too large")))?;
        let resp =
            self.call("lease grant", LeaseHint::None, |mut c| async move { c.lease_grant(ttl, None).await }).await?;
        if !resp.error().is_empty() || resp.id() == 0 {
            let store = at(&self.cfg.endpoints.join(","));
            return Err(DcsError::InvalidResponse { store, op: "lease grant", detail: resp.error().to_string() });
        }
        Ok(resp.id())
    }

    async fn keepalive(&self, lease: i64) -> Result<(), DcsError> {
        // One stream per lease, kept open: a refresh is one message on it, not a new stream each time. The stream
        // is taken out while in use and put back only after a full answer, so a refresh abandoned half-way (a
        // caller's timeout) never leaves an unread answer behind for the next one.
        let mut open = self.keeper.lock().await;
        let deadline = Instant::now() + self.cfg.timeout;
        if let Some(mut ka) = open.take().filter(|k| k.lease == lease) {
            match tokio::time::timeout_at(deadline, ka.refresh()).await {
                Ok(Ok(true)) => {
                    *open = Some(ka);
                    return Ok(());
                }
                Ok(Ok(false)) => return Err(DcsError::LeaseNotFound(lease)),
                // The stream broke (e.g. etcd restarted): open a new one below, in the time left.
                Ok(Err(_)) => {}
                Err(_) => {
                    let store = at(&self.cfg.endpoints.join(","));
                    return Err(DcsError::Timeout { store, op: "lease keepalive", timeout: self.cfg.timeout });
                }
            }
        }
        let opened = self.call("lease keepalive", LeaseHint::Lease(lease), |mut c| async move {
            // etcd-client sends the first request and reports TTL 0 as "lease not found".
            c.lease_keep_alive(lease).await
        });
        let (keeper, stream) = match tokio::time::timeout_at(deadline, opened).await {
            Ok(r) => r?,
            Err(_) => {
                let store = at(&self.cfg.endpoints.join(","));
                return Err(DcsError::Timeout { store, op: "lease keepalive", timeout: self.cfg.timeout });
            }
        };
        *open = Some(KeepAlive { lease, keeper, stream });
        Ok(())
    }

    async fn revoke(&self, lease: i64) -> Result<(), DcsError> {
        match self
            .call("lease revoke", LeaseHint::Lease(lease), |mut c| async move { c.lease_revoke(lease).await })
            .await
        {
            Ok(_) | Err(DcsError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, keys: &[WatchKey], after_revision: i64, timeout: Duration) -> Result<bool, DcsError> {
        let Some((first, rest)) = keys.split_first() else {
            tokio::time::sleep(timeout).await;
            return Ok(false);
        };
        let opts = |k: &WatchKey| {
            let o = WatchOptions::new();
            let o = if after_revision > 0 { o.with_start_revision(after_revision + 1) } else { o };
            match k {
                WatchKey::Key(key) => (key.clone(), o),
                WatchKey::Prefix(p) => (p.clone(), o.with_prefix()),
            }
        };
        let deadline = Instant::now() + timeout;
        let (idx, mut client) = match self.client("watch", self.cfg.timeout.min(timeout)).await {
            Ok(c) => c,
            Err(DcsError::Timeout { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let endpoint = self.cfg.endpoints[idx].clone();
        let wait = async {
            let (k, o) = opts(first);
            let mut stream = client.watch(k, Some(o)).await?;
            for w in rest {
                let (k, o) = opts(w);
                stream.watch(k, Some(o)).await?;
            }
            loop {
                let Some(resp) = stream.message().await? else {
                    return Err(etcd_client::Error::WatchError("etcd closed the watch stream".into()));
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        // Our revision was compacted away: something changed that we can no longer see.
                        return Ok(true);
                    }
                    return Err(etcd_client::Error::WatchError(format!(
                        "watch canceled by etcd: {}",
                        resp.cancel_reason()
                    )));
                }
                if !resp.events().is_empty() {
                    return Ok(true);
                }
            }
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(changed)) => Ok(changed),
            Ok(Err(e)) => {
                let security = self.cfg.security.classify(&e, &endpoint, "watch", false);
                let err = security.unwrap_or_else(|| classify(e, &endpoint, "watch", LeaseHint::None));
                if err.is_unavailable() {
                    self.failed(idx).await;
                }
                Err(err)
            }
            Err(_) => Ok(false),
        }
    }

    async fn follow_prefix(&self, prefix: &str, sink: &WatchSink) -> Result<(), DcsError> {
        self.follow(prefix, sink).await
    }
}

impl EtcdBackend {
    /// [`KvBackend::follow_prefix`]: a snapshot, then one watch stream from the snapshot's revision on.
    async fn follow(&self, prefix: &str, sink: &WatchSink) -> Result<(), DcsError> {
        let range = self.range(prefix).await?;
        let start = range.revision + 1;
        sink(WatchUpdate::Snapshot(range));
        let (idx, mut client) = self.client("watch", self.cfg.timeout).await?;
        let epoch = self.conn.lock().await.epoch;
        let endpoint = self.cfg.endpoints[idx].clone();
        let opts = WatchOptions::new().with_prefix().with_start_revision(start);
        let opened = tokio::time::timeout(self.cfg.timeout, client.watch(prefix, Some(opts))).await;
        let mut stream = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.watch_failed(e, idx, &endpoint).await),
            Err(_) => return Err(DcsError::Timeout { store: at(&endpoint), op: "watch", timeout: self.cfg.timeout }),
        };
        loop {
            // Every second, look whether the other calls gave up on this connection (then so does the watch: on
            // a connection the calls no longer use, it could miss changes without noticing).
            let message = match tokio::time::timeout(CONNECTION_CHECK, stream.message()).await {
                Ok(m) => m,
                Err(_) if self.conn.lock().await.epoch == epoch => continue,
                Err(_) => {
                    let detail = "the connection was replaced after a failed call".to_string();
                    return Err(DcsError::Unreachable { store: at(&endpoint), op: "watch", detail });
                }
            };
            let resp = match message {
                Ok(Some(r)) => r,
                Ok(None) => {
                    let detail = "etcd closed the watch stream".to_string();
                    return Err(DcsError::Unreachable { store: at(&endpoint), op: "watch", detail });
                }
                Err(e) => return Err(self.watch_failed(e, idx, &endpoint).await),
            };
            if resp.canceled() {
                let detail = format!(
                    "watch canceled by etcd (compacted at {}): {}",
                    resp.compact_revision(),
                    resp.cancel_reason()
                );
                return Err(DcsError::Unreachable { store: at(&endpoint), op: "watch", detail });
            }
            let mut revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            let mut changes = Vec::new();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let Some(rel) = key.strip_prefix(prefix) else { continue };
                revision = revision.max(kv.mod_revision());
                let entry = (ev.event_type() == EventType::Put).then(|| RawEntry {
                    key: rel.to_string(),
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                    mod_revision: kv.mod_revision(),
                    lease: kv.lease(),
                });
                changes.push((rel.to_string(), kv.mod_revision(), entry));
            }
            if !changes.is_empty() {
                sink(WatchUpdate::Changes { revision, changes });
            }
        }
    }

    async fn watch_failed(&self, e: etcd_client::Error, idx: usize, endpoint: &str) -> DcsError {
        let err = classify(e, endpoint, "watch", LeaseHint::None);
        if err.is_unavailable() {
            self.failed(idx).await;
        }
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_split_and_get_a_scheme() {
        let cfg =
            EtcdConfig::from_hosts(&["10.0.0.1:2379, 10.0.0.2:2379", "https://e3:2379", " "], Duration::from_secs(3));
        assert_eq!(cfg.endpoints, ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "https://e3:2379"]);
        assert!(matches!(EtcdBackend::new(EtcdConfig { endpoints: vec![], ..cfg.clone() }), Err(DcsError::Config(_))));
        assert!(matches!(EtcdBackend::new(EtcdConfig { timeout: Duration::ZERO, ..cfg }), Err(DcsError::Config(_))));
    }

    #[test]
    fn lease_hint_comes_from_the_first_leased_put() {
        let ops = keel_core::store::ClusterOps::new("service", "c");
        assert!(matches!(txn_lease(&ops.acquire_leader("a", 7)), LeaseHint::Lease(7)));
        assert!(matches!(txn_lease(&ops.delete_leader("a")), LeaseHint::None));
    }
}
