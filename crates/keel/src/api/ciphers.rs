//! `restapi.ciphers`: Patroni hands it to OpenSSL's `set_ciphers`, which limits the TLS 1.2 cipher suites and
//! leaves TLS 1.3's alone. Keel takes the same meaning for an explicit list of suite names (OpenSSL's, like
//! `ECDHE-RSA-AES256-GCM-SHA384`, or IANA's, like `TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`, separated by `:`, `,`
//! or spaces). OpenSSL's keywords and operators (`HIGH`, `!aNULL`, `@STRENGTH`) are refused rather than guessed;
//! names rustls does not implement (CBC, RSA key exchange, DHE) are ignored as OpenSSL ignores unknown names,
//! and a list with no usable suite is refused.

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, SupportedCipherSuite};

use super::tls::TlsError;

/// OpenSSL's names for the TLS 1.2 suites rustls implements.
const OPENSSL_NAMES: [(&str, CipherSuite); 6] = [
    ("ECDHE-ECDSA-AES128-GCM-SHA256", CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    ("ECDHE-ECDSA-AES256-GCM-SHA384", CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ("ECDHE-RSA-AES128-GCM-SHA256", CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
    ("ECDHE-RSA-AES256-GCM-SHA384", CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
    ("ECDHE-RSA-CHACHA20-POLY1305", CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
];

/// Keeps in `provider` the TLS 1.2 suites `ciphers` names, and every TLS 1.3 suite.
pub fn restrict(provider: &mut CryptoProvider, ciphers: &str) -> Result<(), TlsError> {
    let mut wanted = Vec::new();
    for name in ciphers.split([':', ',', ' ']).map(str::trim).filter(|n| !n.is_empty()) {
        if name.starts_with(['!', '-', '+', '@']) || name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            return Err(TlsError(format!(
                "restapi.ciphers: {name:?} is an OpenSSL keyword or operator; Keel takes an explicit list of suite \
                 names, e.g. ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
            )));
        }
        let by_openssl = OPENSSL_NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, s)| *s);
        let by_iana = provider
            .cipher_suites
            .iter()
            .map(SupportedCipherSuite::suite)
            .find(|s| s.as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)));
        if let Some(suite) = by_openssl.or(by_iana) {
            wanted.push(suite);
        }
    }
    let is_tls13 = |s: &SupportedCipherSuite| matches!(s, SupportedCipherSuite::Tls13(_));
    if !provider.cipher_suites.iter().any(|s| !is_tls13(s) && wanted.contains(&s.suite())) {
        let known: Vec<&str> = OPENSSL_NAMES.iter().map(|(n, _)| *n).collect();
        return Err(TlsError(format!(
            "restapi.ciphers {ciphers:?} names no TLS 1.2 suite Keel implements; choose from {}",
            known.join(", ")
        )));
    }
    provider.cipher_suites.retain(|s| is_tls13(s) || wanted.contains(&s.suite()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls12(p: &CryptoProvider) -> Vec<CipherSuite> {
        p.cipher_suites.iter().filter(|s| matches!(s, SupportedCipherSuite::Tls12(_))).map(|s| s.suite()).collect()
    }

    #[test]
    fn explicit_lists_limit_tls12_and_keep_tls13() {
        let mut p = rustls::crypto::ring::default_provider();
        let tls13_before = p.cipher_suites.len() - tls12(&p).len();
        restrict(&mut p, "ECDHE-RSA-AES256-GCM-SHA384:AES256-SHA, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256")
            .unwrap();
        assert_eq!(
            tls12(&p),
            [
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            ]
        );
        assert_eq!(p.cipher_suites.len() - 2, tls13_before);
    }

    #[test]
    fn keywords_and_useless_lists_are_refused() {
        for bad in ["HIGH:!aNULL", "ECDHE-RSA-AES256-GCM-SHA384:!MD5", "AES256-SHA:DHE-RSA-AES256-SHA"] {
            let mut p = rustls::crypto::ring::default_provider();
            assert!(restrict(&mut p, bad).is_err(), "{bad}");
        }
    }
}
