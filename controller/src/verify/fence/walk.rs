//! Reading one table on both sides: by key ranges cut on the source
//! ([`by_ranges`]), drilling into a range whose aggregates differ ([`drill`]), or as
//! one aggregate when it has no primary key ([`whole`]). What differs goes into
//! [`Findings`]; the counts and the source's checksum into a [`Tally`].

use super::FenceOptions;
use super::diff::{ChunkDiff, Findings};
use super::shape::{Range, Shape};
use crate::catalog::Table;
use crate::db::Db;
use crate::error::Error;

/// Rows and digest sums seen so far in one table.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub source_rows: u64,
    pub target_rows: u64,
    /// The source's digest sum: the table's checksum, printed as its low 64 bits.
    pub source_sum: i128,
}

/// A range's count and digest sum, the sum as the server printed it.
#[derive(Debug, PartialEq, Eq)]
struct Aggregate {
    rows: u64,
    sum: String,
}

impl Tally {
    fn add(&mut self, source: &Aggregate, target: &Aggregate) {
        self.source_rows += source.rows;
        self.target_rows += target.rows;
        // A sum of bigints prints as an integer; were it not to parse, only the
        // printed checksum would miss it, not the comparison (done on the text).
        self.source_sum = self
            .source_sum
            .wrapping_add(source.sum.parse::<i128>().unwrap_or(0));
    }
}

async fn aggregate(db: &Db, shape: &Shape, range: &Range) -> Result<Aggregate, Error> {
    let row = db
        .query_one(
            &format!("fence: count and digest {}", shape.table),
            &shape.aggregate_sql(range),
            &range.params(),
        )
        .await?;
    Ok(Aggregate {
        rows: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        sum: row.get(1),
    })
}

/// The source's rows, for a table that cannot be compared.
pub(super) async fn count_only(src: &Db, t: &Table) -> Result<Tally, Error> {
    let row = src
        .query_one(
            &format!("fence: count {}", t.name),
            &format!("SELECT count(*) FROM ONLY {}", t.name.sql()),
            &[],
        )
        .await?;
    Ok(Tally {
        source_rows: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        ..Tally::default()
    })
}

/// A table without a primary key, as one aggregate per side.
pub(super) async fn whole(
    src: &Db,
    tgt: &Db,
    shape: &Shape,
    found: &mut Findings,
) -> Result<Tally, Error> {
    let all = Range::default();
    let (a, b) = tokio::join!(aggregate(src, shape, &all), aggregate(tgt, shape, &all));
    let (a, b) = (a?, b?);
    let mut tally = Tally::default();
    tally.add(&a, &b);
    if a != b {
        found.missing = a.rows.saturating_sub(b.rows);
        found.extra = b.rows.saturating_sub(a.rows);
        found.note(format!(
            "no primary key, compared as a whole table: {} rows on the source, {} on the \
             target, contents differ (rows cannot be named without a key)",
            a.rows, b.rows
        ));
    }
    Ok(tally)
}

/// Walks `shape`'s table in ranges of `chunk_rows` source rows. Each range's upper
/// bound is the source key `chunk_rows` rows past its lower one; the last range is
/// open above, so target rows past the source's highest key fall in it. The next
/// bound is read while both sides aggregate the current range.
pub(super) async fn by_ranges(
    src: &Db,
    tgt: &Db,
    shape: &Shape,
    opts: &FenceOptions,
    found: &mut Findings,
) -> Result<(Tally, u64), Error> {
    let mut tally = Tally::default();
    let mut chunks = 0;
    let mut range = Range {
        lower: None,
        upper: next_bound(src, shape, None, opts.chunk_rows).await?,
    };
    loop {
        let next = async {
            match &range.upper {
                Some(hi) => next_bound(src, shape, Some(hi.clone()), opts.chunk_rows).await,
                None => Ok(None),
            }
        };
        let (a, b, next) = tokio::join!(
            aggregate(src, shape, &range),
            aggregate(tgt, shape, &range),
            next
        );
        let (a, b, next) = (a?, b?, next?);
        chunks += 1;
        tally.add(&a, &b);
        if a != b {
            let before = found.rows();
            drill(src, tgt, shape, &range, opts.chunk_rows, found).await?;
            if found.rows() == before {
                found.note(format!(
                    "a key range's aggregates differ ({} rows, sum {} on the source; {} rows, \
                     sum {} on the target) though no row does",
                    a.rows, a.sum, b.rows, b.sum
                ));
            }
        }
        if range.upper.is_none() {
            return Ok((tally, chunks));
        }
        range = Range {
            lower: range.upper.take(),
            upper: next,
        };
    }
}

/// The key `rows` rows past `lower` on the source, or `None` when fewer remain.
async fn next_bound(
    src: &Db,
    shape: &Shape,
    lower: Option<Vec<String>>,
    rows: u64,
) -> Result<Option<Vec<String>>, Error> {
    let range = Range { lower, upper: None };
    let row = src
        .query_opt(
            &format!("fence: find the next key range of {}", shape.table),
            &shape.next_bound_sql(&range, rows),
            &range.params(),
        )
        .await?;
    Ok(row.map(|r| shape.key_of(&r, 0)))
}

/// Names the rows of a differing range: the source's (at most a chunk, as the range
/// was cut on the source) are held by key while the target's are read in pages of
/// `page` rows, so a target with many rows in the range is never held whole.
async fn drill(
    src: &Db,
    tgt: &Db,
    shape: &Shape,
    range: &Range,
    page: u64,
    found: &mut Findings,
) -> Result<(), Error> {
    let what = format!(
        "fence: read the rows of a differing key range of {}",
        shape.table
    );
    let rows = src
        .query(&what, &shape.digests_sql(range, None), &range.params())
        .await?;
    let mut diff = ChunkDiff::new(rows.iter().map(|r| (r.get(0), r.get(1))));
    drop(rows);
    let mut part = range.clone();
    loop {
        let rows = tgt
            .query(&what, &shape.digests_sql(&part, Some(page)), &part.params())
            .await?;
        for r in &rows {
            diff.target(r.get(0), r.get(1), found);
        }
        match rows.last() {
            Some(last) if rows.len() as u64 >= page => part.lower = Some(shape.key_of(last, 2)),
            _ => break,
        }
    }
    diff.finish(found);
    Ok(())
}
