//! The end-to-end switchover under load: the demo app on each side behind the real
//! `cutover-proxy` (writes on old), a client writing at ≥ 300/s and recording every
//! acknowledged id, `cutover db switchover --reverse` mid-load, then `cutover db
//! rollback --reverse` under load again. Nothing fails, nothing is lost.

use std::time::{Duration, Instant};

use cutover_tests::{App, ProxyBuilder, assert_all_on, eventually, two_backend_config};

use crate::common::{APP_PASSWORD, HEAVY, Pair, cutover};
use crate::load::{Ledger, Load};

const HOST: &str = "shop.test";
/// Writes per second: 16 workers × 30.
const WORKERS: usize = 16;
const RATE: f64 = 30.0;

/// Waits until the load has acknowledged `more` writes beyond `from`.
async fn until_acked(load: &Load, from: usize, more: usize) {
    eventually(
        Duration::from_secs(30),
        "the load to make progress",
        || async { (load.acked() >= from + more).then_some(()) },
    )
    .await;
}

fn report(what: &str, ledger: &Ledger, t0: Instant, v: &serde_json::Value) -> f64 {
    let ms = |k: &str| Duration::from_secs_f64(v[k].as_f64().unwrap() / 1000.0);
    let pause = v["write_pause_ms"].as_f64().unwrap();
    let (n, p50, max) = ledger.latency_between(t0 + ms("hold_started_ms"), t0 + ms("released_ms"));
    eprintln!(
        "{what}: write pause {pause:.0} ms (controller, hold → release); writes started during the hold: {n}, \
         latency p50 {:.0} ms, max {:.0} ms; load {:.0} writes/s, {} reads, {} acknowledged",
        p50.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0,
        ledger.write_rate(),
        ledger.reads,
        ledger.acked.len()
    );
    pause
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switchover_and_rollback_under_load_lose_nothing_and_fail_nothing() {
    let _heavy = HEAVY.acquire().await.unwrap();
    let pair = Pair::start().await;
    pair.old
        .sql(
            "app",
            "INSERT INTO items (body) SELECT 'seed ' || g FROM generate_series(1, 1000) g;
             CREATE SEQUENCE invoice_no START 5000; SELECT nextval('invoice_no');",
        )
        .await;
    let env = pair.env();
    cutover(&["db", "check"], &env).await.ok();
    cutover(&["db", "sync"], &env).await.ok();

    let old_app = App::start("old", &Pair::app_dsn(&pair.old));
    let new_app = App::start("new", &Pair::app_dsn(&pair.new));
    let cfg = two_backend_config(
        old_app.addr,
        new_app.addr,
        &[HOST],
        (50.0, 50.0),
        "writes = \"old\"",
    );
    // The admin API wants a token: the switchover reads it from the environment,
    // the rollback from a file.
    let token = "adm-tok-5Vb2";
    let proxy = ProxyBuilder::new(cfg)
        .env("CUTOVER_ADMIN_TOKEN", token)
        .start()
        .unwrap();
    let token_file = proxy.dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let token_file = token_file.display().to_string();
    let mut switch_env = env.clone();
    switch_env.push(("CUTOVER_ADMIN_TOKEN".into(), token.into()));
    let admin = format!("http://{}", proxy.admin);
    let switch_args = |cmd: &'static str| {
        vec![
            "db",
            cmd,
            "--proxy",
            admin.as_str(),
            "--route",
            HOST,
            "--reverse",
            "--max-pause",
            "10s",
            "--json",
        ]
    };

    // Phase 1: switchover mid-load.
    let load = Load::start(proxy.http, HOST, WORKERS, RATE, Duration::from_secs(60));
    until_acked(&load, 0, 900).await;
    let t0 = Instant::now();
    let run = cutover(&switch_args("switchover"), &switch_env).await.ok();
    assert!(!run.all().contains(token));
    let before = load.acked();
    until_acked(&load, before, 900).await;
    let ledger = load.stop().await;
    let v = run.json();
    let pause = report("switchover", &ledger, t0, &v);
    assert!(
        run.stderr
            .contains("step  5: record the fence, wait until applied done in"),
        "{}",
        run.stderr
    );
    assert!(
        ledger.failures.is_empty(),
        "{} failed: {:?}",
        ledger.failures.len(),
        &ledger.failures[..ledger.failures.len().min(10)]
    );
    // The switchover happened under load, not beside an idle client: how many
    // writes a second this machine carries is a benchmark's figure, not this test's.
    assert!(
        ledger.write_rate() >= 100.0,
        "only {:.0} writes/s",
        ledger.write_rate()
    );
    assert!(pause < 10_000.0);
    assert_eq!(v["writes"], "new");
    // The reverse link applies the target's writes to the source right after the
    // release: replication, which the fence witness must not take for a writer
    // that got past the block.
    assert!(
        !v["warnings"].to_string().contains("past its block"),
        "{:#}",
        v["warnings"]
    );
    // Every table of the source refuses writes now, and the target's (blocked
    // since the sync) take them.
    let tables = v["blocked"]["tables"].as_u64().unwrap();
    assert!(tables >= 1, "{v:#}");
    assert_eq!(v["reopened"].as_u64(), Some(tables), "{v:#}");
    // Who could lift the block is read after the pause and still reported: the
    // cluster's superuser at least.
    let lifters = v["blocked"]["can_lift"].as_array().unwrap();
    assert!(lifters.iter().any(|r| r == "postgres"), "{v:#}");
    assert_eq!(v["sequences"], 2);
    assert_eq!(proxy.status().await["routes"][0]["writes"], "new");
    assert_all_on(&pair.new, &ledger.acked, "the switchover's load").await;

    // The source rejects the application's writes; the target takes them, with
    // ids past every one acknowledged (the sequences were copied).
    Pair::assert_app_read_only(&pair.old).await;
    let max_acked = ledger.acked.iter().map(|(id, _)| *id).max().unwrap();
    let app_new = pair
        .new
        .connect_as("app", APP_PASSWORD, "app")
        .await
        .unwrap();
    let id: i32 = app_new
        .query_one(
            "INSERT INTO items (body) VALUES ('direct') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        i64::from(id) > max_acked,
        "id {id} reuses the source's range (max {max_acked})"
    );
    let r = proxy
        .client()
        .send(proxy.http, http::Method::POST, HOST, "/items", &[], "after")
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.header("x-app")),
        (201, "new"),
        "{}",
        r.body
    );
    assert!(r.body.parse::<i64>().unwrap() > max_acked);
    let invoice: i64 = pair
        .new
        .connect("app")
        .await
        .query_one("SELECT last_value FROM invoice_no", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(invoice, 5000, "a sequence no column owns was copied too");

    // Reverse replication carries the target's writes back: verify passes once
    // the last of them arrives.
    eventually(
        Duration::from_secs(20),
        "verify after the switchover",
        || async { (cutover(&["db", "verify"], &env).await.code == 0).then_some(()) },
    )
    .await;
    let status = cutover(&["db", "status", "--json"], &env).await.ok().json();
    assert_eq!(status["link"]["name"], "cutover_reverse");

    // Phase 2: roll back under load; nothing written on the target is lost.
    let load = Load::start(proxy.http, HOST, WORKERS, RATE, Duration::from_secs(60));
    until_acked(&load, 0, 900).await;
    let t0 = Instant::now();
    // Human output this time.
    let mut args = switch_args("rollback");
    args.pop();
    args.extend(["--proxy-token-file", token_file.as_str()]);
    let run = cutover(&args, &env).await.ok();
    assert!(!run.all().contains(token));
    let ran_for = t0.elapsed();
    let before = load.acked();
    until_acked(&load, before, 900).await;
    let back = load.stop().await;
    eprintln!(
        "rollback, as printed:\n{}\n{}",
        run.stderr.trim_end(),
        run.stdout.trim_end()
    );
    assert!(
        run.stdout
            .contains("rollback done: writes now go to \"old\" (source database)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "replication cutover runs source → target: another `cutover db switchover` can follow"
        ),
        "{}",
        run.stdout
    );
    let pause_line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("write pause: "))
        .unwrap();
    let (n, p50, max) = back.latency_between(t0, t0 + ran_for);
    eprintln!(
        "rollback: {pause_line}; writes started while the command ran: {n}, latency p50 {:.0} ms, max {:.0} ms; \
         load {:.0} writes/s",
        p50.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0,
        back.write_rate()
    );
    assert!(
        back.failures.is_empty(),
        "{} failed: {:?}",
        back.failures.len(),
        &back.failures[..back.failures.len().min(10)]
    );
    assert_eq!(proxy.status().await["routes"][0]["writes"], "old");
    let mut everything = ledger.acked.clone();
    everything.extend(back.acked.iter().cloned());
    assert_all_on(&pair.old, &everything, "the source after the rollback").await;
    let app_old = pair
        .old
        .connect_as("app", APP_PASSWORD, "app")
        .await
        .unwrap();
    app_old
        .execute("INSERT INTO items (body) VALUES ('writable again')", &[])
        .await
        .unwrap();
    Pair::assert_app_read_only(&pair.new).await;
    eventually(
        Duration::from_secs(20),
        "verify after the rollback",
        || async { (cutover(&["db", "verify"], &env).await.code == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        cutover(&["db", "status", "--json"], &env).await.ok().json()["link"]["name"],
        "cutover"
    );
}
