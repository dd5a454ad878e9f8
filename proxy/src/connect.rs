//! Connections to upstream addresses: plain TCP, or TLS with SNI and verification
//! against the system's roots or a configured CA file. One connector per backend TLS
//! setting, so the SNI name travels with the connector rather than the URI (whose
//! authority is the resolved `ip:port`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cutover_config::{Protocol, UpstreamTls};
use http::Uri;
use http::uri::Authority;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to an `ip:port`, with TLS when configured.
pub struct Connector {
    http: HttpConnector,
    tls: Option<Tls>,
    /// The TCP connect and the TLS handshake together, at most.
    timeout: std::time::Duration,
}

struct Tls {
    /// Offers the backend's protocol by ALPN.
    main: TlsConnector,
    /// Offers only `http/1.1`, for a protocol switch to a backend that may
    /// speak HTTP/2.
    http1: TlsConnector,
    sni: ServerName<'static>,
}

/// Why a TLS client setup could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls.sni {0:?} is not a valid server name")]
    Sni(String),
    #[error("tls.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("no usable CA certificates in the system store")]
    NoRoots,
    #[error("TLS client setup: {0}")]
    Rustls(#[from] rustls::Error),
}

impl Connector {
    /// A connector for plain HTTP, or TLS to `sni` under `tls`.
    pub fn new(
        http: HttpConnector,
        timeout: std::time::Duration,
        tls: Option<(&UpstreamTls, &str)>,
        protocol: Protocol,
    ) -> Result<Self, TlsSetupError> {
        let tls = match tls {
            None => None,
            Some((settings, default_sni)) => {
                let name = settings.sni.as_deref().unwrap_or(default_sni).to_string();
                let sni =
                    ServerName::try_from(name.clone()).map_err(|_| TlsSetupError::Sni(name))?;
                let mut roots = rustls::RootCertStore::empty();
                match &settings.ca_file {
                    Some(path) => {
                        let certs = CertificateDer::pem_file_iter(path)
                            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                            .map_err(|e| TlsSetupError::CaFile {
                                path: path.display().to_string(),
                                reason: e.to_string(),
                            })?;
                        for c in certs {
                            roots.add(c)?;
                        }
                    }
                    None => {
                        let native = rustls_native_certs::load_native_certs();
                        let (added, _) = roots.add_parsable_certificates(native.certs);
                        if added == 0 {
                            return Err(TlsSetupError::NoRoots);
                        }
                    }
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let mut http1 = config.clone();
                http1.alpn_protocols = vec![b"http/1.1".to_vec()];
                config.alpn_protocols = match protocol {
                    Protocol::Http1 => Vec::new(),
                    Protocol::H2 => vec![b"h2".to_vec()],
                    Protocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                };
                Some(Tls {
                    main: TlsConnector::from(Arc::new(config)),
                    http1: TlsConnector::from(Arc::new(http1)),
                    sni,
                })
            }
        };
        Ok(Connector { http, tls, timeout })
    }

    /// Opens a connection to `authority` (an `ip:port`), with TLS when configured;
    /// offering only HTTP/1.1 by ALPN when `h1_only`.
    /// The TLS handshake counts inside the connect timeout: a backend that accepts
    /// and never answers the handshake is a connect failure, retried elsewhere.
    pub async fn connect(&self, authority: &Authority, h1_only: bool) -> Result<Conn, BoxError> {
        match tokio::time::timeout(self.timeout, self.connect_once(authority, h1_only)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "connect and TLS handshake not done within the connect timeout ({:?})",
                self.timeout
            )
            .into()),
        }
    }

    async fn connect_once(&self, authority: &Authority, h1_only: bool) -> Result<Conn, BoxError> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()?;
        let tcp = self.http.clone().call(uri).await?;
        match &self.tls {
            None => Ok(Conn::Plain(tcp)),
            Some(tls) => {
                let connector = if h1_only { &tls.http1 } else { &tls.main };
                let stream = connector.connect(tls.sni.clone(), tcp.into_inner()).await?;
                Ok(Conn::Tls(Box::new(TokioIo::new(stream))))
            }
        }
    }
}

/// A connection to an upstream address.
pub enum Conn {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Conn {
    /// Whether the TLS handshake chose HTTP/2 by ALPN.
    pub fn alpn_h2(&self) -> bool {
        match self {
            Conn::Plain(_) => false,
            Conn::Tls(t) => t.inner().get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_flush(cx),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Conn::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}
