//! The TLS connector for tokio-postgres, over tokio-rustls, with SCRAM channel binding (`tls-server-end-point`,
//! RFC 5929: a hash of the server's certificate, with the hash of its signature algorithm; MD5 and SHA-1 become
//! SHA-256). tokio-postgres-rustls 0.13 cannot provide the binding (it reads the certificate as a
//! TBSCertificate and always fails), so `channel_binding=require` needs this one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ring::digest;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Makes a TLS connection per PostgreSQL connection, with `config`.
#[derive(Clone)]
pub struct MakeTls {
    config: Arc<ClientConfig>,
}

impl MakeTls {
    pub fn new(config: ClientConfig) -> MakeTls {
        MakeTls { config: Arc::new(config) }
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, Self::Error> {
        let name = ServerName::try_from(domain.to_string())?;
        Ok(Connect { config: self.config.clone(), name })
    }
}

/// One TLS handshake to come.
pub struct Connect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await?;
            Ok(Stream(tls))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match self.0.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => {
                let hash = digest::digest(end_point_hash(cert.as_ref()), cert.as_ref());
                ChannelBinding::tls_server_end_point(hash.as_ref().to_vec())
            }
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// DER encodings of the signature algorithms hashed with SHA-384 and SHA-512 (ECDSA and RSA PKCS#1).
const SHA384_OIDS: [&[u8]; 2] =
    [&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03], &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]];
const SHA512_OIDS: [&[u8]; 2] =
    [&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04], &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]];

/// The hash for `tls-server-end-point`: the certificate's signature hash, SHA-256 for anything weaker or unknown.
fn end_point_hash(cert: &[u8]) -> &'static digest::Algorithm {
    match signature_oid(cert) {
        Some(oid) if SHA384_OIDS.contains(&oid) => &digest::SHA384,
        Some(oid) if SHA512_OIDS.contains(&oid) => &digest::SHA512,
        _ => &digest::SHA256,
    }
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { algorithm OID, .. }, .. }`.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (_, cert, _) = der(cert)?;
    let (_, _tbs, rest) = der(cert)?;
    let (_, alg, _) = der(rest)?;
    let (tag, oid, _) = der(alg)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: (tag, contents, what follows).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (bytes, rest) = b.split_at(n);
        b = rest;
        bytes.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x))
    };
    if b.len() < len {
        return None;
    }
    let (contents, rest) = b.split_at(len);
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_algorithm_picks_the_hash() {
        // SEQUENCE { SEQUENCE {} (tbs), SEQUENCE { OID ecdsa-with-SHA384 }, BIT STRING }
        let mut cert = vec![0x30, 0x10, 0x30, 0x00, 0x30, 0x0a, 0x06, 0x08];
        cert.extend_from_slice(SHA384_OIDS[0]);
        cert.extend_from_slice(&[0x03, 0x00]);
        assert_eq!(signature_oid(&cert), Some(SHA384_OIDS[0]));
        assert!(std::ptr::eq(end_point_hash(&cert), &digest::SHA384));
        assert!(std::ptr::eq(end_point_hash(b"\x30\x00"), &digest::SHA256), "unparsable: SHA-256");
    }
}
