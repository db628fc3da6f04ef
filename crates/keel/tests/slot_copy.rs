//! Copying a logical slot to a real standby: a primary with a test_decoding slot (pgoutput where the build has no
//! test_decoding, as 16 from the pgserver wheel), a streaming replica from a base
//! backup, the slot's state file read over SQL with `pg_read_binary_file`, validated and installed into the
//! stopped replica with `write_slot_file`; the replica starts with the slot at the primary's position and
//! `pg_replication_slot_advance` moves it once the replica has replayed past the primary's new position.
//!
//! Versions: `KEEL_TEST_PG_VERSIONS=15,16,17,18` (default: 15, plus 16 and 18 when installed), as in
//! `tests/postgres.rs`. As root every PostgreSQL program runs as the `postgres` OS user. Every server the test
//! starts is stopped (`pg_ctl stop -m immediate`) by a drop guard, also when an assertion fails.

use std::path::Path;
use std::time::{Duration, Instant};

use keel::postgres::bins::PgBinaries;
use keel::postgres::conf::{self, RecoveryConf, ServerConf, WalLevel};
use keel::postgres::observe::{self, Session};
use keel::postgres::pg_ctl::{InitdbOption, InitdbParams, PgCtl, StopMode};
use keel::postgres::roles::{self, RoleKind, RoleSpec};
use keel::postgres::slot_file::{write_slot_file, CopyError};
use keel::postgres::ConnParams;
use keel_core::lsn::Lsn;
use keel_core::slotfile::Expectation;

mod common;
mod slotkit;
use common::{free_port, hba, run_as, scratch, versions, wait_for, Guard};
use slotkit::Plugin;

/// The shared small server, with logical decoding and feedback for the copied slot.
fn server_conf(socket_dir: &Path, port: u16, recovery: Option<RecoveryConf>) -> ServerConf {
    let mut conf = common::server_conf(socket_dir, port, recovery);
    conf.wal_level = WalLevel::Logical;
    conf.hot_standby_feedback = true;
    conf
}

const SUPERUSER: &str = "postgres";
const SUPERUSER_PASSWORD: &str = "super secret";
const REPLICATION_USER: &str = "replicator";
const REPLICATION_PASSWORD: &str = "repl pass";
const SLOT: &str = "copied";
const TIMEOUT: Duration = Duration::from_secs(60);

async fn connect(port: u16) -> Session {
    let params = ConnParams::new("127.0.0.1", port, SUPERUSER).with_password(SUPERUSER_PASSWORD);
    observe::connect(&params, Duration::from_secs(30)).await.expect("connect as the superuser")
}

async fn text(session: &Session, sql: &str) -> String {
    let rows = session.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let row = rows.first().unwrap_or_else(|| panic!("{sql}: no row"));
    row.get::<_, Option<String>>(0).unwrap_or_default()
}

async fn lsn(session: &Session, sql: &str) -> Lsn {
    text(session, sql).await.parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The slot as `pg_replication_slots` shows it: plugin, datoid, confirmed_flush_lsn, restart_lsn, temporary.
async fn slot_row(session: &Session) -> Option<(String, u32, Lsn, Lsn, bool)> {
    let rows = session
        .query(
            "SELECT plugin::text, datoid::int8, confirmed_flush_lsn::text, restart_lsn::text, temporary \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
        .expect("read pg_replication_slots");
    let row = rows.first()?;
    let datoid: i64 = row.get(1);
    let confirmed: String = row.get(2);
    let restart: String = row.get(3);
    Some((
        row.get(0),
        u32::try_from(datoid).expect("an oid"),
        confirmed.parse().expect("confirmed_flush_lsn"),
        restart.parse().expect("restart_lsn"),
        row.get(4),
    ))
}

async fn wait_replayed(replica_port: u16, target: Lsn, what: &str) {
    wait_for(what, TIMEOUT, || async {
        let replica = connect(replica_port).await;
        let replayed: Lsn = text(&replica, "SELECT pg_last_wal_replay_lsn()::text").await.parse().ok()?;
        (replayed >= target).then_some(())
    })
    .await
}

async fn copy_slot(major: u32, bin_dir: &Path) {
    let bins = PgBinaries::find(Some(bin_dir)).expect("find the binaries");
    assert_eq!(bins.major, major);
    let run_as = run_as();
    let dir = scratch("keel-slot-copy");
    let root = dir.path();
    let mut guard = Guard::default();

    // Primary with wal_level=logical and a physical slot for the replica.
    let primary = PgCtl::new(bins.clone(), run_as.clone(), root.join("primary"));
    guard.0.push(primary.clone());
    let options = InitdbOption::list_from_json(&serde_json::json!(["no-sync", {"encoding": "UTF8"}, {"locale": "C"}]))
        .expect("initdb options");
    let params =
        InitdbParams { superuser: SUPERUSER.into(), superuser_password: Some(SUPERUSER_PASSWORD.into()), options };
    primary.initdb(&params, TIMEOUT).await.expect("initdb");
    let port1 = free_port();
    conf::write_config(&primary.data_dir, &server_conf(root, port1, None), Some(&hba()), &run_as).expect("conf");
    primary.start(true, TIMEOUT).await.expect("start the primary");
    let session = connect(port1).await;
    let replicator = RoleSpec {
        name: REPLICATION_USER.into(),
        password: Some(REPLICATION_PASSWORD.into()),
        kind: RoleKind::Replication,
    };
    roles::ensure_roles(&session, &[replicator]).await.expect("create the replication role");
    session.execute_script("SELECT pg_create_physical_replication_slot('replica1')").await.expect("physical slot");

    // A streaming replica, started before the logical slot exists, so its WAL covers the slot's restart_lsn.
    let replica = PgCtl::new(bins.clone(), run_as.clone(), root.join("replica"));
    guard.0.push(replica.clone());
    let source = ConnParams::new("127.0.0.1", port1, REPLICATION_USER).with_password(REPLICATION_PASSWORD);
    replica.basebackup(&source, TIMEOUT).await.expect("pg_basebackup");
    let port2 = free_port();
    let recovery = RecoveryConf {
        primary: Some(source.clone().with_application_name("replica1")),
        primary_slot_name: Some("replica1".into()),
    };
    conf::write_config(&replica.data_dir, &server_conf(root, port2, Some(recovery)), Some(&hba()), &run_as)
        .expect("replica conf");
    replica.start(true, TIMEOUT).await.expect("start the replica");

    // The logical slot, some changes, a checkpoint so the file is current.
    // Separate statements: a simple query with several runs them in one transaction, and a slot cannot be
    // created in a transaction that has written.
    let plugin = Plugin::text_or_pgoutput(bin_dir, "copied_pub");
    for sql in [
        "CREATE TABLE t (x int)".to_string(),
        plugin.publication_sql("TABLE t").unwrap_or_else(|| "SELECT 1".into()),
        "INSERT INTO t SELECT generate_series(1, 100)".to_string(),
        format!("SELECT pg_create_logical_replication_slot('{SLOT}', '{}')", plugin.name()),
        "INSERT INTO t SELECT generate_series(101, 200)".to_string(),
        "CHECKPOINT".to_string(),
    ] {
        session.execute_script(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let (plugin_name, datoid, confirmed, restart, temporary) =
        slot_row(&session).await.expect("the slot on the primary");
    assert_eq!((plugin_name.as_str(), temporary), (plugin.name(), false));
    let rows = session
        .query("SELECT pg_read_binary_file($1)", &[&format!("pg_replslot/{SLOT}/state")])
        .await
        .expect("pg_read_binary_file");
    let bytes: Vec<u8> = rows[0].get(0);
    assert_eq!(bytes.len(), 200);
    let flushed = lsn(&session, "SELECT pg_current_wal_flush_lsn()::text").await;
    wait_replayed(port2, flushed, "the replica to replay the slot's creation").await;
    assert!(replica.stop(StopMode::Fast, TIMEOUT).await.expect("stop the replica"));

    // Validate and install it into the stopped replica.
    let expectation = Expectation { major, slot_name: SLOT.into(), database_oid: datoid, plugin: plugin_name.clone() };
    let owner = Some(run_as.owner().expect("the PostgreSQL user's ids"));
    let wrong = Expectation { major: if major == 15 { 18 } else { 15 }, ..expectation.clone() };
    let err = write_slot_file(&replica.data_dir, SLOT, &bytes, &wrong, owner, false).expect_err("another major");
    assert!(matches!(err, CopyError::Invalid { .. }), "{err}");
    let mut corrupt = bytes.clone();
    corrupt[150] ^= 0x20;
    let err = write_slot_file(&replica.data_dir, SLOT, &corrupt, &expectation, owner, false).expect_err("corrupt");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(!replica.data_dir.join("pg_replslot").join(SLOT).exists());
    let slot = write_slot_file(&replica.data_dir, SLOT, &bytes, &expectation, owner, false).expect("install");
    assert_eq!((slot.confirmed_flush, slot.restart_lsn, slot.database), (confirmed, restart, datoid));

    // The replica starts with the slot where the primary had it.
    replica.start(true, TIMEOUT).await.expect("start the replica with the copied slot");
    let standby = connect(port2).await;
    let on_replica = slot_row(&standby).await.expect("the copied slot on the replica");
    assert_eq!(on_replica, (plugin_name, datoid, confirmed, restart, false));

    // Once the replica's feedback holds the primary's catalog_xmin, the primary's slot may move on.
    wait_for("the replica's feedback to reach replica1's catalog_xmin", TIMEOUT, || async {
        let xmin =
            text(&session, "SELECT catalog_xmin::text FROM pg_replication_slots WHERE slot_name = 'replica1'").await;
        (!xmin.is_empty()).then_some(())
    })
    .await;
    session.execute_script("INSERT INTO t SELECT generate_series(201, 300)").await.expect("write on the primary");
    session.execute_script(&plugin.consume_sql(SLOT)).await.expect("consume the primary's slot");
    let target = lsn(
        &session,
        &format!("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
    )
    .await;
    assert!(target > confirmed);
    wait_replayed(port2, target, "the replica to replay past the primary's confirmed_flush").await;
    let end =
        lsn(&standby, &format!("SELECT end_lsn::text FROM pg_replication_slot_advance('{SLOT}', '{target}')")).await;
    assert_eq!(end, target);
    let (_, _, advanced, _, _) = slot_row(&standby).await.expect("the slot after the advance");
    assert_eq!(advanced, target);

    // Installing it again needs replace, and only while the replica is stopped.
    let err = write_slot_file(&replica.data_dir, SLOT, &bytes, &expectation, owner, true).expect_err("running");
    assert!(matches!(err, CopyError::Running { .. }), "{err}");
    drop(standby);
    drop(session);
    assert!(replica.stop(StopMode::Fast, TIMEOUT).await.expect("stop the replica"));
    let err = write_slot_file(&replica.data_dir, SLOT, &bytes, &expectation, owner, false).expect_err("exists");
    assert!(matches!(err, CopyError::AlreadyExists { .. }), "{err}");
    assert!(primary.stop(StopMode::Fast, TIMEOUT).await.expect("stop the primary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_slot_loads_on_the_replica_and_advances() {
    for (major, dir) in versions() {
        eprintln!("PostgreSQL {major} from {}", dir.display());
        let start = Instant::now();
        copy_slot(major, &dir).await;
        eprintln!("PostgreSQL {major}: {:?}", start.elapsed());
    }
}
