//! Blocking writes on a database for its application roles, and undoing it.
//!
//! A blocked role gets `default_transaction_read_only = on` for this database only,
//! and its sessions are ended so that every new one starts read-only: reads keep
//! working, writes fail. What was set before is recorded in `_cutover.blocked` in
//! the same transaction, so the undo restores it exactly, even from another run.

use std::time::Duration;

use serde::Serialize;

use crate::catalog::{ident, literal};
use crate::db::{Db, poll};
use crate::error::Error;

/// What blocking did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Blocked {
    /// Login roles that can write to an application table, now read-only.
    pub roles: Vec<String>,
    /// Superusers can write and cannot be blocked this way; no application should
    /// connect as one.
    pub superusers: Vec<String>,
    pub sessions_ended: i64,
}

/// Login roles that can write to any application table, directly or through a
/// role they belong to; split into (blockable, superusers).
async fn writers(db: &Db) -> Result<(Vec<String>, Vec<String>), Error> {
    let rows = db
        .query(
            "list roles that can write",
            "WITH t AS (
               SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p')
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_cutover')
                 AND n.nspname NOT LIKE 'pg\\_%')
             SELECT r.rolname::text, r.rolsuper FROM pg_roles r
             WHERE r.rolcanlogin AND EXISTS (
               SELECT 1 FROM t, pg_roles g
               WHERE pg_has_role(r.oid, g.oid, 'MEMBER')
                 AND has_table_privilege(g.oid, t.oid, 'INSERT, UPDATE, DELETE, TRUNCATE'))
             ORDER BY 1",
            &[],
        )
        .await?;
    let mut roles = Vec::new();
    let mut supers = Vec::new();
    for r in rows {
        let (name, sup): (String, bool) = (r.get(0), r.get(1));
        if sup {
            supers.push(name);
        } else {
            roles.push(name);
        }
    }
    Ok((roles, supers))
}

/// Makes every writing role read-only on this database and ends its sessions.
pub async fn block(db: &Db, name: &str, within: Duration) -> Result<Blocked, Error> {
    let (roles, superusers) = writers(db).await?;
    if roles.is_empty() {
        return Ok(Blocked {
            roles,
            superusers,
            sessions_ended: 0,
        });
    }
    let dbname = ident(db.dsn().dbname());
    let list = roles
        .iter()
        .map(|r| literal(r))
        .collect::<Vec<_>>()
        .join(", ");
    // A lock held by someone else (a role being altered, a long transaction on
    // pg_db_role_setting) must not stretch the write pause past its budget.
    let lock_ms = within.as_millis().max(1);
    let mut sql = format!(
        "BEGIN;
         SET LOCAL lock_timeout = '{lock_ms}ms';
         INSERT INTO _cutover.blocked (name, role, previous)
         SELECT {name}, r.rolname, (
             SELECT substr(cfg, length('default_transaction_read_only=') + 1)
             FROM pg_db_role_setting s, unnest(s.setconfig) cfg
             WHERE s.setrole = r.oid
               AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND cfg LIKE 'default\\_transaction\\_read\\_only=%')
         FROM pg_roles r WHERE r.rolname IN ({list})
         ON CONFLICT (name, role) DO NOTHING;\n",
        name = literal(name),
    );
    for r in &roles {
        sql.push_str(&format!(
            "ALTER ROLE {} IN DATABASE {dbname} SET default_transaction_read_only = on;\n",
            ident(r)
        ));
    }
    sql.push_str("COMMIT;");
    if let Err(e) = db
        .batch("block writes for the application roles", &sql)
        .await
    {
        // The explicit transaction is left aborted: end it, nothing was changed.
        let _ = db.batch("roll back", "ROLLBACK").await;
        return Err(e);
    }
    let ended = end_sessions(db, &roles, within).await?;
    Ok(Blocked {
        roles,
        superusers,
        sessions_ended: ended,
    })
}

/// Restores what [`block`] changed for migration `name` on this database and ends
/// the sessions that started read-only. Returns the roles restored.
pub async fn unblock(db: &Db, name: &str, within: Duration) -> Result<Vec<String>, Error> {
    let exists: bool = db
        .query_one(
            "look for the blocked-role record",
            "SELECT to_regclass('_cutover.blocked') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = db
        .query(
            "read the blocked-role record",
            "SELECT b.role, b.previous, EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = b.role) \
             FROM _cutover.blocked b WHERE b.name = $1 ORDER BY 1",
            &[&name],
        )
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let dbname = ident(db.dsn().dbname());
    let mut roles = Vec::new();
    let mut sql = String::from("BEGIN;\n");
    for r in &rows {
        let (role, previous, exists): (String, Option<String>, bool) =
            (r.get(0), r.get(1), r.get(2));
        if !exists {
            continue;
        }
        match previous {
            None => sql.push_str(&format!(
                "ALTER ROLE {} IN DATABASE {dbname} RESET default_transaction_read_only;\n",
                ident(&role)
            )),
            Some(v) => sql.push_str(&format!(
                "ALTER ROLE {} IN DATABASE {dbname} SET default_transaction_read_only = {};\n",
                ident(&role),
                literal(&v)
            )),
        }
        roles.push(role);
    }
    sql.push_str(&format!(
        "DELETE FROM _cutover.blocked WHERE name = {};\nCOMMIT;",
        literal(name)
    ));
    if let Err(e) = db
        .batch("restore write access for the application roles", &sql)
        .await
    {
        let _ = db.batch("roll back", "ROLLBACK").await;
        return Err(e);
    }
    end_sessions(db, &roles, within).await?;
    Ok(roles)
}

/// Ends every session of `roles` on this database that started before now, except
/// the controller's own, and waits until they are gone.
async fn end_sessions(db: &Db, roles: &[String], within: Duration) -> Result<i64, Error> {
    if roles.is_empty() {
        return Ok(0);
    }
    let roles = roles.to_vec();
    let cutoff: std::time::SystemTime = db
        .query_one("read the clock", "SELECT now()", &[])
        .await?
        .get(0);
    let select = "FROM pg_stat_activity WHERE datname = current_database() \
                  AND backend_type = 'client backend' AND usename = ANY($1) \
                  AND pid <> pg_backend_pid() AND backend_start < $2";
    let ended: i64 = db
        .query_one(
            "end the application roles' sessions",
            &format!("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) {select}"),
            &[&roles, &cutoff],
        )
        .await?
        .get(0);
    poll(
        "the application roles' sessions to end",
        within,
        Duration::from_millis(5),
        || async {
            let left: i64 = db
                .query_one(
                    "count the application roles' sessions",
                    &format!("SELECT count(*) {select}"),
                    &[&roles, &cutoff],
                )
                .await?
                .get(0);
            Ok((left == 0).then_some(()))
        },
    )
    .await?;
    Ok(ended)
}
