//! Writers that bypass the proxy, across `cutover db switchover`: CronJob-style
//! writers of every kind (the app role, a session that turns read-only off as
//! PgJDBC does, a member role, a column grant, a `SECURITY DEFINER` function, a
//! superuser, a transaction held open across the hold, a pooled connection through
//! a real PgBouncer) write straight into the source every 5 ms while writes move.
//! Every write the server acknowledged must be on the target afterwards, and the
//! source must refuse every write after the switchover. A prepared transaction
//! and a superuser who gets past the triggers make the switchover refuse, with
//! nothing lost.

use std::time::{Duration, Instant};

use cutover_tests::{
    Pair, Writer, WriterKind, WriterOptions, assert_all_on, create_roles, eventually,
};

use crate::common::{HEAVY, SwitchSite, app_insert};

/// Prepares `kinds` on the source (their roles exist on both sides: the sync
/// copies their grants and the definer function), then syncs.
async fn site(kinds: &[WriterKind]) -> (SwitchSite, Vec<cutover_tests::Prepared>) {
    let pair = Pair::start_seeded(100).await;
    create_roles(&pair.new).await;
    let mut prepared = Vec::new();
    for k in kinds {
        prepared.push(k.prepare(&pair.old).await);
    }
    (SwitchSite::start(pair).await, prepared)
}

fn start(prepared: &[cutover_tests::Prepared]) -> Vec<Writer> {
    prepared
        .iter()
        .map(|p| {
            p.start(WriterOptions {
                interval: Duration::from_millis(5),
                max_duration: Duration::from_secs(90),
                ..WriterOptions::default()
            })
        })
        .collect()
}

async fn until_each_acked(writers: &[Writer], n: usize) {
    eventually(Duration::from_secs(30), "every writer to write", || async {
        writers.iter().all(|w| w.acked().len() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_writer_past_the_proxy_loses_nothing_and_the_old_side_refuses_after() {
    let _heavy = HEAVY.acquire().await.unwrap();
    let (site, prepared) = site(&WriterKind::ALL).await;
    // From the sync on, the target refuses the application's writes.
    Pair::assert_app_read_only(&site.pair.new).await;
    let mut writers = start(&prepared);
    until_each_acked(&writers, 20).await;

    let run = site.switchover("10s", &["--json"]).await.ok();
    let done = Instant::now();
    let v = run.json();
    // The writers go on against the old database for a moment: every attempt
    // now must fail.
    eventually(
        Duration::from_secs(10),
        "every writer to try again after the switchover",
        || async {
            writers
                .iter()
                .all(|w| w.errors().iter().any(|e| e.at > done))
                .then_some(())
        },
    )
    .await;
    for w in &mut writers {
        w.stop().await;
    }
    let mut total = 0;
    for w in &writers {
        eprintln!("{}", w.summary());
        let acked = w.acked();
        total += acked.len();
        assert_all_on(&site.pair.new, &acked, w.kind.name()).await;
        let late: Vec<_> = w.acks().into_iter().filter(|a| a.at > done).collect();
        assert!(
            late.is_empty(),
            "{}: {} write(s) acknowledged by the old database after the switchover, e.g. id {}",
            w.kind.name(),
            late.len(),
            late[0].id
        );
        for e in w.errors().iter().filter(|e| e.at > done) {
            assert!(
                ["25006", "57P01", "closed"].contains(&e.code()),
                "{}: unexpected error after the switchover: {} {}",
                w.kind.name(),
                e.code(),
                e.message
            );
        }
    }
    eprintln!(
        "{total} bypass writes acknowledged, all on the target; write pause {:.0} ms",
        v["write_pause_ms"].as_f64().unwrap()
    );
    assert_eq!(site.route().await["writes"], "new");
    // The target takes the application's writes now.
    app_insert(&site.pair.new, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prepared_transaction_makes_the_switchover_refuse_until_it_is_finished() {
    let (site, prepared) = site(&[WriterKind::AppRole]).await;
    let conn = prepared[0].connect().await.unwrap();
    let id = conn
        .prepare_pending("nightly-42", "prepared")
        .await
        .unwrap();
    let run = site.switchover("10s", &["--json"]).await.fails();
    assert!(run.all().contains("nightly-42"), "{}", run.all());
    assert!(run.all().contains("prepared transaction"), "{}", run.all());
    // Nothing moved: writes on old, no hold, the source takes writes.
    site.assert_nothing_moved().await;

    // Once committed, its row replicates and the switchover goes through.
    conn.commit_prepared("nightly-42").await.unwrap();
    site.switchover("10s", &["--json"]).await.ok();
    assert_all_on(
        &site.pair.new,
        &[(id, "prepared".into())],
        "the prepared write",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_superuser_past_the_triggers_is_caught_by_the_fence_and_nothing_is_lost() {
    let (site, prepared) = site(&[WriterKind::Superuser]).await;
    // A superuser job that turns triggers off for its session: the one writer a
    // trigger cannot stop. It writes every millisecond through the whole
    // switchover.
    let sneaky = prepared[0].connect().await.unwrap();
    sneaky
        .simple("SET session_replication_role = replica")
        .await
        .unwrap();
    let sneaky_pid: i32 = sneaky
        .client()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let job = {
        let (stop, acked) = (stop.clone(), acked.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                n += 1;
                let body = format!("replica-role {n}");
                if let Ok(id) = sneaky.insert(&body).await {
                    acked.lock().unwrap().push((id, body));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sneaky
        })
    };
    eventually(Duration::from_secs(20), "the job to write", || async {
        (acked.lock().unwrap().len() >= 10).then_some(())
    })
    .await;
    let run = site.switchover("10s", &["--json"]).await.fails();
    assert!(
        run.all()
            .contains("committed on the source after the fence"),
        "{}",
        run.all()
    );
    assert!(run.all().contains("items"), "{}", run.all());
    // The session that did it is among those named.
    assert!(
        run.all().contains(&format!("pid {sneaky_pid} ")),
        "{}",
        run.all()
    );
    assert!(run.all().contains("undone"), "{}", run.all());
    site.assert_nothing_moved().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(job.await.unwrap());
    // Every row it was told was committed is still where writes are: the source.
    let acked = acked.lock().unwrap().clone();
    assert_all_on(&site.pair.old, &acked, "the superuser job").await;

    // With the job stopped, the switchover goes through and takes them along.
    site.switchover("10s", &["--json"]).await.ok();
    assert_all_on(&site.pair.new, &acked, "the superuser job").await;
}
