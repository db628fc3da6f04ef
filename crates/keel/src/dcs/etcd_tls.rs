//! TLS and authentication for the etcd connection: Patroni's `etcd3.cacert`, `cert`, `key` (with
//! `protocol: https`) and `username`, `password`.
//!
//! The files are read again on every (re)connection, so a renewed client certificate is picked up without a
//! restart. Failures are told apart by type and gRPC code, never by message text: a `rustls::Error` anywhere in
//! the error's source chain is a TLS failure ([`DcsError::Tls`]), `Unauthenticated` / `PermissionDenied` (and
//! `InvalidArgument` from the authentication call made while connecting) are credential failures
//! ([`DcsError::Auth`]). The password never appears in `Debug` output or in messages.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::DcsError;

/// Client certificate and trusted CA for `https` endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM file with the CA certificate(s) that signed etcd's server certificate; `None`: the system's roots.
    pub cacert: Option<PathBuf>,
    /// PEM client certificate (etcd's `--client-cert-auth`); may hold the key too when `key` is `None`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

/// etcd user credentials (`etcdctl user add`).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUser {
    pub username: String,
    password: String,
}

impl EtcdUser {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> EtcdUser {
        EtcdUser { username: username.into(), password: password.into() }
    }
}

impl std::fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdUser").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// How the connection to etcd is secured: TLS (for `https://` endpoints) and/or a user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    pub tls: Option<EtcdTls>,
    pub user: Option<EtcdUser>,
}

impl EtcdSecurity {
    /// Adds TLS and credentials to `opts` for a connection to `endpoint`, reading the certificate files now.
    pub(super) fn apply(&self, mut opts: ConnectOptions, endpoint: &str) -> Result<ConnectOptions, DcsError> {
        if let Some(user) = &self.user {
            opts = opts.with_user(user.username.clone(), user.password.clone()).with_auto_token_refresh(true);
        }
        if !endpoint.starts_with("https://") {
            return Ok(opts);
        }
        let tls = self.tls.clone().unwrap_or_default();
        let mut config = TlsOptions::new();
        config = match &tls.cacert {
            Some(path) => {
                let pem = read_pem("etcd3.cacert", path)?;
                if CertificateDer::pem_slice_iter(&pem).next().is_none() {
                    return Err(bad_file("etcd3.cacert", path, "holds no PEM certificate"));
                }
                config.ca_certificate(Certificate::from_pem(pem))
            }
            None => config.with_native_roots(),
        };
        match (&tls.cert, &tls.key) {
            (Some(cert), key) => {
                let cert_pem = read_pem("etcd3.cert", cert)?;
                if CertificateDer::pem_slice_iter(&cert_pem).next().is_none() {
                    return Err(bad_file("etcd3.cert", cert, "holds no PEM certificate"));
                }
                let (key_name, key_path) = match key {
                    Some(k) => ("etcd3.key", k.as_path()),
                    None => ("etcd3.cert", cert.as_path()),
                };
                let key_pem = read_pem(key_name, key_path)?;
                if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                    return Err(bad_file(
                        key_name,
                        key_path,
                        "holds no unencrypted PEM private key (encrypted keys and key_password are not supported)",
                    ));
                }
                config = config.identity(Identity::from_pem(cert_pem, key_pem));
            }
            (None, Some(_)) => {
                return Err(DcsError::Config("etcd3.key is set without etcd3.cert: set both, or neither".into()))
            }
            (None, None) => {}
        }
        Ok(opts.with_tls(config))
    }

    /// A TLS or credential failure hidden in `e`, as a [`DcsError`] naming the endpoint and what to check.
    /// `connecting`: the error came from [`etcd_client::Client::connect`], whose only call is the authentication.
    pub(super) fn classify(
        &self,
        e: &etcd_client::Error,
        endpoint: &str,
        op: &'static str,
        connecting: bool,
    ) -> Option<DcsError> {
        use tonic::Code;
        let tls_endpoint = endpoint.starts_with("https://");
        if let Some(detail) = find_tls_error(e, tls_endpoint) {
            return Some(DcsError::Tls { store: endpoint.to_string(), op, detail });
        }
        // With TLS 1.3 a server refusing the client certificate (missing, or from a CA it does not trust) may just
        // close the connection after the handshake: the request sees "canceled", a broken pipe or reset under a
        // bare "transport error" status, or a transport error when the close comes first, rather than the alert.
        // A refused or unreachable address is not that.
        let closed = match e {
            etcd_client::Error::GRpcStatus(status) => {
                status.code() == Code::Cancelled || status.source().is_some_and(peer_closed)
            }
            etcd_client::Error::TransportError(t) => !network_unreachable(t),
            _ => false,
        };
        if tls_endpoint && closed {
            return Some(self.closed_after_handshake(e, endpoint, op));
        }
        let etcd_client::Error::GRpcStatus(status) = e else { return None };
        let auth = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => true,
            Code::InvalidArgument => connecting && self.user.is_some(),
            _ => false,
        };
        if let Some(detail) = status.source().and_then(|s| find_tls_in(s, tls_endpoint)) {
            return Some(DcsError::Tls { store: endpoint.to_string(), op, detail });
        }
        auth.then(|| DcsError::Auth {
            store: endpoint.to_string(),
            op,
            user: self.user.as_ref().map(|u| u.username.clone()),
            detail: format!("{:?}: {}", status.code(), status.message()),
        })
    }
}

impl EtcdSecurity {
    fn closed_after_handshake(&self, e: &etcd_client::Error, endpoint: &str, op: &'static str) -> DcsError {
        let offered = if self.tls.as_ref().is_some_and(|t| t.cert.is_some()) {
            "the client certificate offered may not be signed by a CA etcd trusts"
        } else {
            "no client certificate was offered"
        };
        DcsError::Tls {
            store: endpoint.to_string(),
            op,
            detail: format!(
                "etcd closed the TLS connection ({e}); {offered}: if etcd runs with --client-cert-auth, set \
                 etcd3.cert and etcd3.key to a certificate its --trusted-ca-file signed"
            ),
        }
    }
}

/// Whether the transport error's causes include an address that refused or could not be reached (by I/O error
/// kind): etcd is down or the host wrong, not a TLS refusal.
fn network_unreachable(e: &(dyn StdError + 'static)) -> bool {
    use std::io::ErrorKind as K;
    io_error_in(e, &[K::ConnectionRefused, K::TimedOut, K::HostUnreachable, K::NetworkUnreachable, K::AddrNotAvailable])
}

/// Whether the error's causes include the peer closing the connection (by I/O error kind).
fn peer_closed(e: &(dyn StdError + 'static)) -> bool {
    use std::io::ErrorKind as K;
    io_error_in(e, &[K::BrokenPipe, K::ConnectionReset, K::ConnectionAborted, K::UnexpectedEof])
}

/// Whether an I/O error of one of `kinds` is among `e`'s causes.
fn io_error_in(e: &(dyn StdError + 'static), kinds: &[std::io::ErrorKind]) -> bool {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>().is_some_and(|io| kinds.contains(&io.kind())) {
            return true;
        }
        cause = c.source();
    }
    false
}

fn find_tls_error(e: &etcd_client::Error, tls_endpoint: bool) -> Option<String> {
    match e {
        etcd_client::Error::TransportError(t) => find_tls_in(t, tls_endpoint),
        etcd_client::Error::IoError(io) => find_tls_in(io, tls_endpoint),
        _ => None,
    }
}

/// A TLS failure in `e`'s source chain: a `rustls::Error` (also inside a `std::io::Error`, where hyper puts it),
/// or, on a TLS connection, an `InvalidData` I/O error: the kind tokio-rustls gives a TLS alert from the peer
/// (e.g. etcd refusing a missing client certificate), whose `rustls::Error` it keeps only as text.
fn find_tls_in(e: &(dyn StdError + 'static), tls_endpoint: bool) -> Option<String> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls.to_string());
            }
            if tls_endpoint && io.kind() == std::io::ErrorKind::InvalidData {
                return Some(io.to_string());
            }
        }
        cur = err.source();
    }
    None
}

fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>, DcsError> {
    std::fs::read(path).map_err(|e| bad_file(key, path, &format!("cannot be read ({e})")))
}

fn bad_file(key: &str, path: &Path, why: &str) -> DcsError {
    DcsError::Config(format!("{key} {}: {why}; fix the file or the setting", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let sec = EtcdSecurity { tls: None, user: Some(EtcdUser::new("keel", "s3cret-pw")) };
        let text = format!("{sec:?}");
        assert!(text.contains("keel") && !text.contains("s3cret-pw"), "{text}");
    }

    #[test]
    fn unreadable_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let sec = |cacert: PathBuf| EtcdSecurity {
            tls: Some(EtcdTls { cacert: Some(cacert), ..Default::default() }),
            user: None,
        };
        let err = sec(dir.path().join("missing.pem")).apply(ConnectOptions::new(), "https://h:1").unwrap_err();
        assert!(err.to_string().contains("etcd3.cacert") && err.to_string().contains("missing.pem"), "{err}");
        let err = sec(empty).apply(ConnectOptions::new(), "https://h:1").unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        // Plain http endpoints never read the files.
        assert!(sec(dir.path().join("missing.pem")).apply(ConnectOptions::new(), "http://h:1").is_ok());
    }

    /// etcd refusing a missing client certificate under TLS 1.3 may surface as a bare "transport error" status
    /// over a broken pipe (seen in about one run in three): still a TLS problem on an https endpoint, while a
    /// refused connection is not.
    #[test]
    fn a_broken_pipe_after_the_handshake_is_named_a_tls_refusal() {
        use std::io::{Error, ErrorKind};
        let sec = EtcdSecurity::default();
        let status = |kind| {
            let mut status = tonic::Status::new(tonic::Code::Unknown, "transport error");
            status.set_source(std::sync::Arc::new(Error::new(kind, "stream closed")));
            etcd_client::Error::GRpcStatus(status)
        };
        let err = sec.classify(&status(ErrorKind::BrokenPipe), "https://h:1", "range", false);
        assert!(matches!(err, Some(DcsError::Tls { .. })), "{err:?}");
        assert!(err.unwrap().to_string().contains("no client certificate was offered"));
        assert!(sec.classify(&status(ErrorKind::BrokenPipe), "http://h:1", "range", false).is_none());
        assert!(sec.classify(&status(ErrorKind::ConnectionRefused), "https://h:1", "range", false).is_none());
    }
}
