//! `sync` (idempotent), `status` while a writer runs, `verify` (and a mismatch it
//! must catch), `cleanup` (idempotent).

use std::time::{Duration, Instant};

use cutover_tests::eventually;

use crate::common::{Pair, cutover};

#[tokio::test]
async fn sync_twice_then_status_under_writes_then_verify_and_cleanup() {
    let pair = Pair::start().await;
    pair.old
        .sql(
            "app",
            "INSERT INTO items (body) SELECT 'row ' || g FROM generate_series(1, 5000) g;
             CREATE TABLE pairs (a int, b text, v float8, PRIMARY KEY (a, b));
             INSERT INTO pairs SELECT g, 'k' || g, g / 3.0 FROM generate_series(1, 500) g;
             CREATE SEQUENCE invoice_no START 1000;
             ANALYZE;",
        )
        .await;
    // The URL form on the command line this time (the other tests use the
    // environment): the password must not show either way.
    let url = |pg: &cutover_tests::Postgres| {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/app",
            cutover_tests::SUPERUSER_PASSWORD,
            pg.port
        )
    };
    let (src, tgt) = (url(&pair.old), url(&pair.new));
    let args = |cmd: &'static str| -> Vec<String> {
        vec![
            "db".into(),
            cmd.into(),
            "--source".into(),
            src.clone(),
            "--target".into(),
            tgt.clone(),
        ]
    };
    let run = |a: Vec<String>| async move {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        cutover(&refs, &[]).await
    };

    let first = run(args("sync")).await.ok();
    assert!(
        first.stdout.contains("schema             created"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("tables: 3/3 ready"),
        "{}",
        first.stdout
    );
    assert!(
        first.stderr.contains("table public.items: ready"),
        "{}",
        first.stderr
    );
    let target = pair.new.connect("app").await;
    let count = |sql: &'static str| {
        let target = &target;
        async move { target.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM items").await, 5000);
    assert_eq!(count("SELECT count(*) FROM pairs").await, 500);
    let sub_oid = count("SELECT oid::bigint FROM pg_subscription").await;

    // Idempotent: the second run changes nothing.
    let mut again = args("sync");
    again.push("--json".into());
    let second = run(again).await.ok().json();
    let outcomes: Vec<&str> = second["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["unchanged"; 7], "{second}");
    assert_eq!(second["ready"], true);
    assert_eq!(
        count("SELECT oid::bigint FROM pg_subscription").await,
        sub_oid
    );
    assert_eq!(count("SELECT count(*) FROM items").await, 5000);

    // A writer on the source, bounded in time and count.
    let writer = pair.old.connect("app").await;
    let writing = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(4);
        let mut n = 0;
        while Instant::now() < until && n < 2000 {
            writer
                .batch_execute("INSERT INTO items (body) SELECT 'w' FROM generate_series(1, 20)")
                .await
                .unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    });
    let mut readings = Vec::new();
    for _ in 0..3 {
        let mut a = args("status");
        a.push("--json".into());
        let s = run(a).await.ok().json();
        readings.push(s);
    }
    let human = run(args("status")).await.ok().stdout;
    assert!(writing.await.unwrap() > 10, "the writer wrote");
    for s in &readings {
        assert_eq!(s["link"]["name"], "cutover");
        let bytes = s["lag_bytes"].as_i64().expect("lag in bytes");
        assert!((0..64 << 20).contains(&bytes), "{s}");
        let secs = &s["lag_seconds"];
        assert_eq!(secs["at_least"], false, "{s}");
        assert!(secs["seconds"].as_f64().unwrap() < 5.0, "{s}");
        assert!(s["slot"]["retained_bytes"].as_i64().unwrap() >= 0, "{s}");
        assert_eq!(s["slot"]["wal_status"], "reserved", "{s}");
        assert_eq!(s["tables"].as_array().unwrap().len(), 3);
    }
    assert!(
        human.contains("lag:") && human.contains("by heartbeat"),
        "{human}"
    );
    assert!(human.contains("tables:  3/3 ready"), "{human}");
    assert!(
        human.contains("writes:  the source takes writes; the target refuses writes on 2 table(s)"),
        "{human}"
    );

    // Once the writer stopped, verify passes (after the last rows arrive).
    let verify_args = args("verify");
    eventually(Duration::from_secs(20), "verify to pass", || {
        let a = verify_args.clone();
        async move { (run(a).await.code == 0).then_some(()) }
    })
    .await;

    // A row missing on the target is named with its table and key.
    target
        // The target refuses application writes until a switchover; a
        // replication-role session deletes the way a stray replication change would.
        .batch_execute(
            "ALTER SUBSCRIPTION cutover DISABLE; SET session_replication_role = replica; \
             DELETE FROM items WHERE id = 42; RESET session_replication_role",
        )
        .await
        .unwrap();
    let bad = run(args("verify")).await;
    assert_eq!(bad.code, 1, "{}", bad.all());
    assert!(
        bad.stdout.contains("MISMATCH  public.items"),
        "{}",
        bad.all()
    );
    assert!(bad.stdout.contains("key 42"), "{}", bad.stdout);
    assert!(
        bad.stdout.contains("ok        public.pairs"),
        "{}",
        bad.stdout
    );

    // Cleanup drops everything, and a second run finds nothing.
    let clean = run(args("cleanup")).await.ok();
    assert!(
        clean
            .stdout
            .contains("dropped  target subscription cutover"),
        "{}",
        clean.stdout
    );
    assert!(
        clean
            .stdout
            .contains("dropped  source replication slot cutover"),
        "{}",
        clean.stdout
    );
    assert!(
        clean.stdout.contains("dropped  source publication cutover"),
        "{}",
        clean.stdout
    );
    // The target refused writes since the sync and never became the writer: its
    // block stays, and the report says how to lift it.
    assert!(
        clean.stdout.contains("still refuse writes"),
        "{}",
        clean.stdout
    );
    let again = run(args("cleanup")).await.ok();
    assert!(
        again.stdout.contains("nothing to clean up"),
        "{}",
        again.stdout
    );
    let source = pair.old.connect("app").await;
    let left: i64 = source
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication) \
             + (SELECT count(*) FROM pg_namespace WHERE nspname = '_cutover')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(count("SELECT count(*) FROM pg_subscription").await, 0);
}

/// A worker of the new cluster, connected before `sync` runs, that tries to insert
/// all along: until its table exists it gets "undefined table", and from then on
/// the write block refuses it. It never commits a row into the replica. (Before the
/// schema and the block went in one transaction, the table with its grants was
/// visible for a moment before the block: a row written then took an id that the
/// initial copy then found taken, and the copy failed on every retry.)
#[tokio::test]
async fn a_writer_on_the_target_never_writes_into_the_replica_during_sync() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let pair = Pair::start_seeded(2000).await;
    let client = pair
        .new
        .connect_as("app", cutover_tests::APP_PASSWORD, "app")
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut committed, mut refused, mut absent) = (0u64, 0u64, 0u64);
            let bound = Instant::now() + Duration::from_secs(180);
            while !stop.load(Ordering::Relaxed) && Instant::now() < bound {
                match client
                    .execute("INSERT INTO items (body) VALUES ('a worker of new')", &[])
                    .await
                {
                    Ok(_) => committed += 1,
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
                    {
                        absent += 1
                    }
                    Err(_) => refused += 1,
                }
                // Paced, not synchronised: about a thousand attempts a second.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (committed, refused, absent)
        })
    };
    cutover(&["db", "sync"], &pair.env()).await.ok();
    // A few more attempts against the finished sync.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (committed, refused, absent) = writer.await.unwrap();
    assert_eq!(
        committed, 0,
        "rows written into the replica; refused {refused}"
    );
    assert!(
        absent > 0,
        "the writer never ran before the schema was copied"
    );
    assert!(refused > 0, "the writer never met the write block");
    let target = pair.new.connect("app").await;
    let copied: i64 = target
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, 2000);
}
