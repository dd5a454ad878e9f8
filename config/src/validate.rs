//! raw → typed. Every semantic problem is collected with its file:line:col and field
//! path before anything is returned, so `--check` shows the whole list at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use crate::diag::{ConfigError, Diagnostic, Locator};
use crate::duration::parse_duration;
use crate::hash::BUCKETS;
use crate::model::{
    AdminSettings, Backend, Config, Listen, ProxySettings, Route, Sticky, WriteSide,
};
use crate::raw::{RawConfig, RawRoute, RawSticky};
use crate::weights::{Weights, parse_percent};

const DEFAULT_HTTP: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
const DEFAULT_GRACE: Duration = Duration::from_secs(25);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_COOKIE_MAX_AGE: Duration = Duration::from_secs(30 * 86400);

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

    fn config(&mut self, raw: RawConfig, file: &Path) -> Config {
        let listen = Listen {
            http: self.addr(raw.listen.http, DEFAULT_HTTP, "listen.http"),
        };
        let admin = AdminSettings {
            listen: self.addr(raw.admin.listen, DEFAULT_ADMIN, "admin.listen"),
            token_file: raw.admin.token_file.map(|s| s.into_inner().into()),
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = match raw.proxy.threads {
            None => cores,
            Some(t) if (1..=1024).contains(t.get_ref()) => {
                usize::try_from(*t.get_ref()).unwrap_or(cores)
            }
            Some(t) => {
                self.err(
                    &t,
                    "proxy.threads",
                    format!(
                        "{} is out of range; use 1 to 1024 (default: the number of cores)",
                        t.get_ref()
                    ),
                );
                cores
            }
        };
        let proxy = ProxySettings {
            threads,
            grace: self.duration(raw.proxy.grace, DEFAULT_GRACE, "proxy.grace"),
            connect_timeout: self.duration(
                raw.proxy.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
                "proxy.connect_timeout",
            ),
        };

        let mut backends = Vec::with_capacity(raw.backends.len());
        for (name, b) in raw.backends {
            // Keys carry no span of their own; point at the backend's addresses.
            let path = format!("backends.{name}");
            if !is_backend_name(&name) {
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
            backends.push(Backend { name, addrs });
        }

        let mut routes = Vec::with_capacity(raw.routes.len());
        let mut seen_hosts: HashMap<String, usize> = HashMap::new();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        for (i, r) in raw.routes.into_iter().enumerate() {
            let route = self.route(i, r, &backends, &mut seen_hosts, &mut seen_names);
            routes.push(route);
        }

        Config {
            file: file.to_path_buf(),
            listen,
            admin,
            proxy,
            backends,
            routes,
        }
    }

    fn route(
        &mut self,
        i: usize,
        raw: Spanned<RawRoute>,
        backends: &[Backend],
        seen_hosts: &mut HashMap<String, usize>,
        seen_names: &mut HashMap<String, usize>,
    ) -> Route {
        let at = format!("routes[{i}]");
        let route_span = raw.span();
        let r = raw.into_inner();
        if r.hosts.get_ref().is_empty() {
            self.err(
                &r.hosts,
                format!("{at}.hosts"),
                "needs at least one host (\"*\" for a default route)",
            );
        }
        let mut hosts = Vec::new();
        let mut host_errors = false;
        for (j, h) in r.hosts.get_ref().iter().enumerate() {
            let path = format!("{at}.hosts[{j}]");
            let host = h.get_ref().trim().to_ascii_lowercase();
            if let Err(e) = check_route_host(&host) {
                self.err(h, &path, e);
                host_errors = true;
                continue;
            }
            if let Some(prev) = seen_hosts.insert(host.clone(), i) {
                let msg = if prev == i {
                    format!("{host:?} is listed twice")
                } else {
                    format!("{host:?} is already routed by routes[{prev}]")
                };
                self.err(h, &path, msg);
                host_errors = true;
            }
            hosts.push(host);
        }
        let name = match &r.name {
            Some(n) => n.get_ref().clone(),
            None => hosts
                .first()
                .cloned()
                .unwrap_or_else(|| format!("route{i}")),
        };
        // A derived name repeats only when a host does, which is already reported.
        let derived_clash_reported = r.name.is_none() && host_errors;
        if let Some(prev) = seen_names
            .insert(name.clone(), i)
            .filter(|_| !derived_clash_reported)
        {
            let msg = format!(
                "route name {name:?} is already used by routes[{prev}]; set a distinct `name`"
            );
            match &r.name {
                Some(n) => self.err(n, format!("{at}.name"), msg),
                None => self.errors.push(self.loc.at(
                    Some(route_span.clone()),
                    format!("{at}.name"),
                    msg,
                )),
            }
        }

        let weights = self.weights(&at, &r.weights, backends);
        let writes = match &r.writes {
            None => WriteSide::Split,
            Some(w) if w.get_ref() == "split" => WriteSide::Split,
            Some(w) => match backends.iter().position(|b| &b.name == w.get_ref()) {
                Some(id) => WriteSide::Backend(id),
                None => {
                    let msg = format!(
                        "unknown backend {:?}; use \"split\" or one of: {}",
                        w.get_ref(),
                        names(backends)
                    );
                    self.err(w, format!("{at}.writes"), msg);
                    WriteSide::Split
                }
            },
        };
        let sticky = match r.sticky {
            None => Sticky::Cookie {
                name: "cutover".into(),
                max_age: DEFAULT_COOKIE_MAX_AGE,
            },
            Some(s) => self.sticky(&at, s),
        };
        Route {
            name,
            hosts,
            weights,
            writes,
            sticky,
        }
    }

    fn weights(
        &mut self,
        at: &str,
        raw: &Spanned<indexmap::IndexMap<String, Spanned<f64>>>,
        backends: &[Backend],
    ) -> Weights {
        let mut bp = vec![0u16; backends.len()];
        let mut ok = true;
        for (name, value) in raw.get_ref() {
            let path = format!("{at}.weights.{name}");
            let Some(id) = backends.iter().position(|b| &b.name == name) else {
                let msg = format!(
                    "unknown backend {name:?}; declared backends: {}",
                    names(backends)
                );
                self.err(value, path, msg);
                ok = false;
                continue;
            };
            match parse_percent(*value.get_ref()) {
                Ok(w) => bp[id] = w,
                Err(e) => {
                    self.err(value, path, e);
                    ok = false;
                }
            }
        }
        let sum: u32 = bp.iter().map(|&w| u32::from(w)).sum();
        if ok && sum != u32::from(BUCKETS) {
            let total = f64::from(sum) / 100.0;
            self.err(
                raw,
                format!("{at}.weights"),
                format!("weights sum to {total}, not 100"),
            );
        }
        Weights::from_basis_points(bp)
    }

    fn sticky(&mut self, at: &str, raw: Spanned<RawSticky>) -> Sticky {
        let path = format!("{at}.sticky");
        let s = raw.get_ref();
        let set = [
            s.cookie.is_some(),
            s.header.is_some(),
            s.client_ip.as_ref().is_some_and(|c| *c.get_ref()),
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        if set != 1 {
            self.err(&raw, &path, "set exactly one of { cookie = \"name\" }, { header = \"name\" } or { client_ip = true }");
        }
        let max_age = self.duration(
            s.max_age.clone(),
            DEFAULT_COOKIE_MAX_AGE,
            &format!("{path}.max_age"),
        );
        if let Some(c) = &s.cookie {
            if !is_token(c.get_ref()) {
                self.err(
                    c,
                    format!("{path}.cookie"),
                    "a cookie name uses letters, digits and !#$%&'*+-.^_`|~ only",
                );
            }
            return Sticky::Cookie {
                name: c.get_ref().clone(),
                max_age,
            };
        }
        if let Some(h) = &s.header {
            if !is_token(h.get_ref()) {
                self.err(h, format!("{path}.header"), "not a valid header name");
            }
            return Sticky::Header(h.get_ref().to_ascii_lowercase());
        }
        Sticky::ClientIp
    }
}

fn names(backends: &[Backend]) -> String {
    if backends.is_empty() {
        return "(none; declare [backends.NAME] first)".into();
    }
    backends
        .iter()
        .map(|b| format!("{:?}", b.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_backend_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 9110 token characters: valid for both cookie and header names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn check_route_host(host: &str) -> Result<(), String> {
    if host == "*" {
        return Ok(());
    }
    if let Some(suffix) = host.strip_prefix("*.") {
        return if is_hostname(suffix) {
            Ok(())
        } else {
            Err(format!(
                "{host:?}: a wildcard is \"*.\" followed by a host name"
            ))
        };
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{host:?} is not an IPv6 literal"));
    }
    if host.contains('*') {
        return Err(format!(
            "{host:?}: '*' is allowed only as \"*\" or a leading \"*.\""
        ));
    }
    if let Some((h, port)) = host.rsplit_once(':') {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("hosts are matched without the port; write {h:?}"));
        }
    }
    if is_hostname(host) {
        Ok(())
    } else {
        Err(format!("{host:?} is not a host name"))
    }
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
    if !is_hostname(host) {
        return Err(format!("{addr:?}: {host:?} is not a host name; {hint}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
