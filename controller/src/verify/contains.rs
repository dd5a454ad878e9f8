//! [`verify_contains`]: the check for after a switchover, when the source is frozen
//! and the target has taken writes since. It reuses `verify`'s table list, keys,
//! row digests, session settings and checksum; what differs is the comparison, by
//! key instead of in step, in [`Containment`] so that it is tested without a
//! database.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{StreamExt, pin_mut};
use tokio::time::Instant;

use super::{Fnv, SESSION, exists, ordering};
use crate::catalog::{self, Table, ident};
use crate::db::Db;
use crate::error::Error;
use crate::plan::record::TableCheck;

/// Checks that the target contains the source: every source row is on the target,
/// unchanged. After a switchover the source is frozen and the target keeps taking
/// writes, so [`verify`]'s exact comparison cannot pass; here rows only on the
/// target are later writes, not errors, and rows changed on the target since are
/// counted but do not fail the check. Source rows absent from the target
/// (`missing`) are lost writes and fail it, as does a table absent from the target.
/// Before a row is called missing it is looked for again for [`SETTLE`], since a
/// row that reverse replication brought back from the target can reach the source
/// a moment before the target's own snapshots see it.
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
    let mut checks = checks?;
    let until = Instant::now() + SETTLE;
    for c in &mut checks {
        if let Checked::Open { sql, c, .. } = c {
            settle(src, tgt, sql, c, until).await?;
        }
    }
    Ok(checks.into_iter().map(Checked::finish).collect())
}

/// How long source rows the target lacked at its snapshot are looked for again.
///
/// With reverse replication the source receives the target's writes, and a
/// target transaction is sent as soon as its commit is in the WAL, a moment
/// before the target's own new snapshots see it. A loaded server can stretch that
/// moment, so a target snapshot taken after the source's can still lack a row the
/// source already holds. Such a row shows up on the target within moments; a
/// lost write never does, since nothing writes the frozen source's rows to the
/// target any more.
const SETTLE: Duration = Duration::from_secs(2);

/// At most this many missing keys of one table are looked for again: a handful
/// is a row in flight, more is a loss that waiting will not mend.
const SETTLE_KEYS: usize = 10_000;

/// One table's check: decided, or with source rows the target lacked at its
/// snapshot, to be looked for again.
enum Checked {
    Done(TableCheck),
    Open {
        table: String,
        /// `SELECT key, md5` of the table, to which `WHERE key = ANY($1)` is added.
        sql: String,
        c: Containment,
    },
}

impl Checked {
    fn finish(self) -> TableCheck {
        match self {
            Checked::Done(t) => t,
            Checked::Open { table, c, .. } => c.finish(table),
        }
    }
}

/// Looks again, outside the snapshots and until `until`, for the source rows
/// `c` still misses: a key is settled once the target holds, at least as often,
/// each digest the source holds for it now (read first), or the source no longer
/// has it (a delete that came back from the target).
async fn settle(
    src: &Db,
    tgt: &Db,
    select: &str,
    c: &mut Containment,
    until: Instant,
) -> Result<(), Error> {
    if c.source.len() > SETTLE_KEYS {
        return Ok(());
    }
    let sql = format!("{select} WHERE {}", c.key);
    let mut pause = Duration::from_millis(50);
    while !c.source.is_empty() {
        let keys: Vec<String> = c.source.keys().cloned().collect();
        let now_src = digests(src, &sql, &keys).await?;
        let now_tgt = digests(tgt, &sql, &keys).await?;
        for k in keys {
            let on_target = now_tgt.get(&k).map(Vec::as_slice).unwrap_or_default();
            let held = now_src.get(&k).map(Vec::as_slice).unwrap_or_default();
            let mut left = on_target.to_vec();
            let all_there = held.iter().all(|d| match left.iter().position(|t| t == d) {
                Some(i) => {
                    left.swap_remove(i);
                    true
                }
                None => false,
            });
            if all_there {
                c.source.remove(&k);
            }
        }
        if c.source.is_empty() || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(pause.min(until.saturating_duration_since(Instant::now()))).await;
        pause *= 2;
    }
    Ok(())
}

/// The condition that finds rows by their `key` text among `$1`: on the column
/// itself for a one-column primary key, so that its index serves; on the key's
/// text otherwise.
async fn lookup(src: &Db, t: &Table, key: &str) -> Result<String, Error> {
    let cols = src
        .query(
            &format!("read the primary key type of {}", t.name),
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
            &[&t.name.sql()],
        )
        .await?;
    Ok(match cols.as_slice() {
        [one] => format!(
            "t.{} = ANY($1::text[]::{}[])",
            ident(&one.get::<_, String>(0)),
            one.get::<_, String>(1)
        ),
        _ => format!("{key} = ANY($1::text[])"),
    })
}

/// The digests of the rows with `keys`, by key, read in a short transaction with
/// [`SESSION`]'s settings.
async fn digests(
    db: &Db,
    sql: &str,
    keys: &[String],
) -> Result<HashMap<String, Vec<String>>, Error> {
    db.batch(
        "look again for missing rows",
        &format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {SESSION}"),
    )
    .await?;
    let rows = db.query("look again for missing rows", sql, &[&keys]).await;
    let _ = db.batch("close the look again", "COMMIT").await;
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for r in rows? {
        by_key.entry(r.get(0)).or_default().push(r.get(1));
    }
    Ok(by_key)
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

async fn contains_all(src: &Db, tgt: &Db, tables: &[Table]) -> Result<Vec<Checked>, Error> {
    let mut checks = Vec::with_capacity(tables.len());
    for t in tables {
        checks.push(contains(src, tgt, t).await?);
    }
    Ok(checks)
}

async fn contains(src: &Db, tgt: &Db, t: &Table) -> Result<Checked, Error> {
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
        return Ok(Checked::Done(c.absent(t.name.to_string())));
    }
    let mut c = Containment::new();
    each_row(src, &what, &source_sql, |key, digest| {
        c.add_source(key, &digest)
    })
    .await?;
    each_row(tgt, &what, &from, |key, digest| c.add_target(&key, &digest)).await?;
    if c.source.is_empty() {
        return Ok(Checked::Done(c.finish(t.name.to_string())));
    }
    c.key = lookup(src, t, &key).await?;
    Ok(Checked::Open {
        table: t.name.to_string(),
        sql: from,
        c,
    })
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
    /// The key expression, for looking missing rows up again.
    key: String,
    source_rows: u64,
    target_rows: u64,
    changed: u64,
    checksum: Fnv,
}

impl Containment {
    fn new() -> Containment {
        Containment {
            source: HashMap::new(),
            key: String::new(),
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
