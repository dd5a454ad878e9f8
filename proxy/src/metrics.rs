//! Prometheus metrics. Families are registered once per process; the per-request
//! handles (one route × backend pair) are resolved once per snapshot, so the request
//! path touches atomics, not the families' label maps.

use std::sync::{Mutex, OnceLock};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::upstream::FailureKind;

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    inflight: IntGaugeVec,
    upgraded: IntGaugeVec,
    upstream_errors: IntCounterVec,
    retries: IntCounterVec,
    held: IntGaugeVec,
    upstream_healthy: IntGaugeVec,
    dns_failures: IntCounterVec,
    client_timeouts: IntCounterVec,
    connections_refused: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    pub connections_open: IntGauge,
    pub config_generation: IntGauge,
    pub config_reload_errors: IntCounter,
    /// Writes of the fleet state file that failed.
    pub state_file_errors: IntCounter,
    /// The fleet epoch this replica serves.
    pub fleet_epoch: IntGauge,
    /// 1 while `/readyz` answers 200.
    pub fleet_ready: IntGauge,
    /// Set at scrape time from the live state (see [`Metrics::render_with`]).
    route_weight: GaugeVec,
    route_effective_weight: GaugeVec,
    backend_drained: IntGaugeVec,
    hold_started: GaugeVec,
    /// Serializes scrape-time refreshes, so two scrapes never interleave a reset
    /// with the other's render.
    scrape: Mutex<()>,
}

/// The routing state sampled at scrape time: one entry per route.
#[derive(Debug, Default)]
pub struct RouteGauges {
    pub route: String,
    /// Backend → weight in percent.
    pub weights: Vec<(String, f64)>,
    /// Backend → drained (weight 0, not the write side, nothing in flight).
    pub drained: Vec<(String, bool)>,
    /// Backend → the share it gets now, in percent (see `effective_weights`).
    pub effective: Vec<(String, f64)>,
    /// When the active hold began, as Unix seconds; `None` without a hold.
    pub hold_since: Option<f64>,
}

/// Why a metric family could not be registered: only a programming error (a
/// duplicate name) can cause it.
#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "cutover_requests_total",
                "Requests answered, by route, backend and status code.",
            ),
            &["route", "backend", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "cutover_request_duration_seconds",
                "Time from a request's arrival until its response body ended.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "backend"],
        )?;
        let inflight = IntGaugeVec::new(
            Opts::new(
                "cutover_inflight",
                "Requests in flight, by route and backend.",
            ),
            &["route", "backend"],
        )?;
        let upgraded = IntGaugeVec::new(
            Opts::new(
                "cutover_upgraded_connections",
                "Upgraded (long-lived: WebSocket and other protocol switches) connections open, by route and backend.",
            ),
            &["route", "backend"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "cutover_upstream_errors_total",
                "Failures talking to a backend, by kind (connect, timeout, reset, protocol).",
            ),
            &["route", "backend", "kind"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "cutover_retries_total",
                "Requests sent again, by route, the backend that failed, the backend tried next, and why.",
            ),
            &["route", "from", "to", "reason"],
        )?;
        let held = IntGaugeVec::new(
            Opts::new(
                "cutover_held_requests",
                "Requests waiting on a write hold, by route.",
            ),
            &["route"],
        )?;
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "cutover_upstream_healthy",
                "1 while an upstream address may get requests (health checks passing, not ejected).",
            ),
            &["backend", "addr"],
        )?;
        let dns_failures = IntCounterVec::new(
            Opts::new(
                "cutover_dns_failures_total",
                "Failed lookups of backend host names (the last good addresses stay in use).",
            ),
            &["backend", "host"],
        )?;
        let client_timeouts = IntCounterVec::new(
            Opts::new(
                "cutover_client_timeouts_total",
                "Clients cut off by a timeout, by route (\"-\" before a request is routed) and kind: request_head, keepalive, request_body, send.",
            ),
            &["route", "kind"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "cutover_connections_refused_total",
                "Client connections closed at accept, by the cap they were over: total or per_ip.",
            ),
            &["reason"],
        )?;
        let retry_budget_exhausted = IntCounterVec::new(
            Opts::new(
                "cutover_retry_budget_exhausted_total",
                "Retries not made because the route's retry budget was spent.",
            ),
            &["route"],
        )?;
        let connections_open = IntGauge::new(
            "cutover_client_connections",
            "Client connections open on the data-plane listeners.",
        )?;
        for kind in CLIENT_TIMEOUTS {
            client_timeouts.with_label_values(&["-", kind]);
        }
        for reason in ["total", "per_ip"] {
            connections_refused.with_label_values(&[reason]);
        }
        for code in UNROUTED_CODES {
            requests.with_label_values(&[UNROUTED, "proxy", code]);
        }
        let config_generation = IntGauge::new(
            "cutover_config_generation",
            "Generation of the routing snapshot in force; rises with every reload or weight change.",
        )?;
        let config_reload_errors = IntCounter::new(
            "cutover_config_reload_errors_total",
            "Reloads refused because the file was unreadable or invalid.",
        )?;
        let state_file_errors = IntCounter::new(
            "cutover_state_file_errors_total",
            "Writes of the [fleet] state_file that failed; a restart would lose the change.",
        )?;
        let fleet_epoch = IntGauge::new(
            "cutover_fleet_epoch",
            "The epoch of the runtime state (weights, write sides, holds) this replica serves.",
        )?;
        let fleet_ready = IntGauge::new(
            "cutover_fleet_ready",
            "1 while this replica has a state at least as new as every peer that answered (/readyz).",
        )?;
        let route_weight = GaugeVec::new(
            Opts::new(
                "cutover_route_weight",
                "Share of a route's reads sent to a backend, in percent.",
            ),
            &["route", "backend"],
        )?;
        let route_effective_weight = GaugeVec::new(
            Opts::new(
                "cutover_route_effective_weight",
                "Share of a route's reads a backend gets now, in percent: its weight, plus the share of a backend with no healthy address that fails over to it.",
            ),
            &["route", "backend"],
        )?;
        let backend_drained = IntGaugeVec::new(
            Opts::new(
                "cutover_backend_drained",
                "1 when a backend has weight 0 on a route, is not its write side, and has nothing in flight.",
            ),
            &["route", "backend"],
        )?;
        let hold_started = GaugeVec::new(
            Opts::new(
                "cutover_hold_started_seconds",
                "Unix time at which the route's active hold began; 0 when none is active.",
            ),
            &["route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(upgraded.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(held.clone()))?;
        registry.register(Box::new(upstream_healthy.clone()))?;
        registry.register(Box::new(dns_failures.clone()))?;
        registry.register(Box::new(client_timeouts.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(retry_budget_exhausted.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(config_generation.clone()))?;
        registry.register(Box::new(config_reload_errors.clone()))?;
        registry.register(Box::new(state_file_errors.clone()))?;
        registry.register(Box::new(fleet_epoch.clone()))?;
        registry.register(Box::new(fleet_ready.clone()))?;
        registry.register(Box::new(route_weight.clone()))?;
        registry.register(Box::new(route_effective_weight.clone()))?;
        registry.register(Box::new(backend_drained.clone()))?;
        registry.register(Box::new(hold_started.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            inflight,
            upgraded,
            upstream_errors,
            retries,
            held,
            upstream_healthy,
            dns_failures,
            client_timeouts,
            connections_refused,
            retry_budget_exhausted,
            connections_open,
            config_generation,
            config_reload_errors,
            state_file_errors,
            fleet_epoch,
            fleet_ready,
            route_weight,
            route_effective_weight,
            backend_drained,
            hold_started,
            scrape: Mutex::new(()),
        })
    }

    /// The handles for one route × backend pair. Its error series start at 0, so a
    /// dashboard or an alert on them sees a healthy proxy, not missing data.
    pub fn pair(&self, route: &str, backend: &str) -> PairMetrics {
        for kind in FailureKind::ALL {
            self.upstream_errors
                .with_label_values(&[route, backend, kind.as_str()]);
        }
        PairMetrics {
            route: route.to_string(),
            backend: backend.to_string(),
            requests: self.requests.clone(),
            codes: (0..CODES).map(|_| OnceLock::new()).collect(),
            duration: self.duration.with_label_values(&[route, backend]),
            inflight: self.inflight.with_label_values(&[route, backend]),
            upgraded: self.upgraded.with_label_values(&[route, backend]),
            upstream_errors: self.upstream_errors.clone(),
        }
    }

    /// Starts the retry series of a route at 0: every ordered pair of its
    /// `members` and every reason a retry can have.
    pub fn retries_start(&self, route: &str, members: &[&str]) {
        for from in members {
            for to in members.iter().filter(|t| *t != from) {
                for reason in RETRY_REASONS {
                    self.retries.with_label_values(&[route, from, to, reason]);
                }
            }
        }
    }

    /// Starts a route's series that are not tied to a backend at 0: its client
    /// timeouts (`request_body` and `send`, the kinds counted per route), its retry budget
    /// spent, and every answer the proxy can give itself on it (`backend="proxy"`).
    pub fn route_start(&self, route: &str) {
        for kind in ROUTE_CLIENT_TIMEOUTS {
            self.client_timeouts.with_label_values(&[route, kind]);
        }
        self.retry_budget_exhausted.with_label_values(&[route]);
        for code in ROUTE_CODES {
            self.requests.with_label_values(&[route, "proxy", code]);
        }
    }

    /// Starts a backend's DNS failure series at 0, one per host name among its
    /// `addrs` (`hostname:port`; literal addresses are never looked up), labelled as
    /// [`Metrics::dns_failure`] counts them.
    pub fn backend_start(&self, backend: &str, addrs: &[String]) {
        for host in addrs
            .iter()
            .filter(|a| a.parse::<std::net::SocketAddr>().is_err())
            .filter_map(|a| {
                let (host, port) = a.rsplit_once(':')?;
                port.parse::<u16>().ok().map(|_| host)
            })
        {
            self.dns_failures.with_label_values(&[backend, host]);
        }
    }

    /// Counts a client cut off by a timeout; `route` is `"-"` before routing.
    pub fn client_timeout(&self, route: &str, kind: &str) {
        self.client_timeouts.with_label_values(&[route, kind]).inc();
    }

    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    pub fn retry_budget_exhausted(&self, route: &str) {
        self.retry_budget_exhausted
            .with_label_values(&[route])
            .inc();
    }

    /// Counts an answer the proxy gave itself before any backend was chosen (a
    /// request without a route, a hold's deadline), as `backend="proxy"`, so an
    /// error-ratio gate over `cutover_requests_total` sees it.
    pub fn local_answer(&self, route: &str, status: http::StatusCode) {
        self.requests
            .with_label_values(&[route, "proxy", status.as_str()])
            .inc();
    }

    /// Counts one retry.
    pub fn retry(&self, route: &str, from: &str, to: &str, reason: &str) {
        self.retries
            .with_label_values(&[route, from, to, reason])
            .inc();
    }

    pub fn held(&self, route: &str) -> IntGauge {
        self.held.with_label_values(&[route])
    }

    pub fn upstream_healthy(&self, backend: &str, addr: &str) -> IntGauge {
        self.upstream_healthy.with_label_values(&[backend, addr])
    }

    pub fn dns_failure(&self, backend: &str, host: &str) {
        self.dns_failures.with_label_values(&[backend, host]).inc();
    }

    /// The exposition with the routing gauges set from `routes` first. The gauges
    /// are rebuilt from scratch, so a route or backend removed by a reload stops
    /// being exported. Called by `/metrics`; the request path never touches them.
    pub fn render_with(&self, routes: &[RouteGauges]) -> Vec<u8> {
        let _guard = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.route_weight.reset();
        self.route_effective_weight.reset();
        self.backend_drained.reset();
        self.hold_started.reset();
        for r in routes {
            for (backend, w) in &r.weights {
                self.route_weight
                    .with_label_values(&[&r.route, backend])
                    .set(*w);
            }
            for (backend, w) in &r.effective {
                self.route_effective_weight
                    .with_label_values(&[&r.route, backend])
                    .set(*w);
            }
            for (backend, d) in &r.drained {
                self.backend_drained
                    .with_label_values(&[&r.route, backend])
                    .set(i64::from(*d));
            }
            self.hold_started
                .with_label_values(&[&r.route])
                .set(r.hold_since.unwrap_or(0.0));
        }
        self.render()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for I/O reasons; a family with a broken
        // label set would have failed at registration.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The kinds of client timeouts that are not tied to a route (`route="-"`).
const CLIENT_TIMEOUTS: [&str; 3] = ["request_head", "keepalive", "send"];

/// The kinds of client timeouts counted per route.
const ROUTE_CLIENT_TIMEOUTS: [&str; 2] = ["request_body", "send"];

/// The route label of the proxy's answers to a request no route takes.
const UNROUTED: &str = "unrouted";

/// The statuses the proxy answers itself, as `backend="proxy"`, to a request no
/// route takes: 400 (no usable Host), 404 (no route), 431 (a head over the limits,
/// refused before routing).
const UNROUTED_CODES: [&str; 3] = ["400", "404", "431"];

/// The statuses the proxy answers itself on a route, as `backend="proxy"`: 400 (the
/// client's body broke off), 408 (its body went idle), 413 (over `max_body`), 431
/// (a head over the limits), 503 (a hold's deadline or a full hold queue, or a full
/// upstream pool).
const ROUTE_CODES: [&str; 5] = ["400", "408", "413", "431", "503"];

/// Status codes 100..=599 get a cached counter each.
const CODES: usize = 500;

/// Why a request may be sent again: a failure's kind, or the status answered.
const RETRY_REASONS: [&str; 7] = [
    "connect",
    "timeout",
    "reset",
    "protocol",
    "overloaded",
    "status_502",
    "status_503",
];

/// Metric handles for one route × backend pair.
pub struct PairMetrics {
    route: String,
    backend: String,
    requests: IntCounterVec,
    codes: Box<[OnceLock<IntCounter>]>,
    pub duration: Histogram,
    pub inflight: IntGauge,
    /// Upgraded connections open now (`long_lived` in `/status`).
    pub upgraded: IntGauge,
    upstream_errors: IntCounterVec,
}

impl PairMetrics {
    /// Counts one answered request.
    #[inline]
    pub fn count(&self, code: u16) {
        let slot = usize::from(code)
            .checked_sub(100)
            .and_then(|i| self.codes.get(i));
        match slot {
            Some(cell) => cell
                .get_or_init(|| {
                    self.requests.with_label_values(&[
                        &self.route,
                        &self.backend,
                        &code.to_string(),
                    ])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[&self.route, &self.backend, &code.to_string()])
                .inc(),
        }
    }

    /// Counts one failure talking to the backend.
    pub fn upstream_error(&self, kind: &str) {
        self.upstream_errors
            .with_label_values(&[&self.route, &self.backend, kind])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_handles_share_series_across_snapshots() {
        let m = Metrics::new().unwrap();
        let a = m.pair("shop", "old");
        let b = m.pair("shop", "old");
        a.count(200);
        b.count(200);
        b.count(502);
        a.inflight.inc();
        assert_eq!(b.inflight.get(), 1);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"cutover_requests_total{backend="old",code="200",route="shop"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cutover_requests_total{backend="old",code="502",route="shop"} 1"#)
        );
    }

    #[test]
    fn known_series_start_at_zero() {
        let m = Metrics::new().unwrap();
        m.route_start("shop");
        m.backend_start(
            "new",
            &[
                "127.0.0.1:8080".into(),
                "[::1]:8080".into(),
                "db.internal:5432".into(),
                "api.internal:443".into(),
            ],
        );
        let text = String::from_utf8(m.render()).unwrap();
        let mut want: Vec<String> = Vec::new();
        for code in ["400", "408", "413", "431", "503"] {
            want.push(format!(
                r#"cutover_requests_total{{backend="proxy",code="{code}",route="shop"}} 0"#
            ));
        }
        for code in ["400", "404", "431"] {
            want.push(format!(
                r#"cutover_requests_total{{backend="proxy",code="{code}",route="unrouted"}} 0"#
            ));
        }
        for kind in ["request_head", "keepalive", "send"] {
            want.push(format!(
                r#"cutover_client_timeouts_total{{kind="{kind}",route="-"}} 0"#
            ));
        }
        want.push(r#"cutover_client_timeouts_total{kind="request_body",route="shop"} 0"#.into());
        want.push(r#"cutover_retry_budget_exhausted_total{route="shop"} 0"#.into());
        for host in ["db.internal", "api.internal"] {
            want.push(format!(
                r#"cutover_dns_failures_total{{backend="new",host="{host}"}} 0"#
            ));
        }
        for line in &want {
            assert!(text.contains(line.as_str()), "{line} missing:\n{text}");
        }
        // Literal addresses are never looked up: no series for them.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("cutover_dns_failures_total{"))
                .count(),
            2,
            "{text}"
        );
        // Counting goes on from the started series.
        m.local_answer("shop", http::StatusCode::PAYLOAD_TOO_LARGE);
        m.dns_failure("new", "db.internal");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"cutover_requests_total{backend="proxy",code="413",route="shop"} 1"#)
        );
        assert!(text.contains(r#"cutover_dns_failures_total{backend="new",host="db.internal"} 1"#));
    }

    #[test]
    fn routing_gauges_follow_the_state_given_at_scrape_time() {
        let m = Metrics::new().unwrap();
        let shop = RouteGauges {
            route: "shop".into(),
            weights: vec![("old".into(), 12.5), ("new".into(), 87.5)],
            drained: vec![("old".into(), false), ("new".into(), true)],
            effective: vec![("old".into(), 0.0), ("new".into(), 100.0)],
            hold_since: Some(1_700_000_000.5),
        };
        let text = String::from_utf8(m.render_with(&[shop])).unwrap();
        for line in [
            r#"cutover_route_weight{backend="old",route="shop"} 12.5"#,
            r#"cutover_route_weight{backend="new",route="shop"} 87.5"#,
            r#"cutover_backend_drained{backend="new",route="shop"} 1"#,
            r#"cutover_route_effective_weight{backend="old",route="shop"} 0"#,
            r#"cutover_route_effective_weight{backend="new",route="shop"} 100"#,
            r#"cutover_backend_drained{backend="old",route="shop"} 0"#,
            r#"cutover_hold_started_seconds{route="shop"} 1700000000.5"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        // A route that went away with a reload is no longer exported.
        let blog = RouteGauges {
            route: "blog".into(),
            weights: vec![("old".into(), 100.0)],
            drained: vec![("old".into(), false)],
            effective: vec![("old".into(), 100.0)],
            hold_since: None,
        };
        let text = String::from_utf8(m.render_with(&[blog])).unwrap();
        assert!(!text.contains(r#"route="shop""#), "{text}");
        assert!(text.contains(r#"cutover_hold_started_seconds{route="blog"} 0"#));
    }
}
