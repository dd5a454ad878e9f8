//! Durations as people type them on a command line (`500ms`, `30s`, `2m`, `1m30s`)
//! and as the report prints them. A bare number is refused: `--timeout 10` could mean
//! seconds or milliseconds, and a load test that guesses wrong measures the wrong thing.

use std::time::Duration;

/// A duration that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (examples: 500ms, 30s, 2m, 1m30s)")]
pub struct DurationError {
    /// What was given.
    pub input: String,
    /// Why it was refused.
    pub reason: String,
}

/// Parses `<number><unit>` groups, e.g. `250ms`, `1.5s`, `2m`, `1h30m`.
///
/// Units: `us` (or `µs`), `ms`, `s`, `m`, `h`. Decimals are allowed in each group.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason: &str| DurationError {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(fail("it is empty"));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(fail("expected a number"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| fail("the number is not valid"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "" => return Err(fail("a unit is missing")),
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(fail("unknown unit (use us, ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    // Anything past a century is a typo, and it keeps `Duration` arithmetic far from overflow.
    if !total.is_finite() || total > 100.0 * 365.0 * 86_400.0 {
        return Err(fail("it is too long"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration for a person: `850µs`, `12.3ms`, `1.52s`, `2m05s`.
pub fn format_duration(d: Duration) -> String {
    format_ms(d.as_secs_f64() * 1e3)
}

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
    fn parses_single_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("750us"), Ok(Duration::from_micros(750)));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn parses_decimals_and_compounds() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_bare_numbers_and_unknown_units() {
        let err = parse_duration("10").unwrap_err();
        assert!(err.reason.contains("unit is missing"), "{err}");
        let err = parse_duration("10d").unwrap_err();
        assert!(err.reason.contains("unknown unit"), "{err}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1..2s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999h").is_err());
        assert!(err.to_string().contains("\"10d\""));
    }

    #[test]
    fn formats_with_a_readable_unit() {
        assert_eq!(format_ms(0.85), "850µs");
        assert_eq!(format_ms(12.345), "12.35ms");
        assert_eq!(format_ms(250.0), "250ms");
        assert_eq!(format_ms(1520.0), "1.52s");
        assert_eq!(format_ms(125_000.0), "2m05s");
        assert_eq!(format_duration(Duration::from_secs(5)), "5.00s");
    }
}
