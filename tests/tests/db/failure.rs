//! A failure after the hold: the target stops right after every proxy has
//! acknowledged the hold. The switchover must undo itself: writes resume on old,
//! the source takes writes again, nothing acknowledged is lost, nothing fails.

use std::time::Duration;

use cutover_controller::{
    Error, Observer, Phase, Proxies, Quiet, SwitchoverOptions, SyncOptions, switchover, sync,
};
use cutover_tests::{App, Postgres, ProxyBuilder, eventually, two_backend_config};

use crate::common::{APP_PASSWORD, HEAVY, Pair, items};
use crate::load::Load;

const HOST: &str = "shop.test";

/// Stops the target database the moment the hold is acknowledged.
struct StopTargetAfterHold<'a>(&'a Postgres);

impl Observer for StopTargetAfterHold<'_> {
    fn phase_done(&self, phase: Phase, _took: Duration, _detail: &str) {
        if phase == Phase::Hold {
            tokio::task::block_in_place(|| self.0.stop());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_lost_after_the_hold_rolls_back_cleanly() {
    let _heavy = HEAVY.acquire().await.unwrap();
    let pair = Pair::start().await;
    let (src, tgt) = pair.dbs().await;
    let synced = sync(&src, &tgt, "cutover", &SyncOptions::default(), &Quiet)
        .await
        .unwrap();
    assert!(synced.ready);

    let old_app = App::start("old", &Pair::app_dsn(&pair.old));
    let new_app = App::start("new", &Pair::app_dsn(&pair.new));
    // Reads stay on old: the target going away is the fault under test, not
    // something the application's readers should see.
    let cfg = two_backend_config(
        old_app.addr,
        new_app.addr,
        &[HOST],
        (100.0, 0.0),
        "writes = \"old\"",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let proxies = Proxies::new(&[format!("http://{}", proxy.admin)], None).unwrap();

    let load = Load::start(proxy.http, HOST, 8, 30.0, Duration::from_secs(60));
    eventually(
        Duration::from_secs(30),
        "load before the switchover",
        || async { (load.acked() >= 300).then_some(()) },
    )
    .await;
    let opts = SwitchoverOptions {
        routes: vec![HOST.into()],
        max_pause: Duration::from_secs(4),
        ..SwitchoverOptions::default()
    };
    let err = switchover(
        &src,
        &tgt,
        &proxies,
        "cutover",
        &opts,
        &StopTargetAfterHold(&pair.new),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    eprintln!("switchover failed as intended: {text}");
    match &err {
        Error::Aborted { phase, undo, .. } => {
            assert!(phase.contains("step 5"), "{text}");
            assert!(
                undo.contains("write access restored on the source"),
                "{text}"
            );
            assert!(
                undo.contains("holds released with writes on \"old\""),
                "{text}"
            );
            assert!(!undo.contains("NOT undone"), "{text}");
        }
        other => panic!("expected an aborted switchover, got {other:?}"),
    }
    assert!(
        text.contains("target"),
        "the cause names the target: {text}"
    );

    // Writes resumed on old.
    let s = proxy.status().await;
    assert_eq!(s["routes"][0]["writes"], "old");
    assert!(s["routes"][0]["hold"].is_null(), "{s}");
    let after = load.acked();
    eventually(Duration::from_secs(30), "writes to resume", || async {
        (load.acked() >= after + 300).then_some(())
    })
    .await;
    let ledger = load.stop().await;
    assert!(
        ledger.failures.is_empty(),
        "{:?}",
        &ledger.failures[..ledger.failures.len().min(10)]
    );
    let rows = items(&pair.old).await;
    assert!(
        ledger
            .acked
            .iter()
            .all(|(id, body)| rows.get(id) == Some(body))
    );
    let app = pair
        .old
        .connect_as("app", APP_PASSWORD, "app")
        .await
        .unwrap();
    app.execute("INSERT INTO items (body) VALUES ('still writable')", &[])
        .await
        .unwrap();
    let (n, _, max) = ledger.latency_between(
        std::time::Instant::now() - ledger.elapsed,
        std::time::Instant::now(),
    );
    eprintln!(
        "failure test: {n} writes, max latency {:.0} ms (held writes waited for the rollback)",
        max.as_secs_f64() * 1000.0
    );
    assert!(
        max < Duration::from_secs(5),
        "no write waited past --max-pause"
    );
}
