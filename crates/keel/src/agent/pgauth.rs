//! The credentials the agent connects to PostgreSQL with, and `postgresql.pgpass`: the libpq password file Keel
//! writes so that `pg_basebackup`, `pg_rewind` and the walreceiver (`primary_conninfo`) read passwords from it
//! rather than from the environment or `postgresql.conf`, as Patroni does.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config::Auth;
use crate::postgres::conf;
use crate::postgres::process::RunAs;
use crate::postgres::ConnParams;

/// Credentials as (user, password), and the TLS settings of the connections made with them.
#[derive(Debug, Clone)]
pub struct Cred {
    pub user: String,
    pub password: Option<String>,
    /// libpq `sslmode` (`None`: prefer).
    pub sslmode: Option<String>,
    pub ssl: crate::postgres::tls::SslFiles,
}

impl Cred {
    pub fn from(auth: Option<&Auth>, default_user: &str) -> Cred {
        Cred {
            user: auth.and_then(|a| a.username.clone()).unwrap_or_else(|| default_user.to_string()),
            password: auth.and_then(|a| a.password.clone()),
            sslmode: auth.and_then(|a| a.sslmode.clone()),
            ssl: crate::postgres::tls::SslFiles {
                sslrootcert: auth.and_then(|a| a.sslrootcert.clone()),
                sslcert: auth.and_then(|a| a.sslcert.clone()),
                sslkey: auth.and_then(|a| a.sslkey.clone()),
                sslcrl: auth.and_then(|a| a.sslcrl.clone()),
                channel_binding: auth.and_then(|a| a.channel_binding.clone()),
            },
        }
    }

    /// Parameters for `host:port` in `database`, with the password inline.
    pub fn params(&self, host: &str, port: u16, database: &str) -> ConnParams {
        let mut p = ConnParams::new(host, port, self.user.clone());
        p.dbname = database.to_string();
        if let Some(mode) = &self.sslmode {
            p.sslmode = mode.clone();
        }
        p.ssl = self.ssl.clone();
        match &self.password {
            Some(pw) => p.with_password(pw.clone()),
            None => p,
        }
    }
}

/// The lines of the password file: one per user with a password, for any host, port and database.
pub fn pgpass_text(creds: &[&Cred]) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let mut out = String::new();
    for c in creds {
        if let Some(pw) = &c.password {
            let line = format!("*:*:*:{}:{}\n", esc(&c.user), esc(pw));
            if !out.contains(&line) {
                out.push_str(&line);
            }
        }
    }
    out
}

/// `postgresql.pgpass`, when configured.
#[derive(Debug, Clone)]
pub struct Pgpass {
    pub path: PathBuf,
    pub text: String,
}

impl Pgpass {
    /// Writes the file (mode 0600, owned by the PostgreSQL user) and points `params` at it: the password then
    /// leaves the connection string and the environment.
    pub fn apply(&self, mut params: ConnParams, run_as: &RunAs) -> Result<ConnParams> {
        conf::write_file(&self.path, &self.text, run_as)
            .with_context(|| format!("writing postgresql.pgpass {}", self.path.display()))?;
        params.passfile = Some(self.path.clone());
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_escaped_line_per_user_with_a_password() {
        let cred = |user: &str, password: Option<&str>| {
            let auth = Auth { username: Some(user.into()), password: password.map(Into::into), ..Default::default() };
            Cred::from(Some(&auth), "x")
        };
        let (a, b, c) =
            (cred("replicator", Some("a:b\\c")), cred("postgres", None), cred("replicator", Some("a:b\\c")));
        assert_eq!(pgpass_text(&[&a, &b, &c]), "*:*:*:replicator:a\\:b\\\\c\n");
        let params = a.params("10.0.0.1", 5432, "app");
        assert_eq!(conf::passfile_lookup(&pgpass_text(&[&a]), &params).as_deref(), Some("a:b\\c"));
        assert_eq!(params.dbname, "app");
    }

    #[test]
    fn tls_settings_reach_the_connection_parameters() {
        let auth = Auth {
            username: Some("replicator".into()),
            sslmode: Some("verify-full".into()),
            sslrootcert: Some("/ca.pem".into()),
            sslcert: Some("/c.pem".into()),
            sslkey: Some("/k.pem".into()),
            sslcrl: Some("/crl.pem".into()),
            channel_binding: Some("require".into()),
            ..Default::default()
        };
        let info = Cred::from(Some(&auth), "x").params("10.0.0.1", 5432, "postgres").to_conninfo(false);
        for part in [
            "sslmode=verify-full",
            "sslrootcert=/ca.pem",
            "sslcert=/c.pem",
            "sslkey=/k.pem",
            "sslcrl=/crl.pem",
            "channel_binding=require",
        ] {
            assert!(info.contains(part), "{part} missing from {info}");
        }
    }
}
