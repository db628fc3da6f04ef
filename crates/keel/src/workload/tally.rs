//! What a failover cost the consumer: the writer's acknowledged ids against the ids the consumer received and
//! the ids the final primary has.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Counts of changes (ids), each id counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Inserts the primary acknowledged.
    pub written: usize,
    /// Acknowledged inserts the final primary does not have (lost to asynchronous replication, not to the
    /// consumer).
    pub not_on_final_primary: usize,
    /// Distinct ids received.
    pub received: usize,
    /// Acknowledged, on the final primary, never received: what the failover slots must prevent.
    pub lost: usize,
    /// Ids received more than once (redelivered after a consumer moved to another primary).
    pub received_twice: usize,
    /// Ids received that the final primary does not have (a consumer was ahead of the new primary).
    pub phantoms: usize,
}

impl Tally {
    pub fn new(acked: &[i64], received: &BTreeMap<i64, u32>, on_final_primary: &BTreeSet<i64>) -> Tally {
        let acked: BTreeSet<i64> = acked.iter().copied().collect();
        Tally {
            written: acked.len(),
            not_on_final_primary: acked.iter().filter(|id| !on_final_primary.contains(id)).count(),
            received: received.len(),
            lost: acked.iter().filter(|id| on_final_primary.contains(id) && !received.contains_key(id)).count(),
            received_twice: received.values().filter(|n| **n > 1).count(),
            phantoms: received.keys().filter(|id| !on_final_primary.contains(id)).count(),
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "changes: written {}, received {}, lost {}, received twice {}",
            self.written, self.received, self.lost, self.received_twice
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_each_kind() {
        // 1..=6 acknowledged; 6 did not reach the new primary; 7 was committed without an answer.
        let acked = [1, 2, 3, 4, 5, 6];
        let on_final: BTreeSet<i64> = [1, 2, 3, 4, 5, 7].into();
        // 3 and 4 redelivered, 5 never received, 6 received before the failover (a phantom).
        let received: BTreeMap<i64, u32> = [(1, 1), (2, 1), (3, 2), (4, 2), (6, 1), (7, 1)].into();
        let t = Tally::new(&acked, &received, &on_final);
        assert_eq!(
            t,
            Tally { written: 6, not_on_final_primary: 1, received: 6, lost: 1, received_twice: 2, phantoms: 1 }
        );
        assert_eq!(t.to_string(), "changes: written 6, received 6, lost 1, received twice 2");
    }

    #[test]
    fn nothing_written_is_nothing_lost() {
        let t = Tally::new(&[], &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(t.to_string(), "changes: written 0, received 0, lost 0, received twice 0");
    }
}
