//! Host → route: exact names first, then the longest matching wildcard, then `*`.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::model::Route;

/// The lookup structure for one snapshot's routes; built once per snapshot so a
/// request pays one or two hash lookups.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    exact: HashMap<String, usize>,
    /// Keyed by the suffix including its leading dot: `*.shop.example.com` is stored
    /// as `.shop.example.com`.
    wildcard: HashMap<String, usize>,
    default: Option<usize>,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> Self {
        let mut t = RouteTable::default();
        for (i, r) in routes.iter().enumerate() {
            for h in &r.hosts {
                if h == "*" {
                    t.default = Some(i);
                } else if let Some(suffix) = h.strip_prefix('*') {
                    t.wildcard.insert(suffix.to_string(), i);
                } else {
                    t.exact.insert(h.clone(), i);
                }
            }
        }
        t
    }

    /// The route for a normalized host (see [`RouteTable::normalize`]).
    #[inline]
    pub fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        if !self.wildcard.is_empty() {
            // Leftmost dot first: the longest suffix is the most specific wildcard.
            for (pos, _) in host.match_indices('.') {
                if let Some(&i) = self.wildcard.get(&host[pos..]) {
                    return Some(i);
                }
            }
        }
        self.default
    }

    /// Lower-cases a Host header value and strips its port and trailing dot. Borrows
    /// when nothing needs to change, which is the common case.
    #[inline]
    pub fn normalize(raw: &str) -> Cow<'_, str> {
        let without_port = if raw.starts_with('[') {
            // [v6]:port
            match raw.find(']') {
                Some(end) => &raw[..=end],
                None => raw,
            }
        } else {
            match raw.rfind(':') {
                Some(i) => &raw[..i],
                None => raw,
            }
        };
        let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
        if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(trimmed.to_ascii_lowercase())
        } else {
            Cow::Borrowed(trimmed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Sticky, WriteSide};
    use crate::weights::Weights;
    use std::time::Duration;

    fn route(hosts: &[&str]) -> Route {
        Route {
            name: hosts[0].into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            weights: Weights::from_basis_points(vec![10_000]),
            members: vec![0],
            writes: WriteSide::Split,
            sticky: Sticky::Cookie {
                name: "c".into(),
                max_age: Duration::from_secs(1),
            },
            attempts: 2,
            retry_buffer: 0,
            timeouts: crate::model::Timeouts {
                connect: Duration::from_secs(1),
                response_header: Duration::from_secs(1),
                total: None,
                body_idle: Duration::from_secs(1),
            },
            failover: true,
            upgrades: crate::model::Upgrades::Writes,
            grpc_reads: Vec::new(),
            max_body: 1024,
            request_buffering: true,
            retry_budget: crate::model::RetryBudget {
                ratio: 0.2,
                window: Duration::from_secs(10),
                min_per_second: 10,
            },
        }
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let t = RouteTable::new(&[
            route(&["shop.example.com", "*.shop.example.com"]),
            route(&["api.shop.example.com"]),
            route(&["*.example.com"]),
            route(&["*"]),
        ]);
        assert_eq!(t.lookup("shop.example.com"), Some(0));
        assert_eq!(t.lookup("api.shop.example.com"), Some(1));
        assert_eq!(t.lookup("www.shop.example.com"), Some(0));
        assert_eq!(t.lookup("a.b.shop.example.com"), Some(0));
        assert_eq!(t.lookup("blog.example.com"), Some(2));
        assert_eq!(t.lookup("example.com"), Some(3));
        assert_eq!(t.lookup("other.org"), Some(3));
    }

    #[test]
    fn no_default_means_no_route() {
        let t = RouteTable::new(&[route(&["*.example.com"])]);
        assert_eq!(t.lookup("example.com"), None);
        assert_eq!(t.lookup("other.org"), None);
    }

    #[test]
    fn normalize_strips_port_dot_and_case() {
        assert_eq!(
            RouteTable::normalize("Shop.Example.COM:8080"),
            "shop.example.com"
        );
        assert_eq!(
            RouteTable::normalize("shop.example.com."),
            "shop.example.com"
        );
        assert_eq!(RouteTable::normalize("[::1]:8080"), "[::1]");
        assert!(matches!(
            RouteTable::normalize("plain.host"),
            Cow::Borrowed(_)
        ));
    }
}
