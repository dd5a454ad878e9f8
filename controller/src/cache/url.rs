//! A Redis address: `redis://[[user]:password@]host[:port][/db][?ca=PATH]`, or
//! `rediss://` for TLS. Printed without its password.

use std::fmt;
use std::path::PathBuf;

/// A parsed Redis URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// The CA file that signs the server's certificate (`rediss://` only).
    pub ca: Option<PathBuf>,
}

impl RedisUrl {
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let (tls, rest) = if let Some(r) = text.strip_prefix("rediss://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("redis://") {
            (false, r)
        } else {
            return Err("a Redis URL starts with redis:// or rediss:// (TLS)".into());
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse()
                    .map_err(|_| format!("the database {d:?} is not a number (as in /0)"))?,
            ),
            None => (rest, 0),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
                h,
                p.parse()
                    .map_err(|_| format!("the port {p:?} is not a number"))?,
            ),
            _ => (hostport, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("the URL names no host".into());
        }
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| decode(u)),
                    (!p.is_empty()).then(|| decode(p)),
                ),
                // redis://secret@host: a password alone, as redis-cli reads it.
                None => (None, Some(decode(a))),
            },
        };
        let mut ca = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("ca", path)) if !path.is_empty() => ca = Some(PathBuf::from(decode(path))),
                _ => {
                    return Err(format!(
                        "unknown URL parameter {:?}; the only one is ca=PATH (a CA file for rediss://)",
                        pair.split('=').next().unwrap_or(pair)
                    ));
                }
            }
        }
        if ca.is_some() && !tls {
            return Err("ca= is for rediss:// (TLS) URLs".into());
        }
        Ok(RedisUrl {
            tls,
            host: host.to_string(),
            port,
            user,
            password,
            db,
            ca,
        })
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Percent-decoding, for passwords with reserved characters.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'%'
            && let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Without the password: `redis://user:***@host:port/db`.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", if self.tls { "rediss" } else { "redis" })?;
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:***@")?,
            (None, Some(_)) => write!(f, "***@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.addr(), self.db)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print_without_the_password() {
        let u = RedisUrl::parse("redis://app:s3cr%40t@10.0.0.5:6380/2").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("10.0.0.5", 6380, 2));
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("s3cr@t"));
        assert_eq!(u.to_string(), "redis://app:***@10.0.0.5:6380/2");
        assert!(!format!("{u:?}").contains("s3cr"));

        let u = RedisUrl::parse("rediss://:pw@cache.example:6379?ca=/etc/ca.pem").unwrap();
        assert!(u.tls && u.user.is_none());
        assert_eq!(u.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(u.to_string(), "rediss://***@cache.example:6379/0");

        let u = RedisUrl::parse("redis://127.0.0.1").unwrap();
        assert_eq!((u.port, u.db, u.password.clone()), (6379, 0, None));
        let u = RedisUrl::parse("redis://[::1]:7000/1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.addr()),
            ("::1", 7000, "[::1]:7000".into())
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (bad, want) in [
            ("http://x", "redis://"),
            ("redis://h:port", "port"),
            ("redis://h/x", "database"),
            ("redis://h?tls=1", "unknown URL parameter \"tls\""),
            ("redis://h?ca=/x", "rediss://"),
            ("redis://:pw@", "no host"),
        ] {
            let e = RedisUrl::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
