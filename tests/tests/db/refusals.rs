//! What makes the switchover refuse, and how it comes back: a table created on
//! the source after the sync (its rows would be left behind), and a session that
//! holds a lock the block needs (the write pause would outlast its budget). Each
//! time nothing moves, the source takes writes again, no hold is left, and after
//! the cause is gone the switchover goes through.

use std::time::{Duration, Instant};

use cutover_tests::Pair;

use crate::common::{SwitchSite, cutover};

async fn site(setup: &str) -> SwitchSite {
    let pair = Pair::start_seeded(50).await;
    if !setup.is_empty() {
        pair.old.sql("app", setup).await;
    }
    SwitchSite::start(pair).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_after_the_sync_is_named_and_sync_adds_it() {
    // A materialized view: replication does not carry it, the switchover
    // refreshes it on the target.
    let site = site("CREATE MATERIALIZED VIEW item_count AS SELECT count(*) AS n FROM items").await;
    site.pair
        .old
        .sql(
            "app",
            "CREATE TABLE audit (id bigserial PRIMARY KEY, what text NOT NULL);
             GRANT INSERT, SELECT ON audit TO app; GRANT USAGE ON SEQUENCE audit_id_seq TO app;
             INSERT INTO audit (what) SELECT 'row ' || g FROM generate_series(1, 25) g;",
        )
        .await;
    let run = site.switchover("10s", &[]).await.fails();
    assert!(run.all().contains("public.audit"), "{}", run.all());
    assert!(run.all().contains("cutover db sync"), "{}", run.all());
    site.assert_nothing_moved().await;

    // sync copies its schema, publishes it and copies its rows; it is blocked on
    // the target like the others until the switchover.
    let sync = cutover(&["db", "sync"], &site.pair.env()).await.ok();
    assert!(sync.all().contains("audit"), "{}", sync.all());
    site.switchover("10s", &[]).await.ok();
    let n: i64 = site
        .pair
        .new
        .connect("app")
        .await
        .query_one("SELECT count(*) FROM audit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 25);
    let target = site.pair.new.connect("app").await;
    let (view, rows): (i64, i64) = {
        let r = target
            .query_one(
                "SELECT (SELECT n FROM item_count), (SELECT count(*) FROM items)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        view, rows,
        "the materialized view was refreshed on the target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_the_block_needs_keeps_the_pause_under_its_ceiling_and_is_undone() {
    let site = site("").await;
    site.pair
        .old
        .sql("app", "CREATE TABLE notes (id int PRIMARY KEY)")
        .await;
    site.pair
        .new
        .sql("app", "CREATE TABLE notes (id int PRIMARY KEY)")
        .await;
    cutover(&["db", "sync"], &site.pair.env()).await.ok();
    // A maintenance session holds a lock that lets readers in but not the
    // trigger (nor writers): it is not a write in flight, so the block may not
    // end it, and must give up within the budget.
    let locker = site.pair.old.connect("app").await;
    locker
        .batch_execute(
            "SET application_name = 'nightly-reindex'; BEGIN; LOCK TABLE notes IN SHARE MODE",
        )
        .await
        .unwrap();
    let pid: i32 = locker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let t = Instant::now();
    let run = site.switchover("3s", &[]).await.fails();
    let took = t.elapsed();
    let out = run.all();
    assert!(out.contains("nightly-reindex"), "{out}");
    assert!(out.contains(&format!("pid {pid}")), "{out}");
    assert!(out.contains("undone"), "{out}");
    // The whole command, preparation included, stays near the budget; the hold
    // itself is under it (the proxies would answer 503 past it).
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let held_ms: f64 = out
        .split("writes were held ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pause in: {out}"));
    eprintln!("refused after holding writes {held_ms:.0} ms (budget 3 s), command took {took:?}");
    assert!(held_ms < 3000.0, "held {held_ms} ms: {out}");
    site.assert_nothing_moved().await;

    locker.batch_execute("COMMIT").await.unwrap();
    site.switchover("3s", &[]).await.ok();
}
