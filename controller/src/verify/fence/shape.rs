//! A table as the fence comparison reads it: its columns and primary key from the
//! source's catalog, and the statements built from them. The SQL is text only here
//! (no database), so that it is tested alone; [`Range`] carries a chunk's bounds as
//! the parameters those statements take.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::catalog::{Name, ident};
use crate::db::Db;
use crate::error::Error;

/// One primary key column: its name and its type as `format_type` prints it, to
/// cast a bound sent as text back to the column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyColumn {
    pub name: String,
    pub ty: String,
}

/// The source's view of a table, used for the statements on both sides so that
/// each side prints the same columns in the same order.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    pub table: Name,
    /// Every column, in the source's order.
    pub columns: Vec<String>,
    /// The primary key's columns in index order; empty without one.
    pub key: Vec<KeyColumn>,
}

/// A chunk's bounds: keys above `lower` and at most `upper`; `None` is open. Each
/// bound is the key's columns as text, as the source printed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Range {
    pub lower: Option<Vec<String>>,
    pub upper: Option<Vec<String>>,
}

impl Range {
    /// The statements' parameters: the lower bound's columns, then the upper's.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.lower
            .iter()
            .flatten()
            .chain(self.upper.iter().flatten())
            .map(|s| s as &(dyn ToSql + Sync))
            .collect()
    }
}

impl Shape {
    /// Reads the columns and the primary key of `table` on `db` (the source).
    pub async fn read(db: &Db, table: &Name) -> Result<Shape, Error> {
        let columns = columns(db, table).await?;
        let rows = db
            .query(
                &format!("read the primary key of {table}"),
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                 WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&table.sql()],
            )
            .await?;
        let key = rows
            .iter()
            .map(|r| KeyColumn {
                name: r.get(0),
                ty: r.get(1),
            })
            .collect();
        Ok(Shape {
            table: table.clone(),
            columns,
            key,
        })
    }

    /// The row as one text, from the source's column list.
    fn row_text(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("t.{}", ident(c)))
            .collect();
        format!("ROW({})::text", cols.join(", "))
    }

    /// A row's 64-bit digest.
    fn digest(&self) -> String {
        format!("hashtextextended({}, 0)", self.row_text())
    }

    /// The key columns, for `ORDER BY` and the row comparison.
    fn key_list(&self) -> String {
        let cols: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("t.{}", ident(&k.name)))
            .collect();
        cols.join(", ")
    }

    /// Each key column as text: a bound as the statements take it back.
    fn key_parts(&self) -> String {
        let cols: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("t.{}::text", ident(&k.name)))
            .collect();
        cols.join(", ")
    }

    /// The key as one text to name a row: the value, or the row `(5,k5)` for a
    /// composite key (as `verify_contains` names it).
    fn key_name(&self) -> String {
        match self.key.as_slice() {
            [one] => format!("t.{}::text", ident(&one.name)),
            _ => format!("ROW({})::text", self.key_list()),
        }
    }

    /// `($first::text::type, ...)`: a bound from text parameters, each cast to its
    /// column's type so that the comparison (and the index) is the column's own.
    fn bound(&self, first: usize) -> String {
        let casts: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("${}::text::{}", first + i, k.ty))
            .collect();
        format!("({})", casts.join(", "))
    }

    /// The `WHERE` clause of a range with these bounds present (empty when open on
    /// both ends); parameters are numbered as [`Range::params`] lists them.
    fn range(&self, lower: bool, upper: bool) -> String {
        let keys = format!("({})", self.key_list());
        let mut conds = Vec::new();
        if lower {
            conds.push(format!("{keys} > {}", self.bound(1)));
        }
        if upper {
            let first = if lower { self.key.len() + 1 } else { 1 };
            conds.push(format!("{keys} <= {}", self.bound(first)));
        }
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        }
    }

    /// The key of the `rows`-th row after `range`'s lower bound: the next chunk's
    /// upper bound. An index range scan that stops there; `range.upper` is unused.
    pub fn next_bound_sql(&self, range: &Range, rows: u64) -> String {
        format!(
            "SELECT {} FROM ONLY {} t{} ORDER BY {} OFFSET {} LIMIT 1",
            self.key_parts(),
            self.table.sql(),
            self.range(range.lower.is_some(), false),
            self.key_list(),
            rows.saturating_sub(1)
        )
    }

    /// Count and digest sum of the rows in `range` (the whole table without bounds):
    /// an aggregate in any order, with no sort and no large value.
    pub fn aggregate_sql(&self, range: &Range) -> String {
        format!(
            "SELECT count(*), coalesce(sum({}), 0)::text FROM ONLY {} t{}",
            self.digest(),
            self.table.sql(),
            self.range(range.lower.is_some(), range.upper.is_some())
        )
    }

    /// Each row of `range` in key order as (key name, digest, key parts...), at most
    /// `limit` of them.
    pub fn digests_sql(&self, range: &Range, limit: Option<u64>) -> String {
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        format!(
            "SELECT {}, {}, {} FROM ONLY {} t{} ORDER BY {}{limit}",
            self.key_name(),
            self.digest(),
            self.key_parts(),
            self.table.sql(),
            self.range(range.lower.is_some(), range.upper.is_some()),
            self.key_list()
        )
    }

    /// The key parts of a row that [`Shape::digests_sql`] returned (or, from
    /// `first = 0`, one of [`Shape::next_bound_sql`]'s).
    pub fn key_of(&self, row: &Row, first: usize) -> Vec<String> {
        (first..first + self.key.len())
            .map(|i| row.get(i))
            .collect()
    }
}

/// The columns of `table` on `db`, in order.
pub(super) async fn columns(db: &Db, table: &Name) -> Result<Vec<String>, Error> {
    let rows = db
        .query(
            &format!("read the columns of {table}"),
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table.sql()],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
