//! The DSN's TLS keys (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) as libpq
//! understands them. tokio-postgres knows only three of libpq's modes and none of
//! the file keys, so they are taken out of the string here, in both the key/value
//! and the URL form, before the rest goes to its parser; what it does with the
//! connection is left to [`crate::pgtls`].

use std::path::PathBuf;

use tokio_postgres::config::SslMode;

/// libpq's `sslmode`, `allow` excepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    Disable,
    /// TLS when the server offers it, plain otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is checked only when `sslrootcert` is given.
    Require,
    /// The chain is checked, the host name is not.
    VerifyCa,
    /// The chain and the host name are checked.
    VerifyFull,
}

impl TlsMode {
    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres must do before the handshake: the verify modes need TLS.
    pub fn driver_mode(self) -> SslMode {
        match self {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        }
    }
}

/// The TLS part of a DSN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: TlsMode,
    /// The DSN named the mode (only then does the redacted form show it).
    pub mode_given: bool,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// libpq's `passfile`, also unknown to tokio-postgres: read by
    /// [`super::passfile`] for the controller's own connections, and left in the
    /// subscription's `CONNECTION` for the subscriber's server to read.
    pub passfile: Option<PathBuf>,
}

const KEYS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "passfile"];

impl TlsOptions {
    /// Splits `raw` into the TLS options and the rest, for tokio-postgres. A string
    /// this cannot read goes on whole, so that tokio-postgres reports the error.
    pub fn take(raw: &str) -> Result<(TlsOptions, String), String> {
        let Some((rest, pairs)) = split(raw) else {
            return Ok((TlsOptions::default(), raw.to_string()));
        };
        let mut o = TlsOptions::default();
        // As in libpq, a key given twice takes its last value.
        for (k, v) in pairs {
            match k.as_str() {
                "sslmode" => {
                    o.mode_given = true;
                    o.mode = match v.as_str() {
                        "disable" => TlsMode::Disable,
                        "prefer" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-ca" => TlsMode::VerifyCa,
                        "verify-full" => TlsMode::VerifyFull,
                        "allow" => return Err("sslmode=allow is not supported; use prefer".into()),
                        _ => {
                            return Err(
                                "sslmode must be disable, prefer, require, verify-ca or verify-full"
                                    .into(),
                            );
                        }
                    };
                }
                "sslrootcert" => o.root_cert = Some(PathBuf::from(v)),
                "sslcert" => o.cert = Some(PathBuf::from(v)),
                "passfile" => o.passfile = Some(PathBuf::from(v)),
                _ => o.key = Some(PathBuf::from(v)),
            }
        }
        if o.cert.is_some() != o.key.is_some() {
            return Err(
                "sslcert and sslkey go together: a client certificate needs its key".into(),
            );
        }
        Ok((o, rest))
    }

    /// `sslmode=… sslrootcert=… sslcert=… sslkey=…` as libpq reads them, the
    /// values quoted by `quote`.
    pub fn conninfo_parts(&self, quote: impl Fn(&str) -> String) -> Vec<String> {
        let mut parts = vec![format!("sslmode={}", self.mode.as_str())];
        for (k, v) in [
            ("sslrootcert", &self.root_cert),
            ("sslcert", &self.cert),
            ("sslkey", &self.key),
        ] {
            if let Some(p) = v {
                parts.push(format!("{k}={}", quote(&p.to_string_lossy())));
            }
        }
        if let Some(p) = &self.passfile {
            parts.push(format!("passfile={}", quote(&p.to_string_lossy())));
        }
        parts
    }
}

/// The string without the TLS keys, and their (key, value) pairs in order.
fn split(raw: &str) -> Option<(String, Vec<(String, String)>)> {
    for prefix in ["postgres://", "postgresql://"] {
        if raw.starts_with(prefix) {
            return split_url(raw, prefix.len());
        }
    }
    split_keyvalue(raw)
}

/// The URL form: the TLS keys are query parameters. The query starts at the first
/// `?` after the credentials, as tokio-postgres reads it.
fn split_url(raw: &str, after_prefix: usize) -> Option<(String, Vec<(String, String)>)> {
    let from = raw[after_prefix..]
        .find('@')
        .map_or(after_prefix, |at| after_prefix + at + 1);
    let Some(q) = raw[from..].find('?').map(|i| from + i) else {
        return Some((raw.to_string(), Vec::new()));
    };
    let (mut kept, mut taken) = (Vec::new(), Vec::new());
    for part in raw[q + 1..].split('&') {
        let (k, v) = part.split_once('=')?;
        let k = percent_decode(k)?;
        if KEYS.contains(&k.as_str()) {
            taken.push((k, percent_decode(v)?));
        } else {
            kept.push(part);
        }
    }
    let mut rest = raw[..q].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Some((rest, taken))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The key/value form: `key = value` pairs, a value plain or in single quotes,
/// with backslash escapes in both, as tokio-postgres's parser reads them. The
/// kept pairs go on byte for byte.
fn split_keyvalue(raw: &str) -> Option<(String, Vec<(String, String)>)> {
    let b = raw.as_bytes();
    let (mut kept, mut taken) = (Vec::new(), Vec::new());
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i == b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &raw[start..i];
        i = skip_ws(i);
        if b.get(i) != Some(&b'=') || key.is_empty() {
            return None;
        }
        i = skip_ws(i + 1);
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        let mut value = Vec::new();
        loop {
            match b.get(i) {
                None if quoted => return None,
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && c.is_ascii_whitespace() => break,
                Some(b'\\') => {
                    value.extend(b.get(i + 1));
                    i += 2;
                }
                Some(c) => {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        if value.is_empty() && !quoted {
            return None;
        }
        let i_end = i.min(b.len());
        if KEYS.contains(&key) {
            taken.push((key.to_string(), String::from_utf8(value).ok()?));
        } else {
            kept.push(&raw[start..i_end]);
        }
        i = i_end;
    }
    Some((kept.join(" "), taken))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio_postgres::config::SslMode;

    use super::TlsMode;
    use crate::dsn::{Dsn, Side};

    fn parse(raw: &str) -> Dsn {
        Dsn::parse(Side::Source, raw).unwrap()
    }

    #[test]
    fn key_value_form_reads_every_tls_key() {
        let d = parse(
            "host=db.internal user=app password=hunter2 sslmode=verify-full \
             sslrootcert='/etc/pg ca/ca.pem' sslcert=/c/client.pem sslkey = /c/client.key dbname=shop",
        );
        let t = d.tls();
        assert_eq!(t.mode, TlsMode::VerifyFull);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/etc/pg ca/ca.pem")));
        assert_eq!(t.cert.as_deref(), Some(Path::new("/c/client.pem")));
        assert_eq!(t.key.as_deref(), Some(Path::new("/c/client.key")));
        assert_eq!(d.config().get_ssl_mode(), SslMode::Require);
        assert_eq!(d.config().get_dbname(), Some("shop"));
        assert_eq!(d.config().get_password(), Some(&b"hunter2"[..]));

        let (conninfo, pw) = d.tool_conninfo();
        assert_eq!(
            conninfo,
            "host=db.internal dbname=shop user=app sslmode=verify-full \
             sslrootcert='/etc/pg ca/ca.pem' sslcert=/c/client.pem sslkey=/c/client.key"
        );
        assert_eq!(pw.as_deref(), Some("hunter2"));
        assert_eq!(
            d.redacted(),
            "host=db.internal dbname=shop user=app sslmode=verify-full"
        );
        // The subscription's CONNECTION: libpq on the subscriber reads the same keys.
        let secret = d.secret_conninfo();
        for want in [
            "sslmode=verify-full",
            "sslrootcert='/etc/pg ca/ca.pem'",
            "sslkey = /c/client.key",
        ] {
            assert!(secret.contains(want), "{want}");
        }
    }

    #[test]
    fn url_form_reads_every_tls_key() {
        let d = parse(
            "postgresql://app:hun%3Fter@db.internal:5433/shop?sslmode=verify-ca\
             &sslrootcert=%2Fetc%2Fca.pem&application_name=mig&sslcert=/c.pem&sslkey=/k.pem",
        );
        let t = d.tls();
        assert_eq!(t.mode, TlsMode::VerifyCa);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(t.cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(t.key.as_deref(), Some(Path::new("/k.pem")));
        assert_eq!(d.config().get_ssl_mode(), SslMode::Require);
        assert_eq!(d.config().get_application_name(), Some("mig"));
        assert_eq!(d.config().get_password(), Some(&b"hun?ter"[..]));
        let (conninfo, _) = d.tool_conninfo();
        assert_eq!(
            conninfo,
            "host=db.internal port=5433 dbname=shop user=app sslmode=verify-ca \
             sslrootcert=/etc/ca.pem sslcert=/c.pem sslkey=/k.pem"
        );
        assert!(d.secret_conninfo().contains("sslmode=verify-ca"));
        assert_eq!(
            d.redacted(),
            "host=db.internal port=5433 dbname=shop user=app sslmode=verify-ca"
        );
    }

    #[test]
    fn modes_map_to_the_driver_and_default_to_prefer() {
        for (given, mode, driver) in [
            ("disable", TlsMode::Disable, SslMode::Disable),
            ("prefer", TlsMode::Prefer, SslMode::Prefer),
            ("require", TlsMode::Require, SslMode::Require),
            ("verify-ca", TlsMode::VerifyCa, SslMode::Require),
            ("verify-full", TlsMode::VerifyFull, SslMode::Require),
        ] {
            for raw in [
                format!("host=h user=u sslmode={given}"),
                format!("postgresql://u@h/db?sslmode={given}"),
            ] {
                let d = parse(&raw);
                assert_eq!(d.tls().mode, mode, "{raw}");
                assert_eq!(d.config().get_ssl_mode(), driver, "{raw}");
                assert!(d.tool_conninfo().0.ends_with(&format!("sslmode={given}")));
            }
        }
        let d = parse("host=h user=u password='x sslmode=disable'");
        assert_eq!(d.tls().mode, TlsMode::Prefer);
        assert!(!d.tls().mode_given);
        assert_eq!(d.config().get_password(), Some(&b"x sslmode=disable"[..]));
        assert_eq!(d.redacted(), "host=h dbname=u user=u");
        let d = parse("postgresql://u:pa?ss@h/db?sslmode=require");
        assert_eq!(d.tls().mode, TlsMode::Require);
        assert_eq!(d.config().get_password(), Some(&b"pa?ss"[..]));
    }

    #[test]
    fn a_unix_socket_never_uses_tls() {
        let d = parse("host=/run/postgresql user=u sslmode=verify-full");
        assert_eq!(d.tls().mode, TlsMode::VerifyFull);
        assert_eq!(d.config().get_ssl_mode(), SslMode::Disable);
        let d = parse("host=/run/postgresql,db.internal user=u sslmode=require");
        assert_eq!(d.config().get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn bad_tls_keys_are_refused_without_echoing_the_password() {
        for (raw, want) in [
            (
                "host=h user=u password=s3cret sslmode=bogus",
                "sslmode must be",
            ),
            ("postgresql://u:s3cret@h/db?sslmode=allow", "sslmode=allow"),
            (
                "host=h user=u password=s3cret sslcert=/c.pem",
                "sslcert and sslkey",
            ),
            (
                "postgresql://u:s3cret@h/db?sslkey=/k.pem",
                "sslcert and sslkey",
            ),
        ] {
            let e = Dsn::parse(Side::Target, raw).unwrap_err().to_string();
            assert!(
                e.starts_with("target DSN is not valid") && e.contains(want),
                "{e}"
            );
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
