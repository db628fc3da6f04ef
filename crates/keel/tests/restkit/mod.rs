//! A REST API server on loopback with a fixed node status, an in-memory store and an HA loop stand-in that
//! answers every request, served by the real accept loop (TLS, limits): for the REST TLS and abuse tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel::agent::failsafe::FailsafeState;
use keel::agent::request_channel::{agent_channel, AgentHandle, AgentReply, AgentRequest};
use keel::api::listener::{serve, Limits};
use keel::api::server::{router, ApiBackend, ApiOptions, BasicAuth};
use keel::api::tls::ServerTls;
use keel::config::{Config, Env};
use keel::dcs::{ClusterStore, MemoryBackend};
use keel::status::NodeStatus;
use keel_core::view::Role;

pub struct Fixed {
    pub st: NodeStatus,
    pub store: ClusterStore<MemoryBackend>,
    pub agent: AgentHandle,
    pub failsafe: FailsafeState,
}

impl ApiBackend for Fixed {
    type Kv = MemoryBackend;
    fn node_status(&self) -> NodeStatus {
        self.st.clone()
    }
    fn store(&self) -> &ClusterStore<MemoryBackend> {
        &self.store
    }
    fn agent(&self) -> &AgentHandle {
        &self.agent
    }
    fn failsafe(&self) -> &FailsafeState {
        &self.failsafe
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub backend: Arc<Fixed>,
}

/// Starts a server for a running primary `n1` of cluster `c`; the stand-in HA loop accepts every request.
pub async fn start(tls: Option<Arc<ServerTls>>, auth: Option<BasicAuth>, limits: Limits) -> Server {
    start_as(Role::Primary, tls, auth, limits).await
}

/// Like [`start`], for a node in `role`.
pub async fn start_as(role: Role, tls: Option<Arc<ServerTls>>, auth: Option<BasicAuth>, limits: Limits) -> Server {
    start_with(role, ApiOptions { tls, ..ApiOptions::with_auth(auth) }, limits).await
}

/// Like [`start`], for a node in `role`, with any API options.
pub async fn start_with(role: Role, options: ApiOptions, limits: Limits) -> Server {
    let tls = options.tls.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (agent, mut rx) = agent_channel(Duration::from_secs(5));
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let reply = match req {
                AgentRequest::Reload { reply } | AgentRequest::CancelScheduledRestart { reply } => reply,
                AgentRequest::Restart { reply, .. } | AgentRequest::Reinitialize { reply, .. } => reply,
                AgentRequest::RecreateSlot { reply, .. } => reply,
                AgentRequest::Wakeup => continue,
            };
            let _ = reply.send(AgentReply::Done("done".into()));
        }
    });
    let st = NodeStatus {
        scope: "c".into(),
        name: "n1".into(),
        state: keel_core::member_state::MemberState::Running,
        role: Some(role),
        is_leader: role == Role::Primary,
        ..Default::default()
    };
    let store = ClusterStore::new(MemoryBackend::new(), "/service/", "c", "n1", 30);
    let backend = Arc::new(Fixed { st, store, agent, failsafe: FailsafeState::new() });
    let app = router(backend.clone(), options);
    tokio::spawn(serve(listener, app, tls, limits));
    Server { addr, backend }
}

/// A configuration with `restapi` and `ctl` lines (each indented by two spaces) for client-side settings.
pub fn config(restapi: &str, ctl: &str) -> Config {
    let yaml = format!(
        "scope: c\nname: n1\nrestapi:\n  listen: 127.0.0.1:8008\n{restapi}etcd3:\n  host: 127.0.0.1:2379\n\
         postgresql:\n  listen: 127.0.0.1:5432\n  connect_address: 127.0.0.1:5432\n  data_dir: /x\nctl:\n  \
         authentication: {{}}\n{ctl}"
    );
    Config::from_str(&yaml, &Env::new()).expect("test configuration").config
}
