//! Sequence values: logical replication does not carry them, so the switchover
//! brings each of the new writer's sequences up to the old writer's while writes
//! are blocked. A sequence is only ever moved forward: one already past the old
//! writer's value (it has handed out values since, say after a resumed run) keeps
//! its own. Setting them to `MAX(column)` instead would miss sequences no column
//! owns.

use futures_util::future::try_join_all;

use crate::catalog::{self, Name};
use crate::db::Db;
use crate::error::Error;

/// A sequence's `last_value`, `is_called` and increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    last: i64,
    called: bool,
    step: i64,
}

impl State {
    /// The value the next `nextval()` returns.
    fn next(self) -> i64 {
        if self.called {
            self.last.saturating_add(self.step)
        } else {
            self.last
        }
    }

    /// Whether `self` would hand out a value `other` already has.
    fn behind(self, other: State) -> bool {
        if other.step >= 0 {
            self.next() < other.next()
        } else {
            self.next() > other.next()
        }
    }
}

/// Moves every sequence of `to` that is behind the same sequence on `from` up to
/// it, in one transaction on `to`. Returns (sequences moved, sequences compared).
pub async fn bring_forward(from: &Db, to: &Db) -> Result<(usize, usize), Error> {
    let seqs = catalog::sequences(from).await?;
    if seqs.is_empty() {
        return Ok((0, 0));
    }
    // Reads are pipelined on each connection: one round trip per side, not one
    // per sequence.
    let (src, tgt) = tokio::join!(
        try_join_all(seqs.iter().map(|s| read(from, s))),
        try_join_all(seqs.iter().map(|s| read(to, s)))
    );
    let (src, tgt) = (src?, tgt?);
    let moves: Vec<(&Name, State)> = seqs
        .iter()
        .zip(src.iter().zip(&tgt))
        .filter_map(|(name, (s, t))| match (s, t) {
            (Some(s), Some(t)) if t.behind(*s) => Some((name, *s)),
            _ => None,
        })
        .collect();
    if moves.is_empty() {
        return Ok((0, seqs.len()));
    }
    to.batch("begin the sequence update", "BEGIN").await?;
    let set = try_join_all(moves.iter().map(|(name, s)| {
        let qualified = name.sql();
        async move {
            to.execute(
                &format!("set sequence {name}"),
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&qualified, &s.last, &s.called],
            )
            .await
        }
    }))
    .await;
    if let Err(e) = set {
        to.rollback().await;
        return Err(e);
    }
    to.batch("commit the sequence update", "COMMIT").await?;
    Ok((moves.len(), seqs.len()))
}

/// The sequence's state, or `None` where it does not exist (dropped on one side).
async fn read(db: &Db, seq: &Name) -> Result<Option<State>, Error> {
    let qualified = seq.sql();
    let exists: bool = db
        .query_one(
            &format!("look for sequence {seq}"),
            "SELECT to_regclass($1::text) IS NOT NULL",
            &[&qualified],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = db
        .query_one(
            &format!("read sequence {seq}"),
            &format!(
                "SELECT s.last_value, s.is_called, p.seqincrement \
                 FROM {qualified} s, pg_catalog.pg_sequence p \
                 WHERE p.seqrelid = $1::text::regclass"
            ),
            &[&qualified],
        )
        .await?;
    Ok(Some(State {
        last: row.get(0),
        called: row.get(1),
        step: row.get(2),
    }))
}

#[cfg(test)]
mod tests {
    use super::State;

    fn st(last: i64, called: bool, step: i64) -> State {
        State { last, called, step }
    }

    #[test]
    fn only_a_sequence_that_would_reuse_values_is_behind() {
        // Target handed out 10, source 20: the target is behind.
        assert!(st(10, true, 1).behind(st(20, true, 1)));
        // Target already past the source (it took writes since): left alone.
        assert!(!st(30, true, 1).behind(st(20, true, 1)));
        // Equal: nothing to do.
        assert!(!st(20, true, 1).behind(st(20, true, 1)));
        // Never called on the target (next is 20) vs called at 20 (next 21).
        assert!(st(20, false, 1).behind(st(20, true, 1)));
        // Descending sequences move the other way.
        assert!(st(-10, true, -1).behind(st(-20, true, -1)));
        assert!(!st(-30, true, -1).behind(st(-20, true, -1)));
    }
}
