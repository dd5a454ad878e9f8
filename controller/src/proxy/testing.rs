//! Test servers that answer as the proxy's admin API does, with bodies built from
//! the `cutover_api` types: for the client's tests here and the switchover's fleet
//! tests. (A mock stands in because unit tests run without the proxy binary; the
//! real proxy is exercised by the end-to-end suites in `tests/`.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cutover_api::{
    ErrorBody, HoldAnswer, HoldState, HoldStatus, ReleaseAnswer, RouteStatus, Scope, Source, State,
    Status, Sticky,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;

#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub method: String,
    pub path: String,
    pub auth: String,
    pub body: String,
}

/// What a test server received, in order.
pub(crate) type ReceivedLog = Arc<Mutex<Vec<Received>>>;

/// A server that records every request and answers with `answer`.
pub(crate) async fn serve<F>(answer: F) -> (SocketAddr, ReceivedLog)
where
    F: Fn(&Received) -> (StatusCode, String) + Send + Sync + Copy + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = ReceivedLog::default();
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
                        let seen = Received {
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

pub(crate) fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Route `shop` as `/status` shows it: writes on old, 2 writes in flight there.
pub(crate) fn shop(hold: Option<HoldStatus>) -> RouteStatus {
    fn pair<T>(old: T, new: T) -> BTreeMap<String, T> {
        BTreeMap::from([("old".to_string(), old), ("new".to_string(), new)])
    }
    RouteStatus {
        name: "shop".into(),
        hosts: vec!["shop.test".into(), "*.shop.test".into()],
        weights: pair(100.0, 0.0),
        weights_source: Source::File,
        effective_weights: pair(100.0, 0.0),
        effective_reason: None,
        writes: "old".into(),
        writes_source: Source::File,
        sticky: Sticky::Cookie("cutover".into()),
        inflight: pair(3, 0),
        inflight_reads: pair(1, 0),
        inflight_writes: pair(2, 0),
        drained: BTreeMap::from([("old".to_string(), false), ("new".to_string(), true)]),
        long_lived: pair(0, 0),
        write_tunnels: pair(0, 0),
        hold,
        members: vec!["old".into(), "new".into()],
    }
}

pub(crate) fn status_doc(routes: Vec<RouteStatus>, epoch: u64, replica: &str) -> String {
    serde_json::to_string(&Status {
        pid: 42,
        now: 1_700_000_000.0,
        generation: 3,
        epoch,
        replica: replica.into(),
        ready: true,
        config_file: "proxy.toml".into(),
        last_reload_error: None,
        last_reload: None,
        reload_errors_total: 0,
        routes,
        backends: Vec::new(),
        fleet: None,
    })
    .unwrap()
}

pub(crate) fn state(epoch: u64, replica: &str) -> State {
    State {
        epoch,
        origin: replica.into(),
        replica: replica.into(),
        routes: BTreeMap::new(),
    }
}

pub(crate) fn error_body(error: &str, epoch: Option<u64>) -> String {
    serde_json::to_string(&ErrorBody {
        error: error.into(),
        epoch,
    })
    .unwrap()
}

/// Answers as the admin API does to state, hold, release and status calls, with
/// the token `t0ken`; the replica is `proxy-0` at epoch `EPOCH`, and refuses a
/// call naming an older epoch (409).
pub(crate) fn admin_answer<const EPOCH: u64>(s: &Received) -> (StatusCode, String) {
    let body: Value = serde_json::from_str(&s.body).unwrap_or(Value::Null);
    let epoch = body.get("epoch").and_then(Value::as_u64);
    if s.auth != "Bearer t0ken" {
        (
            StatusCode::UNAUTHORIZED,
            error_body("missing or wrong bearer token", None),
        )
    } else if s.path == "/status" {
        (
            StatusCode::OK,
            status_doc(vec![shop(None)], EPOCH, "proxy-0"),
        )
    } else if s.path == "/state" {
        (
            StatusCode::OK,
            serde_json::to_string(&state(EPOCH, "proxy-0")).unwrap(),
        )
    } else if epoch.is_some_and(|e| e < EPOCH) {
        (
            StatusCode::CONFLICT,
            error_body("the fleet is at a newer epoch", Some(EPOCH)),
        )
    } else if s.path.ends_with("/hold") && s.path.contains("nosuch") {
        (
            StatusCode::NOT_FOUND,
            error_body("no route for host nosuch.test", None),
        )
    } else if s.path.ends_with("/hold") {
        let a = HoldAnswer {
            hold: Some(HoldState {
                scope: Scope::Writes,
                since: 1.0,
                deadline: 3.5,
            }),
            routes: vec!["shop".into()],
            epoch: epoch.unwrap_or(EPOCH + 1),
        };
        (StatusCode::OK, serde_json::to_string(&a).unwrap())
    } else {
        let a = ReleaseAnswer {
            released: 4,
            routes: vec!["shop".into()],
            writes: "new".into(),
            epoch: epoch.unwrap_or(EPOCH + 1),
        };
        (StatusCode::OK, serde_json::to_string(&a).unwrap())
    }
}

/// An older proxy: no `/state` (404), and bodies as before.
pub(crate) fn legacy_answer(s: &Received) -> (StatusCode, String) {
    if s.path == "/state" {
        return (StatusCode::NOT_FOUND, error_body("not found", None));
    }
    admin_answer::<0>(s)
}
