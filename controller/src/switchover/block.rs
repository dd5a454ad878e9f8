//! The write block: a database that is not the writer refuses every write, whoever
//! sends it.
//!
//! Each table a write can reach gets a statement trigger, `cutover_write_block`,
//! that raises `read_only_sql_transaction` before any INSERT, UPDATE, DELETE,
//! TRUNCATE, COPY or MERGE. Unlike a role setting (which a session can turn off
//! with `SET default_transaction_read_only = off`, as PgJDBC does for every
//! read-write transaction) or revoked privileges (which never bind a superuser or
//! a table owner), a trigger fires for every role, every session, every pooled
//! connection and every `SECURITY DEFINER` function. Logical replication's apply
//! workers run with `session_replication_role = replica`, so they do not fire it:
//! the subscription keeps applying into a blocked database.
//!
//! Creating or enabling the trigger takes `SHARE ROW EXCLUSIVE` on the table, which
//! waits for every transaction that has written to it: once the block commits, no
//! write made before it can still commit. Transactions holding a write lock are
//! ended (their clients get an error: nothing they were told was committed is
//! lost). A prepared transaction cannot be ended, and a session the controller
//! may not end (a superuser's, when the controller is not one) is named: both make
//! the block refuse rather than wait past its deadline.
//!
//! Two deliberate acts get past a trigger: a superuser session with
//! `session_replication_role = replica`, and a table owner disabling the trigger.
//! The switchover's fence check (`fence.rs`) catches any write they make before
//! the point of no return.
//!
//! Unblocking disables the triggers (the same lock level, which readers never
//! wait for); `cutover db cleanup` drops them on a side that is the writer.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::catalog::{self, Name, ident};
use crate::db::Db;
use crate::error::Error;

/// The trigger's name on every blocked table.
pub const TRIGGER: &str = "cutover_write_block";

/// A session the block ended or could not get past.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub pid: i32,
    pub role: String,
    pub application_name: String,
    pub client: Option<String>,
    /// How long its transaction had been open, in seconds.
    pub transaction_open_s: Option<f64>,
    /// The strongest table lock it held on a blocked table, when known.
    pub lock: Option<String>,
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} (role {}", self.pid, self.role)?;
        if !self.application_name.is_empty() {
            write!(f, ", application_name {:?}", self.application_name)?;
        }
        match &self.client {
            Some(c) => write!(f, ", client {c}")?,
            None => write!(f, ", local socket")?,
        }
        if let Some(s) = self.transaction_open_s {
            write!(f, ", transaction open {s:.1}s")?;
        }
        if let Some(l) = &self.lock {
            write!(f, ", holds {l}")?;
        }
        write!(f, ")")
    }
}

/// What blocking did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Blocked {
    /// Tables that refuse writes now.
    pub tables: usize,
    /// Sessions ended because they had a write in flight.
    pub sessions_ended: Vec<Session>,
    /// Roles that could lift the block on purpose (superusers, table owners):
    /// filled in by the switchover after its write pause.
    pub can_lift: Vec<String>,
}

const SESSION_COLUMNS: &str = "a.pid, a.usename::text, coalesce(a.application_name, ''), \
     a.client_addr::text, extract(epoch FROM clock_timestamp() - a.xact_start)::float8";

fn session(r: &tokio_postgres::Row, lock: Option<String>) -> Session {
    Session {
        pid: r.get(0),
        role: r.get::<_, Option<String>>(1).unwrap_or_default(),
        application_name: r.get(2),
        client: r.get(3),
        transaction_open_s: r.get(4),
        lock,
    }
}

/// Refuses while a prepared transaction is pending in this database: it holds its
/// locks and its writes until someone commits it, and no one can end it.
pub async fn refuse_prepared(db: &Db) -> Result<(), Error> {
    let rows = db
        .query(
            "list prepared transactions",
            "SELECT gid, owner::text, extract(epoch FROM now() - prepared)::float8 \
             FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared",
            &[],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{:?} (owner {}, prepared {:.0}s ago)",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, f64>(2)
            )
        })
        .collect();
    Err(Error::Precondition(format!(
        "the {} database has {} prepared transaction(s): {}; a prepared transaction can commit \
         writes at any later time and cannot be ended, so writes cannot be moved safely; \
         finish it first (COMMIT PREPARED or ROLLBACK PREPARED 'gid')",
        db.side(),
        rows.len(),
        list.join(", ")
    )))
}

/// Makes every table of `db` refuse writes, by `deadline`.
pub async fn block(db: &Db, deadline: Instant) -> Result<Blocked, Error> {
    let tables = catalog::writable_tables(db).await?;
    if tables.is_empty() {
        return Ok(Blocked::default());
    }
    refuse_prepared(db).await?;
    let existing = triggers(db).await?;
    let mut sql = String::new();
    for t in &tables {
        match existing.iter().find(|(n, _)| n == t) {
            Some((_, true)) => {}
            Some((_, false)) => sql.push_str(&format!(
                "ALTER TABLE {} ENABLE TRIGGER {};\n",
                t.sql(),
                ident(TRIGGER)
            )),
            None => sql.push_str(&format!(
                "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} \
                 FOR EACH STATEMENT EXECUTE FUNCTION _cutover.refuse_write();\n",
                ident(TRIGGER),
                t.sql()
            )),
        }
    }
    let ended = with_table_locks(db, &tables, &sql, "block writes", deadline).await?;
    Ok(Blocked {
        tables: tables.len(),
        sessions_ended: ended,
        // Read by the switchover after its pause ([`can_lift`]): who could
        // lift the block is for the report, and keeps nothing safe.
        can_lift: Vec::new(),
    })
}

/// Lets `db` take writes again: disables every enabled block trigger, by
/// `deadline`. Returns how many tables it opened.
pub async fn unblock(db: &Db, deadline: Instant) -> Result<usize, Error> {
    let tables = blocked_tables(db).await?;
    if tables.is_empty() {
        return Ok(0);
    }
    with_table_locks(
        db,
        &tables,
        &disable_sql(&tables),
        "restore write access",
        deadline,
    )
    .await?;
    Ok(tables.len())
}

/// The tables of `db` that refuse writes now.
pub async fn blocked_tables(db: &Db) -> Result<Vec<Name>, Error> {
    Ok(triggers(db)
        .await?
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(t, _)| t)
        .collect())
}

/// A statement that puts the write block on every writable table that has none
/// (the tables [`catalog::writable_tables`] lists). `sync` runs it in the
/// transaction that creates the target's tables, after their grants and owners,
/// so that no session ever sees such a table writable.
pub fn block_unblocked_sql() -> String {
    format!(
        "DO $cutover_block$\n\
         DECLARE t record;\n\
         BEGIN\n\
           FOR t IN SELECT n.nspname, c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND {} AND {} \
               AND NOT EXISTS (SELECT 1 FROM pg_trigger g \
                 WHERE g.tgrelid = c.oid AND g.tgname = {})\n\
           LOOP\n\
             EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE \
               ON %I.%I FOR EACH STATEMENT EXECUTE FUNCTION _cutover.refuse_write()', \
               {}, t.nspname, t.relname);\n\
           END LOOP;\n\
         END $cutover_block$;\n",
        catalog::SYSTEM_SCHEMAS,
        catalog::NOT_EXTENSION_MEMBER,
        catalog::literal(TRIGGER),
        catalog::literal(TRIGGER),
    )
}

/// The statements that let `tables` take writes again; the switchover runs them
/// in its point-of-no-return transaction.
pub fn disable_sql(tables: &[Name]) -> String {
    tables
        .iter()
        .map(|t| {
            format!(
                "ALTER TABLE {} DISABLE TRIGGER {};\n",
                t.sql(),
                ident(TRIGGER)
            )
        })
        .collect()
}

/// Every table with a block trigger, and whether it is enabled.
async fn triggers(db: &Db) -> Result<Vec<(Name, bool)>, Error> {
    let rows = db
        .query(
            "list the write-block triggers",
            "SELECT n.nspname::text, c.relname::text, t.tgenabled <> 'D' \
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = $1 ORDER BY 1, 2",
            &[&TRIGGER],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (Name::new(r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// Roles that could lift the block: superusers and the tables' owners (and their
/// members are not listed; the owners name them).
pub async fn can_lift(db: &Db) -> Result<Vec<String>, Error> {
    let rows = db
        .query(
            "list roles that could lift the block",
            "SELECT rolname::text FROM pg_roles WHERE rolsuper AND rolcanlogin \
             UNION SELECT DISTINCT pg_get_userbyid(c.relowner)::text FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid WHERE t.tgname = $1 ORDER BY 1",
            &[&TRIGGER],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The client sessions of this database that could lift the block: superusers'
/// and the blocked tables' owners', for an error that must name who wrote past it.
pub async fn lifters_connected(db: &Db) -> String {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid \
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
           AND a.backend_type = 'client backend' \
           AND (r.rolsuper OR EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                WHERE t.tgname = $1 AND pg_has_role(a.usesysid, c.relowner, 'MEMBER'))) \
         ORDER BY a.backend_start LIMIT 10"
    );
    match db
        .query_unbounded("list sessions that could lift the block", &sql, &[&TRIGGER])
        .await
    {
        Ok(rows) if rows.is_empty() => "none connected now".into(),
        Ok(rows) => rows
            .iter()
            .map(|r| session(r, None).to_string())
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("(could not list them: {e})"),
    }
}

/// Runs `sql` (statements that need `SHARE ROW EXCLUSIVE` on `tables`) in one
/// transaction, ending the sessions whose writes are in flight on those tables
/// first and again after every lock timeout, until `deadline`. Returns the
/// sessions ended. Sessions that hold other locks (DDL, `LOCK TABLE`, an index
/// build) are not ended: past the deadline the error names them.
pub(super) async fn with_table_locks(
    db: &Db,
    tables: &[Name],
    sql: &str,
    what: &str,
    deadline: Instant,
) -> Result<Vec<Session>, Error> {
    let names: Vec<String> = tables.iter().map(|t| t.sql()).collect();
    let mut ended = Vec::new();
    let mut first = true;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(lock_refusal(db, &names, what).await);
        }
        // Short waits: a write about to commit gets a moment first; after that,
        // writers in the way are ended and the locks asked for again.
        let wait = left
            .min(Duration::from_millis(if first { 100 } else { 250 }))
            .as_millis()
            .max(1);
        let batch = format!("BEGIN; SET LOCAL lock_timeout = '{wait}ms';\n{sql}COMMIT;");
        match db.batch(what, &batch).await {
            Ok(()) => return Ok(ended),
            Err(e) => {
                db.rollback().await;
                if !is_lock_timeout(&e) {
                    return Err(e);
                }
            }
        }
        first = false;
        if Instant::now() >= deadline {
            return Err(lock_refusal(db, &names, what).await);
        }
        ended.extend(end_writers(db, &names).await?);
    }
}

/// A lock wait that ran out: `lock_timeout`, or the pause budget's
/// `statement_timeout` while waiting.
fn is_lock_timeout(e: &Error) -> bool {
    use std::error::Error as _;
    use tokio_postgres::error::SqlState;
    e.source()
        .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.code())
        .is_some_and(|c| *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::QUERY_CANCELED)
}

/// Ends every client session of this database that holds a write lock on one of
/// `tables` (its transaction has written and not ended). Refuses, naming them,
/// when some of those sessions may not be ended by the controller's role.
async fn end_writers(db: &Db, tables: &[String]) -> Result<Vec<Session>, Error> {
    let sql = format!(
        "WITH me AS (SELECT rolsuper, pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS signal \
                     FROM pg_roles WHERE rolname = current_user), \
              w AS (SELECT a.*, r.rolsuper AS su FROM pg_stat_activity a \
                    LEFT JOIN pg_roles r ON r.oid = a.usesysid \
                    WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
                      AND a.backend_type = 'client backend' \
                      AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted \
                                  AND l.locktype = 'relation' AND l.mode = 'RowExclusiveLock' \
                                  AND l.relation = ANY($1::text[]::regclass[]))) \
         SELECT {SESSION_COLUMNS}, \
                CASE WHEN me.rolsuper OR (NOT coalesce(a.su, false) \
                          AND (me.signal OR a.usename = current_user)) \
                     THEN pg_terminate_backend(a.pid) END \
         FROM w a, me"
    );
    let rows = db
        .query("end the sessions with writes in flight", &sql, &[&tables])
        .await?;
    let mut ended = Vec::new();
    let mut stuck = Vec::new();
    for r in &rows {
        let s = session(r, Some("a write in flight".into()));
        match r.get::<_, Option<bool>>(5) {
            Some(_) => ended.push(s),
            None => stuck.push(s.to_string()),
        }
    }
    if !stuck.is_empty() {
        return Err(Error::Precondition(format!(
            "the {} database has writes in flight from session(s) the controller's role may not end: {}; \
             end them (pg_terminate_backend) or stop their jobs, or run the controller as a superuser",
            db.side(),
            stuck.join("; ")
        )));
    }
    Ok(ended)
}

/// The error for a block that could not get its locks in time, naming every
/// session that holds a lock the block waits for.
async fn lock_refusal(db: &Db, tables: &[String], what: &str) -> Error {
    let sql = format!(
        "SELECT DISTINCT ON (a.pid) {SESSION_COLUMNS}, l.mode || ' on ' || l.relation::regclass::text \
         FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND l.granted \
           AND l.locktype = 'relation' AND l.relation = ANY($1::text[]::regclass[]) \
           AND l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock', \
                          'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') \
         ORDER BY a.pid"
    );
    let holders = match db
        .query_unbounded("list the sessions in the way", &sql, &[&tables])
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|r| session(r, r.get(5)).to_string())
            .collect::<Vec<_>>(),
        Err(e) => vec![format!("(could not list them: {e})")],
    };
    Error::Precondition(format!(
        "could not {what} on the {} database within the pause budget: its tables' locks were not \
         free in time; sessions holding locks on them: {}; end them or wait until they finish, then \
         run it again",
        db.side(),
        if holders.is_empty() {
            "none any more".to_string()
        } else {
            holders.join("; ")
        }
    ))
}
