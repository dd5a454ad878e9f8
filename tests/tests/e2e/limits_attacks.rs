//! Attacks on the client side beside a good client: 500 slowloris heads, 5,000
//! idle connections, and the one-connection attacks (half HTTP/2 prefaces, clients
//! that never read, uploads at a byte a second) all at once. Each attacker is cut
//! off at its limit, the proxy's memory stays bounded, and the good client (the
//! real `cutover-load`) gets every answer within the SLO. The helpers are in
//! `limits.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cutover_tests::{Backend, ProxyBuilder, binary, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::*;

const SLOWLORIS: usize = 500;

/// A slowloris client: opens a connection, sends the start of a request head and
/// then one byte every 200 ms until the proxy closes it; again, until `stop` (at
/// most 10 rounds). Returns how long each connection lived.
async fn trickle(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
) -> Vec<Duration> {
    let mut lives = Vec::new();
    for _ in 0..10 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let since = Instant::now();
        opened.fetch_add(1, Ordering::SeqCst);
        let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ");
        let mut next = tokio::time::Instant::now();
        let mut buf = [0u8; 512];
        let _ = s.write_all(head.as_bytes()).await;
        // Bounded: a connection the proxy never closes ends here after 10 s.
        while since.elapsed() < Duration::from_secs(10) {
            next += Duration::from_millis(200);
            tokio::select! {
                // End of stream, a reset, or an answer (which is not expected).
                _ = s.read(&mut buf) => break,
                () = tokio::time::sleep_until(next) => {
                    if s.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            }
        }
        lives.push(since.elapsed());
    }
    lives
}

/// 500 connections trickle a request head, a byte every 200 ms, and reconnect when
/// closed; each is closed at `request_head` (2 s) while `cutover-load` sends 1,000
/// req/s alongside within the SLO ([`GOOD_SLO`]). The proxy's resident memory
/// stays bounded: over 2,500 connections come and go, so a leak of a few KiB each
/// would break the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_at_request_head_while_a_good_client_keeps_its_slo() {
    let _heavy = HEAVY.lock().await;
    binary("cutover-load");
    raise_nofile(4096);
    let began = Instant::now();
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = config(&old, &new, (50.0, 50.0), "", "request_head = \"2s\"");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let baseline = warm_rss_under_load(&proxy).await;
    let before = client_timeouts(&proxy, "-", "request_head").await;
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..SLOWLORIS)
        .map(|_| tokio::spawn(trickle(proxy.http, stop.clone(), opened.clone())))
        .collect();
    let attack = async {
        eventually(Duration::from_secs(10), "500 slow connections", || async {
            (opened.load(Ordering::SeqCst) >= SLOWLORIS).then_some(())
        })
        .await;
        let run = load(
            proxy.http,
            &[
                "-r", "1000", "-d", "3s", "--warmup", "500ms", "--slo", GOOD_SLO,
            ],
        )
        .await;
        stop.store(true, Ordering::SeqCst);
        let mut lives = Vec::new();
        for a in attackers {
            let a = tokio::time::timeout(Duration::from_secs(15), a)
                .await
                .expect("a slow client ends");
            lives.extend(a.unwrap());
        }
        (run, lives)
    };
    let ((run, lives), peak) = with_peak_rss(&proxy, attack).await;
    let (shortest, longest) = (
        lives.iter().min().copied().unwrap(),
        lives.iter().max().copied().unwrap(),
    );
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "slowloris ({:?}): {} slow connections lived {shortest:?}..{longest:?}; RSS {} MiB -> peak {} MiB; good client: {}",
        began.elapsed(),
        lives.len(),
        baseline >> 20,
        peak >> 20,
        run.summary()
    );
    assert!(lives.len() >= 2 * SLOWLORIS, "{} connections", lives.len());
    // Closed at the limit (2 s from the accept), not before and not much after.
    assert!(
        shortest >= Duration::from_millis(1800) && longest <= Duration::from_millis(3500),
        "slow connections lived {shortest:?}..{longest:?}"
    );
    let counted = client_timeouts(&proxy, "-", "request_head").await - before;
    assert!(
        counted >= lives.len() as f64,
        "{counted} request_head timeouts counted for {} slow connections",
        lives.len()
    );
    assert!(
        grown < SLOWLORIS_RSS,
        "the proxy grew by {} MiB under {} slowloris connections (bound {} MiB)",
        grown >> 20,
        lives.len(),
        SLOWLORIS_RSS >> 20
    );
    assert!(
        run.passed(),
        "the good client missed its SLO: {}",
        run.summary()
    );
}

/// How much the proxy may grow under the slowloris test, over its baseline after a
/// second of the good client's traffic. Measured: 500 slow connections open at
/// once (with the good client's own) add 23 to 30 MiB, 40 to 60 KiB each. At least
/// twice that many connections come and go; had the closed ones kept what they
/// held, the growth would be twice as much, beyond this bound.
const SLOWLORIS_RSS: u64 = 40 << 20;

const IDLE: usize = 5000;

/// 5,000 connections that send nothing, opened over about two seconds (2,500 a
/// second), are all closed at `request_head`; the proxy's resident memory stays
/// bounded meanwhile, and a good client at 1,000 req/s stays within the SLO
/// throughout: before, while they are opened, held and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_are_closed_with_bounded_memory() {
    let _heavy = HEAVY.lock().await;
    binary("cutover-load");
    // This process and the proxy (which inherits the limit) hold them all.
    raise_nofile(2 * IDLE as u64 + 1000);
    let began = Instant::now();
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = config(&old, &new, (50.0, 50.0), "", "request_head = \"3s\"");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let baseline = warm_rss(&proxy).await;
    let before = client_timeouts(&proxy, "-", "request_head").await;
    let addr = proxy.http;
    let good = tokio::spawn(async move {
        let slo = ["--slo", GOOD_SLO];
        let args = ["-r", "1000", "-d", "6s", "--warmup", "500ms"];
        load(addr, &[&args[..], &slo[..]].concat()).await
    });
    // The good client is in its measured phase before the flood.
    eventually(
        Duration::from_secs(10),
        "the good client's traffic",
        || async {
            let n = proxy
                .metric("cutover_requests_total", &[("route", HOST)])
                .await;
            (n >= 1000.0).then_some(())
        },
    )
    .await;
    let opened = Arc::new(AtomicUsize::new(0));
    let mut idle = Vec::with_capacity(IDLE);
    let mut next = tokio::time::Instant::now();
    for _ in 0..IDLE / 50 {
        // 50 every 20 ms.
        for _ in 0..50 {
            let opened = opened.clone();
            idle.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                opened.fetch_add(1, Ordering::SeqCst);
                wait_closed(&mut s, Duration::from_secs(15)).await
            }));
        }
        next += Duration::from_millis(20);
        tokio::time::sleep_until(next).await;
    }
    eventually(
        Duration::from_secs(20),
        "5,000 idle connections",
        || async { (opened.load(Ordering::SeqCst) >= IDLE).then_some(()) },
    )
    .await;
    let all_open = Instant::now();
    // Peak memory and connections while they are open, until the proxy let them go.
    let (mut peak, mut seen_open) = (baseline, 0.0f64);
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0.. {
        peak = peak.max(proxy.rss().unwrap_or(0));
        if i % 10 == 0 {
            let open = proxy.metric("cutover_client_connections", &[]).await;
            seen_open = seen_open.max(open);
        }
        if idle.iter().all(|t| t.is_finished()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lives = Vec::new();
    for t in idle {
        let closed = t.await.unwrap();
        lives.push(
            closed
                .expect("every idle connection is closed within 15 s")
                .0,
        );
    }
    let run = good.await.unwrap();
    let (shortest, longest) = (
        lives.iter().min().copied().unwrap(),
        lives.iter().max().copied().unwrap(),
    );
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "idle ({:?}): {IDLE} connections (at most {seen_open} open at once) lived {shortest:?}..{longest:?}, \
         all closed {:?} after the last opened; RSS {} MiB -> peak {} MiB (+{} KiB per connection); good client: {}",
        began.elapsed(),
        all_open.elapsed(),
        baseline >> 20,
        peak >> 20,
        (grown >> 10) / IDLE as u64,
        run.summary()
    );
    assert!(
        seen_open >= IDLE as f64,
        "the proxy held {seen_open} connections at most"
    );
    // From the client's side: its task may see the connect complete a little after
    // the proxy accepted.
    assert!(
        shortest >= Duration::from_millis(2500) && longest <= Duration::from_secs(5),
        "idle connections lived {shortest:?}..{longest:?} (request_head 3s)"
    );
    let counted = client_timeouts(&proxy, "-", "request_head").await - before;
    assert!(counted >= IDLE as f64, "{counted} request_head timeouts");
    assert!(
        grown < 64 << 20,
        "the proxy grew by {} MiB for {IDLE} idle connections",
        grown >> 20
    );
    eventually(
        Duration::from_secs(5),
        "no client connection open",
        || async {
            let open = proxy.metric("cutover_client_connections", &[]).await;
            (open == 0.0).then_some(())
        },
    )
    .await;
    assert!(
        run.passed(),
        "the good client missed its SLO: {}",
        run.summary()
    );
}

/// The one-connection attacks all at once, beside a good client: 50 half HTTP/2
/// prefaces, 20 clients that never read a 50 MB answer, and 50 uploads at one byte
/// a second. Each is cut off within its limit while `cutover-load` sends 1,000
/// req/s within the SLO, and nothing stays in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_attacks_together_leave_a_good_client_its_slo() {
    let _heavy = HEAVY.lock().await;
    binary("cutover-load");
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let route = "timeouts = { body_idle = \"500ms\" }";
    let limits = "request_head = \"2s\"\nsend = \"2s\"";
    let cfg = config(&old, &new, (100.0, 0.0), route, limits);
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let baseline = warm_rss_under_load(&proxy).await;
    let addr = proxy.http;
    let mut attacks = Vec::new();
    for _ in 0..50 {
        attacks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..10])
                .await
                .unwrap();
            wait_closed(&mut s, Duration::from_secs(15))
                .await
                .map(|(t, _)| t)
        }));
    }
    for _ in 0..20 {
        attacks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let head = format!("GET /bytes/50000000 HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            // The attack: read nothing for twice `send`. Then drain what the socket
            // buffers held: the connection ends well short of 50 MB.
            let start = Instant::now();
            tokio::time::sleep(Duration::from_secs(4)).await;
            match wait_closed(&mut s, Duration::from_secs(10)).await {
                Some((_, got)) if got < 50_000_000 => Some(start.elapsed()),
                _ => None,
            }
        }));
    }
    for _ in 0..50 {
        attacks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let head = format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let start = Instant::now();
            let mut buf = [0u8; 1024];
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for _ in 0..15 {
                tokio::select! {
                    _ = s.read(&mut buf) => return Some(start.elapsed()),
                    _ = tick.tick() => { let _ = s.write_all(b"a").await; }
                }
            }
            None
        }));
    }
    let attack = async {
        let run = load(
            addr,
            &[
                "-r", "1000", "-d", "4s", "--warmup", "500ms", "--slo", GOOD_SLO,
            ],
        )
        .await;
        let mut cut = Vec::new();
        for (i, a) in attacks.into_iter().enumerate() {
            let what = match i {
                0..50 => "a half preface",
                50..70 => "a client that never reads",
                _ => "a trickled upload",
            };
            let t = tokio::time::timeout(Duration::from_secs(30), a)
                .await
                .expect("an attack ends")
                .unwrap();
            cut.push(t.unwrap_or_else(|| panic!("{what} (attack {i}) was not cut off")));
        }
        (run, cut)
    };
    let ((run, cut), peak) = with_peak_rss(&proxy, attack).await;
    let grown = peak.saturating_sub(baseline);
    let longest = cut.iter().max().copied().unwrap();
    eprintln!(
        "{} attacking connections cut off, the last after {longest:?}; RSS {} MiB -> peak {} MiB; good client: {}",
        cut.len(),
        baseline >> 20,
        peak >> 20,
        run.summary()
    );
    assert!(longest < Duration::from_secs(20), "{longest:?}");
    // Twenty answers of 50 MB held for clients that read none: the proxy holds
    // what its buffers take, not the answers (1 GB).
    assert!(
        grown < OTHER_ATTACKS_RSS,
        "the proxy grew by {} MiB under the attacks (bound {} MiB)",
        grown >> 20,
        OTHER_ATTACKS_RSS >> 20
    );
    assert!(
        run.passed(),
        "the good client missed its SLO: {}",
        run.summary()
    );
    eventually(Duration::from_secs(10), "nothing in flight", || async {
        (inflight(&proxy).await == 0).then_some(())
    })
    .await;
}

/// How much the proxy may grow under the other attacks together, over its
/// baseline after a second of the good client's traffic. Measured: about 26 MiB
/// (what the twenty stalled answers' buffers and the other connections hold). One
/// 50 MB answer held for a client that does not read it would break the bound.
const OTHER_ATTACKS_RSS: u64 = 64 << 20;
