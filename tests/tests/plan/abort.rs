//! `cutover abort`: a run stopped mid-steps (Ctrl-C during a bake, exit 3) is
//! rolled back to 100% old with writes on old, the report says "aborted", and the
//! plan cannot be run again on that state. While a run holds the state file,
//! abort refuses.

use std::time::Duration;

use cutover_tests::{Backend, ProxyBuilder, eventually, two_backend_config};

use crate::common::{PlanDir, admin_url, binaries, route};

const HOST: &str = "abort.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_returns_to_old() {
    binaries().await;
    let old = Backend::start("old");
    let new = Backend::start("new");
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let pd = PlanDir::new(&format!(
        r#"[proxies]
admin = ["{}"]

[[apps]]
name = "web"
route = "{HOST}"

[[steps]]
weights = {{ old = 50, new = 50 }}
bake = "60s"
gates = ["error_ratio < 0.5"]
"#,
        admin_url(proxy.admin)
    ));

    let run = pd.spawn_run(&[]);
    eventually(Duration::from_secs(30), "the step's weights", || async {
        let s = proxy.status().await;
        (route(&s, HOST)["weights"]["new"] == 50.0).then_some(())
    })
    .await;
    pd.until_state("the step in the state file", Duration::from_secs(10), |s| {
        s["phase"] == "steps" && s["weights"]["new"] == 50.0
    })
    .await;

    // The running controller holds the state file.
    let busy = pd.cutover("abort", &[]).await.code(1);
    assert!(
        busy.stderr.contains("another cutover run or abort"),
        "{}",
        busy.stderr
    );

    // Ctrl-C: the run saves where it was and exits 3.
    run.interrupt();
    let stopped = run.wait(Duration::from_secs(20)).await.code(3);
    assert!(stopped.stderr.contains("interrupted"), "{}", stopped.stderr);
    let state = pd.state().unwrap();
    assert_eq!(state["outcome"], "running");
    let st = pd.cutover("status", &[]).await.code(0);
    assert!(st.stdout.contains("stopped mid-way"), "{}", st.stdout);

    let aborted = pd.cutover("abort", &[]).await.code(0);
    let status = proxy.status().await;
    let r = route(&status, HOST);
    assert_eq!(
        (&r["weights"]["old"], &r["weights"]["new"]),
        (&100.0.into(), &0.0.into()),
        "{r:#}\n{}",
        aborted.stderr
    );
    assert_eq!(r["writes"], "old", "{r:#}");
    assert_eq!(r["hold"], serde_json::Value::Null);
    let report = pd.report();
    assert_eq!(report["outcome"], "aborted", "{report:#}");
    assert_eq!(pd.state().unwrap()["outcome"], "aborted");
    assert!(aborted.stderr.contains("aborted"), "{}", aborted.stderr);

    // The aborted run does not start again by accident.
    let again = pd.cutover("run", &[]).await.code(1);
    assert!(
        again.stderr.contains("aborted")
            && again
                .stderr
                .contains(&pd.state_path().display().to_string()),
        "{}",
        again.stderr
    );
    let twice = pd.cutover("abort", &[]).await.code(1);
    assert!(twice.stderr.contains("already aborted"), "{}", twice.stderr);
    let status = proxy.status().await;
    assert_eq!(route(&status, HOST)["weights"]["new"], 0.0);
}
