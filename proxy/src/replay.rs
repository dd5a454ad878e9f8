//! Request bodies on their way upstream.
//!
//! - **Buffered** ([`Replay::buffer`]): a write's body read whole before a backend is
//!   chosen, in memory up to `limits.buffer_memory` and then in an unlinked
//!   temporary file; it can be sent on any attempt.
//! - **Read ahead** ([`Replay::read`]): a body that fits the route's retry buffer is
//!   read whole and can be replayed on any attempt. A larger one is streamed: it can
//!   still be retried after a connect failure, because the upstream never polled it,
//!   but not once any of it was sent.
//!
//! Either way the route's `max_body` and `timeouts.body_idle` hold: a body over the
//! limit, or a client that sends no byte for the idle time, ends the request with a
//! [`ClientBodyError`], which is the client's doing, not the backend's.
//!
//! A body larger than one [`CHUNK`] records when it last moved ([`Progress`]): the
//! request path counts the wait for the answer's head from then, so the time a
//! slow-reading backend takes to read a large body is not taken for a slow answer.
//! Held bodies go out in chunks so that hyper, which polls for the next chunk only
//! once its write buffer has room, makes those moves follow the connection.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::body::BoxError;

/// The client's side of a request body went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client sent no byte of the request body for {0:?} (timeouts.body_idle)")]
    Idle(Duration),
    #[error("the request body is over the route's max_body of {0} bytes")]
    TooLarge(u64),
    #[error("the client's request body could not be read: {0}")]
    Read(#[source] hyper::Error),
    #[error("the request body could not be buffered in a temporary file: {0}")]
    Spool(#[source] std::io::Error),
}

impl ClientBodyError {
    /// The error in `e`'s source chain, if a client body error caused it.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(c) = err.downcast_ref::<ClientBodyError>() {
                return Some(c);
            }
            cur = err.source();
        }
        None
    }
}

/// What a request body may do: at most `max` bytes, no gap longer than `idle`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max: u64,
    pub idle: Duration,
}

/// A streamed body not yet sent: the prefix already read and the rest of the
/// client's body. Emptied by the first attempt that polls it.
type Unsent = Arc<Mutex<Option<(Vec<Bytes>, Incoming)>>>;

/// The body of one upstream attempt.
pub enum UpBody {
    Empty,
    /// A body in memory.
    Full(FullBody),
    /// A buffered body in a temporary file.
    File(FileBody),
    Stream(StreamBody),
}

/// A body in memory, then its trailers (gRPC clients may send some), handed out
/// in chunks of at most [`CHUNK`].
pub struct FullBody {
    /// What is left to send.
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    /// For a body over one chunk.
    progress: Option<Arc<Progress>>,
}

/// A streamed body: the prefix read while deciding, then the rest of the client's body.
pub struct StreamBody {
    slot: Unsent,
    taken: Option<(std::vec::IntoIter<Bytes>, Incoming)>,
    limits: BodyLimits,
    /// Bytes of the body so far.
    seen: u64,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the body last moved: the wait for the answer counts from then.
    progress: Arc<Progress>,
}

/// A body read whole into a file, sent in chunks read at their offsets (so every
/// attempt reads its own copy).
pub struct FileBody {
    file: Arc<File>,
    len: u64,
    pos: u64,
    reading: Option<JoinHandle<std::io::Result<Bytes>>>,
    trailers: Option<HeaderMap>,
    progress: Arc<Progress>,
}

/// The request body as received, ready to make one [`UpBody`] per attempt.
pub enum Replay {
    Empty,
    Buffered(Bytes, Option<HeaderMap>),
    File(Arc<File>, u64, Option<HeaderMap>),
    Stream(Unsent, BodyLimits, Arc<Progress>),
}

/// When a body last moved (a frame went upstream, or it ended), as milliseconds
/// since the process's first body.
pub struct Progress(AtomicU64);

static BASE: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

impl Progress {
    fn now() -> Progress {
        Progress(AtomicU64::new(BASE.elapsed().as_millis() as u64))
    }

    fn moved(&self) {
        self.0
            .store(BASE.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// When it last moved.
    pub fn last(&self) -> std::time::Instant {
        *BASE + Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// Reads the next frame, failing after `idle` without one.
async fn frame(
    body: &mut Incoming,
    idle: Duration,
) -> Result<Option<Frame<Bytes>>, ClientBodyError> {
    let next = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
    match tokio::time::timeout(idle, next).await {
        Err(_) => Err(ClientBodyError::Idle(idle)),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(ClientBodyError::Read(e)),
        Ok(Some(Ok(f))) => Ok(Some(f)),
    }
}

/// The size the client announced, when it did.
fn announced(body: &Incoming) -> Option<u64> {
    body.size_hint().exact()
}

impl Replay {
    /// Reads the whole body: in memory up to `memory` bytes, then in an unlinked
    /// file in `dir` (the system's temporary directory when none).
    pub async fn buffer(
        mut body: Incoming,
        limits: BodyLimits,
        memory: usize,
        dir: Option<&Path>,
    ) -> Result<Replay, ClientBodyError> {
        if body.is_end_stream() {
            return Ok(Replay::Empty);
        }
        if announced(&body).is_some_and(|n| n > limits.max) {
            return Err(ClientBodyError::TooLarge(limits.max));
        }
        let mut buf = BytesMut::new();
        let mut file: Option<(tokio::fs::File, u64)> = None;
        let mut trailers = None;
        while let Some(f) = frame(&mut body, limits.idle).await? {
            let data = match f.into_data() {
                Ok(d) => d,
                Err(f) => {
                    trailers = f.into_trailers().ok();
                    continue;
                }
            };
            let total = buf.len() as u64 + file.as_ref().map_or(0, |f| f.1) + data.len() as u64;
            if total > limits.max {
                return Err(ClientBodyError::TooLarge(limits.max));
            }
            if file.is_none() && buf.len() + data.len() <= memory {
                buf.extend_from_slice(&data);
                continue;
            }
            let (f, written) = match &mut file {
                Some(f) => f,
                None => {
                    let std_file = match dir {
                        Some(d) => tempfile::tempfile_in(d),
                        None => tempfile::tempfile(),
                    }
                    .map_err(ClientBodyError::Spool)?;
                    let mut f = tokio::fs::File::from_std(std_file);
                    f.write_all(&buf).await.map_err(ClientBodyError::Spool)?;
                    let n = buf.len() as u64;
                    buf = BytesMut::new();
                    file.insert((f, n))
                }
            };
            f.write_all(&data).await.map_err(ClientBodyError::Spool)?;
            *written += data.len() as u64;
        }
        match file {
            None => Ok(Replay::Buffered(buf.freeze(), trailers)),
            Some((mut f, len)) => {
                f.flush().await.map_err(ClientBodyError::Spool)?;
                let f = f.into_std().await;
                Ok(Replay::File(Arc::new(f), len, trailers))
            }
        }
    }

    /// Reads up to `limit` bytes of `body`. A body that ends within the limit is kept
    /// whole; otherwise what was read is kept as a prefix and the rest streams.
    pub async fn read(
        mut body: Incoming,
        limit: usize,
        limits: BodyLimits,
    ) -> Result<Replay, ClientBodyError> {
        if body.is_end_stream() {
            return Ok(Replay::Empty);
        }
        if announced(&body).is_some_and(|n| n > limits.max) {
            return Err(ClientBodyError::TooLarge(limits.max));
        }
        let stream = |chunks, body| {
            Replay::Stream(
                Arc::new(Mutex::new(Some((chunks, body)))),
                limits,
                Arc::new(Progress::now()),
            )
        };
        if body.size_hint().lower() as usize > limit {
            return Ok(stream(Vec::new(), body));
        }
        let mut buf = BytesMut::new();
        let mut trailers = None;
        loop {
            match frame(&mut body, limits.idle).await? {
                None => return Ok(Replay::Buffered(buf.freeze(), trailers)),
                Some(frame) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => {
                            trailers = frame.into_trailers().ok();
                            continue;
                        }
                    };
                    if (buf.len() + data.len()) as u64 > limits.max {
                        return Err(ClientBodyError::TooLarge(limits.max));
                    }
                    if buf.len() + data.len() > limit {
                        let mut chunks = vec![buf.split().freeze(), data];
                        chunks.retain(|c| !c.is_empty());
                        return Ok(stream(chunks, body));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }

    /// A body for the next attempt, or `None` once a streamed body has been sent.
    /// Its progress starts now.
    pub fn attempt(&self) -> Option<UpBody> {
        match self {
            Replay::Empty => Some(UpBody::Empty),
            Replay::Buffered(b, t) => Some(UpBody::Full(FullBody {
                data: Some(b.clone()),
                trailers: t.clone(),
                // A body of one chunk is sent as soon as it is polled.
                progress: (b.len() > CHUNK).then(|| Arc::new(Progress::now())),
            })),
            Replay::File(f, len, t) => Some(UpBody::File(FileBody {
                file: f.clone(),
                len: *len,
                pos: 0,
                reading: None,
                trailers: t.clone(),
                progress: Arc::new(Progress::now()),
            })),
            Replay::Stream(slot, limits, progress) => {
                let present = slot.lock().unwrap_or_else(|p| p.into_inner()).is_some();
                present.then(|| {
                    progress.moved();
                    UpBody::Stream(StreamBody {
                        slot: slot.clone(),
                        taken: None,
                        limits: *limits,
                        seen: 0,
                        idle: None,
                        progress: progress.clone(),
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
            Replay::File(_, len, _) => Some(*len),
            Replay::Stream(..) => None,
        }
    }

    /// Whether a failed attempt that may have sent bytes can be replayed.
    pub fn replayable(&self) -> bool {
        !matches!(self, Replay::Stream(..))
    }
}

impl UpBody {
    /// Another copy of a body not sent yet, if it can be sent again. It moves the
    /// same [`Progress`].
    pub fn replay(&self) -> Option<UpBody> {
        match self {
            UpBody::Empty => Some(UpBody::Empty),
            UpBody::Full(FullBody {
                data: Some(b),
                trailers,
                progress,
            }) => Some(UpBody::Full(FullBody {
                data: Some(b.clone()),
                trailers: trailers.clone(),
                progress: progress.clone(),
            })),
            UpBody::File(f) => Some(UpBody::File(FileBody {
                file: f.file.clone(),
                len: f.len,
                pos: 0,
                reading: None,
                trailers: f.trailers.clone(),
                progress: f.progress.clone(),
            })),
            UpBody::Full(FullBody { data: None, .. }) | UpBody::Stream(_) => None,
        }
    }

    /// When the body last moved, for a body that takes more than one chunk: the
    /// wait for the answer's head counts from then, so a slow upload, or a backend
    /// slow to read a large body, is not a slow answer, while a backend that stops
    /// reading the body still times out.
    pub fn progress(&self) -> Option<Arc<Progress>> {
        match self {
            UpBody::Empty => None,
            UpBody::Full(f) => f.progress.clone(),
            UpBody::File(f) => Some(f.progress.clone()),
            UpBody::Stream(s) => Some(s.progress.clone()),
        }
    }
}

/// The largest frame a held body is sent in.
const CHUNK: usize = 64 * 1024;

impl FullBody {
    fn poll_chunk(&mut self) -> Option<Frame<Bytes>> {
        let frame = match self.data.take() {
            Some(mut rest) if rest.len() > CHUNK => {
                let chunk = rest.split_to(CHUNK);
                self.data = Some(rest);
                Some(Frame::data(chunk))
            }
            Some(all) => Some(Frame::data(all)),
            None => self.trailers.take().map(Frame::trailers),
        };
        if let Some(p) = &self.progress {
            p.moved();
        }
        frame
    }
}

impl FileBody {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.pos >= self.len {
            self.progress.moved();
            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        let reading = self.reading.get_or_insert_with(|| {
            let (file, pos) = (self.file.clone(), self.pos);
            let n = (CHUNK as u64).min(self.len - pos) as usize;
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, pos)?;
                Ok(Bytes::from(buf))
            })
        });
        let chunk = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        self.reading = None;
        match chunk {
            Ok(Ok(b)) => {
                self.pos += b.len() as u64;
                self.progress.moved();
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Ok(Err(e)) => Poll::Ready(Some(Err(Box::new(ClientBodyError::Spool(e))))),
            Err(e) => Poll::Ready(Some(Err(Box::new(ClientBodyError::Spool(
                std::io::Error::other(e),
            ))))),
        }
    }
}

impl StreamBody {
    fn poll_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.taken.is_none() {
            // First poll: from now on the body is spent for any retry.
            let taken = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            match taken {
                Some((prefix, rest)) => self.taken = Some((prefix.into_iter(), rest)),
                None => return Poll::Ready(None),
            }
        }
        let Some((prefix, rest)) = self.taken.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = match prefix.next() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None => Pin::new(&mut *rest).poll_frame(cx),
        };
        match polled {
            Poll::Pending => {
                let idle = self.limits.idle;
                let timer = self
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError::Idle(idle)))));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyError::Read(e))))),
            Poll::Ready(frame) => {
                self.idle = None;
                if let Some(Ok(f)) = &frame
                    && let Some(d) = f.data_ref()
                {
                    self.seen += d.len() as u64;
                    if self.seen > self.limits.max {
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError::TooLarge(
                            self.limits.max,
                        )))));
                    }
                }
                self.progress.moved();
                frame
                    .map(|f| f.map_err(|e| Box::new(ClientBodyError::Read(e)) as BoxError))
                    .into()
            }
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Full(f) => Poll::Ready(f.poll_chunk().map(Ok)),
            UpBody::File(f) => f.poll_chunk(cx),
            UpBody::Stream(s) => s.poll_stream(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Full(f) => f.data.is_none() && f.trailers.is_none(),
            UpBody::File(f) => f.pos >= f.len && f.trailers.is_none(),
            UpBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Full(f) => SizeHint::with_exact(f.data.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::File(f) => SizeHint::with_exact(f.len - f.pos),
            UpBody::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_held_body_goes_out_in_chunks_and_records_its_moves() {
        let replay = Replay::Buffered(Bytes::from(vec![1u8; 3 * CHUNK + 10]), None);
        let mut body = replay
            .attempt()
            .expect("a buffered body is sent every attempt");
        let progress = body
            .progress()
            .expect("a body over one chunk records its moves");
        let started = progress.last();
        let mut sizes = Vec::new();
        while let Some(f) = body.frame().await {
            sizes.push(
                f.ok()
                    .and_then(|f| f.into_data().ok())
                    .map_or(0, |d| d.len()),
            );
        }
        assert_eq!(sizes, [CHUNK, CHUNK, CHUNK, 10]);
        assert!(progress.last() >= started);
        // Every attempt sends the whole body again.
        let again = replay.attempt().and_then(|b| b.replay()).expect("a copy");
        assert_eq!(again.size_hint().exact(), Some(3 * CHUNK as u64 + 10));

        let small = Replay::Buffered(Bytes::from(vec![1u8; CHUNK]), None);
        let body = small.attempt().expect("a body");
        assert!(
            body.progress().is_none(),
            "one chunk goes out as it is polled"
        );
    }
}
