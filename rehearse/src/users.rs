//! The simulated users: `cutover-load` open loop at the rehearsal's rate over the
//! platform's scenario, with a ledger of acknowledged writes, started before the
//! plan and stopped (SIGINT: it finishes the requests in flight, flushes the ledger
//! and writes its report) after it. Also what its report means for the verdict:
//! a user's request failed when it got no answer or an answer that was not 2xx.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cutover_load::timeline::{self, Second};
use cutover_load::{LedgerEntry, Report};

use super::binaries::Program;
use super::platform;
use super::procs::{self, Proc};
use super::{RehearseError, io};
use cutover_controller::plan::record::Record;

/// The files of one load run.
pub(super) struct LoadFiles<'a> {
    pub scenario: &'a Path,
    pub ledger: &'a Path,
    pub json: &'a Path,
    pub log: &'a Path,
    /// cutover-load's `--timeline`: what the users see, second by second.
    pub timeline: &'a Path,
}

/// Starts `cutover-load` against the proxy for at most `bound`.
pub(super) fn start(
    bin: &Program,
    rate: f64,
    bound: Duration,
    proxy: SocketAddr,
    files: &LoadFiles<'_>,
) -> Result<Proc, RehearseError> {
    // Enough connections that writes held during a switchover do not hold up
    // the other apps' requests behind them.
    let connections = ((rate / 4.0) as u64).clamp(64, 512);
    let mut cmd = bin.command();
    cmd.arg("--rate")
        .arg(rate.to_string())
        .arg("--duration")
        .arg(format!("{}s", bound.as_secs()))
        .arg("--scenario")
        .arg(files.scenario)
        .arg("--ledger")
        .arg(files.ledger)
        .arg("--json")
        .arg(files.json)
        .arg("--timeline")
        .arg(files.timeline)
        .args(["--quiet", "--threads", "1", "--timeout", "15s"])
        .arg("--connections")
        .arg(connections.to_string())
        .arg(format!("http://{proxy}/"));
    Proc::spawn("cutover-load", cmd, files.log).map_err(io(format!("start {}", bin.describe())))
}

/// Waits (up to 30 s) until the proxies have answered about a second's worth of the
/// load, so the first step's gates have traffic to judge.
pub(super) async fn wait_for_traffic(
    admins: &[SocketAddr],
    load: &mut Proc,
    rate: f64,
) -> Result<(), RehearseError> {
    let want = rate.min(500.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = load.exited() {
            return Err(RehearseError::Step(format!(
                "cutover-load exited ({status}) at the start:\n{}",
                procs::last_lines(&load.output(), 15)
            )));
        }
        // Every proxy (replica) together.
        let mut seen = 0.0;
        for admin in admins {
            if let Ok((200, text)) =
                procs::http_get(*admin, "/metrics", Duration::from_secs(2)).await
            {
                seen += procs::requests_total(&text);
            }
        }
        if seen >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RehearseError::Step(format!(
                "the proxy saw under {want} requests within 30s of starting cutover-load:\n{}",
                procs::last_lines(&load.output(), 15)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 10 s) until cutover-load has written the first second of its
/// timeline: its connections are open through the balancer, the proxies and their
/// upstream pools, as the traffic of a platform in service already is when a
/// migration begins. That second stays in the users' verdict and in the report's
/// table (part `users`); the plan's phases start after it.
pub(super) async fn wait_for_first_second(
    timeline: &Path,
    load: &mut Proc,
) -> Result<(), RehearseError> {
    wait_for_line(
        timeline,
        load,
        Duration::from_secs(10),
        "its first second",
        |secs| !secs.is_empty(),
    )
    .await
}

/// Waits (up to 3 s) until cutover-load has written the second in which `unix`
/// falls, so that the plan's last moments (the last switchover, finalize) have a
/// second of the users' timeline like every other: the load is stopped by SIGINT,
/// and the second it is in when stopped is never written.
pub(super) async fn wait_for_second_past(
    timeline: &Path,
    load: &mut Proc,
    unix: f64,
) -> Result<(), RehearseError> {
    wait_for_line(
        timeline,
        load,
        Duration::from_secs(3),
        "the second the plan ended in",
        |secs| covers(secs, unix),
    )
    .await
}

/// Whether a second of `secs` ends at or after `unix` (a line covers the second
/// before its time).
fn covers(secs: &[Second], unix: f64) -> bool {
    secs.iter().any(|s| s.unix >= unix)
}

/// Polls `timeline` (its whole lines: the last may be half written) until `want`
/// holds of them, or fails after `within` (or when cutover-load exits), naming
/// `what` it waited for.
async fn wait_for_line(
    timeline: &Path,
    load: &mut Proc,
    within: Duration,
    what: &str,
    want: impl Fn(&[Second]) -> bool,
) -> Result<(), RehearseError> {
    let deadline = Instant::now() + within;
    loop {
        if want(&timeline::read(timeline).unwrap_or_default()) {
            return Ok(());
        }
        if let Some(status) = load.exited() {
            return Err(RehearseError::Step(format!(
                "cutover-load exited ({status}) before writing {what}:\n{}",
                procs::last_lines(&load.output(), 15)
            )));
        }
        if Instant::now() >= deadline {
            return Err(RehearseError::Step(format!(
                "cutover-load did not write {what} to {} within {within:?}:\n{}",
                timeline.display(),
                procs::last_lines(&load.output(), 15)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGINT, then its report. It has 30 s: its request timeout (15 s) plus slack.
pub(super) async fn stop(load: &mut Proc, json: &Path) -> Result<Report, RehearseError> {
    if load.exited().is_none() {
        load.signal("INT").map_err(io("stop cutover-load"))?;
    }
    if load.wait(Duration::from_secs(30)).await.is_none() {
        load.kill();
        return Err(RehearseError::Step(format!(
            "cutover-load did not stop within 30s of SIGINT:\n{}",
            procs::last_lines(&load.output(), 15)
        )));
    }
    let text = std::fs::read_to_string(json).map_err(|e| {
        RehearseError::Step(format!(
            "cutover-load wrote no report ({}: {e}):\n{}",
            json.display(),
            procs::last_lines(&load.output(), 15)
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        RehearseError::Step(format!(
            "{}: not a cutover-load report: {e}",
            json.display()
        ))
    })
}

/// Requests the users saw fail: transport errors (no answer) plus every answer
/// that was not 2xx. The load's own `errors` counts transport errors and 5xx.
pub(super) fn failed(r: &Report) -> u64 {
    let count = |pred: fn(&str) -> bool| -> u64 {
        r.status
            .iter()
            .filter(|(code, _)| pred(code))
            .map(|(_, n)| *n)
            .sum()
    };
    let server_errors = count(|c| c.starts_with('5'));
    let not_2xx = count(|c| !c.starts_with('2'));
    r.errors.saturating_sub(server_errors) + not_2xx
}

/// Records what the users saw, so that the verdict counts the larger of the
/// proxies' and the users' figures. The proxies only count what reached them as
/// 5xx; a connection refused before them, an answer cut short, a 4xx or a request
/// never sent (every connection busy) shows only here.
pub(super) fn add_users_view(record: &mut Record, load: &Report) {
    record.client_failed_requests = Some(failed(load) + load.unsent);
}

/// The report's section on what the load generator saw.
pub(super) fn section(r: &Report, entries: &[LedgerEntry], plan_s: f64) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"));
    let mut per_app: BTreeMap<&str, u64> = BTreeMap::new();
    for e in entries {
        if let Some(app) = platform::app_of_template(&e.template) {
            *per_app.entry(app.name).or_default() += 1;
        }
    }
    let mut s = String::from("\n## What the users saw (cutover-load)\n\n");
    let _ = writeln!(
        s,
        "- {} requests over {:.1} s, open loop at {} req/s ({:.0} achieved); the plan took {:.1} s",
        r.requests,
        r.duration_s,
        r.rate_target.unwrap_or(0.0),
        r.rate_achieved,
        plan_s
    );
    let statuses: Vec<String> = r.status.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    let _ = writeln!(
        s,
        "- answers by status: {}; failed (no answer, or not 2xx): {}",
        statuses.join(", "),
        failed(r)
    );
    let kinds: Vec<String> = r
        .error_kinds
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if !kinds.is_empty() {
        let _ = writeln!(s, "- errors by kind: {}", kinds.join(", "));
    }
    let _ = writeln!(
        s,
        "- latency from each request's scheduled time (corrected for coordinated omission): \
         p50 {}, p99 {}, p99.9 {}, max {}",
        ms(r.latency_ms.p50),
        ms(r.latency_ms.p99),
        ms(r.latency_ms.p999),
        ms(r.latency_ms.max)
    );
    let sides: Vec<String> = r.backends.iter().map(|(b, n)| format!("{b} {n}")).collect();
    let _ = writeln!(s, "- answered by side: {}", sides.join(", "));
    if r.unsent > 0 {
        let _ = writeln!(
            s,
            "- {} scheduled requests were never sent (every connection was busy when the load stopped)",
            r.unsent
        );
    }
    let apps: Vec<String> = per_app.iter().map(|(a, n)| format!("{a} {n}")).collect();
    let _ = writeln!(
        s,
        "- acknowledged writes by app: {}; each was looked up by its id in its app's database \
         on the side that takes its writes (new once switched), and its row must carry the \
         request's id (`ledger.jsonl`)",
        apps.join(", ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: &[(&str, u64)], errors: u64) -> Report {
        let json = serde_json::json!({
            "url": "http://127.0.0.1:1/", "mode": "open", "connections": 1,
            "requests": 0, "responses": 0, "duration_s": 1.0, "warmup_s": 0.0,
            "interrupted": true, "rate_target": 10.0, "rate_achieved": 10.0,
            "errors": errors, "error_ratio": 0.0, "unsent": 0,
            "latency_ms": {}, "latency_uncorrected_ms": {},
            "status": status.iter().map(|(c, n)| (c.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "error_kinds": {}, "backends": {}, "ledger": null,
            "slo": {"passed": true, "failures": []}
        });
        serde_json::from_value(json).unwrap()
    }

    fn record(span_errors: &[u64]) -> Record {
        let spans: Vec<serde_json::Value> = span_errors
            .iter()
            .map(|e| {
                serde_json::json!({"name": "s", "phase": "steps", "started_at": 0.0,
                    "ended_at": 1.0, "traffic": {"requests": 10, "errors": e,
                    "p50_s": null, "p99_s": null}})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "version": 1, "plan_name": "p", "plan_path": "p.toml", "plan_sha256": "x",
            "started_at": 0.0, "updated_at": 1.0, "outcome": "succeeded",
            "phase": "done", "next_step": 3, "timeline": [], "spans": spans,
            "gates": [], "lag": {}, "switchovers": [], "verify": []
        }))
        .unwrap()
    }

    #[test]
    fn the_plans_end_is_covered_only_once_its_second_is_written_whole() {
        let first = r#"{"unix":100.5,"elapsed_s":1.0,"warmup":false,"requests":10,"errors":0,"p50_ms":1.0,"p99_ms":2.0,"max_ms":3.0,"due":10,"done":10,"behind":0,"backends":{}}"#;
        let second = first.replace("100.5", "101.5");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.jsonl");
        // The plan ended at 101.2: the line ending at 101.5 is being written.
        std::fs::write(&path, format!("{first}\n{}", &second[..40])).unwrap();
        let secs = timeline::read(&path).unwrap();
        assert_eq!(secs.len(), 1);
        assert!(!covers(&secs, 101.2));
        assert!(covers(&secs, 100.5));
        std::fs::write(&path, format!("{first}\n{second}\n")).unwrap();
        let secs = timeline::read(&path).unwrap();
        assert!(covers(&secs, 101.2));
        assert!(!covers(&secs, 101.6));
        assert!(!covers(&[], 0.0));
    }

    #[test]
    fn the_verdict_counts_the_larger_of_the_proxies_and_the_users_failures() {
        let load = report(&[("200", 90), ("404", 2)], 1);
        let mut r = record(&[1]);
        add_users_view(&mut r, &load);
        assert_eq!(
            cutover_controller::plan::report::verdict(&r).failed_requests,
            3
        );

        let mut r = record(&[4, 1]);
        add_users_view(&mut r, &load);
        assert_eq!(
            cutover_controller::plan::report::verdict(&r).failed_requests,
            5
        );
    }

    #[test]
    fn failed_counts_every_non_2xx_and_every_transport_error_once() {
        // 3 transport errors + 2 503s = 5 errors in the load's own count.
        let r = report(&[("200", 90), ("201", 5), ("404", 1), ("503", 2)], 5);
        assert_eq!(failed(&r), 3 + 1 + 2);
        assert_eq!(failed(&report(&[("200", 9)], 0)), 0);
    }
}
