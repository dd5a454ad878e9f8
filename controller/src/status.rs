//! `status`: how far behind the subscriber is, in bytes and in seconds, what the
//! slot costs the publisher, and the state of every table.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::db::Db;
use crate::dsn::Side;
use crate::error::Error;
use crate::heartbeat::{Heartbeat, LagSeconds};
use crate::link::{Link, Slot, Subscription};
use crate::observe::{TableProgress, state_name};
use crate::switchover::block;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The link in force: forward after `sync`, reverse after `switchover --reverse`.
    pub link: Link,
    pub subscription: Subscription,
    pub slot: Option<Slot>,
    /// The publisher's `pg_current_wal_lsn()` minus the slot's
    /// `confirmed_flush_lsn`.
    pub lag_bytes: Option<i64>,
    /// From the heartbeat; `None` while the subscription is disabled.
    pub lag_seconds: Option<LagSeconds>,
    /// Every slot of this migration on either side (the forward one on the
    /// source, the reverse one on the target), with the WAL each holds back.
    pub slots: Vec<SlotRetention>,
    pub tables: Vec<TableProgress>,
    pub sync_errors: i64,
    pub apply_errors: i64,
    /// Tables of the source that refuse writes (the write block).
    pub source_refusing: usize,
    /// Tables of the target that refuse writes (blocked from the sync until the
    /// switchover).
    pub target_refusing: usize,
}

/// One replication slot of the migration and what it costs its server: the WAL
/// it keeps from being recycled grows without bound while nothing consumes it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotRetention {
    pub side: Side,
    pub slot: String,
    pub active: bool,
    pub retained_bytes: Option<i64>,
    pub wal_status: Option<String>,
}

/// The slots of migration `name` on both sides.
pub async fn slots(src: &Db, tgt: &Db, name: &str) -> Result<Vec<SlotRetention>, Error> {
    let mut out = Vec::new();
    for link in [Link::forward(name), Link::reverse(name)] {
        let publisher = match link.publisher {
            Side::Source => src,
            Side::Target => tgt,
        };
        if let Some(s) = link.slot(publisher).await? {
            out.push(SlotRetention {
                side: link.publisher,
                slot: link.name.clone(),
                active: s.active,
                retained_bytes: s.retained_bytes,
                wal_status: s.wal_status,
            });
        }
    }
    Ok(out)
}

impl Status {
    pub fn ready(&self) -> bool {
        !self.tables.is_empty() && self.tables.iter().all(|t| t.state == 'r')
    }
}

/// The link that currently replicates for `name`: forward if its subscription
/// exists on the target, else reverse if that one exists on the source.
pub async fn active_link(src: &Db, tgt: &Db, name: &str) -> Result<(Link, Subscription), Error> {
    let forward = Link::forward(name);
    if let Some(sub) = forward.subscription(tgt).await? {
        return Ok((forward, sub));
    }
    let reverse = Link::reverse(name);
    if let Some(sub) = reverse.subscription(src).await? {
        return Ok((reverse, sub));
    }
    Err(Error::Precondition(format!(
        "no replication named {name}: no subscription {name} on the target and no {name}_reverse on the source; run `cutover db sync` first"
    )))
}

/// Reads the status. The heartbeat measurement waits up to `lag_within` for the
/// beat to arrive.
pub async fn status(src: &Db, tgt: &Db, name: &str, lag_within: Duration) -> Result<Status, Error> {
    let (link, subscription) = active_link(src, tgt, name).await?;
    let (publisher, subscriber) = match link.publisher {
        Side::Source => (src, tgt),
        Side::Target => (tgt, src),
    };
    let slot = link.slot(publisher).await?;
    let lag_seconds = if subscription.enabled {
        Some(
            Heartbeat::new(name)
                .measure(publisher, subscriber, lag_within)
                .await?,
        )
    } else {
        None
    };
    // Read after the beat so that the bytes include it only if it is still pending.
    let slot = match slot {
        Some(_) => link.slot(publisher).await?,
        None => None,
    };
    let tables = link
        .table_states(subscriber)
        .await?
        .into_iter()
        .map(|t| TableProgress {
            table: t.name.to_string(),
            state: t.state,
            rows_copied: t.rows_copied,
            rows_estimated: None,
            bytes_copied: t.bytes_copied,
            bytes_on_source: None,
            rows_per_second: None,
            eta_seconds: None,
        })
        .collect();
    let (sync_errors, apply_errors) = link.error_counts(subscriber).await?;
    let slots = slots(src, tgt, name).await?;
    let (source_refusing, target_refusing) = (
        block::blocked_tables(src).await?.len(),
        block::blocked_tables(tgt).await?.len(),
    );
    Ok(Status {
        source_refusing,
        target_refusing,
        lag_bytes: slot.as_ref().and_then(|s| s.lag_bytes),
        link,
        subscription,
        slot,
        lag_seconds,
        slots,
        tables,
        sync_errors,
        apply_errors,
    })
}

/// `1536` → `1.5 KiB`.
pub fn bytes(n: i64) -> String {
    let mut v = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v.abs() < 1024.0 || unit == "GiB" {
            return if unit == "B" {
                format!("{n} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{n} B")
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replication {}: {} → {} ({})",
            self.link.name,
            self.link.publisher,
            self.link.subscriber,
            if self.subscription.enabled {
                "enabled"
            } else {
                "DISABLED"
            }
        )?;
        let lag_bytes = self
            .lag_bytes
            .map(bytes)
            .unwrap_or_else(|| "unknown".into());
        let lag_seconds = self
            .lag_seconds
            .map(|l| l.to_string())
            .unwrap_or_else(|| "unknown".into());
        writeln!(
            f,
            "lag:     {lag_bytes} not yet flushed by the subscriber; {lag_seconds} by heartbeat"
        )?;
        if self.slot.is_none() {
            writeln!(
                f,
                "slot:    {} MISSING on the {}",
                self.link.name, self.link.publisher
            )?;
        }
        for s in &self.slots {
            writeln!(
                f,
                "slot:    {} on the {}, {}; retains {} of WAL; wal_status {}",
                s.slot,
                s.side,
                if s.active { "active" } else { "INACTIVE" },
                s.retained_bytes.map(bytes).unwrap_or_else(|| "?".into()),
                s.wal_status.as_deref().unwrap_or("?")
            )?;
        }
        let ready = self.tables.iter().filter(|t| t.state == 'r').count();
        writeln!(f, "tables:  {ready}/{} ready", self.tables.len())?;
        for t in self.tables.iter().filter(|t| t.state != 'r') {
            match t.rows_copied {
                Some(n) => writeln!(f, "         {} {} ({n} rows)", t.table, state_name(t.state))?,
                None => writeln!(f, "         {} {}", t.table, state_name(t.state))?,
            }
        }
        writeln!(
            f,
            "errors:  {} table copy, {} apply",
            self.sync_errors, self.apply_errors
        )?;
        let refusing = |n: usize| {
            if n == 0 {
                "takes writes".to_string()
            } else {
                format!("refuses writes on {n} table(s)")
            }
        };
        write!(
            f,
            "writes:  the source {}; the target {}",
            refusing(self.source_refusing),
            refusing(self.target_refusing)
        )
    }
}
