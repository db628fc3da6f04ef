//! The REST API over HTTPS (`restapi.certfile`, `keyfile`, `cafile`, `verify_client`), the certificate reloaded on
//! `POST /reload`, and the client side as keel's control commands configure it (`ctl.cacert`, `certfile`,
//! `keyfile`, `insecure`, falling back to `restapi.cafile`).

mod restkit;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel::api::listener::Limits;
use keel::api::tls::{ServerTls, ServerTlsFiles, VerifyClient};
use keel::cli::tls::http_client;
use keel_core::view::Role;
use keel_testkit::TestPki;

fn server_tls(pki: &TestPki, verify_client: VerifyClient) -> Arc<ServerTls> {
    let files = ServerTlsFiles {
        certfile: pki.path("server.pem"),
        keyfile: Some(pki.path("server.key")),
        cafile: Some(pki.path("ca.pem")),
        verify_client,
        ciphers: None,
        keyfile_password: None,
    };
    Arc::new(ServerTls::new(files).expect("server TLS"))
}

/// A client configured through a `ctl` section.
fn client(ctl: &str) -> reqwest::Client {
    http_client(&restkit::config("", ctl), Duration::from_secs(5)).expect("client")
}

fn ctl_with(ca: &Path, cert: Option<(&Path, &Path)>) -> String {
    let mut s = format!("  cacert: {}\n", ca.display());
    if let Some((c, k)) = cert {
        s += &format!("  certfile: {}\n  keyfile: {}\n", c.display(), k.display());
    }
    s
}

async fn get(c: &reqwest::Client, url: &str) -> Result<u16, String> {
    c.get(url).timeout(Duration::from_secs(10)).send().await.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn https_with_the_configured_certificate_and_ctl_trust_settings() {
    let pki = TestPki::generate().expect("certificates");
    let srv = restkit::start(Some(server_tls(&pki, VerifyClient::None)), None, Limits::default()).await;
    let url = format!("https://127.0.0.1:{}/health", srv.addr.port());
    assert_eq!(get(&client(&ctl_with(&pki.path("ca.pem"), None)), &url).await, Ok(200));
    // restapi.cafile is the fallback CA, as for patronictl.
    let cfg = restkit::config(&format!("  cafile: {}\n", pki.path("ca.pem").display()), "");
    assert_eq!(get(&http_client(&cfg, Duration::from_secs(5)).unwrap(), &url).await, Ok(200));
    // The wrong CA is refused; insecure accepts any certificate.
    let err = get(&client(&ctl_with(&pki.path("other-ca.pem"), None)), &url).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert_eq!(get(&client("  insecure: true\n"), &url).await, Ok(200));
    // Plain HTTP to the HTTPS port gets nothing useful.
    assert!(get(&client(""), &url.replace("https", "http")).await != Ok(200));
}

#[tokio::test]
async fn verify_client_required_refuses_connections_without_a_trusted_certificate() {
    let pki = TestPki::generate().expect("certificates");
    let srv = restkit::start(Some(server_tls(&pki, VerifyClient::Required)), None, Limits::default()).await;
    let url = format!("https://127.0.0.1:{}/health", srv.addr.port());
    let ca = pki.path("ca.pem");
    assert!(get(&client(&ctl_with(&ca, None)), &url).await.is_err(), "no client certificate");
    let rogue = ctl_with(&ca, Some((&pki.path("rogue.pem"), &pki.path("rogue.key"))));
    assert!(get(&client(&rogue), &url).await.is_err(), "certificate from another CA");
    let good = ctl_with(&ca, Some((&pki.path("client.pem"), &pki.path("client.key"))));
    assert_eq!(get(&client(&good), &url).await, Ok(200));
    let status = client(&good).post(url.replace("health", "reload")).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 202);
}

#[tokio::test]
async fn verify_client_optional_needs_a_certificate_for_unsafe_requests_only() {
    let pki = TestPki::generate().expect("certificates");
    let srv = restkit::start(Some(server_tls(&pki, VerifyClient::Optional)), None, Limits::default()).await;
    let base = format!("https://127.0.0.1:{}", srv.addr.port());
    let ca = pki.path("ca.pem");
    let anonymous = client(&ctl_with(&ca, None));
    assert_eq!(get(&anonymous, &format!("{base}/health")).await, Ok(200));
    let r = anonymous.post(format!("{base}/reload")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.text().await.unwrap(), "client certificate required");
    let good = client(&ctl_with(&ca, Some((&pki.path("client.pem"), &pki.path("client.key")))));
    assert_eq!(good.post(format!("{base}/reload")).send().await.unwrap().status().as_u16(), 202);
}

#[tokio::test]
async fn reload_serves_a_renewed_certificate_to_new_connections() {
    let pki = TestPki::generate().expect("certificates");
    let renewed = TestPki::generate().expect("renewed certificates");
    // The server's files live apart from the PKI so they can be replaced, as a certificate renewal does.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::copy(pki.path("server.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server.key"), &key).unwrap();
    let files = ServerTlsFiles {
        certfile: cert.clone(),
        keyfile: Some(key.clone()),
        cafile: None,
        verify_client: VerifyClient::None,
        ciphers: None,
        keyfile_password: None,
    };
    let tls = Arc::new(ServerTls::new(files).unwrap());
    let srv = restkit::start(Some(tls), None, Limits::default()).await;
    let base = format!("https://127.0.0.1:{}", srv.addr.port());
    let old_ca = client(&ctl_with(&pki.path("ca.pem"), None));
    let new_ca = client(&ctl_with(&renewed.path("ca.pem"), None));
    assert_eq!(get(&old_ca, &format!("{base}/health")).await, Ok(200));

    std::fs::copy(renewed.path("server.pem"), &cert).unwrap();
    std::fs::copy(renewed.path("server.key"), &key).unwrap();
    assert!(get(&new_ca, &format!("{base}/health")).await.is_err(), "served before the reload");
    assert_eq!(old_ca.post(format!("{base}/reload")).send().await.unwrap().status().as_u16(), 202);
    assert_eq!(get(&new_ca, &format!("{base}/health")).await, Ok(200));
    // A fresh client trusting only the old CA now fails.
    assert!(get(&client(&ctl_with(&pki.path("ca.pem"), None)), &format!("{base}/health")).await.is_err());

    // A broken file on reload keeps the renewed certificate in service.
    std::fs::write(&cert, "garbage").unwrap();
    assert_eq!(new_ca.post(format!("{base}/reload")).send().await.unwrap().status().as_u16(), 202);
    assert_eq!(get(&client(&ctl_with(&renewed.path("ca.pem"), None)), &format!("{base}/health")).await, Ok(200));
}

#[test]
fn settings_without_effect_are_refused() {
    let cfg = restkit::config("  cafile: /ca.pem\n  verify_client: required\n", "");
    let err = keel::api::tls::from_config(&cfg.restapi).unwrap_err().to_string();
    assert!(err.contains("restapi.cafile, restapi.verify_client has no effect without restapi.certfile"), "{err}");
    let cfg = restkit::config("  certfile: /nonexistent.pem\n", "");
    let err = keel::api::tls::from_config(&cfg.restapi).unwrap_err().to_string();
    assert!(err.contains("restapi.certfile /nonexistent.pem"), "{err}");
    let err = http_client(&restkit::config("", "  keyfile: /k.pem\n"), Duration::from_secs(1)).unwrap_err();
    assert!(err.contains("ctl.keyfile is set without ctl.certfile"), "{err}");
}

/// `POST /failsafe` is accepted only from a member named in the failsafe key, coming from its api_url's host.
#[tokio::test]
async fn failsafe_announcements_only_from_members() {
    let srv = restkit::start_as(Role::Replica, None, None, Limits::default()).await;
    let url = format!("http://127.0.0.1:{}/failsafe", srv.addr.port());
    let client = client("");
    let post = |name: &'static str| client.post(&url).body(format!(r#"{{"name":"{name}"}}"#)).send();
    let set = |members: &[(&str, &str)]| {
        let m = members.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        srv.backend.failsafe.set_config(true, Some(m));
    };
    set(&[("n2", "http://127.0.0.1:8009/patroni")]);
    assert_eq!(post("n2").await.unwrap().status().as_u16(), 200);
    let r = post("n3").await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("not a member"));
    set(&[("n2", "http://10.255.255.1:8009/patroni")]);
    let r = post("n2").await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("came from 127.0.0.1"));
    set(&[("n2", "https://localhost:8009/patroni")]);
    assert_eq!(post("n2").await.unwrap().status().as_u16(), 200, "host names are resolved");
}

/// `restapi.ciphers` limits the TLS 1.2 suites (as OpenSSL's set_ciphers in Patroni); TLS 1.3 is unchanged.
#[tokio::test]
async fn ciphers_limit_tls12_suites() {
    use rustls::pki_types::ServerName;
    let pki = TestPki::generate().expect("certificates");
    let files = ServerTlsFiles {
        certfile: pki.path("server.pem"),
        keyfile: Some(pki.path("server.key")),
        cafile: None,
        verify_client: VerifyClient::None,
        ciphers: Some("ECDHE-ECDSA-CHACHA20-POLY1305".into()),
        keyfile_password: None,
    };
    let srv = restkit::start(Some(Arc::new(ServerTls::new(files).unwrap())), None, Limits::default()).await;
    let handshake = |suites: Vec<rustls::SupportedCipherSuite>,
                     versions: &'static [&'static rustls::SupportedProtocolVersion]| {
        let ca = pki.path("ca.pem");
        async move {
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites = suites;
            let mut roots = rustls::RootCertStore::empty();
            let pem = std::fs::read(ca).unwrap();
            roots
                .add_parsable_certificates(rustls::pki_types::pem::PemObject::pem_slice_iter(&pem).map(Result::unwrap));
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map(|_| ())
        }
    };
    use rustls::crypto::ring::cipher_suite as cs;
    static TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    static TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    assert!(handshake(vec![cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256], TLS12).await.is_err(), "a suite not listed");
    handshake(vec![cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256], TLS12).await.expect("the listed suite");
    handshake(vec![cs::TLS13_AES_128_GCM_SHA256], TLS13).await.expect("TLS 1.3 is unchanged");
    let cfg = restkit::config("  certfile: /x.pem\n  ciphers: HIGH:!aNULL\n", "");
    let err = keel::api::tls::from_config(&cfg.restapi).unwrap_err().to_string();
    assert!(err.contains("OpenSSL keyword"), "{err}");
}

/// Encrypted PKCS#8 keys with `restapi.keyfile_password` and `ctl.keyfile_password`; the legacy format and a wrong
/// or missing password are refused, naming the setting.
#[tokio::test]
async fn encrypted_keys_with_keyfile_password() {
    use keel_testkit::KEY_PASSWORD;
    let pki = TestPki::generate().expect("certificates");
    let files = |key: &str, password: Option<&str>| ServerTlsFiles {
        certfile: pki.path("server.pem"),
        keyfile: Some(pki.path(key)),
        cafile: Some(pki.path("ca.pem")),
        verify_client: VerifyClient::Required,
        ciphers: None,
        keyfile_password: password.map(String::from),
    };
    let tls = ServerTls::new(files("server-enc.key", Some(KEY_PASSWORD))).expect("encrypted server key");
    let srv = restkit::start(Some(Arc::new(tls)), None, Limits::default()).await;
    let url = format!("https://127.0.0.1:{}/health", srv.addr.port());
    let ctl = |password: &str| {
        format!(
            "  cacert: {}\n  certfile: {}\n  keyfile: {}\n  keyfile_password: {password}\n",
            pki.path("ca.pem").display(),
            pki.path("client.pem").display(),
            pki.path("client-enc.key").display()
        )
    };
    assert_eq!(get(&client(&ctl(KEY_PASSWORD)), &url).await, Ok(200), "encrypted client key");
    let err = http_client(&restkit::config("", &ctl("wrong")), Duration::from_secs(1)).unwrap_err();
    assert!(err.contains("ctl.keyfile") && err.contains("cannot decrypt"), "{err}");

    for (key, password, needle) in [
        ("server-enc.key", Some("wrong"), "cannot decrypt"),
        ("server-enc.key", None, "set keyfile_password"),
        ("server.key", Some(KEY_PASSWORD), "not encrypted"),
        ("server-legacy.key", Some(KEY_PASSWORD), "openssl pkcs8 -topk8"),
    ] {
        let err = ServerTls::new(files(key, password)).unwrap_err().to_string();
        assert!(err.contains("restapi.keyfile") && err.contains(needle), "{key} {password:?}: {err}");
    }
}
