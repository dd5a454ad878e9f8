//! TLS where users have TLS: a certificate authority made for the run, and the
//! certificates it signs for the new side's entry point (HTTPS, ALPN `h2` and
//! `http/1.1`) and for the new PostgreSQL cluster, which then takes TLS
//! connections only (`hostssl`). Everything that reaches the new side verifies
//! against this CA: the proxy (its backend's `tls.ca_file`), the controller and
//! the apps, workers and checks (`sslmode=verify-full`).
//!
//! Before the migration the rehearsal checks that the verification is real: a
//! connection to the new cluster that trusts another CA must be refused, and so
//! must one without TLS.

use std::fmt::Write as _;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The name the proxy sends (SNI) and verifies for the new side's entry point,
/// as a cloud load balancer has a DNS name of its own.
pub const SITE_NAME: &str = "lb.new.rehearsal.internal";

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

/// The run's certificates.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The rehearsal CA's certificate, PEM: what every client of the new side trusts.
    pub ca: String,
    /// The new side's entry point: [`SITE_NAME`] and 127.0.0.1.
    pub site: Pair,
    /// The new PostgreSQL cluster: 127.0.0.1 and `localhost`.
    pub database: Pair,
    /// Another CA's certificate, which signed none of these: trusting it instead
    /// must fail.
    pub other_ca: String,
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    CertifiedIssuer::self_signed(params, key).map_err(|e| e.to_string())
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> Result<Pair, String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, issuer).map_err(|e| e.to_string())?;
    Ok(Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

impl Certs {
    /// Makes the CA and signs the two server certificates (milliseconds).
    pub fn issue() -> Result<Certs, String> {
        let run = |e: String| format!("making the rehearsal's certificates: {e}");
        let issuer = ca("cutover rehearsal CA").map_err(run)?;
        Ok(Certs {
            site: leaf(&issuer, &[SITE_NAME, "127.0.0.1"]).map_err(run)?,
            database: leaf(&issuer, &["127.0.0.1", "localhost"]).map_err(run)?,
            ca: issuer.pem(),
            other_ca: ca("another CA").map_err(run)?.pem(),
        })
    }
}

/// A TLS server config for `pair`, offering `h2` and `http/1.1` by ALPN, as a
/// cloud load balancer's HTTPS listener does.
pub fn server_config(pair: &Pair) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the site's certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes())
        .map_err(|e| format!("the site's key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the site's certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS part of the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TlsReport {
    /// The name the proxy verified on the new side's entry point.
    pub site_name: String,
    /// The new site's handshakes, by protocol, and the failed ones.
    pub site_handshakes: crate::app::TlsCounts,
    /// The new cluster's TCP sessions when the plan ended: over TLS, and not.
    pub database_sessions_tls: u64,
    pub database_sessions_plain: u64,
    /// Before the migration: the new cluster refused a plain TCP connection.
    pub plain_refused: bool,
    /// Before the migration: a client trusting another CA was refused, with
    /// this reason (empty: it was not).
    pub other_ca_refused: String,
}

impl TlsReport {
    /// What shows the TLS part did not hold.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let h = &self.site_handshakes;
        if h.h2 + h.http1 == 0 {
            p.push("no TLS connection reached the new side's entry point".into());
        }
        if h.failed > 0 {
            p.push(format!(
                "{} TLS handshakes with the new side's entry point failed",
                h.failed
            ));
        }
        if self.database_sessions_tls == 0 {
            p.push("no session on the new database used TLS when the plan ended".into());
        }
        if self.database_sessions_plain > 0 {
            p.push(format!(
                "{} sessions on the new database were plain TCP",
                self.database_sessions_plain
            ));
        }
        if !self.plain_refused {
            p.push("the new database took a plain TCP connection".into());
        }
        if self.other_ca_refused.is_empty() {
            p.push("the new database was trusted with another CA's certificate".into());
        }
        p
    }
}

/// The new cluster's TCP sessions now, by whether they use TLS.
pub async fn sessions(cluster: &crate::cluster::Cluster) -> Result<(u64, u64), String> {
    let client = cluster
        .connect("postgres")
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.client_addr IS NOT NULL AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok((n(0), n(1)))
}

/// The report's TLS section.
pub fn section(r: &TlsReport) -> String {
    let h = &r.site_handshakes;
    let mut s = format!(
        "\n## TLS where users have TLS\n\n\
         - the new side's entry point served HTTPS only, with a certificate for {} from the \
         run's CA; the proxies verified it and health-checked it over TLS: {} handshakes \
         chose h2, {} http/1.1 ({} of them resumed an earlier session), {} failed\n\
         - the new PostgreSQL cluster took TLS only (`hostssl`), and every client verified it \
         against the run's CA (`sslmode=verify-full`): when the plan ended, {} sessions used \
         TLS, {} did not\n\
         - checked before the migration: a plain TCP connection was {}; a client trusting \
         another CA was {}\n",
        r.site_name,
        h.h2,
        h.http1,
        h.resumed,
        h.failed,
        r.database_sessions_tls,
        r.database_sessions_plain,
        if r.plain_refused {
            "refused"
        } else {
            "ACCEPTED"
        },
        if r.other_ca_refused.is_empty() {
            "ACCEPTED".to_string()
        } else {
            format!("refused ({})", r.other_ca_refused)
        },
    );
    for p in r.problems() {
        let _ = writeln!(s, "- **problem:** {p}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificates_make_a_server_config_and_differ_per_run() {
        let a = Certs::issue().unwrap();
        let b = Certs::issue().unwrap();
        assert_ne!(a.ca, b.ca);
        assert_ne!(a.ca, a.other_ca);
        let config = server_config(&a.site).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
        assert!(
            server_config(&Pair {
                cert: a.site.cert.clone(),
                key: a.database.key.clone(),
            })
            .is_err()
        );
    }

    #[test]
    fn a_plain_session_or_a_trusted_stranger_is_a_problem() {
        let good = TlsReport {
            site_name: SITE_NAME.into(),
            site_handshakes: crate::app::TlsCounts {
                h2: 3,
                http1: 1,
                resumed: 0,
                failed: 0,
            },
            database_sessions_tls: 12,
            database_sessions_plain: 0,
            plain_refused: true,
            other_ca_refused: "unknown issuer".into(),
        };
        assert!(good.problems().is_empty(), "{:?}", good.problems());
        assert!(section(&good).contains("3 handshakes chose h2"));
        let bad = TlsReport {
            database_sessions_plain: 1,
            other_ca_refused: String::new(),
            ..good.clone()
        };
        assert_eq!(bad.problems().len(), 2, "{:?}", bad.problems());
        assert!(section(&bad).contains("ACCEPTED"));
    }
}
