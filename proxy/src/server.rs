//! Listeners: bind, accept, terminate TLS on the HTTPS listener, serve HTTP/1.1 and
//! HTTP/2 (prior knowledge, or ALPN over TLS) with hyper, and stop accepting on
//! request while the connections already open finish. Each connection's
//! supervisor and its head and keep-alive deadlines are in `server/conn.rs`; the
//! send timeout, per socket and per HTTP/2 stream, in `server/send.rs`.

mod conn;
mod send;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_config::Limits;

use futures_util::FutureExt;
use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use crate::body::ProxyBody;
use conn::{ConnBody, ConnState, Deadlines, drive};
pub(crate) use send::dropping_route;
use send::{StreamExec, Timed};

/// A client that opens a TCP connection and never finishes the handshake may not
/// hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a request reached the proxy, as a request extension. Requests without it
/// came over plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Binds with SO_REUSEADDR so a restart does not wait out TIME_WAIT.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The sending side of [`Stop`].
pub struct StopHandle {
    tx: watch::Sender<bool>,
    closing: Arc<AtomicBool>,
}

/// Tells accept loops to stop. From then on HTTP/1 responses carry
/// `Connection: close`, so a keep-alive client opens its next request on a new
/// connection (to the process that took the socket over, after an upgrade) instead
/// of racing the close of an idle one.
#[derive(Clone)]
pub struct Stop {
    rx: watch::Receiver<bool>,
    closing: Arc<AtomicBool>,
}

pub fn stop_pair() -> (StopHandle, Stop) {
    let (tx, rx) = watch::channel(false);
    let closing = Arc::new(AtomicBool::new(false));
    (
        StopHandle {
            tx,
            closing: closing.clone(),
        },
        Stop { rx, closing },
    )
}

impl StopHandle {
    pub fn stop(&self) {
        self.closing.store(true, Ordering::Relaxed);
        let _ = self.tx.send(true);
    }
}

/// What guards a data-plane listener: `[limits]` as the process started with them,
/// the open connections of every data-plane listener, and where refusals and
/// timeouts are reported.
pub struct Guards {
    pub limits: Limits,
    pub counts: Arc<ConnCounts>,
    pub events: Arc<dyn Events>,
}

/// Where the listener reports what it refused or cut off.
pub trait Events: Send + Sync + 'static {
    /// A connection closed at accept: `"total"` or `"per_ip"` cap.
    fn refused(&self, reason: &'static str);
    /// A client cut off by a timeout: `"request_head"`, `"keepalive"` or `"send"`,
    /// with the route of the request it held up when one was routed.
    fn timed_out(&self, route: Option<&str>, kind: &'static str);
    /// hyper answered 431 to a head far beyond the limits, before the request path
    /// could see it.
    fn head_too_large(&self);
}

/// Open client connections, in all and per client address.
#[derive(Default)]
pub struct ConnCounts {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnCounts {
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// A ticket for one more connection, unless `max` (0: no cap) are open.
    fn admit(self: &Arc<Self>, max: usize) -> Option<Ticket> {
        let before = self.total.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket {
            counts: self.clone(),
            ip: None,
        };
        (max == 0 || before < max).then_some(ticket)
    }
}

/// One open connection in [`ConnCounts`], given back on drop.
pub struct Ticket {
    counts: Arc<ConnCounts>,
    ip: Option<IpAddr>,
}

impl Ticket {
    /// Counts the connection against its client address; false when `max` (0: no
    /// cap) connections from it are open already.
    fn per_ip(&mut self, ip: IpAddr, max: usize) -> bool {
        if max == 0 {
            return true;
        }
        let mut map = self.counts.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        self.ip = Some(ip);
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut map = self.counts.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Accepts until `stop` fires, then drops the listener: this process accepts no
/// more (the kernel refuses new connections unless another process shares the
/// socket). With `proxy_protocol`, each connection first names its real client in a
/// PROXY header; with `tls`, its handshake follows. Both run in the connection's own
/// task. Each connection is registered with `graceful`, which is handed back so the
/// caller can wait for those connections to finish.
///
/// With `guards` (the data plane), a connection over the caps is closed at accept;
/// one whose first request head has not arrived `request_head` after the accept
/// (PROXY header and TLS handshake included) is closed; an HTTP/1 connection waits
/// at most `keepalive` for the first byte of each next request, whose head then has
/// `request_head` to arrive, and an HTTP/2 connection with no exchange under way
/// for `keepalive` is shut down gracefully (GOAWAY); a client that takes no byte of
/// its answer for `send`, or an HTTP/2 stream that takes none of it, is cut off.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stop: Stop,
    graceful: Graceful,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    guards: Option<Arc<Guards>>,
    handler: F,
) -> Graceful
where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let limits = guards.as_ref().map(|g| g.limits.clone());
    let exec = StreamExec::new(
        limits.as_ref().map(|l| l.send),
        guards.as_ref().map(|g| g.events.clone()),
    );
    let mut builder = auto::Builder::new(exec);
    builder
        .http1()
        .timer(TokioTimer::new())
        // The supervisor (`drive`, with deadlines on every listener) closes a
        // connection whose head is late or that is idle for the keep-alive.
        // hyper's own head timer would cost a boxed timer per request and could
        // only fire after the supervisor had.
        .header_read_timeout(None)
        .keep_alive(true);
    // Extended CONNECT (RFC 8441): WebSockets over HTTP/2.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    if let Some(l) = &limits {
        // The exact limits are the request path's (431, counted, alike on both
        // versions); these are the backstop for heads far beyond them.
        builder
            .http1()
            .max_buf_size((4 * l.max_header_size).max(8192))
            .max_headers(4 * l.max_headers);
        builder
            .http2()
            .max_header_list_size(u32::try_from(4 * l.max_header_size).unwrap_or(u32::MAX))
            .keep_alive_interval(l.h2_ping)
            .keep_alive_timeout(l.h2_ping_timeout);
    }
    let builder = Arc::new(builder);
    let mut stop_rx = stop.rx.clone();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = until_stopped(&mut stop_rx) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let mut ticket = None;
        if let (Some(g), Some(l)) = (&guards, &limits) {
            let Some(mut t) = g.counts.admit(l.max_connections) else {
                g.events.refused("total");
                continue;
            };
            if !proxy_protocol && !t.per_ip(peer.ip(), l.max_connections_per_ip) {
                g.events.refused("per_ip");
                continue;
            }
            ticket = Some(t);
        }
        let _ = stream.set_nodelay(true);
        // Taken before the handshake, so a shutdown also waits for (and then
        // signals) connections still negotiating TLS.
        let watcher = graceful.watcher();
        let scheme = if tls.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let conn = Accepted {
            stream,
            peer,
            scheme,
            ticket,
            guards: guards.clone(),
            tls: tls.clone(),
            proxy_protocol,
            builder: builder.clone(),
            closing: stop.closing.clone(),
        };
        tokio::spawn(conn.serve(watcher, handler.clone()));
    }
    graceful
}

/// A connection just accepted, with what serving it takes.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    scheme: Scheme,
    ticket: Option<Ticket>,
    guards: Option<Arc<Guards>>,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    builder: Arc<auto::Builder<StreamExec>>,
    closing: Arc<AtomicBool>,
}

impl Accepted {
    async fn serve<F, Fut>(self, watcher: Watcher, handler: F)
    where
        F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
    {
        let Accepted {
            mut stream,
            peer,
            scheme,
            mut ticket,
            guards,
            tls,
            proxy_protocol,
            builder,
            closing,
        } = self;
        let limits = guards.as_ref().map(|g| &g.limits);
        let head_within = limits.map_or(HANDSHAKE_TIMEOUT, |l| l.request_head);
        let head_deadline = tokio::time::Instant::now() + head_within;
        let client = if proxy_protocol {
            match crate::proxy_protocol::read_header(&mut stream, head_within).await {
                Ok(named) => named.unwrap_or(peer),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection refused");
                    return;
                }
            }
        } else {
            peer
        };
        if proxy_protocol
            && let (Some(t), Some(g)) = (ticket.as_mut(), &guards)
            && !t.per_ip(client.ip(), g.limits.max_connections_per_ip)
        {
            g.events.refused("per_ip");
            return;
        }
        let send = limits.map(|l| l.send);
        let events = guards.as_ref().map(|g| g.events.clone());
        let state = Arc::new(ConnState::default());
        let io = Timed::new(stream, send, state.clone(), events.clone());
        let svc = {
            let state = state.clone();
            service_fn(move |req| respond(&handler, client, scheme, &closing, &state, req))
        };
        // The admin listener, without `[limits]`, still closes silent connections.
        let deadlines = Some(Deadlines {
            first_head: head_deadline,
            request_head: head_within,
            keepalive: limits.map_or(Duration::from_secs(30), |l| l.keepalive),
        });
        let Some(acceptor) = tls else {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
            return drive(
                conn,
                |c| c.graceful_shutdown(),
                watcher,
                &state,
                deadlines,
                events.as_deref(),
                client,
            )
            .await;
        };
        let stream = match tokio::time::timeout_at(head_deadline, acceptor.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // A client that read none of the handshake for `send`.
                if state.detach()
                    && let Some(ev) = &events
                {
                    ev.timed_out(None, "send");
                }
                tracing::debug!(peer = %client, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                if let Some(e) = &events {
                    e.timed_out(None, "request_head");
                }
                tracing::debug!(peer = %client, "TLS handshake timed out");
                return;
            }
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        drive(
            conn,
            |c| c.graceful_shutdown(),
            watcher,
            &state,
            deadlines,
            events.as_deref(),
            client,
        )
        .await;
    }
}

/// Runs the handler on one request: marks it with its scheme, counts its exchange
/// as under way on its connection until the answer's body has ended, and once the
/// listener is stopping asks an HTTP/1 client to close after this response.
///
/// A combinator rather than an `async` block: the block would keep the handler's
/// future both as a captured value and as the awaited one, doubling the state hyper
/// keeps per connection and copies on every request.
fn respond<F, Fut>(
    handler: &F,
    peer: SocketAddr,
    scheme: Scheme,
    closing: &Arc<AtomicBool>,
    conn: &Arc<ConnState>,
    mut req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ConnBody>, Infallible>> + Send + use<F, Fut>
where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    if scheme == Scheme::Https {
        req.extensions_mut().insert(Scheme::Https);
    }
    let http1 = req.version() < Version::HTTP_2;
    let closing = closing.clone();
    let underway = ConnState::begin(conn, !http1);
    handler(peer, req).map(move |resp| {
        resp.map(|mut resp| {
            // Read at answer time: a request that began before the stop still
            // tells its client to move on.
            if http1 && closing.load(Ordering::Relaxed) {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            resp.map(|body| ConnBody::new(body, underway, !http1))
        })
    })
}

/// Tracks a listener's connections so that a shutdown can signal them and wait
/// for them: each connection's [`Watcher`] counts it until its task ends.
#[derive(Clone)]
pub struct Graceful {
    inner: Arc<GracefulInner>,
}

struct GracefulInner {
    signal: watch::Sender<bool>,
    count: AtomicUsize,
    gone: Notify,
}

impl Default for Graceful {
    fn default() -> Self {
        Graceful::new()
    }
}

impl Graceful {
    pub fn new() -> Self {
        Graceful {
            inner: Arc::new(GracefulInner {
                signal: watch::Sender::new(false),
                count: AtomicUsize::new(0),
                gone: Notify::new(),
            }),
        }
    }

    /// Connections still open.
    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::Acquire)
    }

    fn watcher(&self) -> Watcher {
        self.inner.count.fetch_add(1, Ordering::AcqRel);
        Watcher {
            inner: self.inner.clone(),
            rx: self.inner.signal.subscribe(),
        }
    }

    /// Tells every connection to shut down gracefully, then waits until all ended.
    pub async fn shutdown(self) {
        self.inner.signal.send_replace(true);
        loop {
            let gone = self.inner.gone.notified();
            if self.count() == 0 {
                return;
            }
            gone.await;
        }
    }
}

/// One connection of a [`Graceful`]: counted until dropped.
struct Watcher {
    inner: Arc<GracefulInner>,
    rx: watch::Receiver<bool>,
}

impl Watcher {
    /// Resolves once a shutdown has been signalled.
    async fn signalled(&mut self) {
        if self.rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.inner.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.gone.notify_waiters();
        }
    }
}

/// Resolves once the stop has been signalled (at once if it already was).
async fn until_stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Waits for the connections `graceful` watches to end. For `linger` they may
/// close on their own (HTTP/1 clients are told `Connection: close` with their next
/// response); then hyper shuts the rest down gracefully (idle HTTP/1 connections
/// close, HTTP/2 gets GOAWAY). True when all ended before `grace` ran out.
pub async fn drain(graceful: Graceful, linger: Duration, grace: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    let linger_until = tokio::time::Instant::now() + linger.min(grace);
    while graceful.count() > 0 && tokio::time::Instant::now() < linger_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_ok()
}
