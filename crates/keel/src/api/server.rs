//! The HTTP server: routes Patroni's paths to the health rules, the status document and the control operations.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use base64::Engine;

use super::health::{passes, Check};
use super::metrics;
use crate::status::NodeStatus;

/// What the API needs from the running agent.
pub trait ApiBackend: Send + Sync + 'static {
    /// The node's latest status snapshot (cheap; never waits on the HA loop).
    fn node_status(&self) -> NodeStatus;
}

/// Basic-auth credentials that write endpoints require (`restapi.authentication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl BasicAuth {
    /// Whether the request's `Authorization` header carries these credentials.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some(encoded) = value.strip_prefix("Basic ") else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        let expected = format!("{}:{}", self.username, self.password);
        decoded == expected.as_bytes()
    }
}

#[allow(dead_code)] // `auth` guards the write endpoints, which arrive with the agent.
pub(crate) struct AppState<B> {
    pub backend: Arc<B>,
    pub auth: Option<BasicAuth>,
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Builds the router for a backend.
pub fn router<B: ApiBackend>(backend: Arc<B>, auth: Option<BasicAuth>) -> Router {
    let state = Arc::new(AppState { backend, auth });
    Router::new()
        .route("/patroni", get(patroni::<B>))
        .route("/metrics", get(metrics_handler::<B>))
        .fallback(any(health::<B>))
        .with_state(state)
}

async fn patroni<B: ApiBackend>(State(s): State<Arc<AppState<B>>>) -> Response {
    Json(s.backend.node_status().to_json()).into_response()
}

async fn metrics_handler<B: ApiBackend>(State(s): State<Arc<AppState<B>>>) -> Response {
    match metrics::render(&s.backend.node_status()) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "could not encode metrics").into_response(),
    }
}

async fn health<B: ApiBackend>(
    State(s): State<Arc<AppState<B>>>,
    method: Method,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let Some(check) = Check::from_path(uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    if method != Method::GET && method != Method::HEAD && method != Method::OPTIONS {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let st = s.backend.node_status();
    let code = if passes(check, &st, &query, unix_ms()) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if method == Method::OPTIONS || check == Check::Liveness {
        return code.into_response();
    }
    (code, Json(st.to_json())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::view::Role;

    struct Fixed(NodeStatus);

    impl ApiBackend for Fixed {
        fn node_status(&self) -> NodeStatus {
            self.0.clone()
        }
    }

    async fn start(st: NodeStatus) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Arc::new(Fixed(st)), None);
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn health_checks_answer_per_role_for_get_head_and_options() {
        let base = start(NodeStatus {
            scope: "c".into(),
            name: "n1".into(),
            state: "running".into(),
            role: Some(Role::Primary),
            is_leader: true,
            ..Default::default()
        })
        .await;
        let client = reqwest::Client::new();
        for (method, path, code) in [
            (Method::GET, "/", 200),
            (Method::GET, "/primary", 200),
            (Method::HEAD, "/read-write", 200),
            (Method::OPTIONS, "/leader", 200),
            (Method::GET, "/replica", 503),
            (Method::OPTIONS, "/replica", 503),
            (Method::GET, "/health", 200),
            (Method::GET, "/nope", 404),
        ] {
            let resp = client.request(method.clone(), format!("{base}{path}")).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), code, "{method} {path}");
        }
        let body: serde_json::Value = client.get(format!("{base}/patroni")).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["role"], "primary");
        assert_eq!(body["patroni"]["name"], "n1");
        let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(text.contains("patroni_primary"));
    }

    #[test]
    fn basic_auth_checks_the_header() {
        let auth = BasicAuth { username: "u".into(), password: "p".into() };
        let mut h = HeaderMap::new();
        assert!(!auth.allows(&h));
        let good = base64::engine::general_purpose::STANDARD.encode("u:p");
        h.insert(header::AUTHORIZATION, format!("Basic {good}").parse().unwrap());
        assert!(auth.allows(&h));
        h.insert(header::AUTHORIZATION, "Basic dTp4".parse().unwrap());
        assert!(!auth.allows(&h));
    }
}
