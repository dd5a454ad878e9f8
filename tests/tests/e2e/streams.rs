//! Streams stay streams: a server-sent event reaches the client while the backend
//! still holds back the next one (no buffering in the proxy), and a 100 MB upload
//! passes through in bounded proxy memory (the proxy's peak resident size,
//! `VmHWM`, grows by a small fraction of it).

use std::time::Duration;

use bytes::Bytes;
use cutover_tests::two_backends;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const HOST: &str = "shop.test";

async fn connect(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sent_event_arrives_before_the_next_is_sent() {
    let (old, _new, proxy) = two_backends(&[HOST], (100.0, 0.0), "");
    let mut send = connect(proxy.http).await;
    let req = http::Request::get("/events")
        .header("host", HOST)
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    // The backend sends the last event only once told to: the first one has
    // come through on its own.
    let first = next(&mut body).await;
    assert_eq!(&first[..], b"data: first\n\n");
    old.stats.events_gate.notify_one();
    let last = next(&mut body).await;
    assert_eq!(&last[..], b"data: last\n\n");
}

/// The next data frame of `body`, within 10 s.
async fn next(body: &mut hyper::body::Incoming) -> Bytes {
    tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("a frame within 10 s")
        .expect("a frame")
        .expect("no error")
        .into_data()
        .expect("data")
}

/// The process's peak resident size in kB.
fn peak_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_streams_through_in_bounded_memory() {
    const MB: usize = 1 << 20;
    let (old, _new, proxy) = two_backends(&[HOST], (100.0, 0.0), "writes = \"old\"");
    let before = peak_kb(proxy.pid());
    let mut send = connect(proxy.http).await;
    // Made as it is sent: 100 chunks of 1 MB, never all at once in the client.
    let chunks = futures_util::stream::iter(0..100)
        .map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![7u8; MB]))));
    let req = http::Request::post("/upload")
        .header("host", HOST)
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), send.send_request(req))
        .await
        .expect("the upload within 120 s")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body).trim(),
        (100 * MB).to_string()
    );
    assert_eq!(
        old.stats.uploaded.load(std::sync::atomic::Ordering::SeqCst),
        100 * MB as u64
    );
    let grown = peak_kb(proxy.pid()).saturating_sub(before);
    eprintln!("the proxy's peak resident size grew by {grown} kB for the 100 MB upload");
    assert!(
        grown < 40 * 1024,
        "the proxy's peak memory grew by {grown} kB for a 100 MB upload"
    );
}
