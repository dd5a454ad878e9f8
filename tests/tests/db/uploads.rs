//! Slow uploads and the switchover: 20 clients upload photos at 10 KB/s through
//! the real `cutover-proxy` (writes on old) to the demo app, and `cutover db
//! switchover` starts while every one of them is mid-upload. The proxy reads a
//! write's body whole before it picks a backend, so the half-uploaded requests are
//! not in flight to old: the switchover's drain does not wait for them, it
//! completes within its pause budget, and every upload lands on new with its whole
//! body.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cutover_tests::{App, ProxyBuilder, eventually, two_backend_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{HEAVY, cutover, items};

const HOST: &str = "photos.test";
const UPLOADS: usize = 20;
/// Bytes per 100 ms: 10 KB/s.
const STEP: usize = 1000;

/// The body of upload `i`: 20 KB to 100 KB (2 to 10 s at 10 KB/s), its own
/// content throughout.
fn photo(i: usize) -> Vec<u8> {
    let len = 20_000 + (i % 5) * 20_000;
    format!("photo-{i:02}|").bytes().cycle().take(len).collect()
}

/// Uploads `body` as a POST at 10 KB/s, counting the bytes sent in `sent`; the
/// answer's status line and `x-app` header.
async fn upload(
    proxy: std::net::SocketAddr,
    body: Vec<u8>,
    sent: Arc<AtomicUsize>,
) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let head = format!(
        "POST /items HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for chunk in body.chunks(STEP) {
        tick.tick().await;
        s.write_all(chunk).await.unwrap();
        sent.fetch_add(chunk.len(), Ordering::Relaxed);
    }
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut answer))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let status = answer.lines().next().unwrap_or_default().to_string();
    let app = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-app: "))
        .unwrap_or_default()
        .to_string();
    (status, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_in_progress_do_not_hold_up_the_switchover_and_land_on_new() {
    let _heavy = HEAVY.acquire().await.unwrap();
    let pair = cutover_tests::Pair::start().await;
    let env = pair.env();
    cutover(&["db", "sync"], &env).await.ok();
    let old_app = App::start("old", &cutover_tests::Pair::app_dsn(&pair.old));
    let new_app = App::start("new", &cutover_tests::Pair::app_dsn(&pair.new));
    let cfg = two_backend_config(
        old_app.addr,
        new_app.addr,
        &[HOST],
        (100.0, 0.0),
        "writes = \"old\"",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();

    let sent: Vec<Arc<AtomicUsize>> = (0..UPLOADS).map(|_| Arc::default()).collect();
    let uploads: Vec<_> = (0..UPLOADS)
        .map(|i| tokio::spawn(upload(proxy.http, photo(i), sent[i].clone())))
        .collect();
    // Every upload is under way: at least 3 KB of each has been sent.
    eventually(
        Duration::from_secs(10),
        "every upload to be under way",
        || async {
            sent.iter()
                .all(|s| s.load(Ordering::Relaxed) >= 3 * STEP)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        proxy.status().await["routes"][0]["inflight_writes"]["old"],
        0,
        "a half-uploaded write is not in flight to a backend"
    );

    let admin = format!("http://{}", proxy.admin);
    let run = cutover(
        &[
            "db",
            "switchover",
            "--proxy",
            &admin,
            "--route",
            HOST,
            "--max-pause",
            "5s",
            "--json",
        ],
        &env,
    )
    .await
    .ok();
    let v = run.json();
    assert_eq!(v["writes"], "new", "{v:#}");
    let pause = v["write_pause_ms"].as_f64().unwrap();
    assert!(pause < 5_000.0, "the write pause took {pause} ms");
    let unfinished = sent
        .iter()
        .enumerate()
        .filter(|(i, s)| s.load(Ordering::Relaxed) < photo(*i).len())
        .count();
    eprintln!(
        "switchover done: write pause {pause:.0} ms, {unfinished} of {UPLOADS} uploads still sending"
    );
    assert!(
        unfinished > 0,
        "the switchover must finish while uploads are still in progress"
    );

    let mut on_new = 0;
    for u in uploads {
        let (status, app) = u.await.unwrap();
        assert!(status.contains(" 201 "), "{status}");
        on_new += usize::from(app == "new");
    }
    assert!(
        on_new >= unfinished,
        "every upload still sending at the release went to new ({on_new} of {unfinished})"
    );
    // Every photo is on new, whole (those done before the hold came over by
    // replication).
    let rows = items(&pair.new).await;
    for i in 0..UPLOADS {
        let body = String::from_utf8(photo(i)).unwrap();
        assert!(
            rows.values().any(|b| *b == body),
            "upload {i} ({} bytes) is not on new whole",
            body.len()
        );
    }
}
