//! One replica's part in the fleet: a call naming an older epoch is refused and
//! changes nothing, and the state file brings a hold back across a crash.

use std::time::Duration;

use cutover_tests::{Backend, ProxyBuilder, Reply, eventually};
use http::Method;
use serde_json::Value;

use crate::fleet::{HOST, config, epoch, state, weights};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_controller_is_refused_with_409_and_changes_nothing() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = config(
        "solo",
        ("127.0.0.1:0", "127.0.0.1:0"),
        (old.addr, new.addr),
        (100.0, 0.0),
        "",
        None,
    );
    let proxy = ProxyBuilder::new(cfg).start().unwrap();
    let refused = |r: Reply, current: u64, given: u64| {
        assert_eq!(r.status, 409, "{}", r.body);
        let body: Value = serde_json::from_str(&r.body).expect("a 409 is JSON");
        assert_eq!(epoch(&body), current, "{body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("epoch {given}"))),
            "{body}"
        );
    };

    let r = proxy
        .put_weights(HOST, r#"{"weights":{"old":50,"new":50},"epoch":5}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let at5 = state(&proxy).await;
    assert_eq!((epoch(&at5), weights(&at5)), (5, (50.0, 50.0)));

    let r = proxy
        .put_weights(HOST, r#"{"weights":{"old":0,"new":100},"epoch":4}"#)
        .await;
    refused(r, 5, 4);
    assert_eq!(state(&proxy).await, at5);
    let r = proxy
        .admin_call(
            Method::POST,
            "/routes/shop.test/hold",
            r#"{"max":"30s","epoch":4}"#,
        )
        .await;
    refused(r, 5, 4);
    assert_eq!(state(&proxy).await, at5);
    // Not held: a write is answered at once, by old.
    let r = proxy
        .client()
        .send(proxy.http, Method::POST, HOST, "/orders", &[], "x")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.backend()), (200, "old"));

    // A hold at the current controller's epoch, which a stale release must not end.
    let r = proxy
        .admin_call(
            Method::POST,
            "/routes/shop.test/hold",
            r#"{"max":"30s","epoch":6}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let at6 = state(&proxy).await;
    assert_eq!(epoch(&at6), 6);
    assert!(!at6["routes"][HOST]["hold"].is_null(), "{at6}");
    let r = proxy
        .admin_call(
            Method::POST,
            "/routes/shop.test/release",
            r#"{"writes":"new","epoch":5}"#,
        )
        .await;
    refused(r, 6, 5);
    assert_eq!(state(&proxy).await, at6);
    assert_eq!(proxy.status().await["routes"][0]["writes"], "old");
    // A whole older state is refused the same way.
    let mut older = at6.clone();
    older["epoch"] = 3.into();
    older["routes"][HOST]["hold"] = Value::Null;
    let r = proxy
        .admin_call(Method::PUT, "/state", &older.to_string())
        .await;
    refused(r, 6, 3);
    assert_eq!(state(&proxy).await, at6);

    // The same epoch is not stale: the current controller releases.
    let r = proxy
        .admin_call(
            Method::POST,
            "/routes/shop.test/release",
            r#"{"writes":"new","epoch":6}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let st = state(&proxy).await;
    assert_eq!(epoch(&st), 6);
    assert!(st["routes"][HOST]["hold"].is_null(), "{st}");
    assert_eq!(st["routes"][HOST]["writes"], "new", "{st}");
    assert_eq!(
        old.writes(),
        1,
        "only the write before the hold reached old"
    );
}

/// Two backends and one replica's config for them (all to old) with a state file.
fn solo_with_state_file() -> (Backend, Backend, String) {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = config(
        "solo",
        ("127.0.0.1:0", "127.0.0.1:0"),
        (old.addr, new.addr),
        (100.0, 0.0),
        "state_file = \"state.json\"",
        None,
    );
    (old, new, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_mid_hold_comes_back_held_until_released() {
    let (old, new, cfg) = solo_with_state_file();
    let mut proxy = ProxyBuilder::new(cfg).start().unwrap();
    let r = proxy
        .admin_call(Method::POST, "/routes/shop.test/hold", r#"{"max":"60s"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let held = proxy.status().await["routes"][0]["hold"].clone();
    assert_eq!(held["scope"], "writes", "{held}");
    let (since, deadline) = (
        held["since"].as_f64().unwrap(),
        held["deadline"].as_f64().unwrap(),
    );
    assert!((deadline - since - 60.0).abs() < 0.5, "{held}");
    let before = epoch(&state(&proxy).await);
    let file = proxy.dir.path().join("state.json");
    let recorded: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(epoch(&recorded), before, "{recorded}");
    assert_eq!(
        recorded["routes"][HOST]["hold"]["deadline"],
        held["deadline"]
    );

    proxy.kill();
    let restarted = proxy
        .restart()
        .unwrap_or_else(|(s, log)| panic!("{s:?}:\n{log}"));
    let s = restarted.status().await;
    let hold = &s["routes"][0]["hold"];
    assert!(!hold.is_null(), "came back without the hold: {s}");
    assert_eq!(hold["scope"], "writes", "{hold}");
    let same = |v: &Value, want: f64| v.as_f64().is_some_and(|x| (x - want).abs() < 0.001);
    assert!(same(&hold["deadline"], deadline), "{hold} vs {held}");
    assert!(same(&hold["since"], since), "{hold} vs {held}");
    assert_eq!(epoch(&state(&restarted).await), before);

    let (old_writes, new_writes) = (old.writes(), new.writes());
    let write = tokio::spawn({
        let (client, addr) = (restarted.client().clone(), restarted.http);
        async move {
            client
                .send(addr, Method::POST, HOST, "/orders", &[], "x")
                .await
        }
    });
    eventually(Duration::from_secs(5), "the write to be held", || async {
        (restarted.status().await["routes"][0]["hold"]["held"] == 1).then_some(())
    })
    .await;
    assert!(!write.is_finished(), "a write was answered while held");
    // Reads are not held.
    let r = restarted.get(HOST, "/").await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "old"));

    let r = restarted
        .admin_call(
            Method::POST,
            "/routes/shop.test/release",
            r#"{"writes":"new"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["released"],
        1
    );
    let r = write.await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.backend()), (200, "new"), "{}", r.body);
    assert_eq!(
        old.writes(),
        old_writes,
        "no write reached old after the hold"
    );
    assert_eq!(new.writes(), new_writes + 1);
}

/// A replica that comes back with its state file after its config file's weights
/// were edited while it was down takes the file's new weights, and keeps the
/// write side a switchover set through the admin API: the file did not change
/// that, and taking the file's `writes = "old"` would send every write to a
/// database that refuses them now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_weights_edit_keeps_the_write_side_a_switchover_set() {
    let (old, new, cfg) = solo_with_state_file();
    let mut proxy = ProxyBuilder::new(cfg.clone()).start().unwrap();
    proxy.release(HOST, r#"{"writes":"new"}"#).await;
    assert_eq!(proxy.status().await["routes"][0]["writes"], "new");

    proxy.kill();
    let edited = cfg.replace(
        "weights = { old = 100, new = 0 }",
        "weights = { old = 0, new = 100 }",
    );
    assert_ne!(edited, cfg, "the weights line was not found in:\n{cfg}");
    std::fs::write(proxy.config_path(), edited).unwrap();
    let restarted = proxy
        .restart()
        .unwrap_or_else(|(s, log)| panic!("{s:?}:\n{log}"));
    let s = state(&restarted).await;
    assert_eq!(weights(&s), (0.0, 100.0), "{s}");
    let route = &restarted.status().await["routes"][0];
    assert_eq!(route["writes"], "new", "{route}");
    let (old_writes, new_writes) = (old.writes(), new.writes());
    let r = restarted
        .client()
        .send(restarted.http, Method::POST, HOST, "/orders", &[], "x")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.backend()), (200, "new"), "{}", r.body);
    assert_eq!((old.writes(), new.writes()), (old_writes, new_writes + 1));
}
