//! `keel demo`: a local etcd and three Keel nodes on loopback, until Ctrl-C.
//!
//! With `--failover` it also kills the primary (agent and postmaster, with SIGKILL), shows the election of a new
//! primary, restarts the killed node and shows it rejoining as a replica. Across it, a writer inserts into a
//! table of database `app` and a `pg_recvlogical` consumer follows a permanent logical slot (`changes`): the demo
//! ends with the count of changes written, received, lost (exit status 1 unless 0) and received twice.

mod changes;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use super::{EXIT_OK, EXIT_USAGE};
use crate::cluster_runner::{self, ClusterOptions, LocalCluster, LocalEtcd};

/// Exit status when the demo cluster did not come up (or failed over) as expected.
const EXIT_FAILED: u8 = 1;
/// How long the cluster may take to bootstrap, or to fail over.
const DEADLINE: Duration = Duration::from_secs(180);

/// `keel demo` arguments.
#[derive(Debug, Args, Default)]
pub struct DemoArgs {
    /// After the cluster is up: kill -9 the primary, watch the failover, restart the node and watch it rejoin.
    #[arg(long)]
    pub failover: bool,
    /// Exit (stopping everything) once the demo has run instead of waiting for Ctrl-C.
    #[arg(long)]
    pub exit_after: bool,
    /// Number of Keel nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub nodes: u8,
    /// PostgreSQL major version (15 from /usr/lib/postgresql, 16, 17 and 18 from /opt/keel/pg).
    #[arg(long, env = "KEEL_TEST_PG_VERSION", default_value_t = cluster_runner::DEFAULT_PG_VERSION)]
    pub pg_version: u32,
    /// PostgreSQL's bin directory (overrides --pg-version).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Working directory for etcd, the data directories, configurations and logs (default /tmp/keel-demo-PID).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the working directory when the demo ends.
    #[arg(long)]
    pub keep: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Why the demo stopped early.
enum Halt {
    Interrupted,
    Failed(String),
}

impl From<String> for Halt {
    fn from(s: String) -> Self {
        Halt::Failed(s)
    }
}

/// Entry point of `keel demo`.
pub fn run(args: &DemoArgs) -> u8 {
    install_signal_handlers();
    let keel_bin = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find the keel binary: {e}");
            return EXIT_USAGE;
        }
    };
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| cluster_runner::pg_bin_dir(args.pg_version));
    if !bin_dir.join("pg_ctl").exists() {
        eprintln!("error: no pg_ctl in {}; run scripts/setup.sh or pass --bin-dir", bin_dir.display());
        return EXIT_USAGE;
    }
    let dir =
        args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("keel-demo-{}", std::process::id())));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return EXIT_USAGE;
    }
    println!("keel demo: working directory {}", dir.display());

    let status = match LocalEtcd::start(&dir) {
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
        Ok(mut etcd) => {
            println!("etcd: http://{} (log: {})", etcd.hosts(), etcd.log_path.display());
            let opts = ClusterOptions {
                scope: "demo".into(),
                nodes: args.nodes.into(),
                bin_dir,
                keel_bin,
                reclone_on_rewind_failure: true,
                // Logical decoding for the change stream of --failover.
                wal_level: if args.failover { "logical" } else { "replica" }.into(),
                ..ClusterOptions::default()
            };
            let status = match LocalCluster::create(opts, &dir, &etcd.hosts()) {
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_FAILED
                }
                Ok(mut cluster) => {
                    let status = match demo(&mut cluster, args, &dir) {
                        Ok(()) => EXIT_OK,
                        Err(Halt::Interrupted) => EXIT_OK,
                        Err(Halt::Failed(e)) => {
                            eprintln!("error: {e}");
                            eprint!("{}", cluster.log_tails(30));
                            EXIT_FAILED
                        }
                    };
                    println!("Stopping the nodes...");
                    for name in cluster.names() {
                        cluster.stop_agent(&name, Duration::from_secs(30));
                    }
                    cluster.shutdown();
                    status
                }
            };
            etcd.stop();
            status
        }
    };
    if args.keep || status != EXIT_OK {
        println!("Kept {} (configurations, data and logs).", dir.display());
    } else if args.dir.is_none() {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => println!("Stopped everything the demo started and removed {}.", dir.display()),
            Err(e) => eprintln!("keel demo: could not remove {}: {e}; delete it by hand", dir.display()),
        }
    }
    status
}

/// Waits like [`cluster_runner::wait_until`], but also fails early on Ctrl-C or when an agent exits.
fn wait<T>(
    cluster: &mut LocalCluster,
    what: &str,
    mut probe: impl FnMut(&mut LocalCluster) -> Result<Option<T>, String>,
) -> Result<T, Halt> {
    let start = Instant::now();
    let mut last = String::from("not probed yet");
    loop {
        if stopping() {
            return Err(Halt::Interrupted);
        }
        for name in cluster.names() {
            if let Some(status) = cluster.agent_exit(&name) {
                return Err(Halt::Failed(format!("the agent of {name} exited ({status}) while waiting for {what}")));
            }
        }
        match probe(cluster) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if start.elapsed() > DEADLINE {
            return Err(Halt::Failed(format!("{what}: not reached after {DEADLINE:?} (last check: {last})")));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn demo(cluster: &mut LocalCluster, args: &DemoArgs, dir: &Path) -> Result<(), Halt> {
    cluster.start_all()?;
    for n in &cluster.nodes {
        println!("{}: keel run {} (log: {})", n.name, n.config_path.display(), n.log_path.display());
    }
    let replicas = cluster.nodes.len() - 1;
    println!("Waiting for a leader and {replicas} streaming replicas...");
    let started = Instant::now();
    let (leader, _) = wait(cluster, "the cluster", |c| Ok(c.wait_replicas_streaming(replicas, Duration::ZERO).ok()))?;
    // Let every member key catch up, so the table shows the cluster as it is.
    wait(cluster, "member keys", |c| {
        Ok(c.members()?.iter().all(|m| m["state"] == "running" || m["state"] == "streaming").then_some(()))
    })?;
    println!("Cluster up in {:.1}s; leader {leader}.\n", started.elapsed().as_secs_f64());
    print!("{}", table(cluster));
    println!();
    for n in &cluster.nodes {
        println!("{}: REST {}/patroni   PostgreSQL 127.0.0.1:{}", n.name, n.api_url(), n.pg_port);
    }
    let first = &cluster.nodes[0];
    println!("\nTry:  keel -c {} list", first.config_path.display());
    println!(
        "      PGPASSWORD={} psql -h 127.0.0.1 -p {} -U {} postgres",
        cluster_runner::SUPERUSER.1,
        cluster.node(&leader).pg_port,
        cluster_runner::SUPERUSER.0
    );

    if args.failover {
        let stream = match changes::unavailable(&cluster.opts.bin_dir) {
            None => Some(changes::Changes::start(cluster, &leader, dir)?),
            Some(why) => {
                println!("\nNo writer and consumer: {why}.");
                None
            }
        };
        failover(cluster, &leader, stream.as_ref())?;
        if let Some(stream) = stream {
            stream.finish(cluster)?;
        }
    }
    if args.exit_after {
        return Ok(());
    }
    println!("\nRunning until Ctrl-C.");
    while !stopping() {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Gives the member keys (written once per loop) up to 15 s to catch up with PostgreSQL, so the table shows the
/// cluster as it is: every member running or streaming, on the leader's timeline.
fn settle(cluster: &mut LocalCluster) {
    let _ = cluster_runner::wait_until("member keys", Duration::from_secs(15), Duration::from_millis(250), || {
        let settled = cluster.members_settled()?;
        Ok(settled.then_some(()))
    });
}

fn failover(cluster: &mut LocalCluster, old: &str, stream: Option<&changes::Changes>) -> Result<(), Halt> {
    println!("\n=== kill -9 of {old}'s agent and postmaster ===");
    let t0 = Instant::now();
    cluster.kill9(old);
    let mut shown = String::new();
    let new = wait(cluster, "a new primary", |c| {
        let table = table(c);
        if table != shown {
            println!("[{:5.1}s]", t0.elapsed().as_secs_f64());
            print!("{table}");
            shown = table;
        }
        match c.leader() {
            Some(l) if l != old && c.writable(&l) => Ok(Some(l)),
            Some(l) => Err(format!("leader key: {l}")),
            None => Err("no leader key".into()),
        }
    })?;
    println!("New primary {new} accepts writes {:.1}s after the kill.\n", t0.elapsed().as_secs_f64());
    print!("{}", table(cluster));
    if let Some(stream) = stream {
        stream.wait_resumed(cluster, &new, t0)?;
    }

    println!("\n=== restarting {old}'s agent: it rejoins as a replica (pg_rewind when needed) ===");
    let t1 = Instant::now();
    cluster.start_agent(old)?;
    let mut shown = String::new();
    wait(cluster, &format!("{old} streaming from {new}"), |c| {
        let table = table(c);
        if table != shown {
            println!("[{:5.1}s]", t1.elapsed().as_secs_f64());
            print!("{table}");
            shown = table;
        }
        let streaming = c.streaming_replicas(&new)?;
        Ok(streaming.iter().any(|s| s == old).then_some(()))
    })?;
    println!("{old} streams from {new} again {:.1}s after its agent restarted.\n", t1.elapsed().as_secs_f64());
    settle(cluster);
    print!("{}", table(cluster));
    Ok(())
}

/// The `keel list` table of the demo cluster.
fn table(c: &LocalCluster) -> String {
    match c.view() {
        Ok(view) => crate::cli::list::render(&c.opts.scope, &view, crate::cli::output::Format::Pretty, false, false),
        Err(e) => format!("(cannot read the store: {e})\n"),
    }
}
