//! Slow uploads and the switchover: 20 clients upload photos at 10 KB/s through
//! the real `cutover-proxy` (writes on old) to the demo app, and `cutover db
//! switchover` starts while every one of them is mid-upload. The proxy reads a
//! write's body whole before it picks a backend, so the half-uploaded requests are
//! not in flight to old: the switchover's drain does not wait for them, it
//! completes within its pause budget, and every upload lands on new with its whole
//! body.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cutover_tests::{Client, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Behind, HEAVY, items};

const HOST: &str = "photos.test";
const UPLOADS: usize = 20;
/// Bytes per 100 ms: 10 KB/s.
const STEP: usize = 1000;

/// The body of upload `i`: 40 KB to 80 KB (4 to 8 s at 10 KB/s, so each is still
/// sending when the hold begins, about a second in), its own content throughout, beginning with
/// its identity `photo-{i}|`.
fn photo(i: usize) -> Vec<u8> {
    let len = 40_000 + (i % 5) * 10_000;
    format!("photo-{i:02}|").bytes().cycle().take(len).collect()
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// How one upload was answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `x-app`: the application that stored it.
    app: String,
    /// `x-cutover-backend`: where the proxy sent it.
    backend: String,
    /// The stored item's id (the body of a 201).
    id: Option<i64>,
    head: String,
}

/// The value of header `name` in a response head, matched without case.
fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .unwrap_or_default()
}

/// A response body as sent: de-chunked when it is chunked.
fn body_of(head: &str, raw: &[u8]) -> Vec<u8> {
    if !header(head, "transfer-encoding").eq_ignore_ascii_case("chunked") {
        return raw.to_vec();
    }
    let (mut out, mut rest) = (Vec::new(), raw);
    // Each chunk takes at least its size line: bounded by the body's length.
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        let start = eol + 2;
        if size == 0 || start + size > rest.len() {
            break;
        }
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[(start + size + 2).min(rest.len())..];
    }
    out
}

/// Uploads `body` as a POST at 10 KB/s, counting the bytes sent in `sent`.
async fn upload(proxy: SocketAddr, body: Vec<u8>, sent: Arc<AtomicUsize>) -> Answer {
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
        sent.fetch_add(chunk.len(), Ordering::SeqCst);
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let id = String::from_utf8_lossy(&body_of(&head, &answer[end..]))
        .trim()
        .parse()
        .ok();
    Answer {
        status,
        app: header(&head, "x-app").to_string(),
        backend: header(&head, "x-cutover-backend").to_string(),
        id,
        head,
    }
}

/// Polls the proxy's `/status` until the route's hold shows, and returns how many
/// bytes each upload had sent by then (the hold had begun before that moment);
/// `None` when `stop` is set first or after 60 s.
async fn at_hold(
    admin: SocketAddr,
    sent: Vec<Arc<AtomicUsize>>,
    stop: Arc<AtomicBool>,
) -> Option<Vec<usize>> {
    let client = Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        if let Ok(r) = client.get(admin, "admin", "/status").await {
            let held = serde_json::from_str::<serde_json::Value>(&r.body)
                .is_ok_and(|s| !s["routes"][0]["hold"].is_null());
            if held {
                return Some(sent.iter().map(|s| s.load(Ordering::SeqCst)).collect());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_in_progress_do_not_hold_up_the_switchover_and_land_on_new() {
    let _heavy = HEAVY.acquire().await.unwrap();
    let behind = Behind::start(HOST, "").await;
    let (pair, proxy) = (&behind.pair, &behind.proxy);

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
                .all(|s| s.load(Ordering::SeqCst) >= 3 * STEP)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        proxy.status().await["routes"][0]["inflight_writes"]["old"],
        0,
        "a half-uploaded write is not in flight to a backend"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(at_hold(proxy.admin, sent.clone(), stop.clone()));
    let v = behind.switchover(HOST, "5s").await;
    stop.store(true, Ordering::SeqCst);
    assert_eq!(v["writes"], "new", "{v:#}");
    let pause = v["write_pause_ms"].as_f64().unwrap();
    assert!(pause < 5_000.0, "the write pause took {pause} ms");
    let at_hold = watcher
        .await
        .unwrap()
        .expect("the route's hold was seen in /status during the switchover");
    let unfinished = sent
        .iter()
        .enumerate()
        .filter(|(i, s)| s.load(Ordering::SeqCst) < photo(*i).len())
        .count();
    eprintln!(
        "switchover done: hold began at {} ms, write pause {pause:.0} ms; bytes sent when \
         the hold was seen: {at_hold:?}; {unfinished} of {UPLOADS} uploads still sending at the end",
        v["hold_started_ms"]
    );
    // Each upload was in progress when the hold began: part of its body sent (at
    // least 3 KB before the switchover started), not all of it (seen after the hold
    // began).
    for (i, n) in at_hold.iter().enumerate() {
        let len = photo(i).len();
        assert!(
            *n >= 3 * STEP && *n < len,
            "upload {i}: {n} of {len} bytes sent when the hold was seen"
        );
    }

    // Every upload was answered by new, and new's database has it whole.
    let mut answers = Vec::with_capacity(UPLOADS);
    for u in uploads {
        answers.push(u.await.unwrap());
    }
    let rows = items(&pair.new).await;
    let mut ids = std::collections::BTreeSet::new();
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(a.status, 201, "upload {i}: {}", a.head);
        assert_eq!(
            (a.app.as_str(), a.backend.as_str()),
            ("new", "new"),
            "upload {i} served by new: {}",
            a.head
        );
        let id =
            a.id.unwrap_or_else(|| panic!("upload {i}: no item id: {}", a.head));
        assert!(ids.insert(id), "upload {i}: id {id} given twice");
        let want = photo(i);
        let stored = rows
            .get(&id)
            .unwrap_or_else(|| panic!("upload {i}: item {id} is not in new's database"));
        assert_eq!(
            (stored.len(), hash(stored.as_bytes())),
            (want.len(), hash(&want)),
            "upload {i} (item {id}) stored on new with its whole body"
        );
        assert!(
            stored.starts_with(&format!("photo-{i:02}|")),
            "item {id} is upload {i}"
        );
    }
    assert_eq!(ids.len(), UPLOADS);
    assert_eq!(proxy.status().await["routes"][0]["writes"], "new");
}
