//! The primary's fast check of the managed `synchronized_standby_slots` (native failover slots, 17+): every
//! [`STANDBY_TICK`] on a native primary it observes the physical slots, asks `keel_core::slots::standby_slots` for
//! the list and applies it with `ALTER SYSTEM` + reload when it changed, logging each member's move with its
//! reason. It runs beside the HA loop (which owns `postgresql.conf`), hence `ALTER SYSTEM`. Anywhere else
//! (replica, copy mode, demotion) it resets the setting once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use keel_core::slots::standby_slots::{standby_slots, StandbyCandidate, StandbySlots, StandbySlotsInput};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::postgres::observe::{self, PgError};
use crate::postgres::replication_slots as pg_slots;
use crate::postgres::ConnParams;

/// How often the primary re-checks `synchronized_standby_slots`.
pub const STANDBY_TICK: Duration = Duration::from_millis(500);
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the standby-slots task should do.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum StandbyOrder {
    /// Before 17, or not yet known: leave the setting alone.
    Idle,
    /// Not a native primary: the setting should be empty.
    Reset {
        local: ConnParams,
    },
    Manage {
        local: ConnParams,
        candidates: Vec<StandbyCandidate>,
        max_lag: u64,
        synchronous_mode: bool,
    },
}

/// The primary's fast check of `synchronized_standby_slots`.
pub(super) async fn standby_task(mut rx: watch::Receiver<StandbyOrder>, shared: Arc<Mutex<Option<StandbySlots>>>) {
    let mut session: Option<(ConnParams, observe::Session)> = None;
    let mut last: Option<StandbySlots> = None;
    let mut reset_done = false;
    let mut last_error = String::new();
    loop {
        let order = rx.borrow_and_update().clone();
        let result = match &order {
            StandbyOrder::Idle => Ok(()),
            StandbyOrder::Reset { local } => {
                last = None;
                set_shared(&shared, None);
                if reset_done {
                    Ok(())
                } else {
                    reset(&mut session, local).await.map(|()| reset_done = true)
                }
            }
            StandbyOrder::Manage { local, candidates, max_lag, synchronous_mode } => {
                reset_done = false;
                manage(&mut session, local, candidates, *max_lag, *synchronous_mode, &mut last, &shared).await
            }
        };
        match result {
            // Logged once per cause: the check runs every tick.
            Err(e) => {
                let text = format!("{e:#}");
                if text != last_error {
                    warn!("synchronized_standby_slots: {text}");
                }
                last_error = text;
                session = None;
            }
            Ok(()) => last_error.clear(),
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(STANDBY_TICK) => {}
        }
    }
}

fn set_shared(shared: &Arc<Mutex<Option<StandbySlots>>>, value: Option<StandbySlots>) {
    if let Ok(mut s) = shared.lock() {
        *s = value;
    }
}

async fn connect<'a>(
    session: &'a mut Option<(ConnParams, observe::Session)>,
    params: &ConnParams,
) -> Result<&'a observe::Session, PgError> {
    if session.as_ref().is_none_or(|(p, _)| p != params) {
        *session = Some((params.clone(), observe::connect(params, QUERY_TIMEOUT).await?));
    }
    session.as_ref().map(|(_, s)| s).ok_or(PgError::BadValue { what: "session", value: String::new() })
}

async fn reset(session: &mut Option<(ConnParams, observe::Session)>, local: &ConnParams) -> Result<()> {
    let s = connect(session, local).await?;
    if !pg_slots::synchronized_standby_slots(s).await?.is_empty() {
        pg_slots::set_synchronized_standby_slots(s, None).await?;
        info!("synchronized_standby_slots reset: this node is not a primary with native failover slots");
    }
    Ok(())
}

async fn manage(
    session: &mut Option<(ConnParams, observe::Session)>,
    local: &ConnParams,
    candidates: &[StandbyCandidate],
    max_lag: u64,
    synchronous_mode: bool,
    last: &mut Option<StandbySlots>,
    shared: &Arc<Mutex<Option<StandbySlots>>>,
) -> Result<()> {
    let s = connect(session, local).await?;
    let (primary_flush, slots) = pg_slots::physical_streaming(s).await?;
    let now = standby_slots(&StandbySlotsInput { candidates, slots: &slots, primary_flush, max_lag, synchronous_mode });
    let before = last.clone().unwrap_or_default();
    let value = now.value();
    if last.is_none() || before.value() != value {
        if pg_slots::synchronized_standby_slots(s).await? != value {
            pg_slots::set_synchronized_standby_slots(s, Some(&value)).await?;
        }
        let moves: Vec<String> = now.changes(&before).iter().map(|(m, p)| format!("{m}: {p}")).collect();
        info!("synchronized_standby_slots = '{value}' ({})", moves.join("; "));
    }
    set_shared(shared, Some(now.clone()));
    *last = Some(now);
    Ok(())
}
