//! `cache verify` against two servers with known differences, one of each kind
//! it must see; then `sync --once` repairs them all (without keyspace
//! notifications, which `--once` does not need) and `verify` passes.

use cutover_tests::RedisServer;

use crate::common::{cutover, cutover_bin, num, verify_json};
use crate::compare::{assert_same, data_differences, ttl_differences};

#[test]
fn verify_reports_differences_and_fails() {
    cutover_bin();
    let source = RedisServer::start();
    let target = RedisServer::start();
    let mut src = source.conn();
    let mut dst = target.conn();
    for conn in [&mut src, &mut dst] {
        conn.cmd(&["SET", "same:string", "equal"]).ok();
        conn.cmd(&["HSET", "same:hash", "a", "1", "b", "2"]).ok();
        conn.cmd(&["RPUSH", "same:list", "x", "y", "z"]).ok();
        conn.cmd(&["SET", "same:ttl", "v", "PX", "600000"]).ok();
    }
    src.cmd(&["SET", "only-on-source", "1"]).ok();
    src.cmd(&["HSET", "different:value", "field", "source"])
        .ok();
    dst.cmd(&["HSET", "different:value", "field", "target"])
        .ok();
    src.cmd(&["SET", "different:ttl", "v", "PX", "600000"]).ok();
    dst.cmd(&["SET", "different:ttl", "v", "PX", "610000"]).ok();
    src.cmd(&["RPUSH", "different:type", "1"]).ok();
    dst.cmd(&["SET", "different:type", "1"]).ok();
    dst.cmd(&["SADD", "only-on-target", "1"]).ok();

    // The suite's own comparison sees them too (it is what the other tests trust).
    let data = data_differences(&source, &target, 10);
    assert_eq!(data.len(), 4, "{data:#?}");
    let ttls = ttl_differences(&source, &target, 1_000, 10);
    assert!(
        ttls.iter().any(|d| d.starts_with("different:ttl:")),
        "{ttls:#?}"
    );

    let (run, report) = verify_json(&source.url, &target.url);
    let run = run.fails();
    assert_eq!(report["converged"], false, "{}", run.stdout);
    assert_eq!(report["missing"], 1, "{report}");
    assert_eq!(report["extra"], 1, "{report}");
    // Value, TTL (10 s off, tolerance 1 s) and type.
    assert_eq!(num(&report, "different"), 3, "{report}");
    assert!(num(&report, "compared") >= 7, "{report}");

    // A tolerance wider than the 10 s lets the TTL difference pass.
    let tolerant = cutover(&[
        "cache",
        "verify",
        "--source",
        &source.url,
        "--target",
        &target.url,
        "--ttl-tolerance",
        "15s",
        "--json",
    ])
    .fails()
    .json();
    assert_eq!(num(&tolerant, "different"), 2, "{tolerant}");

    // Without --json: a summary for people, and the same verdict.
    let plain = cutover(&[
        "cache",
        "verify",
        "--source",
        &source.url,
        "--target",
        &target.url,
    ])
    .fails();
    assert!(!plain.all().trim().is_empty(), "verify printed nothing");

    cutover(&[
        "cache",
        "sync",
        "--source",
        &source.url,
        "--target",
        &target.url,
        "--once",
    ])
    .ok();
    let (run, report) = verify_json(&source.url, &target.url);
    run.ok();
    assert_eq!(report["converged"], true, "{report}");
    for field in ["missing", "different", "extra"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    assert_same(&source, &target);
    assert_eq!(target.cmd(&["EXISTS", "only-on-target"]).int(), 0);
}

/// `--sample N` compares N random keys each way: equal sides converge, and the
/// answer says it was a sample.
#[test]
fn a_sampled_verify_of_equal_sides_converges_and_says_it_sampled() {
    cutover_bin();
    let source = RedisServer::start();
    let target = RedisServer::start();
    for server in [&source, &target] {
        let mut conn = server.conn();
        for i in 0..300 {
            conn.cmd(&["SET", &format!("k:{i}"), "v"]).ok();
        }
    }
    let run = cutover(&[
        "cache",
        "verify",
        "--source",
        &source.url,
        "--target",
        &target.url,
        "--sample",
        "50",
        "--json",
    ]);
    let v = run.json();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(v["converged"], true, "{v}");
    assert_eq!(v["complete"], false, "{v}");
    let compared = num(&v, "compared");
    assert!(compared > 0 && compared <= 50, "{v}");
}
