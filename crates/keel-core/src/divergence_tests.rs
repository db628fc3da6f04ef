use super::*;

fn facts(
    tl: Option<u32>,
    lsn: Option<u64>,
    clean: bool,
    leader: Option<u32>,
    history: Option<&[(u32, u64)]>,
) -> DivergenceFacts {
    DivergenceFacts {
        local: LocalEnd { timeline: tl, lsn: lsn.map(Lsn), clean },
        leader_timeline: leader,
        leader_history: history.map(|h| h.iter().map(|(t, l)| (*t, Lsn(*l))).collect()),
    }
}

const HISTORY: &[(u32, u64)] = &[(1, 1000), (2, 5000)];

#[test]
fn verdicts() {
    use Divergence::*;
    let diverged = |timeline, lsn, leader_timeline| Diverged { timeline, lsn: Lsn(lsn), leader_timeline };
    let cases: Vec<(DivergenceFacts, Divergence)> = vec![
        // Same timeline: nothing to compare.
        (facts(Some(3), Some(9000), false, Some(3), None), Same),
        // Ahead of the leader's timeline: always diverged.
        (facts(Some(4), Some(10), true, Some(3), Some(HISTORY)), diverged(4, 10, 3)),
        // Older timeline, stopped cleanly at or before the switchpoint: a prefix.
        (facts(Some(2), Some(5000), true, Some(3), Some(HISTORY)), Same),
        (facts(Some(1), Some(999), true, Some(3), Some(HISTORY)), Same),
        // Past the switchpoint, or not shut down cleanly (may have written past it).
        (facts(Some(2), Some(5001), true, Some(3), Some(HISTORY)), diverged(2, 5001, 3)),
        (facts(Some(2), Some(4000), false, Some(3), Some(HISTORY)), diverged(2, 4000, 3)),
        // Our timeline is not in the leader's history at all.
        (facts(Some(2), Some(10), true, Some(3), Some(&[(1, 1000)])), diverged(2, 10, 3)),
        // Unknowns are never "diverged".
        (facts(None, Some(10), true, Some(3), Some(HISTORY)), Unknown(UnknownFact::LocalTimeline)),
        (facts(Some(2), None, true, Some(3), Some(HISTORY)), Unknown(UnknownFact::LocalPosition)),
        (facts(Some(2), Some(10), true, None, Some(HISTORY)), Unknown(UnknownFact::LeaderTimeline)),
        (facts(Some(2), Some(10), true, Some(3), None), Unknown(UnknownFact::LeaderHistory)),
    ];
    for (f, want) in cases {
        assert_eq!(assess(&f), want, "{f:?}");
    }
}

#[test]
fn remedies() {
    let diverged = Divergence::Diverged { timeline: 2, lsn: Lsn(1), leader_timeline: 3 };
    let p = |rewind, wipe_when_diverged, wipe_when_rewind_fails| DivergencePolicy {
        rewind,
        wipe_when_diverged,
        wipe_when_rewind_fails,
    };
    assert_eq!(remedy(&Divergence::Same, p(false, true, true)), Remedy::Follow);
    assert_eq!(remedy(&diverged, p(true, true, true)), Remedy::Rewind);
    assert_eq!(remedy(&diverged, p(false, true, false)), Remedy::Wipe(WipeReason::DivergedWithoutRewind));
    assert_eq!(remedy(&diverged, p(false, false, true)), Remedy::WaitForReinit(ReinitNeeded::RewindOff));
    // No repair, and above all no wipe, is ever decided from an unknown.
    for policy in [p(true, true, true), p(false, true, true)] {
        let unknown = Divergence::Unknown(UnknownFact::LeaderHistory);
        assert_eq!(remedy(&unknown, policy), Remedy::Unknown(UnknownFact::LeaderHistory));
    }
    assert_eq!(
        after_rewind_impossible("no common ancestor", p(true, false, true)),
        Remedy::Wipe(WipeReason::RewindImpossible { detail: "no common ancestor".into() })
    );
    assert_eq!(
        after_rewind_impossible("no common ancestor", p(true, true, false)),
        Remedy::WaitForReinit(ReinitNeeded::RewindImpossible { detail: "no common ancestor".into() })
    );
}

#[test]
fn policy_follows_the_settings() {
    let mut s = PgSettings::default();
    assert_eq!(DivergencePolicy::from_settings(&s), DivergencePolicy::default(), "wiping is never a default");
    s.use_pg_rewind = true;
    s.remove_data_directory_on_rewind_failure = true;
    let p = DivergencePolicy::from_settings(&s);
    assert!(p.rewind && p.wipe_when_rewind_fails && !p.wipe_when_diverged);
}
