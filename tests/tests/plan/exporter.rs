//! The controller's `/metrics` served on loopback and scraped like a Prometheus
//! server would, then read back with the controller's own parser.

use std::sync::Arc;

use cutover_controller::plan::exporter::{ControllerMetrics, serve};
use cutover_controller::plan::metrics::parse;
use cutover_tests::Client;
use http::Method;

#[tokio::test]
async fn the_exporter_serves_what_the_run_reports() {
    let metrics = Arc::new(ControllerMetrics::new());
    let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), metrics.clone())
        .await
        .unwrap();
    metrics.set_phase("platform", "sync");
    metrics.set_lag("tasks", Some(1.5), Some(8192));

    let client = Client::new();
    let r = client
        .send(addr, Method::GET, "controller", "/metrics", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .starts_with("text/plain; version=0.0.4")
    );
    let samples = parse(&r.body).unwrap();
    let value = |name: &str, label: (&str, &str)| {
        samples
            .iter()
            .find(|s| s.name == name && s.label(label.0) == Some(label.1))
            .map(|s| s.value)
    };
    assert_eq!(
        value("cutover_replication_lag_seconds", ("database", "tasks")),
        Some(1.5)
    );
    assert_eq!(
        value("cutover_replication_lag_bytes", ("database", "tasks")),
        Some(8192.0)
    );
    assert_eq!(value("cutover_plan_phase", ("phase", "sync")), Some(1.0));
    assert_eq!(
        value("cutover_plan_phase", ("phase", "preflight")),
        Some(0.0)
    );

    let r = client
        .send(addr, Method::GET, "controller", "/healthz", &[], "")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok\n"));
    let r = client
        .send(addr, Method::POST, "controller", "/metrics", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404);

    task.abort();
    let _ = task.await;
    assert!(
        client
            .send(addr, Method::GET, "controller", "/metrics", &[], "")
            .await
            .is_err(),
        "stopped with its task"
    );
}
