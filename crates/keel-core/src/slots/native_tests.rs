use super::*;
use crate::slots::desired::{DesiredSlot, SlotOrigin};
use crate::slots::reconcile::CreateReason;
use serde_json::json;

fn slot(name: &str, failover: bool, synced: bool, confirmed: Option<u64>) -> NativeSlot {
    NativeSlot {
        name: name.into(),
        database: "app".into(),
        plugin: "test_decoding".into(),
        failover,
        synced,
        confirmed_flush: confirmed.map(Lsn),
        ..NativeSlot::default()
    }
}

fn primary(slots: &[NativeSlot]) -> BTreeMap<String, NativeSlot> {
    slots.iter().map(|s| (s.name.clone(), s.clone())).collect()
}

#[test]
fn lag_bound_prefers_its_own_key() {
    let plain = DynamicConfig::from_value(json!({"maximum_lag_on_failover": 5000}));
    assert_eq!(lag_bound(&plain), 5000);
    let own = DynamicConfig::from_value(json!({"maximum_lag_on_failover": 5000, "failover_slots_max_lag": 70}));
    assert_eq!(lag_bound(&own), 70);
}

#[test]
fn native_replicas_make_no_copies() {
    let copy = SlotAction::CopyLogical {
        slot: "cdc".into(),
        database: "app".into(),
        plugin: "p".into(),
        leader: "a".into(),
        reason: CreateReason::Missing,
    };
    let phys = SlotAction::CreatePhysical { slot: "b".into(), reason: CreateReason::Missing };
    let plan = vec![copy.clone(), phys.clone()];
    assert_eq!(plan_for_method(SlotSyncMethod::Native, NodeRole::Replica, plan.clone()), vec![phys]);
    assert_eq!(plan_for_method(SlotSyncMethod::Copy, NodeRole::Replica, plan.clone()), plan);
    assert_eq!(plan_for_method(SlotSyncMethod::Native, NodeRole::Primary, plan.clone()), plan);
}

#[test]
fn only_permanent_logical_slots_without_failover_are_switched() {
    let mut desired = DesiredSlots::default();
    let logical = SlotKind::Logical { database: "app".into(), plugin: "test_decoding".into() };
    for (name, kind) in [("cdc", logical.clone()), ("done", logical), ("phys", SlotKind::Physical)] {
        desired.slots.insert(
            name.into(),
            DesiredSlot { kind, origin: SlotOrigin::Permanent, expected_active: false, lsn: None },
        );
    }
    let here = [
        slot("cdc", false, false, Some(1)),
        slot("done", true, false, Some(1)),
        slot("consumer_own", false, false, Some(1)),
    ];
    assert_eq!(failover_switches(&desired, &here), vec!["cdc".to_string()]);
}

#[test]
fn leftovers_are_dropped_only_when_the_primary_has_the_failover_slot() {
    let here = [
        slot("old_original", true, false, Some(5)),
        slot("copy_mode_copy", false, false, Some(5)),
        slot("synced", true, true, Some(5)),
        slot("users_own", false, false, Some(5)),
        slot("gone_on_primary", true, false, Some(5)),
    ];
    let p = primary(&[
        slot("old_original", true, false, Some(9)),
        slot("copy_mode_copy", true, false, Some(9)),
        slot("synced", true, false, Some(9)),
        slot("users_own", false, false, Some(9)),
    ]);
    let got = leftovers(&here, Some(&p));
    assert_eq!(
        got,
        vec![
            SlotAction::Drop { slot: "old_original".into(), reason: DropReason::NativeLeftover { failover: true } },
            SlotAction::Drop { slot: "copy_mode_copy".into(), reason: DropReason::NativeLeftover { failover: false } },
        ]
    );
    assert!(leftovers(&here, None).is_empty(), "primary unknown: nothing is dropped");
}

fn ready_input<'a>(
    permanent: &'a BTreeSet<String>,
    here: &'a [NativeSlot],
    primary: Option<&'a BTreeMap<String, NativeSlot>>,
    previous: &'a BTreeMap<String, NativeState>,
) -> NativeReadinessInput<'a> {
    NativeReadinessInput { permanent, here, primary, previous, bound: 100, listed: Some(true) }
}

#[test]
fn readiness_table() {
    let permanent: BTreeSet<String> = ["cdc", "absent", "not_yet"].iter().map(|s| s.to_string()).collect();
    let mut temp = slot("temp", true, true, Some(1000));
    temp.temporary = true;
    let mut inval = slot("inval", true, true, Some(1000));
    inval.invalidated = Some("wal_removed".into());
    let here = [
        slot("cdc", true, true, Some(950)),
        slot("consumer", true, true, Some(800)),
        slot("mine", false, false, Some(1000)),
        slot("nopos", true, true, None),
        temp,
        inval,
    ];
    let p = primary(&[
        slot("cdc", true, false, Some(1000)),
        slot("consumer", true, false, Some(1000)),
        slot("mine", true, false, Some(1000)),
        slot("absent", true, false, Some(1000)),
        slot("nopos", true, false, Some(1000)),
        slot("temp", true, false, Some(1000)),
        slot("inval", true, false, Some(1000)),
    ]);
    let none = BTreeMap::new();
    let got = readiness(&ready_input(&permanent, &here, Some(&p), &none));
    let table = [
        ("cdc", NativeState::Ready { behind: 50 }),
        ("consumer", NativeState::Behind { behind: Some(200), bound: 100 }),
        ("mine", NativeState::NotSynced),
        ("absent", NativeState::Missing),
        ("not_yet", NativeState::NotOnPrimary),
        ("nopos", NativeState::Behind { behind: None, bound: 100 }),
        ("temp", NativeState::Temporary),
        ("inval", NativeState::Invalidated { reason: "wal_removed".into() }),
    ];
    assert_eq!(got.len(), table.len());
    for (name, want) in table {
        assert_eq!(got[name], want, "{name}");
    }
    let summary = summarize(&got);
    assert!(!summary.ready);
    assert_eq!(summary.unready.len(), 7);
}

#[test]
fn a_copy_that_caught_up_again_is_ready_again() {
    let permanent: BTreeSet<String> = ["cdc".to_string()].into();
    let p = primary(&[slot("cdc", true, false, Some(10_000))]);
    let none = BTreeMap::new();
    let behind = [slot("cdc", true, true, Some(2_000))];
    assert!(!readiness(&ready_input(&permanent, &behind, Some(&p), &none))["cdc"].is_ready());
    let caught_up = [slot("cdc", true, true, Some(10_000))];
    let got = readiness(&ready_input(&permanent, &caught_up, Some(&p), &none));
    assert!(summarize(&got).ready);
}

#[test]
fn primary_unknown_keeps_the_last_verdict_but_not_over_local_failures() {
    let permanent: BTreeSet<String> = ["cdc".to_string()].into();
    let previous: BTreeMap<String, NativeState> = [
        ("cdc".to_string(), NativeState::Ready { behind: 0 }),
        ("consumer".to_string(), NativeState::Ready { behind: 0 }),
    ]
    .into();
    let mut consumer = slot("consumer", true, true, Some(5));
    consumer.invalidated = Some("rows_removed".into());
    let here = [slot("cdc", true, true, Some(5)), consumer];
    let got = readiness(&ready_input(&permanent, &here, None, &previous));
    assert_eq!(got["cdc"], NativeState::Ready { behind: 0 });
    assert_eq!(got["consumer"], NativeState::Invalidated { reason: "rows_removed".into() });
    let none = BTreeMap::new();
    let fresh = readiness(&ready_input(&permanent, &here[..1], None, &none));
    assert_eq!(fresh["cdc"], NativeState::PrimaryUnknown);
}

#[test]
fn no_failover_slots_at_all_is_ready() {
    let got = readiness(&ready_input(&BTreeSet::new(), &[], Some(&BTreeMap::new()), &BTreeMap::new()));
    assert!(summarize(&got).ready);
}

#[test]
fn a_standby_off_the_list_is_not_ready_until_it_is_back() {
    let permanent: BTreeSet<String> = ["cdc".to_string()].into();
    let p = primary(&[slot("cdc", true, false, Some(1_000))]);
    let here = [slot("cdc", true, true, Some(1_000))];
    let none = BTreeMap::new();
    let off = NativeReadinessInput { listed: Some(false), ..ready_input(&permanent, &here, Some(&p), &none) };
    assert_eq!(readiness(&off)["cdc"], NativeState::NotListed);
    let unknown = NativeReadinessInput { listed: None, ..ready_input(&permanent, &here, Some(&p), &none) };
    assert!(readiness(&unknown)["cdc"].is_ready());
    assert!(readiness(&ready_input(&permanent, &here, Some(&p), &none))["cdc"].is_ready());
}
