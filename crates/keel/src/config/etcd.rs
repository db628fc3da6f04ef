//! From the `etcd3` section to the store client's settings: endpoints, TLS files and credentials, with the
//! combinations that would silently do nothing refused.

use std::path::PathBuf;
use std::time::Duration;

use super::Config;
use crate::dcs::{DcsError, EtcdConfig, EtcdSecurity, EtcdTls, EtcdUser};

impl Config {
    /// How to reach etcd, every call bounded by `timeout`.
    ///
    /// Refuses `cacert`/`cert`/`key` without `protocol: https` (they would have no effect), `key` without `cert`,
    /// and `username` without `password` or the other way round.
    pub fn etcd_config(&self, timeout: Duration) -> Result<EtcdConfig, DcsError> {
        Ok(EtcdConfig::from_hosts(&self.etcd3_endpoints(), timeout).with_security(self.etcd_security()?))
    }

    /// TLS files and credentials of the `etcd3` section, checked as [`Config::etcd_config`] says.
    pub fn etcd_security(&self) -> Result<EtcdSecurity, DcsError> {
        let e = &self.etcd3;
        let https = e.protocol.as_deref() == Some("https");
        let files = [("cacert", &e.cacert), ("cert", &e.cert), ("key", &e.key)];
        let set: Vec<&str> = files.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k).collect();
        if !https && !set.is_empty() {
            return Err(DcsError::Config(format!(
                "etcd3.{} has no effect without TLS: set etcd3.protocol: https (or remove it)",
                set.join(", etcd3.")
            )));
        }
        if e.key.is_some() && e.cert.is_none() {
            return Err(DcsError::Config("etcd3.key is set without etcd3.cert: set both, or neither".into()));
        }
        let path = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(PathBuf::from);
        let tls = https.then(|| EtcdTls { cacert: path(&e.cacert), cert: path(&e.cert), key: path(&e.key) });
        let user = match (&e.username, &e.password) {
            (Some(u), Some(p)) => Some(EtcdUser::new(u.clone(), p.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(DcsError::Config("etcd3.username is set without etcd3.password: set both".into()))
            }
            (None, Some(_)) => {
                return Err(DcsError::Config("etcd3.password is set without etcd3.username: set both".into()))
            }
        };
        Ok(EtcdSecurity { tls, user })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    const BASE: &str =
        "scope: s\nname: n\nrestapi:\n  listen: 127.0.0.1:8008\npostgresql:\n  listen: 127.0.0.1:5432\n  \
                        connect_address: 127.0.0.1:5432\n  data_dir: /x\netcd3:\n  hosts: [a:1, b:2]\n";

    fn load(extra: &str) -> Config {
        Config::from_str(&format!("{BASE}{extra}"), &Env::new()).unwrap().config
    }

    #[test]
    fn https_with_files_and_a_user() {
        let c = load(
            "  protocol: https\n  cacert: /ca.pem\n  cert: /c.pem\n  key: /k.pem\n  username: u\n  password: pw\n",
        );
        let e = c.etcd_config(Duration::from_secs(3)).unwrap();
        assert_eq!(e.endpoints, ["https://a:1", "https://b:2"]);
        let tls = e.security.tls.clone().unwrap();
        assert_eq!(tls.cacert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.key, Some(PathBuf::from("/k.pem")));
        assert_eq!(e.security.user.as_ref().map(|u| u.username.as_str()), Some("u"));
        assert!(!format!("{c:?}{e:?}").contains("pw\""), "the password leaks into Debug output");
    }

    #[test]
    fn settings_without_effect_are_refused() {
        for (extra, needle) in [
            ("  cacert: /ca.pem\n", "protocol: https"),
            ("  protocol: http\n  cert: /c.pem\n", "etcd3.cert has no effect"),
            ("  protocol: https\n  key: /k.pem\n", "without etcd3.cert"),
            ("  username: u\n", "without etcd3.password"),
            ("  password: p\n", "without etcd3.username"),
        ] {
            let err = load(extra).etcd_config(Duration::from_secs(1)).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
        assert!(load("  protocol: https\n").etcd_config(Duration::from_secs(1)).unwrap().security.tls.is_some());
    }
}
