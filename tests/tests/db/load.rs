//! A test client that sends mixed writes and reads through the proxy at a fixed
//! rate and keeps a ledger of every acknowledged id. Each worker reads back ids it
//! wrote at least a second earlier (on either side, by the proxy's split) and
//! checks the body. Bounded in time; stops on request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cutover_tests::Client;
use http::Method;
use tokio::task::JoinHandle;

/// What the load saw.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every acknowledged write: (id, body).
    pub acked: Vec<(i64, String)>,
    /// Every request that did not succeed, described.
    pub failures: Vec<String>,
    /// Every acknowledged write's start and latency.
    pub writes: Vec<(Instant, Duration)>,
    pub reads: u64,
    pub elapsed: Duration,
}

impl Ledger {
    pub fn write_rate(&self) -> f64 {
        self.acked.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// p50 and max latency of the writes that started in `[from, to]`.
    pub fn latency_between(&self, from: Instant, to: Instant) -> (usize, Duration, Duration) {
        let mut l: Vec<Duration> = self
            .writes
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, d)| *d)
            .collect();
        l.sort();
        if l.is_empty() {
            return (0, Duration::ZERO, Duration::ZERO);
        }
        (l.len(), l[l.len() / 2], l[l.len() - 1])
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<Ledger>>,
    started: Instant,
}

impl Load {
    /// `workers` loops, each writing `rate` times a second (plus one read per
    /// write), for at most `limit`.
    pub fn start(
        addr: SocketAddr,
        host: &'static str,
        workers: usize,
        rate: f64,
        limit: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let client = Client::new();
        let handles = (0..workers)
            .map(|w| {
                let (stop, acked, client) = (stop.clone(), acked.clone(), client.clone());
                tokio::spawn(async move {
                    worker(w, client, addr, host, rate, started + limit, stop, acked).await
                })
            })
            .collect();
        Load {
            stop,
            acked,
            workers: handles,
            started,
        }
    }

    /// Writes acknowledged so far, over all workers.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Ledger::default();
        for h in self.workers {
            let l = h.await.unwrap();
            all.acked.extend(l.acked);
            all.failures.extend(l.failures);
            all.writes.extend(l.writes);
            all.reads += l.reads;
        }
        all.elapsed = self.started.elapsed();
        all
    }
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    w: usize,
    client: Client,
    addr: SocketAddr,
    host: &str,
    rate: f64,
    until: Instant,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Ledger {
    let mut ledger = Ledger::default();
    let mut acked_at: Vec<Instant> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: usize = 0;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        tick.tick().await;
        n += 1;
        let body = format!("w{w}-{n}");
        let t = Instant::now();
        match client
            .send(addr, Method::POST, host, "/items", &[], &body)
            .await
        {
            Ok(r) if r.status == 201 => match r.body.parse::<i64>() {
                Ok(id) => {
                    ledger.writes.push((t, t.elapsed()));
                    ledger.acked.push((id, body));
                    acked_at.push(Instant::now());
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => ledger
                    .failures
                    .push(format!("POST {body}: id {:?}", r.body)),
            },
            Ok(r) => ledger.failures.push(format!(
                "POST {body}: {} from {:?}: {}",
                r.status,
                r.header("x-app"),
                r.body
            )),
            Err(e) => ledger.failures.push(format!("POST {body}: {e}")),
        }
        // Read back an id acknowledged at least a second ago: replication has had
        // time to carry it to the other side.
        let old_enough = acked_at.partition_point(|a| a.elapsed() >= Duration::from_secs(1));
        if old_enough > 0 {
            let (id, want) = &ledger.acked[(n * 7919) % old_enough];
            let path = format!("/items/{id}");
            ledger.reads += 1;
            match client.get(addr, host, &path).await {
                Ok(r) if r.status == 200 && &r.body == want => {}
                Ok(r) => ledger.failures.push(format!(
                    "GET {path}: {} from {:?}: {:?} (want {want:?})",
                    r.status,
                    r.header("x-app"),
                    r.body
                )),
                Err(e) => ledger.failures.push(format!("GET {path}: {e}")),
            }
        }
    }
    ledger
}
