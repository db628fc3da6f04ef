//! Who may call the REST API's unsafe methods: `restapi.allowlist`, `allowlist_include_members` (not for
//! `POST /failsafe`), and basic auth; safe methods stay open to health checks.

mod restkit;

use std::time::Duration;

use keel::api::access::{from_config, Allowlist};
use keel::api::listener::Limits;
use keel::api::server::{ApiOptions, BasicAuth};
use keel::dcs::ClusterStore;
use keel_core::view::Role;
use serde_json::json;

async fn allowlist(entries: &[&str], include_members: bool) -> Allowlist {
    let mut list = String::from("  allowlist:\n");
    for e in entries {
        list += &format!("  - {e}\n");
    }
    if include_members {
        list += "  allowlist_include_members: true\n";
    }
    from_config(&restkit::config(&list, "").restapi).await.expect("allowlist").0
}

async fn status(client: &reqwest::Client, method: reqwest::Method, url: String) -> u16 {
    client.request(method, url).timeout(Duration::from_secs(10)).send().await.unwrap().status().as_u16()
}

fn client() -> reqwest::Client {
    keel::cli::tls::install_crypto_provider();
    reqwest::Client::new()
}

#[tokio::test]
async fn the_allowlist_guards_unsafe_methods_only() {
    let options =
        ApiOptions { allowlist: allowlist(&["10.0.0.0/8", "192.168.0.1"], false).await, ..Default::default() };
    let srv = restkit::start_with(Role::Replica, options, Limits::default()).await;
    let base = format!("http://127.0.0.1:{}", srv.addr.port());
    let c = client();
    assert_eq!(status(&c, reqwest::Method::GET, format!("{base}/health")).await, 200);
    let r = c.post(format!("{base}/reload")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.text().await.unwrap(), "Access is denied");

    let options = ApiOptions { allowlist: allowlist(&["10.0.0.0/8", "localhost"], false).await, ..Default::default() };
    let srv = restkit::start_with(Role::Replica, options, Limits::default()).await;
    assert_eq!(status(&c, reqwest::Method::POST, format!("http://127.0.0.1:{}/reload", srv.addr.port())).await, 202);
}

#[tokio::test]
async fn members_are_allowed_with_allowlist_include_members() {
    let options = ApiOptions { allowlist: allowlist(&[], true).await, ..Default::default() };
    let srv = restkit::start_with(Role::Replica, options, Limits::default()).await;
    let url = format!("http://127.0.0.1:{}/reload", srv.addr.port());
    let c = client();
    // No member at this address yet.
    let other = ClusterStore::new(srv.backend.store.backend().clone(), "/service/", "c", "n2", 30);
    other.touch_member(&json!({"api_url": "http://10.1.1.1:8008/patroni"})).await.unwrap();
    assert_eq!(status(&c, reqwest::Method::POST, url.clone()).await, 403);
    let third = ClusterStore::new(srv.backend.store.backend().clone(), "/service/", "c", "n3", 30);
    third.touch_member(&json!({"api_url": "https://localhost:8010/patroni"})).await.unwrap();
    assert_eq!(status(&c, reqwest::Method::POST, url).await, 202);
}

#[tokio::test]
async fn basic_auth_protects_every_unsafe_method() {
    let auth = BasicAuth { username: "admin".into(), password: "s3cret".into() };
    let srv = restkit::start_with(Role::Replica, ApiOptions::with_auth(Some(auth)), Limits::default()).await;
    let base = format!("http://127.0.0.1:{}", srv.addr.port());
    let c = client();
    for (method, path) in [
        (reqwest::Method::POST, "/reload"),
        (reqwest::Method::POST, "/restart"),
        (reqwest::Method::DELETE, "/restart"),
        (reqwest::Method::POST, "/switchover"),
        (reqwest::Method::POST, "/failover"),
        (reqwest::Method::PATCH, "/config"),
        (reqwest::Method::PUT, "/config"),
        (reqwest::Method::POST, "/reinitialize"),
        (reqwest::Method::POST, "/failsafe"),
        (reqwest::Method::POST, "/slots/recreate"),
        (reqwest::Method::DELETE, "/switchover"),
    ] {
        let url = format!("{base}{path}");
        assert_eq!(status(&c, method.clone(), url.clone()).await, 401, "{method} {path} without credentials");
        let wrong = c.request(method.clone(), &url).basic_auth("admin", Some("s3cres")).send().await.unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "{method} {path} with a wrong password");
    }
    let ok = c.post(format!("{base}/reload")).basic_auth("admin", Some("s3cret")).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 202);
    assert_eq!(status(&c, reqwest::Method::GET, format!("{base}/health")).await, 200);
}

#[tokio::test]
async fn half_configured_authentication_is_refused() {
    let cfg = restkit::config("  authentication:\n    username: admin\n", "");
    let err = from_config(&cfg.restapi).await.unwrap_err();
    assert!(err.contains("needs both username and password"), "{err}");
}
