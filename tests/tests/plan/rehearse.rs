//! `cutover rehearse --quick`: the whole six-app migration on this machine through
//! the real binaries (two PostgreSQL clusters, the demo sites, `cutover-proxy`,
//! `cutover-load` with a ledger, the plan runner) ends with exit 0 and a report
//! whose verdict is zero failed requests, zero lost writes and no downtime, with a
//! ledger check that found every acknowledged write and one switchover per
//! database. Afterwards nothing it started still listens.
//!
//! `cutover rehearse --quick --replicas 3` does the same through a fleet of three
//! proxy replicas behind one local balancer, restarts one during the 50% bake and
//! adds a fourth during a switchover's hold, and its report shows both.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutover_tests::binary;

use crate::common::DATABASES;

/// The clusters' ports, from the progress line "clusters up: old on port A, new on port B".
fn cluster_ports(stderr: &str) -> Vec<u16> {
    stderr
        .lines()
        .find(|l| l.contains("clusters up:"))
        .map(|l| {
            l.split("port ")
                .skip(1)
                .filter_map(|p| {
                    p.split(|c: char| !c.is_ascii_digit())
                        .next()
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A finished `cutover rehearse`: its exit code, output and report directory.
struct Rehearsal {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs `cutover rehearse --quick --rate 300` with `extra` arguments, for at most
/// `within`.
async fn rehearse(extra: &[&str], within: Duration) -> Rehearsal {
    // The proxy and the load generator it starts are this binary's own
    // `proxy-process` and `load-process`: nothing else needs building.
    let cutover = binary("cutover");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let (stdout_path, stderr_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(cutover)
        .args(["rehearse", "--quick", "--rate", "300"])
        .args(extra)
        .arg("--out")
        .arg(&out)
        .current_dir(dir.path())
        .env_remove("CUTOVER_ADMIN_TOKEN")
        // The rehearsal chooses its client programs itself (see below).
        .env_remove("CUTOVER_PG_BIN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = started + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cutover rehearse --quick {extra:?} still running after {}s\nstderr:\n{}",
                within.as_secs(),
                read(&stderr_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "cutover rehearse --quick {extra:?} took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Rehearsal {
        code: status.code(),
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
        out,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_rehearsal_fails_no_request_and_loses_no_write() {
    let _db = DATABASES.acquire().await.unwrap();
    let Rehearsal {
        code,
        stdout,
        stderr,
        out,
        _dir,
    } = rehearse(&["--replicas", "1"], Duration::from_secs(240)).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // pg_dump, pg_restore and psql are those beside the server programs that ran
    // the clusters (not a version-picking wrapper on PATH).
    assert!(
        format!("{stdout}{stderr}").contains("; pg_dump, pg_restore and psql from /"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let text = std::fs::read_to_string(out.join("report.json")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["outcome"], "succeeded", "{text}");
    let verdict = &report["verdict"];
    assert_eq!(verdict["failed_requests"], 0, "{verdict}");
    assert_eq!(verdict["lost_writes"], 0, "{verdict}");
    assert_eq!(verdict["downtime_s"].as_f64(), Some(0.0), "{verdict}");
    let ledger = &report["ledger"];
    assert!(ledger["acknowledged"].as_u64().unwrap() > 0, "{ledger}");
    assert_eq!(ledger["missing"], 0, "{ledger}");
    assert_eq!(ledger["found"], ledger["acknowledged"], "{ledger}");
    let switched: Vec<&str> = report["switchovers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["app"].as_str())
        .collect();
    assert_eq!(switched.len(), 5, "{switched:?}");
    for app in ["ecommerce", "education", "tasks", "medical", "social"] {
        assert!(switched.contains(&app), "{app} not switched: {switched:?}");
    }

    // The writers past the proxy: every acknowledged write found, and an app whose
    // worker got writes acknowledged in both clusters (old before its switchover,
    // new after it).
    let past = &report["past_proxy"];
    for kind in ["workers", "nightly job"] {
        let l = &past[kind];
        assert!(
            l["acknowledged"].as_u64().unwrap_or(0) > 0,
            "{kind}: {past}"
        );
        assert_eq!(l["missing"], 0, "{kind}: {past}");
        assert_eq!(l["found"], l["acknowledged"], "{kind}: {past}");
    }
    let md = read(&out.join("report.md"));
    let rows = writer_rows(&md);
    assert!(rows.len() >= 10, "{md}");
    for r in &rows {
        assert_eq!(r.missing, 0, "{r:?}");
        assert_eq!(r.found, r.acknowledged, "{r:?}");
    }
    let both_sides = rows.iter().any(|old| {
        old.side == "old"
            && old.role.ends_with("_worker")
            && old.acknowledged > 0
            && rows
                .iter()
                .any(|new| new.side == "new" && new.role == old.role && new.acknowledged > 0)
    });
    assert!(
        both_sides,
        "no worker acknowledged on both sides:\n{rows:#?}"
    );

    // The users' own view held, and every part of the rehearsal is in its table:
    // the plan's phases, each switchover, and the hostile clients, whom the proxy
    // closed (request_head) and who came back.
    let rehearsal = &report["rehearsal"];
    let users = &rehearsal["users"];
    assert_eq!(users["problems"], serde_json::json!([]), "{users}");
    assert_eq!(users["unsent"], 0, "{users}");
    assert!(users["p99_ms"].as_f64().unwrap() < 1000.0, "{users}");
    let parts = rehearsal["parts"].as_array().unwrap();
    let count = |part: &str| parts.iter().filter(|p| p["part"] == part).count();
    assert_eq!(count("switchover"), 5, "{parts:#?}");
    assert!(count("plan") >= 4, "{parts:#?}");
    assert_eq!(count("hostile"), 1, "{parts:#?}");
    assert_eq!(count("users"), 1, "{parts:#?}");
    assert!(
        parts.iter().all(|p| p["errors"] == 0),
        "users saw errors: {parts:#?}"
    );
    // Every phase and switchover has seconds of the users' timeline, the last
    // switchover and finalize too (the load runs on until the plan's last second
    // is written).
    for p in parts
        .iter()
        .filter(|p| p["part"] == "plan" || p["part"] == "switchover")
    {
        assert!(p["requests"].as_u64().unwrap() > 0, "{p}");
        assert!(p["p99_ms"].as_f64().is_some(), "no p99 for {p}");
    }
    let hostile = &rehearsal["hostile"];
    let held = hostile["idle"].as_u64().unwrap() + hostile["slow"].as_u64().unwrap();
    assert!(held > 0, "{hostile}");
    assert!(hostile["opened"].as_u64().unwrap() > held, "{hostile}");
    assert!(
        hostile["closed_by_proxy"].as_u64().unwrap() > 0,
        "{hostile}"
    );
    assert!(md.contains("## What users saw, part by part"), "{md}");

    // The weather app's cache: copied and followed while the forecast job wrote to
    // the old one past the proxy, converged before 100%, and equal at the end; the
    // new side served forecasts from it.
    let cache = &rehearsal["cache"];
    assert_eq!(cache["problems"], serde_json::json!([]), "{cache}");
    assert!(
        cache["job"]["acknowledged"].as_u64().unwrap() > 0,
        "{cache}"
    );
    let copy = &report["caches"]["weather"];
    assert!(copy["converged"].as_bool().unwrap(), "{copy}");
    assert!(copy["ready_at_s"].as_f64().is_some(), "{copy}");
    assert!(
        copy["keys_copied"].as_u64().unwrap() >= cache["seeded_keys"].as_u64().unwrap(),
        "{copy}"
    );
    assert_eq!(copy["last_verify"]["missing"], 0, "{copy}");
    assert_eq!(copy["last_verify"]["different"], 0, "{copy}");
    assert!(cache["new_site"]["hits"].as_u64().unwrap() > 0, "{cache}");
    assert_eq!(count("cache"), 1, "{parts:#?}");

    // The WebSocket clients: closed with 1012 when the social app's writes moved,
    // reconnected, never cut, and every acknowledged message found on new.
    let ws = &rehearsal["websockets"];
    let clients = ws["clients"].as_u64().unwrap();
    assert!(ws["opened"].as_u64().unwrap() > clients, "{ws}");
    assert!(ws["closed_by_server"]["1012"].as_u64().unwrap() > 0, "{ws}");
    assert_eq!(ws["cut"], 0, "{ws}");
    assert_eq!(ws["errors"], 0, "{ws}");
    assert_eq!(ws["refused"], serde_json::json!({}), "{ws}");
    let messages = &past["websocket messages"];
    assert_eq!(messages["acknowledged"], ws["acknowledged"], "{past}");
    assert!(messages["acknowledged"].as_u64().unwrap() > 0, "{past}");
    assert_eq!(messages["found"], messages["acknowledged"], "{past}");
    assert_eq!(count("websockets"), 1, "{parts:#?}");

    // TLS where users have TLS: the new side's entry point took HTTPS only, the
    // proxies reached it over TLS (pooled HTTP/1.1 by ALPN), no handshake failed;
    // the new database held TLS sessions only, and refused a plain client and one
    // trusting another CA before the migration.
    let tls = &rehearsal["tls"];
    let handshakes = &tls["site_handshakes"];
    assert!(handshakes["http1"].as_u64().unwrap() > 0, "{tls}");
    assert_eq!(handshakes["failed"], 0, "{tls}");
    assert!(tls["database_sessions_tls"].as_u64().unwrap() > 0, "{tls}");
    assert_eq!(tls["database_sessions_plain"], 0, "{tls}");
    assert_eq!(tls["plain_refused"], true, "{tls}");
    assert!(
        tls["other_ca_refused"]
            .as_str()
            .unwrap()
            .contains("unknown issuer"),
        "{tls}"
    );
    assert_eq!(count("tls"), 1, "{parts:#?}");
    assert!(md.contains("## TLS where users have TLS"), "{md}");

    // The report is on stdout too, the files beside it, and no password anywhere.
    assert!(stdout.contains("What the users saw"), "{stdout}");
    for f in ["report.md", "load.json", "ledger.jsonl", "timeline.jsonl"] {
        assert!(out.join(f).is_file(), "{f} missing from {}", out.display());
    }
    for text in [&stdout, &stderr, &md, &text] {
        assert!(
            !text.contains("password="),
            "a DSN with its password was printed"
        );
        assert!(
            !text.contains("redis://:"),
            "a Redis URL with its password was printed"
        );
    }

    // Everything was stopped: the clusters no longer listen.
    let ports = cluster_ports(&stderr);
    assert_eq!(ports.len(), 2, "{stderr}");
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a cluster still listens on {port}"
        );
    }
}

/// One row of report.md's "Writers past the proxy" table.
#[derive(Debug)]
struct WriterRow {
    role: String,
    side: String,
    acknowledged: u64,
    found: u64,
    missing: u64,
}

/// The per-writer rows of the section "## Writers past the proxy": | App | Role |
/// Side | Writes tried | Acknowledged | Looked up on | Found | Missing | ...
fn writer_rows(md: &str) -> Vec<WriterRow> {
    let Some(section) = md.split("## Writers past the proxy").nth(1) else {
        return Vec::new();
    };
    let section = section.split("\n## ").next().unwrap_or("");
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let n = |i: usize| cells.get(i).and_then(|c| c.parse::<u64>().ok());
            (cells.len() >= 8 && cells.get(1).is_some_and(|r| r.contains('_'))).then_some(())?;
            Some(WriterRow {
                role: cells[1].to_string(),
                side: cells[2].to_string(),
                acknowledged: n(4)?,
                found: n(6)?,
                missing: n(7)?,
            })
        })
        .collect()
}

/// The replicas' admin port, from the progress line "... (admin 127.0.0.2, ... port P, ...".
fn admin_port(stderr: &str) -> Option<u16> {
    let line = stderr
        .lines()
        .find(|l| l.contains("cutover-proxy replicas ready"))?;
    let rest = line.split(" port ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_survives_a_restart_and_a_scale_out_mid_migration() {
    let _db = DATABASES.acquire().await.unwrap();
    let r = rehearse(&[], Duration::from_secs(180)).await;
    let all = format!("stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{all}");

    let text = std::fs::read_to_string(r.out.join("report.json")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["outcome"], "succeeded", "{text}");
    let verdict = &report["verdict"];
    assert_eq!(verdict["failed_requests"], 0, "{verdict}\n{all}");
    assert_eq!(verdict["lost_writes"], 0, "{verdict}");
    assert_eq!(report["ledger"]["missing"], 0, "{}", report["ledger"]);

    // The fleet's own part: a restart of proxy-0 and proxy-3 added, both clean.
    let fleet = &report["rehearsal"]["fleet"];
    assert_eq!(fleet["replicas_at_start"], 3, "{fleet}");
    assert_eq!(fleet["replicas_at_end"], 4, "{fleet}");
    assert_eq!(fleet["problems"], serde_json::json!([]), "{fleet}");
    let events = fleet["events"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["replica"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("restart", "proxy-0"), ("add", "proxy-3")],
        "{fleet}"
    );
    for e in events {
        assert!(e["error"].is_null(), "{e}");
        assert!(e["at_s"].as_f64().unwrap() > 0.0, "{e}");
        let steps = e["steps"].as_array().unwrap();
        assert!(steps.len() >= 3, "{e}");
        assert!(
            steps
                .iter()
                .any(|s| s["what"].as_str().unwrap().contains("/readyz 200")),
            "{e}"
        );
    }
    assert!(
        events[0]["why"].as_str().unwrap().contains("50%"),
        "{fleet}"
    );
    assert!(
        events[1]["why"].as_str().unwrap().contains("hold"),
        "{fleet}"
    );
    assert!(
        events[0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["what"].as_str().unwrap().contains("SIGTERM")),
        "{fleet}"
    );
    // The controller heard from the added replica too.
    let replicas: Vec<&str> = report["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["replica"].as_str())
        .collect();
    assert!(replicas.contains(&"proxy-3"), "{replicas:?}");

    let md = read(&r.out.join("report.md"));
    for text in ["## The proxy fleet", "restart proxy-0", "add proxy-3"] {
        assert!(md.contains(text), "{text:?} missing from report.md:\n{md}");
    }
    assert!(r.stderr.contains("fleet: restart proxy-0"), "{all}");
    assert!(r.stderr.contains("fleet: add proxy-3"), "{all}");
    assert!(r.out.join("logs").join("proxy-0.start2.log").is_file());
    assert!(r.out.join("logs").join("balancer.log").is_file());

    // Nothing it started still listens: the four replicas' admin APIs.
    let port = admin_port(&r.stderr).unwrap_or_else(|| panic!("no admin port in:\n{all}"));
    for last in 2..=5u8 {
        assert!(
            std::net::TcpStream::connect((std::net::Ipv4Addr::new(127, 0, 0, last), port)).is_err(),
            "a replica still listens on 127.0.0.{last}:{port}"
        );
    }
    for port in cluster_ports(&r.stderr) {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a cluster still listens on {port}"
        );
    }
}
