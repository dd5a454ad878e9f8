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

async fn admin_server() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
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
                        log.lock().unwrap().push(Seen {
                            method: method.clone(),
                            path: path.clone(),
                            auth: auth.clone(),
                            body,
                        });
                        let (status, text) = if auth != "Bearer t0ken" {
                            (
                                StatusCode::UNAUTHORIZED,
                                r#"{"error":"missing or wrong bearer token"}"#.to_string(),
                            )
                        } else if path == "/status" {
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
                        } else if path.ends_with("/hold") && path.contains("nosuch") {
                            (
                                StatusCode::NOT_FOUND,
                                r#"{"error":"no route for host nosuch.test"}"#.into(),
                            )
                        } else if path.ends_with("/hold") {
                            (
                                StatusCode::OK,
                                r#"{"hold":{"scope":"writes"},"routes":["shop"]}"#.into(),
                            )
                        } else {
                            (
                                StatusCode::OK,
                                r#"{"released":4,"routes":["shop"],"writes":"new"}"#.into(),
                            )
                        };
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
