//! Throw-away certificates for TLS tests, made with the `openssl` command line tool (no extra crate).
//!
//! [`TestPki::generate`] writes, in a fresh directory:
//! - `ca.pem`/`ca.key`: the test CA; `other-ca.pem`: an unrelated CA (for "wrong CA" tests);
//! - `server.pem`/`server.key`: signed by the CA, for `127.0.0.1` and `localhost` (server and client use);
//! - `client.pem`/`client.key`: signed by the CA, common name `keel-client`;
//! - `rogue.pem`/`rogue.key`: a client certificate signed by the other CA;
//! - `server-enc.key`, `client-enc.key`: the keys as encrypted PKCS#8 with [`KEY_PASSWORD`];
//!   `server-legacy.key`: the server key in OpenSSL's legacy encrypted format;
//! - `empty.crl`, `server-revoked.crl`: CRLs from the CA, the second revoking the server certificate.
//!
//! The directory and the files are readable by everyone (agents in tests run as `postgres`); PostgreSQL's own
//! copy of the server key needs mode 0600 and its owner, see [`TestPki::copy_private`].

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// The password of the encrypted keys.
pub const KEY_PASSWORD: &str = "key-pw";

/// A CA, a server and a client certificate in a temporary directory (removed on drop).
#[derive(Debug)]
pub struct TestPki {
    dir: TempDir,
}

/// The least `openssl ca` needs to revoke a certificate and sign CRLs.
const CRL_CONF: &str = "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
                        default_md = sha256\ndefault_crl_days = 3\n";

const LEAF_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                        extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n";

impl TestPki {
    pub fn generate() -> io::Result<TestPki> {
        let dir = tempfile::Builder::new().prefix("keel-pki-").tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let pki = TestPki { dir };
        pki.ca("ca", "keel-test-ca")?;
        pki.ca("other-ca", "keel-other-ca")?;
        fs::write(pki.path("leaf.ext"), LEAF_EXT)?;
        pki.leaf("server", "127.0.0.1", "ca")?;
        pki.leaf("client", "keel-client", "ca")?;
        pki.leaf("rogue", "keel-client", "other-ca")?;
        for name in ["server", "client"] {
            let (key, enc) = (format!("{name}.key"), format!("{name}-enc.key"));
            let pass = format!("pass:{KEY_PASSWORD}");
            pki.openssl(&["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", &key, "-out", &enc, "-passout", &pass])?;
        }
        let pass = format!("pass:{KEY_PASSWORD}");
        pki.openssl(&["ec", "-in", "server.key", "-aes256", "-out", "server-legacy.key", "-passout", &pass])?;
        pki.crls()?;
        for entry in fs::read_dir(pki.dir.path())? {
            fs::set_permissions(entry?.path(), fs::Permissions::from_mode(0o644))?;
        }
        Ok(pki)
    }

    /// A file of this PKI, e.g. `path("ca.pem")`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Copies `name` to `to` with mode 0600, owned by `owner` (uid, gid) when given: PostgreSQL refuses a
    /// server key others can read.
    pub fn copy_private(&self, name: &str, to: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
        fs::copy(self.path(name), to)?;
        fs::set_permissions(to, fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(to, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// `empty.crl` (nothing revoked) and `server-revoked.crl` (the server certificate revoked), signed by the CA.
    fn crls(&self) -> io::Result<()> {
        fs::write(self.path("crl.cnf"), CRL_CONF)?;
        fs::write(self.path("index.txt"), "")?;
        fs::write(self.path("crlnumber"), "01\n")?;
        let ca = ["-config", "crl.cnf", "-keyfile", "ca.key", "-cert", "ca.pem"];
        self.openssl(&[&["ca"][..], &ca, &["-gencrl", "-out", "empty.crl"]].concat())?;
        self.openssl(&[&["ca"][..], &ca, &["-revoke", "server.pem"]].concat())?;
        self.openssl(&[&["ca"][..], &ca, &["-gencrl", "-out", "server-revoked.crl"]].concat())
    }

    fn ca(&self, name: &str, cn: &str) -> io::Result<()> {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ])
    }

    fn leaf(&self, name: &str, cn: &str, ca: &str) -> io::Result<()> {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "3",
            "-extfile",
            "leaf.ext",
            "-out",
            &format!("{name}.pem"),
        ])
    }

    fn openssl(&self, args: &[&str]) -> io::Result<()> {
        let out = Command::new("openssl").args(args).current_dir(self.dir.path()).output().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot run openssl: {e}; install it (apt-get install openssl)"))
        })?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }
}
