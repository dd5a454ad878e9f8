//! `[apps.cache]` in a plan, against real `redis-server`s: the weather app's cache
//! is copied and followed from the start of the run, and the step that takes new
//! to 100% waits for the copy to converge; a new cache that cannot take the copy
//! (out of memory) keeps the weights short of 100% and fails the run like a gate.

use cutover_tests::{Backend, Cmd, Proxy, ProxyBuilder, RedisServer, two_backend_config};

use crate::common::{PlanDir, admin_url, binaries, route};

const HOST: &str = "weather.test";

fn plan(admin: &str, source: &str, target: &str, wait: &str) -> String {
    format!(
        r#"name = "weather"

[proxies]
admin = ["{admin}"]

[[apps]]
name = "weather"
route = "{HOST}"

[apps.cache]
source = "{source}"
target = "{target}"
wait = "{wait}"

[[steps]]
weights = {{ old = 50, new = 50 }}
bake = "1s"

[[steps]]
weights = {{ old = 0, new = 100 }}
bake = "1s"
"#
    )
}

/// `n` forecasts of about `size` bytes each, half with a TTL, in the source.
fn fill(redis: &RedisServer, n: usize, size: usize) {
    let value = "x".repeat(size);
    let cmds: Vec<Cmd> = (0..n)
        .map(|i| {
            let c = Cmd::new("SET").arg(format!("forecast:{i}")).arg(&value);
            if i % 2 == 0 {
                c.arg("EX").arg("600")
            } else {
                c
            }
        })
        .collect();
    redis.conn().pipeline_ok(&cmds);
}

/// A proxy sending all of the weather app to `old`, and its two backends.
fn weather_at_old() -> ((Backend, Backend), Proxy) {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "");
    ((old, new), ProxyBuilder::new(cfg).start().unwrap())
}

fn dbsize(redis: &RedisServer) -> i64 {
    redis.cmd(&["DBSIZE"]).int()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_to_100_waits_for_the_cache_to_converge() {
    binaries().await;
    let source = RedisServer::start_with(&["--notify-keyspace-events", "KA"]);
    let target = RedisServer::start();
    fill(&source, 5_000, 200);
    let (_backends, proxy) = weather_at_old();
    let pd = PlanDir::new(&plan(
        &admin_url(proxy.admin),
        &source.url,
        &target.url,
        "60s",
    ));

    let run = pd.cutover("run", &[]).await.code(0);
    assert_eq!(dbsize(&target), dbsize(&source), "{}", run.stderr);

    let report = pd.report();
    let cache = &report["caches"]["weather"];
    assert_eq!(cache["mode"], "sync", "{cache:#}");
    assert_eq!(cache["converged"], true, "{cache:#}");
    assert!(cache["keys_copied"].as_u64().unwrap() >= 5_000, "{cache:#}");
    assert_eq!(cache["last_verify"]["missing"], 0, "{cache:#}");
    let ready = cache["ready_at_s"].as_f64().expect("ready_at_s");
    // The cache gate passed at the step to 100%, and before its weights were set.
    let gate = report["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "cache weather converged")
        .unwrap_or_else(|| panic!("no cache gate: {:#}", report["gates"]));
    assert_eq!(
        (&gate["step"], &gate["passed"]),
        (&1.into(), &true.into()),
        "{gate:#}"
    );
    let timeline = report["timeline"].as_array().unwrap();
    let at = |needle: &str| {
        timeline
            .iter()
            .position(|e| e["what"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {timeline:#?}"))
    };
    assert!(
        at("cache converged") < at("step 2 (new 100%): weights"),
        "{timeline:#?}"
    );
    let started = report["started_at"].as_f64().unwrap();
    let set_100 = timeline[at("step 2 (new 100%): weights")]["at"]
        .as_f64()
        .unwrap();
    assert!(
        ready <= set_100 - started + 0.5,
        "ready at {ready}, 100% at {}",
        set_100 - started
    );
    let md = std::fs::read_to_string(pd.out().join("report.md")).unwrap();
    assert!(
        md.contains("## Caches") && md.contains("| weather | sync | yes, at"),
        "{md}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_that_cannot_converge_keeps_new_short_of_100() {
    binaries().await;
    let source = RedisServer::start_with(&["--notify-keyspace-events", "KA"]);
    // 2 MB of room for about 6 MB of forecasts: RESTORE runs out of memory.
    let target =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    fill(&source, 6_000, 1_000);
    let (_backends, proxy) = weather_at_old();
    let pd = PlanDir::new(&plan(
        &admin_url(proxy.admin),
        &source.url,
        &target.url,
        "3s",
    ));

    let run = pd.cutover("run", &[]).await.code(1);
    let report = pd.report();
    assert_eq!(
        report["outcome"], "gate_failed",
        "{report:#}\n{}",
        run.stderr
    );
    let cache = &report["caches"]["weather"];
    assert_eq!(cache["converged"], false, "{cache:#}");
    assert!(cache["errors"].as_u64().unwrap() > 0, "{cache:#}");
    assert!(
        cache["error"].as_str().unwrap().contains("OOM"),
        "{cache:#}"
    );
    let reason = report["stop_reason"].as_str().unwrap();
    assert!(reason.contains("cache weather converged"), "{reason}");
    // New never got 100%: the weights stayed at the last good step.
    let status = proxy.status().await;
    let r = route(&status, HOST);
    assert_eq!(r["weights"]["new"], 50.0, "{r:#}");
}

/// `mode = "warm"`: nothing is copied; the step to 100% waits for the new cache's
/// own hit ratio, which the app's lookups raise as they fill it. A cache nobody
/// reads never warms, and the step fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_only_cache_is_judged_by_its_hit_ratio() {
    binaries().await;
    let source = RedisServer::start();
    let target = RedisServer::start();
    let (_backends, proxy) = weather_at_old();
    let warm = |wait: &str| {
        plan(&admin_url(proxy.admin), &source.url, &target.url, wait)
            .replace("wait = ", "mode = \"warm\"\nhit_ratio = 0.5\nwait = ")
    };

    // Nobody reads the new cache: no hit ratio, and the step to 100% fails.
    let cold = PlanDir::new(&warm("2s"));
    let run = cold.cutover("run", &[]).await.code(1);
    let report = cold.report();
    assert_eq!(
        report["outcome"], "gate_failed",
        "{report:#}\n{}",
        run.stderr
    );
    let reason = report["stop_reason"].as_str().unwrap();
    assert!(
        reason.contains("cache weather hit_ratio >= 0.5"),
        "{reason}"
    );
    assert!(reason.contains("no lookups yet"), "{reason}");
    assert_eq!(target.cmd(&["DBSIZE"]).int(), 0, "warm mode copied keys");

    // An app reading through the cache: a miss fills the key, the next read hits.
    proxy
        .admin_call(
            http::Method::PUT,
            &format!("/routes/{HOST}/weights"),
            r#"{"old":100,"new":0}"#,
        )
        .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (mut conn, stop) = (target.conn(), stop.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            for i in 0..200_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed)
                    || started.elapsed() > std::time::Duration::from_secs(120)
                {
                    break;
                }
                let key = format!("forecast:{}", i % 50);
                if conn.cmd(&["GET", &key]).bytes().is_none() {
                    conn.cmd(&["SET", &key, "sunny"]);
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let pd = PlanDir::new(&warm("60s"));
    let run = pd.cutover("run", &[]).await.code(0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let report = pd.report();
    let cache = &report["caches"]["weather"];
    assert_eq!(cache["mode"], "warm", "{cache:#}\n{}", run.stderr);
    assert!(cache["hit_ratio"].as_f64().unwrap() >= 0.5, "{cache:#}");
    assert_eq!(cache["keys_copied"], 0, "{cache:#}");
    let gate = report["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "cache weather hit_ratio >= 0.5")
        .unwrap_or_else(|| panic!("no cache gate: {:#}", report["gates"]));
    assert_eq!(gate["passed"], true, "{gate:#}");
    assert!(gate["value"].as_f64().unwrap() >= 0.5, "{gate:#}");
}
