//! The HTTPS listener's TLS side: picks a certificate by SNI (exact name, then the
//! longest matching wildcard, then the `*` default; an unknown name without a
//! default fails the handshake) and offers h2 and http/1.1 over ALPN.
//!
//! The certificates themselves are read and checked by `cutover_config` during
//! validation, so a reload with a broken file is refused and the snapshot in force
//! keeps its certificates. [`Certs`] serves the certificates of the snapshot in
//! force: the acceptor is built once, and the first handshake after a reload
//! builds the new SNI table.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cutover_config::{Certificate, Config};
use rustls::ServerConfig;
use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::state::Shared;

/// Why the TLS listener could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS: {0}")]
pub struct TlsError(#[source] rustls::Error);

/// The certificates in force, by SNI name.
#[derive(Debug, Default)]
pub struct SniTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix with its leading dot, as in the route table.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniTable {
    pub fn new(certs: &[Certificate]) -> Self {
        let mut t = SniTable::default();
        for c in certs {
            for h in &c.hosts {
                if h == "*" {
                    t.default = Some(c.certified.clone());
                } else if let Some(suffix) = h.strip_prefix('*') {
                    t.wildcard.insert(suffix.to_string(), c.certified.clone());
                } else {
                    t.exact.insert(h.clone(), c.certified.clone());
                }
            }
        }
        t
    }

    /// The certificate for an SNI name (any case, optional trailing dot), or for a
    /// client that sent none.
    pub fn lookup(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.as_ref();
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return Some(c);
        }
        // Leftmost dot first: the longest suffix is the most specific wildcard.
        for (pos, _) in name.match_indices('.') {
            if let Some(c) = self.wildcard.get(&name[pos..]) {
                return Some(c);
            }
        }
        self.default.as_ref()
    }
}

/// The certificate resolver handed to rustls.
pub struct Certs {
    shared: Arc<Shared>,
    cache: ArcSwap<Cached>,
}

/// An SNI table and the config it was built from.
struct Cached {
    config: Arc<Config>,
    table: SniTable,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("table", &self.cache.load().table)
            .finish()
    }
}

impl Certs {
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        let config = shared.live().snap.config.clone();
        let table = SniTable::new(&config.certificates);
        Arc::new(Certs {
            shared,
            cache: ArcSwap::from_pointee(Cached { config, table }),
        })
    }

    /// The table for the snapshot in force. Admin calls publish snapshots that
    /// share the config, so only a reload builds a new table; connections already
    /// open keep the certificate they negotiated.
    fn current(&self) -> Arc<Cached> {
        let config = self.shared.live().snap.config.clone();
        let cached = self.cache.load_full();
        if Arc::ptr_eq(&cached.config, &config) {
            return cached;
        }
        let fresh = Arc::new(Cached {
            table: SniTable::new(&config.certificates),
            config,
        });
        self.cache.store(fresh.clone());
        fresh
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = self.current().table.lookup(hello.server_name()).cloned();
        if found.is_none() {
            tracing::debug!(
                sni = hello.server_name().unwrap_or("(none)"),
                "no certificate for this name and no default; refusing the handshake"
            );
        }
        found
    }
}

/// A TLS acceptor on the ring provider that asks `certs` for every handshake and
/// offers h2, then http/1.1.
pub fn acceptor(certs: Arc<Certs>) -> Result<TlsAcceptor, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;

    /// A stand-in certified key told apart by its chain bytes; lookups never use the
    /// key, so any signing key will do.
    fn cert(tag: u8, hosts: &[&str]) -> Certificate {
        let pair = signing_key();
        Certificate {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            cert: format!("{tag}.crt").into(),
            key: format!("{tag}.key").into(),
            certified: Arc::new(CertifiedKey::new(
                vec![CertificateDer::from(vec![tag])],
                pair,
            )),
        }
    }

    fn signing_key() -> Arc<dyn rustls::sign::SigningKey> {
        // A fixed PKCS#8 Ed25519 key (RFC 8410 test vector); only its presence matters.
        const KEY: [u8; 48] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20, 0xd4, 0xee, 0x72, 0xdb, 0xf9, 0x13, 0x58, 0x4a, 0xd5, 0xb6, 0xd8, 0xf1,
            0xf7, 0x69, 0xf8, 0xad, 0x3a, 0xfe, 0x7c, 0x28, 0xcb, 0xf1, 0xd4, 0xfb, 0xe0, 0x97,
            0xa8, 0x8f, 0x44, 0x75, 0x58, 0x42,
        ];
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(KEY.to_vec());
        ring::sign::any_eddsa_type(&der).unwrap()
    }

    fn tag(t: &SniTable, sni: Option<&str>) -> Option<u8> {
        t.lookup(sni).map(|c| c.cert[0].as_ref()[0])
    }

    #[test]
    fn exact_then_longest_wildcard_then_default() {
        let t = SniTable::new(&[
            cert(1, &["shop.example.com", "*.shop.example.com"]),
            cert(2, &["api.shop.example.com"]),
            cert(3, &["*.example.com"]),
            cert(4, &["*"]),
        ]);
        assert_eq!(tag(&t, Some("shop.example.com")), Some(1));
        assert_eq!(tag(&t, Some("Shop.Example.COM.")), Some(1));
        assert_eq!(tag(&t, Some("api.shop.example.com")), Some(2));
        assert_eq!(tag(&t, Some("www.shop.example.com")), Some(1));
        assert_eq!(tag(&t, Some("a.b.shop.example.com")), Some(1));
        assert_eq!(tag(&t, Some("blog.example.com")), Some(3));
        assert_eq!(tag(&t, Some("example.com")), Some(4));
        assert_eq!(tag(&t, None), Some(4));
    }

    #[test]
    fn without_a_default_unknown_names_get_nothing() {
        let t = SniTable::new(&[cert(1, &["a.example.com"])]);
        assert_eq!(tag(&t, Some("b.example.com")), None);
        assert_eq!(tag(&t, None), None);
    }
}
