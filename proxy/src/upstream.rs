//! The kept-alive connections to the backends, pooled per address, and the
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
//!
//! HTTP/2 backends (`protocol = "h2"`, or `"auto"` when ALPN picks `h2`) get one
//! connection per address that every request shares: the pool keeps it beside the
//! idle HTTP/1.1 stack, hands a clone to each request (and to every waiter once it
//! is up), and opens another only when it has closed. A protocol switch (a
//! WebSocket) always goes over an HTTP/1.1 connection of its own.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::Authority;
use http::uri::{PathAndQuery, Scheme};
use http::{Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::oneshot;

use cutover_config::{Protocol, UpstreamTls};

use crate::connect::{Connector, TlsSetupError};
use crate::replay::{ClientBodyError, UpBody};

/// The connections of one kind of upstream: plain or TLS with one SNI name.
pub type UpClient = Arc<Client>;

/// Connect timeout, protocol, and the TLS setting with its server name.
type ClientKey = (Duration, Protocol, Option<(UpstreamTls, String)>);

/// Idle connections kept per address at most; more are closed when they come free.
const MAX_IDLE_PER_ADDR: usize = 1024;
/// How often idle connections are checked for age and for a close by the backend
/// (more often when `upstream_idle` is short).
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// `[limits]` of the pool, per address: connections at most, requests waiting
/// for one at most, and how long a connection may sit idle.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub max_connections: usize,
    pub max_waiting: usize,
    pub idle: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_connections: 1024,
            max_waiting: 1024,
            idle: Duration::from_secs(55),
        }
    }
}

/// Builds clients, one per distinct connect timeout and TLS setting, so that every
/// route with the same settings shares one pool.
#[derive(Default)]
pub struct Upstream {
    clients: Mutex<HashMap<ClientKey, UpClient>>,
    limits: PoolLimits,
}

/// Connects to upstream addresses and keeps their idle connections.
pub struct Client {
    connector: Connector,
    protocol: Protocol,
    /// `https` over TLS: the scheme of HTTP/2 requests.
    scheme: Scheme,
    /// By `ip:port`. Keyed by the string: `Authority` hashes byte by byte.
    pools: Mutex<HashMap<Box<str>, Pool>>,
    limits: PoolLimits,
}

/// One address's connections.
#[derive(Default)]
struct Pool {
    idle: Vec<Idle>,
    /// The shared HTTP/2 connection, once one is up.
    h2: Option<http2::SendRequest<UpBody>>,
    /// Connects under way.
    connecting: usize,
    /// Requests waiting for a connection or a connect slot, oldest first.
    waiters: VecDeque<oneshot::Sender<Handoff>>,
    /// Pooled connections open (idle or lent), under [`PoolLimits::max_connections`].
    open: usize,
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
    fn take_idle(&mut self, max_idle: Duration) -> Option<SendRequest<UpBody>> {
        loop {
            let n = self.idle.len();
            let top = n.checked_sub(1)?;
            let k = (n.saturating_sub(READY_SCAN)..n)
                .rev()
                .find(|&k| self.idle[k].tx.is_ready())
                .unwrap_or(top);
            let i = self.idle.remove(k);
            if !i.tx.is_closed() && i.since.elapsed() < max_idle {
                return Some(i.tx);
            }
        }
    }
}

/// A connection to send one request on.
enum Tx {
    H1(SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

/// What a waiting request is given.
enum Handoff {
    Conn(Tx),
    /// A connect slot: dropped unused (the receiver gone), it passes on.
    Slot(Slot),
    /// The connect that was under way failed: so would this request's.
    Failed(String),
}

/// What a request does next.
enum Next {
    Reuse(Tx),
    Connect(Slot),
    Wait(oneshot::Receiver<Handoff>),
    /// Every connection the address may have is busy and its queue is full.
    Full,
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
    tx: Tx,
}

impl Lease {
    pub fn release(self) {
        // An HTTP/2 stream ends with its body; the connection stays shared.
        if let Tx::H1(tx) = self.tx {
            self.client.put(self.authority, tx);
        }
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
    /// The address has all the connections it may have busy and as many requests
    /// waiting as it may: nothing was sent.
    Overloaded,
}

impl FailureKind {
    pub const ALL: [FailureKind; 5] = [
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::Reset,
        FailureKind::Protocol,
        FailureKind::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Protocol => "protocol",
            FailureKind::Overloaded => "overloaded",
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
    /// The client's request body failed (it went idle, grew over the limit, or
    /// broke off): not the backend's doing.
    pub client: Option<ClientFault>,
}

/// How the client's request body failed an upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    Idle,
    TooLarge,
    Gone,
}

impl Failure {
    fn new(kind: FailureKind, detail: String) -> Self {
        Failure {
            kind,
            detail,
            shared: false,
            client: None,
        }
    }
}

impl Upstream {
    /// Clients whose pools keep to `limits`.
    pub fn new(limits: PoolLimits) -> Self {
        Upstream {
            clients: Mutex::default(),
            limits,
        }
    }

    /// The shared client whose connections give up connecting after
    /// `connect_timeout`, speaking TLS to `sni` when `tls` is set.
    pub fn client(
        &self,
        connect_timeout: Duration,
        protocol: Protocol,
        tls: Option<(&UpstreamTls, &str)>,
    ) -> Result<UpClient, TlsSetupError> {
        let key = (
            connect_timeout,
            protocol,
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
            scheme: if tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            connector: Connector::new(http, connect_timeout, tls, protocol)?,
            protocol,
            pools: Mutex::default(),
            limits: self.limits,
        });
        // Outside a runtime (unit tests building state) there is nothing to sweep.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&client), self.limits.idle));
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Sends `req` (its URI in origin form, its Host header set) to `authority` and
/// waits for the response head, at most `head_timeout` in all. A protocol switch
/// (`upgrade`) goes over HTTP/1.1 whatever the backend's protocol.
pub async fn send(
    client: &UpClient,
    authority: &Authority,
    req: http::Request<UpBody>,
    head_timeout: Duration,
    upgrade: bool,
) -> Result<(http::Response<Incoming>, Lease), Failure> {
    let timer = tokio::time::sleep(head_timeout);
    send_until(client, authority, req, timer, head_timeout, upgrade).await
}

/// [`send`], giving up when `timer` resolves (for a streamed body the request
/// path counts `head_timeout` from the body's last move).
pub async fn send_until(
    client: &UpClient,
    authority: &Authority,
    req: http::Request<UpBody>,
    timer: impl Future<Output = ()>,
    head_timeout: Duration,
    upgrade: bool,
) -> Result<(http::Response<Incoming>, Lease), Failure> {
    let sent = async {
        if upgrade && client.protocol != Protocol::Http1 {
            client.upgrade(authority, req).await
        } else {
            client.request(authority, req).await
        }
    };
    tokio::select! {
        r = sent => r,
        () = timer => Err(Failure::new(
            FailureKind::Timeout,
            format!("no response head within {head_timeout:?}"),
        )),
    }
}

/// A request that went nowhere, or a call that failed.
enum NotSent {
    /// Never sent (the connection had closed, or the backend refused the HTTP/2
    /// stream unprocessed): safe on another connection, whatever the method.
    Unsent(Box<http::Request<UpBody>>),
    Failed(Failure),
}

/// Connections found closed before a request could go out on them, at most,
/// before the request gives up.
const MAX_UNSENT: u32 = 8;

impl Client {
    async fn request(
        self: &Arc<Self>,
        authority: &Authority,
        mut req: http::Request<UpBody>,
    ) -> Result<(http::Response<Incoming>, Lease), Failure> {
        let mut unsent = 0;
        let slot = loop {
            let tx = match self.next(authority) {
                Next::Reuse(tx) => tx,
                Next::Connect(slot) => break slot,
                Next::Wait(rx) => match rx.await {
                    Ok(Handoff::Conn(tx)) => tx,
                    Ok(Handoff::Slot(slot)) => break slot,
                    Ok(Handoff::Failed(detail)) => {
                        let mut f = Failure::new(FailureKind::Connect, detail);
                        f.shared = true;
                        return Err(f);
                    }
                    // The pool never drops a waiter without an answer; try again.
                    Err(_) => continue,
                },
                Next::Full => {
                    return Err(Failure::new(
                        FailureKind::Overloaded,
                        format!(
                            "{} connections busy and {} requests waiting (limits.upstream_max_connections, limits.upstream_max_waiting)",
                            self.limits.max_connections, self.limits.max_waiting
                        ),
                    ));
                }
            };
            match self.try_send(authority, tx, req).await {
                Ok(done) => return Ok(done),
                Err(NotSent::Failed(f)) => return Err(f),
                Err(NotSent::Unsent(r)) if unsent < MAX_UNSENT => {
                    unsent += 1;
                    req = *r;
                }
                Err(NotSent::Unsent(_)) => return Err(never_sent()),
            }
        };
        let tx = self.connect(authority, slot, false).await?;
        once(self.try_send(authority, tx, req).await)
    }

    /// A protocol switch to a backend that may speak HTTP/2: on an HTTP/1.1
    /// connection of its own, outside the pool (the tunnel keeps it).
    async fn upgrade(
        self: &Arc<Self>,
        authority: &Authority,
        req: http::Request<UpBody>,
    ) -> Result<(http::Response<Incoming>, Lease), Failure> {
        let tx = self
            .open(authority, true, None)
            .await
            .map_err(|cause| Failure::new(FailureKind::Connect, cause))?;
        once(self.try_send(authority, tx, req).await)
    }

    /// Sends on `tx` in the form its protocol wants.
    async fn try_send(
        self: &Arc<Self>,
        authority: &Authority,
        tx: Tx,
        mut req: http::Request<UpBody>,
    ) -> Result<(http::Response<Incoming>, Lease), NotSent> {
        match tx {
            Tx::H1(mut tx) => {
                if tx.ready().await.is_err() {
                    return Err(NotSent::Unsent(Box::new(req))); // Closed since it was put back.
                }
                as_http1(&mut req);
                match tx.try_send_request(req).await {
                    Ok(resp) => Ok((resp, self.lease(authority, Tx::H1(tx)))),
                    Err(mut e) => match e.take_message() {
                        Some(r) => Err(NotSent::Unsent(Box::new(r))),
                        None => Err(NotSent::Failed(failure(&e.into_error()))),
                    },
                }
            }
            Tx::H2(mut tx) => {
                if tx.ready().await.is_err() {
                    self.forget_h2(authority);
                    return Err(NotSent::Unsent(Box::new(req)));
                }
                as_http2(&mut req, &self.scheme);
                // A stream the backend refuses (REFUSED_STREAM, or above the last
                // stream a GOAWAY lets finish) was not processed; only its body
                // could be spent, so a replayable copy is kept for that case.
                let again = replayable(&req);
                match tx.try_send_request(req).await {
                    Ok(resp) => Ok((resp, self.lease(authority, Tx::H2(tx)))),
                    Err(mut e) => match e.take_message() {
                        Some(r) => {
                            self.forget_h2(authority);
                            Err(NotSent::Unsent(Box::new(r)))
                        }
                        None => {
                            let e = e.into_error();
                            match again {
                                Some(r) if refused(&e) => {
                                    self.forget_h2(authority);
                                    Err(NotSent::Unsent(Box::new(r)))
                                }
                                _ => Err(NotSent::Failed(failure(&e))),
                            }
                        }
                    },
                }
            }
        }
    }

    /// Opens a connection in `slot`, which is freed when this returns. An HTTP/2
    /// connection is shared at once with every request waiting on the address.
    async fn connect(
        self: &Arc<Self>,
        authority: &Authority,
        mut slot: Slot,
        h1_only: bool,
    ) -> Result<Tx, Failure> {
        let counted = Counted {
            client: Arc::downgrade(self),
            authority: authority.clone(),
        };
        match self.open(authority, h1_only, Some(counted)).await {
            Ok(Tx::H2(tx)) => {
                self.share_h2(authority, &tx);
                Ok(Tx::H2(tx))
            }
            Ok(tx) => Ok(tx),
            Err(cause) => {
                slot.failed = Some(cause.clone());
                Err(Failure::new(FailureKind::Connect, cause))
            }
        }
    }

    /// Connects and speaks the backend's protocol: HTTP/2 when configured (or, with
    /// `auto`, when ALPN chose it), else HTTP/1.1.
    async fn open(
        &self,
        authority: &Authority,
        h1_only: bool,
        counted: Option<Counted>,
    ) -> Result<Tx, String> {
        let io = self
            .connector
            .connect(authority, h1_only)
            .await
            .map_err(|e| chain(&*e))?;
        let h2 = !h1_only
            && match self.protocol {
                Protocol::H2 => true,
                Protocol::Auto => io.alpn_h2(),
                Protocol::Http1 => false,
            };
        if h2 {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // A connection that went silent (a backend gone without a FIN)
                // is found out and closed rather than trusted with requests.
                .keep_alive_interval(H2_PING_EVERY)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .handshake(io)
                .await
                .map_err(|e| chain(&e))?;
            let counted = counted.map(Counted::count);
            tokio::spawn(async move {
                let _counted = counted;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %chain(&e), "upstream HTTP/2 connection ended with an error");
                }
            });
            return Ok(Tx::H2(tx));
        }
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| chain(&e))?;
        let counted = counted.map(Counted::count);
        tokio::spawn(async move {
            let _counted = counted;
            // A 101 hands the connection over to the tunnel (see `tunnel`).
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %chain(&e), "upstream connection ended with an error");
            }
        });
        Ok(Tx::H1(tx))
    }

    fn lease(self: &Arc<Self>, authority: &Authority, tx: Tx) -> Lease {
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

    /// The shared HTTP/2 connection, else the most recently used idle connection
    /// still open, else a connect slot, else a place in the queue.
    fn next(self: &Arc<Self>, authority: &Authority) -> Next {
        let mut pools = self.lock();
        let pool = match pools.get_mut(authority.as_str()) {
            Some(p) => p,
            None => pools.entry(authority.as_str().into()).or_default(),
        };
        if let Some(h2) = &pool.h2 {
            if !h2.is_closed() {
                return Next::Reuse(Tx::H2(h2.clone()));
            }
            pool.h2 = None;
        }
        if let Some(tx) = pool.take_idle(self.limits.idle) {
            return Next::Reuse(Tx::H1(tx));
        }
        // One HTTP/2 connection carries every request: open one at a time.
        let most = if self.protocol == Protocol::H2 {
            1
        } else {
            MAX_CONNECTING
        };
        if pool.connecting < most && pool.connecting + pool.open < self.limits.max_connections {
            pool.connecting += 1;
            drop(pools);
            return Next::Connect(self.slot(authority));
        }
        if pool.waiters.len() >= self.limits.max_waiting {
            pool.waiters.retain(|w| !w.is_closed());
            if pool.waiters.len() >= self.limits.max_waiting {
                return Next::Full;
            }
        }
        let (tx, rx) = oneshot::channel();
        pool.waiters.push_back(tx);
        Next::Wait(rx)
    }

    /// A new HTTP/2 connection is up: it becomes the address's shared one, and
    /// every request waiting on the address goes out on it.
    fn share_h2(&self, authority: &Authority, tx: &http2::SendRequest<UpBody>) {
        let mut pools = self.lock();
        let pool = match pools.get_mut(authority.as_str()) {
            Some(p) => p,
            None => pools.entry(authority.as_str().into()).or_default(),
        };
        pool.h2 = Some(tx.clone());
        for w in pool.waiters.drain(..) {
            let _ = w.send(Handoff::Conn(Tx::H2(tx.clone())));
        }
    }

    /// Drops the address's HTTP/2 connection if it has closed (or is going
    /// away), so the next request opens another.
    fn forget_h2(&self, authority: &Authority) {
        if let Some(pool) = self.lock().get_mut(authority.as_str())
            && pool
                .h2
                .as_ref()
                .is_some_and(|h2| h2.is_closed() || !h2.is_ready())
        {
            pool.h2 = None;
        }
    }

    /// A connection came free: to the oldest waiter still waiting, else idle.
    fn put(&self, authority: Authority, mut tx: SendRequest<UpBody>) {
        // An HTTP/1.1 connection to an HTTP/2 backend carried a protocol switch
        // that did not happen; it is not kept.
        if tx.is_closed() || self.protocol != Protocol::Http1 && self.protocol != Protocol::Auto {
            return;
        }
        let mut pools = self.lock();
        let pool = match pools.get_mut(authority.as_str()) {
            Some(p) => p,
            None => pools.entry(authority.as_str().into()).or_default(),
        };
        while let Some(w) = pool.waiters.pop_front() {
            match w.send(Handoff::Conn(Tx::H1(tx))) {
                Ok(()) => return,
                Err(Handoff::Conn(Tx::H1(back))) => tx = back,
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
                self.hand_slot(pool, authority);
            }
        }
    }

    /// Gives a connect slot to the oldest waiter still waiting, if the address may
    /// open another connection.
    fn hand_slot(self: &Arc<Self>, pool: &mut Pool, authority: &Authority) {
        if pool.connecting + pool.open >= self.limits.max_connections {
            return;
        }
        {
            {
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

    /// A pooled connection closed: under the cap again, so a waiter may connect.
    fn closed(self: &Arc<Self>, authority: &Authority) {
        let mut pools = self.lock();
        if let Some(pool) = pools.get_mut(authority.as_str()) {
            pool.open = pool.open.saturating_sub(1);
            if !pool.waiters.is_empty() && pool.connecting < MAX_CONNECTING {
                self.hand_slot(pool, authority);
            }
        }
    }

    /// Closes idle connections past their age or already closed by the backend,
    /// and forgets addresses with nothing left.
    fn sweep(&self) {
        let max_idle = self.limits.idle;
        let mut pools = self.lock();
        for pool in pools.values_mut() {
            pool.idle
                .retain(|i| !i.tx.is_closed() && i.since.elapsed() < max_idle);
            pool.waiters.retain(|w| !w.is_closed());
            if pool.h2.as_ref().is_some_and(|h2| h2.is_closed()) {
                pool.h2 = None;
            }
        }
        pools.retain(|_, p| {
            !p.idle.is_empty()
                || p.h2.is_some()
                || p.connecting > 0
                || p.open > 0
                || !p.waiters.is_empty()
        });
    }

    /// Idle connections kept, over all addresses.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().values().map(|p| p.idle.len()).sum()
    }
}

async fn sweep(client: Weak<Client>, idle: Duration) {
    let mut every =
        tokio::time::interval(SWEEP_EVERY.min(idle / 4).max(Duration::from_millis(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(client) = client.upgrade() else {
            return;
        };
        client.sweep();
    }
}

/// A pooled connection, counted in its address's `open` from its handshake until
/// its task ends.
struct Counted {
    client: Weak<Client>,
    authority: Authority,
}

impl Counted {
    fn count(self) -> Counted {
        if let Some(client) = self.client.upgrade() {
            let mut pools = client.lock();
            let pool = match pools.get_mut(self.authority.as_str()) {
                Some(p) => p,
                None => pools.entry(self.authority.as_str().into()).or_default(),
            };
            pool.open += 1;
        }
        self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(client) = self.client.upgrade() {
            client.closed(&self.authority);
        }
    }
}

/// How often an HTTP/2 upstream connection is pinged, and how long a ping may go
/// unanswered before the connection is closed.
const H2_PING_EVERY: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

fn never_sent() -> Failure {
    Failure::new(
        FailureKind::Reset,
        "the connections to the address kept closing before the request could be sent".into(),
    )
}

/// The result of a send on a fresh connection, where there is no other to try.
fn once<T>(sent: Result<T, NotSent>) -> Result<T, Failure> {
    sent.map_err(|e| match e {
        NotSent::Failed(f) => f,
        NotSent::Unsent(_) => never_sent(),
    })
}

/// An HTTP/1.1 request: origin-form URI, the host in the Host header.
fn as_http1(req: &mut http::Request<UpBody>) {
    if req.version() == Version::HTTP_11 {
        return;
    }
    if let Some(a) = req.uri().authority()
        && let Ok(host) = http::HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().entry(HOST).or_insert(host);
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    *req.version_mut() = Version::HTTP_11;
}

/// An HTTP/2 request: the host moves from the Host header to `:authority`, with
/// the connection's scheme; `te: trailers` (gRPC's) stays.
fn as_http2(req: &mut http::Request<UpBody>, scheme: &Scheme) {
    if req.version() == Version::HTTP_2 {
        return;
    }
    let host = req.headers_mut().remove(HOST);
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let Some(a) = authority {
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(a);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    *req.version_mut() = Version::HTTP_2;
}

/// A copy of a request whose body can be sent again.
fn replayable(req: &http::Request<UpBody>) -> Option<http::Request<UpBody>> {
    let body = req.body().replay()?;
    let mut copy = http::Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// The backend refused the stream before processing it: RST_STREAM with
/// REFUSED_STREAM, or a GOAWAY that leaves it out (RFC 9113 §8.7).
fn refused(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            // A graceful GOAWAY (NO_ERROR) fails only the streams above its last
            // stream id; one for an error may fail streams that were processed.
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = s.source();
    }
    false
}

fn failure(e: &hyper::Error) -> Failure {
    let mut f = Failure::new(classify(e), chain(e));
    f.client = ClientBodyError::find(e).map(|c| match c {
        ClientBodyError::Idle(_) => ClientFault::Idle,
        ClientBodyError::TooLarge(_) => ClientFault::TooLarge,
        ClientBodyError::Read(_) | ClientBodyError::Spool(_) => ClientFault::Gone,
    });
    f
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
