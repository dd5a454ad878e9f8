//! Two proxy replicas, and one of them refuses the switchover's hold: the run
//! fails in the switchover and undoes it (no hold left on either replica, writes
//! still on old on both, the source still taking the app's writes), the report
//! names the replica; once the replica is fixed, the run resumes and succeeds.
//!
//! `cutover-proxy` has no setting that makes it refuse a hold (`[hold] max` is only
//! the deadline of a hold call that names none), so replica B's admin API is
//! published through a second, real `cutover-proxy` acting as an admission policy:
//! reads (`/status`, `/metrics`) pass to B, calls that change something (POST,
//! PUT) go to a backend that answers 403. Fixing B's config is then a hot reload
//! of that proxy's file.

use std::net::SocketAddr;
use std::time::Duration;

use cutover_tests::{App, Backend, Client, Proxy, ProxyBuilder, eventually, two_backend_config};
use http::Method;
use serde_json::Value;

use crate::common::{DATABASES, Pair, PlanDir, Traffic, admin_url, binaries, item_ids, route};

const HOST: &str = "shop.test";

/// The config of the admission proxy in front of B's admin API: writes go to
/// `writes` (`deny` or `replica`).
fn gate_config(replica_admin: SocketAddr, deny: SocketAddr, writes: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [proxy]\nthreads = 1\n\n\
         [backends.replica]\naddrs = [\"{replica_admin}\"]\n\n\
         [backends.deny]\naddrs = [\"{deny}\"]\n\n\
         [[routes]]\nhosts = [\"*\"]\nweights = {{ replica = 100 }}\nwrites = \"{writes}\"\n"
    )
}

async fn assert_writes_on(proxies: &[&Proxy], side: &str) {
    for p in proxies {
        let s = p.status().await;
        let r = route(&s, HOST);
        assert_eq!(r["hold"], Value::Null, "{r:#}");
        assert_eq!(r["writes"], side, "{r:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_hold_refused() {
    binaries().await;
    let _db = DATABASES.acquire().await.unwrap();
    let pair = Pair::start_seeded(200).await;
    let old_app = App::start("old", &Pair::app_dsn(&pair.old));
    let new_app = App::start("new", &Pair::app_dsn(&pair.new));
    let cfg = two_backend_config(
        old_app.addr,
        new_app.addr,
        &[HOST],
        (100.0, 0.0),
        "writes = \"old\"",
    );
    let a = ProxyBuilder::new(cfg.clone()).start().unwrap();
    let b = ProxyBuilder::new(cfg).start().unwrap();
    let deny = Backend::start("admission-policy");
    deny.fail_with(403);
    let gate = ProxyBuilder::new(gate_config(b.admin, deny.addr, "deny"))
        .start()
        .unwrap();
    let b_url = format!("http://{}", gate.http);

    let mut pd = PlanDir::new(&format!(
        r#"name = "replicas"

[proxies]
admin = ["{}", "{b_url}"]

[[apps]]
name = "shop"
route = "{HOST}"
[apps.database]
source_env = "SHOP_SOURCE"
target_env = "SHOP_TARGET"

[switchover]
max_lag = "5s"
max_pause = "5s"

[finalize]
drain_timeout = "30s"
"#,
        admin_url(a.admin)
    ));
    pd.env = pair.env_prefixed("SHOP");

    // Writes through both replicas for the whole test.
    let limit = Duration::from_secs(120);
    let every = Duration::from_millis(25);
    let via_a = Traffic::start(a.http, HOST, true, 2, every, limit);
    let via_b = Traffic::start(b.http, HOST, true, 2, every, limit);
    via_b.until_sent(10).await;

    let run = pd.cutover("run", &[]).await.code(1);
    assert!(deny.writes() > 0, "the hold never reached the policy");
    let report = pd.report();
    assert_eq!(report["outcome"], "failed", "{report:#}");
    let reason = report["stop_reason"].as_str().unwrap();
    assert!(
        reason.contains(&b_url) && reason.contains("hold") && reason.contains("403"),
        "{reason}"
    );
    assert!(
        reason.contains("writes did not move"),
        "the undo is not said: {reason}"
    );
    assert!(run.stderr.contains(&b_url), "{}", run.stderr);
    assert_eq!(report["switched"], serde_json::json!([]));
    assert_eq!(report["switching"], Value::Null);
    assert_writes_on(&[&a, &b], "old").await;

    // The source was never blocked: the app's writes land there, through both.
    let client = Client::new();
    for p in [&a, &b] {
        let r = client
            .send(p.http, Method::POST, HOST, "/items", &[], "still old")
            .await
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.header("x-app")),
            (201, "old"),
            "{}",
            r.body
        );
    }

    // Fix B: the policy lets its writes through after a hot reload.
    std::fs::write(
        gate.config_path(),
        gate_config(b.admin, deny.addr, "replica"),
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the reload of B's policy",
        || async {
            let s = gate.status().await;
            (s["routes"][0]["writes"] == "replica").then_some(())
        },
    )
    .await;

    let run = pd.cutover("run", &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("resuming replicas at the switchovers (0 of 1 done)"),
        "{}",
        run.stderr
    );
    let report = pd.report();
    assert_eq!(report["outcome"], "succeeded", "{report:#}");
    assert_writes_on(&[&a, &b], "new").await;
    for p in [&a, &b] {
        assert_eq!(route(&p.status().await, HOST)["weights"]["new"], 100.0);
    }

    via_a.until_sent(10).await;
    let mut acked = via_a.stop().await;
    let from_b = via_b.stop().await;
    acked.acked.extend(from_b.acked);
    let ids = item_ids(&pair.new).await;
    let missing: Vec<&i64> = acked.acked.iter().filter(|id| !ids.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing on new: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
