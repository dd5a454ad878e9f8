//! What the users saw, judged: the verdict's users' part and the report's table of
//! every part of the rehearsal against the users' figures at that time.
//!
//! The proxies' counters cannot see a request the load generator never sent, or one
//! sent a second late because every connection was busy: only the load
//! generator's own figures can. So the rehearsal fails when cutover-load could not
//! hold its rate (requests never sent, or under 95% of the rate achieved) or its
//! corrected p99 is over the SLO, and says which component ran out first
//! ([`super::machine::diagnose`]). Requests never sent count as failed requests.
//!
//! Each part of the rehearsal (a phase of the plan, a switchover, a replica
//! restarted, writers past the proxy, hostile clients) is a [`Moment`]: what was
//! done, from when to when. The table gives, for each, the requests, errors, worst
//! second's corrected p99 and most requests behind schedule in the seconds of
//! cutover-load's `--timeline` that overlap it.

use std::fmt::Write as _;

use cutover_controller::plan::record::{PhaseName, Record};
use cutover_load::Report;
use cutover_load::timeline::Second;

/// The users' objective the verdict holds the load generator's figures to: the
/// plan's own gate (`p99 < 1s`), here corrected for coordinated omission.
pub const SLO_P99_MS: f64 = 1000.0;
/// The share of the scheduled rate that must have gone out.
pub const RATE_HELD: f64 = 0.95;

/// The users' part of the verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UsersVerdict {
    pub rate_target: f64,
    pub rate_achieved: f64,
    pub unsent: u64,
    pub p99_ms: Option<f64>,
    /// The worst one-second p99 of the timeline (the p99 a user saw at the worst moment).
    pub worst_second_p99_ms: Option<f64>,
    pub slo_p99_ms: f64,
    /// Why the users' view fails the rehearsal; empty when it passes.
    pub problems: Vec<String>,
    /// What ran out, when a problem is about the load not being held.
    pub saturated: Option<String>,
}

impl UsersVerdict {
    /// Judges the load generator's report and its timeline.
    pub fn of(r: &Report, timeline: &[Second]) -> UsersVerdict {
        let target = r.rate_target.unwrap_or(0.0);
        let mut problems = Vec::new();
        if r.unsent > 0 {
            problems.push(format!(
                "{} scheduled requests were never sent (every connection was busy): \
                 they count as failed",
                r.unsent
            ));
        }
        if target > 0.0 && r.rate_achieved < RATE_HELD * target {
            problems.push(format!(
                "cutover-load achieved {:.0} of {target:.0} req/s (under {:.0}%)",
                r.rate_achieved,
                RATE_HELD * 100.0
            ));
        }
        match r.latency_ms.p99 {
            Some(p) if p > SLO_P99_MS => problems.push(format!(
                "users' p99 (corrected for coordinated omission) was {} ms, over the SLO of {} ms",
                fmt_ms(p),
                SLO_P99_MS
            )),
            _ => {}
        }
        UsersVerdict {
            rate_target: target,
            rate_achieved: r.rate_achieved,
            unsent: r.unsent,
            p99_ms: r.latency_ms.p99,
            worst_second_p99_ms: worst_second_p99(timeline),
            slo_p99_ms: SLO_P99_MS,
            problems,
            saturated: None,
        }
    }

    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One part of the rehearsal, in Unix seconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Moment {
    /// e.g. "plan", "switchover", "fleet", "writers past the proxy".
    pub part: String,
    pub what: String,
    pub from: f64,
    pub to: f64,
}

/// What the users saw during a moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seen {
    #[serde(flatten)]
    pub moment: Moment,
    pub requests: u64,
    pub errors: u64,
    /// The worst second's corrected p99.
    pub p99_ms: Option<f64>,
    /// The most requests due and not yet answered.
    pub behind: u64,
    /// The most cores the hypervisor took from the machine (steal) in one of
    /// those seconds: CPU the platform was ready to use and was not given.
    pub stolen_cores: Option<f64>,
}

/// The plan's phases and each switchover, from the plan's record.
pub fn plan_moments(record: &Record) -> Vec<Moment> {
    let mut out: Vec<Moment> = record
        .spans
        .iter()
        .map(|s| Moment {
            part: "plan".into(),
            what: s.name.clone(),
            from: s.started_at,
            to: s.ended_at,
        })
        .collect();
    // A switchover's events carry its app; its moment spans its first to last.
    for sw in &record.switchovers {
        let times: Vec<f64> = record
            .timeline
            .iter()
            .filter(|e| e.app.as_deref() == Some(sw.app.as_str()))
            .filter(|e| e.phase == PhaseName::Switchover)
            .map(|e| e.at)
            .collect();
        if let (Some(from), Some(to)) = (
            times.iter().copied().reduce(f64::min),
            times.iter().copied().reduce(f64::max),
        ) {
            out.push(Moment {
                part: "switchover".into(),
                what: format!(
                    "{}: writes paused {:.0} ms, {} held requests released",
                    sw.app, sw.write_pause_ms, sw.released_requests
                ),
                from,
                to,
            });
        }
    }
    out
}

/// The users' figures during each moment: the timeline's seconds that overlap it
/// (a line covers the second before its time); and the machine's steal in the
/// samples that overlap it (`stolen`: Unix time a sample ended, cores stolen in
/// the second before).
pub fn seen(moments: &[Moment], timeline: &[Second], stolen: &[(f64, f64)]) -> Vec<Seen> {
    let overlaps = |end: f64, m: &Moment| end > m.from && end - 1.0 < m.to.max(m.from);
    let mut out: Vec<Seen> = moments
        .iter()
        .map(|m| {
            let secs: Vec<&Second> = timeline
                .iter()
                .filter(|s| !s.warmup && overlaps(s.unix, m))
                .collect();
            Seen {
                moment: m.clone(),
                requests: secs.iter().map(|s| s.requests).sum(),
                errors: secs.iter().map(|s| s.errors).sum(),
                p99_ms: secs.iter().filter_map(|s| s.p99_ms).reduce(f64::max),
                behind: secs.iter().map(|s| s.behind).max().unwrap_or(0),
                stolen_cores: stolen
                    .iter()
                    .filter(|(end, _)| overlaps(*end, m))
                    .map(|(_, cores)| *cores)
                    .reduce(f64::max),
            }
        })
        .collect();
    out.sort_by(|a, b| a.moment.from.total_cmp(&b.moment.from));
    out
}

/// The worst second's p99 over the whole measured run.
pub fn worst_second_p99(timeline: &[Second]) -> Option<f64> {
    timeline
        .iter()
        .filter(|s| !s.warmup)
        .filter_map(|s| s.p99_ms)
        .reduce(f64::max)
}

/// The report's section: the verdict's users' part, then the table.
pub fn section(v: &UsersVerdict, seen: &[Seen], started_at: f64) -> String {
    let mut s = String::from("\n## What users saw, part by part\n\n");
    let _ = writeln!(
        s,
        "- users' verdict: {} (corrected p99 {} ms against the SLO of {} ms, worst second's p99 \
         {} ms; {:.0} of {:.0} req/s achieved; {} requests never sent)",
        if v.passed() { "held" } else { "NOT held" },
        v.p99_ms.map_or_else(|| "-".into(), fmt_ms),
        v.slo_p99_ms,
        v.worst_second_p99_ms.map_or_else(|| "-".into(), fmt_ms),
        v.rate_achieved,
        v.rate_target,
        v.unsent
    );
    for p in &v.problems {
        let _ = writeln!(s, "- {p}");
    }
    if let Some(what) = &v.saturated {
        let _ = writeln!(s, "- what ran out: {what}");
    }
    s.push_str(
        "\n| part | what was done | from (s) | for (s) | requests | errors | worst p99 (ms) | most behind | host took (cores) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for e in seen {
        let m = &e.moment;
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            m.part,
            m.what.replace('|', "/"),
            m.from - started_at,
            (m.to - m.from).max(0.0),
            e.requests,
            e.errors,
            e.p99_ms.map_or_else(|| "-".into(), fmt_ms),
            e.behind,
            e.stolen_cores
                .map_or_else(|| "-".into(), |c| format!("{c:.2}"))
        );
    }
    s.push_str(
        "\nEach row counts the seconds of cutover-load's timeline that overlap the part \
         (at least one second); p99 is the worst such second's, corrected for coordinated \
         omission; \"most behind\" is the most requests that were due and not yet answered; \
         \"host took\" is the most cores the hypervisor took from this virtual machine in \
         one of those seconds (steal in `/proc/stat`): CPU the platform was ready to use \
         and was not given, so a bad second with a high figure is the host's as much as \
         the platform's.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(unix: f64, requests: u64, errors: u64, p99: f64, behind: u64) -> Second {
        Second {
            unix,
            elapsed_s: unix - 100.0,
            warmup: false,
            requests,
            errors,
            p50_ms: Some(p99 / 4.0),
            p99_ms: Some(p99),
            max_ms: Some(p99 * 2.0),
            due: 0,
            done: 0,
            behind,
            backends: Default::default(),
        }
    }

    #[test]
    fn a_moment_gets_the_seconds_that_overlap_it() {
        let tl = vec![
            second(101.0, 100, 0, 2.0, 1),
            second(102.0, 100, 1, 9.0, 3),
            second(103.0, 100, 0, 3.0, 0),
        ];
        let m = |from: f64, to: f64| Moment {
            part: "p".into(),
            what: "w".into(),
            from,
            to,
        };
        // A 40 ms switchover inside the second that ends at 102.
        let stolen = [(101.0, 0.0), (102.0, 0.6), (103.0, 0.1)];
        let s = seen(&[m(101.50, 101.54), m(100.0, 103.0)], &tl, &stolen);
        assert_eq!((s[0].requests, s[0].errors, s[0].behind), (300, 1, 3));
        assert_eq!(s[1].requests, 100);
        assert_eq!(s[1].p99_ms, Some(9.0));
        assert_eq!(
            (s[0].stolen_cores, s[1].stolen_cores),
            (Some(0.6), Some(0.6))
        );
        let s = seen(&[m(102.2, 102.9)], &tl, &stolen);
        assert_eq!(s[0].stolen_cores, Some(0.1));
        assert_eq!(seen(&[m(102.2, 102.9)], &tl, &[])[0].stolen_cores, None);
        assert_eq!(worst_second_p99(&tl), Some(9.0));
    }

    fn report(unsent: u64, achieved: f64, p99: f64) -> Report {
        serde_json::from_value(serde_json::json!({
            "url": "http://127.0.0.1:1/", "mode": "open", "connections": 1,
            "requests": 100, "responses": 100, "duration_s": 1.0, "warmup_s": 0.0,
            "interrupted": true, "rate_target": 10500.0, "rate_achieved": achieved,
            "errors": 0, "error_ratio": 0.0, "unsent": unsent,
            "latency_ms": {"p99": p99}, "latency_uncorrected_ms": {},
            "status": {}, "error_kinds": {}, "backends": {}, "ledger": null,
            "slo": {"passed": true, "failures": []}
        }))
        .unwrap()
    }

    #[test]
    fn a_load_not_held_fails_the_users_view() {
        // The figures of a run that printed PASSED before this verdict existed.
        let v = UsersVerdict::of(&report(106_246, 5548.0, 10_100.0), &[]);
        assert!(!v.passed());
        assert_eq!(v.problems.len(), 3, "{:?}", v.problems);
        assert!(v.problems[0].contains("106246 scheduled requests were never sent"));
        assert!(v.problems[2].contains("10100 ms, over the SLO"));
        assert!(UsersVerdict::of(&report(0, 10_490.0, 4.2), &[]).passed());
    }
}
