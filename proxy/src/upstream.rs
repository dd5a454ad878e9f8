//! The kept-alive HTTP/1.1 connections to the backends, pooled per address, and the
//! classification of their failures. Choosing *which* backend and address is the
//! request path's job; this module talks to the address it is given, within the
//! route's timeouts.
//!
//! The pool, per address: a stack of idle connections (the most recently used
//! first, so a burst's extra connections age out at the bottom), and at most
//! [`MAX_CONNECTING`] connects under way. A request takes an idle connection, or
//! opens one when a connect slot is free, or else waits for whichever comes first:
//! a connection coming free (handed over directly) or a slot. A burst of requests
//! therefore reuses the connections its first requests free instead of opening one
//! per request, which keeps the backends' accept queues and the proxy's memory in
//! proportion to the work. A failed connect fails the requests waiting on that
//! address at once, so the request path can retry elsewhere without waiting.
//!
//! A connection goes back to the pool when its response body has been read to the
//! end ([`Lease`]); one whose response was abandoned is closed instead. A request
//! that a reused connection never sent (the backend closed it while idle) is sent on
//! the next one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::Authority;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::oneshot;

use cutover_config::UpstreamTls;

use crate::connect::{Connector, TlsSetupError};
use crate::replay::UpBody;

/// The connections of one kind of upstream: plain or TLS with one SNI name.
pub type UpClient = Arc<Client>;

/// Connect timeout, and the TLS setting with its server name.
type ClientKey = (Duration, Option<(UpstreamTls, String)>);

/// Idle connections kept per address at most; more are closed when they come free.
const MAX_IDLE_PER_ADDR: usize = 1024;
/// An idle connection unused this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections are checked for age and for a close by the backend.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Builds clients, one per distinct connect timeout and TLS setting, so that every
/// route with the same settings shares one pool.
#[derive(Default)]
pub struct Upstream {
    clients: Mutex<HashMap<ClientKey, UpClient>>,
}

/// Connects to upstream addresses and keeps their idle connections.
pub struct Client {
    connector: Connector,
    /// By `ip:port`. Keyed by the string: `Authority` hashes byte by byte.
    pools: Mutex<HashMap<Box<str>, Pool>>,
}

/// One address's connections.
#[derive(Default)]
struct Pool {
    idle: Vec<Idle>,
    /// Connects under way.
    connecting: usize,
    /// Requests waiting for a connection or a connect slot, oldest first.
    waiters: VecDeque<oneshot::Sender<Handoff>>,
}

struct Idle {
    tx: SendRequest<UpBody>,
    since: Instant,
}

/// Idle connections looked at for one that is ready now.
const READY_SCAN: usize = 8;

impl Pool {
    /// The most recently used idle connection that is open, preferring one among
    /// the top few that is ready now: a connection handed back the moment its
    /// response ended may still be finishing that exchange, and waiting for it
    /// would delay this request behind its task.
    fn take_idle(&mut self) -> Option<SendRequest<UpBody>> {
        loop {
            let n = self.idle.len();
            let top = n.checked_sub(1)?;
            let k = (n.saturating_sub(READY_SCAN)..n)
                .rev()
                .find(|&k| self.idle[k].tx.is_ready())
                .unwrap_or(top);
            let i = self.idle.remove(k);
            if !i.tx.is_closed() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.tx);
            }
        }
    }
}

/// What a waiting request is given.
enum Handoff {
    Conn(SendRequest<UpBody>),
    /// A connect slot: dropped unused (the receiver gone), it passes on.
    Slot(Slot),
    /// The connect that was under way failed: so would this request's.
    Failed(String),
}

/// What a request does next.
enum Next {
    Reuse(SendRequest<UpBody>),
    Connect(Slot),
    Wait(oneshot::Receiver<Handoff>),
}

/// A counted connect slot. Dropping it (connected, failed, or the request gone)
/// passes it to the next waiter.
struct Slot {
    client: UpClient,
    authority: Authority,
    failed: Option<String>,
    /// False once the pool took the slot back itself.
    armed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.client
                .connect_done(&self.authority, self.failed.take());
        }
    }
}

/// Connects under way per address at most; more requests wait for one of them, or
/// for a connection coming free. With 500 clients starting at once at 10k req/s
/// (`bench/proxy.sh`), 4 opened about 100 upstream connections where 16 opened about
/// 200 and an unlimited pool about 450, each costing the backend an accept and the
/// proxy about 25 KB; a connect slot frees within one round trip, so the pool still
/// grows as fast as 4 connects per round trip when the load needs it.
const MAX_CONNECTING: usize = 4;

/// A connection lent to one request. [`Lease::release`] once the response body
/// has been read to the end puts it back; dropping it closes the connection.
pub struct Lease {
    client: UpClient,
    authority: Authority,
    tx: SendRequest<UpBody>,
}

impl Lease {
    pub fn release(self) {
        self.client.put(self.authority, self.tx);
    }
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

/// A failed call.
#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    /// The cause on one line, for the log. Contains no request data.
    pub detail: String,
    /// The request waited for another request's connect, which failed: one failed
    /// connect, however many requests were waiting on it, is one strike against the
    /// address's health.
    pub shared: bool,
}

impl Failure {
    fn new(kind: FailureKind, detail: String) -> Self {
        Failure {
            kind,
            detail,
            shared: false,
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
        let client = Arc::new(Client {
            connector: Connector::new(http, tls)?,
            pools: Mutex::default(),
        });
        // Outside a runtime (unit tests building state) there is nothing to sweep.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&client)));
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Sends `req` (its URI in origin form, its Host header set) to `authority` and
/// waits for the response head, at most `head_timeout` in all.
pub async fn send(
    client: &UpClient,
    authority: &Authority,
    req: http::Request<UpBody>,
    head_timeout: Duration,
) -> Result<(http::Response<Incoming>, Lease), Failure> {
    match tokio::time::timeout(head_timeout, client.request(authority, req)).await {
        Err(_) => Err(Failure::new(
            FailureKind::Timeout,
            format!("no response head within {head_timeout:?}"),
        )),
        Ok(r) => r,
    }
}

impl Client {
    async fn request(
        self: &Arc<Self>,
        authority: &Authority,
        mut req: http::Request<UpBody>,
    ) -> Result<(http::Response<Incoming>, Lease), Failure> {
        let slot = loop {
            let mut tx = match self.next(authority) {
                Next::Reuse(tx) => tx,
                Next::Connect(slot) => break slot,
                Next::Wait(rx) => match rx.await {
                    Ok(Handoff::Conn(tx)) => tx,
                    Ok(Handoff::Slot(slot)) => break slot,
                    Ok(Handoff::Failed(detail)) => {
                        return Err(Failure {
                            kind: FailureKind::Connect,
                            detail,
                            shared: true,
                        });
                    }
                    // The pool never drops a waiter without an answer; try again.
                    Err(_) => continue,
                },
            };
            if tx.ready().await.is_err() {
                continue; // Closed since it was put back.
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(authority, tx))),
                Err(mut e) => match e.take_message() {
                    // Never sent: safe on another connection, whatever the method.
                    Some(r) => req = r,
                    None => return Err(failure(&e.into_error())),
                },
            }
        };
        let mut tx = self.connect(authority, slot).await?;
        match tx.send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(authority, tx))),
            Err(e) => Err(failure(&e)),
        }
    }

    /// Opens a connection in `slot`, which is freed when this returns.
    async fn connect(
        &self,
        authority: &Authority,
        mut slot: Slot,
    ) -> Result<SendRequest<UpBody>, Failure> {
        let opened = async {
            let io = self
                .connector
                .connect(authority)
                .await
                .map_err(|e| chain(&*e))?;
            http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| chain(&e))
        };
        let (tx, conn) = match opened.await {
            Ok(c) => c,
            Err(cause) => {
                slot.failed = Some(cause.clone());
                return Err(Failure::new(FailureKind::Connect, cause));
            }
        };
        tokio::spawn(async move {
            // A 101 hands the connection over to the tunnel (see `tunnel`).
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %chain(&e), "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    fn lease(self: &Arc<Self>, authority: &Authority, tx: SendRequest<UpBody>) -> Lease {
        Lease {
            client: self.clone(),
            authority: authority.clone(),
            tx,
        }
    }

    fn slot(self: &Arc<Self>, authority: &Authority) -> Slot {
        Slot {
            client: self.clone(),
            authority: authority.clone(),
            failed: None,
            armed: true,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Pool>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection still open, else a connect slot,
    /// else a place in the queue.
    fn next(self: &Arc<Self>, authority: &Authority) -> Next {
        let mut pools = self.lock();
        let pool = match pools.get_mut(authority.as_str()) {
            Some(p) => p,
            None => pools.entry(authority.as_str().into()).or_default(),
        };
        if let Some(tx) = pool.take_idle() {
            return Next::Reuse(tx);
        }
        if pool.connecting < MAX_CONNECTING {
            pool.connecting += 1;
            drop(pools);
            return Next::Connect(self.slot(authority));
        }
        let (tx, rx) = oneshot::channel();
        pool.waiters.push_back(tx);
        Next::Wait(rx)
    }

    /// A connection came free: to the oldest waiter still waiting, else idle.
    fn put(&self, authority: Authority, mut tx: SendRequest<UpBody>) {
        if tx.is_closed() {
            return;
        }
        let mut pools = self.lock();
        let pool = match pools.get_mut(authority.as_str()) {
            Some(p) => p,
            None => pools.entry(authority.as_str().into()).or_default(),
        };
        while let Some(w) = pool.waiters.pop_front() {
            match w.send(Handoff::Conn(tx)) {
                Ok(()) => return,
                Err(Handoff::Conn(back)) => tx = back,
                Err(_) => return,
            }
        }
        if pool.idle.len() < MAX_IDLE_PER_ADDR {
            pool.idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// A connect ended. After a failure every waiter fails too; otherwise the slot
    /// goes to the oldest waiter still waiting.
    fn connect_done(self: &Arc<Self>, authority: &Authority, failed: Option<String>) {
        let mut pools = self.lock();
        let Some(pool) = pools.get_mut(authority.as_str()) else {
            return;
        };
        pool.connecting = pool.connecting.saturating_sub(1);
        match failed {
            Some(cause) => {
                for w in pool.waiters.drain(..) {
                    let _ = w.send(Handoff::Failed(cause.clone()));
                }
            }
            None => {
                while let Some(w) = pool.waiters.pop_front() {
                    pool.connecting += 1;
                    match w.send(Handoff::Slot(self.slot(authority))) {
                        Ok(()) => return,
                        Err(Handoff::Slot(mut back)) => {
                            // Under the lock: take it back here, not in its drop.
                            back.armed = false;
                            pool.connecting -= 1;
                        }
                        Err(_) => return,
                    }
                }
            }
        }
    }

    /// Closes idle connections past their age or already closed by the backend,
    /// and forgets addresses with nothing left.
    fn sweep(&self) {
        let mut pools = self.lock();
        for pool in pools.values_mut() {
            pool.idle
                .retain(|i| !i.tx.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
            pool.waiters.retain(|w| !w.is_closed());
        }
        pools.retain(|_, p| !p.idle.is_empty() || p.connecting > 0 || !p.waiters.is_empty());
    }

    /// Idle connections kept, over all addresses.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().values().map(|p| p.idle.len()).sum()
    }
}

async fn sweep(client: Weak<Client>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(client) = client.upgrade() else {
            return;
        };
        client.sweep();
    }
}

fn failure(e: &hyper::Error) -> Failure {
    Failure::new(classify(e), chain(e))
}

fn classify(e: &hyper::Error) -> FailureKind {
    if e.is_timeout() {
        return FailureKind::Timeout;
    }
    if e.is_parse() || e.is_parse_status() {
        return FailureKind::Protocol;
    }
    if let Some(io) = io_cause(e) {
        return match io.kind() {
            std::io::ErrorKind::TimedOut => FailureKind::Timeout,
            _ => FailureKind::Reset,
        };
    }
    FailureKind::Reset
}

fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = s.source();
    }
    None
}

/// The error chain on one line, for logs. Contains no request data.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests;
