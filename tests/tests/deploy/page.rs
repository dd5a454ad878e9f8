//! `GET /` on the admin port: the live status page, in a real headless Chromium.
//! The page must follow the proxy within its one-second refresh: a weight set over
//! the API shows within 2 s; traffic, errors, a hold and its age, a drained
//! backend and a refused reload all appear; and the admin token applies.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cutover_tests::{Backend, ProxyBuilder, two_backend_config};
use http::Method;
use serde_json::Value;

use crate::browser::Browser;

const HOST: &str = "shop.test";
const TOKEN: &str = "status-page-token";

/// What a person sees, read from the DOM: per route the weight bar, the hold line
/// and each backend's row; the token prompt; the reload line.
const READ_PAGE: &str = r#"
const out = {
  auth: document.getElementById('auth').classList.contains('show'),
  updated: document.getElementById('updated').textContent,
  reload: document.getElementById('reload').textContent,
  routes: {},
};
document.querySelectorAll('section[data-route]').forEach((r) => {
  const o = { hold: r.querySelector('[data-k=hold]').textContent, bar: {}, rows: {} };
  r.querySelectorAll('.bar span').forEach((s) => {
    o.bar[s.dataset.backend] = s.dataset.weight + '|' + s.style.width;
  });
  r.querySelectorAll('tr[data-backend]').forEach((tr) => {
    const b = {};
    tr.querySelectorAll('td[data-k]').forEach((td) => { b[td.dataset.k] = td.textContent; });
    o.rows[tr.dataset.backend] = b;
  });
  out.routes[r.dataset.route] = o;
});
return out;
"#;

fn row<'a>(v: &'a Value, backend: &str) -> &'a Value {
    &v["routes"][HOST]["rows"][backend]
}

fn cell(v: &Value, backend: &str, k: &str) -> String {
    row(v, backend)[k].as_str().unwrap_or("").to_string()
}

/// The number in "12.5%", "3 ms", "0.42 s"; `None` for "–".
fn number(text: &str) -> Option<f64> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn status_page_shows_the_live_state_and_follows_a_weight_change_within_2s() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(old.addr, new.addr, &[HOST], (90.0, 10.0), "");
    let proxy = ProxyBuilder::new(cfg)
        .env("CUTOVER_ADMIN_TOKEN", TOKEN)
        .start()
        .unwrap();

    // The page itself is static and public like /healthz; the state is not.
    let client = proxy.client();
    let page = client.get(proxy.admin, "admin", "/").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(
        page.header("content-security-policy")
            .contains("default-src 'none'")
    );
    assert!(!page.body.contains(HOST), "the page must carry no state");
    let status = client.get(proxy.admin, "admin", "/status").await.unwrap();
    assert_eq!(status.status, 401);

    let browser = Browser::start().await;
    let base = format!("http://{}/", proxy.admin);

    // Without the token the page asks for it and shows nothing.
    browser.open(&base).await;
    let (v, _) = browser
        .wait_for(Duration::from_secs(5), "the token prompt", READ_PAGE, |v| {
            v["auth"] == true
        })
        .await;
    assert_eq!(v["routes"], serde_json::json!({}), "{v}");

    // With it (in the fragment, which the page then drops from the address bar).
    browser.open(&format!("{base}#token={TOKEN}")).await;
    let (v, _) = browser
        .wait_for(
            Duration::from_secs(5),
            "the route at 90/10",
            READ_PAGE,
            |v| {
                v["routes"][HOST]["bar"]["old"] == "90|90%"
                    && v["routes"][HOST]["bar"]["new"] == "10|10%"
            },
        )
        .await;
    assert_eq!(v["auth"], false);
    assert_eq!(cell(&v, "old", "weight"), "90%");
    let want = Value::String(base.clone());
    browser
        .wait_for(
            Duration::from_secs(2),
            "the token gone from the address bar",
            "return location.href",
            |v| *v == want,
        )
        .await;

    // Traffic: requests per second and latency per backend.
    for _ in 0..200 {
        assert_eq!(proxy.get(HOST, "/").await.status, 200);
    }
    let (v, _) = browser
        .wait_for(
            Duration::from_secs(5),
            "req/s and p99 for old",
            READ_PAGE,
            |v| {
                number(&cell(v, "old", "rps")).is_some_and(|r| r > 0.0)
                    && cell(v, "old", "p99").contains('s')
                    && cell(v, "old", "err") == "0.000%"
            },
        )
        .await;
    assert!(
        number(&cell(&v, "new", "rps")).is_some_and(|r| r > 0.0),
        "{v}"
    );

    // Errors: old answers 500 (not retried), and its error ratio shows.
    old.stats.fail_status.store(500, Ordering::SeqCst);
    let mut failed = 0;
    for _ in 0..100 {
        if proxy.get(HOST, "/").await.status == 500 {
            failed += 1;
        }
    }
    assert!(failed > 50, "{failed} of 100 went to old");
    browser
        .wait_for(
            Duration::from_secs(5),
            "an error ratio for old",
            READ_PAGE,
            |v| {
                number(&cell(v, "old", "err")).is_some_and(|e| e > 1.0)
                    && cell(v, "new", "err") == "0.000%"
            },
        )
        .await;
    old.stats.fail_status.store(0, Ordering::SeqCst);

    // The contract: a weight set over the API is on the page within 2 s.
    let r = proxy.put_weights(HOST, r#"{"old":50,"new":50}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, took) = browser
        .wait_for(Duration::from_secs(2), "50/50 within 2 s", READ_PAGE, |v| {
            v["routes"][HOST]["bar"]["old"] == "50|50%"
                && cell(v, "old", "weight") == "50%"
                && cell(v, "new", "weight") == "50%"
        })
        .await;
    eprintln!("status page showed the new weights {took:?} after the PUT");

    // Drained: old at 0 (writes split) with nothing in flight.
    let r = proxy.put_weights(HOST, r#"{"old":0,"new":100}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (v, _) = browser
        .wait_for(Duration::from_secs(3), "old drained", READ_PAGE, |v| {
            cell(v, "old", "drained") == "drained"
        })
        .await;
    assert_eq!(cell(&v, "new", "drained"), "serving");
    assert!(v["routes"][HOST]["bar"].get("old").is_none(), "{v}");

    // A hold, with its age rising.
    let r = proxy
        .admin_call(
            Method::POST,
            &format!("/routes/{HOST}/hold"),
            r#"{"scope":"writes","max":"60s"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let age = |v: &Value| {
        let text = v["routes"][HOST]["hold"].as_str().unwrap_or("");
        text.strip_prefix("hold on writes for ")
            .and_then(number)
            .unwrap_or(-1.0)
    };
    browser
        .wait_for(Duration::from_secs(3), "the hold", READ_PAGE, |v| {
            age(v) >= 0.0
        })
        .await;
    browser
        .wait_for(Duration::from_secs(4), "the hold 1 s old", READ_PAGE, |v| {
            age(v) >= 1.0
        })
        .await;
    let png = browser.screenshot().await;
    let shot = std::env::temp_dir().join("cutover-status-page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());
    let r = proxy
        .admin_call(Method::POST, &format!("/routes/{HOST}/release"), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    browser
        .wait_for(Duration::from_secs(3), "no hold", READ_PAGE, |v| {
            v["routes"][HOST]["hold"] == "no hold"
        })
        .await;

    // A refused reload, named with its error.
    std::fs::write(proxy.config_path(), "[listen\nhttp = 1\n").unwrap();
    let (v, _) = browser
        .wait_for(
            Duration::from_secs(10),
            "the reload error",
            READ_PAGE,
            |v| {
                v["reload"]
                    .as_str()
                    .is_some_and(|r| r.contains("last reload refused"))
            },
        )
        .await;
    assert!(
        v["reload"].as_str().unwrap().contains("cutover.toml"),
        "{v}"
    );
    browser.close().await;
}
