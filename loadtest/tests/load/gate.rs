//! The SLO gate, through the binary: a missed part exits 2 and is named.

use std::time::Duration;

use super::server::{TestServer, cutover_load, reply, stderr};

fn slow_server() -> TestServer {
    TestServer::start(|_req, _conn| async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        reply(200, "ok", &[])
    })
}

#[test]
fn a_slow_endpoint_fails_the_gate_and_the_missed_part_is_named() {
    let server = slow_server();
    let url = server.url("/slow");
    let args = ["-r", "40", "-d", "1s", "-c", "16", "-q", "--json", "-"];
    let slo = ["--slo", "p50<50ms,errors<1%"];
    let output = cutover_load(
        &[&args[..], &slo, &[&url]].concat(),
        Duration::from_secs(20),
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("SLO missed: p50<50ms: missed, measured"),
        "{err}"
    );
    assert!(
        !err.contains("errors<1%: missed"),
        "a part that held is not named: {err}"
    );

    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["slo"]["passed"], false);
    assert_eq!(json["slo"]["failures"].as_array().unwrap().len(), 1);
    assert!(json["latency_ms"]["p50"].as_f64().unwrap() >= 150.0);
    assert_eq!(json["rate_target"], 40.0);
    assert_eq!(json["errors"], 0);
}

#[test]
fn the_same_endpoint_passes_a_gate_it_meets() {
    let server = slow_server();
    let url = server.url("/slow");
    let args = [
        "-r",
        "40",
        "-d",
        "1s",
        "-c",
        "16",
        "-q",
        "--slo",
        "p50<2s,errors<1%",
        &url,
    ];
    let output = cutover_load(&args, Duration::from_secs(20));
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        out.contains("SLO        passed: p50<2s, errors<1%"),
        "{out}"
    );
}
