//! The weighted, sticky, monotone split, and the write side.

use std::collections::HashMap;

use cutover_config::{Weights, bucket_of};
use cutover_tests::{Backend, Client, ProxyBuilder, two_backend_config};
use http::Method;

const HOST: &str = "shop.test";

/// The value of the cookie the proxy minted, from `Set-Cookie`.
fn minted(r: &cutover_tests::Reply) -> Option<String> {
    let sc = r.header("set-cookie");
    sc.strip_prefix("cutover=")
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

#[tokio::test]
async fn a_cookie_keeps_each_user_on_one_side_and_the_split_follows_the_weights() {
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
    let mut users = Vec::new();
    for _ in 0..400 {
        let r = proxy.get(HOST, "/").await;
        assert_eq!(r.status, 200);
        let cookie = minted(&r).expect("a request without the cookie gets one");
        assert_eq!(cookie.len(), 32, "128 random bits as hex");
        assert!(
            r.header("set-cookie").contains("Max-Age="),
            "{}",
            r.header("set-cookie")
        );
        // The side is a pure function of the cookie's bucket.
        let want = if bucket_of(cookie.as_bytes()) < 5000 {
            "old"
        } else {
            "new"
        };
        assert_eq!(r.backend(), want);
        users.push((cookie, r.backend().to_string()));
    }
    let on_new = users.iter().filter(|(_, b)| b == "new").count();
    assert!(
        (140..=260).contains(&on_new),
        "50% split gave {on_new}/400 on new"
    );
    let c = Client::new();
    for (cookie, side) in users.iter().take(60) {
        for _ in 0..3 {
            let header = format!("theme=dark; cutover={cookie}");
            let r = c
                .send(
                    proxy.http,
                    Method::GET,
                    HOST,
                    "/",
                    &[("cookie", &header)],
                    "",
                )
                .await
                .unwrap();
            assert_eq!(&r.backend(), side, "user {cookie} moved");
            assert!(
                r.header("set-cookie").is_empty(),
                "no new cookie for a known user"
            );
        }
    }
}

#[tokio::test]
async fn raising_new_keeps_every_user_already_on_new() {
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
    let mut before = Vec::new();
    for _ in 0..300 {
        let r = proxy.get(HOST, "/").await;
        before.push((minted(&r).unwrap(), r.backend().to_string()));
    }
    assert!(
        before.iter().any(|(_, b)| b == "new"),
        "10% should put some users on new"
    );
    let r = proxy.put_weights(HOST, r#"{"old":50,"new":50}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = Client::new();
    let mut moved = 0;
    for (cookie, side) in &before {
        let header = format!("cutover={cookie}");
        let r = c
            .send(
                proxy.http,
                Method::GET,
                HOST,
                "/",
                &[("cookie", &header)],
                "",
            )
            .await
            .unwrap();
        if side == "new" {
            assert_eq!(r.backend(), "new", "user {cookie} went back to old");
        } else if r.backend() == "new" {
            moved += 1;
        }
    }
    assert!(
        moved > 0,
        "raising new to 50% should move some users old → new"
    );
}

#[tokio::test]
async fn a_header_key_keeps_a_user_on_one_side_without_cookies() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (50.0, 50.0),
        "sticky = { header = \"authorization\" }",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let c = Client::new();
    let mut sides = HashMap::new();
    for i in 0..100 {
        let token = format!("Bearer user-{i}");
        let want = if bucket_of(token.as_bytes()) < 5000 {
            "old"
        } else {
            "new"
        };
        for _ in 0..2 {
            let r = c
                .send(
                    proxy.http,
                    Method::GET,
                    HOST,
                    "/",
                    &[("authorization", &token)],
                    "",
                )
                .await
                .unwrap();
            assert_eq!(r.backend(), want, "{token}");
            assert!(r.header("set-cookie").is_empty());
        }
        *sides.entry(want).or_insert(0) += 1;
    }
    assert_eq!(sides.len(), 2, "both sides get users: {sides:?}");
}

#[tokio::test]
async fn client_ip_keys_follow_the_peer_address() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (30.0, 70.0),
        "sticky = { client_ip = true }",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let weights = Weights::from_basis_points(vec![3000, 7000]);
    let mut seen = HashMap::new();
    for last in 2..60u8 {
        let ip = std::net::Ipv4Addr::new(127, 0, 0, last);
        let want = ["old", "new"][weights.pick(bucket_of(&ip.octets()))];
        let c = Client::from_ip(ip.into());
        for _ in 0..2 {
            let r = c.get(proxy.http, HOST, "/").await.unwrap();
            assert_eq!(r.backend(), want, "{ip}");
            assert_eq!(r.header("x-seen-xff"), ip.to_string());
        }
        *seen.entry(want).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn writes_go_to_the_write_side_and_reads_by_weight() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (0.0, 100.0),
        "writes = \"old\"",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let c = proxy.client();
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let r = c
            .send(proxy.http, m.clone(), HOST, "/orders", &[], "{}")
            .await
            .unwrap();
        assert_eq!(r.backend(), "old", "{m}");
        assert_eq!(r.header("x-seen-method"), m.as_str());
    }
    for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
        let r = c
            .send(proxy.http, m.clone(), HOST, "/orders", &[], "")
            .await
            .unwrap();
        assert_eq!(r.backend(), "new", "{m}");
    }
    assert_eq!(old.writes(), 4);
    assert_eq!(new.writes(), 0);
}

#[tokio::test]
async fn split_writes_follow_the_weights() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(
        old.addr,
        new.addr,
        &[HOST],
        (0.0, 100.0),
        "writes = \"split\"",
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let r = proxy
        .client()
        .send(proxy.http, Method::POST, HOST, "/", &[], "x")
        .await
        .unwrap();
    assert_eq!(r.backend(), "new");
    assert_eq!(old.requests(), 0);
}
