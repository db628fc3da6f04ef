//! Benchmark of a local three-node cluster (real etcd, real agents, real PostgreSQL):
//!
//! - failover: kill -9 of the primary's agent and postmaster → a new primary accepts writes;
//! - rejoin: restart of the killed node's agent → it streams from the new primary;
//! - switchover (`keel switchover --candidate X --force`, else `POST /switchover`) → the candidate accepts writes;
//! - each agent's resident memory (VmRSS) and CPU time per HA loop cycle while the cluster is idle;
//! - the load the idle cluster puts on etcd: requests per second over 60 s, from etcd's own Prometheus counters
//!   (`grpc_server_msg_received_total`: every unary call and every message on a stream, e.g. each lease
//!   keep-alive; `grpc_server_started_total`: calls and streams opened).
//!
//! `cargo build --bin keel && cargo run --example bench -- [CYCLES]` (as root or as a user that can run
//! PostgreSQL). `KEEL_TEST_PG_VERSION` picks the PostgreSQL version (default 15); `KEEL_BENCH_TIMING=30,10,10`
//! sets `ttl,loop_wait,retry_timeout` (default: the test harness's 20,2,5).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use keel::cluster_runner::{clock_ticks_per_sec, cpu_ticks, rss_kib};
use keel_testkit::{KeelCluster, KeelOptions};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(180);

fn main() {
    let cycles: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let timing = std::env::var("KEEL_BENCH_TIMING").ok().and_then(|t| {
        let v: Vec<u64> = t.split(',').filter_map(|x| x.trim().parse().ok()).collect();
        (v.len() == 3).then(|| (v[0], v[1], v[2]))
    });
    let opts = KeelOptions { timing, ..KeelOptions::default() };
    println!("keel binary: {}", opts.resolve_keel_bin().display());
    let t = Instant::now();
    let mut c = KeelCluster::start(3, opts).expect("start the cluster");
    let (mut leader, _) = c.wait_replicas_streaming(2, DEADLINE).expect("bootstrap");
    wait_writable(&c, &leader);
    let bootstrap = t.elapsed();
    println!(
        "settings: ttl {} s, loop_wait {} s, retry_timeout {} s, PostgreSQL {}",
        c.opts.ttl,
        c.opts.loop_wait,
        c.opts.retry_timeout,
        c.opts.bin_dir.display()
    );
    println!("bootstrap to a leader and 2 streaming replicas: {:.1} s", bootstrap.as_secs_f64());

    // Idle cost, measured over 30 s.
    let window = Duration::from_secs(30);
    let pids: Vec<(String, u32)> = c.names().into_iter().filter_map(|n| Some((n.clone(), c.agent_pid(&n)?))).collect();
    let before: Vec<u64> = pids.iter().map(|(_, p)| cpu_ticks(*p).unwrap_or(0)).collect();
    std::thread::sleep(window);
    let cycles_in_window = window.as_secs_f64() / c.opts.loop_wait as f64;
    println!("\n| agent | role | VmRSS (MiB) | CPU per cycle (ms) | CPU idle (%) |\n|---|---|---|---|---|");
    for ((name, pid), b) in pids.iter().zip(before) {
        let after = cpu_ticks(*pid).unwrap_or(0);
        let cpu_s = after.saturating_sub(b) as f64 / clock_ticks_per_sec() as f64;
        let rss = rss_kib(*pid).unwrap_or(0) as f64 / 1024.0;
        let role = if *name == leader { "leader" } else { "replica" };
        println!(
            "| {name} | {role} | {rss:.1} | {:.2} | {:.2} |",
            cpu_s * 1000.0 / cycles_in_window,
            cpu_s * 100.0 / window.as_secs_f64()
        );
    }

    store_load(&c);

    let mut failovers = Vec::new();
    let mut rejoins = Vec::new();
    let mut switchovers = Vec::new();
    for i in 0..cycles {
        // kill -9 failover.
        let old = leader.clone();
        let t = Instant::now();
        c.kill9(&old);
        leader = c
            .wait("new leader", DEADLINE, || match c.leader() {
                Some(l) if l != old && c.writable(&l) => Ok(Some(l)),
                other => Err(format!("{other:?}")),
            })
            .expect("failover");
        failovers.push(t.elapsed());
        // Rejoin.
        let t = Instant::now();
        c.start_agent(&old).expect("restart agent");
        wait_streaming(&c, &leader, &old);
        rejoins.push(t.elapsed());
        // A switchover's candidate check reads the member keys: let them catch up first.
        settle(&c);
        // Switchover to a replica.
        let cand = c.names().into_iter().find(|n| *n != leader).unwrap();
        let t = Instant::now();
        let out = c.ctl(&leader, &["switchover", "--candidate", &cand, "--force"]);
        if !out.status.success() {
            let (code, body) = c
                .http_post(&cand, "/switchover", &json!({"leader": leader, "candidate": cand}))
                .expect("POST /switchover");
            if code != 200 {
                println!("cycle {i}: switchover not available (CLI: {}; REST: {code} {body})", out.status);
                continue;
            }
        }
        let old = leader.clone();
        leader = c
            .wait("switchover", DEADLINE, || match c.leader() {
                Some(l) if l == cand && c.writable(&l) => Ok(Some(l)),
                other => Err(format!("{other:?}")),
            })
            .expect("switchover");
        switchovers.push(t.elapsed());
        wait_streaming(&c, &leader, &old);
        settle(&c);
        println!(
            "cycle {i}: failover {:.1} s, rejoin {:.1} s, switchover {:.1} s",
            failovers[i].as_secs_f64(),
            rejoins[i].as_secs_f64(),
            switchovers.last().unwrap().as_secs_f64()
        );
    }
    println!("\n| measurement | min (s) | median (s) | max (s) |\n|---|---|---|---|");
    for (what, v) in [
        ("kill -9 of the primary → new primary writable", &mut failovers),
        ("agent restart → old primary streaming again", &mut rejoins),
        ("switchover → candidate writable", &mut switchovers),
    ] {
        if v.is_empty() {
            println!("| {what} | - | - | - |");
            continue;
        }
        v.sort();
        let s = |d: Duration| d.as_secs_f64();
        println!("| {what} | {:.1} | {:.1} | {:.1} |", s(v[0]), s(v[v.len() / 2]), s(v[v.len() - 1]));
    }
}

/// Requests the idle cluster sends etcd over 60 s, by gRPC method, from etcd's `/metrics`.
fn store_load(c: &KeelCluster) {
    let port = c.etcd().client_port();
    let window = Duration::from_secs(60);
    let versions_before = key_versions(port);
    let before = etcd_counters(port);
    std::thread::sleep(window);
    let after = etcd_counters(port);
    let versions_after = key_versions(port);
    let secs = window.as_secs_f64();
    println!(
        "\n| etcd gRPC method | messages received | calls/streams started | ended Unavailable |\n|---|---|---|---|"
    );
    let (mut msgs, mut started) = (0.0, 0.0);
    let methods: std::collections::BTreeSet<&String> = after.keys().map(|(m, _)| m).collect();
    for m in methods {
        let d = |kind: &str| {
            after.get(&(m.clone(), kind.into())).unwrap_or(&0.0) - before.get(&(m.clone(), kind.into())).unwrap_or(&0.0)
        };
        let (r, s, u) = (d("received"), d("started"), d("unavailable"));
        if r + s + u > 0.0 {
            println!("| {m} | {r} | {s} | {u} |");
        }
        msgs += r;
        started += s;
    }
    println!(
        "idle store load over {secs:.0} s: {:.2} requests/s (messages received), {:.2} calls or streams opened/s",
        msgs / secs,
        started / secs
    );
    let written: Vec<String> = versions_after
        .iter()
        .filter_map(|(k, v)| {
            let n = v - versions_before.get(k).copied().unwrap_or(0);
            (n > 0).then(|| format!("{k} ({n})"))
        })
        .collect();
    println!("keys written in the window (etcdctl, versions): {}", written.join(", "));
}

/// Each key's version (number of writes since it was created) below `/service/`, from `etcdctl`.
fn key_versions(port: u16) -> BTreeMap<String, i64> {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &format!("http://127.0.0.1:{port}"), "get", "--prefix", "/service/", "-w", "fields"])
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => return BTreeMap::new(),
    };
    let mut versions = BTreeMap::new();
    let mut key = None;
    for line in text.lines() {
        if let Some(k) = line.strip_prefix("\"Key\" : ") {
            key = Some(k.trim_matches('"').to_string());
        } else if let Some(v) = line.strip_prefix("\"Version\" : ") {
            if let Some(k) = key.take() {
                versions.insert(k, v.trim().parse().unwrap_or(0));
            }
        }
    }
    versions
}

/// (grpc_method, received|started|unavailable) -> counter, from etcd's Prometheus metrics.
fn etcd_counters(port: u16) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    let text = match http_get(port, "/metrics") {
        Ok(t) => t,
        Err(e) => {
            println!("cannot read etcd's /metrics: {e}");
            return out;
        }
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let kind = if line.starts_with("grpc_server_msg_received_total{") {
            "received"
        } else if line.starts_with("grpc_server_started_total{") {
            "started"
        } else if line.starts_with("grpc_server_handled_total{") && line.contains("grpc_code=\"Unavailable\"") {
            "unavailable"
        } else {
            continue;
        };
        let Some(method) = line.split("grpc_method=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        *out.entry((method.to_string(), kind.to_string())).or_insert(0.0) += value;
    }
    out
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn settle(c: &KeelCluster) {
    c.wait("member keys", DEADLINE, || c.members_settled().map(|ok| ok.then_some(()))).expect("member keys");
}

fn wait_writable(c: &KeelCluster, node: &str) {
    c.wait("writable", DEADLINE, || Ok(c.writable(node).then_some(()))).expect("writable");
}

fn wait_streaming(c: &KeelCluster, leader: &str, replica: &str) {
    c.wait("streaming", DEADLINE, || Ok(c.streaming_replicas(leader)?.iter().any(|r| r == replica).then_some(())))
        .expect("streaming");
}
