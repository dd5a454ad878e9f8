//! The pooled, kept-alive HTTP clients to the backends, and the classification of
//! their failures. Choosing *which* backend and address is the request path's job;
//! this module talks to the address it is given, within the route's timeouts.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::replay::UpBody;

/// Builds clients, one per distinct connect timeout, so that every route with the
/// same timeout shares one connection pool.
#[derive(Default)]
pub struct Upstream {
    clients: Mutex<HashMap<Duration, Client<HttpConnector, UpBody>>>,
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
    /// The shared client whose connections give up connecting after `connect_timeout`.
    pub fn client(&self, connect_timeout: Duration) -> Client<HttpConnector, UpBody> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_keepalive(Some(Duration::from_secs(60)));
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_timer(TokioTimer::new())
                    .pool_max_idle_per_host(1024)
                    .build(connector)
            })
            .clone()
    }
}

/// Sends `req` (its URI already absolute) and waits for the response head, at most
/// `head_timeout`.
pub async fn send(
    client: &Client<HttpConnector, UpBody>,
    req: http::Request<UpBody>,
    head_timeout: Duration,
) -> Result<http::Response<Incoming>, (FailureKind, String)> {
    match tokio::time::timeout(head_timeout, client.request(req)).await {
        Err(_) => Err((
            FailureKind::Timeout,
            format!("no response head within {head_timeout:?}"),
        )),
        Ok(r) => r.map_err(|e| (classify(&e), describe(&e))),
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

/// The error chain on one line, for logs. Contains no request data.
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
