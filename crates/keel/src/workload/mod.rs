//! A change workload for local clusters (`keel demo --failover`, examples, tests): a [`Writer`] inserting
//! increasing ids into one table on whichever node is primary, a [`Consumer`] running `pg_recvlogical` on a
//! permanent logical slot (test_decoding) against the current primary, and the [`Tally`] of what was written
//! against what was received.
//!
//! Both follow the primary the way a client of a Keel cluster would: they ask the members' REST API
//! (`GET /cluster`) who leads, connect there, and ask again after an error (a failover, a read-only node).

mod consumer;
mod tally;
mod writer;

pub use consumer::{parse_inserted_id, Consumer};
pub use tally::Tally;
pub use writer::Writer;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::cluster_runner::{self, SUPERUSER};

/// Deadline of one REST call or one connection attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a failed attempt before asking for the primary again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Failures of the workload's own calls; the writer and the consumer retry them, the caller sees them in
/// [`Writer::last_error`] and [`Consumer::last_error`] and in [`final_ids`].
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("no member REST API answered GET /cluster with a leader ({0}); is the cluster up?")]
    NoPrimary(String),
    #[error("{what}: {source}; the writer reconnects to the primary the REST API names")]
    Postgres {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0} timed out; the node may be down or overloaded")]
    Timeout(String),
    #[error("{what}: {detail}")]
    Query { what: String, detail: String },
    #[error("cannot run {program}: {source}; check the PostgreSQL bin directory")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the workload runs: the members' REST ports, the database and table, PostgreSQL's bin directory (for
/// `pg_recvlogical` and `psql`). Connections use the local cluster's superuser ([`SUPERUSER`]).
#[derive(Debug, Clone)]
pub struct Target {
    pub api_ports: Vec<u16>,
    pub database: String,
    /// A table `(id integer primary key)` in `public` of `database`.
    pub table: String,
    pub bin_dir: PathBuf,
}

/// The current primary as the REST API names it: (member name, PostgreSQL port on 127.0.0.1).
pub fn find_primary(target: &Target) -> Result<(String, u16), WorkloadError> {
    let mut last = String::from("no REST port given");
    for port in &target.api_ports {
        match cluster_runner::http_request(*port, "GET", "/cluster", None) {
            Ok((200, body)) => match leader_of(&body) {
                Some(found) => return Ok(found),
                None => last = format!(":{port} names no leader"),
            },
            Ok((code, _)) => last = format!(":{port} answered {code}"),
            Err(e) => last = e,
        }
    }
    Err(WorkloadError::NoPrimary(last))
}

/// The leader's name and PostgreSQL port in a `GET /cluster` answer.
fn leader_of(cluster: &Value) -> Option<(String, u16)> {
    let members = cluster.get("members")?.as_array()?;
    let leader = members.iter().find(|m| m.get("role").and_then(Value::as_str) == Some("leader"))?;
    let name = leader.get("name")?.as_str()?.to_string();
    let port = u16::try_from(leader.get("port")?.as_u64()?).ok()?;
    Some((name, port))
}

/// The ids in the workload's table on the node at `pg_port` (the final primary, for the tally).
pub fn final_ids(target: &Target, pg_port: u16) -> Result<BTreeSet<i64>, WorkloadError> {
    let sql = format!("SELECT id FROM public.{}", target.table);
    let what = format!("reading {}.{} on :{pg_port}", target.database, target.table);
    let out = cluster_runner::psql_db(&target.bin_dir, pg_port, &target.database, &sql)
        .map_err(|detail| WorkloadError::Query { what: what.clone(), detail })?;
    out.lines()
        .map(|l| {
            l.trim()
                .parse::<i64>()
                .map_err(|e| WorkloadError::Query { what: what.clone(), detail: format!("{l:?}: {e}") })
        })
        .collect()
}

/// A tokio-postgres connection to 127.0.0.1:`port` as the superuser, with `CALL_TIMEOUT` to connect.
async fn connect(port: u16, database: &str) -> Result<tokio_postgres::Client, WorkloadError> {
    let what = format!("connecting to 127.0.0.1:{port}/{database}");
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(SUPERUSER.0)
        .password(SUPERUSER.1)
        .dbname(database)
        .connect_timeout(CALL_TIMEOUT);
    let (client, conn) = tokio::time::timeout(CALL_TIMEOUT, config.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| WorkloadError::Timeout(what.clone()))?
        .map_err(|source| WorkloadError::Postgres { what, source })?;
    tokio::spawn(conn);
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leader_of_reads_the_cluster_answer() {
        let body = json!({"members": [
            {"name": "node1", "role": "replica", "host": "127.0.0.1", "port": 5433},
            {"name": "node2", "role": "leader", "host": "127.0.0.1", "port": 5434},
        ]});
        assert_eq!(leader_of(&body), Some(("node2".into(), 5434)));
        assert_eq!(leader_of(&json!({"members": [{"name": "n", "role": "replica", "port": 1}]})), None);
        assert_eq!(leader_of(&json!({})), None);
    }
}
