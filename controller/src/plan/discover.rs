//! Which proxy replicas a run talks to: a fixed list of admin URLs, or one DNS name
//! (a headless Service) whose A/AAAA records are the replicas.
//!
//! A discovered name is resolved again on every call, with no cache: the runner
//! asks before every action and its background watch every second
//! ([`crate::proxy::Proxies::refresh`]), so a replica that was added by an
//! autoscaler is brought up to the fleet's state at once and one that went away is
//! not waited for. A replica that missed a weight change would split users
//! differently, which is exactly what the runner exists to prevent.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::error::Error;

/// How long one DNS query may take before the resolver tries again.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the proxies' admin APIs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySource {
    /// Admin base URLs, as given.
    Admin(Vec<String>),
    /// Every address `host` resolves to, at admin port `port`; `nameservers` empty
    /// means the system's resolver configuration.
    Discover {
        host: String,
        port: u16,
        nameservers: Vec<SocketAddr>,
    },
}

/// Reads `NAME:PORT` (the plan's `proxies.discover`); `[v6]:PORT` for an IPv6
/// literal.
pub fn parse_discover(s: &str, nameservers: Vec<SocketAddr>) -> Result<ProxySource, Error> {
    let text = s.trim();
    let bare = text.strip_prefix("http://").unwrap_or(text);
    let bare = bare.trim_end_matches('/');
    let fail = |why: &str| Error::Plan(format!("proxies.discover {s:?}: {why}"));
    let need_port = || {
        fail(&format!(
            "give NAME:PORT, the admin API's port after the name, e.g. \"{bare}:9901\""
        ))
    };
    let (host, port) = if let Some(rest) = bare.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| fail("an IPv6 address goes in brackets: [ADDR]:PORT"))?;
        let port = after.strip_prefix(':').ok_or_else(need_port)?;
        (ip, port)
    } else {
        let (host, port) = bare.rsplit_once(':').ok_or_else(need_port)?;
        if host.contains(':') {
            return Err(fail("an IPv6 address goes in brackets: [ADDR]:PORT"));
        }
        (host, port)
    };
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(fail("expected a DNS name or an IP address before the port"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| fail(&format!("{port:?} is not a port (1-65535)")))?;
    Ok(ProxySource::Discover {
        host: host.to_string(),
        port,
        nameservers,
    })
}

impl ProxySource {
    /// The admin URLs of every replica now: the list as given, or `http://IP:PORT`
    /// for each address the name resolves to (sorted, without duplicates; IPv6 in
    /// brackets).
    pub async fn urls(&self) -> Result<Vec<String>, Error> {
        let (host, port, nameservers) = match self {
            ProxySource::Admin(urls) => return Ok(urls.clone()),
            ProxySource::Discover {
                host,
                port,
                nameservers,
            } => (host, *port, nameservers),
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![url(ip, port)]);
        }
        let fail = |detail: String| Error::Proxy {
            url: format!("{host}:{port}"),
            what: "discover the replicas".into(),
            detail,
        };
        let servers = if nameservers.is_empty() {
            "the system's resolver".to_string()
        } else {
            nameservers
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        // A new resolver per call: its cache must not hide a scale-out.
        let resolver = resolver(nameservers).map_err(fail)?;
        let ips: BTreeSet<IpAddr> = match resolver.lookup_ip(host.as_str()).await {
            Ok(answer) => answer.iter().collect(),
            Err(e) if e.is_no_records_found() => BTreeSet::new(),
            Err(e) => {
                return Err(fail(format!(
                    "cannot resolve {host} (asked {servers}): {e}"
                )));
            }
        };
        if ips.is_empty() {
            return Err(fail(format!(
                "{host} resolved to no addresses (asked {servers}); is the headless Service up?"
            )));
        }
        Ok(ips.into_iter().map(|ip| url(ip, port)).collect())
    }
}

impl fmt::Display for ProxySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySource::Admin(urls) => f.write_str(&urls.join(", ")),
            ProxySource::Discover { host, port, .. } => write!(f, "the replicas of {host}:{port}"),
        }
    }
}

fn url(ip: IpAddr, port: u16) -> String {
    // SocketAddr's Display puts an IPv6 address in brackets.
    format!("http://{}", SocketAddr::new(ip, port))
}

/// A resolver asking `nameservers` (UDP, and TCP for long answers) or, when none
/// are given, the servers of the system's configuration; A and AAAA are asked
/// together and nothing is cached.
fn resolver(nameservers: &[SocketAddr]) -> Result<hickory_resolver::TokioResolver, String> {
    let mut builder = if nameservers.is_empty() {
        Resolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|sa| {
                let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                for c in &mut ns.connections {
                    c.port = sa.port();
                }
                ns
            })
            .collect();
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = 0;
    opts.timeout = QUERY_TIMEOUT;
    builder
        .build()
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discover(s: &str) -> Result<ProxySource, String> {
        parse_discover(s, vec![]).map_err(|e| e.to_string())
    }

    #[test]
    fn discover_takes_a_name_and_the_admin_port() {
        assert_eq!(
            discover("cutover-proxy-admin.cutover.svc.cluster.local:9901").unwrap(),
            ProxySource::Discover {
                host: "cutover-proxy-admin.cutover.svc.cluster.local".into(),
                port: 9901,
                nameservers: vec![],
            }
        );
        assert!(matches!(
            discover("http://admin.test:9901/").unwrap(),
            ProxySource::Discover { port: 9901, .. }
        ));
        assert!(matches!(
            discover("[::1]:9901").unwrap(),
            ProxySource::Discover { ref host, .. } if host == "::1"
        ));
        let e = discover("admin.test").unwrap_err();
        assert!(e.contains("\"admin.test:9901\""), "{e}");
        assert!(
            discover("admin.test:http")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(discover("admin.test:0").unwrap_err().contains("not a port"));
        assert!(discover(":9901").unwrap_err().contains("DNS name"));
        assert!(discover("::1:9901").unwrap_err().contains("brackets"));
        assert!(discover("[::1]").unwrap_err().contains("NAME:PORT"));
    }

    #[tokio::test]
    async fn literals_and_lists_need_no_lookup() {
        let v4 = parse_discover("127.0.0.1:9901", vec![]).unwrap();
        assert_eq!(v4.urls().await.unwrap(), vec!["http://127.0.0.1:9901"]);
        let v6 = parse_discover("[::1]:9901", vec![]).unwrap();
        assert_eq!(v6.urls().await.unwrap(), vec!["http://[::1]:9901"]);
        let list = ProxySource::Admin(vec!["http://127.0.0.1:1".into(), "127.0.0.2:1".into()]);
        assert_eq!(
            list.urls().await.unwrap(),
            vec!["http://127.0.0.1:1", "127.0.0.2:1"]
        );
        assert_eq!(v4.to_string(), "the replicas of 127.0.0.1:9901");
    }
}
