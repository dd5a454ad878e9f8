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

mod binding;

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
            .and_then(|c| binding::end_point_hash(c));
        match end_point {
            Some(h) => ChannelBinding::tls_server_end_point(h),
            None => ChannelBinding::none(),
        }
    }
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

    #[test]
    fn setup_reads_only_the_files_the_mode_uses() {
        let missing = |mode| TlsOptions {
            mode,
            mode_given: true,
            root_cert: Some("/nonexistent/ca.pem".into()),
            cert: Some("/nonexistent/c.pem".into()),
            key: Some("/nonexistent/c.key".into()),
            passfile: None,
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
}
