//! A failing gate stops the plan and puts the weights back: the new side answers
//! one request in 20 with a 500 while a client sends GETs through the real proxy;
//! the first step (new 10%) fails its error-ratio gate, the weights go back to
//! 100% old, the second step never runs, and the report, the exit code and
//! `cutover status` all name the gate.

use std::time::Duration;

use cutover_tests::{Backend, Proxy, ProxyBuilder, Run, two_backend_config};

use crate::common::{PlanDir, Seen, Traffic, admin_url, binaries, route};

const HOST: &str = "web.test";
const GATE: &str = "error_ratio < 0.001";

/// A run of the two-step plan gated by `gate` (and `p99 < 1s`), through a real
/// proxy at 100% old, while client loops send GETs and `new` fails one request in
/// `fail_one_in` with a 500. The run is expected to fail (exit code 1), and the
/// clients saw no transport error.
struct Gated {
    _old: Backend,
    new: Backend,
    proxy: Proxy,
    pd: PlanDir,
    run: Run,
    seen: Seen,
}

async fn run_gated(fail_one_in: u64, gate: &str) -> Gated {
    binaries().await;
    let old = Backend::start("old");
    let new = Backend::start("new");
    new.fail_one_in(fail_one_in, 500);
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let pd = PlanDir::new(&plan(&admin_url(proxy.admin), gate));
    let traffic = Traffic::start(
        proxy.http,
        HOST,
        false,
        4,
        Duration::from_millis(4),
        Duration::from_secs(60),
    );
    traffic.until_sent(50).await;
    let run = pd.cutover("run", &[]).await.code(1);
    let seen = traffic.stop().await;
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    Gated {
        _old: old,
        new,
        proxy,
        pd,
        run,
        seen,
    }
}

fn plan(admin: &str, gate: &str) -> String {
    format!(
        r#"name = "gates"

[proxies]
admin = ["{admin}"]

[[apps]]
name = "web"
route = "{HOST}"

[[steps]]
weights = {{ old = 90, new = 10 }}
bake = "3s"
gates = ["{gate}", "p99 < 1s"]

[[steps]]
weights = {{ old = 50, new = 50 }}
bake = "3s"
gates = ["{gate}", "p99 < 1s"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_failure_rolls_back() {
    // The first request `new` gets fails, then every 20th.
    let Gated {
        new,
        proxy,
        pd,
        run,
        seen,
        ..
    } = run_gated(20, GATE).await;
    assert!(
        new.requests() > 0,
        "no request reached new: {seen:?}\n{}",
        run.stderr
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
    let g = failed[0];
    assert_eq!((&g["gate"], &g["step"]), (&GATE.into(), &0.into()), "{g:#}");
    let value = g["value"].as_f64().unwrap();
    assert!(value >= 0.001, "{g:#}");
    assert!(
        g["detail"].as_str().unwrap().contains("error_ratio"),
        "{g:#}"
    );
    let reason = report["stop_reason"].as_str().unwrap();
    assert!(
        reason.contains(GATE) && reason.contains("100% old"),
        "{reason}"
    );
    assert!(run.stderr.contains(GATE), "{}", run.stderr);

    // Back to 100% old on the proxy, and the second step never set anything.
    let status = proxy.status().await;
    let r = route(&status, HOST);
    assert_eq!(r["weights"]["old"], 100.0, "{r:#}");
    assert_eq!(r["weights"]["new"], 0.0, "{r:#}");
    let timeline = report["timeline"].as_array().unwrap();
    assert!(
        timeline
            .iter()
            .any(|e| e["step"] == 0 && e["what"].as_str().unwrap().contains("new 10")),
        "{timeline:#?}"
    );
    assert!(
        !timeline
            .iter()
            .any(|e| e["step"] == 1 || e["what"].as_str().unwrap().contains("new 50")),
        "the second step ran: {timeline:#?}"
    );
    assert_eq!(report["next_step"], 0);
    assert_eq!(report["last_good_step"], serde_json::Value::Null);

    // `cutover status` says so too, with a failing exit code.
    let status = pd.cutover("status", &[]).await.code(1);
    assert!(
        status.stdout.contains(GATE) && status.stdout.contains("a gate failed"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("old 100 / new 0"),
        "{}",
        status.stdout
    );
}

/// The new side is judged by its own answers, not diluted by the old side's: at
/// 10% new, a new side failing one request in five makes the route as a whole fail
/// about 2%, under a 5% gate, yet the gate fails (with new's own ratio, about 20%)
/// and the weights go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_new_side_is_not_hidden_by_the_old_sides_traffic() {
    const LOOSE: &str = "error_ratio < 0.05";
    let Gated {
        proxy,
        pd,
        run,
        seen,
        ..
    } = run_gated(5, LOOSE).await;
    // What the users saw as a whole stayed under the gate's threshold.
    let total: u64 = seen.codes.values().sum();
    let failed = seen.codes.get(&500).copied().unwrap_or(0);
    assert!(
        failed > 0 && (failed as f64) < 0.05 * total as f64,
        "{failed} of {total} failed: {seen:?}"
    );

    let report = pd.report();
    assert_eq!(
        report["outcome"], "gate_failed",
        "{report:#}\n{}",
        run.stderr
    );
    let g = report["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["passed"] == false)
        .unwrap_or_else(|| panic!("no failed gate: {:#}", report["gates"]));
    assert_eq!(
        (&g["gate"], &g["step"]),
        (&LOOSE.into(), &0.into()),
        "{g:#}"
    );
    // New's own figure (about 0.2), not the route's (about 0.02).
    let value = g["value"].as_f64().unwrap();
    assert!(value >= 0.1, "{g:#}");
    let r = route(&proxy.status().await, HOST).clone();
    assert_eq!(r["weights"]["new"], 0.0, "{r:#}");
}

/// A typo in the plan stops everything before any proxy is called, with the file,
/// line and column.
#[tokio::test]
async fn plan_errors_name_the_file_line_and_column() {
    let pd = PlanDir::new(
        "name = \"typo\"\n\n[proxies]\nadmin = [\"http://127.0.0.1:9\"]\n\n\
         [[apps]]\nname = \"web\"\nrout = \"web.test\"\n",
    );
    let run = pd.cutover("run", &[]).await.code(1);
    let at = format!("{}:8:1:", pd.plan.display());
    assert!(
        run.stderr.contains(&at) && run.stderr.contains("rout"),
        "want {at:?} and the key:\n{}",
        run.stderr
    );
    assert!(pd.state().is_none(), "a bad plan left a state file");

    // A gate that does not parse is found at load time too, where it is written.
    let pd = PlanDir::new(
        "[proxies]\nadmin = [\"http://127.0.0.1:9\"]\n\n\
         [[apps]]\nname = \"web\"\nroute = \"web.test\"\n\n\
         [[steps]]\nweights = { new = 10 }\nbake = \"1s\"\ngates = [\"p98 < 1s\"]\n",
    );
    let run = pd.cutover("run", &[]).await.code(1);
    let at = format!("{}:11:", pd.plan.display());
    assert!(
        run.stderr.contains(&at) && run.stderr.contains("unknown metric \"p98\""),
        "want {at:?}:\n{}",
        run.stderr
    );
    let run = pd.cutover("status", &[]).await.code(1);
    assert!(run.stderr.contains(&at), "{}", run.stderr);

    // Every problem at once, each where it is written: the typo (with the key it
    // meant) and a duration without its unit.
    let pd = PlanDir::new(
        "[proxies]\nadmin = [\"http://127.0.0.1:9\"]\n\n\
         [[apps]]\nname = \"web\"\nrout = \"web.test\"\n\n\
         [[steps]]\nweights = { new = 10 }\nbake = \"5\"\n",
    );
    let run = pd.cutover("run", &[]).await.code(1);
    let plan = pd.plan.display();
    for want in [
        "2 problems in the plan".to_string(),
        format!("{plan}:6:1: apps[0].rout: unknown key; did you mean `route`?"),
        format!("{plan}:10:8: steps[0].bake: \"5\": the unit is missing; use e.g. \"5s\""),
    ] {
        assert!(run.stderr.contains(&want), "want {want:?}:\n{}", run.stderr);
    }
    assert!(pd.state().is_none(), "a bad plan left a state file");
}
