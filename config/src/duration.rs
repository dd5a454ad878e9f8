//! Human durations in configuration and on the command line: `500ms`, `2s`, `1m30s`.

use std::time::Duration;

/// Parses `250ms`, `2s`, `1.5s`, `1m30s`, `2h`, `7d`. A bare number is rejected so
/// that `timeout = 5` cannot silently mean seconds to one reader and milliseconds to
/// another.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; use e.g. \"500ms\", \"2s\", \"1m\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?} has no unit; use e.g. \"{s}s\" or \"{s}ms\""))?;
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration; use e.g. \"500ms\", \"2s\", \"1m\""))?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => {
                return Err(format!(
                    "{s:?}: unknown unit {unit:?}; use ms, s, m, h or d"
                ));
            }
        };
        let secs = value * scale;
        if !secs.is_finite() || secs > 1e12 {
            return Err(format!("{s:?} is out of range"));
        }
        total += Duration::from_secs_f64(secs);
        rest = tail;
    }
    Ok(total)
}

/// The inverse of [`parse_duration`] for display: `1.5s`, `250ms`, `2m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        format!("{}us", d.as_micros())
    } else if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
    }

    #[test]
    fn rejects_bare_numbers_and_unknown_units() {
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for s in ["250ms", "2s", "2m", "1.500s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
