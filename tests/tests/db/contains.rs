//! `verify_contains`, the check after a switchover: the target holds every row of
//! the frozen source, plus the writes it took since. The tables are copied with
//! plain SQL rather than replication, so that each case sets the target up exactly.

use cutover_controller::plan::record::TableCheck;
use cutover_controller::verify_contains;
use cutover_tests::{APP_SCHEMA, Postgres};

use crate::common::Pair;

/// `pairs` has a composite key with a text column, to exercise the row key.
const PAIRS: &str = "CREATE TABLE pairs (a int, b text, v float8, PRIMARY KEY (a, b));";

/// Copies every row of `table` from `from` to `to` through JSON, which keeps each
/// value exactly (timestamps to the microsecond, floats to the last digit).
async fn copy(from: &Postgres, to: &Postgres, table: &str) {
    let rows: String = from
        .connect("app")
        .await
        .query_one(
            &format!("SELECT coalesce(json_agg(t), '[]')::text FROM {table} t"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    to.connect("app")
        .await
        .execute(
            &format!(
                "INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, $1::text::json)"
            ),
            &[&rows],
        )
        .await
        .unwrap();
}

async fn check(pair: &Pair) -> Vec<TableCheck> {
    let (src, tgt) = pair.dbs().await;
    verify_contains(&src, &tgt).await.unwrap()
}

fn table<'a>(checks: &'a [TableCheck], name: &str) -> &'a TableCheck {
    checks
        .iter()
        .find(|c| c.table == name)
        .unwrap_or_else(|| panic!("no check for {name}: {checks:?}"))
}

#[tokio::test]
async fn the_target_contains_the_source_until_a_row_goes_missing() {
    let pair = Pair::start().await;
    pair.old
        .sql(
            "app",
            &format!(
                "{PAIRS}
                 INSERT INTO items (id, body) SELECT g, 'row ' || g FROM generate_series(1, 1000) g;
                 INSERT INTO pairs SELECT g, 'k' || g, g / 3.0 FROM generate_series(1, 200) g;
                 CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);
                 INSERT INTO scratch VALUES (1);"
            ),
        )
        .await;
    pair.new.sql("app", &format!("{APP_SCHEMA}\n{PAIRS}")).await;
    copy(&pair.old, &pair.new, "items").await;
    copy(&pair.old, &pair.new, "pairs").await;

    // A copy is contained, and its checksum is the exact verify's.
    let (src, tgt) = pair.dbs().await;
    let exact = cutover_controller::verify(&src, &tgt).await.unwrap();
    assert!(exact.passed, "{exact}");
    let checks = check(&pair).await;
    assert_eq!(checks.len(), 2, "unlogged tables are skipped: {checks:?}");
    for c in &checks {
        assert!(c.passed, "{c:?}");
        let v = exact.tables.iter().find(|v| v.table == c.table).unwrap();
        assert_eq!(c.source_checksum, v.source_checksum, "{}", c.table);
    }

    // Writes taken on the target after the switchover are not errors.
    pair.new
        .sql(
            "app",
            "INSERT INTO items (id, body) SELECT g, 'later ' || g FROM generate_series(1001, 1010) g;
             INSERT INTO pairs VALUES (1, 'later', 0.5);",
        )
        .await;
    let checks = check(&pair).await;
    let items = table(&checks, "public.items");
    assert!(items.passed, "{items:?}");
    assert_eq!((items.source_rows, items.target_rows), (1000, 1010));
    assert_eq!((items.missing, items.changed), (0, 0));
    assert_eq!(items.problem, None);
    let pairs = table(&checks, "public.pairs");
    assert!(pairs.passed, "{pairs:?}");
    assert_eq!((pairs.source_rows, pairs.target_rows), (200, 201));

    // A row updated on the target since is reported, and is not a failure.
    pair.new
        .sql(
            "app",
            "UPDATE items SET body = 'edited' WHERE id = 7;
             UPDATE pairs SET v = 0 WHERE a = 3 AND b = 'k3';",
        )
        .await;
    let checks = check(&pair).await;
    let items = table(&checks, "public.items");
    assert!(items.passed, "{items:?}");
    assert_eq!((items.missing, items.changed), (0, 1));
    let pairs = table(&checks, "public.pairs");
    assert!(pairs.passed, "{pairs:?}");
    assert_eq!((pairs.missing, pairs.changed), (0, 1));

    // A source row gone from the target is a lost write, named by its key.
    pair.new.sql("app", "DELETE FROM items WHERE id = 42").await;
    let checks = check(&pair).await;
    let items = table(&checks, "public.items");
    assert!(!items.passed, "{items:?}");
    assert_eq!((items.missing, items.changed), (1, 1));
    assert_eq!((items.source_rows, items.target_rows), (1000, 1009));
    let problem = items.problem.as_deref().unwrap();
    assert!(problem.contains("key 42"), "{problem}");
    assert!(table(&checks, "public.pairs").passed);

    // A composite key is named as its row.
    pair.new
        .sql("app", "DELETE FROM pairs WHERE a = 5 AND b = 'k5'")
        .await;
    let pairs = table(&check(&pair).await, "public.pairs").clone();
    assert!(!pairs.passed, "{pairs:?}");
    assert_eq!(pairs.missing, 1);
    assert!(
        pairs.problem.as_deref().unwrap().contains("key (5,k5)"),
        "{pairs:?}"
    );
}

#[tokio::test]
async fn a_table_absent_from_the_target_loses_every_row() {
    let pair = Pair::start().await;
    pair.old
        .sql(
            "app",
            "INSERT INTO items (body) SELECT 'row ' || g FROM generate_series(1, 50) g;",
        )
        .await;
    let checks = check(&pair).await;
    let items = table(&checks, "public.items");
    assert!(!items.passed, "{items:?}");
    assert_eq!((items.source_rows, items.target_rows), (50, 0));
    assert_eq!(items.missing, 50);
    assert_eq!(items.problem.as_deref(), Some("missing on the target"));
}

/// A source row that the target commits only after its snapshot (as a write the
/// target sent back through reverse replication can be, for a moment) is looked
/// for again and found; the check does not call it lost. The row's transaction
/// locks the table, so the check's read of the target waits inside its snapshot
/// and the row commits only then: the first pass surely misses it.
#[tokio::test]
async fn a_row_the_target_commits_after_its_snapshot_is_found_again() {
    let pair = Pair::start().await;
    pair.old
        .sql(
            "app",
            "INSERT INTO items (id, body) SELECT g, 'row ' || g FROM generate_series(1, 100) g;",
        )
        .await;
    pair.new.sql("app", APP_SCHEMA).await;
    copy(&pair.old, &pair.new, "items").await;
    pair.new
        .sql("app", "DELETE FROM items WHERE id = 100")
        .await;
    let row: String = pair
        .old
        .connect("app")
        .await
        .query_one(
            "SELECT row_to_json(t)::text FROM items t WHERE id = 100",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let late = pair.new.connect("app").await;
    late.batch_execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    late.execute(
        "INSERT INTO items SELECT * FROM json_populate_record(NULL::items, $1::text::json)",
        &[&row],
    )
    .await
    .unwrap();
    let watcher = pair.new.connect("app").await;
    let committer = tokio::spawn(async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND datname = 'app'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the check never read the target"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        late.batch_execute("COMMIT").await.unwrap();
    });
    let checks = check(&pair).await;
    committer.await.unwrap();
    let items = table(&checks, "public.items");
    assert!(items.passed, "{items:?}");
    assert_eq!(
        (items.missing, items.source_rows, items.target_rows),
        (0, 100, 99),
        "the first pass read 99 rows on the target"
    );
}
