//! The typed sections of the local configuration, read from the document the schema walk normalized.

use serde::Deserialize;
use serde_json::Value as J;

use super::split_port;

/// `username`/`password` pair; in `postgresql.authentication.*` also libpq's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub sslcrl: Option<String>,
    pub channel_binding: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RestApi {
    pub listen: String,
    pub connect_address: Option<String>,
    pub authentication: Option<Auth>,
    /// PEM server certificate: the API speaks HTTPS when set (may hold the key too).
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    /// PEM CA certificates that client certificates must be signed by (`verify_client`).
    pub cafile: Option<String>,
    /// `none` (default), `optional` or `required`.
    pub verify_client: Option<String>,
    /// TLS 1.2 cipher suites, as an explicit list of names.
    pub ciphers: Option<String>,
    /// Password of an encrypted (PKCS#8) key.
    pub keyfile_password: Option<String>,
    /// Addresses, networks (CIDR) and host names that may call unsafe methods.
    pub allowlist: Option<Vec<String>>,
    /// The members' `api_url` hosts may call unsafe methods too (except `POST /failsafe`).
    pub allowlist_include_members: Option<bool>,
}

/// `etcd3`: etcd v3, over TLS with `protocol: https`, with a user when `username` and `password` are set.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct Etcd3 {
    pub host: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub protocol: Option<String>,
    pub cacert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Etcd3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd3")
            .field("host", &self.host)
            .field("hosts", &self.hosts)
            .field("protocol", &self.protocol)
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `ctl`: what keel's control commands use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CtlSettings {
    /// Basic auth for the REST API (default: `restapi.authentication`, as patronictl).
    pub authentication: Option<Auth>,
    /// Without `certfile`: do not verify the server's certificate at all; with it: do not check host names.
    #[serde(default)]
    pub insecure: bool,
    /// CA for the members' certificates (default: `restapi.cafile`, else the system's roots).
    pub cacert: Option<String>,
    /// Client certificate (and key) for APIs with `verify_client`.
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    /// Password of an encrypted (PKCS#8) key.
    pub keyfile_password: Option<String>,
}

/// `bootstrap`. `dcs` is the raw document that becomes the store's `config` key (always a JSON object).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Bootstrap {
    #[serde(default = "empty_object")]
    pub dcs: J,
    /// Patroni's format: strings (`data-checksums`) or single-key mappings (`encoding: UTF8`).
    #[serde(default)]
    pub initdb: Vec<J>,
    pub method: Option<String>,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap { dcs: empty_object(), initdb: Vec::new(), method: None }
    }
}

pub(crate) fn empty_object() -> J {
    J::Object(serde_json::Map::new())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PgAuthentication {
    pub superuser: Option<Auth>,
    pub replication: Option<Auth>,
    pub rewind: Option<Auth>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Postgresql {
    pub listen: String,
    pub connect_address: String,
    pub data_dir: String,
    pub bin_dir: Option<String>,
    /// The database the agent connects to for its own queries (Patroni's `postgresql.database`, default
    /// `postgres`): local queries, the leader's slot and timeline queries, and the member key's `conn_url`.
    pub database: Option<String>,
    /// Where Keel writes the libpq password file `pg_basebackup` and `pg_rewind` read their password from.
    pub pgpass: Option<String>,
    #[serde(default)]
    pub authentication: PgAuthentication,
    #[serde(default)]
    pub parameters: serde_json::Map<String, J>,
    /// `None`: not set here (the dynamic configuration's, if any, applies).
    pub pg_hba: Option<Vec<String>>,
    /// `None`: not set here (the dynamic configuration's, if any, applies).
    pub pg_ident: Option<Vec<String>>,
    /// Seconds.
    pub pg_ctl_timeout: Option<u64>,
    pub use_pg_rewind: Option<bool>,
    pub remove_data_directory_on_rewind_failure: Option<bool>,
    pub remove_data_directory_on_diverged_timelines: Option<bool>,
}

impl Postgresql {
    /// The port from `listen` (`*:5432`, `127.0.0.1,10.0.0.1:5432`).
    pub fn port(&self) -> u16 {
        split_port(&self.listen).map(|(_, p)| p).unwrap_or(5432)
    }

    /// `database`, or Patroni's default `postgres`.
    pub fn database(&self) -> &str {
        self.database.as_deref().filter(|d| !d.is_empty()).unwrap_or("postgres")
    }

    /// The settings of this section that the dynamic configuration may also hold, as JSON, for
    /// `keel_core::dynconfig::DynamicConfig::with_local_postgresql` (local wins, as in Patroni).
    pub fn dynamic_overrides(&self) -> serde_json::Map<String, J> {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: Option<J>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put("pg_hba", self.pg_hba.clone().map(J::from));
        put("pg_ident", self.pg_ident.clone().map(J::from));
        put("pg_ctl_timeout", self.pg_ctl_timeout.map(J::from));
        put("use_pg_rewind", self.use_pg_rewind.map(J::from));
        put("remove_data_directory_on_rewind_failure", self.remove_data_directory_on_rewind_failure.map(J::from));
        put(
            "remove_data_directory_on_diverged_timelines",
            self.remove_data_directory_on_diverged_timelines.map(J::from),
        );
        m
    }
}

/// Keel's own settings (`keel:`). Empty for now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KeelSettings {}
