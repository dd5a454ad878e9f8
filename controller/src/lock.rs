//! One controller at a time per database: a session-level advisory lock with one
//! fixed key. Advisory locks belong to a database, so one key covers every
//! migration of that database, whatever its `--name`.
//!
//! Who takes it: `cutover db sync` on both sides before it changes anything, for
//! its whole run; the plan runner on both sides of each pair when it connects,
//! for the run (a reconnect takes it again); the switchover at its start and
//! `release` at its end. Always the source first, then the target, so that two
//! controllers never hold one side each. The lock goes when its session ends, so
//! a controller that exits or is killed releases it without doing anything.
//!
//! Commands that only read (`check`, `status`, `verify`) do not take it; `check`
//! reports a holder as a warning.

use std::fmt;
use std::time::Duration;

use crate::db::Db;
use crate::error::Error;

/// The advisory lock's key: the bytes of `cutover!`. `pg_locks` shows it as
/// `classid` (high 32 bits) and `objid` (low 32 bits) with `objsubid = 1`.
pub const KEY: i64 = 0x6375_746f_7665_7221;

/// How long `acquire` keeps trying before it refuses. A controller killed a moment
/// ago leaves its sessions behind until the server notices the closed socket;
/// this covers that, not a controller that is still working.
const GRACE: Duration = Duration::from_secs(2);
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Takes the lock on `db`'s session, or refuses with an error that names the
/// session holding it and what to do.
///
/// Session-level advisory locks stack within one session: a second `acquire` on
/// the same connection succeeds at once (the plan runner holds the lock for the
/// run and the switchover takes it again on the same connection), and each
/// `acquire` wants one [`release`]; what is not released goes with the session.
pub async fn acquire(db: &Db) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + GRACE;
    loop {
        if try_lock(db).await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
    let (who, pid) = match holder(db).await? {
        Some(h) => (h.to_string(), h.pid.to_string()),
        // Released between the two queries: one more try settles it.
        None if try_lock(db).await? => return Ok(()),
        None => (
            "a session that has just ended or is not visible to this role".into(),
            "PID".into(),
        ),
    };
    Err(Error::Precondition(format!(
        "{} database ({}): another cutover controller is working on this database: {who}. \
         Only one controller may work on a database at a time: wait for it to finish, or stop it \
         (SELECT pg_terminate_backend({pid}) ends its session); the lock is released when \
         that controller exits",
        db.side(),
        db.dsn().redacted()
    )))
}

/// Gives back one `acquire` on `db`'s session. Errors are ignored: a session that
/// is gone has released the lock already.
pub async fn release(db: &Db) {
    let _ = db
        .query_one(
            "release the controller lock",
            "SELECT pg_advisory_unlock($1)",
            &[&KEY],
        )
        .await;
}

async fn try_lock(db: &Db) -> Result<bool, Error> {
    Ok(db
        .query_one(
            "take the controller lock",
            "SELECT pg_try_advisory_lock($1)",
            &[&KEY],
        )
        .await?
        .get(0))
}

/// Another session that holds the lock, as `pg_stat_activity` shows it to this
/// role (without `pg_read_all_stats`, another role's address and times are
/// hidden).
#[derive(Debug, Clone)]
pub struct Holder {
    pub pid: i32,
    pub role: Option<String>,
    pub application_name: Option<String>,
    /// The client's address, or `local socket`.
    pub client: Option<String>,
    /// When its session started, as the server prints a timestamp.
    pub since: Option<String>,
    pub connected_secs: Option<i64>,
    /// `active`, `idle`, `idle in transaction`, …
    pub state: Option<String>,
}

/// The session other than this one that holds the lock in this database, if any.
pub(crate) async fn holder(db: &Db) -> Result<Option<Holder>, Error> {
    let row = db
        .query_opt(
            "look for the controller lock's holder",
            "SELECT l.pid, a.usename::text, a.application_name, \
                    CASE WHEN a.client_port = -1 THEN 'local socket' ELSE host(a.client_addr) END, \
                    to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ'), \
                    extract(epoch FROM now() - a.backend_start)::bigint, a.state \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = ($1::bigint >> 32)::oid \
               AND l.objid = ($1::bigint & 4294967295)::oid \
               AND l.pid IS NOT NULL AND l.pid <> pg_backend_pid() \
             ORDER BY a.backend_start LIMIT 1",
            &[&KEY],
        )
        .await?;
    Ok(row.map(|r| Holder {
        pid: r.get(0),
        role: r.get(1),
        application_name: r.get(2),
        client: r.get(3),
        since: r.get(4),
        connected_secs: r.get(5),
        state: r.get(6),
    }))
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session pid {}", self.pid)?;
        let mut parts = Vec::new();
        if let Some(r) = &self.role {
            parts.push(format!("role {r}"));
        }
        match self.application_name.as_deref() {
            Some(a) if !a.is_empty() => parts.push(format!("application_name {a:?}")),
            _ => parts.push("no application_name".into()),
        }
        if let Some(c) = &self.client {
            parts.push(format!("from {c}"));
        }
        if let Some(s) = &self.since {
            let ago = self
                .connected_secs
                .map(|s| {
                    format!(
                        " ({} ago)",
                        humantime::format_duration(Duration::from_secs(s.max(0) as u64))
                    )
                })
                .unwrap_or_default();
            parts.push(format!("connected since {s}{ago}"));
        }
        if let Some(s) = &self.state {
            parts.push(s.clone());
        }
        write!(f, " ({})", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_reads_cutover() {
        assert_eq!(KEY.to_be_bytes(), *b"cutover!");
    }

    #[test]
    fn a_holder_shows_what_is_visible() {
        let h = Holder {
            pid: 4242,
            role: Some("postgres".into()),
            application_name: Some("cutover db sync (pod-1 pid 7)".into()),
            client: Some("10.0.0.5".into()),
            since: Some("2025-01-02 03:04:05 UTC".into()),
            connected_secs: Some(95),
            state: Some("idle".into()),
        };
        assert_eq!(
            h.to_string(),
            "session pid 4242 (role postgres, application_name \"cutover db sync (pod-1 pid 7)\", \
             from 10.0.0.5, connected since 2025-01-02 03:04:05 UTC (1m 35s ago), idle)"
        );
        let hidden = Holder {
            pid: 9,
            role: Some("ops".into()),
            application_name: None,
            client: None,
            since: None,
            connected_secs: None,
            state: None,
        };
        assert_eq!(
            hidden.to_string(),
            "session pid 9 (role ops, no application_name)"
        );
    }
}
