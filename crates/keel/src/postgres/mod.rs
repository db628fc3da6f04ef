//! The PostgreSQL side of the agent: finding the binaries, inspecting and configuring a data directory, running
//! `initdb`/`pg_ctl`/`pg_basebackup`/`pg_rewind`, creating the roles Keel needs and observing a running server.
//!
//! Every submodule takes plain parameters (paths, ports, credentials, parameter maps) so it does not depend on the
//! configuration or store modules. PostgreSQL refuses to run as root: [`process::RunAs`] decides whether commands
//! run as the current user or, when the agent is root, through `runuser -u <user> --`.

pub mod bins;
pub mod conf;
pub mod datadir;
pub mod observe;
pub mod online_slots;
pub mod pg_ctl;
pub mod postmaster;
pub mod process;
pub mod replication_slots;
pub mod roles;
pub mod slot_file;
pub mod tls;
pub mod tls_stream;

use std::path::PathBuf;
use std::time::Duration;

/// Where and how to reach a PostgreSQL server: used for the agent's own connections, `primary_conninfo`, and the
/// `pg_basebackup`/`pg_rewind` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// A host name, an IP address, or a Unix socket directory (starting with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Sent inline (connection config or `PGPASSWORD` for child processes); `None` for trust/peer authentication or
    /// when `passfile` is used.
    pub password: Option<String>,
    /// A libpq password file, used instead of an inline password.
    pub passfile: Option<PathBuf>,
    pub dbname: String,
    pub application_name: Option<String>,
    pub connect_timeout: Duration,
    /// libpq `sslmode` (`prefer` when empty).
    pub sslmode: String,
    /// libpq `sslrootcert`, `sslcert`, `sslkey`, `sslcrl`, `channel_binding`.
    pub ssl: tls::SslFiles,
}

impl ConnParams {
    /// Parameters with `dbname=postgres`, `sslmode=prefer`, a 5 s connect timeout, no password.
    pub fn new(host: impl Into<String>, port: u16, user: impl Into<String>) -> ConnParams {
        ConnParams {
            host: host.into(),
            port,
            user: user.into(),
            password: None,
            passfile: None,
            dbname: "postgres".to_string(),
            application_name: None,
            connect_timeout: Duration::from_secs(5),
            sslmode: "prefer".to_string(),
            ssl: tls::SslFiles::default(),
        }
    }

    pub fn with_password(mut self, password: impl Into<String>) -> ConnParams {
        self.password = Some(password.into());
        self
    }

    /// The same server and credentials, in database `dbname` (logical slots are used from their own database).
    pub fn with_database(mut self, dbname: impl Into<String>) -> ConnParams {
        self.dbname = dbname.into();
        self
    }

    pub fn with_application_name(mut self, name: impl Into<String>) -> ConnParams {
        self.application_name = Some(name.into());
        self
    }

    /// A libpq keyword/value connection string. With `include_password` false the password is left out (child
    /// processes get it through `PGPASSWORD`, so it never shows in `ps`).
    pub fn to_conninfo(&self, include_password: bool) -> String {
        let mut parts = vec![
            format!("host={}", conninfo_value(&self.host)),
            format!("port={}", self.port),
            format!("user={}", conninfo_value(&self.user)),
            format!("dbname={}", conninfo_value(&self.dbname)),
        ];
        if include_password {
            if let Some(password) = &self.password {
                parts.push(format!("password={}", conninfo_value(password)));
            }
        }
        if let Some(passfile) = &self.passfile {
            parts.push(format!("passfile={}", conninfo_value(&passfile.to_string_lossy())));
        }
        if let Some(name) = &self.application_name {
            parts.push(format!("application_name={}", conninfo_value(name)));
        }
        let sslmode = if self.sslmode.is_empty() { "prefer" } else { &self.sslmode };
        parts.push(format!("sslmode={}", conninfo_value(sslmode)));
        let ssl = &self.ssl;
        for (key, value) in [
            ("sslrootcert", &ssl.sslrootcert),
            ("sslcert", &ssl.sslcert),
            ("sslkey", &ssl.sslkey),
            ("sslcrl", &ssl.sslcrl),
            ("channel_binding", &ssl.channel_binding),
        ] {
            if let Some(v) = value {
                parts.push(format!("{key}={}", conninfo_value(v)));
            }
        }
        let secs = self.connect_timeout.as_secs().max(1);
        parts.push(format!("connect_timeout={secs}"));
        parts.join(" ")
    }
}

/// Quotes a libpq keyword/value connection-string value: bare when it is non-empty and has no spaces, quotes or
/// backslashes, otherwise single-quoted with `\'` and `\\` escapes.
pub fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_are_quoted_when_needed() {
        assert_eq!(conninfo_value("abc"), "abc");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value(r"it's\x"), r"'it\'s\\x'");
    }

    #[test]
    fn conninfo_leaves_out_the_password_unless_asked() {
        let params =
            ConnParams::new("10.0.0.1", 5433, "replicator").with_password("s3 cret").with_application_name("n1");
        assert_eq!(
            params.to_conninfo(false),
            "host=10.0.0.1 port=5433 user=replicator dbname=postgres application_name=n1 sslmode=prefer connect_timeout=5"
        );
        assert!(params.to_conninfo(true).contains("password='s3 cret'"));
    }
}
