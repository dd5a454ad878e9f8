//! A step's gates: `METRIC < VALUE` conditions checked over the step's bake window.
//!
//! A gate is written as text in the plan (`"p99 < 1s"`) so that it reads like the
//! runbook it replaces; it is parsed once, when the plan is loaded, so a typo stops
//! the run before any weight moves. A gate with nothing to measure (no requests in
//! the window, or no replication lag reading) fails: a step that saw no traffic has
//! shown nothing, and the runner must not promote on silence.
//!
//! The values come from elsewhere: latency and errors from a [`Window`] of the
//! proxies' metrics, the lag from the runner's heartbeat readings.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::heartbeat::LagSeconds;
use crate::plan::metrics::Window;
use crate::plan::record::GateRecord;

/// The metrics a gate may name, as the plan spells them.
const METRICS: &str = "error_ratio, p50, p90, p99, p999, replication_lag";

/// What a gate measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// 5xx answers over all answers, a ratio in 0..=1.
    ErrorRatio,
    /// A latency quantile (0.5 for p50), in seconds.
    Latency(f64),
    /// The largest replication lag of any database, in seconds.
    ReplicationLag,
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
            "replication_lag" => ("replication_lag", Metric::ReplicationLag),
            other => {
                return Err(fail(format!(
                    "unknown metric {other:?}; use one of {METRICS}"
                )));
            }
        };
        let threshold = match metric {
            Metric::ErrorRatio => ratio(limit).map_err(fail)?,
            Metric::Latency(_) | Metric::ReplicationLag => {
                duration(name, limit).map_err(fail)?.as_secs_f64()
            }
        };
        if op == Op::Lt && threshold == 0.0 {
            return Err(fail(format!(
                "{name} < {limit} can never pass; write {name} <= {limit} to allow none"
            )));
        }
        Ok(Gate {
            text: text.to_string(),
            name,
            metric,
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

    /// The limit in the metric's unit (a ratio, or seconds).
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Whether the gate needs a replication lag reading.
    pub fn measures_lag(&self) -> bool {
        self.metric == Metric::ReplicationLag
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
        let (value, detail) = match self.metric {
            Metric::ErrorRatio => match window.error_ratio() {
                None => (None, "no requests in the window".to_string()),
                Some(r) => (
                    Some(r),
                    format!(
                        "error_ratio {} ({} of {} requests) {}",
                        ratio_text(r),
                        window.errors,
                        window.requests,
                        self.compare(r, |_| String::new()),
                    ),
                ),
            },
            Metric::Latency(q) => match window.quantile(q) {
                None if window.requests == 0 => (None, "no requests in the window".to_string()),
                None => (None, "no latency observations in the window".to_string()),
                Some(s) => (Some(s), self.seconds_detail(s)),
            },
            Metric::ReplicationLag => match replication_lag {
                None => (None, "replication lag unknown".to_string()),
                Some(l) if l.at_least => (
                    Some(l.seconds),
                    format!(
                        "replication_lag at least {:.3}s: the heartbeat written on the publisher \
                         had not been applied on the subscriber when the reading gave up",
                        l.seconds
                    ),
                ),
                Some(l) => (Some(l.seconds), self.seconds_detail(l.seconds)),
            },
        };
        let unproven =
            self.metric == Metric::ReplicationLag && replication_lag.is_some_and(|l| l.at_least);
        let passed = !unproven && value.is_some_and(|v| self.passes(v));
        GateRecord {
            step,
            gate: self.text.clone(),
            value,
            threshold: self.threshold,
            passed,
            detail,
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

/// `250ms`, `1s`, `1.5s`: a duration with its unit.
fn duration(name: &str, limit: &str) -> Result<Duration, String> {
    if limit.parse::<f64>().is_ok() {
        return Err(format!(
            "{name} takes a duration with its unit, e.g. {limit}s or {limit}ms"
        ));
    }
    humantime::parse_duration(limit).map_err(|e| {
        format!("{name} takes a duration such as 250ms, 1s or 1.5s; {limit:?} is not one ({e})")
    })
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
    use crate::plan::record::BackendTraffic;

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

    /// `requests` requests, `errors` of them 5xx, all in one latency bucket.
    fn window(requests: u64, errors: u64, bucket: (f64, f64)) -> Window {
        let mut by_backend = std::collections::BTreeMap::new();
        by_backend.insert("new".to_string(), BackendTraffic { requests, errors });
        let n = requests as f64;
        Window {
            requests,
            errors,
            by_backend,
            buckets: vec![
                (bucket.0, 0.0),
                (bucket.1, n),
                (10.0, n),
                (f64::INFINITY, n),
            ],
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
    }

    #[test]
    fn bad_gates_say_what_is_allowed() {
        assert_eq!(
            err("p98 < 1s"),
            "gate \"p98 < 1s\": unknown metric \"p98\"; use one of error_ratio, p50, p90, \
             p99, p999, replication_lag"
        );
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
        assert!(err("p99 < fast").contains("\"fast\" is not one"));
        assert!(err("error_ratio < 5").contains("between 0 and 1"));
        assert!(err("error_ratio < -0.1").contains("between 0 and 1"));
        assert!(err("error_ratio < 200%").contains("between 0 and 1"));
        assert!(err("error_ratio < 1s").contains("got \"1s\""));
        assert!(err("error_ratio < 0").contains("write error_ratio <= 0"));
        assert!(err("replication_lag < 0s").contains("can never pass"));
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
            "error_ratio 0.0500 (50 of 1000 requests) is over 0.0001"
        );

        let r = g.evaluate(0, &window(1000, 0, (0.01, 0.025)), None);
        assert!(r.passed, "{}", r.detail);
        assert_eq!(
            r.detail,
            "error_ratio 0.0000 (0 of 1000 requests) is under 0.0001"
        );

        let r = g.evaluate(0, &window(20000, 1, (0.01, 0.025)), None);
        assert!(r.passed);
        assert_eq!(
            r.detail,
            "error_ratio 0.000050 (1 of 20000 requests) is under 0.0001"
        );

        let r = gate("error_ratio <= 0").evaluate(0, &window(10, 0, (0.01, 0.025)), None);
        assert!(r.passed);
        assert!(r.detail.ends_with("is at the limit 0"), "{}", r.detail);

        let r = gate("error_ratio < 1%").evaluate(0, &window(100, 1, (0.01, 0.025)), None);
        assert!(!r.passed);
        assert!(r.detail.ends_with("is not under 1%"), "{}", r.detail);
    }

    #[test]
    fn latency_gates_read_the_histogram() {
        // Every request between 1 and 2.5 s: p99 interpolates to 2.485 s.
        let slow = window(100, 0, (1.0, 2.5));
        let r = gate("p99 < 1s").evaluate(1, &slow, None);
        assert!(!r.passed);
        assert_eq!(r.detail, "p99 2.485s is 1.485s over 1s");
        // Every request between 10 and 25 ms.
        let fast = window(100, 0, (0.01, 0.025));
        let r = gate("p99 < 1s").evaluate(1, &fast, None);
        assert!(r.passed);
        assert_eq!(r.detail, "p99 0.025s is under 1s");
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
        let counted = Window {
            requests: 5,
            ..Window::default()
        };
        let r = gate("p99 < 1s").evaluate(0, &counted, None);
        assert!(!r.passed);
        assert_eq!(r.detail, "no latency observations in the window");

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
}
