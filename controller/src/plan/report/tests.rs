use std::collections::BTreeMap;

use super::*;
use crate::plan::record::{
    BackendTraffic, CacheRecord, Event, GateRecord, LagRecord, LedgerCheck, Outcome, PhaseName,
    RECORD_VERSION, ReplicaRecord, RetiredObject, Span, SwitchoverRecord, TableCheck, Traffic,
    VerifyRecord,
};

const START: f64 = 1_700_000_000.0;

/// A run that went through two steps (the second failed its p99 gate) and one
/// switchover: every section of the report has something to show.
fn record() -> Record {
    let traffic = |requests, errors, old: u64, new: u64| Traffic {
        requests,
        errors,
        p50_s: Some(0.012),
        p99_s: Some(0.25),
        by_backend: BTreeMap::from([
            (
                "old".to_string(),
                BackendTraffic {
                    requests: old,
                    errors: 0,
                },
            ),
            (
                "new".to_string(),
                BackendTraffic {
                    requests: new,
                    errors,
                },
            ),
        ]),
    };
    let span = |name: &str, phase, from: f64, to: f64, t| Span {
        name: name.into(),
        phase,
        started_at: START + from,
        ended_at: START + to,
        traffic: t,
    };
    let event = |at: f64, phase, step, what: &str, ok| Event {
        at: START + at,
        phase,
        step,
        app: None,
        what: what.into(),
        ok,
    };
    let gate = |step, gate: &str, value, threshold, passed, detail: &str| GateRecord {
        step,
        gate: gate.into(),
        value,
        threshold,
        passed,
        detail: detail.into(),
    };
    let table = |name: &str, source_rows, target_rows, missing, changed| TableCheck {
        table: name.into(),
        source_rows,
        target_rows,
        missing,
        changed,
        source_checksum: "00112233aabbccdd".into(),
        passed: missing == 0,
        problem: (missing > 0).then(|| format!("{missing} source row(s) missing: key 42")),
    };
    Record {
        version: RECORD_VERSION,
        plan_name: "platform".into(),
        plan_path: "examples/plan.toml".into(),
        plan_sha256: "ab".repeat(32),
        started_at: START,
        updated_at: START + 425.0,
        outcome: Outcome::GateFailed,
        stop_reason: Some("gate p99 < 1s failed at step 2".into()),
        phase: PhaseName::Steps,
        next_step: 1,
        last_good_step: Some(0),
        weights: Some(BTreeMap::from([
            ("old".to_string(), 90.0),
            ("new".to_string(), 10.0),
        ])),
        switched: vec!["tasks".into()],
        switching: None,
        timeline: vec![
            event(0.0, PhaseName::Preflight, None, "3 proxies reachable", true),
            event(125.0, PhaseName::Steps, Some(0), "weights new 10%", true),
            event(
                425.0,
                PhaseName::Steps,
                Some(1),
                "gate p99 < 1s failed",
                false,
            ),
        ],
        spans: vec![
            span(
                "step 1 (new 10%)",
                PhaseName::Steps,
                5.0,
                125.0,
                traffic(12_000, 3, 10_800, 1_200),
            ),
            span(
                "step 2 (new 50%)",
                PhaseName::Steps,
                125.0,
                425.0,
                traffic(30_000, 120, 15_000, 15_000),
            ),
        ],
        gates: vec![
            gate(
                0,
                "p99 < 1s",
                Some(0.25),
                1.0,
                true,
                "p99 250ms is under 1s",
            ),
            gate(
                1,
                "error_ratio < 0.0001",
                Some(0.004),
                0.0001,
                false,
                "0.4%",
            ),
            gate(
                1,
                "p99 < 1s",
                Some(1.42),
                1.0,
                false,
                "p99 1.42s is 0.42s over 1s",
            ),
        ],
        lag: BTreeMap::from([(
            "tasks".to_string(),
            LagRecord {
                max_seconds: Some(0.8),
                max_bytes: Some(3 << 20),
            },
        )]),
        switchovers: vec![SwitchoverRecord {
            app: "tasks".into(),
            write_pause_ms: 850.0,
            released_requests: 17,
            sequences: 2,
            steps: vec![
                ("1".into(), "hold writes".into(), 12.0),
                ("2".into(), "wait for the target".into(), 640.0),
            ],
        }],
        verify: vec![VerifyRecord {
            app: "tasks".into(),
            tables: vec![
                table("public.items", 5_000, 5_012, 0, 1),
                table("public.pairs", 500, 500, 0, 0),
            ],
            passed: true,
        }],
        retired: vec![RetiredObject {
            app: "tasks".into(),
            side: "source".into(),
            object: "publication cutover_tasks".into(),
            done: "dropped".into(),
            detail: String::new(),
        }],
        ledger: None,
        past_proxy: BTreeMap::new(),
        client_failed_requests: None,
        error_seconds: Vec::new(),
        replicas: vec![
            ReplicaRecord {
                url: "http://10.0.0.5:9901".into(),
                replica: "proxy-0".into(),
                first_answered_s: 0.4,
                last_answered_s: 425.0,
                epochs: vec![3, 4, 5, 9],
            },
            ReplicaRecord {
                url: "http://10.0.0.6:9901".into(),
                replica: "proxy-1".into(),
                first_answered_s: 130.0,
                last_answered_s: 424.6,
                epochs: vec![4, 5],
            },
        ],
        caches: BTreeMap::from([(
            "weather".to_string(),
            CacheRecord {
                mode: "sync".into(),
                source: "redis://10.0.0.7:6379/0".into(),
                target: "redis://***@10.1.0.7:6379/0".into(),
                converged: true,
                ready_at_s: Some(312.5),
                keys_copied: 100_214,
                bytes_copied: 53_000_000,
                big_keys: 1,
                events: 5_120,
                verify_passes: 31,
                last_verify: Some(crate::cache::Tally {
                    compared: 100_000,
                    complete: true,
                    ..Default::default()
                }),
                ..CacheRecord::default()
            },
        )]),
    }
}

#[test]
fn downtime_is_the_longest_run_of_consecutive_seconds() {
    assert_eq!(longest_run(&[]), 0);
    assert_eq!(longest_run(&[100]), 1);
    assert_eq!(longest_run(&[100, 101, 102]), 3);
    // Two runs (3 and 4 seconds) and a lone second: the longest counts.
    assert_eq!(longest_run(&[10, 11, 12, 20, 30, 31, 32, 33]), 4);
    // Out of order and sampled twice (a resumed run).
    assert_eq!(longest_run(&[33, 31, 10, 32, 31, 30, 11]), 4);
    assert_eq!(longest_run(&[u64::MAX - 1, u64::MAX]), 2);
}

#[test]
fn the_verdict_sums_errors_and_missing_rows() {
    let mut r = record();
    r.error_seconds = vec![
        START as u64 + 130,
        START as u64 + 131,
        START as u64 + 200,
        START as u64 + 201,
        START as u64 + 202,
    ];
    r.verify[0].tables[1].missing = 2;
    let v = verdict(&r);
    assert_eq!(v.downtime_s, 3.0);
    assert_eq!(v.failed_requests, 123);
    assert_eq!(v.lost_writes, 2);
}

#[test]
fn the_ledger_adds_to_lost_writes() {
    let mut r = record();
    r.verify[0].tables[0].missing = 1;
    r.ledger = Some(LedgerCheck {
        acknowledged: 1_000,
        found: 997,
        missing: 3,
        missing_examples: vec!["tasks 17".into(), "tasks 18".into(), "notes 4".into()],
    });
    let v = verdict(&r);
    assert_eq!(v.lost_writes, 4);
    let md = markdown(&r);
    assert!(md.contains("## Acknowledged writes"), "{md}");
    assert!(md.contains("| 1,000 | 997 | 3 |"), "{md}");
    assert!(md.contains("- tasks 17"), "{md}");
}

#[test]
fn writes_lost_past_the_proxy_add_to_lost_writes() {
    let mut r = record();
    let before = verdict(&r).lost_writes;
    for (kind, missing) in [("workers", 2), ("nightly job", 5)] {
        r.past_proxy.insert(
            kind.into(),
            LedgerCheck {
                acknowledged: 100,
                found: 100 - missing,
                missing,
                missing_examples: Vec::new(),
            },
        );
    }
    assert_eq!(verdict(&r).lost_writes, before + 7);
}

#[test]
fn no_errors_no_downtime() {
    let mut r = record();
    r.spans.clear();
    r.verify.clear();
    let v = verdict(&r);
    assert_eq!(v.downtime_s, 0.0);
    assert_eq!(v.failed_requests, 0);
    assert_eq!(v.lost_writes, 0);
}

#[test]
fn markdown_names_the_failed_gate_and_shows_the_figures() {
    let mut r = record();
    r.error_seconds = vec![START as u64 + 300, START as u64 + 301];
    let md = markdown(&r);
    for want in [
        "# Migration report: platform",
        "**Outcome: gate failed**",
        "- Stopped: gate p99 < 1s failed at step 2",
        "- Failed gate: step 2 `p99 < 1s`: p99 1.42s is 0.42s over 1s",
        // The verdict: 2 s of errors, 123 failed requests, nothing lost.
        "| 2 s | 123 | 0 |",
        // Timeline: relative time, the step, FAILED.
        "| +7:05 | steps | step 2 | gate p99 < 1s failed | **FAILED** |",
        "| +0:00 | preflight |  | 3 proxies reachable | ok |",
        // Traffic: counts, ratio, latency in ms, the split per backend.
        "| step 2 (new 50%) | 5m 00s | 30,000 | 120 | 0.4% | 12.0 | 250.0 | 15,000 / 120 | 15,000 / 0 |",
        // Gates in their units.
        "| `p99 < 1s` | 1.4 s | 1 s | **FAIL** | p99 1.42s is 0.42s over 1s |",
        "| `error_ratio < 0.0001` | 0.4% | 0.01% | **FAIL** | 0.4% |",
        "| `p99 < 1s` | 250 ms | 1 s | pass |",
        "| tasks | 800 ms | 3.0 MiB |",
        "### tasks: writes paused 850 ms",
        "| 2 | wait for the target | 640 ms |",
        // The cache: when it was ready, and its figures.
        "| weather | sync | yes, at +5:13 | 100214 | 50.5 MiB | 1 | 0 | 5120 (0 lost subscriptions) | 100000 compared: 0 missing, 0 different, 0 extra | n/a |",
        "| public.items | 5,000 | 5,012 | 0 | 1 | `00112233aabbccdd` | pass |",
        "- Plan: `examples/plan.toml` (sha256 `abababababab`)",
        "- Weights now: new 10%, old 90%",
        "ran for 7m 05s",
        // Every replica, with when it answered and the epochs it served.
        "| proxy-0 | http://10.0.0.5:9901 | +0:00 | +7:05 | 3-5, 9 |",
        "| proxy-1 | http://10.0.0.6:9901 | +2:10 | +7:05 | 4-5 |",
        // What finalize retired.
        "## Replication retired",
        "| tasks | source | publication cutover_tasks | dropped |  |",
    ] {
        assert!(md.contains(want), "missing {want:?} in:\n{md}");
    }
    assert!(
        !md.contains("## Acknowledged writes"),
        "no ledger, no section"
    );
}

#[test]
fn markdown_shows_a_failed_table_with_its_problem() {
    let mut r = record();
    r.verify[0].tables[1].missing = 1;
    r.verify[0].tables[1].passed = false;
    r.verify[0].tables[1].problem = Some("1 source row missing on the target: key 42".into());
    r.verify[0].passed = false;
    let md = markdown(&r);
    assert!(md.contains("### tasks: **FAILED**"), "{md}");
    assert!(
        md.contains("| 1 | 0 | `00112233aabbccdd` | **FAIL** |"),
        "{md}"
    );
    assert!(
        md.contains("- public.pairs: 1 source row missing on the target: key 42"),
        "{md}"
    );
    let s = summary(&r);
    assert!(s.contains("lost writes 1"), "{s}");
    assert!(s.contains("verification failed: tasks public.pairs"), "{s}");
}

#[test]
fn table_cells_cannot_break_the_table() {
    let mut r = record();
    r.gates[2].detail = "a | b\nc".into();
    let md = markdown(&r);
    assert!(md.contains("| a \\| b; c |"), "{md}");
}

#[test]
fn an_empty_run_still_renders() {
    let mut r = record();
    r.timeline.clear();
    r.spans.clear();
    r.gates.clear();
    r.lag.clear();
    r.switchovers.clear();
    r.verify.clear();
    r.outcome = Outcome::Running;
    r.stop_reason = None;
    let md = markdown(&r);
    assert!(md.contains("**Outcome: running**"), "{md}");
    assert!(md.contains("_No gates checked._"), "{md}");
    assert!(md.contains("_No switchover ran._"), "{md}");
    r.replicas.clear();
    assert!(markdown(&r).contains("_No replica recorded._"));
}

#[test]
fn json_has_the_verdict_and_outcome_at_the_top() {
    let mut r = record();
    r.error_seconds = vec![1, 2, 3];
    let v = json(&r);
    assert_eq!(v["outcome"], "gate_failed");
    assert_eq!(v["verdict"]["downtime_s"], 3.0);
    assert_eq!(v["verdict"]["failed_requests"], 123);
    assert_eq!(v["verdict"]["lost_writes"], 0);
    // The whole record is there too.
    assert_eq!(v["plan_name"], "platform");
    assert_eq!(v["gates"][2]["gate"], "p99 < 1s");
    assert_eq!(v["verify"][0]["tables"][0]["changed"], 1);
    assert_eq!(v["replicas"][1]["replica"], "proxy-1");
    assert_eq!(v["replicas"][0]["epochs"], serde_json::json!([3, 4, 5, 9]));
    assert_eq!(v["replicas"][1]["first_answered_s"], 130.0);
}

#[test]
fn summary_is_a_few_lines() {
    let s = summary(&record());
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "platform: gate failed after 7m 05s");
    assert_eq!(lines[1], "stopped: gate p99 < 1s failed at step 2");
    assert_eq!(
        lines[2],
        "verdict: downtime 0 s, failed requests 123, lost writes 0"
    );
    assert!(lines[3].starts_with("failed gate: step 2 `error_ratio < 0.0001`"));
    assert_eq!(
        lines[4],
        "failed gate: step 2 `p99 < 1s`: p99 1.42s is 0.42s over 1s"
    );
    assert_eq!(lines.len(), 5, "{s}");
}

#[test]
fn write_creates_both_files_and_replaces_them() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("reports").join("night-1");
    let mut r = record();
    let (md, js) = write(&r, &dir).expect("write the report");
    assert_eq!(md, dir.join("report.md"));
    assert_eq!(js, dir.join("report.json"));
    let text = std::fs::read_to_string(&md).expect("read report.md");
    assert!(text.starts_with("# Migration report: platform"), "{text}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&js).expect("read report.json"))
        .expect("report.json is JSON");
    assert_eq!(v["verdict"]["failed_requests"], 123);

    r.outcome = Outcome::Succeeded;
    write(&r, &dir).expect("write again");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&js).expect("read report.json"))
        .expect("report.json is JSON");
    assert_eq!(v["outcome"], "succeeded");
    // No temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn write_names_the_path_it_cannot_write() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write a file");
    let err = write(&record(), &file).expect_err("a file is not a directory");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot write the report to {}", file.display())),
        "{msg}"
    );
}

#[test]
fn durations_and_counts_read_well() {
    assert_eq!(duration(0.0), "0 s");
    assert_eq!(duration(0.85), "850 ms");
    assert_eq!(duration(4.24), "4.2 s");
    assert_eq!(duration(3.0), "3 s");
    assert_eq!(duration(12.4), "12 s");
    assert_eq!(duration(125.0), "2m 05s");
    assert_eq!(duration(3725.0), "1h 02m 05s");
    assert_eq!(duration(f64::NAN), "unknown");
    assert_eq!(count(0), "0");
    assert_eq!(count(999), "999");
    assert_eq!(count(1_000), "1,000");
    assert_eq!(count(1_234_567), "1,234,567");
    assert_eq!(percent(0.0001), "0.01%");
    assert_eq!(percent(0.0), "0%");
    assert_eq!(percent(0.5), "50%");
    assert_eq!(timestamp(START), "2023-11-14T22:13:20Z");
}
