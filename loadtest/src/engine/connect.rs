//! Opening connections and driving them from the task that uses them.
//!
//! hyper's client connection is a future that must be polled for any byte to move. The
//! usual pattern spawns it as a second task; here the connection task polls it itself,
//! next to the request it is waiting on ([`Driver::drive`]). A response then needs no
//! hop between tasks (or threads), which is most of the cost of a small request.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::TlsConnector;

use crate::stats::ErrorKind;

type ConnFuture = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// Opens connections to one address.
pub struct Connector {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    http2: bool,
}

/// One open connection: the handle requests go through, and the future that moves bytes.
pub struct Conn {
    /// Sends requests.
    pub sender: Sender,
    /// Moves bytes; must be polled while a request is in flight.
    pub driver: Driver,
}

/// The request side of a connection.
pub enum Sender {
    /// HTTP/1.1: one request at a time.
    H1(http1::SendRequest<Full<Bytes>>),
    /// HTTP/2.
    H2(http2::SendRequest<Full<Bytes>>),
}

/// The connection future and whether it has ended.
pub struct Driver {
    conn: ConnFuture,
    closed: bool,
}

/// A per-task timer that fires when the current request has run past the timeout.
///
/// It is re-armed lazily: starting a request only notes the start time, and the timer is
/// moved only when it fires early for the request in flight. A long run therefore touches
/// the timer wheel about once per timeout period instead of once per request.
pub struct Watchdog {
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
    started: Instant,
}

impl Connector {
    /// A connector for `addr`; `tls` carries the TLS client and the SNI name for `https`.
    pub fn new(
        addr: SocketAddr,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        http2: bool,
    ) -> Self {
        Self {
            addr,
            tls: tls.map(|(config, name)| (TlsConnector::from(config), name)),
            http2,
        }
    }

    /// Opens a connection: TCP, then TLS if configured, then the HTTP handshake.
    pub async fn connect(&self) -> Result<Conn, ErrorKind> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        // Small requests must not wait for Nagle's algorithm to coalesce them.
        tcp.set_nodelay(true).map_err(|_| ErrorKind::Connect)?;
        match &self.tls {
            None => self.handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|_| ErrorKind::Tls)?;
                self.handshake(TokioIo::new(tls)).await
            }
        }
    }

    async fn handshake<I>(&self, io: I) -> Result<Conn, ErrorKind>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn): (Sender, ConnFuture) = if self.http2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| classify(&e))?;
            (Sender::H2(sender), Box::pin(conn))
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(|e| classify(&e))?;
            (Sender::H1(sender), Box::pin(conn))
        };
        Ok(Conn {
            sender,
            driver: Driver {
                conn,
                closed: false,
            },
        })
    }
}

impl Sender {
    /// Waits until a request can be sent; an error means the connection is gone.
    pub async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            Self::H1(s) => s.ready().await,
            Self::H2(s) => s.ready().await,
        }
    }

    /// Sends a request and waits for the response head.
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Self::H1(s) => s.send_request(req).await,
            Self::H2(s) => s.send_request(req).await,
        }
    }
}

impl Driver {
    /// True once the connection future has ended (closed by either side, or failed).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Polls `fut` and the connection together until `fut` is done, or `None` when the
    /// watchdog says the request has run past its timeout.
    pub async fn drive<F: Future>(&mut self, fut: F, watchdog: &mut Watchdog) -> Option<F::Output> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            // The connection first, so that an end (a FIN from a server that closes idle
            // keep-alive connections) that arrived while it was idle is seen before
            // `ready()` says the connection is ready: hyper keeps the request channel
            // open while the connection object lives, so a request sent now would
            // wait for its timeout instead of failing over to a new connection.
            if !self.closed && self.conn.as_mut().poll(cx).is_ready() {
                self.closed = true;
                self.conn = Box::pin(std::future::pending());
            }
            // The request first (it queues its message), then the connection (which writes
            // it and reads what has arrived), then the request again (to pick that up in the
            // same wakeup rather than the next one).
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if !self.closed && self.conn.as_mut().poll(cx).is_ready() {
                // The request future sees the closure as an error of its own, which is
                // where it is classified; the connection's result adds nothing.
                self.closed = true;
                // Drop the finished connection, so that hyper drops its request
                // channel and a pending `ready()` learns that it ended.
                self.conn = Box::pin(std::future::pending());
            }
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if watchdog.poll_expired(cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

impl Watchdog {
    /// A watchdog for requests of at most `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            sleep: Box::pin(tokio::time::sleep_until((now + timeout).into())),
            timeout,
            started: now,
        }
    }

    /// Notes the start of a request.
    pub fn start(&mut self, now: Instant) {
        self.started = now;
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.sleep.as_mut().poll(cx).is_ready() {
            let deadline = self.started + self.timeout;
            if Instant::now() >= deadline {
                return true;
            }
            // Fired for an earlier request: move it to this request's deadline and poll
            // again so that the new deadline is registered with this task's waker.
            self.sleep.as_mut().reset(deadline.into());
        }
        false
    }
}

/// Runs `fut` until it is done, or `None` when the watchdog fires first (for the steps
/// before a connection exists: TCP connect, TLS and HTTP handshakes).
pub async fn bounded<F: Future>(fut: F, watchdog: &mut Watchdog) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if watchdog.poll_expired(cx) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Sorts a hyper error into a report kind.
pub fn classify(e: &hyper::Error) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() || e.is_user() {
        ErrorKind::Protocol
    } else {
        // Closed, canceled, incomplete message, I/O errors, HTTP/2 resets: the peer went away
        // before the exchange was complete.
        ErrorKind::Reset
    }
}
