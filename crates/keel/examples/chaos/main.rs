//! Keel's fault-injection suite (issue 11; `docs/reliability.md`).
//!
//! `cargo run --release -p keel --example chaos -- --rounds N --seed S [--pg-version V] [--faults a,b]`
//!
//! Three agents and one etcd, each in its own network namespace on a bridge (`keel_testkit::netns`). Every round
//! injects one or two faults drawn with a seeded generator, heals them, waits for one primary with two streaming
//! replicas, and checks what a writer (one thread per node, from the root namespace) and a logical consumer on
//! a permanent slot saw. Rounds alternate asynchronous and `synchronous_mode: on`. Runs as root.

mod checker;
mod consumer;
mod faults;
mod net;
mod report;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::faults::{Deck, FaultKind};

/// Command line of the fault-injection suite.
#[derive(Parser, Debug)]
#[command(about = "Keel's fault-injection suite: a 3-node cluster in network namespaces, seeded faults, checks")]
struct Args {
    /// Number of rounds.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Seed of the fault generator (the same seed draws the same faults).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// PostgreSQL major version (15 is Debian's, 16-18 under /opt/keel/pg).
    #[arg(long, default_value_t = 15)]
    pg_version: u32,
    /// Fault kinds to draw from, comma-separated (default: all); see `--list-faults`.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Probability (0-100) that a round injects two faults instead of one.
    #[arg(long, default_value_t = 25)]
    double_percent: u64,
    /// Prints the fault kinds and exits.
    #[arg(long)]
    list_faults: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether Ctrl-C (or SIGTERM) arrived: every wait checks it, so the run unwinds through its Drop guards.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sleeps `d` in small steps; fails once interrupted.
pub fn nap(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if interrupted() {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn main() {
    let args = Args::parse();
    if args.list_faults {
        for k in FaultKind::ALL {
            println!("{:<24} {}", k.name(), k.describe());
        }
        return;
    }
    install_signal_handlers();
    match run(&args) {
        Ok(0) if interrupted() => println!("chaos: no violation in the completed rounds (seed {})", args.seed),
        Ok(0) => println!("chaos: PASS (seed {}, {} rounds)", args.seed, args.rounds),
        Ok(n) => {
            println!("chaos: FAIL: {n} violation(s) (seed {}, {} rounds)", args.seed, args.rounds);
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(args: &Args) -> Result<usize> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the suite creates network namespaces: run it as root");
    }
    let kinds = FaultKind::parse_list(&args.faults)?;
    let mut env = net::ChaosEnv::start(args.pg_version).context("setting up the cluster")?;
    let kinds = env.usable(kinds);
    let mut deck = Deck::new(args.seed, kinds, args.double_percent);
    let writer = writer::Writer::start(&env)?;
    let consumer = consumer::Consumer::start(&env)?;
    let mut results = Vec::new();
    let mut violations = 0;
    for round in 1..=args.rounds {
        let sync = round % 2 == 0;
        let faults = deck.draw();
        println!(
            "== round {round}/{} (seed {}): {} mode, faults: {}",
            args.rounds,
            args.seed,
            if sync { "synchronous" } else { "asynchronous" },
            faults::names(&faults)
        );
        let outcome = match checker::run_round(&mut env, &writer, &consumer, round, sync, &faults) {
            Ok(outcome) => outcome,
            // Ctrl-C (or SIGTERM) during a long run: report the rounds completed so far.
            Err(e) if interrupted() && !results.is_empty() => {
                println!("chaos: interrupted in round {round} ({e:#}); the table covers rounds 1-{}", round - 1);
                break;
            }
            // An error of the suite itself (not a violation): keep the evidence of the rounds completed.
            Err(e) if !results.is_empty() => {
                println!("chaos: suite error in round {round}: {e:#}; the table covers rounds 1-{}", round - 1);
                writer.stop();
                consumer.stop();
                report::print(&results, args.seed);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        for v in &outcome.violations {
            println!("VIOLATION round {round} seed {}: {v}", args.seed);
        }
        violations += outcome.violations.len();
        results.push(outcome);
    }
    let (cancelled, timeouts) = writer.uncertain();
    writer.stop();
    consumer.stop();
    report::print(&results, args.seed);
    println!(
        "writer: {cancelled} commit(s) whose synchronous wait was cancelled and {timeouts} timeout(s), not \
        counted as acknowledged"
    );
    Ok(violations)
}
