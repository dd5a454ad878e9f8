//! The `users_*` gates read what the users saw, from the real `cutover-load`'s
//! `--timeline` beside the plan, not the proxies' figures:
//! - a load generator that cannot hold its rate (one connection for thousands of
//!   requests a second) leaves its users waiting seconds while every request the
//!   proxy sees is answered in a millisecond; the proxy's `p99 < 1s` cannot see
//!   it, `users_p99 < 1s` does: the step fails early and the weights go back;
//! - a load that holds its rate passes the same gates, with their values recorded.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cutover_tests::{Backend, Proxy, ProxyBuilder, binary, two_backend_config};

use crate::common::{PlanDir, admin_url, binaries, route};

const HOST: &str = "web.test";

fn plan(admin: &str, gates: &str) -> String {
    format!(
        r#"name = "users"

[proxies]
admin = ["{admin}"]

[[apps]]
name = "web"
route = "{HOST}"

[users]
timeline = "timeline.jsonl"

[[steps]]
weights = {{ old = 90, new = 10 }}
bake = "4s"
gates = [{gates}]

[[steps]]
weights = {{ old = 50, new = 50 }}
bake = "2s"
gates = [{gates}]
"#
    )
}

/// The real cutover-load, writing its timeline into the plan's directory; killed
/// on drop (its `--duration` bounds it anyway).
struct Load(Child);

impl Load {
    fn start(proxy: SocketAddr, dir: &Path, rate: &str, connections: &str) -> Load {
        let child = Command::new(binary("cutover-load"))
            .args(["--rate", rate, "--connections", connections])
            .args(["--warmup", "0s", "--duration", "60s"])
            .arg("--timeline")
            .arg(dir.join("timeline.jsonl"))
            .args(["-H", &format!("Host: {HOST}")])
            .arg(format!("http://{proxy}/"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cutover-load");
        Load(child)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (with a deadline) until the timeline has a line, so the plan starts
/// with the users' figures flowing.
async fn until_timeline(dir: &Path) {
    let path = dir.join("timeline.jsonl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&path).map_or(true, |t| !t.contains('\n')) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cutover-load wrote no timeline line in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two backends behind a real proxy at 100% old, a plan gated by `gates`, and the
/// real cutover-load at `rate` over `connections` writing the plan's timeline.
struct Setup {
    old: Backend,
    new: Backend,
    proxy: Proxy,
    pd: PlanDir,
    _load: Load,
}

async fn setup(gates: &str, rate: &str, connections: &str) -> Setup {
    binaries().await;
    tokio::task::spawn_blocking(|| binary("cutover-load"))
        .await
        .unwrap();
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let pd = PlanDir::new(&plan(&admin_url(proxy.admin), gates));
    let load = Load::start(proxy.http, pd.dir.path(), rate, connections);
    until_timeline(pd.dir.path()).await;
    Setup {
        old,
        new,
        proxy,
        pd,
        _load: load,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_waiting_behind_a_saturated_generator_fail_the_step_the_proxy_would_pass() {
    // One connection cannot carry 10,000 requests a second through a debug
    // build: the schedule runs ahead and each request waits its turn.
    // (Bound whole: a field left out of a pattern would be dropped, and with it
    // the proxy or the load.)
    let s = setup(r#""p99 < 1s", "users_p99 < 1s""#, "10000", "1").await;
    let (old, proxy, pd) = (&s.old, &s.proxy, &s.pd);
    let run = pd.cutover("run", &[]).await.code(1);

    let report = pd.report();
    assert_eq!(report["outcome"], "gate_failed", "{report:#}");
    let gates = report["gates"].as_array().unwrap();
    let failed: Vec<&serde_json::Value> = gates.iter().filter(|g| g["passed"] == false).collect();
    assert_eq!(failed.len(), 1, "{gates:#?}");
    let g = failed[0];
    assert_eq!(
        (&g["gate"], &g["step"]),
        (&"users_p99 < 1s".into(), &0.into())
    );
    assert!(g["value"].as_f64().unwrap() >= 1.0, "{g:#}");
    let detail = g["detail"].as_str().unwrap();
    assert!(
        detail.contains("cutover-load's timeline") && detail.contains("behind"),
        "{detail}"
    );
    assert!(run.stderr.contains("users_p99 < 1s"), "{}", run.stderr);
    // The requests that reached the proxy were answered (the users' wait was
    // before it), and the proxy's own p99 gate was not what failed.
    assert!(old.requests() > 0, "no request reached the proxy");
    // Back at 100% old.
    let status = proxy.status().await;
    let r = route(&status, HOST);
    assert_eq!(
        (r["weights"]["old"].as_f64(), r["weights"]["new"].as_f64()),
        (Some(100.0), Some(0.0)),
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_holds_its_rate_passes_the_users_gates() {
    let gates = r#""users_p99 < 1s", "users_error_ratio < 1%", "users_behind < 200""#;
    let s = setup(gates, "100", "8").await;
    let (old, new, pd) = (&s.old, &s.new, &s.pd);
    let run = pd.cutover("run", &[]).await;
    let report = pd.report();
    assert_eq!(report["outcome"], "succeeded", "{report:#}\n{}", run.stderr);
    let gates = report["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 6, "{gates:#?}");
    for g in gates {
        assert_eq!(g["passed"], true, "{g:#}");
        assert!(
            g["value"].is_number(),
            "a users gate passed on nothing: {g:#}"
        );
        assert!(
            g["detail"]
                .as_str()
                .unwrap()
                .contains("of cutover-load's timeline"),
            "{g:#}"
        );
    }
    assert!(new.requests() > 0 && old.requests() > 0);
}
