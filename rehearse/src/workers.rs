//! Writers past the proxy: what a real platform has writing to its databases while
//! it migrates besides its users' requests. Per database app, two background
//! workers, one deployed in each cluster: one connected straight to the old
//! database, one straight to the new (role `<app>_worker`), each inserting a row
//! every [`WORKER_EVERY`]; and for [`NIGHTLY_APP`] a nightly-job-style writer as
//! another role (`<app>_nightly`), a batch of rows in one transaction every
//! [`NIGHTLY_EVERY`], on both sides too.
//!
//! A write is acknowledged when its commit returned (and with it the new rows'
//! ids); each one is kept in memory with its id and body. A write that fails (the
//! write block before or after the switchover, a table not there yet, a session the
//! switchover ended, a reset connection) is not acknowledged: it is counted by
//! reason and the writer goes on after a short backoff, reconnecting when its
//! connection broke. [`check`] then looks every acknowledged write up where that
//! app's writes go at the end, as `writes.rs` does for the load generator's ledger.
//!
//! The new cluster's writers write from the start, as a worker deployed early
//! does: "undefined table" until `sync` creates their table, then the write block's
//! refusal until its switchover. `sync` creates each table and its block in one
//! transaction, so none of their writes can land in the replica.
//!
//! Roles are cluster-wide, so both clusters get them before the plan runs; the
//! grants are made on the old database and copied to the new one by `sync` with
//! the schema. The roles and grants themselves are in `platform.rs`.

mod check;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cutover_controller::{Connector, Dsn};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_postgres::{Client, Statement};

use super::cluster::Cluster;
use super::platform::{AppDef, stateful};

pub use check::{check, section};

/// Time between the starts of two writes of a worker.
pub const WORKER_EVERY: Duration = Duration::from_millis(20);
/// Time between the starts of two batches of the nightly job.
pub const NIGHTLY_EVERY: Duration = Duration::from_secs(1);
/// Rows in each of the nightly job's transactions.
pub const NIGHTLY_BATCH: usize = 10;
/// The app that also has a nightly job.
pub const NIGHTLY_APP: &str = "ecommerce";
/// The longest wait after a failed write or connection: the backoff doubles from
/// the writer's own interval up to this, or up to that interval when it is longer
/// (a failed nightly batch is tried again at the next one's time).
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// A write (or a connection) that takes longer is given up and its connection
/// dropped. The switchover's block waits for writers' locks for up to its own
/// deadline, during which an INSERT queues: longer than that.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`Workers::stop`] lets the writes in progress finish.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// What kind of writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A queue worker: one row per write, every [`WORKER_EVERY`].
    Worker,
    /// A nightly job: [`NIGHTLY_BATCH`] rows in one transaction every
    /// [`NIGHTLY_EVERY`].
    Nightly,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Worker => "workers",
            Kind::Nightly => "nightly job",
        }
    }

    /// Its login role for `app`.
    pub fn role(self, app: &AppDef) -> String {
        match self {
            Kind::Worker => format!("{}_worker", app.name),
            Kind::Nightly => format!("{}_nightly", app.name),
        }
    }

    fn every(self) -> Duration {
        match self {
            Kind::Worker => WORKER_EVERY,
            Kind::Nightly => NIGHTLY_EVERY,
        }
    }

    fn rows(self) -> usize {
        match self {
            Kind::Worker => 1,
            Kind::Nightly => NIGHTLY_BATCH,
        }
    }
}

/// Which cluster a writer is deployed in (and connects to); `Proxy` for the
/// writes users make through the proxy (the WebSocket clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Old,
    New,
    Proxy,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
            Side::Proxy => "proxy",
        }
    }
}

/// One writer's login role, with its password (the same on both clusters).
#[derive(Clone)]
pub struct WriterRole {
    pub app: &'static AppDef,
    pub kind: Kind,
    pub name: String,
    password: String,
}

impl std::fmt::Debug for WriterRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterRole")
            .field("app", &self.app.name)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl WriterRole {
    /// Never print it.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The table it writes to.
    pub fn table(&self) -> &'static str {
        self.app.table.unwrap_or("items")
    }
}

/// Every writer role of the platform: a worker per database app, and the nightly
/// job of [`NIGHTLY_APP`]; each with a password from `password`.
pub fn roles(mut password: impl FnMut() -> String) -> Vec<WriterRole> {
    let mut roles = Vec::new();
    for app in stateful() {
        for kind in [Kind::Worker, Kind::Nightly] {
            if kind == Kind::Nightly && app.name != NIGHTLY_APP {
                continue;
            }
            roles.push(WriterRole {
                app,
                kind,
                name: kind.role(app),
                password: password(),
            });
        }
    }
    roles
}

/// The lines of the run directory's `passwords` file for `roles`.
pub fn listing(roles: &[WriterRole]) -> String {
    roles
        .iter()
        .map(|r| format!("old+new {} {}\n", r.name, r.password))
        .collect()
}

/// A write the server acknowledged.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: i32,
    pub body: String,
    /// When the commit returned, Unix seconds.
    pub at: f64,
}

/// What one writer did.
#[derive(Debug, Clone)]
pub struct Tally {
    pub app: &'static AppDef,
    /// What kind of writer, as the report groups them ([`Kind::label`], or
    /// another writer's label such as the WebSocket clients').
    pub kind: &'static str,
    pub side: Side,
    pub role: String,
    pub acks: Vec<Ack>,
    /// Rows whose write failed (and connections that failed), by reason.
    pub refused: BTreeMap<String, u64>,
    /// Rows it tried to write.
    pub attempts: u64,
    pub reconnects: u64,
}

/// What a writer needs to run.
struct Spec {
    role: WriterRole,
    side: Side,
    /// Includes the password: never shown.
    dsn: String,
    /// Tells this run's bodies from any other's.
    run: String,
}

struct Running {
    tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
}

/// The running writers; aborted when dropped (an error or Ctrl-C mid-run), so that
/// nothing keeps writing after the rehearsal.
pub struct Workers {
    stop: watch::Sender<bool>,
    running: Vec<Running>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for r in &self.running {
            r.task.abort();
        }
    }
}

/// Starts every role's writer on both clusters, on the current runtime.
pub fn start(old: &Cluster, new: &Cluster, roles: &[WriterRole]) -> Workers {
    let run: String = format!("{:08x}", rand::random::<u32>());
    let (stop, stopped) = watch::channel(false);
    let mut running = Vec::new();
    for role in roles {
        for (side, cluster) in [(Side::Old, old), (Side::New, new)] {
            let spec = Spec {
                role: role.clone(),
                side,
                dsn: cluster.dsn_as(&role.name, &role.password, role.app.database()),
                run: run.clone(),
            };
            running.push(spawn(spec, stopped.clone()));
        }
    }
    Workers { stop, running }
}

impl Workers {
    /// Stops every writer after the write in progress (bounded by [`STOP_WITHIN`];
    /// one still writing then is aborted, and its write counts as not
    /// acknowledged) and returns what each did.
    pub async fn stop(mut self) -> Vec<Tally> {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + STOP_WITHIN;
        let running = std::mem::take(&mut self.running);
        let mut tallies = Vec::with_capacity(running.len());
        for mut r in running {
            if timeout(
                deadline.saturating_duration_since(Instant::now()),
                &mut r.task,
            )
            .await
            .is_err()
            {
                r.task.abort();
            }
            tallies.push(
                r.tally
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            );
        }
        tallies
    }

    /// Acknowledged writes so far, by side.
    #[cfg(test)]
    pub fn acknowledged(&self, side: Side) -> usize {
        self.running
            .iter()
            .map(|r| r.tally.lock().unwrap_or_else(PoisonError::into_inner))
            .filter(|t| t.side == side)
            .map(|t| t.acks.len())
            .sum()
    }
}

fn spawn(spec: Spec, stopped: watch::Receiver<bool>) -> Running {
    let tally = Arc::new(Mutex::new(Tally {
        app: spec.role.app,
        kind: spec.role.kind.label(),
        side: spec.side,
        role: spec.role.name.clone(),
        acks: Vec::new(),
        refused: BTreeMap::new(),
        attempts: 0,
        reconnects: 0,
    }));
    let task = tokio::spawn(write_loop(spec, Arc::clone(&tally), stopped));
    Running { tally, task }
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Why a write failed, as the report counts it, and whether the connection is
/// gone with it.
fn reason(e: &tokio_postgres::Error) -> (String, bool) {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let why = match code {
            "25006" => "write block (read-only)",
            "42P01" => "table not there yet",
            "42501" => "permission denied",
            "57P01" | "57P02" | "57P03" => "session ended by the server",
            "40001" | "40P01" => "serialization failure or deadlock",
            _ => return (format!("SQLSTATE {code}"), false),
        };
        return (why.to_string(), code.starts_with("57"));
    }
    if e.is_closed() {
        ("connection closed".into(), true)
    } else {
        ("connection error".into(), true)
    }
}

/// The writer: a write every `kind.every()` (no catching up after a slow one),
/// until `stopped` says so.
async fn write_loop(spec: Spec, tally: Arc<Mutex<Tally>>, mut stopped: watch::Receiver<bool>) {
    let kind = spec.role.kind;
    let sql = format!(
        "INSERT INTO {} (body) VALUES ($1) RETURNING id",
        spec.role.table()
    );
    let mut client: Option<Client> = None;
    // The INSERT, prepared once per connection (as an application's driver does).
    let mut statement: Option<Statement> = None;
    let mut next = Instant::now();
    let mut backoff = kind.every();
    let mut n: u64 = 0;
    // A connection broke: the next one made is a reconnection.
    let mut reconnecting = false;
    // Failures count rows: a refused batch is `kind.rows()` writes refused.
    let count = |why: String, rows: usize| {
        let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
        *t.refused.entry(why).or_default() += rows as u64;
    };
    // Never retry sooner than the writer's own interval, nor wait much longer.
    let longest = BACKOFF_MAX.max(kind.every());
    // Over the TLS its DSN asks for, as the apps connect.
    let connector = match Dsn::parse(cutover_controller::Side::Target, &spec.dsn)
        .and_then(|d| Connector::new(&d))
    {
        Ok(c) => c,
        Err(e) => {
            count(format!("connect: {e}"), 1);
            return;
        }
    };
    loop {
        tokio::select! {
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    return;
                }
                continue;
            }
            () = sleep_until(next) => {}
        }
        if *stopped.borrow() {
            return;
        }
        if client.as_ref().is_some_and(Client::is_closed) {
            client = None;
            reconnecting = true;
        }
        if client.is_none() {
            statement = None;
            match timeout(WRITE_TIMEOUT, connector.client()).await {
                Ok(Ok(c)) => {
                    if reconnecting {
                        tally
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .reconnects += 1;
                        reconnecting = false;
                    }
                    client = Some(c);
                }
                Ok(Err(e)) => count(format!("connect: {}", reason(&e).0), 1),
                Err(_) => count("connect: timed out".into(), 1),
            }
        }
        let Some(c) = client.as_mut() else {
            next = Instant::now() + backoff;
            backoff = (backoff * 2).min(longest);
            continue;
        };
        let bodies: Vec<String> = (0..kind.rows())
            .map(|_| {
                n += 1;
                body(&spec, n)
            })
            .collect();
        let started = Instant::now();
        tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .attempts += bodies.len() as u64;
        let failed = match timeout(WRITE_TIMEOUT, write(c, &mut statement, kind, &sql, &bodies))
            .await
        {
            Ok(Ok(ids)) => {
                let at = unix_now();
                let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                t.acks.extend(
                    ids.into_iter()
                        .zip(bodies)
                        .map(|(id, body)| Ack { id, body, at }),
                );
                None
            }
            Ok(Err(e)) => {
                let (why, lost) = reason(&e);
                count(why, bodies.len());
                Some(lost)
            }
            Err(_) => {
                count("timed out".into(), bodies.len());
                Some(true)
            }
        };
        match failed {
            None => {
                backoff = kind.every();
                next = (started + kind.every()).max(Instant::now());
            }
            Some(lost) => {
                if lost {
                    // Dropped: a new connection on the next try.
                    client = None;
                    reconnecting = true;
                }
                next = Instant::now() + backoff;
                backoff = (backoff * 2).min(longest);
            }
        }
    }
}

/// A body that names its write: the run, the app, the writer, the side and a
/// number; unique in the whole rehearsal.
fn body(spec: &Spec, n: u64) -> String {
    let (app, kind, side) = (
        spec.role.app.name,
        match spec.role.kind {
            Kind::Worker => "worker",
            Kind::Nightly => "nightly",
        },
        spec.side.label(),
    );
    format!(
        "{{\"writer\":\"{kind}\",\"app\":\"{app}\",\"side\":\"{side}\",\"write\":\"{}-{app}-{kind}-{side}-{n}\"}}",
        spec.run
    )
}

/// One write: a single INSERT (autocommit) for a worker; for the nightly job, every
/// body's INSERT in one transaction. The ids, once committed. `sql` is prepared on
/// the connection's first write and kept in `statement`.
async fn write(
    client: &mut Client,
    statement: &mut Option<Statement>,
    kind: Kind,
    sql: &str,
    bodies: &[String],
) -> Result<Vec<i32>, tokio_postgres::Error> {
    let sql = match statement {
        Some(s) => s.clone(),
        None => statement.insert(client.prepare(sql).await?).clone(),
    };
    let sql = &sql;
    match kind {
        Kind::Worker => {
            let mut ids = Vec::with_capacity(bodies.len());
            for b in bodies {
                ids.push(client.query_one(sql, &[b]).await?.try_get(0)?);
            }
            Ok(ids)
        }
        Kind::Nightly => {
            let tx = client.transaction().await?;
            let mut ids = Vec::with_capacity(bodies.len());
            for b in bodies {
                ids.push(tx.query_one(sql, &[b]).await?.try_get(0)?);
            }
            tx.commit().await?;
            Ok(ids)
        }
    }
}

#[cfg(test)]
mod tests;
