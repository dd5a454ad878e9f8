//! Validation of the HTTPS side: `[[certificates]]` (the PEM files are read and the
//! key is checked against the chain here, so that a reload with a broken file is
//! refused like any other invalid config) and `proxy.control_socket`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use toml::Spanned;

use super::Validator;
use super::route::is_hostname;
use crate::model::Certificate;
use crate::raw::RawCertificate;

/// `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A label no real host is expected to use, to ask whether a certificate covers a
/// wildcard's names.
const PROBE_LABEL: &str = "cutover-sni-probe";

impl Validator<'_> {
    pub(super) fn certificates(
        &mut self,
        raw: Vec<Spanned<RawCertificate>>,
        https: Option<std::ops::Range<usize>>,
        file: &Path,
    ) -> Vec<Certificate> {
        if let Some(span) = https.filter(|_| raw.is_empty()) {
            let d = self.loc.at(
                Some(span),
                "listen.https",
                "an HTTPS listener needs at least one [[certificates]] entry",
            );
            self.errors.push(d);
        }
        let base = base_dir(file);
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, c) in raw.into_iter().enumerate() {
            if let Some(cert) = self.certificate(i, c.into_inner(), &base, &mut seen) {
                out.push(cert);
            }
        }
        out
    }

    fn certificate(
        &mut self,
        i: usize,
        raw: RawCertificate,
        base: &Path,
        seen: &mut HashMap<String, usize>,
    ) -> Option<Certificate> {
        let at = format!("certificates[{i}]");
        if raw.hosts.get_ref().is_empty() {
            self.err(
                &raw.hosts,
                format!("{at}.hosts"),
                "needs at least one SNI name (\"*\" for the default certificate)",
            );
        }
        let mut hosts = Vec::new();
        for (j, h) in raw.hosts.get_ref().iter().enumerate() {
            let path = format!("{at}.hosts[{j}]");
            let host = h.get_ref().trim().to_ascii_lowercase();
            if let Err(e) = check_sni_host(&host) {
                self.err(h, &path, e);
                continue;
            }
            if let Some(prev) = seen.insert(host.clone(), i) {
                let msg = if prev == i {
                    format!("{host:?} is listed twice")
                } else {
                    format!("{host:?} is already served by certificates[{prev}]")
                };
                self.err(h, &path, msg);
                continue;
            }
            hosts.push((host, h.span()));
        }

        let cert_path = base.join(raw.cert.get_ref());
        let key_path = base.join(raw.key.get_ref());
        // Both files are checked before giving up, so one run reports both.
        let chain = read_chain(&cert_path)
            .map_err(|e| self.err(&raw.cert, format!("{at}.cert"), e))
            .ok();
        let key = read_key(&key_path)
            .map_err(|e| self.err(&raw.key, format!("{at}.key"), e))
            .ok();
        let (chain, key) = (chain?, key?);
        let provider = ring::default_provider();
        let certified = match CertifiedKey::from_der(chain, key, &provider) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!(
                    "{}: cannot be used with the certificate in {}: {e}",
                    key_path.display(),
                    cert_path.display()
                );
                self.err(&raw.key, format!("{at}.key"), msg);
                return None;
            }
        };
        // A name the certificate does not cover would fail every client's check;
        // better to say so now than to find out from browsers.
        if let Some(leaf) = certified.cert.first() {
            for (j, (host, span)) in hosts.iter().enumerate() {
                if let Err(e) = covers(leaf, host) {
                    let msg = format!("{}: {e}", cert_path.display());
                    let d = self
                        .loc
                        .at(Some(span.clone()), format!("{at}.hosts[{j}]"), msg);
                    self.errors.push(d);
                }
            }
        }
        Some(Certificate {
            hosts: hosts.into_iter().map(|(h, _)| h).collect(),
            cert: cert_path,
            key: key_path,
            certified: Arc::new(certified),
        })
    }

    /// `proxy.control_socket`, resolved against the config's folder; by default
    /// `<config file>.sock` beside the config file.
    pub(super) fn control_socket(&mut self, raw: Option<Spanned<String>>, file: &Path) -> PathBuf {
        match raw {
            None => {
                let mut name = file
                    .file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_else(|| "cutover".into());
                name.push(".sock");
                base_dir(file).join(name)
            }
            Some(s) => {
                let path = base_dir(file).join(s.get_ref());
                if s.get_ref().is_empty() {
                    self.err(&s, "proxy.control_socket", "needs a path");
                } else if path.as_os_str().len() > MAX_SOCKET_PATH {
                    let msg = format!(
                        "{} is {} bytes long; a Unix socket path may have at most {MAX_SOCKET_PATH}",
                        path.display(),
                        path.as_os_str().len()
                    );
                    self.err(&s, "proxy.control_socket", msg);
                }
                path
            }
        }
    }
}

/// The folder relative paths in the config are resolved against.
pub(super) fn base_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn check_sni_host(host: &str) -> Result<(), String> {
    if host == "*" {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err(format!(
            "{host:?}: '*' is allowed only as \"*\" or a leading \"*.\""
        ));
    }
    if name.parse::<std::net::IpAddr>().is_ok() || name.starts_with('[') {
        return Err(format!(
            "{host:?}: TLS clients send host names, not addresses, as SNI; use \"*\" for a certificate served to clients that send none"
        ));
    }
    if is_hostname(name) {
        Ok(())
    } else {
        Err(format!("{host:?} is not a host name"))
    }
}

/// The PEM chain in `path`, leaf first.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no \"BEGIN CERTIFICATE\" section found",
            path.display()
        ));
    }
    for (n, der) in chain.iter().enumerate() {
        if let Err(e) = ParsedCertificate::try_from(der) {
            return Err(format!(
                "{}: certificate {} of the chain cannot be parsed: {e}",
                path.display(),
                n + 1
            ));
        }
    }
    Ok(chain)
}

/// The first private key in `path`. Messages never quote the file's content.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{}: no private key found (PKCS#8, PKCS#1 or SEC1 PEM)",
            path.display()
        ),
        _ => format!("{}: the PEM is malformed", path.display()),
    })
}

/// Whether the leaf certificate is valid for `host` (for a wildcard, for a name
/// one label under it). The default entry `*` is served to anyone, so it is not
/// checked.
fn covers(leaf: &CertificateDer<'_>, host: &str) -> Result<(), String> {
    if host == "*" {
        return Ok(());
    }
    let probe = match host.strip_prefix('*') {
        Some(suffix) => format!("{PROBE_LABEL}{suffix}"),
        None => host.to_string(),
    };
    let name = ServerName::try_from(probe.as_str()).map_err(|e| format!("{host:?}: {e}"))?;
    let parsed = ParsedCertificate::try_from(leaf).map_err(|e| e.to_string())?;
    rustls::client::verify_server_name(&parsed, &name)
        .map_err(|_| format!("the certificate is not valid for {host:?}"))
}

#[cfg(test)]
mod tests;
