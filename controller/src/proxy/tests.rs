//! The admin client against the test servers of `testing.rs`, which record what
//! they receive and answer as the proxy's admin API does.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::json;

use super::testing::*;
use super::*;

#[tokio::test]
async fn hold_release_and_status_speak_the_admin_contract() {
    let (addr, seen) = serve(admin_answer::<4>).await;
    let p = Proxies::new(&[format!("{addr}/")], Some("t0ken".into())).unwrap();
    let url = p.urls()[0].clone();
    assert_eq!(url, url_of(addr));

    let routes = p.routes(&url, "SHOP.test").await.unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].name, "shop");
    assert_eq!(routes[0].writes, "old");
    assert_eq!(routes[0].inflight_writes["old"], 2);
    assert!(routes[0].hold.is_none());
    assert_eq!(p.routes(&url, "*").await.unwrap().len(), 1);
    let e = p.routes(&url, "other.test").await.unwrap_err().to_string();
    assert!(e.contains(&url) && e.contains("other.test"), "{e}");

    // The first change reads the fleet's epoch (4); each change takes the next.
    let hold_epoch = p.next_epoch().await.unwrap();
    assert_eq!(hold_epoch, 5);
    let held = p
        .hold(
            &url,
            "*.shop.test",
            Duration::from_millis(2500),
            hold_epoch,
            Scope::Writes,
        )
        .await
        .unwrap();
    assert_eq!(held, vec!["shop".to_string()]);
    let e6 = p.next_epoch().await.unwrap();
    assert_eq!(
        p.release(&url, "shop.test", Some("new"), e6).await.unwrap(),
        4
    );
    let e7 = p.next_epoch().await.unwrap();
    assert_eq!(p.release(&url, "*", None, e7).await.unwrap(), 4);

    let seen = seen.lock().unwrap().clone();
    let hold = seen.iter().find(|s| s.path.ends_with("/hold")).unwrap();
    assert_eq!(hold.method, "POST");
    assert_eq!(hold.path, "/routes/%2A.shop.test/hold");
    let body: HoldRequest = serde_json::from_str(&hold.body).unwrap();
    assert_eq!(
        body,
        HoldRequest {
            scope: Some(Scope::Writes),
            max: Some("2.500s".into()),
            epoch: Some(5),
        }
    );
    let releases: Vec<&Received> = seen
        .iter()
        .filter(|s| s.path.ends_with("/release"))
        .collect();
    assert_eq!(releases[0].path, "/routes/shop.test/release");
    assert_eq!(releases[0].body, r#"{"writes":"new","epoch":6}"#);
    assert_eq!(releases[1].path, "/routes/*/release");
    assert_eq!(releases[1].body, r#"{"epoch":7}"#);
    assert!(seen.iter().all(|s| s.auth == "Bearer t0ken"));
    // /state was read before every change: the first to start the counter, the
    // others to see that nobody moved the fleet meanwhile.
    assert_eq!(seen.iter().filter(|s| s.path == "/state").count(), 3);

    // What the replica showed is kept for the record.
    let book = p.seen();
    assert_eq!(book.len(), 1);
    assert_eq!(book[0].replica, "proxy-0");
    assert_eq!(
        book[0].epochs,
        std::collections::BTreeSet::from([4, 5, 6, 7])
    );
    assert!(book[0].first <= book[0].last);
}

#[tokio::test]
async fn an_older_proxy_is_sent_no_epoch() {
    let (addr, seen) = serve(legacy_answer).await;
    let url = url_of(addr);
    let p = Proxies::new(std::slice::from_ref(&url), Some("t0ken".into())).unwrap();
    assert_eq!(p.state(&url).await.unwrap(), None);
    // No replica has an epoch: the counter starts at 0.
    let epoch = p.next_epoch().await.unwrap();
    assert_eq!(epoch, 1);
    p.hold(
        &url,
        "shop.test",
        Duration::from_secs(30),
        epoch,
        Scope::Writes,
    )
    .await
    .unwrap();
    p.release(&url, "shop.test", None, epoch + 1).await.unwrap();
    p.set_weights_at(&url, "shop.test", &weights(90.0, 10.0), epoch + 2)
        .await
        .unwrap();

    let seen = seen.lock().unwrap().clone();
    let hold = seen.iter().find(|s| s.path.ends_with("/hold")).unwrap();
    assert_eq!(hold.body, r#"{"scope":"writes","max":"30s"}"#);
    let release = seen.iter().find(|s| s.path.ends_with("/release")).unwrap();
    assert_eq!(release.body, "", "an older proxy gets no body, as before");
    let put = seen.iter().find(|s| s.path.ends_with("/weights")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&put.body).unwrap(),
        json!({"old": 90.0, "new": 10.0})
    );
    assert!(p.seen()[0].epochs.is_empty());
}

#[tokio::test]
async fn a_newer_epoch_on_a_replica_is_a_conflict_named_as_such() {
    let (addr, seen) = serve(admin_answer::<9>).await;
    let url = url_of(addr);
    let p = Proxies::new(std::slice::from_ref(&url), Some("t0ken".into())).unwrap();
    let e = p
        .hold(&url, "shop.test", Duration::from_secs(5), 7, Scope::Writes)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::EpochConflict {
                replica_epoch: 9,
                call_epoch: 7,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    for want in [
        url.as_str(),
        "hold writes on route shop.test at epoch 7",
        "the replica is at epoch 9",
        "this call carried epoch 7",
        "another controller (or an operator) has changed the fleet",
        "Nothing was retried",
    ] {
        assert!(text.contains(want), "missing {want:?} in {text}");
    }
    let e = p
        .release(&url, "shop.test", Some("new"), 8)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::EpochConflict { .. }), "{e:?}");
    // One attempt each: nothing is sent again.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().filter(|s| s.path.ends_with("/hold")).count(), 1);
}

#[tokio::test]
async fn the_counter_starts_from_the_highest_replica_and_ignores_later_reads() {
    let (a, _) = serve(admin_answer::<7>).await;
    let (b, _) = serve(admin_answer::<3>).await;
    let (c, c_seen) = serve(legacy_answer).await;
    let p = Proxies::new(&[url_of(a), url_of(b), url_of(c)], Some("t0ken".into())).unwrap();
    assert_eq!(p.read_epoch().await.unwrap(), 7);
    assert_eq!(p.next_epoch().await.unwrap(), 8);
    // Reading again (another controller may have moved the fleet) changes nothing.
    assert_eq!(p.read_epoch().await.unwrap(), 8);
    assert_eq!(p.current_epoch().await.unwrap(), 8);
    // The older proxy among them is sent the change without an epoch.
    p.hold(
        &url_of(c),
        "shop.test",
        Duration::from_secs(5),
        8,
        Scope::Writes,
    )
    .await
    .unwrap();
    let seen = c_seen.lock().unwrap().clone();
    let hold = seen.iter().find(|s| s.path.ends_with("/hold")).unwrap();
    assert!(!hold.body.contains("epoch"), "{}", hold.body);
    // Clones share the counter.
    assert_eq!(p.clone().next_epoch().await.unwrap(), 9);
    assert_eq!(p.next_epoch().await.unwrap(), 10);
}

/// The epoch of the replica [`moving_answer`] plays, as the test moves it.
static MOVING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(3);

/// A replica whose epoch someone else moves (an operator's call without epoch).
fn moving_answer(s: &Received) -> (StatusCode, String) {
    let epoch = MOVING.load(std::sync::atomic::Ordering::SeqCst);
    match s.path.as_str() {
        "/state" => (
            StatusCode::OK,
            serde_json::to_string(&state(epoch, "proxy-0")).unwrap(),
        ),
        _ => admin_answer::<0>(s),
    }
}

#[tokio::test]
async fn a_change_is_not_sent_over_someone_elses() {
    let (addr, seen) = serve(moving_answer).await;
    let url = url_of(addr);
    let p = Proxies::new(std::slice::from_ref(&url), Some("t0ken".into())).unwrap();
    assert_eq!(p.next_epoch().await.unwrap(), 4);
    // This controller's change at 4 went out; the replica is there.
    MOVING.store(4, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(p.next_epoch().await.unwrap(), 5);
    // An operator's call raises the replica to 6 (it would take a change at 6).
    MOVING.store(6, std::sync::atomic::Ordering::SeqCst);
    let e = p.next_epoch().await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::FleetMoved {
                replica_epoch: 6,
                ours: 5,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains(&url)
            && text.contains("another controller")
            && text.contains("Nothing was sent"),
        "{text}"
    );
    assert!(!seen.lock().unwrap().iter().any(|s| s.method != "GET"));
}

/// A replica of the fleet for catch-ups: at epoch `EPOCH` (origin `r{EPOCH}`),
/// adopting a newer state put to it and refusing an older one (409).
fn fleet_answer<const EPOCH: u64>(s: &Received) -> (StatusCode, String) {
    let own = state(EPOCH, &format!("r{EPOCH}"));
    match (s.method.as_str(), s.path.as_str()) {
        ("GET", "/state") => (StatusCode::OK, serde_json::to_string(&own).unwrap()),
        ("PUT", "/state") => {
            let offered: State = serde_json::from_str(&s.body).unwrap();
            if offered.newer_than(&own) || offered == own {
                let mut now = offered;
                now.replica = own.replica;
                (StatusCode::OK, serde_json::to_string(&now).unwrap())
            } else {
                (
                    StatusCode::CONFLICT,
                    error_body("the offered state is older", Some(EPOCH)),
                )
            }
        }
        _ => (StatusCode::NOT_FOUND, error_body("not found", None)),
    }
}

#[tokio::test]
async fn a_replica_that_joins_takes_the_newest_state() {
    let (old, _) = serve(fleet_answer::<5>).await;
    let (newest, newest_seen) = serve(fleet_answer::<8>).await;
    let (joined, joined_seen) = serve(fleet_answer::<0>).await;
    let (ahead, ahead_seen) = serve(fleet_answer::<8>).await;
    let (legacy, _) = serve(legacy_answer).await;
    let urls = [old, newest, joined, ahead, legacy].map(url_of);
    let p = Proxies::new(&urls, None).unwrap();

    let targets = [urls[2].clone(), urls[3].clone(), urls[4].clone()];
    let out = p.catch_up(&targets).await;
    assert_eq!(out.len(), 3);
    match &out[0].caught {
        Caught::Adopted { epoch, from } => {
            assert_eq!(*epoch, 8);
            assert_eq!(from, &urls[1]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(out[1].caught, Caught::Current { epoch: 8 }),
        "{out:?}"
    );
    assert!(matches!(out[2].caught, Caught::NoState), "{out:?}");
    assert!(out.iter().all(CatchUp::ok));

    // The newest state went to the replica that joined, whole.
    let put = joined_seen
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.method == "PUT")
        .cloned()
        .unwrap();
    let sent: State = serde_json::from_str(&put.body).unwrap();
    assert_eq!(sent, state(8, "r8"));
    // Nothing was put to a replica already as new, or read from but not changed.
    for log in [&ahead_seen, &newest_seen] {
        assert!(log.lock().unwrap().iter().all(|s| s.method == "GET"));
    }
    let line = out[0].describe("proxy-3");
    assert!(
        line.contains(&urls[2]) && line.contains("(proxy-3)") && line.contains("epoch 8"),
        "{line}"
    );
}

/// A replica listed before its process listens (Kubernetes publishes a starting
/// pod's address) serves nothing yet: it is not enrolled, rather than failing the
/// action under way; one that answers but fails is still a failure.
#[tokio::test]
async fn a_replica_not_listening_yet_is_not_enrolled() {
    let (live, _) = serve(fleet_answer::<4>).await;
    let (broken, _) =
        serve(|_: &Received| (StatusCode::INTERNAL_SERVER_ERROR, String::new())).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let urls = [url_of(live), url_of(broken), url_of(closed)];
    let p = Proxies::new(&urls, None).unwrap();
    let out = p.catch_up(&urls[1..]).await;
    assert!(matches!(out[0].caught, Caught::Failed(_)), "{out:?}");
    assert!(out[0].enrolled() && !out[0].ok());
    assert!(matches!(out[1].caught, Caught::NotListening(_)), "{out:?}");
    assert!(!out[1].enrolled() && out[1].ok());
    let line = out[1].describe("");
    assert!(
        line.contains("not listening yet") && line.contains(&urls[2]),
        "{line}"
    );
}

#[tokio::test]
async fn a_state_older_than_the_replicas_own_is_kept_out() {
    let (addr, _) = serve(fleet_answer::<6>).await;
    let url = url_of(addr);
    let p = Proxies::new(std::slice::from_ref(&url), None).unwrap();
    assert_eq!(
        p.put_state(&url, &state(4, "x")).await.unwrap(),
        StatePut::Newer(6)
    );
    match p.put_state(&url, &state(7, "x")).await.unwrap() {
        StatePut::Adopted(s) => assert_eq!((s.epoch, s.replica.as_str()), (7, "r6")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refusals_name_the_proxy_and_the_reason() {
    let (addr, _) = serve(admin_answer::<0>).await;
    let url = url_of(addr);
    let p = Proxies::new(std::slice::from_ref(&url), Some("t0ken".into())).unwrap();
    let e = p
        .hold(
            &url,
            "nosuch.test",
            Duration::from_secs(5),
            1,
            Scope::Writes,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&url), "{e}");
    assert!(e.contains("HTTP 404: no route for host nosuch.test"), "{e}");

    let anonymous = Proxies::new(std::slice::from_ref(&url), None).unwrap();
    let e = anonymous
        .routes(&url, "shop")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("HTTP 401") && e.contains("CUTOVER_ADMIN_TOKEN"),
        "{e}"
    );
    assert!(!format!("{p:?}").contains("t0ken"));

    // Nothing listens there any more: a transport error, still naming the proxy.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = Proxies::new(&[closed.to_string()], None).unwrap();
    let e = dead
        .hold(
            &dead.urls()[0],
            "shop",
            Duration::from_secs(5),
            1,
            Scope::Writes,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&closed.to_string()), "{e}");
    let e = dead.next_epoch().await.unwrap_err().to_string();
    assert!(
        e.contains(&closed.to_string()) && e.contains("/state"),
        "{e}"
    );
}

#[tokio::test]
async fn an_answer_outside_the_contract_is_an_error() {
    fn odd(_: &Received) -> (StatusCode, String) {
        (StatusCode::OK, r#"{"routes": [{"name": "shop"}]}"#.into())
    }
    let (addr, _) = serve(odd).await;
    let url = url_of(addr);
    let p = Proxies::new(std::slice::from_ref(&url), None).unwrap();
    let e = p.read_status(&url).await.unwrap_err().to_string();
    assert!(
        e.contains(&url) && e.contains("read /status") && e.contains("not what the admin API"),
        "{e}"
    );
}

#[test]
fn admin_urls_are_plain_http_without_a_path() {
    assert!(Proxies::new(&[], None).is_err());
    assert!(Proxies::new(&["https://p:9901".into()], None).is_err());
    assert!(Proxies::new(&["http://p:9901/admin".into()], None).is_err());
    assert!(Proxies::new(&["p:9901".into()], None).is_ok());
}

#[test]
fn find_route_matches_a_name_or_a_host_exactly() {
    let status: Status = serde_json::from_str(&status_doc(vec![shop(None)], 0, "")).unwrap();
    assert_eq!(
        find_route(&status, "shop").map(|r| r.name.as_str()),
        Some("shop")
    );
    assert!(find_route(&status, "*.shop.test").is_some());
    assert!(find_route(&status, "other.test").is_none());
}

/// Answers like the admin API for weights, status and metrics; `weights` bodies
/// whose values do not sum to 100 get the proxy's 422, an unknown route its 404.
fn weights_answer(s: &Received) -> (StatusCode, String) {
    match (s.method.as_str(), s.path.as_str()) {
        ("GET", "/metrics") => (
            StatusCode::OK,
            "# TYPE cutover_config_generation gauge\ncutover_config_generation 3\n".to_string(),
        ),
        ("GET", "/status") => (StatusCode::OK, status_doc(Vec::new(), 0, "")),
        ("PUT", p) if p.starts_with("/routes/nosuch") => (
            StatusCode::NOT_FOUND,
            error_body("no route lists host \"nosuch.test\"", None),
        ),
        ("PUT", _) => {
            let body: WeightsRequest = serde_json::from_str(&s.body).unwrap();
            let sum: f64 = body.weights().values().sum();
            if (sum - 100.0).abs() < 1e-9 {
                (StatusCode::OK, json!({"name": "shop"}).to_string())
            } else {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    error_body(&format!("weights sum to {sum}, not 100"), None),
                )
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

async fn weights_server() -> (String, ReceivedLog) {
    let (addr, seen) = serve(weights_answer).await;
    (url_of(addr), seen)
}

fn weights(old: f64, new: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([("old".to_string(), old), ("new".to_string(), new)])
}

#[tokio::test]
async fn weights_metrics_and_status_speak_the_admin_contract() {
    let (url, calls) = weights_server().await;
    let p = Proxies::new(std::slice::from_ref(&url), None).unwrap();

    p.set_weights(&url, "shop.test", &weights(90.0, 10.0))
        .await
        .unwrap();
    p.set_weights(&url, "*.shop.test", &weights(50.0, 50.0))
        .await
        .unwrap();
    p.set_weights(&url, "*", &weights(0.0, 100.0))
        .await
        .unwrap();
    let text = p.metrics_text(&url).await.unwrap();
    assert!(text.contains("cutover_config_generation 3"), "{text}");
    assert_eq!(p.read_status(&url).await.unwrap().generation, 3);
    assert_eq!(p.read_status(&url).await.unwrap().generation, 3);

    let calls = calls.lock().unwrap().clone();
    let puts: Vec<_> = calls.iter().filter(|c| c.method == "PUT").collect();
    assert_eq!(puts[0].path, "/routes/shop.test/weights");
    assert_eq!(puts[1].path, "/routes/%2A.shop.test/weights");
    assert_eq!(puts[2].path, "/routes/%2A/weights");
    let body: serde_json::Value = serde_json::from_str(&puts[0].body).unwrap();
    assert_eq!(body, json!({"old": 90.0, "new": 10.0}));
}

#[tokio::test]
async fn weights_carry_the_change_epoch() {
    let (addr, seen) = serve(admin_answer::<2>).await;
    let url = url_of(addr);
    let p = Proxies::new(std::slice::from_ref(&url), Some("t0ken".into())).unwrap();
    let epoch = p.next_epoch().await.unwrap();
    p.set_weights_at(&url, "shop.test", &weights(90.0, 10.0), epoch)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let put = seen.iter().find(|s| s.method == "PUT").unwrap();
    let body: WeightsRequest = serde_json::from_str(&put.body).unwrap();
    assert_eq!(
        body,
        WeightsRequest::Epoch {
            weights: weights(90.0, 10.0),
            epoch: Some(3)
        }
    );
    // A change at an epoch older than the replica's is refused.
    let e = p
        .set_weights_at(&url, "shop.test", &weights(50.0, 50.0), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::EpochConflict {
                replica_epoch: 2,
                call_epoch: 1,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn weight_refusals_carry_the_proxys_reason() {
    let (url, _) = weights_server().await;
    let p = Proxies::new(std::slice::from_ref(&url), Some("s3cret".into())).unwrap();

    let e = p
        .set_weights(&url, "shop.test", &weights(90.0, 20.0))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&url), "{e}");
    assert!(e.contains("HTTP 422: weights sum to 110, not 100"), "{e}");
    assert!(e.contains("old=90") && e.contains("new=20"), "{e}");

    let e = p
        .set_weights(&url, "nosuch.test", &weights(90.0, 10.0))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 404: no route lists host"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
}

#[tokio::test]
async fn a_failed_scrape_names_the_proxy_and_the_status() {
    // The first server refuses (no token given), the second is gone.
    let (addr, _) = serve(admin_answer::<0>).await;
    let url = url_of(addr);
    let p = Proxies::new(std::slice::from_ref(&url), None).unwrap();
    let e = p.metrics_text(&url).await.unwrap_err().to_string();
    assert!(
        e.contains(&url) && e.contains("/metrics") && e.contains("HTTP 401"),
        "{e}"
    );

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = Proxies::new(&[closed.to_string()], None).unwrap();
    let e = dead
        .metrics_text(&dead.urls()[0])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&closed.to_string()), "{e}");
    let e = dead
        .read_status(&dead.urls()[0])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&closed.to_string()) && e.contains("/status"),
        "{e}"
    );
}

#[tokio::test]
async fn a_fixed_list_has_nothing_to_find_again() {
    let (addr, _) = serve(admin_answer::<0>).await;
    let mut p = Proxies::new(&[url_of(addr)], Some("t0ken".into())).unwrap();
    assert!(p.refresh().await.unwrap().is_empty());
    let listed = ProxySource::Admin(vec![format!("{addr}")]);
    let mut p = Proxies::discover(listed, None).await.unwrap();
    assert_eq!(p.urls(), [url_of(addr)]);
    assert!(p.refresh().await.unwrap().is_empty());
    assert!(p.take_notes().is_empty());
}
