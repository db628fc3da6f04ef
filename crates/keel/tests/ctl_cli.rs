//! The control commands (`keel -c CONFIG <command>`) as a user runs them: the built binary against a real etcd
//! (keel-testkit) holding fake members written directly through `ClusterStore` (no PostgreSQL, no agents).
//! Members' REST APIs are either closed ports (unreachable) or a tiny one-shot HTTP server recording the request.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use keel::dcs::{ClusterStore, EtcdBackend, EtcdConfig};
use keel_core::lsn::Lsn;
use keel_core::view::{HistoryEntry, Status};
use keel_testkit::{free_port, EtcdServer};
use serde_json::{json, Value};

const SYSID: &str = "7000000000000000001";

struct Cluster {
    etcd: EtcdServer,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// One store per fake member (their leases keep the member keys alive).
    nodes: Vec<ClusterStore<EtcdBackend>>,
}

fn backend(etcd: &EtcdServer) -> EtcdBackend {
    EtcdBackend::new(EtcdConfig::from_hosts(&[etcd.endpoint()], Duration::from_secs(5))).expect("etcd config")
}

fn write_config(dir: &Path, etcd_hosts: &str, extra: &str) -> PathBuf {
    let path = dir.join("keel.yml");
    let text = format!(
        "scope: batman\nname: ctl\nrestapi:\n  listen: 127.0.0.1:8008\n{extra}etcd3:\n  hosts: {etcd_hosts}\n\
         postgresql:\n  listen: 127.0.0.1:5432\n  connect_address: 127.0.0.1:5432\n  data_dir: /x\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A member key like the agent writes; `api` is the REST API port.
fn member(role: &str, pg_port: u16, api: u16, xlog: u64, extra: Value) -> Value {
    let mut m = json!({
        "conn_url": format!("postgres://127.0.0.1:{pg_port}/postgres"),
        "api_url": format!("http://127.0.0.1:{api}/patroni"),
        "state": "running",
        "role": role,
        "xlog_location": xlog,
        "timeline": 2,
        "version": "4.0.0",
    });
    if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    m
}

impl Cluster {
    /// batman: n1 leader (5432), n2 streaming replica 1 MiB behind (5433), n3 replica with `nofailover`
    /// cascading from n2 (5434). Every REST API is a closed port unless `n1_api` says otherwise.
    async fn start(n1_api: Option<u16>, extra_config: &str) -> Cluster {
        let etcd = EtcdServer::start().expect("start etcd");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path(), &format!("127.0.0.1:{}", etcd.client_port()), extra_config);
        let store = |name: &str| ClusterStore::new(backend(&etcd), "/service/", "batman", name, 30);
        let nodes = vec![store("n1"), store("n2"), store("n3")];
        let closed = || free_port().expect("port");
        let mib = 1024 * 1024;
        nodes[0]
            .touch_member(&member("primary", 5432, n1_api.unwrap_or_else(closed), 64 * mib, json!({})))
            .await
            .unwrap();
        nodes[1]
            .touch_member(&member("replica", 5433, closed(), 63 * mib, json!({"replication_state": "streaming"})))
            .await
            .unwrap();
        nodes[2]
            .touch_member(&member(
                "replica",
                5434,
                closed(),
                64 * mib,
                json!({"tags": {"nofailover": true, "replicatefrom": "n2"}}),
            ))
            .await
            .unwrap();
        assert!(nodes[0].acquire_leader().await.unwrap());
        assert!(nodes[0].initialize(SYSID, true).await.unwrap());
        assert!(nodes[0]
            .set_config(&json!({"ttl": 30, "loop_wait": 10, "postgresql": {"use_pg_rewind": true}}), Some(0))
            .await
            .unwrap());
        nodes[0].set_status(&Status { optime: Some(Lsn(64 * mib)), ..Status::default() }).await.unwrap();
        nodes[0]
            .set_history(&[HistoryEntry {
                timeline: 1,
                lsn: Lsn(25165984),
                reason: "no recovery target specified".into(),
                timestamp: Some("2026-01-01T00:00:00+00:00".into()),
                new_leader: Some("n1".into()),
            }])
            .await
            .unwrap();
        Cluster { etcd, dir, config, nodes }
    }

    fn command(&self, args: &[&str]) -> Command {
        keel_command(&self.config, args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run keel")
    }

    async fn view(&self) -> keel_core::view::ClusterView {
        self.nodes[0].load().await.unwrap()
    }
}

fn keel_command(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.arg("-c").arg(config).args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PATRONI") || k == "KEEL_CONFIG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the exit code and returns stdout.
#[track_caller]
fn expect(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Asserts a failure with exactly one line on stderr containing `needle`.
#[track_caller]
fn expect_error(out: &Output, code: i32, needle: &str) {
    expect(out, code);
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected on stderr: {err}");
    assert!(err.contains(needle), "stderr {err:?} should contain {needle:?}");
}

#[tokio::test]
async fn list_in_every_format() {
    let c = Cluster::start(None, "").await;
    let pretty = expect(&c.run(&["list"]), 0);
    let lines: Vec<&str> = pretty.lines().collect();
    assert!(lines[0].starts_with(&format!("+ Cluster: batman ({SYSID}) ")), "{pretty}");
    // patronictl 4's columns: receive and replay positions, each with its lag in MB. Members that publish only
    // xlog_location show it on the receive side while streaming and on the replay side otherwise.
    assert_eq!(
        lines[1],
        "| Member | Host           | Role    | State     | TL | Receive LSN | Lag | Replay LSN | Lag | Tags              |"
    );
    assert_eq!(
        lines[3],
        "| n1     | 127.0.0.1:5432 | Leader  | running   |  2 |             |     |            |     |                   |"
    );
    assert_eq!(lines[4], lines[2], "multi-line tags: a rule between every row");
    assert_eq!(
        lines[5],
        "| n2     | 127.0.0.1:5433 | Replica | streaming |  2 |   0/3F00000 |   1 |    unknown |     |                   |"
    );
    assert_eq!(
        lines[7],
        "| n3     | 127.0.0.1:5434 | Replica | running   |  2 |     unknown |     |  0/4000000 |   0 | nofailover: true  |"
    );
    assert_eq!(
        lines[8],
        "|        |                |         |           |    |             |     |            |     | replicatefrom: n2 |"
    );

    let json: Value = serde_json::from_str(&expect(&c.run(&["list", "-f", "json"]), 0)).expect("json output");
    assert_eq!(
        json[0],
        json!({"Cluster": "batman", "Member": "n1", "Host": "127.0.0.1:5432", "Role": "Leader", "State": "running", "TL": 2})
    );
    assert_eq!((&json[1]["Receive LSN"], &json[1]["Receive Lag"]), (&json!("0/3F00000"), &json!(1)));
    assert_eq!(json[1]["Replay LSN"], json!("unknown"));
    assert_eq!((&json[2]["Replay LSN"], &json[2]["Replay Lag"]), (&json!("0/4000000"), &json!(0)));
    assert_eq!(json[2]["Tags"], json!({"nofailover": true, "replicatefrom": "n2"}));

    let yaml: Value = serde_saphyr::from_str(&expect(&c.run(&["list", "--format", "yaml"]), 0)).expect("yaml");
    assert_eq!(yaml, json);

    let tsv = expect(&c.run(&["list", "-f", "tsv"]), 0);
    let tsv: Vec<&str> = tsv.lines().collect();
    assert_eq!(
        tsv[0],
        "Cluster\tMember\tHost\tRole\tState\tTL\tReceive LSN\tReceive Lag\tReplay LSN\tReplay Lag\tTags"
    );
    assert_eq!(tsv[2], "batman\tn2\t127.0.0.1:5433\tReplica\tstreaming\t2\t0/3F00000\t1\tunknown\t\t");
    assert_eq!(
        tsv[3],
        "batman\tn3\t127.0.0.1:5434\tReplica\trunning\t2\tunknown\t\t0/4000000\t0\t{nofailover: true, replicatefrom: n2}"
    );

    let extended = expect(&c.run(&["list", "-e"]), 0);
    assert!(
        extended
            .lines()
            .nth(1)
            .unwrap()
            .contains("| Pending restart | Pending restart reason | Scheduled restart | Tags"),
        "{extended}"
    );

    let topo = expect(&c.run(&["topology", "-f", "tsv"]), 0);
    let names: Vec<&str> = topo.lines().skip(1).filter_map(|l| l.split('\t').nth(1)).collect();
    assert_eq!(names, ["n1", "+ n2", "  + n3"]);

    let stamped = expect(&c.run(&["list", "-t"]), 0);
    let mut stamped = stamped.lines();
    assert_eq!(stamped.next().map(str::len), Some(19), "a `YYYY-MM-DD HH:MM:SS` line first");
    assert!(stamped.next().is_some_and(|l| l.starts_with("+ Cluster: batman")));

    // Another cluster name on the command line lists that cluster (here: one that does not exist).
    let other = expect(&c.run(&["list", "robin"]), 0);
    assert!(other.starts_with("+ Cluster: robin (uninitialized) "), "{other}");
}

#[tokio::test]
async fn show_config_and_edit_config_round_trip() {
    let c = Cluster::start(None, "").await;
    let shown: Value = serde_saphyr::from_str(&expect(&c.run(&["show-config"]), 0)).unwrap();
    assert_eq!(shown, json!({"ttl": 30, "loop_wait": 10, "postgresql": {"use_pg_rewind": true}}));

    let out = expect(
        &c.run(&[
            "edit-config",
            "-s",
            "loop_wait=5",
            "-s",
            "postgresql.use_pg_rewind=null",
            "-p",
            "max_connections=200",
            "--force",
        ]),
        0,
    );
    assert!(out.starts_with("--- before\n+++ after\n@@ "), "{out}");
    assert!(out.contains("\n-loop_wait: 10\n+loop_wait: 5\n"), "{out}");
    assert!(out.contains("\n+    max_connections: 200\n"), "{out}");
    let stored = c.view().await.config.unwrap().value.raw;
    assert_eq!(stored, json!({"ttl": 30, "loop_wait": 5, "postgresql": {"parameters": {"max_connections": 200}}}));

    assert_eq!(expect(&c.run(&["edit-config", "-s", "ttl=30"]), 0), "Not changed\n");

    // --apply merges a file, --replace swaps the whole document; -q hides the diff.
    let patch = c.dir.path().join("patch.yml");
    std::fs::write(&patch, "postgresql:\n  parameters:\n    max_connections: null\n    work_mem: 8MB\nttl: 40\n")
        .unwrap();
    assert_eq!(expect(&c.run(&["edit-config", "--apply", patch.to_str().unwrap(), "-q"]), 0), "");
    let stored = c.view().await.config.unwrap().value.raw;
    assert_eq!(stored, json!({"ttl": 40, "loop_wait": 5, "postgresql": {"parameters": {"work_mem": "8MB"}}}));
    let mut cmd = c.command(&["edit-config", "--replace", "-", "-q"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"ttl: 30\nmaximum_lag_on_failover: 1048576\n").unwrap();
    expect(&child.wait_with_output().unwrap(), 0);
    assert_eq!(c.view().await.config.unwrap().value.raw, json!({"ttl": 30, "maximum_lag_on_failover": 1048576}));

    expect_error(&c.run(&["edit-config"]), 2, "needs a change");
    expect_error(&c.run(&["edit-config", "-s", "novalue"]), 2, "invalid parameter setting");

    // What Keel does not run is refused, naming the setting and what to do, and nothing is written.
    let before = c.view().await.config.unwrap();
    expect_error(&c.run(&["edit-config", "-s", "synchronous_mode=quorum"]), 1, "`synchronous_mode`: quorum commit");
    expect_error(&c.run(&["edit-config", "-s", "standby_cluster.host=10.0.0.1"]), 1, "`standby_cluster`");
    expect_error(&c.run(&["edit-config", "-s", "synchronus_mode=on"]), 1, "unknown setting `synchronus_mode`");
    assert_eq!(c.view().await.config.unwrap(), before);
    expect(&c.run(&["edit-config", "-q", "-s", "postgresql.pg_hba=[local all all trust]"]), 0);
}

#[tokio::test]
async fn edit_config_fails_on_a_concurrent_change() {
    let c = Cluster::start(None, "").await;
    let version = c.view().await.config.unwrap().version;
    // Someone else writes the key after we read it...
    assert!(c.nodes[1].set_config(&json!({"ttl": 30, "loop_wait": 7}), Some(version)).await.unwrap());
    // ...so our write, guarded by the revision we read, must not land.
    let err = keel::cli::edit_config::write_config(&c.nodes[0], &json!({"ttl": 99}), Some(version)).await.unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(err.message().contains("config changed in the store"), "{err}");
    assert_eq!(c.view().await.config.unwrap().value.raw, json!({"ttl": 30, "loop_wait": 7}));
}

#[tokio::test]
async fn pause_and_resume() {
    let c = Cluster::start(None, "").await;
    // Nobody runs the agents here, so members never report the pause: --wait gives up with their names.
    let out = c.run(&["pause", "--wait", "--wait-timeout", "1"]);
    expect_error(&out, 1, "these members still report pause=false: n1, n2, n3");
    assert!(text(&out.stdout).starts_with("'pause' request sent, waiting until it is recognized by all nodes\n"));
    assert!(c.view().await.is_paused());
    expect_error(&c.run(&["pause"]), 1, "Cluster is already paused");
    assert!(expect(&c.run(&["list"]), 0).ends_with(" Maintenance mode: on\n"));

    assert_eq!(expect(&c.run(&["resume"]), 0), "Success: cluster management is resumed\n");
    assert!(c.view().await.config.unwrap().value.raw.get("pause").is_none());
    expect_error(&c.run(&["resume"]), 1, "Cluster is not paused");

    // Members that report the new state satisfy --wait at once.
    let nodes = &c.nodes;
    let set_pause = |paused: bool| async move {
        for (i, n) in nodes.iter().enumerate() {
            let role = if i == 0 { "primary" } else { "replica" };
            n.touch_member(&member(role, 5432 + i as u16, 1, 0, json!({"pause": paused}))).await.unwrap();
        }
    };
    set_pause(true).await;
    let out = expect(&c.run(&["pause", "--wait"]), 0);
    assert!(out.ends_with("Success: cluster management is paused\n"), "{out}");
    assert_eq!(c.view().await.config.unwrap().value.raw["pause"], json!(true));
    set_pause(false).await;
    let out = expect(&c.run(&["resume", "--wait"]), 0);
    assert!(out.starts_with("'resume' request sent"), "{out}");
    assert!(!c.view().await.is_paused());
}

#[tokio::test]
async fn history_and_dsn() {
    let c = Cluster::start(None, "").await;
    let out = expect(&c.run(&["history"]), 0);
    assert!(
        out.contains("|  1 | 25165984 | no recovery target specified | 2026-01-01T00:00:00+00:00 | n1         |"),
        "{out}"
    );
    let json: Value = serde_json::from_str(&expect(&c.run(&["history", "-f", "json"]), 0)).unwrap();
    assert_eq!(json[0]["LSN"], json!(25165984));

    assert_eq!(expect(&c.run(&["dsn"]), 0), "host=127.0.0.1 port=5432\n");
    assert_eq!(expect(&c.run(&["dsn", "n2"]), 0), "host=127.0.0.1 port=5433\n");
    assert_eq!(expect(&c.run(&["dsn", "batman", "-m", "n3"]), 0), "host=127.0.0.1 port=5434\n");
    assert_eq!(expect(&c.run(&["dsn", "-r", "replica"]), 0), "host=127.0.0.1 port=5433\n");
    expect_error(&c.run(&["dsn", "nope"]), 1, "nope is not a member of cluster batman");
}

#[tokio::test]
async fn switchover_and_failover_validation() {
    let c = Cluster::start(None, "").await;
    expect_error(&c.run(&["switchover", "--candidate", "nope", "--force"]), 1, "Member nope does not exist");
    expect_error(&c.run(&["switchover", "--candidate", "n1", "--force"]), 1, "target and source are the same");
    expect_error(&c.run(&["switchover", "--candidate", "n3", "--force"]), 1, "tagged as nofailover");
    expect_error(
        &c.run(&["switchover", "--leader", "n2", "--force"]),
        1,
        "Member n2 is not the leader of cluster batman",
    );
    expect_error(&c.run(&["switchover", "--scheduled", "soon"]), 2, "is not a time");
    expect_error(&c.run(&["switchover", "--scheduled", "2001-01-01T00:00Z"]), 2, "in the past");
    expect_error(&c.run(&["failover", "--force"]), 2, "only to a specific candidate");
    expect_error(&c.run(&["failover", "--candidate", "n1"]), 1, "Failover target and source are the same.");
    assert!(c.view().await.failover.is_none(), "nothing may be written on a refused request");
}

#[tokio::test]
async fn switchover_falls_back_to_the_failover_key_when_the_api_is_unreachable() {
    let c = Cluster::start(None, "").await;
    let child = c
        .command(&["switchover", "--candidate", "n2", "--force", "--wait-timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Play the agents: once the request is in the store, n1 lets go of the leader key and n2 takes it.
    let start = Instant::now();
    let request = loop {
        if let Some(f) = c.view().await.failover {
            break f.value;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the failover key was never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((request.leader.as_deref(), request.member.as_deref()), (Some("n1"), Some("n2")));
    assert!(c.nodes[0].delete_leader().await.unwrap());
    assert!(c.nodes[1].acquire_leader().await.unwrap());
    let out = child.wait_with_output().unwrap();
    let stdout = expect(&out, 0);
    assert!(stdout.starts_with("Current cluster topology\n"), "{stdout}");
    assert!(stdout.contains("Could not switchover using Patroni api"), "{stdout}");
    assert!(stdout.contains("falling back to DCS"), "{stdout}");
    assert!(stdout.contains("| n2     | 127.0.0.1:5433 | Leader "), "{stdout}");

    // A failover to a named candidate with nobody leading goes the same way: {"member": candidate}.
    assert!(c.nodes[1].delete_leader().await.unwrap());
    c.nodes[0].clear_failover(None).await.unwrap();
    expect(&c.run(&["failover", "--candidate", "n1", "--wait-timeout", "0"]), 0);
    let f = c.view().await.failover.unwrap().value;
    assert_eq!((f.leader, f.member), (None, Some("n1".to_string())));

    // Nobody acts on the request: the wait gives up with a clear error, the request stays.
    c.nodes[0].clear_failover(None).await.unwrap();
    assert!(c.nodes[0].acquire_leader().await.unwrap());
    let out = c.run(&["switchover", "--wait-timeout", "1"]);
    expect_error(&out, 1, "the leader is still n1 after 1s");
    assert_eq!(c.view().await.failover.unwrap().value.leader.as_deref(), Some("n1"));
}

/// A one-shot HTTP server: answers the first request with `status` and `body`, and hands the request over.
fn one_shot_http(status: u16, body: &'static str) -> (u16, mpsc::Receiver<String>) {
    http_server(vec![(status, body)])
}

/// An HTTP server answering one request per entry of `replies`, in order, then closing; requests are handed over.
fn http_server(replies: Vec<(u16, &'static str)>) -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (status, body) in replies {
            serve_one(&listener, status, body, &tx);
        }
    });
    (port, rx)
}

fn serve_one(listener: &TcpListener, status: u16, body: &str, tx: &mpsc::Sender<String>) {
    {
        let Ok((mut s, _)) = listener.accept() else { return };
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
            let t = String::from_utf8_lossy(&req).to_string();
            if let Some((head, rest)) = t.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if rest.len() >= len {
                    break;
                }
            }
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes());
        let _ = tx.send(String::from_utf8_lossy(&req).to_string());
    }
}

#[tokio::test]
async fn switchover_posts_to_the_leaders_api_with_basic_auth() {
    let (port, rx) = one_shot_http(200, "Successfully switched over to \"n2\"");
    let c = Cluster::start(Some(port), "  authentication:\n    username: admin\n    password: s3cret\n").await;
    let out =
        expect(&c.run(&["switchover", "--primary", "n1", "--candidate", "n2", "--force", "--wait-timeout", "0"]), 0);
    assert!(out.contains(" Successfully switched over to \"n2\"\n"), "{out}");
    let req = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(req.starts_with("POST /switchover HTTP/1.1\r\n"), "{req}");
    let auth = base64::engine::general_purpose::STANDARD.encode("admin:s3cret");
    assert!(req.to_ascii_lowercase().contains(&format!("authorization: basic {}", auth.to_ascii_lowercase())), "{req}");
    let body: Value = serde_json::from_str(req.split_once("\r\n\r\n").unwrap().1).unwrap();
    // Patroni's fields, plus Keel's "force" for --force (overrides the slot readiness check; Patroni ignores it).
    assert_eq!(body, json!({"leader": "n1", "candidate": "n2", "force": true}));
    assert!(c.view().await.failover.is_none(), "the API took the request: no direct write");
}

#[tokio::test]
async fn switchover_refused_by_the_api_is_an_error() {
    let (port, _rx) = one_shot_http(412, "candidate name does not match with sync_standby");
    let c = Cluster::start(Some(port), "").await;
    let out = c.run(&["switchover", "--candidate", "n2", "--force"]);
    expect_error(&out, 1, "Switchover failed, details: 412, candidate name does not match with sync_standby");
    assert!(c.view().await.failover.is_none());
}

#[tokio::test]
async fn restart_reinit_reload_over_rest() {
    let (port, rx) = one_shot_http(200, "restarted successfully");
    let c = Cluster::start(Some(port), "").await;
    assert_eq!(expect(&c.run(&["restart", "batman", "n1", "--pending"]), 0), "Success: restart on member n1\n");
    let req = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(req.starts_with("POST /restart HTTP/1.1\r\n"), "{req}");
    assert_eq!(
        serde_json::from_str::<Value>(req.split_once("\r\n\r\n").unwrap().1).unwrap(),
        json!({"restart_pending": true})
    );

    // Unreachable members are reported per member, and the exit status says something failed.
    let out = c.run(&["restart", "n2", "n3"]);
    expect_error(&out, 1, "restart failed on 2 of 2 member(s)");
    assert!(text(&out.stdout).contains("Failed: restart for member n2, the REST API is unreachable"));
    expect_error(&c.run(&["restart"]), 2, "or pass --force to restart all of them");
    expect_error(&c.run(&["restart", "nope"]), 1, "nope is not a member of cluster batman");
    expect_error(&c.run(&["reinit", "n1", "--force"]), 1, "n1 is the leader of cluster batman");
    let out = c.run(&["reinit", "batman", "n2"]);
    expect_error(&out, 1, "reinitialize failed on 1 of 1 member(s)");
    let out = c.run(&["reload", "--force", "-r", "replica"]);
    expect_error(&out, 1, "reload failed on 2 of 2 member(s)");
}

#[tokio::test]
async fn remove_needs_the_name_and_force() {
    let c = Cluster::start(None, "").await;
    expect_error(&c.run(&["remove", "robin", "--force"]), 2, "does not match the configuration's scope");
    expect_error(&c.run(&["remove", "batman"]), 2, "pass --force to confirm");
    assert!(c.view().await.leader.is_some());
    let out = c.run(&["remove", "batman", "--force"]);
    assert!(expect(&out, 0).starts_with("Cluster batman removed from the store"));
    assert!(text(&out.stderr).contains("still has a running leader (n1)"));
    let v = c.view().await;
    assert!(v.members.is_empty() && v.leader.is_none() && v.config.is_none() && v.initialize.is_none());
    expect_error(&c.run(&["remove", "batman", "--force"]), 1, "cluster batman does not exist");
}

#[test]
fn unreachable_etcd_is_one_clear_line_fast() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = write_config(dir.path(), &format!("127.0.0.1:{port}"), "");
    for args in [&["list"][..], &["show-config"], &["edit-config", "-s", "ttl=40"], &["switchover", "--force"]] {
        let start = Instant::now();
        let out = keel_command(&config, args).output().unwrap();
        assert!(start.elapsed() < Duration::from_secs(8), "{args:?} took {:?}", start.elapsed());
        expect_error(&out, 1, &format!("127.0.0.1:{port}"));
        assert!(text(&out.stderr).starts_with("error: "), "{}", text(&out.stderr));
    }
    // A missing configuration is a usage error.
    let out = keel_command(&dir.path().join("missing.yml"), &["list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn hung_etcd_fails_within_the_store_timeout() {
    let c = Cluster::start(None, "").await;
    c.etcd.pause().unwrap();
    let start = Instant::now();
    let out = c.run(&["list"]);
    let took = start.elapsed();
    c.etcd.resume().unwrap();
    expect_error(&out, 1, "did not answer");
    assert!(took < Duration::from_secs(9), "took {took:?}");
}

#[tokio::test]
async fn scheduled_switchover_shows_in_list_and_flush_cancels_it() {
    let c = Cluster::start(None, "").await;
    let out =
        expect(&c.run(&["switchover", "--candidate", "n2", "--scheduled", "2099-01-01T10:00+01:00", "--force"]), 0);
    assert!(out.contains("falling back to DCS"), "{out}");
    let f = c.view().await.failover.unwrap().value;
    assert_eq!(f.scheduled_at.as_deref(), Some("2099-01-01T10:00:00+01:00"));
    let list = expect(&c.run(&["list"]), 0);
    assert!(
        list.ends_with(" Switchover scheduled at: 2099-01-01T10:00:00+01:00\n                    from: n1\n                      to: n2\n"),
        "{list}"
    );
    // The leader's API is unreachable: the key is cleared directly.
    let out = expect(&c.run(&["flush", "batman", "switchover"]), 0);
    assert!(out.contains("Success: cleared the failover key"), "{out}");
    assert!(c.view().await.failover.is_none());
    expect_error(&c.run(&["flush", "switchover"]), 1, "no switchover is scheduled in cluster batman");
    expect_error(&c.run(&["flush", "n1", "reboot"]), 2, "flush target must be restart or switchover");
    assert_eq!(expect(&c.run(&["flush", "restart", "--force"]), 0), "No scheduled restart on the selected members\n");
}

#[tokio::test]
async fn version_asks_the_members() {
    let (port, rx) = one_shot_http(
        200,
        r#"{"state":"running","server_version":160001,"patroni":{"version":"0.1.0","scope":"batman","name":"n1"}}"#,
    );
    let c = Cluster::start(Some(port), "").await;
    let out = expect(&c.run(&["version", "batman", "n1"]), 0);
    assert_eq!(out, format!("keel version {}\nn1: Keel 0.1.0 PostgreSQL 16.1\n", env!("CARGO_PKG_VERSION")));
    assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap().starts_with("GET /patroni HTTP/1.1\r\n"));
    let out = expect(&c.run(&["version", "batman"]), 0);
    assert!(out.contains("n2: failed to get version: "), "{out}");
}

#[tokio::test]
async fn reinit_waits_until_the_replica_is_rebuilt() {
    let (port, rx) = http_server(vec![
        (200, "reinitialize started"),
        (200, r#"{"state":"creating replica"}"#),
        (200, r#"{"state":"running"}"#),
    ]);
    let c = Cluster::start(None, "").await;
    c.nodes[1].touch_member(&member("replica", 5433, port, 0, json!({}))).await.unwrap();
    let out = expect(&c.run(&["reinit", "batman", "n2", "--wait", "--force"]), 0);
    assert_eq!(
        out,
        "Success: reinitialize for member n2\nWaiting for reinitialize to complete on: n2\n\
         Reinitialize is completed on: n2\n"
    );
    let post = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(post.starts_with("POST /reinitialize HTTP/1.1\r\n"), "{post}");
    let body: Value = serde_json::from_str(post.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body, json!({"force": true, "from_leader": false}));
    assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap().starts_with("GET /patroni "));
}
