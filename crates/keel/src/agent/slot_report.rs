//! What the slot manager reports: the promotion check run on the first cycle as leader, and the node's slots for
//! `GET /slots` (and from there `keel slots` and the `keel_slot_*` metrics).

use std::time::Duration;

use keel_core::lsn::Lsn;
use keel_core::slots::ahead;
use keel_core::slots::promotion::{self, PromotionInput, SlotComparison, Verdict};
use keel_core::slots::{ActualSlots, DesiredSlots};
use keel_core::time::Millis;
use keel_core::view::Status;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use super::{SlotCycle, SlotManager};
use crate::agent::follower::SlotProgress;
use crate::agent::local::Local;
use crate::postgres::online_slots;
use crate::postgres::replication_slots::PgSlot;

/// The result of the promotion check.
pub struct PromotionReport {
    pub at: Millis,
    pub wal_end: Option<Lsn>,
    pub slots: Vec<SlotComparison>,
}

/// How long the leader's read of consumer and standby positions may take.
const AHEAD_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

impl SlotManager {
    /// On the leader: each logical slot's consumer against each failover candidate
    /// (`keel_core::slots::ahead`). Cleared when the positions cannot be read: stale figures would mislead.
    pub(super) async fn measure_ahead(&mut self, c: &SlotCycle<'_>, local: &mut Local) {
        let read = async {
            let session = local.local_session().await?;
            Ok::<_, anyhow::Error>(online_slots::consumer_positions(session).await?)
        };
        let (slots, walsenders) = match tokio::time::timeout(AHEAD_QUERY_TIMEOUT, read).await {
            Ok(Ok(positions)) => positions,
            Ok(Err(e)) => {
                warn!("cannot read consumer and standby positions: {e:#}");
                self.consumers_ahead.clear();
                return;
            }
            Err(_) => {
                warn!("reading consumer and standby positions took more than {AHEAD_QUERY_TIMEOUT:?}");
                self.consumers_ahead.clear();
                return;
            }
        };
        let candidates = ahead::candidates(c.view, c.me);
        self.consumers_ahead = ahead::consumers_ahead(&slots, &candidates, &walsenders);
    }

    /// The promotion check: each permanent logical slot here against its last known position on the old primary,
    /// and whether its copy was usable when this node was promoted.
    pub(super) fn check_promotion(&mut self, c: &SlotCycle<'_>, desired: &DesiredSlots, actual: &ActualSlots) {
        let ActualSlots::Known(have) = actual else { return };
        let Some(mut pending) = self.pending_promotion.take() else { return };
        // A synced copy (native mode) only ever holds positions the old primary's slot had.
        for (n, a) in have.iter().filter(|(_, a)| a.synced && a.kind.is_logical()) {
            if let Some(at) = a.confirmed_flush_lsn {
                let known = pending.followed.entry(n.clone()).or_insert(at);
                *known = (*known).max(at);
            }
        }
        let input = PromotionInput {
            logical: desired.logical_names().collect(),
            published: Some(&c.view.status.slots),
            followed: pending.followed,
            copies: have
                .iter()
                .filter(|(_, a)| a.kind.is_logical())
                .map(|(n, a)| (n.clone(), a.confirmed_flush_lsn))
                .collect(),
            wal_end: pending.wal_end,
            unusable: pending.unusable,
        };
        let slots = promotion::compare(&input);
        for cmp in &slots {
            match cmp.verdict {
                Verdict::Divergence { .. } | Verdict::Ahead { .. } | Verdict::Unusable => {
                    error!("PROMOTION CHECK: {}", cmp.describe())
                }
                Verdict::Redelivery { .. } => warn!("promotion check: {}", cmp.describe()),
                _ => info!("promotion check: {}", cmp.describe()),
            }
        }
        self.promotion = Some(PromotionReport { at: c.now, wal_end: pending.wal_end, slots });
    }

    /// The node's slots for `GET /slots`: type, position, lag behind the leader, readiness and its reason, WAL
    /// retained; the logical slots that are not ready (also those without a copy) with their reasons; slots the
    /// leader could not create; continuity breaks; the last promotion check.
    pub fn to_json(&self, published: &Status, current_lsn: Option<Lsn>) -> Value {
        let progress = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
        let slots: Vec<Value> =
            self.last_actual.iter().map(|s| self.slot_json(s, progress.get(&s.name), published, current_lsn)).collect();
        let mut unready: Vec<Value> = self
            .reasons
            .iter()
            .filter(|(n, _)| !self.readiness.get(*n).is_some_and(|r| r.is_ready()))
            .map(|(n, r)| json!({"slot": n, "code": r.code(), "reason": r.to_string()}))
            .collect();
        unready.extend(self.native.unready_json());
        let errors: Vec<Value> = self
            .slot_errors
            .iter()
            .map(|(n, e)| json!({"slot": n, "database": e.database, "code": e.failure.code(), "error": e.describe(n)}))
            .collect();
        let breaks: Vec<Value> =
            self.breaks.iter().map(|(n, l)| json!({"slot": n, "last_published": l.to_string()})).collect();
        let promotion = self.promotion.as_ref().map(|p| {
            json!({
                "at": keel_core::time::format_iso8601(p.at),
                "wal_end": p.wal_end.map(|l| l.to_string()),
                "slots": p.slots.iter().map(SlotComparison::to_json).collect::<Vec<_>>(),
            })
        });
        json!({
            "slots": slots,
            "unready": unready,
            "slot_errors": errors,
            "continuity_breaks": breaks,
            "promotion": promotion,
            "copies_paused": self.copies_paused,
            "consumers_ahead": self.consumers_ahead.iter().map(|a| json!({
                "slot": a.slot, "member": a.member, "bytes": a.bytes, "sent_beyond": a.sent_beyond,
                "candidate_flush": a.candidate_flush.map(|l| l.to_string()), "source": a.source,
            })).collect::<Vec<_>>(),
            "ready": self.summary.as_ref().map(|s| s.ready),
            "failover_slots_mode": self.native.method.map(|m| m.as_str()),
            "native": self.native.to_json(),
        })
    }
}

impl SlotManager {
    /// One local slot in `GET /slots`: position, lag behind the leader, retained WAL, readiness and last error.
    fn slot_json(&self, s: &PgSlot, p: Option<&SlotProgress>, published: &Status, current_lsn: Option<Lsn>) -> Value {
        let position = if s.is_logical() { s.confirmed_flush_lsn } else { s.restart_lsn };
        let leader_pos = p.and_then(|p| p.leader_lsn).or(published.slots.get(&s.name).copied());
        let lag = match (leader_pos, position) {
            (Some(l), Some(p)) => Some(l.saturating_sub(p)),
            _ => None,
        };
        let retained = match (current_lsn, s.restart_lsn) {
            (Some(c), Some(r)) => Some(c.saturating_sub(r)),
            _ => None,
        };
        let reason = self.reasons.get(&s.name);
        let native = self.native.slot_readiness(&s.name);
        json!({
            "name": s.name,
            "type": s.slot_type,
            "database": s.database,
            "plugin": s.plugin,
            "active": s.active,
            "position": position.map(|l| l.to_string()),
            "restart_lsn": s.restart_lsn.map(|l| l.to_string()),
            "lag_bytes": lag,
            "seconds_since_caught_up": p.and_then(|p| p.caught_up_at).map(|t| t.elapsed().as_secs_f64()),
            "wal_retained_bytes": retained,
            "wal_status": s.wal_status,
            "readiness": native.as_ref().map(|n| n.0.to_string())
                .or_else(|| self.readiness.get(&s.name).map(|r| format!("{:?}", r.stage))),
            "readiness_reason": native.as_ref().map(|n| n.1.clone()).or(reason.map(ToString::to_string)),
            "readiness_code": native.as_ref().map(|n| n.2).or(reason.map(|r| r.code())),
            "last_error": p.and_then(|p| p.last_error.as_ref()).map(|e| json!({
                "code": e.failure.code(), "reason": e.failure.to_string(), "message": e.message,
            })),
        })
    }
}
