//! The response body the proxy returns: either a short local answer or the
//! backend's streamed body. The streamed body carries the request's in-flight guard,
//! so a request stays "in flight" (and its backend undrained) until its last byte has
//! been handed to the client, and it enforces the route's total timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::metrics::PairMetrics;
use crate::state::Live;
use crate::upstream::Lease;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body without per-request boxing.
pub enum ProxyBody {
    Local(Option<Bytes>),
    Upstream {
        body: Incoming,
        guard: InflightGuard,
        /// The route's total timeout, when set.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        /// The upstream connection, back to its pool once the body has ended.
        lease: Option<Lease>,
    },
    /// Either of the above, with its access log line written when it ends.
    Logged(Box<crate::access::Logged>),
}

impl ProxyBody {
    pub fn text(s: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Some(s.into()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the route's total timeout expired while the response body was streaming")]
struct TotalTimeout;

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Logged(l) => l.poll_frame(cx),
            ProxyBody::Upstream {
                body,
                guard,
                deadline,
                lease,
            } => {
                if let Some(d) = deadline
                    && d.as_mut().poll(cx).is_ready()
                {
                    guard.pair().upstream_error("timeout");
                    return Poll::Ready(Some(Err(Box::new(TotalTimeout))));
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Err(e))) => {
                        *lease = None;
                        guard.pair().upstream_error("reset");
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                    other => {
                        // hyper stops polling once the body says it has ended, so
                        // look after every frame, not only for the final `None`.
                        if matches!(other, Poll::Ready(None)) || body.is_end_stream() {
                            release(lease);
                        }
                        other.map_err(|e| Box::new(e) as BoxError)
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(b) => b.is_none(),
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Logged(l) => l.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Local(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Logged(l) => l.size_hint(),
        }
    }
}

/// Hands the connection back to its pool (once).
#[inline]
pub fn release(lease: &mut Option<Lease>) {
    if let Some(l) = lease.take() {
        l.release();
    }
}

/// Counts a request in flight on a route × backend until dropped. Once the request
/// is forwarded ([`InflightGuard::forwarded`]), the drop also records its duration.
/// Holds the request's snapshot so the handles stay valid.
pub struct InflightGuard {
    live: Arc<Live>,
    route: usize,
    backend: usize,
    write: bool,
    started: Option<Instant>,
}

impl InflightGuard {
    /// Registers the request. SeqCst: see [`crate::hold`].
    pub fn new(live: Arc<Live>, route: usize, backend: usize, write: bool) -> Self {
        let rt = &live.routes[route];
        rt.counters[backend]
            .get(write)
            .fetch_add(1, Ordering::SeqCst);
        rt.pairs[backend].inflight.inc();
        InflightGuard {
            live,
            route,
            backend,
            write,
            started: None,
        }
    }

    /// From now on the drop records the request's duration since `start`.
    pub fn forwarded(&mut self, start: Instant) {
        self.started = Some(start);
    }

    pub fn backend(&self) -> usize {
        self.backend
    }

    #[inline]
    pub fn pair(&self) -> &PairMetrics {
        &self.live.routes[self.route].pairs[self.backend]
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        // When a send timeout cuts the client off, this names the route counted.
        crate::server::dropping_route(|| self.live.snap.routes()[self.route].name.clone());
        let rt = &self.live.routes[self.route];
        rt.counters[self.backend]
            .get(self.write)
            .fetch_sub(1, Ordering::SeqCst);
        let pair = &rt.pairs[self.backend];
        pair.inflight.dec();
        if let Some(start) = self.started {
            pair.duration.observe(start.elapsed().as_secs_f64());
        }
    }
}
