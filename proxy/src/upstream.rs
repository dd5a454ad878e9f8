//! The pooled, kept-alive HTTP client to the backends, and the classification of its
//! failures. Choosing *which* backend is the request path's job; this module only
//! talks to an address it is given.

use std::error::Error as _;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The client shared by every request.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Incoming>,
}

/// How a call to a backend failed. The request path decides from this alone whether
/// a retry is safe, never from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection was made: nothing was sent, a retry is always safe.
    Connect,
    /// The backend did not answer in time.
    Timeout,
    /// The connection closed or reset before a complete response.
    Reset,
    /// The backend spoke something other than valid HTTP.
    Protocol,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Protocol => "protocol",
        }
    }
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        Upstream { client }
    }

    /// Sends `req` (its URI already absolute) and waits for the response head.
    pub async fn send(
        &self,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<Incoming>, (FailureKind, String)> {
        self.client
            .request(req)
            .await
            .map_err(|e| (classify(&e), describe(&e)))
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> FailureKind {
    if e.is_connect() {
        // A connect timeout is still "nothing was sent".
        return FailureKind::Connect;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return FailureKind::Timeout;
            }
            if h.is_parse() || h.is_parse_status() {
                return FailureKind::Protocol;
            }
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return FailureKind::Reset;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::TimedOut => FailureKind::Timeout,
                _ => FailureKind::Reset,
            };
        }
        source = s.source();
    }
    FailureKind::Reset
}

/// The error chain on one line, for logs and 502 bodies. Contains no request data.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
