//! HTTPS for the REST API: Patroni's `restapi.certfile`, `keyfile`, `cafile` and `verify_client`.
//!
//! [`ServerTls`] holds the current rustls configuration and builds it again from the same files on
//! [`ServerTls::reload`] (`POST /reload`, `keel reload`), so a renewed certificate is served without a restart;
//! connections already open keep the certificate they started with. A reload that fails keeps the old
//! configuration and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// `restapi.verify_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyClient {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client certificate is asked for and checked when given; write endpoints require one.
    Optional,
    /// The TLS handshake fails without a valid client certificate.
    Required,
}

impl VerifyClient {
    pub fn parse(s: Option<&str>) -> Result<VerifyClient, TlsError> {
        match s.map(str::to_ascii_lowercase).as_deref() {
            None | Some("none") => Ok(VerifyClient::None),
            Some("optional") => Ok(VerifyClient::Optional),
            Some("required") => Ok(VerifyClient::Required),
            Some(other) => Err(TlsError(format!("restapi.verify_client {other:?} is not none, optional or required"))),
        }
    }
}

/// Where the server's certificate, key and client CA come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub certfile: PathBuf,
    /// `None`: the key is in `certfile`.
    pub keyfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub verify_client: VerifyClient,
    /// `restapi.ciphers` (see [`super::ciphers`]).
    pub ciphers: Option<String>,
    /// `restapi.keyfile_password`: the key is encrypted PKCS#8.
    pub keyfile_password: Option<String>,
}

/// Why the REST API's TLS could not be set up; names the setting and the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("REST API TLS: {0}")]
pub struct TlsError(pub String);

/// The REST server's TLS configuration, reloadable.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files and builds the configuration.
    pub fn new(files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let config = build(&files)?;
        Ok(ServerTls { files, current: RwLock::new(config) })
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn verify_client(&self) -> VerifyClient {
        self.files.verify_client
    }

    /// Reads the files again; on success new connections get the new certificate, on failure nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files)?;
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }
}

/// The TLS settings of the `restapi` section: `None` without `certfile` (plain HTTP). `keyfile`, `cafile` or a
/// `verify_client` other than `none` without `certfile` would do nothing and are refused.
pub fn from_config(rest: &crate::config::RestApi) -> Result<Option<ServerTls>, TlsError> {
    let verify_client = VerifyClient::parse(rest.verify_client.as_deref())?;
    let Some(certfile) = &rest.certfile else {
        let mut set = Vec::new();
        rest.keyfile.is_some().then(|| set.push("restapi.keyfile"));
        rest.cafile.is_some().then(|| set.push("restapi.cafile"));
        rest.ciphers.is_some().then(|| set.push("restapi.ciphers"));
        rest.keyfile_password.is_some().then(|| set.push("restapi.keyfile_password"));
        (verify_client != VerifyClient::None).then(|| set.push("restapi.verify_client"));
        if set.is_empty() {
            return Ok(None);
        }
        return Err(TlsError(format!(
            "{} has no effect without restapi.certfile (the API would answer in plain HTTP): set certfile or \
             remove it",
            set.join(", ")
        )));
    };
    let files = ServerTlsFiles {
        certfile: certfile.into(),
        keyfile: rest.keyfile.as_ref().map(PathBuf::from),
        cafile: rest.cafile.as_ref().map(PathBuf::from),
        verify_client,
        ciphers: rest.ciphers.clone(),
        keyfile_password: rest.keyfile_password.clone(),
    };
    ServerTls::new(files).map(Some)
}

fn build(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(ciphers) = &files.ciphers {
        super::ciphers::restrict(&mut provider, ciphers)?;
    }
    let provider = Arc::new(provider);
    let certs = read_certs("restapi.certfile", &files.certfile)?;
    let (key_setting, key_path) = match &files.keyfile {
        Some(k) => ("restapi.keyfile", k.as_path()),
        None => ("restapi.certfile", files.certfile.as_path()),
    };
    let key = super::keys::load(key_setting, key_path, files.keyfile_password.as_deref()).map_err(TlsError)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("cannot set up TLS: {e}")))?;
    let builder = match files.verify_client {
        VerifyClient::None => builder.with_no_client_auth(),
        mode => {
            let Some(cafile) = &files.cafile else {
                return Err(TlsError(
                    "restapi.verify_client optional/required needs restapi.cafile (the CA that signs client \
                     certificates)"
                        .into(),
                ));
            };
            let mut roots = RootCertStore::empty();
            for cert in read_certs("restapi.cafile", cafile)? {
                roots.add(cert).map_err(|e| TlsError(format!("restapi.cafile {}: {e}", cafile.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == VerifyClient::Optional { verifier.allow_unauthenticated() } else { verifier };
            let verifier =
                verifier.build().map_err(|e| TlsError(format!("restapi.cafile {}: {e}", cafile.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError(format!("restapi.certfile {} and its key do not fit together: {e}", files.certfile.display()))
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{setting} {}: cannot be read ({e})", path.display())))
}

fn read_certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(setting, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{setting} {}: bad PEM ({e})", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{setting} {}: holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_client_values() {
        assert_eq!(VerifyClient::parse(None), Ok(VerifyClient::None));
        assert_eq!(VerifyClient::parse(Some("Required")), Ok(VerifyClient::Required));
        assert!(VerifyClient::parse(Some("sometimes")).is_err());
    }

    #[test]
    fn missing_files_are_named() {
        let files = ServerTlsFiles {
            certfile: "/nonexistent/api.pem".into(),
            keyfile: None,
            cafile: None,
            verify_client: VerifyClient::None,
            ciphers: None,
            keyfile_password: None,
        };
        let err = ServerTls::new(files).unwrap_err().to_string();
        assert!(err.contains("restapi.certfile /nonexistent/api.pem"), "{err}");
    }
}
