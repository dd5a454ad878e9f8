//! Route by Host: exact, then wildcard, then the default route; 404 otherwise.

use cutover_tests::{Backend, ProxyBuilder};

fn three_routes(a: &Backend, b: &Backend, c: &Backend, with_default: bool) -> String {
    let default = if with_default {
        "[[routes]]\nhosts = [\"*\"]\nweights = { c = 100 }\n"
    } else {
        ""
    };
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [backends.a]\naddrs = [\"{}\"]\n[backends.b]\naddrs = [\"{}\"]\n[backends.c]\naddrs = [\"{}\"]\n\
         [[routes]]\nhosts = [\"shop.test\", \"*.shop.test\"]\nweights = {{ a = 100 }}\n\
         [[routes]]\nhosts = [\"api.shop.test\"]\nweights = {{ b = 100 }}\n{default}",
        a.addr, b.addr, c.addr
    )
}

#[tokio::test]
async fn exact_then_wildcard_then_default() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let proxy = ProxyBuilder::new(three_routes(&a, &b, &c, true))
        .start()
        .unwrap();
    for (host, want) in [
        ("shop.test", "a"),
        ("SHOP.test:8080", "a"),
        ("www.shop.test", "a"),
        ("deep.www.shop.test", "a"),
        ("api.shop.test", "b"),
        ("other.example", "c"),
        ("shop.test.example", "c"),
    ] {
        let r = proxy.get(host, "/").await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(r.backend(), want, "{host}");
        // The backend really answered, and saw the client's Host.
        assert_eq!(r.body.trim(), want);
        assert_eq!(r.header("x-seen-host"), host);
        assert_eq!(r.header("x-seen-xff"), "127.0.0.1");
    }
}

#[tokio::test]
async fn an_unrouted_host_gets_404_naming_it() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let proxy = ProxyBuilder::new(three_routes(&a, &b, &c, false))
        .start()
        .unwrap();
    let r = proxy.get("nowhere.example", "/").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("nowhere.example"), "{}", r.body);
    assert_eq!(a.requests() + b.requests() + c.requests(), 0);
}

#[tokio::test]
async fn http2_clients_are_routed_by_authority_on_a_single_thread() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let cfg = three_routes(&a, &b, &c, true)
        .replace("[backends.a]", "[proxy]\nthreads = 1\n[backends.a]");
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    assert!(proxy.logs().contains("threads=1"), "{}", proxy.logs());
    for (host, want) in [
        ("api.shop.test", "b"),
        ("www.shop.test", "a"),
        ("else.example", "c"),
    ] {
        let r = cutover_tests::h2_get(proxy.http, host, "/").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), want, "{host}");
        // The HTTP/1.1 backend got a Host header made from :authority.
        assert_eq!(r.header("x-seen-host"), host);
    }
}

#[tokio::test]
async fn every_unsafe_method_goes_to_the_write_side() {
    // Reads follow the weights (all old); writes are pinned to new. WebDAV and
    // custom methods change data too: none of them may reach old's database.
    let (old, new, proxy) =
        cutover_tests::two_backends(&["shop.test"], (100.0, 0.0), "writes = \"new\"");
    for (method, side) in [
        ("GET", "old"),
        ("HEAD", "old"),
        ("OPTIONS", "old"),
        ("TRACE", "old"),
        ("POST", "new"),
        ("DELETE", "new"),
        ("PROPPATCH", "new"),
        ("MKCOL", "new"),
        ("MOVE", "new"),
        ("LOCK", "new"),
        ("PURGE", "new"),
    ] {
        let m = http::Method::from_bytes(method.as_bytes()).unwrap();
        let r = proxy
            .client()
            .send(proxy.http, m, "shop.test", "/doc", &[], "")
            .await
            .unwrap();
        assert_eq!(r.backend(), side, "{method}");
    }
    assert_eq!(old.writes(), 0, "no write reached old");
    assert_eq!(new.writes(), 7);
}
