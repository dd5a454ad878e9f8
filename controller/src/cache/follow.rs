//! The sync: the initial copy, then following the source until stopped.
//!
//! 1. Keyspace notifications are subscribed (`PSUBSCRIBE __keyspace@DB__:*`)
//!    *before* the first key is read, so every key changed during or after the
//!    initial copy is in the set of keys to copy again ("pending").
//! 2. The initial copy: `SCAN` of the source, [`Copier::copy`] per batch.
//! 3. Following: pending keys are copied again as they are on the source at that
//!    moment (a deleted or expired key is deleted on the target), in batches.
//! 4. Every `verify_every`, a verification pass on connections of its own; each
//!    difference it confirms becomes a pending key (a repair), so lost
//!    notifications and the TTL race are repaired, not ignored. `FLUSHDB` on the
//!    source sends no key events: the pass finds the target's keys extra and the
//!    copier deletes them.
//! 5. A lost subscription (the server dropped a slow subscriber, say) is
//!    re-established at once and followed by a verification pass, since events
//!    may have been missed meanwhile.
//!
//! "Converged" means: the last verification pass found no difference it had to
//! repair, nothing is pending now, and the target refused nothing since.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::CacheError;
use super::compare::{CompareOptions, Keys, PASS_WORKERS, Tally, connect_pairs, pass};
use super::copy::{Copier, CopyFigures, CopyOptions, CopyStats};
use super::resp::{Cmd, Conn, Value};
use super::url::RedisUrl;
use crate::dsn::Side;

/// How a sync runs.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    pub copy: CopyOptions,
    pub ttl_tolerance: Duration,
    /// Keys compared per pass each way (0: all).
    pub sample: u64,
    pub verify_every: Duration,
    /// Follow the source after the initial copy (false: copy, repair, stop).
    pub follow: bool,
    /// Turn the source's keyspace notifications on when they are off.
    pub enable_notifications: bool,
}

/// Where a sync stands; what the status file and the plan's gate read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// `copying`, then `following` (or `verifying`, with `--once`), `stopping`,
    /// and `stopped` or `failed`.
    pub phase: &'static str,
    pub source: String,
    pub target: String,
    /// Keys on the source when the copy began (`DBSIZE`).
    pub keys_total: u64,
    /// Keys the initial copy has gone through (copied, skipped or deleted).
    pub scanned: u64,
    #[serde(flatten)]
    pub copy: CopyFigures,
    /// Keyspace notifications received.
    pub events: u64,
    /// Keys waiting to be copied again.
    pub pending: u64,
    /// Times the subscription was lost and re-established.
    pub notifications_lost: u64,
    pub verify_passes: u64,
    pub last_verify: Option<Tally>,
    pub converged: bool,
    pub elapsed_s: f64,
    /// When the initial copy ended, in seconds since the start.
    pub copy_done_s: Option<f64>,
    pub error: Option<String>,
}

struct Shared {
    pending: Mutex<HashSet<Vec<u8>>>,
    /// Keys taken from `pending` whose copy has not finished: still pending for
    /// the status, so "converged" never shows while a copy is in flight.
    in_flight: AtomicU64,
    wake: Notify,
    stats: CopyStats,
    events: AtomicU64,
    lost: AtomicU64,
    verify_now: AtomicBool,
    /// Target refusals counted when the last pass began.
    errors_at_pass: AtomicU64,
    status: Mutex<Status>,
    started: Instant,
}

impl Shared {
    fn mark(&self, key: Vec<u8>) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key);
        self.wake.notify_one();
    }

    fn take(&self, n: usize) -> Vec<Vec<u8>> {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let keys: Vec<Vec<u8>> = p.iter().take(n).cloned().collect();
        for k in &keys {
            p.remove(k);
        }
        self.in_flight
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        keys
    }

    /// Keys from [`Shared::take`] whose copy is over (or given back).
    fn done(&self, n: usize) {
        self.in_flight.fetch_sub(n as u64, Ordering::Relaxed);
    }

    fn pending(&self) -> u64 {
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64;
        waiting + self.in_flight.load(Ordering::Relaxed)
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The status with the live counters filled in.
    fn snapshot(&self) -> Status {
        let mut s = self.status().clone();
        s.copy = self.stats.snapshot();
        s.events = self.events.load(Ordering::Relaxed);
        s.notifications_lost = self.lost.load(Ordering::Relaxed);
        s.pending = self.pending();
        s.elapsed_s = self.started.elapsed().as_secs_f64();
        let clean = s.last_verify.as_ref().is_some_and(|t| t.differences() == 0);
        s.converged = clean && s.pending == 0 && s.error.is_none() && !self.errors_since_pass(&s);
        s
    }

    fn errors_since_pass(&self, s: &Status) -> bool {
        s.copy.errors > self.errors_at_pass.load(Ordering::Relaxed)
    }
}

/// A running sync.
pub struct SyncHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), CacheError>>,
}

impl SyncHandle {
    pub fn status(&self) -> Status {
        self.shared.snapshot()
    }

    /// Whether the sync has ended on its own (a `--once` run, or a failure).
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops following, copies what is pending, runs a last verification pass,
    /// and returns the final status.
    pub async fn stop(self) -> Status {
        let _ = self.stop.send(true);
        let result = match self.task.await {
            Ok(r) => r,
            Err(e) => Err(CacheError::Other(format!("the sync task ended: {e}"))),
        };
        finish(&self.shared, result)
    }
}

fn finish(shared: &Shared, result: Result<(), CacheError>) -> Status {
    {
        let mut s = shared.status();
        match result {
            Ok(()) => s.phase = "stopped",
            Err(e) => {
                s.phase = "failed";
                s.error = Some(e.to_string());
            }
        }
    }
    shared.snapshot()
}

/// Connects to both sides, checks (or turns on) the source's notifications when
/// following, subscribes, and starts the copy in the background.
pub async fn start_sync(
    source: &RedisUrl,
    target: &RedisUrl,
    opts: FollowOptions,
) -> Result<SyncHandle, CacheError> {
    let mut src = Conn::connect(source, Side::Source).await?;
    let dst = Conn::connect(target, Side::Target).await?;
    let subscription = if opts.follow {
        let channel = notifications(&mut src, opts.enable_notifications).await?;
        Some(Subscription::open(source, source.db, channel).await?)
    } else {
        None
    };
    let total = src.ok(Cmd::new("DBSIZE")).await?.int().unwrap_or(0).max(0) as u64;
    let shared = Arc::new(Shared {
        pending: Mutex::new(HashSet::new()),
        in_flight: AtomicU64::new(0),
        wake: Notify::new(),
        stats: CopyStats::default(),
        events: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        verify_now: AtomicBool::new(false),
        errors_at_pass: AtomicU64::new(0),
        status: Mutex::new(Status {
            phase: "copying",
            source: source.to_string(),
            target: target.to_string(),
            keys_total: total,
            ..Status::default()
        }),
        started: Instant::now(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let copier = Copier {
        src,
        dst,
        opts: opts.copy.clone(),
    };
    let urls = (source.clone(), target.clone());
    let task = tokio::spawn(run(
        shared.clone(),
        copier,
        subscription,
        urls,
        opts,
        stop_rx,
    ));
    Ok(SyncHandle {
        shared,
        stop: stop_tx,
        task,
    })
}

/// Which notification channel to follow: keyspace (`K`, the key in the channel)
/// or keyevent (`E`, the key in the message). Turns them on when allowed.
async fn notifications(src: &mut Conn, enable: bool) -> Result<Channel, CacheError> {
    let reply = src
        .call(Cmd::new("CONFIG").arg("GET").arg("notify-keyspace-events"))
        .await?;
    let current = match reply {
        Value::Array(v) if v.len() == 2 => v[1].text(),
        Value::Error(e) => {
            return Err(CacheError::Other(format!(
                "cannot read the source's notify-keyspace-events (CONFIG GET refused: {e}); \
                 on a managed Redis set it in the provider's parameter group to KA"
            )));
        }
        _ => String::new(),
    };
    let wanted = "g$lshzxet";
    let types = current.contains('A') || wanted.chars().all(|c| current.contains(c));
    let class = current.contains('K') || current.contains('E');
    if types && class {
        return Ok(if current.contains('K') {
            Channel::Keyspace
        } else {
            Channel::Keyevent
        });
    }
    if !enable {
        return Err(CacheError::Notifications { current });
    }
    let mut flags = current.clone();
    if !class {
        flags.push('K');
    }
    if !types {
        flags.push('A');
    }
    src.ok(Cmd::new("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&flags))
        .await?;
    eprintln!(
        "cache: set notify-keyspace-events on the source from {current:?} to {flags:?} (--enable-notifications)"
    );
    Ok(if flags.contains('K') {
        Channel::Keyspace
    } else {
        Channel::Keyevent
    })
}

#[derive(Debug, Clone, Copy)]
enum Channel {
    Keyspace,
    Keyevent,
}

/// A subscribed connection.
struct Subscription {
    conn: Conn,
    url: RedisUrl,
    db: u32,
    channel: Channel,
}

impl Subscription {
    async fn open(url: &RedisUrl, db: u32, channel: Channel) -> Result<Subscription, CacheError> {
        let mut conn = Conn::connect(url, Side::Source).await?;
        let pattern = match channel {
            Channel::Keyspace => format!("__keyspace@{db}__:*"),
            Channel::Keyevent => format!("__keyevent@{db}__:*"),
        };
        conn.send(&[Cmd::new("PSUBSCRIBE").arg(&pattern)]).await?;
        // The confirmation: ["psubscribe", pattern, 1].
        match conn.read().await? {
            Value::Array(v) if v.first().and_then(Value::bytes) == Some(b"psubscribe") => {}
            other => {
                return Err(CacheError::Other(format!(
                    "the source did not confirm PSUBSCRIBE {pattern}: {}",
                    other.text()
                )));
            }
        }
        Ok(Subscription {
            conn,
            url: url.clone(),
            db,
            channel,
        })
    }

    /// The key of the next notification.
    async fn next(&mut self) -> Result<Vec<u8>, CacheError> {
        loop {
            let msg = self.conn.read().await?.array();
            // ["pmessage", pattern, channel, message]
            if msg.len() != 4 || msg[0].bytes() != Some(b"pmessage") {
                continue;
            }
            let key = match self.channel {
                Channel::Keyspace => {
                    let channel = msg[2].bytes().unwrap_or_default();
                    match channel.iter().position(|&b| b == b':') {
                        Some(i) => channel[i + 1..].to_vec(),
                        None => continue,
                    }
                }
                Channel::Keyevent => msg[3].bytes().unwrap_or_default().to_vec(),
            };
            return Ok(key);
        }
    }
}

/// Receives notifications into the pending set until stopped; re-subscribes
/// after a loss and asks for a verification pass.
async fn listen(shared: Arc<Shared>, mut sub: Subscription, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            next = sub.next() => match next {
                Ok(key) => {
                    shared.events.fetch_add(1, Ordering::Relaxed);
                    shared.mark(key);
                }
                Err(e) => {
                    shared.lost.fetch_add(1, Ordering::Relaxed);
                    eprintln!("cache: lost the source's notifications ({e}); subscribing again");
                    let mut wait = Duration::from_millis(100);
                    loop {
                        if *stop.borrow() {
                            return;
                        }
                        match Subscription::open(&sub.url, sub.db, sub.channel).await {
                            Ok(s) => {
                                sub = s;
                                break;
                            }
                            Err(e) => {
                                eprintln!("cache: cannot subscribe again yet: {e}");
                                tokio::time::sleep(wait).await;
                                wait = (wait * 2).min(Duration::from_secs(5));
                            }
                        }
                    }
                    // Events may have been missed meanwhile.
                    shared.verify_now.store(true, Ordering::Relaxed);
                    shared.wake.notify_one();
                }
            }
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    mut copier: Copier,
    subscription: Option<Subscription>,
    urls: (RedisUrl, RedisUrl),
    opts: FollowOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<(), CacheError> {
    let listener = subscription.map(|s| tokio::spawn(listen(shared.clone(), s, stop.clone())));
    let result = drive(&shared, &mut copier, &urls, &opts, &mut stop).await;
    if let Some(l) = listener {
        l.abort();
    }
    result
}

async fn drive(
    shared: &Arc<Shared>,
    copier: &mut Copier,
    urls: &(RedisUrl, RedisUrl),
    opts: &FollowOptions,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), CacheError> {
    initial_copy(shared, copier, urls, opts, stop).await?;
    {
        let mut s = shared.status();
        s.copy_done_s = Some(shared.started.elapsed().as_secs_f64());
        s.phase = if opts.follow {
            "following"
        } else {
            "verifying"
        };
    }
    let compare = CompareOptions {
        batch: opts.copy.batch,
        big_key_size: opts.copy.big_key_size,
        ttl_tolerance: opts.ttl_tolerance,
        sample: opts.sample,
    };
    if !opts.follow {
        // Copy, repair, and again, until a pass is clean (at most three).
        for _ in 0..3 {
            drain(shared, copier).await?;
            let tally = verify_pass(shared, urls, &compare).await?;
            drain(shared, copier).await?;
            if tally.differences() == 0 {
                break;
            }
        }
        return Ok(());
    }
    let mut verifier: Option<JoinHandle<Result<Tally, CacheError>>> = None;
    let mut next_verify = tokio::time::Instant::now();
    loop {
        // Pending keys first, in batches.
        drain(shared, copier).await?;
        if let Some(v) = verifier.take_if(|v| v.is_finished()) {
            let tally = v
                .await
                .map_err(|e| CacheError::Other(format!("the verification pass ended: {e}")))??;
            record(shared, tally);
            next_verify = tokio::time::Instant::now() + opts.verify_every;
        }
        let due = tokio::time::Instant::now() >= next_verify
            || shared.verify_now.swap(false, Ordering::Relaxed);
        if verifier.is_none() && due {
            let (shared2, urls2, compare2) = (shared.clone(), urls.clone(), compare.clone());
            shared.errors_at_pass.store(
                shared.stats.errors.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            verifier = Some(tokio::spawn(async move {
                let mut pairs = connect_pairs(&urls2.0, &urls2.1, PASS_WORKERS).await?;
                pass(&mut pairs, &compare2, |k| shared2.mark(k.to_vec())).await
            }));
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    // Stopping: what is pending, then a last pass (and its repairs).
    shared.status().phase = "stopping";
    if let Some(v) = verifier {
        v.abort();
    }
    for _ in 0..2 {
        drain(shared, copier).await?;
        let tally = verify_pass(shared, urls, &compare).await?;
        drain(shared, copier).await?;
        if tally.differences() == 0 {
            break;
        }
    }
    Ok(())
}

/// Copiers besides the one that scans, for the initial copy: the source and the
/// target each work on one batch while the other works on the next, instead of
/// taking turns.
const COPY_WORKERS: usize = 3;

/// The initial copy: `SCAN` on the main copier's source connection, batches
/// copied by [`COPY_WORKERS`] copiers of their own. Two copiers may copy one key
/// (`SCAN` can return a key twice) from different moments; a change between the
/// two reads is a notification, so the key is copied again once the initial copy
/// is over (or repaired by the verification pass when not following).
async fn initial_copy(
    shared: &Arc<Shared>,
    copier: &mut Copier,
    urls: &(RedisUrl, RedisUrl),
    opts: &FollowOptions,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), CacheError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Vec<u8>>>(COPY_WORKERS * 2);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..COPY_WORKERS {
        let mut c = Copier {
            src: Conn::connect(&urls.0, Side::Source).await?,
            dst: Conn::connect(&urls.1, Side::Target).await?,
            opts: opts.copy.clone(),
        };
        let (rx, shared) = (rx.clone(), shared.clone());
        workers.spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(keys) = next else {
                    return Ok::<(), CacheError>(());
                };
                c.copy(&keys, &shared.stats).await?;
                shared.status().scanned += keys.len() as u64;
            }
        });
    }
    let mut scan = Keys::new(0, opts.copy.batch);
    let mut result = async {
        while let Some(keys) = scan.next(&mut copier.src).await? {
            // A worker that failed closes nothing; all of them failing does.
            if *stop.borrow() || tx.send(keys).await.is_err() {
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    while let Some(r) = workers.join_next().await {
        let r = r
            .map_err(|e| CacheError::Other(format!("a copy worker ended: {e}")))
            .and_then(|r| r);
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// A pass on connections of its own, its differences repaired.
async fn verify_pass(
    shared: &Arc<Shared>,
    urls: &(RedisUrl, RedisUrl),
    compare: &CompareOptions,
) -> Result<Tally, CacheError> {
    shared.errors_at_pass.store(
        shared.stats.errors.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    let mut pairs = connect_pairs(&urls.0, &urls.1, PASS_WORKERS).await?;
    let tally = pass(&mut pairs, compare, |k| shared.mark(k.to_vec())).await?;
    record(shared, tally.clone());
    Ok(tally)
}

fn record(shared: &Shared, mut tally: Tally) {
    tally.repaired = tally.differences();
    if tally.differences() > 0 {
        eprintln!(
            "cache: verification found {} missing, {} different, {} extra of {} keys; copying them again{}",
            tally.missing,
            tally.different,
            tally.extra,
            tally.compared,
            tally
                .examples
                .first()
                .map(|e| format!(" (e.g. {e})"))
                .unwrap_or_default()
        );
    }
    let mut s = shared.status();
    s.verify_passes += 1;
    s.last_verify = Some(tally);
}

/// Copies every pending key.
async fn drain(shared: &Shared, copier: &mut Copier) -> Result<(), CacheError> {
    loop {
        let keys = shared.take(copier.opts.batch.max(1));
        if keys.is_empty() {
            return Ok(());
        }
        let copied = copier.copy(&keys, &shared.stats).await;
        let n = keys.len();
        if let Err(e) = copied {
            // Keep them for the next try; the error stops the sync.
            for k in keys {
                shared.mark(k);
            }
            shared.done(n);
            return Err(e);
        }
        shared.done(n);
    }
}
