//! The one local address in front of the proxy replicas for `rehearse --replicas`:
//! an L4 (TCP) balancer, as a Kubernetes Service's virtual IP or a cloud load
//! balancer is. Each new connection goes to the next ready replica in turn
//! (round-robin per connection, not per request: a keep-alive connection stays on
//! its replica, as it would behind kube-proxy); a connect that fails moves on to the
//! next replica, so a replica that stopped accepting costs no new connection.
//!
//! Replicas are added once their `/readyz` answers 200 and removed before they are
//! stopped; removing one leaves its open connections to drain, it only stops new
//! ones. It runs on its own thread and runtime, so the controller's work never
//! delays a byte. It counts what it did, for the report, including each connection
//! that ended while the client's last bytes had no answer yet: for HTTP/1, a
//! request the replica never answered (a keep-alive connection closed under a
//! request that was on its way, say), which the users then saw fail.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How long one connect to a replica may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A replica the balancer may send connections to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
}

/// What the balancer did, by replica name.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Connections handed to each replica.
    pub connections: BTreeMap<String, u64>,
    /// Connects that failed (each then tried on the next replica), by replica.
    pub connect_failures: BTreeMap<String, u64>,
    /// Client connections closed because no replica accepted (or none was in).
    pub dropped: u64,
    /// Connections that ended while the client's last bytes had no answer, by
    /// replica: when each ended, in seconds since `epoch` (the first
    /// [`MAX_TIMES`] of each).
    pub unanswered: BTreeMap<String, Vec<f64>>,
    /// Connections from the hostile clients ([`crate::hostile::SOURCE`]), which are
    /// left out of `unanswered` and `slow`.
    pub hostile: u64,
    /// Connections on which the client once waited [`SLOW`] or more for an
    /// answer, by replica.
    pub slow: BTreeMap<String, u64>,
    /// One line per connection that ended (the first [`MAX_LOG`]), for
    /// `balancer.log`.
    #[serde(skip)]
    pub log: Vec<String>,
}

/// How many times [`Stats::unanswered`] keeps per replica.
const MAX_TIMES: usize = 100;

/// How many lines [`Stats::log`] keeps.
const MAX_LOG: usize = 20_000;

/// A wait for an answer this long is worth a line in the report.
const SLOW: Duration = Duration::from_secs(5);

struct Shared {
    members: Mutex<Vec<Member>>,
    next: AtomicUsize,
    stats: Mutex<Stats>,
    epoch: Instant,
}

impl Shared {
    fn members(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running balancer; stops accepting on drop (its open connections end with
/// its runtime).
pub struct Balancer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("addr", &self.addr)
            .field("members", &*self.shared.members())
            .finish()
    }
}

impl Balancer {
    /// Starts on `127.0.0.1:0` with no replica; times in its figures count from
    /// `epoch`.
    pub fn start(epoch: Instant) -> std::io::Result<Balancer> {
        let std_listener = crate::loopback_listener()?;
        let addr = std_listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            members: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            stats: Mutex::new(Stats::default()),
            epoch,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rehearse-balancer".into())
            .spawn(move || {
                rt.block_on(async move {
                    match TcpListener::from_std(std_listener) {
                        Ok(listener) => accept_loop(listener, s, stop_rx).await,
                        Err(e) => eprintln!("cutover rehearse: the balancer cannot listen: {e}"),
                    }
                });
                rt.shutdown_background();
            })?;
        Ok(Balancer {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Sends new connections to `name` at `addr` too (or now at `addr`, if it was
    /// in already).
    pub fn add(&self, name: &str, addr: SocketAddr) {
        let mut members = self.shared.members();
        members.retain(|m| m.name != name);
        members.push(Member {
            name: name.to_string(),
            addr,
        });
        members.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Sends no new connection to `name`; its open ones carry on.
    pub fn remove(&self, name: &str) {
        self.shared.members().retain(|m| m.name != name);
    }

    /// The replicas in now.
    pub fn members(&self) -> Vec<Member> {
        self.shared.members().clone()
    }

    /// What it did so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats().clone()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The replicas to try for connection number `n`, in order: the `n`-th in turn
/// first, then the others after it, so a failed connect moves on round the ring.
pub fn candidates(members: &[Member], n: usize) -> Vec<Member> {
    if members.is_empty() {
        return Vec::new();
    }
    let start = n % members.len();
    members[start..]
        .iter()
        .chain(&members[..start])
        .cloned()
        .collect()
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    tokio::spawn(relay(client, shared.clone()));
                }
                // Out of descriptors, or the like: the client retries; so do we.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// Connects `client` to a replica and copies both ways until both are done.
async fn relay(client: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let n = shared.next.fetch_add(1, Ordering::Relaxed);
    let order = candidates(&shared.members(), n);
    for m in order {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(m.addr)).await {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                *shared
                    .stats()
                    .connections
                    .entry(m.name.clone())
                    .or_default() += 1;
                let began = shared.epoch.elapsed().as_secs_f64();
                let peer = client
                    .peer_addr()
                    .map_or_else(|_| "?".into(), |a| a.to_string());
                // The hostile clients' slowloris heads are never answered by
                // design: they are not users' requests left unanswered.
                let hostile = client
                    .peer_addr()
                    .is_ok_and(|a| a.ip() == crate::hostile::SOURCE);
                let done = splice(client, upstream).await;
                let at = shared.epoch.elapsed().as_secs_f64();
                let mut stats = shared.stats();
                if hostile {
                    stats.hostile += 1;
                } else if done.unanswered {
                    let times = stats.unanswered.entry(m.name.clone()).or_default();
                    if times.len() < MAX_TIMES {
                        times.push(at);
                    }
                }
                if done.longest_wait >= SLOW && !hostile {
                    *stats.slow.entry(m.name.clone()).or_default() += 1;
                }
                if stats.log.len() < MAX_LOG && !hostile {
                    stats.log.push(format!(
                        "{began:9.3}s {at:9.3}s {} {peer} up {}B down {}B longest wait {} ms; {}{}",
                        m.name,
                        done.up,
                        done.down,
                        done.longest_wait.as_millis(),
                        done.first_end,
                        if done.unanswered { "; UNANSWERED" } else { "" }
                    ));
                }
                return;
            }
            Ok(Err(_)) | Err(_) => {
                *shared.stats().connect_failures.entry(m.name).or_default() += 1;
            }
        }
    }
    shared.stats().dropped += 1;
}

/// How one spliced connection went.
#[derive(Debug, Clone, Default)]
struct Splice {
    /// Bytes from the client to the replica, and back.
    up: u64,
    down: u64,
    /// The client's last bytes got no answer.
    unanswered: bool,
    /// The longest the client waited for an answer to bytes it had sent.
    longest_wait: Duration,
    /// Which direction ended first, and how.
    first_end: String,
}

/// Copies both ways until both directions are done (or one fails); each side's
/// end (FIN) is passed on to the other, so an HTTP keep-alive client sees its
/// replica close.
async fn splice<C, U>(client: C, upstream: U) -> Splice
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (client_r, client_w) = tokio::io::split(client);
    let (upstream_r, upstream_w) = tokio::io::split(upstream);
    // When the client sent bytes that have no answer yet; cleared when the
    // replica sends.
    let waiting: Mutex<(Option<Instant>, Duration)> = Mutex::new((None, Duration::ZERO));
    let waiting_now = || waiting.lock().unwrap_or_else(PoisonError::into_inner);
    let up = pipe(client_r, upstream_w, || {
        let mut w = waiting_now();
        if w.0.is_none() {
            w.0 = Some(Instant::now());
        }
    });
    let down = pipe(upstream_r, client_w, || {
        let mut w = waiting_now();
        if let Some(since) = w.0.take() {
            w.1 = w.1.max(since.elapsed());
        }
    });
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (None, None);
    while up_done.is_none() || down_done.is_none() {
        let failed = tokio::select! {
            r = &mut up, if up_done.is_none() => {
                let failed = r.is_err();
                up_done = Some(r);
                failed
            }
            r = &mut down, if down_done.is_none() => {
                let failed = r.is_err();
                down_done = Some(r);
                failed
            }
        };
        if failed {
            break;
        }
    }
    let how = |r: &std::io::Result<u64>| match r {
        Ok(_) => "closed".to_string(),
        Err(e) => format!("failed ({e})"),
    };
    let first_end = match (&up_done, &down_done) {
        (Some(r), None) => format!("client {} first", how(r)),
        (None, Some(r)) => format!("replica {} first", how(r)),
        (Some(u), Some(d)) => format!("client {}, replica {}", how(u), how(d)),
        (None, None) => String::new(),
    };
    let w = *waiting_now();
    let bytes =
        |r: &Option<std::io::Result<u64>>| r.as_ref().and_then(|r| r.as_ref().ok()).copied();
    Splice {
        up: bytes(&up_done).unwrap_or(0),
        down: bytes(&down_done).unwrap_or(0),
        unanswered: w.0.is_some(),
        longest_wait: w.0.map_or(w.1, |since| w.1.max(since.elapsed())),
        first_end,
    }
}

/// Copies `from` to `to` until `from` ends, then ends `to` (FIN); `seen` runs
/// before each chunk is passed on. The bytes copied.
async fn pipe<R, W>(mut from: R, mut to: W, seen: impl Fn()) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        seen();
        to.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, port: u16) -> Member {
        Member {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn each_connection_starts_at_the_next_replica_and_goes_round() {
        let m = [member("a", 1), member("b", 2), member("c", 3)];
        let names = |n| -> Vec<String> { candidates(&m, n).into_iter().map(|m| m.name).collect() };
        assert_eq!(names(0), ["a", "b", "c"]);
        assert_eq!(names(1), ["b", "c", "a"]);
        assert_eq!(names(5), ["c", "a", "b"]);
        assert!(candidates(&[], 3).is_empty());
    }

    /// One exchange through [`splice`]: the client sends, the replica reads it,
    /// answers or not, and closes. Whether the splice saw the request unanswered.
    async fn exchange(answer: bool) -> bool {
        let (mut client, lb_client) = tokio::io::duplex(1024);
        let (lb_upstream, mut replica) = tokio::io::duplex(1024);
        let relay = tokio::spawn(splice(lb_client, lb_upstream));
        client.write_all(b"GET").await.unwrap();
        let mut req = [0u8; 3];
        replica.read_exact(&mut req).await.unwrap();
        if answer {
            replica.write_all(b"200").await.unwrap();
            let mut resp = [0u8; 3];
            client.read_exact(&mut resp).await.unwrap();
        }
        drop(replica);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "the replica's end reached the client");
        drop(client);
        relay.await.unwrap().unanswered
    }

    #[tokio::test]
    async fn a_request_the_replica_closed_under_is_counted_unanswered() {
        assert!(!exchange(true).await);
        assert!(exchange(false).await);
    }

    /// An echo server that prefixes what it sends back with `tag`.
    async fn tagged_echo(tag: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let _ = s.write_all(tag.as_bytes()).await;
                    let _ = s.write_all(&buf[..n]).await;
                });
            }
        });
        addr
    }

    async fn ask(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"!").await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn a_refused_connect_moves_on_and_removed_replicas_get_nothing() {
        let a = tagged_echo("a").await;
        let b = tagged_echo("b").await;
        // A port nobody listens on: bound, then closed.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let lb = Balancer::start(Instant::now()).unwrap();
        assert_eq!(
            ask(lb.addr).await,
            "",
            "no replica: the connection is closed"
        );
        lb.add("a", a);
        lb.add("b", b);
        lb.add("dead", dead);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ask(lb.addr).await);
        }
        assert!(seen.iter().all(|s| s == "a!" || s == "b!"), "{seen:?}");
        let stats = lb.stats();
        assert_eq!(stats.connections.values().sum::<u64>(), 6);
        assert_eq!(stats.connect_failures.get("dead"), Some(&2));
        assert_eq!(stats.dropped, 1);
        assert!(stats.unanswered.is_empty(), "{stats:?}");

        lb.remove("a");
        for _ in 0..3 {
            assert_eq!(ask(lb.addr).await, "b!");
        }
        assert_eq!(
            lb.members().into_iter().map(|m| m.name).collect::<Vec<_>>(),
            ["b", "dead"]
        );
    }
}
