//! `verify`: row counts and a content checksum per table, both sides read in primary
//! key order from one snapshot each, compared row by row so that a mismatch names
//! the table and the first key that differs.
//!
//! [`verify_contains`] is the check for after a switchover, when the frozen source
//! can only be contained in a target that kept taking writes. [`compare_at_fence`]
//! is the check inside two snapshots opened at the switchover's fence, where the
//! sides must be equal, in key ranges and bounded memory.

use std::fmt;

use futures_util::{StreamExt, pin_mut};
use serde::Serialize;

use crate::catalog::{self, Table, ident};
use crate::db::Db;
use crate::error::Error;

mod contains;
mod fence;

pub use contains::verify_contains;
pub use fence::{
    FenceCheck, FenceMethod, FenceOptions, FenceTable, close_fence_snapshot, compare_at_fence,
    open_fence_snapshot,
};

#[derive(Debug, Clone, Serialize)]
pub struct TableVerdict {
    pub table: String,
    pub source_rows: u64,
    pub target_rows: u64,
    pub source_checksum: String,
    pub target_checksum: String,
    pub matches: bool,
    /// What differs, for a mismatch.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub tables: Vec<TableVerdict>,
    pub passed: bool,
}

impl VerifyReport {
    pub fn mismatches(&self) -> impl Iterator<Item = &TableVerdict> {
        self.tables.iter().filter(|t| !t.matches)
    }
}

/// Both sides print values the same way whatever their defaults.
const SESSION: &str = "SET LOCAL extra_float_digits = 3; SET LOCAL DateStyle = 'ISO, YMD'; \
    SET LOCAL IntervalStyle = 'postgres'; SET LOCAL TimeZone = 'UTC'; SET LOCAL bytea_output = 'hex'";

/// Compares every application table (unlogged ones are not replicated and are
/// skipped).
pub async fn verify(src: &Db, tgt: &Db) -> Result<VerifyReport, Error> {
    let tables: Vec<Table> = catalog::tables(src)
        .await?
        .into_iter()
        .filter(|t| !t.unlogged)
        .collect();
    for db in [src, tgt] {
        db.batch(
            "open a snapshot",
            &format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {SESSION}"),
        )
        .await?;
    }
    let mut verdicts = Vec::new();
    let mut result = Ok(());
    for t in &tables {
        match compare(src, tgt, t).await {
            Ok(v) => verdicts.push(v),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    for db in [src, tgt] {
        let _ = db.batch("close the snapshot", "COMMIT").await;
    }
    result?;
    let passed = verdicts.iter().all(|v| v.matches);
    Ok(VerifyReport {
        tables: verdicts,
        passed,
    })
}

/// The `ORDER BY` and key expressions: the primary key (text columns in byte
/// order, so that both servers sort alike whatever their collations), or the
/// whole row when there is none.
async fn ordering(src: &Db, t: &Table) -> Result<(String, String), Error> {
    let rows = src
        .query(
            &format!("read the primary key of {}", t.name),
            "SELECT a.attname::text, a.attcollation <> 0 \
             FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&t.name.sql()],
        )
        .await?;
    if rows.is_empty() {
        return Ok(("t::text COLLATE \"C\"".into(), "t::text".into()));
    }
    let cols: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let order = cols
        .iter()
        .map(|(c, collatable)| {
            if *collatable {
                format!("t.{} COLLATE \"C\"", ident(c))
            } else {
                format!("t.{}", ident(c))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let key = if cols.len() == 1 {
        format!("t.{}::text", ident(&cols[0].0))
    } else {
        format!(
            "ROW({})::text",
            cols.iter()
                .map(|(c, _)| format!("t.{}", ident(c)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Ok((order, key))
}

/// Whether `t` exists in `db`.
async fn exists(db: &Db, t: &Table) -> Result<bool, Error> {
    Ok(db
        .query_one(
            "look for the table",
            "SELECT to_regclass($1) IS NOT NULL",
            &[&t.name.sql()],
        )
        .await?
        .get(0))
}

async fn compare(src: &Db, tgt: &Db, t: &Table) -> Result<TableVerdict, Error> {
    if !exists(tgt, t).await? {
        return Ok(TableVerdict {
            table: t.name.to_string(),
            source_rows: 0,
            target_rows: 0,
            source_checksum: String::new(),
            target_checksum: String::new(),
            matches: false,
            problem: Some("missing on the target".into()),
        });
    }
    let (order, key) = ordering(src, t).await?;
    let sql = format!(
        "SELECT {key}, md5(t::text) FROM ONLY {} t ORDER BY {order}",
        t.name.sql()
    );
    let what = format!("read {}", t.name);
    let none: [&str; 0] = [];
    let a = src
        .client()
        .query_raw(&sql, none)
        .await
        .map_err(|e| src.err(&what, e))?;
    let b = tgt
        .client()
        .query_raw(&sql, none)
        .await
        .map_err(|e| tgt.err(&what, e))?;
    pin_mut!(a);
    pin_mut!(b);
    let (mut ha, mut hb) = (Fnv::new(), Fnv::new());
    let (mut na, mut nb) = (0u64, 0u64);
    let mut problem = None;
    // A finished stream must not be polled again (it would report the connection
    // closed), so each side remembers when it ended.
    let (mut a_done, mut b_done) = (false, false);
    loop {
        let next_a = async { if a_done { None } else { a.next().await } };
        let next_b = async { if b_done { None } else { b.next().await } };
        let (ra, rb) = tokio::join!(next_a, next_b);
        let ra = ra.transpose().map_err(|e| src.err(&what, e))?;
        let rb = rb.transpose().map_err(|e| tgt.err(&what, e))?;
        a_done = ra.is_none();
        b_done = rb.is_none();
        if a_done && b_done {
            break;
        }
        let ka: Option<(String, String)> = ra.map(|r| (r.get(0), r.get(1)));
        let kb: Option<(String, String)> = rb.map(|r| (r.get(0), r.get(1)));
        if let Some((_, h)) = &ka {
            na += 1;
            ha.add(h.as_bytes());
        }
        if let Some((_, h)) = &kb {
            nb += 1;
            hb.add(h.as_bytes());
        }
        if problem.is_none() && ka != kb {
            problem = Some(match (&ka, &kb) {
                (Some((k, _)), None) => format!("key {k} and later rows are missing on the target"),
                (None, Some((k, _))) => format!("key {k} and later rows are only on the target"),
                (Some((k1, _)), Some((k2, _))) if k1 != k2 => {
                    format!("first difference: key {k1} on the source, {k2} on the target")
                }
                (Some((k, _)), Some(_)) => format!("first difference: row with key {k}"),
                (None, None) => String::new(),
            });
        }
    }
    let matches = problem.is_none();
    Ok(TableVerdict {
        table: t.name.to_string(),
        source_rows: na,
        target_rows: nb,
        source_checksum: ha.hex(),
        target_checksum: hb.hex(),
        matches,
        problem: problem.map(|p| {
            if na != nb {
                format!("{na} rows on the source, {nb} on the target; {p}")
            } else {
                p
            }
        }),
    })
}

/// FNV-1a, 64 bits, over the rows' md5 digests in key order: a short fingerprint to
/// print; the comparison itself is row by row.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for v in &self.tables {
            if v.matches {
                writeln!(
                    f,
                    "ok        {:<40} {:>10} rows  checksum {}",
                    v.table, v.source_rows, v.source_checksum
                )?;
            } else {
                writeln!(
                    f,
                    "MISMATCH  {:<40} {}",
                    v.table,
                    v.problem.as_deref().unwrap_or("")
                )?;
            }
        }
        let bad = self.mismatches().count();
        if bad == 0 {
            write!(f, "verified: all {} table(s) match", self.tables.len())
        } else {
            write!(f, "{bad} of {} table(s) differ", self.tables.len())
        }
    }
}
