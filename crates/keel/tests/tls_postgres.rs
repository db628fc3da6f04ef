//! The agent's own PostgreSQL connections honour libpq's TLS settings (`sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`, `channel_binding`) against a real server with `ssl = on`, plain connections refused by `pg_hba.conf`;
//! and role passwords are set without their clear text reaching the server's statement log.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use keel::postgres::bins::PgBinaries;
use keel::postgres::conf;
use keel::postgres::observe::{self, Session};
use keel::postgres::pg_ctl::{InitdbOption, InitdbParams, PgCtl};
use keel::postgres::roles::{self, RoleKind, RoleSpec};
use keel::postgres::ConnParams;
use keel_testkit::TestPki;

mod common;
use common::{free_port, run_as, scratch, server_conf, versions, Guard};

const PASSWORD: &str = "su-secret-1";
const ROLE_PASSWORD: &str = "never-in-the-log-42";
const TIMEOUT: Duration = Duration::from_secs(60);

fn params(port: u16, sslmode: &str) -> ConnParams {
    let mut p = ConnParams::new("127.0.0.1", port, "postgres").with_password(PASSWORD);
    p.sslmode = sslmode.into();
    p
}

async fn ssl_in_use(session: &Session) -> bool {
    let row = session.client().query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await;
    row.expect("pg_stat_ssl").get(0)
}

async fn connect(p: &ConnParams) -> Result<Session, String> {
    observe::connect(p, Duration::from_secs(10)).await.map_err(|e| e.to_string())
}

/// Copies the server's certificate files into the data directory, owned by PostgreSQL's user.
fn install_server_files(pki: &TestPki, data_dir: &Path) {
    let meta = std::fs::metadata(data_dir).expect("data dir");
    let owner = Some((meta.uid(), meta.gid()));
    pki.copy_private("server.key", &data_dir.join("server.key"), owner).unwrap();
    pki.copy_private("server.pem", &data_dir.join("server.crt"), owner).unwrap();
    pki.copy_private("ca.pem", &data_dir.join("root.crt"), owner).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_connections_use_tls_as_configured() {
    let (_, bin_dir) = versions().into_iter().next().expect("a PostgreSQL version");
    let bins = PgBinaries::find(Some(&bin_dir)).expect("binaries");
    let dir = scratch("keel-pgtls");
    let mut guard = Guard::default();
    let ctl = PgCtl::new(bins, run_as(), dir.path().join("data"));
    guard.watch(&ctl);
    let options = InitdbOption::list_from_json(&serde_json::json!(["no-sync", {"locale": "C"}])).unwrap();
    let initdb = InitdbParams { superuser: "postgres".into(), superuser_password: Some(PASSWORD.into()), options };
    ctl.initdb(&initdb, TIMEOUT).await.expect("initdb");
    let pki = TestPki::generate().expect("certificates");
    install_server_files(&pki, &ctl.data_dir);

    let port = free_port();
    let mut server = server_conf(dir.path(), port, None);
    for (k, v) in [
        ("ssl", "on"),
        ("ssl_cert_file", "server.crt"),
        ("ssl_key_file", "server.key"),
        ("ssl_ca_file", "root.crt"),
        ("log_statement", "all"),
        ("log_min_error_statement", "info"),
    ] {
        server.parameters.insert(k.into(), v.into());
    }
    let hba = [
        "local all all trust",
        "hostssl all keel-client 127.0.0.1/32 cert",
        "hostssl all all 127.0.0.1/32 scram-sha-256",
        "hostnossl all all 127.0.0.1/32 reject",
    ]
    .map(String::from);
    conf::write_config(&ctl.data_dir, &server, Some(&hba), &run_as()).expect("write conf");
    ctl.start(true, TIMEOUT).await.expect("start");

    // sslmode=disable is refused by pg_hba (hostnossl reject): the setting really reaches the connection.
    let err = connect(&params(port, "disable")).await.err().expect("plain connection refused");
    assert!(err.contains("127.0.0.1"), "{err}");
    for mode in ["prefer", "require"] {
        let s = connect(&params(port, mode)).await.unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        assert!(ssl_in_use(&s).await, "sslmode={mode}");
    }
    let mut verified = params(port, "verify-full");
    verified.ssl.sslrootcert = Some(pki.path("ca.pem").display().to_string());
    let s = connect(&verified).await.expect("verify-full with the right CA");
    // sslcrl: a CRL revoking the server's certificate makes the connection fail; one revoking nothing does not.
    let mut crl = verified.clone();
    crl.ssl.sslcrl = Some(pki.path("server-revoked.crl").display().to_string());
    let err = connect(&crl).await.err().expect("a revoked server certificate is refused");
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    crl.ssl.sslcrl = Some(pki.path("empty.crl").display().to_string());
    connect(&crl).await.expect("a CRL that revokes nothing");
    // SCRAM with channel binding: the server checks the binding data (tls-server-end-point) it receives.
    let mut bound = params(port, "require");
    bound.ssl.channel_binding = Some("require".into());
    let b = connect(&bound).await.expect("channel_binding=require");
    assert!(ssl_in_use(&b).await);
    assert!(ssl_in_use(&s).await);
    let mut wrong_ca = params(port, "verify-ca");
    wrong_ca.ssl.sslrootcert = Some(pki.path("other-ca.pem").display().to_string());
    let err = connect(&wrong_ca).await.err().expect("a server certificate from another CA is refused");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Certificate authentication (pg_hba `cert`): the client certificate's CN is the role.
    s.execute_script("CREATE ROLE \"keel-client\" LOGIN").await.expect("create role");
    let mut by_cert = ConnParams::new("127.0.0.1", port, "keel-client");
    by_cert.sslmode = "verify-full".into();
    by_cert.ssl.sslrootcert = verified.ssl.sslrootcert.clone();
    let err = connect(&by_cert).await.err().expect("no client certificate, no login");
    assert!(err.contains("keel-client"), "{err}");
    by_cert.ssl.sslcert = Some(pki.path("client.pem").display().to_string());
    by_cert.ssl.sslkey = Some(pki.path("client.key").display().to_string());
    connect(&by_cert).await.expect("login by client certificate");

    // Role passwords: set as verifiers, never in clear text in the statement log; logging in works.
    let spec =
        RoleSpec { name: "replicator".into(), password: Some(ROLE_PASSWORD.into()), kind: RoleKind::Replication };
    roles::ensure_roles(&s, std::slice::from_ref(&spec)).await.expect("create the role");
    roles::ensure_roles(&s, &[spec]).await.expect("update the role");
    let mut repl = ConnParams::new("127.0.0.1", port, "replicator").with_password(ROLE_PASSWORD);
    repl.sslmode = "require".into();
    connect(&repl).await.expect("log in with the new password");
    let log = std::fs::read_to_string(&ctl.log_file).expect("server log");
    assert!(log.contains("ALTER ROLE") || log.contains("CREATE ROLE"), "statement logging is on:\n{log}");
    assert!(!log.contains(ROLE_PASSWORD), "the clear-text password reached the server log");

    // Child processes and the walreceiver get the same settings in their connection string.
    let conninfo = verified.to_conninfo(false);
    assert!(conninfo.contains("sslmode=verify-full") && conninfo.contains("sslrootcert="), "{conninfo}");
}
