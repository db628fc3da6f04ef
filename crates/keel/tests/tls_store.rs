//! The store over TLS with client certificates and with etcd authentication (a role limited to the cluster's
//! prefix): the right settings elect a leader and fail over; a wrong CA, a missing client certificate or a wrong
//! password fail with a message naming the endpoint and what to check, never the password.

use std::path::Path;
use std::time::Duration;

use keel::dcs::{ClusterStore, DcsError, EtcdBackend, EtcdConfig, EtcdSecurity, EtcdTls, EtcdUser};
use keel_testkit::{EtcdServer, EtcdServerTls, EtcdctlTls, TestPki};

fn tls(ca: &Path, cert: Option<(&Path, &Path)>) -> Option<EtcdTls> {
    Some(EtcdTls {
        cacert: Some(ca.to_path_buf()),
        cert: cert.map(|c| c.0.to_path_buf()),
        key: cert.map(|c| c.1.to_path_buf()),
    })
}

fn store(endpoint: &str, security: EtcdSecurity, scope: &str, name: &str) -> ClusterStore<EtcdBackend> {
    let cfg = EtcdConfig::from_hosts(&[endpoint], Duration::from_secs(5)).with_security(security);
    ClusterStore::new(EtcdBackend::new(cfg).expect("etcd config"), "/service/", scope, name, 5)
}

/// Two members race for the leader key; the winner's lease is revoked (as when it dies) and the other one
/// takes over: the store works for bootstrap and failover with these settings.
async fn elect_and_fail_over(a: &ClusterStore<EtcdBackend>, b: &ClusterStore<EtcdBackend>) {
    assert!(a.initialize("7000000000000000001", true).await.expect("initialize"));
    assert!(a.acquire_leader().await.expect("a takes the leader key"));
    assert!(!b.acquire_leader().await.expect("b races"));
    a.revoke_lease().await.expect("a's lease revoked");
    assert!(b.acquire_leader().await.expect("b takes over"));
    let view = b.load().await.expect("load");
    assert_eq!(view.leader.map(|l| l.name), Some("b".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let pki = TestPki::generate().expect("certificates");
    let server_tls = EtcdServerTls {
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: Some(pki.path("ca.pem")),
    };
    let etcd = EtcdServer::start_with(Some(server_tls)).expect("start etcd with TLS");
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://"));
    let (ca, cert, key) = (pki.path("ca.pem"), pki.path("client.pem"), pki.path("client.key"));
    let right = || EtcdSecurity { tls: tls(&ca, Some((&cert, &key))), user: None };
    elect_and_fail_over(&store(&endpoint, right(), "batman", "a"), &store(&endpoint, right(), "batman", "b")).await;

    // The CA is not the one that signed etcd's certificate.
    let wrong_ca = EtcdSecurity { tls: tls(&pki.path("other-ca.pem"), Some((&cert, &key))), user: None };
    let err = store(&endpoint, wrong_ca, "batman", "c").load().await.unwrap_err();
    assert!(matches!(err, DcsError::Tls { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&endpoint) && msg.contains("etcd3.cacert") && msg.contains("certificate"), "{msg}");

    // No client certificate: etcd refuses the handshake.
    let no_cert = EtcdSecurity { tls: tls(&ca, None), user: None };
    let err = store(&endpoint, no_cert, "batman", "c").load().await.unwrap_err();
    assert!(matches!(err, DcsError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("etcd3.cert"), "{err}");

    // A client certificate from another CA.
    let rogue = EtcdSecurity { tls: tls(&ca, Some((&pki.path("rogue.pem"), &pki.path("rogue.key")))), user: None };
    let err = store(&endpoint, rogue, "batman", "c").load().await.unwrap_err();
    assert!(matches!(err, DcsError::Tls { .. }), "{err:?}");

    // Several endpoints: a dead one first, then etcd; the TLS settings apply to each.
    let dead = format!("https://127.0.0.1:{}", keel_testkit::free_port().unwrap());
    let cfg =
        EtcdConfig::from_hosts(&[dead.as_str(), endpoint.as_str()], Duration::from_secs(5)).with_security(right());
    let several = ClusterStore::new(EtcdBackend::new(cfg).unwrap(), "/service/", "batman", "d", 5);
    assert_eq!(several.load().await.expect("the second endpoint answers").leader.map(|l| l.name), Some("b".into()));

    // Plain HTTP to a TLS port is not mistaken for a certificate problem, but still fails clearly.
    let plain = endpoint.replace("https://", "http://");
    let err = store(&plain, EtcdSecurity::default(), "batman", "c").load().await.unwrap_err();
    assert!(err.is_unavailable() && err.to_string().contains(&plain), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_with_a_role_limited_to_the_cluster_prefix() {
    let etcd = EtcdServer::start().expect("start etcd");
    etcd.enable_auth("root-pw", "keel", "keel-pw", "/service/batman/", None).expect("enable auth");
    let endpoint = etcd.endpoint();
    let user = |pw: &str| EtcdSecurity { tls: None, user: Some(EtcdUser::new("keel", pw)) };
    elect_and_fail_over(
        &store(&endpoint, user("keel-pw"), "batman", "a"),
        &store(&endpoint, user("keel-pw"), "batman", "b"),
    )
    .await;

    // Another cluster's prefix is outside the role.
    let err = store(&endpoint, user("keel-pw"), "robin", "a").load().await.unwrap_err();
    assert!(matches!(err, DcsError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("PermissionDenied"), "{err}");

    // A wrong password: named as a credentials problem, the password itself never shown.
    let err = store(&endpoint, user("not-the-password"), "batman", "c").load().await.unwrap_err();
    assert!(matches!(err, DcsError::Auth { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&endpoint) && msg.contains("etcd3.password") && msg.contains("\"keel\""), "{msg}");
    assert!(!msg.contains("not-the-password") && !format!("{err:?}").contains("not-the-password"), "{msg}");

    // No credentials at all.
    let err = store(&endpoint, EtcdSecurity::default(), "batman", "c").load().await.unwrap_err();
    assert!(!err.to_string().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_authentication_together() {
    let pki = TestPki::generate().expect("certificates");
    let server_tls = EtcdServerTls { cert: pki.path("server.pem"), key: pki.path("server.key"), client_ca: None };
    let etcd = EtcdServer::start_with(Some(server_tls)).expect("start etcd with TLS");
    let ctl = EtcdctlTls { cacert: pki.path("ca.pem"), cert: pki.path("client.pem"), key: pki.path("client.key") };
    etcd.enable_auth("root-pw", "keel", "keel-pw", "/service/batman/", Some(&ctl)).expect("enable auth");
    let ca = pki.path("ca.pem");
    let sec = || EtcdSecurity { tls: tls(&ca, None), user: Some(EtcdUser::new("keel", "keel-pw")) };
    elect_and_fail_over(&store(&etcd.endpoint(), sec(), "batman", "a"), &store(&etcd.endpoint(), sec(), "batman", "b"))
        .await;
}
