//! `[limits]` on the client side: slow and idle clients are cut off at
//! `request_head`, `keepalive`, `send` and `body_idle`, while a good client next to
//! them is served within the SLO (measured by the real `cutover-load` and its `--slo`). The
//! caps (connections, header and body sizes, upstream pool, retry budget, hold
//! queue) are in `limits_caps.rs`; the helpers here serve both.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cutover_tests::{Backend, Proxy, ProxyBuilder, binary, eventually, two_backend_config};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub(crate) const HOST: &str = "shop.test";

/// Tests that measure a good client's latency (or load the proxy hard) take this,
/// so that they do not run at the same time in this process and skew each other.
pub(crate) static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the good client beside an attack must get: every request answered, and
/// the project's SLO (a p99 under 1 s). How fast it stays is a benchmark's figure
/// (`bench/proxy.sh`, its slowloris phase), not a test's: a busy machine moves
/// milliseconds, but a proxy stalled by its attackers misses this by seconds or
/// fails requests.
pub(crate) const GOOD_SLO: &str = "p99<1s,errors<=0";

/// `two_backend_config` for [`HOST`] with `route` lines and a `[limits]` table.
pub(crate) fn config(
    old: &Backend,
    new: &Backend,
    weights: (f64, f64),
    route: &str,
    limits: &str,
) -> String {
    two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        weights,
        &format!("{route}\n\n[limits]\n{limits}\n"),
    )
}

/// A TCP connection to `to` from the loopback address `from`.
pub(crate) async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
pub(crate) struct Raw {
    pub status: u16,
    pub head: String,
    /// As sent (a chunked body keeps its framing).
    pub body: Vec<u8>,
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Appends what `s` reads next to `buf`; an error when it closed.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    match s.read(&mut chunk).await {
        Ok(0) => Err(format!(
            "closed after {} bytes: {:?}",
            buf.len(),
            String::from_utf8_lossy(&buf[..buf.len().min(300)])
        )),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(format!("after {} bytes: {e}", buf.len())),
    }
}

/// Reads one response (its body delimited by Content-Length or chunked) within 5 s.
pub(crate) async fn read_response(s: &mut TcpStream) -> Result<Raw, String> {
    let read = async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            read_more(s, &mut buf).await?;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        let lower = head.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = lower.contains("transfer-encoding: chunked");
        loop {
            let done = match length {
                Some(n) => buf.len() >= head_end + n,
                None => !chunked || buf.ends_with(b"0\r\n\r\n"),
            };
            if done {
                break;
            }
            read_more(s, &mut buf).await?;
        }
        Ok(Raw {
            status,
            head,
            body: buf[head_end..].to_vec(),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| "no complete answer within 5 s".to_string())?
}

/// A keep-alive `GET /` for [`HOST`] on `s`, and its response.
pub(crate) async fn get_on(s: &mut TcpStream) -> Result<Raw, String> {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    read_response(s).await
}

/// Sends `request` on a new connection (a write error is ignored: the proxy may
/// answer and close before taking it all) and reads the response.
pub(crate) async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<Raw, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = s.write_all(request).await;
    read_response(&mut s).await
}

/// Waits until the peer closes `s` (end of stream or reset), reading and discarding
/// what arrives meanwhile: how long that took and how many bytes came; None if `s`
/// is still open after `within`.
pub(crate) async fn wait_closed(s: &mut TcpStream, within: Duration) -> Option<(Duration, usize)> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some((start.elapsed(), got)),
            Ok(Ok(n)) => got += n,
        }
    }
}

/// A finished `cutover-load` run.
pub(crate) struct LoadRun {
    pub code: Option<i32>,
    /// The JSON report (Null when there is none).
    pub report: Value,
    pub stderr: String,
}

impl LoadRun {
    pub fn passed(&self) -> bool {
        self.code == Some(0)
    }

    /// The figures that matter here, for messages.
    pub fn summary(&self) -> String {
        let r = &self.report;
        format!(
            "exit {:?}: {} requests at {:.0}/s, errors {}, status {}, p50 {} ms, p99 {} ms, max {} ms, slo {}; stderr: {}",
            self.code,
            r["requests"],
            r["rate_achieved"].as_f64().unwrap_or(0.0),
            r["errors"],
            r["status"],
            r["latency_ms"]["p50"],
            r["latency_ms"]["p99"],
            r["latency_ms"]["max"],
            r["slo"],
            self.stderr.trim()
        )
    }
}

/// Runs the real `cutover-load` against the proxy at `addr` for [`HOST`] with
/// `args` (rate, duration, `--slo` …), quietly, and returns its report.
pub(crate) async fn load(addr: SocketAddr, args: &[&str]) -> LoadRun {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("temp dir");
        let json = dir.path().join("report.json");
        let out = Command::new(binary("cutover-load"))
            .args(&args)
            .arg("--json")
            .arg(&json)
            .arg("-H")
            .arg(format!("Host: {HOST}"))
            .arg(format!("http://{addr}/"))
            .output()
            .expect("run cutover-load");
        let report = std::fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        LoadRun {
            code: out.status.code(),
            report,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("the cutover-load thread")
}

/// Requests in flight on the first route, all backends together.
pub(crate) async fn inflight(proxy: &Proxy) -> u64 {
    let s = proxy.status().await;
    s["routes"][0]["inflight"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

pub(crate) async fn client_timeouts(proxy: &Proxy, route: &str, kind: &str) -> f64 {
    proxy
        .metric(
            "cutover_client_timeouts_total",
            &[("route", route), ("kind", kind)],
        )
        .await
}

/// Runs `work` while sampling the proxy's resident memory (`VmRSS`) every 20 ms:
/// its output and the peak seen.
pub(crate) async fn with_peak_rss<T>(proxy: &Proxy, work: impl Future<Output = T>) -> (T, u64) {
    let mut work = std::pin::pin!(work);
    let mut peak = proxy.rss().unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            out = &mut work => return (out, peak.max(proxy.rss().unwrap_or(0))),
            _ = tick.tick() => peak = peak.max(proxy.rss().unwrap_or(0)),
        }
    }
}

/// Warms the proxy up on connections that close (so none is left open), and
/// returns its resident memory then: the baseline for an attack.
pub(crate) async fn warm_rss(proxy: &Proxy) -> u64 {
    let warm = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    for _ in 0..20 {
        assert_eq!(
            exchange(proxy.http, warm.as_bytes()).await.unwrap().status,
            200
        );
    }
    proxy.rss().expect("the proxy's VmRSS")
}

/// [`warm_rss`] after a second of the good client's own traffic (1,000 req/s), so
/// that the baseline holds what serving it takes and the growth is the attack's.
pub(crate) async fn warm_rss_under_load(proxy: &Proxy) -> u64 {
    let warm = load(proxy.http, &["-r", "1000", "-d", "1s"]).await;
    assert!(warm.passed(), "the warm-up: {}", warm.summary());
    warm_rss(proxy).await
}

/// Lets this process (and the proxies it starts, which inherit it) hold `want`
/// open files, up to the hard limit.
pub(crate) fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < want {
        // Root (as in CI) may raise the hard limit too; others get what it allows.
        if setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want)).is_err() {
            setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).expect("setrlimit");
        }
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        soft >= want,
        "RLIMIT_NOFILE is {soft} (hard {hard}); need {want}"
    );
}

/// The first 10 bytes of the HTTP/2 preface, then silence: closed at `request_head`.
#[tokio::test]
async fn a_partial_http2_preface_is_closed_at_request_head() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = config(&old, &new, (50.0, 50.0), "", "request_head = \"1s\"");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let before = client_timeouts(&proxy, "-", "request_head").await;
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    s.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..10])
        .await
        .unwrap();
    let (after, got) = wait_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the connection is closed within 5 s");
    assert!(
        after >= Duration::from_millis(900) && after <= Duration::from_millis(2500),
        "closed after {after:?} (request_head 1s)"
    );
    assert_eq!(got, 0, "no answer to a half preface");
    assert_eq!(
        client_timeouts(&proxy, "-", "request_head").await - before,
        1.0
    );
    // A whole preface is served as ever.
    let r = cutover_tests::h2_get(proxy.http, HOST, "/").await.unwrap();
    assert_eq!(r.status, 200);
}

/// A client that asks for 50 MB and reads none of it is cut off `send` (1 s) after
/// the proxy's writes stall, counted under its route; the request leaves the
/// in-flight count and the proxy serves on.
#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_at_send() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = config(&old, &new, (100.0, 0.0), "", "send = \"1s\"");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let before = client_timeouts(&proxy, HOST, "send").await;
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    s.write_all(format!("GET /bytes/50000000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let sent = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the 50 MB answer in flight",
        || async { (inflight(&proxy).await == 1).then_some(()) },
    )
    .await;
    let cut = eventually(Duration::from_secs(10), "the client cut off", || async {
        (client_timeouts(&proxy, HOST, "send").await > before).then(|| sent.elapsed())
    })
    .await;
    assert!(
        cut >= Duration::from_secs(1) && cut <= Duration::from_millis(3500),
        "cut off {cut:?} after the request (send 1s)"
    );
    eventually(Duration::from_secs(5), "nothing in flight", || async {
        (inflight(&proxy).await == 0).then_some(())
    })
    .await;
    assert_eq!(client_timeouts(&proxy, HOST, "send").await - before, 1.0);
    assert_eq!(client_timeouts(&proxy, "-", "send").await, 0.0);
    // What the client can still read is what the socket buffers held: it ends.
    let (_, got) = wait_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the connection was closed");
    assert!(got < 50_000_000, "the client got {got} bytes");
    let r = proxy.get(HOST, "/").await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "old"));
}

/// An upload at one byte a second against `body_idle = "500ms"` gets 408 (counted as
/// the route's `request_body` timeout) and never reaches a backend; an upload with
/// shorter gaps is served whole.
#[tokio::test]
async fn a_trickled_upload_gets_408_at_body_idle_and_reaches_no_backend() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let route = "timeouts = { body_idle = \"500ms\" }";
    let proxy = ProxyBuilder::new(config(&old, &new, (50.0, 50.0), route, ""))
        .start()
        .unwrap();
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    s.write_all(
        format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\na").as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut next = tokio::time::Instant::now();
    // At most 10 more bytes, one a second.
    for _ in 0..10 {
        next += Duration::from_secs(1);
        tokio::select! {
            r = s.read(&mut buf) => {
                if let Ok(n @ 1..) = r {
                    answer.extend_from_slice(&buf[..n]);
                }
                break;
            }
            () = tokio::time::sleep_until(next) => {
                let _ = s.write_all(b"a").await;
            }
        }
    }
    let answered = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        answered >= Duration::from_millis(450) && answered <= Duration::from_millis(1500),
        "answered after {answered:?} (body_idle 500ms)"
    );
    eprintln!("upload: {:?} after {answered:?}", answer.lines().next());
    assert_eq!(old.requests() + new.requests(), 0, "no backend saw it");
    assert_eq!(
        client_timeouts(&proxy, HOST, "request_body").await,
        1.0,
        "{}",
        proxy.metrics().await
    );
    assert_eq!(
        proxy
            .metric(
                "cutover_requests_total",
                &[("backend", "proxy"), ("code", "408"), ("route", HOST)]
            )
            .await,
        1.0
    );

    // Ten bytes 200 ms apart: never idle for 500 ms, so served whole.
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"b").await.unwrap();
    }
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), "10");
    assert_eq!(client_timeouts(&proxy, HOST, "request_body").await, 1.0);
}

/// A proxy with `keepalive = "1s"` and `request_head = "3s"`.
fn keepalive_proxy() -> (Backend, Backend, Proxy) {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let limits = "keepalive = \"1s\"\nrequest_head = \"3s\"";
    let proxy = ProxyBuilder::new(config(&old, &new, (50.0, 50.0), "", limits))
        .start()
        .unwrap();
    (old, new, proxy)
}

/// `keepalive = "1s"`: an HTTP/1.1 connection idle after its response is closed
/// about a second later, counted as a `keepalive` timeout.
#[tokio::test]
async fn an_idle_http1_connection_is_closed_at_keepalive() {
    let (_old, _new, proxy) = keepalive_proxy();
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    assert_eq!(get_on(&mut s).await.unwrap().status, 200);
    closed_at_keepalive(&mut s, &proxy, "the response").await;
}

/// With `keepalive = "1s"`: `s`, idle since `after` ended, is closed about a second
/// later with nothing more sent, and one `keepalive` timeout is counted.
async fn closed_at_keepalive(s: &mut TcpStream, proxy: &Proxy, after: &str) {
    let (waited, got) = wait_closed(s, Duration::from_secs(5))
        .await
        .expect("the idle connection is closed within 5 s");
    assert!(
        waited >= Duration::from_millis(900) && waited <= Duration::from_millis(2500),
        "closed {waited:?} after {after} (keepalive 1s)"
    );
    assert_eq!(got, 0);
    eventually(
        Duration::from_secs(2),
        "one keepalive timeout counted",
        || async { (client_timeouts(proxy, "-", "keepalive").await == 1.0).then_some(()) },
    )
    .await;
}

/// `keepalive = "1s"`: an exchange that lasts 2.5 s (longer than the keep-alive,
/// through the supervisor's looks while it is under way) keeps its connection;
/// once it has ended, the idle connection is closed about a second later, timed
/// from the end of the response, not from a look made while it was under way.
#[tokio::test]
async fn a_long_exchange_keeps_its_connection_and_the_keepalive_runs_from_its_end() {
    let (_old, _new, proxy) = keepalive_proxy();
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    assert_eq!(get_on(&mut s).await.unwrap().status, 200);
    s.write_all(format!("GET /slow/2500 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let asked = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(String::from_utf8_lossy(&buf).into_owned()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            // The backend's answers are small and have a Content-Length.
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return Ok(head);
                }
            }
        }
    })
    .await
    .expect("an answer within 10 s");
    let head = r.unwrap_or_else(|got| panic!("closed during the slow exchange; got {got:?}"));
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        asked.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        asked.elapsed()
    );
    closed_at_keepalive(&mut s, &proxy, "the slow response").await;
}

/// `keepalive = "1s"`: an HTTP/2 connection with no request under way gets GOAWAY
/// about a second after its last response, and ends.
#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_at_keepalive() {
    let (_old, _new, proxy) = keepalive_proxy();
    let stream = TcpStream::connect(proxy.http).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{HOST}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let done = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle HTTP/2 connection ends within 5 s")
        .unwrap()
        .unwrap();
    let after = done.elapsed();
    drop(send);
    assert!(
        after >= Duration::from_millis(900) && after <= Duration::from_millis(2500),
        "the HTTP/2 connection ended {after:?} after its response (keepalive 1s, request_head 3s)"
    );
    assert_eq!(client_timeouts(&proxy, "-", "keepalive").await, 1.0);
}

/// The first request head has `request_head` (3 s) to arrive, not `keepalive`
/// (1 s): a head begun at once and finished 1.5 s later is served.
#[tokio::test]
async fn a_first_head_has_request_head_not_keepalive_to_arrive() {
    let (_old, _new, proxy) = keepalive_proxy();
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rest = format!("Host: {HOST}\r\n\r\n");
    let r = match s.write_all(rest.as_bytes()).await {
        Ok(()) => read_response(&mut s).await,
        Err(e) => Err(e.to_string()),
    };
    assert_eq!(
        r.as_ref().map(|r| r.status),
        Ok(200),
        "a first head sent over 1.5 s (request_head 3s, keepalive 1s): {r:?}"
    );
    assert_eq!(client_timeouts(&proxy, "-", "keepalive").await, 0.0);
}

/// Only the wait before a head's first byte is `keepalive` (30 s): every head,
/// the first and the next ones on a keep-alive connection, has `request_head`
/// (2 s) from its first byte to arrive. A next head sent whole after 3 s idle is
/// served; one trickled a byte a second is closed about 2 s after its first byte,
/// counted as `request_head`.
#[tokio::test]
async fn a_next_head_has_request_head_from_its_first_byte() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let limits = "request_head = \"2s\"\nkeepalive = \"30s\"";
    let proxy = ProxyBuilder::new(config(&old, &new, (50.0, 50.0), "", limits))
        .start()
        .unwrap();
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    assert_eq!(get_on(&mut s).await.unwrap().status, 200);
    // The client idles longer than request_head: that is keep-alive time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(get_on(&mut s).await.unwrap().status, 200);
    let before = client_timeouts(&proxy, "-", "request_head").await;

    let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let began = Instant::now();
    let mut closed = None;
    let mut buf = [0u8; 1024];
    // One byte a second until the proxy closes (at most the head's length).
    for b in head.bytes() {
        if s.write_all(&[b]).await.is_err() {
            closed = Some(began.elapsed());
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => {
                closed = Some(began.elapsed());
                break;
            }
            Ok(Ok(n)) => panic!(
                "an answer to a head still trickling: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }
    let closed = closed.expect("the trickled head was let through");
    assert!(
        closed >= Duration::from_millis(1800) && closed <= Duration::from_millis(3500),
        "closed {closed:?} after the head's first byte (request_head 2s, keepalive 30s)"
    );
    eventually(
        Duration::from_secs(2),
        "the request_head timeout counted",
        || async {
            let n = client_timeouts(&proxy, "-", "request_head").await - before;
            (n == 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(client_timeouts(&proxy, "-", "keepalive").await, 0.0);
}

/// What the slow backend below does with a request body.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reading {
    /// Reads its first `bytes` at `per_sec`, the rest at full speed, then answers
    /// 200 at once.
    Slow { bytes: usize, per_sec: usize },
    /// Reads `bytes`, then stops reading and never answers.
    Stops { bytes: usize },
}

/// A backend on `127.0.0.1:0` that reads each request body as `reading` says
/// (`/stop` stops, any other path is slow). Its receive buffer is small, so what
/// it has not read stays on the proxy's side. Returns its address and the body
/// bytes it read in all.
pub(crate) async fn slow_reader(reading: Reading) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    let read = Arc::new(AtomicUsize::new(0));
    let total = read.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let total = total.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut head = Vec::new();
                let head_end = loop {
                    if let Some(i) = find(&head, b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                };
                let text = String::from_utf8_lossy(&head[..head_end]).to_ascii_lowercase();
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("the proxy sends a buffered body with its Content-Length");
                let reading = if text.starts_with("post /stop ") {
                    Reading::Stops { bytes: 1 << 20 }
                } else {
                    reading
                };
                let mut got = head.len() - head_end;
                let start = tokio::time::Instant::now();
                while got < length {
                    match reading {
                        Reading::Slow { bytes, per_sec } if got < bytes => {
                            // Paced: byte `got` is read no sooner than `got / per_sec`.
                            let at = Duration::from_secs_f64(got as f64 / per_sec as f64);
                            tokio::time::sleep_until(start + at).await;
                        }
                        Reading::Stops { bytes } if got >= bytes => {
                            // Holds the connection unread and never answers (the
                            // test's end drops it).
                            total.fetch_add(got, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        _ => {}
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                total.fetch_add(got, Ordering::SeqCst);
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                    )
                    .await;
            });
        }
    });
    (addr, read)
}

/// `response_header` counts from the end of sending a buffered body, in memory or
/// spilled to a file, not from its start: an 8 MB POST to a backend that reads its
/// first 6 MB over 3 s (with `response_header = "2s"`), then the rest at once, and
/// answers gets 200, not 504, both with the body spilled (`buffer_memory` 1 MiB)
/// and held in memory (`buffer_memory` 16 MiB). A backend that stops reading still
/// gets a 504 once the body has not moved for `response_header`.
///
/// The pace is set by the kernel: the proxy's socket buffer toward the backend
/// grows to a few MB and wakes the writer when half of it is free, so the body
/// moves about every (buffer / 2) / rate; here about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_header_counts_from_the_end_of_a_buffered_body() {
    const BODY: usize = 8 << 20;
    let reading = Reading::Slow {
        bytes: 6 << 20,
        per_sec: 2 << 20,
    };
    let (backend, read) = slow_reader(reading).await;
    let head = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {BODY}\r\n\r\n")
    };
    let body = vec![b'x'; BODY];
    for memory in ["1MiB", "16MiB"] {
        let cfg = two_backend_config(
            backend,
            backend,
            &[HOST],
            (100.0, 0.0),
            &format!(
                "timeouts = {{ response_header = \"2s\" }}\n\n[limits]\nbuffer_memory = \"{memory}\"\n"
            ),
        );
        let proxy = ProxyBuilder::new(cfg).start().unwrap();
        let before = read.load(Ordering::SeqCst);
        let mut s = TcpStream::connect(proxy.http).await.unwrap();
        s.write_all(head("/upload").as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let sent = Instant::now();
        let r = read_response(&mut s).await;
        let took = sent.elapsed();
        eprintln!(
            "buffer_memory {memory}: {:?} after {took:?}",
            r.as_ref().map(|r| r.status)
        );
        let r = r.unwrap();
        assert_eq!(
            r.status, 200,
            "buffer_memory {memory}: a backend reading 8 MB slowly: {}",
            r.head
        );
        assert_eq!(
            read.load(Ordering::SeqCst) - before,
            BODY,
            "the backend read it all"
        );
        assert!(
            took > Duration::from_secs(2),
            "answered after {took:?}: the backend took longer than response_header to read"
        );

        // A backend that stops reading a megabyte in: 504, within response_header
        // of the body's last move.
        let mut s = TcpStream::connect(proxy.http).await.unwrap();
        s.write_all(head("/stop").as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let r = read_response(&mut s).await.unwrap();
        assert_eq!(r.status, 504, "buffer_memory {memory}: {}", r.head);
    }
}
