//! Backend host names: resolved with the configured nameservers, re-resolved when
//! the TTL runs out, every address used, and the last good answer kept on failure.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use cutover_tests::{Backend, DnsServer, ProxyBuilder, eventually};

const HOST: &str = "shop.test";

fn config(dns: &DnsServer, port: u16, other: SocketAddr) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [resolver]\nnameservers = [\"{}\"]\nmin_ttl = \"200ms\"\n\
         [backends.old]\naddrs = [\"{other}\"]\n\
         [backends.new]\naddrs = [\"app.cluster.test:{port}\"]\n\
         [[routes]]\nhosts = [\"{HOST}\"]\nweights = {{ new = 100 }}\nsticky = {{ client_ip = true }}\n",
        dns.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_follow_their_dns_answers() {
    let dns = DnsServer::start(1);
    let a = Backend::start("a");
    let port = a.addr.port();
    let b = Backend::start_on("b", SocketAddr::from(([127, 0, 0, 2], port)));
    let old = Backend::start("old");
    dns.set("app.cluster.test", &[Ipv4Addr::new(127, 0, 0, 1)]);
    let proxy = ProxyBuilder::new(config(&dns, port, old.addr))
        .start()
        .unwrap();

    let r = proxy.get(HOST, "/").await;
    assert_eq!(
        (r.status.as_u16(), r.body.trim()),
        (200, "a"),
        "{}",
        proxy.logs()
    );
    let s = proxy.status().await;
    assert_eq!(s["backends"][1]["addrs"][0]["host"], "app.cluster.test");
    assert_eq!(
        s["backends"][1]["addrs"][0]["addr"],
        format!("127.0.0.1:{port}")
    );

    // The answer changes; after its TTL the new address gets the traffic.
    dns.set("app.cluster.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    eventually(
        Duration::from_secs(10),
        "traffic to follow the new answer",
        || async { (proxy.get(HOST, "/").await.body.trim() == "b").then_some(()) },
    )
    .await;

    // Both addresses in the answer are used.
    dns.set(
        "app.cluster.test",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
    );
    eventually(Duration::from_secs(10), "both addresses in use", || async {
        let s = proxy.status().await;
        (s["backends"][1]["addrs"].as_array().map_or(0, Vec::len) == 2).then_some(())
    })
    .await;
    let (before_a, before_b) = (a.requests(), b.requests());
    for _ in 0..20 {
        assert_eq!(proxy.get(HOST, "/").await.status, 200);
    }
    assert!(
        a.requests() > before_a && b.requests() > before_b,
        "round robin over both addresses"
    );

    // A failing nameserver keeps the last good addresses.
    dns.fail(true);
    eventually(Duration::from_secs(10), "a counted DNS failure", || async {
        proxy
            .metrics()
            .await
            .contains("cutover_dns_failures_total{backend=\"new\",host=\"app.cluster.test\"}")
            .then_some(())
    })
    .await;
    for _ in 0..10 {
        assert_eq!(proxy.get(HOST, "/").await.status, 200);
    }
    assert_eq!(
        proxy.status().await["backends"][1]["addrs"]
            .as_array()
            .map_or(0, Vec::len),
        2
    );
    proxy.wait_for_log("keeping the last good addresses").await;
}
