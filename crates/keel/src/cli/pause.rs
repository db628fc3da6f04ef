//! `keel pause` and `keel resume`: set or remove `pause` in the dynamic configuration (compare-and-swap on the
//! `config` key, retried on a concurrent change), then with `--wait` poll the member keys until every member
//! publishes the new `pause` state.

use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value};

use crate::cli::ctl::{failed, Ctl, CtlResult};
use crate::cli::edit_config::write_config;

#[derive(Debug, Args, Default)]
pub struct PauseArgs {
    /// Cluster name (default: the configuration's scope).
    pub cluster_name: Option<String>,
    /// Wait until every member reports the new state.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (default: 2 × ttl).
    #[arg(long = "wait-timeout", value_name = "SECONDS")]
    pub wait_timeout: Option<u64>,
}

/// How many times a write that lost a compare-and-swap race is retried (after reading the key again).
const CAS_ATTEMPTS: usize = 3;

pub async fn toggle_pause(ctl: &Ctl, args: &PauseArgs, paused: bool) -> CtlResult {
    let mut attempt = 0;
    let ttl = loop {
        attempt += 1;
        let view = ctl.load_existing().await?;
        if view.is_paused() == paused {
            return failed(if paused { "Cluster is already paused" } else { "Cluster is not paused" });
        }
        let (mut config, version) = match &view.config {
            Some(c) => (c.value.raw.as_object().cloned().unwrap_or_default(), c.version),
            None => (Map::new(), 0),
        };
        if paused {
            config.insert("pause".into(), Value::Bool(true));
        } else {
            config.remove("pause");
        }
        match write_config(&ctl.store, &Value::Object(config), Some(version)).await {
            Ok(()) => break view.dynamic_config().timing.ttl,
            Err(e) if attempt >= CAS_ATTEMPTS => return Err(e),
            Err(_) => continue,
        }
    };
    let word = if paused { "paused" } else { "resumed" };
    if args.wait {
        println!(
            "'{}' request sent, waiting until it is recognized by all nodes",
            if paused { "pause" } else { "resume" }
        );
        let limit = Duration::from_secs(args.wait_timeout.unwrap_or(2 * ttl));
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let view = ctl.load().await?;
            let remaining: Vec<&str> =
                view.members.values().filter(|m| m.pause != paused).map(|m| m.name.as_str()).collect();
            if remaining.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return failed(format!(
                    "cluster management is {word} in the store, but after {}s these members still report \
                     pause={}: {}",
                    limit.as_secs(),
                    !paused,
                    remaining.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!("Success: cluster management is {word}");
    Ok(())
}
