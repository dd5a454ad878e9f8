//! Request bodies that can be sent again. A body that fits the route's retry buffer is
//! read whole and can be replayed on any attempt. A larger one is streamed: it can
//! still be retried after a connect failure, because the upstream never polled it,
//! but not once any of it was sent.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A streamed body not yet sent: the prefix already read and the rest of the
/// client's body. Emptied by the first attempt that polls it.
type Unsent = Arc<Mutex<Option<(Vec<Bytes>, Incoming)>>>;

/// The body of one upstream attempt.
pub enum UpBody {
    Empty,
    /// The body, then its trailers (gRPC clients may send some), each sent once.
    Full(Option<Bytes>, Option<HeaderMap>),
    Stream(StreamBody),
}

/// A streamed body: the prefix read while deciding, then the rest of the client's body.
pub struct StreamBody {
    slot: Unsent,
    taken: Option<(std::vec::IntoIter<Bytes>, Incoming)>,
}

/// The request body as received, ready to make one [`UpBody`] per attempt.
pub enum Replay {
    Empty,
    Buffered(Bytes, Option<HeaderMap>),
    Stream(Unsent),
}

impl Replay {
    /// Reads up to `limit` bytes of `body`. A body that ends within the limit is kept
    /// whole; otherwise what was read is kept as a prefix and the rest streams.
    pub async fn read(mut body: Incoming, limit: usize) -> Result<Replay, hyper::Error> {
        if body.is_end_stream() {
            return Ok(Replay::Empty);
        }
        if body.size_hint().lower() as usize > limit {
            return Ok(Replay::Stream(Arc::new(Mutex::new(Some((
                Vec::new(),
                body,
            ))))));
        }
        let mut buf = BytesMut::new();
        let mut chunks = Vec::new();
        let mut trailers = None;
        loop {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => return Ok(Replay::Buffered(buf.freeze(), trailers)),
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => {
                            trailers = frame.into_trailers().ok();
                            continue;
                        }
                    };
                    if buf.len() + data.len() > limit {
                        chunks.push(buf.split().freeze());
                        chunks.push(data);
                        chunks.retain(|c| !c.is_empty());
                        return Ok(Replay::Stream(Arc::new(Mutex::new(Some((chunks, body))))));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }

    /// A body for the next attempt, or `None` once a streamed body has been sent.
    pub fn attempt(&self) -> Option<UpBody> {
        match self {
            Replay::Empty => Some(UpBody::Empty),
            Replay::Buffered(b, t) => Some(UpBody::Full(Some(b.clone()), t.clone())),
            Replay::Stream(slot) => {
                let present = slot.lock().unwrap_or_else(|p| p.into_inner()).is_some();
                present.then(|| {
                    UpBody::Stream(StreamBody {
                        slot: slot.clone(),
                        taken: None,
                    })
                })
            }
        }
    }

    /// The body's size, when it was read whole.
    pub fn len(&self) -> Option<u64> {
        match self {
            Replay::Empty => Some(0),
            Replay::Buffered(b, _) => Some(b.len() as u64),
            Replay::Stream(_) => None,
        }
    }

    /// Whether a failed attempt that may have sent bytes can be replayed.
    pub fn replayable(&self) -> bool {
        !matches!(self, Replay::Stream(_))
    }
}

impl UpBody {
    /// Another copy of a body not sent yet, if it can be sent again.
    pub fn replay(&self) -> Option<UpBody> {
        match self {
            UpBody::Empty => Some(UpBody::Empty),
            UpBody::Full(Some(b), t) => Some(UpBody::Full(Some(b.clone()), t.clone())),
            UpBody::Full(None, _) | UpBody::Stream(_) => None,
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Full(b, t) => Poll::Ready(
                b.take()
                    .map(Frame::data)
                    .or_else(|| t.take().map(Frame::trailers))
                    .map(Ok),
            ),
            UpBody::Stream(s) => {
                if s.taken.is_none() {
                    // First poll: from now on the body is spent for any retry.
                    let taken = s.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    match taken {
                        Some((prefix, rest)) => s.taken = Some((prefix.into_iter(), rest)),
                        None => return Poll::Ready(None),
                    }
                }
                let Some((prefix, rest)) = s.taken.as_mut() else {
                    return Poll::Ready(None);
                };
                if let Some(chunk) = prefix.next() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Full(b, t) => b.is_none() && t.is_none(),
            UpBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Full(Some(b), _) => SizeHint::with_exact(b.len() as u64),
            UpBody::Full(None, _) => SizeHint::with_exact(0),
            UpBody::Stream(_) => SizeHint::default(),
        }
    }
}
