//! `limits.send` for one HTTP/2 stream: a client that keeps reading its socket but
//! never opens a stream's flow-control window leaves no write pending on the
//! socket, so only the stream can tell. It is reset `send` after its answer's last
//! frame began waiting, counted under its route, and what it held (the upstream
//! connection, the in-flight count) is let go while the connection and other
//! clients are served on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cutover_tests::{Backend, Client, ProxyBuilder, eventually};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::limits::{HOST, client_timeouts, config, inflight};

/// A host of its own for the good client, served by `new` only, so that `old`
/// sees nothing but the stalled stream.
const GOOD: &str = "good.test";

fn get(host: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri(format!("http://{host}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// An HTTP/2 client with a 4 KiB stream window that never reads the body of its
/// 50 MB answer (so sends no WINDOW_UPDATE) is reset about `send` (2 s) after the
/// answer began, counted as `send` under its route; the request leaves the
/// in-flight count, the upstream connection is closed, and meanwhile a good client
/// gets every answer, on its own connection and on the stalled client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_window_stays_shut_is_reset_at_send() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let good_route =
        format!("\n[[routes]]\nhosts = [\"{GOOD}\"]\nweights = {{ old = 0, new = 100 }}");
    let cfg = config(&old, &new, (100.0, 0.0), &good_route, "send = \"2s\"");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();

    // The good client: one GET at a time on its own connection until told to stop
    // (at most 30 s).
    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let (stop, addr) = (stop.clone(), proxy.http);
        tokio::spawn(async move {
            let client = Client::new();
            let started = Instant::now();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(30) {
                let r = client.get(addr, GOOD, "/").await;
                statuses.push(r.map(|r| r.status.as_u16()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        })
    };

    let stream = TcpStream::connect(proxy.http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4096)
        .initial_connection_window_size(4 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    // The connection task reads the socket throughout (and answers PINGs).
    tokio::spawn(conn);
    let resp = send
        .send_request(get(HOST, "/bytes/50000000"))
        .await
        .unwrap();
    let began = Instant::now();
    assert_eq!(resp.status(), 200);
    // Held, never polled: no byte of it is taken, no window opened.
    let mut body = resp.into_body();
    eventually(
        Duration::from_secs(2),
        "the 50 MB answer in flight",
        || async { (inflight(&proxy).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(old.connections_open(), 1, "the stalled answer's upstream");

    let cut = eventually(Duration::from_secs(10), "the stream cut off", || async {
        (client_timeouts(&proxy, HOST, "send").await >= 1.0).then(|| began.elapsed())
    })
    .await;
    assert!(
        cut >= Duration::from_millis(1900) && cut <= Duration::from_millis(3500),
        "cut off {cut:?} after the answer began (send 2s)"
    );
    eventually(Duration::from_secs(5), "nothing in flight", || async {
        (inflight(&proxy).await == 0).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the upstream connection closed",
        || async { (old.connections_open() == 0).then_some(()) },
    )
    .await;
    assert_eq!(client_timeouts(&proxy, HOST, "send").await, 1.0);
    assert_eq!(client_timeouts(&proxy, "-", "send").await, 0.0);

    // The client sees its stream reset after what its window let through.
    let mut got = 0usize;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                Some(Ok(f)) => got += f.data_ref().map_or(0, Bytes::len),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(end.is_err(), "the stream ended cleanly after {got} bytes");
    assert!(got < 1 << 20, "the client got {got} bytes");

    // The connection serves on.
    let resp = send.send_request(get(GOOD, "/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();

    stop.store(true, Ordering::SeqCst);
    let statuses = good.await.unwrap();
    assert!(statuses.len() >= 20, "{} good answers", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == Ok(200)),
        "the good client: {statuses:?}"
    );
}
