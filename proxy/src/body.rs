//! The response body the proxy returns: either a short local answer or the
//! backend's streamed body, which carries the request's accounting guard so that a
//! request stays "in flight" until its last byte has been handed to the client.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::metrics::PairMetrics;
use crate::state::Live;
use std::sync::Arc;

/// A response body without per-request boxing.
pub enum ProxyBody {
    Local(Option<Bytes>),
    Upstream {
        body: Incoming,
        guard: InflightGuard,
    },
}

impl ProxyBody {
    pub fn text(s: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Some(s.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Local(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ProxyBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream { body, guard } => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &polled {
                    guard.pair().upstream_error("reset");
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(b) => b.is_none(),
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Local(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}

/// Counts a request in flight on its route × backend until dropped, then records its
/// duration. Holds the request's snapshot so the handles stay valid.
pub struct InflightGuard {
    live: Arc<Live>,
    route: usize,
    backend: usize,
    start: Instant,
}

impl InflightGuard {
    pub fn new(live: Arc<Live>, route: usize, backend: usize, start: Instant) -> Self {
        live.routes[route].pairs[backend].inflight.inc();
        InflightGuard {
            live,
            route,
            backend,
            start,
        }
    }

    #[inline]
    pub fn pair(&self) -> &PairMetrics {
        &self.live.routes[self.route].pairs[self.backend]
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let pair = self.pair();
        pair.inflight.dec();
        pair.duration.observe(self.start.elapsed().as_secs_f64());
    }
}
