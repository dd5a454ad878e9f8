//! TLS for the controller's PostgreSQL connections: tokio-postgres's
//! `MakeTlsConnect`/`TlsConnect` over tokio-rustls (ring), with libpq's `sslmode`
//! semantics. `require` and `prefer` encrypt without checking the certificate
//! unless `sslrootcert` is given (then as `verify-ca`); `verify-ca` checks the
//! chain against `sslrootcert` or the system's roots but not the host name;
//! `verify-full` checks both. Whether TLS is tried at all, and the fallback of
//! `prefer` when the server refuses it, is tokio-postgres's part.
//!
//! The session offers SCRAM channel binding (`tls-server-end-point`).
//!
//! A failed handshake comes back as a [`HandshakeError`] naming the host and the
//! reason in words; tokio-postgres wraps it, and `Db::connect` names the side.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;

use crate::dsn::{TlsMode, TlsOptions};

/// Makes one [`PgTlsConnect`] per host; built once per connection attempt.
#[derive(Clone)]
pub(crate) struct MakePgTls {
    connector: TlsConnector,
    /// Where the trusted roots come from, for messages.
    roots: Arc<str>,
}

impl MakePgTls {
    /// Reads the DSN's certificate files; the error names the file and the key.
    pub fn new(o: &TlsOptions) -> Result<MakePgTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Disable never reaches the handshake: no file is read for it.
        let verify = match (o.mode, &o.root_cert) {
            (TlsMode::Disable, _) | (TlsMode::Prefer | TlsMode::Require, None) => None,
            (TlsMode::VerifyFull, _) => Some(true),
            _ => Some(false),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let algs = provider.signature_verification_algorithms;
        let builder = match verify {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCheck(algs))),
            Some(full) => {
                let roots = Arc::new(roots(o.root_cert.as_deref(), "sslrootcert")?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("sslrootcert: {e}"))?;
                let verifier: Arc<dyn ServerCertVerifier> = if full {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
            }
        };
        let mut config = match (&o.cert, &o.key) {
            (Some(cert), Some(key)) if o.mode != TlsMode::Disable => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        // PostgreSQL 17 checks the protocol name when a client offers one.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        let roots = match &o.root_cert {
            Some(p) => format!("sslrootcert {}", p.display()),
            None => "the system's roots".to_string(),
        };
        Ok(MakePgTls {
            connector: TlsConnector::from(Arc::new(config)),
            roots: roots.into(),
        })
    }
}

/// The certificates in `file` (PEM), or the system's when it is not given; an
/// error names the file as `label` (`sslrootcert`, `CA file`). The one root store
/// builder of the controller: the secret stores' HTTP client uses it too.
pub(crate) fn roots(file: Option<&Path>, label: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{label} {}: {e}", path.display()))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("{label} {}: {e}", path.display()))?;
            }
        }
        // None found: a handshake then fails with "unknown issuer", which says so.
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(roots)
}

impl<S> MakeTlsConnect<S> for MakePgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = HandshakeError;

    fn make_tls_connect(&mut self, host: &str) -> Result<PgTlsConnect, HandshakeError> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| HandshakeError {
            host: host.to_string(),
            reason: format!("not a name TLS can check: {e}"),
        })?;
        Ok(PgTlsConnect {
            make: self.clone(),
            host: host.to_string(),
            name,
        })
    }
}

/// The handshake with one host.
pub(crate) struct PgTlsConnect {
    make: MakePgTls,
    host: String,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, HandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            match self.make.connector.connect(self.name, stream).await {
                Ok(s) => Ok(PgTlsStream(s)),
                Err(e) => Err(HandshakeError {
                    reason: reason(&e, &self.host, &self.make.roots),
                    host: self.host,
                }),
            }
        })
    }
}

/// Why the handshake with `host` failed, in words.
fn reason(e: &io::Error, host: &str, roots: &str) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("certificate has an unknown issuer: it is not signed by a CA in {roots}")
        }
        rustls::Error::InvalidCertificate(
            c @ (CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }),
        ) => format!("certificate is not valid for host {host} ({c})"),
        rustls::Error::InvalidCertificate(c) => format!("certificate rejected: {c}"),
        other => other.to_string(),
    }
}

/// A TLS handshake with a database server failed.
#[derive(Debug)]
pub struct HandshakeError {
    host: String,
    reason: String,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server {}: {}", self.host, self.reason)
    }
}

impl std::error::Error for HandshakeError {}

/// An established TLS session.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    /// `tls-server-end-point` (RFC 5929), so SCRAM can bind the password
    /// exchange to this TLS session (`SCRAM-SHA-256-PLUS`). Without it (an
    /// algorithm outside the table) SCRAM runs unbound, which servers accept.
    fn channel_binding(&self) -> ChannelBinding {
        let end_point = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| end_point_hash(c));
        match end_point {
            Some(h) => ChannelBinding::tls_server_end_point(h),
            None => ChannelBinding::none(),
        }
    }
}

/// The certificate's hash with its signature's hash function, SHA-256 for MD5 and
/// SHA-1 (RFC 5929 section 4.1); `None` for algorithms without one here.
fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let oid = signature_oid(cert)?;
    let alg = match (oid.strip_prefix(RSA), oid.strip_prefix(ECDSA)) {
        // md5, sha1, sha256 with RSA; ecdsa-with-SHA1, -SHA256.
        (Some([0x04 | 0x05 | 0x0b]), _) | (_, Some([0x01] | [0x03, 0x02])) => &digest::SHA256,
        (Some([0x0c]), _) | (_, Some([0x03, 0x03])) => &digest::SHA384,
        (Some([0x0d]), _) | (_, Some([0x03, 0x04])) => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(alg, cert).as_ref().to_vec())
}

/// The OID of `signatureAlgorithm` in a DER certificate:
/// `SEQUENCE { tbsCertificate, SEQUENCE { OID, … }, BIT STRING }`.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (_, _, rest) = der(cert)?;
    let (0x30, alg, _) = der(rest)? else {
        return None;
    };
    match der(alg)? {
        (0x06, oid, _) => Some(oid),
        _ => None,
    }
}

/// The DER element at the start of `b`: tag, contents and what follows.
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
        let len = b[..n].iter().fold(0usize, |l, x| l << 8 | usize::from(*x));
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `require` without `sslrootcert`: any certificate, as libpq. The handshake's
/// signatures are still checked, so the server holds the certificate's key.
#[derive(Debug)]
struct NoCheck(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: webpki's checks, except the host name. webpki checks the name
/// last, after the chain, so a name error means everything else passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's outline: an empty TBS, the algorithm, an empty signature.
    fn cert(oid: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend(oid);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend(alg);
        body.extend([0x03, 0x01, 0x00]);
        let mut c = vec![0x30, 0x81, body.len() as u8];
        c.extend(body);
        c
    }

    #[test]
    fn setup_reads_only_the_files_the_mode_uses() {
        let missing = |mode| TlsOptions {
            mode,
            mode_given: true,
            root_cert: Some("/nonexistent/ca.pem".into()),
            cert: Some("/nonexistent/c.pem".into()),
            key: Some("/nonexistent/c.key".into()),
        };
        assert!(MakePgTls::new(&missing(TlsMode::Disable)).is_ok());
        let e = MakePgTls::new(&missing(TlsMode::VerifyFull)).err().unwrap();
        assert!(e.starts_with("sslrootcert /nonexistent/ca.pem"), "{e}");
        let e = MakePgTls::new(&TlsOptions {
            root_cert: None,
            ..missing(TlsMode::Require)
        })
        .err()
        .unwrap();
        assert!(e.starts_with("sslcert /nonexistent/c.pem"), "{e}");
        assert!(MakePgTls::new(&TlsOptions::default()).is_ok());
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let ecdsa_sha384 = cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]);
        let h = end_point_hash(&ecdsa_sha384).unwrap();
        assert_eq!(
            h,
            ring::digest::digest(&ring::digest::SHA384, &ecdsa_sha384).as_ref()
        );
        // SHA-1 with RSA is hashed with SHA-256.
        let rsa_sha1 = cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
        assert_eq!(end_point_hash(&rsa_sha1).unwrap().len(), 32);
        // Ed25519: no hash function of its own.
        assert_eq!(end_point_hash(&cert(&[0x2b, 0x65, 0x70])), None);
        assert_eq!(end_point_hash(&[0x30, 0x05, 0x30]), None);
    }
}
