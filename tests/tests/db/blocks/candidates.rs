//! The candidate write blocks, each applied by SQL as a controller would apply it,
//! and the deliberate ways around the statement triggers.

use std::time::Duration;

use cutover_tests::{APP_PASSWORD, Postgres, Prepared, WRITER_PASSWORD, WriterKind, eventually};
use tokio_postgres::Client;

use super::OWNER;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// Today's switchover: `default_transaction_read_only = on` for the roles
    /// `controller/src/switchover/roles.rs` selects, and their sessions ended.
    RoleToday,
    /// The same setting for every non-superuser login role.
    RoleEveryLogin,
    /// Write privileges revoked from PUBLIC and every grantee but the owner.
    Revoke,
    /// `ALLOW_CONNECTIONS false`, and every session ended.
    NoConnections,
    /// Per-table statement triggers ([`TRIGGER_SQL`]), after ending every session.
    Triggers,
}

impl Candidate {
    pub fn name(self) -> &'static str {
        match self {
            Candidate::RoleToday => "role setting (today's roles)",
            Candidate::RoleEveryLogin => "role setting (every login role)",
            Candidate::Revoke => "revoke write privileges",
            Candidate::NoConnections => "ALLOW_CONNECTIONS false",
            Candidate::Triggers => "statement triggers",
        }
    }

    /// Each candidate gets a fresh database.
    pub fn db(self) -> &'static str {
        match self {
            Candidate::RoleToday => "blk_role_today",
            Candidate::RoleEveryLogin => "blk_role_every",
            Candidate::Revoke => "blk_revoke",
            Candidate::NoConnections => "blk_no_connections",
            Candidate::Triggers => "blk_triggers",
        }
    }
}

/// Exactly what the switchover will install.
pub const TRIGGER_SQL: &str = r#"CREATE SCHEMA IF NOT EXISTS _cutover;
CREATE OR REPLACE FUNCTION _cutover.refuse_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction',
    MESSAGE = format('cutover: writes to %I.%I are blocked: this database is not the writer (migration switchover)', TG_TABLE_SCHEMA, TG_TABLE_NAME);
END $$;
CREATE TRIGGER cutover_write_block BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.items
  FOR EACH STATEMENT EXECUTE FUNCTION _cutover.refuse_write();"#;

/// The login roles today's switchover makes read-only: the query of
/// `controller/src/switchover/roles.rs`, verbatim. It sees table-level privileges
/// only, so a column grantee and a definer function's caller are not among them.
const TODAYS_ROLES: &str = "WITH t AS (
       SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.relkind IN ('r', 'p')
         AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_cutover')
         AND n.nspname NOT LIKE 'pg\\_%')
     SELECT r.rolname::text, r.rolsuper FROM pg_roles r
     WHERE r.rolcanlogin AND EXISTS (
       SELECT 1 FROM t, pg_roles g
       WHERE pg_has_role(r.oid, g.oid, 'MEMBER')
         AND has_table_privilege(g.oid, t.oid, 'INSERT, UPDATE, DELETE, TRUNCATE'))
     ORDER BY 1";

const EVERY_LOGIN: &str =
    "SELECT rolname::text, rolsuper FROM pg_roles WHERE rolcanlogin AND NOT rolsuper ORDER BY 1";

/// Every role but the owner that holds a write privilege on a table in `public`,
/// on the table or on one of its columns.
const GRANTEES: &str = "SELECT a.grantee::regrole::text
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.grantee NOT IN (0, c.relowner)
       AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
     UNION
     SELECT a.grantee::regrole::text
     FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(t.attacl) a
     WHERE n.nspname = 'public' AND a.grantee NOT IN (0, c.relowner)
       AND a.privilege_type IN ('INSERT', 'UPDATE')
     ORDER BY 1";

/// Applies `cand` to its database. For the triggers, which cannot be created while
/// the prepared transaction `gid` is pending, returns that column's outcome (the
/// transaction is then committed, before the trigger exists).
pub async fn apply(
    pg: &Postgres,
    cand: Candidate,
    kinds: &[Prepared],
    gid: &str,
    notes: &mut Vec<String>,
) -> Option<String> {
    let db = cand.db();
    match cand {
        Candidate::RoleToday | Candidate::RoleEveryLogin => {
            let admin = pg.connect(db).await;
            let q = if cand == Candidate::RoleToday {
                TODAYS_ROLES
            } else {
                EVERY_LOGIN
            };
            let roles: Vec<String> = admin
                .query(q, &[])
                .await
                .unwrap()
                .iter()
                .filter(|r| !r.get::<_, bool>(1))
                .map(|r| r.get(0))
                .collect();
            notes.push(format!("{}: read-only: {}", cand.name(), roles.join(", ")));
            let sql: String = roles
                .iter()
                .map(|r| {
                    format!(
                        "ALTER ROLE {r} IN DATABASE {db} SET default_transaction_read_only = on;\n"
                    )
                })
                .collect();
            admin.batch_execute(&sql).await.unwrap();
            end_sessions(&admin, db, Some(roles)).await;
            None
        }
        Candidate::Revoke => {
            let admin = pg.connect(db).await;
            let roles: Vec<String> = admin
                .query(GRANTEES, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            notes.push(format!(
                "{}: from PUBLIC, {}",
                cand.name(),
                roles.join(", ")
            ));
            admin
                .batch_execute(&format!(
                    "SET lock_timeout = '5s';
                     REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public
                       FROM PUBLIC, {}",
                    roles.join(", ")
                ))
                .await
                .unwrap();
            None
        }
        Candidate::NoConnections => {
            let admin = pg.connect("postgres").await;
            admin
                .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
                .await
                .unwrap();
            end_sessions(&admin, db, None).await;
            None
        }
        Candidate::Triggers => {
            let admin = pg.connect(db).await;
            end_sessions(&admin, db, None).await;
            // No session is left, but a prepared transaction is not a session: it
            // keeps its locks, and CREATE TRIGGER waits for them.
            let held: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'items'::regclass AND pid IS NULL",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert!(held > 0, "the prepared transaction holds no lock on items");
            let err = create_trigger(&admin, Duration::from_millis(300))
                .await
                .expect_err("CREATE TRIGGER while a prepared transaction holds items");
            let code = err.code().map_or("none", |c| c.code()).to_string();
            let why = err
                .as_db_error()
                .map_or(err.to_string(), |d| d.message().into());
            notes.push(format!(
                "{}: CREATE TRIGGER with a transaction prepared on the table: {code}: {why}",
                cand.name()
            ));
            let app = kinds
                .iter()
                .find(|p| p.kind == WriterKind::AppRole)
                .unwrap();
            app.connect()
                .await
                .unwrap()
                .commit_prepared(gid)
                .await
                .unwrap();
            create_trigger(&admin, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("CREATE TRIGGER: {e:?}"));
            Some(format!("block waits: {code}"))
        }
    }
}

/// Installs [`TRIGGER_SQL`] in one transaction, waiting at most `lock_timeout`.
pub async fn create_trigger(
    admin: &Client,
    lock_timeout: Duration,
) -> Result<(), tokio_postgres::Error> {
    let sql = format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms';\n{TRIGGER_SQL}\nCOMMIT;",
        lock_timeout.as_millis()
    );
    let r = admin.batch_execute(&sql).await;
    if r.is_err() {
        let _ = admin.batch_execute("ROLLBACK").await;
    }
    r
}

/// Ends the client sessions on `db` (of `roles` only, if given) other than
/// `admin`'s, and waits until they are gone.
pub async fn end_sessions(admin: &Client, db: &str, roles: Option<Vec<String>>) {
    let filter = "FROM pg_stat_activity WHERE datname::text = $1::text
                  AND backend_type = 'client backend' AND pid <> pg_backend_pid()
                  AND ($2::text[] IS NULL OR usename::text = ANY($2::text[]))";
    admin
        .execute(
            &format!("SELECT pg_terminate_backend(pid) {filter}"),
            &[&db, &roles],
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the sessions to end", || async {
        let left: i64 = admin
            .query_one(&format!("SELECT count(*) {filter}"), &[&db, &roles])
            .await
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    })
    .await;
}

/// The two deliberate ways around the triggers on `db` work; an ordinary role can
/// take neither, and with the trigger back even the owner is refused.
pub async fn assert_bypasses(pg: &Postgres, db: &str) {
    let su = pg.connect(db).await;
    su.batch_execute(
        "SET session_replication_role = replica;
         INSERT INTO items (body) VALUES ('bypass-superuser-replica');
         RESET session_replication_role",
    )
    .await
    .unwrap_or_else(|e| panic!("a superuser in replica mode was refused: {e:?}"));

    let app = pg.connect_as("app", APP_PASSWORD, db).await.unwrap();
    for sql in [
        "SET session_replication_role = replica",
        "ALTER TABLE items DISABLE TRIGGER cutover_write_block",
    ] {
        let e = app.batch_execute(sql).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{sql}: {e:?}");
    }

    let owner = pg.connect_as(OWNER, WRITER_PASSWORD, db).await.unwrap();
    owner
        .batch_execute(
            "ALTER TABLE items DISABLE TRIGGER cutover_write_block;
             INSERT INTO items (body) VALUES ('bypass-owner-disabled');
             ALTER TABLE items ENABLE TRIGGER cutover_write_block;",
        )
        .await
        .unwrap_or_else(|e| panic!("the owner could not disable the trigger: {e:?}"));
    let e = owner
        .batch_execute("INSERT INTO items (body) VALUES ('owner-after')")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e:?}");

    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM items WHERE body IN ('bypass-superuser-replica', 'bypass-owner-disabled')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}
