//! `report.md`: one section per question an operator asks after the night (did
//! users notice, what happened when, which gate stopped it, how long were writes
//! held, is every row there), each a table when the figures are tabular.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::plan::record::{
    GateRecord, LedgerCheck, Record, ReplicaRecord, Span, SwitchoverRecord, Traffic, VerifyRecord,
};

use super::{count, duration, one_line, percent, timestamp, verdict};

/// The report as Markdown. Sections without data say so rather than vanish, so a
/// reader can tell "nothing happened" from "not measured"; the ledger section shows
/// only when the run had a ledger check.
pub fn markdown(r: &Record) -> String {
    let mut out = String::new();
    header(&mut out, r);
    verdict_section(&mut out, r);
    timeline(&mut out, r);
    traffic(&mut out, &r.spans);
    replicas(&mut out, &r.replicas);
    gates(&mut out, &r.gates);
    lag(&mut out, r);
    switchovers(&mut out, &r.switchovers);
    retired(&mut out, r);
    verification(&mut out, &r.verify);
    caches(&mut out, r);
    if let Some(l) = &r.ledger {
        ledger(&mut out, l);
    }
    out
}

fn header(out: &mut String, r: &Record) {
    let _ = writeln!(out, "# Migration report: {}\n", r.plan_name);
    let _ = writeln!(out, "**Outcome: {}**\n", r.outcome.label());
    if let Some(reason) = &r.stop_reason {
        let _ = writeln!(out, "- Stopped: {}", one_line(reason));
    }
    for g in r.gates.iter().filter(|g| !g.passed) {
        let _ = writeln!(
            out,
            "- Failed gate: step {} `{}`: {}",
            g.step + 1,
            g.gate,
            one_line(&g.detail)
        );
    }
    let sha: String = r.plan_sha256.chars().take(12).collect();
    let _ = writeln!(out, "- Plan: `{}` (sha256 `{sha}`)", r.plan_path);
    let _ = writeln!(
        out,
        "- Started: {}, ran for {} (last update {})",
        timestamp(r.started_at),
        duration(r.updated_at - r.started_at),
        timestamp(r.updated_at)
    );
    let good = r
        .last_good_step
        .map_or("none".to_string(), |s| format!("step {}", s + 1));
    let _ = writeln!(
        out,
        "- Phase: {}; last step whose gates passed: {good}",
        r.phase.as_str()
    );
    if let Some(w) = &r.weights {
        let split: Vec<String> = w.iter().map(|(b, p)| format!("{b} {p}%")).collect();
        let _ = writeln!(out, "- Weights now: {}", split.join(", "));
    }
    if !r.switched.is_empty() {
        let _ = writeln!(out, "- Databases switched: {}", r.switched.join(", "));
    }
    if let Some(app) = &r.switching {
        let _ = writeln!(out, "- Switchover begun and not finished: {app}");
    }
    out.push('\n');
}

fn verdict_section(out: &mut String, r: &Record) {
    let v = verdict(r);
    out.push_str("## Verdict\n\n");
    out.push_str("| Downtime | Failed requests | Lost writes |\n|---:|---:|---:|\n");
    let _ = writeln!(
        out,
        "| {} | {} | {} |\n",
        duration(v.downtime_s),
        count(v.failed_requests),
        count(v.lost_writes)
    );
    out.push_str(
        "Downtime is the longest run of consecutive seconds in which users got errors \
         (sampled every second). Lost writes are source rows missing on the target after \
         a switchover, plus acknowledged writes the ledger check did not find.\n\n",
    );
}

fn timeline(out: &mut String, r: &Record) {
    out.push_str("## Timeline\n\n");
    if r.timeline.is_empty() {
        out.push_str("_No events recorded._\n\n");
        return;
    }
    out.push_str("| Time | Phase | Step / app | What | Result |\n|---|---|---|---|---|\n");
    for e in &r.timeline {
        let mut at = Vec::new();
        if let Some(s) = e.step {
            at.push(format!("step {}", s + 1));
        }
        if let Some(a) = &e.app {
            at.push(a.clone());
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            since(e.at - r.started_at),
            e.phase.as_str(),
            cell(&at.join(" / ")),
            cell(&e.what),
            if e.ok { "ok" } else { "**FAILED**" }
        );
    }
    out.push('\n');
}

fn traffic(out: &mut String, spans: &[Span]) {
    out.push_str("## Traffic\n\n");
    if spans.is_empty() {
        out.push_str("_No traffic recorded._\n\n");
        return;
    }
    let backends: BTreeSet<&str> = spans
        .iter()
        .flat_map(|s| s.traffic.by_backend.keys().map(String::as_str))
        .collect();
    out.push_str("| Span | Duration | Requests | Errors | Error ratio | p50 ms | p99 ms |");
    for b in &backends {
        let _ = write!(out, " {} (requests / errors) |", cell(b));
    }
    out.push_str("\n|---|---:|---:|---:|---:|---:|---:|");
    out.push_str(&"---:|".repeat(backends.len()));
    out.push('\n');
    for s in spans {
        let t = &s.traffic;
        let _ = write!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            cell(&s.name),
            duration(s.ended_at - s.started_at),
            count(t.requests),
            count(t.errors),
            error_ratio(t),
            millis(t.p50_s),
            millis(t.p99_s)
        );
        for b in &backends {
            let cell = t.by_backend.get(*b).map_or("0 / 0".to_string(), |bt| {
                format!("{} / {}", count(bt.requests), count(bt.errors))
            });
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out.push('\n');
}

fn replicas(out: &mut String, list: &[ReplicaRecord]) {
    out.push_str("## Proxy replicas\n\n");
    if list.is_empty() {
        out.push_str("_No replica recorded._\n\n");
        return;
    }
    out.push_str(
        "Every replica the run heard from, found again every second: when it first and last \
         answered (since the start), and the epochs of the fleet's state it served.\n\n",
    );
    out.push_str(
        "| Replica | Admin URL | First answered | Last answered | Epochs |\n|---|---|---:|---:|---|\n",
    );
    for r in list {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            if r.replica.is_empty() {
                "?".to_string()
            } else {
                cell(&r.replica)
            },
            cell(&r.url),
            since(r.first_answered_s),
            since(r.last_answered_s),
            epochs(&r.epochs)
        );
    }
    out.push('\n');
}

/// Epochs as ranges: "3-5, 9"; "none" for a proxy without them.
fn epochs(list: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < list.len() {
        let mut j = i;
        while j + 1 < list.len() && list[j].checked_add(1) == Some(list[j + 1]) {
            j += 1;
        }
        parts.push(if i == j {
            list[i].to_string()
        } else {
            format!("{}-{}", list[i], list[j])
        });
        i = j + 1;
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn error_ratio(t: &Traffic) -> String {
    if t.requests == 0 {
        return "n/a".into();
    }
    percent(t.errors as f64 / t.requests as f64)
}

fn millis(s: Option<f64>) -> String {
    s.map_or("n/a".into(), |s| format!("{:.1}", s * 1000.0))
}

fn gates(out: &mut String, gates: &[GateRecord]) {
    out.push_str("## Gates\n\n");
    if gates.is_empty() {
        out.push_str("_No gates checked._\n\n");
        return;
    }
    let steps: BTreeSet<usize> = gates.iter().map(|g| g.step).collect();
    for step in steps {
        let _ = writeln!(out, "### Step {}\n", step + 1);
        out.push_str("| Gate | Value | Threshold | Result | Detail |\n|---|---:|---:|---|---|\n");
        for g in gates.iter().filter(|g| g.step == step) {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                cell(&g.gate),
                g.value
                    .map_or("not measured".into(), |v| gate_value(&g.gate, v)),
                gate_value(&g.gate, g.threshold),
                if g.passed { "pass" } else { "**FAIL**" },
                cell(&g.detail)
            );
        }
        out.push('\n');
    }
}

/// A gate's figure in its metric's unit: a percentage for `error_ratio`, a duration
/// for latencies and lag (measured in seconds).
fn gate_value(gate: &str, v: f64) -> String {
    match gate.split_whitespace().next() {
        Some("error_ratio") => percent(v),
        Some("p50" | "p90" | "p99" | "p999" | "replication_lag") => duration(v),
        _ => format!("{v}"),
    }
}

fn lag(out: &mut String, r: &Record) {
    out.push_str("## Replication lag\n\n");
    if r.lag.is_empty() {
        out.push_str("_No lag measured._\n\n");
        return;
    }
    out.push_str("| Database | Max lag | Max lag (bytes) |\n|---|---:|---:|\n");
    for (db, l) in &r.lag {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            cell(db),
            l.max_seconds.map_or("n/a".into(), duration),
            l.max_bytes.map_or("n/a".into(), bytes)
        );
    }
    out.push('\n');
}

fn caches(out: &mut String, r: &Record) {
    if r.caches.is_empty() {
        return;
    }
    out.push_str("## Caches\n\n");
    out.push_str(
        "| App | Mode | Ready | Keys copied | Bytes | Big keys | Expired, skipped | Notifications | Last verification | Hit ratio |\n\
         |---|---|---|---:|---:|---:|---:|---:|---|---:|\n",
    );
    for (app, c) in &r.caches {
        let ready = match (c.converged, c.ready_at_s) {
            (_, Some(at)) => format!("yes, at {}", since(at)),
            (true, None) => "converged".into(),
            (false, None) => "**no**".into(),
        };
        let verify = c.last_verify.as_ref().map_or("none".into(), |t| {
            format!(
                "{} compared: {} missing, {} different, {} extra",
                t.compared, t.missing, t.different, t.extra
            )
        });
        let _ = writeln!(
            out,
            "| {} | {} | {ready} | {} | {} | {} | {} | {} ({} lost subscriptions) | {verify} | {} |",
            cell(app),
            c.mode,
            c.keys_copied,
            bytes(c.bytes_copied as i64),
            c.big_keys,
            c.skipped_expired,
            c.events,
            c.notifications_lost,
            c.hit_ratio
                .map_or("n/a".into(), |h| format!("{:.1}%", h * 100.0)),
        );
        if let Some(e) = &c.error {
            let _ = writeln!(out, "\n{}: {}", cell(app), one_line(e));
        }
    }
    out.push('\n');
}

/// Bytes for people: "512 B", "1.5 KiB", "20.0 MiB".
fn bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n.abs() < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v.abs() < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn retired(out: &mut String, r: &Record) {
    if r.retired.is_empty() {
        return;
    }
    out.push_str("## Replication retired\n\n");
    out.push_str("| Database | Side | Object | Done | Detail |\n|---|---|---|---|---|\n");
    for o in &r.retired {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&o.app),
            o.side,
            cell(&o.object),
            o.done,
            cell(&o.detail)
        );
    }
    out.push('\n');
}

fn switchovers(out: &mut String, list: &[SwitchoverRecord]) {
    out.push_str("## Switchovers\n\n");
    if list.is_empty() {
        out.push_str("_No switchover ran._\n\n");
        return;
    }
    for s in list {
        let _ = writeln!(
            out,
            "### {}: writes paused {}\n",
            s.app,
            duration(s.write_pause_ms / 1000.0)
        );
        let _ = writeln!(
            out,
            "{} held request(s) released; {} sequence(s) moved.\n",
            count(s.released_requests),
            s.sequences
        );
        if s.steps.is_empty() {
            continue;
        }
        out.push_str("| # | Step | Took |\n|---|---|---:|\n");
        for (n, what, ms) in &s.steps {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                cell(n),
                cell(what),
                duration(ms / 1000.0)
            );
        }
        out.push('\n');
    }
}

fn verification(out: &mut String, list: &[VerifyRecord]) {
    out.push_str("## Verification\n\n");
    if list.is_empty() {
        out.push_str("_No database verified._\n\n");
        return;
    }
    out.push_str(
        "Each switchover compares both sides as of its fence (snapshots taken while writes \
         were held, read by primary-key ranges after the release): they must be equal, and a \
         missing, changed or extra row fails the table. A switchover finished by a resumed run \
         is checked after the fact instead: every row the frozen source had must be on the \
         target, unchanged; rows only on the target are writes made since, and changed rows \
         are reported, not failures.\n\n",
    );
    for v in list {
        // A failed table fails its app even if the record says otherwise.
        let passed = v.passed && v.tables.iter().all(|t| t.passed);
        let result = if passed { "passed" } else { "**FAILED**" };
        let _ = writeln!(out, "### {}: {result}\n", v.app);
        out.push_str(
            "| Table | Source rows | Target rows | Missing | Changed | Source checksum | Result |\n\
             |---|---:|---:|---:|---:|---|---|\n",
        );
        for t in &v.tables {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | `{}` | {} |",
                cell(&t.table),
                count(t.source_rows),
                count(t.target_rows),
                count(t.missing),
                count(t.changed),
                cell(&t.source_checksum),
                if t.passed { "pass" } else { "**FAIL**" }
            );
        }
        out.push('\n');
        for t in &v.tables {
            if let Some(p) = &t.problem {
                let _ = writeln!(out, "- {}: {}", t.table, one_line(p));
            }
        }
        if v.tables.iter().any(|t| t.problem.is_some()) {
            out.push('\n');
        }
    }
}

fn ledger(out: &mut String, l: &LedgerCheck) {
    out.push_str("## Acknowledged writes\n\n");
    out.push_str("| Acknowledged | Found | Missing |\n|---:|---:|---:|\n");
    let _ = writeln!(
        out,
        "| {} | {} | {} |\n",
        count(l.acknowledged),
        count(l.found),
        count(l.missing)
    );
    if !l.missing_examples.is_empty() {
        out.push_str("Missing, for example:\n\n");
        for m in &l.missing_examples {
            let _ = writeln!(out, "- {}", one_line(m));
        }
        out.push('\n');
    }
}

/// Time since the start as a clock: "+0:05", "+12:40", "+1:02:05".
fn since(secs: f64) -> String {
    let total = if secs.is_finite() && secs > 0.0 {
        secs.round() as u64
    } else {
        0
    };
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("+{h}:{m:02}:{s:02}")
    } else {
        format!("+{m}:{s:02}")
    }
}

/// Text safe inside a table cell: a `|` would end the cell and a newline the row.
fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}
