//! What the leader publishes in the `status` key, and the `member_slots_ttl` retention clock.

use std::collections::{BTreeMap, BTreeSet};

use super::advance::can_advance_slots;
use super::config::{SlotNote, SlotsConfig};
use super::desired::{DesiredSlots, SlotOrigin};
use super::reconcile::{ActualSlot, ActualSlots};
use super::slot_name_from_member_name;
use crate::lsn::Lsn;
use crate::time::Millis;
use crate::view::{ClusterView, Status};

/// Patroni's `_last_retain_slots` as a value: when each member slot was last seen for a present member.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetainClock {
    last_seen: BTreeMap<String, Millis>,
}

impl RetainClock {
    /// On acquiring the leader key: every slot the previous leader retained gets a full new TTL (this includes the
    /// former leader's own slot, whose member key expires together with the leader key).
    pub fn on_promotion(last_seen_retain_slots: &[String], now: Millis) -> RetainClock {
        RetainClock { last_seen: last_seen_retain_slots.iter().map(|n| (n.clone(), now)).collect() }
    }

    pub fn last_seen(&self, slot: &str) -> Option<Millis> {
        self.last_seen.get(slot).copied()
    }

    /// Patroni's `_build_retain_slots`: refresh the slots of present members among the `published` slots (not
    /// permanent physical ones), expire those older than `member_slots_ttl`, and return the sorted list for
    /// `retain_slots` with a note per expired slot.
    pub fn update(
        &mut self,
        me: &str,
        view: &ClusterView,
        config: &SlotsConfig,
        published: &BTreeMap<String, Lsn>,
        now: Millis,
    ) -> (Vec<String>, Vec<SlotNote>) {
        if !published.is_empty() {
            let mut members: BTreeSet<String> = view
                .members
                .values()
                .filter(|m| !m.tags.nostream)
                .map(|m| slot_name_from_member_name(&m.name))
                .collect();
            if !view.members.contains_key(me) {
                members.insert(slot_name_from_member_name(me));
            }
            let permanent: BTreeSet<&str> = config.permanent_physical().collect();
            for name in published.keys() {
                if members.contains(name) && !permanent.contains(name.as_str()) {
                    self.last_seen.insert(name.clone(), now);
                }
            }
        }
        let ttl_ms = config.member_slots_ttl.saturating_mul(1000);
        let mut notes = Vec::new();
        self.last_seen.retain(|name, seen| {
            let keep = seen.0.saturating_add(ttl_ms) > now.0;
            if !keep {
                notes.push(SlotNote::RetainedSlotExpired { slot: name.clone(), after_secs: config.member_slots_ttl });
            }
            keep
        });
        (self.last_seen.keys().cloned().collect(), notes)
    }
}

/// What [`published_status`] reads.
#[derive(Debug, Clone, Copy)]
pub struct PublishInput<'a> {
    pub me: &'a str,
    pub view: &'a ClusterView,
    pub config: &'a SlotsConfig,
    /// The leader's desired slots (computed as [`super::NodeRole::Primary`]).
    pub desired: &'a DesiredSlots,
    pub actual: &'a ActualSlots,
    /// `pg_current_wal_flush_lsn()`; `None` when it could not be read (then neither `optime` nor the own slot is
    /// published: an unknown position is never published as 0).
    pub flush_lsn: Option<Lsn>,
    /// The PostgreSQL major version: slot positions are published from 11 on
    /// ([`super::advance::can_advance_slots`]).
    pub pg_major: u32,
}

/// The slot positions the leader publishes: managed slots it has (physical `restart_lsn`, logical
/// `confirmed_flush_lsn`, only when type and definition match), its own member slot name at its flush LSN, and
/// the last published position of permanent logical slots that are missing here (a continuity break stays
/// visible until resolved). Unknown slots are never published. With `member_slots_ttl: 0` only permanent slots
/// are published (Patroni's `maybe_filter_permanent_slots`).
pub fn published_slots(input: &PublishInput) -> BTreeMap<String, Lsn> {
    let mut out = BTreeMap::new();
    if !can_advance_slots(input.pg_major) {
        return out;
    }
    let own = slot_name_from_member_name(input.me);
    if let ActualSlots::Known(actual) = input.actual {
        for (name, want) in &input.desired.slots {
            match actual.get(name) {
                Some(have) if have.kind == want.kind => {
                    if let Some(pos) = position(have) {
                        out.insert(name.clone(), pos);
                    }
                }
                Some(_) => {}
                None if want.kind.is_logical() && want.origin == SlotOrigin::Permanent => {
                    if let Some(last) = input.view.status.slots.get(name) {
                        out.insert(name.clone(), *last);
                    }
                }
                None => {}
            }
        }
    } else {
        // Slots could not be read: keep what was published, for the slots still desired.
        for (name, lsn) in &input.view.status.slots {
            if input.desired.slots.contains_key(name) {
                out.insert(name.clone(), *lsn);
            }
        }
    }
    if let Some(flush) = input.flush_lsn {
        out.insert(own, flush);
    }
    if input.config.member_slots_ttl == 0 {
        let member_slots: BTreeSet<String> = input.view.members.keys().map(|m| slot_name_from_member_name(m)).collect();
        out.retain(|name, _| match input.config.permanent.get(name) {
            Some(p) if p.cluster_type != super::config::ClusterType::Standby => {
                !p.kind.is_logical() || !member_slots.contains(name)
            }
            _ => false,
        });
    }
    out
}

fn position(s: &ActualSlot) -> Option<Lsn> {
    if s.kind.is_logical() {
        s.confirmed_flush_lsn
    } else {
        s.restart_lsn
    }
}

/// The whole `status` value the leader writes: `optime` (its flush LSN), the [`published_slots`] and the
/// `retain_slots` from the retention clock (which this call advances).
pub fn published_status(input: &PublishInput, clock: &mut RetainClock, now: Millis) -> (Status, Vec<SlotNote>) {
    let slots = published_slots(input);
    let (retain_slots, notes) = if input.config.member_slots_ttl > 0 && can_advance_slots(input.pg_major) {
        clock.update(input.me, input.view, input.config, &slots, now)
    } else {
        (Vec::new(), Vec::new())
    };
    (Status { optime: input.flush_lsn, slots, retain_slots }, notes)
}
