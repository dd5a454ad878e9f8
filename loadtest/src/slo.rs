//! Service-level objectives a run must meet: `p50<200ms,p99<1s,errors<0.01%`.
//!
//! This module owns the grammar and the verdict. It knows nothing of how figures are
//! measured: the engine hands it an [`Observed`] view of a finished run. Latency parts
//! are judged on the corrected (intended-send-time) figures, since those are the ones a
//! user of the service would have felt.

use crate::duration::{format_ms, parse_duration};

/// A parsed `--slo` expression: every part must hold for the run to pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    parts: Vec<SloPart>,
}

/// One comma-separated part, e.g. `p99<1s`.
#[derive(Debug, Clone, PartialEq)]
pub struct SloPart {
    /// The part as the user wrote it, used to name it in a failure.
    pub text: String,
    /// What it checks.
    pub check: Check,
}

/// What one SLO part checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// A corrected latency quantile stays under a limit.
    Latency {
        /// Which figure.
        quantile: Quantile,
        /// The limit in milliseconds.
        limit_ms: f64,
        /// `<` (true) or `<=` (false).
        strict: bool,
    },
    /// The error ratio (errors / requests, as a fraction) stays under a limit.
    ErrorRatio {
        /// The limit as a fraction: `0.01%` is `0.0001`.
        limit: f64,
        /// `<` (true) or `<=` (false).
        strict: bool,
    },
    /// The number of errors stays under a limit.
    Errors {
        /// The limit.
        limit: u64,
        /// `<` (true) or `<=` (false).
        strict: bool,
    },
    /// The achieved rate stays above a floor.
    Rate {
        /// Requests per second.
        floor: f64,
        /// `>` (true) or `>=` (false).
        strict: bool,
    },
}

/// A latency figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantile {
    /// A percentile in (0, 100], e.g. 99.9.
    Percentile(f64),
    /// The largest latency seen.
    Max,
}

/// A part that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("part {part:?}: {reason}")]
pub struct SloError {
    /// The offending part.
    pub part: String,
    /// Why.
    pub reason: String,
}

/// The figures of a finished run that an SLO is judged on.
pub trait Observed {
    /// Corrected latency at `quantile` in milliseconds; `None` when nothing was measured.
    fn latency_ms(&self, quantile: Quantile) -> Option<f64>;
    /// Errors counted (transport failures and 5xx).
    fn errors(&self) -> u64;
    /// Errors divided by requests (0 when there were no requests).
    fn error_ratio(&self) -> f64;
    /// Achieved requests per second.
    fn rate(&self) -> f64;
}

/// The verdict.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SloOutcome {
    /// True when every part held (and when no SLO was given).
    pub passed: bool,
    /// One line per missed part, naming it and what was measured.
    pub failures: Vec<String>,
    /// Every part that was checked, as written.
    #[serde(default)]
    pub checked: Vec<String>,
}

impl Slo {
    /// Parses `p50<200ms,p99<1s,errors<0.01%,rate>=9900`.
    pub fn parse(text: &str) -> Result<Self, SloError> {
        let parts = text
            .split(',')
            .map(|part| parse_part(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { parts })
    }

    /// The parts in the order given.
    pub fn parts(&self) -> &[SloPart] {
        &self.parts
    }

    /// Judges a run: every missed part is named with what was measured.
    pub fn evaluate(&self, observed: &dyn Observed) -> SloOutcome {
        let failures: Vec<String> = self
            .parts
            .iter()
            .filter_map(|part| part.miss(observed))
            .collect();
        SloOutcome {
            passed: failures.is_empty(),
            failures,
            checked: self.parts.iter().map(|p| p.text.clone()).collect(),
        }
    }
}

impl SloOutcome {
    /// The outcome of a run without an SLO.
    pub fn none() -> Self {
        Self {
            passed: true,
            failures: Vec::new(),
            checked: Vec::new(),
        }
    }
}

impl SloPart {
    /// `Some(description)` when this part was missed.
    fn miss(&self, observed: &dyn Observed) -> Option<String> {
        let holds = |measured: f64, limit: f64, strict: bool| {
            if strict {
                measured < limit
            } else {
                measured <= limit
            }
        };
        let measured = match self.check {
            Check::Latency {
                quantile,
                limit_ms,
                strict,
            } => match observed.latency_ms(quantile) {
                None => return Some(format!("{}: missed, no response was measured", self.text)),
                Some(ms) if holds(ms, limit_ms, strict) => return None,
                Some(ms) => format_ms(ms),
            },
            Check::ErrorRatio { limit, strict } => {
                let ratio = observed.error_ratio();
                if holds(ratio, limit, strict) {
                    return None;
                }
                format!("{:.4}%", ratio * 100.0)
            }
            Check::Errors { limit, strict } => {
                let errors = observed.errors();
                if holds(errors as f64, limit as f64, strict) {
                    return None;
                }
                errors.to_string()
            }
            Check::Rate { floor, strict } => {
                let rate = observed.rate();
                // `rate>100` holds when 100 < rate: the same comparison with sides swapped.
                if holds(floor, rate, strict) {
                    return None;
                }
                format!("{rate:.1}/s")
            }
        };
        Some(format!("{}: missed, measured {measured}", self.text))
    }
}

fn parse_part(part: &str) -> Result<SloPart, SloError> {
    let fail = |reason: &str| SloError {
        part: part.to_owned(),
        reason: reason.to_owned(),
    };
    if part.is_empty() {
        return Err(fail("empty part (check for a stray comma)"));
    }
    let op_at = part
        .find(['<', '>'])
        .ok_or_else(|| fail("expected a comparison such as p99<1s"))?;
    let metric = part[..op_at].trim().to_ascii_lowercase();
    let rest = &part[op_at..];
    let (less, strict, value) = match rest.as_bytes() {
        [b'<', b'=', ..] => (true, false, &rest[2..]),
        [b'>', b'=', ..] => (false, false, &rest[2..]),
        [b'<', ..] => (true, true, &rest[1..]),
        _ => (false, true, &rest[1..]),
    };
    let value = value.trim();
    let check = match metric.as_str() {
        "errors" | "error" | "error_ratio" => {
            if !less {
                return Err(fail("errors take < or <="));
            }
            if let Some(percent) = value.strip_suffix('%') {
                let percent: f64 = percent
                    .trim()
                    .parse()
                    .map_err(|_| fail("expected a percentage such as 0.1%"))?;
                if !(0.0..=100.0).contains(&percent) {
                    return Err(fail("a percentage must be between 0% and 100%"));
                }
                Check::ErrorRatio {
                    limit: percent / 100.0,
                    strict,
                }
            } else {
                let limit = value.parse().map_err(|_| {
                    fail("expected a percentage (errors<0.1%) or a whole count (errors<5)")
                })?;
                Check::Errors { limit, strict }
            }
        }
        "rate" => {
            if less {
                return Err(fail("rate takes > or >="));
            }
            let floor: f64 = value
                .trim_end_matches("/s")
                .parse()
                .map_err(|_| fail("expected requests per second such as rate>=9900"))?;
            if !floor.is_finite() || floor < 0.0 {
                return Err(fail("the rate must be a positive number"));
            }
            Check::Rate { floor, strict }
        }
        _ => {
            let quantile = parse_quantile(&metric).ok_or_else(|| {
                fail("unknown metric (use p50, p90, p99, p99.9, max, errors or rate)")
            })?;
            if !less {
                return Err(fail("latency takes < or <="));
            }
            let limit = parse_duration(value).map_err(|e| fail(&e.to_string()))?;
            Check::Latency {
                quantile,
                limit_ms: limit.as_secs_f64() * 1e3,
                strict,
            }
        }
    };
    Ok(SloPart {
        text: part.to_owned(),
        check,
    })
}

/// `p50`, `p99.9`, and the HdrHistogram-style short forms `p999` = 99.9, `p9999` = 99.99.
fn parse_quantile(metric: &str) -> Option<Quantile> {
    if metric == "max" {
        return Some(Quantile::Max);
    }
    let digits = metric.strip_prefix('p')?;
    let percentile: f64 = if digits.len() > 2 && digits.starts_with("99") && !digits.contains('.') {
        format!("99.{}", &digits[2..]).parse().ok()?
    } else {
        digits.parse().ok()?
    };
    (percentile > 0.0 && percentile <= 100.0).then_some(Quantile::Percentile(percentile))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed {
        p99: f64,
        errors: u64,
        ratio: f64,
        rate: f64,
    }

    impl Observed for Fixed {
        fn latency_ms(&self, quantile: Quantile) -> Option<f64> {
            match quantile {
                Quantile::Percentile(p) if p >= 99.0 => Some(self.p99),
                Quantile::Percentile(_) => Some(self.p99 / 10.0),
                Quantile::Max => Some(self.p99 * 2.0),
            }
        }
        fn errors(&self) -> u64 {
            self.errors
        }
        fn error_ratio(&self) -> f64 {
            self.ratio
        }
        fn rate(&self) -> f64 {
            self.rate
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let slo = Slo::parse("p50<200ms,p99<1s,errors<0.01%").unwrap();
        let checks: Vec<_> = slo.parts().iter().map(|p| p.check.clone()).collect();
        assert_eq!(
            checks,
            vec![
                Check::Latency {
                    quantile: Quantile::Percentile(50.0),
                    limit_ms: 200.0,
                    strict: true
                },
                Check::Latency {
                    quantile: Quantile::Percentile(99.0),
                    limit_ms: 1000.0,
                    strict: true
                },
                Check::ErrorRatio {
                    limit: 0.0001,
                    strict: true
                },
            ]
        );
    }

    #[test]
    fn parses_short_quantiles_counts_rates_and_inclusive_ops() {
        assert_eq!(parse_quantile("p999"), Some(Quantile::Percentile(99.9)));
        assert_eq!(parse_quantile("p99.9"), Some(Quantile::Percentile(99.9)));
        assert_eq!(parse_quantile("p9999"), Some(Quantile::Percentile(99.99)));
        assert_eq!(parse_quantile("max"), Some(Quantile::Max));
        assert_eq!(parse_quantile("p0"), None);
        assert_eq!(parse_quantile("p101"), None);
        let slo = Slo::parse(" errors <= 5 , rate>=9900/s, max<=2s ").unwrap();
        assert_eq!(
            slo.parts()[0].check,
            Check::Errors {
                limit: 5,
                strict: false
            }
        );
        assert_eq!(
            slo.parts()[1].check,
            Check::Rate {
                floor: 9900.0,
                strict: false
            }
        );
        assert_eq!(slo.parts()[2].text, "max<=2s");
    }

    #[test]
    fn refuses_bad_parts_and_names_them() {
        for (text, needle) in [
            ("p99<1", "unit is missing"),
            ("p99=1s", "comparison"),
            ("p42x<1s", "unknown metric"),
            ("p99>1s", "latency takes <"),
            ("errors<abc", "percentage"),
            ("errors<150%", "between 0% and 100%"),
            ("rate<100", "rate takes >"),
            ("p99<1s,,max<2s", "stray comma"),
        ] {
            let err = Slo::parse(text).unwrap_err();
            assert!(err.reason.contains(needle), "{text}: {err}");
        }
        let err = Slo::parse("p50<200ms,p99<1x").unwrap_err();
        assert_eq!(err.part, "p99<1x");
    }

    #[test]
    fn evaluation_names_each_missed_part() {
        let slo = Slo::parse("p50<200ms,p99<1s,errors<0.01%,rate>=900").unwrap();
        let good = Fixed {
            p99: 800.0,
            errors: 0,
            ratio: 0.0,
            rate: 1000.0,
        };
        let outcome = slo.evaluate(&good);
        assert!(outcome.passed && outcome.failures.is_empty());
        assert_eq!(outcome.checked.len(), 4);

        let bad = Fixed {
            p99: 1520.0,
            errors: 3,
            ratio: 0.003,
            rate: 1000.0,
        };
        let outcome = slo.evaluate(&bad);
        assert!(!outcome.passed);
        assert_eq!(
            outcome.failures,
            vec![
                "p99<1s: missed, measured 1.52s".to_owned(),
                "errors<0.01%: missed, measured 0.3000%".to_owned(),
            ]
        );
    }

    #[test]
    fn strict_and_inclusive_limits_differ_at_the_boundary() {
        let at_limit = Fixed {
            p99: 1000.0,
            errors: 5,
            ratio: 0.0,
            rate: 100.0,
        };
        assert!(!Slo::parse("p99<1s").unwrap().evaluate(&at_limit).passed);
        assert!(Slo::parse("p99<=1s").unwrap().evaluate(&at_limit).passed);
        assert!(!Slo::parse("errors<5").unwrap().evaluate(&at_limit).passed);
        assert!(Slo::parse("errors<=5").unwrap().evaluate(&at_limit).passed);
        assert!(!Slo::parse("rate>100").unwrap().evaluate(&at_limit).passed);
        assert!(Slo::parse("rate>=100").unwrap().evaluate(&at_limit).passed);
    }
}
