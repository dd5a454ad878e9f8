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
    // Before any traffic every known series exists, at 0.
    let m = proxy.metrics().await;
    assert_zero_series(&m, &proxy_series());
    assert_zero_series(&m, &route_series(HOST, &["old", "new"]));
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

/// The series of the connection-level and unrouted events, each line at 0.
fn proxy_series() -> Vec<String> {
    let mut out = Vec::new();
    for kind in ["request_head", "keepalive", "send"] {
        out.push(format!(
            r#"cutover_client_timeouts_total{{kind="{kind}",route="-"}}"#
        ));
    }
    for code in ["400", "404", "431"] {
        out.push(format!(
            r#"cutover_requests_total{{backend="proxy",code="{code}",route="unrouted"}}"#
        ));
    }
    for reason in ["total", "per_ip"] {
        out.push(format!(
            r#"cutover_connections_refused_total{{reason="{reason}"}}"#
        ));
    }
    out
}

/// The series a route with these `members` starts at 0: the proxy's own answers on
/// it, its body timeouts and retry budget, each member's upstream errors of every
/// kind, and each ordered pair's retries for every reason.
fn route_series(route: &str, members: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for code in ["400", "408", "413", "431", "503"] {
        out.push(format!(
            r#"cutover_requests_total{{backend="proxy",code="{code}",route="{route}"}}"#
        ));
    }
    for kind in ["request_body", "send"] {
        out.push(format!(
            r#"cutover_client_timeouts_total{{kind="{kind}",route="{route}"}}"#
        ));
    }
    out.push(format!(
        r#"cutover_retry_budget_exhausted_total{{route="{route}"}}"#
    ));
    for b in members {
        for kind in ["connect", "timeout", "reset", "protocol", "overloaded"] {
            out.push(format!(
                r#"cutover_upstream_errors_total{{backend="{b}",kind="{kind}",route="{route}"}}"#
            ));
        }
        for to in members.iter().filter(|t| *t != b) {
            for reason in [
                "connect",
                "timeout",
                "reset",
                "protocol",
                "overloaded",
                "status_502",
                "status_503",
            ] {
                out.push(format!(
                    r#"cutover_retries_total{{from="{b}",reason="{reason}",route="{route}",to="{to}"}}"#
                ));
            }
        }
    }
    out
}

/// Every series in `series` is exported with the value 0.
#[track_caller]
fn assert_zero_series(metrics: &str, series: &[String]) {
    let missing: Vec<&String> = series
        .iter()
        .filter(|s| !metrics.lines().any(|l| l == format!("{s} 0")))
        .collect();
    assert!(
        missing.is_empty(),
        "not exported at 0: {missing:#?}\nin:\n{metrics}"
    );
}

/// A route and a backend that a reload adds get their series at 0 at once, before
/// any request, as the routes of the first config did.
#[tokio::test]
async fn a_route_added_by_a_reload_starts_its_series_at_zero() {
    let (old, new, blue) = (
        Backend::start("old"),
        Backend::start("new"),
        Backend::start("blue"),
    );
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "");
    let proxy = ProxyBuilder::new(cfg.clone()).start().unwrap();
    let m = proxy.metrics().await;
    assert_zero_series(&m, &proxy_series());
    assert_zero_series(&m, &route_series(HOST, &["old", "new"]));
    assert!(!m.contains("blog.test"), "{m}");

    let reloaded = format!(
        "{cfg}\n[backends.blue]\naddrs = [\"{}\"]\n\n\
         [[routes]]\nhosts = [\"blog.test\"]\nweights = {{ new = 50, blue = 50 }}\n",
        blue.addr
    );
    let tmp = proxy.dir.path().join(".cutover.toml.tmp");
    std::fs::write(&tmp, reloaded).unwrap();
    std::fs::rename(&tmp, proxy.config_path()).unwrap();
    proxy.signal("HUP");
    eventually(Duration::from_secs(10), "the reload", || async {
        let s = proxy.status().await;
        (s["routes"].as_array().is_some_and(|r| r.len() == 2)).then_some(())
    })
    .await;
    let s = proxy.status().await;
    assert!(s["last_reload_error"].is_null(), "{s}");
    let m = proxy.metrics().await;
    assert_zero_series(&m, &route_series("blog.test", &["new", "blue"]));
    assert_zero_series(&m, &route_series(HOST, &["old", "new"]));
    assert_zero_series(&m, &proxy_series());
    // And they count from there.
    let r = proxy.get("blog.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(old.requests() + new.requests() + blue.requests(), 1);
}

/// A backend addressed by host name has its DNS failure series at 0 from the start,
/// one per name, and counts from there when a lookup fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_failure_series_start_at_zero_for_named_backends() {
    let dns = cutover_tests::DnsServer::start(1);
    dns.set("app.cluster.test", &[std::net::Ipv4Addr::LOCALHOST]);
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [resolver]\nnameservers = [\"{}\"]\nmin_ttl = \"200ms\"\nmax_ttl = \"200ms\"\n\
         [backends.old]\naddrs = [\"{}\"]\n\
         [backends.new]\naddrs = [\"app.cluster.test:{}\"]\n\
         [[routes]]\nhosts = [\"{HOST}\"]\nweights = {{ old = 50, new = 50 }}\n",
        dns.addr,
        old.addr,
        new.addr.port()
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let m = proxy.metrics().await;
    assert_zero_series(
        &m,
        &[r#"cutover_dns_failures_total{backend="new",host="app.cluster.test"}"#.to_string()],
    );
    assert!(
        !m.contains(r#"cutover_dns_failures_total{backend="old""#),
        "a literal address is never looked up: {m}"
    );
    dns.fail(true);
    eventually(
        Duration::from_secs(10),
        "a failed lookup counted",
        || async {
            let n = proxy
                .metric(
                    "cutover_dns_failures_total",
                    &[("backend", "new"), ("host", "app.cluster.test")],
                )
                .await;
            (n >= 1.0).then_some(())
        },
    )
    .await;
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
