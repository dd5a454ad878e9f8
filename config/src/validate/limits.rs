//! Validation of `[limits]`, sizes, and a route's retry budget.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::model::{Limits, RetryBudget};
use crate::raw::{RawLimits, RawRetryBudget};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Parses a size: a byte count, or a number with `B`, `KB`/`MB`/`GB` (powers of
/// 1000) or `KiB`/`MiB`/`GiB` (powers of 1024), such as `"64KiB"` or `"1.5MB"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        _ => {
            return Err(format!(
                "{text:?} is not a size; use bytes or a unit: \"64KiB\", \"10MB\", \"1GiB\""
            ));
        }
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; use a number, as in \"10MB\""))?;
    Ok((n * scale as f64).round() as u64)
}

impl Validator<'_> {
    /// A size field (integer bytes or a string with a unit) within `range`.
    pub(super) fn size(
        &mut self,
        value: Option<Spanned<toml::Value>>,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
        path: &str,
    ) -> u64 {
        let Some(v) = value else {
            return default;
        };
        let parsed = match v.get_ref() {
            toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
            toml::Value::String(s) => parse_size(s),
            _ => Err("must be a size: bytes, or a string such as \"64KiB\" or \"10MB\"".into()),
        };
        match parsed {
            Ok(n) if range.contains(&n) => n,
            Ok(n) => {
                let msg = format!(
                    "{n} bytes is out of range; use {} to {} bytes",
                    range.start(),
                    range.end()
                );
                self.err(&v, path, msg);
                default
            }
            Err(msg) => {
                self.err(&v, path, msg);
                default
            }
        }
    }

    pub(super) fn limits(&mut self, raw: RawLimits, file: &Path) -> Limits {
        let secs = Duration::from_secs;
        let nonzero = |v: &mut Self, d: Option<Spanned<String>>, default, path: &str| {
            let span = d.as_ref().map(Spanned::span);
            let out = v.duration(d, default, path);
            if out.is_zero()
                && let Some(span) = span
            {
                let e = v.loc.at(Some(span), path, "must be above zero");
                v.errors.push(e);
                return default;
            }
            out
        };
        let buffer_dir = raw.buffer_dir.map(|d| {
            let full = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from(d.get_ref()), |p| p.join(d.get_ref()));
            if !full.is_dir() {
                let msg = format!("{} is not a directory", full.display());
                self.err(&d, "limits.buffer_dir", msg);
            }
            full
        });
        Limits {
            request_head: nonzero(self, raw.request_head, secs(10), "limits.request_head"),
            keepalive: nonzero(self, raw.keepalive, secs(60), "limits.keepalive"),
            h2_ping: nonzero(self, raw.h2_ping, secs(30), "limits.h2_ping"),
            h2_ping_timeout: nonzero(
                self,
                raw.h2_ping_timeout,
                secs(20),
                "limits.h2_ping_timeout",
            ),
            body_idle: nonzero(self, raw.body_idle, secs(30), "limits.body_idle"),
            send: nonzero(self, raw.send, secs(30), "limits.send"),
            max_connections: self.count(
                raw.max_connections,
                0..=10_000_000,
                10_000,
                "limits.max_connections",
            ) as usize,
            max_connections_per_ip: self.count(
                raw.max_connections_per_ip,
                0..=10_000_000,
                0,
                "limits.max_connections_per_ip",
            ) as usize,
            max_header_size: self.size(
                raw.max_header_size,
                1024..=16 * MIB,
                64 * KIB,
                "limits.max_header_size",
            ) as usize,
            max_headers: self.count(raw.max_headers, 8..=10_000, 100, "limits.max_headers")
                as usize,
            max_body: self.size(raw.max_body, 0..=u64::MAX >> 1, GIB, "limits.max_body"),
            buffer_memory: self.size(raw.buffer_memory, 0..=GIB, MIB, "limits.buffer_memory")
                as usize,
            buffer_dir,
            upstream_max_connections: self.count(
                raw.upstream_max_connections,
                1..=1_000_000,
                1024,
                "limits.upstream_max_connections",
            ) as usize,
            upstream_max_waiting: self.count(
                raw.upstream_max_waiting,
                0..=10_000_000,
                1024,
                "limits.upstream_max_waiting",
            ) as usize,
            upstream_idle: nonzero(self, raw.upstream_idle, secs(55), "limits.upstream_idle"),
        }
    }

    pub(super) fn retry_budget(
        &mut self,
        at: &str,
        raw: Option<Spanned<RawRetryBudget>>,
    ) -> RetryBudget {
        let mut budget = RetryBudget {
            ratio: 0.2,
            window: Duration::from_secs(10),
            min_per_second: 10,
        };
        let Some(raw) = raw else {
            return budget;
        };
        let r = raw.into_inner();
        if let Some(ratio) = r.ratio {
            if (0.0..=10.0).contains(ratio.get_ref()) {
                budget.ratio = *ratio.get_ref();
            } else {
                let msg = "is the share of requests that may be retried: 0 to 10 (0.2 is 20%)";
                self.err(&ratio, format!("{at}.retry_budget.ratio"), msg);
            }
        }
        if let Some(w) = r.window {
            let span = w.span();
            let d = self.duration(Some(w), budget.window, &format!("{at}.retry_budget.window"));
            if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
                let e = self.loc.at(
                    Some(span),
                    format!("{at}.retry_budget.window"),
                    "must be 1s to 10m",
                );
                self.errors.push(e);
            } else {
                budget.window = d;
            }
        }
        budget.min_per_second = self.count(
            r.min_per_second,
            0..=1_000_000,
            10,
            &format!("{at}.retry_budget.min_per_second"),
        ) as u32;
        budget
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("10 MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("1.5GiB").unwrap(), 1_610_612_736);
        assert!(parse_size("ten").unwrap_err().contains("\"ten\""));
        assert!(parse_size("5 parsecs").unwrap_err().contains("unit"));
    }
}
