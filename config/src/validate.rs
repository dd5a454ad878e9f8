//! raw → typed. Every semantic problem is collected with its file:line:col and field
//! path before anything is returned, so `--check` shows the whole list at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::diag::{ConfigError, Diagnostic, Locator};
use crate::duration::parse_duration;
use crate::model::{
    AdminSettings, Backend, Cidr, Config, Eject, HealthCheck, HoldSettings, Listen, LogSettings,
    Protocol, ProxySettings, ResolverSettings, UpstreamTls,
};
use crate::raw::{RawBackend, RawConfig, RawLog, RawResolver, RawUpstreamTls};

const DEFAULT_HTTP: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
const DEFAULT_GRACE: Duration = Duration::from_secs(25);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_MAX_QUEUED: i64 = 10_000;
const DEFAULT_HOLD_MAX: Duration = Duration::from_secs(30);
const DEFAULT_UPGRADE_GRACE: Duration = Duration::from_secs(2);
const DEFAULT_UPGRADE_RATE: i64 = 500;
pub(super) const DEFAULT_COOKIE_MAX_AGE: Duration = Duration::from_secs(30 * 86400);

pub(crate) fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let file_name = file.display().to_string();
    let loc = Locator::new(&file_name, text);
    let raw: RawConfig = match deserialize(text) {
        Ok(raw) => raw,
        Err((path, err)) => {
            let message = err.message().trim().to_string();
            return Err(ConfigError::Invalid(vec![loc.at(
                err.span(),
                path,
                message,
            )]));
        }
    };
    let mut v = Validator {
        loc,
        errors: Vec::new(),
        connect_default: DEFAULT_CONNECT_TIMEOUT,
        max_body_default: 0,
        body_idle_default: Duration::from_secs(30),
    };
    let config = v.config(raw, file);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        v.errors.sort_by_key(|d| (d.line, d.col));
        Err(ConfigError::Invalid(v.errors))
    }
}

/// Deserializes while tracking the field path, so that even a type error names its
/// field (`routes[0].weights.new`) as well as its position.
fn deserialize(text: &str) -> Result<RawConfig, (String, toml::de::Error)> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| (String::new(), e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` wraps values in a private field; it is noise to a reader.
        let path = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "")
            .replace("$__serde_spanned_private_value", "");
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner())
    })
}

struct Validator<'a> {
    loc: Locator<'a>,
    errors: Vec<Diagnostic>,
    /// `proxy.connect_timeout`, the default for every route's connect timeout.
    connect_default: Duration,
    /// `limits.max_body` and `limits.body_idle`, the defaults for every route's.
    max_body_default: u64,
    body_idle_default: Duration,
}

impl Validator<'_> {
    fn err<T>(&mut self, at: &Spanned<T>, path: impl Into<String>, message: impl Into<String>) {
        let d = self.loc.at(Some(at.span()), path, message);
        self.errors.push(d);
    }

    fn addr(&mut self, value: Option<Spanned<String>>, default: &str, path: &str) -> SocketAddr {
        let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
        match value {
            None => default.parse().unwrap_or(fallback),
            Some(s) => match s.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    let msg = format!(
                        "{:?} is not an address; use ip:port such as \"127.0.0.1:8080\" or \"[::]:8080\"",
                        s.get_ref()
                    );
                    self.err(&s, path, msg);
                    fallback
                }
            },
        }
    }

    fn duration(
        &mut self,
        value: Option<Spanned<String>>,
        default: Duration,
        path: &str,
    ) -> Duration {
        match value {
            None => default,
            Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|e| {
                self.err(&s, path, e);
                default
            }),
        }
    }

    /// An integer field within `range`, or `default` when absent.
    fn count(
        &mut self,
        value: Option<Spanned<i64>>,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
        path: &str,
    ) -> i64 {
        match value {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                let msg = format!(
                    "{} is out of range; use {} to {}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                );
                self.err(&v, path, msg);
                default
            }
        }
    }

    fn config(&mut self, raw: RawConfig, file: &Path) -> Config {
        let https_span = raw.listen.https.as_ref().map(Spanned::span);
        let listen = Listen {
            http: self.addr(raw.listen.http, DEFAULT_HTTP, "listen.http"),
            https: raw
                .listen
                .https
                .map(|s| self.addr(Some(s), DEFAULT_HTTP, "listen.https")),
            proxy_protocol: raw.listen.proxy_protocol.is_some_and(|p| *p.get_ref()),
        };
        let admin = AdminSettings {
            listen: self.addr(raw.admin.listen, DEFAULT_ADMIN, "admin.listen"),
            token_file: raw.admin.token_file.map(|s| s.into_inner().into()),
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as i64;
        let proxy = ProxySettings {
            threads: self.count(raw.proxy.threads, 1..=1024, cores, "proxy.threads") as usize,
            grace: self.duration(raw.proxy.grace, DEFAULT_GRACE, "proxy.grace"),
            connect_timeout: self.duration(
                raw.proxy.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
                "proxy.connect_timeout",
            ),
            control_socket: self.control_socket(raw.proxy.control_socket, file),
            trusted_proxies: self.cidrs(raw.proxy.trusted_proxies),
        };
        self.connect_default = proxy.connect_timeout;
        let hold = HoldSettings {
            max_queued: self.count(
                raw.hold.max_queued,
                0..=10_000_000,
                DEFAULT_MAX_QUEUED,
                "hold.max_queued",
            ) as usize,
            max: self.duration(raw.hold.max, DEFAULT_HOLD_MAX, "hold.max"),
            upgrade_grace: self.duration(
                raw.hold.upgrade_grace,
                DEFAULT_UPGRADE_GRACE,
                "hold.upgrade_grace",
            ),
            upgrade_rate: self.count(
                raw.hold.upgrade_rate,
                0..=1_000_000,
                DEFAULT_UPGRADE_RATE,
                "hold.upgrade_rate",
            ) as u32,
        };
        let fleet = self.fleet(raw.fleet, &proxy.control_socket, file);
        let resolver = self.resolver(raw.resolver);
        let log = self.log(raw.log);
        let limits = self.limits(raw.limits, file);
        self.max_body_default = limits.max_body;
        self.body_idle_default = limits.body_idle;

        let mut backends = Vec::with_capacity(raw.backends.len());
        for (name, b) in raw.backends {
            backends.push(self.backend(name, b, file));
        }

        let mut routes = Vec::with_capacity(raw.routes.len());
        let mut seen_hosts: HashMap<String, usize> = HashMap::new();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        for (i, r) in raw.routes.into_iter().enumerate() {
            let route = self.route(i, r, &backends, &mut seen_hosts, &mut seen_names);
            routes.push(route);
        }

        let certificates = self.certificates(raw.certificates, https_span, file);

        Config {
            file: file.to_path_buf(),
            listen,
            admin,
            proxy,
            hold,
            fleet,
            resolver,
            log,
            limits,
            backends,
            routes,
            certificates,
        }
    }

    fn log(&mut self, raw: RawLog) -> LogSettings {
        let access = match raw.access {
            None => 0.0,
            Some(a) => match a.get_ref() {
                toml::Value::String(s) if s == "on" => 1.0,
                toml::Value::String(s) if s == "off" => 0.0,
                toml::Value::Float(f) if (0.0..=1.0).contains(f) => *f,
                toml::Value::Integer(i @ (0 | 1)) => *i as f64,
                _ => {
                    self.err(
                        &a,
                        "log.access",
                        "must be \"on\", \"off\", or the share of requests to log, from 0 to 1 (such as 0.1)",
                    );
                    0.0
                }
            },
        };
        LogSettings {
            access,
            query: raw.query.is_some_and(|q| *q.get_ref()),
        }
    }

    fn cidrs(&mut self, raw: Option<Vec<Spanned<String>>>) -> Vec<Cidr> {
        let mut out = Vec::new();
        for (i, c) in raw.unwrap_or_default().into_iter().enumerate() {
            match Cidr::parse(c.get_ref()) {
                Ok(cidr) => out.push(cidr),
                Err(msg) => self.err(&c, format!("proxy.trusted_proxies[{i}]"), msg),
            }
        }
        out
    }

    fn resolver(&mut self, raw: RawResolver) -> ResolverSettings {
        let mut nameservers = Vec::new();
        for (i, ns) in raw.nameservers.unwrap_or_default().into_iter().enumerate() {
            let text = ns.get_ref();
            // A bare IP means port 53.
            let parsed = text.parse::<SocketAddr>().or_else(|_| {
                text.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Ok(a) => nameservers.push(a),
                Err(_) => {
                    let msg = format!("{text:?} is not an address; use ip or ip:port");
                    self.err(&ns, format!("resolver.nameservers[{i}]"), msg);
                }
            }
        }
        let min_ttl = self.duration(raw.min_ttl, Duration::from_secs(1), "resolver.min_ttl");
        let max_ttl = self.duration(raw.max_ttl, Duration::from_secs(300), "resolver.max_ttl");
        ResolverSettings {
            nameservers,
            min_ttl,
            max_ttl,
        }
    }

    fn backend(&mut self, name: String, b: RawBackend, file: &Path) -> Backend {
        // Keys carry no span of their own; point at the backend's addresses.
        let path = format!("backends.{name}");
        if !route::is_backend_name(&name) {
            self.err(
                &b.addrs,
                &path,
                "a backend name uses letters, digits, '-' and '_' only",
            );
        }
        if name == "split" {
            self.err(
                &b.addrs,
                &path,
                "\"split\" is reserved for `writes = \"split\"`; pick another name",
            );
        }
        if b.addrs.get_ref().is_empty() {
            self.err(
                &b.addrs,
                format!("{path}.addrs"),
                "needs at least one address",
            );
        }
        let mut addrs = Vec::new();
        for (i, a) in b.addrs.into_inner().into_iter().enumerate() {
            if let Err(e) = check_upstream_addr(a.get_ref()) {
                self.err(&a, format!("{path}.addrs[{i}]"), e);
            }
            addrs.push(a.into_inner());
        }
        let health = b.health.map(|h| {
            let at = format!("{path}.health");
            let h = h.into_inner();
            let check_path = match h.path {
                None => "/healthz".to_string(),
                Some(p) if p.get_ref().starts_with('/') => p.into_inner(),
                Some(p) => {
                    self.err(&p, format!("{at}.path"), "a path starts with '/'");
                    p.into_inner()
                }
            };
            let status = match h.status {
                None => (200, 399),
                Some(st) => match health_status(st.get_ref()) {
                    Ok(range) => range,
                    Err(msg) => {
                        self.err(&st, format!("{at}.status"), msg);
                        (200, 399)
                    }
                },
            };
            let host = h.host.map(|host| {
                if host.get_ref().is_empty() || host.get_ref().contains(char::is_whitespace) {
                    self.err(
                        &host,
                        format!("{at}.host"),
                        "must be a host name such as \"shop.example.com\"",
                    );
                }
                host.into_inner()
            });
            HealthCheck {
                host,
                status,
                path: check_path,
                interval: self.duration(
                    h.interval,
                    Duration::from_secs(2),
                    &format!("{at}.interval"),
                ),
                timeout: self.duration(h.timeout, Duration::from_secs(1), &format!("{at}.timeout")),
                healthy: self.count(h.healthy, 1..=100, 2, &format!("{at}.healthy")) as u32,
                unhealthy: self.count(h.unhealthy, 1..=100, 3, &format!("{at}.unhealthy")) as u32,
            }
        });
        let eject = match b.eject {
            None => Eject {
                failures: 3,
                cooldown: Duration::from_secs(10),
            },
            Some(e) => {
                let e = e.into_inner();
                Eject {
                    failures: self.count(e.failures, 0..=1000, 3, &format!("{path}.eject.failures"))
                        as u32,
                    cooldown: self.duration(
                        e.cooldown,
                        Duration::from_secs(10),
                        &format!("{path}.eject.cooldown"),
                    ),
                }
            }
        };
        let protocol = match &b.protocol {
            None => Protocol::Http1,
            Some(p) => match p.get_ref().as_str() {
                "http1" => Protocol::Http1,
                "h2" => Protocol::H2,
                "auto" if b.tls.is_some() => Protocol::Auto,
                "auto" => {
                    let msg = "\"auto\" picks the protocol by ALPN in the TLS handshake, and this \
                               backend has no [tls]; use \"h2\" for cleartext HTTP/2 (h2c) or \"http1\"";
                    self.err(p, format!("{path}.protocol"), msg);
                    Protocol::Http1
                }
                other => {
                    let msg = format!("must be \"http1\", \"h2\" or \"auto\", not {other:?}");
                    self.err(p, format!("{path}.protocol"), msg);
                    Protocol::Http1
                }
            },
        };
        let tls = b
            .tls
            .map(|t| self.upstream_tls(&path, t.into_inner(), file));
        Backend {
            name,
            addrs,
            health,
            eject,
            tls,
            protocol,
        }
    }

    fn upstream_tls(&mut self, path: &str, raw: RawUpstreamTls, file: &Path) -> UpstreamTls {
        if let Some(sni) = &raw.sni
            && !route::is_hostname(&sni.get_ref().to_ascii_lowercase())
            && sni.get_ref().parse::<std::net::IpAddr>().is_err()
        {
            self.err(
                sni,
                format!("{path}.tls.sni"),
                format!("{:?} is not a host name or IP address", sni.get_ref()),
            );
        }
        let ca_file = raw.ca_file.map(|ca| {
            let full = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from(ca.get_ref()), |d| d.join(ca.get_ref()));
            if let Err(e) = check_ca_file(&full) {
                self.err(
                    &ca,
                    format!("{path}.tls.ca_file"),
                    format!("{}: {e}", full.display()),
                );
            }
            full
        });
        UpstreamTls {
            sni: raw.sni.map(Spanned::into_inner),
            ca_file,
        }
    }
}

/// `status = 200` or `status = "200-299"`.
fn health_status(v: &toml::Value) -> Result<(u16, u16), String> {
    let hint = "use a status such as 200, or a range such as \"200-399\"";
    let code = |n: i64| -> Result<u16, String> {
        if (100..=599).contains(&n) {
            Ok(n as u16)
        } else {
            Err(format!("{n} is not an HTTP status; {hint}"))
        }
    };
    match v {
        toml::Value::Integer(n) => code(*n).map(|c| (c, c)),
        toml::Value::String(s) => {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let parse = |t: &str| {
                t.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{s:?} is not a status range; {hint}"))
                    .and_then(code)
            };
            let (lo, hi) = (parse(a)?, parse(b)?);
            if lo > hi {
                return Err(format!("{s:?} is empty: {lo} is above {hi}"));
            }
            Ok((lo, hi))
        }
        _ => Err(hint.to_string()),
    }
}

/// A CA file must hold at least one PEM certificate.
fn check_ca_file(path: &Path) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read it ({e})"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate file ({e})"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(())
}

fn check_upstream_addr(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let hint = "use ip:port or hostname:port, e.g. \"10.0.0.5:80\" or \"lb.old.internal:443\"";
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} has no port; {hint}"));
    };
    if port.parse::<u16>().is_err() || port == "0" {
        return Err(format!("{addr:?}: {port:?} is not a port; {hint}"));
    }
    if !route::is_hostname(host) {
        return Err(format!("{addr:?}: {host:?} is not a host name; {hint}"));
    }
    Ok(())
}

mod fleet;
mod limits;
mod route;
#[cfg(test)]
mod tests;
mod tls;
pub use limits::parse_size;
