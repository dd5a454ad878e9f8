//! A small pooled HTTP client for tests: send a request to an address with a given
//! Host, get status, headers and body back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A keep-alive client.
#[derive(Clone)]
pub struct Client {
    inner: Hyper<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// How long one exchange may take unless [`Client::with_timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `x-cutover-backend` header, or "" when absent.
    pub fn backend(&self) -> &str {
        self.header("x-cutover-backend")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let inner = Hyper::builder(TokioExecutor::new()).build(HttpConnector::new());
        Client {
            inner,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another limit per exchange (e.g. for a browser that
    /// takes long to launch on a busy machine).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A client whose connections come from `local` (e.g. 127.0.0.7), to test
    /// client-IP stickiness from many addresses on loopback.
    pub fn from_ip(local: std::net::IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(local));
        Client {
            timeout: DEFAULT_TIMEOUT,
            inner: Hyper::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `method path` to `addr` with `Host: host` and extra headers. Transport
    /// errors and the timeout (10 s unless set) are returned as `Err` with a description.
    pub async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        let limit = self.timeout;
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| format!("timed out after {}s", limit.as_secs()))?
    }

    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
        self.send(addr, Method::GET, host, path, &[], "").await
    }
}

/// Sends one GET over HTTP/2 with prior knowledge (h2c) to `addr`, with `host` in the
/// `:authority` pseudo-header, as a gRPC or modern client would.
pub async fn h2_get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
    h2_get_with(addr, host, path, &[]).await
}

/// [`h2_get`] with `headers` (a name may repeat, as HTTP/2 allows for cookies).
pub async fn h2_get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder().uri(format!("http://{host}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
