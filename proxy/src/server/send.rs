//! The send timeout (`limits.send`): a client that takes none of its answer for that
//! long is cut off, and what it held (the response body, the upstream connection,
//! the in-flight count) is let go.
//!
//! - A connection's socket: [`Timed`] fails a write (or flush) that has made no
//!   progress for `send`. That covers HTTP/1, and an HTTP/2 client that stops
//!   reading its socket.
//! - One HTTP/2 stream: a client that keeps reading the socket but never opens the
//!   stream's flow-control window (no WINDOW_UPDATE) leaves no write pending, so the
//!   socket never stalls. hyper 1's HTTP/2 server (`PipeToSendStream`) polls the
//!   response body for a frame, then waits for the stream's send capacity before it
//!   polls the body again: a frame handed out and not followed by another poll is
//!   waiting for the client. The stream tasks hyper spawns run through
//!   [`StreamExec`], which watches for that and drops a stream whose frame has
//!   waited `send`: h2 resets it (RST_STREAM, CANCEL) and the body goes with it. Its
//!   timer is armed only once a frame waits, so a stream the client keeps up with
//!   costs a thread-local write per frame. Frames to a stream are at most 16 KiB
//!   (`conn.rs`), so a client that reads 16 KiB per `send` keeps its stream.
//!
//! Either way the cut is counted under the request's route: its in-flight guard
//! names the route as it is dropped inside [`cutting`] (`"-"` when no routed body
//! was in progress). The connection supervisor (`conn.rs`) counts socket cuts; the
//! stream watcher counts its own.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Events;
use super::conn::ConnState;

thread_local! {
    /// What the response body did during the current poll of a watched stream.
    static BODY: Cell<Polled> = const { Cell::new(Polled::Not) };
    /// Inside [`cutting`]: the route of the exchange being dropped, once named.
    static CUT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    /// Not polled.
    Not,
    /// It handed out a data frame, last.
    Frame,
    /// It was polled and handed out no data frame (pending, ended, trailers).
    Idle,
}

/// Called by the response body as hyper polls it: whether it handed out a data
/// frame. One thread-local write; read only by a watched HTTP/2 stream.
#[inline]
pub(super) fn body_polled(frame: bool) {
    BODY.set(if frame { Polled::Frame } else { Polled::Idle });
}

/// Runs `drop_it`, which drops an exchange being cut off, and returns the route
/// its in-flight guard named as it went.
pub(super) fn cutting(drop_it: impl FnOnce()) -> Option<String> {
    CUT.with_borrow_mut(|c| *c = Some(None));
    drop_it();
    CUT.with_borrow_mut(Option::take).flatten()
}

/// Called as a request's in-flight guard is dropped: inside [`cutting`], `route`
/// names what is being cut off. Elsewhere it is not called.
#[inline]
pub(crate) fn dropping_route(route: impl FnOnce() -> String) {
    CUT.with_borrow_mut(|c| {
        if let Some(slot @ None) = c {
            *slot = Some(route());
        }
    });
}

/// The executor of a listener's HTTP/2 stream tasks: with a watch, each stream is
/// dropped once a frame of its answer has waited `send` for the client.
#[derive(Clone)]
pub struct StreamExec {
    watch: Option<Arc<Watch>>,
}

struct Watch {
    send: Duration,
    events: Arc<dyn Events>,
}

impl StreamExec {
    /// Watches streams when `send` and `events` are both given (the data plane).
    pub fn new(send: Option<Duration>, events: Option<Arc<dyn Events>>) -> StreamExec {
        StreamExec {
            watch: send
                .zip(events)
                .map(|(send, events)| Arc::new(Watch { send, events })),
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        match &self.watch {
            None => drop(tokio::spawn(fut)),
            Some(w) => drop(tokio::spawn(watched(fut, w.clone()))),
        }
    }
}

/// Runs a stream task; ends it once the response body's last frame has waited
/// `send` without the body being polled again.
async fn watched<F: Future<Output = ()>>(fut: F, watch: Arc<Watch>) {
    let mut fut = std::pin::pin!(Some(fut));
    // Since when the last frame handed out waits for the client.
    let mut waiting: Option<Instant> = None;
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    std::future::poll_fn(|cx| {
        let Some(inner) = fut.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        BODY.set(Polled::Not);
        let done = inner.poll(cx).is_ready();
        let polled = BODY.replace(Polled::Not);
        if done {
            return Poll::Ready(());
        }
        match polled {
            Polled::Frame => waiting = Some(Instant::now()),
            Polled::Idle => waiting = None,
            Polled::Not => {}
        }
        let Some(since) = waiting else {
            return Poll::Pending;
        };
        let deadline = since + watch.send;
        // Armed once, then moved only when it fires early: its deadline is never
        // later than the current one, as `waiting` only moves forward.
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if t.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                break;
            }
            t.as_mut().reset(deadline);
        }
        let route = cutting(|| fut.set(None));
        watch.events.timed_out(route.as_deref(), "send");
        Poll::Ready(())
    })
    .await;
}

/// A client connection whose writes may not stall: once a write (or flush) has
/// made no progress for `send`, it fails with `TimedOut`, so a client that stops
/// reading is cut off. Reads tell the connection's supervisor when the bytes of a
/// next request head begin.
pub struct Timed<S> {
    inner: S,
    send: Option<Duration>,
    stalled: Option<Pin<Box<Sleep>>>,
    state: Arc<ConnState>,
    events: Option<Arc<dyn Events>>,
}

impl<S> Timed<S> {
    pub(super) fn new(
        inner: S,
        send: Option<Duration>,
        state: Arc<ConnState>,
        events: Option<Arc<dyn Events>>,
    ) -> Self {
        Timed {
            inner,
            send,
            stalled: None,
            state,
            events,
        }
    }

    /// After a write returned `Pending`: fails once the stall has lasted `send`.
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let Some(send) = self.send else {
            return Poll::Pending;
        };
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The supervisor counts it as it drops the connection, with the route of
        // the answer in progress; after an upgrade, nobody else will.
        if !self.state.send_cut()
            && let Some(e) = &self.events
        {
            e.timed_out(None, "send");
        }
        self.send = None;
        Poll::Ready(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client took no byte of the answer within limits.send",
        ))
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        p: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match p {
            Poll::Pending => self.stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let p = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.read_some();
        }
        p
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(cx, p)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(cx, p)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(cx, p)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(Option<String>, &'static str)>>);

    impl Events for Seen {
        fn refused(&self, _: &'static str) {}
        fn timed_out(&self, route: Option<&str>, kind: &'static str) {
            let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
            v.push((route.map(str::to_string), kind));
        }
        fn head_too_large(&self) {}
    }

    /// Stands for a request's in-flight guard: names its route when dropped, and
    /// says it was dropped.
    struct Guard(Arc<AtomicBool>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
            dropping_route(|| "shop".to_string());
        }
    }

    /// A stream task as hyper's pipe behaves: hands out a frame every `every`
    /// (woken by its own timer, as h2 wakes it when capacity comes), `frames`
    /// times, then waits for capacity that never comes.
    async fn stream(every: Duration, frames: u32, guard: Guard) {
        let _guard = guard;
        for _ in 0..frames {
            body_polled(true);
            tokio::time::sleep(every).await;
        }
        body_polled(true);
        std::future::pending::<()>().await;
    }

    fn exec(seen: &Arc<Seen>) -> StreamExec {
        let events: Arc<dyn Events> = seen.clone();
        StreamExec::new(Some(Duration::from_secs(2)), Some(events))
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_left_waiting_for_send_ends_the_stream_counted_with_its_route() {
        let seen = Arc::new(Seen::default());
        let dropped = Arc::new(AtomicBool::new(false));
        // One frame a second for five seconds: the client keeps up, never cut.
        // Then the last frame waits: cut 2 s later.
        let start = Instant::now();
        hyper::rt::Executor::execute(
            &exec(&seen),
            stream(Duration::from_secs(1), 5, Guard(dropped.clone())),
        );
        while !dropped.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = start.elapsed();
        assert!(dropped.load(Ordering::SeqCst), "the stream was not ended");
        assert!(
            after >= Duration::from_secs(7) && after <= Duration::from_millis(7200),
            "ended after {after:?}: 5 frames 1 s apart, then send = 2 s"
        );
        let v = seen.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(v, vec![(Some("shop".to_string()), "send")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waiting_on_its_backend_is_not_cut() {
        let seen = Arc::new(Seen::default());
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Guard(dropped.clone());
        hyper::rt::Executor::execute(&exec(&seen), async move {
            let _guard = guard;
            // The body was polled and had nothing: waiting on the backend.
            body_polled(false);
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !dropped.load(Ordering::SeqCst),
            "cut while the body had nothing"
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(dropped.load(Ordering::SeqCst), "the task ended on its own");
        assert!(seen.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
    }

    #[test]
    fn a_guard_dropped_outside_a_cut_names_nothing() {
        dropping_route(|| unreachable!("not inside a cut"));
        let route = cutting(|| dropping_route(|| "a".to_string()));
        assert_eq!(route.as_deref(), Some("a"));
        assert_eq!(cutting(|| {}), None);
    }
}
