//! Replica discovery by DNS: every call resolves again, so a replica that scales in
//! or out is seen by the next action; and the replicas found are driven for real
//! (weights set, metrics scraped and windowed).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use cutover_controller::Proxies;
use cutover_controller::plan::discover::{ProxySource, parse_discover};
use cutover_controller::plan::metrics::{scrape, window};
use cutover_tests::{Backend, DnsServer, ProxyBuilder, eventually, two_backend_config};

const NAME: &str = "cutover-proxy-admin.cutover.svc.test";

#[tokio::test]
async fn discovery_follows_the_records_on_every_call() {
    let dns = DnsServer::start(300);
    dns.set(
        NAME,
        &[Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 2)],
    );
    let source = parse_discover(&format!("{NAME}:9901"), vec![dns.addr]).unwrap();
    assert_eq!(
        source.urls().await.unwrap(),
        vec!["http://127.0.0.2:9901", "http://127.0.0.3:9901"]
    );

    // The answers carry a 5-minute TTL; the next call still sees the change.
    dns.set(
        NAME,
        &[
            Ipv4Addr::new(127, 0, 0, 4),
            Ipv4Addr::new(127, 0, 0, 2),
            Ipv4Addr::new(127, 0, 0, 3),
            Ipv4Addr::new(127, 0, 0, 2),
        ],
    );
    assert_eq!(
        source.urls().await.unwrap(),
        vec![
            "http://127.0.0.2:9901",
            "http://127.0.0.3:9901",
            "http://127.0.0.4:9901"
        ]
    );
    dns.set(NAME, &[Ipv4Addr::new(127, 0, 0, 4)]);
    assert_eq!(source.urls().await.unwrap(), vec!["http://127.0.0.4:9901"]);

    // The name exists with no addresses (every replica gone), or not at all.
    dns.set(NAME, &[]);
    let e = source.urls().await.unwrap_err().to_string();
    assert!(
        e.contains(NAME)
            && e.contains("resolved to no addresses")
            && e.contains("headless Service"),
        "{e}"
    );
    let gone = parse_discover("nosuch.svc.test:9901", vec![dns.addr]).unwrap();
    let e = gone.urls().await.unwrap_err().to_string();
    assert!(
        e.contains("nosuch.svc.test") && e.contains("resolved to no addresses"),
        "{e}"
    );
    assert!(
        e.contains(&dns.addr.to_string()),
        "names the nameserver: {e}"
    );

    // A failing nameserver is a different error, and says so.
    dns.fail(true);
    let e = source.urls().await.unwrap_err().to_string();
    assert!(e.contains("cannot resolve") && e.contains(NAME), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_replicas_take_weights_and_report_traffic() {
    let old = Backend::start("old");
    let new = Backend::start("new");
    let config = two_backend_config(old.addr, new.addr, &["shop.test"], (100.0, 0.0), "");
    let proxy = ProxyBuilder::new(config)
        .env("CUTOVER_ADMIN_TOKEN", "t0ken")
        .start()
        .unwrap();
    let dns = DnsServer::start(1);
    dns.set(NAME, &[Ipv4Addr::new(127, 0, 0, 1)]);
    let source = parse_discover(&format!("{NAME}:{}", proxy.admin.port()), vec![dns.addr]).unwrap();
    let urls = source.urls().await.unwrap();
    assert_eq!(urls, vec![format!("http://{}", proxy.admin)]);
    let proxies = Proxies::new(&urls, Some("t0ken".into())).unwrap();
    let url = &urls[0];

    let before = scrape(&proxies).await.unwrap();
    let weights = BTreeMap::from([("old".to_string(), 50.0), ("new".to_string(), 50.0)]);
    proxies
        .set_weights(url, "shop.test", &weights)
        .await
        .unwrap();
    let status = proxies.read_status(url).await.unwrap();
    assert_eq!(status.routes[0].weights["new"], 50.0, "{status:?}");
    assert_eq!(status.routes[0].weights_source, cutover_api::Source::Admin);

    new.fail_with(500);
    for _ in 0..200 {
        proxy.get("shop.test", "/").await;
    }
    // The histogram is observed when a body ends; wait until every request shows.
    let w = eventually(
        Duration::from_secs(10),
        "200 requests in the window",
        || async {
            let after = scrape(&proxies).await.unwrap();
            let w = window(&before, &after, &["shop.test".to_string()]);
            (w.requests == 200 && w.buckets.last().map(|b| b.1) == Some(200.0)).then_some(w)
        },
    )
    .await;
    let (o, n) = (&w.by_backend["old"], &w.by_backend["new"]);
    assert_eq!(o.requests + n.requests, 200);
    assert!(n.requests > 50 && o.requests > 50, "{w:?}");
    assert_eq!((o.errors, n.errors), (0, n.requests));
    assert_eq!(w.errors, n.requests);
    let p99 = w.quantile(0.99).unwrap();
    assert!(p99 > 0.0 && p99 < 1.0, "loopback p99 {p99}");
    assert_eq!(window(&before, &before, &[]).requests, 0);

    // The proxy's refusals come back with its reason.
    let bad = BTreeMap::from([("old".to_string(), 50.0), ("blue".to_string(), 50.0)]);
    let e = proxies
        .set_weights(url, "shop.test", &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 422") && e.contains("blue"), "{e}");
    assert!(!e.contains("t0ken"), "{e}");
    let e = proxies
        .set_weights(url, "nosuch.test", &weights)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 404") && e.contains("nosuch.test"), "{e}");

    // A list of admin URLs is used as given.
    let listed = ProxySource::Admin(urls.clone());
    assert_eq!(listed.urls().await.unwrap(), urls);
}
