//! The write hold, release with a new write side, and draining.

use std::time::{Duration, Instant};

use cutover_tests::{Backend, ProxyBuilder, eventually, two_backend_config};
use http::Method;

const HOST: &str = "shop.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_writes_all_land_on_new_after_release() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "writes = \"old\"",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let r = proxy
        .client()
        .send(proxy.http, Method::POST, HOST, "/", &[], "x")
        .await
        .unwrap();
    assert_eq!(r.backend(), "old");

    let r = proxy
        .admin_call(
            Method::POST,
            "/routes/shop.test/hold",
            r#"{"scope":"writes","max":"30s"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let old_writes_at_hold = old.writes();
    let held_at = Instant::now();
    let posts: Vec<_> = (0..200)
        .map(|i| {
            let (c, addr) = (proxy.client().clone(), proxy.http);
            tokio::spawn(async move {
                let body = format!("{{\"n\":{i}}}");
                let r = c
                    .send(addr, Method::POST, HOST, "/orders", &[], &body)
                    .await;
                (r, Instant::now())
            })
        })
        .collect();
    eventually(Duration::from_secs(10), "200 held requests", || async {
        (proxy.status().await["routes"][0]["hold"]["held"] == 200).then_some(())
    })
    .await;
    assert!(
        proxy
            .metrics()
            .await
            .contains(r#"cutover_held_requests{route="shop.test"} 200"#)
    );
    // Reads keep flowing during a writes hold.
    let r = proxy.get(HOST, "/").await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "old"));
    while held_at.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = proxy.release(HOST, r#"{"writes":"new"}"#).await;
    let released: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(released["released"], 200);
    let mut pauses = Vec::new();
    for p in posts {
        let (r, done) = p.await.unwrap();
        let r = r.unwrap();
        assert_eq!((r.status.as_u16(), r.backend()), (200, "new"), "{}", r.body);
        pauses.push(done - held_at);
    }
    assert_eq!(
        old.writes(),
        old_writes_at_hold,
        "no write reached old after the hold began"
    );
    assert_eq!(new.writes(), 200);
    let s = proxy.status().await;
    assert_eq!(s["routes"][0]["writes"], "new");
    assert!(s["routes"][0]["hold"].is_null());
    pauses.sort();
    eprintln!(
        "hold: 200 writes held, longest pause {:?}",
        pauses[pauses.len() - 1]
    );
}

#[tokio::test]
async fn at_the_deadline_held_requests_get_503_with_retry_after() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = ProxyBuilder::new(two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "writes = \"old\"",
    ))
    .start()
    .unwrap();
    // The hold starts after this instant, and its deadline is 500 ms after that:
    // however slow the admin call's answer, the write's 503 cannot come sooner.
    let started = Instant::now();
    let r = proxy
        .admin_call(Method::POST, "/routes/*/hold", r#"{"max":"500ms"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = proxy
        .client()
        .send(proxy.http, Method::PUT, HOST, "/x", &[], "x")
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(!r.header("retry-after").is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // Past the deadline the hold still keeps writes away from old, at once.
    let r = proxy
        .client()
        .send(proxy.http, Method::DELETE, HOST, "/x", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(old.writes(), 0);
    assert_eq!(proxy.status().await["routes"][0]["hold"]["expired"], true);
    // Both 503s are the proxy's own answers, counted where an error-ratio gate
    // looks.
    let m = proxy.metrics().await;
    let want = format!(r#"cutover_requests_total{{backend="proxy",code="503",route="{HOST}"}} 2"#);
    assert!(m.contains(&want), "missing {want} in:\n{m}");
    // Release without a new write side: writes resume on old.
    let r = proxy
        .admin_call(Method::POST, "/routes/*/release", "")
        .await;
    assert_eq!(r.status, 200);
    let r = proxy
        .client()
        .send(proxy.http, Method::POST, HOST, "/x", &[], "x")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.backend()), (200, "old"));
}

#[tokio::test]
async fn hold_calls_validate_their_input() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = ProxyBuilder::new(two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "",
    ))
    .start()
    .unwrap();
    for (path, body, status) in [
        ("/routes/nope.test/hold", "{}", 404),
        ("/routes/shop.test/hold", r#"{"scope":"reads"}"#, 422),
        ("/routes/shop.test/hold", r#"{"max":"soon"}"#, 422),
        ("/routes/shop.test/release", r#"{"writes":"blue"}"#, 422),
    ] {
        let r = proxy.admin_call(Method::POST, path, body).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
    }
    assert!(proxy.status().await["routes"][0]["hold"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_weight_zero_drains() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = ProxyBuilder::new(two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "",
    ))
    .start()
    .unwrap();
    let slow: Vec<_> = (0..5)
        .map(|_| {
            let (c, addr) = (proxy.client().clone(), proxy.http);
            tokio::spawn(async move { c.get(addr, HOST, "/slow/3000").await })
        })
        .collect();
    eventually(
        Duration::from_secs(5),
        "5 requests in flight on old",
        || async { (proxy.status().await["routes"][0]["inflight"]["old"] == 5).then_some(()) },
    )
    .await;
    let r = proxy.put_weights(HOST, r#"{"old":0,"new":100}"#).await;
    assert_eq!(r.status, 200);
    let s = proxy.status().await;
    assert_eq!(
        s["routes"][0]["drained"]["old"], false,
        "still serving the slow requests"
    );
    assert_eq!(
        proxy.get(HOST, "/").await.backend(),
        "new",
        "no new requests to old"
    );
    for t in slow {
        let r = t.await.unwrap().unwrap();
        assert_eq!((r.status.as_u16(), r.backend()), (200, "old"));
    }
    eventually(Duration::from_secs(5), "old drained", || async {
        (proxy.status().await["routes"][0]["drained"]["old"] == true).then_some(())
    })
    .await;
}

/// Every method but GET, HEAD, OPTIONS and TRACE is a write: during a writes hold,
/// WebDAV's PROPPATCH and MKCOL and a custom method wait like a POST and, after the
/// release, go to the new write side; a GET is answered at once meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_and_custom_methods_are_held_like_a_post() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "writes = \"old\"",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let r = proxy
        .admin_call(
            Method::POST,
            "/routes/shop.test/hold",
            r#"{"scope":"writes","max":"30s"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let methods = ["PROPPATCH", "MKCOL", "POST", "FROBNICATE"];
    let sent: Vec<_> = methods
        .iter()
        .map(|m| {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            let (c, addr) = (proxy.client().clone(), proxy.http);
            tokio::spawn(async move {
                c.send(addr, method, HOST, "/dav/item", &[], "<propertyupdate/>")
                    .await
            })
        })
        .collect();
    eventually(Duration::from_secs(10), "the four writes held", || async {
        (proxy.status().await["routes"][0]["hold"]["held"] == methods.len()).then_some(())
    })
    .await;
    // A read is not held: answered by old while the writes wait.
    let started = Instant::now();
    let r = proxy.get(HOST, "/dav/item").await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "old"), "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        sent.iter().all(|t| !t.is_finished()),
        "no held write was answered before the release"
    );
    assert_eq!((old.writes(), new.writes()), (0, 0));
    assert_eq!(proxy.status().await["routes"][0]["hold"]["held"], 4);

    let r = proxy
        .admin_call(
            Method::POST,
            "/routes/shop.test/release",
            r#"{"writes":"new"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for (m, t) in methods.iter().zip(sent) {
        let r = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap_or_else(|_| panic!("{m} answered after the release"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.backend()),
            (200, "new"),
            "{m}: {}",
            r.body
        );
        assert_eq!(
            r.header("x-seen-method"),
            *m,
            "the method went through as sent"
        );
    }
    assert_eq!((old.writes(), new.writes()), (0, 4));
}
