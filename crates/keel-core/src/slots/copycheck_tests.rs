use super::*;
use crate::time::Millis;

fn ctx<'a>(code: Option<&'a str>, connected: &'a str, major: u32, target: u64, position: u64) -> FailureContext<'a> {
    FailureContext {
        sqlstate: code,
        timed_out: false,
        connected_database: connected,
        slot_database: Some("app"),
        pg_major: major,
        target: Some(Lsn(target)),
        position: Some(Lsn(position)),
    }
}

/// SQLSTATE, connected database, major, target, position → classification and remedy.
type Row = (Option<&'static str>, &'static str, u32, u64, u64, CopyFailure, Remedy);

#[test]
fn failures_are_classified_by_sqlstate() {
    use CopyFailure::*;
    let table: &[Row] = &[
        (Some("58P01"), "app", 15, 200, 100, MissingWal, Remedy::Recopy),
        (Some("3D000"), "app", 15, 200, 100, DatabaseMissing, Remedy::Report),
        // PostgreSQL 16 and older refuse another database's slot: never a re-copy.
        (Some("55000"), "postgres", 15, 200, 100, WrongDatabase, Remedy::Report),
        (Some("55000"), "postgres", 16, 200, 100, WrongDatabase, Remedy::Report),
        // 17 skips that check: a 55000 there is about the slot itself.
        (Some("55000"), "postgres", 17, 200, 100, Invalidated, Remedy::Recopy),
        (Some("55000"), "app", 15, 200, 100, Invalidated, Remedy::Recopy),
        // "minimum is": the target is behind the copy; not a broken copy.
        (Some("55000"), "app", 15, 100, 200, TargetBehindCopy, Remedy::Retry),
        (Some("42704"), "app", 15, 200, 100, SlotMissing, Remedy::Recopy),
        (Some("55006"), "app", 15, 200, 100, SlotActive, Remedy::Retry),
        (Some("42501"), "app", 15, 200, 100, PermissionDenied, Remedy::Report),
        (Some("57014"), "app", 15, 200, 100, Timeout, Remedy::Retry),
        (Some("57P01"), "app", 15, 200, 100, Connection, Remedy::Retry),
        (Some("08006"), "app", 15, 200, 100, Connection, Remedy::Retry),
        (None, "app", 15, 200, 100, Connection, Remedy::Retry),
        (Some("XX000"), "app", 15, 200, 100, Other { sqlstate: "XX000".into() }, Remedy::Retry),
    ];
    for (code, db, major, target, pos, want, remedy) in table {
        let got = classify(&ctx(*code, db, *major, *target, *pos));
        assert_eq!(&got, want, "{code:?} in {db} on {major}");
        assert_eq!(got.remedy(), *remedy, "{code:?}");
    }
    let timed_out = FailureContext { timed_out: true, ..ctx(Some("58P01"), "app", 15, 200, 100) };
    assert_eq!(classify(&timed_out), Timeout);
    // A physical slot has no database: 55000 is about the slot.
    let physical = FailureContext { slot_database: None, ..ctx(Some("55000"), "postgres", 15, 200, 100) };
    assert_eq!(classify(&physical), Invalidated);
}

fn pos(restart: u64, confirmed: u64) -> SlotPositions {
    SlotPositions { restart_lsn: Some(Lsn(restart)), confirmed_flush_lsn: Some(Lsn(confirmed)) }
}

fn input(copy: Option<SlotPositions>, primary: PrimarySlot, oldest: Option<u64>) -> CopyCheckInput<'static> {
    CopyCheckInput {
        database: "app",
        copy,
        primary,
        oldest_wal: oldest.map(Lsn),
        made_here: true,
        rebuilt: None,
        failure: None,
    }
}

#[test]
fn stale_copies_are_dropped_and_copied_again() {
    use PrimarySlot::*;
    let primary = Known(pos(500, 800));
    // In step.
    assert_eq!(check_copy(&input(Some(pos(400, 700)), primary, Some(100))), CopyVerdict::Fine);
    // confirmed_flush ahead of the primary's: an old primary's own slot after it rejoined.
    let ahead = CopyProblem::AheadOfPrimary { position: Position::ConfirmedFlush, copy: Lsn(900), primary: Lsn(800) };
    assert_eq!(check_copy(&input(Some(pos(450, 900)), primary, Some(100))), CopyVerdict::Recopy(ahead.clone()));
    // restart_lsn ahead: fine for a copy made here (local decoding moves it), stale for one found here.
    assert_eq!(check_copy(&input(Some(pos(600, 800)), primary, Some(100))), CopyVerdict::Fine);
    let found = CopyCheckInput { made_here: false, ..input(Some(pos(600, 800)), primary, Some(100)) };
    assert_eq!(
        check_copy(&found),
        CopyVerdict::Recopy(CopyProblem::AheadOfPrimary {
            position: Position::RestartLsn,
            copy: Lsn(600),
            primary: Lsn(500)
        })
    );
    // Rewound or re-cloned since the copy was made: stale whatever its positions.
    for cause in [Rebuild::Rewind, Rebuild::Reclone] {
        let rebuilt = CopyCheckInput { rebuilt: Some(cause), ..input(Some(pos(400, 700)), primary, Some(100)) };
        assert_eq!(check_copy(&rebuilt), CopyVerdict::Recopy(CopyProblem::Stale { cause }));
    }
    // A stale copy that cannot be replaced yet is dropped anyway and stays blocked.
    let blocked = input(Some(pos(450, 900)), primary, Some(600));
    assert_eq!(check_copy(&blocked), CopyVerdict::Blocked { problem: ahead, drop: true });
    let rebuilt = CopyCheckInput { rebuilt: Some(Rebuild::Rewind), ..input(Some(pos(400, 700)), Missing, Some(100)) };
    assert_eq!(
        check_copy(&rebuilt),
        CopyVerdict::Blocked { problem: CopyProblem::Stale { cause: Rebuild::Rewind }, drop: true }
    );
    // Unknown primary: no position comparison.
    assert_eq!(check_copy(&input(Some(pos(450, 900)), Unknown, Some(100))), CopyVerdict::Fine);
}

#[test]
fn copies_needing_missing_wal_wait_for_the_primary() {
    use PrimarySlot::*;
    // The copy's restart_lsn is older than this node's oldest WAL; the primary's slot has moved past it: re-copy.
    let needs = CopyProblem::NeedsMissingWal { needs: Some(Lsn(100)), oldest_wal: Some(Lsn(300)) };
    assert_eq!(check_copy(&input(Some(pos(100, 150)), Known(pos(400, 800)), Some(300))), CopyVerdict::Recopy(needs));
    // The primary's slot still needs WAL this node lacks: blocked, naming what the primary's slot needs.
    let primary_needs = CopyProblem::NeedsMissingWal { needs: Some(Lsn(120)), oldest_wal: Some(Lsn(300)) };
    assert_eq!(
        check_copy(&input(Some(pos(100, 150)), Known(pos(120, 800)), Some(300))),
        CopyVerdict::Blocked { problem: primary_needs.clone(), drop: false }
    );
    // No copy yet: copying one now would be born broken, so it is withheld.
    assert_eq!(
        check_copy(&input(None, Known(pos(120, 800)), Some(300))),
        CopyVerdict::Blocked { problem: primary_needs, drop: false }
    );
    assert_eq!(check_copy(&input(None, Known(pos(400, 800)), Some(300))), CopyVerdict::Fine);
    assert_eq!(check_copy(&input(None, Known(pos(120, 800)), None)), CopyVerdict::Fine);
    // 58P01 from an advance, oldest WAL unknown: a re-copy may be tried (the backoff bounds it).
    let failed = CopyCheckInput {
        failure: Some(CopyFailure::MissingWal),
        ..input(Some(pos(100, 150)), Known(pos(400, 800)), None)
    };
    assert_eq!(
        check_copy(&failed),
        CopyVerdict::Recopy(CopyProblem::NeedsMissingWal { needs: Some(Lsn(100)), oldest_wal: None })
    );
}

#[test]
fn failures_a_copy_cannot_fix_are_reported_not_repeated() {
    use PrimarySlot::*;
    let with = |failure| CopyCheckInput {
        failure: Some(failure),
        ..input(Some(pos(400, 700)), Known(pos(500, 800)), Some(100))
    };
    let db = || CopyProblem::DatabaseMissing { database: "app".into() };
    assert_eq!(check_copy(&with(CopyFailure::DatabaseMissing)), CopyVerdict::Blocked { problem: db(), drop: false });
    assert!(matches!(
        check_copy(&with(CopyFailure::WrongDatabase)),
        CopyVerdict::Blocked { problem: CopyProblem::WrongDatabase { .. }, drop: false }
    ));
    assert_eq!(check_copy(&with(CopyFailure::Invalidated)), CopyVerdict::Recopy(CopyProblem::Invalidated));
    for transient in
        [CopyFailure::Timeout, CopyFailure::Connection, CopyFailure::SlotActive, CopyFailure::TargetBehindCopy]
    {
        assert_eq!(check_copy(&with(transient)), CopyVerdict::Fine);
    }
}

#[test]
fn recopies_back_off() {
    let h = |attempts, last| RecopyHistory { attempts, last: Some(Millis::from_secs(last)) };
    assert!(recopy_due(&RecopyHistory::default(), Millis(0)));
    assert!(!recopy_due(&h(1, 100), Millis::from_secs(105)));
    assert!(recopy_due(&h(1, 100), Millis::from_secs(110)));
    assert!(!recopy_due(&h(3, 100), Millis::from_secs(139)));
    assert!(recopy_due(&h(3, 100), Millis::from_secs(140)));
    assert_eq!(recopy_wait(40), RECOPY_MAX_WAIT);
    assert_eq!(recopy_wait(0), Millis(0));
}

#[test]
fn problems_have_codes_and_say_what_to_do() {
    let p = CopyProblem::DatabaseMissing { database: "app".into() };
    assert_eq!(p.code(), "database_missing");
    assert!(p.to_string().contains("\"app\""), "{p}");
    let w = CopyProblem::NeedsMissingWal { needs: Some(Lsn(0x1000000)), oldest_wal: Some(Lsn(0x3000000)) };
    assert!(w.to_string().contains("0/1000000") && w.to_string().contains("0/3000000"), "{w}");
}
