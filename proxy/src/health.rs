//! Whether an upstream address may get requests: active HTTP checks and passive
//! ejection after consecutive connect failures. State is kept per backend × address
//! for the life of the process, so a reload does not forget that an address is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use cutover_config::{Eject, HealthCheck};
use http::Request;
use http_body_util::BodyExt;
use prometheus::IntGauge;
use tokio::sync::watch;

use crate::replay::UpBody;
use crate::state::{EndpointRt, EndpointSet};
use crate::upstream::{UpClient, Upstream};

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
/// that stops them all (on drop or when replaced). A probe goes out the way a
/// request does: through the same upstream client, so over TLS with the backend's
/// SNI name and CA, and in its protocol (HTTP/2 to a gRPC server).
pub fn start_checks(live: &crate::state::Live, upstream: &Upstream) -> watch::Sender<()> {
    let (stop, _) = watch::channel(());
    for (b, rt) in live.snap.config.backends.iter().zip(&live.backends) {
        let Some(check) = &b.health else { continue };
        let sni = crate::state::default_sni(&b.addrs);
        let client = match upstream.client(
            check.timeout,
            b.protocol,
            b.tls.as_ref().map(|t| (t, sni.as_str())),
        ) {
            Ok(c) => c,
            Err(e) => {
                // The snapshot was built with the same settings, so this is not
                // expected; without a client the address keeps its last verdict.
                tracing::warn!(backend = %b.name, error = %e, "health checks cannot start");
                continue;
            }
        };
        tokio::spawn(check_loop(
            b.name.clone(),
            check.clone(),
            client,
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
    client: UpClient,
    set: Arc<EndpointSet>,
    mut stop: watch::Receiver<()>,
) {
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

/// One check of one address: a GET of the check's path with the check's `host` as
/// Host (default: the address's host name when it has one, else the address),
/// answered within the check's timeout with a status in its `status` range.
async fn probe(client: &UpClient, check: &HealthCheck, e: &EndpointRt) -> bool {
    let host = check
        .host
        .as_deref()
        .or(e.host.as_deref())
        .unwrap_or(e.authority.as_str());
    let Ok(req) = Request::get(check.path.as_str())
        .header(http::header::HOST, host)
        .body(UpBody::Empty)
    else {
        return false;
    };
    let checked = async {
        let (resp, lease) = crate::upstream::send(client, &e.authority, req, check.timeout, false)
            .await
            .ok()?;
        let ok = healthy_status(resp.status(), check.status);
        // Read to the end, so the connection can serve the next check.
        resp.into_body().collect().await.ok()?;
        lease.release();
        Some(ok)
    };
    matches!(
        tokio::time::timeout(check.timeout, checked).await,
        Ok(Some(true))
    )
}

/// Whether a probe's answer counts as healthy: its status within the check's
/// inclusive `(low, high)` range.
fn healthy_status(status: http::StatusCode, (low, high): (u16, u16)) -> bool {
    (low..=high).contains(&status.as_u16())
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
    fn the_status_range_decides_a_probe() {
        let code = |n| http::StatusCode::from_u16(n).unwrap();
        let default = (200, 399);
        assert!(healthy_status(code(200), default));
        assert!(healthy_status(code(204), default));
        assert!(healthy_status(code(301), default));
        assert!(healthy_status(code(399), default));
        assert!(!healthy_status(code(199), default));
        assert!(!healthy_status(code(404), default));
        assert!(!healthy_status(code(503), default));
        assert!(healthy_status(code(200), (200, 200)));
        assert!(!healthy_status(code(204), (200, 200)));
        assert!(!healthy_status(code(301), (200, 200)));
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
