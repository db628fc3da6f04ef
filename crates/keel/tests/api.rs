//! The REST API's control endpoints over a real HTTP server, a fake agent and the in-memory store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel::agent::failsafe::FailsafeState;
use keel::agent::request_channel::{agent_channel, AgentHandle, AgentReply, AgentRequest};
use keel::api::server::{router, ApiBackend, ApiOptions, BasicAuth};
use keel::dcs::{ClusterStore, DcsError, KvBackend, MemoryBackend, Range, WatchKey};
use keel::status::NodeStatus;
use keel_core::lsn::Lsn;
use keel_core::store::Txn;
use keel_core::view::{ClusterView, FailoverRequest, HistoryEntry, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SCOPE: &str = "batman";
const DEADLINE: Duration = Duration::from_secs(10);

struct Fake<K: KvBackend> {
    status: Mutex<NodeStatus>,
    store: ClusterStore<K>,
    agent: AgentHandle,
    failsafe: FailsafeState,
}

impl<K: KvBackend> ApiBackend for Fake<K> {
    type Kv = K;
    fn node_status(&self) -> NodeStatus {
        self.status.lock().unwrap().clone()
    }
    fn store(&self) -> &ClusterStore<K> {
        &self.store
    }
    fn agent(&self) -> &AgentHandle {
        &self.agent
    }
    fn failsafe(&self) -> &FailsafeState {
        &self.failsafe
    }
}

struct Harness<K: KvBackend = MemoryBackend> {
    base: String,
    http: reqwest::Client,
    kv: MemoryBackend,
    fake: Arc<Fake<K>>,
    /// Every request the fake agent received, as a short description.
    seen: Arc<Mutex<Vec<String>>>,
}

/// A store handle acting as member `name` (for seeding keys and playing the HA loop).
fn member_store(kv: &MemoryBackend, name: &str) -> ClusterStore<MemoryBackend> {
    ClusterStore::new(kv.clone(), "service", SCOPE, name, 30)
}

fn replica_status() -> NodeStatus {
    NodeStatus {
        scope: SCOPE.into(),
        name: "n2".into(),
        state: keel_core::member_state::MemberState::Running,
        role: Some(Role::Replica),
        server_version: Some(150004),
        received_location: Some(Lsn(200)),
        replayed_location: Some(Lsn(190)),
        ..Default::default()
    }
}

async fn start(options: ApiOptions) -> Harness {
    let kv = MemoryBackend::new();
    start_with(kv.clone(), kv, options).await
}

/// The API runs over `api_kv`; `kv` is the same store, for seeding and playing the other members.
async fn start_with<K: KvBackend>(api_kv: K, kv: MemoryBackend, options: ApiOptions) -> Harness<K> {
    let (agent, mut rx) = agent_channel(Duration::from_secs(5));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let (what, reply, answer) = match req {
                AgentRequest::Restart { request, reply } => {
                    let answer = if request.schedule.is_some() {
                        AgentReply::Scheduled("Restart scheduled".into())
                    } else {
                        AgentReply::Done("restarted successfully".into())
                    };
                    (format!("restart {request:?}"), Some(reply), answer)
                }
                AgentRequest::CancelScheduledRestart { reply } => {
                    ("cancel restart".into(), Some(reply), AgentReply::Failed("none".into()))
                }
                AgentRequest::Reload { reply } => ("reload".into(), Some(reply), AgentReply::Done(String::new())),
                AgentRequest::Reinitialize { from_leader, reply } => {
                    (format!("reinitialize from_leader={from_leader}"), Some(reply), AgentReply::Done(String::new()))
                }
                AgentRequest::RecreateSlot { slot, reply } => {
                    (format!("recreate {slot}"), Some(reply), AgentReply::Done(String::new()))
                }
                AgentRequest::Wakeup => ("wakeup".into(), None, AgentReply::Done(String::new())),
            };
            log.lock().unwrap().push(what);
            if let Some(r) = reply {
                let _ = r.send(answer);
            }
        }
    });
    let fake = Arc::new(Fake {
        status: Mutex::new(replica_status()),
        store: ClusterStore::new(api_kv, "service", SCOPE, "n2", 30),
        agent,
        failsafe: FailsafeState::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(fake.clone(), options);
    tokio::spawn(async move { axum::serve(listener, app).await });
    keel::cli::tls::install_crypto_provider();
    Harness { base: format!("http://{addr}"), http: reqwest::Client::new(), kv, fake, seen }
}

fn fast() -> ApiOptions {
    ApiOptions {
        switchover_wait: Some(Duration::from_secs(5)),
        poll_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

impl<K: KvBackend> Harness<K> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> (StatusCode, String) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let code = resp.status();
        (code, resp.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        let code = resp.status();
        (code, resp.json().await.unwrap_or(Value::Null))
    }

    async fn view(&self) -> ClusterView {
        member_store(&self.kv, "observer").load().await.unwrap()
    }

    /// Leader n1 (primary) and replica n2, both running, plus a config.
    async fn seed_cluster(&self) {
        let n1 = member_store(&self.kv, "n1");
        n1.touch_member(&json!({"state":"running","role":"primary","api_url":"http://127.0.0.1:1/patroni",
            "conn_url":"postgres://10.0.0.1:5432/postgres","timeline":2,"xlog_location":300}))
            .await
            .unwrap();
        assert!(n1.acquire_leader().await.unwrap());
        let n2 = member_store(&self.kv, "n2");
        n2.touch_member(&json!({"state":"running","role":"replica","api_url":"http://127.0.0.1:2/patroni",
            "conn_url":"postgres://10.0.0.2:5433/postgres","timeline":2,"xlog_location":250,"receive_lsn":250,
            "replay_lsn":240,"replication_state":"streaming","tags":{"zone":"b"}}))
            .await
            .unwrap();
        n1.set_config(&json!({"ttl":30,"loop_wait":10,"postgresql":{"parameters":{"max_connections":100}}}), Some(0))
            .await
            .unwrap();
        n1.set_status(&keel_core::view::Status { optime: Some(Lsn(300)), ..Default::default() }).await.unwrap();
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Plays the HA loop of a switchover: once the failover key appears, n1 releases the leader key, `to` takes it and
/// clears the failover key. Deadline-bounded.
fn switch_leader_when_requested(kv: &MemoryBackend, from: Option<&'static str>, to: &'static str) {
    let kv = kv.clone();
    tokio::spawn(async move {
        let observer = member_store(&kv, "observer");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let view = observer.load().await.unwrap();
            if view.failover.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "no failover key appeared");
            let _ = observer.watch_prefix(Duration::from_millis(100)).await;
        }
        if let Some(f) = from {
            member_store(&kv, f).delete_leader().await.unwrap();
        }
        let new = member_store(&kv, to);
        assert!(new.acquire_leader().await.unwrap());
        new.clear_failover(None).await.unwrap();
    });
}

#[tokio::test]
async fn cluster_history_and_config_reads() {
    let h = start(fast()).await;
    let (code, _) = h.send(reqwest::Method::GET, "/config", None).await;
    assert_eq!(code, 502, "config key missing");
    let (code, hist) = h.get_json("/history").await;
    assert_eq!((code, hist), (StatusCode::OK, json!([])));

    h.seed_cluster().await;
    let entry = HistoryEntry {
        timeline: 1,
        lsn: Lsn(100),
        reason: "no recovery target specified".into(),
        timestamp: Some("2026-01-01T00:00:00+00:00".into()),
        new_leader: Some("n1".into()),
    };
    h.fake.store.set_history(&[entry]).await.unwrap();

    let (code, cluster) = h.get_json("/cluster").await;
    assert_eq!(code, 200);
    assert_eq!(cluster["scope"], SCOPE);
    let members = cluster["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!((members[0]["name"].as_str(), members[0]["role"].as_str()), (Some("n1"), Some("leader")));
    assert_eq!(members[0]["host"], "10.0.0.1");
    assert_eq!(members[0]["port"], 5432);
    assert_eq!(members[1]["role"], "replica");
    assert_eq!(members[1]["state"], "streaming");
    assert_eq!(members[1]["lag"], 50);
    assert_eq!(members[1]["replay_lag"], 60);
    assert_eq!(members[1]["lsn"], "0/FA");
    assert_eq!(members[1]["tags"], json!({"zone":"b"}));
    assert!(cluster.get("pause").is_none() && cluster.get("scheduled_switchover").is_none());

    let (code, hist) = h.get_json("/history").await;
    assert_eq!(code, 200);
    assert_eq!(hist, json!([[1, 100, "no recovery target specified", "2026-01-01T00:00:00+00:00", "n1"]]));

    let (code, cfg) = h.get_json("/config").await;
    assert_eq!(code, 200);
    assert_eq!(cfg["postgresql"]["parameters"]["max_connections"], 100);
}

#[tokio::test]
async fn patch_config_merges_with_null_deletes_and_put_replaces() {
    let h = start(fast()).await;
    let (code, _) = h.send(reqwest::Method::PATCH, "/config", Some(r#"{"ttl":20}"#)).await;
    assert_eq!(code, 503, "PATCH needs an existing config");
    h.seed_cluster().await;

    let patch = r#"{"loop_wait":null,"postgresql":{"parameters":{"max_connections":null,"work_mem":"8MB"}},
                    "synchronous_mode":true,"slots":{"cdc":{"type":"logical","database":"app","plugin":null}}}"#;
    let (code, body) = h.send(reqwest::Method::PATCH, "/config", Some(patch)).await;
    assert_eq!(code, 200, "{body}");
    let want = json!({"ttl":30,"postgresql":{"parameters":{"work_mem":"8MB"}},"synchronous_mode":true,
        "slots":{"cdc":{"type":"logical","database":"app","plugin":null}}});
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), want);
    assert_eq!(h.view().await.config.unwrap().value.raw, want);
    assert!(h.seen().contains(&"wakeup".to_string()));

    let before = h.view().await.config.unwrap();
    for bad in ["{not json", "[1,2]", "{}", "\"x\"", ""] {
        let (code, _) = h.send(reqwest::Method::PATCH, "/config", Some(bad)).await;
        assert_eq!(code, 400, "PATCH {bad:?}");
        let (code, _) = h.send(reqwest::Method::PUT, "/config", Some(bad)).await;
        assert_eq!(code, 400, "PUT {bad:?}");
    }
    assert_eq!(h.view().await.config.unwrap(), before, "bad bodies change nothing");

    let (code, body) = h.send(reqwest::Method::PUT, "/config", Some(r#"{"ttl":40,"pause":true}"#)).await;
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"ttl":40,"pause":true}));
    let (_, cfg) = h.get_json("/config").await;
    assert_eq!(cfg, json!({"ttl":40,"pause":true}));
}

/// A dynamic setting Keel does not run (e.g. `synchronous_mode: quorum`), an unknown key or a wrong type is
/// refused with 422 naming it, through PATCH and PUT, and nothing is written.
#[tokio::test]
async fn config_writes_refuse_what_keel_does_not_run() {
    let h = start(fast()).await;
    h.seed_cluster().await;
    let before = h.view().await.config.unwrap();
    let cases = [
        (r#"{"synchronous_mode":"quorum"}"#, "`synchronous_mode`: quorum commit is not implemented"),
        (r#"{"standby_cluster":{"host":"10.0.0.1"}}"#, "`standby_cluster`: Keel runs primary clusters only"),
        (r#"{"postgresql":{"recovery_conf":{"restore_command":"cp"}}}"#, "`postgresql.recovery_conf`"),
        (r#"{"synchronus_mode":true}"#, "unknown setting `synchronus_mode`"),
        (r#"{"ttl":"soon"}"#, "`ttl` must be seconds"),
    ];
    for (body, needle) in cases {
        for method in [reqwest::Method::PATCH, reqwest::Method::PUT] {
            let (code, text) = h.send(method.clone(), "/config", Some(body)).await;
            assert_eq!(code, 422, "{method} {body}: {text}");
            assert!(text.contains(needle) && text.contains("configuration not changed"), "{method} {body}: {text}");
        }
    }
    assert_eq!(h.view().await.config.unwrap(), before, "refused writes change nothing");
    // A stored refused setting must be removed before anything else changes; removing it is accepted.
    h.fake.store.set_config(&json!({"ttl":30,"synchronous_mode":"quorum"}), None).await.unwrap();
    let (code, text) = h.send(reqwest::Method::PATCH, "/config", Some(r#"{"ttl":40}"#)).await;
    assert_eq!(code, 422, "{text}");
    let (code, text) = h.send(reqwest::Method::PATCH, "/config", Some(r#"{"synchronous_mode":"on"}"#)).await;
    assert_eq!(code, 200, "{text}");
}

#[tokio::test]
async fn write_endpoints_require_basic_auth() {
    let auth = BasicAuth { username: "admin".into(), password: "secret".into() };
    let h = start(ApiOptions { auth: Some(auth), ..fast() }).await;
    h.seed_cluster().await;
    let before = h.view().await;
    let cases: &[(reqwest::Method, &str, Option<&str>)] = &[
        (reqwest::Method::PATCH, "/config", Some(r#"{"ttl":99}"#)),
        (reqwest::Method::PUT, "/config", Some(r#"{"ttl":99}"#)),
        (reqwest::Method::POST, "/switchover", Some(r#"{"leader":"n1","candidate":"n2"}"#)),
        (reqwest::Method::POST, "/failover", Some(r#"{"candidate":"n2"}"#)),
        (reqwest::Method::DELETE, "/switchover", None),
        (reqwest::Method::POST, "/restart", Some("{}")),
        (reqwest::Method::DELETE, "/restart", None),
        (reqwest::Method::POST, "/reload", None),
        (reqwest::Method::POST, "/reinitialize", Some("{}")),
        (reqwest::Method::POST, "/failsafe", Some(r#"{"name":"n1"}"#)),
    ];
    for (method, path, body) in cases {
        for creds in [None, Some(("admin", "wrong")), Some(("other", "secret"))] {
            let mut req = h.http.request(method.clone(), h.url(path));
            if let Some((u, p)) = creds {
                req = req.basic_auth(u, Some(p));
            }
            if let Some(b) = body {
                req = req.body(b.to_string());
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {creds:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"Keel\"");
        }
    }
    let after = h.view().await;
    assert_eq!((after.config, after.failover, after.leader), (before.config, before.failover, before.leader));
    assert!(h.seen().is_empty(), "the agent was asked nothing: {:?}", h.seen());

    // Reads stay open; the right credentials pass.
    assert_eq!(h.get_json("/config").await.0, 200);
    let resp =
        h.http.patch(h.url("/config")).basic_auth("admin", Some("secret")).body(r#"{"ttl":25}"#).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h.view().await.config.unwrap().value.raw["ttl"], 25);
}

#[tokio::test]
async fn switchover_waits_until_the_candidate_holds_the_leader_key() {
    let h = start(fast()).await;
    h.seed_cluster().await;
    switch_leader_when_requested(&h.kv, Some("n1"), "n2");
    let (code, body) = h.send(reqwest::Method::POST, "/switchover", Some(r#"{"leader":"n1","candidate":"n2"}"#)).await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "Successfully switched over to \"n2\""));
    assert_eq!(h.view().await.leader.unwrap().name, "n2");
}

#[tokio::test]
async fn failover_to_a_candidate_without_a_leader() {
    let h = start(fast()).await;
    h.seed_cluster().await;
    member_store(&h.kv, "n1").delete_leader().await.unwrap();
    let (code, body) = h.send(reqwest::Method::POST, "/failover", Some("{\"leader\":null}")).await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::BAD_REQUEST, "Failover could be performed only to a specific candidate")
    );
    switch_leader_when_requested(&h.kv, None, "n2");
    let (code, body) = h.send(reqwest::Method::POST, "/failover", Some(r#"{"candidate":"n2"}"#)).await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "Successfully failed over to \"n2\""));
}

#[tokio::test]
async fn switchover_reports_failure_and_timeout() {
    let opts = ApiOptions { switchover_wait: Some(Duration::from_secs(1)), ..fast() };
    let h = start(opts).await;
    h.seed_cluster().await;
    let (code, body) = h.send(reqwest::Method::POST, "/switchover", Some(r#"{"leader":"n1"}"#)).await;
    assert_eq!((code, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "Switchover status unknown"));
    let pending = h.view().await.failover.unwrap().value;
    assert_eq!(pending, FailoverRequest { leader: Some("n1".into()), member: None, scheduled_at: None });

    // The request is still pending: a second one is refused, nothing is overwritten.
    let (code, _) = h.send(reqwest::Method::POST, "/switchover", Some(r#"{"leader":"n1","candidate":"n2"}"#)).await;
    assert_eq!(code, 409);
    assert_eq!(h.view().await.failover.unwrap().value, pending);

    // The leader refuses (clears the key without handing over): 503 failed.
    h.fake.store.clear_failover(None).await.unwrap();
    let kv = h.kv.clone();
    tokio::spawn(async move {
        let s = member_store(&kv, "n1");
        let deadline = Instant::now() + DEADLINE;
        while s.load().await.unwrap().failover.is_none() {
            assert!(Instant::now() < deadline);
            let _ = s.watch_prefix(Duration::from_millis(50)).await;
        }
        s.clear_failover(None).await.unwrap();
    });
    let opts_long = h.send(reqwest::Method::POST, "/switchover", Some(r#"{"leader":"n1","candidate":"n2"}"#)).await;
    assert_eq!(opts_long, (StatusCode::SERVICE_UNAVAILABLE, "Switchover failed".to_string()));
}

#[tokio::test]
async fn switchover_validation_errors() {
    let h = start(fast()).await;
    h.seed_cluster().await;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/switchover", "{bad json", 400, ""),
        ("/switchover", "[]", 400, ""),
        ("/switchover", r#"{"leader":7}"#, 400, "\"leader\" must be a string"),
        ("/switchover", r#"{"candidate":"n2"}"#, 400, "Switchover could be performed only from a specific leader"),
        ("/switchover", r#"{"leader":"n9","candidate":"n2"}"#, 412, "leader name does not match"),
        ("/switchover", r#"{"leader":"n1","candidate":"n9"}"#, 412, "candidate does not exists"),
        ("/switchover", r#"{"leader":"n1","candidate":"n1"}"#, 400, "Switchover target and source are the same"),
        (
            "/switchover",
            r#"{"leader":"n1","candidate":"n2","scheduled_at":"2999-01-01T00:00:00"}"#,
            400,
            "Timezone information is mandatory for the scheduled switchover",
        ),
        (
            "/switchover",
            r#"{"leader":"n1","candidate":"n2","scheduled_at":"2001-01-01T00:00:00Z"}"#,
            422,
            "Cannot schedule switchover in the past",
        ),
        (
            "/failover",
            r#"{"candidate":"n2","scheduled_at":"2999-01-01T00:00:00Z"}"#,
            400,
            "Failover can't be scheduled",
        ),
    ];
    for (path, body, code, msg) in cases {
        let (c, m) = h.send(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(c.as_u16(), *code, "{path} {body}: {m}");
        if !msg.is_empty() {
            assert_eq!(m, *msg, "{path} {body}");
        }
    }
    // The candidate is stopped, then the leader is alone.
    let n2 = member_store(&h.kv, "n2");
    n2.touch_member(&json!({"state":"stopped","api_url":"http://127.0.0.1:2/patroni"})).await.unwrap();
    let (c, m) = h.send(reqwest::Method::POST, "/switchover", Some(r#"{"leader":"n1","candidate":"n2"}"#)).await;
    assert_eq!((c.as_u16(), m.as_str()), (412, "switchover is not possible: no good candidates have been found"));
    n2.revoke_lease().await.unwrap();
    let (c, m) = h.send(reqwest::Method::POST, "/switchover", Some(r#"{"leader":"n1"}"#)).await;
    assert_eq!(
        (c.as_u16(), m.as_str()),
        (412, "switchover is not possible: cluster does not have members except leader")
    );
    assert!(h.view().await.failover.is_none(), "no refused request was written");
}

#[tokio::test]
async fn concurrent_switchovers_one_wins() {
    let h = start(fast()).await;
    h.seed_cluster().await;
    switch_leader_when_requested(&h.kv, Some("n1"), "n2");
    let a = h.send(reqwest::Method::POST, "/switchover", Some(r#"{"leader":"n1","candidate":"n2"}"#));
    let b = h.send(reqwest::Method::POST, "/switchover", Some(r#"{"leader":"n1"}"#));
    let (ra, rb) = tokio::join!(a, b);
    let codes = [ra.0.as_u16(), rb.0.as_u16()];
    let winners = codes.iter().filter(|c| **c == 200).count();
    let losers = codes.iter().filter(|c| matches!(**c, 409 | 412)).count();
    assert_eq!((winners, losers), (1, 1), "{ra:?} {rb:?}");
}

#[tokio::test]
async fn scheduled_switchover_is_accepted_shown_and_deleted() {
    let h = start(fast()).await;
    h.seed_cluster().await;
    let (code, body) = h.send(reqwest::Method::DELETE, "/switchover", None).await;
    assert_eq!((code.as_u16(), body.as_str()), (404, "no switchover is scheduled"));
    let req = r#"{"leader":"n1","candidate":"n2","scheduled_at":"2999-01-01T00:00:00+00:00"}"#;
    let (code, body) = h.send(reqwest::Method::POST, "/switchover", Some(req)).await;
    assert_eq!((code.as_u16(), body.as_str()), (202, "Switchover scheduled"));
    let (_, cluster) = h.get_json("/cluster").await;
    assert_eq!(cluster["scheduled_switchover"], json!({"at":"2999-01-01T00:00:00+00:00","from":"n1","to":"n2"}));
    let (code, body) = h.send(reqwest::Method::DELETE, "/switchover", None).await;
    assert_eq!((code.as_u16(), body.as_str()), (200, "scheduled switchover deleted"));
    assert!(h.view().await.failover.is_none());
    let (code, _) = h.send(reqwest::Method::DELETE, "/switchover", None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn restart_reload_and_reinitialize_go_through_the_agent() {
    let h = start(fast()).await;
    h.seed_cluster().await;
    let (code, body) = h.send(reqwest::Method::POST, "/restart", None).await;
    assert_eq!((code.as_u16(), body.as_str()), (200, "restarted successfully"));
    let (code, body) = h.send(reqwest::Method::POST, "/restart", Some(r#"{"role":"primary"}"#)).await;
    assert_eq!((code.as_u16(), body.as_str()), (503, "restart conditions are not satisfied"));
    let (code, _) = h.send(reqwest::Method::POST, "/restart", Some(r#"{"role":"boss"}"#)).await;
    assert_eq!(code, 400);
    let (code, _) = h.send(reqwest::Method::POST, "/restart", Some(r#"{"restart_pending":"maybe"}"#)).await;
    assert_eq!(code, 400);
    let (code, _) = h.send(reqwest::Method::POST, "/restart", Some("{oops")).await;
    assert_eq!(code, 400);
    let (code, body) = h
        .send(
            reqwest::Method::POST,
            "/restart",
            Some(r#"{"schedule":"2999-01-01T00:00:00Z","postgres_version":"16.1"}"#),
        )
        .await;
    assert_eq!((code.as_u16(), body.as_str()), (202, "Restart scheduled"));
    let (code, _) = h.send(reqwest::Method::DELETE, "/restart", None).await;
    assert_eq!(code, 404);

    let (code, body) = h.send(reqwest::Method::POST, "/reload", None).await;
    assert_eq!((code.as_u16(), body.as_str()), (202, "reload scheduled"));

    let (code, body) = h.send(reqwest::Method::POST, "/reinitialize", Some(r#"{"force":true}"#)).await;
    assert_eq!((code.as_u16(), body.as_str()), (200, "reinitialize started"));
    let (code, _) = h.send(reqwest::Method::POST, "/reinitialize", Some(r#"{"force":"x"}"#)).await;
    assert_eq!(code, 400);
    h.fake.status.lock().unwrap().is_leader = true;
    let (code, body) = h.send(reqwest::Method::POST, "/reinitialize", None).await;
    assert_eq!((code.as_u16(), body.as_str()), (503, "I am the leader, can not reinitialize"));

    let seen: Vec<String> = h.seen().into_iter().filter(|s| s != "wakeup").collect();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen[0].starts_with("restart") && seen[1].contains("schedule: Some"), "{seen:?}");
    assert!(seen[1].contains("postgres_version: Some(160001)"), "{seen:?}");
    assert_eq!(&seen[2..], ["cancel restart", "reload", "reinitialize from_leader=false"]);

    // In pause a scheduled restart is refused with 500.
    h.fake.store.set_config(&json!({"pause":true}), None).await.unwrap();
    let (code, body) = h.send(reqwest::Method::POST, "/restart", Some(r#"{"schedule":"2999-01-01T00:00:00Z"}"#)).await;
    assert_eq!((code.as_u16(), body.as_str()), (500, "Can't schedule restart in the paused state"));
}

#[tokio::test]
async fn failsafe_endpoints() {
    let h = start(fast()).await;
    let (code, _) = h.send(reqwest::Method::POST, "/failsafe", Some(r#"{"name":"n1"}"#)).await;
    assert_eq!(code, 502, "failsafe mode disabled");
    let (code, _) = h.send(reqwest::Method::GET, "/failsafe", None).await;
    assert_eq!(code, 502, "no failsafe key");

    h.fake.failsafe.set_config(true, None);
    let (code, _) = h.send(reqwest::Method::POST, "/failsafe", Some(r#"{"api_url":"x"}"#)).await;
    assert_eq!(code, 400);
    // Only members named in the failsafe key may announce themselves.
    let (code, _) = h.send(reqwest::Method::POST, "/failsafe", Some(r#"{"name":"n1"}"#)).await;
    assert_eq!(code, 403, "no failsafe key read yet");
    let known = [("n1".to_string(), "http://h1:8008/patroni".to_string())].into_iter().collect();
    h.fake.failsafe.set_config(true, Some(known));
    let (code, _) = h.send(reqwest::Method::POST, "/failsafe", Some(r#"{"name":"n9"}"#)).await;
    assert_eq!(code, 403, "not a member");
    let resp = h
        .http
        .post(h.url("/failsafe"))
        .body(r#"{"name":"n1","conn_url":"postgres://h1:5432/postgres","api_url":"http://h1:8008/patroni","slots":{"n1":500,"s1":400}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["lsn"], "200");
    assert_eq!(resp.text().await.unwrap(), "Accepted");
    let got = h.fake.failsafe.active(Duration::from_secs(30)).unwrap();
    assert_eq!((got.name.as_str(), got.slots.get("s1")), ("n1", Some(&Lsn(400))));

    {
        let mut st = h.fake.status.lock().unwrap();
        st.role = Some(Role::Primary);
    }
    let (code, body) = h.send(reqwest::Method::POST, "/failsafe", Some(r#"{"name":"n1"}"#)).await;
    assert_eq!((code.as_u16(), body.as_str()), (500, "Running as a leader"));

    let members = [("n1".to_string(), "http://h1:8008/patroni".to_string())].into_iter().collect();
    h.fake.store.set_failsafe(&members).await.unwrap();
    let (code, body) = h.get_json("/failsafe").await;
    assert_eq!((code.as_u16(), body), (200, json!({"n1":"http://h1:8008/patroni"})));
}

/// A store where another client writes `config` and `failover` just before the armed next transaction, so the
/// API's compare-and-swap is guaranteed to lose.
#[derive(Clone)]
struct Racy {
    inner: MemoryBackend,
    armed: Arc<AtomicBool>,
}

impl KvBackend for Racy {
    async fn range(&self, prefix: &str) -> Result<Range, DcsError> {
        self.inner.range(prefix).await
    }
    async fn txn(&self, txn: &Txn) -> Result<bool, DcsError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            let other = member_store(&self.inner, "other");
            other.set_config(&json!({"ttl": 99}), None).await?;
            let req = FailoverRequest { leader: Some("n1".into()), member: Some("other".into()), scheduled_at: None };
            other.set_failover(&req, None).await?;
        }
        self.inner.txn(txn).await
    }
    async fn grant_lease(&self, ttl_secs: u64) -> Result<i64, DcsError> {
        self.inner.grant_lease(ttl_secs).await
    }
    async fn keepalive(&self, lease: i64) -> Result<(), DcsError> {
        self.inner.keepalive(lease).await
    }
    async fn revoke(&self, lease: i64) -> Result<(), DcsError> {
        self.inner.revoke(lease).await
    }
    async fn watch(&self, keys: &[WatchKey], after: i64, timeout: Duration) -> Result<bool, DcsError> {
        self.inner.watch(keys, after, timeout).await
    }
}

#[tokio::test]
async fn lost_compare_and_swap_is_a_conflict() {
    let kv = MemoryBackend::new();
    let armed = Arc::new(AtomicBool::new(false));
    let h = start_with(Racy { inner: kv.clone(), armed: armed.clone() }, kv, fast()).await;
    h.seed_cluster().await;

    armed.store(true, Ordering::SeqCst);
    let (code, _) = h.send(reqwest::Method::PATCH, "/config", Some(r#"{"ttl":25}"#)).await;
    assert_eq!(code, 409);
    assert_eq!(h.view().await.config.unwrap().value.raw, json!({"ttl": 99}), "the other writer's config stays");

    h.fake.store.clear_failover(None).await.unwrap();
    armed.store(true, Ordering::SeqCst);
    let (code, body) = h.send(reqwest::Method::POST, "/switchover", Some(r#"{"leader":"n1","candidate":"n2"}"#)).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(h.view().await.failover.unwrap().value.member.as_deref(), Some("other"), "not overwritten");
}
