//! Sequence values: logical replication does not carry them, so the switchover
//! copies each one's `last_value` and `is_called` while writes are blocked. Setting
//! them to `MAX(column)` instead would miss sequences no column owns.

use futures_util::future::try_join_all;

use crate::catalog::{self, Name};
use crate::db::Db;
use crate::error::Error;

/// Copies every sequence from `from` to `to` in one transaction on `to`. Returns
/// how many.
pub async fn copy(from: &Db, to: &Db) -> Result<usize, Error> {
    let seqs = catalog::sequences(from).await?;
    if seqs.is_empty() {
        return Ok(0);
    }
    // The reads are pipelined on one connection: one round trip, not one per
    // sequence.
    let values = try_join_all(seqs.iter().map(|s| read(from, s))).await?;
    to.batch("begin the sequence copy", "BEGIN").await?;
    let set = try_join_all(seqs.iter().zip(&values).map(|(s, (v, called))| {
        let qualified = s.sql();
        async move {
            to.execute(
                &format!("set sequence {s}"),
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&qualified, v, called],
            )
            .await
        }
    }))
    .await;
    if let Err(e) = set {
        let _ = to.batch("roll back", "ROLLBACK").await;
        return Err(e);
    }
    to.batch("commit the sequence copy", "COMMIT").await?;
    Ok(seqs.len())
}

async fn read(db: &Db, seq: &Name) -> Result<(i64, bool), Error> {
    let row = db
        .query_one(
            &format!("read sequence {seq}"),
            &format!("SELECT last_value, is_called FROM {}", seq.sql()),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
