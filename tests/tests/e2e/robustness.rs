//! Bad input, dead backends and a graceful stop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cutover_tests::{Backend, Proxy, ProxyBuilder, eventually, two_backend_config};

const HOST: &str = "shop.test";

#[tokio::test]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = ProxyBuilder::new(two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (50.0, 50.0),
        "",
    ))
    .start()
    .unwrap();
    let garbage: [&[u8]; 6] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: shop.test\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: shop.test\r\n\r\n",
        b"GET /\x01\x02 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ];
    let addr = proxy.http;
    let statuses = tokio::task::spawn_blocking(move || {
        let mut statuses = Vec::new();
        for i in 0..300 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(garbage[i % garbage.len()]).unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let head = String::from_utf8_lossy(&buf);
            statuses.push(head.lines().next().unwrap_or("").to_string());
        }
        statuses
    })
    .await
    .unwrap();
    for (i, s) in statuses.iter().enumerate() {
        let ok = s.starts_with("HTTP/1.1 400")
            || (i % garbage.len() == 2 && s.starts_with("HTTP/1.1 505"));
        assert!(
            ok,
            "request {i} ({:?}) got {s:?}",
            String::from_utf8_lossy(garbage[i % garbage.len()])
        );
    }
    assert_eq!(
        old.requests() + new.requests(),
        0,
        "nothing malformed reached a backend"
    );
    let r = proxy.get(HOST, "/").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_request_without_host_gets_400() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = ProxyBuilder::new(two_backend_config(
        old.addr,
        new.addr,
        &["*"],
        (50.0, 50.0),
        "",
    ))
    .start()
    .unwrap();
    let addr = proxy.http;
    let head = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).to_string()
    })
    .await
    .unwrap();
    assert!(
        head.starts_with("HTTP/1.0 400") || head.starts_with("HTTP/1.1 400"),
        "{head}"
    );
    assert!(head.contains("missing Host"), "{head}");
}

#[tokio::test]
async fn a_refusing_backend_gives_a_prompt_502_naming_it() {
    let old = Backend::start("old");
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // `old` is declared but not a member of the route, so there is nowhere to retry.
    let cfg = two_backend_config(old.addr, refused, &[HOST], (0.0, 100.0), "")
        .replace("old = 0, new = 100", "new = 100");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let started = Instant::now();
    let r = proxy.get(HOST, "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.backend(), "new");
    assert!(r.body.contains("new"), "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    proxy.wait_for_log("upstream request failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_zero() {
    let (_backends, mut proxy) = all_on_old();
    let (c, addr) = (proxy.client().clone(), proxy.http);
    let slow = tokio::spawn(async move { c.get(addr, HOST, "/slow/2000").await });
    eventually(
        Duration::from_secs(5),
        "the slow request in flight",
        || async { (proxy.status().await["routes"][0]["inflight"]["old"] == 1).then_some(()) },
    )
    .await;
    proxy.signal("TERM");
    // New connections are refused once the listener is closed.
    eventually(Duration::from_secs(5), "the listener to close", || async {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let r = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.trim(), "old");
    exits_zero_with_every_connection_finished(&mut proxy).await;
}

/// Behind a load balancer that has just stopped sending it new connections, a
/// stopping proxy still has busy keep-alive connections whose next request may
/// already be on its way. Closing them at once while idle resets that request; so
/// after SIGTERM an idle keep-alive connection stays open for a moment, its next
/// request is answered with `Connection: close`, and the proxy exits once the
/// client has left.
#[tokio::test]
async fn after_sigterm_an_idle_keep_alive_connection_gets_its_next_answer_and_a_close() {
    let (_backends, mut proxy) = all_on_old();
    let addr = proxy.http;
    let request = b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    let (mut conn, first) = tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(request).unwrap();
        let first = read_head_and_body(&mut conn);
        (conn, first)
    })
    .await
    .unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );

    proxy.signal("TERM");
    proxy.wait_for_log("stopped accepting").await;
    // The connection was idle when the proxy stopped accepting; it still answers.
    let second = tokio::task::spawn_blocking(move || {
        conn.write_all(request).unwrap();
        let answer = read_head_and_body(&mut conn);
        let mut rest = Vec::new();
        // The proxy closes its end after the answer; EOF, not a timeout.
        let closed = conn.read_to_end(&mut rest).is_ok() && rest.is_empty();
        (answer, closed)
    })
    .await
    .unwrap();
    assert!(second.0.starts_with("HTTP/1.1 200"), "{}", second.0);
    assert!(
        second.0.to_ascii_lowercase().contains("connection: close"),
        "{}",
        second.0
    );
    assert!(
        second.1,
        "the proxy kept the connection open after Connection: close"
    );
    exits_zero_with_every_connection_finished(&mut proxy).await;
}

/// Reads one HTTP/1.1 answer with a `Content-Length` body from `s`.
fn read_head_and_body(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "EOF inside a response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// A proxy that was sent SIGTERM exits 0 within 10 s, every connection finished.
async fn exits_zero_with_every_connection_finished(proxy: &mut Proxy) {
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the proxy exits");
    assert_eq!(status.code(), Some(0), "{}", proxy.logs());
    proxy.wait_for_log("all connections finished").await;
}

/// A proxy sending all of `HOST` to `old`, and its two backends.
fn all_on_old() -> ((Backend, Backend), Proxy) {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "");
    ((old, new), ProxyBuilder::new(cfg).start().unwrap())
}

/// Sends one raw HTTP/1.1 request to `addr` and returns the whole answer.
fn raw_exchange(addr: std::net::SocketAddr, request: &'static [u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).to_string()
}

/// The host a request is routed by is the host its backend sees. A request that
/// names two hosts could be routed (and held, or not) as one route and served as
/// the other: with writes held on `shop.test` for a database promotion, a write
/// routed as `weather.test` but carrying `Host: shop.test` would reach shop's
/// code at once. It is refused, and `Connection: host` cannot strip the host.
#[tokio::test]
async fn a_request_naming_two_hosts_is_refused_and_the_routed_host_is_forwarded() {
    let (shop, weather) = (Backend::start("shop"), Backend::start("weather"));
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [backends.shop]\naddrs = [\"{}\"]\n\n[backends.weather]\naddrs = [\"{}\"]\n\n\
         [[routes]]\nhosts = [\"shop.test\"]\nweights = {{ shop = 100 }}\n\n\
         [[routes]]\nhosts = [\"weather.test\"]\nweights = {{ weather = 100 }}\n",
        shop.addr, weather.addr
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let held = proxy
        .admin_call(
            http::Method::POST,
            "/routes/shop.test/hold",
            r#"{"scope":"writes","max":"30s"}"#,
        )
        .await;
    assert_eq!(held.status, 200, "{}", held.body);
    let addr = proxy.http;
    let answers = tokio::task::spawn_blocking(move || {
        [
            // Absolute form for weather, Host for the held shop.
            raw_exchange(
                addr,
                b"POST http://weather.test/echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            ),
            // Two Host headers.
            raw_exchange(
                addr,
                b"POST /echo HTTP/1.1\r\nHost: weather.test\r\nHost: shop.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            ),
            // Absolute form and Host agree (port and case aside): served.
            raw_exchange(
                addr,
                b"GET http://Weather.test:80/x HTTP/1.1\r\nHost: weather.test\r\nConnection: close\r\n\r\n",
            ),
            // Connection: host must not remove the Host the request was routed by.
            raw_exchange(
                addr,
                b"GET /x HTTP/1.1\r\nHost: weather.test\r\nConnection: close, host\r\n\r\n",
            ),
        ]
    })
    .await
    .unwrap();
    for a in &answers[..2] {
        assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    }
    assert!(answers[0].contains("differ"), "{}", answers[0]);
    assert!(answers[1].contains("more than one Host"), "{}", answers[1]);
    assert_eq!(
        (shop.requests(), weather.requests()),
        (0, 2),
        "{answers:#?}"
    );
    for a in &answers[2..] {
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        assert!(a.contains("x-seen-host: weather.test"), "{a}");
    }
}
