//! The promotion check: right after this replica became the primary, how does each permanent logical slot here
//! compare with what its consumers may have seen on the old primary?
//!
//! Inputs per slot: the last position known for the slot on the old primary (the larger of what the old leader
//! published in `status` and what this node's slot follower last read from it directly), the position of the copy
//! here (`confirmed_flush_lsn`), and the end of the WAL this node had when it was promoted.
//!
//! - last known > WAL end: consumers confirmed changes up to a position this primary never received. Those changes
//!   are gone from the cluster, but the consumers have them: **divergence**, with the byte distance.
//! - copy < last known (and last known ≤ WAL end): the consumers will be sent again what lies between the copy and
//!   what they confirmed: **redelivery** (duplicates, nothing lost), with the byte distance.
//! - copy > last known: the copy claims more than consumers confirmed on the old primary: consumers resuming from
//!   it **skip** the changes in between. A stale copy (an old primary's own slot) looks like this.
//! - copy known to be unusable when this node was promoted (not ready with a [`super::copycheck::CopyProblem`]:
//!   needing WAL this node lacks, stale, ahead of the primary): a **continuity break** for its consumers.
//! - copy missing: a continuity break, which the reconciler reports ([`super::SlotAction::ContinuityBreak`]).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::lsn::Lsn;

/// What the promotion check found for one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The copy is at (or past) the last known position, within this node's WAL.
    InStep,
    /// The copy trails the last known position: consumers receive `bytes` of changes a second time.
    Redelivery { bytes: u64 },
    /// The copy is `bytes` ahead of the last known position: consumers resuming from it skip those changes.
    Ahead { bytes: u64 },
    /// The copy was known to be unusable at promotion ([`SlotComparison::problem`]): a continuity break.
    Unusable,
    /// The last known position lies `bytes` past the end of this node's WAL: consumers may hold changes this
    /// primary does not have.
    Divergence { bytes: u64 },
    /// Nothing was known about the slot on the old primary: no comparison possible.
    Unknown,
    /// The slot has no copy here (see the continuity break).
    Missing,
}

/// One slot's comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotComparison {
    pub slot: String,
    /// The last position known on the old primary.
    pub last_known: Option<Lsn>,
    /// The copy's `confirmed_flush_lsn` here.
    pub copy: Option<Lsn>,
    pub verdict: Verdict,
    /// Why the copy was unusable (with [`Verdict::Unusable`]).
    pub problem: Option<String>,
}

/// What is known about the slots at promotion.
#[derive(Debug, Clone, Default)]
pub struct PromotionInput<'a> {
    /// The permanent logical slots of the configuration.
    pub logical: Vec<&'a str>,
    /// The old leader's published positions (`status.slots`).
    pub published: Option<&'a BTreeMap<String, Lsn>>,
    /// Positions this node's follower last read on the old leader.
    pub followed: BTreeMap<String, Lsn>,
    /// Local copies: slot → `confirmed_flush_lsn` (`None`: the slot exists without a position).
    pub copies: BTreeMap<String, Option<Lsn>>,
    /// The end of this node's WAL when it was promoted (`None`: unknown, divergence not judged).
    pub wal_end: Option<Lsn>,
    /// Copies that were not usable when this node was promoted: slot → why.
    pub unusable: BTreeMap<String, String>,
}

/// Compares every permanent logical slot. Pure.
pub fn compare(input: &PromotionInput<'_>) -> Vec<SlotComparison> {
    input
        .logical
        .iter()
        .map(|&slot| {
            let published = input.published.and_then(|p| p.get(slot)).copied();
            let last_known = match (published, input.followed.get(slot).copied()) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let copy = input.copies.get(slot).copied();
            let problem = input.unusable.get(slot).cloned();
            let verdict = match (copy, last_known) {
                (None, _) => Verdict::Missing,
                (Some(_), _) if problem.is_some() => Verdict::Unusable,
                (Some(_), None) => Verdict::Unknown,
                (Some(c), Some(k)) => match input.wal_end.filter(|end| k > *end) {
                    Some(end) => Verdict::Divergence { bytes: k.saturating_sub(end) },
                    None => match c {
                        Some(c) if c > k => Verdict::Ahead { bytes: c.saturating_sub(k) },
                        Some(c) if c == k => Verdict::InStep,
                        Some(c) => Verdict::Redelivery { bytes: k.saturating_sub(c) },
                        None => Verdict::Unknown,
                    },
                },
            };
            SlotComparison { slot: slot.to_string(), last_known, copy: copy.flatten(), verdict, problem }
        })
        .collect()
}

impl SlotComparison {
    /// One log line.
    pub fn describe(&self) -> String {
        let at = |l: Option<Lsn>| l.map_or_else(|| "unknown".to_string(), |l| l.to_string());
        let (slot, known, copy) = (&self.slot, at(self.last_known), at(self.copy));
        match self.verdict {
            Verdict::InStep => format!("logical slot {slot}: copy at {copy}, in step with the old primary ({known})"),
            Verdict::Redelivery { bytes } => format!(
                "logical slot {slot}: copy at {copy} trails the old primary's {known} by {bytes} bytes; consumers \
                 will receive those changes again (duplicates, nothing lost)"
            ),
            Verdict::Divergence { bytes } => format!(
                "logical slot {slot}: consumers confirmed up to {known} on the old primary, {bytes} bytes past the \
                 end of this primary's WAL; they may hold changes this primary does not have and must be checked"
            ),
            Verdict::Ahead { bytes } => format!(
                "logical slot {slot}: copy at {copy} is {bytes} bytes ahead of the old primary's {known}; consumers \
                 resuming from it skip those changes and must be checked"
            ),
            Verdict::Unusable => format!(
                "CONTINUITY BREAK: logical slot {slot}: this node was promoted with an unusable copy at {copy} ({}); \
                 its consumers cannot continue without loss and must resynchronise",
                self.problem.as_deref().unwrap_or("unknown reason")
            ),
            Verdict::Unknown => format!("logical slot {slot}: copy at {copy}; no position known on the old primary"),
            Verdict::Missing => format!("logical slot {slot}: no copy on this primary (continuity break)"),
        }
    }

    /// For REST: positions as `X/Y` text, the verdict and its byte distance.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.verdict).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("slot".into(), self.slot.clone().into());
            o.insert("last_known".into(), self.last_known.map(|l| l.to_string()).into());
            o.insert("copy".into(), self.copy.map(|l| l.to_string()).into());
            o.insert("problem".into(), self.problem.clone().into());
        }
        v
    }

    /// Whether consumers may hold changes this primary lacks.
    pub fn diverged(&self) -> bool {
        matches!(self.verdict, Verdict::Divergence { .. })
    }

    /// Whether consumers lose or skip changes: divergence, a copy ahead, an unusable or missing copy.
    pub fn breaks_continuity(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Divergence { .. } | Verdict::Ahead { .. } | Verdict::Unusable | Verdict::Missing
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: u64) -> Lsn {
        Lsn(v)
    }

    fn run(
        published: &[(&str, u64)],
        followed: &[(&str, u64)],
        copies: &[(&str, Option<u64>)],
        end: Option<u64>,
    ) -> Vec<Verdict> {
        let published: BTreeMap<String, Lsn> = published.iter().map(|(n, v)| (n.to_string(), l(*v))).collect();
        let input = PromotionInput {
            logical: vec!["a"],
            published: Some(&published),
            followed: followed.iter().map(|(n, v)| (n.to_string(), l(*v))).collect(),
            copies: copies.iter().map(|(n, v)| (n.to_string(), v.map(l))).collect(),
            wal_end: end.map(l),
            unusable: BTreeMap::new(),
        };
        compare(&input).into_iter().map(|c| c.verdict).collect()
    }

    #[test]
    fn verdicts() {
        // In step: copy at the last known position, within our WAL.
        assert_eq!(run(&[("a", 100)], &[], &[("a", Some(100))], Some(200)), vec![Verdict::InStep]);
        // The follower saw a newer position than the published one: that is what counts.
        assert_eq!(
            run(&[("a", 100)], &[("a", 150)], &[("a", Some(120))], Some(200)),
            vec![Verdict::Redelivery { bytes: 30 }]
        );
        // Consumers confirmed past our WAL end.
        assert_eq!(run(&[("a", 300)], &[], &[("a", Some(180))], Some(200)), vec![Verdict::Divergence { bytes: 100 }]);
        // WAL end unknown: divergence is not judged, redelivery still is.
        assert_eq!(run(&[("a", 300)], &[], &[("a", Some(180))], None), vec![Verdict::Redelivery { bytes: 120 }]);
        assert_eq!(run(&[], &[], &[("a", Some(180))], Some(200)), vec![Verdict::Unknown]);
        assert_eq!(run(&[("a", 100)], &[], &[], Some(200)), vec![Verdict::Missing]);
        assert_eq!(run(&[("a", 100)], &[], &[("a", None)], Some(200)), vec![Verdict::Unknown]);
        // A copy ahead of the last known position: consumers resuming from it would skip changes (a stale copy,
        // e.g. an old primary's own slot, looks like this).
        assert_eq!(run(&[("a", 100)], &[], &[("a", Some(150))], Some(200)), vec![Verdict::Ahead { bytes: 50 }]);
    }

    #[test]
    fn a_copy_unusable_at_promotion_is_a_continuity_break() {
        let published = BTreeMap::from([("a".to_string(), l(100))]);
        let input = PromotionInput {
            logical: vec!["a"],
            published: Some(&published),
            followed: BTreeMap::new(),
            copies: BTreeMap::from([("a".to_string(), Some(l(100)))]),
            wal_end: Some(l(200)),
            unusable: BTreeMap::from([("a".to_string(), "needs WAL from 0/1000000".to_string())]),
        };
        let c = compare(&input).remove(0);
        assert_eq!(c.verdict, Verdict::Unusable);
        assert!(c.breaks_continuity());
        assert!(c.describe().starts_with("CONTINUITY BREAK") && c.describe().contains("needs WAL"), "{}", c.describe());
        assert_eq!(c.to_json()["verdict"], "unusable");
        assert_eq!(c.to_json()["problem"], "needs WAL from 0/1000000");
    }

    #[test]
    fn descriptions_name_the_distance() {
        let c = SlotComparison {
            slot: "cdc".into(),
            last_known: Some(l(0x300)),
            copy: Some(l(0x100)),
            verdict: Verdict::Divergence { bytes: 256 },
            problem: None,
        };
        assert!(c.diverged());
        assert!(c.describe().contains("256 bytes past the end"), "{}", c.describe());
        let json = c.to_json();
        assert_eq!(json["verdict"], "divergence");
        assert_eq!(json["bytes"], 256);
        assert_eq!(json["slot"], "cdc");
        assert_eq!(json["last_known"], "0/300");
    }
}
