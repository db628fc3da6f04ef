use super::*;
use crate::slots::copycheck::{Position, Rebuild};

fn h(attempts: u32, last_secs: u64) -> RecopyHistory {
    RecopyHistory { attempts, last: Some(Millis::from_secs(last_secs)) }
}

#[test]
fn recopies_only_what_must_be_replaced_and_only_when_due() {
    let stale = CopyProblem::Stale { cause: Rebuild::Rewind };
    let ahead = CopyProblem::AheadOfPrimary { position: Position::ConfirmedFlush, copy: Lsn(9), primary: Lsn(5) };
    let missing = CopyProblem::NeedsMissingWal { needs: Some(Lsn(1)), oldest_wal: Some(Lsn(2)) };
    let fresh = RecopyHistory::default();
    // verdict, history, now (s) → re-copy now.
    let table: &[(CopyVerdict, RecopyHistory, u64, bool)] = &[
        (CopyVerdict::Fine, fresh, 0, false),
        (CopyVerdict::Recopy(stale.clone()), fresh, 0, true),
        (CopyVerdict::Recopy(stale.clone()), h(1, 100), 105, false),
        (CopyVerdict::Recopy(stale), h(1, 100), 110, true),
        // Blocked: only a copy that must go (it claims positions the primary lacks) is dropped meanwhile.
        (CopyVerdict::Blocked { problem: ahead.clone(), drop: true }, fresh, 0, true),
        (CopyVerdict::Blocked { problem: ahead, drop: true }, h(3, 100), 139, false),
        (CopyVerdict::Blocked { problem: missing, drop: false }, fresh, 0, false),
        (CopyVerdict::Blocked { problem: CopyProblem::PermissionDenied, drop: false }, fresh, 0, false),
    ];
    for (i, (verdict, history, now, want)) in table.iter().enumerate() {
        assert_eq!(recopy_wanted(verdict, history, Millis::from_secs(*now)), *want, "row {i}: {verdict:?}");
    }
}

#[test]
fn copies_only_a_matching_slot_whose_wal_this_replica_has() {
    let at = |restart: Option<u64>| SlotPositions { restart_lsn: restart.map(Lsn), confirmed_flush_lsn: Some(Lsn(50)) };
    let slot = |db: &'static str, plugin: &'static str, restart: Option<u64>| SourceSlot {
        database: Some(db),
        plugin: Some(plugin),
        positions: at(restart),
    };
    let blocked = CopySource::Blocked(CopyProblem::NeedsMissingWal { needs: Some(Lsn(10)), oldest_wal: Some(Lsn(20)) });
    // leader's slot, oldest WAL → decision (configured: database app, plugin pgoutput).
    let table: &[(Option<SourceSlot>, Option<u64>, CopySource)] = &[
        (None, Some(0), CopySource::NotOnLeader),
        (Some(slot("other", "pgoutput", Some(30))), Some(0), CopySource::Mismatch),
        (Some(slot("app", "test_decoding", Some(30))), Some(0), CopySource::Mismatch),
        (Some(SourceSlot { database: None, ..slot("app", "pgoutput", Some(30)) }), Some(0), CopySource::Mismatch),
        (Some(slot("app", "pgoutput", Some(30))), Some(20), CopySource::Copy),
        (Some(slot("app", "pgoutput", Some(30))), None, CopySource::Copy),
        (Some(slot("app", "pgoutput", Some(10))), Some(20), blocked),
        (Some(slot("app", "pgoutput", None)), Some(20), CopySource::NothingToCopy),
    ];
    for (i, (src, oldest, want)) in table.iter().enumerate() {
        assert_eq!(copy_source(src.as_ref(), "app", "pgoutput", oldest.map(Lsn)), *want, "row {i}");
    }
}

#[test]
fn advance_events_from_the_followers_counters() {
    let f = CopyFailure::MissingWal;
    assert_eq!(advance_event(0, 1, Some(&f)), Some(ReadinessEvent::AdvanceSucceeded));
    assert_eq!(advance_event(2, 2, Some(&f)), Some(ReadinessEvent::AdvanceFailed(f.clone())));
    assert_eq!(advance_event(2, 2, None), None);
}
