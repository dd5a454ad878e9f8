//! gRPC through the proxy to backends with `protocol = "h2"`: unary and
//! server-streaming calls, trailers both ways of the proxy, deadlines, gRPC calls
//! routed as writes unless the route names them reads, and a read retried past a
//! backend that is gone.

use std::time::{Duration, Instant};

use cutover_tests::{
    EchoRequest, GrpcBackend, ProxyBuilder, SlowRequest, grpc_client, grpc_raw_call,
};
use futures_util::StreamExt;
use tonic::Code;

const HOST: &str = "grpc.test";

/// Two gRPC backends behind a proxy that speaks HTTP/2 to them, with route lines
/// `extra` (e.g. `writes = "new"`).
fn grpc_proxy(
    old: &GrpcBackend,
    new: &GrpcBackend,
    weights: (u32, u32),
    extra: &str,
) -> cutover_tests::Proxy {
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [proxy]\nthreads = 2\n\n\
         [backends.old]\naddrs = [\"{}\"]\nprotocol = \"h2\"\n\n\
         [backends.new]\naddrs = [\"{}\"]\nprotocol = \"h2\"\n\n\
         [[routes]]\nhosts = [\"{HOST}\"]\nweights = {{ old = {}, new = {} }}\n{extra}\n",
        old.addr, new.addr, weights.0, weights.1
    );
    ProxyBuilder::new(cfg).start().expect("the proxy starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_pass_through_to_an_h2_backend() {
    let (old, new) = (GrpcBackend::start("old"), GrpcBackend::start("new"));
    let proxy = grpc_proxy(&old, &new, (100, 0), "");
    let mut client = grpc_client(proxy.http, HOST).await;

    let get = client.get("hello").await.unwrap();
    let meta = get.metadata();
    assert_eq!(meta.get("x-cutover-backend").unwrap(), "old");
    assert_eq!(meta.get("x-request-id").unwrap().len(), 32);
    assert_eq!(
        meta.get("x-seen-te").unwrap(),
        "trailers",
        "te: trailers is kept"
    );
    assert_eq!(meta.get("x-seen-xff").unwrap(), "127.0.0.1");
    assert_eq!(get.into_inner().text, "hello");

    // The status arrives in real trailers, after the message.
    let r = grpc_raw_call(
        proxy.http,
        HOST,
        "Get",
        &EchoRequest { text: "t".into() },
        &[],
    )
    .await;
    assert!(r.headers.get("grpc-status").is_none(), "{:?}", r.headers);
    let trailers = r.trailers.expect("trailers through the proxy");
    assert_eq!(trailers["grpc-status"], "0");

    // A server stream arrives message by message: the first long before the last
    // is sent.
    let started = Instant::now();
    let mut stream = client.watch(5, 300).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let first_after = started.elapsed();
    assert_eq!(first.text, "0");
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .expect("the whole stream within 10 s");
    assert_eq!(rest.len(), 4);
    assert!(rest.iter().all(|r| r.is_ok()), "{rest:?}");
    assert!(
        first_after < Duration::from_millis(900),
        "the first message waited for others: {first_after:?}"
    );

    // The deadline travels as grpc-timeout and the server's DEADLINE_EXCEEDED
    // comes back through the proxy.
    let started = Instant::now();
    let r = grpc_raw_call(
        proxy.http,
        HOST,
        "Slow",
        &SlowRequest { ms: 5_000 },
        &[("grpc-timeout", "200m")],
    )
    .await;
    assert_eq!(r.grpc_status(), Some("4"), "DEADLINE_EXCEEDED");
    let server = r
        .headers
        .get("grpc-message")
        .or_else(|| r.trailers.as_ref()?.get("grpc-message"));
    assert!(
        server.is_some_and(|m| m.to_str().unwrap().starts_with("old")),
        "the server's own answer came back: {server:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let late = client
        .slow(5_000, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");

    assert_eq!(new.stats.calls(), 0, "weights 100/0 keep every call on old");
    assert!(old.gets() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_writes_unless_the_route_names_them_reads() {
    let (old, new) = (GrpcBackend::start("old"), GrpcBackend::start("new"));
    let proxy = grpc_proxy(
        &old,
        &new,
        (100, 0),
        "writes = \"new\"\ngrpc_reads = [\"/cutover.test.Echo/Get*\", \"/cutover.test.Echo/Watch\"]",
    );
    let mut client = grpc_client(proxy.http, HOST).await;
    for i in 0..5 {
        let get = client.get(&format!("r{i}")).await.unwrap().into_inner();
        assert_eq!(get.backend, "old", "a read follows the weights");
        let put = client.put(&format!("w{i}")).await.unwrap().into_inner();
        assert_eq!(put.backend, "new", "a write goes to the write side");
    }
    let mut watch = client.watch(1, 0).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().backend, "old");
    // Slow is not named: a write.
    let slow = client
        .slow(1, Duration::from_secs(5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(slow.backend, "new");
    assert_eq!((old.puts(), new.gets()), (0, 0));
    assert_eq!((old.gets(), new.puts()), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_retried_past_a_dead_grpc_backend_and_a_pinned_write_is_not() {
    let (mut old, new) = (GrpcBackend::start("old"), GrpcBackend::start("new"));
    let proxy = grpc_proxy(
        &old,
        &new,
        (100, 0),
        "writes = \"old\"\ngrpc_reads = [\"/cutover.test.Echo/Get\"]",
    );
    let mut client = grpc_client(proxy.http, HOST).await;
    assert_eq!(client.get("a").await.unwrap().into_inner().backend, "old");
    old.kill();
    // The proxy's shared connection to old is gone and old refuses connects: the
    // read, which nothing was sent for, goes to new.
    let get = tokio::time::timeout(Duration::from_secs(10), client.get("b"))
        .await
        .expect("an answer within 10 s")
        .unwrap()
        .into_inner();
    assert_eq!(get.backend, "new");
    // A write pinned to old does not move to another database: it fails.
    let put = tokio::time::timeout(Duration::from_secs(10), client.put("w"))
        .await
        .expect("an answer within 10 s");
    let status = put.expect_err("a pinned write to a dead backend fails");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(new.puts(), 0, "the write did not reach new's database");
}
