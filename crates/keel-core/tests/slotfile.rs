//! The slot state file parser against real files from PostgreSQL 15, 16, 17 and 18 (`tests/fixtures/slotfile`,
//! made by `scripts/make-slot-fixtures.sh`, each with the server's own `pg_replication_slots` row in a `.expected`
//! file), and against every kind of damage: flipped bytes, another major's format, truncation, extension, and fuzzing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use keel_core::lsn::Lsn;
use keel_core::slotfile::{
    self, fix_checksum, format_for_major, parse, validate, Expectation, Invalidation, Persistency, SlotFileError,
    SLOT_MAGIC,
};
use proptest::prelude::*;

const MAJORS: [u32; 4] = [15, 16, 17, 18];
const KINDS: [&str; 3] = ["logical", "pgoutput", "physical"];

fn fixture_path(major: u32, kind: &str, ext: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/slotfile/pg{major}_{kind}.{ext}"))
}

fn fixture(major: u32, kind: &str) -> Vec<u8> {
    let path = fixture_path(major, kind, "state");
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `key=value` lines `make-slot-fixtures.sh` recorded from `pg_replication_slots`.
fn expected(major: u32, kind: &str) -> BTreeMap<String, String> {
    let path = fixture_path(major, kind, "expected");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn all_fixtures() -> Vec<(u32, &'static str, Vec<u8>)> {
    MAJORS.iter().flat_map(|&m| KINDS.iter().map(move |&k| (m, k, fixture(m, k)))).collect()
}

fn logical_fixtures() -> Vec<(u32, &'static str, Vec<u8>)> {
    all_fixtures().into_iter().filter(|(_, k, _)| *k != "physical").collect()
}

/// What the primary would say about the fixture's slot.
fn expectation(major: u32, kind: &str) -> Expectation {
    let e = expected(major, kind);
    Expectation {
        major,
        slot_name: e["slot_name"].clone(),
        database_oid: e["datoid"].parse().expect("datoid"),
        plugin: e["plugin"].clone(),
    }
}

fn flag(value: &str) -> bool {
    match value {
        "t" => true,
        "f" => false,
        other => panic!("not a boolean: {other:?}"),
    }
}

#[test]
fn real_files_decode_to_what_the_server_showed() {
    for (major, kind, bytes) in all_fixtures() {
        let e = expected(major, kind);
        assert_eq!(e["major"], major.to_string());
        let slot = parse(&bytes, major).unwrap_or_else(|err| panic!("pg{major} {kind}: {err}"));
        let format = format_for_major(major).expect("known major");
        assert_eq!(bytes.len(), 200, "pg{major} {kind}");
        assert_eq!((slot.magic, slot.version, slot.length), (SLOT_MAGIC, format.version, format.length));
        assert_eq!(slot.major, major);
        assert_eq!(slot.name, e["slot_name"]);
        assert_eq!(slot.plugin, e["plugin"]);
        assert_eq!(slot.database.to_string(), e["datoid"]);
        assert_eq!(slot.is_logical(), e["slot_type"] == "logical");
        assert_eq!(slot.persistency, Persistency::Persistent);
        assert!(!flag(&e["temporary"]));
        assert_eq!(slot.xmin.to_string(), e["xmin"]);
        assert_eq!(slot.catalog_xmin.to_string(), e["catalog_xmin"]);
        assert_eq!(slot.restart_lsn, e["restart_lsn"].parse::<Lsn>().expect("lsn"), "pg{major} {kind}");
        assert_eq!(slot.confirmed_flush, e["confirmed_flush_lsn"].parse::<Lsn>().expect("lsn"), "pg{major} {kind}");
        assert_eq!(slot.two_phase, Some(flag(&e["two_phase"])));
        assert_eq!(slot.invalidation, Invalidation::None);
        assert_eq!(slot.initial_consistent_point, None);
        assert!(slot.two_phase_at.is_some());
        if major >= 16 {
            assert_eq!((slot.invalidated_at, slot.invalidated_cause), (None, Some(0)));
        } else {
            assert_eq!((slot.invalidated_at, slot.invalidated_cause), (Some(Lsn::ZERO), None));
        }
        if major >= 17 {
            assert_eq!(slot.failover, Some(flag(&e["failover"])));
            assert_eq!(slot.synced, Some(flag(&e["synced"])));
        } else {
            assert_eq!((slot.failover, slot.synced), (None, None));
        }
        if slot.is_logical() {
            assert!(slot.catalog_xmin != 0 && slot.restart_lsn <= slot.confirmed_flush);
        } else {
            assert!(slot.restart_lsn > Lsn::ZERO && slot.confirmed_flush == Lsn::ZERO);
        }
    }
    // The test_decoding slots were made with two_phase (and failover on 17+), the pgoutput ones without.
    assert_eq!(parse(&fixture(15, "logical"), 15).unwrap().two_phase, Some(true));
    // 16's build has no test_decoding: its `logical` slot is a pgoutput one, also with two_phase.
    assert_eq!(parse(&fixture(16, "logical"), 16).unwrap().two_phase, Some(true));
    assert_eq!(parse(&fixture(17, "logical"), 17).unwrap().failover, Some(true));
    assert_eq!(parse(&fixture(18, "pgoutput"), 18).unwrap().failover, Some(false));
}

#[test]
fn real_logical_files_validate_against_the_primarys_slot() {
    for (major, kind, bytes) in logical_fixtures() {
        let slot = validate(&bytes, &expectation(major, kind)).unwrap_or_else(|err| panic!("pg{major} {kind}: {err}"));
        assert_eq!(slot.name, format!("keel_{kind}"));
    }
}

#[test]
fn physical_slot_files_are_refused() {
    for major in MAJORS {
        let err = validate(&fixture(major, "physical"), &expectation(major, "physical")).expect_err("physical");
        assert!(matches!(err, SlotFileError::NotLogical { .. }), "{err}");
        assert!(err.to_string().contains("physical slot"), "{err}");
    }
}

#[test]
fn another_slot_database_or_plugin_is_refused() {
    for (major, kind, bytes) in logical_fixtures() {
        let base = expectation(major, kind);
        let err = validate(&bytes, &Expectation { slot_name: "other".into(), ..base.clone() }).expect_err("name");
        assert_eq!(err.to_string(), format!("the file is for slot \"keel_{kind}\", not \"other\""));
        let err = validate(&bytes, &Expectation { database_oid: 16384, ..base.clone() }).expect_err("database");
        assert!(matches!(err, SlotFileError::DatabaseMismatch { found: 5, expected: 16384, .. }), "{err}");
        assert!(err.to_string().contains("database oid 5, but the primary's slot is in database oid 16384"), "{err}");
        let err = validate(&bytes, &Expectation { plugin: "wal2json".into(), ..base }).expect_err("plugin");
        assert!(err.to_string().contains("but the primary's slot uses \"wal2json\""), "{err}");
    }
}

#[test]
fn a_flipped_byte_anywhere_is_refused() {
    for (major, kind, bytes) in all_fixtures() {
        for at in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xFF] {
                let mut bad = bytes.clone();
                bad[at] ^= mask;
                let err = parse(&bad, major).expect_err("a flipped byte must be refused");
                let text = err.to_string();
                match at {
                    0..=3 => assert!(matches!(err, SlotFileError::BadMagic { .. }), "{text}"),
                    8..=11 => {
                        assert!(matches!(err, SlotFileError::VersionMismatch { checksum_ok: false, .. }), "{text}");
                        assert!(text.contains("checksum does not match either"), "{text}");
                    }
                    12..=15 => {
                        assert!(matches!(err, SlotFileError::LengthMismatch { checksum_ok: false, .. }), "{text}")
                    }
                    // The checksum itself (4..8), name, oids, xids, LSNs, plugin, flags and padding: all covered.
                    _ => {
                        assert!(
                            matches!(err, SlotFileError::ChecksumMismatch { .. }),
                            "pg{major} {kind} @{at}: {text}"
                        );
                        assert!(text.starts_with("checksum mismatch: file says 0x"), "{text}");
                        assert!(text.ends_with("the file is corrupt or truncated"), "{text}");
                    }
                }
            }
        }
    }
}

#[test]
fn checksum_error_names_both_values() {
    let mut bad = fixture(15, "logical");
    bad[96] ^= 1; // restart_lsn
    let stored = u32::from_le_bytes(bad[4..8].try_into().unwrap());
    let computed = slotfile::compute_checksum(&bad);
    assert_ne!(stored, computed);
    assert_eq!(
        parse(&bad, 15).unwrap_err().to_string(),
        format!(
            "checksum mismatch: file says 0x{stored:08X}, computed 0x{computed:08X}; the file is corrupt or truncated"
        )
    );
    // The stored checksum is exactly PostgreSQL's: recomputing over an untouched file gives the same bytes.
    for (_, _, bytes) in all_fixtures() {
        let mut fixed = bytes.clone();
        fix_checksum(&mut fixed);
        assert_eq!(fixed, bytes);
    }
}

#[test]
fn another_majors_format_is_refused() {
    let from15 = fixture(15, "logical");
    let err = validate(&from15, &Expectation { major: 18, ..expectation(15, "logical") }).expect_err("15 on 18");
    assert_eq!(
        err.to_string(),
        "format version 2 is PostgreSQL 10–15's, but this standby runs PostgreSQL 18, which reads version 5 only (it \
         would PANIC with \"unsupported version 2\")"
    );
    let err = parse(&fixture(18, "logical"), 15).expect_err("18 on 15");
    assert!(matches!(err, SlotFileError::VersionMismatch { found: 5, expected: 2, major: 15, checksum_ok: true }));
    assert!(err.to_string().starts_with("format version 5 is PostgreSQL 17–18's, but this standby runs PostgreSQL 15"));
    let err = parse(&fixture(17, "logical"), 16).expect_err("17 on 16");
    assert!(err.to_string().contains("reads version 3 only"), "{err}");
    let err = parse(&from15, 16).expect_err("15 on 16");
    assert!(matches!(err, SlotFileError::VersionMismatch { found: 2, expected: 3, .. }), "{err}");
    // A real 16 file (format version 3) on its neighbours, and theirs on 16.
    let from16 = fixture(16, "logical");
    let err = parse(&from16, 15).expect_err("16 on 15");
    assert!(matches!(err, SlotFileError::VersionMismatch { found: 3, expected: 2, major: 15, checksum_ok: true }));
    assert!(err.to_string().starts_with("format version 3 is PostgreSQL 16's"), "{err}");
    let err = parse(&from16, 17).expect_err("16 on 17");
    assert!(matches!(err, SlotFileError::VersionMismatch { found: 3, expected: 5, major: 17, checksum_ok: true }));
    let err = parse(&fixture(18, "pgoutput"), 16).expect_err("18 on 16");
    assert!(matches!(err, SlotFileError::VersionMismatch { found: 5, expected: 3, major: 16, checksum_ok: true }));
    let err = parse(&from15, 12).expect_err("12 is not supported");
    assert!(err.to_string().contains("PostgreSQL 12 is not supported"), "{err}");
    // Majors sharing a format read each other's files (as PostgreSQL would).
    assert!(validate(&fixture(17, "logical"), &Expectation { major: 18, ..expectation(17, "logical") }).is_ok());
    assert!(validate(&fixture(18, "logical"), &Expectation { major: 17, ..expectation(18, "logical") }).is_ok());
    let as14 = parse(&from15, 14).expect("14 and 15 share a format");
    assert_eq!(as14.initial_consistent_point, parse(&from15, 15).unwrap().two_phase_at);

    // A version rewritten with a matching checksum (what a buggy writer might do) is still refused.
    let mut v3 = from15.clone();
    v3[8..12].copy_from_slice(&3u32.to_le_bytes());
    fix_checksum(&mut v3);
    let err = parse(&v3, 15).expect_err("version 3 on 15");
    assert!(matches!(err, SlotFileError::VersionMismatch { found: 3, checksum_ok: true, .. }), "{err}");
    assert!(err.to_string().contains("format version 3 is PostgreSQL 16's"), "{err}");
    let mut odd = from15;
    odd[12..16].copy_from_slice(&176u32.to_le_bytes());
    odd.truncate(16 + 176);
    fix_checksum(&mut odd);
    let err = parse(&odd, 15).expect_err("a length of 176");
    assert_eq!(
        err.to_string(),
        "the slot data length is 176 bytes, but PostgreSQL 15 expects exactly 184 (it would PANIC with \"corrupted \
         length 176\")"
    );
}

#[test]
fn every_truncation_is_refused() {
    for (major, kind, bytes) in all_fixtures() {
        for len in 0..bytes.len() {
            let err = parse(&bytes[..len], major).expect_err("truncated");
            assert!(matches!(err, SlotFileError::Truncated { .. }), "pg{major} {kind} [..{len}]: {err}");
            assert!(err.to_string().contains("it is truncated"), "{err}");
        }
    }
    assert_eq!(
        parse(&fixture(18, "logical")[..150], 18).unwrap_err().to_string(),
        "the file is 150 bytes, shorter than 200 (header plus slot data): it is truncated; PostgreSQL would refuse it \
         (\"could not read file\")"
    );
}

#[test]
fn extended_files_are_refused() {
    for (major, kind, bytes) in all_fixtures() {
        for extra in [&[0u8][..], &[0; 8], &[0xAB; 100]] {
            let mut long = bytes.clone();
            long.extend_from_slice(extra);
            let err = parse(&long, major).expect_err("extended");
            assert!(matches!(err, SlotFileError::Extended { .. }), "pg{major} {kind} +{}: {err}", extra.len());
        }
    }
    let mut long = fixture(17, "logical");
    long.push(0);
    assert!(parse(&long, 17).unwrap_err().to_string().starts_with("the file is 201 bytes, 1 more than the 200"));
}

/// A real file with some bytes rewritten and the checksum fixed: what only a buggy writer could produce.
fn rewritten(major: u32, kind: &str, at: usize, new: &[u8]) -> Vec<u8> {
    let mut file = fixture(major, kind);
    file[at..at + new.len()].copy_from_slice(new);
    fix_checksum(&mut file);
    file
}

#[test]
fn bad_state_is_refused_even_with_a_good_checksum() {
    let check = |file: Vec<u8>, major: u32, kind: &str, want: &str| {
        let err = validate(&file, &expectation(major, kind)).expect_err(want);
        assert!(err.to_string().contains(want), "pg{major} {kind}: {err} does not say {want:?}");
        err
    };
    // Persistency at 84.
    check(rewritten(17, "logical", 84, &2u32.to_le_bytes()), 17, "logical", "is temporary: PostgreSQL drops");
    check(rewritten(15, "logical", 84, &1u32.to_le_bytes()), 15, "logical", "is ephemeral");
    // Invalidation: 15's invalidated_at, 16+'s cause (a sequence in 17, bit flags in 18).
    let err = check(rewritten(15, "pgoutput", 104, &0x0150_0000u64.to_le_bytes()), 15, "pgoutput", "was invalidated");
    assert!(err.to_string().contains("(wal_removed (invalidated_at 0/1500000))"), "{err}");
    check(rewritten(17, "logical", 104, &3u32.to_le_bytes()), 17, "logical", "(wal_level_insufficient)");
    check(rewritten(18, "logical", 104, &8u32.to_le_bytes()), 18, "logical", "(idle_timeout)");
    check(rewritten(18, "logical", 104, &2u32.to_le_bytes()), 18, "logical", "(rows_removed)");
    check(rewritten(18, "logical", 104, &3u32.to_le_bytes()), 18, "logical", "(unknown cause 3)");
    // Names.
    check(rewritten(18, "logical", 16, b"Keel"), 18, "logical", "\"Keel_logical\" is not 1 to 63 characters");
    check(rewritten(18, "logical", 16, &[b'a'; 64]), 18, "logical", "slot name field is not a valid name: no NUL");
    check(rewritten(15, "logical", 129, &[b'p'; 64]), 15, "logical", "plugin field is not a valid name: no NUL");
    check(
        rewritten(15, "logical", 129, &[0xC3, 0x28, 0]),
        15,
        "logical",
        "plugin field is not a valid name: not UTF-8",
    );
    check(rewritten(17, "logical", 129, &[0]), 17, "logical", "is logical but has no output plugin");
    // Flags: PostgreSQL only writes 0 or 1.
    check(rewritten(15, "logical", 128, &[2]), 15, "logical", "the two_phase flag is the byte 2");
    check(rewritten(17, "logical", 193, &[7]), 17, "logical", "the synced flag is the byte 7");
    check(rewritten(18, "logical", 194, &[0xFF]), 18, "logical", "the failover flag is the byte 255");
    // Padding is not required to be zero (PostgreSQL does not check it) once the checksum covers it.
    let padded = rewritten(18, "logical", 195, &[0xEE; 5]);
    assert!(validate(&padded, &expectation(18, "logical")).is_ok());
    let padded = rewritten(15, "logical", 108, &[0xEE; 4]);
    assert!(parse(&padded, 15).is_ok());
}

#[test]
fn wrong_magic_says_what_it_is() {
    let mut bad = fixture(15, "logical");
    bad[0..4].copy_from_slice(b"%PDF");
    assert_eq!(
        parse(&bad, 15).unwrap_err().to_string(),
        "wrong magic number 0x46445025 instead of 0x01051CA1: this is not a replication slot state file"
    );
    assert!(parse(&[], 18).unwrap_err().to_string().contains("shorter than 16 (the 16-byte header)"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), major in 10u32..20) {
        let _ = parse(&bytes, major);
        let _ = validate(&bytes, &Expectation { major, slot_name: "s".into(), database_oid: 5, plugin: "p".into() });
        let _ = slotfile::compute_checksum(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..260),
        major in 13u32..19,
        fix in any::<bool>(),
    ) {
        let format = format_for_major(major).unwrap();
        let mut file = Vec::new();
        file.extend_from_slice(&SLOT_MAGIC.to_le_bytes());
        file.extend_from_slice(&[0; 4]);
        file.extend_from_slice(&format.version.to_le_bytes());
        file.extend_from_slice(&format.length.to_le_bytes());
        file.extend_from_slice(&body);
        if fix {
            fix_checksum(&mut file);
        }
        let result = parse(&file, major);
        if file.len() != format.file_len() {
            prop_assert!(result.is_err());
        }
        if !fix && result.is_ok() {
            // Only a zero checksum that happens to be right could pass.
            prop_assert_eq!(slotfile::compute_checksum(&file), 0);
        }
    }

    #[test]
    fn mutated_real_files_never_panic(
        which in 0usize..9,
        edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..8),
        cut in proptest::option::of(0usize..220),
        fix in any::<bool>(),
        major in 12u32..20,
    ) {
        let (m, kind, mut file) = all_fixtures().swap_remove(which);
        for (at, byte) in edits {
            if let Some(b) = file.get_mut(at) { *b = byte; }
        }
        match cut {
            Some(len) if len < file.len() => file.truncate(len),
            Some(len) => file.resize(len, 0),
            None => {}
        }
        if fix {
            fix_checksum(&mut file);
        }
        let _ = parse(&file, major);
        let result = validate(&file, &Expectation { major, ..expectation(m, kind) });
        if let Ok(slot) = result {
            prop_assert_eq!(&slot.name, &format!("keel_{kind}"));
            prop_assert!(slot.is_logical());
            prop_assert_eq!(slot.invalidation, Invalidation::None);
        }
    }
}
