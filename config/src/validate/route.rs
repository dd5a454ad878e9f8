//! Validation of `[[routes]]`: hosts, weights, the write side, stickiness, retries and
//! timeouts.

use std::collections::HashMap;
use std::time::Duration;

use toml::Spanned;

use super::{DEFAULT_COOKIE_MAX_AGE, Validator};
use crate::hash::BUCKETS;
use crate::model::{Backend, Route, Sticky, Timeouts, Upgrades, WriteSide};
use crate::raw::{RawRoute, RawSticky, RawTimeouts};
use crate::weights::{Weights, parse_percent};

const DEFAULT_ATTEMPTS: u32 = 2;
const DEFAULT_RETRY_BUFFER: usize = 64 * 1024;
const DEFAULT_RESPONSE_HEADER: Duration = Duration::from_secs(60);

impl Validator<'_> {
    pub(super) fn route(
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
        let attempts = self.count(
            r.attempts,
            1..=10,
            i64::from(DEFAULT_ATTEMPTS),
            &format!("{at}.attempts"),
        ) as u32;
        let retry_buffer = self.count(
            r.retry_buffer,
            0..=64 * 1024 * 1024,
            DEFAULT_RETRY_BUFFER as i64,
            &format!("{at}.retry_buffer"),
        ) as usize;
        let timeouts = self.timeouts(&at, r.timeouts);
        let mut members: Vec<usize> = r
            .weights
            .get_ref()
            .keys()
            .filter_map(|n| backends.iter().position(|b| &b.name == n))
            .collect();
        if let WriteSide::Backend(id) = writes {
            members.push(id);
        }
        members.sort_unstable();
        members.dedup();
        let failover = r.failover.is_none_or(|f| *f.get_ref());
        let upgrades = match r.upgrades {
            None => Upgrades::Writes,
            Some(u) => match u.get_ref().as_str() {
                "writes" => Upgrades::Writes,
                "split" => Upgrades::Split,
                other => {
                    let msg = format!("must be \"writes\" or \"split\", not {other:?}");
                    self.err(&u, format!("{at}.upgrades"), msg);
                    Upgrades::Writes
                }
            },
        };
        let mut grpc_reads = Vec::new();
        for (i, g) in r.grpc_reads.into_iter().flatten().enumerate() {
            let pattern = g.get_ref();
            let star = pattern.find('*');
            if !pattern.starts_with('/') || star.is_some_and(|s| s != pattern.len() - 1) {
                let msg = format!(
                    "{pattern:?} is not a gRPC method pattern; use a path such as \"/pkg.Service/Get\", \
                     or a prefix ending in one '*' such as \"/pkg.Service/Get*\""
                );
                self.err(&g, format!("{at}.grpc_reads[{i}]"), msg);
            } else {
                grpc_reads.push(g.into_inner());
            }
        }
        let max_body = self.size(
            r.max_body,
            0..=u64::MAX >> 1,
            self.max_body_default,
            &format!("{at}.max_body"),
        );
        let request_buffering = r.request_buffering.is_none_or(|b| *b.get_ref());
        let retry_budget = self.retry_budget(&at, r.retry_budget);
        Route {
            max_body,
            request_buffering,
            retry_budget,
            name,
            hosts,
            weights,
            members,
            writes,
            sticky,
            attempts,
            retry_buffer,
            timeouts,
            failover,
            upgrades,
            grpc_reads,
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

    fn timeouts(&mut self, at: &str, raw: Option<Spanned<RawTimeouts>>) -> Timeouts {
        let connect_default = self.connect_default;
        let Some(raw) = raw else {
            return Timeouts {
                connect: connect_default,
                response_header: DEFAULT_RESPONSE_HEADER,
                total: None,
                body_idle: self.body_idle_default,
            };
        };
        let t = raw.into_inner();
        let connect = self.duration(
            t.connect,
            connect_default,
            &format!("{at}.timeouts.connect"),
        );
        let response_header = self.duration(
            t.response_header,
            DEFAULT_RESPONSE_HEADER,
            &format!("{at}.timeouts.response_header"),
        );
        let total = t.total.map(|v| {
            let span = v.span();
            let d = self.duration(Some(v), Duration::ZERO, &format!("{at}.timeouts.total"));
            if d.is_zero() {
                self.errors.push(self.loc.at(
                    Some(span),
                    format!("{at}.timeouts.total"),
                    "must be above zero; omit it for no limit",
                ));
            }
            d
        });
        let body_idle = self.duration(
            t.body_idle,
            self.body_idle_default,
            &format!("{at}.timeouts.body_idle"),
        );
        Timeouts {
            connect,
            response_header,
            total,
            body_idle,
        }
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

pub(super) fn is_backend_name(s: &str) -> bool {
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

pub(super) fn is_hostname(s: &str) -> bool {
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
    if let Some((h, port)) = host.rsplit_once(':')
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("hosts are matched without the port; write {h:?}"));
    }
    if is_hostname(host) {
        Ok(())
    } else {
        Err(format!("{host:?} is not a host name"))
    }
}
