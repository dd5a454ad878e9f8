//! The initial copy done by the controller (`cutover db sync --copy controller`).
//! The rows pass through the controller instead of PostgreSQL's table sync, so
//! that a large table is copied by several sessions at once, in block ranges, into
//! a table with no index to maintain; every index (the primary keys too) is then
//! built once, by sorting, as `pg_restore` does.
//!
//! It is the protocol of PostgreSQL's own table sync, done by hand:
//! 1. a replication session on the source creates the subscription's slot with
//!    `EXPORT_SNAPSHOT`: the snapshot shows exactly what was committed before the
//!    slot's first change;
//! 2. `jobs` pairs of sessions copy the tables under that snapshot, `COPY … TO
//!    STDOUT` on the source straight into `COPY … FROM STDIN` on the target;
//! 3. the replication session ends (the slot stays), the indexes and constraints
//!    are built, and the subscription is created on that slot with `copy_data =
//!    false`: it applies every change after the snapshot, none twice, none missed.
//!
//! The target's sessions run with `session_replication_role = replica`, as the
//! subscription's own workers do, so the target's write block does not refuse them
//! (it keeps refusing the application). An interrupted copy leaves a marker row in
//! `_cutover.initial_copy`; the next sync empties the copied tables (only while
//! their write block still stands) and starts over.

use std::collections::{BTreeMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::schema::{last_lines, program, tool_error};
use crate::catalog::{self, Name, ident};
use crate::db::Db;
use crate::dsn::Dsn;
use crate::error::Error;
use crate::observe::TableProgress;
use crate::switchover::block;

/// A table larger than this is copied in block ranges of about this size, by as
/// many sessions as there are jobs (unless told otherwise).
pub const PART_BYTES: i64 = 256 << 20;

/// How long creating the slot may wait for the transactions open on the source.
const SLOT_WITHIN: Duration = Duration::from_secs(600);

/// The marker of a copy in progress, on the target.
const MARKER: &str = "CREATE TABLE IF NOT EXISTS _cutover.initial_copy (\
     name text PRIMARY KEY, started timestamptz NOT NULL DEFAULT now())";

/// Which initial copy `sync` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CopyMode {
    /// PostgreSQL's table sync: the subscription copies each table in one
    /// session, straight from the source's server to the target's.
    #[default]
    Subscription,
    /// The controller copies under the slot's snapshot, large tables in parallel
    /// parts, with every index built after the rows.
    Controller,
}

/// The replication session that holds the exported snapshot: a `psql` in
/// replication mode, which keeps the snapshot valid while it sits idle.
pub struct Snapshot {
    child: tokio::process::Child,
    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    /// The slot's consistent point: the subscription starts after it.
    pub lsn: String,
}

impl Snapshot {
    /// Creates slot `slot` (pgoutput) on the source and exports its snapshot.
    pub async fn export(src: &Dsn, slot: &str) -> Result<Snapshot, Error> {
        let fail = |detail: String| tool_error(src, "psql (replication session)", detail);
        let (conninfo, password) = src.tool_conninfo();
        let mut cmd = tokio::process::Command::new(program("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "--dbname"])
            .arg(format!("{conninfo} replication=database"))
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot start it: {e}")))?;
        let stdout = child.stdout.take();
        let mut snapshot = Snapshot {
            child,
            name: String::new(),
            lsn: String::new(),
        };
        let (Some(stdin), Some(stdout)) = (snapshot.child.stdin.as_mut(), stdout) else {
            return Err(fail("no pipes".into()));
        };
        // psql keeps reading its input, so the session stays open (and the
        // snapshot valid) until `release` closes it.
        let sent = stdin
            .write_all(
                format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT;\n",
                    ident(slot)
                )
                .as_bytes(),
            )
            .await;
        let line = match sent {
            Ok(()) => {
                let mut lines = BufReader::new(stdout).lines();
                tokio::time::timeout(SLOT_WITHIN, lines.next_line()).await
            }
            Err(e) => Ok(Err(e)),
        };
        let line = match line {
            Err(_) => {
                return Err(fail(format!(
                    "the slot was not created within {} s (it waits for the transactions open on the source to end)",
                    SLOT_WITHIN.as_secs()
                )));
            }
            Ok(Ok(Some(line))) => line,
            Ok(_) => return Err(fail(snapshot.stderr_tail().await)),
        };
        // slot_name|consistent_point|snapshot_name|output_plugin
        let fields: Vec<&str> = line.trim().split('|').collect();
        let (Some(lsn), Some(name)) = (fields.get(1), fields.get(2)) else {
            return Err(fail(format!(
                "unexpected answer to CREATE_REPLICATION_SLOT ({} field(s))",
                fields.len()
            )));
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_')
        {
            return Err(fail("the server exported no usable snapshot name".into()));
        }
        snapshot.name = name.to_string();
        snapshot.lsn = lsn.to_string();
        Ok(snapshot)
    }

    async fn stderr_tail(&mut self) -> String {
        let mut err = Vec::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), e.read_to_end(&mut err)).await;
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) => last_lines(&err, status),
            _ => String::from_utf8_lossy(&err).trim().to_string(),
        }
    }

    /// Ends the replication session; the slot stays for the subscription.
    pub async fn release(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Whether the target lets the controller's sessions write past its write block
/// (`session_replication_role` is a superuser's setting, or a managed admin's).
pub async fn may_bypass_block(tgt: &Db) -> bool {
    tgt.batch(
        "try session_replication_role",
        "SET session_replication_role = replica; RESET session_replication_role",
    )
    .await
    .is_ok()
}

/// Leaves the marker of a copy in progress on the target.
pub async fn mark(tgt: &Db, name: &str) -> Result<(), Error> {
    tgt.batch("create the copy marker", MARKER).await?;
    tgt.execute(
        "mark the copy in progress",
        "INSERT INTO _cutover.initial_copy (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET started = now()",
        &[&name],
    )
    .await?;
    Ok(())
}

/// Removes the marker: the subscription now carries the target.
pub async fn unmark(tgt: &Db, name: &str) -> Result<(), Error> {
    let exists: bool = tgt
        .query_one(
            "look for the copy marker",
            "SELECT to_regclass('_cutover.initial_copy') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if exists {
        tgt.execute(
            "remove the copy marker",
            "DELETE FROM _cutover.initial_copy WHERE name = $1",
            &[&name],
        )
        .await?;
    }
    Ok(())
}

/// After a copy by the controller was interrupted (no subscription yet, the
/// marker still there): empties the tables it was copying into, so that the next
/// copy starts from nothing. Refuses when a table's write block is gone (the
/// application may have written there). Returns the tables emptied.
pub async fn undo_interrupted(tgt: &Db, name: &str) -> Result<Vec<Name>, Error> {
    let marked: bool = tgt
        .query_one(
            "look for an interrupted copy",
            "SELECT to_regclass('_cutover.initial_copy') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !marked
        || tgt
            .query_opt(
                "look for an interrupted copy",
                "SELECT 1 FROM _cutover.initial_copy WHERE name = $1",
                &[&name],
            )
            .await?
            .is_none()
    {
        return Ok(Vec::new());
    }
    let blocked = block::blocked_tables(tgt).await?;
    let tables: Vec<Name> = catalog::tables(tgt)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    if let Some(open) = tables.iter().find(|t| !blocked.contains(t)) {
        return Err(Error::Precondition(format!(
            "target database ({}): an initial copy by the controller was interrupted, but table {open} \
             no longer refuses application writes, so it may hold rows that are not the copy's; \
             empty the target's tables yourself (TRUNCATE) and delete the row '{name}' from \
             _cutover.initial_copy, then run sync again",
            tgt.dsn().redacted()
        )));
    }
    let mut list: Vec<String> = tables.iter().map(Name::sql).collect();
    list.push(catalog::heartbeat_table().sql());
    tgt.batch(
        "empty the tables of the interrupted copy",
        &format!(
            "BEGIN; SET LOCAL session_replication_role = replica; TRUNCATE {}; COMMIT",
            list.join(", ")
        ),
    )
    .await?;
    Ok(tables)
}

/// One `COPY` of the plan: a table, or a range of its blocks.
#[derive(Debug, Clone)]
struct Part {
    table: Name,
    columns: String,
    binary: bool,
    /// Blocks `[from, to)`; `to` `None`: to the end. `None`: the whole table.
    blocks: Option<(i64, Option<i64>)>,
}

impl Part {
    fn source_sql(&self) -> String {
        let filter = match self.blocks {
            None => String::new(),
            Some((from, None)) => format!(" WHERE ctid >= '({from},0)'::tid"),
            Some((from, Some(to))) => {
                format!(" WHERE ctid >= '({from},0)'::tid AND ctid < '({to},0)'::tid")
            }
        };
        format!(
            "COPY (SELECT {} FROM ONLY {}{filter}) TO STDOUT{}",
            self.columns,
            self.table.sql(),
            self.format()
        )
    }

    fn target_sql(&self) -> String {
        format!(
            "COPY {} ({}) FROM STDIN{}",
            self.table.sql(),
            self.columns,
            self.format()
        )
    }

    fn format(&self) -> &'static str {
        if self.binary { " (FORMAT binary)" } else { "" }
    }
}

/// Splits every table into parts, largest first. Binary transfer only where both
/// servers are of one major version and every column has a built-in type (a
/// binary array or record names its element types by OID, which differ between
/// databases for types the schema created).
async fn parts(
    src: &Db,
    tgt: &Db,
    tables: &[Name],
    part_bytes: i64,
) -> Result<(Vec<Part>, BTreeMap<Name, i64>), Error> {
    let same_major = src.version() / 10000 == tgt.version() / 10000;
    // Block ranges are read by a TID range scan, 14 and later.
    let ranges = src.version() >= 140000;
    let mut parts = Vec::new();
    let mut sizes = BTreeMap::new();
    for t in tables {
        let row = src
            .query_one(
                "plan the copy",
                "SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum), \
                        bool_and(a.atttypid < 16384), \
                        pg_relation_size(c.oid), \
                        current_setting('block_size')::bigint \
                 FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid \
                 WHERE c.oid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                   AND a.attgenerated = '' \
                 GROUP BY c.oid",
                &[&t.sql()],
            )
            .await?;
        let columns: Option<String> = row.get(0);
        let Some(columns) = columns else {
            continue;
        };
        let builtin: Option<bool> = row.get(1);
        let bytes: i64 = row.get(2);
        let block: i64 = row.get(3);
        sizes.insert(t.clone(), bytes);
        let binary = same_major && builtin.unwrap_or(false);
        let blocks = bytes / block.max(1);
        if !ranges || bytes <= part_bytes {
            parts.push(Part {
                table: t.clone(),
                columns,
                binary,
                blocks: None,
            });
            continue;
        }
        let per = (part_bytes / block.max(1)).max(1);
        let mut from = 0;
        while from < blocks {
            let to = from + per;
            parts.push(Part {
                table: t.clone(),
                columns: columns.clone(),
                binary,
                // The last part runs to the end, whatever the table grew to.
                blocks: Some((from, (to < blocks).then_some(to))),
            });
            from = to;
        }
    }
    // Largest tables first, so that the small ones fill in at the end.
    let mut order: Vec<&Name> = sizes.keys().collect();
    order.sort_by_key(|n| std::cmp::Reverse(sizes[*n]));
    let rank: BTreeMap<&Name, usize> = order.into_iter().enumerate().map(|(i, n)| (n, i)).collect();
    parts.sort_by_key(|p| rank.get(&p.table).copied().unwrap_or(usize::MAX));
    Ok((parts, sizes))
}

#[derive(Debug, Default, Clone)]
struct Copied {
    rows: i64,
    bytes: i64,
    parts_left: usize,
    started: bool,
}

/// What the copy has done so far, shared by its sessions.
#[derive(Default)]
struct Tally {
    tables: Mutex<BTreeMap<Name, Copied>>,
}

impl Tally {
    fn update(&self, table: &Name, f: impl FnOnce(&mut Copied)) {
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = t.get_mut(table) {
            f(c);
        }
    }
}

/// The copy's own figures, for the sync's report.
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub tables: usize,
    pub parts: usize,
    pub rows: i64,
    pub bytes: i64,
    pub binary_tables: usize,
    pub elapsed: Duration,
}

/// How the copy runs.
pub struct Plan {
    /// Session pairs, each copying one part at a time.
    pub jobs: usize,
    /// A table larger than this is split into parts of about this size.
    pub part_bytes: i64,
    /// Give up (the next sync starts over) at this time.
    pub deadline: Option<Instant>,
}

/// Copies every table in `tables` under `snapshot`. `report` is called about
/// once a second with each table's progress.
pub async fn copy(
    src: &Db,
    tgt: &Db,
    snapshot: &Snapshot,
    tables: &[Name],
    plan: &Plan,
    report: &mut dyn FnMut(Vec<(Name, TableProgress)>),
) -> Result<CopyReport, Error> {
    let started = Instant::now();
    let jobs = plan.jobs.max(1);
    // Every session first, each in the snapshot, before any part is planned.
    let mut sessions = Vec::new();
    for _ in 0..jobs {
        let s = Db::connect(src.dsn()).await?;
        s.batch(
            "open the snapshot",
            &format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                snapshot.name
            ),
        )
        .await?;
        let t = Db::connect(tgt.dsn()).await?;
        t.batch(
            "write past the target's block",
            "SET session_replication_role = replica; SET synchronous_commit = off",
        )
        .await?;
        sessions.push((s, t));
    }
    let (parts, sizes) = parts(&sessions[0].0, tgt, tables, plan.part_bytes).await?;
    let binary_tables = {
        let mut b: Vec<&Name> = parts
            .iter()
            .filter(|p| p.binary)
            .map(|p| &p.table)
            .collect();
        b.dedup();
        b.len()
    };
    let tally = Arc::new(Tally::default());
    {
        let mut t = tally.tables.lock().unwrap_or_else(|p| p.into_inner());
        for p in &parts {
            t.entry(p.table.clone()).or_default().parts_left += 1;
        }
    }
    let count = parts.len();
    let queue = Arc::new(Mutex::new(VecDeque::from(parts)));
    let mut workers = tokio::task::JoinSet::new();
    for (s, t) in sessions {
        let (queue, tally) = (queue.clone(), tally.clone());
        workers.spawn(async move { work(s, t, queue, tally).await });
    }
    let snapshot_of = |tally: &Tally| -> Vec<(Name, TableProgress)> {
        let t = tally.tables.lock().unwrap_or_else(|p| p.into_inner());
        t.iter()
            .map(|(name, c)| {
                let state = if c.parts_left == 0 {
                    'f'
                } else if c.started {
                    'd'
                } else {
                    'i'
                };
                (
                    name.clone(),
                    TableProgress {
                        table: name.to_string(),
                        state,
                        rows_copied: Some(c.rows),
                        rows_estimated: None,
                        bytes_copied: Some(c.bytes),
                        bytes_on_source: sizes.get(name).copied(),
                        rows_per_second: None,
                        eta_seconds: None,
                    },
                )
            })
            .collect()
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            done = workers.join_next() => match done {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    workers.abort_all();
                    return Err(e);
                }
                Some(Err(e)) => {
                    workers.abort_all();
                    return Err(Error::Precondition(format!("a copy session did not finish: {e}")));
                }
            },
            _ = tick.tick() => {
                report(snapshot_of(&tally));
                if let Some(d) = plan.deadline && Instant::now() >= d {
                    workers.abort_all();
                    return Err(Error::Timeout {
                        what: "the controller's initial copy (the next sync starts it over)".into(),
                        after: started.elapsed(),
                    });
                }
            }
        }
    }
    let last = snapshot_of(&tally);
    report(last.clone());
    Ok(CopyReport {
        tables: last.len(),
        parts: count,
        rows: last.iter().filter_map(|(_, p)| p.rows_copied).sum(),
        bytes: last.iter().filter_map(|(_, p)| p.bytes_copied).sum(),
        binary_tables,
        elapsed: started.elapsed(),
    })
}

/// One pair of sessions: takes parts off the queue until it is empty.
async fn work(
    src: Db,
    tgt: Db,
    queue: Arc<Mutex<VecDeque<Part>>>,
    tally: Arc<Tally>,
) -> Result<(), Error> {
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(part) = next else {
            break;
        };
        tally.update(&part.table, |c| c.started = true);
        let what = format!("copy {}", part.table);
        let out = src
            .client()
            .copy_out(&part.source_sql())
            .await
            .map_err(|e| src.err(&what, e))?;
        let sink = tgt
            .client()
            .copy_in::<_, Bytes>(&part.target_sql())
            .await
            .map_err(|e| tgt.err(&what, e))?;
        futures_util::pin_mut!(out);
        futures_util::pin_mut!(sink);
        // Bytes are counted a few megabytes at a time, not per row.
        let mut pending = 0i64;
        while let Some(data) = out.next().await {
            let data = data.map_err(|e| src.err(&what, e))?;
            pending += data.len() as i64;
            if pending >= 4 << 20 {
                let n = std::mem::take(&mut pending);
                tally.update(&part.table, |c| c.bytes += n);
            }
            sink.feed(data).await.map_err(|e| tgt.err(&what, e))?;
        }
        let rows = sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| tgt.err(&what, e))?;
        tally.update(&part.table, |c| {
            c.bytes += pending;
            c.rows += rows as i64;
            c.parts_left -= 1;
        });
        crate::failpoint::crash_point("during-copy");
    }
    src.batch("close the snapshot", "COMMIT").await?;
    Ok(())
}
