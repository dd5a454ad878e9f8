//! The switchover's dealings with every proxy replica at once: preconditions, the
//! hold, the drain, the release.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::error::Error;
use crate::proxy::Proxies;

/// One route held on one proxy.
#[derive(Debug, Clone)]
pub struct Held {
    pub url: String,
    pub route: String,
}

/// Every route must exist on every proxy, send its writes to `from`, and not be
/// held already.
pub async fn preflight(proxies: &Proxies, routes: &[String], from: &str) -> Result<(), Error> {
    for url in proxies.urls() {
        for route in routes {
            for r in proxies.routes(url, route).await? {
                if r.hold.is_some() {
                    return Err(Error::Precondition(format!(
                        "proxy {url}: route {} is already held (a hold outlives its deadline until released); \
                         if no switchover is running, release it with POST /routes/{}/release and run this again",
                        r.name, r.name
                    )));
                }
                if r.writes != from {
                    return Err(Error::Precondition(format!(
                        "proxy {url}: route {} sends writes to {:?}, not {from:?}; \
                         the switchover moves writes from {from:?} (see --old-backend/--new-backend)",
                        r.name, r.writes
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Every route on every proxy: what a hold covers.
pub fn every(proxies: &Proxies, routes: &[String]) -> Vec<Held> {
    proxies
        .urls()
        .iter()
        .flat_map(|url| {
            routes.iter().map(move |route| Held {
                url: url.clone(),
                route: route.clone(),
            })
        })
        .collect()
}

/// Holds writes on every route of every proxy, all at once. Each must acknowledge;
/// on the first refusal the holds already taken are released, unchanged.
pub async fn hold_all(
    proxies: &Proxies,
    routes: &[String],
    max: Duration,
) -> Result<Vec<Held>, Error> {
    let targets = every(proxies, routes);
    let results = join_all(targets.iter().map(|h| proxies.hold(&h.url, &h.route, max))).await;
    let mut held = Vec::new();
    let mut first_error = None;
    for (h, r) in targets.into_iter().zip(results) {
        match r {
            Ok(_) => held.push(h),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(held),
        Some(e) => {
            let _ = release_all(proxies, &held, None, Instant::now() + max).await;
            Err(e)
        }
    }
}

/// Waits until no write is in flight to `backend` on any route of any proxy.
pub async fn drain(
    proxies: &Proxies,
    routes: &[String],
    backend: &str,
    deadline: Instant,
) -> Result<(), Error> {
    loop {
        let mut busy = Vec::new();
        for url in proxies.urls() {
            for route in routes {
                for r in proxies.routes(url, route).await? {
                    let n = r.inflight_writes.get(backend).copied().unwrap_or(0);
                    if n > 0 {
                        busy.push(format!("{url} route {}: {n}", r.name));
                    }
                }
            }
        }
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Precondition(format!(
                "writes still in flight to {backend} when the pause budget ran out ({})",
                busy.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Releases every hold, switching writes to `writes` when given. A proxy that
/// fails is retried until `until` (its own hold deadline). Returns the number of
/// held requests let go.
pub async fn release_all(
    proxies: &Proxies,
    held: &[Held],
    writes: Option<&str>,
    until: Instant,
) -> Result<u64, Error> {
    let results = join_all(held.iter().map(|h| async move {
        loop {
            match proxies.release(&h.url, &h.route, writes).await {
                Ok(n) => return Ok(n),
                Err(e) if Instant::now() >= until => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }))
    .await;
    let mut released = 0;
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(n) => released += n,
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(released)
    } else {
        Err(Error::Precondition(format!(
            "the release failed on {} of {} hold(s): {}",
            errors.len(),
            held.len(),
            errors.join("; ")
        )))
    }
}
