//! A lag gate cannot be fooled by a beat that never arrives. During the bake the
//! subscription's apply stalls (a session on the new database holds a lock on the
//! table it must write next, as a long migration script or a stuck job would);
//! the heartbeat written on the old side never lands. The gate
//! `replication_lag < 3s` must fail within its threshold, not pass on the last
//! good reading nor wait out the 60 s bake, and the weights go back.

use std::time::{Duration, Instant};

use cutover_tests::{App, ProxyBuilder};

use crate::common::{DATABASES, Pair, PlanDir, admin_url, binaries, connect, proxy_config, route};

const SHOP: &str = "shop.test";
const GATE: &str = "replication_lag < 3s";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_subscription_fails_the_lag_gate_within_its_threshold() {
    binaries().await;
    let _db = DATABASES.acquire().await.unwrap();
    let pair = Pair::start_seeded(50).await;
    let apps = (
        App::start("old", &Pair::app_dsn(&pair.old)),
        App::start("new", &Pair::app_dsn(&pair.new)),
    );
    let cfg = proxy_config(
        &[("old", apps.0.addr), ("new", apps.1.addr)],
        &[(SHOP, "{ old = 100, new = 0 }", "writes = \"old\"")],
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let mut pd = PlanDir::new(&format!(
        r#"name = "lag"

[proxies]
admin = ["{}"]

[[apps]]
name = "shop"
route = "{SHOP}"
[apps.database]
source_env = "SHOP_SOURCE"
target_env = "SHOP_TARGET"

[[steps]]
weights = {{ old = 90, new = 10 }}
bake = "60s"
gates = ["{GATE}"]
"#,
        admin_url(proxy.admin)
    ));
    pd.env = pair.env_prefixed("SHOP");
    let run = pd.spawn_run(&[]);
    pd.until_state("the step's bake", Duration::from_secs(90), |s| {
        s["phase"] == "steps"
            && s["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["step"] == 0 && e["what"].as_str().unwrap().contains("baking"))
    })
    .await;

    // EXCLUSIVE blocks the apply worker's UPDATE of the heartbeat and lets reads
    // through: the controller can look, and sees nothing arrive.
    let stall = connect(&pair.new).await;
    stall
        .batch_execute("BEGIN; LOCK TABLE _cutover.heartbeat IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let stalled = Instant::now();
    let run = run.wait(Duration::from_secs(50)).await;
    let took = stalled.elapsed();
    stall.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(run.code, 1, "{}", run.stderr);
    // The threshold, one reading interval (2 s) and the time to put the weights
    // back; far under the 60 s bake.
    assert!(
        took < Duration::from_secs(15),
        "the gate failed after {took:?}"
    );

    let report = pd.report();
    assert_eq!(report["outcome"], "gate_failed", "{report:#}");
    let failed: Vec<&serde_json::Value> = report["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{:#}", report["gates"]);
    assert_eq!(failed[0]["gate"], GATE);
    let detail = failed[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("replication_lag at least") && detail.contains("stopped early"),
        "{detail}"
    );
    assert!(
        failed[0]["value"].as_f64().unwrap() >= 3.0,
        "{:#}",
        failed[0]
    );
    let status = proxy.status().await;
    assert_eq!(route(&status, SHOP)["weights"]["old"], 100.0);
}
