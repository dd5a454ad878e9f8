//! The controller's own `/metrics` (`cutover run --metrics-listen ADDR`): where a
//! run stands, for the dashboards and alerts that already watch the proxies.
//!
//! The runner sets values as it goes (phase, step, weights, gate verdicts,
//! replication lag); a scrape renders them. The families are few and fixed, so the
//! text format is written by hand instead of pulling a metrics registry into the
//! controller. A lag or gate value that is unknown is left out rather than exported
//! as 0, so that "no reading" never looks like "no lag".

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::error::Error;
use crate::plan::record::CacheRecord;

/// The phases `cutover_plan_phase` exports, in order.
const PHASES: [&str; 6] = [
    "preflight",
    "sync",
    "steps",
    "switchover",
    "finalize",
    "done",
];

/// The values the run last reported. Setters take `&self`; share it in an `Arc`.
#[derive(Debug, Default)]
pub struct ControllerMetrics {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// database → (seconds, bytes).
    lag: BTreeMap<String, (Option<f64>, Option<i64>)>,
    /// database → slot → retained WAL bytes.
    slots: BTreeMap<String, BTreeMap<String, Option<i64>>>,
    /// plan → phase.
    phase: BTreeMap<String, String>,
    /// plan → (step, new's weight in percent).
    step: BTreeMap<String, (usize, f64)>,
    /// (plan, gate text) → (value, passed).
    gates: BTreeMap<(String, String), (Option<f64>, bool)>,
    /// app → its cache.
    caches: BTreeMap<String, CacheRecord>,
}

impl ControllerMetrics {
    pub fn new() -> ControllerMetrics {
        ControllerMetrics::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic while holding the lock cannot leave the maps half-written in a
        // way that matters for an exporter; keep serving.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// The replication lag of `database`; `None` where it could not be read.
    pub fn set_lag(&self, database: &str, seconds: Option<f64>, bytes: Option<i64>) {
        self.with(|s| s.lag.insert(database.to_string(), (seconds, bytes)));
    }

    /// The replication slots of `database` that exist now, with the WAL each
    /// retains; a slot left out is gone (its series disappears).
    pub fn set_slots(&self, database: &str, slots: &[(String, Option<i64>)]) {
        self.with(|s| {
            s.slots
                .insert(database.to_string(), slots.iter().cloned().collect())
        });
    }

    /// The phase `plan` is in (`preflight`, `sync`, `steps`, `switchover`,
    /// `finalize`, `done`).
    pub fn set_phase(&self, plan: &str, phase: &str) {
        self.with(|s| s.phase.insert(plan.to_string(), phase.to_string()));
    }

    /// The traffic step `plan` is on (1-based; 0 before the first) and new's weight.
    pub fn set_step(&self, plan: &str, step: usize, new_percent: f64) {
        self.with(|s| s.step.insert(plan.to_string(), (step, new_percent)));
    }

    /// A gate's last verdict and measured value (`None`: nothing to measure).
    pub fn set_gate(&self, plan: &str, gate_text: &str, value: Option<f64>, passed: bool) {
        self.with(|s| {
            s.gates
                .insert((plan.to_string(), gate_text.to_string()), (value, passed))
        });
    }

    /// An app's cache: the copy's figures, or the hit ratio.
    pub fn set_cache(&self, app: &str, cache: &CacheRecord) {
        self.with(|s| s.caches.insert(app.to_string(), cache.clone()));
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        self.with(|s| render(s))
    }
}

fn render(s: &State) -> String {
    let mut out = String::with_capacity(2048);
    family(
        &mut out,
        "cutover_replication_lag_seconds",
        "Replication lag of a database, by heartbeat; absent while unknown.",
        s.lag
            .iter()
            .filter_map(|(db, (secs, _))| Some((vec![("database", db.as_str())], (*secs)?))),
    );
    family(
        &mut out,
        "cutover_replication_lag_bytes",
        "WAL bytes the target has not applied yet; absent while unknown.",
        s.lag.iter().filter_map(|(db, (_, bytes))| {
            Some((vec![("database", db.as_str())], (*bytes)? as f64))
        }),
    );
    family(
        &mut out,
        "cutover_replication_slot_retained_bytes",
        "WAL a replication slot of the migration keeps on its server (current LSN minus restart_lsn).",
        s.slots.iter().flat_map(|(db, slots)| {
            slots.iter().filter_map(move |(slot, bytes)| {
                Some((
                    vec![("database", db.as_str()), ("slot", slot.as_str())],
                    (*bytes)? as f64,
                ))
            })
        }),
    );
    let mut phases = Vec::new();
    for (plan, current) in &s.phase {
        for p in PHASES {
            phases.push((plan.as_str(), p, f64::from(u8::from(p == current))));
        }
        if !PHASES.contains(&current.as_str()) {
            phases.push((plan.as_str(), current.as_str(), 1.0));
        }
    }
    family(
        &mut out,
        "cutover_plan_phase",
        "1 for the phase a plan is in, 0 for the others.",
        phases
            .iter()
            .map(|(plan, phase, v)| (vec![("plan", *plan), ("phase", *phase)], *v)),
    );
    family(
        &mut out,
        "cutover_plan_step",
        "The traffic step a plan is on (1-based; 0 before the first step).",
        s.step
            .iter()
            .map(|(plan, (step, _))| (vec![("plan", plan.as_str())], *step as f64)),
    );
    family(
        &mut out,
        "cutover_plan_new_weight_percent",
        "The new cluster's weight in percent, as last set by a plan.",
        s.step
            .iter()
            .map(|(plan, (_, w))| (vec![("plan", plan.as_str())], *w)),
    );
    family(
        &mut out,
        "cutover_plan_gate_value",
        "A gate's last measured value (a ratio, or seconds); absent when nothing was measured.",
        s.gates.iter().filter_map(|((plan, gate), (v, _))| {
            Some((
                vec![("plan", plan.as_str()), ("gate", gate.as_str())],
                (*v)?,
            ))
        }),
    );
    family(
        &mut out,
        "cutover_plan_gate_passed",
        "1 when a gate's last check passed, 0 when it failed.",
        s.gates.iter().map(|((plan, gate), (_, passed))| {
            (
                vec![("plan", plan.as_str()), ("gate", gate.as_str())],
                f64::from(u8::from(*passed)),
            )
        }),
    );
    caches(&mut out, &s.caches);
    out
}

fn caches(out: &mut String, caches: &BTreeMap<String, CacheRecord>) {
    fn app(a: &str) -> Vec<(&str, &str)> {
        vec![("app", a)]
    }
    family(
        out,
        "cutover_cache_keys_copied",
        "Keys the cache sync has written to the new cache (initial copy and following).",
        caches.iter().map(|(a, c)| (app(a), c.keys_copied as f64)),
    );
    family(
        out,
        "cutover_cache_pending_keys",
        "Keys changed on the old cache that the sync has not copied yet (its lag, in keys).",
        caches.iter().map(|(a, c)| (app(a), c.pending as f64)),
    );
    family(
        out,
        "cutover_cache_converged",
        "1 when the cache sync's last verification found no difference and nothing is pending.",
        caches
            .iter()
            .map(|(a, c)| (app(a), f64::from(u8::from(c.converged)))),
    );
    let kinds: Vec<(Vec<(&str, &str)>, f64)> = caches
        .iter()
        .filter_map(|(a, c)| Some((a, c.last_verify.as_ref()?)))
        .flat_map(|(a, t)| {
            [
                ("missing", t.missing),
                ("different", t.different),
                ("extra", t.extra),
            ]
            .map(|(k, n)| (vec![("app", a.as_str()), ("kind", k)], n as f64))
        })
        .collect();
    family(
        out,
        "cutover_cache_verify_differences",
        "Differences the last verification pass found (and had copied again), by kind.",
        kinds.into_iter(),
    );
    family(
        out,
        "cutover_cache_hit_ratio",
        "The new cache's hit ratio since the run started (judged in warm-only mode).",
        caches
            .iter()
            .filter_map(|(a, c)| Some((app(a), c.hit_ratio?))),
    );
}

/// Writes one gauge family: HELP, TYPE and its samples.
fn family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (Vec<(&'a str, &'a str)>, f64)>,
) {
    // Writing into a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in samples {
        out.push_str(name);
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(out, "}} {}", number(value));
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Serves `GET /metrics` and `GET /healthz` on `addr` until the returned task is
/// aborted (which also closes open connections). Returns the bound address (useful
/// with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<ControllerMetrics>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Precondition(format!("--metrics-listen {addr}: cannot bind: {e}")))?;
    let local = listener.local_addr().map_err(|e| {
        Error::Precondition(format!("--metrics-listen {addr}: no local address: {e}"))
    })?;
    let task = tokio::spawn(async move {
        // Connections live in the accept loop's set, so aborting the task also ends
        // the keep-alive connections of scrapers.
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of descriptors or an aborted handshake: the next accept may work.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            connections.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(answer(&metrics, &req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((local, task))
}

fn answer(metrics: &ControllerMetrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::plan::metrics::{Sample, parse};

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
        samples
            .iter()
            .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    #[test]
    fn the_exposition_reads_back() {
        let m = ControllerMetrics::new();
        m.set_lag("tasks", Some(0.25), Some(4096));
        m.set_lag("medical", None, None);
        m.set_phase("platform", "steps");
        m.set_step("platform", 2, 50.0);
        m.set_gate("platform", "p99 < 1s", Some(0.012), true);
        m.set_gate("platform", "error_ratio < 0.0001", None, false);
        m.set_gate("we\"ird\\plan\n", "p50 <= 250ms", Some(0.3), false);
        let text = m.render();
        let s = parse(&text).unwrap();

        let lag = find(
            &s,
            "cutover_replication_lag_seconds",
            &[("database", "tasks")],
        );
        assert_eq!(lag.map(|x| x.value), Some(0.25));
        let bytes = find(
            &s,
            "cutover_replication_lag_bytes",
            &[("database", "tasks")],
        );
        assert_eq!(bytes.map(|x| x.value), Some(4096.0));
        assert!(
            !text.contains("medical"),
            "unknown lag is left out:\n{text}"
        );

        for (phase, v) in [("preflight", 0.0), ("steps", 1.0), ("done", 0.0)] {
            let p = find(
                &s,
                "cutover_plan_phase",
                &[("plan", "platform"), ("phase", phase)],
            );
            assert_eq!(p.map(|x| x.value), Some(v), "{phase}");
        }
        assert_eq!(
            s.iter().filter(|x| x.name == "cutover_plan_phase").count(),
            6
        );
        let step = find(&s, "cutover_plan_step", &[("plan", "platform")]);
        assert_eq!(step.map(|x| x.value), Some(2.0));
        let w = find(
            &s,
            "cutover_plan_new_weight_percent",
            &[("plan", "platform")],
        );
        assert_eq!(w.map(|x| x.value), Some(50.0));

        let p99 = [("plan", "platform"), ("gate", "p99 < 1s")];
        assert_eq!(
            find(&s, "cutover_plan_gate_value", &p99).map(|x| x.value),
            Some(0.012)
        );
        assert_eq!(
            find(&s, "cutover_plan_gate_passed", &p99).map(|x| x.value),
            Some(1.0)
        );
        let err = [("plan", "platform"), ("gate", "error_ratio < 0.0001")];
        assert!(find(&s, "cutover_plan_gate_value", &err).is_none());
        assert_eq!(
            find(&s, "cutover_plan_gate_passed", &err).map(|x| x.value),
            Some(0.0)
        );
        // Label values survive escaping.
        let odd = [("plan", "we\"ird\\plan\n")];
        assert_eq!(
            find(&s, "cutover_plan_gate_passed", &odd).map(|x| x.value),
            Some(0.0)
        );

        assert!(text.contains("# TYPE cutover_plan_phase gauge\n"));
        assert!(text.contains("# HELP cutover_replication_lag_seconds "));

        // A later phase moves the 1.
        m.set_phase("platform", "done");
        let s = parse(&m.render()).unwrap();
        let done = find(
            &s,
            "cutover_plan_phase",
            &[("plan", "platform"), ("phase", "done")],
        );
        assert_eq!(done.map(|x| x.value), Some(1.0));
        let steps = find(
            &s,
            "cutover_plan_phase",
            &[("plan", "platform"), ("phase", "steps")],
        );
        assert_eq!(steps.map(|x| x.value), Some(0.0));
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_health_over_loopback() {
        let m = Arc::new(ControllerMetrics::new());
        m.set_step("platform", 1, 10.0);
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), m.clone())
            .await
            .unwrap();
        assert_ne!(addr.port(), 0);

        let r = get(addr, "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{r}"
        );
        assert!(
            r.contains("cutover_plan_new_weight_percent{plan=\"platform\"} 10\n"),
            "{r}"
        );
        // Values set later show in the next scrape.
        m.set_step("platform", 2, 50.0);
        assert!(
            get(addr, "/metrics")
                .await
                .contains("cutover_plan_step{plan=\"platform\"} 2\n")
        );
        let r = get(addr, "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));

        // The address is taken now: the error names the flag and the address.
        let e = serve(addr, m.clone()).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--metrics-listen {addr}: cannot bind: ")),
            "{e}"
        );
        task.abort();
    }
}
