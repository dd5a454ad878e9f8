//! The result of a run: a serializable [`Report`] (the `--json` output, with the keys
//! the issue and the README list) and its human-readable rendering for stdout.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;

use crate::duration::format_ms;
use crate::slo::{Quantile, SloOutcome};
use crate::stats::{Aggregate, ErrorKind, quantile_ms};

/// Latency figures in milliseconds; `null` when nothing was measured.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// 99.9th percentile.
    pub p999: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

/// What the ledger holds at the end of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LedgerSummary {
    /// The file.
    pub path: String,
    /// Lines written (acknowledged writes, warmup included).
    pub entries: u64,
}

/// A finished run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The target URL.
    pub url: String,
    /// `"open"` (a fixed arrival schedule) or `"closed"` (as fast as responses come back).
    pub mode: String,
    /// Connections used.
    pub connections: usize,
    /// Measured requests: responses plus transport failures.
    pub requests: u64,
    /// Requests that got a complete response, whatever the status.
    pub responses: u64,
    /// Measured seconds from the end of the warmup: in open loop to the end of the
    /// schedule (or the last send, if sending ran late), in closed loop to the last
    /// completion.
    pub duration_s: f64,
    /// Seconds of warmup left out of every figure.
    pub warmup_s: f64,
    /// True when the run was stopped (Ctrl-C) before its end; the figures cover what ran.
    pub interrupted: bool,
    /// Target requests per second; `null` in closed loop.
    pub rate_target: Option<f64>,
    /// `requests / duration_s`.
    pub rate_achieved: f64,
    /// Transport failures plus 5xx responses.
    pub errors: u64,
    /// `errors / requests`.
    pub error_ratio: f64,
    /// Open loop only: requests the schedule called for that were never sent because
    /// every connection was still busy when the run ended.
    pub unsent: u64,
    /// Corrected latency: from each request's intended send time on the schedule.
    pub latency_ms: LatencySummary,
    /// Uncorrected latency: from the actual send time.
    pub latency_uncorrected_ms: LatencySummary,
    /// Responses per status code.
    pub status: BTreeMap<String, u64>,
    /// Errors per kind: connect, timeout, reset, tls, status, protocol.
    pub error_kinds: BTreeMap<String, u64>,
    /// Responses per `x-cutover-backend` value.
    pub backends: BTreeMap<String, u64>,
    /// The ledger, when one was written.
    pub ledger: Option<LedgerSummary>,
    /// The SLO verdict (passed with no failures when no SLO was given).
    pub slo: SloOutcome,
}

impl LatencySummary {
    /// Reads the report's quantiles from a histogram in microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let q = |p| quantile_ms(h, Quantile::Percentile(p));
        Self {
            p50: q(50.0),
            p90: q(90.0),
            p99: q(99.0),
            p999: q(99.9),
            max: quantile_ms(h, Quantile::Max),
        }
    }
}

/// Parts of a report that come from the spec rather than the measurements.
pub(crate) struct ReportContext {
    /// The URL.
    pub url: String,
    /// The open-loop rate.
    pub rate_target: Option<f64>,
    /// Connections.
    pub connections: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warmup seconds.
    pub warmup_s: f64,
    /// Stopped before its end.
    pub interrupted: bool,
    /// Scheduled but never sent.
    pub unsent: u64,
    /// The ledger.
    pub ledger: Option<LedgerSummary>,
    /// The SLO verdict.
    pub slo: SloOutcome,
}

impl Report {
    /// Assembles the report.
    pub(crate) fn build(agg: &Aggregate, ctx: ReportContext) -> Self {
        let t = &agg.totals;
        let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        Self {
            url: ctx.url,
            mode: if ctx.rate_target.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_owned(),
            connections: ctx.connections,
            requests: t.requests,
            responses: t.responses,
            duration_s: ctx.duration_s,
            warmup_s: ctx.warmup_s,
            interrupted: ctx.interrupted,
            rate_target: ctx.rate_target,
            rate_achieved: if ctx.duration_s > 0.0 {
                t.requests as f64 / ctx.duration_s
            } else {
                0.0
            },
            errors: t.errors,
            error_ratio: ratio(t.errors, t.requests),
            unsent: ctx.unsent,
            latency_ms: LatencySummary::from_histogram(&agg.corrected),
            latency_uncorrected_ms: LatencySummary::from_histogram(&agg.uncorrected),
            status: t.status.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            error_kinds: ErrorKind::ALL
                .iter()
                .map(|&k| (k.as_str().to_owned(), t.kind(k)))
                .collect(),
            backends: t
                .backends
                .iter()
                .map(|(name, n)| (String::from_utf8_lossy(name).into_owned(), *n))
                .collect(),
            ledger: ctx.ledger,
            slo: ctx.slo,
        }
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), format_ms)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cutover-load {}", self.url)?;
        let load = match self.rate_target {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop (as fast as responses return)".to_owned(),
        };
        let warmup = if self.warmup_s > 0.0 {
            format!(", after a {:.1}s warmup", self.warmup_s)
        } else {
            String::new()
        };
        writeln!(
            f,
            "  load       {load}, {} connections{warmup}",
            self.connections
        )?;
        writeln!(
            f,
            "  requests   {} in {:.2}s = {:.1} req/s",
            self.requests, self.duration_s, self.rate_achieved
        )?;
        let kinds: Vec<String> = self
            .error_kinds
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let kinds = if kinds.is_empty() {
            String::new()
        } else {
            format!(": {}", kinds.join(", "))
        };
        writeln!(
            f,
            "  errors     {} ({:.3}%){kinds}",
            self.errors,
            self.error_ratio * 100.0
        )?;
        if self.unsent > 0 {
            writeln!(
                f,
                "  unsent     {} scheduled requests were never sent: all connections were busy \
                 (the target fell behind, or raise -c)",
                self.unsent
            )?;
        }
        let status: Vec<String> = self
            .status
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        writeln!(f, "  status     {}", none_if_empty(&status))?;
        let total: u64 = self.backends.values().sum();
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|(b, n)| format!("{b}: {n} ({:.1}%)", *n as f64 * 100.0 / total.max(1) as f64))
            .collect();
        writeln!(f, "  backends   {}", none_if_empty(&backends))?;
        if let Some(ledger) = &self.ledger {
            writeln!(
                f,
                "  ledger     {} acknowledged writes in {}",
                ledger.entries, ledger.path
            )?;
        }
        writeln!(f, "  latency    {:>12} {:>12}", "corrected", "uncorrected")?;
        let (c, u) = (&self.latency_ms, &self.latency_uncorrected_ms);
        for (name, a, b) in [
            ("p50", c.p50, u.p50),
            ("p90", c.p90, u.p90),
            ("p99", c.p99, u.p99),
            ("p99.9", c.p999, u.p999),
            ("max", c.max, u.max),
        ] {
            writeln!(f, "    {name:<8} {:>12} {:>12}", ms(a), ms(b))?;
        }
        match (self.slo.checked.is_empty(), self.slo.passed) {
            (true, _) => Ok(()),
            (false, true) => writeln!(f, "  SLO        passed: {}", self.slo.checked.join(", ")),
            (false, false) => {
                writeln!(f, "  SLO        FAILED")?;
                for failure in &self.slo.failures {
                    writeln!(f, "    {failure}")?;
                }
                Ok(())
            }
        }
    }
}

fn none_if_empty(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Batch, Counters, Sample};

    fn sample_report() -> Report {
        let mut agg = Aggregate::default();
        let mut counters = Counters {
            requests: 3,
            responses: 3,
            errors: 1,
            status: vec![(200, 2), (503, 1)],
            backends: vec![("old".into(), 2), ("new".into(), 1)],
            ..Counters::default()
        };
        counters.error_kinds[ErrorKind::Status as usize] = 1;
        let samples = [1_000, 2_000, 300_000]
            .map(|us| Sample {
                corrected_us: us,
                uncorrected_us: us / 2,
            })
            .to_vec();
        agg.absorb(&Batch { samples, counters });
        Report::build(
            &agg,
            ReportContext {
                url: "http://127.0.0.1:1/".into(),
                rate_target: Some(3.0),
                connections: 2,
                duration_s: 1.0,
                warmup_s: 0.0,
                interrupted: false,
                unsent: 0,
                ledger: None,
                slo: SloOutcome {
                    passed: false,
                    failures: vec!["p99<100ms: missed, measured 300ms".into()],
                    checked: vec!["p99<100ms".into()],
                },
            },
        )
    }

    #[test]
    fn json_has_the_documented_keys() {
        let json = serde_json::to_value(sample_report()).unwrap();
        for key in [
            "requests",
            "duration_s",
            "rate_target",
            "rate_achieved",
            "errors",
            "error_ratio",
            "latency_ms",
            "latency_uncorrected_ms",
            "status",
            "error_kinds",
            "backends",
            "slo",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(json["latency_ms"][key].is_number(), "latency_ms.{key}");
            assert!(json["latency_uncorrected_ms"][key].is_number());
        }
        assert_eq!(json["status"]["503"], 1);
        assert_eq!(json["error_kinds"]["status"], 1);
        assert_eq!(json["error_kinds"]["connect"], 0);
        assert_eq!(json["backends"]["new"], 1);
        assert_eq!(json["slo"]["passed"], false);
        assert!((json["latency_ms"]["max"].as_f64().unwrap() - 300.0).abs() < 1.0);
        assert!((json["error_ratio"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn text_shows_both_latency_columns_and_the_missed_part() {
        let text = sample_report().to_string();
        assert!(text.contains("open loop at 3 req/s"), "{text}");
        assert!(text.contains("SLO        FAILED"), "{text}");
        assert!(text.contains("p99<100ms: missed"), "{text}");
        assert!(text.contains("old: 2 (66.7%)"), "{text}");
        let max_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("max"))
            .unwrap();
        assert!(
            max_line.contains("300ms") && max_line.contains("150ms"),
            "{max_line}"
        );
    }
}
