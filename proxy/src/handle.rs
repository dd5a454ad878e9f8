//! The request path, in order: route by Host → hold? → pick the side (sticky bucket,
//! or the write side for unsafe methods) → forward with retries across the boundary
//! (`forward.rs`) → answer with `x-cutover-backend`, the minted cookie, and metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use cutover_config::{RouteTable, Sticky, Upgrades, WriteSide};
use http::header::{CONTENT_TYPE, HOST, RETRY_AFTER, SET_COOKIE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::access::{Entry, Served};
use crate::body::{InflightGuard, ProxyBody};
use crate::forward::{self, ClientBody};
use crate::hold::Waited;
use crate::replay::{BodyLimits, Replay};
use crate::server::Scheme;
use crate::state::{Live, Shared};
use crate::sticky;

/// The response header naming the backend that answered.
pub static X_CUTOVER_BACKEND: HeaderName = HeaderName::from_static("x-cutover-backend");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The `route` label of the proxy's answers to requests no route takes.
const UNROUTED: &str = "unrouted";

/// Serves one request from a data-plane connection.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    // The id and the four forwarding headers go in with one growth of the map
    // hyper sized to the client's headers, not one per insert.
    parts.headers.reserve(5);
    let id = crate::headers::request_id(&mut parts.headers);
    let (share, query) = shared.access_log();
    let entry = Entry::sample(share, &parts, peer, &id, query, start);
    let grpc = is_grpc(&parts.headers);
    let (mut resp, served) = proxy(&shared, peer, Request::from_parts(parts, body), start).await;
    // The log shows the proxy's answer as HTTP status, also when it goes to a gRPC
    // client as a grpc-status.
    let status = resp.status();
    if grpc && matches!(resp.body(), ProxyBody::Local(_)) && !status.is_success() {
        resp = as_grpc_error(resp);
    }
    resp.headers_mut()
        .insert(crate::headers::X_REQUEST_ID.clone(), id);
    Ok(match entry {
        None => resp,
        Some(entry) => resp.map(|body| entry.finish(status, served, body)),
    })
}

/// What the request path decided before forwarding.
pub struct Decision {
    pub live: Arc<Live>,
    pub route: usize,
    /// Registered in flight on the first backend to try.
    pub guard: InflightGuard,
    pub minted: Option<String>,
    /// The backend the sticky key picked (a write may go elsewhere).
    pub pick: usize,
    pub is_write: bool,
    pub idempotent: bool,
}

async fn proxy(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
    start: Instant,
) -> (Response<ProxyBody>, Served) {
    let (parts, body) = req.into_parts();
    let host = match request_host(&parts) {
        Ok(h) => RouteTable::normalize(h),
        Err(why) => {
            shared
                .metrics
                .local_answer(UNROUTED, StatusCode::BAD_REQUEST);
            return (
                local(StatusCode::BAD_REQUEST, why.to_string()),
                Served::default(),
            );
        }
    };
    let mut live = shared.live();
    let Some(ri) = live.snap.table.lookup(&host) else {
        return (unrouted(shared, &host), Served::default());
    };
    let route = &live.snap.routes()[ri];
    if let Some(why) = head_over_limits(&parts.headers, &live.snap.config.limits) {
        let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        shared.metrics.local_answer(&route.name, status);
        return (local(status, why), Served::default());
    }
    // A write's body is read whole before a backend is chosen and before the
    // request counts in flight (see "Slow uploads" in the README). gRPC calls and
    // protocol switches stream: a call may be a stream that never ends.
    let mut known = Some(ri);
    let body = if is_write(&parts.method)
        && route.request_buffering
        && !body.is_end_stream()
        && !crate::tunnel::requested(&parts)
        && !is_grpc(&parts.headers)
    {
        let limits = BodyLimits {
            max: route.max_body,
            idle: route.timeouts.body_idle,
        };
        let l = &live.snap.config.limits;
        match Replay::buffer(body, limits, l.buffer_memory, l.buffer_dir.as_deref()).await {
            Ok(r) => {
                // The upload may have taken a while: route on the state of now
                // (a hold, new weights, a new write side).
                live = shared.live();
                known = None;
                ClientBody::Ready(r)
            }
            Err(e) => {
                let resp =
                    forward::client_body_answer(shared, &route.name, forward::fault_of(&e), &e);
                return (resp, Served::default());
            }
        }
    } else {
        ClientBody::Incoming(body)
    };
    let mut decision = match decide(shared, &parts, peer, &host, live, known).await {
        Ok(d) => d,
        Err(resp) => return (resp, Served::default()),
    };
    let (pick, write) = (decision.pick, decision.is_write);
    // Forwarding has no use for the minted cookie: move it out rather than copy it.
    let (live, ri, minted) = (
        decision.live.clone(),
        decision.route,
        decision.minted.take(),
    );
    // A cookie minted over TLS must never travel over plain HTTP.
    let secure = parts.extensions.get::<Scheme>() == Some(&Scheme::Https);
    let (mut resp, outcome) = forward::forward(shared, decision, parts, body, peer, start).await;
    let backend = outcome.backend;

    // Answer: the backend, perhaps a cookie, and (in `handle`) the request id.
    let headers = resp.headers_mut();
    headers.reserve(3);
    headers.insert(
        X_CUTOVER_BACKEND.clone(),
        live.backends[backend].header.clone(),
    );
    if let (Some(value), Sticky::Cookie { name, .. }) = (&minted, &live.snap.routes()[ri].sticky) {
        let attrs = &live.routes[ri].cookie_attrs;
        let tail = if secure { "; Secure" } else { "" };
        let parts = [name.as_str(), "=", value, attrs, tail];
        // Exactly sized: `Bytes` takes a full vector over without another
        // allocation, and the value is validated without another copy.
        let mut cookie = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            cookie.push_str(part);
        }
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(cookie)) {
            headers.append(SET_COOKIE, v);
        }
    }
    if outcome.local {
        let route = &live.snap.routes()[ri].name;
        shared.metrics.local_answer(route, resp.status());
    } else {
        live.routes[ri].pairs[backend].count(resp.status().as_u16());
    }
    let sticky = if minted.is_some() {
        "minted"
    } else if backend == pick {
        "kept"
    } else {
        "moved"
    };
    let served = Served {
        live: Some(live),
        route: Some(ri),
        backend: Some(backend),
        attempts: outcome.attempts,
        retries: outcome.retries,
        sticky: Some(sticky),
        write,
        bytes_in: outcome.bytes_in,
    };
    (resp, served)
}

/// The proxy's 404 for a host no route takes.
fn unrouted(shared: &Shared, host: &str) -> Response<ProxyBody> {
    shared.metrics.local_answer(UNROUTED, StatusCode::NOT_FOUND);
    local(
        StatusCode::NOT_FOUND,
        format!("host {host:?} is not routed by this proxy\n"),
    )
}

/// Why the request's headers are over `[limits]`: more fields than
/// `max_headers`, or a block larger than `max_header_size`, measured as HTTP/2
/// measures it (name + value + 32 per field), so HTTP/1 and HTTP/2 agree.
fn head_over_limits(headers: &HeaderMap, limits: &cutover_config::Limits) -> Option<String> {
    if headers.len() > limits.max_headers {
        return Some(format!(
            "the request has {} header fields; this proxy takes at most {} (limits.max_headers)\n",
            headers.len(),
            limits.max_headers
        ));
    }
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    (size > limits.max_header_size).then(|| {
        format!(
            "the request's headers take {size} bytes; this proxy takes at most {} (limits.max_header_size)\n",
            limits.max_header_size
        )
    })
}

/// Routes the request (unless `known` is its route in `live` already), waits out
/// a hold that covers it, and picks the first backend.
async fn decide(
    shared: &Shared,
    parts: &Parts,
    peer: SocketAddr,
    host: &str,
    mut live: Arc<Live>,
    mut known: Option<usize>,
) -> Result<Decision, Response<ProxyBody>> {
    let upgrade = crate::tunnel::requested(parts);
    let method_writes = is_write(&parts.method);
    let idempotent = is_idempotent(&parts.method, &parts.headers);
    loop {
        let ri = match known.take() {
            Some(ri) => ri,
            None => match live.snap.table.lookup(host) {
                Some(ri) => ri,
                None => return Err(unrouted(shared, host)),
            },
        };
        let route = &live.snap.routes()[ri];
        // An upgraded connection may carry writes the proxy cannot see: unless the
        // route says otherwise, it goes where writes go and a writes hold holds it.
        // A gRPC call is a POST, so a write, unless the route names it a read.
        let grpc_read = method_writes && grpc_read(&route.grpc_reads, parts);
        let follows_writes = upgrade && route.upgrades == Upgrades::Writes;
        let is_write = (method_writes && !grpc_read) || follows_writes;
        let key = sticky::key(&route.sticky, &parts.headers, peer.ip());
        let pick = live.snap.weights(ri).pick(key.bucket);
        let first = match live.snap.writes(ri) {
            WriteSide::Backend(b) if is_write => b,
            _ => pick,
        };
        // Count the request in flight *before* looking at the hold: a controller
        // that got the hold acknowledged and then reads zero writes in flight knows
        // that no write can still be on its way to the old side.
        let guard = InflightGuard::new(live.clone(), ri, first, is_write);
        if !live.routes[ri].hold.applies(is_write, follows_writes) {
            // A release publishes the new write side, then lifts the hold. A write
            // that read the state before the release and finds the hold lifted
            // routes again on the state now, so that it cannot go to the old write
            // side after the controller drained it. (Lifted after the publish: the
            // hold's SeqCst flag makes the publish visible here.)
            if is_write {
                let now = shared.live();
                if !Arc::ptr_eq(&now, &live) {
                    drop(guard);
                    live = now;
                    continue;
                }
            }
            return Ok(Decision {
                live,
                route: ri,
                guard,
                minted: key.minted,
                pick,
                is_write,
                // A read may be asked twice.
                idempotent: idempotent || grpc_read,
            });
        }
        drop(guard);
        // Only a held request pays for its own handle on the hold.
        let hold = live.routes[ri].hold.clone();
        let outcome = if hold.expired() {
            Waited::Expired
        } else {
            hold.wait(&shared.held, live.snap.config.hold.max_queued)
                .await
        };
        match outcome {
            // Route again on the state the release published (the new write side),
            // an upgrade handshake once its turn comes: the state is read after
            // the wait, so a hold that began meanwhile holds it again.
            Waited::Released => {
                if follows_writes
                    && let Some(at) = hold.upgrade_turn(live.snap.config.hold.upgrade_rate)
                {
                    tokio::time::sleep_until(at).await;
                }
                live = shared.live()
            }
            Waited::Expired | Waited::Full => {
                let mut r = local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database behind this route is being switched over; retry shortly\n"
                        .to_string(),
                );
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("2"));
                shared
                    .metrics
                    .local_answer(&route.name, StatusCode::SERVICE_UNAVAILABLE);
                return Err(r);
            }
        }
    }
}

/// Every method but the safe ones (GET, HEAD, OPTIONS, TRACE; RFC 9110 §9.2.1) is
/// a write: it goes to the route's write side and a writes hold covers it. So
/// WebDAV's PROPPATCH, MKCOL, MOVE or LOCK, and any custom method, can never reach
/// the database that is not taking writes.
#[inline]
fn is_write(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// A gRPC call: `content-type: application/grpc`, `application/grpc+proto` …
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"))
}

/// The proxy's own error answer as a gRPC client understands it: a trailers-only
/// response (HTTP 200) whose `grpc-status` follows gRPC's HTTP mapping (a 502, 503
/// or 504 is UNAVAILABLE, so the client may retry) and whose `grpc-message` is the
/// text. A plain-text 502 would read to a gRPC client as a corrupt message.
fn as_grpc_error(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut head, body) = resp.into_parts();
    let code = match head.status.as_u16() {
        400 => "13",             // INTERNAL
        401 => "16",             // UNAUTHENTICATED
        403 => "7",              // PERMISSION_DENIED
        404 => "12",             // UNIMPLEMENTED
        429 | 502..=504 => "14", // UNAVAILABLE
        _ => "2",                // UNKNOWN
    };
    let text = match &body {
        ProxyBody::Local(Some(b)) => String::from_utf8_lossy(b).trim().to_string(),
        _ => String::new(),
    };
    // grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
    let mut message = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            message.push(char::from(b));
        } else {
            message.push_str(&format!("%{b:02X}"));
        }
    }
    head.status = StatusCode::OK;
    head.headers.remove(http::header::CONTENT_LENGTH);
    head.headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    head.headers
        .insert("grpc-status", HeaderValue::from_static(code));
    if let Ok(m) = HeaderValue::from_str(&message) {
        head.headers.insert("grpc-message", m);
    }
    Response::from_parts(head, ProxyBody::Local(None))
}

/// A gRPC call (`content-type: application/grpc…`) to a method the route's
/// `grpc_reads` names: a path, or a prefix ending in `*`.
fn grpc_read(reads: &[String], parts: &Parts) -> bool {
    if reads.is_empty() || !is_grpc(&parts.headers) {
        return false;
    }
    let path = parts.uri.path();
    reads.iter().any(|r| match r.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == r,
    })
}

/// Safe to send twice: GET, HEAD, OPTIONS, or anything with an `Idempotency-Key`.
#[inline]
fn is_idempotent(m: &Method, headers: &HeaderMap) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
        || headers.contains_key(&IDEMPOTENCY_KEY)
}

/// The host a request is for: the absolute URI's authority (HTTP/2, absolute-form),
/// else the Host header. The host routed must be the host the backend sees, so a
/// request that names two hosts (an authority that disagrees with its Host header,
/// or two Host headers) is refused: routed by one and served as the other, a write
/// held for one route could reach another route's backend.
fn request_host(parts: &Parts) -> Result<&str, &'static str> {
    let mut all = parts.headers.get_all(HOST).iter();
    let header = all.next();
    if all.next().is_some() {
        return Err("more than one Host header\n");
    }
    let header = match header.map(|h| h.to_str()) {
        Some(Ok(h)) if !h.is_empty() => Some(h),
        Some(Err(_)) => return Err("the Host header is not valid\n"),
        _ => None,
    };
    match (parts.uri.authority(), header) {
        (Some(a), Some(h)) if RouteTable::normalize(a.host()) != RouteTable::normalize(h) => {
            Err("the request target's host and the Host header differ\n")
        }
        (Some(a), _) => Ok(a.as_str()),
        (None, Some(h)) => Ok(h),
        (None, None) => Err("missing Host header\n"),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hold::Scope;

    /// A proxy's state with one route, `old` taking its writes.
    fn shared() -> Shared {
        let text = r#"
[listen]
http = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[backends.old]
addrs = ["127.0.0.1:9"]
[backends.new]
addrs = ["127.0.0.1:9"]
[[routes]]
hosts = ["shop.test"]
weights = { old = 50, new = 50 }
writes = "old"
"#;
        let config =
            cutover_config::Config::parse(text, std::path::Path::new("test.toml")).unwrap();
        let dns = crate::resolve::Dns::new(&config.resolver).unwrap();
        Shared::new(
            config,
            "test.toml".into(),
            crate::metrics::Metrics::new().unwrap(),
            crate::upstream::Upstream::default(),
            None,
            dns,
        )
        .unwrap()
    }

    fn backend(live: &Live, name: &str) -> usize {
        live.backends.iter().position(|b| b.name == name).unwrap()
    }

    /// A write that read the state just before a release, and looks at the hold
    /// just after it, goes to the write side the release published: the old side
    /// was drained while the hold was on and must see no write after it.
    #[tokio::test]
    async fn a_write_that_read_the_state_before_a_release_goes_to_the_new_side() {
        let shared = shared();
        let live = shared.live();
        let ri = live.snap.table.lookup("shop.test").unwrap();
        live.routes[ri]
            .hold
            .hold(Scope::Writes, Duration::from_secs(30));
        // The request's state, read while the hold was on.
        let before = shared.live();
        // The release, as the admin API does it: the new write side published,
        // then the hold lifted.
        shared
            .update_then(
                |snap| snap.with_writes("shop.test", "new"),
                |live| live.routes[ri].hold.release(),
            )
            .unwrap();
        let (parts, ()) = Request::post("/orders")
            .header(http::header::HOST, "shop.test")
            .body(())
            .unwrap()
            .into_parts();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let Ok(d) = decide(&shared, &parts, peer, "shop.test", before, Some(ri)).await else {
            panic!("the write was not routed");
        };
        assert!(d.is_write);
        let now = shared.live();
        assert_eq!(
            now.backends[d.guard.backend()].name,
            "new",
            "a write after the release went to {}",
            now.backends[d.guard.backend()].name
        );
        // Counted in flight on the side it goes to, not on the drained one.
        assert_eq!(backend(&now, "new"), d.guard.backend());
    }
}
