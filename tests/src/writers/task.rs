//! The paced writer task and its ledger: one insert per tick until stopped or
//! bounded, every acknowledged write and every error recorded, a lost connection
//! replaced on the next tick. Plus the check that every acknowledged row is there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Conn, Prepared, WriteError, WriterKind};
use crate::Postgres;

/// How a [`Writer`] paces and bounds itself.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Time between the starts of two writes.
    pub interval: Duration,
    /// The writer stops by itself after this long…
    pub max_duration: Duration,
    /// …or after this many attempts.
    pub max_attempts: Option<u64>,
    /// How long an `OpenTransaction` writer keeps each transaction open.
    pub hold: Duration,
    /// Prefix of the bodies (`{label}-{n}`); the kind's name by default. Give
    /// writers of the same kind on the same table different labels.
    pub label: Option<String>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            interval: Duration::from_millis(5),
            max_duration: Duration::from_secs(60),
            max_attempts: None,
            hold: Duration::from_millis(200),
            label: None,
        }
    }
}

/// A write the server acknowledged: its commit returned OK.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: i64,
    pub body: String,
    /// When the write started and when it was acknowledged.
    pub started: Instant,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Ledger {
    acks: Vec<Ack>,
    errors: Vec<WriteError>,
    attempts: u64,
    reconnects: u64,
}

/// A running writer; aborted on drop (call [`Writer::stop`] to let it finish the
/// write in progress).
pub struct Writer {
    pub kind: WriterKind,
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

impl Prepared {
    /// Starts a paced writer on the current runtime.
    pub fn start(&self, opts: WriterOptions) -> Writer {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(self.clone(), opts, ledger.clone(), stopped));
        Writer {
            kind: self.kind,
            ledger,
            stop,
            task: Some(task),
        }
    }
}

impl Writer {
    /// Every acknowledged write so far, as (id, body).
    pub fn acked(&self) -> Vec<(i64, String)> {
        let l = self.ledger.lock().unwrap();
        l.acks.iter().map(|a| (a.id, a.body.clone())).collect()
    }

    /// Every acknowledged write so far, with its times.
    pub fn acks(&self) -> Vec<Ack> {
        self.ledger.lock().unwrap().acks.clone()
    }

    /// Every failed connect, write or commit so far.
    pub fn errors(&self) -> Vec<WriteError> {
        self.ledger.lock().unwrap().errors.clone()
    }

    pub fn attempts(&self) -> u64 {
        self.ledger.lock().unwrap().attempts
    }

    /// Sessions opened after a lost one.
    pub fn reconnects(&self) -> u64 {
        self.ledger.lock().unwrap().reconnects
    }

    /// One line: counts, and the errors by SQLSTATE.
    pub fn summary(&self) -> String {
        let l = self.ledger.lock().unwrap();
        let mut codes: HashMap<&str, usize> = HashMap::new();
        for e in &l.errors {
            *codes.entry(e.code()).or_default() += 1;
        }
        let mut codes: Vec<_> = codes.into_iter().collect();
        codes.sort();
        format!(
            "{}: {} attempts, {} acknowledged, {} reconnects, errors {codes:?}{}",
            self.kind.name(),
            l.attempts,
            l.acks.len(),
            l.reconnects,
            l.errors
                .last()
                .map(|e| format!(", last: {e}"))
                .unwrap_or_default()
        )
    }

    /// Asks the writer to stop after the write in progress (an open transaction is
    /// committed first) and waits for it.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        self.finished().await;
    }

    /// Waits until the writer has stopped by itself (its bounds) or been stopped.
    pub async fn finished(&mut self) {
        if let Some(task) = self.task.take() {
            task.await.expect("the writer task panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(
    p: Prepared,
    opts: WriterOptions,
    ledger: Arc<Mutex<Ledger>>,
    mut stopped: watch::Receiver<bool>,
) {
    let until = Instant::now() + opts.max_duration;
    let label = opts.label.clone().unwrap_or_else(|| p.kind.name().into());
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<Conn> = None;
    let mut connected_before = false;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        if *stopped.borrow() || Instant::now() >= until || opts.max_attempts.is_some_and(|m| n >= m)
        {
            break;
        }
        n += 1;
        ledger.lock().unwrap().attempts = n;
        let c = match conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => match p.connect().await {
                Ok(c) => {
                    if connected_before {
                        ledger.lock().unwrap().reconnects += 1;
                    }
                    connected_before = true;
                    c
                }
                Err(e) => {
                    ledger.lock().unwrap().errors.push(e);
                    continue;
                }
            },
        };
        let body = format!("{label}-{n}");
        let started = Instant::now();
        let result = if p.kind == WriterKind::OpenTransaction {
            hold_open(&c, &body, opts.hold).await
        } else {
            c.insert(&body).await
        };
        let mut l = ledger.lock().unwrap();
        match result {
            Ok(id) => {
                l.acks.push(Ack {
                    id,
                    body,
                    started,
                    at: Instant::now(),
                });
                conn = Some(c);
            }
            Err(e) => {
                let keep = !e.lost;
                l.errors.push(e);
                if keep {
                    conn = Some(c);
                }
            }
        }
    }
}

/// Inserts, keeps the transaction open for `hold`, commits. The pause is the
/// writer's pacing: what it models is a transaction open when a hold begins.
async fn hold_open(c: &Conn, body: &str, hold: Duration) -> Result<i64, WriteError> {
    let id = c.begin_insert(body).await?;
    tokio::time::sleep(hold).await;
    c.commit().await?;
    Ok(id)
}

/// Asserts that every acknowledged (id, body) is in `items` of database `app`.
pub async fn assert_all_on(pg: &Postgres, acked: &[(i64, String)], what: &str) {
    assert_all_in(pg, "app", "items", acked, what).await;
}

/// Asserts that every acknowledged (id, body) is in `table` of `db`; on failure
/// says how many are missing, with examples.
pub async fn assert_all_in(
    pg: &Postgres,
    db: &str,
    table: &str,
    acked: &[(i64, String)],
    what: &str,
) {
    let rows: HashMap<i64, String> = pg
        .connect(db)
        .await
        .query(&format!("SELECT id::bigint, body FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("read {table} on {}: {e}", pg.name))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<&(i64, String)> = acked
        .iter()
        .filter(|(id, body)| rows.get(id) != Some(body))
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} acknowledged writes missing from {table} on {}, e.g. {:?}",
        missing.len(),
        acked.len(),
        pg.name,
        &missing[..missing.len().min(5)]
    );
}
