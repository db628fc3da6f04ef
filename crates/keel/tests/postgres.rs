//! The PostgreSQL module against real servers: initdb, configuration, start, roles, observation, a streaming
//! replica from a base backup, promotion, pg_rewind of the old primary, stop; plus the clear errors for a port in
//! use and a data directory owned by the wrong user.
//!
//! Versions: `KEEL_TEST_PG_VERSIONS=15,16,18` (default: 15, plus 16 and 18 when installed). Version 15 is
//! Debian's (`/usr/lib/postgresql/15/bin`), others live in `/opt/keel/pg/<major>/bin` (`scripts/setup.sh`).
//! As root (CI, this machine) every PostgreSQL program runs as the `postgres` OS user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use keel::postgres::bins::PgBinaries;
use keel::postgres::conf::{self, ChangeKind, RecoveryConf};
use keel::postgres::datadir::{self, ClusterState, DataDirError, DataDirState};
use keel::postgres::observe::{self, Observation, ReplicationState, Session};
use keel::postgres::pg_ctl::{CtlError, InitdbOption, InitdbParams, PgCtl, RewindOutcome, StopMode};
use keel::postgres::process::RunAs;
use keel::postgres::replication_slots;
use keel::postgres::roles::{self, RoleKind, RoleSpec};
use keel::postgres::ConnParams;
use keel_core::lsn::Lsn;

mod common;
use common::{free_port, hba, run_as, scratch, server_conf, versions, wait_for, Guard};

const SUPERUSER: &str = "postgres";
const SUPERUSER_PASSWORD: &str = "su'per \\ secret";
const REPLICATION_USER: &str = "replicator";
const REPLICATION_PASSWORD: &str = "rep'l pass";
const REWIND_USER: &str = "rewind user";
const REWIND_PASSWORD: &str = "rewind:pass";
const TIMEOUT: Duration = Duration::from_secs(60);

async fn initdb(ctl: &PgCtl) {
    let options = InitdbOption::list_from_json(&serde_json::json!(["no-sync", {"encoding": "UTF8"}, {"locale": "C"}]))
        .expect("initdb options");
    let params =
        InitdbParams { superuser: SUPERUSER.into(), superuser_password: Some(SUPERUSER_PASSWORD.into()), options };
    ctl.initdb(&params, TIMEOUT).await.expect("initdb");
}

fn superuser(port: u16) -> ConnParams {
    ConnParams::new("127.0.0.1", port, SUPERUSER).with_password(SUPERUSER_PASSWORD)
}

async fn connect(port: u16) -> Session {
    observe::connect(&superuser(port), Duration::from_secs(10)).await.expect("connect as the superuser")
}

async fn observe_until(port: u16, what: &str, ok: impl Fn(&Observation) -> bool) -> Observation {
    wait_for(what, TIMEOUT, || async {
        let session = observe::connect(&superuser(port), Duration::from_secs(10)).await.ok()?;
        let obs = session.observe().await.ok()?;
        ok(&obs).then_some(obs)
    })
    .await
}

async fn lifecycle(major: u32, bin_dir: &Path) {
    let bins = PgBinaries::find(Some(bin_dir)).expect("find the binaries");
    assert_eq!(bins.major, major);
    let run_as = run_as();
    let dir = scratch("keel-pg");
    let root = dir.path();
    let mut guard = Guard::default();

    // Bootstrap the primary.
    let primary = PgCtl::new(bins.clone(), run_as.clone(), root.join("primary"));
    guard.watch(&primary);
    assert_eq!(datadir::inspect(&primary.data_dir, &bins, &run_as).await.expect("inspect"), DataDirState::Absent);
    initdb(&primary).await;
    let DataDirState::Initialized(info) =
        datadir::inspect(&primary.data_dir, &bins, &run_as).await.expect("inspect after initdb")
    else {
        panic!("initdb left no data directory")
    };
    assert_eq!(info.pg_version, major);
    assert_eq!(info.control.cluster_state, ClusterState::ShutDown);
    assert_eq!(info.control.timeline, 1);
    assert!(!info.standby_signal);

    let port1 = free_port();
    conf::write_config(&primary.data_dir, &server_conf(root, port1, None), Some(&hba()), &run_as).expect("write conf");
    assert!(primary.data_dir.join(conf::BASE_CONF).exists());
    primary.start(true, TIMEOUT).await.expect("start the primary");
    assert!(primary.is_running());

    let session = connect(port1).await;
    let specs = [
        RoleSpec { name: SUPERUSER.into(), password: Some(SUPERUSER_PASSWORD.into()), kind: RoleKind::Superuser },
        RoleSpec {
            name: REPLICATION_USER.into(),
            password: Some(REPLICATION_PASSWORD.into()),
            kind: RoleKind::Replication,
        },
        RoleSpec { name: REWIND_USER.into(), password: Some(REWIND_PASSWORD.into()), kind: RoleKind::Rewind },
    ];
    roles::ensure_roles(&session, &specs).await.expect("create roles");
    roles::ensure_roles(&session, &specs).await.expect("create roles again (idempotent)");
    let obs = session.observe().await.expect("observe the primary");
    assert!(!obs.in_recovery);
    assert_eq!(obs.timeline, Some(1));
    assert!(obs.wal_flush_lsn.is_some_and(|l| l > Lsn::ZERO));
    assert_eq!(obs.xlog_location(), obs.wal_flush_lsn);
    assert_eq!(obs.system_identifier, info.control.system_identifier);
    assert_eq!(obs.server_version_num / 10000, major);
    assert!(obs.replication_state.is_none() && obs.replication.is_empty());
    let settings = session.settings().await.expect("pg_settings");
    assert_eq!(conf::classify("shared_buffers", &settings), ChangeKind::Restart);
    assert_eq!(conf::classify("work_mem", &settings), ChangeKind::Reload);
    assert!(conf::pending_restart(&settings).is_empty());
    session.execute_script("SELECT pg_create_physical_replication_slot('replica1')").await.expect("create slot");

    // A postmaster-context change waits for a restart after a reload; a user-context one does not.
    let mut changed = server_conf(root, port1, None);
    changed.parameters.insert("shared_buffers".into(), "24MB".into());
    changed.parameters.insert("work_mem".into(), "8MB".into());
    let names = conf::changed_parameters(&server_conf(root, port1, None).parameters, &changed.parameters);
    assert_eq!(conf::restart_needed(&names, &settings), ["shared_buffers"]);
    conf::write_config(&primary.data_dir, &changed, None, &run_as).expect("rewrite conf");
    primary.reload(TIMEOUT).await.expect("reload");
    let pending = wait_for("pending_restart after the reload", TIMEOUT, || async {
        let settings = connect(port1).await.settings().await.ok()?;
        let pending = conf::pending_restart(&settings);
        (!pending.is_empty()).then_some(pending)
    })
    .await;
    assert_eq!(pending, ["shared_buffers"]);

    // A server that stops answering (its backend frozen) never holds the caller: every call has a client-side
    // deadline (statement_timeout plus a margin), even though the server never sends its timeout.
    let frozen = observe::connect(&superuser(port1), Duration::from_secs(1)).await.expect("connect");
    let rows = frozen.query("SELECT pg_backend_pid()", &[]).await.expect("backend pid");
    let backend: i32 = rows[0].get(0);
    unsafe { libc::kill(backend, libc::SIGSTOP) };
    let started = Instant::now();
    let err = frozen.observe().await.expect_err("a frozen backend answers nothing");
    unsafe { libc::kill(backend, libc::SIGCONT) };
    assert!(matches!(err, observe::PgError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "gave up after {:?}", started.elapsed());
    drop(frozen);

    // A replica from a base backup, streaming through the slot.
    let replica = PgCtl::new(bins.clone(), run_as.clone(), root.join("replica"));
    guard.watch(&replica);
    let source = ConnParams::new("127.0.0.1", port1, REPLICATION_USER).with_password(REPLICATION_PASSWORD);
    replica.basebackup(&source, TIMEOUT).await.expect("pg_basebackup");
    let port2 = free_port();
    let recovery = RecoveryConf {
        primary: Some(source.clone().with_application_name("replica1")),
        primary_slot_name: Some("replica1".into()),
    };
    conf::write_config(&replica.data_dir, &server_conf(root, port2, Some(recovery)), Some(&hba()), &run_as)
        .expect("write replica conf");
    assert!(replica.data_dir.join(conf::STANDBY_SIGNAL).exists());
    replica.start(true, TIMEOUT).await.expect("start the replica");

    session
        .execute_script("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .expect("write on the primary");
    let flushed = session.observe().await.expect("observe").wal_flush_lsn.expect("flush lsn");
    let obs = observe_until(port2, "the replica to stream and replay the primary's writes", |o| {
        o.replication_state == Some(ReplicationState::Streaming) && o.replay_lsn.is_some_and(|l| l >= flushed)
    })
    .await;
    assert!(obs.in_recovery);
    assert_eq!(obs.timeline, Some(1));
    assert!(obs.receive_lsn.is_some_and(|l| l >= flushed));
    assert_eq!(obs.wal_receiver_status.as_deref(), Some("streaming"));
    assert_eq!(obs.system_identifier, info.control.system_identifier);
    let primary_view = observe_until(port1, "pg_stat_replication to show replica1", |o| {
        o.replication.iter().any(|r| r.application_name == "replica1" && r.state.as_deref() == Some("streaming"))
    })
    .await;
    let row = &primary_view.replication[0];
    assert!(row.flush_lsn.is_some());
    // The columns Patroni's GET /patroni shows under "replication".
    assert!(row.usename.is_some(), "no usename in {row:?}");
    assert_eq!(row.sync_priority, Some(0), "an asynchronous standby: {row:?}");
    // The copy check reads the leader's slots only from a server out of recovery: a standby's (a demoted leader
    // restarting read-only) are not the primary's.
    let on_primary = replication_slots::list_on_primary(&session).await.expect("list on the primary");
    assert!(on_primary.is_some_and(|l| l.iter().any(|s| s.name == "replica1")));
    let standby = connect(port2).await;
    assert!(replication_slots::list_on_primary(&standby).await.expect("list on the standby").is_none());
    drop(standby);
    drop(session);

    // Promote the replica: it leaves recovery on timeline 2.
    replica.promote(true, TIMEOUT).await.expect("promote");
    let promoted = connect(port2).await;
    let obs = promoted.observe().await.expect("observe the promoted replica");
    assert!(!obs.in_recovery);
    assert_eq!(obs.timeline, Some(2));
    promoted.checkpoint().await.expect("checkpoint after promote");
    promoted.execute_script("INSERT INTO t VALUES (1001)").await.expect("write on the new primary");

    // The old primary diverged (its shutdown checkpoint is past the switch point): rewind it and follow.
    assert!(primary.stop(StopMode::Fast, TIMEOUT).await.expect("stop the old primary"));
    assert!(!primary.is_running());
    let rewind_source = ConnParams::new("127.0.0.1", port2, REWIND_USER).with_password(REWIND_PASSWORD);
    let outcome = primary.rewind(&rewind_source, TIMEOUT).await.expect("pg_rewind");
    assert_eq!(outcome, RewindOutcome::Done);
    let follow = RecoveryConf {
        primary: Some(
            ConnParams::new("127.0.0.1", port2, REPLICATION_USER)
                .with_password(REPLICATION_PASSWORD)
                .with_application_name("old-primary"),
        ),
        primary_slot_name: None,
    };
    conf::write_config(&primary.data_dir, &server_conf(root, port1, Some(follow)), Some(&hba()), &run_as)
        .expect("write the old primary's replica conf");
    primary.start(true, TIMEOUT).await.expect("start the old primary as a replica");
    let obs = observe_until(port1, "the old primary to stream from the new one on timeline 2", |o| {
        o.in_recovery && o.replication_state == Some(ReplicationState::Streaming) && o.timeline == Some(2)
    })
    .await;
    assert!(obs.xlog_location().is_some());
    drop(promoted);

    // Stop both; stopping again reports that nothing ran.
    assert!(replica.stop(StopMode::Fast, TIMEOUT).await.expect("stop the new primary"));
    assert!(primary.stop(StopMode::Immediate, TIMEOUT).await.expect("stop the old primary"));
    assert!(!primary.stop(StopMode::Fast, TIMEOUT).await.expect("stop a stopped server"));
    let DataDirState::Initialized(info) = datadir::inspect(&replica.data_dir, &bins, &run_as).await.expect("inspect")
    else {
        panic!("replica data directory vanished")
    };
    assert_eq!(info.control.cluster_state, ClusterState::ShutDown);
    assert_eq!(info.control.timeline, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_replica_promote_rewind_on_each_version() {
    for (major, dir) in versions() {
        eprintln!("PostgreSQL {major} from {}", dir.display());
        let start = Instant::now();
        lifecycle(major, &dir).await;
        eprintln!("PostgreSQL {major}: {:?}", start.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_on_a_port_in_use_says_so() {
    for (_, dir) in versions() {
        let bins = PgBinaries::find(Some(&dir)).expect("find the binaries");
        let scratch = scratch("keel-pg");
        let mut guard = Guard::default();
        let ctl = PgCtl::new(bins, run_as(), scratch.path().join("data"));
        guard.watch(&ctl);
        initdb(&ctl).await;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("address").port();
        conf::write_config(&ctl.data_dir, &server_conf(scratch.path(), port, None), Some(&hba()), &ctl.run_as)
            .expect("write conf");
        let err = ctl.start(true, TIMEOUT).await.expect_err("the port is taken");
        assert!(matches!(err, CtlError::PortInUse { port: Some(p), .. } if p == port), "{err}");
        let text = err.to_string();
        eprintln!("port in use: {text}");
        assert!(text.contains("Address already in use") && text.contains("change postgresql.listen"), "{text}");
        assert!(!ctl.is_running());
        drop(taken);
    }
}

#[tokio::test]
async fn data_directory_of_another_user_says_so() {
    let Some((_, dir)) = versions().into_iter().next() else { return };
    let bins = PgBinaries::find(Some(&dir)).expect("find the binaries");
    let scratch = tempfile::tempdir().expect("temporary directory");
    let data = scratch.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(data.join("PG_VERSION"), "15\n").expect("write PG_VERSION");
    // The directory belongs to this process's user; PostgreSQL's user is someone else (postgres when we are root).
    let expected =
        if keel::postgres::process::current_euid() == 0 { run_as() } else { RunAs { user: Some("root".into()) } };
    let err = datadir::inspect(&data, &bins, &expected).await.expect_err("wrong owner");
    assert!(matches!(err, DataDirError::WrongOwner { .. }), "{err}");
    let text = err.to_string();
    eprintln!("wrong owner: {text}");
    assert!(text.contains("is owned by") && text.contains("run `chown -R"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    let ctl = PgCtl::new(bins, expected, &data);
    let err = ctl.start(true, TIMEOUT).await.expect_err("wrong owner");
    assert!(matches!(err, CtlError::DataDir(DataDirError::WrongOwner { .. })), "{err}");
}

/// `primary_stop_timeout`: a stop still running after the limit (here a smart shutdown that a connected client
/// holds up) ends with SIGKILL to the postmaster, well before `pg_ctl_timeout`; without a limit the same stop
/// would wait for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_longer_than_primary_stop_timeout_is_killed() {
    let Some((_, dir)) = versions().into_iter().next() else { return };
    let bins = PgBinaries::find(Some(&dir)).expect("find the binaries");
    let scratch = scratch("keel-pg");
    let mut guard = Guard::default();
    let ctl = PgCtl::new(bins, run_as(), scratch.path().join("data"));
    guard.watch(&ctl);
    initdb(&ctl).await;
    let port = free_port();
    conf::write_config(&ctl.data_dir, &server_conf(scratch.path(), port, None), Some(&hba()), &ctl.run_as)
        .expect("write conf");
    ctl.start(true, TIMEOUT).await.expect("start");
    let client = connect(port).await;

    let started = Instant::now();
    let killed = ctl.stop_or_kill(StopMode::Smart, TIMEOUT, Some(Duration::from_secs(2))).await.expect("stop or kill");
    assert!(killed, "the smart stop was held up by the client and had to be killed");
    assert!(started.elapsed() < Duration::from_secs(30), "killed after {:?}", started.elapsed());
    assert!(!ctl.is_running());
    drop(client);

    // A stop within the limit is an ordinary stop.
    ctl.start(true, TIMEOUT).await.expect("start after the kill (crash recovery)");
    let killed = ctl.stop_or_kill(StopMode::Fast, TIMEOUT, Some(Duration::from_secs(20))).await.expect("fast stop");
    assert!(!killed && !ctl.is_running());
}
