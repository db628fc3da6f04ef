//! TLS for the HTTP client that talks to members' REST APIs (keel's control commands, and the agent's calls to
//! its peers), as patronictl configures it:
//!
//! - trusted CAs: `ctl.cacert`, else `restapi.cafile`, else the system's roots;
//! - client certificate: `ctl.certfile` (key in `ctl.keyfile`, or in the same file), for APIs with
//!   `restapi.verify_client`;
//! - `ctl.insecure`: without a client certificate, the server's certificate is not checked at all; with one,
//!   only its host name is not checked (Patroni's `assert_hostname = False`).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::config::Config;
use crate::tls_verify::{AnyCertificate, ChainOnly};

/// Makes ring the process's rustls crypto provider (idempotent). HTTP clients built without
/// [`http_client`] (plain-HTTP helpers, tests) need one: reqwest is built without a provider of its own so that
/// etcd, the REST server and the clients share one TLS stack.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The client TLS configuration for `cfg`'s `ctl` and `restapi` sections. Errors name the setting and the file.
pub fn client_config(cfg: &Config) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = cfg.ctl.cacert.as_deref().map(|p| ("ctl.cacert", p));
    let ca = ca.or(cfg.restapi.cafile.as_deref().map(|p| ("restapi.cafile", p)));
    let mut roots = RootCertStore::empty();
    match ca {
        Some((setting, path)) => {
            for cert in read_certs(setting, Path::new(path))? {
                roots.add(cert).map_err(|e| format!("{setting} {path}: {e}"))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let roots = Arc::new(roots);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("cannot set up the trusted CAs: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (cfg.ctl.insecure, cfg.ctl.certfile.is_some()) {
        (false, _) => webpki,
        (true, true) => Arc::new(ChainOnly(webpki)),
        (true, false) => Arc::new(AnyCertificate(provider.clone())),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&cfg.ctl.certfile, &cfg.ctl.keyfile) {
        (Some(cert), key) => {
            let certs = read_certs("ctl.certfile", Path::new(cert))?;
            let (setting, key_path) = match key {
                Some(k) => ("ctl.keyfile", k.as_str()),
                None => ("ctl.certfile", cert.as_str()),
            };
            let key = crate::api::keys::load(setting, Path::new(key_path), cfg.ctl.keyfile_password.as_deref())?;
            builder.with_client_auth_cert(certs, key).map_err(|e| format!("ctl.certfile {cert}: {e}"))
        }
        (None, Some(_)) => Err("ctl.keyfile is set without ctl.certfile: set both, or neither".into()),
        (None, None) if cfg.ctl.keyfile_password.is_some() => {
            Err("ctl.keyfile_password is set without ctl.certfile: it would have no effect".into())
        }
        (None, None) => Ok(builder.with_no_client_auth()),
    }
}

/// A `reqwest` client with [`client_config`]'s TLS and the given connect timeout.
pub fn http_client(cfg: &Config, connect_timeout: std::time::Duration) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tls_backend_preconfigured(client_config(cfg)?)
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {e}"))
}

fn read_certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{setting} {}: cannot be read ({e})", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{setting} {}: bad PEM ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{setting} {}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}
