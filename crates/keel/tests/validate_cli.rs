//! `keel validate` as a user runs it: the built binary on files in a temporary directory.

use std::path::Path;
use std::process::{Command, Output};

const GOOD: &str = "\
scope: batman
name: node1
restapi:
  listen: 127.0.0.1:8008
etcd3:
  hosts: 127.0.0.1:2379
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /x
";

fn keel(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(args);
    // Keep the caller's environment from changing the outcome.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PATRONI") || k == "KEEL_CONFIG" {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run keel")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_good_file_prints_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.yml", GOOD);
    let out = keel(&["validate", &path]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "ok: cluster batman, member node1, etcd3 127.0.0.1:2379, data_dir /x (ttl 30, loop_wait 10, retry_timeout 10)"
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn validate_example_postgres0() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/postgres0.yml");
    let out = keel(&["validate", path]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: cluster batman, member postgresql0"));
}

#[test]
fn validate_warnings_go_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("{GOOD}log:\n  level: INFO\nbootstrap:\n  dcs:\n    loop_wait: 25\n");
    let path = write(dir.path(), "warn.yml", &yaml);
    let out = keel(&["validate", &path]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("warning:") && err.contains("log") && err.contains("reducing loop_wait"), "{err}");
    assert!(text(&out.stdout).contains("loop_wait 10"));
}

#[test]
fn validate_unknown_key_fails_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.yml", &GOOD.replace("  data_dir: /x\n", "  data_dir: /x\n  paramters: {}\n"));
    let out = keel(&["validate", &path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(err.contains("bad.yml:11") && err.contains("postgresql.paramters"), "{err}");
}

#[test]
fn validate_reports_missing_wrong_type_broken_yaml_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing.yml", GOOD.replace("name: node1\n", ""), "`name`"),
        ("type.yml", format!("{GOOD}tags:\n  nofailover: perhaps\n"), "tags.nofailover"),
        ("broken.yml", "scope: [batman\n".to_string(), "invalid YAML"),
    ];
    for (name, yaml, needle) in cases {
        let path = write(dir.path(), name, &yaml);
        let out = keel(&["validate", &path]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = text(&out.stderr);
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    }
    let out = keel(&["validate", &dir.path().join("nope.yml").to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read"));
}

#[test]
fn environment_overrides_apply_to_validate() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.yml", GOOD);
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["validate", &path])
        .env("PATRONI_NAME", "node7")
        .env("PATRONI_POSTGRESQL_DATA_DIR", "/data7")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("member node7") && stdout.contains("data_dir /data7"), "{stdout}");
}

#[test]
fn control_commands_need_a_configuration() {
    let out = keel(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("-c CONFIG"));
}

#[test]
fn run_with_a_missing_file_fails_clearly() {
    let out = keel(&["run", "/nonexistent/keel.yml"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("/nonexistent/keel.yml"), "{}", text(&out.stderr));
}

/// Settings Keel does not implement are refused by `keel validate` and by `keel run` at start, each named with
/// its line and what to do: security settings are never merely warned about.
#[test]
fn unimplemented_settings_are_refused_at_validate_and_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = GOOD.replace("  hosts: 127.0.0.1:2379\n", "  hosts: 127.0.0.1:2379\n  key_password: secret\n")
        + "bootstrap:\n  dcs:\n    synchronous_mode: quorum\n";
    let path = write(dir.path(), "refused.yml", &yaml);
    for args in [&["validate", path.as_str()][..], &["run", path.as_str()]] {
        let out = keel(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("refused.yml:7: `etcd3.key_password`: Keel reads unencrypted"), "{args:?}: {err}");
        assert!(err.contains("refused.yml:14: `bootstrap.dcs.synchronous_mode`: quorum commit"), "{args:?}: {err}");
        assert!(!err.contains("warning"), "{args:?}: {err}");
    }
    let out = keel(&["validate", &path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

/// etcd TLS files without `protocol: https` would do nothing: refused by validate (and by `keel run` when it
/// builds the store client, before connecting).
#[test]
fn etcd_tls_files_without_https_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = GOOD.replace("  hosts: 127.0.0.1:2379\n", "  hosts: 127.0.0.1:2379\n  cacert: /etc/etcd/ca.pem\n");
    let path = write(dir.path(), "tls.yml", &yaml);
    let out = keel(&["validate", &path]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("etcd3.cacert has no effect without TLS") && err.contains("protocol: https"), "{err}");
    let https = yaml.replace("  cacert:", "  protocol: https\n  cacert:");
    let path = write(dir.path(), "https.yml", &https);
    let out = keel(&["validate", &path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("127.0.0.1:2379"));
}

#[test]
fn refused_environment_variables_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.yml", GOOD);
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["validate", &path])
        .env("PATRONI_RESTAPI_HTTPS_EXTRA_HEADERS", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("PATRONI_RESTAPI_HTTPS_EXTRA_HEADERS") && err.contains("restapi.https_extra_headers"),
        "{err}"
    );
}
