//! The admin API: weights, status, metrics, and the token off loopback.

use std::time::Duration;

use cutover_tests::{Backend, ProxyBuilder, eventually, two_backend_config};
use http::Method;

const HOST: &str = "shop.test";

#[tokio::test]
async fn put_weights_applies_at_once_by_any_listed_host() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(old.addr, new.addr, &[HOST, "*.shop.test"], (100.0, 0.0), "");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    assert_eq!(proxy.get(HOST, "/").await.backend(), "old");

    let r = proxy
        .put_weights("%2A.shop.test", r#"{"old":0,"new":100}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["weights"]["new"], 100.0);
    // Applied before the PUT returned: the very next request sees it.
    assert_eq!(proxy.get(HOST, "/").await.backend(), "new");
    assert_eq!(proxy.get("www.shop.test", "/").await.backend(), "new");

    let r = proxy.put_weights(HOST, r#"{"old":12.5,"new":87.5}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = proxy.status().await;
    assert_eq!(s["routes"][0]["weights"]["old"], 12.5);
    assert_eq!(s["routes"][0]["weights_source"], "admin");
    assert_eq!(s["generation"], 3);
}

#[tokio::test]
async fn put_weights_rejects_bad_input_with_a_reason() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = ProxyBuilder::new(two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (90.0, 10.0),
        "",
    ))
    .start()
    .unwrap();
    for (body, reason) in [
        (r#"{"old":50,"new":40}"#, "sum to 90"),
        (r#"{"old":50,"blue":50}"#, "unknown backend \\\"blue\\\""),
        (r#"{"old":-50,"new":150}"#, "negative"),
        (r#"{"old":33.333,"new":66.667}"#, "two decimals"),
        (r#"{"old":"fifty"}"#, "must be a number"),
        ("not json", "not JSON"),
    ] {
        let r = proxy.put_weights(HOST, body).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert!(r.body.contains(reason), "{body}: {}", r.body);
    }
    let r = proxy
        .put_weights("unknown.test", r#"{"old":50,"new":50}"#)
        .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("unknown.test"));
    let r = proxy
        .admin_call(Method::GET, "/routes/shop.test/weights", "")
        .await;
    assert_eq!(r.status, 405);
    // Nothing changed.
    let s = proxy.status().await;
    assert_eq!(s["generation"], 1);
    assert_eq!(s["routes"][0]["weights"]["old"], 90.0);
}

#[tokio::test]
async fn status_shows_routes_writes_and_requests_in_flight() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "writes = \"old\"",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let healthz = proxy.admin_call(Method::GET, "/healthz", "").await;
    assert_eq!(healthz.status, 200);

    let slow: Vec<_> = (0..3)
        .map(|_| {
            let (c, addr) = (proxy.client().clone(), proxy.http);
            tokio::spawn(async move { c.get(addr, HOST, "/slow/1500").await })
        })
        .collect();
    let s = eventually(
        Duration::from_secs(5),
        "3 requests in flight on old",
        || async {
            let s = proxy.status().await;
            (s["routes"][0]["inflight"]["old"] == 3).then_some(s)
        },
    )
    .await;
    let route = &s["routes"][0];
    assert_eq!(route["hosts"][0], HOST);
    assert_eq!(route["writes"], "old");
    assert_eq!(route["inflight"]["new"], 0);
    assert_eq!(route["weights"]["old"], 100.0);
    assert!(s["last_reload_error"].is_null());
    assert_eq!(s["backends"][1]["name"], "new");
    for t in slow {
        assert_eq!(t.await.unwrap().unwrap().status, 200);
    }
    let s = proxy.status().await;
    assert_eq!(s["routes"][0]["inflight"]["old"], 0);
}

#[tokio::test]
async fn metrics_count_requests_durations_errors_and_generation() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    // `new` points at a port nobody listens on, so its requests fail to connect.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    drop(new);
    let cfg = two_backend_config(old.addr, dead, &[HOST], (100.0, 0.0), "writes = \"new\"");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    // Before any traffic the error and retry series exist, at 0.
    let m = proxy.metrics().await;
    for want in [
        r#"cutover_upstream_errors_total{backend="new",kind="connect",route="shop.test"} 0"#,
        r#"cutover_upstream_errors_total{backend="old",kind="timeout",route="shop.test"} 0"#,
        r#"cutover_retries_total{from="old",reason="status_502",route="shop.test",to="new"} 0"#,
        r#"cutover_retries_total{from="new",reason="connect",route="shop.test",to="old"} 0"#,
    ] {
        assert!(m.contains(want), "missing {want} in:\n{m}");
    }
    for _ in 0..5 {
        assert_eq!(proxy.get(HOST, "/").await.status, 200);
    }
    let r = proxy
        .client()
        .send(proxy.http, Method::POST, HOST, "/", &[], "x")
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(proxy.get("nowhere.test", "/").await.status, 404);
    let m = proxy.metrics().await;
    for want in [
        r#"cutover_requests_total{backend="proxy",code="404",route="unrouted"} 1"#,
        r#"cutover_requests_total{backend="old",code="200",route="shop.test"} 5"#,
        r#"cutover_requests_total{backend="new",code="502",route="shop.test"} 1"#,
        r#"cutover_request_duration_seconds_count{backend="old",route="shop.test"} 5"#,
        r#"cutover_inflight{backend="old",route="shop.test"} 0"#,
        r#"cutover_upstream_errors_total{backend="new",kind="connect",route="shop.test"} 1"#,
        "cutover_config_generation 1",
        "cutover_config_reload_errors_total 0",
    ] {
        assert!(m.contains(want), "missing {want} in:\n{m}");
    }
    drop(old);
}

#[tokio::test]
async fn off_loopback_the_admin_api_needs_a_token() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");

    let Err((status, logs)) = ProxyBuilder::new(cfg.clone()).start() else {
        panic!("a proxy with a public admin listener and no token must not start");
    };
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{logs}");
    assert!(logs.contains("CUTOVER_ADMIN_TOKEN"), "{logs}");

    let token = "t0ken-for-tests-only";
    let proxy = ProxyBuilder::new(cfg)
        .env("CUTOVER_ADMIN_TOKEN", token)
        .start()
        .unwrap();
    assert!(
        !proxy.logs().contains(token),
        "the token must never be logged"
    );
    let c = proxy.client();
    let anon = |path: &'static str| c.send(proxy.admin, Method::GET, "admin", path, &[], "");
    assert_eq!(anon("/healthz").await.unwrap().status, 200);
    assert_eq!(anon("/status").await.unwrap().status, 401);
    assert_eq!(anon("/metrics").await.unwrap().status, 401);
    let wrong = c
        .send(
            proxy.admin,
            Method::PUT,
            "admin",
            "/routes/shop.test/weights",
            &[("authorization", "Bearer nope")],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(
        proxy.status().await["generation"],
        1,
        "the right token works"
    );
}

#[tokio::test]
async fn a_web_page_cannot_hold_writes_or_move_weights() {
    let (_old, _new, proxy) = cutover_tests::two_backends(&[HOST], (100.0, 0.0), "");
    let c = proxy.client();
    let before = proxy.status().await;
    // What a page's form POST or no-cors fetch can send: text/plain, its origin.
    let forged = [
        (
            "/routes/shop.test/hold",
            vec![
                ("content-type", "text/plain"),
                ("origin", "https://evil.example"),
            ],
        ),
        (
            "/routes/shop.test/hold",
            vec![("content-type", "text/plain")],
        ),
        (
            "/routes/shop.test/hold",
            vec![
                ("content-type", "application/json"),
                ("origin", "https://evil.example"),
            ],
        ),
        ("/routes/shop.test/hold", vec![]),
        (
            "/routes/shop.test/weights",
            vec![("content-type", "application/x-www-form-urlencoded")],
        ),
    ];
    for (path, headers) in &forged {
        let method = if path.ends_with("weights") {
            Method::PUT
        } else {
            Method::POST
        };
        let r = c
            .send(
                proxy.admin,
                method,
                "admin",
                path,
                headers,
                r#"{"old":0,"new":100}"#,
            )
            .await
            .unwrap();
        assert!(
            r.status == 403 || r.status == 415,
            "{path} {headers:?}: {} {}",
            r.status,
            r.body
        );
    }
    let after = proxy.status().await;
    assert_eq!(after["generation"], before["generation"], "nothing changed");
    assert!(after["routes"][0]["hold"].is_null(), "{after}");
    // The listener's own origin, with JSON, works.
    let own = format!("http://{}", proxy.admin);
    let r = c
        .send(
            proxy.admin,
            Method::PUT,
            &proxy.admin.to_string(),
            "/routes/shop.test/weights",
            &[("content-type", "application/json"), ("origin", &own)],
            r#"{"old":50,"new":50}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}
