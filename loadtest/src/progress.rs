//! The live progress line, once per second: elapsed time, rate over the last second,
//! errors, p99 over the last second, and the backend split over the last second (the
//! split a migration step is changing right now).
//!
//! On a terminal it is one updating line (indicatif); otherwise (CI logs, pipes) one
//! plain line per second on stderr, so that stdout stays free for the report.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::duration::format_ms;
use crate::slo::Quantile;
use crate::spec::ProgressMode;
use crate::stats::{Aggregate, quantile_ms};

/// Where progress goes.
pub enum Progress {
    /// An updating terminal line.
    Bar(ProgressBar),
    /// A log line per second on stderr.
    Lines,
    /// Nowhere.
    Off,
}

impl Progress {
    /// Chooses the display for `mode`.
    pub fn new(mode: ProgressMode) -> Self {
        match mode {
            ProgressMode::Off => Self::Off,
            ProgressMode::Lines => Self::Lines,
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                // The template is a constant that indicatif accepts; keep the default
                // style rather than fail the run if a future version disagrees.
                if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                    bar.set_style(style);
                }
                Self::Bar(bar)
            }
            ProgressMode::Auto => Self::Lines,
        }
    }

    /// True when something is shown.
    pub fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }

    /// Shows `line`.
    pub fn show(&self, line: String) {
        match self {
            Self::Bar(bar) => {
                bar.set_message(line);
                bar.tick();
            }
            Self::Lines => eprintln!("{line}"),
            Self::Off => {}
        }
    }

    /// Removes the live line before the report is printed.
    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Formats one progress line from the aggregate's current interval.
pub fn line(agg: &Aggregate, elapsed: Duration, interval: Duration, warming_up: bool) -> String {
    let secs = elapsed.as_secs();
    if warming_up {
        return format!("[{secs:>4}s] warming up (not measured)");
    }
    let i = &agg.interval;
    let rate = i.requests as f64 / interval.as_secs_f64().max(1e-3);
    let t = &agg.totals;
    let ratio = if t.requests == 0 {
        0.0
    } else {
        t.errors as f64 * 100.0 / t.requests as f64
    };
    let p99 = quantile_ms(&agg.interval_corrected, Quantile::Percentile(99.0))
        .map_or_else(|| "-".to_owned(), format_ms);
    let mut out = format!(
        "[{secs:>4}s] {rate:>8.0} req/s | {} requests | errors {} ({ratio:.2}%) | p99 {p99}",
        t.requests, t.errors
    );
    let split_total: u64 = i.backends.iter().map(|(_, n)| n).sum();
    if split_total > 0 {
        out.push_str(" |");
        for (name, n) in &i.backends {
            let share = *n as f64 * 100.0 / split_total as f64;
            out.push_str(&format!(" {} {share:.0}%", String::from_utf8_lossy(name)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Batch, Counters, Sample};

    #[test]
    fn a_line_shows_rate_errors_p99_and_split() {
        let mut agg = Aggregate::default();
        agg.absorb(&Batch {
            samples: vec![Sample {
                corrected_us: 2_000,
                uncorrected_us: 1_000,
            }],
            counters: Counters {
                requests: 4,
                responses: 4,
                errors: 1,
                backends: vec![("old".into(), 3), ("new".into(), 1)],
                ..Counters::default()
            },
        });
        let text = line(&agg, Duration::from_secs(3), Duration::from_secs(2), false);
        assert!(text.starts_with("[   3s]"), "{text}");
        assert!(text.contains("2 req/s"), "{text}");
        assert!(text.contains("errors 1 (25.00%)"), "{text}");
        assert!(text.contains("p99 2.00ms"), "{text}");
        assert!(text.contains("old 75% new 25%"), "{text}");
        let warm = line(&agg, Duration::from_secs(1), Duration::from_secs(1), true);
        assert!(warm.contains("warming up"));
    }
}
