//! `compare_at_fence`: both sides compared inside snapshots opened at the
//! switchover's fence, by primary key ranges. Copies come from the library's
//! `sync` (real logical replication) or from the same SQL run on both sides, so that each
//! case sets the target up exactly; later writes come from other connections while
//! the snapshots stay open.

use std::time::{Duration, Instant};

use cutover_controller::{
    Db, FenceCheck, FenceMethod, FenceOptions, FenceTable, Quiet, SyncOptions,
    close_fence_snapshot, compare_at_fence, open_fence_snapshot, sync,
};
use cutover_tests::{APP_SCHEMA, Postgres, eventually};

use crate::common::{HEAVY, Pair};

/// A composite key with a text column, a table keyed by timestamp and float (whose
/// bounds must survive the round trip through text), and one without a key.
const MORE: &str = "
    CREATE TABLE pairs (a int, b text, v float8, PRIMARY KEY (a, b));
    CREATE TABLE readings (at timestamptz, x float8, note text, PRIMARY KEY (at, x));
    CREATE TABLE log (line text, n int);";

/// The same rows for both sides: `items` with even ids (so that a row can be added
/// between two), values that print alike only with the session's settings.
const ROWS: &str = "
    INSERT INTO items (id, body, created)
        SELECT g, 'row ' || g, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1.5 second'
        FROM generate_series(2, 2000, 2) g;
    INSERT INTO pairs SELECT g % 37, 'k' || g, g / 3.0 FROM generate_series(1, 500) g;
    INSERT INTO readings
        SELECT '2024-01-01 00:00:00+00'::timestamptz + (g % 50) * interval '1.000001 second', g / 7.0, 'n' || g
        FROM generate_series(1, 400) g;
    INSERT INTO log SELECT 'line ' || g, g FROM generate_series(1, 100) g;";

async fn on_both(pair: &Pair, sql: &str) {
    pair.old.sql("app", sql).await;
    pair.new.sql("app", sql).await;
}

/// Two sides set up alike with [`MORE`] and [`ROWS`].
async fn alike() -> Pair {
    let pair = Pair::start().await;
    pair.old.sql("app", MORE).await;
    pair.new.sql("app", &format!("{APP_SCHEMA}\n{MORE}")).await;
    on_both(&pair, ROWS).await;
    pair
}

async fn open(pair: &Pair) -> (Db, Db) {
    let (src, tgt) = pair.dbs().await;
    open_fence_snapshot(&src).await.unwrap();
    open_fence_snapshot(&tgt).await.unwrap();
    (src, tgt)
}

async fn compare(src: &Db, tgt: &Db, chunk_rows: u64) -> FenceCheck {
    let opts = FenceOptions {
        chunk_rows,
        ..FenceOptions::default()
    };
    compare_at_fence(src, tgt, &opts).await.unwrap()
}

/// Opens both snapshots now, compares, closes.
async fn at_fence(pair: &Pair, chunk_rows: u64) -> FenceCheck {
    let (src, tgt) = open(pair).await;
    let check = compare(&src, &tgt, chunk_rows).await;
    close_fence_snapshot(&src).await;
    close_fence_snapshot(&tgt).await;
    check
}

fn table<'a>(check: &'a FenceCheck, name: &str) -> &'a FenceTable {
    check
        .tables
        .iter()
        .find(|t| t.check.table == name)
        .unwrap_or_else(|| panic!("no check for {name}: {check:#?}"))
}

/// Every table passes but those named.
#[track_caller]
fn only_failing(check: &FenceCheck, names: &[&str]) {
    for t in &check.tables {
        let expected = names.contains(&t.check.table.as_str());
        assert_eq!(!t.check.passed, expected, "{t:#?}");
    }
    assert_eq!(check.passed, names.is_empty());
}

async fn count(pg: &Postgres, sql: &str) -> i64 {
    pg.connect("app")
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_synced_copy_is_equal_at_the_fence_range_by_range() {
    let pair = Pair::start_seeded(50_000).await;
    pair.old
        .sql(
            "app",
            "CREATE TABLE pairs (a int, b text, v float8, PRIMARY KEY (a, b));
             INSERT INTO pairs SELECT g % 37, 'k' || g, g / 3.0 FROM generate_series(1, 500) g;",
        )
        .await;
    let (s, t) = pair.dbs().await;
    let synced = sync(&s, &t, "cutover", &SyncOptions::default(), &Quiet)
        .await
        .unwrap();
    assert!(synced.ready, "{synced:?}");
    eventually(Duration::from_secs(30), "the copy to catch up", || async {
        let n = count(&pair.new, "SELECT count(*) FROM items").await;
        (n == 50_000).then_some(())
    })
    .await;

    let (src, tgt) = open(&pair).await;
    let check = compare(&src, &tgt, 1_000).await;
    assert!(check.passed, "{check:#?}");
    assert_eq!(check.rows_checked, 50_500);
    let items = table(&check, "public.items");
    assert_eq!(items.method, FenceMethod::KeyRanges);
    assert_eq!(
        (items.check.source_rows, items.check.target_rows),
        (50_000, 50_000)
    );
    // 50 full ranges, and the last one, open above, that is empty here.
    assert_eq!(items.chunks, 51, "{items:#?}");
    let pairs = table(&check, "public.pairs");
    assert_eq!((pairs.check.source_rows, pairs.chunks), (500, 1));
    assert_eq!(check.chunks, 52);

    // The default range is 10,000 rows; the same snapshots give the same verdict.
    let again = compare_at_fence(&src, &tgt, &FenceOptions::default())
        .await
        .unwrap();
    assert!(again.passed, "{again:#?}");
    assert_eq!(table(&again, "public.items").chunks, 6);
    assert_eq!(
        table(&again, "public.items").check.source_checksum,
        items.check.source_checksum
    );

    // Writes after the fence: on the source (replicated to the target) and on the
    // target itself. Both are visible outside the snapshots, not in them.
    pair.old
        .sql(
            "app",
            "INSERT INTO items (body) SELECT 'after ' || g FROM generate_series(1, 300) g",
        )
        .await;
    pair.new
        .sql(
            "app",
            // The sync blocks the target's writes until a switchover; a
            // replication-role session writes the way replication does.
            "SET session_replication_role = replica; \
             INSERT INTO items (id, body) VALUES (900001, 'on the target'); \
             UPDATE items SET body = 'edited' WHERE id = 7; DELETE FROM items WHERE id = 8; \
             RESET session_replication_role;",
        )
        .await;
    eventually(
        Duration::from_secs(30),
        "the later writes to arrive",
        || async {
            let n = count(&pair.new, "SELECT count(*) FROM items").await;
            (n == 50_300).then_some(())
        },
    )
    .await;
    let check = compare(&src, &tgt, 1_000).await;
    assert!(check.passed, "{check:#?}");
    assert_eq!(check.rows_checked, 50_500);
    close_fence_snapshot(&src).await;
    close_fence_snapshot(&tgt).await;

    // A fence taken now sees the target's own writes.
    let later = at_fence(&pair, 1_000).await;
    only_failing(&later, &["public.items"]);
    let items = table(&later, "public.items");
    assert_eq!(
        (items.check.missing, items.check.changed, items.extra),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn differences_are_named_by_key_in_their_table() {
    let pair = alike().await;
    let check = at_fence(&pair, 64).await;
    only_failing(&check, &[]);
    assert_eq!(check.rows_checked, 1000 + 500 + 400 + 100);
    let readings = table(&check, "public.readings");
    // Every row falls in exactly one range, whatever the bounds' types.
    assert_eq!(readings.check.source_rows, 400);
    assert!(readings.chunks > 5, "{readings:#?}");
    let log = table(&check, "public.log");
    assert_eq!((log.method, log.chunks), (FenceMethod::WholeTable, 1));
    assert_eq!(table(&check, "public.pairs").method, FenceMethod::KeyRanges);

    // A row deleted on the target is a lost write, named by its key.
    pair.new.sql("app", "DELETE FROM items WHERE id = 42").await;
    let check = at_fence(&pair, 64).await;
    only_failing(&check, &["public.items"]);
    let items = &table(&check, "public.items").check;
    assert_eq!((items.missing, items.changed), (1, 0));
    assert_eq!((items.source_rows, items.target_rows), (1000, 999));
    assert_eq!(
        items.problem.as_deref(),
        Some("1 source row missing on the target (lost writes): key 42 missing")
    );

    // A row changed on the target, in a table with a composite key.
    pair.new
        .sql("app", "UPDATE pairs SET v = -1 WHERE a = 3 AND b = 'k3'")
        .await;
    let check = at_fence(&pair, 64).await;
    only_failing(&check, &["public.items", "public.pairs"]);
    let pairs = &table(&check, "public.pairs").check;
    assert_eq!((pairs.missing, pairs.changed), (0, 1));
    assert_eq!(
        pairs.problem.as_deref(),
        Some("1 changed: key (3,k3) changed")
    );

    // Rows only on the target: between two source keys, and past the last one.
    pair.new
        .sql(
            "app",
            "INSERT INTO items (id, body) VALUES (501, 'between'), (5001, 'past the end')",
        )
        .await;
    let check = at_fence(&pair, 64).await;
    let items = table(&check, "public.items");
    assert_eq!(
        (items.check.missing, items.check.changed, items.extra),
        (1, 0, 2)
    );
    let problem = items.check.problem.as_deref().unwrap();
    for key in ["42 missing", "501 extra", "5001 extra"] {
        assert!(problem.contains(key), "{problem}");
    }

    // A table without a primary key is compared, and reported, as a whole.
    pair.new
        .sql("app", "INSERT INTO log VALUES ('only on the target', 0)")
        .await;
    let check = at_fence(&pair, 64).await;
    only_failing(&check, &["public.items", "public.pairs", "public.log"]);
    let log = table(&check, "public.log");
    assert_eq!((log.check.source_rows, log.check.target_rows), (100, 101));
    assert_eq!(log.extra, 1);
    let problem = log.check.problem.as_deref().unwrap();
    assert!(problem.starts_with("no primary key"), "{problem}");

    // A table absent from the target loses every row and is named.
    pair.old
        .sql(
            "app",
            "CREATE TABLE orphans (id int PRIMARY KEY); INSERT INTO orphans SELECT generate_series(1, 30);",
        )
        .await;
    let check = at_fence(&pair, 64).await;
    let orphans = table(&check, "public.orphans");
    assert!(!orphans.check.passed);
    assert_eq!(orphans.method, FenceMethod::NotCompared);
    assert_eq!((orphans.check.missing, orphans.chunks), (30, 0));
    assert_eq!(
        orphans.check.problem.as_deref(),
        Some("missing on the target")
    );
}

#[tokio::test]
async fn the_fence_snapshot_ignores_writes_made_after_it() {
    let pair = alike().await;

    // Without a snapshot, the comparison refuses to run.
    let (src, tgt) = pair.dbs().await;
    let err = compare_at_fence(&src, &tgt, &FenceOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("open the fence snapshot"), "{err}");

    let (src, tgt) = open(&pair).await;
    // Writes on both sides from other connections, each committed at once.
    pair.old
        .sql(
            "app",
            "INSERT INTO items (id, body) VALUES (3001, 'later on the source'); \
             DELETE FROM pairs WHERE a = 1;",
        )
        .await;
    pair.new
        .sql(
            "app",
            "INSERT INTO items (id, body) SELECT g, 'later' FROM generate_series(4001, 4100) g; \
             DELETE FROM items WHERE id = 10; UPDATE items SET body = 'edited' WHERE id = 12; \
             INSERT INTO log VALUES ('later', 0); UPDATE readings SET note = 'edited';",
        )
        .await;
    assert_eq!(
        count(&pair.new, "SELECT count(*) FROM items").await,
        1000 + 100 - 1
    );
    let check = compare(&src, &tgt, 64).await;
    only_failing(&check, &[]);
    assert_eq!(check.rows_checked, 2000);
    close_fence_snapshot(&src).await;
    close_fence_snapshot(&tgt).await;

    // The same connections, in a snapshot taken now, see those writes.
    open_fence_snapshot(&src).await.unwrap();
    open_fence_snapshot(&tgt).await.unwrap();
    let now = compare(&src, &tgt, 64).await;
    close_fence_snapshot(&src).await;
    close_fence_snapshot(&tgt).await;
    only_failing(
        &now,
        &[
            "public.items",
            "public.pairs",
            "public.readings",
            "public.log",
        ],
    );
    // The last range holds 100 target rows past the source's end: read in pages.
    let items = table(&now, "public.items");
    assert_eq!(
        (items.check.missing, items.check.changed, items.extra),
        (2, 1, 100),
        "{items:#?}"
    );
    let problem = items.check.problem.as_deref().unwrap();
    assert!(problem.ends_with("and 93 more"), "{problem}");
    assert_eq!(table(&now, "public.pairs").extra, 14);
}

/// Two tables of a million rows each: time and rows per second, and the test
/// process's peak memory before and after (the comparison holds no table).
/// `cargo test -p cutover-tests --test db fence_measure -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a measurement: about 15 s"]
async fn fence_measure_a_million_rows() {
    let _heavy = HEAVY.acquire().await.unwrap();
    const ROWS: u32 = 1_000_000;
    let pair = Pair::start().await;
    pair.new.sql("app", APP_SCHEMA).await;
    let started = Instant::now();
    let fill = format!(
        "INSERT INTO items (id, body, created)
             SELECT g, 'row ' || g || ' ' || md5(g::text), '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second'
             FROM generate_series(1, {ROWS}) g"
    );
    // Vacuumed, as autovacuum leaves a freshly filled table, so that the key range
    // bounds come from index-only scans.
    for pg in [&pair.old, &pair.new] {
        pg.sql("app", &fill).await;
        pg.sql("app", "VACUUM ANALYZE items").await;
    }
    println!(
        "setup: {ROWS} rows on each side in {:.1?}",
        started.elapsed()
    );

    let (src, tgt) = open(&pair).await;
    let before = peak_rss_kib();
    let check = compare(&src, &tgt, FenceOptions::default().chunk_rows).await;
    let after = peak_rss_kib();
    close_fence_snapshot(&src).await;
    close_fence_snapshot(&tgt).await;
    assert!(check.passed, "{check:#?}");
    assert_eq!(check.rows_checked, u64::from(ROWS));
    let secs = check.took_ms / 1000.0;
    println!(
        "compare_at_fence: {} rows, {} chunks of {} in {secs:.2} s = {:.0} rows/s; \
         peak RSS {before} KiB before, {after} KiB after",
        check.rows_checked,
        check.chunks,
        FenceOptions::default().chunk_rows,
        check.rows_checked as f64 / secs
    );

    let (src, tgt) = pair.dbs().await;
    let started = Instant::now();
    let contains = cutover_controller::verify_contains(&src, &tgt)
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(contains.iter().all(|t| t.passed));
    println!(
        "verify_contains (for reference): {ROWS} rows in {secs:.2} s = {:.0} rows/s; peak RSS {} KiB after",
        f64::from(ROWS) / secs,
        peak_rss_kib()
    );
}

/// The process's peak resident memory (`VmHWM`), in KiB; 0 where unknown.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
