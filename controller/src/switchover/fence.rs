//! The fence: the point in the writer's WAL after which no application write may
//! commit, recorded on both sides, and the witness that proves it held.
//!
//! After the block, the switchover reads the writer's WAL insert position (the
//! fence) and writes a heartbeat past it. Once the subscriber has *applied* that
//! beat, every transaction that committed before the fence is on the subscriber.
//! The fence is recorded in `_cutover.fence` on the writer then, and on the
//! subscriber in the same transaction that drops the subscription, so a resumed
//! run knows the point of no return was passed with proof, and never releases
//! writes to the new side without it.
//!
//! The witness is a temporary logical replication slot (pgoutput, on the
//! migration's publication) created on the writer before the hold. Just before the
//! point of no return, its changes are read without being consumed: a transaction
//! that touched an application table and committed at or past the fence got past
//! the block (a superuser with `session_replication_role = replica`, a disabled
//! trigger), and the switchover refuses. The slot lives in its own session, so a
//! controller that dies takes it along.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::catalog::{self, literal};
use crate::db::{Db, poll};
use crate::error::Error;
use crate::heartbeat::Heartbeat;

/// A fence read on the writer.
#[derive(Debug, Clone, Serialize)]
pub struct Fence {
    /// The writer's WAL insert position once every writer was blocked.
    pub lsn: String,
    /// The heartbeat written after it.
    pub beat: i64,
    /// This run's identity, so a record from an earlier switchover proves nothing.
    pub run: String,
}

/// Forgets the fences of earlier runs in `direction` on `db`.
pub async fn forget(db: &Db, name: &str, direction: &str) -> Result<(), Error> {
    db.execute(
        "forget earlier fences",
        "DELETE FROM _cutover.fence WHERE name = $1 AND direction = $2",
        &[&name, &direction],
    )
    .await?;
    Ok(())
}

/// Reads the fence on the writer `from` and records it there, with a heartbeat
/// written after it.
pub async fn record(from: &Db, name: &str, direction: &str, run: &str) -> Result<Fence, Error> {
    let lsn: String = from
        .query_one(
            "read the fence (the WAL insert position)",
            "SELECT pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await?
        .get(0);
    let beat: i64 = from
        .query_one(
            "record the fence and write a heartbeat past it",
            "WITH hb AS (
               INSERT INTO _cutover.heartbeat (name, seq, at) VALUES ($1, 1, clock_timestamp())
               ON CONFLICT (name) DO UPDATE SET seq = _cutover.heartbeat.seq + 1, at = clock_timestamp()
               RETURNING seq)
             INSERT INTO _cutover.fence (name, direction, run, lsn, beat, side)
             SELECT $1, $2, $3, $4::text::pg_lsn, hb.seq, 'writer' FROM hb
             ON CONFLICT (name, direction) DO UPDATE SET run = EXCLUDED.run, lsn = EXCLUDED.lsn,
               beat = EXCLUDED.beat, side = EXCLUDED.side, recorded_at = clock_timestamp()
             RETURNING beat",
            &[&name, &direction, &run, &lsn],
        )
        .await?
        .get(0);
    Ok(Fence {
        lsn,
        beat,
        run: run.to_string(),
    })
}

/// Waits until the subscriber `to` has applied the fence's heartbeat, and with it
/// every transaction the writer committed before the fence.
pub async fn wait_applied(
    to: &Db,
    name: &str,
    fence: &Fence,
    within: Duration,
) -> Result<(), Error> {
    let hb = Heartbeat::new(name);
    poll(
        &format!(
            "the {} to apply through the fence {} (is its subscription running?)",
            to.side(),
            fence.lsn
        ),
        within,
        Duration::from_millis(2),
        || async { Ok(hb.seen(to).await?.filter(|s| *s >= fence.beat).map(|_| ())) },
    )
    .await
}

/// The statement that records the fence on the subscriber, for the transaction
/// that passes the point of no return.
pub fn record_applied_sql(name: &str, direction: &str, fence: &Fence) -> String {
    format!(
        "INSERT INTO _cutover.fence (name, direction, run, lsn, beat, side) \
         VALUES ({}, {}, {}, {}, {}, 'applied') \
         ON CONFLICT (name, direction) DO UPDATE SET run = EXCLUDED.run, lsn = EXCLUDED.lsn, \
         beat = EXCLUDED.beat, side = EXCLUDED.side, recorded_at = clock_timestamp();\n",
        literal(name),
        literal(direction),
        literal(&fence.run),
        literal(&fence.lsn),
        fence.beat
    )
}

/// The fence a subscriber recorded as applied in `direction`, if any: the proof
/// that the point of no return was passed after it caught up.
pub async fn applied(to: &Db, name: &str, direction: &str) -> Result<Option<Fence>, Error> {
    let exists: bool = to
        .query_one(
            "look for the fence table",
            "SELECT to_regclass('_cutover.fence') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(to
        .query_opt(
            "read the recorded fence",
            "SELECT lsn::text, beat, run FROM _cutover.fence \
             WHERE name = $1 AND direction = $2 AND side = 'applied'",
            &[&name, &direction],
        )
        .await?
        .map(|r| Fence {
            lsn: r.get(0),
            beat: r.get(1),
            run: r.get(2),
        }))
}

/// A transaction that wrote to an application table and committed at or past the
/// fence.
#[derive(Debug, Clone, Serialize)]
pub struct LateWrite {
    pub xid: String,
    pub table: String,
    pub changes: i64,
}

/// The temporary slot that sees every change committed on the writer since just
/// before the hold.
pub struct Witness {
    db: Db,
    slot: String,
    publication: String,
    own: Vec<i64>,
}

impl Witness {
    /// Creates the slot on its own connection to `from`. Logical decoding starts
    /// once every transaction then open on the server has ended; `within` bounds
    /// that wait.
    pub async fn open(from: &Db, publication: &str, within: Duration) -> Result<Witness, Error> {
        let db = Db::connect(from.dsn()).await?;
        // Unique per witness: a plan switches several databases, possibly on one
        // server, and a closed session's temporary slot goes away only once its
        // backend has exited.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let slot = format!(
            "cutover_fence_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let created = db
            .batch(
                "create the fence witness slot",
                &format!(
                    "SET statement_timeout = {}; \
                     SELECT pg_create_logical_replication_slot({}, 'pgoutput', true)",
                    within.as_millis().max(1),
                    literal(&slot)
                ),
            )
            .await;
        if let Err(e) = created {
            return Err(Error::Precondition(format!(
                "{e}; a replication slot can only be created once every transaction open on the {} \
                 server has ended; the oldest: {}",
                from.side(),
                oldest_transactions(from).await
            )));
        }
        db.batch("reset the statement timeout", "SET statement_timeout = 0")
            .await?;
        Ok(Witness {
            own: catalog::own_table_oids(from).await?,
            db,
            slot,
            publication: publication.to_string(),
        })
    }

    /// Every transaction since the slot was created that committed at or past
    /// `fence` and changed an application table. Reads the changes without
    /// consuming them, so it can be asked again.
    pub async fn late_writes(
        &self,
        fence: &str,
        within: Duration,
    ) -> Result<Vec<LateWrite>, Error> {
        self.db
            .set_deadline(Some(tokio::time::Instant::now() + within));
        // pgoutput messages: 'B'egin carries the commit's LSN (bytes 2..9);
        // 'I'nsert, 'U'pdate and 'D'elete the relation's OID (bytes 2..5);
        // 'T'runcate a list of them; 'O'rigin marks a transaction a
        // subscription applied (the reverse link, after the release), which is
        // replication, not a writer getting past the block.
        let rows = self
            .db
            .query(
                "read the fence witness",
                "WITH m AS (
                   SELECT xid::text AS xid, get_byte(data, 0) AS k, data
                   FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
                        'proto_version', '1', 'publication_names', $2)),
                 late AS (
                   SELECT xid FROM m WHERE k = 66
                     AND ('x' || encode(substring(data FROM 2 FOR 8), 'hex'))::bit(64)::bigint
                         >= ($3::text::pg_lsn - '0/0'::pg_lsn)::bigint
                     AND xid NOT IN (SELECT xid FROM m WHERE k = 79)),
                 w AS (
                   SELECT m.xid, CASE WHEN m.k = 84 THEN NULL
                     ELSE ('x' || encode(substring(m.data FROM 2 FOR 4), 'hex'))::bit(32)::bigint END AS rel
                   FROM m JOIN late USING (xid) WHERE m.k IN (73, 85, 68, 84))
                 SELECT xid, coalesce(rel::oid::regclass::text, '(truncate)'), count(*)
                 FROM w WHERE rel IS NULL OR rel <> ALL($4::bigint[])
                 GROUP BY 1, 2 ORDER BY 1, 2",
                &[&self.slot, &self.publication, &fence, &self.own],
            )
            .await;
        self.db.set_deadline(None);
        Ok(rows?
            .iter()
            .map(|r| LateWrite {
                xid: r.get(0),
                table: r.get(1),
                changes: r.get(2),
            })
            .collect())
    }
}

/// The sessions with the oldest open transactions on `db`'s server, for an error.
async fn oldest_transactions(db: &Db) -> String {
    let rows = db
        .query(
            "list open transactions",
            "SELECT pid, usename::text, datname::text, coalesce(application_name, ''), \
                    extract(epoch FROM clock_timestamp() - xact_start)::float8 \
             FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
             ORDER BY xact_start LIMIT 5",
            &[],
        )
        .await;
    match rows {
        Ok(rows) if rows.is_empty() => "none open any more".into(),
        Ok(rows) => rows
            .iter()
            .map(|r| {
                format!(
                    "pid {} (role {}, database {}, application_name {:?}, open {:.1}s)",
                    r.get::<_, i32>(0),
                    r.get::<_, Option<String>>(1).unwrap_or_default(),
                    r.get::<_, Option<String>>(2).unwrap_or_default(),
                    r.get::<_, String>(3),
                    r.get::<_, Option<f64>>(4).unwrap_or(0.0)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("(could not list them: {e})"),
    }
}
