use super::*;
use serde_json::json;

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const MINIMAL: &str = "\
scope: batman
name: node1
restapi:
  listen: 127.0.0.1:8008
etcd3:
  host: 127.0.0.1:2379
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /x
";

fn err(yaml: &str) -> ConfigError {
    match Config::from_str(yaml, &Env::new()) {
        Ok(l) => panic!("expected an error, got {:?}", l.config),
        Err(e) => e,
    }
}

#[test]
fn example_postgres0_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/postgres0.yml");
    let l = Config::load(path, &Env::new()).unwrap();
    let c = &l.config;
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(c.scope, "batman");
    assert_eq!(c.name, "postgresql0");
    assert_eq!(c.cluster_prefix(), "/service/batman/");
    assert_eq!(c.etcd3_endpoints(), vec!["http://127.0.0.1:2379"]);
    assert_eq!(c.restapi_url(), "http://127.0.0.1:8008/patroni");
    assert_eq!(c.postgres_url(), "postgres://127.0.0.1:5432/postgres");
    assert_eq!(c.postgresql.data_dir, "/tmp/keel/node0");
    assert_eq!(c.postgresql.port(), 5432);
    let su = c.postgresql.authentication.superuser.as_ref().unwrap();
    assert_eq!(su.username.as_deref(), Some("postgres"));
    assert_eq!(c.postgresql.pg_hba.as_ref().map(Vec::len), Some(2));
    assert_eq!(c.postgresql.pgpass.as_deref(), Some("/tmp/pgpass0"));
    assert_eq!(c.restapi.authentication.as_ref().unwrap().password.as_deref(), Some("password"));
    let dcs = c.bootstrap_dcs();
    assert_eq!(dcs["member_slots_ttl"], json!("30min"), "bootstrap.dcs is kept as written");
    assert_eq!(dcs["postgresql"]["parameters"]["hot_standby"], json!("on"));
    assert_eq!(dcs["slots"]["test_logical"]["plugin"], json!("pgoutput"));
    assert_eq!(c.bootstrap.initdb, vec![json!({"encoding": "UTF8"}), json!("data-checksums")]);
    assert_eq!(c.timing, Timing { ttl: 30, loop_wait: 10, retry_timeout: 10 });
    assert!(!c.tags.no_failover());
    assert_eq!(
        c.summary(),
        "cluster batman, member postgresql0, etcd3 127.0.0.1:2379, data_dir /tmp/keel/node0 (ttl 30, loop_wait 10, retry_timeout 10)"
    );
}

#[test]
fn minimal_config_gets_patroni_defaults() {
    let l = Config::from_str(MINIMAL, &Env::new()).unwrap();
    assert!(l.warnings.is_empty());
    assert_eq!(l.config.namespace, "/service/");
    assert_eq!(l.config.timing, Timing::default());
    assert_eq!(l.config.bootstrap_dcs(), &json!({}));
    assert_eq!(l.config.tags, Tags::default());
}

#[test]
fn unknown_key_names_path_and_line() {
    let yaml = MINIMAL.replace("  data_dir: /x\n", "  data_dir: /x\n  paramters:\n    a: 1\n");
    let e = err(&yaml);
    assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e:?}");
    assert_eq!(e.path(), Some("postgresql.paramters"));
    assert_eq!(e.line(), Some(11));
    let msg = e.to_string();
    assert!(msg.contains("<string>:11") && msg.contains("postgresql.paramters"), "{msg}");

    let e = err(&format!("{MINIMAL}bootstrap:\n  dcs:\n    postgresql:\n      use_slotz: true\n"));
    assert_eq!(e.path(), Some("bootstrap.dcs.postgresql.use_slotz"));
    assert_eq!(e.line(), Some(14));
    let e = err(&format!("{MINIMAL}keel:\n  failover_slot_readiness: true\n"));
    assert_eq!(e.path(), Some("keel.failover_slot_readiness"));
    let e = err(&format!("{MINIMAL}bootstrap:\n  dcs:\n    ignore_slots:\n    - name: x\n      tipe: logical\n"));
    assert_eq!(e.path(), Some("bootstrap.dcs.ignore_slots[0].tipe"));
}

#[test]
fn refused_settings_are_one_error_naming_each_with_what_to_do() {
    let yaml =
        format!("{MINIMAL}  callbacks:\n    on_start: /bin/true\n  config_dir: /etc/pg\nzookeeper:\n  hosts: [a]\n");
    let yaml = yaml.replace("  listen: 127.0.0.1:8008\n", "  listen: 127.0.0.1:8008\n  https_extra_headers: {}\n");
    let yaml =
        yaml.replace("  host: 127.0.0.1:2379\n", "  host: 127.0.0.1:2379\n  username: keel\n  key_password: x\n");
    let e = err(&yaml);
    let ConfigError::Refused { refused, .. } = &e else { panic!("{e:?}") };
    let paths: Vec<&str> = refused.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "restapi.https_extra_headers",
            "etcd3.key_password",
            "postgresql.callbacks",
            "postgresql.config_dir",
            "zookeeper"
        ]
    );
    let msg = e.to_string();
    assert!(msg.contains("<string>:5: `restapi.https_extra_headers`: not implemented"), "{msg}");
    assert!(msg.contains("`etcd3.key_password`: Keel reads unencrypted PEM keys only"), "{msg}");
    assert!(msg.contains("`zookeeper`: Keel speaks etcd v3 only"), "{msg}");
    assert_eq!(e.path(), Some("restapi.https_extra_headers"));
    assert_eq!(e.line(), Some(5));
}

#[test]
fn refused_values_name_the_setting() {
    let cases = [
        (
            "bootstrap:\n  dcs:\n    synchronous_mode: quorum\n",
            "bootstrap.dcs.synchronous_mode",
            "synchronous_mode: on",
        ),
        ("bootstrap:\n  method: wal_g\n  wal_g:\n    command: /bin/x\n", "bootstrap.method", "custom bootstrap"),
        ("tags:\n  nostream: true\n", "tags.nostream", "nostream"),
    ];
    for (extra, path, hint) in cases {
        let e = err(&format!("{MINIMAL}{extra}"));
        assert!(matches!(e, ConfigError::Refused { .. }), "{extra}: {e:?}");
        assert_eq!(e.path(), Some(path), "{extra}: {e}");
        assert!(e.to_string().contains(hint), "{extra}: {e}");
    }
    let e = err(&MINIMAL.replace("  host: 127.0.0.1:2379\n", "  host: 127.0.0.1:2379\n  protocol: gopher\n"));
    assert_eq!(e.path(), Some("etcd3.protocol"));
    let yaml =
        format!("{MINIMAL}  create_replica_methods: [pgbackrest, basebackup]\n  pgbackrest:\n    command: /bin/r\n");
    let ConfigError::Refused { refused, .. } = err(&yaml) else { panic!() };
    let paths: Vec<&str> = refused.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["postgresql.create_replica_methods", "postgresql.pgbackrest"]);
    // An unknown watchdog mode is an error, never a silent "off".
    let e = err(&format!("{MINIMAL}watchdog:\n  mode: sometimes\n"));
    assert_eq!(e.path(), Some("watchdog.mode"), "{e}");
}

#[test]
fn the_watchdog_section_is_read_as_patroni_reads_it() {
    use crate::fence::watchdog::WatchdogMode;
    let c = Config::from_str(MINIMAL, &Env::new()).expect("minimal").config;
    assert_eq!((c.watchdog.mode, c.watchdog.safety_margin), (WatchdogMode::Automatic, 5));
    let yaml = format!("{MINIMAL}watchdog:\n  mode: required\n  device: /tmp/wd\n  safety_margin: -1\n");
    let c = Config::from_str(&yaml, &Env::new()).expect("watchdog").config;
    assert_eq!(
        (c.watchdog.mode, c.watchdog.device.to_str(), c.watchdog.timeout_secs(30)),
        (WatchdogMode::Required, Some("/tmp/wd"), 15)
    );
    let off = Config::from_str(&format!("{MINIMAL}watchdog:\n  mode: off\n"), &Env::new()).expect("off").config;
    assert_eq!(off.watchdog.mode, WatchdogMode::Off);
}

#[test]
fn the_values_keel_implements_are_accepted() {
    let yaml = format!(
        "{MINIMAL}  create_replica_methods: basebackup\n  use_unix_socket: false\nbootstrap:\n  method: initdb\n  \
         dcs:\n    synchronous_mode: \"on\"\nwatchdog:\n  mode: off\ntags:\n  nostream: false\n"
    );
    let yaml =
        yaml.replace("  host: 127.0.0.1:2379\n", "  host: 127.0.0.1:2379\n  protocol: http\n  use_proxies: true\n");
    let l = Config::from_str(&yaml, &Env::new()).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn ignored_settings_give_one_warning_saying_why() {
    let yaml = format!("{MINIMAL}log:\n  level: DEBUG\n  format: '%(message)s'\nthread_pool_size: 8\n");
    let l = Config::from_str(&yaml, &Env::new()).unwrap();
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    let w = &l.warnings[0];
    for k in ["log.level (Keel's log level is set with RUST_LOG)", "log.format", "thread_pool_size"] {
        assert!(w.contains(k), "{k} missing from {w}");
    }
    let e = err(&format!("{MINIMAL}log:\n  dir: /var/log/patroni\n"));
    assert_eq!(e.path(), Some("log.dir"));
}

#[test]
fn implemented_postgresql_settings_are_read() {
    let yaml = format!(
        "{MINIMAL}  database: app\n  pg_ctl_timeout: 2min\n  use_pg_rewind: true\n  pg_ident:\n  - cdc debezium app_cdc\n"
    );
    let c = Config::from_str(&yaml, &Env::new()).unwrap().config;
    assert_eq!(c.postgresql.database(), "app");
    assert_eq!(c.postgres_url(), "postgres://127.0.0.1:5432/app");
    let o = c.postgresql.dynamic_overrides();
    assert_eq!(o["pg_ctl_timeout"], json!(120));
    assert_eq!(o["use_pg_rewind"], json!(true));
    assert_eq!(o["pg_ident"], json!(["cdc debezium app_cdc"]));
    assert!(!o.contains_key("pg_hba"), "not set locally: the dynamic configuration's applies");
    let c = Config::from_str(MINIMAL, &Env::new()).unwrap().config;
    assert_eq!(c.postgresql.database(), "postgres");
    assert!(c.postgresql.dynamic_overrides().is_empty());
}

#[test]
fn ctl_authentication_defaults_to_the_rest_apis() {
    let with_rest = MINIMAL.replace(
        "  listen: 127.0.0.1:8008\n",
        "  listen: 127.0.0.1:8008\n  authentication:\n    username: a\n    password: b\n",
    );
    let c = Config::from_str(&with_rest, &Env::new()).unwrap().config;
    assert_eq!(c.ctl_auth().and_then(|a| a.username.as_deref()), Some("a"));
    let c = Config::from_str(
        &format!("{with_rest}ctl:\n  authentication:\n    username: c\n    password: d\n"),
        &Env::new(),
    )
    .unwrap()
    .config;
    assert_eq!(c.ctl_auth().and_then(|a| a.username.as_deref()), Some("c"));
}

#[test]
fn wrong_types_name_path_and_line() {
    let e = err(&format!("{MINIMAL}bootstrap:\n  dcs:\n    ttl: [1]\n"));
    assert!(matches!(e, ConfigError::WrongType { .. }), "{e:?}");
    assert_eq!(e.path(), Some("bootstrap.dcs.ttl"));
    assert_eq!(e.line(), Some(13));
    assert!(e.to_string().contains("must be seconds"), "{e}");

    let cases = [
        ("bootstrap:\n  dcs:\n    postgresql:\n      use_pg_rewind: maybe\n", "bootstrap.dcs.postgresql.use_pg_rewind"),
        ("bootstrap:\n  dcs:\n    slots: [a]\n", "bootstrap.dcs.slots"),
        ("bootstrap:\n  dcs:\n    slots:\n      s: 5\n", "bootstrap.dcs.slots.s"),
        ("bootstrap:\n  dcs:\n    ignore_slots: {name: x}\n", "bootstrap.dcs.ignore_slots"),
        ("bootstrap:\n  dcs:\n    maximum_lag_on_failover: lots\n", "bootstrap.dcs.maximum_lag_on_failover"),
        ("bootstrap:\n  dcs:\n    synchronous_mode: sometimes\n", "bootstrap.dcs.synchronous_mode"),
        ("bootstrap:\n  dcs:\n    failsafe_mode: [x]\n", "bootstrap.dcs.failsafe_mode"),
        ("bootstrap:\n  dcs:\n    member_slots_ttl: forever\n", "bootstrap.dcs.member_slots_ttl"),
        ("bootstrap:\n  dcs:\n    postgresql:\n      parameters: [a]\n", "bootstrap.dcs.postgresql.parameters"),
        ("bootstrap:\n  initdb:\n  - {a: 1, b: 2}\n", "bootstrap.initdb[0]"),
        ("bootstrap:\n  initdb: data-checksums\n", "bootstrap.initdb"),
        ("tags:\n  nofailover: perhaps\n", "tags.nofailover"),
        ("tags:\n  failover_priority: high\n", "tags.failover_priority"),
    ];
    for (extra, path) in cases {
        let e = err(&format!("{MINIMAL}{extra}"));
        assert_eq!(e.path(), Some(path), "{extra}: {e}");
        assert!(e.line().is_some(), "{e}");
    }
    let e = err(&MINIMAL.replace("listen: 127.0.0.1:8008", "listen: [1]"));
    assert_eq!(e.path(), Some("restapi.listen"));
    let e = err(&MINIMAL.replace("listen: 127.0.0.1:8008", "listen: localhost"));
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    assert_eq!(e.line(), Some(4));
    let e = err("scope: [a]\n");
    assert_eq!(e.path(), Some("scope"));
}

#[test]
fn lenient_values_are_normalized() {
    let yaml = format!(
        "{MINIMAL}bootstrap:\n  dcs:\n    ttl: \"40\"\n    synchronous_mode: \"yes\"\n    slots:\n      a:\n      b: 0\ntags:\n  nofailover: \"yes\"\n  failover_priority: \"2\"\n  zone: eu-1\n"
    );
    let l = Config::from_str(&yaml, &Env::new()).unwrap();
    assert_eq!(l.config.timing.ttl, 40);
    assert_eq!(l.config.tags.nofailover, Some(true));
    assert_eq!(l.config.tags.failover_priority, Some(2));
    assert_eq!(l.config.tags.other.get("zone"), Some(&json!("eu-1")));
}

#[test]
fn missing_required_keys() {
    for (yaml, path) in [
        (MINIMAL.replace("scope: batman\n", ""), "scope"),
        (MINIMAL.replace("name: node1\n", ""), "name"),
        (MINIMAL.replace("  data_dir: /x\n", ""), "postgresql.data_dir"),
        (MINIMAL.replace("  listen: 127.0.0.1:8008\n", "  connect_address: 127.0.0.1:8008\n"), "restapi.listen"),
        (MINIMAL.replace("etcd3:\n  host: 127.0.0.1:2379\n", ""), "etcd3"),
        (MINIMAL.replace("  host: 127.0.0.1:2379\n", "  protocol: http\n"), "etcd3.hosts"),
    ] {
        let e = err(&yaml);
        assert!(matches!(e, ConfigError::Missing { .. }), "{e:?}");
        assert_eq!(e.path(), Some(path));
        assert!(e.to_string().contains("missing"), "{e}");
    }
    let e = err(&MINIMAL.replace("  data_dir: /x\n", ""));
    assert_eq!(e.line(), Some(7), "points at the postgresql section");
    assert_eq!(err("").path(), Some("scope"));
    assert!(matches!(err("a: [1\n"), ConfigError::Yaml { line: Some(_), .. }));
}

#[test]
fn env_overrides_win_over_the_file() {
    let e = env(&[
        ("PATRONI_NAME", "node9"),
        ("PATRONI_SCOPE", "robin"),
        ("PATRONI_NAMESPACE", "/keel"),
        ("PATRONI_RESTAPI_CONNECT_ADDRESS", "10.0.0.9:8008"),
        ("PATRONI_RESTAPI_USERNAME", "admin"),
        ("PATRONI_ETCD3_HOSTS", "10.0.0.1:2379,10.0.0.2"),
        ("PATRONI_ETCD3_PROTOCOL", "http"),
        ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "10.0.0.9:5432"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/data"),
        ("PATRONI_SUPERUSER_PASSWORD", "secret"),
        ("PATRONI_REPLICATION_USERNAME", "repl"),
        ("PATRONI_NOFAILOVER", "true"),
        ("PATRONI_REPLICATEFROM", "node1"),
        ("PATRONI_FAILOVER_PRIORITY", "3"),
        ("PATRONI_UNRELATED", "x"),
    ]);
    let l = Config::from_str(MINIMAL, &e).unwrap();
    assert_eq!(l.warnings, ["environment variable PATRONI_UNRELATED is not a Patroni setting; ignored"]);
    let c = l.config;
    assert_eq!(c.name, "node9");
    assert_eq!(c.cluster_prefix(), "/keel/robin/");
    assert_eq!(c.restapi_url(), "http://10.0.0.9:8008/patroni");
    assert_eq!(c.restapi.authentication.as_ref().unwrap().username.as_deref(), Some("admin"));
    assert_eq!(c.etcd3_endpoints(), vec!["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
    assert_eq!(c.postgres_url(), "postgres://10.0.0.9:5432/postgres");
    assert_eq!(c.postgresql.data_dir, "/data");
    assert_eq!(c.postgresql.authentication.superuser.as_ref().unwrap().password.as_deref(), Some("secret"));
    assert_eq!(c.postgresql.authentication.replication.as_ref().unwrap().username.as_deref(), Some("repl"));
    assert!(c.tags.no_failover());
    assert_eq!(c.tags.replicatefrom.as_deref(), Some("node1"));

    // The environment can supply required keys, and a YAML list for hosts.
    let e = env(&[("PATRONI_SCOPE", "batman"), ("PATRONI_ETCD3_HOSTS", "['a:1', 'b:2']")]);
    let c = Config::from_str(&MINIMAL.replace("scope: batman\n", ""), &e).unwrap().config;
    assert_eq!(c.scope, "batman");
    assert_eq!(c.etcd3_endpoints(), vec!["http://a:1", "http://b:2"]);

    // Bad values from the environment name the variable.
    let e = env(&[("PATRONI_NOSYNC", "perhaps")]);
    let msg = Config::from_str(MINIMAL, &e).unwrap_err().to_string();
    assert!(msg.contains("PATRONI_NOSYNC") && msg.contains("tags.nosync"), "{msg}");

    // Every documented variable reaches the schema: refused settings are refused, naming the variable.
    for (var, path) in [
        ("PATRONI_RESTAPI_HTTPS_EXTRA_HEADERS", "restapi.https_extra_headers"),
        ("PATRONI_ETCD3_KEY_PASSWORD", "etcd3.key_password"),
        ("PATRONI_SUPERUSER_GSSENCMODE", "postgresql.authentication.superuser.gssencmode"),
        ("PATRONI_KUBERNETES_NAMESPACE", "kubernetes"),
        ("PATRONI_LOG_DIR", "log.dir"),
    ] {
        let e = Config::from_str(MINIMAL, &env(&[(var, "https")])).unwrap_err();
        assert_eq!(e.path(), Some(path), "{var}: {e}");
        assert!(e.to_string().contains(var), "{var}: {e}");
    }
    let e = Config::from_str(MINIMAL, &env(&[("PATRONI_CONFIGURATION", "scope: x")])).unwrap_err();
    assert!(e.to_string().contains("PATRONI_CONFIGURATION"), "{e}");
    let l = Config::from_str(MINIMAL, &env(&[("PATRONI_LOG_LEVEL", "DEBUG")])).unwrap();
    assert!(l.warnings[0].contains("log.level"), "{:?}", l.warnings);
}

#[test]
fn timing_is_adjusted_with_warnings() {
    let yaml = format!("{MINIMAL}bootstrap:\n  dcs:\n    ttl: 30\n    loop_wait: 20\n    retry_timeout: 10\n");
    let l = Config::from_str(&yaml, &Env::new()).unwrap();
    assert_eq!(l.config.timing, Timing { ttl: 30, loop_wait: 10, retry_timeout: 10 });
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0].contains("reducing loop_wait"), "{:?}", l.warnings);

    let yaml = format!("{MINIMAL}bootstrap:\n  dcs:\n    ttl: 5\n    loop_wait: 0\n    retry_timeout: 1\n");
    let l = Config::from_str(&yaml, &Env::new()).unwrap();
    assert_eq!(l.config.timing.ttl, 20);
    assert!(l.config.timing.loop_wait + 2 * l.config.timing.retry_timeout <= 20);
    assert_eq!(l.warnings.len(), 3);
    // The stored document keeps what the user wrote; the adjustment is applied when it is read.
    assert_eq!(l.config.bootstrap_dcs()["ttl"], json!(5));
}

#[test]
fn duplicate_keys_warn_and_last_wins() {
    let yaml = MINIMAL.replace("name: node1\n", "name: node1\nname: node2\n");
    let l = Config::from_str(&yaml, &Env::new()).unwrap();
    assert_eq!(l.config.name, "node2");
    assert!(l.warnings[0].contains("<string>:3") && l.warnings[0].contains("`name`"), "{:?}", l.warnings);
}

#[test]
fn split_port_cases() {
    assert_eq!(split_port("127.0.0.1:5432"), Some(("127.0.0.1", 5432)));
    assert_eq!(split_port("*:5432"), Some(("*", 5432)));
    assert_eq!(split_port("[::1]:8008"), Some(("[::1]", 8008)));
    assert_eq!(split_port("a,b:5432"), Some(("a,b", 5432)));
    assert_eq!(split_port("::1"), None);
    assert_eq!(split_port("host"), None);
    assert_eq!(split_port("host:99999"), None);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,400}") {
            let _ = Config::from_str(&s, &Env::new());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = Config::from_str(&s, &Env::new());
        }

        #[test]
        fn mutated_configs_never_panic(cut in 0usize..400, insert in "[ :\\-\\[\\]{}#&*!|>'\"%@`,?a-z0-9\n]{0,12}") {
            let base = MINIMAL.to_string() + "bootstrap:\n  dcs:\n    ttl: 30\n    slots:\n      a: {type: logical}\n";
            let cut = cut.min(base.len());
            let mut s = base[..cut].to_string();
            s.push_str(&insert);
            s.push_str(&base[cut..]);
            let _ = Config::from_str(&s, &Env::new());
        }

        #[test]
        fn arbitrary_env_never_panics(v in ".{0,40}") {
            let mut e = Env::new();
            for (var, _) in env::OVERRIDES {
                e.insert(var.to_string(), v.clone());
            }
            let _ = Config::from_str(MINIMAL, &e);
        }
    }
}

#[test]
fn keel_failover_slot_settings_are_known_dcs_keys() {
    let yaml = "scope: c\nname: n\nrestapi:\n  listen: 127.0.0.1:8008\netcd3:\n  host: 127.0.0.1:2379\n\
                bootstrap:\n  dcs:\n    failover_slot_readiness: strict\n    failover_slot_recreate: false\n\
                postgresql:\n  listen: 127.0.0.1:5432\n  connect_address: 127.0.0.1:5432\n  data_dir: /d\n";
    let loaded = Config::from_str(yaml, &Default::default()).expect("valid");
    assert_eq!(loaded.config.bootstrap_dcs()["failover_slot_readiness"], "strict");
}
