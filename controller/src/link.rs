//! One direction of logical replication: a publication and a slot on the publisher,
//! a subscription on the subscriber, all named after the migration. `sync` creates
//! the forward link (source → target); `switchover --reverse` creates the reverse
//! one (target → source) so that a rollback loses nothing.

use std::time::Duration;

use serde::Serialize;

use crate::catalog::{Name, ident, literal};
use crate::db::{Db, poll};
use crate::dsn::Side;
use crate::error::Error;

/// Session settings that keep a statement's text out of the server log.
const QUIET_LOG: &str = "SET log_min_error_statement = panic; SET log_statement = 'none'; \
     SET log_min_duration_statement = -1";
const RESTORE_LOG: &str =
    "RESET log_min_error_statement; RESET log_statement; RESET log_min_duration_statement";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The publication, slot and subscription name.
    pub name: String,
    pub publisher: Side,
    pub subscriber: Side,
}

impl Link {
    /// Source → target, named `name`.
    pub fn forward(name: &str) -> Link {
        Link {
            name: name.to_string(),
            publisher: Side::Source,
            subscriber: Side::Target,
        }
    }

    /// Target → source, named `{name}_reverse`.
    pub fn reverse(name: &str) -> Link {
        Link {
            name: format!("{name}_reverse"),
            publisher: Side::Target,
            subscriber: Side::Source,
        }
    }

    /// The same link the other way round, e.g. the forward link of a reverse one.
    pub fn flipped(&self, base: &str) -> Link {
        if self.publisher == Side::Source {
            Link::reverse(base)
        } else {
            Link::forward(base)
        }
    }
}

/// What the subscription asks of the servers beyond the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SubscriptionOptions {
    /// Rows travel in binary form (14+): less to format and parse on both sides.
    pub binary: bool,
    /// Large transactions are streamed while they run (14+) instead of spilled to
    /// disk on the publisher and sent at commit.
    pub streaming: bool,
}

impl SubscriptionOptions {
    pub fn describe(&self) -> String {
        let mut on = Vec::new();
        if self.binary {
            on.push("binary");
        }
        if self.streaming {
            on.push("streaming");
        }
        if on.is_empty() {
            "text transfer, no streaming (a server older than 14)".into()
        } else {
            format!("options {}", on.join(", "))
        }
    }
}

/// One table of a subscription.
#[derive(Debug, Clone)]
pub struct TableState {
    pub name: Name,
    /// `srsubstate`: `i` init, `d` copying, `f`/`s` catching up, `r` ready.
    pub state: char,
    /// While the copy runs (`pg_stat_progress_copy`).
    pub rows_copied: Option<i64>,
    pub bytes_copied: Option<i64>,
}

/// The subscription as the subscriber sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    pub enabled: bool,
    pub slot_name: Option<String>,
    /// The apply worker's pid, when it runs.
    pub worker_pid: Option<i32>,
}

/// The slot as the publisher sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Slot {
    pub active: bool,
    pub active_pid: Option<i32>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`: what the subscriber has not yet
    /// confirmed as flushed.
    pub lag_bytes: Option<i64>,
    /// `pg_current_wal_lsn() - restart_lsn`: WAL the publisher keeps for this slot.
    pub retained_bytes: Option<i64>,
    pub wal_status: Option<String>,
    pub confirmed_flush_lsn: Option<String>,
}

impl Link {
    pub async fn subscription(&self, sub: &Db) -> Result<Option<Subscription>, Error> {
        let row = sub
            .query_opt(
                "read the subscription",
                "SELECT s.subenabled, s.subslotname::text, \
                        (SELECT st.pid FROM pg_stat_subscription st \
                         WHERE st.subid = s.oid AND st.relid IS NULL LIMIT 1) \
                 FROM pg_subscription s \
                 WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&self.name],
            )
            .await?;
        Ok(row.map(|r| Subscription {
            enabled: r.get(0),
            slot_name: r.get(1),
            worker_pid: r.get(2),
        }))
    }

    pub async fn slot(&self, publisher: &Db) -> Result<Option<Slot>, Error> {
        let row = publisher
            .query_opt(
                "read the replication slot",
                "SELECT active, active_pid, \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, \
                        wal_status, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await?;
        Ok(row.map(|r| Slot {
            active: r.get(0),
            active_pid: r.get(1),
            lag_bytes: r.get(2),
            retained_bytes: r.get(3),
            wal_status: r.get(4),
            confirmed_flush_lsn: r.get(5),
        }))
    }

    pub async fn publication_exists(&self, publisher: &Db) -> Result<bool, Error> {
        Ok(publisher
            .query_one(
                "look for the publication",
                "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                &[&self.name],
            )
            .await?
            .get(0))
    }

    /// The tables the publication carries.
    pub async fn published(&self, publisher: &Db) -> Result<Vec<Name>, Error> {
        let rows = publisher
            .query(
                "list the publication's tables",
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&self.name],
            )
            .await?;
        Ok(rows.iter().map(|r| Name::new(r.get(0), r.get(1))).collect())
    }

    /// Creates the publication for `tables`, or adds the ones it lacks. Returns
    /// `None` when nothing changed, or what was done.
    pub async fn ensure_publication(
        &self,
        publisher: &Db,
        tables: &[Name],
    ) -> Result<Option<String>, Error> {
        let list = |ts: &[&Name]| ts.iter().map(|t| t.sql()).collect::<Vec<_>>().join(", ");
        if !self.publication_exists(publisher).await? {
            let all: Vec<&Name> = tables.iter().collect();
            publisher
                .batch(
                    "create the publication",
                    &format!(
                        "CREATE PUBLICATION {} FOR TABLE {}",
                        ident(&self.name),
                        list(&all)
                    ),
                )
                .await?;
            return Ok(Some(format!("created with {} table(s)", tables.len())));
        }
        let have = self.published(publisher).await?;
        let missing: Vec<&Name> = tables.iter().filter(|t| !have.contains(t)).collect();
        if missing.is_empty() {
            return Ok(None);
        }
        publisher
            .batch(
                "add tables to the publication",
                &format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    ident(&self.name),
                    list(&missing)
                ),
            )
            .await?;
        Ok(Some(format!("added {} table(s)", missing.len())))
    }

    /// The options this pair of servers supports. Binary transfer needs both
    /// servers on 14 or later and of one major version (a type's binary form may
    /// change between versions), and every column's type with binary send and
    /// receive functions (types without them fail the copy on 16 and later).
    pub async fn options(
        &self,
        publisher: &Db,
        subscriber: &Db,
    ) -> Result<SubscriptionOptions, Error> {
        let both = publisher.version().min(subscriber.version());
        let same_major = publisher.version() / 10000 == subscriber.version() / 10000;
        let textual: i64 = publisher
            .query_one(
                "look for column types without a binary form",
                "SELECT count(*) FROM pg_attribute a \
                 JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_%' \
                   AND (t.typsend = 0 OR t.typreceive = 0)",
                &[],
            )
            .await?
            .get(0);
        Ok(SubscriptionOptions {
            binary: both >= 140000 && same_major && textual == 0,
            streaming: both >= 140000,
        })
    }

    /// Creates the subscription, with its slot unless `create_slot` is false (the
    /// slot was made beforehand under the link's name). `conninfo` is how the
    /// subscriber's server reaches the publisher.
    pub async fn create_subscription(
        &self,
        sub: &Db,
        conninfo: &str,
        copy_data: bool,
        create_slot: bool,
        options: SubscriptionOptions,
    ) -> Result<(), Error> {
        // The apply commits without waiting for its WAL flush (the server's
        // default for subscriptions): one flush per applied transaction would cap
        // the apply at the disk's fsync rate, far under a busy source's write
        // rate. Nothing is lost by it: the subscriber confirms to the slot only
        // what it has flushed, so a crash replays the rest, and the switchover's
        // point of no return commits (and so flushes) after everything the fence
        // covers was applied. `origin = none` (16+) keeps changes from echoing
        // back.
        let mut with = format!(
            "copy_data = {copy_data}, create_slot = {create_slot}, slot_name = {}, synchronous_commit = 'off'",
            literal(&self.name)
        );
        if sub.version() >= 160000 {
            with.push_str(", origin = none");
        }
        if options.binary {
            with.push_str(", binary = true");
        }
        if options.streaming {
            with.push_str(", streaming = on");
        }
        // The statement carries the publisher's password. PostgreSQL logs a
        // failed statement's text (`log_min_error_statement`) and may log slow or
        // all statements: this session turns those off around it. They are
        // superuser settings; a controller that may not change them gets the
        // server's own (and the README says so).
        let quiet = sub
            .batch("keep the statement out of the server log", QUIET_LOG)
            .await
            .is_ok();
        let created = sub
            .batch(
                "create the subscription",
                &format!(
                    "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH ({with})",
                    ident(&self.name),
                    literal(conninfo),
                    ident(&self.name)
                ),
            )
            .await;
        if quiet {
            let _ = sub.batch("restore the log settings", RESTORE_LOG).await;
        }
        created
    }

    /// Disables and drops the subscription, leaving the slot on the publisher to
    /// [`Link::drop_slot`]. Returns whether there was one.
    pub async fn drop_subscription(&self, sub: &Db) -> Result<bool, Error> {
        if self.subscription(sub).await?.is_none() {
            return Ok(false);
        }
        let n = ident(&self.name);
        sub.batch(
            "disable the subscription",
            &format!("ALTER SUBSCRIPTION {n} DISABLE"),
        )
        .await?;
        sub.batch(
            "detach the subscription from its slot",
            &format!("ALTER SUBSCRIPTION {n} SET (slot_name = NONE)"),
        )
        .await?;
        sub.batch("drop the subscription", &format!("DROP SUBSCRIPTION {n}"))
            .await?;
        Ok(true)
    }

    /// Drops the slot once its WAL sender has gone (ending it if it lingers past
    /// `within`). Returns whether there was one.
    pub async fn drop_slot(&self, publisher: &Db, within: Duration) -> Result<bool, Error> {
        let Some(slot) = self.slot(publisher).await? else {
            return Ok(false);
        };
        if slot.active {
            let waited = poll(
                "the replication slot to become inactive",
                within,
                Duration::from_millis(20),
                || async {
                    Ok(match self.slot(publisher).await? {
                        Some(s) if s.active => None,
                        _ => Some(()),
                    })
                },
            )
            .await;
            if waited.is_err() {
                // The subscriber is gone or disabled: its sender has no one to
                // serve.
                publisher
                    .execute(
                        "end the slot's WAL sender",
                        "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots \
                         WHERE slot_name = $1 AND active_pid IS NOT NULL",
                        &[&self.name],
                    )
                    .await?;
            }
        }
        publisher
            .execute(
                "drop the replication slot",
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await?;
        Ok(true)
    }

    /// Returns whether there was one.
    pub async fn drop_publication(&self, publisher: &Db) -> Result<bool, Error> {
        if !self.publication_exists(publisher).await? {
            return Ok(false);
        }
        publisher
            .batch(
                "drop the publication",
                &format!("DROP PUBLICATION IF EXISTS {}", ident(&self.name)),
            )
            .await?;
        Ok(true)
    }

    /// Every table of the subscription with its `srsubstate`, plus rows and bytes
    /// copied so far for tables being copied.
    pub async fn table_states(&self, sub: &Db) -> Result<Vec<TableState>, Error> {
        let rows = sub
            .query(
                "read the subscription's table states",
                "SELECT n.nspname::text, c.relname::text, sr.srsubstate::text, p.tuples_processed, \
                        p.bytes_processed \
                 FROM pg_subscription_rel sr \
                 JOIN pg_subscription s ON s.oid = sr.srsubid \
                 JOIN pg_class c ON c.oid = sr.srrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 LEFT JOIN pg_stat_progress_copy p ON p.relid = sr.srrelid \
                 WHERE s.subname = $1 ORDER BY 1, 2",
                &[&self.name],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let state: String = r.get(2);
                TableState {
                    name: Name::new(r.get(0), r.get(1)),
                    state: state.chars().next().unwrap_or('?'),
                    rows_copied: r.get(3),
                    bytes_copied: r.get(4),
                }
            })
            .collect())
    }

    /// Table-copy and apply errors since the subscription was created (15+).
    pub async fn error_counts(&self, sub: &Db) -> Result<(i64, i64), Error> {
        if sub.version() < 150000 {
            return Ok((0, 0));
        }
        let row = sub
            .query_opt(
                "read the subscription's error counts",
                "SELECT sync_error_count, apply_error_count FROM pg_stat_subscription_stats WHERE subname = $1",
                &[&self.name],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))).unwrap_or((0, 0)))
    }
}
