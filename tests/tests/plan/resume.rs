//! A controller killed with SIGKILL (no handler runs, nothing is saved on the way
//! out) resumes from its state file: mid-bake, and mid-switchover with writes held
//! on the proxy. The demo app runs on each side over two real PostgreSQL clusters
//! behind the real proxy, with writes through it for the whole test; every
//! acknowledged id must be in the new database at the end, and no route may be
//! left held.

use std::time::Duration;

use cutover_tests::{App, Backend, Client, Proxy, ProxyBuilder};
use http::Method;
use serde_json::Value;

use crate::common::{
    DATABASES, Pair, PlanDir, Seen, Traffic, admin_url, binaries, connect, item_ids, proxy_config,
    route,
};

const SHOP: &str = "shop.test";
const STATIC: &str = "static.test";

/// The demo app on each side (route `shop.test`, writes on old) and two plain
/// backends for a stateless route (`static.test`).
struct Site {
    pair: Pair,
    _apps: (App, App),
    _statics: (Backend, Backend),
    proxy: Proxy,
}

impl Site {
    async fn start() -> Site {
        let pair = Pair::start_seeded(200).await;
        let apps = (
            App::start("old", &Pair::app_dsn(&pair.old)),
            App::start("new", &Pair::app_dsn(&pair.new)),
        );
        let statics = (Backend::start("static-old"), Backend::start("static-new"));
        let cfg = proxy_config(
            &[
                ("old", apps.0.addr),
                ("new", apps.1.addr),
                ("static-old", statics.0.addr),
                ("static-new", statics.1.addr),
            ],
            &[
                (SHOP, "{ old = 100, new = 0 }", "writes = \"old\""),
                (STATIC, "{ \"static-old\" = 100, \"static-new\" = 0 }", ""),
            ],
        );
        let proxy = ProxyBuilder::new(cfg).start().unwrap();
        Site {
            pair,
            _apps: apps,
            _statics: statics,
            proxy,
        }
    }

    /// A plan over both apps with `steps` (TOML) and a 10 s write pause budget;
    /// finalize retires the replication.
    fn plan(&self, steps: &str) -> PlanDir {
        self.plan_retiring(steps, true)
    }

    fn plan_retiring(&self, steps: &str, retire: bool) -> PlanDir {
        let mut pd = PlanDir::new(&format!(
            r#"name = "resume"

[proxies]
admin = ["{}"]

[[apps]]
name = "shop"
route = "{SHOP}"
[apps.database]
source_env = "SHOP_SOURCE"
target_env = "SHOP_TARGET"

[[apps]]
name = "static"
route = "{STATIC}"
old = "static-old"
new = "static-new"
{steps}
[switchover]
max_lag = "5s"
max_pause = "10s"

[finalize]
drain_timeout = "30s"
retire_replication = {retire}
"#,
            admin_url(self.proxy.admin)
        ));
        pd.env = self.pair.env_prefixed("SHOP");
        pd
    }

    /// Writes to the shop and reads of the static route, bounded at 2 minutes.
    fn traffic(&self) -> (Traffic, Traffic) {
        let limit = Duration::from_secs(120);
        (
            Traffic::start(
                self.proxy.http,
                SHOP,
                true,
                4,
                Duration::from_millis(25),
                limit,
            ),
            Traffic::start(
                self.proxy.http,
                STATIC,
                false,
                2,
                Duration::from_millis(25),
                limit,
            ),
        )
    }

    /// Both routes end with every weight, the writes and nothing held on `new`.
    async fn assert_all_on_new(&self) {
        let status = self.proxy.status().await;
        for (host, new) in [(SHOP, "new"), (STATIC, "static-new")] {
            let r = route(&status, host);
            assert_eq!(r["hold"], Value::Null, "{r:#}");
            assert_eq!(r["writes"], new, "{r:#}");
            assert_eq!(r["weights"][new], 100.0, "{r:#}");
        }
    }

    /// No replication slot, publication or subscription is left on either
    /// side (read from the catalogs), and the report lists what finalize dropped.
    async fn assert_retired(&self, report: &Value) {
        for (side, pg) in [("old", &self.pair.old), ("new", &self.pair.new)] {
            let c = connect(pg).await;
            let row = c
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_replication_slots), \
                            (SELECT count(*) FROM pg_publication), \
                            (SELECT count(*) FROM pg_subscription)",
                    &[],
                )
                .await
                .unwrap();
            let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            assert_eq!(
                counts,
                (0, 0, 0),
                "{side}: slots, publications, subscriptions left"
            );
        }
        let retired = report["retired"].as_array().unwrap();
        let dropped = |object: &str, side: &str| {
            retired.iter().any(|o| {
                o["app"] == "shop"
                    && o["object"] == object
                    && o["side"] == side
                    && o["done"] == "dropped"
            })
        };
        for (object, side) in [
            ("publication cutover_shop", "source"),
            ("replication slot cutover_shop_reverse", "target"),
            ("subscription cutover_shop_reverse", "source"),
            ("publication cutover_shop_reverse", "target"),
        ] {
            assert!(
                dropped(object, side),
                "{object} on the {side} not retired: {retired:#?}"
            );
        }
        // The old database keeps refusing writes: its block stays.
        assert!(
            retired.iter().any(|o| o["object"] == "schema _cutover"
                && o["side"] == "source"
                && o["done"] == "kept"),
            "{retired:#?}"
        );
    }

    /// Every acknowledged write is in the new database.
    async fn assert_acked_on_new(&self, writes: &Seen) {
        assert!(!writes.acked.is_empty());
        let ids = item_ids(&self.pair.new).await;
        let missing: Vec<&i64> = writes.acked.iter().filter(|id| !ids.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged writes are not in the new database, e.g. {:?}",
            missing.len(),
            writes.acked.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

const STEPS: &str = r#"
[[steps]]
weights = { old = 50, new = 50 }
bake = "4s"
gates = ["error_ratio < 0.01", "p99 < 2s", "replication_lag < 5s"]

[[steps]]
weights = { new = 100 }
bake = "2s"
gates = ["error_ratio < 0.01", "p99 < 2s", "replication_lag < 5s"]
"#;

fn timeline_has(report: &Value, needle: &str) -> bool {
    report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["what"].as_str().unwrap().contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_and_resume() {
    binaries().await;
    let _db = DATABASES.acquire().await.unwrap();
    let site = Site::start().await;
    // Kept, so that the switchover can be replayed below as if interrupted.
    let pd = site.plan_retiring(STEPS, false);
    let (writes, reads) = site.traffic();
    writes.until_sent(20).await;

    let mut first = pd.spawn_run(&[]);
    pd.until_state("the first step's bake", Duration::from_secs(60), |s| {
        s["phase"] == "steps"
            && s["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["step"] == 0 && e["what"].as_str().unwrap().contains("baking"))
    })
    .await;
    first.kill();
    let status = site.proxy.status().await;
    assert_eq!(route(&status, SHOP)["weights"]["new"], 50.0);
    assert_eq!(route(&status, STATIC)["weights"]["static-new"], 50.0);
    let state = pd.state().unwrap();
    assert_eq!(
        (&state["outcome"], &state["next_step"]),
        (&"running".into(), &0.into())
    );

    let run = pd.cutover("run", &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, first.stderr());
    assert!(
        run.stderr
            .contains("resuming resume at step 1 (new 50%) of 2"),
        "{}",
        run.stderr
    );
    let report = pd.report();
    assert_eq!(report["outcome"], "succeeded", "{report:#}");
    assert_eq!(report["switched"], serde_json::json!(["shop"]));
    assert_eq!(report["last_good_step"], 1);
    assert!(
        report["gates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["passed"] == true)
    );
    site.assert_all_on_new().await;
    let kept = report["retired"].as_array().unwrap();
    assert!(
        kept.iter()
            .any(|o| o["object"] == "replication slot cutover_shop_reverse"
                && o["done"] == "kept"
                && o["detail"]
                    .as_str()
                    .unwrap()
                    .contains("retire_replication = false")),
        "{kept:#?}"
    );

    // A controller killed just after the release, before it saved that the
    // switchover ended, leaves this state behind (the moment is too short to hit
    // with a signal, so the state file is set to it). The resume finishes the
    // switchover again; the new database has taken writes since, and its
    // sequences must not be set back onto ids already used.
    let more = writes.sent();
    writes.until_sent(40).await;
    assert!(writes.sent() >= more + 40);
    let mut state = pd.state().unwrap();
    state["outcome"] = "running".into();
    state["phase"] = "switchover".into();
    state["switching"] = "shop".into();
    state["switched"] = serde_json::json!([]);
    std::fs::write(
        pd.state_path(),
        serde_json::to_string_pretty(&state).unwrap(),
    )
    .unwrap();
    let run = pd.cutover("run", &[]).await.code(0);
    assert!(
        run.stderr
            .contains("the interrupted switchover was completed"),
        "{}",
        run.stderr
    );
    let client = Client::new();
    for i in 0..5 {
        let r = client
            .send(
                site.proxy.http,
                Method::POST,
                SHOP,
                "/items",
                &[],
                &format!("after {i}"),
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.header("x-app")),
            (201, "new"),
            "{}",
            r.body
        );
    }
    writes.until_sent(20).await;
    let writes = writes.stop().await;
    let reads = reads.stop().await;
    assert_eq!(
        writes.codes.keys().copied().collect::<Vec<_>>(),
        vec![201],
        "{:?} {:?}",
        writes.codes,
        writes.errors
    );
    assert!(writes.errors.is_empty(), "{:?}", writes.errors);
    assert_eq!(reads.codes.keys().copied().collect::<Vec<_>>(), vec![200]);
    site.assert_acked_on_new(&writes).await;
    site.assert_all_on_new().await;
}

/// The controller dies at a known point of the switchover (`CUTOVER_CRASH_AT`
/// exits at once, as SIGKILL would), with writes through the proxy and a
/// superuser job writing straight into the old database every 5 ms. The resume
/// finishes or undoes the switchover from what the databases say; every write
/// either side acknowledged ends up on the new database, nothing stays held, and
/// the old database refuses writes at the end.
async fn crash_and_resume(point: &str, outcome: &str) {
    binaries().await;
    let _db = DATABASES.acquire().await.unwrap();
    let site = Site::start().await;
    let job = cutover_tests::WriterKind::Superuser
        .prepare(&site.pair.old)
        .await;
    let mut pd = site.plan("\n[[steps]]\nweights = { old = 50, new = 50 }\nbake = \"2s\"\n");
    let (writes, reads) = site.traffic();
    writes.until_sent(20).await;
    let mut job = job.start(cutover_tests::WriterOptions {
        interval: Duration::from_millis(5),
        max_duration: Duration::from_secs(150),
        ..Default::default()
    });

    pd.env.push(("CUTOVER_CRASH_AT".into(), point.to_string()));
    let first = pd.spawn_run(&[]).wait(Duration::from_secs(120)).await;
    pd.env.retain(|(k, _)| k != "CUTOVER_CRASH_AT");
    assert_eq!(first.code, 137, "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains(&format!("crash point {point} reached")),
        "{}",
        first.stderr
    );
    let state = pd.state().unwrap();
    assert_eq!(state["switching"], "shop", "{state:#}");

    let run = pd.cutover("run", &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = pd.report();
    assert_eq!(report["outcome"], "succeeded", "{report:#}");
    assert!(
        timeline_has(
            &report,
            &format!("the interrupted switchover was {outcome}")
        ),
        "{:#}",
        report["timeline"]
    );
    site.assert_retired(&report).await;
    writes.until_sent(20).await;
    let writes = writes.stop().await;
    let _ = reads.stop().await;
    job.stop().await;
    eprintln!(
        "{point}: proxy writes {:?}; {}",
        writes.codes,
        job.summary()
    );
    site.assert_acked_on_new(&writes).await;
    cutover_tests::assert_all_on(&site.pair.new, &job.acked(), "the superuser job").await;
    site.assert_all_on_new().await;
    // The source refuses every write now, the superuser's too.
    Pair::assert_app_read_only(&site.pair.old).await;
    let su = connect(&site.pair.old).await;
    let err = su
        .execute("INSERT INTO items (body) VALUES ('late')", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_after_the_block_before_the_fence() {
    crash_and_resume("before-fence", "undone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_after_the_fence_before_the_point_of_no_return() {
    crash_and_resume("after-fence", "undone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_after_the_point_of_no_return_before_the_release() {
    crash_and_resume("after-drop", "completed").await;
}

/// `cutover abort` after the switchover: writes go back to the old database through
/// the reverse replication the switchover started (kept past finalize with
/// `retire_replication = false`), every route back to 100% old, and nothing
/// acknowledged on either side is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_after_the_switchover_moves_writes_back() {
    binaries().await;
    let _db = DATABASES.acquire().await.unwrap();
    let site = Site::start().await;
    let pd = site.plan_retiring(
        r#"
[[steps]]
weights = { new = 100 }
bake = "2s"
gates = ["error_ratio < 0.01", "replication_lag < 5s"]
"#,
        false,
    );
    let (writes, reads) = site.traffic();
    writes.until_sent(20).await;
    pd.cutover("run", &[]).await.code(0);
    site.assert_all_on_new().await;
    writes.until_sent(20).await;

    let abort = pd.cutover("abort", &[]).await.code(0);
    assert!(abort.stderr.contains("aborted"), "{}", abort.stderr);
    let report = pd.report();
    assert_eq!(report["outcome"], "aborted", "{report:#}");
    assert!(
        timeline_has(&report, "writes back on \"old\""),
        "{:#}",
        report["timeline"]
    );
    let status = site.proxy.status().await;
    for (host, old, new) in [(SHOP, "old", "new"), (STATIC, "static-old", "static-new")] {
        let r = route(&status, host);
        assert_eq!(r["hold"], Value::Null, "{r:#}");
        assert_eq!(r["writes"], old, "{r:#}");
        assert_eq!(r["weights"][new], 0.0, "{r:#}");
    }
    writes.until_sent(20).await;
    let writes = writes.stop().await;
    let _ = reads.stop().await;
    // Every write acknowledged before, during and after: on the old side now.
    let ids = item_ids(&site.pair.old).await;
    let missing: Vec<&i64> = writes.acked.iter().filter(|id| !ids.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are not in the old database, e.g. {:?}",
        missing.len(),
        writes.acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(writes.errors.is_empty(), "{:?}", writes.errors);
}
