//! Retries across the boundary, health, ejection, failover and timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cutover_tests::{
    Backend, BackendProcess, Client, ProxyBuilder, eventually, two_backend_config,
};
use http::Method;

const HOST: &str = "shop.test";

/// One request's outcome and when it ran.
struct Outcome {
    method: Method,
    started: Instant,
    ended: Instant,
    ok: bool,
    detail: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_process_fails_no_request() {
    let mut old = BackendProcess::start("old");
    let new = BackendProcess::start("new");
    let proxy = ProxyBuilder::new(two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (50.0, 50.0),
        "",
    ))
    .start()
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, addr) = (stop.clone(), proxy.http);
            let method = if i % 2 == 0 {
                Method::GET
            } else {
                Method::POST
            };
            tokio::spawn(async move {
                let c = Client::new();
                let mut out = Vec::new();
                for n in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // A new user every time, so both sides keep getting traffic.
                    let cookie = format!("cutover=client{i}-{n}");
                    let started = Instant::now();
                    let r = c
                        .send(
                            addr,
                            method.clone(),
                            HOST,
                            "/",
                            &[("cookie", &cookie)],
                            "{}",
                        )
                        .await;
                    let (ok, detail) = match r {
                        Ok(r) => (
                            r.status == 200,
                            format!("{} from {}: {}", r.status, r.backend(), r.body.trim()),
                        ),
                        Err(e) => (false, e),
                    };
                    out.push(Outcome {
                        method: method.clone(),
                        started,
                        ended: Instant::now(),
                        ok,
                        detail,
                    });
                }
                out
            })
        })
        .collect();
    // Let traffic flow on both sides, then kill old.
    eventually(Duration::from_secs(5), "traffic on both sides", || async {
        let m = proxy.metrics().await;
        (m.contains(r#"backend="old",code="200""#) && m.contains(r#"backend="new",code="200""#))
            .then_some(())
    })
    .await;
    let kill_started = Instant::now();
    old.kill();
    let kill_done = Instant::now();
    // Keep sending for a while after the kill.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    let after_kill = all.iter().filter(|o| o.started > kill_done).count();
    assert!(
        after_kill > 100,
        "traffic continued after the kill: {after_kill}"
    );
    // A POST already sent to old when it died may have been processed: it is not
    // replayed, by design. Every other request must succeed.
    let in_flight_at_kill = |o: &&Outcome| o.started <= kill_done && o.ended >= kill_started;
    let failed: Vec<_> = all.iter().filter(|o| !o.ok).collect();
    for f in &failed {
        assert!(
            f.method == Method::POST && in_flight_at_kill(f),
            "{} failed that was not a POST in flight at the kill: {}",
            f.method,
            f.detail
        );
    }
    eprintln!(
        "kill test: {} requests, {} after the kill, {} failed (POSTs in flight at the kill: {})",
        all.len(),
        after_kill,
        failed.len(),
        all.iter()
            .filter(|o| o.method == Method::POST && in_flight_at_kill(o))
            .count()
    );
    // The series exists from the start; the retries made it rise.
    let m = proxy.metrics().await;
    let retried: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"cutover_retries_total{from="old",reason="connect",route="shop.test",to="new"} "#,
            )
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retry series in {m}"));
    assert!(retried > 0, "{m}");
}

#[tokio::test]
async fn a_post_that_was_sent_is_not_replayed_but_a_get_is() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    old.reset_after_read(true);
    let proxy = ProxyBuilder::new(two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "",
    ))
    .start()
    .unwrap();
    let c = proxy.client();
    let r = c
        .send(proxy.http, Method::POST, HOST, "/orders", &[], "{\"n\":1}")
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.backend(), "old");
    assert_eq!(old.writes(), 1, "the POST reached a backend exactly once");
    assert_eq!(new.writes(), 0);

    let r = proxy.get(HOST, "/items").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "new", "the GET was retried on the other side");

    let r = c
        .send(
            proxy.http,
            Method::POST,
            HOST,
            "/orders",
            &[("idempotency-key", "k-1")],
            "{\"n\":2}",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.backend(), "new");
    assert_eq!(new.writes(), 1);
    let m = proxy.metrics().await;
    assert!(
        m.contains(
            r#"cutover_retries_total{from="old",reason="reset",route="shop.test",to="new"} 2"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn a_503_to_a_get_is_answered_by_the_other_side() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    old.fail_with(503);
    let proxy = ProxyBuilder::new(two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "",
    ))
    .start()
    .unwrap();
    let r = proxy.get(HOST, "/").await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "new"));
    // A POST without an Idempotency-Key gets the 503 as it is.
    let r = proxy
        .client()
        .send(proxy.http, Method::POST, HOST, "/", &[], "x")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.backend()), (503, "old"));
    let m = proxy.metrics().await;
    assert!(m.contains(r#"reason="status_503""#), "{m}");
}

#[tokio::test]
async fn the_attempt_budget_holds() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    old.fail_with(503);
    new.fail_with(503);
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "attempts = 1");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    assert_eq!(proxy.get(HOST, "/").await.status, 503);
    assert_eq!((old.requests(), new.requests()), (1, 0));
}

#[tokio::test]
async fn a_failing_health_check_moves_the_share_to_the_other_side() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let health =
        "health = { path = \"/healthz\", interval = \"100ms\", healthy = 1, unhealthy = 2 }";
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (100.0, 0.0), "").replace(
        &format!("addrs = [\"{}\"]", old.addr),
        &format!("addrs = [\"{}\"]\n{health}", old.addr),
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    assert_eq!(proxy.get(HOST, "/").await.backend(), "old");
    old.health(503);
    let s = eventually(Duration::from_secs(5), "old to be marked down", || async {
        let s = proxy.status().await;
        (s["backends"][0]["healthy"] == false).then_some(s)
    })
    .await;
    assert_eq!(s["backends"][0]["addrs"][0]["healthy"], false);
    // The shift is shown, not silent: configured 100/0, effective 0/100, and why.
    let route = &s["routes"][0];
    assert_eq!(route["weights"]["old"], 100.0, "{route}");
    assert_eq!(route["effective_weights"]["old"], 0.0, "{route}");
    assert_eq!(route["effective_weights"]["new"], 100.0, "{route}");
    let why = route["effective_reason"][0].as_str().unwrap_or("");
    assert!(
        why.contains("old has no healthy address") && why.contains("new"),
        "{route}"
    );
    let before = old.requests();
    for _ in 0..20 {
        assert_eq!(proxy.get(HOST, "/").await.backend(), "new");
    }
    assert_eq!(old.requests(), before, "a down address gets no requests");
    let m = proxy.metrics().await;
    assert!(
        m.contains(&format!(
            "cutover_upstream_healthy{{addr=\"{}\",backend=\"old\"}} 0",
            old.addr
        )),
        "{m}"
    );
    assert!(
        m.contains(r#"cutover_route_effective_weight{backend="new",route="shop.test"} 100"#),
        "{m}"
    );
    old.health(0);
    eventually(Duration::from_secs(5), "old to come back", || async {
        (proxy.get(HOST, "/").await.backend() == "old").then_some(())
    })
    .await;
}

#[tokio::test]
async fn failover_can_be_turned_off() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let health =
        "health = { path = \"/healthz\", interval = \"100ms\", healthy = 1, unhealthy = 1 }";
    let cfg = two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "failover = false",
    )
    .replace(
        &format!("addrs = [\"{}\"]", old.addr),
        &format!("addrs = [\"{}\"]\n{health}", old.addr),
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    old.health(500);
    eventually(Duration::from_secs(5), "old to be marked down", || async {
        (proxy.status().await["backends"][0]["healthy"] == false).then_some(())
    })
    .await;
    let r = proxy.get(HOST, "/").await;
    assert_eq!((r.status.as_u16(), r.backend()), (503, "old"), "{}", r.body);
}

#[tokio::test]
async fn consecutive_connect_failures_eject_an_address() {
    let new = Backend::start("new");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = two_backend_config(dead, new.addr, &[HOST], (0.0, 100.0), "")
        .replace(
            &format!("addrs = [\"{}\"]", new.addr),
            &format!("addrs = [\"{dead}\", \"{}\"]", new.addr),
        )
        .replace("old = 0, new = 100", "new = 100");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    for _ in 0..10 {
        let r = proxy.get(HOST, "/").await;
        assert_eq!(
            r.status, 200,
            "the other address of new answers: {}",
            r.body
        );
    }
    let s = proxy.status().await;
    let addrs = &s["backends"][1]["addrs"];
    assert_eq!(addrs[0]["healthy"], false, "{s}");
    assert_eq!(addrs[1]["healthy"], true);
    proxy.wait_for_log("address ejected").await;
}

#[tokio::test]
async fn a_slow_backend_hits_the_response_header_timeout() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (100.0, 0.0),
        "timeouts = { response_header = \"300ms\" }\nattempts = 1",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let started = Instant::now();
    let r = proxy.get(HOST, "/slow/3000").await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(proxy.metrics().await.contains(r#"kind="timeout""#));
}

/// `two_backend_config` with a `health = { ... }` line under each backend.
fn with_health_checks(old: &Backend, new: &Backend, old_check: &str, new_check: &str) -> String {
    two_backend_config(old.addr, new.addr, &[HOST], (50.0, 50.0), "")
        .replace(
            &format!("addrs = [\"{}\"]", old.addr),
            &format!("addrs = [\"{}\"]\nhealth = {{ {old_check} }}", old.addr),
        )
        .replace(
            &format!("addrs = [\"{}\"]", new.addr),
            &format!("addrs = [\"{}\"]\nhealth = {{ {new_check} }}", new.addr),
        )
}

/// Waits until `b` has answered `n` probes; every probe but the last has then been
/// judged, since a backend's next probe goes out only after the last one's verdict.
async fn probed(b: &Backend, n: u64) {
    eventually(
        Duration::from_secs(10),
        &format!("{n} probes of {}", b.name),
        || async { (b.stats.health_checks.load(Ordering::SeqCst) >= n).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_health_check_sends_its_configured_host() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    // Both answer their check only for this name; only old's check sends it.
    old.health_host(Some("ready.internal"));
    new.health_host(Some("ready.internal"));
    let check = "path = \"/healthz\", interval = \"100ms\", healthy = 1, unhealthy = 1";
    let cfg = with_health_checks(
        &old,
        &new,
        &format!("{check}, host = \"ready.internal\""),
        check,
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    // new's check sends its address as Host, gets 421, and takes it out.
    let s = eventually(Duration::from_secs(10), "new to be marked down", || async {
        let s = proxy.status().await;
        (s["backends"][1]["addrs"][0]["healthy"] == false).then_some(s)
    })
    .await;
    assert_eq!(s["backends"][1]["name"], "new", "{s}");
    // old has been judged on several probes (one failure would take it out) and stays.
    probed(&old, 4).await;
    let s = proxy.status().await;
    assert_eq!(s["backends"][0]["name"], "old", "{s}");
    assert_eq!(
        s["backends"][0]["addrs"][0]["healthy"],
        true,
        "{s}\n{}",
        proxy.logs()
    );
    assert_eq!(s["backends"][0]["healthy"], true, "{s}");
    assert_eq!(proxy.get(HOST, "/").await.backend(), "old");
}

#[tokio::test]
async fn a_health_check_judges_by_its_status_range() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    // old answers 204 where only 200 is healthy; new answers 301, which the default
    // range 200-399 counts as healthy (and `is_success` would not).
    old.health(204);
    new.health(301);
    let check = "path = \"/healthz\", interval = \"100ms\", healthy = 1, unhealthy = 1";
    let cfg = with_health_checks(&old, &new, &format!("{check}, status = 200"), check);
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let s = eventually(Duration::from_secs(10), "old to be marked down", || async {
        let s = proxy.status().await;
        (s["backends"][0]["addrs"][0]["healthy"] == false).then_some(s)
    })
    .await;
    assert_eq!(s["backends"][0]["name"], "old", "{s}");
    assert_eq!(s["backends"][0]["healthy"], false, "{s}");
    probed(&new, 4).await;
    let s = proxy.status().await;
    assert_eq!(s["backends"][1]["name"], "new", "{s}");
    assert_eq!(
        s["backends"][1]["addrs"][0]["healthy"],
        true,
        "{s}\n{}",
        proxy.logs()
    );
    for _ in 0..5 {
        assert_eq!(proxy.get(HOST, "/").await.backend(), "new");
    }
    // 200 brings old back.
    old.health(0);
    eventually(Duration::from_secs(10), "old to come back", || async {
        (proxy.status().await["backends"][0]["addrs"][0]["healthy"] == true).then_some(())
    })
    .await;
}
