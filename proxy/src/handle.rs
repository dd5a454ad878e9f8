//! The request path, in order: route by Host → pick the side (sticky bucket, or the
//! write side for unsafe methods) → forward to one of that backend's addresses →
//! answer with `x-cutover-backend`, the minted cookie, and metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use cutover_config::{RouteTable, WriteSide};
use http::header::{CONTENT_TYPE, HOST, SET_COOKIE};
use http::uri::{Authority, Scheme};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use hyper::body::Incoming;

use crate::body::{InflightGuard, ProxyBody};
use crate::state::{Live, Shared};
use crate::sticky;

/// The response header naming the backend that answered.
pub static X_CUTOVER_BACKEND: HeaderName = HeaderName::from_static("x-cutover-backend");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers (RFC 9110 §7.6.1) that must not be forwarded.
static HOP_BY_HOP: [HeaderName; 7] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
];

/// Serves one request from a data-plane connection.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let live = shared.live();
    Ok(proxy(&shared, live, peer, req, start).await)
}

async fn proxy(
    shared: &Shared,
    live: Arc<Live>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    start: Instant,
) -> Response<ProxyBody> {
    // 1. Route.
    let ri = {
        let Some(raw) = request_host(&req) else {
            return local(StatusCode::BAD_REQUEST, "missing Host header\n".to_string());
        };
        let host = RouteTable::normalize(raw);
        match live.snap.table.lookup(&host) {
            Some(ri) => ri,
            None => {
                return local(
                    StatusCode::NOT_FOUND,
                    format!("host {host:?} is not routed by this proxy\n"),
                );
            }
        }
    };
    let route = &live.snap.routes()[ri];

    // 3. Pick the side. (Step 2, the write hold, arrives with the resilience work.)
    let key = sticky::key(&route.sticky, req.headers(), peer.ip());
    let bi = match route.writes {
        WriteSide::Backend(b) if is_write(req.method()) => b,
        _ => live.snap.weights(ri).pick(key.bucket),
    };
    let backend = &live.backends[bi];

    // 4. Forward.
    let mut resp = match prepare(&mut req, backend.next_authority(), peer) {
        Err(status) => local(status, "request target cannot be forwarded\n".to_string()),
        Ok(()) => {
            let guard = InflightGuard::new(live.clone(), ri, bi, start);
            match shared.upstream.send(req).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Response::from_parts(parts, ProxyBody::Upstream { body, guard })
                }
                Err((kind, detail)) => {
                    guard.pair().upstream_error(kind.as_str());
                    tracing::warn!(
                        route = %route.name,
                        backend = %backend.name,
                        kind = kind.as_str(),
                        error = %detail,
                        "upstream request failed"
                    );
                    local(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "backend {} is unavailable ({})\n",
                            backend.name,
                            kind.as_str()
                        ),
                    )
                }
            }
        }
    };

    // 6. Answer.
    let headers = resp.headers_mut();
    headers.insert(X_CUTOVER_BACKEND.clone(), backend.header.clone());
    if let (Some(value), cutover_config::Sticky::Cookie { name, .. }) = (&key.minted, &route.sticky)
    {
        let cookie = format!("{name}={value}{}", live.routes[ri].cookie_attrs);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            headers.append(SET_COOKIE, v);
        }
    }
    live.routes[ri].pairs[bi].count(resp.status().as_u16());
    resp
}

/// POST, PUT, PATCH and DELETE go to the route's write side.
#[inline]
fn is_write(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The host a request is for: the absolute URI's authority (HTTP/2, absolute-form),
/// else the Host header.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
}

/// Rewrites a downstream request into an upstream one for `authority`.
fn prepare(
    req: &mut Request<Incoming>,
    authority: &Authority,
    peer: SocketAddr,
) -> Result<(), StatusCode> {
    // HTTP/2 carries the host in :authority; HTTP/1.1 backends need a Host header.
    if !req.headers().contains_key(HOST) {
        let host = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or(StatusCode::BAD_REQUEST)?;
        req.headers_mut().insert(HOST, host);
    }
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    let client = peer.ip().to_string();
    match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => {
            let joined = format!("{prior}, {client}");
            if let Ok(v) = HeaderValue::from_str(&joined) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        None => {
            if let Ok(v) = HeaderValue::from_str(&client) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }

    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| StatusCode::BAD_REQUEST)?;
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.get(http::header::CONNECTION) {
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        if headers.contains_key(h) {
            headers.remove(h);
        }
    }
}

/// A short plain-text answer from the proxy itself.
pub fn local(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::text(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
