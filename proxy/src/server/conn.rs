//! A connection's supervisor: what it knows of the connection's exchanges, and the
//! deadlines it holds them to.
//!
//! - The first request head must arrive `request_head` after the accept.
//! - An exchange lasts from its request head until its response body has ended
//!   (or was dropped). With none under way, an HTTP/1 connection waits
//!   `keepalive` for the first byte of its next head, and that head then has
//!   `request_head` to complete; an HTTP/2 connection idle for `keepalive` is shut
//!   down gracefully (GOAWAY).
//!
//! hyper's own HTTP/1 head timer cannot say this: it starts when hyper begins to
//! wait for a head, that is when the previous exchange ends, so it would bound the
//! idle wait and the head together. It is off: it cost a boxed timer per request.
//!
//! A head's first byte is only noted (by the connection's reads, `send.rs`); waking
//! the supervisor for it would cost a wake-up per request. An idle HTTP/1
//! connection's supervisor looks every `request_head` instead, so a head begun
//! after one look is seen by the next, before its deadline, and closed at that
//! deadline exactly. The end of an exchange does not wake it either: while one is
//! under way it looks every `min(keepalive, request_head)` (HTTP/2: `keepalive`),
//! the soonest either deadline could fall after the exchange ends, and from an
//! idle look it sets the exact deadline (looks are at least 10 ms apart, so a
//! limit set shorter is kept to within that). Shutting down, it keeps only a
//! head's deadline: hyper closes an idle connection itself.
//!
//! Its other branches (the shutdown signal, the timer) are polled only when their
//! own wakers fire ([`OnWake`]), not each time the connection's I/O wakes the
//! task: several times per request, each of which polled a watch channel (a read
//! lock) and a timer before.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::{ArcWake, AtomicWaker, waker_ref};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::{Events, Watcher, send};
use crate::body::{BoxError, ProxyBody};

/// The deadlines a data-plane connection is held to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    /// When the first request's head must have arrived.
    pub first_head: Instant,
    pub request_head: Duration,
    pub keepalive: Duration,
}

/// What a connection's supervisor knows of its exchanges.
#[derive(Default)]
pub(super) struct ConnState {
    began: AtomicU64,
    underway: AtomicUsize,
    /// Milliseconds (see [`millis_now`]) when `underway` last fell to zero.
    idle_since: AtomicU64,
    /// When the first byte after the last exchange arrived (0: none yet).
    head_since: AtomicU64,
    http2: AtomicBool,
    /// [`LIVE`], [`CUT`] or [`DETACHED`].
    cut: AtomicU8,
}

/// The shortest wait between looks while an exchange is under way: limits set
/// below it (the config takes any non-zero duration) would otherwise have the
/// supervisor spin for as long as the exchange lasts. A deadline that short is
/// then kept to within this.
const LOOK_AT_MOST_EVERY: Duration = Duration::from_millis(10);

/// The supervisor drives the connection and no send timeout fired.
const LIVE: u8 = 0;
/// The send timeout fired; the supervisor counts it as it drops the connection.
const CUT: u8 = 1;
/// The supervisor let the connection go (it ended, or an upgrade took it over).
const DETACHED: u8 = 2;

/// An exchange under way on its connection, until its response body has ended
/// or was dropped.
pub(super) struct Underway(Arc<ConnState>);

impl ConnState {
    pub(super) fn begin(this: &Arc<ConnState>, http2: bool) -> Underway {
        if http2 {
            this.http2.store(true, Ordering::Relaxed);
        }
        this.began.fetch_add(1, Ordering::Relaxed);
        this.underway.fetch_add(1, Ordering::AcqRel);
        this.head_since.store(0, Ordering::Relaxed);
        Underway(this.clone())
    }

    /// Bytes arrived from the client: with no exchange under way, they begin the
    /// next request head.
    #[inline]
    pub(super) fn read_some(&self) {
        if self.underway.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(millis_now(), Ordering::Relaxed);
        }
    }

    /// The send timeout fired on the connection's socket. False when the
    /// supervisor has let the connection go, so the caller counts it.
    pub(super) fn send_cut(&self) -> bool {
        match self
            .cut
            .compare_exchange(LIVE, CUT, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == CUT,
        }
    }

    /// The supervisor lets the connection go (or never drove it); true when a send
    /// timeout fired that it has to count.
    pub(super) fn detach(&self) -> bool {
        self.cut.swap(DETACHED, Ordering::AcqRel) == CUT
    }

    /// When the supervisor next has something to judge: the first head's deadline
    /// until a request began; with no exchange under way, the deadline of a head
    /// begun (HTTP/1), else the end of the keep-alive, or on HTTP/1 the next look
    /// for a head begun if sooner; with one under way, the next look (see the
    /// module's comment).
    fn next_wake(&self, d: &Deadlines) -> Instant {
        let http2 = self.http2.load(Ordering::Relaxed);
        let look = || {
            let every = if http2 {
                d.keepalive
            } else {
                d.keepalive.min(d.request_head)
            };
            Instant::now() + every.max(LOOK_AT_MOST_EVERY)
        };
        if self.began.load(Ordering::Relaxed) == 0 {
            // The first exchange may begin and end before the first head's
            // deadline: its keep-alive is judged from the look after it.
            return d.first_head.min(look());
        }
        if self.underway.load(Ordering::Acquire) != 0 {
            return look();
        }
        let now = millis_now();
        let head = d.request_head.as_millis() as u64;
        let at = match self.head_begun() {
            Some(since) => since + head,
            None => {
                let idle = self.idle_since.load(Ordering::Relaxed) + d.keepalive.as_millis() as u64;
                if http2 { idle } else { idle.min(now + head) }
            }
        };
        Instant::now() + Duration::from_millis(at.saturating_sub(now))
    }

    /// The deadline of the first head, or of an HTTP/1 head begun with no
    /// exchange under way; None otherwise.
    fn head_deadline(&self, d: &Deadlines) -> Option<Instant> {
        if self.began.load(Ordering::Relaxed) == 0 {
            return Some(d.first_head);
        }
        if self.underway.load(Ordering::Acquire) != 0 {
            return None;
        }
        let since = self.head_begun()?;
        let at = since + d.request_head.as_millis() as u64;
        Some(Instant::now() + Duration::from_millis(at.saturating_sub(millis_now())))
    }

    /// An HTTP/1 head whose first byte has arrived, since then.
    fn head_begun(&self) -> Option<u64> {
        let since = self.head_since.load(Ordering::Relaxed);
        (since != 0 && !self.http2.load(Ordering::Relaxed)).then_some(since)
    }

    /// What ran out, once [`ConnState::next_wake`]'s time has come.
    fn expired(&self, d: &Deadlines) -> Option<&'static str> {
        if self.began.load(Ordering::Relaxed) == 0 {
            return (Instant::now() >= d.first_head).then_some("request_head");
        }
        if self.underway.load(Ordering::Acquire) != 0 {
            return None;
        }
        let now = millis_now();
        match self.head_begun() {
            Some(since) => (now.saturating_sub(since) >= d.request_head.as_millis() as u64)
                .then_some("request_head"),
            None => {
                let since = self.idle_since.load(Ordering::Relaxed);
                (now.saturating_sub(since) >= d.keepalive.as_millis() as u64).then_some("keepalive")
            }
        }
    }
}

impl Drop for Underway {
    fn drop(&mut self) {
        // Stored before the count falls (an HTTP/2 stream ends on its own task): a
        // look that sees no exchange under way sees this end's time, not an older
        // one. With other exchanges still under way it is not read.
        self.0.idle_since.store(millis_now(), Ordering::Relaxed);
        self.0.underway.fetch_sub(1, Ordering::AcqRel);
    }
}

static BASE: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// Milliseconds since the first call in the process, from 1.
fn millis_now() -> u64 {
    BASE.elapsed().as_millis() as u64 + 1
}

/// The body hyper sends: the handler's, holding its exchange under way until it
/// ends, and telling a watched HTTP/2 stream (`send.rs`) whether it handed out a
/// frame. To an HTTP/2 stream it hands data out in pieces of at most [`PIECE`], so
/// that the send timeout's unit (a piece the client has not taken) is small.
pub struct ConnBody {
    body: ProxyBody,
    underway: Option<Underway>,
    /// HTTP/2: pieces are cut.
    split: bool,
    /// What is left of a frame cut into pieces.
    rest: Option<Bytes>,
}

/// One DATA frame at HTTP/2's default frame size: a client that reads 16 KiB per
/// `limits.send` keeps its stream.
const PIECE: usize = 16 * 1024;

impl ConnBody {
    pub(super) fn new(body: ProxyBody, underway: Underway, http2: bool) -> ConnBody {
        ConnBody {
            body,
            underway: Some(underway),
            split: http2,
            rest: None,
        }
    }

    /// The first piece of `data`, keeping the rest.
    fn piece(&mut self, mut data: Bytes) -> Bytes {
        if self.split && data.len() > PIECE {
            self.rest = Some(data.split_off(PIECE));
        }
        data
    }
}

impl Body for ConnBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let p = match this.rest.take() {
            Some(rest) => Poll::Ready(Some(Ok(Frame::data(this.piece(rest))))),
            None => match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) if this.split => {
                    let f = match f.into_data() {
                        Ok(data) => Frame::data(this.piece(data)),
                        Err(f) => f,
                    };
                    Poll::Ready(Some(Ok(f)))
                }
                p => p,
            },
        };
        match &p {
            Poll::Ready(Some(Ok(f))) => {
                send::body_polled(f.is_data());
                // hyper stops polling once the body says it has ended.
                if this.is_end_stream() {
                    this.underway = None;
                }
            }
            Poll::Pending => send::body_polled(false),
            Poll::Ready(_) => {
                send::body_polled(false);
                this.underway = None;
            }
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.body.size_hint();
        if let Some(rest) = &self.rest {
            let n = rest.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
            hint.set_lower(hint.lower() + n);
        }
        hint
    }
}

/// Serves one connection to its end. It shuts down gracefully when the listener's
/// [`super::Graceful`] says so. With `deadlines` (see the module's comment), a
/// connection whose head is late is closed and one idle for the keep-alive shut
/// down gracefully: an idle HTTP/1 connection is closed, an HTTP/2 one gets GOAWAY
/// and its open streams finish. When the send timeout cut the connection off, it
/// is counted with the route of the answer in progress.
pub(super) async fn drive<C>(
    conn: C,
    shutdown: impl Fn(Pin<&mut C>),
    mut watcher: Watcher,
    state: &ConnState,
    deadlines: Option<Deadlines>,
    events: Option<&dyn Events>,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    // In an Option so that a cut-off connection can be dropped where its route is
    // learnt.
    let mut conn = std::pin::pin!(Some(conn));
    let mut shutting = false;
    let side = Arc::new(WakeFlag::default());
    loop {
        // Shutting down, only a head's deadline is kept: hyper closes idle
        // connections itself, but waits for a head begun (or a first head) to end.
        let wake = deadlines.and_then(|d| {
            if shutting {
                state.head_deadline(&d)
            } else {
                Some(state.next_wake(&d))
            }
        });
        let timer = std::pin::pin!(async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        });
        let signalled = std::pin::pin!(watcher.signalled());
        // New futures: each is polled once, then only when its waker fires.
        side.woken.store(u8::MAX, Ordering::Release);
        let running = std::future::poll_fn(|cx| match conn.as_mut().as_pin_mut() {
            Some(c) => c.poll(cx),
            None => Poll::Pending,
        });
        tokio::select! {
            biased;
            r = running => {
                if let Err(e) = r {
                    // hyper answered 431 itself: a head far beyond the limits.
                    if let (Some(ev), Some(h)) = (events, e.downcast_ref::<hyper::Error>())
                        && h.is_parse_too_large()
                    {
                        ev.head_too_large();
                    }
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = OnWake::new(signalled, &side, 0), if !shutting => {
                shutting = true;
                if let Some(c) = conn.as_mut().as_pin_mut() {
                    shutdown(c);
                }
            }
            () = OnWake::new(timer, &side, 1) => {
                let Some(kind) = deadlines.and_then(|d| state.expired(&d)) else {
                    continue;
                };
                if shutting && kind != "request_head" {
                    continue;
                }
                if let Some(e) = events {
                    e.timed_out(None, kind);
                }
                if kind == "request_head" {
                    tracing::debug!(%peer, "request head not complete within the limit; closing");
                    break;
                }
                shutting = true;
                if let Some(c) = conn.as_mut().as_pin_mut() {
                    shutdown(c);
                }
            }
        }
    }
    if state.detach() {
        let route = send::cutting(|| conn.set(None));
        if let Some(e) = events {
            e.timed_out(route.as_deref(), "send");
        }
    }
}

/// Which of the supervisor's side branches may have something new (a bit each),
/// and the task to wake for them. Their futures get a waker that sets every bit
/// and wakes the task; the connection's own futures get the task's waker.
#[derive(Default)]
struct WakeFlag {
    woken: AtomicU8,
    task: AtomicWaker,
}

impl ArcWake for WakeFlag {
    fn wake_by_ref(this: &Arc<Self>) {
        this.woken.store(u8::MAX, Ordering::Release);
        this.task.wake();
    }
}

/// A future polled on its first poll and then only after a [`WakeFlag`] wake set
/// its bit: until then a poll of it is two atomic operations.
struct OnWake<'a, F> {
    fut: Pin<&'a mut F>,
    flag: &'a Arc<WakeFlag>,
    bit: u8,
}

impl<'a, F> OnWake<'a, F> {
    fn new(fut: Pin<&'a mut F>, flag: &'a Arc<WakeFlag>, bit: u8) -> Self {
        OnWake {
            fut,
            flag,
            bit: 1 << bit,
        }
    }
}

impl<F: Future> Future for OnWake<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Registered before the bit is read: a wake in between sets it again.
        this.flag.task.register(cx.waker());
        if this.flag.woken.fetch_and(!this.bit, Ordering::AcqRel) & this.bit == 0 {
            return Poll::Pending;
        }
        let waker = waker_ref(this.flag);
        this.fut.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn deadlines(request_head: Duration, keepalive: Duration) -> Deadlines {
        Deadlines {
            first_head: Instant::now() + Duration::from_secs(3600),
            request_head,
            keepalive,
        }
    }

    async fn frames(http2: bool, len: usize) -> (Vec<usize>, Arc<ConnState>) {
        let state = Arc::new(ConnState::default());
        let underway = ConnState::begin(&state, http2);
        let mut body = ConnBody::new(ProxyBody::text(vec![0u8; len]), underway, http2);
        assert_eq!(body.size_hint().exact(), Some(len as u64));
        let mut sizes = Vec::new();
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.map(Frame::into_data) {
                sizes.push(d.map_or(0, |d| d.len()));
            }
            assert_eq!(
                body.size_hint().exact(),
                Some((len - sizes.iter().sum::<usize>()) as u64)
            );
        }
        assert!(body.is_end_stream());
        (sizes, state)
    }

    #[tokio::test]
    async fn an_http2_answer_goes_out_in_pieces_and_its_end_ends_the_exchange() {
        let (sizes, state) = frames(true, 40 * 1024).await;
        assert_eq!(sizes, [16 * 1024, 16 * 1024, 8 * 1024]);
        assert_eq!(state.underway.load(Ordering::Acquire), 0);
        let (sizes, _) = frames(false, 40 * 1024).await;
        assert_eq!(sizes, [40 * 1024], "HTTP/1 frames are left whole");
    }

    #[tokio::test]
    async fn a_next_http1_head_is_timed_from_its_first_byte() {
        let state = Arc::new(ConnState::default());
        let d = deadlines(Duration::ZERO, Duration::from_secs(60));
        // Bytes while an exchange is under way are its own.
        let underway = ConnState::begin(&state, false);
        state.read_some();
        // Under way, the supervisor looks within min(keepalive, request_head)
        // (here at its shortest spacing) and judges nothing then.
        let look = state.next_wake(&d);
        assert!(
            look <= Instant::now() + LOOK_AT_MOST_EVERY + Duration::from_millis(2),
            "{look:?}"
        );
        assert_eq!(state.expired(&d), None);
        drop(underway);
        // Idle: the keep-alive runs, nothing expired; the supervisor looks again
        // within request_head.
        assert_eq!(state.expired(&d), None);
        let look = state.next_wake(&d);
        assert!(
            look <= Instant::now() + Duration::from_millis(2),
            "{look:?}"
        );
        // A first byte: the head's own deadline, already over here.
        state.read_some();
        assert_eq!(state.expired(&d), Some("request_head"));
        // The head completed: a new exchange, no head timer.
        let _next = ConnState::begin(&state, false);
        assert_eq!(state.expired(&d), None);
    }

    #[tokio::test]
    async fn before_the_first_head_a_look_judges_nothing_until_its_deadline() {
        let state = Arc::new(ConnState::default());
        let mut d = deadlines(Duration::from_secs(10), Duration::from_secs(1));
        d.first_head = Instant::now() + Duration::from_secs(10);
        // The look comes at the keep-alive (sooner than the first head's deadline).
        let look = state.next_wake(&d);
        assert!(look <= Instant::now() + Duration::from_secs(1), "{look:?}");
        assert_eq!(state.expired(&d), None);
        d.first_head = Instant::now();
        assert_eq!(state.next_wake(&d), d.first_head);
        assert_eq!(state.expired(&d), Some("request_head"));
    }

    /// A future that counts its polls, keeps its last waker and is ready once told.
    struct Probe {
        polls: Arc<AtomicUsize>,
        waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
        ready: Arc<AtomicBool>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    /// Counts the wakes of the task.
    struct Task(AtomicUsize);

    impl ArcWake for Task {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_side_branch_is_polled_first_and_then_only_after_its_own_wake() {
        let (polls, waker, ready) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(std::sync::Mutex::new(None)),
            Arc::new(AtomicBool::new(false)),
        );
        let mut probe = std::pin::pin!(Probe {
            polls: polls.clone(),
            waker: waker.clone(),
            ready: ready.clone(),
        });
        let flag = Arc::new(WakeFlag::default());
        flag.woken.store(u8::MAX, Ordering::Release);
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let task_waker = futures_util::task::waker(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let mut on = OnWake::new(probe.as_mut(), &flag, 1);
        assert!(Pin::new(&mut on).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled on its first poll");
        // The task woken for the connection's I/O: the branch is not polled.
        for _ in 0..5 {
            assert!(Pin::new(&mut on).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its own waker fires: the task is woken and the branch polled once more.
        ready.store(true, Ordering::SeqCst);
        waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert!(Pin::new(&mut on).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        // A branch beside it with another bit was woken too (a shared waker
        // cannot say which branch it was for), and is polled once.
        assert_ne!(flag.woken.load(Ordering::Acquire) & 1, 0);
    }

    #[tokio::test]
    async fn looks_under_way_are_spaced_even_with_tiny_limits() {
        let state = Arc::new(ConnState::default());
        let d = deadlines(Duration::from_nanos(1), Duration::from_nanos(1));
        let _underway = ConnState::begin(&state, false);
        let look = state.next_wake(&d);
        assert!(
            look >= Instant::now() + LOOK_AT_MOST_EVERY - Duration::from_millis(1),
            "the next look comes at once: {:?}",
            look.saturating_duration_since(Instant::now())
        );
    }

    #[tokio::test]
    async fn shutting_down_only_a_head_keeps_its_deadline() {
        let state = Arc::new(ConnState::default());
        let d = deadlines(Duration::from_secs(10), Duration::from_secs(60));
        // No head yet: the first head's deadline.
        assert_eq!(state.head_deadline(&d), Some(d.first_head));
        // An exchange under way, then idle with no head begun: nothing to bound
        // (hyper closes an idle connection itself).
        let underway = ConnState::begin(&state, false);
        assert_eq!(state.head_deadline(&d), None);
        drop(underway);
        assert_eq!(state.head_deadline(&d), None);
        // The idle time is this exchange's end, not an older one.
        assert_eq!(state.expired(&d), None);
        // A next head begun: its own deadline, request_head from its first byte.
        state.read_some();
        let at = state
            .head_deadline(&d)
            .expect("a head begun has a deadline");
        let left = at - Instant::now();
        assert!(
            left > Duration::from_secs(9) && left <= Duration::from_secs(10),
            "{left:?}"
        );
    }

    #[tokio::test]
    async fn http2_bytes_while_idle_leave_the_keepalive_alone() {
        let state = Arc::new(ConnState::default());
        let d = deadlines(Duration::ZERO, Duration::from_secs(60));
        drop(ConnState::begin(&state, true));
        state.read_some();
        assert_eq!(state.expired(&d), None);
        let d = deadlines(Duration::ZERO, Duration::ZERO);
        assert_eq!(state.expired(&d), Some("keepalive"));
    }
}
