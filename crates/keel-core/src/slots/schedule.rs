//! Which slot copies the follower advances first when more want an advance than it may run at once.
//!
//! The follower runs at most a fixed number of advances at a time. Picking the wanting slots in name order
//! starved the slots late in that order whenever the primary kept moving: every free place went back to the first
//! names, whose slots had moved again meanwhile. A starved copy keeps its old `catalog_xmin`, which holds this
//! replica's feedback (the minimum over all its slots) below every other copy's starting horizon, so no copy
//! became ready (1,000 slots on 15; 60 copies under load). The rule here: the slot that has waited longest since
//! its last advance started goes first; a slot never started goes before all others; ties in name order.

/// The slots to start now: at most `room` of `wanting`, those whose last start (`None`: never) is oldest first.
/// `T` is any ordered time (an `Instant`, a tick count). Pure.
pub fn fair_pick<K: Ord + Clone, T: Ord + Copy>(wanting: &[(K, Option<T>)], room: usize) -> Vec<K> {
    let mut order: Vec<&(K, Option<T>)> = wanting.iter().collect();
    order.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    order.into_iter().take(room).map(|(k, _)| k.clone()).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::fair_pick;

    #[test]
    fn never_started_first_then_oldest_then_name() {
        let wanting = vec![("a", Some(5)), ("b", None), ("c", Some(1)), ("d", Some(1)), ("e", None)];
        assert_eq!(fair_pick(&wanting, 3), vec!["b", "e", "c"]);
        assert_eq!(fair_pick(&wanting, 10), vec!["b", "e", "c", "d", "a"]);
        assert!(fair_pick(&wanting, 0).is_empty());
        assert!(fair_pick::<&str, u32>(&[], 4).is_empty());
    }

    /// The starvation the follower had: every slot wants an advance on every tick (a busy primary), `room` places
    /// free per tick. Name order served only the first `room` names, for ever.
    #[test]
    fn slots_late_in_name_order_are_served_when_every_slot_always_wants() {
        let names: Vec<String> = (0..60).map(|i| format!("slot_{i:03}")).collect();
        let mut started: BTreeMap<String, u64> = BTreeMap::new();
        for tick in 0..8u64 {
            let wanting: Vec<(String, Option<u64>)> =
                names.iter().map(|n| (n.clone(), started.get(n).copied())).collect();
            for n in fair_pick(&wanting, 8) {
                started.insert(n, tick);
            }
        }
        assert_eq!(started.len(), 60, "every slot started within ceil(60 / 8) ticks");
    }

    proptest! {
        /// With `n` slots always wanting and `room` places a tick, every slot starts at least once in every
        /// window of ceil(n / room) ticks.
        #[test]
        fn no_slot_waits_more_than_its_turn(n in 1usize..120, room in 1usize..12, ticks in 1u64..40) {
            let names: Vec<usize> = (0..n).collect();
            let mut started: BTreeMap<usize, u64> = BTreeMap::new();
            let turn = n.div_ceil(room) as u64;
            for tick in 0..ticks {
                let wanting: Vec<(usize, Option<u64>)> =
                    names.iter().map(|k| (*k, started.get(k).copied())).collect();
                let picked = fair_pick(&wanting, room);
                prop_assert_eq!(picked.len(), room.min(n));
                for k in picked {
                    started.insert(k, tick);
                }
                if tick + 1 >= turn {
                    for k in &names {
                        let last = started.get(k).copied();
                        prop_assert!(last.is_some_and(|t| tick - t < turn), "slot {} last started {:?} at tick {}", k, last, tick);
                    }
                }
            }
        }
    }
}
