//! Writers that go around the proxy, as a CronJob or a queue worker does: each
//! connects straight to PostgreSQL (or through a real PgBouncer) and inserts into a
//! table, in one of the ways a database lets a session write. A [`WriterKind`] is
//! set up on a cluster by [`WriterKind::prepare`] (roles, grants, a function),
//! which returns a [`Prepared`] writer: open a [`Conn`] for single attempts, or
//! [`Prepared::start`] a paced [`Writer`] task that keeps a ledger of every write
//! the server acknowledged.
//!
//! Every login role made here has [`WRITER_PASSWORD`]. Roles are cluster-wide:
//! `cutover db sync` copies the grants and the definer function with the schema, so
//! run [`create_roles`] on the target cluster too before syncing.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_postgres::NoTls;

use crate::{APP_PASSWORD, Pgbouncer, Postgres};

mod conn;
mod task;

pub use conn::{Conn, WriteError};
pub use task::{Ack, Writer, WriterOptions, assert_all_in, assert_all_on};

/// The password of every login role the writers create.
pub const WRITER_PASSWORD: &str = "writer-pw-Hv52nC";
/// A login role that writes only through its membership in [`WRITERS_GROUP`].
pub const MEMBER_ROLE: &str = "cutover_member";
/// A group role (no login) that holds INSERT on the table.
pub const WRITERS_GROUP: &str = "cutover_writers";
/// A login role with INSERT on the `body` column only.
pub const COLUMN_ROLE: &str = "cutover_column";
/// A login role with no privilege on the table, only EXECUTE on a definer function.
pub const DEFINER_ROLE: &str = "cutover_definer";

/// The ways a session can write to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriterKind {
    /// Role `app`, as the application connects.
    AppRole,
    /// Role `app`, lifting read-only as PgJDBC's `setReadOnly(false)` does: after
    /// connecting, `SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE` and
    /// `SET default_transaction_read_only = off`; every write in
    /// `BEGIN; SET TRANSACTION READ WRITE; …; COMMIT`.
    ReadWriteSession,
    /// [`MEMBER_ROLE`], writing through [`WRITERS_GROUP`].
    MemberRole,
    /// [`COLUMN_ROLE`]: `GRANT INSERT (body)` only.
    ColumnGrant,
    /// [`DEFINER_ROLE`], calling a `SECURITY DEFINER` function owned by the table's
    /// owner that inserts.
    SecurityDefiner,
    /// The cluster's superuser `postgres`.
    Superuser,
    /// Role `app`; each transaction inserts, stays open for a while, then commits.
    OpenTransaction,
    /// Role `app` through PgBouncer in transaction mode.
    Pooled,
}

impl WriterKind {
    pub const ALL: [WriterKind; 8] = [
        WriterKind::AppRole,
        WriterKind::ReadWriteSession,
        WriterKind::MemberRole,
        WriterKind::ColumnGrant,
        WriterKind::SecurityDefiner,
        WriterKind::Superuser,
        WriterKind::OpenTransaction,
        WriterKind::Pooled,
    ];

    /// A short name, used in bodies and reports.
    pub fn name(self) -> &'static str {
        match self {
            WriterKind::AppRole => "app-role",
            WriterKind::ReadWriteSession => "read-write-session",
            WriterKind::MemberRole => "member-role",
            WriterKind::ColumnGrant => "column-grant",
            WriterKind::SecurityDefiner => "security-definer",
            WriterKind::Superuser => "superuser",
            WriterKind::OpenTransaction => "open-transaction",
            WriterKind::Pooled => "pooled",
        }
    }

    /// The role it logs in as.
    pub fn role(self) -> &'static str {
        match self {
            WriterKind::MemberRole => MEMBER_ROLE,
            WriterKind::ColumnGrant => COLUMN_ROLE,
            WriterKind::SecurityDefiner => DEFINER_ROLE,
            WriterKind::Superuser => "postgres",
            _ => "app",
        }
    }

    /// Sets this kind up on `items` in database `app` of `pg`.
    pub async fn prepare(self, pg: &Postgres) -> Prepared {
        self.prepare_on(pg, "app", "items").await
    }

    /// Sets this kind up on `table` (with a serial `id` and a text `body`) in `db`.
    /// Idempotent. Kinds that log in as `app` use the grants the table already has.
    pub async fn prepare_on(self, pg: &Postgres, db: &str, table: &str) -> Prepared {
        create_roles(pg).await;
        let admin = pg.connect(db).await;
        let seq: String = admin
            .query_one("SELECT pg_get_serial_sequence($1, 'id')", &[&table])
            .await
            .and_then(|r| r.try_get::<_, Option<String>>(0))
            .unwrap_or_else(|e| panic!("{table} on {}: {e}", pg.name))
            .unwrap_or_else(|| panic!("{table} on {} has no serial id", pg.name));
        let grants = match self {
            WriterKind::MemberRole => format!(
                "GRANT SELECT, INSERT ON {table} TO {WRITERS_GROUP};
                 GRANT USAGE ON SEQUENCE {seq} TO {WRITERS_GROUP};"
            ),
            WriterKind::ColumnGrant => format!(
                "GRANT INSERT (body) ON {table} TO {COLUMN_ROLE};
                 GRANT USAGE ON SEQUENCE {seq} TO {COLUMN_ROLE};"
            ),
            WriterKind::SecurityDefiner => {
                let owner: String = admin
                    .query_one("SELECT relowner::regrole::text FROM pg_class WHERE oid = $1::text::regclass", &[&table])
                    .await
                    .unwrap_or_else(|e| panic!("the owner of {table}: {e}"))
                    .get(0);
                let f = definer_function(table);
                format!(
                    "CREATE OR REPLACE FUNCTION {f}(body text) RETURNS bigint
                       LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public
                       AS $f$ INSERT INTO public.{table} (body) VALUES ($1) RETURNING id::bigint $f$;
                     ALTER FUNCTION {f}(text) OWNER TO {owner};
                     REVOKE ALL ON FUNCTION {f}(text) FROM PUBLIC;
                     GRANT EXECUTE ON FUNCTION {f}(text) TO {DEFINER_ROLE};"
                )
            }
            _ => String::new(),
        };
        admin
            .batch_execute(&grants)
            .await
            .unwrap_or_else(|e| panic!("prepare {} on {}: {e}", self.name(), pg.name));
        let (dsn, bouncer) = match self {
            WriterKind::Superuser => (pg.dsn(db), None),
            WriterKind::Pooled => {
                let port = pg.port;
                let bouncer = tokio::task::spawn_blocking(move || {
                    Pgbouncer::start(port, &[("app", APP_PASSWORD)])
                })
                .await
                .expect("start PgBouncer");
                (
                    bouncer.dsn_as("app", APP_PASSWORD, db),
                    Some(Arc::new(bouncer)),
                )
            }
            WriterKind::AppRole | WriterKind::ReadWriteSession | WriterKind::OpenTransaction => {
                (pg.dsn_as("app", APP_PASSWORD, db), None)
            }
            _ => (pg.dsn_as(self.role(), WRITER_PASSWORD, db), None),
        };
        Prepared {
            kind: self,
            db: db.to_string(),
            table: table.to_string(),
            dsn,
            seq,
            bouncer,
        }
    }
}

fn definer_function(table: &str) -> String {
    format!("public.cutover_insert_{table}")
}

/// Creates the writers' roles on `pg` (and `app`, if missing). Idempotent.
pub async fn create_roles(pg: &Postgres) {
    let login = |role: &str, pw: &str, extra: &str| {
        format!(
            "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
               CREATE ROLE {role} LOGIN PASSWORD '{pw}' {extra}; END IF;"
        )
    };
    let sql = format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITERS_GROUP}') THEN
             CREATE ROLE {WRITERS_GROUP} NOLOGIN; END IF;
           {} {} {} {}
         END $$;",
        login("app", APP_PASSWORD, ""),
        login(
            MEMBER_ROLE,
            WRITER_PASSWORD,
            &format!("IN ROLE {WRITERS_GROUP}")
        ),
        login(COLUMN_ROLE, WRITER_PASSWORD, ""),
        login(DEFINER_ROLE, WRITER_PASSWORD, ""),
    );
    pg.sql("postgres", &sql).await;
}

/// A writer kind set up on one table; cheap to clone. Keeps its PgBouncer (if any)
/// running while it or a [`Writer`] started from it lives.
#[derive(Clone)]
pub struct Prepared {
    pub kind: WriterKind,
    pub db: String,
    pub table: String,
    /// Includes a password: never shown.
    dsn: String,
    seq: String,
    bouncer: Option<Arc<Pgbouncer>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("kind", &self.kind)
            .field("db", &self.db)
            .field("table", &self.table)
            .field("bouncer", &self.bouncer)
            .finish()
    }
}

impl Prepared {
    /// A new session, set up as the kind does (read-write for `ReadWriteSession`).
    pub async fn connect(&self) -> Result<Conn, WriteError> {
        let (client, conn) = tokio_postgres::connect(&self.dsn, NoTls)
            .await
            .map_err(|e| WriteError::from_pg(&e))?;
        let (tx, closed) = watch::channel(None);
        tokio::spawn(async move {
            let why = match conn.await {
                Ok(()) => WriteError::closed("the server closed the connection"),
                Err(e) => WriteError::from_pg(&e),
            };
            let _ = tx.send(Some(why));
        });
        let conn = Conn {
            client,
            closed,
            prepared: self.clone(),
        };
        if self.kind == WriterKind::ReadWriteSession {
            conn.simple(
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE;
                 SET default_transaction_read_only = off",
            )
            .await?;
        }
        Ok(conn)
    }

    /// One write as a worker makes it: connect, insert, and on a lost connection
    /// reconnect and try again (three tries in all). The id, or the last error.
    pub async fn write_once(&self, body: &str) -> Result<i64, WriteError> {
        let mut last = None;
        for _ in 0..3 {
            let result = match self.connect().await {
                Ok(conn) => conn.insert(body).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.lost => last = Some(e),
                other => return other,
            }
        }
        Err(last.expect("three tries"))
    }

    /// The PgBouncer of a `Pooled` writer.
    pub fn bouncer(&self) -> Option<&Pgbouncer> {
        self.bouncer.as_deref()
    }

    /// The write statement(s) for one row, without transaction control; the first
    /// row of the result holds the new id.
    fn statement(&self, body: &str) -> String {
        let (table, body) = (&self.table, quote(body));
        match self.kind {
            WriterKind::ColumnGrant => format!(
                // No SELECT on `id`, so no RETURNING: the session's own currval.
                "INSERT INTO {table} (body) VALUES ({body}); SELECT currval('{}')",
                self.seq
            ),
            WriterKind::SecurityDefiner => format!("SELECT {}({body})", definer_function(table)),
            _ => format!("INSERT INTO {table} (body) VALUES ({body}) RETURNING id"),
        }
    }

    fn begin(&self) -> &'static str {
        match self.kind {
            WriterKind::ReadWriteSession => "BEGIN; SET TRANSACTION READ WRITE;",
            _ => "BEGIN;",
        }
    }
}

/// A SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
