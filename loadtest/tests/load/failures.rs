//! Each failure is counted under its kind: timeout, reset, status (5xx).

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cutover_load::{LoadSpec, run};

use super::server::{TestServer, reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_is_a_timeout_with_its_latency() {
    let server = TestServer::start(|_req, _conn| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        reply(200, "late", &[])
    });
    let mut spec = LoadSpec::new(&server.url("/slow")).unwrap();
    spec.requests = Some(4);
    spec.connections = 2;
    spec.timeout = Duration::from_millis(200);
    let started = Instant::now();
    let report = run(spec).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout was not enforced"
    );
    assert_eq!(report.requests, 4);
    assert_eq!(report.responses, 0);
    assert_eq!(report.error_kinds["timeout"], 4);
    let max = report.latency_ms.max.unwrap();
    assert!(
        (200.0..1000.0).contains(&max),
        "a timeout is measured at the timeout: {max}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_mid_request_is_a_reset() {
    // A raw socket server: reads the request, then closes without answering.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    let mut spec = LoadSpec::new(&format!("http://{addr}/")).unwrap();
    spec.requests = Some(6);
    spec.connections = 2;
    let report = run(spec).await.unwrap();
    done.store(true, Ordering::Relaxed);
    thread.join().unwrap();
    assert_eq!(report.requests, 6);
    assert_eq!(report.error_kinds["reset"], 6, "{:?}", report.error_kinds);
    assert_eq!(report.errors, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_an_error_of_kind_status_and_a_4xx_is_not() {
    let server = TestServer::start(|req, _conn| {
        let status = if req.uri().path() == "/missing" {
            404
        } else {
            503
        };
        async move { reply(status, "no", &[]) }
    });
    let mut spec = LoadSpec::new(&server.url("/")).unwrap();
    spec.requests = Some(20);
    spec.connections = 2;
    let report = run(spec).await.unwrap();
    assert_eq!(report.errors, 20);
    assert_eq!(report.error_kinds["status"], 20);
    assert_eq!(report.status["503"], 20);
    assert!((report.error_ratio - 1.0).abs() < 1e-9);

    let mut spec = LoadSpec::new(&server.url("/missing")).unwrap();
    spec.requests = Some(20);
    spec.connections = 2;
    let report = run(spec).await.unwrap();
    assert_eq!(report.errors, 0);
    assert_eq!(report.status["404"], 20);
}
