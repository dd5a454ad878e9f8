//! `sync --copy controller`: the controller copies the rows itself under the
//! exported snapshot of the subscription's slot, a large table in parallel block
//! ranges into tables without indexes, builds every key and index afterwards, then
//! subscribes from the slot. Tested against a source that keeps taking writes
//! (INSERT, UPDATE, DELETE) all through, with a transaction that is open when the
//! slot is created and commits later; and against a copy killed halfway, which the
//! next sync starts over, but never over tables the application could have written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cutover_tests::{Pair, Postgres, binary, eventually};

use crate::common::cutover;
use crate::schema::{SCHEMA, objects};

/// A table of about 10 MB on disk, so that `--part-size 1MB` splits it; its enum
/// array column keeps it out of the binary form (an array names its element type
/// by OID, which differs between the databases), its generated column is left to
/// the target to compute, and its dropped column is skipped.
const BIG: &str = "
    CREATE TYPE mood AS ENUM ('calm', 'busy');
    CREATE TABLE big (
        id bigint PRIMARY KEY,
        account bigint NOT NULL,
        body text NOT NULL,
        moods mood[] NOT NULL DEFAULT '{calm}',
        dropped int,
        len int GENERATED ALWAYS AS (length(body)) STORED);
    ALTER TABLE big DROP COLUMN dropped;
    INSERT INTO big (id, account, body, moods)
        SELECT g, 1 + g % 2000, repeat('x', 60) || g, CASE WHEN g % 3 = 0 THEN '{busy,calm}'::mood[] ELSE '{calm}' END
        FROM generate_series(1, 100000) g;
    CREATE INDEX big_account_idx ON big (account);
    ANALYZE;
";

const TABLES: [&str; 6] = [
    "items",
    "accounts",
    "orders",
    "ledger",
    "events_2026",
    "big",
];

/// A digest of every row of every table (the generated column included).
async fn contents(pg: &Postgres) -> Vec<(String, Option<String>, i64)> {
    let c = pg.connect("app").await;
    let mut out = Vec::new();
    for t in TABLES {
        let row = c
            .query_one(
                &format!(
                    "SELECT md5(string_agg(x::text, ',' ORDER BY x::text)), count(*) FROM {t} x"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push((t.to_string(), row.get(0), row.get(1)));
    }
    out
}

/// The one number `sql` returns.
async fn number(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until the target has every row the source has.
async fn same_rows(pair: &Pair) {
    let want = contents(&pair.old).await;
    eventually(
        Duration::from_secs(60),
        "the target matching the source",
        || async { (contents(&pair.new).await == want).then_some(()) },
    )
    .await;
}

async fn setup() -> Pair {
    let pair = Pair::start().await;
    pair.old.sql("app", SCHEMA).await;
    pair.old.sql("app", BIG).await;
    pair
}

/// Writes to `big` until told to stop (or 200,000 rounds): one INSERT, one UPDATE
/// and one DELETE a round, each committed on its own, never on rows 1 to 9.
fn writer(
    pg: &Postgres,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let dsn = pg.dsn("app");
    tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for i in 0..200_000i64 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            c.execute(
                "INSERT INTO big (id, account, body) VALUES ($1, 7, 'during')",
                &[&(1_000_000 + i)],
            )
            .await
            .unwrap();
            c.execute(
                "UPDATE big SET body = body || 'u', moods = '{busy}' WHERE id = $1",
                &[&(10 + i * 37 % 99_000)],
            )
            .await
            .unwrap();
            c.execute("DELETE FROM big WHERE id = $1", &[&(10 + i * 91 % 99_000)])
                .await
                .unwrap();
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[tokio::test]
async fn the_controllers_copy_misses_no_write_made_during_it() {
    let pair = setup().await;
    let env = pair.env();
    // Built first: the wait below is for the sync, not for a build of `cutover`.
    tokio::task::spawn_blocking(|| binary("cutover"))
        .await
        .unwrap();

    // A transaction open before the sync starts: the slot waits for it, and its
    // rows, committed after the snapshot, must come through the slot.
    let early = pair.old.connect("app").await;
    early
        .batch_execute(
            "BEGIN; INSERT INTO big (id, account, body) VALUES (5000000, 1, 'open before'); \
             UPDATE big SET body = 'updated by the open transaction' WHERE id = 2",
        )
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writes = writer(&pair.old, stop.clone(), done.clone());
    let sync = {
        let env = env.clone();
        tokio::spawn(async move {
            cutover(
                &[
                    "db",
                    "sync",
                    "--copy",
                    "controller",
                    "--part-size",
                    "1MB",
                    "--timeout",
                    "5m",
                ],
                &env,
            )
            .await
        })
    };
    let watch = pair.old.connect("postgres").await;
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(120),
        "the slot's creation waiting",
        || async {
            let n: i64 = watch
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' \
                 AND query LIKE 'CREATE_REPLICATION_SLOT%'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n > 0).then_some(())
        },
    )
    .await;
    eprintln!(
        "the slot's creation began {:?} after the sync",
        started.elapsed()
    );
    early.batch_execute("COMMIT").await.unwrap();
    let out = sync.await.unwrap().ok();
    stop.store(true, Ordering::Relaxed);
    writes.await.unwrap();
    assert!(
        done.load(Ordering::Relaxed) > 0,
        "the writer wrote during the sync"
    );

    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("initial copy"))
        .unwrap_or_else(|| panic!("no copy line: {}", out.stdout));
    let number_before = |word: &str| -> usize {
        let at = line
            .find(word)
            .unwrap_or_else(|| panic!("{word} in {line}"));
        line[..at]
            .trim_end()
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Six application tables and the heartbeat; `big` in at least ten parts.
    assert_eq!(number_before(" table(s) ("), 7, "{line}");
    assert!(number_before(" part(s)") >= 10 + 5, "{line}");
    assert_eq!(
        number_before(" table(s) in binary form"),
        6,
        "every table but big (its enum array) in binary form: {line}"
    );
    assert!(out.stdout.contains("catch-up"), "{}", out.stdout);

    // Every row, every change made during the copy, and the open transaction's.
    same_rows(&pair).await;
    let c = pair.new.connect("app").await;
    let body: String = c
        .query_one("SELECT body FROM big WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        body.starts_with("updated by the open transaction"),
        "{body}"
    );
    assert_eq!(
        number(&c, "SELECT count(*) FROM big WHERE id = 5000000").await,
        1
    );

    // Every key, index, constraint and trigger, and no marker left.
    assert_eq!(objects(&pair.new).await, objects(&pair.old).await);
    let marked: i64 = number(&c, "SELECT count(*) FROM _cutover.initial_copy").await;
    assert_eq!(marked, 0);
    let again = cutover(&["db", "sync", "--copy", "controller"], &env)
        .await
        .ok();
    assert!(again.stdout.contains("nothing changed"), "{}", again.stdout);
}

#[tokio::test]
async fn a_copy_killed_halfway_starts_over_but_never_over_open_tables() {
    let pair = setup().await;
    let mut env = pair.env();
    let args = [
        "db",
        "sync",
        "--copy",
        "controller",
        "--part-size",
        "1MB",
        "--jobs",
        "1",
    ];
    env.push(("CUTOVER_CRASH_AT".into(), "during-copy".into()));
    cutover(&args, &env).await.code(137);
    env.pop();
    let c = pair.new.connect("app").await;
    let partial: i64 = number(&c, "SELECT count(*) FROM big").await;
    assert!(
        partial > 0 && partial < 100_000,
        "one part of big copied: {partial} rows"
    );

    // A table whose write block is gone may hold the application's rows: the
    // sync refuses to empty it.
    c.batch_execute("ALTER TABLE big DISABLE TRIGGER cutover_write_block")
        .await
        .unwrap();
    let refused = cutover(&args, &env).await.fails();
    assert!(
        refused
            .stderr
            .contains("no longer refuses application writes"),
        "{}",
        refused.stderr
    );
    let still: i64 = number(&c, "SELECT count(*) FROM big").await;
    assert_eq!(still, partial, "nothing emptied");

    c.batch_execute("ALTER TABLE big ENABLE TRIGGER cutover_write_block")
        .await
        .unwrap();
    let out = cutover(&args, &env).await.ok();
    assert!(out.stdout.contains("interrupted copy"), "{}", out.stdout);
    same_rows(&pair).await;
    assert_eq!(objects(&pair.new).await, objects(&pair.old).await);
}
