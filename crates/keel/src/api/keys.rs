//! Private keys from PEM files, unencrypted or as encrypted PKCS#8 (`-----BEGIN ENCRYPTED PRIVATE KEY-----`,
//! PBES2) with Patroni's `keyfile_password`. Keys in OpenSSL's legacy encrypted format (`Proc-Type:
//! 4,ENCRYPTED`) are refused with the command that converts them.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The private key in `path` (named `setting` in errors), decrypted with `password` when given.
pub fn load(setting: &str, path: &Path, password: Option<&str>) -> Result<PrivateKeyDer<'static>, String> {
    let at = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("{setting} {at}: cannot be read ({e})"))?;
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "{setting} {at}: the key is in OpenSSL's legacy encrypted format; convert it with `openssl pkcs8 -topk8 \
             -v2 aes-256-cbc -in {at} -out key.pem` (or decrypt it)"
        ));
    }
    let encrypted =
        text.find(BEGIN).and_then(|start| text[start..].find(END).map(|end| &text[start..start + end + END.len()]));
    match (encrypted, password) {
        (Some(pem), Some(password)) => {
            let (_, der) = pkcs8::der::pem::decode_vec(pem.as_bytes())
                .map_err(|e| format!("{setting} {at}: bad encrypted key PEM ({e})"))?;
            let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
                .map_err(|e| format!("{setting} {at}: bad encrypted key ({e})"))?;
            let doc = info
                .decrypt(password)
                .map_err(|e| format!("{setting} {at}: cannot decrypt the key ({e}); check the keyfile_password"))?;
            Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(doc.as_bytes().to_vec())))
        }
        (Some(_), None) => Err(format!("{setting} {at}: the key is encrypted; set keyfile_password")),
        (None, Some(_)) => Err(format!(
            "{setting} {at}: keyfile_password is set but the key is not encrypted; remove keyfile_password"
        )),
        (None, None) => {
            PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| format!("{setting} {at}: no PEM private key ({e})"))
        }
    }
}
