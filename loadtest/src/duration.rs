//! Durations on the command line and in SLOs (`500ms`, `30s`, `1m30s`) use the
//! workspace's one grammar, `cutover_api::duration`: a bare number is refused, since
//! `--timeout 10` could mean seconds or milliseconds and a load test that guesses
//! wrong measures the wrong thing. This module owns only how the report prints a
//! measured latency, rounded for a person (`850µs`, `12.35ms`, `1.52s`, `2m05s`).

pub use cutover_api::duration::{DurationError, format_duration, parse_duration};

/// Formats milliseconds with the unit that keeps three significant digits readable.
pub fn format_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1e3)
    } else if ms < 100.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else if ms < 60_000.0 {
        format!("{:.2}s", ms / 1e3)
    } else {
        let secs = (ms / 1e3).round() as u64;
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_a_readable_unit() {
        assert_eq!(format_ms(0.85), "850µs");
        assert_eq!(format_ms(12.345), "12.35ms");
        assert_eq!(format_ms(250.0), "250ms");
        assert_eq!(format_ms(1520.0), "1.52s");
        assert_eq!(format_ms(125_000.0), "2m05s");
    }
}
