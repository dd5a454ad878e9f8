//! The migration report, rendered from a run's [`Record`]: `report.md` for people,
//! `report.json` for tools, and a few lines for the terminal. It owns the verdict's
//! arithmetic (downtime, failed requests, lost writes) so that every rendering and
//! the state file agree; collecting the figures is the runner's job.
//!
//! The record holds no connection strings or tokens, and nothing here adds any: a
//! report is meant to be shared.

mod markdown;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::error::Error;
use crate::plan::record::{Record, Verdict};

pub use markdown::markdown;

/// The verdict the record's figures give; the renderings compute it each time, so
/// that a report of a run still in progress shows the true figures.
///
/// - downtime: the longest run of consecutive seconds in which users got errors
///   (samples are one per second, so a run of n seconds counts n, not n - 1);
/// - failed requests: the errors of every span (spans do not overlap);
/// - lost writes: source rows missing after each switchover, plus acknowledged
///   writes the ledger check did not find, plus those of the writers past the
///   proxies (`past_proxy`) not found.
pub fn verdict(r: &Record) -> Verdict {
    let from_tables: u64 = r
        .verify
        .iter()
        .flat_map(|v| &v.tables)
        .map(|t| t.missing)
        .sum();
    Verdict {
        downtime_s: longest_run(&r.error_seconds) as f64,
        failed_requests: r
            .spans
            .iter()
            .map(|s| s.traffic.errors)
            .sum::<u64>()
            .max(r.client_failed_requests.unwrap_or(0)),
        lost_writes: from_tables
            + r.ledger.as_ref().map_or(0, |l| l.missing)
            + r.past_proxy.values().map(|l| l.missing).sum::<u64>(),
    }
}

/// The length of the longest run of consecutive values. The samples may arrive out
/// of order or twice (a resumed run samples again), so they are sorted and
/// deduplicated first.
fn longest_run(seconds: &[u64]) -> u64 {
    let mut s = seconds.to_vec();
    s.sort_unstable();
    s.dedup();
    let (mut best, mut run) = (0u64, 0u64);
    let mut prev: Option<u64> = None;
    for x in s {
        run = match prev {
            Some(p) if p.checked_add(1) == Some(x) => run + 1,
            _ => 1,
        };
        best = best.max(run);
        prev = Some(x);
    }
    best
}

/// The whole record as JSON, with `verdict` (recomputed, see [`verdict`]) and
/// `outcome` at the top level where tools look first.
pub fn json(r: &Record) -> Value {
    // Serializing a record cannot fail (its maps have string keys and nothing has a
    // fallible `Serialize`); the fallback keeps the verdict even so.
    let mut v = serde_json::to_value(r).unwrap_or_else(|e| {
        let mut m = serde_json::Map::new();
        m.insert(
            "error".into(),
            Value::String(format!("cannot serialize the record: {e}")),
        );
        Value::Object(m)
    });
    if let Value::Object(m) = &mut v {
        m.insert(
            "outcome".into(),
            serde_json::to_value(r.outcome).unwrap_or(Value::Null),
        );
        m.insert(
            "verdict".into(),
            serde_json::to_value(verdict(r)).unwrap_or(Value::Null),
        );
    }
    v
}

/// Writes `report.md` and `report.json` into `dir` (created if needed) and returns
/// their paths. Each file is written to a temporary file beside it and renamed, so a
/// reader (or a crash) never sees half a report and a previous report stays whole
/// until the new one replaces it.
pub fn write(r: &Record, dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, &e))?;
    let md = dir.join("report.md");
    let js = dir.join("report.json");
    write_atomically(dir, &md, markdown(r).as_bytes())?;
    let mut text = serde_json::to_string_pretty(&json(r))
        .map_err(|e| Error::Plan(format!("cannot write the report to {}: {e}", js.display())))?;
    text.push('\n');
    write_atomically(dir, &js, text.as_bytes())?;
    Ok((md, js))
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let fail = |e: std::io::Error| write_error(path, &e);
    let mut tmp = tempfile::Builder::new()
        .prefix(".report-")
        .tempfile_in(dir)
        .map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

fn write_error(path: &Path, e: &std::io::Error) -> Error {
    Error::Plan(format!(
        "cannot write the report to {}: {e}",
        path.display()
    ))
}

/// A few lines for the terminal: the outcome, why it stopped, the verdict and what
/// failed. The caller prints where the report files are.
pub fn summary(r: &Record) -> String {
    let v = verdict(r);
    let mut out = format!(
        "{}: {} after {}\n",
        r.plan_name,
        r.outcome.label(),
        duration(r.updated_at - r.started_at)
    );
    if let Some(reason) = &r.stop_reason {
        out.push_str(&format!("stopped: {}\n", one_line(reason)));
    }
    out.push_str(&format!(
        "verdict: downtime {}, failed requests {}, lost writes {}\n",
        duration(v.downtime_s),
        count(v.failed_requests),
        count(v.lost_writes)
    ));
    for g in r.gates.iter().filter(|g| !g.passed) {
        out.push_str(&format!(
            "failed gate: step {} `{}`: {}\n",
            g.step + 1,
            g.gate,
            one_line(&g.detail)
        ));
    }
    for (app, t) in r
        .verify
        .iter()
        .flat_map(|v| v.tables.iter().map(move |t| (&v.app, t)))
        .filter(|(_, t)| !t.passed)
    {
        let problem = t.problem.as_deref().unwrap_or("failed");
        out.push_str(&format!(
            "verification failed: {app} {}: {}\n",
            t.table,
            one_line(problem)
        ));
    }
    out
}

/// A duration for people: "0 s", "850 ms", "4.2 s", "3 s", "12 s", "2m 05s",
/// "1h 02m 05s".
fn duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "unknown".into();
    }
    if secs < 0.0 {
        return format!("-{}", duration(-secs));
    }
    if secs == 0.0 {
        return "0 s".into();
    }
    if secs < 1.0 {
        return format!("{:.0} ms", secs * 1000.0);
    }
    if secs < 10.0 && secs.fract() != 0.0 {
        return format!("{secs:.1} s");
    }
    // Whole seconds from here; the cast is in range for any run people wait for.
    let total = secs.round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// A count with thousands separators: 1234567 → "1,234,567".
fn count(n: u64) -> String {
    let digits = n.to_string();
    // The first group holds 1 to 3 digits, so the rest splits into whole groups.
    let head = (digits.len() - 1) % 3 + 1;
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    out.push_str(&digits[..head]);
    let mut i = head;
    while i < digits.len() {
        out.push(',');
        out.push_str(&digits[i..i + 3]);
        i += 3;
    }
    out
}

/// A ratio as a percentage with the precision it needs: 0.0001 → "0.01%".
fn percent(x: f64) -> String {
    if !x.is_finite() {
        return "unknown".into();
    }
    let s = format!("{:.4}", x * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// Unix seconds as an RFC 3339 UTC time.
fn timestamp(at: f64) -> String {
    match Duration::try_from_secs_f64(at) {
        Ok(d) => humantime::format_rfc3339_seconds(UNIX_EPOCH + d).to_string(),
        Err(_) => "unknown".into(),
    }
}

/// Messages (errors, gate details) may span lines; the report shows them on one.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
