//! Keel's local configuration: Patroni's YAML file, read unchanged.
//!
//! [`Config::load`] reads the file, applies `PATRONI_*` environment overrides (from an injectable map), checks
//! every key against Patroni's schema ([`fields`], [`schema`]) and returns the typed configuration plus warnings.
//! Every Patroni setting is either implemented, or refused with what to do (all refusals in one error), or, only
//! where ignoring it cannot surprise anyone (logging cosmetics), named in one warning; any other key is an error
//! naming its full path and line. [`dynamic`] checks the dynamic configuration the same way.

pub mod dynamic;
pub mod env;
pub mod fields;
pub mod schema;
mod types;
pub mod yaml;

pub use types::*;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use keel_core::dynconfig::{Timing, DEFAULT_LOOP_WAIT, DEFAULT_RETRY_TIMEOUT, DEFAULT_TTL};
use keel_core::view::Tags;
use serde::Deserialize;
use serde_json::Value as J;

use crate::fence::watchdog::{WatchdogConfig, WatchdogMode};

pub use yaml::Origin;

/// Where an error or warning points: the file and, when known, the line (or the environment variable).
pub struct Where<'a> {
    pub file: &'a str,
    pub origin: &'a Origin,
}

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin {
            Origin::File { line, .. } if *line > 0 => write!(f, "{}:{line}", self.file),
            Origin::Env(var) => write!(f, "{} (from environment variable {var})", self.file),
            _ => f.write_str(self.file),
        }
    }
}

fn at(file: &str, origin: &Origin) -> String {
    Where { file, origin }.to_string()
}

fn at_line(file: &str, line: &Option<u64>) -> String {
    match line {
        Some(l) => format!("{file}:{l}"),
        None => file.to_string(),
    }
}

/// Why a configuration could not be loaded. Display names the file, the key path and the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the configuration file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid YAML: {message}", at_line(file, line))]
    Yaml { file: String, line: Option<u64>, message: String },
    #[error("{}: unknown setting `{path}` (neither Patroni nor Keel has it; check the spelling)", at(file, origin))]
    UnknownKey { file: String, path: String, origin: Origin },
    #[error("{}: `{path}` must be {expected}, found {found}", at(file, origin))]
    WrongType { file: String, path: String, expected: String, found: String, origin: Origin },
    #[error("{}: required setting `{path}` is missing", at(file, origin))]
    Missing { file: String, path: String, origin: Origin },
    #[error("{}: `{path}`: {message}", at(file, origin))]
    Invalid { file: String, path: String, message: String, origin: Origin },
    #[error("{}", refused_text(file, refused))]
    Refused { file: String, refused: Vec<schema::Refused> },
}

fn refused_text(file: &str, refused: &[schema::Refused]) -> String {
    let mut out = format!("{file}: Keel does not implement these Patroni settings and will not run with them:");
    for r in refused {
        out.push_str("\n  ");
        out.push_str(&refused_item(file, r));
    }
    out
}

/// One refused setting: where (when known), the key, what to do.
fn refused_item(file: &str, r: &schema::Refused) -> String {
    match r.origin {
        Origin::Unknown => format!("`{}`: {}", r.path, r.hint),
        _ => format!("{}: `{}`: {}", at(file, &r.origin), r.path, r.hint),
    }
}

impl ConfigError {
    /// The dotted key path the error is about (`postgresql.parameters`), if any.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } | ConfigError::Yaml { .. } => None,
            ConfigError::Refused { refused, .. } => refused.first().map(|r| r.path.as_str()),
            ConfigError::UnknownKey { path, .. }
            | ConfigError::WrongType { path, .. }
            | ConfigError::Missing { path, .. }
            | ConfigError::Invalid { path, .. } => Some(path),
        }
    }

    /// The message on one line (refused settings separated by `; `), for the control commands' one-line errors.
    pub fn one_line(&self) -> String {
        match self {
            ConfigError::Refused { file, refused } => format!(
                "{file}: Keel does not implement these Patroni settings: {}",
                refused.iter().map(|r| refused_item(file, r)).collect::<Vec<_>>().join("; ")
            ),
            other => other.to_string(),
        }
    }

    /// The line in the file, when known.
    pub fn line(&self) -> Option<u64> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Yaml { line, .. } => *line,
            ConfigError::Refused { refused, .. } => refused.first().and_then(|r| r.origin.line()),
            ConfigError::UnknownKey { origin, .. }
            | ConfigError::WrongType { origin, .. }
            | ConfigError::Missing { origin, .. }
            | ConfigError::Invalid { origin, .. } => origin.line(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    scope: String,
    namespace: Option<String>,
    name: String,
    restapi: RestApi,
    etcd3: Etcd3,
    #[serde(default)]
    bootstrap: Bootstrap,
    postgresql: Postgresql,
    #[serde(default = "empty_object")]
    tags: J,
    #[serde(default)]
    keel: KeelSettings,
    #[serde(default)]
    ctl: CtlSettings,
    #[serde(default)]
    watchdog: WatchdogSection,
}

/// `watchdog` as written.
#[derive(Debug, Clone, Default, Deserialize)]
struct WatchdogSection {
    mode: Option<String>,
    device: Option<String>,
    safety_margin: Option<i64>,
}

/// The local configuration, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub scope: String,
    /// As given (default `/service/`); see [`Config::cluster_prefix`].
    pub namespace: String,
    pub name: String,
    pub restapi: RestApi,
    pub etcd3: Etcd3,
    pub bootstrap: Bootstrap,
    pub postgresql: Postgresql,
    pub tags: Tags,
    pub keel: KeelSettings,
    pub ctl: CtlSettings,
    /// `watchdog` (Patroni's defaults: automatic, `/dev/watchdog`, a safety margin of 5 s).
    pub watchdog: WatchdogConfig,
    /// `ttl`, `loop_wait`, `retry_timeout` from `bootstrap.dcs` (Patroni's defaults otherwise), adjusted to
    /// Patroni's rules. The store's `config` key overrides this once the cluster exists.
    pub timing: Timing,
}

/// A loaded configuration and the warnings to show the user.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Environment variables, by name. Use [`env::from_process`] for the real environment; tests pass a map.
pub type Env = BTreeMap<String, String>;

/// The `watchdog` section with Patroni's defaults; an unknown mode is an error, never a silent "off".
fn watchdog_config(raw: &WatchdogSection) -> Result<WatchdogConfig, String> {
    let defaults = WatchdogConfig::default();
    let mode = match &raw.mode {
        None => defaults.mode,
        Some(m) => WatchdogMode::parse(m)
            .ok_or_else(|| format!("{m:?} is not a watchdog mode: use off, automatic or required"))?,
    };
    Ok(WatchdogConfig {
        mode,
        device: raw.device.as_deref().map_or(defaults.device, Into::into),
        safety_margin: raw.safety_margin.unwrap_or(defaults.safety_margin),
    })
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: impl AsRef<Path>, env: &Env) -> Result<Loaded, ConfigError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
        let text = String::from_utf8(text).map_err(|e| ConfigError::Yaml {
            file: file.clone(),
            line: None,
            message: format!("the file is not UTF-8 ({e})"),
        })?;
        Self::parse(&text, &file, env)
    }

    /// Reads and checks YAML text (errors name the file as `<string>`).
    pub fn from_str(yaml: &str, env: &Env) -> Result<Loaded, ConfigError> {
        Self::parse(yaml, "<string>", env)
    }

    /// Reads and checks YAML text; `file` is the name used in messages.
    pub fn parse(yaml: &str, file: &str, env: &Env) -> Result<Loaded, ConfigError> {
        let mut root = yaml::parse(yaml).map_err(|e| ConfigError::Yaml {
            file: file.to_string(),
            line: e.line,
            message: e.message,
        })?;
        let env_warnings = env::apply(&mut root, env);
        let mut walk = schema::Walk::new(file);
        let json = walk.check(&root, &schema::Kind::Map(fields::ROOT), "")?;
        if env.get(env::CONFIGURATION_VAR).is_some_and(|v| !v.is_empty()) {
            walk.refused.push(schema::Refused {
                path: "(the whole configuration)".into(),
                origin: Origin::Env(env::CONFIGURATION_VAR.into()),
                hint: "Keel reads its configuration from the file named on the command line: write the YAML to a \
                       file and unset the variable"
                    .into(),
            });
        }
        walk.warnings.extend(env_warnings);
        if !walk.refused.is_empty() {
            return Err(ConfigError::Refused { file: file.to_string(), refused: walk.refused });
        }
        let mut warnings = std::mem::take(&mut walk.warnings);
        if let Some(w) = ignored_warning(file, &walk.ignored) {
            warnings.push(w);
        }
        let raw: RawConfig = serde_json::from_value(json).map_err(|e| ConfigError::Invalid {
            file: file.to_string(),
            path: String::new(),
            message: format!("internal: the checked configuration does not fit: {e}"),
            origin: Origin::Unknown,
        })?;

        let etcd_node = root.get("etcd3");
        if raw.etcd3.host.is_none() && raw.etcd3.hosts.is_empty() {
            return Err(ConfigError::Missing {
                file: file.to_string(),
                path: "etcd3.hosts".into(),
                origin: etcd_node.map(|n| n.origin.clone()).unwrap_or(Origin::Unknown),
            });
        }
        for h in raw.etcd3.host.iter().chain(&raw.etcd3.hosts) {
            if h.trim().is_empty() || h.contains('/') || (h.contains(':') && split_port(h).is_none()) {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    path: "etcd3.hosts".into(),
                    message: format!("{h:?} is not host or host:port"),
                    origin: etcd_node.map(|n| n.origin.clone()).unwrap_or(Origin::Unknown),
                });
            }
        }
        if let Some(p) = &raw.etcd3.protocol {
            if p != "http" && p != "https" {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    path: "etcd3.protocol".into(),
                    message: format!("{p:?} is not http or https"),
                    origin: etcd_node
                        .and_then(|n| n.get("protocol"))
                        .map(|n| n.origin.clone())
                        .unwrap_or(Origin::Unknown),
                });
            }
        }

        let watchdog = watchdog_config(&raw.watchdog).map_err(|message| ConfigError::Invalid {
            file: file.to_string(),
            path: "watchdog.mode".into(),
            message,
            origin: root.get("watchdog").map(|n| n.origin.clone()).unwrap_or(Origin::Unknown),
        })?;
        let dcs = &raw.bootstrap.dcs;
        let secs =
            |key: &str, default: u64| dcs.get(key).and_then(keel_core::dynconfig::parse_seconds).unwrap_or(default);
        let (timing, timing_warnings) = Timing::adjusted(
            secs("ttl", DEFAULT_TTL),
            secs("loop_wait", DEFAULT_LOOP_WAIT),
            secs("retry_timeout", DEFAULT_RETRY_TIMEOUT),
        );
        warnings.extend(timing_warnings.into_iter().map(|w| format!("{file}: bootstrap.dcs: {w}")));

        let config = Config {
            scope: raw.scope,
            namespace: raw.namespace.unwrap_or_else(|| "/service/".into()),
            name: raw.name,
            restapi: raw.restapi,
            etcd3: raw.etcd3,
            bootstrap: raw.bootstrap,
            postgresql: raw.postgresql,
            tags: Tags::from_json(&raw.tags),
            keel: raw.keel,
            ctl: raw.ctl,
            watchdog,
            timing,
        };
        Ok(Loaded { config, warnings })
    }

    /// etcd endpoints as `http://host:port` (port 2379 when not given), from `hosts` or else `host`.
    pub fn etcd3_endpoints(&self) -> Vec<String> {
        let protocol = self.etcd3.protocol.as_deref().unwrap_or("http");
        let hosts: Vec<&String> = if self.etcd3.hosts.is_empty() {
            self.etcd3.host.iter().collect()
        } else {
            self.etcd3.hosts.iter().collect()
        };
        hosts
            .into_iter()
            .map(|h| {
                let h = h.trim();
                if split_port(h).is_some() {
                    format!("{protocol}://{h}")
                } else {
                    format!("{protocol}://{h}:2379")
                }
            })
            .collect()
    }

    /// The store prefix of this cluster, `/<namespace>/<scope>/` with repeated slashes collapsed, as Patroni
    /// builds it (`/service/batman/`).
    pub fn cluster_prefix(&self) -> String {
        let joined = format!("/{}/{}/", self.namespace, self.scope);
        let mut out = String::with_capacity(joined.len());
        for c in joined.chars() {
            if !(c == '/' && out.ends_with('/')) {
                out.push(c);
            }
        }
        out
    }

    /// The REST API URL published in the member key: `http(s)://<connect_address or listen>/patroni` (https when
    /// `restapi.certfile` is set).
    pub fn restapi_url(&self) -> String {
        let addr = self.restapi.connect_address.as_deref().unwrap_or(&self.restapi.listen);
        let scheme = if self.restapi.certfile.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}/patroni")
    }

    /// The PostgreSQL URL published in the member key: `postgres://<connect_address>/<database>`.
    pub fn postgres_url(&self) -> String {
        format!("postgres://{}/{}", self.postgresql.connect_address, self.postgresql.database())
    }

    /// The REST API credentials keel's control commands use: `ctl.authentication`, else `restapi.authentication`.
    pub fn ctl_auth(&self) -> Option<&Auth> {
        self.ctl.authentication.as_ref().or(self.restapi.authentication.as_ref())
    }

    /// `bootstrap.dcs` as written (a JSON object, empty when absent): the initial store `config` key.
    pub fn bootstrap_dcs(&self) -> &J {
        &self.bootstrap.dcs
    }

    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// The one-line summary `keel validate` prints.
    pub fn summary(&self) -> String {
        let etcd: Vec<String> = self
            .etcd3_endpoints()
            .iter()
            .map(|e| e.trim_start_matches("http://").trim_start_matches("https://").to_string())
            .collect();
        format!(
            "cluster {}, member {}, etcd3 {}, data_dir {} (ttl {}, loop_wait {}, retry_timeout {})",
            self.scope,
            self.name,
            etcd.join(","),
            self.postgresql.data_dir,
            self.timing.ttl,
            self.timing.loop_wait,
            self.timing.retry_timeout
        )
    }
}

/// The one warning naming the settings accepted without effect, with why each does not matter.
pub fn ignored_warning(file: &str, ignored: &[(String, &str)]) -> Option<String> {
    if ignored.is_empty() {
        return None;
    }
    let items: Vec<String> = ignored.iter().map(|(path, why)| format!("{path} ({why})")).collect();
    Some(format!("{file}: these Patroni settings have no effect in Keel: {}", items.join(", ")))
}

/// Splits `host:port` (`[::1]:5432`, `a,b:5432`, `*:5432`); `None` when there is no valid port.
pub fn split_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.trim().rsplit_once(':')?;
    if host.is_empty() || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']'))) {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    Some((host, port))
}

mod etcd;

#[cfg(test)]
mod compat_tests;
#[cfg(test)]
mod tests;
