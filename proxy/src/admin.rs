//! The admin API, on its own listener: health, status, weights and metrics.
//!
//! When a token is configured every call but `/healthz` needs
//! `Authorization: Bearer <token>`; startup refuses a non-loopback admin listener
//! without one (see [`crate::run`]). A call that changes state needs
//! `Content-Type: application/json` and no foreign `Origin`, so a web page cannot
//! drive it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use cutover_config::WeightsError;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::body::ProxyBody;

mod page;
mod status;
mod switchover;
use crate::state::{Shared, UpdateError};

/// A web page the operator has open may send "simple" requests to any address
/// the browser can reach, this listener included (a form POST, or a fetch without
/// a CORS preflight), and they would carry no token only when none is configured.
/// Such a request either names its page's origin (`Origin`) or cannot set
/// `Content-Type: application/json` without a preflight this API never answers;
/// so a mutating call must carry that content type, and an `Origin` other than
/// this listener's own is refused. Nothing changes before these checks pass.
/// Returns the refusal for a call that may come from a page.
fn from_a_web_page(req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    let headers = req.headers();
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let own = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let origin = origin.to_str().unwrap_or("");
        let same = own.is_some_and(|h| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(h)
        });
        if !same {
            return Some(error(
                StatusCode::FORBIDDEN,
                "a cross-origin admin call is refused (Origin is not this listener's own)",
            ));
        }
    }
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
    (!json).then(|| {
        error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a call that changes state needs Content-Type: application/json (curl: -H 'content-type: application/json')",
        )
    })
}

/// Bodies larger than this are refused; weights fit in a few dozen bytes.
const MAX_BODY: usize = 64 * 1024;

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(route(&shared, req).await)
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    // A readiness probe carries no token, as `/healthz`; it reveals only whether
    // this replica caught up with its peers.
    if path == "/readyz" {
        return readyz(shared);
    }
    // The page is the same static file on every proxy and carries no state; the
    // data it shows comes from /status and /metrics, which need the token.
    if path == "/" && req.method() == Method::GET {
        return page::page();
    }
    if let Some(token) = &shared.admin_token
        && !authorized(req.headers().get(AUTHORIZATION), token)
    {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        return r;
    }
    let method = req.method().clone();
    if method != Method::GET
        && method != Method::HEAD
        && let Some(refused) = from_a_web_page(&req)
    {
        return refused;
    }
    // A starting replica has not got its peers' state yet: a change now would be
    // made to the wrong base (or rank it as current without that state). Only the
    // state itself may be put.
    if method != Method::GET
        && method != Method::HEAD
        && path != "/state"
        && shared.fleet.starting()
    {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is starting and has not adopted its peers' state yet; \
             retry once GET /readyz answers 200, or PUT /state to bring it up to date",
        );
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    match (method, path.as_str()) {
        (Method::GET, "/status") => typed(StatusCode::OK, &status::status(shared)),
        (Method::GET, "/state") => typed(StatusCode::OK, &crate::fleet::state(shared)),
        (Method::PUT, "/state") => match read_body(req).await {
            Ok(body) => put_state(shared, &body),
            Err(r) => r,
        },
        (Method::GET, "/metrics") => {
            let gauges = status::gauges(shared);
            shared
                .metrics
                .connections_open
                .set(shared.conns.open() as i64);
            let mut r = Response::new(ProxyBody::text(shared.metrics.render_with(&gauges)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (m, p) if route_target(p, "/weights").is_some() => {
            if m != Method::PUT {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use PUT with a JSON body such as {\"old\":50,\"new\":50}",
                );
            }
            let host = route_target(p, "/weights")
                .map(percent_decode)
                .unwrap_or_default();
            put_weights(shared, &host, req).await
        }
        (m, p) if route_target(p, "/disconnect").is_some() => {
            if m != Method::POST {
                return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
            }
            let host = route_target(p, "/disconnect")
                .map(percent_decode)
                .unwrap_or_default();
            match read_body(req).await {
                Ok(body) => switchover::disconnect(shared, &host, &body),
                Err(r) => r,
            }
        }
        (m, p) if route_target(p, "/hold").is_some() || route_target(p, "/release").is_some() => {
            if m != Method::POST {
                return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
            }
            let (host, hold) = match route_target(p, "/hold") {
                Some(h) => (percent_decode(h), true),
                None => (
                    route_target(p, "/release")
                        .map(percent_decode)
                        .unwrap_or_default(),
                    false,
                ),
            };
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            if hold {
                switchover::hold(shared, &host, &body)
            } else {
                switchover::release(shared, &host, &body)
            }
        }
        (_, "/status" | "/metrics" | "/healthz") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        }
        (_, "/state") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, or PUT with a newer state to adopt",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint; see GET / (status page), GET /healthz, GET /readyz, GET /status, GET /state, PUT /state, GET /metrics, PUT /routes/{host}/weights, POST /routes/{host}/hold, POST /routes/{host}/release, POST /routes/{host}/disconnect",
        ),
    }
}

async fn put_weights(shared: &Shared, host: &str, req: Request<Incoming>) -> Response<ProxyBody> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or unreadable",
            );
        }
    };
    let (requested, epoch) = match serde_json::from_slice::<cutover_api::WeightsRequest>(&body) {
        Ok(r) => (
            r.weights().iter().map(|(k, v)| (k.clone(), *v)).collect(),
            r.epoch(),
        ),
        Err(_) => match parse_weights(&body) {
            Ok(w) => (w, None),
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
        },
    };
    let change = match shared.fleet.begin(epoch) {
        Ok(c) => c,
        Err(current) => return stale(epoch, current),
    };
    match shared.update(|snap| snap.with_weights(host, &requested)) {
        Ok(live) => {
            change.commit(shared);
            let ri = live.snap.route_by_host(host).unwrap_or(0);
            tracing::info!(
                route = %live.snap.routes()[ri].name,
                generation = live.snap.generation,
                weights = ?status::weights_map(&live.snap, ri),
                "weights set over the admin API"
            );
            typed(StatusCode::OK, &status::route_status(&live, ri))
        }
        Err(UpdateError::Rejected(WeightsError::NoSuchRoute(h))) => {
            error(StatusCode::NOT_FOUND, &format!("no route lists host {h:?}"))
        }
        Err(UpdateError::Rejected(e @ WeightsError::Invalid(_))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string())
        }
        Err(UpdateError::State(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `GET /readyz`: 200 once this replica has a state at least as new as every peer
/// that answered; 503 with the reason before.
fn readyz(shared: &Shared) -> Response<ProxyBody> {
    let epoch = shared.fleet.epoch();
    match shared.fleet.not_ready_reason() {
        None => json_response(StatusCode::OK, &json!({ "ready": true, "epoch": epoch })),
        Some(why) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "ready": false, "epoch": epoch, "reason": why }),
        ),
    }
}

/// `PUT /state`: adopts a newer state; the same one is a no-op; an older one is
/// refused with 409.
fn put_state(shared: &Shared, body: &Bytes) -> Response<ProxyBody> {
    let st: cutover_api::State = match serde_json::from_slice(body) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("body is not a state as GET /state answers it: {e}"),
            );
        }
    };
    match crate::fleet::adopt(shared, &st) {
        Ok(true) => {
            shared.metrics.fleet_epoch.set(st.epoch as i64);
            typed(StatusCode::OK, &crate::fleet::state(shared))
        }
        Ok(false) => {
            let current = crate::fleet::state(shared);
            if st.epoch < current.epoch {
                stale(Some(st.epoch), current.epoch)
            } else {
                typed(StatusCode::OK, &current)
            }
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    }
}

/// The 409 for a call naming an epoch older than this replica's.
pub(super) fn stale(given: Option<u64>, current: u64) -> Response<ProxyBody> {
    let body = cutover_api::ErrorBody {
        error: format!(
            "epoch {} is older than this replica's epoch {current}: another controller or an \
             operator changed the fleet since; read GET /state and act on it",
            given.unwrap_or_default()
        ),
        epoch: Some(current),
    };
    typed(StatusCode::CONFLICT, &body)
}

/// A contract type as the answer.
pub(super) fn typed<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<ProxyBody> {
    json_response(status, &serde_json::to_value(v).unwrap_or(Value::Null))
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<ProxyBody>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large or unreadable",
        )),
    }
}

/// `{"old":50,"new":50}` → pairs; numbers only.
fn parse_weights(body: &Bytes) -> Result<Vec<(String, f64)>, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("body is not JSON ({e}); send e.g. {{\"old\":50,\"new\":50}}"))?;
    let Value::Object(map) = v else {
        return Err(
            "body must be a JSON object of backend → percent, e.g. {\"old\":50,\"new\":50}".into(),
        );
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let n = v
            .as_f64()
            .ok_or_else(|| format!("{k}: weight must be a number, got {v}"))?;
        out.push((k, n));
    }
    Ok(out)
}

fn authorized(header: Option<&HeaderValue>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.as_bytes().strip_prefix(b"Bearer ")) else {
        return false;
    };
    constant_time_eq(given, token.as_bytes())
}

/// Compares without an early exit, so response time does not reveal a prefix match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `{host}` of `/routes/{host}{suffix}`.
fn route_target<'a>(path: &'a str, suffix: &str) -> Option<&'a str> {
    path.strip_prefix("/routes/")?
        .strip_suffix(suffix)
        .filter(|h| !h.is_empty())
}

/// Decodes `%XX` escapes so `*.shop.example.com` may be sent as `%2A.shop…`.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(ProxyBody::text(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(super) fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json_response(status, &json!({ "error": message }))
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::text(body));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_wildcards_and_junk() {
        assert_eq!(percent_decode("%2A.shop.example.com"), "*.shop.example.com");
        assert_eq!(percent_decode("*"), "*");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz"), "a%zz");
    }

    #[test]
    fn token_comparison() {
        let ok = HeaderValue::from_static("Bearer s3cret");
        assert!(authorized(Some(&ok), "s3cret"));
        assert!(!authorized(
            Some(&HeaderValue::from_static("Bearer s3cre")),
            "s3cret"
        ));
        assert!(!authorized(
            Some(&HeaderValue::from_static("s3cret")),
            "s3cret"
        ));
        assert!(!authorized(None, "s3cret"));
    }

    #[test]
    fn weights_body_must_be_an_object_of_numbers() {
        let mut parsed = parse_weights(&Bytes::from_static(b"{\"old\":50,\"new\":50.5}")).unwrap();
        parsed.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            parsed,
            vec![("new".to_string(), 50.5), ("old".to_string(), 50.0)]
        );
        assert!(
            parse_weights(&Bytes::from_static(b"[1]"))
                .unwrap_err()
                .contains("object")
        );
        assert!(
            parse_weights(&Bytes::from_static(b"{\"old\":\"x\"}"))
                .unwrap_err()
                .contains("number")
        );
        assert!(
            parse_weights(&Bytes::from_static(b"nope"))
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
