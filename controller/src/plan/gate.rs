//! A step's gates: `METRIC < VALUE` conditions checked over the step's bake window.
//!
//! A gate is written as text in the plan (`"p99 < 1s"`) so that it reads like the
//! runbook it replaces; it is parsed once, when the plan is loaded, so a typo stops
//! the run before any weight moves. The metrics:
//!
//! - `error_ratio` (5xx answers over all answers) and the latency quantiles `p50`,
//!   `p90`, `p99`, `p999` judge the new side by its own figures: the answers of each
//!   app's new backend on the app's route, summed over every replica. At 10% new, a
//!   new side failing half its requests fails `error_ratio < 0.01` although the
//!   route as a whole sees 5%.
//! - `route_error_ratio`, `route_p50`, `route_p90`, `route_p99`, `route_p999`: the
//!   same over every answer on the app's route, what its users saw: the old side's,
//!   the new side's, and the proxy's own answers given before a backend was chosen
//!   (a 503 at a hold's deadline, say), which no side can be blamed for.
//! - `replication_lag`: the largest replication lag of any database in the bake.
//! - `users_error_ratio`, `users_p50`, `users_p99`, `users_max` and `users_behind`:
//!   what the users saw, from cutover-load's timeline (`[users] timeline`; see
//!   [`crate::plan::users`]): errors over requests, the worst one-second corrected
//!   latency, and the most requests due but not done (a count, e.g.
//!   `users_behind < 500`). They see what the proxies cannot: requests that were
//!   late before they reached a proxy.
//!
//! Each app's route is judged alone, and a traffic gate passes only when every one
//! passes; its value is the worst of those that decided the verdict. A gate with
//! nothing to measure fails: a step that saw no traffic has shown nothing, and the
//! runner must not promote on silence. So a new side that answered no request in
//! the window fails its gates, unless the proxies give it weight 0: then no request
//! is what the step asked for, and the gate passes saying so. No replication lag
//! reading fails likewise.
//!
//! The values come from elsewhere: latency and errors from a [`Window`] of the
//! proxies' metrics, the lag from the runner's heartbeat readings.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::heartbeat::LagSeconds;
use crate::plan::metrics::{DEFAULT_NEW, Figures, RouteWindow, Window};
use crate::plan::model::fmt_percent;
use crate::plan::record::GateRecord;
use crate::plan::users::UsersWindow;

/// The metrics a gate may name, as the plan spells them, and whose answers they read.
const METRICS: &str = "error_ratio, p50, p90, p99, p999 (the new backend's answers), \
                       route_error_ratio, route_p50, route_p90, route_p99, route_p999 \
                       (every answer on the route), replication_lag, users_error_ratio, \
                       users_p50, users_p99, users_max, users_behind (cutover-load's \
                       timeline)";

/// What a gate measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// 5xx answers over all answers, a ratio in 0..=1.
    ErrorRatio,
    /// A latency quantile (0.5 for p50), in seconds.
    Latency(f64),
    /// The largest replication lag of any database, in seconds.
    ReplicationLag,
    /// What cutover-load's users saw.
    Users(UsersMetric),
}

/// A figure of cutover-load's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsersMetric {
    ErrorRatio,
    P50,
    P99,
    Max,
    /// Requests due but not done, a count.
    Behind,
}

/// Whose answers a traffic gate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The app's new backend's, on the app's route: the side the step tries out.
    New,
    /// Every answer on the app's route (`route_` metrics).
    Route,
}

/// `<` or `<=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
}

/// One parsed gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    text: String,
    name: &'static str,
    metric: Metric,
    /// Whose answers it reads (unused by a lag gate).
    scope: Scope,
    op: Op,
    /// In the metric's unit: a ratio or seconds.
    threshold: f64,
    /// The limit as written, e.g. `1s` or `0.01%`, for messages.
    limit: String,
}

/// Why a gate's text cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("gate {text:?}: {reason}")]
pub struct GateError {
    pub text: String,
    pub reason: String,
}

impl Gate {
    /// Parses `METRIC < VALUE` or `METRIC <= VALUE`.
    pub fn parse(text: &str) -> Result<Gate, GateError> {
        let text = text.trim();
        let fail = |reason: String| GateError {
            text: text.to_string(),
            reason,
        };
        let usage = || {
            fail(format!(
                "expected METRIC < VALUE (or <=), e.g. \"p99 < 1s\"; METRIC is one of {METRICS}"
            ))
        };
        let Some(at) = text.find('<') else {
            if text.contains('>') || text.contains('=') {
                return Err(fail(
                    "use < or <=: a gate names the limit a metric must stay under".into(),
                ));
            }
            return Err(usage());
        };
        let (left, right) = (&text[..at], &text[at + 1..]);
        let (op, right) = match right.strip_prefix('=') {
            Some(r) => (Op::Le, r),
            None => (Op::Lt, right),
        };
        let (metric_text, limit) = (left.trim(), right.trim());
        if metric_text.is_empty() || limit.is_empty() || limit.contains(['<', '>', '=']) {
            return Err(usage());
        }
        let (name, metric) = match metric_text {
            "error_ratio" => ("error_ratio", Metric::ErrorRatio),
            "p50" => ("p50", Metric::Latency(0.5)),
            "p90" => ("p90", Metric::Latency(0.9)),
            "p99" => ("p99", Metric::Latency(0.99)),
            "p999" => ("p999", Metric::Latency(0.999)),
            "route_error_ratio" => ("route_error_ratio", Metric::ErrorRatio),
            "route_p50" => ("route_p50", Metric::Latency(0.5)),
            "route_p90" => ("route_p90", Metric::Latency(0.9)),
            "route_p99" => ("route_p99", Metric::Latency(0.99)),
            "route_p999" => ("route_p999", Metric::Latency(0.999)),
            "replication_lag" => ("replication_lag", Metric::ReplicationLag),
            "users_error_ratio" => ("users_error_ratio", Metric::Users(UsersMetric::ErrorRatio)),
            "users_p50" => ("users_p50", Metric::Users(UsersMetric::P50)),
            "users_p99" => ("users_p99", Metric::Users(UsersMetric::P99)),
            "users_max" => ("users_max", Metric::Users(UsersMetric::Max)),
            "users_behind" => ("users_behind", Metric::Users(UsersMetric::Behind)),
            other => {
                return Err(fail(format!(
                    "unknown metric {other:?}; use one of {METRICS}"
                )));
            }
        };
        let threshold = match metric {
            Metric::ErrorRatio | Metric::Users(UsersMetric::ErrorRatio) => {
                ratio(limit).map_err(fail)?
            }
            Metric::Users(UsersMetric::Behind) => count(name, limit).map_err(fail)?,
            Metric::Latency(_) | Metric::ReplicationLag | Metric::Users(_) => {
                duration(name, limit).map_err(fail)?.as_secs_f64()
            }
        };
        if op == Op::Lt && threshold == 0.0 {
            return Err(fail(format!(
                "{name} < {limit} can never pass; write {name} <= {limit} to allow none"
            )));
        }
        let scope = if name.starts_with("route_") {
            Scope::Route
        } else {
            Scope::New
        };
        Ok(Gate {
            text: text.to_string(),
            name,
            metric,
            scope,
            op,
            threshold,
            limit: limit.to_string(),
        })
    }

    /// The metric as the plan names it: `error_ratio`, `p99`, `replication_lag`, ...
    pub fn metric_name(&self) -> &str {
        self.name
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Whose answers a traffic gate reads.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The limit in the metric's unit (a ratio, or seconds).
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Whether the gate needs a replication lag reading.
    pub fn measures_lag(&self) -> bool {
        self.metric == Metric::ReplicationLag
    }

    /// Whether the gate reads cutover-load's timeline.
    pub fn measures_users(&self) -> bool {
        matches!(self.metric, Metric::Users(_))
    }

    /// The gate's verdict for step `step` over `window`, with the largest
    /// replication lag when one was read. A lag that is only known to be at least
    /// some value (the heartbeat had not arrived when the reading gave up) never
    /// passes: missing data is not a small lag.
    pub fn evaluate(
        &self,
        step: usize,
        window: &Window,
        replication_lag: Option<LagSeconds>,
    ) -> GateRecord {
        let Verdict {
            value,
            passed,
            detail,
        } = match self.metric {
            Metric::ReplicationLag => self.lag_verdict(replication_lag),
            Metric::Users(m) => self.users_verdict(m, window.users.as_ref()),
            Metric::ErrorRatio | Metric::Latency(_) => self.traffic_verdict(window),
        };
        GateRecord {
            step,
            gate: self.text.clone(),
            value,
            threshold: self.threshold,
            passed,
            detail,
        }
    }

    fn lag_verdict(&self, lag: Option<LagSeconds>) -> Verdict {
        match lag {
            None => Verdict::unmeasured(false, "replication lag unknown".into()),
            Some(l) if l.at_least => Verdict {
                value: Some(l.seconds),
                passed: false,
                detail: format!(
                    "replication_lag at least {:.3}s: the heartbeat written on the publisher \
                     had not been applied on the subscriber when the reading gave up",
                    l.seconds
                ),
            },
            Some(l) => Verdict {
                value: Some(l.seconds),
                passed: self.passes(l.seconds),
                detail: self.seconds_detail(l.seconds),
            },
        }
    }

    /// Every route of the window judged alone. The verdict's value and detail are
    /// those of the routes that decided it: the failing ones, or all when it passes.
    fn traffic_verdict(&self, window: &Window) -> Verdict {
        if window.routes.is_empty() {
            return Verdict::unmeasured(false, "no requests in the window".into());
        }
        let verdicts: Vec<Verdict> = window
            .routes
            .iter()
            .map(|r| self.route_verdict(r, window.seconds))
            .collect();
        let passed = verdicts.iter().all(|v| v.passed);
        let deciding: Vec<Verdict> = verdicts
            .into_iter()
            .filter(|v| passed || !v.passed)
            .collect();
        Verdict {
            value: deciding.iter().filter_map(|v| v.value).reduce(f64::max),
            passed,
            detail: deciding
                .into_iter()
                .map(|v| v.detail)
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// One route's verdict: `error_ratio of new (shop.test) 0.5000 >= 0.01 over 4.0 s
    /// (60 of 120 requests)`.
    fn route_verdict(&self, r: &RouteWindow, seconds: Option<f64>) -> Verdict {
        let over = seconds.map_or(String::new(), |s| format!(" over {s:.1} s"));
        let (who, figures): (String, &Figures) = match (self.scope, &r.new_backend) {
            (Scope::Route, _) => (r.route.clone(), &r.all),
            (Scope::New, Some(b)) if b == DEFAULT_NEW => (format!("new ({})", r.route), &r.new),
            (Scope::New, Some(b)) => (format!("new ({b} on {})", r.route), &r.new),
            // Only a caller that did not name the new backend gets here: the route is
            // still judged, as a whole, rather than not at all.
            (Scope::New, None) => (
                format!(
                    "{} (every backend: none there is named {DEFAULT_NEW:?})",
                    r.route
                ),
                &r.all,
            ),
        };
        if figures.requests == 0 {
            if self.scope == Scope::Route || r.new_backend.is_none() {
                return Verdict::unmeasured(
                    false,
                    format!("no requests on {who} in the window{over}"),
                );
            }
            return match r.new_weight {
                Some(0.0) => Verdict::unmeasured(
                    true,
                    format!(
                        "no requests answered by {who} in the window, as none were sent: \
                         its weight is 0"
                    ),
                ),
                Some(_) | None if r.all.requests > 0 => {
                    // The route had requests and new answered none: they can all be
                    // writes, which stay on the write side until the switchover
                    // whatever the weights. Judge what there is, the whole route,
                    // and say so, rather than pass on silence or fail a write-only app.
                    let whole = Gate {
                        scope: Scope::Route,
                        ..self.clone()
                    };
                    let mut v = whole.route_verdict(r, seconds);
                    v.detail = format!(
                        "no requests answered by {who} in the window (at weight {}; writes \
                         stay on the write side until the switchover), so the whole route \
                         is judged: {}",
                        r.new_weight
                            .map_or("unknown".into(), |w| format!("{}%", fmt_percent(w))),
                        v.detail
                    );
                    v
                }
                _ => Verdict::unmeasured(
                    false,
                    format!("no requests on {} in the window{over}", r.route),
                ),
            };
        }
        let value = match self.metric {
            Metric::ErrorRatio => figures.error_ratio(),
            Metric::Latency(q) => figures.quantile(q),
            Metric::ReplicationLag | Metric::Users(_) => None,
        };
        let Some(v) = value else {
            return Verdict::unmeasured(
                false,
                format!("no latency observations of {who} in the window{over}"),
            );
        };
        let passed = self.passes(v);
        let (shown, requests) = match self.metric {
            Metric::ErrorRatio => (
                ratio_text(v),
                format!("{} of {} requests", figures.errors, figures.requests),
            ),
            _ => (format!("{v:.3}s"), format!("{} requests", figures.requests)),
        };
        let relation = match (self.op, passed) {
            (Op::Lt, true) => "<",
            (Op::Lt, false) => ">=",
            (Op::Le, true) => "<=",
            (Op::Le, false) => ">",
        };
        Verdict {
            value: Some(v),
            passed,
            detail: format!(
                "{} of {who} {shown} {relation} {}{over} ({requests})",
                self.name, self.limit
            ),
        }
    }

    /// The verdict on cutover-load's seconds in the window: `users_p99 0.912s (the
    /// worst second of 30; 60,000 requests, 2 failed, at most 12 behind) is under 1s`.
    fn users_verdict(&self, m: UsersMetric, w: Option<&UsersWindow>) -> Verdict {
        let Some(w) = w.filter(|w| w.seconds > 0) else {
            let file = w.map_or("the timeline".into(), |w| w.file.clone());
            return Verdict::unmeasured(
                false,
                format!(
                    "{}: no second of cutover-load's timeline {file} in the window (is a \
                     cutover-load with --timeline running beside the plan?)",
                    self.name
                ),
            );
        };
        let value = match m {
            UsersMetric::ErrorRatio => {
                (w.requests > 0).then(|| w.errors as f64 / w.requests as f64)
            }
            UsersMetric::P50 => w.worst_p50,
            UsersMetric::P99 => w.worst_p99,
            UsersMetric::Max => w.max,
            UsersMetric::Behind => Some(w.max_behind as f64),
        };
        let seen = format!(
            "over {} s of cutover-load's timeline: {} requests, {} failed, at most {} behind",
            w.seconds, w.requests, w.errors, w.max_behind
        );
        let Some(v) = value else {
            return Verdict::unmeasured(
                false,
                format!("{}: no latency observations {seen}", self.name),
            );
        };
        let shown = match m {
            UsersMetric::ErrorRatio => ratio_text(v),
            UsersMetric::Behind => format!("{v:.0}"),
            _ => format!("{v:.3}s (the worst second)"),
        };
        let passed = self.passes(v);
        Verdict {
            value: Some(v),
            passed,
            detail: format!(
                "{} {shown} {} ({seen})",
                self.name,
                self.compare(v, |excess| match m {
                    UsersMetric::ErrorRatio => String::new(),
                    UsersMetric::Behind => format!("{excess:.0} "),
                    _ => format!("{excess:.3}s "),
                })
            ),
        }
    }

    fn passes(&self, v: f64) -> bool {
        match self.op {
            Op::Lt => v < self.threshold,
            Op::Le => v <= self.threshold,
        }
    }

    /// `p99 1.420s is 0.420s over 1s`, `p99 0.012s is under 1s`.
    fn seconds_detail(&self, s: f64) -> String {
        format!(
            "{} {s:.3}s {}",
            self.name,
            self.compare(s, |excess| format!("{excess:.3}s "))
        )
    }

    /// How `v` stands against the limit; `excess` words the amount over it.
    fn compare(&self, v: f64, excess: impl Fn(f64) -> String) -> String {
        let limit = &self.limit;
        if v > self.threshold {
            format!("is {}over {limit}", excess(v - self.threshold))
        } else if v < self.threshold {
            format!("is under {limit}")
        } else if self.op == Op::Le {
            format!("is at the limit {limit}")
        } else {
            format!("is not under {limit}")
        }
    }
}

/// A verdict before it becomes a [`GateRecord`].
struct Verdict {
    value: Option<f64>,
    passed: bool,
    detail: String,
}

impl Verdict {
    fn unmeasured(passed: bool, detail: String) -> Verdict {
        Verdict {
            value: None,
            passed,
            detail,
        }
    }
}

/// A count of requests: `500`.
fn count(name: &str, limit: &str) -> Result<f64, String> {
    limit
        .parse::<u64>()
        .map(|n| n as f64)
        .map_err(|_| format!("{name} takes a count of requests, e.g. 500; got {limit:?}"))
}

/// `0.0001` or `0.01%`: a ratio in 0..=1.
fn ratio(limit: &str) -> Result<f64, String> {
    let (number, scale) = match limit.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (limit, 1.0),
    };
    let bad = || {
        format!(
            "error_ratio takes a ratio between 0 and 1 (0.0001) or a percentage (0.01%); got {limit:?}"
        )
    };
    let v: f64 = number.parse().map_err(|_| bad())?;
    let v = v / scale;
    if !(0.0..=1.0).contains(&v) {
        return Err(bad());
    }
    Ok(v)
}

/// `250ms`, `1s`, `1.5s`: a duration with its unit, in the workspace's grammar.
fn duration(name: &str, limit: &str) -> Result<Duration, String> {
    if limit.parse::<f64>().is_ok() {
        return Err(format!(
            "{name} takes a duration with its unit, e.g. {limit}s or {limit}ms"
        ));
    }
    cutover_api::duration::parse_duration(limit)
        .map_err(|e| format!("{name} takes a duration such as 250ms, 1s or 1.5s; {e}"))
}

/// A ratio with 4 decimals, or enough to show a small one: `0.0500`, `0.000050`.
fn ratio_text(r: f64) -> String {
    let digits = if r > 0.0 && r < 0.001 {
        // Two significant digits.
        (-r.log10()).ceil() as usize + 1
    } else {
        4
    };
    format!("{r:.digits$}")
}

impl std::str::FromStr for Gate {
    type Err = GateError;

    fn from_str(s: &str) -> Result<Gate, GateError> {
        Gate::parse(s)
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Gate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Gate, D::Error> {
        let text = String::deserialize(d)?;
        Gate::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Gate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(seconds: f64) -> LagSeconds {
        LagSeconds {
            seconds,
            at_least: false,
        }
    }

    fn gate(s: &str) -> Gate {
        Gate::parse(s).unwrap()
    }

    fn err(s: &str) -> String {
        Gate::parse(s).unwrap_err().to_string()
    }

    /// Over 4 s, new (at 10%) answered `requests` requests on `shop.test`,
    /// `errors` of them 5xx, all in one latency bucket; old answered nothing.
    fn window(requests: u64, errors: u64, bucket: (f64, f64)) -> Window {
        let n = requests as f64;
        let new = Figures {
            requests,
            errors,
            buckets: vec![
                (bucket.0, 0.0),
                (bucket.1, n),
                (10.0, n),
                (f64::INFINITY, n),
            ],
        };
        Window {
            requests,
            errors,
            buckets: new.buckets.clone(),
            seconds: Some(4.0),
            routes: vec![RouteWindow {
                route: "shop.test".into(),
                all: new.clone(),
                new_backend: Some("new".into()),
                new,
                new_weight: Some(10.0),
            }],
            ..Window::default()
        }
    }

    #[test]
    fn gates_parse_with_units_and_operators() {
        let g = gate("error_ratio < 0.0001");
        assert_eq!((g.metric_name(), g.threshold()), ("error_ratio", 0.0001));
        assert!(!g.measures_lag());
        assert!((gate("error_ratio<0.01%").threshold() - 0.0001).abs() < 1e-15);
        assert_eq!(gate("p99 < 1s").metric(), Metric::Latency(0.99));
        assert_eq!(gate("p50 <= 250ms").threshold(), 0.25);
        assert_eq!(gate("p50 <= 250ms").op, Op::Le);
        assert_eq!(gate("  p999 < 1.5s ").threshold(), 1.5);
        assert_eq!(gate("p90 < 500ms").metric(), Metric::Latency(0.9));
        let lag = gate("replication_lag < 5s");
        assert!(lag.measures_lag());
        assert_eq!(lag.threshold(), 5.0);
        assert_eq!(lag.to_string(), "replication_lag < 5s");
        assert_eq!(gate("error_ratio <= 0").threshold(), 0.0);
        assert_eq!(gate("error_ratio < 0.01").scope(), Scope::New);
        assert_eq!(gate("p99 < 1s").scope(), Scope::New);
        let route = gate("route_error_ratio < 1%");
        assert_eq!(
            (route.metric_name(), route.metric(), route.scope()),
            ("route_error_ratio", Metric::ErrorRatio, Scope::Route)
        );
        let route = gate("route_p999 <= 3s");
        assert_eq!(
            (route.metric(), route.scope(), route.threshold()),
            (Metric::Latency(0.999), Scope::Route, 3.0)
        );
    }

    #[test]
    fn bad_gates_say_what_is_allowed() {
        assert_eq!(
            err("p98 < 1s"),
            "gate \"p98 < 1s\": unknown metric \"p98\"; use one of error_ratio, p50, p90, \
             p99, p999 (the new backend's answers), route_error_ratio, route_p50, route_p90, \
             route_p99, route_p999 (every answer on the route), replication_lag, \
             users_error_ratio, users_p50, users_p99, users_max, users_behind (cutover-load's \
             timeline)"
        );
        assert!(err("route_replication_lag < 1s").contains("unknown metric"));
        assert!(
            err("p99 > 1s").contains("use < or <="),
            "{}",
            err("p99 > 1s")
        );
        assert!(err("p99 = 1s").contains("use < or <="));
        assert!(err("p99").contains("expected METRIC < VALUE"));
        assert!(err("").contains("expected METRIC < VALUE"));
        assert!(err("p99 <").contains("expected METRIC < VALUE"));
        assert!(err("< 1s").contains("expected METRIC < VALUE"));
        assert!(err("p99 << 1s").contains("expected METRIC < VALUE"));
        assert!(err("p99 < 1").contains("with its unit, e.g. 1s or 1ms"));
        assert!(err("p99 < fast").contains("\"fast\" is not a duration"));
        assert!(err("error_ratio < 5").contains("between 0 and 1"));
        assert!(err("error_ratio < -0.1").contains("between 0 and 1"));
        assert!(err("error_ratio < 200%").contains("between 0 and 1"));
        assert!(err("error_ratio < 1s").contains("got \"1s\""));
        assert!(err("error_ratio < 0").contains("write error_ratio <= 0"));
        assert!(err("replication_lag < 0s").contains("can never pass"));
    }

    fn users(seconds: u64, requests: u64, errors: u64, p99: f64, behind: u64) -> Window {
        Window {
            users: Some(UsersWindow {
                seconds,
                requests,
                errors,
                worst_p50: (seconds > 0).then_some(p99 / 10.0),
                worst_p99: (seconds > 0).then_some(p99),
                max: (seconds > 0).then_some(p99 * 2.0),
                max_behind: behind,
                file: "timeline.jsonl".into(),
            }),
            ..Window::default()
        }
    }

    #[test]
    fn users_gates_judge_cutover_loads_seconds_not_the_proxies() {
        assert!(gate("users_p99 < 1s").measures_users());
        assert!(!gate("route_p99 < 1s").measures_users());
        assert_eq!(gate("users_behind < 500").threshold(), 500.0);
        assert!(err("users_behind < 5s").contains("takes a count of requests"));
        assert!(err("users_p99 < 5").contains("with its unit"));

        // The proxies' window is empty of traffic here: a users gate does not read it.
        let slow = gate("users_p99 < 1s").evaluate(2, &users(30, 60_000, 2, 4.2, 9_000), None);
        assert!(!slow.passed);
        assert_eq!(slow.value, Some(4.2));
        assert!(
            slow.detail.contains("users_p99 4.200s (the worst second) is 3.200s over 1s")
                && slow.detail.contains("over 30 s of cutover-load's timeline: 60000 requests, 2 failed, at most 9000 behind"),
            "{}",
            slow.detail
        );
        let fine = gate("users_p99 < 1s").evaluate(2, &users(30, 60_000, 0, 0.02, 4), None);
        assert!(fine.passed, "{}", fine.detail);
        let behind =
            gate("users_behind < 500").evaluate(0, &users(30, 60_000, 0, 0.02, 9_000), None);
        assert!(
            !behind.passed && behind.detail.contains("users_behind 9000 is 8500 over 500"),
            "{}",
            behind.detail
        );
        let errors =
            gate("users_error_ratio < 0.01%").evaluate(0, &users(30, 60_000, 12, 0.02, 0), None);
        assert!(
            !errors.passed && errors.value == Some(0.0002),
            "{:?}",
            errors
        );

        // No second in the window, or no timeline at all: nothing shown, no pass.
        for w in [users(0, 0, 0, 0.0, 0), Window::default()] {
            let none = gate("users_p99 < 1s").evaluate(0, &w, None);
            assert!(!none.passed && none.value.is_none());
            assert!(
                none.detail.contains("no second of cutover-load's timeline"),
                "{}",
                none.detail
            );
        }
    }

    #[test]
    fn gates_deserialize_from_plan_strings_with_positions() {
        #[derive(Debug, Deserialize)]
        struct Step {
            gates: Vec<Gate>,
        }
        let ok: Step = toml::from_str("gates = [\"p99 < 1s\", \"error_ratio < 0.0001\"]").unwrap();
        assert_eq!(ok.gates[1].metric_name(), "error_ratio");
        let e = toml::from_str::<Step>("gates = [\n  \"p99 < 1s\",\n  \"p98 < 1s\",\n]")
            .unwrap_err()
            .to_string();
        // toml points at the array holding the gate; the message names the gate.
        assert!(
            e.contains("line 1") && e.contains("gate \"p98 < 1s\": unknown metric \"p98\""),
            "{e}"
        );
        let back = serde_json::to_string(&ok.gates).unwrap();
        assert_eq!(back, r#"["p99 < 1s","error_ratio < 0.0001"]"#);
    }

    #[test]
    fn error_ratio_gates_read_the_window() {
        let g = gate("error_ratio < 0.0001");
        let r = g.evaluate(2, &window(1000, 50, (0.01, 0.025)), None);
        assert!(!r.passed);
        assert_eq!((r.step, r.gate.as_str()), (2, "error_ratio < 0.0001"));
        assert_eq!(r.value, Some(0.05));
        assert_eq!(r.threshold, 0.0001);
        assert_eq!(
            r.detail,
            "error_ratio of new (shop.test) 0.0500 >= 0.0001 over 4.0 s (50 of 1000 requests)"
        );

        let r = g.evaluate(0, &window(1000, 0, (0.01, 0.025)), None);
        assert!(r.passed, "{}", r.detail);
        assert_eq!(
            r.detail,
            "error_ratio of new (shop.test) 0.0000 < 0.0001 over 4.0 s (0 of 1000 requests)"
        );

        let r = g.evaluate(0, &window(20000, 1, (0.01, 0.025)), None);
        assert!(r.passed);
        assert_eq!(
            r.detail,
            "error_ratio of new (shop.test) 0.000050 < 0.0001 over 4.0 s (1 of 20000 requests)"
        );

        let r = gate("error_ratio <= 0").evaluate(0, &window(10, 0, (0.01, 0.025)), None);
        assert!(r.passed);
        assert!(r.detail.contains(" 0.0000 <= 0 over"), "{}", r.detail);

        let r = gate("error_ratio < 1%").evaluate(0, &window(100, 1, (0.01, 0.025)), None);
        assert!(!r.passed);
        assert!(r.detail.contains(" 0.0100 >= 1% over"), "{}", r.detail);

        let r = gate("error_ratio <= 0").evaluate(0, &window(10, 1, (0.01, 0.025)), None);
        assert!(!r.passed);
        assert!(r.detail.contains(" 0.1000 > 0 over"), "{}", r.detail);
    }

    #[test]
    fn latency_gates_read_the_histogram() {
        // Every request between 1 and 2.5 s: p99 interpolates to 2.485 s.
        let slow = window(100, 0, (1.0, 2.5));
        let r = gate("p99 < 1s").evaluate(1, &slow, None);
        assert!(!r.passed);
        assert_eq!(
            r.detail,
            "p99 of new (shop.test) 2.485s >= 1s over 4.0 s (100 requests)"
        );
        // Every request between 10 and 25 ms.
        let fast = window(100, 0, (0.01, 0.025));
        let r = gate("p99 < 1s").evaluate(1, &fast, None);
        assert!(r.passed);
        assert_eq!(
            r.detail,
            "p99 of new (shop.test) 0.025s < 1s over 4.0 s (100 requests)"
        );
        let r = gate("p50 <= 250ms").evaluate(1, &fast, None);
        assert!(r.passed);
        assert!((r.value.unwrap() - 0.0175).abs() < 1e-12, "{:?}", r.value);
    }

    #[test]
    fn no_data_fails_closed() {
        let empty = Window::default();
        for g in ["error_ratio < 0.0001", "p99 < 1s", "p50 <= 250ms"] {
            let r = gate(g).evaluate(0, &empty, Some(seen(0.1)));
            assert!(!r.passed, "{g}");
            assert_eq!(r.value, None);
            assert_eq!(r.detail, "no requests in the window");
        }
        // Counted requests but no histogram (should not happen; still fails).
        let mut counted = window(5, 0, (0.01, 0.025));
        counted.routes[0].new.buckets.clear();
        let r = gate("p99 < 1s").evaluate(0, &counted, None);
        assert!(!r.passed);
        assert_eq!(
            r.detail,
            "no latency observations of new (shop.test) in the window over 4.0 s"
        );

        let lag = gate("replication_lag < 5s");
        let r = lag.evaluate(3, &empty, None);
        assert!(!r.passed);
        assert_eq!(r.detail, "replication lag unknown");
        let r = lag.evaluate(3, &empty, Some(seen(0.8)));
        assert!(r.passed);
        assert_eq!(r.detail, "replication_lag 0.800s is under 5s");
        let r = lag.evaluate(3, &empty, Some(seen(7.0)));
        assert!(!r.passed);
        assert_eq!(r.detail, "replication_lag 7.000s is 2.000s over 5s");
        // A beat that never arrived: "at least 2s" is no proof of "under 5s".
        let r = lag.evaluate(
            3,
            &empty,
            Some(LagSeconds {
                seconds: 2.0,
                at_least: true,
            }),
        );
        assert!(!r.passed);
        assert!(
            r.detail.starts_with("replication_lag at least 2.000s"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn a_silent_new_side_is_judged_by_its_route() {
        let mut w = window(0, 0, (0.01, 0.025));
        w.routes[0].all = Figures {
            requests: 900,
            ..Figures::default()
        };
        // New answered nothing at 10%: the route's own figures are judged instead
        // (a write-only app sends new nothing before its switchover).
        let r = gate("error_ratio < 0.01").evaluate(0, &w, None);
        assert!(r.passed, "{}", r.detail);
        assert!(
            r.detail.starts_with(
                "no requests answered by new (shop.test) in the window (at weight 10%; writes \
                 stay on the write side until the switchover), so the whole route is judged: "
            ),
            "{}",
            r.detail
        );
        w.routes[0].all.errors = 90;
        let r = gate("error_ratio < 0.01").evaluate(0, &w, None);
        assert!(!r.passed, "{}", r.detail);
        w.routes[0].all.errors = 0;
        w.routes[0].new_weight = None;
        let r = gate("error_ratio < 0.01").evaluate(0, &w, None);
        assert!(r.detail.contains("(at weight unknown;"), "{}", r.detail);
        w.routes[0].new_weight = Some(0.0);
        let r = gate("error_ratio < 0.01").evaluate(0, &w, None);
        assert!(r.passed, "{}", r.detail);
        assert_eq!(r.value, None);
        assert_eq!(
            r.detail,
            "no requests answered by new (shop.test) in the window, as none were sent: its \
             weight is 0"
        );
        // The route as a whole had requests; with none at all, it fails.
        let r = gate("route_error_ratio < 0.01").evaluate(0, &w, None);
        assert!(r.passed, "{}", r.detail);
        w.routes[0].all = Figures::default();
        let r = gate("route_error_ratio < 0.01").evaluate(0, &w, None);
        assert!(!r.passed);
        assert_eq!(
            r.detail,
            "no requests on shop.test in the window over 4.0 s"
        );
    }

    #[test]
    fn every_route_is_judged_alone() {
        // shop.test's new side is fine; blog.test's (named "green") fails 1 in 4.
        let mut w = window(1000, 0, (0.01, 0.025));
        let mut blog = window(8, 2, (1.0, 2.5)).routes.remove(0);
        blog.route = "blog.test".into();
        blog.new_backend = Some("green".into());
        w.routes.push(blog);
        let r = gate("error_ratio < 0.01").evaluate(0, &w, None);
        assert!(!r.passed);
        assert_eq!(r.value, Some(0.25));
        assert_eq!(
            r.detail,
            "error_ratio of new (green on blog.test) 0.2500 >= 0.01 over 4.0 s (2 of 8 requests)"
        );
        let r = gate("p99 < 3s").evaluate(0, &w, None);
        assert!(r.passed, "{}", r.detail);
        assert!(
            (r.value.unwrap() - 2.485).abs() < 1e-9,
            "the worst: {:?}",
            r.value
        );
        assert_eq!(
            r.detail,
            "p99 of new (shop.test) 0.025s < 3s over 4.0 s (1000 requests); \
             p99 of new (green on blog.test) 2.485s < 3s over 4.0 s (8 requests)"
        );

        // A route whose new backend nobody named is judged as a whole.
        w.routes[1].new_backend = None;
        w.routes[1].all.errors = 0;
        w.seconds = None;
        let r = gate("error_ratio < 0.01").evaluate(0, &w, None);
        assert!(r.passed, "{}", r.detail);
        assert!(
            r.detail.ends_with(
                "; error_ratio of blog.test (every backend: none there is named \"new\") \
                 0.0000 < 0.01 (0 of 8 requests)"
            ),
            "{}",
            r.detail
        );
    }
}
