//! `cleanup`: drops what `sync` (and `switchover --reverse`) created, on both sides.
//! Anything already gone is reported as absent, so a second run changes nothing.
//! Records of blocked roles are kept: they are the switchover's result, not
//! scaffolding.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::db::Db;
use crate::dsn::Side;
use crate::error::Error;
use crate::link::Link;
use crate::switchover::block;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Done {
    Dropped,
    Absent,
    Kept,
}

#[derive(Debug, Clone, Serialize)]
pub struct CleanupAction {
    pub side: Side,
    pub object: String,
    pub done: Done,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CleanupReport {
    pub actions: Vec<CleanupAction>,
}

impl CleanupReport {
    pub fn changed(&self) -> bool {
        self.actions.iter().any(|a| a.done == Done::Dropped)
    }
}

pub async fn cleanup(src: &Db, tgt: &Db, name: &str) -> Result<CleanupReport, Error> {
    let mut actions = Vec::new();
    let mut add = |side: Side, object: String, dropped: bool| {
        actions.push(CleanupAction {
            side,
            object,
            done: if dropped { Done::Dropped } else { Done::Absent },
            detail: String::new(),
        });
    };
    for link in [Link::forward(name), Link::reverse(name)] {
        let (publisher, subscriber) = match link.publisher {
            Side::Source => (src, tgt),
            Side::Target => (tgt, src),
        };
        add(
            link.subscriber,
            format!("subscription {}", link.name),
            link.drop_subscription(subscriber).await?,
        );
        add(
            link.publisher,
            format!("replication slot {}", link.name),
            link.drop_slot(publisher, Duration::from_secs(10)).await?,
        );
        add(
            link.publisher,
            format!("publication {}", link.name),
            link.drop_publication(publisher).await?,
        );
    }
    for db in [src, tgt] {
        actions.extend(own_schema(db, name).await?);
    }
    Ok(CleanupReport { actions })
}

/// The heartbeat row, and the `_cutover` schema once nothing in it is in use.
async fn own_schema(db: &Db, name: &str) -> Result<Vec<CleanupAction>, Error> {
    let mut out = Vec::new();
    let exists: bool = db
        .query_one(
            "look for the _cutover schema",
            "SELECT to_regclass('_cutover.heartbeat') IS NOT NULL AND to_regclass('_cutover.blocked') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        out.push(CleanupAction {
            side: db.side(),
            object: "schema _cutover".into(),
            done: Done::Absent,
            detail: String::new(),
        });
        return Ok(out);
    }
    db.execute(
        "delete the heartbeat row",
        "DELETE FROM _cutover.heartbeat WHERE name = $1",
        &[&name],
    )
    .await?;
    let blocked: Vec<String> = db
        .query(
            "read the blocked-role record",
            "SELECT role FROM _cutover.blocked WHERE name = $1 ORDER BY 1",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let others: i64 = db
        .query_one(
            "look for other migrations",
            "SELECT (SELECT count(*) FROM _cutover.heartbeat) + (SELECT count(*) FROM _cutover.blocked)",
            &[],
        )
        .await?
        .get(0);
    // A side that refuses writes keeps them refused: the triggers call a
    // function in this schema, and dropping it would open the old database to a
    // job still pointed at it.
    let refusing = block::blocked_tables(db).await?.len();
    if others == 0 && refusing == 0 {
        db.batch(
            "drop the _cutover schema",
            "DROP SCHEMA IF EXISTS _cutover CASCADE",
        )
        .await?;
        out.push(CleanupAction {
            side: db.side(),
            object: "schema _cutover".into(),
            done: Done::Dropped,
            detail: String::new(),
        });
    } else {
        let detail = if refusing > 0 {
            format!(
                "{refusing} table(s) here still refuse writes (this database is not the writer, \
                 kept on purpose); to make it writable again: ALTER TABLE ... DISABLE TRIGGER {}",
                block::TRIGGER
            )
        } else if blocked.is_empty() {
            "other migrations use it".to_string()
        } else {
            format!(
                "it records that {} are read-only here (the switchover's doing, kept on purpose)",
                blocked.join(", ")
            )
        };
        out.push(CleanupAction {
            side: db.side(),
            object: "schema _cutover".into(),
            done: Done::Kept,
            detail,
        });
    }
    Ok(out)
}

impl fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.actions {
            let done = match a.done {
                Done::Dropped => "dropped",
                Done::Absent => "absent",
                Done::Kept => "kept",
            };
            write!(f, "{done:<8} {} {}", a.side, a.object)?;
            if !a.detail.is_empty() {
                write!(f, ": {}", a.detail)?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "{}",
            if self.changed() {
                "cleaned up"
            } else {
                "nothing to clean up"
            }
        )
    }
}
