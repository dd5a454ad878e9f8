//! The headers applications rely on: the forwarding headers describe this hop and
//! are only appended to after a trusted proxy (a client cannot claim HTTPS or
//! another address); `X-Request-Id` is kept or made, sent upstream and returned;
//! `traceparent` passes; HTTP/2's split cookies reach an HTTP/1.1 backend as one.

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
