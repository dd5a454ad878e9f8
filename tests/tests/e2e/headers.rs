//! The headers applications rely on: the forwarding headers describe this hop and
//! are only appended to after a trusted proxy (a client cannot claim HTTPS or
//! another address); `X-Request-Id` is kept or made, sent upstream and returned;
//! `traceparent` passes; HTTP/2's split cookies reach an HTTP/1.1 backend as one;
//! behind an L4 balancer the PROXY protocol names the client; the access log holds
//! no secrets.

use cutover_tests::{Backend, ProxyBuilder, h2_get_with, two_backend_config, two_backends};
use http::Method;

const HOST: &str = "shop.test";

const FORGED: [(&str, &str); 5] = [
    ("x-forwarded-for", "203.0.113.9"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "bank.test"),
    ("forwarded", "for=203.0.113.9;proto=https"),
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_forge_the_forwarding_headers() {
    let (_old, _new, proxy) = two_backends(&[HOST], (100.0, 0.0), "");
    let r = proxy
        .client()
        .send(proxy.http, Method::GET, HOST, "/", &FORGED, "")
        .await
        .unwrap();
    assert_eq!(r.header("x-seen-xff"), "127.0.0.1");
    assert_eq!(
        r.header("x-seen-proto"),
        "http",
        "not the https the client claimed"
    );
    assert_eq!(r.header("x-seen-forwarded-host"), HOST);
    assert_eq!(
        r.header("x-seen-forwarded"),
        format!("for=127.0.0.1;proto=http;host=\"{HOST}\"")
    );
    assert_eq!(r.header("x-seen-traceparent"), FORGED[4].1);

    // The request id: made when absent, the same upstream and back.
    let made = r.header("x-request-id");
    assert_eq!(made.len(), 32, "{made:?}");
    assert_eq!(r.header("x-seen-request-id"), made);
    let r = proxy
        .client()
        .send(
            proxy.http,
            Method::GET,
            HOST,
            "/",
            &[("x-request-id", "req-7")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        (r.header("x-request-id"), r.header("x-seen-request-id")),
        ("req-7", "req-7")
    );
    // Even the proxy's own answers carry it.
    let r = proxy
        .client()
        .send(
            proxy.http,
            Method::GET,
            "unrouted.test",
            "/",
            &[("x-request-id", "req-8")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.header("x-request-id")),
        (404, "req-8")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_in_front_keeps_its_forwarding_headers() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "").replace(
        "[proxy]\n",
        "[proxy]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let r = proxy
        .client()
        .send(proxy.http, Method::GET, HOST, "/", &FORGED, "")
        .await
        .unwrap();
    assert_eq!(r.header("x-seen-xff"), "203.0.113.9, 127.0.0.1");
    assert_eq!(r.header("x-seen-proto"), "https");
    assert_eq!(r.header("x-seen-forwarded-host"), "bank.test");
    assert_eq!(
        r.header("x-seen-forwarded"),
        format!("for=203.0.113.9;proto=https, for=127.0.0.1;proto=http;host=\"{HOST}\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookies_reach_an_http1_backend_as_one_header() {
    let (_old, _new, proxy) = two_backends(&[HOST], (100.0, 0.0), "");
    let r = h2_get_with(
        proxy.http,
        HOST,
        "/",
        &[("cookie", "session=abc"), ("cookie", "theme=dark")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-cookie"), "session=abc; theme=dark");
    assert_eq!(r.header("x-seen-request-id"), r.header("x-request-id"));
}

/// Sends `prefix` and then a plain GET over one raw connection, and returns what
/// came back (empty when the proxy closed the connection without answering).
async fn raw_exchange(proxy: std::net::SocketAddr, prefix: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let mut out = prefix.to_vec();
    out.extend_from_slice(
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    // The proxy may close as soon as the prefix is refused; a write error then
    // means the same as an empty answer.
    let _ = s.write_all(&out).await;
    let mut reply = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        s.read_to_end(&mut reply),
    )
    .await
    .expect("the proxy answers or closes within 15 s");
    let _ = read;
    String::from_utf8_lossy(&reply).into_owned()
}

fn seen<'a>(reply: &'a str, header: &str) -> &'a str {
    reply
        .lines()
        .find_map(|l| l.strip_prefix(header).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no {header} in {reply}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_l4_balancer_the_proxy_protocol_names_the_client() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "")
        .replace("[listen]\n", "[listen]\nproxy_protocol = true\n");
    let proxy = ProxyBuilder::new(cfg).start().expect("the proxy starts");

    // v1, text.
    let r = raw_exchange(proxy.http, b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(seen(&r, "x-seen-xff"), "203.0.113.7");
    assert!(
        seen(&r, "x-seen-forwarded").starts_with("for=203.0.113.7;"),
        "{r}"
    );

    // v2, binary, IPv6.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x21, 0, 36]);
    v2.extend_from_slice(
        &"2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    v2.extend_from_slice(&40000u16.to_be_bytes());
    v2.extend_from_slice(&80u16.to_be_bytes());
    let r = raw_exchange(proxy.http, &v2).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(seen(&r, "x-seen-xff"), "2001:db8::7");

    // v2 LOCAL (the balancer's own health check): the connection's peer stands.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let r = raw_exchange(proxy.http, &local).await;
    assert_eq!(seen(&r, "x-seen-xff"), "127.0.0.1");

    // Without a header, or with a forged XFF and no header: closed unanswered,
    // and nothing reached a backend.
    let before = old.requests();
    let r = raw_exchange(proxy.http, b"").await;
    assert_eq!(r, "", "a connection without the header is refused");
    let r = raw_exchange(proxy.http, b"PROXY TCP4 not-an-address 127.0.0.1 1 80\r\n").await;
    assert_eq!(r, "", "a malformed header is refused");
    assert_eq!(old.requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_json_lines_without_cookies_or_queries() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "")
        + "\n[log]\naccess = \"on\"\n";
    let proxy = ProxyBuilder::new(cfg)
        .arg("--log-format")
        .arg("json")
        .start()
        .expect("the proxy starts");
    let secret = "c2VjcmV0LWNvb2tpZS12YWx1ZQ";
    let r = proxy
        .client()
        .send(
            proxy.http,
            Method::GET,
            HOST,
            "/account?token=query-secret",
            &[
                ("cookie", &format!("session={secret}")),
                ("authorization", "Bearer auth-secret"),
                ("x-request-id", "req-log-1"),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = proxy
        .client()
        .send(
            proxy.http,
            Method::POST,
            HOST,
            "/orders",
            &[],
            "twelve bytes",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines = loop {
        let lines = proxy.access_log();
        if lines.len() >= 2 || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let all = lines.join("\n");
    for secret in [secret, "query-secret", "auth-secret", "token="] {
        assert!(!all.contains(secret), "{secret:?} leaked into {all}");
    }
    let get: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(get["route"], HOST);
    assert_eq!(get["backend"], "old");
    assert_eq!(get["method"], "GET");
    assert_eq!(get["path"], "/account");
    assert_eq!(get["status"], 200);
    assert_eq!(get["attempts"], 1);
    assert_eq!(get["request_id"], "req-log-1");
    assert_eq!(get["sticky"], "minted");
    assert_eq!(get["write"], false);
    assert!(get["bytes_out"].as_u64().unwrap() > 0, "{get}");
    assert!(get["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(get["time"].as_str().unwrap().ends_with('Z'));
    let post: serde_json::Value = serde_json::from_str(&lines[1]).expect("a JSON line");
    assert_eq!(post["method"], "POST");
    assert_eq!(post["bytes_in"], 12);
    assert_eq!(post["write"], true);
}
