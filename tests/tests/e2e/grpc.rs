//! gRPC: unary and server-streaming calls over cleartext HTTP/2, with deadlines.

use std::time::{Duration, Instant};

use cutover_tests::{EchoClient, GrpcBackend, SlowRequest, grpc_client, grpc_raw_call};
use futures_util::StreamExt;
use tonic::Code;

const HOST: &str = "grpc.test";

// The harness's own server, called directly.

#[tokio::test]
async fn the_harness_grpc_server_answers_each_method() {
    let backend = GrpcBackend::start("g1");
    let mut client = grpc_client(backend.addr, HOST).await;

    let get = client.get("hello").await.unwrap();
    assert_eq!(get.metadata().get("x-backend").unwrap(), "g1");
    assert_eq!(get.metadata().get("x-seen-te").unwrap(), "trailers");
    assert_eq!(get.metadata().get("x-seen-xff").unwrap(), "");
    let get = get.into_inner();
    assert_eq!((get.backend.as_str(), get.text.as_str()), ("g1", "hello"));
    assert_eq!(backend.last_te().as_deref(), Some("trailers"));

    let put = client.put("written").await.unwrap().into_inner();
    assert_eq!((put.backend.as_str(), put.text.as_str()), ("g1", "written"));
    assert_eq!((backend.gets(), backend.puts()), (1, 1));

    let started = Instant::now();
    let stream = client.watch(3, 50).await.unwrap().into_inner();
    let replies: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .expect("the whole stream within 10 s");
    let texts: Vec<String> = replies.into_iter().map(|r| r.unwrap().text).collect();
    assert_eq!(texts, ["0", "1", "2"]);
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "replies 50 ms apart"
    );

    let slow = client.slow(20, Duration::from_secs(5)).await.unwrap();
    assert_eq!(slow.into_inner().text, "20");

    let started = Instant::now();
    let late = client
        .slow(5_000, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up at the deadline"
    );

    let stats = &backend.stats;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!((count(&stats.watches), count(&stats.slows)), (1, 2));
    assert_eq!(stats.calls(), 5);
}

#[tokio::test]
async fn the_harness_grpc_server_enforces_the_calls_deadline() {
    // Sent by hand, so that no client-side timer can answer first: the status
    // comes from the server.
    let backend = GrpcBackend::start("g1");
    let started = Instant::now();
    let r = grpc_raw_call(
        backend.addr,
        HOST,
        "Slow",
        &SlowRequest { ms: 5_000 },
        &[("grpc-timeout", "200m")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.grpc_status(), Some("4"), "DEADLINE_EXCEEDED");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn a_killed_grpc_backend_closes_its_connections() {
    let mut backend = GrpcBackend::start("g1");
    let mut client = grpc_client(backend.addr, HOST).await;
    client.get("before").await.unwrap();
    backend.kill();
    let call = tokio::time::timeout(Duration::from_secs(10), client.get("after"))
        .await
        .expect("an answer within 10 s");
    assert!(call.is_err(), "a call on a closed connection: {call:?}");
    assert!(EchoClient::connect(backend.addr, HOST).await.is_err());
}
