//! The bypass writers themselves, before any block is tested with them: every kind
//! writes on an unblocked database and every write it was told succeeded is there;
//! after its session is ended it reconnects and goes on, losing nothing.

use std::time::{Duration, Instant};

use cutover_tests::{
    APP_SCHEMA, Pair, Postgres, Writer, WriterKind, WriterOptions, assert_all_on, eventually,
};

/// Starts one writer of every kind on `pg`'s `app.items`.
async fn start_all(pg: &Postgres) -> Vec<Writer> {
    let mut writers = Vec::new();
    for kind in WriterKind::ALL {
        let p = kind.prepare(pg).await;
        writers.push(p.start(WriterOptions::default()));
    }
    writers
}

/// Waits until every writer has acknowledged `n` more writes than in `from`.
async fn until_each_acked(writers: &[Writer], from: &[usize], n: usize, what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        writers
            .iter()
            .zip(from)
            .all(|(w, f)| w.acked().len() >= f + n)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_writer_kind_writes_and_each_acknowledged_row_is_there() {
    let pair = Pair::start().await;
    let t0 = Instant::now();
    let mut writers = start_all(&pair.old).await;
    let zero = vec![0; writers.len()];
    until_each_acked(&writers, &zero, 3, "every writer kind to write").await;
    // They run for about a second in all; the wait above is what synchronises.
    tokio::time::sleep_until((t0 + Duration::from_secs(1)).into()).await;
    for w in &mut writers {
        w.stop().await;
    }
    for w in &writers {
        eprintln!("{}", w.summary());
        assert!(w.errors().is_empty(), "{}", w.summary());
        assert_eq!(w.reconnects(), 0, "{}", w.summary());
        assert_all_on(&pair.old, &w.acked(), w.kind.name()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_reconnect_after_their_sessions_end_and_lose_nothing() {
    let pg = tokio::task::spawn_blocking(|| Postgres::start("writers"))
        .await
        .unwrap();
    cutover_tests::create_roles(&pg).await;
    pg.sql("postgres", "CREATE DATABASE app").await;
    pg.sql("app", APP_SCHEMA).await;
    let mut writers = start_all(&pg).await;
    let zero = vec![0; writers.len()];
    until_each_acked(&writers, &zero, 3, "every writer kind to write").await;

    // End every session on the database, as a switchover's hold does.
    let admin = pg.connect("app").await;
    let ended: i64 = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND backend_type = 'client backend'
               AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ended >= 8, "only {ended} sessions ended");
    let after: Vec<usize> = writers.iter().map(|w| w.acked().len()).collect();
    until_each_acked(&writers, &after, 3, "every writer to write again").await;
    for w in &mut writers {
        w.stop().await;
    }
    for w in &writers {
        eprintln!("{}", w.summary());
        // A session ended between two transactions of a pooled client is the
        // pooler's to replace: its client connection may survive.
        if w.kind != WriterKind::Pooled {
            assert!(w.reconnects() >= 1, "{}", w.summary());
        }
        for e in w.errors() {
            assert!(
                matches!(e.code(), "57P01" | "closed" | "08P01" | "08006"),
                "{}: unexpected error {e}",
                w.kind.name()
            );
        }
        assert_all_on(&pg, &w.acked(), w.kind.name()).await;
    }
}
