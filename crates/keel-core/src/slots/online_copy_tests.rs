use super::*;
use crate::slots::copycheck::CopyProblem;

#[test]
fn technique_per_major() {
    for (major, want) in [
        (12, CopyTechnique::FileAndRestart),
        (15, CopyTechnique::FileAndRestart),
        (16, CopyTechnique::CreateOnStandby),
        (17, CopyTechnique::CreateOnStandby),
        (18, CopyTechnique::CreateOnStandby),
    ] {
        assert_eq!(copy_technique(major), want, "PostgreSQL {major}");
    }
}

#[test]
fn failed_creation_by_sqlstate() {
    use CreateRemedy::*;
    let table: &[(Option<&str>, bool, CreateFailure, CreateRemedy)] = &[
        (Some("55000"), false, CreateFailure::Prerequisite, FallBackToFileCopy),
        (Some("0A000"), false, CreateFailure::Unsupported, FallBackToFileCopy),
        (Some("53400"), false, CreateFailure::NoFreeSlot, RetryLater),
        (Some("42710"), false, CreateFailure::Exists, RetryLater),
        (Some("3D000"), false, CreateFailure::DatabaseMissing, RetryLater),
        (Some("58P01"), false, CreateFailure::PluginMissing, RetryLater),
        (Some("57014"), false, CreateFailure::Timeout, RetryLater),
        (Some("55000"), true, CreateFailure::Timeout, RetryLater),
        (None, false, CreateFailure::Connection, RetryLater),
        (Some("08006"), false, CreateFailure::Connection, RetryLater),
        (Some("57P03"), false, CreateFailure::Connection, RetryLater),
        (Some("XX000"), false, CreateFailure::Other { sqlstate: "XX000".into() }, RetryLater),
    ];
    for (i, (code, timed_out, failure, remedy)) in table.iter().enumerate() {
        let got = CreateFailure::classify(*code, *timed_out);
        assert_eq!(&got, failure, "row {i}");
        assert_eq!(create_failed(&got), *remedy, "row {i}");
    }
}

#[test]
fn gate_opens_once_the_primary_confirmed_past_the_start() {
    let l = |n: u64| Some(Lsn(n));
    assert_eq!(start_point(l(10), l(5)), l(10));
    assert_eq!(start_point(None, l(5)), l(5));
    let table: &[(Option<Lsn>, Option<Lsn>, bool)] = &[
        (l(100), l(99), false),
        (l(100), l(100), true),
        (l(100), l(200), true),
        (l(100), None, false),
        (None, l(200), false),
    ];
    for (i, (start, primary, passed)) in table.iter().enumerate() {
        assert_eq!(online_gate(*start, *primary) == OnlineGate::Passed, *passed, "row {i}");
    }
}

#[test]
fn waiting_copy_ahead_of_the_primary_is_kept() {
    let waiting = OnlineGate::Waiting { start: Some(Lsn(100)), primary: Some(Lsn(50)) };
    let ahead = CopyProblem::AheadOfPrimary { position: Position::ConfirmedFlush, copy: Lsn(100), primary: Lsn(50) };
    assert_eq!(gate_verdict(CopyVerdict::Recopy(ahead.clone()), &waiting), CopyVerdict::Fine);
    let blocked = CopyVerdict::Blocked { problem: ahead.clone(), drop: true };
    assert_eq!(gate_verdict(blocked.clone(), &waiting), CopyVerdict::Fine);
    // Once passed, a copy ahead of the primary is dropped as any other.
    assert_eq!(gate_verdict(blocked.clone(), &OnlineGate::Passed), blocked);
    // Other problems stand while waiting.
    let other = CopyVerdict::Recopy(CopyProblem::Invalidated);
    assert_eq!(gate_verdict(other.clone(), &waiting), other);
}

#[test]
fn waiting_copy_is_never_ready() {
    let waiting = OnlineGate::Waiting { start: Some(Lsn(100)), primary: Some(Lsn(50)) };
    let ready = SlotReadiness { stage: Stage::Ready, ..SlotReadiness::MISSING };
    let (st, why) = gate_readiness(ready.clone(), ReadinessReason::Ready, &waiting);
    assert_eq!(st.stage, Stage::Advanced);
    assert_eq!(why.code(), "waiting_for_primary_consumer");
    // Earlier reasons are kept.
    let copied = SlotReadiness { stage: Stage::Copied, ..SlotReadiness::MISSING };
    let (st, why) = gate_readiness(copied, ReadinessReason::CatalogXminNull, &waiting);
    assert_eq!((st.stage, why), (Stage::Copied, ReadinessReason::CatalogXminNull));
    // Passed: unchanged.
    let (st, why) = gate_readiness(ready, ReadinessReason::Ready, &OnlineGate::Passed);
    assert_eq!((st.stage, why), (Stage::Ready, ReadinessReason::Ready));
}
