//! Connection strings: parsing, redaction for display, and the two sides.
//!
//! A DSN may carry a password. It is kept only inside [`Dsn`], whose `Display` and
//! `Debug` show host, port, database, user and a given `sslmode`, never the password
//! or other options. The TLS keys tokio-postgres does not know are read in
//! [`tls`]; [`crate::pgtls`] acts on them.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::config::Host;

use crate::error::Error;

mod passfile;
mod tls;

pub use tls::{TlsMode, TlsOptions};

/// Which database a value or an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Target,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Target,
            Side::Target => Side::Source,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// How long to wait for a server that does not answer, unless the DSN says otherwise.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed connection string for one side.
#[derive(Clone)]
pub struct Dsn {
    side: Side,
    raw: String,
    config: tokio_postgres::Config,
    tls: TlsOptions,
}

impl Dsn {
    /// Parses a libpq key/value string or a `postgresql://` URL.
    pub fn parse(side: Side, raw: &str) -> Result<Dsn, Error> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(Error::Dsn {
                side,
                reason: "it is empty".into(),
            });
        }
        let (tls, rest) = TlsOptions::take(raw).map_err(|reason| Error::Dsn { side, reason })?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| Error::Dsn {
            side,
            reason: parse_reason(&e),
        })?;
        config.ssl_mode(tls.mode.driver_mode());
        // As in libpq, a unix socket never uses TLS: the server would refuse it,
        // and `require` would then fail where libpq connects.
        #[cfg(unix)]
        if config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)))
        {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        if config.get_hosts().is_empty() {
            return Err(Error::Dsn {
                side,
                reason: "it names no host".into(),
            });
        }
        if config.get_user().is_none() {
            return Err(Error::Dsn {
                side,
                reason: "it names no user".into(),
            });
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        // The application_name is chosen at connect time (`Db::connect`), unless
        // the DSN sets one.
        Ok(Dsn {
            side,
            raw: raw.to_string(),
            config,
            tls,
        })
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// The driver's settings: `sslmode` only as `disable`, `prefer` or `require`;
    /// what to verify is in [`Dsn::tls`].
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// `sslmode` and the certificate files, as the DSN gives them.
    pub fn tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// The string as given, password included: only for the subscription's
    /// `CONNECTION`, which the target server itself must use. It carries the DSN's
    /// `sslmode`, `sslrootcert`, `sslcert` and `sslkey` unchanged, so the
    /// replication stream is as protected as the controller's own connections;
    /// the file paths are read by the subscriber's server, so they must be valid
    /// there (on that machine, readable by its OS user), not only where the
    /// controller runs.
    pub(crate) fn secret_conninfo(&self) -> &str {
        &self.raw
    }

    /// `host=… port=… dbname=… user=…`: safe to print.
    pub fn redacted(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                #[cfg(unix)]
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        let mut s = format!("host={}", hosts.join(","));
        if !ports.is_empty() {
            s.push_str(&format!(" port={}", ports.join(",")));
        }
        s.push_str(&format!(" dbname={}", self.dbname()));
        if let Some(u) = self.config.get_user() {
            s.push_str(&format!(" user={u}"));
        }
        if self.tls.mode_given {
            s.push_str(&format!(" sslmode={}", self.tls.mode.as_str()));
        }
        s
    }

    /// The driver's settings with the password from the DSN's `passfile` when the
    /// DSN gives none (libpq's order). The file must be readable here.
    pub(crate) fn connect_config(&self) -> Result<tokio_postgres::Config, Error> {
        let mut config = self.config.clone();
        let Some(path) = &self.tls.passfile else {
            return Ok(config);
        };
        if config.get_password().is_some() {
            return Ok(config);
        }
        let text = passfile::read(path).map_err(|reason| Error::Dsn {
            side: self.side,
            reason,
        })?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(_)) => "localhost".to_string(),
            None => String::new(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or_default().to_string();
        if let Some(pw) = passfile::lookup(&text, &host, port, self.dbname(), &user) {
            config.password(pw);
        }
        Ok(config)
    }

    /// The database name: the DSN's, or the user's name as libpq defaults it.
    pub fn dbname(&self) -> &str {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
    }

    /// Arguments and environment for `pg_dump`/`psql`: a conninfo without the
    /// password, which travels in `PGPASSWORD` so that it never shows in `ps`, with
    /// the TLS keys as libpq reads them.
    pub(crate) fn tool_conninfo(&self) -> (String, Option<String>) {
        let c = &self.config;
        let mut parts = Vec::new();
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                #[cfg(unix)]
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        parts.push(format!("host={}", quote_conninfo(&hosts.join(","))));
        let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
        if !ports.is_empty() {
            parts.push(format!("port={}", ports.join(",")));
        }
        parts.push(format!("dbname={}", quote_conninfo(self.dbname())));
        if let Some(u) = c.get_user() {
            parts.push(format!("user={}", quote_conninfo(u)));
        }
        parts.extend(self.tls.conninfo_parts(quote_conninfo));
        let password = c
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        (parts.join(" "), password)
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dsn({}: {})", self.side, self.redacted())
    }
}

/// The parser's reason, cut before it quotes a character of the input (which could
/// be part of a password).
fn parse_reason(e: &tokio_postgres::Error) -> String {
    let mut s = crate::error::pg_detail(e);
    if let Some(i) = s.find(" but got") {
        s.truncate(i);
    }
    s
}

/// Quotes a conninfo value when it needs it.
fn quote_conninfo(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_both_forms() {
        for raw in [
            "host=db.internal port=5433 user=app password=hunter2 dbname=shop",
            "postgresql://app:hunter2@db.internal:5433/shop?sslmode=disable",
        ] {
            let d = Dsn::parse(Side::Source, raw).unwrap();
            let shown = format!("{d} {d:?} {}", d.redacted());
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("host=db.internal port=5433 dbname=shop user=app"),
                "{shown}"
            );
            let (conninfo, pw) = d.tool_conninfo();
            assert!(!conninfo.contains("hunter2"), "{conninfo}");
            assert_eq!(pw.as_deref(), Some("hunter2"));
        }
    }

    #[test]
    fn parse_errors_name_the_side_and_never_echo_the_input() {
        for raw in [
            "host=x user=u password='s3cret",
            "host=x user=u password=s3cret garbage",
            "",
            "password=s3cret",
        ] {
            let e = Dsn::parse(Side::Target, raw).unwrap_err().to_string();
            assert!(e.starts_with("target DSN is not valid"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
