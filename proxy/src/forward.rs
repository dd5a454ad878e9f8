//! Forwarding with retries across the boundary.
//!
//! - A connect failure sent nothing: it is retried on another backend of the route
//!   whatever the method, except that a write pinned to a write side stays on that
//!   side (another address of it), so a write never lands in the other database.
//! - After bytes were sent, only idempotent requests (GET, HEAD, OPTIONS, or with an
//!   `Idempotency-Key`) whose body fit the retry buffer are retried.
//! - A 502 or 503 answer to an idempotent request is retried on another backend.
//! - Never more attempts than the route's `attempts`, and retries after bytes were
//!   sent (or a 502/503) only within the route's retry budget (`budget.rs`); a
//!   connect failure or a full upstream pool sent nothing, so moving it to another
//!   backend is failover and is not charged. Retries wait a short jittered backoff.
//! - The client's own body failing (idle, over `max_body`, broken off) ends the
//!   request with 408, 413 or 400; it is not the backend's fault.
//!
//! A backend whose every address is down hands its share to the route's other
//! backends unless the route sets `failover = false`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use http::header::UPGRADE;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::body::{InflightGuard, ProxyBody, release};
use crate::handle::{Decision, local};
use crate::headers::{prepare_request, strip_hop_by_hop};
use crate::replay::{BodyLimits, ClientBodyError, Replay, UpBody};
use crate::state::{EndpointRt, Live, Shared};
use crate::tunnel;
use crate::upstream::{self, ClientFault, FailureKind};

/// How forwarding went, for the request's metrics and log line.
pub struct Outcome {
    /// The backend that answered (or failed last).
    pub backend: usize,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Why each retry happened (`connect`, `reset`, `status_502` …).
    pub retries: Vec<&'static str>,
    /// The request body's size, when known.
    pub bytes_in: Option<u64>,
    /// The answer is the proxy's own (a full upstream pool's 503), counted as
    /// `backend="proxy"`.
    pub local: bool,
}

impl Outcome {
    fn at(mut self, backend: usize) -> Outcome {
        self.backend = backend;
        self
    }
}

/// The request body as the request path hands it over: read whole already (a
/// buffered write), or still arriving.
pub enum ClientBody {
    Incoming(Incoming),
    Ready(Replay),
}

/// The proxy's answer to a request whose body failed on the client's side,
/// counted as the route's.
pub fn client_body_answer(
    shared: &Shared,
    route: &str,
    fault: ClientFault,
    detail: &dyn std::fmt::Display,
) -> Response<ProxyBody> {
    let status = match fault {
        ClientFault::Idle => {
            shared.metrics.client_timeout(route, "request_body");
            tracing::info!(route, kind = "request_body", "client cut off by a timeout");
            StatusCode::REQUEST_TIMEOUT
        }
        ClientFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ClientFault::Gone => StatusCode::BAD_REQUEST,
    };
    tracing::debug!(route, status = status.as_u16(), error = %detail, "request body refused");
    shared.metrics.local_answer(route, status);
    local(status, format!("{detail}\n"))
}

/// The fault in a body error, for [`client_body_answer`].
pub fn fault_of(e: &ClientBodyError) -> ClientFault {
    match e {
        ClientBodyError::Idle(_) => ClientFault::Idle,
        ClientBodyError::TooLarge(_) => ClientFault::TooLarge,
        ClientBodyError::Read(_) | ClientBodyError::Spool(_) => ClientFault::Gone,
    }
}

/// A short random wait before retry `n` (1, 2, …): up to 10 ms, doubling, at
/// most 100 ms, so that retries from many requests do not arrive in step.
async fn backoff(n: usize) {
    let cap = Duration::from_millis((10u64 << n.saturating_sub(1).min(4)).min(100));
    let wait = cap.mul_f64(rand::random::<f64>());
    tokio::time::sleep(wait).await;
}

/// Sends the request upstream, retrying as the rules allow. Returns the response
/// and how it went.
pub async fn forward(
    shared: &Shared,
    decision: Decision,
    mut parts: Parts,
    body: ClientBody,
    peer: SocketAddr,
    start: Instant,
) -> (Response<ProxyBody>, Outcome) {
    let Decision {
        live,
        route: ri,
        mut guard,
        is_write,
        idempotent,
        ..
    } = decision;
    let route = &live.snap.routes()[ri];
    let rt = &live.routes[ri];
    // A protocol switch: the client's side of it, and the Upgrade header the
    // hop-by-hop stripping takes out.
    let h2_websocket = tunnel::h2_websocket(&parts);
    let websocket = h2_websocket
        || parts
            .headers
            .get(UPGRADE)
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let switch = if tunnel::requested(&parts) {
        let upgrade = if h2_websocket {
            Some(HeaderValue::from_static("websocket"))
        } else {
            parts.headers.get(UPGRADE).cloned()
        };
        upgrade.zip(parts.extensions.remove::<OnUpgrade>())
    } else {
        None
    };
    let mut outcome = Outcome {
        backend: guard.backend(),
        attempts: 0,
        retries: Vec::new(),
        bytes_in: None,
        local: false,
    };
    if let Err(status) = prepare_request(&mut parts, peer, &live.snap.config.proxy.trusted_proxies)
    {
        return (
            local(status, "request cannot be forwarded\n".into()),
            outcome,
        );
    }
    let limits = BodyLimits {
        max: route.max_body,
        idle: route.timeouts.body_idle,
    };
    let replay = match body {
        ClientBody::Ready(r) => r,
        ClientBody::Incoming(b) => match Replay::read(b, route.retry_buffer, limits).await {
            Ok(r) => r,
            Err(e) => {
                let resp = client_body_answer(shared, &route.name, fault_of(&e), &e);
                return (resp, outcome);
            }
        },
    };
    rt.budget.request(&route.retry_budget);
    outcome.bytes_in = replay.len().or_else(|| {
        parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    });
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let pinned = is_write && matches!(live.snap.writes(ri), cutover_config::WriteSide::Backend(_));
    let total = route
        .timeouts
        .total
        .map(|t| tokio::time::Instant::from_std(start) + t);

    let mut target = guard.backend();
    let mut avoid: Option<Arc<EndpointRt>> = None;
    let mut tried: u64 = 0;
    // The kind of the last failure (the detail is logged where it happens).
    let mut last = FailureKind::Connect;
    for attempt in 1..=route.attempts {
        let Some((b, endpoint)) = pick_endpoint(&live, ri, target, pinned, avoid.as_ref()) else {
            let name = &live.backends[target].name;
            let body = format!("backend {name} has no healthy address\n");
            return (
                local(StatusCode::SERVICE_UNAVAILABLE, body),
                outcome.at(target),
            );
        };
        if b != guard.backend() {
            guard = InflightGuard::new(live.clone(), ri, b, is_write);
        }
        tried |= bit(b);
        let Some(up_body) = replay.attempt() else {
            break;
        };
        let last_attempt = attempt == route.attempts;
        outcome.attempts = attempt;
        let progress = up_body.progress();
        let mut req = build(&mut parts, &path, up_body, last_attempt);
        if let Some((upgrade, _)) = &switch {
            tunnel::restore(req.headers_mut(), upgrade.clone());
            if h2_websocket {
                let (mut head, body) = req.into_parts();
                tunnel::as_http1_handshake(&mut head.method, &mut head.headers);
                head.version = Version::HTTP_11;
                req = Request::from_parts(head, body);
            }
        }
        let mut head_timeout = route.timeouts.response_header;
        if let Some(t) = total {
            head_timeout =
                head_timeout.min(t.saturating_duration_since(tokio::time::Instant::now()));
        }
        guard.forwarded(start);
        // The wait for the answer counts from the request body's last move (its
        // end, once sent): a slow upload, or a backend slow to read a large body,
        // is not a slow backend. A body of one chunk is sent as soon as it is
        // polled: its wait counts from now. The route's total bounds it all.
        let timer = async {
            let Some(progress) = progress else {
                return tokio::time::sleep(head_timeout).await;
            };
            let limit = route.timeouts.response_header;
            loop {
                let mut at = tokio::time::Instant::from_std(progress.last()) + limit;
                if let Some(t) = total {
                    at = at.min(t);
                }
                if tokio::time::Instant::now() >= at {
                    return;
                }
                tokio::time::sleep_until(at).await;
            }
        };
        let sent = upstream::send_until(
            &rt.clients[b],
            &endpoint.authority,
            req,
            timer,
            head_timeout,
            switch.is_some(),
        );
        match sent.await {
            Ok((mut resp, lease)) => {
                endpoint.health.connected();
                let status = resp.status();
                if status == StatusCode::SWITCHING_PROTOCOLS
                    && let Some((_, client)) = switch
                {
                    let backend_side = hyper::upgrade::on(&mut resp);
                    let (mut head, _) = resp.into_parts();
                    let upgrade = head.headers.get(UPGRADE).cloned();
                    strip_hop_by_hop(&mut head.headers);
                    if h2_websocket {
                        tunnel::as_h2_accept(&mut head.status, &mut head.headers);
                    } else if let Some(u) = upgrade {
                        tunnel::restore(&mut head.headers, u);
                    }
                    tunnel::Tunnel {
                        client,
                        backend: backend_side,
                        _lease: lease,
                        open: guard.pair().upgraded.clone(),
                        orders: rt.counters[b].disconnect.subscribe(),
                        websocket,
                    }
                    .spawn();
                    return (
                        Response::from_parts(head, ProxyBody::Local(None)),
                        outcome.at(b),
                    );
                }
                let retryable_status =
                    status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE;
                if retryable_status
                    && idempotent
                    && !last_attempt
                    && replay.replayable()
                    && let Some(next) = other_backend(&live, ri, b, pinned, tried)
                    && within_budget(shared, &live, ri)
                {
                    let reason = if status == StatusCode::BAD_GATEWAY {
                        "status_502"
                    } else {
                        "status_503"
                    };
                    shared.metrics.retry(
                        &route.name,
                        &live.backends[b].name,
                        &live.backends[next].name,
                        reason,
                    );
                    outcome.retries.push(reason);
                    (target, avoid) = (next, None);
                    backoff(outcome.retries.len()).await;
                    continue;
                }
                let (mut head, body) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                let deadline = total.map(|t| Box::pin(tokio::time::sleep_until(t)));
                let mut lease = Some(lease);
                if body.is_end_stream() {
                    // Nothing to stream (HEAD, 204, 304, an empty body): the
                    // connection is free now.
                    release(&mut lease);
                }
                return (
                    Response::from_parts(
                        head,
                        ProxyBody::Upstream {
                            body,
                            guard,
                            deadline,
                            lease,
                        },
                    ),
                    outcome.at(b),
                );
            }
            Err(upstream::Failure {
                client: Some(fault),
                detail,
                ..
            }) => {
                let resp = client_body_answer(shared, &route.name, fault, &detail);
                return (resp, outcome.at(b));
            }
            Err(upstream::Failure {
                kind,
                detail,
                shared: waited,
                client: None,
            }) => {
                guard.pair().upstream_error(kind.as_str());
                let backend = &live.backends[b];
                tracing::warn!(
                    route = %route.name, backend = %backend.name, addr = %endpoint.addr,
                    kind = kind.as_str(), attempt, error = %detail, "upstream request failed"
                );
                if kind == FailureKind::Connect
                    && !waited
                    && endpoint.health.connect_failed(&backend.eject)
                {
                    tracing::warn!(backend = %backend.name, addr = %endpoint.addr, cooldown = ?backend.eject.cooldown,
                        "address ejected after consecutive connect failures");
                }
                last = kind;
                // Nothing was sent: moving on is failover, not a retry to charge.
                let unsent = matches!(kind, FailureKind::Connect | FailureKind::Overloaded);
                let may_retry = !last_attempt
                    && (unsent
                        || (idempotent && replay.replayable() && within_budget(shared, &live, ri)));
                if !may_retry {
                    break;
                }
                let next = other_backend(&live, ri, b, pinned, tried)
                    .map(|n| (n, None))
                    .or_else(|| {
                        // Another address of the same backend.
                        live.backends[b]
                            .pick(Some(&endpoint))
                            .filter(|e| !Arc::ptr_eq(e, &endpoint))
                            .map(|_| (b, Some(endpoint.clone())))
                    });
                let Some((next, next_avoid)) = next else {
                    break;
                };
                shared.metrics.retry(
                    &route.name,
                    &backend.name,
                    &live.backends[next].name,
                    kind.as_str(),
                );
                outcome.retries.push(kind.as_str());
                (target, avoid) = (next, next_avoid);
                backoff(outcome.retries.len()).await;
            }
        }
    }
    let name = &live.backends[guard.backend()].name;
    let body = format!("backend {name} is unavailable ({})\n", last.as_str());
    let status = match last {
        FailureKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        FailureKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    let backend = guard.backend();
    let mut resp = local(status, body);
    if last == FailureKind::Overloaded {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        outcome.local = true;
    }
    (resp, outcome.at(backend))
}

/// Takes a retry from the route's budget, counting it when spent.
fn within_budget(shared: &Shared, live: &Live, ri: usize) -> bool {
    let route = &live.snap.routes()[ri];
    if live.routes[ri].budget.retry(&route.retry_budget) {
        return true;
    }
    shared.metrics.retry_budget_exhausted(&route.name);
    false
}

fn bit(b: usize) -> u64 {
    if b < 64 { 1 << b } else { 0 }
}

/// An address of `want`, or, when every address of `want` is down and the request
/// may change sides, of the route's best other backend.
fn pick_endpoint(
    live: &Live,
    ri: usize,
    want: usize,
    pinned: bool,
    avoid: Option<&Arc<EndpointRt>>,
) -> Option<(usize, Arc<EndpointRt>)> {
    if let Some(ep) = live.backends[want].pick(avoid) {
        return Some((want, ep));
    }
    if pinned || !live.snap.routes()[ri].failover {
        return None;
    }
    let fallback = other_backend(live, ri, want, false, bit(want))?;
    live.backends[fallback].pick(None).map(|ep| (fallback, ep))
}

/// Another backend of the route with an address up and not tried yet, preferring the
/// largest weight. None for a pinned write.
fn other_backend(
    live: &Live,
    ri: usize,
    current: usize,
    pinned: bool,
    tried: u64,
) -> Option<usize> {
    if pinned {
        return None;
    }
    let weights = live.snap.weights(ri);
    live.snap.routes()[ri]
        .members
        .iter()
        .copied()
        .filter(|&m| m != current && tried & bit(m) == 0 && live.backends[m].any_up())
        .max_by_key(|&m| (weights.basis_points(m), std::cmp::Reverse(m)))
}

/// The upstream request for one attempt, its URI in origin form (the address is the
/// connection's). The last attempt takes the headers instead of copying them.
fn build(parts: &mut Parts, path: &PathAndQuery, body: UpBody, last: bool) -> Request<UpBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = Uri::from(path.clone());
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = if last {
        std::mem::take(&mut parts.headers)
    } else {
        parts.headers.clone()
    };
    req
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::backoff;
    use tokio::time::{Duration, Instant};

    /// Each wait of `backoff(n)`, measured on the paused clock (which moves by
    /// exactly the time slept, rounded to its millisecond ticks).
    async fn waits(n: usize, samples: usize) -> Vec<Duration> {
        let mut out = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            backoff(n).await;
            out.push(t.elapsed());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_jittered_and_bounded() {
        // Retry n waits up to 10 ms doubling, never over 100 ms.
        for (n, cap_ms) in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100)] {
            let cap = Duration::from_millis(cap_ms);
            let w = waits(n, 200).await;
            let tick = Duration::from_millis(1);
            assert!(
                w.iter().all(|d| *d <= cap + tick),
                "retry {n}: a wait over its cap {cap:?}: {w:?}"
            );
            // Jittered: the waits differ from call to call and spread over the
            // range (both halves of it hit), not one fixed delay.
            let distinct: BTreeSet<Duration> = w.iter().copied().collect();
            assert!(
                distinct.len() >= 5,
                "retry {n}: only {} distinct waits: {distinct:?}",
                distinct.len()
            );
            let half = cap / 2;
            assert!(
                w.iter().any(|d| *d < half) && w.iter().any(|d| *d > half),
                "retry {n}: waits do not spread over 0..{cap:?}: {distinct:?}"
            );
        }
    }
}
