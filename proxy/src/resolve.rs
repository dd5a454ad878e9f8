//! Backend host names, resolved with hickory-resolver and re-resolved when their
//! TTL runs out. Every address an answer returns is used. A failed lookup keeps the
//! last good addresses, is logged, and is counted.
//!
//! Each backend with a name in its `addrs` gets a task that keeps its
//! [`EndpointSet`] current; the tasks restart with every reload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_config::{Config, ResolverSettings};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::watch;

use crate::state::{EndpointSet, Live, Shared};

/// The resolver and its TTL bounds.
pub struct Dns {
    resolver: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver ([resolver]): {0}")]
pub struct DnsError(String);

impl Dns {
    pub fn new(settings: &ResolverSettings) -> Result<Dns, DnsError> {
        let builder = if settings.nameservers.is_empty() {
            Resolver::builder_tokio().map_err(|e| DnsError(e.to_string()))?
        } else {
            let servers = settings
                .nameservers
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
        let resolver = builder.build().map_err(|e| DnsError(e.to_string()))?;
        Ok(Dns {
            resolver,
            min_ttl: settings.min_ttl,
            max_ttl: settings.max_ttl,
        })
    }

    /// The addresses of `host` with `port`, and how long they may be used.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Vec<SocketAddr>, Duration), String> {
        let answer = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err("no addresses in the answer".into());
        }
        let ttl = answer
            .valid_until()
            .saturating_duration_since(Instant::now());
        Ok((addrs, ttl.clamp(self.min_ttl, self.max_ttl)))
    }
}

/// `host:port` of every name among the addresses.
fn names(addrs: &[String]) -> Vec<(String, u16, String)> {
    addrs
        .iter()
        .filter(|a| a.parse::<SocketAddr>().is_err())
        .filter_map(|a| {
            let (h, p) = a.rsplit_once(':')?;
            Some((h.to_string(), p.parse().ok()?, a.clone()))
        })
        .collect()
}

/// Resolves every name in `config` that has no answer yet, so a snapshot built from
/// it starts with addresses.
pub async fn prefetch(shared: &Shared, config: &Config) {
    for b in &config.backends {
        for (host, port, key) in names(&b.addrs) {
            if shared.with_registry(|r, _| r.resolved.contains_key(&key)) {
                continue;
            }
            match shared.dns.resolve(&host, port).await {
                Ok((addrs, _)) => {
                    tracing::info!(backend = %b.name, %host, addrs = ?addrs, "resolved");
                    shared.with_registry(|r, _| r.resolved.insert(key, addrs));
                }
                Err(e) => {
                    shared.metrics.dns_failure(&b.name, &host);
                    tracing::warn!(backend = %b.name, %host, error = %e, "cannot resolve a backend address yet");
                }
            }
        }
    }
}

/// Re-reads every named backend's addresses from the last answers, after a prefetch.
pub fn refresh_sets(shared: &Shared, live: &Live) {
    for rt in &live.backends {
        if rt.set.has_names() {
            let list = shared.with_registry(|r, m| r.expand(m, &rt.name, &rt.set.addrs));
            rt.set.list.store(Arc::new(list));
        }
    }
}

/// Starts re-resolution for every backend with names; returns the stop handle.
pub fn start(shared: &Arc<Shared>, live: &Live) -> watch::Sender<()> {
    let (stop, _) = watch::channel(());
    for rt in &live.backends {
        if rt.set.has_names() {
            tokio::spawn(refresh_loop(
                shared.clone(),
                rt.name.clone(),
                rt.set.clone(),
                stop.subscribe(),
            ));
        }
    }
    stop
}

async fn refresh_loop(
    shared: Arc<Shared>,
    backend: String,
    set: Arc<EndpointSet>,
    mut stop: watch::Receiver<()>,
) {
    let names = names(&set.addrs);
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = shared.dns.max_ttl;
        for (host, port, key) in &names {
            match shared.dns.resolve(host, *port).await {
                Ok((addrs, ttl)) => {
                    wait = wait.min(ttl);
                    let changed =
                        shared.with_registry(|r, _| r.resolved.insert(key.clone(), addrs.clone()));
                    if changed.as_ref() != Some(&addrs) {
                        tracing::info!(%backend, %host, addrs = ?addrs, ttl = ?ttl, "resolved");
                    }
                }
                Err(e) => {
                    // Keep the last good addresses; try again soon.
                    wait = wait.min(shared.dns.min_ttl.max(Duration::from_secs(1)));
                    shared.metrics.dns_failure(&backend, host);
                    tracing::warn!(%backend, %host, error = %e, "DNS lookup failed; keeping the last good addresses");
                }
            }
        }
        let list = shared.with_registry(|r, m| r.expand(m, &backend, &set.addrs));
        set.list.store(Arc::new(list));
    }
}
