//! [`verify_contains`]: the check for after a switchover, when the source is frozen
//! and the target has taken writes since. It reuses `verify`'s table list, keys,
//! row digests, session settings and checksum; what differs is the comparison, by
//! key instead of in step, in [`Containment`] so that it is tested without a
//! database.

use std::collections::HashMap;

use futures_util::{StreamExt, pin_mut};

use super::{Fnv, SESSION, exists, ordering};
use crate::catalog::{self, Table};
use crate::db::Db;
use crate::error::Error;
use crate::plan::record::TableCheck;

/// Checks that the target contains the source: every source row is on the target,
/// unchanged. After a switchover the source is frozen and the target keeps taking
/// writes, so [`verify`]'s exact comparison cannot pass; here rows only on the
/// target are later writes, not errors, and rows changed on the target since are
/// counted but do not fail the check. Source rows absent from the target
/// (`missing`) are lost writes and fail it, as does a table absent from the target.
///
/// Same tables (unlogged ones skipped), keys, row digests and snapshots as
/// [`verify`], and the same `source_checksum` for a table that has not changed. A
/// table without a primary key is keyed by its whole row, so there a row updated on
/// the target since counts as missing.
///
/// [`verify`]: super::verify
///
/// Memory: the source's rows are held as a map from key to digest while the
/// target's are read, one entry per source row: about 80 bytes plus the key's text,
/// so about 1 GB for a table of ten million rows with integer keys. The target is
/// streamed.
pub async fn verify_contains(src: &Db, tgt: &Db) -> Result<Vec<TableCheck>, Error> {
    let tables: Vec<Table> = catalog::tables(src)
        .await?
        .into_iter()
        .filter(|t| !t.unlogged)
        .collect();
    open_snapshots(src, tgt).await?;
    let checks = contains_all(src, tgt, &tables).await;
    close_snapshots(src, tgt).await;
    checks
}

/// One snapshot per side, with [`SESSION`]'s settings, so that each side is read
/// as of one moment and prints values alike. The source's snapshot is taken first
/// (a snapshot starts at a transaction's first query, hence the `SELECT 1`): with
/// reverse replication the source receives the target's newer writes, and only a
/// target snapshot taken after the source's is sure to hold every one of them.
async fn open_snapshots(src: &Db, tgt: &Db) -> Result<(), Error> {
    for db in [src, tgt] {
        let begun = db
            .batch(
                "open a snapshot",
                &format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {SESSION}; SELECT 1"),
            )
            .await;
        if let Err(e) = begun {
            close_snapshots(src, tgt).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Ends both snapshots. A read-only transaction has nothing to keep, and a side
/// without one only warns, so errors here change nothing.
async fn close_snapshots(src: &Db, tgt: &Db) {
    for db in [src, tgt] {
        let _ = db.batch("close the snapshot", "COMMIT").await;
    }
}

async fn contains_all(src: &Db, tgt: &Db, tables: &[Table]) -> Result<Vec<TableCheck>, Error> {
    let mut checks = Vec::with_capacity(tables.len());
    for t in tables {
        checks.push(contains(src, tgt, t).await?);
    }
    Ok(checks)
}

async fn contains(src: &Db, tgt: &Db, t: &Table) -> Result<TableCheck, Error> {
    let on_target = exists(tgt, t).await?;
    let (order, key) = ordering(src, t).await?;
    let what = format!("read {}", t.name);
    let from = format!("SELECT {key}, md5(t::text) FROM ONLY {} t", t.name.sql());
    // The source in key order, so that its checksum is `verify`'s; the target in
    // whatever order the server finds cheapest, since it is matched by key.
    let source_sql = format!("{from} ORDER BY {order}");
    if !on_target {
        let mut c = Containment::new();
        each_row(src, &what, &source_sql, |_, digest| c.count_source(&digest)).await?;
        return Ok(c.absent(t.name.to_string()));
    }
    let mut c = Containment::new();
    each_row(src, &what, &source_sql, |key, digest| {
        c.add_source(key, &digest)
    })
    .await?;
    each_row(tgt, &what, &from, |key, digest| c.add_target(&key, &digest)).await?;
    Ok(c.finish(t.name.to_string()))
}

/// Streams `sql`'s (key, digest) rows into `f`, never holding the result set.
async fn each_row(
    db: &Db,
    what: &str,
    sql: &str,
    mut f: impl FnMut(String, String),
) -> Result<(), Error> {
    let none: [&str; 0] = [];
    let rows = db
        .client()
        .query_raw(sql, none)
        .await
        .map_err(|e| db.err(what, e))?;
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| db.err(what, e))?;
        f(row.get(0), row.get(1));
    }
    Ok(())
}

/// How many missing keys a problem names.
const MISSING_EXAMPLES: usize = 5;

/// One source row while the target is read.
#[derive(Debug, Clone, Copy)]
struct SourceRow {
    /// The row's position in key order, so missing keys are named in that order.
    order: u64,
    /// The row's md5, as a number to halve its size.
    digest: u128,
    /// Rows with this key: above one only in a table without a primary key, whose
    /// key is the whole row and may repeat.
    count: u64,
}

/// The containment check of one table, apart from the database: the source rows
/// go in with [`Containment::add_source`], then the target's with
/// [`Containment::add_target`], each removing the source row it matches; what
/// remains at [`Containment::finish`] is missing on the target.
struct Containment {
    source: HashMap<String, SourceRow>,
    source_rows: u64,
    target_rows: u64,
    changed: u64,
    checksum: Fnv,
}

impl Containment {
    fn new() -> Containment {
        Containment {
            source: HashMap::new(),
            source_rows: 0,
            target_rows: 0,
            changed: 0,
            checksum: Fnv::new(),
        }
    }

    /// Counts a source row into the totals and the checksum without keeping it.
    fn count_source(&mut self, md5: &str) {
        self.source_rows += 1;
        self.checksum.add(md5.as_bytes());
    }

    /// A source row, in key order.
    fn add_source(&mut self, key: String, md5: &str) {
        let order = self.source_rows;
        self.count_source(md5);
        self.source
            .entry(key)
            .and_modify(|r| r.count += 1)
            .or_insert(SourceRow {
                order,
                digest: digest(md5),
                count: 1,
            });
    }

    /// A target row, in any order: it matches a source row (unchanged or changed),
    /// or it is only on the target (a later write).
    fn add_target(&mut self, key: &str, md5: &str) {
        self.target_rows += 1;
        let Some(row) = self.source.get_mut(key) else {
            return;
        };
        if row.digest != digest(md5) {
            self.changed += 1;
        }
        row.count -= 1;
        if row.count == 0 {
            self.source.remove(key);
        }
    }

    fn finish(self, table: String) -> TableCheck {
        let missing: u64 = self.source.values().map(|r| r.count).sum();
        let problem = (missing > 0).then(|| missing_problem(missing, &self.source));
        TableCheck {
            table,
            source_rows: self.source_rows,
            target_rows: self.target_rows,
            missing,
            changed: self.changed,
            source_checksum: self.checksum.hex(),
            passed: missing == 0,
            problem,
        }
    }

    /// The verdict for a table the target does not have: every source row is
    /// missing.
    fn absent(self, table: String) -> TableCheck {
        TableCheck {
            table,
            source_rows: self.source_rows,
            target_rows: 0,
            missing: self.source_rows,
            changed: 0,
            source_checksum: self.checksum.hex(),
            passed: false,
            problem: Some("missing on the target".into()),
        }
    }
}

/// "3 source rows missing on the target (lost writes): keys 7, 42, 43".
fn missing_problem(missing: u64, left: &HashMap<String, SourceRow>) -> String {
    let mut first: Vec<(&String, &SourceRow)> = left.iter().collect();
    first.sort_unstable_by_key(|(_, r)| r.order);
    let keys: Vec<&str> = first
        .iter()
        .take(MISSING_EXAMPLES)
        .map(|(k, _)| k.as_str())
        .collect();
    let rows = if missing == 1 { "row" } else { "rows" };
    let label = if keys.len() == 1 { "key" } else { "keys" };
    let more = if first.len() > keys.len() {
        format!(" and {} more", first.len() - keys.len())
    } else {
        String::new()
    };
    format!(
        "{missing} source {rows} missing on the target (lost writes): {label} {}{more}",
        keys.join(", ")
    )
}

/// `md5()` returns 32 hex digits, which always parse; were one not to, hashing the
/// text still tells different digests apart.
fn digest(md5: &str) -> u128 {
    u128::from_str_radix(md5, 16).unwrap_or_else(|_| {
        let mut h = Fnv::new();
        h.add(md5.as_bytes());
        u128::from(h.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0cc175b9c0f1b6a831c399e269772661";
    const B: &str = "92eb5ffee6ae2fec3ad71c777531578f";
    const C: &str = "4a8a08f09d37b73795649038408b5f33";

    fn source(rows: &[(&str, &str)]) -> Containment {
        let mut c = Containment::new();
        for (k, d) in rows {
            c.add_source(k.to_string(), d);
        }
        c
    }

    #[test]
    fn extra_target_rows_are_later_writes() {
        let mut c = source(&[("1", A), ("2", B)]);
        for (k, d) in [("3", C), ("2", B), ("1", A)] {
            c.add_target(k, d);
        }
        let t = c.finish("public.items".into());
        assert_eq!((t.source_rows, t.target_rows), (2, 3));
        assert_eq!((t.missing, t.changed), (0, 0));
        assert!(t.passed);
        assert_eq!(t.problem, None);
    }

    #[test]
    fn missing_rows_fail_and_are_named_in_key_order() {
        let keys: Vec<String> = (1..=9).map(|i| i.to_string()).collect();
        let rows: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), A)).collect();
        let mut c = source(&rows);
        c.add_target("1", A);
        c.add_target("5", A);
        let t = c.finish("public.items".into());
        assert_eq!(t.missing, 7);
        assert!(!t.passed);
        assert_eq!(
            t.problem.as_deref(),
            Some(
                "7 source rows missing on the target (lost writes): keys 2, 3, 4, 6, 7 and 2 more"
            )
        );
        let mut one = source(&[("42", A)]);
        one.add_target("43", A);
        let t = one.finish("public.items".into());
        assert_eq!(
            t.problem.as_deref(),
            Some("1 source row missing on the target (lost writes): key 42")
        );
    }

    #[test]
    fn changed_rows_are_counted_and_pass() {
        let mut c = source(&[("1", A), ("2", B)]);
        c.add_target("1", A);
        c.add_target("2", C);
        let t = c.finish("public.items".into());
        assert_eq!((t.missing, t.changed), (0, 1));
        assert!(t.passed);
    }

    #[test]
    fn repeated_rows_without_a_key_count_each_copy() {
        let mut c = source(&[("(1,x)", A), ("(1,x)", A), ("(2,y)", B)]);
        c.add_target("(1,x)", A);
        c.add_target("(2,y)", B);
        let t = c.finish("public.log".into());
        assert_eq!(t.missing, 1);
        assert!(t.problem.unwrap_or_default().ends_with("key (1,x)"));
    }

    #[test]
    fn the_source_checksum_is_verify_s() {
        let mut exact = Fnv::new();
        for d in [A, B] {
            exact.add(d.as_bytes());
        }
        let c = source(&[("1", A), ("2", B)]);
        assert_eq!(c.finish("t".into()).source_checksum, exact.hex());
        let mut counted = Containment::new();
        counted.count_source(A);
        counted.count_source(B);
        let t = counted.absent("t".into());
        assert_eq!(
            (t.source_checksum, t.missing, t.passed),
            (exact.hex(), 2, false)
        );
    }

    #[test]
    fn digests_parse_and_differ() {
        assert_ne!(digest(A), digest(B));
        assert_eq!(digest(A), digest(A));
        assert_ne!(digest("not hex"), digest("also not hex"));
    }
}
