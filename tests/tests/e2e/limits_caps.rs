//! `[limits]` caps: connections in all and per client address, header and body
//! sizes (431, 413), the upstream pool (503 with `Retry-After` at once) and its idle
//! connections' lifetime, a route's retry budget, the hold queue shared by every
//! route, and a route's request buffering turned off.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cutover_tests::{Backend, Client, ProxyBuilder, eventually, h2_get_with};
use http::Method;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::limits::{
    HEAVY, HOST, config, connect_from, exchange, get_on, load, read_response, wait_closed,
};

const CLIENT_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// `max_connections_per_ip = 10`: ten keep-alive connections from one address are
/// served, an eleventh from it is closed at accept, another address still gets in,
/// and a closed connection gives its place back.
#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_at_accept() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = config(&old, &new, (50.0, 50.0), "", "max_connections_per_ip = 10");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let mut kept = Vec::new();
    for i in 0..10 {
        let mut s = connect_from(CLIENT_A, proxy.http).await.unwrap();
        let r = get_on(&mut s).await;
        assert_eq!(
            r.as_ref().map(|r| r.status),
            Ok(200),
            "connection {i}: {r:?}"
        );
        kept.push(s);
    }
    let mut over = connect_from(CLIENT_A, proxy.http).await.unwrap();
    let _ = over
        .write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await;
    let (after, got) = wait_closed(&mut over, Duration::from_secs(5))
        .await
        .expect("the 11th connection from 127.0.0.2 is closed");
    assert!(after < Duration::from_secs(1), "closed after {after:?}");
    assert_eq!(got, 0, "no answer on a refused connection");
    let mut other = connect_from(CLIENT_B, proxy.http).await.unwrap();
    assert_eq!(get_on(&mut other).await.unwrap().status, 200);
    for s in &mut kept {
        assert_eq!(get_on(s).await.unwrap().status, 200, "a kept connection");
    }
    let m = proxy.metrics().await;
    let refused = |reason| {
        cutover_tests::metric_sum(
            &m,
            "cutover_connections_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!((refused("per_ip"), refused("total")), (1.0, 0.0), "{m}");
    // A connection that closes frees its place.
    drop(kept.pop());
    let mut again = eventually(Duration::from_secs(5), "a place for 127.0.0.2", || async {
        let mut s = connect_from(CLIENT_A, proxy.http).await.ok()?;
        let r = get_on(&mut s).await.ok()?;
        (r.status == 200).then_some(s)
    })
    .await;
    assert_eq!(get_on(&mut again).await.unwrap().status, 200);
}

/// `max_connections = 5`: a sixth connection is closed at accept until one closes.
#[tokio::test]
async fn connections_over_the_total_cap_are_closed_at_accept() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = config(&old, &new, (50.0, 50.0), "", "max_connections = 5");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let mut kept = Vec::new();
    for (i, ip) in [CLIENT_A, CLIENT_A, CLIENT_A, CLIENT_B, CLIENT_B]
        .into_iter()
        .enumerate()
    {
        let mut s = connect_from(ip, proxy.http).await.unwrap();
        let r = get_on(&mut s).await;
        assert_eq!(
            r.as_ref().map(|r| r.status),
            Ok(200),
            "connection {i}: {r:?}"
        );
        kept.push(s);
    }
    let mut over = connect_from(Ipv4Addr::new(127, 0, 0, 4), proxy.http)
        .await
        .unwrap();
    let (after, got) = wait_closed(&mut over, Duration::from_secs(5))
        .await
        .expect("the 6th connection is closed");
    assert!(after < Duration::from_secs(1), "closed after {after:?}");
    assert_eq!(got, 0);
    for s in &mut kept {
        assert_eq!(get_on(s).await.unwrap().status, 200, "a kept connection");
    }
    let m = proxy.metrics().await;
    let refused = |reason| {
        cutover_tests::metric_sum(
            &m,
            "cutover_connections_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!((refused("total"), refused("per_ip")), (1.0, 0.0), "{m}");
    drop(kept.pop());
    eventually(Duration::from_secs(5), "a free place", || async {
        let mut s = connect_from(CLIENT_A, proxy.http).await.ok()?;
        (get_on(&mut s).await.ok()?.status == 200).then_some(())
    })
    .await;
}

/// `old` answers 503 to everything and `new` 200, 50/50 by a header every request
/// sets anew, at 2,000 req/s: the 503s retried on `new` stay within the route's
/// budget (20% of the requests plus 10/s over the 10 s window), and the rest are
/// counted as the budget exhausted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_503_stay_within_the_retry_budget() {
    let _heavy = HEAVY.lock().await;
    cutover_tests::binary("cutover-load");
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    old.fail_with(503);
    let route = "sticky = { header = \"x-user\" }\n\
                 retry_budget = { ratio = 0.2, window = \"10s\", min_per_second = 10 }";
    let proxy = ProxyBuilder::new(config(&old, &new, (50.0, 50.0), route, ""))
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("users.toml");
    std::fs::write(
        &scenario,
        "[[request]]\npath = \"/\"\nheaders = { x-user = \"user-{{seq}}\" }\n",
    )
    .unwrap();
    let started = Instant::now();
    let run = load(
        proxy.http,
        &[
            "-r",
            "2000",
            "-d",
            "3s",
            "--scenario",
            scenario.to_str().unwrap(),
        ],
    )
    .await;
    let took = started.elapsed();
    let m = proxy.metrics().await;
    let sum = |name, labels: &[(&str, &str)]| cutover_tests::metric_sum(&m, name, labels);
    let requests = sum("cutover_requests_total", &[("route", HOST)]);
    let retries = sum(
        "cutover_retries_total",
        &[("route", HOST), ("reason", "status_503")],
    );
    let all_retries = sum("cutover_retries_total", &[("route", HOST)]);
    let exhausted = sum("cutover_retry_budget_exhausted_total", &[("route", HOST)]);
    let budget = 0.2 * requests + 10.0 * 10.0;
    eprintln!(
        "retry budget: {requests} requests in {took:?}, {retries} retries of 503 ({all_retries} in all), \
         budget {budget}, {exhausted} refused by it; old saw {}, new {}; load: {}",
        old.requests(),
        new.requests(),
        run.summary()
    );
    assert!(
        took < Duration::from_secs(9),
        "the run fits in the budget's window"
    );
    assert!(requests >= 1000.0, "{requests} requests: {}", run.summary());
    assert!(
        retries <= budget + 0.01 * requests,
        "{retries} retries over the budget {budget}"
    );
    assert!(exhausted > 0.0, "the budget was never exhausted");
    // The budget was spent before it ran out: at least its floor went to retries.
    assert!(retries >= 100.0, "{retries} retries");
    assert_eq!(all_retries, retries, "every retry was a 503's");
    // Each retry reached new; each 503 the budget kept is the client's answer.
    let answered_503 = run.report["status"]["503"].as_f64().unwrap_or(0.0);
    assert!(answered_503 > 0.0, "{}", run.summary());
    assert_eq!(old.requests() as f64, retries + answered_503);
}

/// `[hold] max_queued = 5` counts the requests held on every route: with three
/// routes held, five writes wait, the sixth gets 503 at once, and after the release
/// the five are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hold_queue_cap_is_shared_by_all_routes() {
    let app = Backend::start("app");
    let hosts = ["r1.test", "r2.test", "r3.test"];
    let mut cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [hold]\nmax_queued = 5\n\n[backends.app]\naddrs = [\"{}\"]\n",
        app.addr
    );
    for h in hosts {
        cfg.push_str(&format!(
            "\n[[routes]]\nhosts = [\"{h}\"]\nweights = {{ app = 100 }}\n"
        ));
    }
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let r = proxy
        .admin_call(
            Method::POST,
            "/routes/*/hold",
            r#"{"scope":"writes","max":"30s"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let writes: Vec<_> = (0..5)
        .map(|i| {
            let (c, addr, host) = (proxy.client().clone(), proxy.http, hosts[i % 3]);
            tokio::spawn(async move {
                c.send(addr, Method::POST, host, "/w", &[], &format!("{i}"))
                    .await
            })
        })
        .collect();
    let held = || async {
        let s = proxy.status().await;
        let routes = s["routes"].as_array().unwrap().clone();
        routes
            .iter()
            .map(|r| r["hold"]["held"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    eventually(Duration::from_secs(10), "5 writes held", || async {
        (held().await == 5).then_some(())
    })
    .await;
    for host in ["r3.test", "r1.test"] {
        let started = Instant::now();
        let r = proxy
            .client()
            .send(proxy.http, Method::POST, host, "/w", &[], "over")
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{host}: {}", r.body);
        assert!(
            !r.header("retry-after").is_empty(),
            "{host}: {:?}",
            r.headers
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{host}: 503 after {:?}, the hold's deadline is 30 s",
            started.elapsed()
        );
    }
    assert_eq!(held().await, 5);
    assert_eq!(app.writes(), 0);
    let r = proxy
        .admin_call(Method::POST, "/routes/*/release", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for w in writes {
        let r = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a held write is answered after the release")
            .unwrap()
            .unwrap();
        assert_eq!((r.status.as_u16(), r.backend()), (200, "app"), "{}", r.body);
    }
    assert_eq!(app.writes(), 5);
    let over = proxy
        .metric(
            "cutover_requests_total",
            &[("backend", "proxy"), ("code", "503")],
        )
        .await;
    assert_eq!(over, 2.0);
}

/// Heads over `max_headers` (100) or `max_header_size` (64 KiB) get 431 on HTTP/1.1
/// and HTTP/2, each counted as the proxy's answer, and reach no backend: 200 fields
/// and a 200 KB value (as the issue has them), and 150 fields and a 100 KB value.
#[tokio::test]
async fn oversized_request_heads_get_431_on_http1_and_http2() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = ProxyBuilder::new(config(&old, &new, (50.0, 50.0), "", ""))
        .start()
        .unwrap();
    let fields = |n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("x-field-{i}"), "v".into()))
            .collect()
    };
    let value = |n: usize| vec![("x-big".to_string(), "a".repeat(n))];
    let cases = [
        ("200 fields", fields(200)),
        ("a 200 KB value", value(200_000)),
        ("150 fields", fields(150)),
        ("a 100 KB value", value(100_000)),
    ];
    let counted = || async {
        proxy
            .metric(
                "cutover_requests_total",
                &[("backend", "proxy"), ("code", "431")],
            )
            .await
    };
    let mut wrong = Vec::new();
    for (what, headers) in &cases {
        let lines: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{lines}\r\n");
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for version in ["HTTP/1.1", "HTTP/2"] {
            let before = counted().await;
            let status = if version == "HTTP/2" {
                h2_get_with(proxy.http, HOST, "/", &pairs)
                    .await
                    .map(|r| r.status.as_u16())
            } else {
                exchange(proxy.http, req.as_bytes()).await.map(|r| r.status)
            };
            let count = counted().await - before;
            eprintln!("431: {what} over {version}: {status:?}, counted {count}");
            if status != Ok(431) || count != 1.0 {
                wrong.push(format!(
                    "{what} over {version}: {status:?}, counted {count}"
                ));
            }
        }
    }
    assert_eq!(old.requests() + new.requests(), 0);
    assert!(wrong.is_empty(), "not a counted 431: {wrong:#?}");
    // A head within the limits is served.
    assert_eq!(proxy.get(HOST, "/").await.status, 200);
}

/// A route's `max_body = "1KiB"`: a 2,000-byte POST gets 413 with Content-Length and
/// chunked alike, counted as the proxy's, and reaches no backend; 1,000 bytes pass.
#[tokio::test]
async fn a_body_over_max_body_gets_413() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let route = "max_body = \"1KiB\"";
    let proxy = ProxyBuilder::new(config(&old, &new, (50.0, 50.0), route, ""))
        .start()
        .unwrap();
    let body = "b".repeat(1000);
    let sized =
        format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2000\r\n\r\n{body}{body}");
    let chunked = format!(
        "POST /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
         3e8\r\n{body}\r\n3e8\r\n{body}\r\n0\r\n\r\n"
    );
    for (what, req) in [("Content-Length", &sized), ("chunked", &chunked)] {
        let r = exchange(proxy.http, req.as_bytes()).await;
        assert_eq!(r.as_ref().map(|r| r.status), Ok(413), "{what}: {r:?}");
    }
    assert_eq!(old.requests() + new.requests(), 0);
    let counted = proxy
        .metric(
            "cutover_requests_total",
            &[("backend", "proxy"), ("code", "413"), ("route", HOST)],
        )
        .await;
    assert_eq!(counted, 2.0);
    let within = format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n{body}");
    let r = exchange(proxy.http, within.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(old.requests() + new.requests(), 1);
}

/// `upstream_max_connections = 2`, `upstream_max_waiting = 2` before a slow backend:
/// of 10 concurrent GETs, 2 go out, 2 wait for a connection, and 6 get 503 with
/// `Retry-After` at once, counted as upstream errors of kind `overloaded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_upstream_pool_get_503_at_once() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let limits = "upstream_max_connections = 2\nupstream_max_waiting = 2";
    // One backend in the route, so an overloaded request has nowhere else to go.
    let cfg =
        config(&old, &new, (100.0, 0.0), "", limits).replace("old = 100, new = 0", "old = 100");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let client = Client::new();
    let started = Instant::now();
    let gets: Vec<_> = (0..10)
        .map(|_| {
            let (c, addr) = (client.clone(), proxy.http);
            tokio::spawn(async move {
                let r = c.get(addr, HOST, "/slow/1500").await;
                (r, started.elapsed())
            })
        })
        .collect();
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for g in gets {
        let (r, at) = g.await.unwrap();
        let r = r.unwrap();
        match r.status.as_u16() {
            200 => served.push(at),
            503 => {
                assert_eq!(r.header("retry-after"), "1", "{:?}", r.headers);
                refused.push(at);
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    served.sort();
    refused.sort();
    eprintln!("upstream caps: served at {served:?}, refused at {refused:?}");
    assert_eq!((served.len(), refused.len()), (4, 6));
    assert!(
        refused.iter().all(|t| *t < Duration::from_millis(750)),
        "503s well before the 1.5 s answers: {refused:?}"
    );
    assert!(served[0] >= Duration::from_millis(1500));
    assert_eq!(old.requests(), 4);
    let overloaded = proxy
        .metric(
            "cutover_upstream_errors_total",
            &[("route", HOST), ("kind", "overloaded")],
        )
        .await;
    assert_eq!(overloaded, 6.0);
    // Each is the proxy's own answer, where an error-ratio gate looks.
    let answered = proxy
        .metric(
            "cutover_requests_total",
            &[("route", HOST), ("backend", "proxy"), ("code", "503")],
        )
        .await;
    assert_eq!(answered, 6.0, "{}", proxy.metrics().await);
}

/// `upstream_idle = "500ms"`: the connection a request opened goes back to the pool
/// and, once idle that long, the proxy closes it (the backend sees the close), so
/// the next request opens a new one.
#[tokio::test]
async fn an_idle_upstream_connection_is_closed_after_upstream_idle() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = config(&old, &new, (100.0, 0.0), "", "upstream_idle = \"500ms\"")
        .replace("old = 100, new = 0", "old = 100");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let r = proxy.get(HOST, "/").await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "old"), "{}", r.body);
    let answered = Instant::now();
    assert_eq!((old.connections(), old.connections_open()), (1, 1));
    let closed_after = eventually(
        Duration::from_secs(5),
        "the idle upstream connection to be closed",
        || async { (old.connections_open() == 0).then(|| answered.elapsed()) },
    )
    .await;
    eprintln!("upstream_idle 500ms: the idle connection closed after {closed_after:?}");
    assert!(
        closed_after >= Duration::from_millis(400),
        "closed after {closed_after:?}, before upstream_idle"
    );
    assert!(
        closed_after < Duration::from_secs(2),
        "closed after {closed_after:?}"
    );
    // The proxy closed it: the backend never closes an idle connection itself.
    let r = proxy.get(HOST, "/").await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "old"), "{}", r.body);
    assert_eq!(
        old.connections(),
        2,
        "the next request opened a new connection"
    );
    assert_eq!(old.requests(), 2);
}

/// A route with `request_buffering = false` streams a write's body: the backend has
/// its first bytes while the client still holds back the rest. On a route with the
/// default, the backend sees nothing of the body (nor the request) until it is
/// complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_buffering_off_streams_an_upload_and_on_holds_it_until_complete() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [backends.old]\naddrs = [\"{}\"]\n[backends.new]\naddrs = [\"{}\"]\n\
         [[routes]]\nhosts = [\"stream.test\"]\nweights = {{ old = 100 }}\nrequest_buffering = false\n\
         [[routes]]\nhosts = [\"buffered.test\"]\nweights = {{ new = 100 }}\n",
        old.addr, new.addr
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    const TOTAL: usize = 100_000;
    const FIRST: usize = 10_000;
    let head = |host: &str| {
        format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {TOTAL}\r\n\r\n")
    };
    let part = vec![b'u'; FIRST];
    let rest = vec![b'v'; TOTAL - FIRST];
    // The buffered upload starts first, so it has had at least as long.
    let mut buffered = TcpStream::connect(proxy.http).await.unwrap();
    buffered
        .write_all(head("buffered.test").as_bytes())
        .await
        .unwrap();
    buffered.write_all(&part).await.unwrap();
    let mut streamed = TcpStream::connect(proxy.http).await.unwrap();
    streamed
        .write_all(head("stream.test").as_bytes())
        .await
        .unwrap();
    streamed.write_all(&part).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the streamed upload's first bytes at the backend",
        || async { (old.stats.uploaded.load(Ordering::SeqCst) >= FIRST as u64).then_some(()) },
    )
    .await;
    assert_eq!(
        old.stats.uploaded.load(Ordering::SeqCst),
        FIRST as u64,
        "no more than the client sent"
    );
    let s = proxy.status().await;
    assert_eq!(s["routes"][0]["name"], "stream.test", "{s}");
    assert_eq!(s["routes"][0]["inflight_writes"]["old"], 1, "{s}");
    // The buffered one, sent earlier, has not reached its backend at all.
    assert_eq!(new.stats.uploaded.load(Ordering::SeqCst), 0);
    assert_eq!(new.connections(), 0, "no connection to new yet");
    assert_eq!(s["routes"][1]["inflight_writes"]["new"], 0, "{s}");

    streamed.write_all(&rest).await.unwrap();
    let r = read_response(&mut streamed).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), TOTAL.to_string());
    assert_eq!(new.stats.uploaded.load(Ordering::SeqCst), 0);

    buffered.write_all(&rest).await.unwrap();
    let r = read_response(&mut buffered).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), TOTAL.to_string());
    assert_eq!(
        new.stats.uploaded.load(Ordering::SeqCst),
        TOTAL as u64,
        "the whole body, once complete"
    );
}
