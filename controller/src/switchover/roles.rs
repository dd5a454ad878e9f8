//! Undoing the write block of earlier versions, which set
//! `default_transaction_read_only = on` per role and database (a block a session
//! can lift, hence replaced by `block.rs`). What was set before is recorded in
//! `_cutover.blocked`, so the undo restores it exactly, even from another run.

use std::time::Duration;

use crate::catalog::{ident, literal};
use crate::db::{Db, poll};
use crate::error::Error;

/// Restores what an earlier version's block changed for migration `name` on this database and ends
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
