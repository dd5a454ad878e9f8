//! The admin client against a small hyper server that records what it receives and
//! answers as the proxy's admin API does. (The real proxy is exercised by the
//! end-to-end suite in `tests/tests/db.rs`.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use super::*;

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    auth: String,
    body: String,
}

/// What a test server received, in order.
type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// A server that records every request and answers with `answer`.
async fn serve<F>(answer: F) -> (SocketAddr, SeenLog)
where
    F: Fn(&Seen) -> (StatusCode, String) + Send + Sync + Copy + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = SeenLog::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        let body = String::from_utf8_lossy(&body).into_owned();
                        let seen = Seen {
                            method,
                            path,
                            auth,
                            body,
                        };
                        let (status, text) = answer(&seen);
                        log.lock().unwrap().push(seen);
                        let mut r = Response::new(Full::new(Bytes::from(text)));
                        *r.status_mut() = status;
                        Ok::<_, hyper::Error>(r)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Answers as the admin API does to hold, release and status calls, with the
/// token `t0ken`.
fn admin_answer(s: &Seen) -> (StatusCode, String) {
    if s.auth != "Bearer t0ken" {
        (
            StatusCode::UNAUTHORIZED,
            r#"{"error":"missing or wrong bearer token"}"#.to_string(),
        )
    } else if s.path == "/status" {
        (
            StatusCode::OK,
            json!({"routes": [{
                "name": "shop", "hosts": ["shop.test", "*.shop.test"],
                "weights": {"old": 100, "new": 0}, "writes": "old",
                "inflight": {"old": 3, "new": 0},
                "inflight_writes": {"old": 2, "new": 0},
                "inflight_reads": {"old": 1, "new": 0},
                "hold": null, "drained": {"old": false, "new": true}
            }]})
            .to_string(),
        )
    } else if s.path.ends_with("/hold") && s.path.contains("nosuch") {
        (
            StatusCode::NOT_FOUND,
            r#"{"error":"no route for host nosuch.test"}"#.into(),
        )
    } else if s.path.ends_with("/hold") {
        (
            StatusCode::OK,
            r#"{"hold":{"scope":"writes"},"routes":["shop"]}"#.into(),
        )
    } else {
        (
            StatusCode::OK,
            r#"{"released":4,"routes":["shop"],"writes":"new"}"#.into(),
        )
    }
}

async fn admin_server() -> (SocketAddr, SeenLog) {
    serve(admin_answer).await
}

#[tokio::test]
async fn hold_release_and_status_speak_the_admin_contract() {
    let (addr, seen) = admin_server().await;
    let p = Proxies::new(&[format!("{addr}/")], Some("t0ken".into())).unwrap();
    let url = p.urls()[0].clone();
    assert_eq!(url, format!("http://{addr}"));

    let routes = p.routes(&url, "SHOP.test").await.unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].name, "shop");
    assert_eq!(routes[0].writes, "old");
    assert_eq!(routes[0].inflight_writes["old"], 2);
    assert!(routes[0].hold.is_none());
    assert_eq!(p.routes(&url, "*").await.unwrap().len(), 1);
    let e = p.routes(&url, "other.test").await.unwrap_err().to_string();
    assert!(e.contains(&url) && e.contains("other.test"), "{e}");

    let held = p
        .hold(&url, "*.shop.test", Duration::from_millis(2500))
        .await
        .unwrap();
    assert_eq!(held, vec!["shop".to_string()]);
    assert_eq!(p.release(&url, "shop.test", Some("new")).await.unwrap(), 4);
    assert_eq!(p.release(&url, "*", None).await.unwrap(), 4);

    let seen = seen.lock().unwrap().clone();
    let hold = seen.iter().find(|s| s.path.ends_with("/hold")).unwrap();
    assert_eq!(hold.method, "POST");
    assert_eq!(hold.path, "/routes/%2A.shop.test/hold");
    let body: Value = serde_json::from_str(&hold.body).unwrap();
    assert_eq!(body, json!({"scope": "writes", "max": "2500ms"}));
    let releases: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.ends_with("/release"))
        .collect();
    assert_eq!(releases[0].path, "/routes/shop.test/release");
    assert_eq!(releases[0].body, r#"{"writes":"new"}"#);
    assert_eq!(releases[1].path, "/routes/*/release");
    assert_eq!(releases[1].body, "");
    assert!(seen.iter().all(|s| s.auth == "Bearer t0ken"));
}

#[tokio::test]
async fn refusals_name_the_proxy_and_the_reason() {
    let (addr, _) = admin_server().await;
    let url = format!("http://{addr}");
    let p = Proxies::new(std::slice::from_ref(&url), Some("t0ken".into())).unwrap();
    let e = p
        .hold(&url, "nosuch.test", Duration::from_secs(5))
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
        .hold(&dead.urls()[0], "shop", Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&closed.to_string()) && e.contains("hold writes"),
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

/// Answers like the admin API for weights, status and metrics; `weights` bodies
/// whose values do not sum to 100 get the proxy's 422, an unknown route its 404.
fn weights_answer(s: &Seen) -> (StatusCode, String) {
    match (s.method.as_str(), s.path.as_str()) {
        ("GET", "/metrics") => (
            StatusCode::OK,
            "# TYPE cutover_config_generation gauge\ncutover_config_generation 3\n".to_string(),
        ),
        ("GET", "/status") => (
            StatusCode::OK,
            json!({"generation": 3, "routes": []}).to_string(),
        ),
        ("PUT", p) if p.starts_with("/routes/nosuch") => (
            StatusCode::NOT_FOUND,
            r#"{"error":"no route lists host \"nosuch.test\""}"#.into(),
        ),
        ("PUT", _) => {
            let v: Value = serde_json::from_str(&s.body).unwrap();
            let sum: f64 = v
                .as_object()
                .unwrap()
                .values()
                .map(|n| n.as_f64().unwrap())
                .sum();
            if (sum - 100.0).abs() < 1e-9 {
                (StatusCode::OK, json!({"name": "shop"}).to_string())
            } else {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(r#"{{"error":"weights sum to {sum}, not 100"}}"#),
                )
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

async fn weights_server() -> (String, SeenLog) {
    let (addr, seen) = serve(weights_answer).await;
    (format!("http://{addr}"), seen)
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
    assert_eq!(p.status(&url).await.unwrap()["generation"], 3);

    let calls = calls.lock().unwrap().clone();
    let puts: Vec<_> = calls.iter().filter(|c| c.method == "PUT").collect();
    assert_eq!(puts[0].path, "/routes/shop.test/weights");
    assert_eq!(puts[1].path, "/routes/%2A.shop.test/weights");
    assert_eq!(puts[2].path, "/routes/%2A/weights");
    let body: Value = serde_json::from_str(&puts[0].body).unwrap();
    assert_eq!(body, json!({"old": 90.0, "new": 10.0}));
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
    let (addr, _) = admin_server().await;
    let url = format!("http://{addr}");
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
    let e = dead.status(&dead.urls()[0]).await.unwrap_err().to_string();
    assert!(
        e.contains(&closed.to_string()) && e.contains("/status"),
        "{e}"
    );
}
