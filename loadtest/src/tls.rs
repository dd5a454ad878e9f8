//! The rustls client configuration: which roots to trust and which protocol to offer.
//!
//! Roots are the system's store, or only the `--cacert` file when one is given (as curl
//! does: a private CA is the usual reason to pass one). `--insecure` skips verification of
//! the chain and name but still checks the handshake signatures, so a broken TLS stack on
//! the server is still reported as a TLS error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

/// A TLS setup that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The `--cacert` file could not be read or holds no certificate.
    #[error("--cacert {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No trusted root could be loaded from the system.
    #[error(
        "no trusted CA certificate was found on this system; pass --cacert <PEM> or --insecure"
    )]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The name sent as SNI is not a DNS name or an IP address.
    #[error("{name:?} cannot be used as a TLS server name")]
    ServerName {
        /// The name.
        name: String,
    },
}

/// Builds the client configuration shared by every connection.
pub fn client_config(
    insecure: bool,
    cacert: Option<&Path>,
    http2: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    // Named explicitly rather than taken from a process default, so that another crate in the
    // same binary enabling a second provider cannot change or break this choice.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(cacert)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

/// The name to send as SNI: the Host override without its port, or the URL's host.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName {
        name: host.to_owned(),
    })
}

fn roots(cacert: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match cacert {
        Some(path) => {
            let fail = |reason: String| TlsError::CaFile {
                path: path.to_owned(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(format!("cannot read it: {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(format!("not a PEM file: {e}")))?;
            if certs.is_empty() {
                return Err(fail("holds no CERTIFICATE block".into()));
            }
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| fail(format!("a certificate is not usable: {e}")))?;
            }
        }
        None => {
            // A few unreadable system certificates are normal; an empty store is not.
            let loaded = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(loaded.certs);
            if store.is_empty() {
                return Err(TlsError::NoRoots);
            }
        }
    }
    Ok(store)
}

/// Accepts any certificate chain and name (`--insecure`), but not a bad signature.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cacert_errors_name_the_flag_and_file() {
        let err = client_config(false, Some(Path::new("/nonexistent/ca.pem")), false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("--cacert /nonexistent/ca.pem: cannot read it"),
            "{text}"
        );

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let err = client_config(false, Some(&empty), false).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn insecure_offers_the_requested_protocol() {
        let config = client_config(true, None, true).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let config = client_config(true, None, false).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("shop.example.com").is_ok());
        assert!(server_name("bad name").is_err());
    }
}
