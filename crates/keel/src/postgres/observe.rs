//! A connection to the local server and what Keel reads from it each cycle: one [`Observation`] in one round trip.

use std::time::{Duration, SystemTime};

use keel_core::lsn::Lsn;
use keel_core::view::Role;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, SimpleQueryMessage};

use super::conf::{self, ParamContext, Setting};
use super::ConnParams;

/// Why talking to PostgreSQL failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("could not connect to PostgreSQL at {target}: {}", with_causes(.source))]
    Connect { target: String, source: tokio_postgres::Error },
    #[error("could not connect to PostgreSQL at {target}: no answer within {}s", .timeout.as_secs())]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("{what} failed: {source}")]
    Query { what: String, source: tokio_postgres::Error },
    #[error("{what}: unexpected value {value:?} from PostgreSQL")]
    BadValue { what: &'static str, value: String },
    #[error(
        "{what}: PostgreSQL did not answer within {}s (frozen, overloaded or cut off); the call was abandoned",
        .timeout.as_secs()
    )]
    Timeout { what: String, timeout: Duration },
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Tls { target: String, source: super::tls::PgTlsError },
}

/// `e` and its causes ("error performing TLS handshake: invalid peer certificate: UnknownIssuer").
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text = format!("{text}: {s}");
        }
        cause = c.source();
    }
    text
}

impl PgError {
    /// The server's SQLSTATE, for callers that react to specific errors (`keel_core::slots::copycheck::classify`);
    /// `None` when the server did not answer with an error (connection failures, timeouts, unexpected values).
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Connect { source, .. } | PgError::Query { source, .. } => {
                source.as_db_error().map(|db| db.code().code())
            }
            _ => None,
        }
    }

    /// The server's message (or this error's text when there is none): for logs and the API, never for decisions.
    pub fn message(&self) -> String {
        match self {
            PgError::Connect { source, .. } | PgError::Query { source, .. } => match source.as_db_error() {
                Some(db) => db.message().to_string(),
                None => self.to_string(),
            },
            other => other.to_string(),
        }
    }
}

fn query_err(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    let what = what.into();
    move |source| PgError::Query { what, source }
}

/// `pg_stat_wal_receiver.status` seen as Patroni's `replication_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationState {
    /// The WAL receiver streams from the primary.
    Streaming,
    /// No streaming WAL receiver: replaying from the archive or `pg_wal` (or about to reconnect).
    InArchiveRecovery,
}

impl ReplicationState {
    /// The text Patroni writes into the member key.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicationState::Streaming => "streaming",
            ReplicationState::InArchiveRecovery => "in archive recovery",
        }
    }
}

/// One `pg_stat_replication` row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ReplicationStat {
    pub application_name: String,
    pub usename: Option<String>,
    /// `client_addr` as text, null for Unix-socket connections.
    pub client_addr: Option<String>,
    pub sync_priority: Option<i32>,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    #[serde(deserialize_with = "opt_lsn")]
    pub write_lsn: Option<Lsn>,
    #[serde(deserialize_with = "opt_lsn")]
    pub flush_lsn: Option<Lsn>,
    #[serde(deserialize_with = "opt_lsn")]
    pub replay_lsn: Option<Lsn>,
}

fn opt_lsn<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Lsn>, D::Error> {
    let text: Option<String> = serde::Deserialize::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
}

/// What the server says about itself in one cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub in_recovery: bool,
    /// Primary: the timeline of the current WAL file. Replica: the WAL receiver's `received_tli`, or the last
    /// checkpoint's (restartpoint's) timeline without a receiver.
    pub timeline: Option<u32>,
    /// `pg_current_wal_flush_lsn()` (primary only).
    pub wal_flush_lsn: Option<Lsn>,
    /// max(`pg_stat_wal_receiver.written_lsn`, `pg_last_wal_receive_lsn()`) (replica).
    pub receive_lsn: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<Lsn>,
    /// `pg_last_xact_replay_timestamp()`.
    pub last_replay_time: Option<SystemTime>,
    /// `pg_is_wal_replay_paused()` (false on a primary).
    pub replay_paused: bool,
    /// `pg_stat_wal_receiver.status`, when a WAL receiver runs.
    pub wal_receiver_status: Option<String>,
    /// Replica only.
    pub replication_state: Option<ReplicationState>,
    /// `pg_control_system().system_identifier`.
    pub system_identifier: u64,
    /// `server_version_num` (`150018`).
    pub server_version_num: u32,
    pub postmaster_start_time: Option<SystemTime>,
    /// `pg_stat_replication` (this server's WAL senders), ordered by application_name.
    pub replication: Vec<ReplicationStat>,
}

impl Observation {
    /// `primary` or `replica`, from `pg_is_in_recovery()`.
    pub fn role(&self) -> Role {
        if self.in_recovery {
            Role::Replica
        } else {
            Role::Primary
        }
    }

    /// The member key's `xlog_location`: the flush LSN on a primary, max(receive, replay) on a replica.
    pub fn xlog_location(&self) -> Option<Lsn> {
        if self.in_recovery {
            self.receive_lsn.max(self.replay_lsn)
        } else {
            self.wal_flush_lsn
        }
    }
}

/// Everything in one statement: the LSN functions that fail in recovery (or outside it) are guarded by CASE.
const OBSERVE_SQL: &str = "\
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       extract(epoch FROM pg_last_xact_replay_timestamp())::float8,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
       (SELECT timeline_id FROM pg_control_checkpoint()),
       w.status,
       w.received_tli,
       w.written_lsn::text,
       (SELECT system_identifier::text FROM pg_control_system()),
       current_setting('server_version_num')::int,
       extract(epoch FROM pg_postmaster_start_time())::float8,
       (SELECT json_agg(json_build_object('application_name', application_name, 'usename', usename,
                'client_addr', host(client_addr), 'sync_priority', sync_priority, 'state', state,
                'sync_state', sync_state, 'write_lsn', write_lsn::text, 'flush_lsn', flush_lsn::text,
                'replay_lsn', replay_lsn::text) ORDER BY application_name)::text
          FROM pg_stat_replication)
  FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS w ON true";

/// An open connection to one server.
pub struct Session {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
    /// The client-side deadline of every call: `statement_timeout` plus a margin, so a server that stopped
    /// answering (SIGSTOP, a stalled disk, a partition) never holds the caller.
    deadline: Duration,
}

/// How much longer than `statement_timeout` the client waits for an answer.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);
/// The client-side deadline when the session has no `statement_timeout`.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Connects with a connect timeout and `statement_timeout` set for the whole session (0 disables it).
/// Without `params.password`, the password comes from `params.passfile` (libpq format) when one is set.
pub async fn connect(params: &ConnParams, statement_timeout: Duration) -> Result<Session, PgError> {
    let target = format!("{}:{} as {} (database {})", params.host, params.port, params.user, params.dbname);
    let mut config = tokio_postgres::Config::new();
    config
        .host(&params.host)
        .port(params.port)
        .user(&params.user)
        .dbname(&params.dbname)
        .connect_timeout(params.connect_timeout)
        .options(format!("-c statement_timeout={}", statement_timeout.as_millis()));
    let from_passfile = match (&params.password, &params.passfile) {
        (None, Some(path)) => std::fs::read_to_string(path).ok().and_then(|text| conf::passfile_lookup(&text, params)),
        _ => None,
    };
    if let Some(password) = params.password.as_ref().or(from_passfile.as_ref()) {
        config.password(password);
    }
    config.application_name(params.application_name.as_deref().unwrap_or("keel"));
    let tls_err = |source| PgError::Tls { target: target.clone(), source };
    config.ssl_mode(super::tls::ssl_mode(&params.sslmode).map_err(tls_err)?);
    if let Some(cb) = super::tls::channel_binding(params.ssl.channel_binding.as_deref()).map_err(tls_err)? {
        config.channel_binding(cb);
    }
    let connecting = config.connect(super::tls::connector(params).map_err(tls_err)?);
    let (client, connection) = tokio::time::timeout(params.connect_timeout + Duration::from_secs(1), connecting)
        .await
        .map_err(|_| PgError::ConnectTimeout { target: target.clone(), timeout: params.connect_timeout })?
        .map_err(|source| PgError::Connect { target: target.clone(), source })?;
    let connection = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection closed: {e}");
        }
    });
    let deadline = if statement_timeout.is_zero() { DEFAULT_DEADLINE } else { statement_timeout + DEADLINE_MARGIN };
    Ok(Session { client, connection, deadline })
}

fn lsn_col(row: &Row, idx: usize, what: &'static str) -> Result<Option<Lsn>, PgError> {
    let text: Option<String> = row.try_get(idx).map_err(query_err(what))?;
    text.map(|t| t.parse().map_err(|_| PgError::BadValue { what, value: t })).transpose()
}

fn time_col(row: &Row, idx: usize, what: &'static str) -> Result<Option<SystemTime>, PgError> {
    let secs: Option<f64> = row.try_get(idx).map_err(query_err(what))?;
    Ok(secs.and_then(|s| {
        if s.is_finite() && s >= 0.0 {
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs_f64(s))
        } else {
            None
        }
    }))
}

fn tli(value: Option<i32>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0)
}

impl Session {
    /// The underlying client, for anything this module does not wrap (run it through [`Session::within`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `call` with this session's client-side deadline.
    pub async fn within<T>(
        &self,
        what: impl Into<String>,
        call: impl std::future::Future<Output = Result<T, PgError>>,
    ) -> Result<T, PgError> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(PgError::Timeout { what: what.into(), timeout: self.deadline }),
        }
    }

    /// The connection is gone (server stopped or network failure): connect again.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Reads one [`Observation`] in one round trip.
    pub async fn observe(&self) -> Result<Observation, PgError> {
        let row = self
            .within("observing PostgreSQL", async {
                self.client.query_one(OBSERVE_SQL, &[]).await.map_err(query_err("observing PostgreSQL"))
            })
            .await?;
        let get_err = query_err("observing PostgreSQL");
        let in_recovery: bool = row.try_get(0).map_err(get_err)?;
        let replay_paused: Option<bool> = row.try_get(5).map_err(query_err("pg_is_wal_replay_paused"))?;
        let wal_tli: Option<i32> = row.try_get(6).map_err(query_err("WAL timeline"))?;
        let checkpoint_tli: Option<i32> = row.try_get(7).map_err(query_err("checkpoint timeline"))?;
        let wal_receiver_status: Option<String> = row.try_get(8).map_err(query_err("pg_stat_wal_receiver"))?;
        let received_tli: Option<i32> = row.try_get(9).map_err(query_err("pg_stat_wal_receiver"))?;
        let sysid: Option<String> = row.try_get(11).map_err(query_err("pg_control_system"))?;
        let sysid = sysid.unwrap_or_default();
        let system_identifier =
            sysid.parse().map_err(|_| PgError::BadValue { what: "system_identifier", value: sysid.clone() })?;
        let version: i32 = row.try_get(12).map_err(query_err("server_version_num"))?;
        let server_version_num = u32::try_from(version)
            .map_err(|_| PgError::BadValue { what: "server_version_num", value: version.to_string() })?;
        let replication_json: Option<String> = row.try_get(14).map_err(query_err("pg_stat_replication"))?;
        let replication = match replication_json {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| PgError::BadValue { what: "pg_stat_replication", value: format!("{e}: {json}") })?,
            None => Vec::new(),
        };
        let receive_lsn = lsn_col(&row, 2, "pg_last_wal_receive_lsn")?.max(lsn_col(&row, 10, "written_lsn")?);
        let (timeline, replication_state) = if in_recovery {
            let state = if wal_receiver_status.as_deref() == Some("streaming") {
                ReplicationState::Streaming
            } else {
                ReplicationState::InArchiveRecovery
            };
            (tli(received_tli).or(tli(checkpoint_tli)), Some(state))
        } else {
            (tli(wal_tli).or(tli(checkpoint_tli)), None)
        };
        Ok(Observation {
            in_recovery,
            timeline,
            wal_flush_lsn: lsn_col(&row, 1, "pg_current_wal_flush_lsn")?,
            receive_lsn,
            replay_lsn: lsn_col(&row, 3, "pg_last_wal_replay_lsn")?,
            last_replay_time: time_col(&row, 4, "pg_last_xact_replay_timestamp")?,
            replay_paused: replay_paused.unwrap_or(false),
            wal_receiver_status,
            replication_state,
            system_identifier,
            server_version_num,
            postmaster_start_time: time_col(&row, 13, "pg_postmaster_start_time")?,
            replication,
        })
    }

    /// `CHECKPOINT` (after a promotion, so rewinds of the old primary see the new timeline).
    pub async fn checkpoint(&self) -> Result<(), PgError> {
        self.within("CHECKPOINT", async {
            self.client.batch_execute("CHECKPOINT").await.map_err(query_err("CHECKPOINT"))
        })
        .await
    }

    /// Runs SQL text (one or more statements, no parameters) and returns the affected-row count of the last one.
    pub async fn execute_script(&self, sql: &str) -> Result<u64, PgError> {
        let messages = self.within(sql, async { self.client.simple_query(sql).await.map_err(query_err(sql)) }).await?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .last()
            .unwrap_or(0))
    }

    /// Runs one parameterised query and returns its rows.
    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, PgError> {
        self.within(sql, async { self.client.query(sql, params).await.map_err(query_err(sql)) }).await
    }

    /// Every `pg_settings` row (name, setting, unit, context, pending_restart).
    pub async fn settings(&self) -> Result<Vec<Setting>, PgError> {
        let sql = "SELECT name, setting, unit, context, pending_restart FROM pg_catalog.pg_settings";
        let rows = self
            .within("reading pg_settings", async {
                self.client.query(sql, &[]).await.map_err(query_err("reading pg_settings"))
            })
            .await?;
        rows.iter()
            .map(|row| {
                let context: String = row.try_get(3).map_err(query_err("pg_settings.context"))?;
                Ok(Setting {
                    name: row.try_get(0).map_err(query_err("pg_settings.name"))?,
                    setting: row.try_get(1).map_err(query_err("pg_settings.setting"))?,
                    unit: row.try_get(2).map_err(query_err("pg_settings.unit"))?,
                    context: ParamContext::parse(&context),
                    pending_restart: row.try_get(4).map_err(query_err("pg_settings.pending_restart"))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(in_recovery: bool) -> Observation {
        Observation {
            in_recovery,
            timeline: Some(1),
            wal_flush_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            last_replay_time: None,
            replay_paused: false,
            wal_receiver_status: None,
            replication_state: None,
            system_identifier: 1,
            server_version_num: 150000,
            postmaster_start_time: None,
            replication: Vec::new(),
        }
    }

    #[test]
    fn xlog_location_follows_patroni() {
        let mut primary = observation(false);
        primary.wal_flush_lsn = Some(Lsn(100));
        primary.replay_lsn = Some(Lsn(50));
        assert_eq!(primary.xlog_location(), Some(Lsn(100)));
        assert_eq!(primary.role(), Role::Primary);
        let mut replica = observation(true);
        replica.receive_lsn = Some(Lsn(70));
        replica.replay_lsn = Some(Lsn(60));
        assert_eq!(replica.xlog_location(), Some(Lsn(70)));
        replica.receive_lsn = None;
        assert_eq!(replica.xlog_location(), Some(Lsn(60)));
        assert_eq!(replica.role(), Role::Replica);
    }

    #[test]
    fn reads_replication_rows() {
        let json = r#"[{"application_name":"n2","usename":"replicator","client_addr":"127.0.0.1","sync_priority":0,
            "state":"streaming","sync_state":"async","write_lsn":"0/3000148","flush_lsn":"0/3000148","replay_lsn":null},
            {"application_name":"n3","usename":null,"client_addr":null,"sync_priority":null,"state":"startup",
            "sync_state":null,"write_lsn":null,"flush_lsn":null,"replay_lsn":null}]"#;
        let rows: Vec<ReplicationStat> = serde_json::from_str(json).unwrap();
        assert_eq!(rows[0].flush_lsn, Some(Lsn(0x3000148)));
        assert_eq!(rows[0].usename.as_deref(), Some("replicator"));
        assert_eq!(rows[0].client_addr.as_deref(), Some("127.0.0.1"));
        assert_eq!(rows[0].sync_priority, Some(0));
        assert_eq!((rows[1].usename.as_deref(), rows[1].client_addr.as_deref()), (None, None));
        assert_eq!(rows[0].replay_lsn, None);
        assert_eq!(ReplicationState::InArchiveRecovery.as_str(), "in archive recovery");
    }
}
