//! The `history` key after a promotion: one line per timeline switch (Patroni's `update_history`), trimmed to
//! `max_timelines_history`. A promotion whose old timeline is unknown writes no line: a guessed timeline (say 1)
//! would mislead every later divergence check and `keel history`.

use crate::lsn::Lsn;
use crate::time::{format_iso8601, Millis};
use crate::view::HistoryEntry;

/// Where a promotion switched timelines, as the runtime could read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Promotion {
    /// The timeline this node was on before promoting. `None`: unknown.
    pub old_timeline: Option<u32>,
    /// The position where the old timeline ended. `None`: unknown.
    pub switched_at: Option<Lsn>,
}

/// The history after `promotion` by `new_leader` at `now`, or `None` when the switch point is unknown.
pub fn after_promotion(
    history: &[HistoryEntry],
    promotion: &Promotion,
    new_leader: &str,
    now: Millis,
    max_lines: u64,
) -> Option<Vec<HistoryEntry>> {
    let (timeline, lsn) = (promotion.old_timeline?, promotion.switched_at?);
    let mut out = history.to_vec();
    out.push(HistoryEntry {
        timeline,
        lsn,
        reason: "no recovery target specified".into(),
        timestamp: Some(format_iso8601(now)),
        new_leader: Some(new_leader.to_string()),
    });
    let max = usize::try_from(max_lines).unwrap_or(usize::MAX);
    if max > 0 && out.len() > max {
        out.drain(..out.len() - max);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tl: u32) -> HistoryEntry {
        HistoryEntry {
            timeline: tl,
            lsn: Lsn(u64::from(tl) * 100),
            reason: "r".into(),
            timestamp: None,
            new_leader: None,
        }
    }

    #[test]
    fn appends_and_trims() {
        let p = Promotion { old_timeline: Some(3), switched_at: Some(Lsn(700)) };
        let h = after_promotion(&[entry(1), entry(2)], &p, "n2", Millis(0), 0).expect("known");
        assert_eq!(h.len(), 3);
        assert_eq!((h[2].timeline, h[2].lsn, h[2].new_leader.as_deref()), (3, Lsn(700), Some("n2")));
        let trimmed = after_promotion(&[entry(1), entry(2)], &p, "n2", Millis(0), 2).expect("known");
        assert_eq!(trimmed.iter().map(|e| e.timeline).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn unknown_switch_writes_nothing() {
        for p in [
            Promotion { old_timeline: None, switched_at: Some(Lsn(1)) },
            Promotion { old_timeline: Some(1), switched_at: None },
        ] {
            assert_eq!(after_promotion(&[entry(1)], &p, "n2", Millis(0), 0), None);
        }
    }
}
