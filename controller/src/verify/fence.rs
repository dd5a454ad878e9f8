//! Verification as of the fence. The switchover, while writes are still held,
//! opens one REPEATABLE READ snapshot on each side ([`open_fence_snapshot`]): the
//! source is frozen and the target has applied everything up to the fence and
//! taken nothing else, so the two must be equal. [`compare_at_fence`] runs later in
//! those two snapshots and treats any difference (a row missing, changed or extra
//! on the target) as a lost or corrupted write.
//!
//! This module owns the snapshots' opening and closing and the comparison, in
//! memory bounded by [`FenceOptions::chunk_rows`] on both client and server,
//! whatever the tables' size. [`walk`] reads each table with a primary key in key
//! ranges cut on the source, compares each range by count and digest sum, and
//! reads a range row by row only when it differs, to name its keys ([`diff`]); a
//! table without one is compared as a whole by the same aggregate, and its rows
//! cannot be named. [`shape`] builds the statements. When to open the snapshots, on which
//! connections, and what to do with the verdict belong to the switchover and the
//! plan runner.

use std::time::Instant;

use serde::Serialize;

use super::{SESSION, exists};
use crate::catalog::{self, Table};
use crate::db::Db;
use crate::error::Error;
use crate::plan::record::TableCheck;

mod diff;
mod shape;
#[cfg(test)]
mod tests;
mod walk;

use diff::Findings;
use shape::Shape;
use walk::{by_ranges, count_only, whole};

/// How [`compare_at_fence`] reads.
#[derive(Debug, Clone)]
pub struct FenceOptions {
    /// Rows per key range: what the server aggregates at a time, and at most what
    /// the client holds when a range differs.
    pub chunk_rows: u64,
    /// Keys named per table when rows differ.
    pub examples: usize,
}

impl Default for FenceOptions {
    fn default() -> FenceOptions {
        FenceOptions {
            chunk_rows: 10_000,
            examples: 10,
        }
    }
}

/// How a table was compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceMethod {
    /// Range by range of its primary key; differing rows are named.
    KeyRanges,
    /// No primary key: one aggregate of the whole table; rows cannot be named.
    WholeTable,
    /// Not compared: absent from the target, or its columns or key differ there.
    NotCompared,
}

/// One table at the fence. `check.source_rows` are the rows checked, and
/// `check.passed` requires no row `missing`, `changed` or `extra`.
#[derive(Debug, Clone, Serialize)]
pub struct FenceTable {
    #[serde(flatten)]
    pub check: TableCheck,
    /// Target rows with no source row of that key.
    pub extra: u64,
    /// Key ranges compared (1 for a table compared as a whole).
    pub chunks: u64,
    pub method: FenceMethod,
    pub took_ms: f64,
}

/// Every application table at the fence.
#[derive(Debug, Clone, Serialize)]
pub struct FenceCheck {
    pub tables: Vec<FenceTable>,
    /// Source rows compared, over all tables.
    pub rows_checked: u64,
    pub chunks: u64,
    pub took_ms: f64,
    pub passed: bool,
}

impl FenceCheck {
    /// The tables as the run's record keeps them (`VerifyRecord::tables`).
    pub fn table_checks(&self) -> Vec<TableCheck> {
        self.tables.iter().map(|t| t.check.clone()).collect()
    }
}

/// Opens the fence snapshot on `db`'s connection: a read-only REPEATABLE READ
/// transaction with `verify`'s session settings, and a first query so that the
/// snapshot is taken now, not at the comparison's first read. The transaction is
/// exempt from `idle_in_transaction_session_timeout`, since it waits idle until
/// the comparison runs. On error nothing is left open.
pub async fn open_fence_snapshot(db: &Db) -> Result<(), Error> {
    let begun = db
        .batch(
            "open the fence snapshot",
            &format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {SESSION}; \
                 SET LOCAL idle_in_transaction_session_timeout = 0; SELECT 1"
            ),
        )
        .await;
    if begun.is_err() {
        close_fence_snapshot(db).await;
    }
    begun
}

/// Ends the fence snapshot on `db`. The transaction wrote nothing, and `COMMIT`
/// outside one only warns, so errors here change nothing and are dropped.
pub async fn close_fence_snapshot(db: &Db) {
    let _ = db.batch("close the fence snapshot", "COMMIT").await;
}

/// Compares every application table of `src` and `tgt` (unlogged ones are not
/// replicated and are skipped) as of the fence. Both must be inside a snapshot
/// from [`open_fence_snapshot`], which this checks, and stay there: closing them
/// is the caller's. An error (a query failed, or a side is not in a snapshot)
/// leaves them open.
pub async fn compare_at_fence(
    src: &Db,
    tgt: &Db,
    opts: &FenceOptions,
) -> Result<FenceCheck, Error> {
    if opts.chunk_rows == 0 {
        return Err(Error::Precondition(
            "fence comparison: chunk_rows must be at least 1".into(),
        ));
    }
    let started = Instant::now();
    for db in [src, tgt] {
        in_snapshot(db).await?;
    }
    let tables: Vec<Table> = catalog::tables(src)
        .await?
        .into_iter()
        .filter(|t| !t.unlogged)
        .collect();
    let mut out = Vec::with_capacity(tables.len());
    for t in &tables {
        out.push(table(src, tgt, t, opts).await?);
    }
    Ok(FenceCheck {
        rows_checked: out.iter().map(|t| t.check.source_rows).sum(),
        chunks: out.iter().map(|t| t.chunks).sum(),
        passed: out.iter().all(|t| t.check.passed),
        tables: out,
        took_ms: ms(started),
    })
}

/// Fails unless `db` is inside a read-only REPEATABLE READ transaction: a
/// savepoint is refused outside a transaction block, and in one that has failed.
async fn in_snapshot(db: &Db) -> Result<(), Error> {
    let not_open = |why: &str| {
        Error::Precondition(format!(
            "{} database: {why}; open the fence snapshot (open_fence_snapshot) before comparing",
            db.side()
        ))
    };
    db.batch(
        "check the fence snapshot",
        "SAVEPOINT cutover_fence; RELEASE SAVEPOINT cutover_fence",
    )
    .await
    .map_err(|_| not_open("not inside a usable transaction"))?;
    let row = db
        .query_one(
            "check the fence snapshot",
            "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')",
            &[],
        )
        .await?;
    let (isolation, read_only): (String, String) = (row.get(0), row.get(1));
    if isolation != "repeatable read" || read_only != "on" {
        return Err(not_open(&format!(
            "the transaction is {isolation} (read only: {read_only}), not a read-only repeatable read snapshot"
        )));
    }
    Ok(())
}

/// One table: absent, mismatched in shape, or compared by key ranges or as a whole.
async fn table(src: &Db, tgt: &Db, t: &Table, opts: &FenceOptions) -> Result<FenceTable, Error> {
    let started = Instant::now();
    let mut found = Findings::new(opts.examples);
    let (tally, chunks, method) = if !exists(tgt, t).await? {
        // Every source row is lost; the problem says so once, without keys.
        let tally = count_only(src, t).await?;
        found.missing = tally.source_rows;
        found.note("missing on the target".into());
        (tally, 0, FenceMethod::NotCompared)
    } else {
        let shape = Shape::read(src, &t.name).await?;
        let there = Shape::read(tgt, &t.name).await?;
        if let Some(problem) = shape_problem(&shape, &there) {
            found.note(problem);
            (count_only(src, t).await?, 0, FenceMethod::NotCompared)
        } else if shape.key.is_empty() {
            let tally = whole(src, tgt, &shape, &mut found).await?;
            (tally, 1, FenceMethod::WholeTable)
        } else {
            let (tally, chunks) = by_ranges(src, tgt, &shape, opts, &mut found).await?;
            (tally, chunks, FenceMethod::KeyRanges)
        }
    };
    Ok(FenceTable {
        check: TableCheck {
            table: t.name.to_string(),
            source_rows: tally.source_rows,
            target_rows: tally.target_rows,
            missing: found.missing,
            changed: found.changed,
            source_checksum: format!("{:016x}", tally.source_sum as u64),
            passed: found.passed(),
            problem: found.problem(),
        },
        extra: found.extra,
        chunks,
        method,
        took_ms: ms(started),
    })
}

/// Why a table present on both sides cannot be compared, if it cannot: a source
/// column absent from the target, or another primary key there (whose ranges
/// would not be index scans).
fn shape_problem(src: &Shape, tgt: &Shape) -> Option<String> {
    let absent: Vec<&str> = src
        .columns
        .iter()
        .filter(|c| !tgt.columns.contains(c))
        .map(String::as_str)
        .collect();
    if !absent.is_empty() {
        return Some(format!(
            "columns missing on the target: {}",
            absent.join(", ")
        ));
    }
    let names = |s: &Shape| s.key.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
    if names(src) != names(tgt) {
        return Some(format!(
            "primary key ({}) on the source, ({}) on the target",
            names(src).join(", "),
            names(tgt).join(", ")
        ));
    }
    None
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
