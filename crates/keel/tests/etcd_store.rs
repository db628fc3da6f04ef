//! `ClusterStore` against a real etcd (from keel-testkit) and against `MemoryBackend`: one generic suite,
//! instantiated for both backends, plus etcd-only failure tests (hung server, several endpoints).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel::dcs::{ClusterStore, DcsError, EtcdBackend, EtcdConfig, KvBackend, MemoryBackend};
use keel_core::lsn::Lsn;
use keel_core::store::{Op, Txn};
use keel_core::view::{FailoverRequest, HistoryEntry, Status, SyncState};
use keel_testkit::EtcdServer;
use serde_json::json;

/// Where the stores of one test live.
trait Env {
    type B: KvBackend + Clone;
    /// A new client of the same store (one per simulated node).
    fn backend(&self) -> Self::B;
}

struct EtcdEnv {
    server: EtcdServer,
}

impl EtcdEnv {
    fn start() -> EtcdEnv {
        EtcdEnv { server: EtcdServer::start().expect("start etcd") }
    }

    fn backend_with_timeout(&self, timeout: Duration) -> EtcdBackend {
        EtcdBackend::new(EtcdConfig::from_hosts(&[self.server.endpoint()], timeout)).expect("etcd config")
    }
}

impl Env for EtcdEnv {
    type B = EtcdBackend;
    fn backend(&self) -> EtcdBackend {
        self.backend_with_timeout(Duration::from_secs(5))
    }
}

struct MemEnv(MemoryBackend);

impl MemEnv {
    fn start() -> MemEnv {
        MemEnv(MemoryBackend::new())
    }
}

impl Env for MemEnv {
    type B = MemoryBackend;
    fn backend(&self) -> MemoryBackend {
        self.0.clone()
    }
}

fn node<E: Env>(env: &E, name: &str) -> ClusterStore<E::B> {
    node_ttl(env, name, 30)
}

fn node_ttl<E: Env>(env: &E, name: &str, ttl: u64) -> ClusterStore<E::B> {
    ClusterStore::new(env.backend(), "/service/", "batman", name, ttl)
}

/// Polls `check` until it holds or `deadline` passes.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < deadline, "{what}: still not true after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

mod cases {
    use super::*;

    pub async fn acquire_race_has_one_winner<E: Env>(env: &E) {
        let (a, b) = (node(env, "a"), node(env, "b"));
        let (ra, rb) = tokio::join!(a.acquire_leader(), b.acquire_leader());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(ra ^ rb, "exactly one must win: a={ra} b={rb}");
        let winner = if ra { "a" } else { "b" };
        let view = a.load().await.unwrap();
        let leader = view.leader.unwrap();
        assert_eq!(leader.name, winner);
        let lease = if ra { a.lease() } else { b.lease() };
        assert_eq!(Some(leader.lease), lease, "the leader key is on the winner's lease");
        // Losing again changes nothing.
        assert!(!(if ra { b.acquire_leader().await } else { a.acquire_leader().await }).unwrap());
    }

    pub async fn update_leader_only_by_holder<E: Env>(env: &E) {
        let (a, b) = (node(env, "a"), node(env, "b"));
        assert!(a.acquire_leader().await.unwrap());
        b.load().await.unwrap();
        assert!(!b.update_leader().await.unwrap(), "b does not hold the key");
        assert!(a.update_leader().await.unwrap());
        a.load().await.unwrap();
        assert!(a.update_leader().await.unwrap());
        assert_eq!(b.load().await.unwrap().leader.unwrap().name, "a");
    }

    pub async fn update_leader_reattaches_key_to_own_lease<E: Env>(env: &E) {
        // A previous incarnation of "a" left the leader key on its lease; the new one moves it to its own.
        let old = node(env, "a");
        assert!(old.acquire_leader().await.unwrap());
        let new = node(env, "a");
        let before = new.load().await.unwrap().leader.unwrap();
        assert_eq!(Some(before.lease), old.lease());
        assert!(new.update_leader().await.unwrap());
        let after = new.load().await.unwrap().leader.unwrap();
        assert_eq!(after.name, "a");
        assert_eq!(Some(after.lease), new.lease());
        assert_ne!(new.lease(), old.lease());
    }

    pub async fn delete_leader_by_non_holder_does_nothing<E: Env>(env: &E) {
        let (a, b) = (node(env, "a"), node(env, "b"));
        assert!(a.acquire_leader().await.unwrap());
        assert!(!b.delete_leader().await.unwrap());
        assert_eq!(a.load().await.unwrap().leader.unwrap().name, "a");
        assert!(a.delete_leader().await.unwrap());
        assert!(a.load().await.unwrap().leader.is_none());
        assert!(b.acquire_leader().await.unwrap());
    }

    pub async fn cas_with_stale_revision_fails<E: Env>(env: &E) {
        let (a, b) = (node(env, "a"), node(env, "b"));
        // config
        assert!(a.set_config(&json!({"ttl": 30}), None).await.unwrap());
        let v1 = a.load().await.unwrap().config.unwrap().version;
        assert!(b.set_config(&json!({"ttl": 40}), Some(v1)).await.unwrap());
        assert!(!a.set_config(&json!({"ttl": 50}), Some(v1)).await.unwrap(), "stale config version");
        assert_eq!(a.load().await.unwrap().config.unwrap().value.timing.ttl, 40);
        // failover
        let req = FailoverRequest { leader: Some("a".into()), member: Some("b".into()), scheduled_at: None };
        assert!(a.set_failover(&req, Some(0)).await.unwrap(), "Some(0): only if absent");
        assert!(!a.set_failover(&req, Some(0)).await.unwrap());
        let view = a.load().await.unwrap();
        let fv = view.failover.unwrap();
        assert_eq!(fv.value, req);
        assert!(b.clear_failover(Some(fv.version)).await.unwrap());
        assert!(!a.clear_failover(Some(fv.version)).await.unwrap(), "stale failover version");
        let view = a.load().await.unwrap();
        assert!(view.failover.is_none(), "cleared with {{}}");
        assert!(view.failover_version.is_some());
        // sync
        let sync = SyncState {
            leader: Some("a".into()),
            sync_standby: vec!["b".into()],
            quorum: Some(1),
            ..Default::default()
        };
        assert!(a.set_sync(&sync, None).await.unwrap());
        let sv = a.load().await.unwrap().sync.unwrap();
        assert_eq!(sv.value, sync);
        assert!(a
            .set_sync(&SyncState { leader: Some("a".into()), ..Default::default() }, Some(sv.version))
            .await
            .unwrap());
        assert!(!b.set_sync(&sync, Some(sv.version)).await.unwrap(), "stale sync version");
        assert!(!b.delete_sync(Some(sv.version)).await.unwrap());
        let current = a.load().await.unwrap().sync.unwrap().version;
        assert!(b.delete_sync(Some(current)).await.unwrap());
        assert!(a.load().await.unwrap().sync.is_none());
    }

    pub async fn initialize_is_create_only<E: Env>(env: &E) {
        let (a, b) = (node(env, "a"), node(env, "b"));
        let (ra, rb) = tokio::join!(a.initialize("", true), b.initialize("", true));
        assert!(ra.unwrap() ^ rb.unwrap(), "one bootstrap winner");
        assert_eq!(a.load().await.unwrap().initialize.as_deref(), Some(""));
        assert!(!b.initialize("7000000000000000002", true).await.unwrap());
        assert!(a.initialize("7000000000000000001", false).await.unwrap());
        assert_eq!(b.load().await.unwrap().initialize.as_deref(), Some("7000000000000000001"));
    }

    pub async fn member_key_vanishes_with_lease<E: Env>(env: &E) {
        let a = node_ttl(env, "a", 2);
        let b = node(env, "b");
        assert!(a.touch_member(&json!({"state": "running"})).await.unwrap());
        assert!(a.acquire_leader().await.unwrap());
        assert!(b.touch_member(&json!({"state": "running"})).await.unwrap());
        let view = b.load().await.unwrap();
        assert!(view.members.contains_key("a"));
        assert_eq!(view.leader.as_ref().map(|l| l.name.as_str()), Some("a"));
        // a stops refreshing: its member and leader keys vanish together; b's stay.
        eventually("a's keys expire", Duration::from_secs(20), || async {
            let v = b.load().await.unwrap();
            !v.members.contains_key("a") && v.leader.is_none()
        })
        .await;
        assert!(b.load().await.unwrap().members.contains_key("b"));
        assert!(b.acquire_leader().await.unwrap());
    }

    pub async fn touch_member_skips_unchanged_writes<E: Env>(env: &E) {
        let a = node(env, "a");
        let data = json!({"state": "running", "role": "replica", "xlog_location": 100});
        assert!(a.touch_member(&data).await.unwrap());
        assert!(!a.touch_member(&data).await.unwrap());
        let view = a.load().await.unwrap();
        assert_eq!(view.members["a"].xlog_location, Some(Lsn(100)));
        assert!(!a.touch_member(&data).await.unwrap(), "unchanged value and lease");
        assert!(a.touch_member(&json!({"state": "running", "xlog_location": 200})).await.unwrap());
        assert_eq!(a.load().await.unwrap().members["a"].xlog_location, Some(Lsn(200)));
    }

    pub async fn lease_loss_is_detected_and_regranted<E: Env>(env: &E) {
        let a = node(env, "a");
        let data = json!({"state": "running"});
        assert!(a.touch_member(&data).await.unwrap());
        let old = a.lease().unwrap();
        // The lease is lost (expired while we were away, or revoked by an operator).
        a.backend().revoke(old).await.unwrap();
        assert!(!a.load().await.unwrap().members.contains_key("a"));
        assert!(matches!(a.backend().keepalive(old).await, Err(DcsError::LeaseNotFound(_))));
        let new = a.refresh_lease().await.unwrap();
        assert_ne!(new, old);
        assert!(a.touch_member(&data).await.unwrap(), "rewritten on the new lease");
        assert_eq!(a.load().await.unwrap().members["a"].lease, new);
        // A write that finds the lease gone re-grants it and retries.
        a.backend().revoke(new).await.unwrap();
        assert!(a.acquire_leader().await.unwrap());
        let view = a.load().await.unwrap();
        let newer = a.lease().unwrap();
        assert!(newer != new && newer != old);
        assert_eq!(view.leader.unwrap().lease, newer);
    }

    /// With `follow`, loads come from the watch's cache: changes by others show up, our own writes at once.
    pub async fn followed_store_reads_cache_and_sees_changes<E: Env>(env: &E) {
        let (a, b) = (node(env, "a"), node(env, "b"));
        a.follow();
        eventually("a follows", Duration::from_secs(20), || async { a.following() }).await;
        assert!(a.load().await.unwrap().leader.is_none());
        assert!(b.acquire_leader().await.unwrap());
        eventually("a sees b lead", Duration::from_secs(20), || async {
            a.load().await.unwrap().leader.is_some_and(|l| l.name == "b")
        })
        .await;
        // The loop's wake-up comes from the same watch.
        let (woke, deleted) = tokio::join!(a.watch(Duration::from_secs(20)), b.delete_leader());
        assert!(deleted.unwrap());
        assert!(woke.unwrap());
        // A write of our own is in the very next load, whatever the watch has delivered so far.
        assert!(a.acquire_leader().await.unwrap());
        assert_eq!(a.load().await.unwrap().leader.unwrap().name, "a");
        a.touch_member(&json!({"state": "running"})).await.unwrap();
        assert!(a.load().await.unwrap().members.contains_key("a"));
    }

    pub async fn watch_wakes_on_leader_change<E: Env>(env: &E) {
        let (a, b) = (node(env, "a"), node(env, "b"));
        a.load().await.unwrap();
        // Nothing happens: the watch times out.
        let t = Instant::now();
        assert!(!a.watch(Duration::from_millis(300)).await.unwrap());
        assert!(t.elapsed() >= Duration::from_millis(250));
        // Member writes do not wake the leader watch.
        b.touch_member(&json!({})).await.unwrap();
        assert!(!a.watch(Duration::from_millis(300)).await.unwrap());
        // The leader key changes while a waits.
        let t = Instant::now();
        let (woke, acquired) = tokio::join!(a.watch(Duration::from_secs(20)), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            b.acquire_leader().await
        });
        assert!(acquired.unwrap());
        assert!(woke.unwrap());
        assert!(t.elapsed() < Duration::from_secs(10));
        // A change between load and watch is not missed.
        a.load().await.unwrap();
        assert!(b.delete_leader().await.unwrap());
        assert!(a.watch(Duration::from_secs(20)).await.unwrap());
        // The prefix watch sees any key.
        a.load().await.unwrap();
        b.touch_member(&json!({"x": 1})).await.unwrap();
        assert!(a.watch_prefix(Duration::from_secs(20)).await.unwrap());
    }

    pub async fn watch_wakes_when_leader_lease_expires<E: Env>(env: &E) {
        let (a, b) = (node_ttl(env, "a", 2), node(env, "b"));
        assert!(a.acquire_leader().await.unwrap());
        assert_eq!(b.load().await.unwrap().leader.unwrap().name, "a");
        // a stops refreshing; b's watch wakes when the key expires with the lease, well before its timeout.
        let t = Instant::now();
        assert!(b.watch(Duration::from_secs(30)).await.unwrap());
        assert!(t.elapsed() < Duration::from_secs(20), "woke after {:?}", t.elapsed());
        assert!(b.load().await.unwrap().leader.is_none());
    }

    pub async fn garbage_values_do_not_break_load<E: Env>(env: &E) {
        let a = node(env, "a");
        let p = a.prefix().to_string();
        let put = |k: &str, v: &str| Op::Put { key: format!("{p}{k}"), value: v.to_string(), lease: 0 };
        let garbage = Txn::unconditional(vec![
            put("config", "{not json"),
            put("members/x", "\u{0}garbage"),
            put("members/y/z", "nested"),
            put("status", "[1,2"),
            put("failover", "???"),
            put("sync", "7"),
            put("history", "{}"),
            put("failsafe", "null"),
            put("leader", ""),
            put("initialize", "  42 \n"),
            put("unknown", "whatever"),
        ]);
        assert!(a.backend().txn(&garbage).await.unwrap());
        let view = a.load().await.unwrap();
        assert!(view.notes.len() >= 5, "{:?}", view.notes);
        assert!(view.members.contains_key("x"));
        assert!(view.leader.is_none());
        assert_eq!(view.initialize.as_deref(), Some("42"));
        assert_eq!(view.dynamic_config().timing.ttl, 30, "defaults for a broken config");
        // And the node can still work on top of it.
        assert!(a.touch_member(&json!({"state": "running"})).await.unwrap());
        assert!(a.load().await.unwrap().members["a"].is_running());
    }

    pub async fn status_history_failsafe_and_remove<E: Env>(env: &E) {
        let a = node(env, "a");
        let mut status = Status { optime: Some(Lsn(100)), ..Default::default() };
        status.slots.insert("b".into(), Lsn(90));
        assert!(a.set_status(&status).await.unwrap());
        assert!(!a.set_status(&status).await.unwrap(), "unchanged status is not rewritten");
        status.optime = Some(Lsn(200));
        assert!(a.set_status(&status).await.unwrap());
        let history = vec![HistoryEntry {
            timeline: 1,
            lsn: Lsn(25165984),
            reason: "no recovery target specified".into(),
            timestamp: Some("2026-01-01T00:00:00+00:00".into()),
            new_leader: Some("a".into()),
        }];
        a.set_history(&history).await.unwrap();
        let failsafe = BTreeMap::from([("a".to_string(), "http://127.0.0.1:8008/patroni".to_string())]);
        a.set_failsafe(&failsafe).await.unwrap();
        let view = a.load().await.unwrap();
        assert_eq!(view.status, status);
        assert_eq!(view.history, history);
        assert_eq!(view.failsafe, Some(failsafe));
        assert!(view.notes.is_empty(), "{:?}", view.notes);
        a.remove_cluster().await.unwrap();
        assert_eq!(a.load().await.unwrap(), Default::default());
        assert!(a.set_status(&status).await.unwrap(), "rewritten after the cluster was removed");
    }
}

/// Instantiates every generic case once per backend.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod etcd {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let env = EtcdEnv::start();
                    cases::$case(&env).await;
                }
            )*
        }
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let env = MemEnv::start();
                    cases::$case(&env).await;
                }
            )*
        }
    };
}

suite!(
    acquire_race_has_one_winner,
    update_leader_only_by_holder,
    update_leader_reattaches_key_to_own_lease,
    delete_leader_by_non_holder_does_nothing,
    cas_with_stale_revision_fails,
    initialize_is_create_only,
    member_key_vanishes_with_lease,
    touch_member_skips_unchanged_writes,
    lease_loss_is_detected_and_regranted,
    watch_wakes_on_leader_change,
    followed_store_reads_cache_and_sees_changes,
    watch_wakes_when_leader_lease_expires,
    garbage_values_do_not_break_load,
    status_history_failsafe_and_remove,
);

/// A SIGSTOPped etcd keeps its connections open but answers nothing: every call must fail within the timeout.
#[tokio::test]
async fn etcd_paused_calls_fail_within_timeout() {
    let env = EtcdEnv::start();
    let timeout = Duration::from_secs(2);
    let a = ClusterStore::new(env.backend_with_timeout(timeout), "/service/", "batman", "a", 30);
    a.touch_member(&json!({})).await.unwrap();
    a.load().await.unwrap();
    env.server.pause().unwrap();
    let bound = timeout + Duration::from_secs(2);
    let t = Instant::now();
    let err = a.load().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(t.elapsed() < bound, "load took {:?}", t.elapsed());
    assert!(err.to_string().contains(&env.server.endpoint()), "the error names the endpoint: {err}");
    let t = Instant::now();
    assert!(a.update_leader().await.unwrap_err().is_unavailable());
    assert!(t.elapsed() < bound, "update_leader took {:?}", t.elapsed());
    let t = Instant::now();
    assert!(a.acquire_leader().await.unwrap_err().is_unavailable());
    assert!(t.elapsed() < bound, "acquire_leader took {:?}", t.elapsed());
    let t = Instant::now();
    let watched = a.watch(timeout).await;
    assert!(!matches!(watched, Ok(true)), "{watched:?}");
    assert!(t.elapsed() < bound, "watch took {:?}", t.elapsed());
    // After SIGCONT the same store works again (it reconnects).
    env.server.resume().unwrap();
    eventually("etcd answers again", Duration::from_secs(30), || async { a.load().await.is_ok() }).await;
    // A request that timed out may still have been applied once etcd woke up (the acquire above was already in
    // the socket): the caller must reload rather than trust the error. Either way `a` can now hold the key.
    let view = a.load().await.unwrap();
    assert!(view.leader.as_ref().is_none_or(|l| l.name == "a"), "{:?}", view.leader);
    assert!(a.update_leader().await.unwrap());
    assert_eq!(a.load().await.unwrap().leader.unwrap().name, "a");
}

/// The HA loop's store (`begin_cycle`): once etcd stops answering within a cycle, the cycle's later writes fail at
/// once, so a cycle that found the store up and then lost it costs one timeout, not one per write (leader key,
/// status, member key), and cannot overrun the fence's deadline before the next cycle notices the outage.
#[tokio::test]
async fn a_cycle_waits_out_one_timeout_per_outage_not_one_per_call() {
    let env = EtcdEnv::start();
    let timeout = Duration::from_secs(2);
    let a = ClusterStore::new(env.backend_with_timeout(timeout), "/service/", "batman", "a", 30);
    a.begin_cycle();
    a.refresh_lease().await.unwrap();
    a.load().await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    env.server.pause().unwrap();
    let t = Instant::now();
    assert!(a.set_status(&Status { optime: Some(Lsn(1)), ..Status::default() }).await.unwrap_err().is_unavailable());
    let first = t.elapsed();
    let err = a.touch_member(&json!({"state": "running"})).await.unwrap_err();
    assert!(matches!(err, DcsError::NotTried { .. }) && err.is_unavailable(), "{err}");
    assert!(a.delete_leader().await.unwrap_err().is_unavailable());
    assert!(t.elapsed() < first + Duration::from_millis(500), "{:?} after the first {first:?}", t.elapsed());
    // The next cycle asks the store again.
    env.server.resume().unwrap();
    a.begin_cycle();
    eventually("etcd answers again", Duration::from_secs(30), || async { a.load().await.is_ok() }).await;
    a.touch_member(&json!({"state": "running"})).await.unwrap();
    // A store outside the loop (the REST API's, a control command's) asks the store on every call.
    let api = ClusterStore::new(env.backend_with_timeout(timeout), "/service/", "batman", "b", 30);
    env.server.pause().unwrap();
    assert!(api.load().await.unwrap_err().is_unavailable());
    let err = api.load().await.unwrap_err();
    assert!(!matches!(err, DcsError::NotTried { .. }), "{err}");
    env.server.resume().unwrap();
}

/// With several hosts configured, an unreachable one is skipped.
#[tokio::test]
async fn etcd_falls_over_to_next_endpoint() {
    let env = EtcdEnv::start();
    let dead = format!("127.0.0.1:{}", keel_testkit::free_port().unwrap());
    let cfg = EtcdConfig::from_hosts(&[dead.as_str(), env.server.endpoint().as_str()], Duration::from_secs(5));
    assert_eq!(cfg.endpoints[0], format!("http://{dead}"));
    let a = ClusterStore::new(EtcdBackend::new(cfg).unwrap(), "service", "batman", "a", 30);
    assert!(a.acquire_leader().await.unwrap());
    assert_eq!(a.load().await.unwrap().leader.unwrap().name, "a");
}

#[tokio::test]
async fn etcd_unreachable_names_endpoint() {
    let dead = format!("127.0.0.1:{}", keel_testkit::free_port().unwrap());
    let backend = EtcdBackend::new(EtcdConfig::from_hosts(&[dead.as_str()], Duration::from_secs(2))).unwrap();
    let t = Instant::now();
    let err = backend.range("/service/x/").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains(&dead), "{err}");
    assert!(t.elapsed() < Duration::from_secs(4));
    assert!(matches!(
        EtcdBackend::new(EtcdConfig::from_hosts::<&str>(&[], Duration::from_secs(1))),
        Err(DcsError::Config(_))
    ));
}

/// (grpc_method, metric) -> value of etcd's `grpc_server_started_total` / `grpc_server_msg_received_total`.
fn etcd_counters(env: &EtcdEnv) -> BTreeMap<(String, String), f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", env.server.client_port())).expect("connect to etcd");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request /metrics");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read /metrics");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((metric, rest)) = line.split_once('{') else { continue };
        if metric != "grpc_server_started_total" && metric != "grpc_server_msg_received_total" {
            continue;
        }
        let Some(method) = rest.split("grpc_method=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry((method.to_string(), metric.to_string())).or_insert(0.0) += value;
    }
    out
}

/// An idle cycle (keep the lease alive, read the cluster, publish an unchanged member key) costs one message on
/// the long-lived keep-alive stream: no new stream, no range, no write; also while another cluster in the same
/// etcd writes (moving the store's revision past the last change under our prefix).
#[tokio::test]
async fn etcd_idle_cycles_keep_one_keepalive_stream_and_read_the_watch_cache() {
    let env = EtcdEnv::start();
    let a = node(&env, "a");
    a.follow();
    eventually("a follows", Duration::from_secs(20), || async { a.following() }).await;
    let other = ClusterStore::new(env.backend(), "/service/", "other", "o", 30);
    let member = json!({"state": "running", "role": "replica"});
    a.refresh_lease().await.unwrap();
    a.refresh_lease().await.unwrap();
    a.touch_member(&member).await.unwrap();
    other.touch_member(&json!({"n": 0})).await.unwrap();
    // A range (after our own write), at a revision no key under our prefix has.
    a.load().await.unwrap();
    // The cache catches up with our own write; then loads stop reading the store.
    eventually("cache serves loads", Duration::from_secs(20), || async {
        let before = etcd_counters(&env);
        a.load().await.unwrap();
        etcd_counters(&env) == before
    })
    .await;
    let before = etcd_counters(&env);
    for n in 1..=5 {
        other.touch_member(&json!({ "n": n })).await.unwrap();
        a.refresh_lease().await.unwrap();
        assert!(a.load().await.unwrap().members.contains_key("a"));
        assert!(!a.touch_member(&member).await.unwrap(), "unchanged member key rewritten");
    }
    let after = etcd_counters(&env);
    let delta = |m: &str, k: &str| {
        let key = (m.to_string(), k.to_string());
        after.get(&key).unwrap_or(&0.0) - before.get(&key).unwrap_or(&0.0)
    };
    assert_eq!(delta("LeaseKeepAlive", "grpc_server_started_total"), 0.0, "a new keep-alive stream: {after:?}");
    assert_eq!(delta("LeaseKeepAlive", "grpc_server_msg_received_total"), 5.0);
    assert_eq!(delta("Watch", "grpc_server_started_total"), 0.0, "a new watch stream");
    assert_eq!(delta("Range", "grpc_server_started_total"), 0.0, "loads read the store");
    assert_eq!(delta("Txn", "grpc_server_started_total"), 5.0, "writes while idle besides the other cluster's");
}

/// After etcd restarts, the keep-alive stream and the watch are re-established and loads see later changes.
#[tokio::test]
async fn etcd_restart_reestablishes_keepalive_and_watch() {
    let mut env = EtcdEnv::start();
    let (a, b) = (node(&env, "a"), node(&env, "b"));
    a.follow();
    eventually("a follows", Duration::from_secs(20), || async { a.following() }).await;
    a.refresh_lease().await.unwrap();
    a.refresh_lease().await.unwrap();
    a.load().await.unwrap();
    env.server.stop().unwrap();
    assert!(a.refresh_lease().await.unwrap_err().is_unavailable());
    env.server.restart().unwrap();
    eventually("keep-alive works again", Duration::from_secs(30), || async { a.refresh_lease().await.is_ok() }).await;
    assert!(b.acquire_leader().await.unwrap());
    eventually("a sees b lead after the restart", Duration::from_secs(30), || async {
        a.load().await.is_ok_and(|v| v.leader.is_some_and(|l| l.name == "b"))
    })
    .await;
    eventually("the watch is back", Duration::from_secs(30), || async { a.following() }).await;
}
