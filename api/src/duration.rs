//! The workspace's one duration grammar: `500ms`, `2s`, `1.5s`, `1m30s`, `7d`, as the
//! proxy's config, the plan file, the admin API's bodies and every command line
//! write them. It owns parsing and the matching compact display; how a report rounds
//! a measured latency for a person is the report's business.

use std::fmt;
use std::time::Duration;

/// Units as written, in seconds, from the smallest.
const UNITS: [(&str, f64); 8] = [
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
    ("d", 86_400.0),
];

/// Anything past a century is a typo, and the cap keeps `Duration` arithmetic far
/// from overflow.
const MAX_SECS: f64 = 100.0 * 365.0 * 86_400.0;

/// A duration that could not be read; its message names the text and a fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    input: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Empty,
    Spaces,
    Negative,
    NotANumber,
    NoUnit,
    UnknownUnit(String),
    TooLong,
}

impl DurationError {
    /// The text that was refused, trimmed.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.input;
        match &self.kind {
            Kind::Empty => f.write_str("empty duration; use e.g. \"500ms\", \"2s\" or \"1m30s\""),
            Kind::Spaces => {
                let joined: String = s.split_whitespace().collect();
                write!(f, "{s:?} has spaces; write it without them: {joined:?}")
            }
            Kind::Negative => write!(
                f,
                "{s:?} is negative; a duration is zero or more, e.g. {:?}",
                s.trim_start_matches('-')
            ),
            Kind::NotANumber => write!(
                f,
                "{s:?} is not a duration; use a number and a unit, e.g. \"500ms\", \"2s\" or \"1m30s\""
            ),
            Kind::NoUnit => write!(
                f,
                "{s:?}: the unit is missing; use e.g. \"{s}s\" or \"{s}ms\""
            ),
            Kind::UnknownUnit(unit) => {
                write!(f, "{s:?}: unknown unit {unit:?}; ")?;
                match alias(unit) {
                    Some(u) => write!(f, "write {u:?} (units: ns, us, ms, s, m, h, d)"),
                    None => f.write_str("use ns, us, ms, s, m, h or d"),
                }
            }
            Kind::TooLong => write!(f, "{s:?} is too long; the limit is 100 years (\"36500d\")"),
        }
    }
}

impl std::error::Error for DurationError {}

/// For callers that collect messages as text (the config validator's diagnostics).
impl From<DurationError> for String {
    fn from(e: DurationError) -> String {
        e.to_string()
    }
}

/// The unit meant by a spelling other tools accept (`min`, `sec`, `hours`).
fn alias(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "nsec" | "nsecs" => "ns",
        "usec" | "usecs" => "us",
        "msec" | "msecs" => "ms",
        "sec" | "secs" | "second" | "seconds" => "s",
        "min" | "mins" | "minute" | "minutes" => "m",
        "hr" | "hrs" | "hour" | "hours" => "h",
        "day" | "days" => "d",
        _ => return None,
    })
}

/// Parses `250ms`, `2s`, `1.5s`, `1m30s`, `2h`, `7d`: groups of a number (decimals
/// allowed) and a unit (ns, us or µs, ms, s, m, h, d), without spaces. A bare number
/// is refused so that `timeout = 5` cannot silently mean seconds to one reader and
/// milliseconds to another.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let text = s.trim();
    let fail = |kind| DurationError {
        input: text.to_owned(),
        kind,
    };
    // Spaces are refused, but only after reading the text without them, so that the
    // message is about the real problem ("5 parsecs" has an unknown unit).
    let compact: String = text.split_whitespace().collect();
    match parse_compact(&compact) {
        Ok(_) if compact.len() != text.len() => Err(fail(Kind::Spaces)),
        Ok(d) => Ok(d),
        Err(kind) => Err(fail(kind)),
    }
}

fn parse_compact(text: &str) -> Result<Duration, Kind> {
    if text.is_empty() {
        return Err(Kind::Empty);
    }
    if text.starts_with('-') {
        return Err(Kind::Negative);
    }
    let mut total = Duration::ZERO;
    let mut secs_so_far = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = num.parse().map_err(|_| Kind::NotANumber)?;
        if unit.is_empty() {
            return Err(Kind::NoUnit);
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(Kind::UnknownUnit(unit.to_owned()));
        };
        let secs = value * scale;
        secs_so_far += secs;
        if !secs.is_finite() || secs_so_far > MAX_SECS {
            return Err(Kind::TooLong);
        }
        total += Duration::from_secs_f64(secs);
        rest = tail;
    }
    Ok(total)
}

/// The inverse of [`parse_duration`] for display: `1.500s`, `250ms`, `2m`.
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse_duration(s).unwrap_err().to_string()
    }

    #[test]
    fn parses_single_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("750us"), Ok(Duration::from_micros(750)));
        assert_eq!(parse_duration("750µs"), Ok(Duration::from_micros(750)));
        assert_eq!(parse_duration("40ns"), Ok(Duration::from_nanos(40)));
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
    fn refuses_bare_numbers_and_says_what_to_write() {
        assert_eq!(
            err("5"),
            "\"5\": the unit is missing; use e.g. \"5s\" or \"5ms\""
        );
        assert!(err("1m30").contains("unit is missing"));
        assert!(err("10").contains("\"10s\""));
    }

    #[test]
    fn refuses_unknown_units_and_names_the_known_spelling() {
        assert_eq!(
            err("10w"),
            "\"10w\": unknown unit \"w\"; use ns, us, ms, s, m, h or d"
        );
        assert!(err("5min").contains("write \"m\""), "{}", err("5min"));
        assert!(err("2hours").contains("write \"h\""));
        assert!(err("5 parsecs").contains("unknown unit \"parsecs\""));
        assert!(err("1 s").contains("spaces"));
        assert!(err("1m 30s").contains("\"1m30s\""), "{}", err("1m 30s"));
    }

    #[test]
    fn refuses_empty_malformed_negative_and_huge_values() {
        assert!(err("").contains("empty"));
        assert!(err("x").contains("not a duration"));
        assert!(err("s").contains("not a duration"));
        assert!(err("1..2s").contains("not a duration"));
        assert!(err("-1s").contains("negative"));
        assert!(err("99999999999h").contains("too long"));
        assert!(err("36501d").contains("too long"));
        assert!(parse_duration("36500d").is_ok());
    }

    #[test]
    fn errors_carry_the_input_and_convert_to_text() {
        let e = parse_duration(" 10x ").unwrap_err();
        assert_eq!(e.input(), "10x");
        let text: String = e.into();
        assert!(text.contains("\"10x\""), "{text}");
    }

    #[test]
    fn formats_round_trip() {
        for s in ["250ms", "2s", "2m", "1.500s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        assert_eq!(format_duration(Duration::from_micros(40)), "40us");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }
}
