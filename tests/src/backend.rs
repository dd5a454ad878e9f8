//! A real HTTP backend that answers with its name. It runs on its own thread and
//! runtime, so killing it closes every socket it holds, as a dying process would.
//!
//! Paths it understands: `/slow/{ms}` answers after that many milliseconds;
//! `/bytes/{n}` answers with a body of `n` zero bytes, streamed; `/healthz` answers
//! as [`Backend::health`] and [`Backend::health_host`] say; any other path answers
//! at once. A WebSocket handshake (`Upgrade: websocket`) on any
//! path gets its `101` and then an echo: each text message comes back as
//! `{name}: {message}`. Every answer carries `x-backend: {name}` and echoes
//! what the proxy forwarded (`x-seen-host`, `x-seen-xff`, `x-seen-proto`,
//! `x-seen-method`, `x-seen-version`, `x-seen-forwarded-host`, `x-seen-forwarded`,
//! `x-seen-request-id`, `x-seen-cookie`, `x-seen-traceparent`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::oneshot;

/// Counters of what a backend received, and the faults it is told to inject.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub requests: AtomicU64,
    pub writes: AtomicU64,
    /// When non-zero, every answer (but `/healthz`) has this status.
    pub fail_status: AtomicU16,
    /// When set, requests are read in full and the connection is then closed
    /// without an answer.
    pub reset_after_read: AtomicBool,
    /// When non-zero, one answer in `fail_one_in` (but `/healthz`) has the status
    /// `fail_one_in_status`: those whose count in `requests` is a multiple of it.
    pub fail_one_in: AtomicU64,
    pub fail_one_in_status: AtomicU16,
    /// When non-zero, `/healthz` answers with this status.
    pub health_status: AtomicU16,
    /// When set, `/healthz` with any other Host answers `421 Misdirected Request`.
    pub health_host: std::sync::Mutex<Option<String>>,
    pub health_checks: AtomicU64,
    /// WebSocket handshakes answered, and echoes open now.
    pub websockets: AtomicU64,
    pub websockets_open: AtomicU64,
    /// `/events` sends its first event, then waits for this before the last.
    pub events_gate: tokio::sync::Notify,
    /// Body bytes `/upload` received.
    pub uploaded: AtomicU64,
    /// Connections accepted, and those still open (the peer has not closed them).
    pub connections: AtomicU64,
    pub connections_open: AtomicU64,
}

/// Counts a connection open for as long as it lives.
struct OpenConnection(Arc<BackendStats>);

impl OpenConnection {
    fn new(stats: Arc<BackendStats>) -> Self {
        stats.connections.fetch_add(1, Ordering::SeqCst);
        stats.connections_open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running backend; stops (closing all its connections) on drop or [`Backend::kill`].
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<BackendStats>,
    server: ServerThread,
}

impl Backend {
    /// Starts a backend called `name` on `127.0.0.1:0`.
    pub fn start(name: &str) -> Backend {
        Backend::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a backend on a given loopback address (e.g. 127.0.0.2 and the port of
    /// another backend, to stand behind one DNS name).
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        Backend::start_with(name, addr, None)
    }

    /// Starts a backend that speaks HTTPS with the PEM `cert` chain and `key`.
    pub fn start_tls(name: &str, cert_pem: &str, key_pem: &str) -> Backend {
        Backend::start_tls_alpn(name, cert_pem, key_pem, &[b"http/1.1"])
    }

    /// Like [`Backend::start_tls`], offering `alpn` (e.g. `h2` and `http/1.1`).
    pub fn start_tls_alpn(name: &str, cert_pem: &str, key_pem: &str, alpn: &[&[u8]]) -> Backend {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("certificate and key");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        Backend::start_with(name, SocketAddr::from(([127, 0, 0, 1], 0)), Some(acceptor))
    }

    fn start_with(name: &str, addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let stats = Arc::new(BackendStats::default());
        let (thread_name, thread_stats) = (name.to_string(), stats.clone());
        let (addr, server) =
            ServerThread::start(format!("backend-{name}"), addr, move |l, stop| {
                serve(l, thread_name, thread_stats, stop, tls)
            });
        Backend {
            name: name.to_string(),
            addr,
            stats,
            server,
        }
    }

    /// Stops accepting and closes every open connection, mid-request or not.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub fn writes(&self) -> u64 {
        self.stats.writes.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Connections open now: accepted and not yet closed by the peer.
    pub fn connections_open(&self) -> u64 {
        self.stats.connections_open.load(Ordering::SeqCst)
    }

    /// Answer everything (but `/healthz`) with `status`; 0 turns it off.
    pub fn fail_with(&self, status: u16) {
        self.stats.fail_status.store(status, Ordering::SeqCst);
    }

    /// Answer one request in `n` (but `/healthz`) with `status`, the others as
    /// usual; `n` = 0 turns it off.
    pub fn fail_one_in(&self, n: u64, status: u16) {
        self.stats
            .fail_one_in_status
            .store(status, Ordering::SeqCst);
        self.stats.fail_one_in.store(n, Ordering::SeqCst);
    }

    /// Read each request, then close the connection without answering.
    pub fn reset_after_read(&self, on: bool) {
        self.stats.reset_after_read.store(on, Ordering::SeqCst);
    }

    /// Make `/healthz` answer `status`; 0 means 200.
    pub fn health(&self, status: u16) {
        self.stats.health_status.store(status, Ordering::SeqCst);
    }

    /// Make `/healthz` answer `421` unless its Host is `host` (`None`: any Host).
    pub fn health_host(&self, host: Option<&str>) {
        *self.stats.health_host.lock().expect("health_host lock") = host.map(str::to_string);
    }
}

/// A harness server on its own thread and runtime, so that killing it closes
/// every socket it holds, as a dying process would. Stops on drop.
pub(crate) struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Binds `addr` and runs `serve(listener, stop)` on a thread called `label`;
    /// returns the bound address. `serve` returns once `stop` fires.
    pub(crate) fn start<F, Fut>(
        label: String,
        addr: SocketAddr,
        serve: F,
    ) -> (SocketAddr, ServerThread)
    where
        F: FnOnce(std::net::TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let listener = std::net::TcpListener::bind(addr).expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(label)
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("server runtime");
                rt.block_on(serve(listener, stop_rx));
                // Dropping the runtime aborts every connection task: sockets close.
                rt.shutdown_background();
            })
            .expect("spawn server thread");
        let server = ServerThread {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        (addr, server)
    }

    /// Stops accepting and closes every open connection.
    pub(crate) fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve(
    listener: std::net::TcpListener,
    name: String,
    stats: Arc<BackendStats>,
    mut stop: oneshot::Receiver<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let name: Arc<str> = name.into();
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let name = name.clone();
        let stats = stats.clone();
        let tls = tls.clone();
        let open = OpenConnection::new(stats.clone());
        tokio::spawn(async move {
            let _open = open;
            let svc = service_fn(move |req| respond(req, name.clone(), stats.clone()));
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                }
                Some(acceptor) => {
                    if let Ok(tls_stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(tls_stream), svc)
                            .await;
                    }
                }
            }
        });
    }
}

/// The connection is closed without an answer.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset after read (injected)")
    }
}

impl std::error::Error for Reset {}

type Streamed = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// `/events`: server-sent events, the first at once and the last once
/// `events_gate` is notified; `/upload`: counts the body as it streams in (never
/// holding it) and answers with the count; anything else: [`answer`].
async fn respond(
    req: Request<Incoming>,
    name: Arc<str>,
    stats: Arc<BackendStats>,
) -> Result<Response<Streamed>, Box<dyn std::error::Error + Send + Sync>> {
    match req.uri().path() {
        "/events" => {
            let first = Bytes::from_static(b"data: first\n\n");
            let stream = futures_util::stream::unfold(0u8, move |n| {
                let (stats, first) = (stats.clone(), first.clone());
                async move {
                    match n {
                        0 => Some((first, 1)),
                        1 => {
                            stats.events_gate.notified().await;
                            Some((Bytes::from_static(b"data: last\n\n"), 2))
                        }
                        _ => None,
                    }
                }
            })
            .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)));
            let mut resp = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(stream)));
            resp.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            Ok(resp)
        }
        p if p.starts_with("/bytes/") => {
            let n: u64 = p["/bytes/".len()..].parse()?;
            Ok(zeros(n))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                if let Some(d) = frame?.data_ref() {
                    n += d.len() as u64;
                    stats.uploaded.fetch_add(d.len() as u64, Ordering::SeqCst);
                }
            }
            Ok(Response::new(
                Full::new(Bytes::from(format!("{n}\n"))).boxed(),
            ))
        }
        _ => Ok(answer(req, name, stats).await?.map(|b| b.boxed())),
    }
}

/// A response of `n` zero bytes with its `Content-Length`, streamed in 64 KiB
/// chunks as the peer takes them (never held whole).
fn zeros(n: u64) -> Response<Streamed> {
    static ZEROS: [u8; 65536] = [0; 65536];
    let chunks = futures_util::stream::unfold(n, |left| async move {
        let k = left.min(ZEROS.len() as u64);
        (k > 0).then(|| {
            let chunk = Bytes::from_static(&ZEROS[..k as usize]);
            (
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk)),
                left - k,
            )
        })
    });
    let mut resp = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(chunks)));
    resp.headers_mut()
        .insert("content-length", HeaderValue::from(n));
    resp
}

/// Answers a WebSocket handshake with `101` and echoes on the upgraded
/// connection until the client closes it (or the backend is killed).
fn websocket(
    mut req: Request<Incoming>,
    name: Arc<str>,
    stats: Arc<BackendStats>,
) -> Response<Full<Bytes>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let accept = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    stats.websockets.fetch_add(1, Ordering::SeqCst);
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else {
            return;
        };
        stats.websockets_open.fetch_add(1, Ordering::SeqCst);
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(io),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::text(format!("{name}: {}", t.as_str())),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
        stats.websockets_open.fetch_sub(1, Ordering::SeqCst);
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    stats: Arc<BackendStats>,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        return Ok(websocket(req, name, stats));
    }
    if req.uri().path() == "/healthz" {
        stats.health_checks.fetch_add(1, Ordering::SeqCst);
        let mut code = stats.health_status.load(Ordering::SeqCst);
        let misdirected = stats
            .health_host
            .lock()
            .expect("health_host lock")
            .as_deref()
            .is_some_and(|want| {
                req.headers()
                    .get("host")
                    .is_none_or(|h| h.as_bytes() != want.as_bytes())
            });
        if misdirected {
            code = 421;
        }
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        if code != 0 {
            *resp.status_mut() = http::StatusCode::from_u16(code)?;
        }
        return Ok(resp);
    }
    let seq = stats.requests.fetch_add(1, Ordering::SeqCst);
    if !matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    ) {
        stats.writes.fetch_add(1, Ordering::SeqCst);
    }
    let path = req.uri().path().to_string();
    let echo = |h: &str| {
        req.headers()
            .get(h)
            .cloned()
            .unwrap_or(HeaderValue::from_static(""))
    };
    // HTTP/2 carries the host in `:authority`.
    let host = match req.uri().authority() {
        Some(a) if !req.headers().contains_key("host") => {
            HeaderValue::from_str(a.as_str()).unwrap_or(HeaderValue::from_static(""))
        }
        _ => echo("host"),
    };
    let version = HeaderValue::from_str(&format!("{:?}", req.version()))
        .unwrap_or(HeaderValue::from_static(""));
    let xff = echo("x-forwarded-for");
    let proto = echo("x-forwarded-proto");
    let seen: Vec<(&'static str, HeaderValue)> = [
        ("x-seen-forwarded-host", "x-forwarded-host"),
        ("x-seen-forwarded", "forwarded"),
        ("x-seen-request-id", "x-request-id"),
        ("x-seen-cookie", "cookie"),
        ("x-seen-traceparent", "traceparent"),
    ]
    .into_iter()
    .map(|(to, from)| (to, echo(from)))
    .collect();
    let method =
        HeaderValue::from_str(req.method().as_str()).unwrap_or(HeaderValue::from_static("?"));
    // Read the whole request body before answering, as an application would.
    let _ = req.into_body().collect().await?;
    if stats.reset_after_read.load(Ordering::SeqCst) {
        return Err(Box::new(Reset));
    }
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(format!("{name}\n"))));
    let mut fail = stats.fail_status.load(Ordering::SeqCst);
    let one_in = stats.fail_one_in.load(Ordering::SeqCst);
    if fail == 0 && one_in != 0 && seq.is_multiple_of(one_in) {
        fail = stats.fail_one_in_status.load(Ordering::SeqCst);
    }
    if fail != 0 {
        *resp.status_mut() = http::StatusCode::from_u16(fail)?;
    }
    let h = resp.headers_mut();
    h.insert(
        "x-backend",
        HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("?")),
    );
    h.insert("x-seen-host", host);
    h.insert("x-seen-xff", xff);
    h.insert("x-seen-proto", proto);
    h.insert("x-seen-method", method);
    h.insert("x-seen-version", version);
    for (name, v) in seen {
        h.insert(name, v);
    }
    Ok(resp)
}
