//! The command line: clear errors for bad flags (exit 1), an unreachable target is
//! reported and fails the run, and --help documents the contract.

use std::time::Duration;

use super::server::{cutover_load, stderr};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs with `args`, expects exit 1 and an error line that contains every `needle`.
fn refused(args: &[&str], needles: &[&str]) {
    let output = cutover_load(args, LIMIT);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in: {err}"
        );
    }
    assert!(
        output.stdout.is_empty(),
        "{args:?}: no report on a usage error"
    );
}

#[test]
fn bad_flags_give_clear_errors_naming_the_flag_or_file() {
    let url = "http://127.0.0.1:9/";
    refused(&["-r", "0", url], &["--rate", "above 0"]);
    refused(&["--rate", "fast", url], &["--rate", "requests per second"]);
    refused(&["not-a-url"], &["<URL>", "not-a-url", "scheme"]);
    refused(&["ftp://127.0.0.1/"], &["<URL>", "http or https"]);
    refused(&["-d", "10", url], &["--duration", "unit is missing"]);
    refused(&["--timeout", "0s", url], &["--timeout"]);
    refused(&["--slo", "p99<fast", url], &["--slo", "p99<fast"]);
    refused(&["--slo", "latency<1s", url], &["--slo", "unknown metric"]);
    refused(&["-H", "no colon here", url], &["--header", "Name: value"]);
    refused(
        &["--cacert", "/nonexistent/ca.pem", "https://127.0.0.1:9/"],
        &["--cacert", "/nonexistent/ca.pem"],
    );
    refused(
        &["--scenario", "/nonexistent/mix.toml", url],
        &["--scenario", "/nonexistent/mix.toml", "cannot read"],
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[request]]\npath = \"/a\"\nweigth = 3\n").unwrap();
    refused(
        &["--scenario", bad.to_str().unwrap(), url],
        &["bad.toml", "weigth"],
    );
    let writes = dir.path().join("writes.toml");
    std::fs::write(&writes, "[[request]]\nmethod = \"POST\"\nledger = true\n").unwrap();
    refused(
        &["--scenario", writes.to_str().unwrap(), url],
        &["--ledger", "writes.toml"],
    );
}

#[test]
fn an_unreachable_target_is_reported_and_fails_the_run() {
    // A port that was bound and released: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/");
    let output = cutover_load(&["-n", "10", "-c", "2", "-q", "--json", "-", &url], LIMIT);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("no request got a response"), "{err}");
    assert!(err.contains("connect 10"), "{err}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["requests"], 10);
    assert_eq!(json["error_kinds"]["connect"], 10);
    assert_eq!(json["error_ratio"], 1.0);
}

#[test]
fn help_explains_the_flags_and_exit_codes() {
    let output = cutover_load(&["--help"], LIMIT);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--rate",
        "--duration",
        "--requests",
        "--warmup",
        "--connections",
        "--method",
        "--header",
        "--body",
        "--body-file",
        "--timeout",
        "--http2",
        "--insecure",
        "--cacert",
        "--slo",
        "--json",
        "--scenario",
        "--ledger",
        "--threads",
        "Exit codes",
        "coordinated omission",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
