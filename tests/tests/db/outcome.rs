//! When the controller cannot see how a step ended: the answer to the point of no
//! return lost with its connection (the transaction committed), and an undo that
//! cannot lift the old writer's block. The first must be read off the new writer
//! and completed, not undone (undoing would open the old writer beside a new one
//! that no longer replicates from it); the second must keep the writes held, not
//! release them onto a writer that refuses them. The controller's fail points
//! (`CUTOVER_FAIL_AT`) stand in for the lost answer and the failed unblock, which
//! a test cannot arrange at the exact instant.

use std::time::Duration;

use cutover_tests::{Pair, eventually};

use crate::common::{APP_PASSWORD, SwitchSite, app_insert};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_of_no_return_whose_answer_was_lost_is_read_off_the_new_writer() {
    let site = SwitchSite::start(Pair::start_seeded(50).await).await;
    let run = site
        .switchover_env("10s", &[], &[("CUTOVER_FAIL_AT", "commit-answer-lost")])
        .await
        .ok();
    assert!(
        run.all().contains("answer to COMMIT was lost"),
        "the fail point was not reached: {}",
        run.all()
    );
    // Completed: writes on new, no hold left, the new writer takes writes and
    // the old one refuses them.
    let route = site.route().await;
    assert_eq!(route["writes"], "new", "{route:#}");
    assert_eq!(route["hold"], serde_json::Value::Null, "{route:#}");
    app_insert(&site.pair.new, "after the switchover").await;
    let old = site
        .pair
        .old
        .connect_as("app", APP_PASSWORD, "app")
        .await
        .unwrap();
    let refused = old
        .execute("INSERT INTO items (body) VALUES ('stray')", &[])
        .await;
    assert!(
        refused.is_err(),
        "the old writer took a write after the switchover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undo_that_cannot_restore_write_access_keeps_the_writes_held() {
    let site = SwitchSite::start(Pair::start_seeded(50).await).await;
    // The switchover pauses once every proxy holds; the target stops then, so the
    // fence is never applied and the switchover undoes itself, and restoring
    // write access on the source fails.
    let stop_target = async {
        eventually(Duration::from_secs(30), "the switchover's hold", || async {
            (site.route().await["hold"] != serde_json::Value::Null).then_some(())
        })
        .await;
        tokio::task::block_in_place(|| site.pair.new.stop());
    };
    let (run, ()) = tokio::join!(
        site.switchover_env(
            "10s",
            &[],
            &[
                ("CUTOVER_PAUSE_AT", "after-hold:2s"),
                ("CUTOVER_FAIL_AT", "restore-write-access"),
            ],
        ),
        stop_target
    );
    let run = run.fails();
    let out = run.all();
    assert!(out.contains("restoring write access failed"), "{out}");
    assert!(out.contains("holds kept"), "{out}");
    // Still held, writes still on old: no write is let onto a writer that refuses
    // it (each would fail in the application); they wait, or get 503 with
    // Retry-After once the hold's time is up.
    let route = site.route().await;
    assert_ne!(route["hold"], serde_json::Value::Null, "{route:#}");
    assert_eq!(route["writes"], "old", "{route:#}");
}
