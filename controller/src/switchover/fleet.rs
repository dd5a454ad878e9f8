//! The switchover's dealings with every proxy replica at once: preconditions, the
//! hold, the drain, the release.
//!
//! Each hold and each release of one route is one change at its own epoch, sent to
//! every replica at once; routes go one after the other, so that no replica sees a
//! later change before an earlier one. A replica that appears while writes are held
//! (found again through the plan's discovery) is held too: it is given the state
//! of the newest replica, which carries the hold and its deadline, or, if it has no
//! `/state`, is sent the hold itself. It then counts for the drain and is released
//! with the others.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use cutover_api::Scope;

use crate::error::Error;
use crate::proxy::Proxies;

/// How often the drain looks for replicas that appeared; it reads the in-flight
/// counts far more often.
const FIND_EVERY: Duration = Duration::from_millis(250);

/// One route held on one proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The routes of `held`, each once, in order.
fn routes_of(held: &[Held]) -> Vec<String> {
    let mut routes: Vec<String> = Vec::new();
    for h in held {
        if !routes.contains(&h.route) {
            routes.push(h.route.clone());
        }
    }
    routes
}

/// Holds writes on every route of every proxy. Each must acknowledge; on the first
/// refusal the holds already taken are released, unchanged.
pub async fn hold_all(
    proxies: &Proxies,
    routes: &[String],
    max: Duration,
    scope: Scope,
) -> Result<Vec<Held>, Error> {
    let mut held = Vec::new();
    for route in routes {
        let result = match proxies.next_epoch().await {
            Ok(epoch) => hold_route(proxies, route, max, epoch, scope, &mut held).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let _ = release_held(proxies, &held, None, Instant::now() + max).await;
            return Err(e);
        }
    }
    Ok(held)
}

/// One route's hold on every replica at once, as change `epoch`; what was held
/// joins `held` even when another replica refused.
async fn hold_route(
    proxies: &Proxies,
    route: &str,
    max: Duration,
    epoch: u64,
    scope: Scope,
    held: &mut Vec<Held>,
) -> Result<(), Error> {
    let results = join_all(
        proxies
            .urls()
            .iter()
            .map(|url| proxies.hold(url, route, max, epoch, scope)),
    )
    .await;
    let mut first_error = None;
    for (url, r) in proxies.urls().iter().zip(results) {
        match r {
            Ok(_) => held.push(Held {
                url: url.clone(),
                route: route.to_string(),
            }),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Whether a hold of scope `shown` holds every request a hold of `wanted` does.
fn covers(shown: Scope, wanted: Scope) -> bool {
    match wanted {
        Scope::Upgrades => true,
        Scope::Writes => matches!(shown, Scope::Writes | Scope::All),
        Scope::All => shown == Scope::All,
    }
}

/// Finds the replicas again and holds the ones that appeared: each has been given
/// the newest replica's state (the hold, with its deadline) by the refresh; a
/// route that shows no hold on it all the same (it has no `/state`, or joined
/// before the hold was taken) is held now, at the epoch of the last change, until
/// `ends`. They join `held`. A lookup that fails keeps the replicas known.
pub async fn enrol(
    proxies: &mut Proxies,
    held: &mut Vec<Held>,
    ends: Instant,
    scope: Scope,
) -> Result<(), Error> {
    if proxies.refresh().await.is_err() {
        return Ok(());
    }
    let routes = routes_of(held);
    let new: Vec<String> = proxies
        .urls()
        .iter()
        .filter(|u| !held.iter().any(|h| &h.url == *u))
        .cloned()
        .collect();
    for url in new {
        for route in &routes {
            // A replica that shows a narrower hold (an upgrades hold from the
            // state it was given, when the writes hold's never reached it) is
            // held again with this one's scope.
            if proxies
                .routes(&url, route)
                .await?
                .iter()
                .any(|r| !r.hold.as_ref().is_some_and(|h| covers(h.scope, scope)))
            {
                let left = ends
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(100));
                let epoch = proxies.current_epoch().await?;
                proxies.hold(&url, route, left, epoch, scope).await?;
            }
            held.push(Held {
                url: url.clone(),
                route: route.clone(),
            });
        }
    }
    Ok(())
}

/// Waits until no write is in flight to `backend` on any held route of any proxy,
/// and no upgraded connection that follows the writes is open to it (the hold
/// closes those after `hold.upgrade_grace`: a WebSocket's messages may be writes),
/// holding the replicas that appear meanwhile (see [`enrol`]; the hold, of
/// `scope`, ends at `hold_ends`). Under an upgrades hold only the upgraded
/// connections are waited for: the other writes still flow.
pub async fn drain(
    proxies: &mut Proxies,
    held: &mut Vec<Held>,
    backend: &str,
    deadline: Instant,
    hold_ends: Instant,
    scope: Scope,
) -> Result<(), Error> {
    let routes = routes_of(held);
    let mut next_find = Instant::now();
    loop {
        if Instant::now() >= next_find {
            enrol(proxies, held, hold_ends, scope).await?;
            next_find = Instant::now() + FIND_EVERY;
        }
        let mut busy = Vec::new();
        for (url, found) in route_states(proxies, &routes).await {
            for r in found? {
                let n = match scope {
                    Scope::Upgrades => 0,
                    _ => r.inflight_writes.get(backend).copied().unwrap_or(0),
                };
                let tunnels = r.write_tunnels.get(backend).copied().unwrap_or(0);
                if n > 0 {
                    busy.push(format!("{url} route {}: {n}", r.name));
                }
                if tunnels > 0 {
                    busy.push(format!(
                        "{url} route {}: {tunnels} upgraded connection(s)",
                        r.name
                    ));
                }
            }
        }
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Precondition(match scope {
                Scope::Upgrades => format!(
                    "upgraded connections still open to {backend} when the time allowed for \
                     them to close ran out ({})",
                    busy.join("; ")
                ),
                _ => format!(
                    "writes still in flight to {backend} when the pause budget ran out ({})",
                    busy.join("; ")
                ),
            }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many upgraded connections that follow the writes are open to `backend`
/// on `routes`, over every proxy.
pub async fn write_tunnels(
    proxies: &Proxies,
    routes: &[String],
    backend: &str,
) -> Result<u64, Error> {
    let mut open = 0;
    for (_, found) in route_states(proxies, routes).await {
        for r in found? {
            open += u64::try_from(r.write_tunnels.get(backend).copied().unwrap_or(0)).unwrap_or(0);
        }
    }
    Ok(open)
}

/// Every replica's state of each of `routes`, read from all of them at once (a
/// drain polls this under the write pause: one round trip, not one per replica),
/// in the order of [`Proxies::urls`].
async fn route_states<'p>(
    proxies: &'p Proxies,
    routes: &[String],
) -> Vec<(&'p String, Result<Vec<cutover_api::RouteStatus>, Error>)> {
    join_all(proxies.urls().iter().flat_map(|url| {
        routes
            .iter()
            .map(move |route| async move { (url, proxies.routes(url, route).await) })
    }))
    .await
}

/// Releases every hold, switching writes to `writes` when given, on the replicas
/// of `held` and on any that appeared since (a release where nothing is held lets
/// nothing go). A proxy that fails is retried until `until` (its own hold
/// deadline), except when it refuses the epoch (someone else changed the fleet:
/// that is reported, never overridden) or when it is gone from the fleet (its
/// release is tried once). Returns the number of held requests let go.
pub async fn release_all(
    proxies: &mut Proxies,
    held: &[Held],
    writes: Option<&str>,
    until: Instant,
) -> Result<u64, Error> {
    let mut all = held.to_vec();
    // A failed lookup releases the replicas known.
    if proxies.refresh().await.is_ok() {
        let routes = routes_of(held);
        for url in proxies.urls() {
            if !all.iter().any(|h| &h.url == url) {
                all.extend(routes.iter().map(|route| Held {
                    url: url.clone(),
                    route: route.clone(),
                }));
            }
        }
    }
    release_held(proxies, &all, writes, until).await
}

/// [`release_all`] on exactly `held`, route by route.
async fn release_held(
    proxies: &Proxies,
    held: &[Held],
    writes: Option<&str>,
    until: Instant,
) -> Result<u64, Error> {
    let mut released = 0;
    let mut errors = Vec::new();
    for route in routes_of(held) {
        let on: Vec<&Held> = held.iter().filter(|h| h.route == route).collect();
        let epoch = match proxies.next_epoch().await {
            Ok(e) => e,
            Err(e) => {
                errors.extend(on.iter().map(|_| e.to_string()));
                continue;
            }
        };
        let results = join_all(on.iter().map(|h| async move {
            let gone = !proxies.urls().contains(&h.url);
            loop {
                match proxies.release(&h.url, &h.route, writes, epoch).await {
                    Ok(n) => return Ok(n),
                    Err(e @ Error::EpochConflict { .. }) => return Err(e),
                    Err(_) if gone => return Ok(0),
                    Err(e) if Instant::now() >= until => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }))
        .await;
        for r in results {
            match r {
                Ok(n) => released += n,
                Err(e) => errors.push(e.to_string()),
            }
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

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::proxy::testing::{Received, admin_answer, error_body, serve, state, url_of};

    /// A replica at epoch 0 whose admission policy refuses holds (403).
    fn refuses_holds(s: &Received) -> (StatusCode, String) {
        if s.path.ends_with("/hold") {
            (
                StatusCode::FORBIDDEN,
                error_body("holds are not allowed here", None),
            )
        } else {
            admin_answer::<0>(s)
        }
    }

    /// A replica that said epoch 3, then took someone else's change at 9.
    fn moved_on(s: &Received) -> (StatusCode, String) {
        if s.path == "/state" {
            (
                StatusCode::OK,
                serde_json::to_string(&state(3, "b")).unwrap(),
            )
        } else {
            (
                StatusCode::CONFLICT,
                error_body("the fleet is at a newer epoch", Some(9)),
            )
        }
    }

    fn held(url: &str) -> Held {
        Held {
            url: url.to_string(),
            route: "shop.test".into(),
        }
    }

    #[tokio::test]
    async fn a_refused_hold_releases_the_holds_taken() {
        let (a, a_seen) = serve(admin_answer::<0>).await;
        let (b, _) = serve(refuses_holds).await;
        let p = Proxies::new(&[url_of(a), url_of(b)], Some("t0ken".into())).unwrap();
        let e = hold_all(
            &p,
            &["shop.test".to_string()],
            Duration::from_secs(5),
            Scope::Writes,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains(&url_of(b)) && e.contains("HTTP 403"), "{e}");
        let a_seen = a_seen.lock().unwrap().clone();
        let calls: Vec<(&str, &str)> = a_seen
            .iter()
            .filter(|s| s.method == "POST")
            .map(|s| (s.path.as_str(), s.body.as_str()))
            .collect();
        // Held at epoch 1, released as the next change.
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0].0, "/routes/shop.test/hold");
        assert!(calls[0].1.contains(r#""epoch":1"#), "{calls:?}");
        assert_eq!(calls[1], ("/routes/shop.test/release", r#"{"epoch":2}"#));
    }

    #[tokio::test]
    async fn a_release_refused_for_its_epoch_is_not_retried() {
        let (a, _) = serve(admin_answer::<0>).await;
        let (b, b_seen) = serve(moved_on).await;
        let (a, b) = (url_of(a), url_of(b));
        let mut p = Proxies::new(&[a.clone(), b.clone()], Some("t0ken".into())).unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        let e = release_all(&mut p, &[held(&a), held(&b)], Some("new"), until)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 of 2 hold(s)") && e.contains(&b) && e.contains("epoch 9"),
            "{e}"
        );
        assert!(Instant::now() < until - Duration::from_secs(25), "retried");
        let releases = b_seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.ends_with("/release"))
            .count();
        assert_eq!(releases, 1);
    }

    #[tokio::test]
    async fn a_replica_gone_from_the_fleet_is_released_once_and_not_waited_for() {
        let (a, _) = serve(admin_answer::<0>).await;
        let a = url_of(a);
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            url_of(l.local_addr().unwrap())
        };
        let mut p = Proxies::new(std::slice::from_ref(&a), Some("t0ken".into())).unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        let n = release_all(&mut p, &[held(&a), held(&gone)], None, until)
            .await
            .unwrap();
        assert_eq!(n, 4);
        assert!(Instant::now() < until - Duration::from_secs(25), "waited");
    }

    #[test]
    fn only_a_hold_as_wide_counts_as_held() {
        assert!(covers(Scope::Writes, Scope::Upgrades));
        assert!(covers(Scope::All, Scope::Writes));
        assert!(!covers(Scope::Upgrades, Scope::Writes));
        assert!(!covers(Scope::Writes, Scope::All));
    }

    #[test]
    fn routes_are_taken_once_in_order() {
        let h = |url: &str, route: &str| Held {
            url: url.into(),
            route: route.into(),
        };
        let held = [h("a", "shop"), h("a", "api"), h("b", "shop"), h("b", "api")];
        assert_eq!(routes_of(&held), vec!["shop", "api"]);
        assert!(routes_of(&[]).is_empty());
    }
}
