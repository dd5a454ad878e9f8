//! One controller at a time: `cutover db sync` takes the controller lock on both
//! sides before it changes anything, and a second controller is refused with the
//! first one named.

use std::time::Duration;

use cutover_controller::lock;
use cutover_tests::{Postgres, binary, eventually};
use tokio_postgres::Client;

use crate::common::{Pair, cutover};

/// Counts on `pg`'s database `app`: the controller's schema, publications,
/// subscriptions, and tables named `items`.
async fn created(pg: &Postgres) -> [i64; 4] {
    let row = pg
        .connect("app")
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = '_cutover'), \
                    (SELECT count(*) FROM pg_publication), \
                    (SELECT count(*) FROM pg_subscription), \
                    (SELECT count(*) FROM pg_class WHERE relname = 'items' AND relkind = 'r')",
            &[],
        )
        .await
        .unwrap();
    [row.get(0), row.get(1), row.get(2), row.get(3)]
}

/// A session on `pg` that calls itself `name` and holds the controller lock, as
/// another controller would; returns it with its backend pid.
async fn other_controller(pg: &Postgres, name: &str) -> (Client, i32) {
    let c = pg.connect("app").await;
    c.batch_execute(&format!("SET application_name = '{name}'"))
        .await
        .unwrap();
    c.query_one("SELECT pg_advisory_lock($1)", &[&lock::KEY])
        .await
        .unwrap();
    let pid = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    (c, pid)
}

#[tokio::test]
async fn sync_refuses_while_another_controller_holds_either_side() {
    let pair = Pair::start().await;
    let env = pair.env();

    for (side, pg) in [("source", &pair.old), ("target", &pair.new)] {
        let (holder, pid) = other_controller(pg, "other controller").await;

        // check reads only: it runs, and warns.
        let check = cutover(&["db", "check"], &env).await.ok();
        assert!(
            check.stdout.contains(&format!(
                "warning  {side} controller lock: another cutover controller is working on this database: \
                 session pid {pid} (role postgres, application_name \"other controller\""
            )),
            "{}",
            check.stdout
        );

        let run = cutover(&["db", "sync"], &env).await.fails();
        let want = format!(
            "cutover: {side} database (host=127.0.0.1 port={} dbname=app user=postgres): \
             another cutover controller is working on this database: session pid {pid} \
             (role postgres, application_name \"other controller\", from 127.0.0.1, connected since ",
            pg.port
        );
        assert!(run.stderr.contains(&want), "{}", run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "wait for it to finish, or stop it (SELECT pg_terminate_backend({pid}) ends its session)"
            )),
            "{}",
            run.stderr
        );
        // Nothing was created on either side: no schema, publication or subscription.
        assert_eq!(created(&pair.old).await, [0, 0, 0, 1], "{side}");
        assert_eq!(created(&pair.new).await, [0, 0, 0, 0], "{side}");

        let released: bool = holder
            .query_one("SELECT pg_advisory_unlock($1)", &[&lock::KEY])
            .await
            .unwrap()
            .get(0);
        assert!(released);
    }

    let run = cutover(&["db", "sync"], &env).await.ok();
    assert!(run.stdout.contains("tables: 2/2 ready"), "{}", run.stdout);
    assert_eq!(created(&pair.new).await, [1, 0, 1, 1]);
}

/// Two syncs started together: the one that gets the lock is kept inside its
/// schema copy (`pg_dump` waits for a table lock the test holds) until the other
/// has been refused, so the order is certain without any sleep.
#[tokio::test]
async fn of_two_syncs_started_together_one_works_and_the_other_names_it() {
    let pair = Pair::start().await;
    let env = pair.env();
    // Built (if it must be) before the clock below starts.
    tokio::task::spawn_blocking(|| binary("cutover"))
        .await
        .unwrap();
    let table_lock = pair.old.connect("app").await;
    table_lock
        .batch_execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let start = || {
        let env = env.clone();
        tokio::spawn(async move { cutover(&["db", "sync"], &env).await })
    };
    let (a, b) = (start(), start());
    let first = eventually(Duration::from_secs(60), "one sync to finish", || {
        let done = if a.is_finished() {
            Some(0)
        } else if b.is_finished() {
            Some(1)
        } else {
            None
        };
        async move { done }
    })
    .await;
    let (refused, working) = if first == 0 { (a, b) } else { (b, a) };
    let refused = refused.await.unwrap().fails();
    assert!(
        !working.is_finished(),
        "the winner waits for the table lock"
    );

    // The refusal names the session that holds the lock: the other sync's.
    let row = pair
        .old
        .connect("app")
        .await
        .query_one(
            "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid",
            &[&lock::KEY],
        )
        .await
        .unwrap();
    let (pid, app): (i32, String) = (row.get(0), row.get(1));
    assert!(app.starts_with("cutover db sync ("), "{app}");
    assert!(
        refused.stderr.contains(&format!(
            "session pid {pid} (role postgres, application_name {app:?}"
        )),
        "{}",
        refused.stderr
    );

    table_lock.batch_execute("COMMIT").await.unwrap();
    let done = working.await.unwrap().ok();
    assert!(done.stdout.contains("tables: 2/2 ready"), "{}", done.stdout);
    assert_eq!(created(&pair.new).await, [1, 0, 1, 1]);
}
