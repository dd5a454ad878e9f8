//! Hostile clients beside the users, as on any public edge: idle connections that
//! never send a byte, and slowloris connections that send a request line and then a
//! header byte every couple of seconds without ever ending the head. They arrive
//! over [`ARRIVAL`], as clients on a public edge do, not in one instant; each one
//! that the proxy closes is opened again at once, so the proxy faces the same number
//! throughout the plan. The users' p99 must not move ([`crate::view`]); this module
//! counts how many the proxy closed and after how long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The address the hostile clients connect from, so that the rehearsal's balancer
/// can tell them from the users (whose unanswered requests fail a fleet run).
pub const SOURCE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 250));

/// How many of each the default rehearsal holds open.
pub const IDLE: usize = 200;
pub const SLOW: usize = 100;
/// The slowloris pace: one header byte per this.
const TRICKLE: Duration = Duration::from_secs(2);
/// The first connections are opened evenly over this long, the proxy's default
/// `limits.request_head`, so the proxy's cuts (and the reopens) are spread over
/// each of its windows. Opened all in one instant, every one of them would be cut
/// and reopened in the same instant every window, a synchronised herd that no
/// population of independent clients makes.
pub const ARRIVAL: Duration = Duration::from_secs(10);
/// No connection is held longer than this, whatever the proxy does.
const HOLD_MAX: Duration = Duration::from_secs(600);

/// What the hostile clients did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HostileReport {
    pub idle: usize,
    pub slow: usize,
    /// Connections opened in all (each reopened after the proxy closed it).
    pub opened: u64,
    /// Of those, closed by the proxy.
    pub closed_by_proxy: u64,
    /// Connects that failed (refused, or over a cap).
    pub refused: u64,
    /// Seconds from connect to the proxy's close: median and max.
    pub held_s_median: Option<f64>,
    pub held_s_max: Option<f64>,
    /// Any bytes the proxy answered with (it should close a head that never ends,
    /// possibly after a 408).
    pub answered: u64,
}

#[derive(Default)]
struct Counts {
    opened: AtomicU64,
    closed: AtomicU64,
    refused: AtomicU64,
    answered: AtomicU64,
    held_ms: std::sync::Mutex<Vec<u64>>,
}

/// The hostile clients, running until [`Hostile::stop`] (aborted when dropped).
pub struct Hostile {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    counts: Arc<Counts>,
    idle: usize,
    slow: usize,
}

impl Hostile {
    /// Starts `idle` idle and `slow` slowloris connections against `target`, with
    /// `host` in the slow ones' request line, the first ones opened evenly over
    /// `arrival` ([`ARRIVAL`] in the rehearsal).
    pub fn start(
        target: SocketAddr,
        host: &str,
        idle: usize,
        slow: usize,
        arrival: Duration,
    ) -> Hostile {
        let (stop, stopped) = watch::channel(false);
        let counts = Arc::new(Counts::default());
        let mut tasks = JoinSet::new();
        let all = idle + slow;
        for i in 0..all {
            let (counts, mut stopped) = (counts.clone(), stopped.clone());
            // Idle and slow ones interleaved, so both kinds arrive throughout.
            let trickles = i * slow / all != (i + 1) * slow / all;
            let arrives = arrival.mul_f64(i as f64 / all as f64);
            let head = format!("GET /forecast/lisbon HTTP/1.1\r\nHost: {host}\r\nX-Slow: ");
            tasks.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(arrives) => {}
                    _ = stopped.changed() => return,
                }
                let deadline = Instant::now() + HOLD_MAX;
                while !*stopped.borrow() && Instant::now() < deadline {
                    tokio::select! {
                        _ = hold_one(target, trickles.then_some(head.as_str()), &counts) => {}
                        _ = stopped.changed() => break,
                    }
                }
            });
        }
        Hostile {
            stop,
            tasks,
            counts,
            idle,
            slow,
        }
    }

    /// Stops every connection and reports.
    pub async fn stop(mut self) -> HostileReport {
        let _ = self.stop.send(true);
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => { self.tasks.abort_all(); break }
            }
        }
        let c = &self.counts;
        let mut held = c.held_ms.lock().map(|v| v.clone()).unwrap_or_default();
        held.sort_unstable();
        HostileReport {
            idle: self.idle,
            slow: self.slow,
            opened: c.opened.load(Ordering::Relaxed),
            closed_by_proxy: c.closed.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            held_s_median: held.get(held.len() / 2).map(|ms| *ms as f64 / 1000.0),
            held_s_max: held.last().map(|ms| *ms as f64 / 1000.0),
            answered: c.answered.load(Ordering::Relaxed),
        }
    }
}

/// One connection, until the proxy closes it: idle (`head` is `None`) or trickling
/// `head` and then one byte per [`TRICKLE`].
async fn hold_one(target: SocketAddr, head: Option<&str>, counts: &Counts) {
    let mut s = match tokio::time::timeout(Duration::from_secs(5), connect(target)).await {
        Ok(Ok(s)) => s,
        _ => {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            // Not a tight loop against a proxy that refuses.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
    };
    counts.opened.fetch_add(1, Ordering::Relaxed);
    let since = Instant::now();
    if let Some(head) = head
        && s.write_all(head.as_bytes()).await.is_err()
    {
        return closed(counts, since);
    }
    let mut buf = [0u8; 512];
    loop {
        let wait = tokio::time::sleep(TRICKLE);
        tokio::select! {
            read = s.read(&mut buf) => match read {
                Ok(0) | Err(_) => return closed(counts, since),
                Ok(_) => { counts.answered.fetch_add(1, Ordering::Relaxed); }
            },
            () = wait => {
                if head.is_some() && s.write_all(b"x").await.is_err() {
                    return closed(counts, since);
                }
            }
        }
    }
}

/// A connection from [`SOURCE`] when the target is on IPv4 loopback.
async fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    if !target.ip().is_loopback() || !target.is_ipv4() {
        return TcpStream::connect(target).await;
    }
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(SOURCE, 0))?;
    socket.connect(target).await
}

fn closed(counts: &Counts, since: Instant) {
    counts.closed.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut v) = counts.held_ms.lock() {
        v.push(since.elapsed().as_millis() as u64);
    }
}

/// The report's section.
pub fn section(r: &HostileReport) -> String {
    let s = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1} s"));
    format!(
        "\n## Hostile clients beside the users\n\n\
         - held against the proxy throughout: {} idle connections (never a byte) and {} \
         slowloris connections (a request line, then a header byte every {} s), arriving \
         over the first {} s; each one closed was opened again at once\n\
         - {} connections opened, {} closed by the proxy (held {} at the median, {} at most), \
         {} connects refused, {} answers read\n\
         - what the users saw meanwhile is the table above: the whole plan ran beside them\n",
        r.idle,
        r.slow,
        TRICKLE.as_secs(),
        ARRIVAL.as_secs(),
        r.opened,
        r.closed_by_proxy,
        s(r.held_s_median),
        s(r.held_s_max),
        r.refused,
        r.answered
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that closes every connection after `after`: the hostile clients
    /// count each close and open again.
    #[tokio::test]
    async fn closed_connections_are_counted_and_reopened() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                held.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    drop(s);
                }));
            }
        });
        let h = Hostile::start(addr, "weather.example", 3, 2, Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.counts.closed.load(Ordering::Relaxed) < 20 {
            assert!(
                Instant::now() < deadline,
                "the listener's closes were not seen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = h.stop().await;
        server.abort();
        assert!(r.opened >= 20 && r.closed_by_proxy >= 20, "{r:?}");
        assert_eq!((r.idle, r.slow, r.refused), (3, 2, 0));
        assert!(r.held_s_median.unwrap() < 5.0, "{r:?}");
    }

    /// The first connections arrive over the arrival window, not in one instant,
    /// and the slowloris ones are among them throughout.
    #[tokio::test]
    async fn the_first_connections_arrive_over_the_window() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                held.push(tokio::spawn(async move {
                    let at = Instant::now();
                    // A slowloris connection writes its request line at once.
                    let mut b = [0u8; 64];
                    let slow = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b))
                        .await
                        .is_ok_and(|r| r.is_ok_and(|n| n > 0));
                    let _ = tx.send((at, slow));
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }));
            }
        });
        let h = Hostile::start(addr, "weather.example", 6, 4, Duration::from_millis(1500));
        let mut seen = Vec::new();
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        while seen.len() < 10 {
            tokio::select! {
                got = rx.recv() => seen.push(got.unwrap()),
                () = &mut deadline => panic!("only {} of 10 connections arrived", seen.len()),
            }
        }
        let r = h.stop().await;
        server.abort();
        seen.sort_by_key(|(at, _)| *at);
        let spread = seen[9].0 - seen[0].0;
        assert!(
            spread >= Duration::from_millis(1000),
            "ten connections arrived within {spread:?} of each other"
        );
        let slow: Vec<bool> = seen.iter().map(|(_, slow)| *slow).collect();
        assert_eq!(slow.iter().filter(|s| **s).count(), 4, "{slow:?}");
        assert!(
            slow[..5].contains(&true) && slow[5..].contains(&true),
            "the slowloris connections all arrived together: {slow:?}"
        );
        assert_eq!(r.opened, 10, "{r:?}");
    }
}
