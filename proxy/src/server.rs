//! Listeners: bind, accept, terminate TLS on the HTTPS listener, serve HTTP/1.1 and
//! HTTP/2 (prior knowledge, or ALPN over TLS) with hyper, and stop accepting on
//! request while the connections already open finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::body::ProxyBody;

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

/// Accepts until `stop` fires, then drops the listener: this process accepts no
/// more (the kernel refuses new connections unless another process shares the
/// socket). With `proxy_protocol`, each connection first names its real client in a
/// PROXY header; with `tls`, its handshake follows. Both run in the connection's own
/// task. Each connection is registered with `graceful`, which is handed back so the
/// caller can wait for those connections to finish.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stop: Stop,
    graceful: GracefulShutdown,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    handler: F,
) -> GracefulShutdown
where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slow clients may not hold a connection open without sending a request.
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    // Extended CONNECT (RFC 8441): WebSockets over HTTP/2.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    let builder = Arc::new(builder);
    let mut stop_rx = stop.rx.clone();
    loop {
        let (mut stream, peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        // Taken before the handshake, so a shutdown also waits for (and then
        // signals) connections still negotiating TLS.
        let watcher = graceful.watcher();
        let scheme = if tls.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        };
        if tls.is_none() && !proxy_protocol {
            let (h, closing) = (handler.clone(), stop.closing.clone());
            let svc = service_fn(move |req| respond(&h, peer, scheme, &closing, req));
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            tokio::spawn(finish(watcher.watch(conn), peer));
            continue;
        }
        let (h, closing, tls, builder) = (
            handler.clone(),
            stop.closing.clone(),
            tls.clone(),
            builder.clone(),
        );
        tokio::spawn(async move {
            let client = if proxy_protocol {
                match crate::proxy_protocol::read_header(&mut stream, HANDSHAKE_TIMEOUT).await {
                    Ok(named) => named.unwrap_or(peer),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection refused");
                        return;
                    }
                }
            } else {
                peer
            };
            let svc = service_fn(move |req| respond(&h, client, scheme, &closing, req));
            let Some(acceptor) = tls else {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .into_owned();
                return finish(watcher.watch(conn), client).await;
            };
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %client, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %client, "TLS handshake timed out");
                        return;
                    }
                };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            finish(watcher.watch(conn), client).await;
        });
    }
    graceful
}

/// Runs the handler on one request: marks it with its scheme, and once the
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
    mut req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + use<F, Fut>
where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    if scheme == Scheme::Https {
        req.extensions_mut().insert(Scheme::Https);
    }
    let http1 = req.version() < Version::HTTP_2;
    let closing = closing.clone();
    handler(peer, req).map(move |resp| {
        resp.map(|mut resp| {
            // Read at answer time: a request that began before the stop still
            // tells its client to move on.
            if http1 && closing.load(Ordering::Relaxed) {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        })
    })
}

/// Resolves once the stop has been signalled (at once if it already was).
async fn until_stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

async fn finish<C, E>(conn: C, peer: SocketAddr)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Waits for the connections `graceful` watches to end. For `linger` they may
/// close on their own (HTTP/1 clients are told `Connection: close` with their next
/// response); then hyper shuts the rest down gracefully (idle HTTP/1 connections
/// close, HTTP/2 gets GOAWAY). True when all ended before `grace` ran out.
pub async fn drain(graceful: GracefulShutdown, linger: Duration, grace: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    let linger_until = tokio::time::Instant::now() + linger.min(grace);
    while graceful.count() > 0 && tokio::time::Instant::now() < linger_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_ok()
}
