//! `sync`: schema copy, publication, subscription, and the wait for the initial
//! copy. Every step looks before it acts, so a second run changes nothing.

pub(crate) mod copy;
pub(crate) mod schema;

pub use copy::CopyMode;
pub use schema::use_programs_from;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::catalog::{self, Name};
use crate::check::{self, CheckOptions};
use crate::db::Db;
use crate::dsn::Dsn;
use crate::error::Error;
use crate::heartbeat::Heartbeat;
use crate::link::Link;
use crate::observe::{Observer, TableProgress, state_name};
use crate::switchover::block;

/// How long blocking the target's tables may wait for their locks.
const BLOCK_WITHIN: Duration = Duration::from_secs(30);

/// How `sync` runs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Wait until every table is ready (`r`).
    pub wait: bool,
    /// Give up waiting after this long (replication keeps going).
    pub timeout: Option<Duration>,
    /// The source as the target server reaches it, when that differs from the
    /// controller's view (e.g. a cluster-internal host name).
    pub source_for_target: Option<Dsn>,
    /// Sessions building the indexes and constraints after the initial copy.
    pub jobs: usize,
    /// Their `maintenance_work_mem` (e.g. `512MB`); `None`: the server's.
    pub maintenance_work_mem: Option<String>,
    /// Who copies the rows. The controller's copy needs `wait` (it runs in this
    /// process) and falls back to the subscription's where it cannot run.
    pub copy: CopyMode,
    /// With the controller's copy: a table larger than this (on the source's
    /// disk) is copied in parts of about this size, in parallel.
    pub part_bytes: i64,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            wait: true,
            timeout: None,
            source_for_target: None,
            jobs: 2,
            maintenance_work_mem: Some(DEFAULT_INDEX_MEMORY.into()),
            copy: CopyMode::default(),
            part_bytes: copy::PART_BYTES,
        }
    }
}

/// The build sessions' `maintenance_work_mem` unless told otherwise: enough to
/// sort a 20-million-row key in memory; with `--jobs 2` and PostgreSQL's parallel
/// index workers sharing it, about 1 GB of the target's memory at the peak.
pub const DEFAULT_INDEX_MEMORY: &str = "512MB";

/// How often the post-data build is tried: a deadlock with the subscription's
/// apply (which PostgreSQL resolves by cancelling one side) fails one attempt.
const BUILD_ATTEMPTS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// One step and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStep {
    pub step: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub steps: Vec<SyncStep>,
    pub tables: Vec<TableProgress>,
    pub ready: bool,
    pub elapsed_ms: u128,
}

impl SyncReport {
    /// Whether this run changed anything.
    pub fn changed(&self) -> bool {
        self.steps.iter().any(|s| s.outcome != Outcome::Unchanged)
    }
}

/// Runs `sync` for migration `name`. The preflight runs first and stops it on any
/// blocker.
pub async fn sync(
    src: &Db,
    tgt: &Db,
    name: &str,
    opts: &SyncOptions,
    obs: &dyn Observer,
) -> Result<SyncReport, Error> {
    let started = Instant::now();
    let link = Link::forward(name);
    let report = check::check(src, tgt, name, CheckOptions::default()).await?;
    if !report.passed() {
        return Err(Error::Blocked {
            count: report.blockers(),
            list: report.blocker_list(),
        });
    }
    let mut steps = Vec::new();
    let mut step = |step: &'static str, outcome: Outcome, detail: String| {
        obs.note(&format!("{step}: {detail}"));
        steps.push(SyncStep {
            step,
            outcome,
            detail,
        });
    };

    let created_src = catalog::ensure_own_schema(src).await?;
    let created_tgt = catalog::ensure_own_schema(tgt).await?;
    let heartbeat = Heartbeat::new(name);
    heartbeat.plant(src).await?;
    step(
        "controller schema",
        if created_src || created_tgt {
            Outcome::Created
        } else {
            Outcome::Unchanged
        },
        "_cutover.heartbeat and _cutover.blocked on both sides".into(),
    );

    let subscription = link.subscription(tgt).await?;
    if subscription.is_some() {
        // A run stopped between creating the subscription and removing the
        // marker: the subscription carries the target now.
        copy::unmark(tgt, name).await?;
    } else {
        let emptied = copy::undo_interrupted(tgt, name).await?;
        if !emptied.is_empty() {
            step(
                "interrupted copy",
                Outcome::Updated,
                format!(
                    "{} table(s) emptied that an interrupted copy by the controller had begun \
                     to fill; the copy starts over",
                    emptied.len()
                ),
            );
        }
    }
    let mut by_controller = subscription.is_none() && opts.copy == CopyMode::Controller;
    if by_controller && !opts.wait {
        step(
            "initial copy",
            Outcome::Unchanged,
            "the controller copies only while sync waits; without waiting, the subscription copies"
                .into(),
        );
        by_controller = false;
    } else if by_controller && !copy::may_bypass_block(tgt).await {
        step(
            "initial copy",
            Outcome::Unchanged,
            "the controller may not set session_replication_role on the target (a superuser's \
             setting), which its copy needs to write past the target's write block; the \
             subscription copies instead"
                .into(),
        );
        by_controller = false;
    }
    let (outcome, detail) = copy_schema(src, tgt, subscription.is_some(), !by_controller).await?;
    step("schema", outcome, detail);

    // The target refuses writes from here until its switchover, so a worker of
    // the new cluster that starts early gets an error instead of writing into a
    // replica. The subscription's workers are not affected.
    let before = block::blocked_tables(tgt).await?.len();
    let blocked = block::block(tgt, tokio::time::Instant::now() + BLOCK_WITHIN).await?;
    step(
        "target write block",
        if blocked.tables > before {
            Outcome::Created
        } else {
            Outcome::Unchanged
        },
        format!(
            "the target refuses application writes on {} table(s) until the switchover",
            blocked.tables
        ),
    );

    let tables = catalog::published_tables(src).await?;
    match link.ensure_publication(src, &tables).await? {
        Some(done) => step("publication", Outcome::Created, done),
        None => step(
            "publication",
            Outcome::Unchanged,
            format!("{} already publishes all {} table(s)", name, tables.len()),
        ),
    }

    // The source's row estimates and sizes, for the progress of either copy.
    let estimates: HashMap<Name, i64> = catalog::tables(src)
        .await?
        .into_iter()
        .map(|t| (t.name, t.estimated_rows))
        .collect();
    let sizes = catalog::table_sizes(src).await?;
    let mut post_built = false;
    match subscription {
        None => {
            // A slot left by an interrupted run would start at an old position;
            // the subscription (or the controller's copy) creates a fresh one.
            let stale = link.slot(src).await?.is_some_and(|s| !s.active);
            if stale {
                link.drop_slot(src, Duration::from_secs(10)).await?;
            }
            let conninfo = opts
                .source_for_target
                .as_ref()
                .unwrap_or(src.dsn())
                .secret_conninfo()
                .to_string();
            let with = link.options(src, tgt).await?;
            let snapshot = if by_controller {
                copy::mark(tgt, name).await?;
                match copy::Snapshot::export(src.dsn(), name).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        step(
                            "initial copy",
                            Outcome::Unchanged,
                            format!(
                                "the controller cannot hold a snapshot on the source ({e}); \
                                 the subscription copies instead"
                            ),
                        );
                        None
                    }
                }
            } else {
                None
            };
            let mut detail = match snapshot {
                Some(snapshot) => {
                    let tables = catalog::published_tables(src).await?;
                    let known = (&estimates, &sizes);
                    let copied =
                        controller_copy(src, tgt, &snapshot, &tables, known, opts, obs).await;
                    snapshot.release().await;
                    let copied = copied.inspect_err(|_| {
                        obs.note(
                            "the copy stopped; the next `cutover db sync` empties the tables it \
                             began to fill and starts over",
                        )
                    })?;
                    step(
                        "initial copy",
                        Outcome::Created,
                        format!(
                            "{} row(s), {} of COPY data, in {} table(s) ({} part(s), {} table(s) \
                             in binary form) by {} session pair(s) in {:.1} s, under the \
                             snapshot of slot {name}",
                            copied.rows,
                            crate::status::bytes(copied.bytes),
                            copied.tables,
                            copied.parts,
                            copied.binary_tables,
                            opts.jobs.max(1),
                            copied.elapsed.as_secs_f64()
                        ),
                    );
                    let (outcome, detail) = post_data(src, tgt, opts, obs).await?;
                    step("indexes and constraints", outcome, detail);
                    post_built = true;
                    link.create_subscription(tgt, &conninfo, false, false, with)
                        .await?;
                    format!(
                        "created on the target on slot {name}, applying the changes made after \
                         the copy's snapshot; {}",
                        with.describe()
                    )
                }
                None => {
                    // The table sync's catch-up applies UPDATEs and DELETEs, which
                    // find their rows by the key: a target without one (an earlier
                    // copy by the controller leaves the tables without) gets them
                    // first.
                    let (outcome, detail) = keys_first(src, tgt, opts).await?;
                    if outcome != Outcome::Unchanged {
                        step("primary keys", outcome, detail);
                    }
                    link.create_subscription(tgt, &conninfo, true, true, with)
                        .await?;
                    let workers = tgt.setting("max_sync_workers_per_subscription").await?;
                    format!(
                        "created on the target with slot {name} on the source; {}; \
                         up to {workers} table(s) copied at once (max_sync_workers_per_subscription)",
                        with.describe()
                    )
                }
            };
            copy::unmark(tgt, name).await?;
            if stale {
                detail.push_str(" (an unused slot of that name was dropped first)");
            }
            step("subscription", Outcome::Created, detail);
        }
        Some(sub) => {
            let mut changes = Vec::new();
            if !sub.enabled {
                tgt.batch(
                    "enable the subscription",
                    &format!("ALTER SUBSCRIPTION {} ENABLE", catalog::ident(name)),
                )
                .await?;
                changes.push("enabled");
            }
            let subscribed: BTreeSet<Name> = link
                .table_states(tgt)
                .await?
                .into_iter()
                .map(|t| t.name)
                .collect();
            if tables.iter().any(|t| !subscribed.contains(t)) {
                tgt.batch(
                    "refresh the subscription",
                    &format!(
                        "ALTER SUBSCRIPTION {} REFRESH PUBLICATION",
                        catalog::ident(name)
                    ),
                )
                .await?;
                changes.push("refreshed for new tables");
            }
            if changes.is_empty() {
                step(
                    "subscription",
                    Outcome::Unchanged,
                    "exists and is enabled".into(),
                );
            } else {
                step("subscription", Outcome::Updated, changes.join(", "));
            }
        }
    }

    let tables = if opts.wait {
        let tables = wait_ready(src, tgt, &link, &heartbeat, &estimates, &sizes, opts, obs).await?;
        if post_built {
            let (outcome, detail) = caught_up(src, tgt, &link, &heartbeat, opts, obs).await?;
            step("catch-up", outcome, detail);
        }
        tables
    } else {
        progress(tgt, &link, &estimates, &sizes, None)
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    };
    let ready = !tables.is_empty() && tables.iter().all(|t| t.state == 'r');
    if ready {
        if !post_built {
            let (outcome, detail) = post_data(src, tgt, opts, obs).await?;
            step("indexes and constraints", outcome, detail);
        }
        let (outcome, detail) = analyze(tgt).await?;
        step("analyze", outcome, detail);
    } else {
        let missing = schema::PostData::find(src, tgt).await?;
        if !missing.complete() {
            step(
                "indexes and constraints",
                Outcome::Unchanged,
                format!(
                    "{} object(s) wait for the initial copy; `cutover db sync` (which waits) \
                     builds them once it is done",
                    missing.names.len()
                ),
            );
        }
    }
    Ok(SyncReport {
        steps,
        tables,
        ready,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// Copies the schema into a target that has none of the source's tables; leaves a
/// target that has all of them alone.
async fn copy_schema(
    src: &Db,
    tgt: &Db,
    subscribed: bool,
    keys: bool,
) -> Result<(Outcome, String), Error> {
    let want: BTreeSet<Name> = catalog::tables(src)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let have: BTreeSet<Name> = catalog::tables(tgt)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let missing: Vec<String> = want.difference(&have).map(|n| n.to_string()).collect();
    if missing.is_empty() {
        if !subscribed {
            refuse_rows(tgt, &have).await?;
        }
        return Ok((
            Outcome::Unchanged,
            format!("the target already has all {} table(s)", want.len()),
        ));
    }
    if subscribed {
        // Tables created on the source since the first sync: their schema alone;
        // the publication and the subscription pick them up next.
        let new: Vec<Name> = want.difference(&have).cloned().collect();
        let (s, t, list) = (src.dsn().clone(), tgt.dsn().clone(), new.clone());
        tokio::task::spawn_blocking(move || schema::copy(&s, &t, &list))
            .await
            .map_err(|e| Error::Precondition(format!("the schema copy did not finish: {e}")))??;
        return Ok((
            Outcome::Updated,
            format!(
                "{} table(s) created on the source since the last sync copied: {}",
                new.len(),
                missing.join(", ")
            ),
        ));
    }
    if missing.len() < want.len() {
        return Err(Error::Precondition(format!(
            "target database ({}): it lacks {} of the source's tables ({}) but has others; \
             create them on the target (and run sync again), or start from an empty target",
            tgt.dsn().redacted(),
            missing.len(),
            missing.join(", ")
        )));
    }
    schema::copy_tables(src, tgt, keys).await?;
    Ok((
        Outcome::Created,
        if keys {
            format!(
                "{} table(s) with their primary keys copied (pg_dump --schema-only); \
                 the other indexes, constraints and triggers are built after the initial copy",
                want.len()
            )
        } else {
            format!(
                "{} table(s) copied (pg_dump --schema-only); their keys, indexes, constraints \
                 and triggers are built after the initial copy",
                want.len()
            )
        },
    ))
}

/// The controller's copy, reported as the table sync's would be.
async fn controller_copy(
    src: &Db,
    tgt: &Db,
    snapshot: &copy::Snapshot,
    tables: &[Name],
    (estimates, sizes): (&HashMap<Name, i64>, &HashMap<Name, i64>),
    opts: &SyncOptions,
    obs: &dyn Observer,
) -> Result<copy::CopyReport, Error> {
    obs.note(&format!(
        "copying {} table(s) under the snapshot of the slot (consistent at {}) with {} session pair(s)",
        tables.len(),
        snapshot.lsn,
        opts.jobs.max(1)
    ));
    let mut rates = Rates::default();
    let mut report = |named: Vec<(Name, TableProgress)>| {
        let tables: Vec<TableProgress> = named
            .into_iter()
            .map(|(name, mut p)| {
                p.rows_estimated = estimates.get(&name).copied().filter(|n| *n >= 0);
                // Heap and TOAST, as the table sync's progress shows it.
                p.bytes_on_source = sizes.get(&name).copied().or(p.bytes_on_source);
                if p.state == 'd' {
                    // Rows are counted per part, bytes as they pass: the rate and
                    // what is left go by bytes.
                    let copied = p.bytes_copied.unwrap_or(0);
                    let rate = rates.update(&name, copied);
                    if let (Some(r), Some(rows)) = (rate, p.rows_copied)
                        && copied > 0
                        && rows > 0
                    {
                        p.rows_per_second = Some(r * rows as f64 / copied as f64);
                    }
                    if let (Some(r), Some(total)) = (rate, p.bytes_on_source)
                        && r > 0.0
                    {
                        p.eta_seconds = Some((total - copied).max(0) as f64 / r);
                    }
                }
                p
            })
            .collect();
        obs.tables(&tables);
    };
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let plan = copy::Plan {
        jobs: opts.jobs,
        part_bytes: opts.part_bytes,
        deadline,
    };
    copy::copy(src, tgt, snapshot, tables, &plan, &mut report).await
}

/// After the controller's copy: waits until the subscription has applied what
/// was written on the source meanwhile (a heartbeat written now has arrived).
async fn caught_up(
    src: &Db,
    tgt: &Db,
    link: &Link,
    heartbeat: &Heartbeat,
    opts: &SyncOptions,
    obs: &dyn Observer,
) -> Result<(Outcome, String), Error> {
    let started = Instant::now();
    loop {
        let lag = heartbeat.measure(src, tgt, Duration::from_secs(10)).await?;
        if !lag.at_least {
            return Ok((
                Outcome::Created,
                format!(
                    "the subscription applied the changes made during the copy and the index \
                     builds in {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
            ));
        }
        let behind = link.slot(src).await?.and_then(|s| s.lag_bytes);
        obs.note(&format!(
            "the subscription is catching up on the changes made during the copy{}",
            behind.map_or(String::new(), |b| format!(
                " ({} behind)",
                crate::status::bytes(b)
            ))
        ));
        if let Some(limit) = opts.timeout
            && started.elapsed() >= limit
        {
            return Err(Error::Timeout {
                what: "the subscription's catch-up after the initial copy".into(),
                after: limit,
            });
        }
    }
}

/// Before the table sync: the primary keys and replica identity indexes the
/// target lacks.
async fn keys_first(src: &Db, tgt: &Db, opts: &SyncOptions) -> Result<(Outcome, String), Error> {
    let mut keys = schema::PostData::find(src, tgt).await?;
    keys.restrict_to_keys(src).await?;
    if keys.complete() {
        return Ok((Outcome::Unchanged, String::new()));
    }
    let started = Instant::now();
    let n = keys.names.len();
    let (t, jobs, memory) = (
        tgt.dsn().clone(),
        opts.jobs,
        opts.maintenance_work_mem.clone(),
    );
    tokio::task::spawn_blocking(move || keys.build(&t, jobs, memory.as_deref()))
        .await
        .map_err(|e| Error::Precondition(format!("the key build did not finish: {e}")))??;
    Ok((
        Outcome::Created,
        format!(
            "{n} primary key(s) and replica identity index(es) the target lacked built in {:.1} s, \
             before the subscription's copy",
            started.elapsed().as_secs_f64()
        ),
    ))
}

/// Builds the indexes, constraints and triggers the target lacks, in parallel.
async fn post_data(
    src: &Db,
    tgt: &Db,
    opts: &SyncOptions,
    obs: &dyn Observer,
) -> Result<(Outcome, String), Error> {
    let (jobs, memory) = (opts.jobs, opts.maintenance_work_mem.as_deref());
    let started = Instant::now();
    let mut built = 0;
    for attempt in 1..=BUILD_ATTEMPTS {
        let missing = schema::PostData::find(src, tgt).await?;
        if missing.complete() {
            break;
        }
        if attempt == 1 {
            built = missing.names.len();
            obs.note(&format!(
                "building {built} index(es), constraint(s) and trigger(s) with {jobs} session(s)"
            ));
        }
        let t = tgt.dsn().clone();
        let memory = memory.map(str::to_string);
        let done = tokio::task::spawn_blocking(move || missing.build(&t, jobs, memory.as_deref()))
            .await
            .map_err(|e| Error::Precondition(format!("the index build did not finish: {e}")))?;
        match done {
            Ok(()) => {}
            Err(e) if attempt < BUILD_ATTEMPTS => {
                obs.note(&format!(
                    "the build stopped ({e}); building what is still missing"
                ));
            }
            Err(e) => return Err(e),
        }
    }
    if built == 0 {
        return Ok((
            Outcome::Unchanged,
            "the target has every index, constraint and trigger of the source".into(),
        ));
    }
    Ok((
        Outcome::Created,
        format!(
            "{built} built in {:.1} s with {jobs} session(s)",
            started.elapsed().as_secs_f64()
        ),
    ))
}

/// Gives the planner statistics for every table of the target that has none
/// (a copied table has never been analyzed).
async fn analyze(tgt: &Db) -> Result<(Outcome, String), Error> {
    let rows = tgt
        .query(
            "find tables never analyzed",
            "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables \
             WHERE last_analyze IS NULL AND last_autoanalyze IS NULL AND schemaname <> '_cutover' \
             ORDER BY 1",
            &[],
        )
        .await?;
    if rows.is_empty() {
        return Ok((
            Outcome::Unchanged,
            "every table of the target has statistics".into(),
        ));
    }
    let started = Instant::now();
    let list: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    tgt.batch(
        "analyze the copied tables",
        &format!("ANALYZE {}", list.join(", ")),
    )
    .await?;
    Ok((
        Outcome::Created,
        format!(
            "{} table(s) analyzed in {:.1} s",
            list.len(),
            started.elapsed().as_secs_f64()
        ),
    ))
}

/// The initial copy inserts every row: a target table that has rows already would
/// fail it on duplicate keys, or end up with both.
async fn refuse_rows(tgt: &Db, tables: &BTreeSet<Name>) -> Result<(), Error> {
    for t in tables {
        let any: bool = tgt
            .query_one(
                "look for rows",
                &format!("SELECT EXISTS (SELECT 1 FROM {})", t.sql()),
                &[],
            )
            .await?
            .get(0);
        if any {
            return Err(Error::Precondition(format!(
                "target database ({}): table {t} already has rows and no subscription feeds it; \
                 the initial copy needs empty tables (TRUNCATE them on the target, or use an empty database)",
                tgt.dsn().redacted(),
            )));
        }
    }
    Ok(())
}

/// Indexes, constraints and triggers of the tables already copied, built while
/// the others are still being copied (one build at a time, in the background), so
/// that a large table's copy and a small one's indexes overlap. What is left is
/// built by the final pass once every table is ready; a failure here only leaves
/// more for it.
#[derive(Default)]
struct EarlyBuild {
    /// Tables whose objects a build has been started for.
    started_for: BTreeSet<Name>,
    running: Option<(usize, tokio::task::JoinHandle<Result<(), Error>>)>,
}

impl EarlyBuild {
    /// Starts a build for the tables in `ready` that none has been started for,
    /// unless one is running. Its own failures (the dump, the build) are notes:
    /// the final pass builds what is missing.
    async fn poll(
        &mut self,
        src: &Db,
        tgt: &Db,
        ready: &BTreeSet<Name>,
        opts: &SyncOptions,
        obs: &dyn Observer,
    ) {
        if self.running.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            return;
        }
        self.finish(obs).await;
        if ready.is_subset(&self.started_for) {
            return;
        }
        self.started_for.extend(ready.iter().cloned());
        let mut post = match schema::PostData::find(src, tgt).await {
            Ok(p) => p,
            Err(e) => {
                obs.note(&format!(
                    "cannot read the schema to build during the copy ({e}); the final pass builds it"
                ));
                return;
            }
        };
        post.restrict(ready);
        if post.complete() {
            return;
        }
        let n = post.names.len();
        obs.note(&format!(
            "building {n} index(es), constraint(s) and trigger(s) of the tables already copied"
        ));
        let (t, jobs, memory) = (
            tgt.dsn().clone(),
            opts.jobs,
            opts.maintenance_work_mem.clone(),
        );
        self.running = Some((
            n,
            tokio::task::spawn_blocking(move || post.build(&t, jobs, memory.as_deref())),
        ));
    }

    /// Waits for the build in flight, if any.
    async fn finish(&mut self, obs: &dyn Observer) {
        if let Some((n, handle)) = self.running.take() {
            match handle.await {
                Ok(Ok(())) => obs.note(&format!("{n} built while the copy went on")),
                Ok(Err(e)) => obs.note(&format!(
                    "a build during the copy stopped ({e}); the final pass builds what is missing"
                )),
                Err(e) => obs.note(&format!("a build during the copy did not finish: {e}")),
            }
        }
    }
}

/// The previous reading of each table being copied, for its rate.
#[derive(Default)]
struct Rates {
    last: HashMap<Name, (Instant, i64, Option<f64>)>,
}

impl Rates {
    /// Rows per second since the last reading, smoothed; `None` until two
    /// readings are apart.
    fn update(&mut self, table: &Name, rows: i64) -> Option<f64> {
        let now = Instant::now();
        match self.last.get(table).copied() {
            Some((at, before, rate)) => {
                let dt = now.duration_since(at).as_secs_f64();
                if dt < 1.0 {
                    return rate;
                }
                let instant = (rows - before).max(0) as f64 / dt;
                let smooth = rate.map_or(instant, |r| 0.7 * r + 0.3 * instant);
                self.last.insert(table.clone(), (now, rows, Some(smooth)));
                Some(smooth)
            }
            None => {
                self.last.insert(table.clone(), (now, rows, None));
                None
            }
        }
    }
}

async fn progress(
    tgt: &Db,
    link: &Link,
    estimates: &HashMap<Name, i64>,
    sizes: &HashMap<Name, i64>,
    mut rates: Option<&mut Rates>,
) -> Result<Vec<(Name, TableProgress)>, Error> {
    let mut out = Vec::new();
    for t in link.table_states(tgt).await? {
        let rows_estimated = estimates.get(&t.name).copied().filter(|n| *n >= 0);
        let rate = match (rates.as_deref_mut(), t.rows_copied) {
            (Some(r), Some(n)) if t.state == 'd' => r.update(&t.name, n),
            _ => None,
        };
        let eta_seconds = match (rate, rows_estimated, t.rows_copied) {
            (Some(r), Some(total), Some(n)) if r > 0.0 => Some((total - n).max(0) as f64 / r),
            _ => None,
        };
        let p = TableProgress {
            rows_estimated,
            bytes_on_source: sizes.get(&t.name).copied(),
            table: t.name.to_string(),
            state: t.state,
            rows_copied: t.rows_copied,
            bytes_copied: t.bytes_copied,
            rows_per_second: rate,
            eta_seconds,
        };
        out.push((t.name, p));
    }
    Ok(out)
}

/// Polls the table states, reporting them, until all are ready. Beats the heartbeat
/// once a second meanwhile.
#[allow(clippy::too_many_arguments)]
async fn wait_ready(
    src: &Db,
    tgt: &Db,
    link: &Link,
    heartbeat: &Heartbeat,
    estimates: &HashMap<Name, i64>,
    sizes: &HashMap<Name, i64>,
    opts: &SyncOptions,
    obs: &dyn Observer,
) -> Result<Vec<TableProgress>, Error> {
    let start = Instant::now();
    let mut last_beat = Instant::now() - Duration::from_secs(1);
    let mut errors_seen = link.error_counts(tgt).await?.0;
    let mut rates = Rates::default();
    let mut early = EarlyBuild::default();
    loop {
        let named = progress(tgt, link, estimates, sizes, Some(&mut rates)).await?;
        let ready: BTreeSet<Name> = named
            .iter()
            .filter(|(n, t)| t.state == 'r' && n.schema != catalog::SCHEMA)
            .map(|(n, _)| n.clone())
            .collect();
        let tables: Vec<TableProgress> = named.into_iter().map(|(_, p)| p).collect();
        obs.tables(&tables);
        if !tables.is_empty() && tables.iter().all(|t| t.state == 'r') {
            early.finish(obs).await;
            return Ok(tables);
        }
        early.poll(src, tgt, &ready, opts, obs).await;
        let (sync_errors, _) = link.error_counts(tgt).await?;
        if sync_errors > errors_seen {
            errors_seen = sync_errors;
            obs.note(&format!(
                "the target reports {sync_errors} failed table copy attempt(s); it retries them; \
                 see the target server's log for the cause (e.g. rows already present)"
            ));
        }
        if let Some(limit) = opts.timeout
            && start.elapsed() >= limit
        {
            early.finish(obs).await;
            let pending: Vec<String> = tables
                .iter()
                .filter(|t| t.state != 'r')
                .map(|t| format!("{} ({})", t.table, state_name(t.state)))
                .collect();
            return Err(Error::Timeout {
                what: format!("the initial copy of {}", pending.join(", ")),
                after: limit,
            });
        }
        if last_beat.elapsed() >= Duration::from_secs(1) {
            heartbeat.beat(src).await?;
            last_beat = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            let outcome = match s.outcome {
                Outcome::Created => "created",
                Outcome::Updated => "updated",
                Outcome::Unchanged => "unchanged",
            };
            writeln!(f, "{:<18} {outcome:<9}  {}", s.step, s.detail)?;
        }
        let ready = self.tables.iter().filter(|t| t.state == 'r').count();
        write!(
            f,
            "tables: {ready}/{} ready{} ({:.1} s)",
            self.tables.len(),
            if self.changed() {
                ""
            } else {
                "; nothing changed"
            },
            self.elapsed_ms as f64 / 1000.0
        )
    }
}
