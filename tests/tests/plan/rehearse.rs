//! `cutover rehearse --quick`: the whole six-app migration on this machine through
//! the real binaries (two PostgreSQL clusters, the demo sites, `cutover-proxy`,
//! `cutover-load` with a ledger, the plan runner) ends with exit 0 and a report
//! whose verdict is zero failed requests, zero lost writes and no downtime, with a
//! ledger check that found every acknowledged write and one switchover per
//! database. Afterwards nothing it started still listens.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_rehearsal_fails_no_request_and_loses_no_write() {
    let _db = DATABASES.acquire().await.unwrap();
    let cutover = binary("cutover");
    // Built here so that rehearse finds them beside `cutover`.
    binary("cutover-proxy");
    binary("cutover-load");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let (stdout_path, stderr_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(cutover)
        .args(["rehearse", "--quick", "--rate", "300", "--out"])
        .arg(&out)
        .current_dir(dir.path())
        .env_remove("CUTOVER_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cutover rehearse --quick still running after 240s\nstderr:\n{}",
                read(&stderr_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    let (stdout, stderr) = (read(&stdout_path), read(&stderr_path));
    eprintln!("cutover rehearse --quick took {:.1}s", took.as_secs_f64());
    assert_eq!(
        status.code(),
        Some(0),
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

    // The report is on stdout too, the files beside it, and no password anywhere.
    assert!(stdout.contains("What the users saw"), "{stdout}");
    for f in ["report.md", "load.json", "ledger.jsonl"] {
        assert!(out.join(f).is_file(), "{f} missing from {}", out.display());
    }
    let md = read(&out.join("report.md"));
    for text in [&stdout, &stderr, &md, &text] {
        assert!(
            !text.contains("password="),
            "a DSN with its password was printed"
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
