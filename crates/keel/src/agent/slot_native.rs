//! Native failover slots (PostgreSQL 17+): executes what `keel_core::slots::native` decides each cycle, and runs
//! the primary's fast check of the managed `synchronized_standby_slots` (`keel_core::slots::standby_slots`).
//!
//! - primary: permanent logical slots still without `failover` are switched with the replication command
//!   `ALTER_REPLICATION_SLOT name (FAILOVER true)` (17 has no SQL function for it), run by `psql` on a
//!   `replication=database` connection with a deadline; failures are classified by SQLSTATE;
//! - standby: reads the primary's failover slots (with a deadline), drops `synced = false` leftovers the core
//!   names, and publishes readiness from PostgreSQL's own state;
//! - the standby-slots task (`slot_standby_task.rs`): on a native primary, every 500 ms, applies the core's
//!   list; anywhere else it resets the setting once (demotion, copy mode).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use keel_core::slots::native::{self, NativeReadinessInput, NativeSlot, NativeState};
use keel_core::slots::standby_slots::{StandbyCandidate, StandbySlots};
use keel_core::slots::{DesiredSlots, SlotSyncMethod, SlotsConfig};
use keel_core::view::{ClusterView, Member};
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{SlotCycle, SlotManager};
use standby_task::{standby_task, StandbyOrder};

#[path = "slot_standby_task.rs"]
mod standby_task;
use crate::agent::local::Local;
use crate::postgres::replication_slots as pg_slots;

const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
const PSQL_TIMEOUT: Duration = Duration::from_secs(10);

/// The native side of the slot manager.
pub struct NativeSlots {
    pub method: Option<SlotSyncMethod>,
    verdicts: BTreeMap<String, NativeState>,
    switch_errors: BTreeMap<String, String>,
    order: watch::Sender<StandbyOrder>,
    /// The task's last decision (for `GET /slots`).
    standby: Arc<Mutex<Option<StandbySlots>>>,
}

impl NativeSlots {
    pub fn new() -> NativeSlots {
        let (order, rx) = watch::channel(StandbyOrder::Idle);
        let standby = Arc::new(Mutex::new(None));
        tokio::spawn(standby_task(rx, standby.clone()));
        NativeSlots { method: None, verdicts: BTreeMap::new(), switch_errors: BTreeMap::new(), order, standby }
    }

    fn send(&self, order: StandbyOrder) {
        self.order.send_if_modified(|cur| {
            let changed = *cur != order;
            *cur = order;
            changed
        });
    }

    /// Native readiness of `slot` as `GET /slots` shows every mode's: stage (`Ready` or `Synced`), reason, code.
    pub fn slot_readiness(&self, slot: &str) -> Option<(&'static str, String, &'static str)> {
        let v = self.verdicts.get(slot)?;
        Some((if v.is_ready() { "Ready" } else { "Synced" }, v.to_string(), v.code()))
    }

    /// The failover slots whose copy here is not ready, as `GET /slots` lists them in `unready`.
    pub fn unready_json(&self) -> Vec<Value> {
        self.verdicts
            .iter()
            .filter(|(_, v)| !v.is_ready())
            .map(|(n, v)| json!({"slot": n, "code": v.code(), "reason": v.to_string()}))
            .collect()
    }

    /// The `native` part of `GET /slots`.
    pub fn to_json(&self) -> Value {
        let standby = self.standby.lock().ok().and_then(|s| s.clone());
        json!({
            "readiness": self.verdicts.iter().map(|(n, s)| json!({
                "slot": n, "ready": s.is_ready(), "state": s, "reason": s.to_string(),
            })).collect::<Vec<_>>(),
            "switch_errors": self.switch_errors,
            "synchronized_standby_slots": standby.map(|s| json!({
                "value": s.value(),
                "members": s.members.iter().map(|(m, p)| json!({
                    "member": m, "listed": p.listed(), "detail": p, "reason": p.to_string(),
                })).collect::<Vec<_>>(),
            })),
        })
    }
}

impl Default for NativeSlots {
    fn default() -> Self {
        Self::new()
    }
}

fn candidates(view: &ClusterView, me: &str) -> Vec<StandbyCandidate> {
    let sync: BTreeSet<&str> =
        view.sync.as_ref().map(|s| s.value.sync_standby.iter().map(String::as_str).collect()).unwrap_or_default();
    view.members
        .values()
        .filter(|m| m.name != me)
        .map(|m| StandbyCandidate {
            member: m.name.clone(),
            slot: keel_core::slots::slot_name_from_member_name(&m.name),
            nofailover: m.tags.no_failover(),
            synchronous: sync.contains(m.name.as_str()),
        })
        .collect()
}

impl SlotManager {
    /// The native part of a cycle; returns whether native mode is in force (the caller then skips Keel's copies).
    pub(super) async fn native_cycle(
        &mut self,
        c: &SlotCycle<'_>,
        local: &mut Local,
        config: &SlotsConfig,
        desired: &DesiredSlots,
        leader: Option<&Member>,
    ) {
        let major = local.bins.major;
        if major < keel_core::slots::NATIVE_SLOT_SYNC_MAJOR {
            return;
        }
        let native = self.native.method == Some(SlotSyncMethod::Native);
        let order = match (native && c.leader_primary, c.running) {
            (_, false) => StandbyOrder::Idle,
            (true, true) => StandbyOrder::Manage {
                local: local.local_params(),
                candidates: candidates(c.view, c.me),
                max_lag: native::lag_bound(c.dynamic),
                synchronous_mode: c.dynamic.synchronous_mode != keel_core::dynconfig::SynchronousMode::Off,
            },
            (false, true) => StandbyOrder::Reset { local: local.local_params() },
        };
        self.native.send(order);
        if !native || !c.running {
            self.native.verdicts.clear();
            return;
        }
        // Copy mode's tracking says nothing about the slotsync worker's copies.
        self.readiness.clear();
        self.reasons.clear();
        self.problems.clear();
        if c.leader_primary {
            self.native.verdicts.clear();
            self.switch_to_failover(local, desired).await;
        } else {
            self.native_standby(c.me, local, config, leader, native::lag_bound(c.dynamic)).await;
        }
    }

    async fn switch_to_failover(&mut self, local: &mut Local, desired: &DesiredSlots) {
        let here = match local_native(local).await {
            Ok(h) => h,
            Err(e) => return warn!("cannot list logical slots for native failover: {e:#}"),
        };
        for name in native::failover_switches(desired, &here) {
            let database = here.iter().find(|s| s.name == name).map(|s| s.database.clone()).unwrap_or_default();
            match enable_failover(local, &name, &database).await {
                Ok(()) => {
                    self.native.switch_errors.remove(&name);
                    info!("switched logical slot {name} to failover = true: standbys now synchronise it");
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    if self.native.switch_errors.get(&name) != Some(&text) {
                        warn!("cannot switch logical slot {name} to failover = true: {text}");
                    }
                    self.native.switch_errors.insert(name, text);
                }
            }
        }
    }

    async fn native_standby(
        &mut self,
        me: &str,
        local: &mut Local,
        config: &SlotsConfig,
        leader: Option<&Member>,
        bound: u64,
    ) {
        let here = match local_native(local).await {
            Ok(h) => h,
            Err(e) => {
                warn!("cannot list logical slots for native readiness: {e:#}");
                self.summary = None;
                return;
            }
        };
        let (primary, listed) = match leader {
            Some(l) => match primary_failover_slots(local, l).await {
                Ok((p, list)) => {
                    let mine = keel_core::slots::slot_name_from_member_name(me);
                    (Some(p), Some(list.split(',').any(|s| s.trim() == mine)))
                }
                Err(e) => {
                    warn!("cannot read the failover slots of {}: {e:#}", l.name);
                    (None, None)
                }
            },
            None => (None, None),
        };
        let drops = native::leftovers(&here, primary.as_ref());
        if !drops.is_empty() {
            self.execute(&drops, local, leader, keel_core::time::Millis(0)).await;
        }
        let permanent: BTreeSet<String> =
            config.permanent.iter().filter(|(_, s)| s.kind.is_logical()).map(|(n, _)| n.clone()).collect();
        let verdicts = native::readiness(&NativeReadinessInput {
            permanent: &permanent,
            here: &here,
            primary: primary.as_ref(),
            previous: &self.native.verdicts,
            bound,
            listed,
        });
        for (name, state) in &verdicts {
            if self.native.verdicts.get(name).map(NativeState::is_ready) != Some(state.is_ready()) {
                info!("failover slot {name} on this standby: {state}");
            }
        }
        self.summary = Some(native::summarize(&verdicts));
        self.native.verdicts = verdicts;
    }
}

async fn local_native(local: &mut Local) -> Result<Vec<NativeSlot>> {
    let s = local.local_session().await?;
    Ok(tokio::time::timeout(QUERY_TIMEOUT, pg_slots::list_native(s, false))
        .await
        .map_err(|_| anyhow!("no answer within {}s", QUERY_TIMEOUT.as_secs()))??)
}

/// The primary's failover slots and its `synchronized_standby_slots`.
async fn primary_failover_slots(local: &Local, leader: &Member) -> Result<(BTreeMap<String, NativeSlot>, String)> {
    let read = async {
        let s = local.leader_session(leader, local.database()).await?;
        let slots = pg_slots::list_native(&s, true).await?;
        Ok::<_, anyhow::Error>((slots, pg_slots::synchronized_standby_slots(&s).await?))
    };
    let (slots, list) = tokio::time::timeout(QUERY_TIMEOUT, read)
        .await
        .map_err(|_| anyhow!("no answer within {}s", QUERY_TIMEOUT.as_secs()))??;
    Ok((slots.into_iter().map(|s| (s.name.clone(), s)).collect(), list))
}

/// Why `ALTER_REPLICATION_SLOT ... (FAILOVER true)` failed, by SQLSTATE.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("the slot is in use (SQLSTATE 55006); it is switched once its consumer disconnects")]
    InUse,
    #[error("the slot no longer exists (SQLSTATE 42704)")]
    Missing,
    #[error("not allowed (SQLSTATE {0}): the agent's superuser needs the REPLICATION attribute and pg_hba a replication line")]
    NotAllowed(String),
    #[error("PostgreSQL refused with SQLSTATE {code}: {message}")]
    Other { code: String, message: String },
    #[error("psql did not finish within {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("could not run psql at {path}: {source}")]
    Spawn { path: String, source: std::io::Error },
    #[error("psql failed without a SQLSTATE: {0}")]
    NoCode(String),
}

/// Classifies psql's stderr under `VERBOSITY=sqlstate` (`ERROR:  55006`): by code, never by message text.
pub fn classify_switch(stderr: &str) -> SwitchError {
    let words: Vec<&str> = stderr.split_whitespace().collect();
    let code = words
        .windows(2)
        .find(|w| matches!(w[0], "ERROR:" | "FATAL:"))
        .map(|w| w[1])
        .filter(|c| c.len() == 5 && c.chars().all(|ch| ch.is_ascii_digit() || ch.is_ascii_uppercase()));
    match code {
        Some("55006") => SwitchError::InUse,
        Some("42704") => SwitchError::Missing,
        Some(c @ ("42501" | "28000" | "28P01")) => SwitchError::NotAllowed(c.to_string()),
        Some(c) => SwitchError::Other { code: c.to_string(), message: stderr.trim().to_string() },
        None => SwitchError::NoCode(stderr.trim().to_string()),
    }
}

/// `ALTER_REPLICATION_SLOT slot (FAILOVER true)` over a `replication=database` connection to the slot's database.
async fn enable_failover(local: &Local, slot: &str, database: &str) -> Result<(), SwitchError> {
    let mut p = local.local_params();
    p.dbname = database.to_string();
    let conninfo = format!("{} replication=database", p.to_conninfo(false));
    let path = local.bins.dir.join("psql");
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=sqlstate", "-d", &conninfo])
        .args(["-c", &format!("ALTER_REPLICATION_SLOT {slot} (FAILOVER true)")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(pw) = &p.password {
        cmd.env("PGPASSWORD", pw);
    }
    let out = tokio::time::timeout(PSQL_TIMEOUT, cmd.output())
        .await
        .map_err(|_| SwitchError::Timeout(PSQL_TIMEOUT))?
        .map_err(|source| SwitchError::Spawn { path: path.display().to_string(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(classify_switch(&String::from_utf8_lossy(&out.stderr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_errors_are_classified_by_sqlstate() {
        assert!(matches!(classify_switch("psql:<stdin>:1: ERROR:  55006\n"), SwitchError::InUse));
        assert!(matches!(classify_switch("ERROR:  42704"), SwitchError::Missing));
        assert!(matches!(classify_switch("FATAL:  28000"), SwitchError::NotAllowed(_)));
        assert!(matches!(classify_switch("ERROR:  XX000"), SwitchError::Other { .. }));
        assert!(matches!(classify_switch("connection refused"), SwitchError::NoCode(_)));
    }
}
