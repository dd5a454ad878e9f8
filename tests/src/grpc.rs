//! A real gRPC backend and its client: the service `cutover.test.Echo`, spoken in
//! cleartext HTTP/2 (h2c, prior knowledge) as gRPC servers behind a proxy do.
//!
//! The messages, the server routing and the client are written out by hand, the
//! way tonic's code generator would, so nothing needs `protoc`:
//!
//! - `Get(EchoRequest) -> EchoReply`: a read; echoes `text`;
//! - `Put(EchoRequest) -> EchoReply`: a write; echoes `text`, counted apart;
//! - `Watch(WatchRequest) -> stream EchoReply`: `count` replies `interval_ms`
//!   apart, the first at once, each with its index as `text`;
//! - `Slow(SlowRequest) -> EchoReply`: answers after `ms` milliseconds, or with
//!   `DEADLINE_EXCEEDED` once the call's `grpc-timeout` has passed.
//!
//! Every reply's `backend` is the server's name. Every response carries the
//! headers `x-backend` (the name), `x-seen-te` and `x-seen-xff` (the `te` and
//! `x-forwarded-for` the server received; empty when absent).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::backend::ServerThread;
use futures_util::Stream;
use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_prost::ProstCodec;

/// The gRPC service name.
pub const ECHO_SERVICE: &str = "cutover.test.Echo";

/// `Get` and `Put`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// What to echo.
    #[prost(string, tag = "1")]
    pub text: String,
}

/// Every method's reply: who answered and what.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The name of the server that answered.
    #[prost(string, tag = "1")]
    pub backend: String,
    /// The echo; `Watch`'s index; `Slow`'s milliseconds.
    #[prost(string, tag = "2")]
    pub text: String,
}

/// `Watch`'s request: how many replies and how far apart.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct WatchRequest {
    /// Replies to send.
    #[prost(uint32, tag = "1")]
    pub count: u32,
    /// Milliseconds between two replies.
    #[prost(uint32, tag = "2")]
    pub interval_ms: u32,
}

/// `Slow`'s request: how long to take.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct SlowRequest {
    /// Milliseconds before the reply.
    #[prost(uint32, tag = "1")]
    pub ms: u32,
}

/// Counters of the calls a gRPC backend received, and what came with them.
#[derive(Debug, Default)]
pub struct GrpcStats {
    /// `Get` calls (reads).
    pub gets: AtomicU64,
    /// `Put` calls (writes).
    pub puts: AtomicU64,
    /// `Watch` calls.
    pub watches: AtomicU64,
    /// `Slow` calls.
    pub slows: AtomicU64,
    /// The `te` header of the last call (gRPC requires `trailers`).
    pub last_te: Mutex<Option<String>>,
    /// The `x-forwarded-for` header of the last call.
    pub last_xff: Mutex<Option<String>>,
}

impl GrpcStats {
    /// Calls of every method so far.
    pub fn calls(&self) -> u64 {
        [&self.gets, &self.puts, &self.watches, &self.slows]
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum()
    }
}

/// A running gRPC backend; stops (closing all its connections) on drop or
/// [`GrpcBackend::kill`].
pub struct GrpcBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<GrpcStats>,
    server: ServerThread,
}

impl GrpcBackend {
    /// Starts a gRPC backend called `name` on `127.0.0.1:0`.
    pub fn start(name: &str) -> GrpcBackend {
        GrpcBackend::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a gRPC backend on a given loopback address.
    pub fn start_on(name: &str, addr: SocketAddr) -> GrpcBackend {
        let stats = Arc::new(GrpcStats::default());
        let server = EchoServer::new(name, stats.clone());
        let (addr, thread) = ServerThread::start(
            format!("grpc-backend-{name}"),
            addr,
            |listener, stop| async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                tokio::select! {
                    _ = stop => {}
                    _ = serve_grpc(listener, server) => {}
                }
            },
        );
        GrpcBackend {
            name: name.to_string(),
            addr,
            stats,
            server: thread,
        }
    }

    /// Stops accepting and closes every open connection, mid-call or not.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// `Get` calls so far.
    pub fn gets(&self) -> u64 {
        self.stats.gets.load(Ordering::SeqCst)
    }

    /// `Put` calls so far.
    pub fn puts(&self) -> u64 {
        self.stats.puts.load(Ordering::SeqCst)
    }

    /// The `te` header of the last call.
    pub fn last_te(&self) -> Option<String> {
        self.stats.last_te.lock().map(|t| t.clone()).unwrap_or(None)
    }
}

/// Serves `server` over h2c on every connection `listener` accepts, until the
/// future is dropped (each connection runs as its own task on the runtime).
pub async fn serve_grpc(listener: tokio::net::TcpListener, server: EchoServer) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let mut server = server.clone();
                tower_service::Service::call(&mut server, req)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A method's answer, boxed.
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
/// `Watch`'s replies.
type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// The `cutover.test.Echo` service as a tower service over HTTP requests, routing
/// on the path as tonic's generated servers do.
#[derive(Clone, Debug)]
pub struct EchoServer {
    name: Arc<str>,
    stats: Arc<GrpcStats>,
}

impl EchoServer {
    /// A server that answers as `name` and counts into `stats`.
    pub fn new(name: &str, stats: Arc<GrpcStats>) -> EchoServer {
        EchoServer {
            name: name.into(),
            stats,
        }
    }

    /// A reply from this server.
    fn reply(&self, text: String) -> tonic::Response<EchoReply> {
        tonic::Response::new(EchoReply {
            backend: self.name.to_string(),
            text,
        })
    }

    /// `Get`: a read; echoes the text.
    async fn get(
        self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        self.stats.gets.fetch_add(1, Ordering::SeqCst);
        Ok(self.reply(req.into_inner().text))
    }

    /// `Put`: a write; echoes the text.
    async fn put(
        self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        self.stats.puts.fetch_add(1, Ordering::SeqCst);
        Ok(self.reply(req.into_inner().text))
    }

    /// `Watch`: `count` replies, the first at once, then one per interval.
    async fn watch(
        self,
        req: tonic::Request<WatchRequest>,
    ) -> Result<tonic::Response<ReplyStream>, Status> {
        self.stats.watches.fetch_add(1, Ordering::SeqCst);
        let WatchRequest { count, interval_ms } = req.into_inner();
        let interval = Duration::from_millis(u64::from(interval_ms));
        let stream = futures_util::stream::unfold(0u32, move |i| {
            let server = self.clone();
            async move {
                if i >= count {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                Some((Ok(server.reply(i.to_string()).into_inner()), i + 1))
            }
        });
        Ok(tonic::Response::new(Box::pin(stream) as ReplyStream))
    }

    /// `Slow`: the reply after `ms`, unless the call's `grpc-timeout` comes first.
    async fn slow(
        self,
        req: tonic::Request<SlowRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        self.stats.slows.fetch_add(1, Ordering::SeqCst);
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let ms = req.into_inner().ms;
        let wanted = Duration::from_millis(u64::from(ms));
        match deadline {
            Some(deadline) if deadline < wanted => {
                tokio::time::sleep(deadline).await;
                Err(Status::deadline_exceeded(format!(
                    "{}: the call's deadline passed before its {ms} ms",
                    self.name
                )))
            }
            _ => {
                tokio::time::sleep(wanted).await;
                Ok(self.reply(ms.to_string()))
            }
        }
    }
}

impl NamedService for EchoServer {
    const NAME: &'static str = ECHO_SERVICE;
}

impl<B> tower_service::Service<http::Request<B>> for EchoServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let (te, xff) = (header("te"), header("x-forwarded-for"));
        if let Ok(mut last) = self.stats.last_te.lock() {
            last.clone_from(&te);
        }
        if let Ok(mut last) = self.stats.last_xff.lock() {
            last.clone_from(&xff);
        }
        let server = self.clone();
        Box::pin(async move {
            let name = server.name.clone();
            let path = req.uri().path().to_string();
            let method = path
                .strip_prefix('/')
                .and_then(|p| p.strip_prefix(ECHO_SERVICE))
                .and_then(|p| p.strip_prefix('/'));
            let mut resp = match method {
                Some("Get") => prost().unary(Get(server), req).await,
                Some("Put") => prost().unary(Put(server), req).await,
                Some("Slow") => prost().unary(Slow(server), req).await,
                Some("Watch") => prost().server_streaming(Watch(server), req).await,
                _ => Status::unimplemented(format!("no method {path}")).into_http(),
            };
            let value = |v: Option<&str>| {
                HeaderValue::from_str(v.unwrap_or_default()).unwrap_or(HeaderValue::from_static(""))
            };
            let h = resp.headers_mut();
            h.insert("x-backend", value(Some(&name)));
            h.insert("x-seen-te", value(te.as_deref()));
            h.insert("x-seen-xff", value(xff.as_deref()));
            Ok(resp)
        })
    }
}

/// A gRPC call handler with protobuf messages of the types its method wants.
fn prost<T, U>() -> Grpc<ProstCodec<T, U>>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    Grpc::new(ProstCodec::default())
}

/// Defines a unary method: a type that hands its request to an [`EchoServer`]
/// method.
macro_rules! unary_method {
    ($name:ident, $request:ty, $method:ident) => {
        #[doc = concat!("The `", stringify!($name), "` method.")]
        struct $name(EchoServer);

        impl UnaryService<$request> for $name {
            type Response = EchoReply;
            type Future = BoxFuture<tonic::Response<EchoReply>>;

            fn call(&mut self, request: tonic::Request<$request>) -> Self::Future {
                Box::pin(self.0.clone().$method(request))
            }
        }
    };
}

unary_method!(Get, EchoRequest, get);
unary_method!(Put, EchoRequest, put);
unary_method!(Slow, SlowRequest, slow);

/// The `Watch` method.
struct Watch(EchoServer);

impl ServerStreamingService<WatchRequest> for Watch {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<tonic::Response<ReplyStream>>;

    fn call(&mut self, request: tonic::Request<WatchRequest>) -> Self::Future {
        Box::pin(self.0.clone().watch(request))
    }
}

/// Reads a `grpc-timeout` value: up to 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A client of `cutover.test.Echo` on one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct EchoClient {
    inner: tonic::client::Grpc<Channel>,
}

/// Connects over h2c to `proxy`, with `host` as every call's `:authority` (so a
/// proxy routes by it). Panics when the connection fails; see
/// [`EchoClient::connect`].
pub async fn grpc_client(proxy: SocketAddr, host: &str) -> EchoClient {
    EchoClient::connect(proxy, host)
        .await
        .expect("an HTTP/2 connection for gRPC")
}

impl EchoClient {
    /// Connects over h2c to `addr`, with `host` as every call's `:authority`.
    pub async fn connect(
        addr: SocketAddr,
        host: &str,
    ) -> Result<EchoClient, tonic::transport::Error> {
        let origin: http::Uri = format!("http://{host}")
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("http://localhost"));
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .origin(origin)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(EchoClient {
            inner: tonic::client::Grpc::new(channel),
        })
    }

    /// `Get`: a read that echoes `text`.
    pub async fn get(&mut self, text: &str) -> tonic::Result<tonic::Response<EchoReply>> {
        let req = EchoRequest { text: text.into() };
        self.unary("Get", tonic::Request::new(req)).await
    }

    /// `Put`: a write that echoes `text`.
    pub async fn put(&mut self, text: &str) -> tonic::Result<tonic::Response<EchoReply>> {
        let req = EchoRequest { text: text.into() };
        self.unary("Put", tonic::Request::new(req)).await
    }

    /// `Watch`: `count` replies `interval_ms` apart, as a stream.
    pub async fn watch(
        &mut self,
        count: u32,
        interval_ms: u32,
    ) -> tonic::Result<tonic::Response<Streaming<EchoReply>>> {
        self.ready().await?;
        let req = tonic::Request::new(WatchRequest { count, interval_ms });
        self.inner
            .server_streaming(req, path("Watch"), ProstCodec::default())
            .await
    }

    /// `Slow`: a reply after `ms` milliseconds, with `deadline` as the call's
    /// `grpc-timeout`. Past the deadline the status is `DEADLINE_EXCEEDED`, whether
    /// the server said so or this client gave up first (its own timer runs out at
    /// the same moment; its message then says so).
    pub async fn slow(
        &mut self,
        ms: u32,
        deadline: Duration,
    ) -> tonic::Result<tonic::Response<EchoReply>> {
        let mut req = tonic::Request::new(SlowRequest { ms });
        req.set_timeout(deadline);
        self.unary("Slow", req).await.map_err(|s| {
            if s.code() == Code::Cancelled && s.message() == tonic::TimeoutExpired(()).to_string() {
                Status::deadline_exceeded("the deadline passed on the client")
            } else {
                s
            }
        })
    }

    /// Sends one unary call to `method`.
    async fn unary<M, R>(
        &mut self,
        method: &'static str,
        req: tonic::Request<M>,
    ) -> tonic::Result<tonic::Response<R>>
    where
        M: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.ready().await?;
        self.inner
            .unary(req, path(method), ProstCodec::default())
            .await
    }

    /// Waits until the connection can take a call.
    async fn ready(&mut self) -> tonic::Result<()> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("the connection is not ready: {e}")))
    }
}

/// The HTTP path of one of the service's methods.
fn path(method: &str) -> http::uri::PathAndQuery {
    format!("/{ECHO_SERVICE}/{method}")
        .parse()
        .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/"))
}

/// What a hand-built gRPC call got back: the HTTP status, the response headers and
/// the trailers (none for a trailers-only answer).
pub struct RawReply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub trailers: Option<http::HeaderMap>,
}

impl RawReply {
    /// `grpc-status`, from the trailers or, in a trailers-only answer, the headers.
    pub fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }
}

/// Calls `cutover.test.Echo/{method}` with one prost `message` over a new
/// cleartext HTTP/2 connection to `addr`, with `host` as `:authority` and the
/// `extra` headers (e.g. `grpc-timeout`). Sent by hand, so nothing between the test
/// and the wire (no client-side deadline timer, no status mapping) shapes what the
/// test sees. Panics when there is no answer within 10 s.
pub async fn grpc_raw_call(
    addr: SocketAddr,
    host: &str,
    method: &str,
    message: &impl prost::Message,
    extra: &[(&str, &str)],
) -> RawReply {
    use bytes::BufMut;
    use http_body_util::BodyExt;
    let message = message.encode_to_vec();
    let mut body = bytes::BytesMut::with_capacity(5 + message.len());
    body.put_u8(0);
    body.put_u32(u32::try_from(message.len()).expect("a small message"));
    body.put_slice(&message);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect for a gRPC call");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://{host}/cutover.test.Echo/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(body.freeze()))
        .expect("a gRPC request");
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("an answer within 10 s")
        .expect("a response head");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let trailers = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the whole body within 10 s")
        .expect("the body")
        .trailers()
        .cloned();
    RawReply {
        status,
        headers,
        trailers,
    }
}
