use super::*;

fn cand(member: &str, nofailover: bool, synchronous: bool) -> StandbyCandidate {
    StandbyCandidate { member: member.into(), slot: member.replace('-', "_"), nofailover, synchronous }
}

fn obs(streaming: bool, at: Option<u64>) -> PhysicalSlotObs {
    PhysicalSlotObs { streaming, restart_lsn: at.map(Lsn) }
}

fn run(cands: &[StandbyCandidate], slots: &[(&str, PhysicalSlotObs)], sync: bool) -> StandbySlots {
    let slots: BTreeMap<String, PhysicalSlotObs> = slots.iter().map(|(n, o)| (n.to_string(), o.clone())).collect();
    standby_slots(&StandbySlotsInput {
        candidates: cands,
        slots: &slots,
        primary_flush: Lsn(10_000),
        max_lag: 1_000,
        synchronous_mode: sync,
    })
}

#[test]
fn every_reason_in_and_out() {
    let cands = [
        cand("n-1", false, false),
        cand("n-2", false, false),
        cand("n-3", true, false),
        cand("n-4", false, false),
        cand("n-5", false, false),
        cand("n-6", false, false),
    ];
    let slots = [
        ("n_1", obs(true, Some(9_500))),
        ("n_2", obs(true, Some(8_000))),
        ("n_3", obs(true, Some(10_000))),
        ("n_4", obs(false, Some(10_000))),
        ("n_5", obs(true, None)),
    ];
    let got = run(&cands, &slots, false);
    assert_eq!(got.slots, vec!["n_1"]);
    assert_eq!(got.value(), "n_1");
    let table = [
        ("n-1", Membership::In(Listed::Streaming { lag: 500 })),
        ("n-2", Membership::Out(Unlisted::Lagging { lag: 2_000, bound: 1_000 })),
        ("n-3", Membership::Out(Unlisted::NoFailover)),
        ("n-4", Membership::Out(Unlisted::NotStreaming)),
        ("n-5", Membership::Out(Unlisted::NoPosition)),
        ("n-6", Membership::Out(Unlisted::NoSlot)),
    ];
    for (m, want) in table {
        assert_eq!(got.members[m], want, "{m}");
    }
}

#[test]
fn exactly_at_the_bound_is_listed() {
    let got = run(&[cand("a", false, false)], &[("a", obs(true, Some(9_000)))], false);
    assert_eq!(got.slots, vec!["a"]);
}

#[test]
fn synchronous_mode_lists_only_streaming_synchronous_standbys() {
    let cands = [cand("a", false, true), cand("b", false, false), cand("c", false, true)];
    let slots = [("a", obs(true, Some(1))), ("b", obs(true, Some(10_000))), ("c", obs(false, Some(10_000)))];
    let got = run(&cands, &slots, true);
    assert_eq!(got.slots, vec!["a"]);
    assert_eq!(got.members["a"], Membership::In(Listed::Synchronous { lag: 9_999 }));
    assert_eq!(got.members["b"], Membership::Out(Unlisted::NotSynchronous));
    assert_eq!(got.members["c"], Membership::Out(Unlisted::NotStreaming));
}

#[test]
fn nobody_qualifies_gives_an_empty_value() {
    let got = run(&[cand("a", false, false)], &[], false);
    assert!(got.slots.is_empty());
    assert_eq!(got.value(), "");
}

#[test]
fn a_standby_leaves_when_it_stops_and_comes_back_when_caught_up() {
    let cands = [cand("a", false, false), cand("b", false, false)];
    let both = run(&cands, &[("a", obs(true, Some(9_900))), ("b", obs(true, Some(9_900)))], false);
    let stopped = run(&cands, &[("a", obs(true, Some(9_900))), ("b", obs(false, Some(9_900)))], false);
    assert_eq!(stopped.slots, vec!["a"]);
    let changes = stopped.changes(&both);
    assert_eq!(changes, vec![("b", &Membership::Out(Unlisted::NotStreaming))]);
    let behind = run(&cands, &[("a", obs(true, Some(9_900))), ("b", obs(true, Some(5_000)))], false);
    assert_eq!(behind.slots, vec!["a"]);
    assert!(behind.changes(&stopped).is_empty(), "still out, for another reason: no change of place");
    let back = run(&cands, &[("a", obs(true, Some(9_900))), ("b", obs(true, Some(9_950)))], false);
    assert_eq!(back.slots, vec!["a", "b"]);
    assert_eq!(back.changes(&behind).len(), 1);
}

#[test]
fn membership_renders_its_reason() {
    assert_eq!(
        Membership::Out(Unlisted::Lagging { lag: 5, bound: 1 }).to_string(),
        "not listed: 5 bytes behind, more than 1"
    );
    let json = serde_json::to_value(Membership::In(Listed::Streaming { lag: 3 })).unwrap();
    assert_eq!(json, serde_json::json!({"reason": "streaming", "lag": 3}));
}
