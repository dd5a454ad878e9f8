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

use cutover_config::UpstreamTls;

use crate::connect::{Connector, TlsSetupError};
use crate::replay::UpBody;

/// A pooled client to one kind of upstream: plain or TLS with one SNI name.
pub type UpClient = Client<Connector, UpBody>;

/// Connect timeout, and the TLS setting with its server name.
type ClientKey = (Duration, Option<(UpstreamTls, String)>);

/// Builds clients, one per distinct connect timeout and TLS setting, so that every
/// route with the same settings shares one connection pool.
#[derive(Default)]
pub struct Upstream {
    clients: Mutex<HashMap<ClientKey, UpClient>>,
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
    /// The shared client whose connections give up connecting after
    /// `connect_timeout`, speaking TLS to `sni` when `tls` is set.
    pub fn client(
        &self,
        connect_timeout: Duration,
        tls: Option<(&UpstreamTls, &str)>,
    ) -> Result<UpClient, TlsSetupError> {
        let key = (
            connect_timeout,
            tls.map(|(t, sni)| (t.clone(), sni.to_string())),
        );
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .build(Connector::new(http, tls)?);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Sends `req` (its URI already absolute) and waits for the response head, at most
/// `head_timeout`.
pub async fn send(
    client: &UpClient,
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
