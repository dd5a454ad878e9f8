//! Whether an upstream address may get requests: active HTTP checks and passive
//! ejection after consecutive connect failures. State is kept per backend × address
//! for the life of the process, so a reload does not forget that an address is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use cutover_config::{Eject, HealthCheck};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::IntGauge;
use tokio::sync::watch;

use crate::state::{EndpointRt, EndpointSet};

/// The health of one address of one backend.
pub struct EndpointHealth {
    /// The active checks' verdict; true until they say otherwise.
    checked_up: AtomicBool,
    /// Passive ejection: milliseconds since `epoch` until which the address is out.
    ejected_until_ms: AtomicU64,
    connect_failures: AtomicU32,
    /// Consecutive active check results, for the thresholds.
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    epoch: Instant,
    gauge: IntGauge,
}

impl EndpointHealth {
    pub fn new(gauge: IntGauge) -> Self {
        gauge.set(1);
        EndpointHealth {
            checked_up: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            connect_failures: AtomicU32::new(0),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            epoch: Instant::now(),
            gauge,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether requests may go here now.
    #[inline]
    pub fn is_up(&self) -> bool {
        self.checked_up.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// A request connected: the passive failure streak ends.
    #[inline]
    pub fn connected(&self) {
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            self.connect_failures.store(0, Ordering::Relaxed);
            self.refresh_gauge();
        }
    }

    /// A request failed to connect. Returns true when this ejected the address.
    pub fn connect_failed(&self, eject: &Eject) -> bool {
        let n = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if eject.failures == 0 || n < eject.failures {
            return false;
        }
        self.connect_failures.store(0, Ordering::Relaxed);
        let until = self.now_ms() + u64::try_from(eject.cooldown.as_millis()).unwrap_or(u64::MAX);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        self.gauge.set(0);
        true
    }

    /// Applies one active check result against the thresholds.
    fn record_check(&self, passed: bool, check: &HealthCheck, backend: &str, addr: &str) {
        let (ok, fail) = if passed {
            self.fail_streak.store(0, Ordering::Relaxed);
            (self.ok_streak.fetch_add(1, Ordering::Relaxed) + 1, 0)
        } else {
            self.ok_streak.store(0, Ordering::Relaxed);
            (0, self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1)
        };
        let up = self.checked_up.load(Ordering::Relaxed);
        if up && fail >= check.unhealthy {
            tracing::warn!(%backend, %addr, failures = fail, "health check failing: address taken out");
            self.set_checked(false);
        } else if !up && ok >= check.healthy {
            tracing::info!(%backend, %addr, "health check passing: address back in");
            self.set_checked(true);
        }
    }

    fn set_checked(&self, up: bool) {
        self.checked_up.store(up, Ordering::Relaxed);
        self.refresh_gauge();
    }

    fn refresh_gauge(&self) {
        self.gauge.set(i64::from(self.is_up()));
    }
}

/// Starts the active checks of every backend that has them, and returns the handle
/// that stops them all (on drop or when replaced).
pub fn start_checks(live: &crate::state::Live) -> watch::Sender<()> {
    let (stop, _) = watch::channel(());
    for (b, rt) in live.snap.config.backends.iter().zip(&live.backends) {
        let Some(check) = &b.health else { continue };
        tokio::spawn(check_loop(
            b.name.clone(),
            check.clone(),
            b.protocol == cutover_config::Protocol::H2,
            rt.set.clone(),
            stop.subscribe(),
        ));
    }
    stop
}

/// Checks every current address of one backend each interval, until `stop` changes
/// or is dropped. The address list is read each time, so addresses that DNS adds
/// are checked too.
async fn check_loop(
    backend: String,
    check: HealthCheck,
    h2: bool,
    set: Arc<EndpointSet>,
    mut stop: watch::Receiver<()>,
) {
    // An HTTP/2 backend (a gRPC server) may not speak HTTP/1.1 at all.
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .http2_only(h2)
        .build(HttpConnector::new());
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = interval.tick() => {}
        }
        let list = set.list.load_full();
        let probes = list.iter().map(|e| probe(&client, &check, e));
        for (e, passed) in list
            .iter()
            .zip(futures_util::future::join_all(probes).await)
        {
            e.health.record_check(passed, &check, &backend, &e.addr);
        }
    }
}

async fn probe(
    client: &Client<HttpConnector, Empty<Bytes>>,
    check: &HealthCheck,
    e: &EndpointRt,
) -> bool {
    let uri = format!("http://{}{}", e.addr, check.path);
    let Ok(mut req) = Request::get(uri.as_str()).body(Empty::new()) else {
        return false;
    };
    if let Some(host) = &e.host
        && let Ok(v) = http::HeaderValue::from_str(host)
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
    matches!(
        tokio::time::timeout(check.timeout, client.request(req)).await,
        Ok(Ok(r)) if r.status() == StatusCode::OK || r.status().is_success()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn health() -> EndpointHealth {
        EndpointHealth::new(IntGauge::new("t", "t").unwrap())
    }

    #[test]
    fn consecutive_connect_failures_eject_for_the_cooldown() {
        let h = health();
        let eject = Eject {
            failures: 3,
            cooldown: Duration::from_secs(60),
        };
        assert!(!h.connect_failed(&eject));
        h.connected();
        assert!(!h.connect_failed(&eject));
        assert!(!h.connect_failed(&eject));
        assert!(h.is_up());
        assert!(h.connect_failed(&eject));
        assert!(!h.is_up());
        assert_eq!(h.gauge.get(), 0);
    }

    #[test]
    fn ejection_can_be_turned_off() {
        let h = health();
        let eject = Eject {
            failures: 0,
            cooldown: Duration::from_secs(60),
        };
        for _ in 0..10 {
            assert!(!h.connect_failed(&eject));
        }
        assert!(h.is_up());
    }

    #[test]
    fn a_short_cooldown_lets_the_address_back() {
        let h = health();
        let eject = Eject {
            failures: 1,
            cooldown: Duration::ZERO,
        };
        assert!(h.connect_failed(&eject));
        assert!(h.is_up());
    }
}
