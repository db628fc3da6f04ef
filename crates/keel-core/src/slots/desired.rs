//! Which slots a node should have: Patroni's `Cluster.get_replication_slots`, with Keel's deliberate differences
//! (`cluster_type: standby` slots are never desired, because Keel runs primary clusters only; Patroni keeps them).

use std::collections::{BTreeMap, BTreeSet};

use super::config::{ClusterType, SlotKind, SlotNote, SlotsConfig};
use super::slot_name_from_member_name;
use crate::lsn::Lsn;
use crate::view::{ClusterView, Member, Tags};

/// The role this node's slots are computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Holds the leader key and runs as a primary.
    Primary,
    Replica,
}

/// Why a slot is desired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOrigin {
    /// The physical slot of this cluster member.
    Member { member: String },
    /// A member slot kept for an absent member (`status.retain_slots`). Never advanced.
    Retained,
    /// An entry of the `slots` configuration.
    Permanent,
}

/// One desired slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSlot {
    pub kind: SlotKind,
    pub origin: SlotOrigin,
    /// Target position: compared with `restart_lsn` (physical) or `confirmed_flush_lsn` (logical). `None` when the
    /// leader published nothing (Patroni's `lsn` 0 / absent).
    pub lsn: Option<Lsn>,
    /// A walsender is expected to consume this slot on this node; such slots are never advanced by Keel.
    pub expected_active: bool,
}

/// The desired slot set of one node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredSlots {
    pub slots: BTreeMap<String, DesiredSlot>,
    pub notes: Vec<SlotNote>,
}

impl DesiredSlots {
    pub fn get(&self, name: &str) -> Option<&DesiredSlot> {
        self.slots.get(name)
    }

    pub fn logical_names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().filter(|(_, s)| s.kind.is_logical()).map(|(n, _)| n.as_str())
    }
}

/// What [`desired_slots`] reads.
#[derive(Debug, Clone, Copy)]
pub struct DesiredInput<'a> {
    /// This node's member name.
    pub name: &'a str,
    pub role: NodeRole,
    /// This node's configured tags.
    pub tags: &'a Tags,
    /// PostgreSQL major version (10, 11, ... 18).
    pub pg_major: u32,
    pub view: &'a ClusterView,
    pub config: &'a SlotsConfig,
}

impl DesiredInput<'_> {
    fn can_advance(&self) -> bool {
        super::advance::can_advance_slots(self.pg_major)
    }
}

/// The slot name of `name`'s first hop to the primary (`get_slot_name_on_primary`): follows `replicatefrom` while
/// it names an existing member; `None` when `nostream` is on the chain or the chain loops.
pub fn slot_name_on_primary(view: &ClusterView, name: &str, tags: &Tags) -> Option<String> {
    let mut seen = BTreeSet::new();
    let (mut name, mut tags) = (name.to_string(), tags.clone());
    loop {
        seen.insert(name.clone());
        if tags.nostream {
            return None;
        }
        let next = tags.replicatefrom.as_ref().filter(|r| **r != name).and_then(|r| view.members.get(r));
        let Some(next) = next else { return Some(slot_name_from_member_name(&name)) };
        if seen.contains(&next.name) {
            return None;
        }
        name = next.name.clone();
        tags = next.tags.clone();
    }
}

/// Whether `name` streams from another standby: its `replicatefrom` names an existing member other than itself
/// and the leader.
pub fn cascades(view: &ClusterView, name: &str, tags: &Tags) -> bool {
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    tags.replicatefrom.as_deref().is_some_and(|r| r != name && Some(r) != leader && view.members.contains_key(r))
}

/// The member slots of this node (Patroni's `_get_members_slots`), including retained slots.
fn member_slots(input: &DesiredInput, notes: &mut Vec<SlotNote>) -> BTreeMap<String, DesiredSlot> {
    let mut out = BTreeMap::new();
    let cfg = input.config;
    if !cfg.use_slots {
        return out;
    }
    let view = input.view;
    let me = input.name;
    let nofailover = input.tags.no_failover();
    let leader_name = view.leader.as_ref().map(|l| l.name.as_str());
    let leader_filter = |m: &Member| match &m.tags.replicatefrom {
        None => true,
        Some(r) => r == me || !view.members.contains_key(r),
    };
    let replica_filter =
        |m: &Member| m.tags.replicatefrom.as_deref() == Some(me) && Some(m.name.as_str()) != leader_name;
    let expected_active = |m: &Member| match input.role {
        NodeRole::Primary => leader_filter(m),
        NodeRole::Replica => replica_filter(m),
    };
    let mode_a = input.can_advance() && cfg.member_slots_ttl > 0;
    let members: Vec<&Member> = view
        .members
        .values()
        .filter(|m| m.name != me && !m.tags.nostream)
        .filter(
            |m| if mode_a { !nofailover || m.tags.replicatefrom.as_deref() == Some(me) } else { expected_active(m) },
        )
        .collect();
    let mut by_slot: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &members {
        let slot = slot_name_from_member_name(&m.name);
        by_slot.entry(slot.clone()).or_default().push(m.name.clone());
        let mut lsn = view.status.slots.get(&slot).copied().unwrap_or(Lsn::ZERO);
        // A member streaming from another node leaves our copy of its slot inactive: its own reported position
        // is the only feedback (Patroni also does this for leaders older than 4.0, which Keel does not model).
        if m.tags.replicatefrom.is_some() {
            lsn = lsn.max(m.xlog_location.unwrap_or(Lsn::ZERO));
        }
        let slot_value = DesiredSlot {
            kind: SlotKind::Physical,
            origin: SlotOrigin::Member { member: m.name.clone() },
            lsn: (lsn > Lsn::ZERO).then_some(lsn),
            expected_active: expected_active(m),
        };
        out.insert(slot, slot_value);
    }
    for (slot, names) in by_slot {
        if names.len() > 1 {
            notes.push(SlotNote::SharedSlotName { slot, members: names });
        }
    }
    let own = slot_name_from_member_name(me);
    if !nofailover {
        for name in &view.status.retain_slots {
            if *name != own && !out.contains_key(name) {
                let slot = DesiredSlot {
                    kind: SlotKind::Physical,
                    origin: SlotOrigin::Retained,
                    lsn: None,
                    expected_active: false,
                };
                out.insert(name.clone(), slot);
            }
        }
    }
    out
}

/// The permanent slots this node gets (Patroni's `_get_permanent_slots`), `cluster_type: standby` removed.
fn permanent_slots<'c>(input: &DesiredInput<'c>) -> Vec<(&'c String, &'c super::config::PermanentSlot)> {
    let cfg = input.config;
    if !cfg.use_slots || input.tags.no_failover() {
        return Vec::new();
    }
    let all = cfg.permanent.iter().filter(|(_, s)| s.cluster_type != ClusterType::Standby);
    if slot_name_on_primary(input.view, input.name, input.tags).is_none() {
        // Our WAL feedback does not reach the primary (`nostream` on the chain): logical slots would be unsafe.
        if !input.can_advance() {
            return Vec::new();
        }
        return all.filter(|(_, s)| s.kind == SlotKind::Physical).collect();
    }
    if input.can_advance() || input.role == NodeRole::Primary {
        all.collect()
    } else {
        all.filter(|(_, s)| s.kind.is_logical()).collect()
    }
}

/// Computes the desired slot set of this node.
pub fn desired_slots(input: &DesiredInput) -> DesiredSlots {
    let mut notes = Vec::new();
    let mut slots = member_slots(input, &mut notes);
    let view = input.view;
    let own = slot_name_from_member_name(input.name);
    // slot name of a member -> whether it streams from some other node (Patroni's `topology`).
    let cascading: BTreeMap<String, bool> =
        view.members.values().map(|m| (slot_name_from_member_name(&m.name), m.tags.replicatefrom.is_some())).collect();
    let member_lsn: BTreeMap<String, Lsn> = view
        .members
        .values()
        .filter(|m| m.tags.replicatefrom.is_some())
        .map(|m| (slot_name_from_member_name(&m.name), m.xlog_location.unwrap_or(Lsn::ZERO)))
        .collect();
    let mut disabled_logical = Vec::new();
    for (name, slot) in permanent_slots(input) {
        let published = view.status.slots.get(name).copied().unwrap_or(Lsn::ZERO);
        match &slot.kind {
            SlotKind::Physical => {
                // Never for ourselves; a member slot of the same name wins (it is still kept and advanced).
                if slots.contains_key(name) || *name == own {
                    continue;
                }
                let lsn = published.max(member_lsn.get(name).copied().unwrap_or(Lsn::ZERO));
                let expected_active = input.role == NodeRole::Primary && !cascading.get(name).copied().unwrap_or(false);
                slots.insert(
                    name.clone(),
                    DesiredSlot {
                        kind: SlotKind::Physical,
                        origin: SlotOrigin::Permanent,
                        lsn: (lsn > Lsn::ZERO).then_some(lsn),
                        expected_active,
                    },
                );
            }
            SlotKind::Logical { .. } => {
                if !input.can_advance() {
                    disabled_logical.push(name.clone());
                } else if slots.contains_key(name) {
                    notes.push(SlotNote::LogicalConflictsWithMember { name: name.clone() });
                } else {
                    slots.insert(
                        name.clone(),
                        DesiredSlot {
                            kind: slot.kind.clone(),
                            origin: SlotOrigin::Permanent,
                            lsn: (published > Lsn::ZERO).then_some(published),
                            expected_active: false,
                        },
                    );
                }
            }
        }
    }
    if !disabled_logical.is_empty() {
        notes.push(SlotNote::LogicalNeedsPg11 { names: disabled_logical });
    }
    DesiredSlots { slots, notes }
}

/// Patroni's fixed `has_permanent_slots`: whether this node has permanent slots, computed as a replica. A permanent
/// physical slot named after a member counts even though the member slot already covers the name (the seed fix:
/// otherwise the leader stops querying and publishing slot positions).
pub fn has_permanent_slots(input: &DesiredInput) -> bool {
    let as_replica = DesiredInput { role: NodeRole::Replica, ..*input };
    let mut notes = Vec::new();
    let members = member_slots(&as_replica, &mut notes);
    let merged = desired_slots(&as_replica);
    let permanent = permanent_slots(&as_replica);
    merged.slots.len() > members.len() || permanent.iter().any(|(_, s)| s.kind == SlotKind::Physical)
}

/// Whether the leader must read slot positions at all (Patroni's `_should_query_slots`).
pub fn should_query_slots(input: &DesiredInput) -> bool {
    input.config.member_slots_ttl > 0 || has_permanent_slots(input)
}

/// Patroni's `should_enforce_hot_standby_feedback`: on when this node keeps logical slots (computed as a
/// replica), or when a member cascading from it (`replicatefrom`, recursively, the leader excluded) needs it.
pub fn enforce_hot_standby_feedback(input: &DesiredInput) -> bool {
    let mut seen = BTreeSet::new();
    hsf(input, &mut seen)
}

fn hsf(input: &DesiredInput, seen: &mut BTreeSet<String>) -> bool {
    if !seen.insert(input.name.to_string()) {
        return false;
    }
    let as_replica = DesiredInput { role: NodeRole::Replica, ..*input };
    if desired_slots(&as_replica).slots.values().any(|s| s.kind.is_logical()) {
        return true;
    }
    if !input.config.use_slots || slot_name_on_primary(input.view, input.name, input.tags).is_none() {
        return false;
    }
    let leader = input.view.leader.as_ref().map(|l| l.name.as_str());
    input
        .view
        .members
        .values()
        .filter(|m| m.tags.replicatefrom.as_deref() == Some(input.name) && Some(m.name.as_str()) != leader)
        .any(|m| hsf(&DesiredInput { name: &m.name, tags: &m.tags, ..as_replica }, seen))
}
