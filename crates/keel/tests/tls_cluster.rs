//! A three-node cluster with TLS everywhere: etcd over TLS with client-certificate checking and authentication
//! (a user limited to the cluster's prefix), the REST API over HTTPS with `verify_client: required` and basic auth,
//! PostgreSQL with `ssl = on` and plain connections refused, `sslmode: verify-full` for every connection Keel and
//! libpq make. Bootstrap, `keel list` and `keel switchover` over TLS, kill -9 failover; and the refusals: the REST
//! API without a client certificate, without credentials, or in plain HTTP; etcd without credentials.

use std::path::Path;
use std::time::{Duration, Instant};

use keel::dcs::{EtcdSecurity, EtcdTls, EtcdUser};
use keel::postgres::process::lookup_user;
use keel_testkit::{EtcdAuth, EtcdServerTls, EtcdctlTls, KeelCluster, KeelOptions, SecurityOptions, TestPki};

const UP: Duration = Duration::from_secs(180);
const FAILOVER: Duration = Duration::from_secs(90);
const SCOPE: &str = "keel-tls";

fn security(pki: &TestPki, pg_key: &Path) -> SecurityOptions {
    let p = |n: &str| pki.path(n).display().to_string();
    SecurityOptions {
        etcd3_yaml: format!(
            "  protocol: https\n  cacert: {}\n  cert: {}\n  key: {}\n  username: keel\n  password: keel-pw\n",
            p("ca.pem"),
            p("client.pem"),
            p("client.key")
        ),
        restapi_yaml: format!(
            "  certfile: {}\n  keyfile: {}\n  cafile: {}\n  verify_client: required\n  authentication:\n    \
             username: admin\n    password: admin-pw\n",
            p("server.pem"),
            p("server.key"),
            p("ca.pem")
        ),
        extra_yaml: format!(
            "ctl:\n  cacert: {}\n  certfile: {}\n  keyfile: {}\n",
            p("ca.pem"),
            p("client.pem"),
            p("client.key")
        ),
        pg_auth_yaml: format!("      sslmode: verify-full\n      sslrootcert: {}\n", p("ca.pem")),
        pg_parameters_yaml: format!(
            "    ssl: \"on\"\n    ssl_cert_file: {}\n    ssl_key_file: {}\n",
            p("server.pem"),
            pg_key.display()
        ),
        pg_hba: Some(
            [
                "local all all trust",
                "hostssl all all 127.0.0.1/32 md5",
                "hostssl replication all 127.0.0.1/32 md5",
                "hostnossl all all 127.0.0.1/32 reject",
                "hostnossl replication all 127.0.0.1/32 reject",
            ]
            .map(String::from)
            .to_vec(),
        ),
        etcd: EtcdSecurity {
            tls: Some(EtcdTls {
                cacert: Some(pki.path("ca.pem")),
                cert: Some(pki.path("client.pem")),
                key: Some(pki.path("client.key")),
            }),
            user: Some(EtcdUser::new("keel", "keel-pw")),
        },
    }
}

fn up(c: &mut KeelCluster) -> String {
    let start = Instant::now();
    loop {
        for name in c.names() {
            if let Some(st) = c.agent_exit(&name) {
                panic!("the agent of {name} exited ({st}) during bootstrap:\n{}", c.logs(40));
            }
        }
        match c.wait_replicas_streaming(2, Duration::ZERO) {
            Ok((leader, _)) if c.writable(&leader) && c.members_settled().unwrap_or(false) => return leader,
            _ => {}
        }
        assert!(start.elapsed() < UP, "no leader with two streaming replicas after {UP:?}:\n{}", c.logs(40));
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn ctl_ok(c: &KeelCluster, node: &str, args: &[&str]) -> String {
    let out = c.ctl(node, args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "keel {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn wait_new_leader(c: &KeelCluster, old: &str) -> String {
    c.wait(&format!("a new writable leader instead of {old}"), FAILOVER, || match c.leader() {
        Some(l) if l != old && c.writable(&l) => Ok(Some(l)),
        other => Err(format!("leader key: {other:?}")),
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs(40)))
}

/// `keel -c FILE args` with a copy of `node`'s configuration edited by `edit`.
fn ctl_with_edited_config(c: &KeelCluster, node: &str, edit: impl Fn(&str) -> String, args: &[&str]) -> (bool, String) {
    let cfg = std::fs::read_to_string(&c.node(node).config_path).expect("config");
    let path = c.dir().join("edited.yml");
    std::fs::write(&path, edit(&cfg)).expect("write edited config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel")).arg("-c").arg(&path).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn tls_everywhere_bootstrap_switchover_failover_and_refusals() {
    let pki = TestPki::generate().expect("certificates");
    // PostgreSQL wants its key readable by its own user only.
    let pg_key = pki.path("pg-server.key");
    pki.copy_private("server.key", &pg_key, lookup_user("postgres")).expect("PostgreSQL's key");
    let etcdctl = EtcdctlTls { cacert: pki.path("ca.pem"), cert: pki.path("client.pem"), key: pki.path("client.key") };
    let opts = KeelOptions {
        keel_bin: Some(env!("CARGO_BIN_EXE_keel").into()),
        scope: Some(SCOPE.into()),
        security: security(&pki, &pg_key),
        etcd_tls: Some(EtcdServerTls {
            cert: pki.path("server.pem"),
            key: pki.path("server.key"),
            client_ca: Some(pki.path("ca.pem")),
        }),
        etcd_auth: Some(EtcdAuth {
            root_password: "root-pw".into(),
            user: "keel".into(),
            password: "keel-pw".into(),
            etcdctl: Some(etcdctl),
        }),
        ..KeelOptions::default()
    };
    let mut c = KeelCluster::start(3, opts).expect("start etcd and three agents");
    let leader = up(&mut c);

    // Every connection is encrypted: the replicas stream over TLS.
    let ssl = c.psql(&leader, "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_replication r USING (pid) WHERE s.ssl");
    assert_eq!(ssl.as_deref(), Ok("2"), "replication connections without TLS");

    // keel list: etcd over TLS with a user.
    let list = ctl_ok(&c, &leader, &["list"]);
    for n in c.names() {
        assert!(list.contains(&n), "{n} missing from keel list:\n{list}");
    }

    // keel switchover: the leader's REST API over HTTPS with a client certificate and basic auth.
    let target = c.names().into_iter().find(|n| *n != leader).expect("a replica");
    ctl_ok(&c, &leader, &["switchover", "--candidate", &target, "--force"]);
    let new = wait_new_leader(&c, &leader);
    assert_eq!(new, target);

    // Refusals, against the new leader's API.
    let client_files =
        format!("  certfile: {}\n  keyfile: {}\n", pki.path("client.pem").display(), pki.path("client.key").display());
    let (ok, text) =
        ctl_with_edited_config(&c, &leader, |cfg| cfg.replace(&client_files, ""), &["reload", SCOPE, &new, "--force"]);
    assert!(!ok, "a reload without a client certificate succeeded:\n{text}");
    let wrong_password = |cfg: &str| cfg.replace("    password: admin-pw\n", "    password: wrong\n");
    let (ok, text) = ctl_with_edited_config(&c, &leader, wrong_password, &["reload", SCOPE, &new, "--force"]);
    assert!(!ok && text.contains("401"), "a reload with a wrong password: {ok}\n{text}");
    let (ok, text) = ctl_with_edited_config(&c, &leader, |cfg| cfg.to_string(), &["reload", SCOPE, &new, "--force"]);
    assert!(ok, "the same reload with the right settings failed:\n{text}");
    let api = c.node(&new).api_port;
    let plain = keel::cluster_runner::http_request(api, "GET", "/health", None);
    assert!(plain.map_or(true, |(code, _)| code != 200), "plain HTTP answered on the HTTPS port");
    let no_etcd_user = |cfg: &str| cfg.replace("  username: keel\n  password: keel-pw\n", "");
    let (ok, text) = ctl_with_edited_config(&c, &leader, no_etcd_user, &["list"]);
    assert!(!ok, "keel list without etcd credentials succeeded:\n{text}");
    let wrong_password = |cfg: &str| cfg.replace("  password: keel-pw\n", "  password: not-it\n");
    let (ok, text) = ctl_with_edited_config(&c, &leader, wrong_password, &["list"]);
    assert!(!ok && text.contains("etcd3.password") && !text.contains("not-it"), "wrong etcd password:\n{text}");
    let ca = pki.path("ca.pem").display().to_string();
    let other_ca = pki.path("other-ca.pem").display().to_string();
    let wrong_ca = |cfg: &str| cfg.replacen(&format!("  cacert: {ca}\n"), &format!("  cacert: {other_ca}\n"), 1);
    let (ok, text) = ctl_with_edited_config(&c, &leader, wrong_ca, &["list"]);
    assert!(!ok && text.contains("etcd3.cacert") && text.contains("UnknownIssuer"), "wrong etcd CA:\n{text}");
    let client_cert =
        format!("  cert: {}\n  key: {}\n", pki.path("client.pem").display(), pki.path("client.key").display());
    let (ok, text) = ctl_with_edited_config(&c, &leader, |cfg| cfg.replace(&client_cert, ""), &["list"]);
    assert!(!ok && text.contains("etcd3.cert"), "no etcd client certificate:\n{text}");

    // kill -9 of the leader (agent and postmaster): a replica takes over, over TLS.
    let t0 = Instant::now();
    c.kill9(&new);
    let after = wait_new_leader(&c, &new);
    eprintln!("failover to {after} {:.1}s after kill -9 of {new}", t0.elapsed().as_secs_f64());
    c.psql(&after, "CREATE TABLE tls_ok (id int)").expect("write on the new leader");
    let list = ctl_ok(&c, &after, &["list"]);
    assert!(list.contains(&after), "{list}");

    // An agent with the wrong etcd CA (the killed node's, restarted so) says why it cannot reach the store; without
    // restapi.authentication it also warns, once, which write endpoints are open.
    let cfg = std::fs::read_to_string(&c.node(&new).config_path).expect("config");
    let cfg = cfg.replace("  authentication:\n    username: admin\n    password: admin-pw\n", "");
    let wrong = c.dir().join("wrong-ca.yml");
    std::fs::write(&wrong, wrong_ca(&cfg)).expect("write");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let log = c.dir().join("wrong-ca.log");
    let user = lookup_user("postgres").map(|_| "postgres");
    let keel_bin = Path::new(env!("CARGO_BIN_EXE_keel"));
    let mut agent = keel::cluster_runner::Agent::spawn(keel_bin, &wrong, &log, user).expect("start the agent");
    let seen = c.wait("the agent's TLS error", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok((text.contains("etcd3.cacert") && text.contains("UnknownIssuer")).then_some(text))
    });
    agent.kill();
    let text = seen.unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default()));
    assert!(!text.contains("keel-pw"), "the etcd password reached the log");
    assert_eq!(text.matches("restapi.authentication is not set").count(), 1, "{text}");
    assert!(text.contains("POST /switchover") && text.contains("POST /failsafe"), "{text}");
}
