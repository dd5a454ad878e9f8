//! What the controller reads from the system catalogs: the tables and sequences it
//! migrates, and SQL quoting for the names it builds statements from.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::db::Db;
use crate::error::Error;

/// The controller's own schema, on both sides: the heartbeat and the record of
/// blocked roles. Never copied by `pg_dump` and never compared by `verify`.
pub const SCHEMA: &str = "_cutover";

/// Schemas that hold no application data.
pub(crate) const SYSTEM_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', '_cutover') AND n.nspname NOT LIKE 'pg\\_%'";

/// Objects that belong to an extension are created by `CREATE EXTENSION`, not copied.
pub(crate) const NOT_EXTENSION_MEMBER: &str = "NOT EXISTS (SELECT 1 FROM pg_depend d \
     WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

/// `"schema"."name"`, quoted for SQL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Name {
    pub schema: String,
    pub name: String,
}

impl Name {
    pub fn new(schema: &str, name: &str) -> Name {
        Name {
            schema: schema.to_string(),
            name: name.to_string(),
        }
    }

    /// The quoted, schema-qualified form for SQL text.
    pub fn sql(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A table the migration cares about.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub name: Name,
    /// `d` default (primary key), `f` full, `i` index, `n` nothing.
    pub replica_identity: char,
    pub has_primary_key: bool,
    pub unlogged: bool,
    pub owner: String,
    /// The planner's estimate; -1 when the table was never analyzed.
    pub estimated_rows: i64,
}

impl Table {
    /// Whether UPDATE and DELETE can be replicated (and keep working once the
    /// table is published).
    pub fn has_identity(&self) -> bool {
        match self.replica_identity {
            'd' => self.has_primary_key,
            'f' | 'i' => true,
            _ => false,
        }
    }
}

/// Every application table: ordinary tables (and partitions) outside the system
/// schemas and the controller's own, not owned by an extension.
pub async fn tables(db: &Db) -> Result<Vec<Table>, Error> {
    let sql = format!(
        "SELECT n.nspname, c.relname, c.relreplident::text, \
                EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                c.relpersistence = 'u', pg_get_userbyid(c.relowner)::text, c.reltuples::bigint \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {SYSTEM_SCHEMAS} AND {NOT_EXTENSION_MEMBER} \
         ORDER BY 1, 2"
    );
    let rows = db.query("list tables", &sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let ident: String = r.get(2);
            Table {
                name: Name::new(r.get(0), r.get(1)),
                replica_identity: ident.chars().next().unwrap_or('d'),
                has_primary_key: r.get(3),
                unlogged: r.get(4),
                owner: r.get(5),
                estimated_rows: r.get(6),
            }
        })
        .collect())
}

/// Every table's size on disk (heap and TOAST, without indexes).
pub async fn table_sizes(db: &Db) -> Result<HashMap<Name, i64>, Error> {
    let sql = format!(
        "SELECT n.nspname, c.relname, pg_table_size(c.oid) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND {SYSTEM_SCHEMAS}"
    );
    let rows = db.query("read table sizes", &sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| (Name::new(r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// The tables logical replication can carry: every application table but the
/// unlogged ones, plus the controller's heartbeat.
pub async fn published_tables(db: &Db) -> Result<Vec<Name>, Error> {
    let mut names: Vec<Name> = tables(db)
        .await?
        .into_iter()
        .filter(|t| !t.unlogged)
        .map(|t| t.name)
        .collect();
    names.push(heartbeat_table());
    Ok(names)
}

pub fn heartbeat_table() -> Name {
    Name::new(SCHEMA, "heartbeat")
}

/// Every application sequence, owned by a column or not.
pub async fn sequences(db: &Db) -> Result<Vec<Name>, Error> {
    let sql = format!(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'S' AND {SYSTEM_SCHEMAS} AND {NOT_EXTENSION_MEMBER} ORDER BY 1, 2"
    );
    let rows = db.query("list sequences", &sql, &[]).await?;
    Ok(rows.iter().map(|r| Name::new(r.get(0), r.get(1))).collect())
}

/// Every application materialized view with the planner's row estimate (-1 when
/// never analyzed). Logical replication does not carry them: the switchover
/// refreshes them on the target.
pub async fn materialized_views(db: &Db) -> Result<Vec<(Name, i64)>, Error> {
    let sql = format!(
        "SELECT n.nspname, c.relname, c.reltuples::bigint \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'm' AND {SYSTEM_SCHEMAS} AND {NOT_EXTENSION_MEMBER} ORDER BY 1, 2"
    );
    let rows = db.query("list materialized views", &sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| (Name::new(r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// What [`ensure_own_schema`] creates: the heartbeat, the legacy record of blocked
/// roles (read only to undo a block an earlier version made), the fence of each
/// switchover, and the function the write-block triggers call.
const OWN_SCHEMA: &str = "CREATE SCHEMA IF NOT EXISTS _cutover;
     CREATE TABLE IF NOT EXISTS _cutover.heartbeat (
         name text PRIMARY KEY, seq bigint NOT NULL, at timestamptz NOT NULL);
     CREATE TABLE IF NOT EXISTS _cutover.blocked (
         name text NOT NULL, role text NOT NULL, previous text,
         PRIMARY KEY (name, role));
     CREATE TABLE IF NOT EXISTS _cutover.fence (
         name text NOT NULL, direction text NOT NULL, run text NOT NULL,
         lsn pg_lsn NOT NULL, beat bigint NOT NULL, side text NOT NULL,
         recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
         PRIMARY KEY (name, direction));
     CREATE OR REPLACE FUNCTION _cutover.refuse_write() RETURNS trigger
       LANGUAGE plpgsql AS $$
     BEGIN
       RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction',
         MESSAGE = format('cutover: writes to %I.%I are refused: this database is not the writer '
                          '(its migration moved writes to the other database)',
                          TG_TABLE_SCHEMA, TG_TABLE_NAME);
     END $$;";

/// Creates the controller's schema, or what a newer version added to it. Returns
/// whether anything was created.
pub async fn ensure_own_schema(db: &Db) -> Result<bool, Error> {
    let exists: bool = db
        .query_one(
            "look for the _cutover schema",
            "SELECT to_regclass('_cutover.heartbeat') IS NOT NULL \
                AND to_regclass('_cutover.blocked') IS NOT NULL \
                AND to_regclass('_cutover.fence') IS NOT NULL \
                AND to_regprocedure('_cutover.refuse_write()') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if exists {
        return Ok(false);
    }
    db.batch("create the _cutover schema", OWN_SCHEMA).await?;
    Ok(true)
}

/// The controller's own tables, whose writes are not application writes.
pub async fn own_table_oids(db: &Db) -> Result<Vec<i64>, Error> {
    let rows = db
        .query(
            "list the controller's tables",
            "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = '_cutover' AND c.relkind = 'r'",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every table a write can reach: ordinary and partitioned tables (each partition
/// too), unlogged ones included, outside the system schemas and the controller's.
pub async fn writable_tables(db: &Db) -> Result<Vec<Name>, Error> {
    let sql = format!(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND {SYSTEM_SCHEMAS} \
           AND {NOT_EXTENSION_MEMBER} ORDER BY 1, 2"
    );
    let rows = db.query("list writable tables", &sql, &[]).await?;
    Ok(rows.iter().map(|r| Name::new(r.get(0), r.get(1))).collect())
}

/// Quotes an identifier for SQL text.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal for SQL text (standard_conforming_strings is on by
/// default since PostgreSQL 9.1; the `E''` form is avoided on purpose).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(Name::new("public", "Order").sql(), "\"public\".\"Order\"");
        assert_eq!(Name::new("public", "Order").to_string(), "public.Order");
    }
}
