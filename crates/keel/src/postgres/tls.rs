//! TLS for the agent's own PostgreSQL connections, with libpq's meaning of `sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`, `sslcrl` and `channel_binding` (Patroni passes the same keys to psycopg):
//!
//! | sslmode | TLS | server certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` | when the server offers it | no (as libpq, unless `sslrootcert` is set: then as `verify-ca`) |
//! | `require` | always | no (likewise, `verify-ca` when `sslrootcert` is set) |
//! | `verify-ca` | always | chain against `sslrootcert` |
//! | `verify-full` | always | chain and host name |
//!
//! Child processes (`pg_basebackup`, `pg_rewind`) and the walreceiver get the same keys in their connection string
//! and libpq applies them itself.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::{ChannelBinding, SslMode};

use super::ConnParams;
use crate::tls_verify::{AnyCertificate, ChainOnly};

/// TLS files and channel binding of a connection (`None`: libpq's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslFiles {
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub sslcrl: Option<String>,
    /// `disable`, `prefer` or `require`.
    pub channel_binding: Option<String>,
}

/// Why TLS for a PostgreSQL connection could not be set up; names the setting and the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PostgreSQL TLS settings: {0}")]
pub struct PgTlsError(pub String);

/// How server certificates are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    Chain,
    Full,
}

/// tokio-postgres' `SslMode` for libpq's `sslmode` (empty: `prefer`).
pub fn ssl_mode(sslmode: &str) -> Result<SslMode, PgTlsError> {
    match sslmode {
        "disable" => Ok(SslMode::Disable),
        "" | "allow" | "prefer" => Ok(SslMode::Prefer),
        "require" | "verify-ca" | "verify-full" => Ok(SslMode::Require),
        other => Err(PgTlsError(format!(
            "sslmode {other:?} is not disable, allow, prefer, require, verify-ca or verify-full"
        ))),
    }
}

pub fn channel_binding(value: Option<&str>) -> Result<Option<ChannelBinding>, PgTlsError> {
    match value {
        None => Ok(None),
        Some("disable") => Ok(Some(ChannelBinding::Disable)),
        Some("prefer") => Ok(Some(ChannelBinding::Prefer)),
        Some("require") => Ok(Some(ChannelBinding::Require)),
        Some(other) => Err(PgTlsError(format!("channel_binding {other:?} is not disable, prefer or require"))),
    }
}

/// The TLS connector for `params`, reading the certificate files now.
pub fn connector(params: &ConnParams) -> Result<super::tls_stream::MakeTls, PgTlsError> {
    let ssl = &params.ssl;
    let check = match params.sslmode.as_str() {
        "verify-full" => Check::Full,
        "verify-ca" => Check::Chain,
        _ if ssl.sslrootcert.is_some() => Check::Chain,
        _ => Check::None,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::None => Arc::new(AnyCertificate(provider.clone())),
        Check::Chain | Check::Full => {
            let Some(rootcert) = &ssl.sslrootcert else {
                return Err(PgTlsError(format!(
                    "sslmode {} needs sslrootcert (the CA that signed the server's certificate)",
                    params.sslmode
                )));
            };
            let mut roots = RootCertStore::empty();
            for cert in certs("sslrootcert", rootcert)? {
                roots.add(cert).map_err(|e| PgTlsError(format!("sslrootcert {rootcert}: {e}")))?;
            }
            let mut builder = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if let Some(crl) = &ssl.sslcrl {
                builder = builder.with_crls(crls(crl)?);
            }
            let webpki = builder.build().map_err(|e| PgTlsError(format!("sslrootcert {rootcert}: {e}")))?;
            if check == Check::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgTlsError(format!("cannot set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&ssl.sslcert, &ssl.sslkey) {
        (Some(cert), Some(key)) => {
            let pem = read("sslkey", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| PgTlsError(format!("sslkey {key}: no unencrypted PEM private key ({e})")))?;
            builder
                .with_client_auth_cert(certs("sslcert", cert)?, key_der)
                .map_err(|e| PgTlsError(format!("sslcert {cert} and sslkey {key}: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(PgTlsError("sslcert and sslkey go together: set both, or neither".into())),
    };
    Ok(super::tls_stream::MakeTls::new(config))
}

fn read(setting: &str, path: &str) -> Result<Vec<u8>, PgTlsError> {
    std::fs::read(Path::new(path)).map_err(|e| PgTlsError(format!("{setting} {path}: cannot be read ({e})")))
}

fn certs(setting: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, PgTlsError> {
    let pem = read(setting, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PgTlsError(format!("{setting} {path}: bad PEM ({e})")))?;
    if certs.is_empty() {
        return Err(PgTlsError(format!("{setting} {path}: holds no PEM certificate")));
    }
    Ok(certs)
}

fn crls(path: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, PgTlsError> {
    let pem = read("sslcrl", path)?;
    CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PgTlsError(format!("sslcrl {path}: bad PEM ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_their_requirements() {
        assert_eq!(ssl_mode("verify-full"), Ok(SslMode::Require));
        assert_eq!(ssl_mode(""), Ok(SslMode::Prefer));
        assert!(ssl_mode("sometimes").is_err());
        let mut p = ConnParams::new("h", 1, "u");
        p.sslmode = "verify-ca".into();
        let err = connector(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("needs sslrootcert"), "{err}");
        p.sslmode = "require".into();
        p.ssl.sslcert = Some("/c.pem".into());
        let err = connector(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("sslcert and sslkey go together"), "{err}");
    }
}
