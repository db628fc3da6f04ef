//! The roles Keel needs after bootstrap: superuser, replication user and rewind user, created or brought up to date
//! idempotently. Names and passwords go through the server's `format('%I', '%L')`, never through string pasting;
//! passwords are sent as verifiers (SCRAM or md5), never in clear text.

use super::observe::{PgError, Session};

/// What a role is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    /// `SUPERUSER LOGIN` (usually the initdb user, which already exists).
    Superuser,
    /// `LOGIN REPLICATION`, for streaming and `pg_basebackup`.
    Replication,
    /// `LOGIN` plus EXECUTE on the functions `pg_rewind` (and reading slot files) needs.
    Rewind,
}

impl RoleKind {
    fn attributes(self) -> &'static str {
        match self {
            RoleKind::Superuser => "SUPERUSER LOGIN",
            RoleKind::Replication => "LOGIN REPLICATION",
            RoleKind::Rewind => "LOGIN",
        }
    }
}

/// One role to ensure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSpec {
    pub name: String,
    /// Set (or reset) when given; left alone when `None`.
    pub password: Option<String>,
    pub kind: RoleKind,
}

/// The functions a non-superuser `pg_rewind` source user needs (as Patroni grants them).
pub const REWIND_FUNCTIONS: [&str; 4] = [
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
];

/// On PostgreSQL 16+ the rewind role may also write a running-xacts record, so that a replica creating a logical
/// slot copy (it connects to the leader with these credentials) finds its consistent point soon.
const STANDBY_SNAPSHOT_GRANT: &str = "DO $keel$ BEGIN IF to_regprocedure('pg_catalog.pg_log_standby_snapshot()') \
     IS NOT NULL THEN GRANT EXECUTE ON FUNCTION pg_catalog.pg_log_standby_snapshot() TO %I; END IF; END $keel$";

/// The statement template for `spec`: `%I` is the name, `%L` the password (when set).
fn template(spec: &RoleSpec, exists: bool) -> String {
    let verb = if exists { "ALTER" } else { "CREATE" };
    let password = if spec.password.is_some() { " PASSWORD %L" } else { "" };
    format!("{verb} ROLE %I WITH {}{password}", spec.kind.attributes())
}

/// Creates the role or brings its attributes and password up to date; grants the rewind functions to a rewind
/// role. Returns true when the role was created.
pub async fn ensure_role(session: &Session, spec: &RoleSpec) -> Result<bool, PgError> {
    let what = |step: &str| format!("{step} role {:?}", spec.name);
    let client = session.client();
    let exists: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)", &[&spec.name])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|source| PgError::Query { what: what("looking up"), source })?;
    let template = template(spec, exists);
    let verifier = match &spec.password {
        Some(password) => Some(password_verifier(session, &spec.name, password).await?),
        None => None,
    };
    let row = match &verifier {
        Some(verifier) => {
            client.query_one("SELECT format($1::text, $2::text, $3::text)", &[&template, &spec.name, verifier]).await
        }
        None => client.query_one("SELECT format($1::text, $2::text)", &[&template, &spec.name]).await,
    };
    let statement: String =
        row.and_then(|row| row.try_get(0)).map_err(|source| PgError::Query { what: what("preparing"), source })?;
    client
        .batch_execute(&statement)
        .await
        .map_err(|source| PgError::Query { what: what(if exists { "altering" } else { "creating" }), source })?;
    if spec.kind == RoleKind::Rewind {
        let grants = REWIND_FUNCTIONS.map(|f| (f, format!("GRANT EXECUTE ON FUNCTION {f} TO %I")));
        let snapshot = ("pg_catalog.pg_log_standby_snapshot()", STANDBY_SNAPSHOT_GRANT.to_string());
        for (function, template) in grants.into_iter().chain([snapshot]) {
            let statement: String = client
                .query_one("SELECT format($1::text, $2::text)", &[&template, &spec.name])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|source| PgError::Query { what: what("preparing grants for"), source })?;
            client
                .batch_execute(&statement)
                .await
                .map_err(|source| PgError::Query { what: format!("granting {function} to {:?}", spec.name), source })?;
        }
    }
    Ok(!exists)
}

/// What the server stores for `password`, computed here so the clear text never reaches the server (whose
/// statement log or error messages could show it): a SCRAM-SHA-256 verifier, or an md5 hash when the server's
/// `password_encryption` is `md5`. The server takes either as the role's password.
async fn password_verifier(session: &Session, role: &str, password: &str) -> Result<String, PgError> {
    let encryption: String = session
        .client()
        .query_one("SELECT pg_catalog.current_setting('password_encryption')", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|source| PgError::Query { what: "reading password_encryption".into(), source })?;
    Ok(if encryption == "md5" {
        postgres_protocol::password::md5(password.as_bytes(), role)
    } else {
        postgres_protocol::password::scram_sha_256(password.as_bytes())
    })
}

/// [`ensure_role`] for each spec, in order.
pub async fn ensure_roles(session: &Session, specs: &[RoleSpec]) -> Result<(), PgError> {
    for spec in specs {
        if session.within(format!("ensuring role {:?}", spec.name), ensure_role(session, spec)).await? {
            tracing::info!(role = %spec.name, kind = ?spec.kind, "created role");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_leave_quoting_to_the_server() {
        let spec = RoleSpec { name: "x".into(), password: Some("p".into()), kind: RoleKind::Replication };
        assert_eq!(template(&spec, false), "CREATE ROLE %I WITH LOGIN REPLICATION PASSWORD %L");
        let spec = RoleSpec { name: "x".into(), password: None, kind: RoleKind::Rewind };
        assert_eq!(template(&spec, true), "ALTER ROLE %I WITH LOGIN");
    }
}
