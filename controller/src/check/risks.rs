//! Preflight checks for what the switchover's write block must survive, found
//! ahead of time: prepared transactions, superuser sessions, roles that could lift
//! the block, the controller's right to create the block's triggers, materialized
//! views (which replication does not carry), and another controller at work.
//!
//! The switchover itself re-checks what matters at its start and refuses there;
//! these findings leave the operator time to fix things before the pause.

use std::time::Duration;

use crate::catalog::{self, ident, literal};
use crate::check::{Ctx, Level, preview};
use crate::dsn::Side;
use crate::error::Error;
use crate::lock;

/// `pg_class.oid` is one of the migrated tables that exist on this side, given
/// as `$1` (schemas) and `$2` (names).
const MIGRATED: &str = "c.oid = ANY (SELECT to_regclass(quote_ident(s) || '.' || quote_ident(t))::oid \
     FROM unnest($1::text[], $2::text[]) AS u(s, t))";

/// The migrated tables' schemas and names, as `MIGRATED` takes them.
fn table_params(ctx: &Ctx<'_>) -> (Vec<String>, Vec<String>) {
    ctx.tables
        .iter()
        .map(|t| (t.name.schema.clone(), t.name.name.clone()))
        .unzip()
}

/// "1m 35s".
fn age(secs: i64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0) as u64)).to_string()
}

/// A prepared transaction survives every session and commits whenever someone
/// says so: on the source it could commit writes past the write block, and a
/// replication slot cannot be created while one is open.
pub async fn prepared_transactions(ctx: &mut Ctx<'_>, side: Side) -> Result<(), Error> {
    let rows = ctx
        .db(side)
        .query(
            "list prepared transactions",
            "SELECT gid, owner::text, to_char(prepared, 'YYYY-MM-DD HH24:MI:SS TZ'), \
                    extract(epoch FROM now() - prepared)::bigint \
             FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared",
            &[],
        )
        .await?;
    for r in rows {
        let (gid, owner, at, secs): (String, String, String, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let (level, why) = match side {
            Side::Source => (
                Level::Blocker,
                "creating the replication slot waits until it ends, and the switchover refuses \
                 while any prepared transaction exists (committed later, its writes would pass \
                 the write block)",
            ),
            Side::Target => (
                Level::Warning,
                "it keeps its locks until it ends, so replicated changes to the rows it locked \
                 wait for it",
            ),
        };
        let gid = literal(&gid);
        ctx.add(
            level,
            side,
            format!("prepared transaction {gid}"),
            format!("owned by {owner}, prepared {at} ({} ago): {why}", age(secs)),
            format!(
                "COMMIT PREPARED {gid} or ROLLBACK PREPARED {gid} (as {owner} or a superuser), \
                 or let the job that prepared it finish"
            ),
        );
    }
    Ok(())
}

/// Whether the controller's role on `side` is a superuser.
async fn controller_is_superuser(ctx: &Ctx<'_>, side: Side) -> Result<(String, bool), Error> {
    let row = ctx
        .db(side)
        .query_one(
            "read the controller's role",
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Superuser sessions on the source other than the controller's own: no write
/// block binds a superuser who sets `session_replication_role = replica`, so the
/// switchover must end them, which only a superuser controller can. Replication
/// senders and apply workers are not sessions an application opened.
pub async fn superuser_sessions(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let (user, superuser) = controller_is_superuser(ctx, Side::Source).await?;
    let rows = ctx
        .src
        .query(
            "list superuser sessions",
            "SELECT a.pid, a.usename::text, a.application_name, \
                    CASE WHEN a.client_port = -1 THEN 'local socket' ELSE host(a.client_addr) END, \
                    extract(epoch FROM now() - a.xact_start)::bigint, a.state \
             FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid \
             WHERE r.rolsuper AND a.datname = current_database() AND a.pid <> pg_backend_pid() \
               AND (a.backend_type IS NULL OR a.backend_type = 'client backend') \
               AND a.pid NOT IN (SELECT active_pid FROM pg_replication_slots WHERE active_pid IS NOT NULL) \
               AND a.pid NOT IN (SELECT pid FROM pg_stat_subscription WHERE pid IS NOT NULL) \
             ORDER BY a.pid",
            &[],
        )
        .await?;
    for r in rows {
        let pid: i32 = r.get(0);
        let role: Option<String> = r.get(1);
        let app: Option<String> = r.get(2);
        let client: Option<String> = r.get(3);
        let xact_secs: Option<i64> = r.get(4);
        let state: Option<String> = r.get(5);
        let mut about = vec![format!("superuser {}", role.as_deref().unwrap_or("?"))];
        about.push(match app.as_deref() {
            Some(a) if !a.is_empty() => format!("application_name {a:?}"),
            _ => "no application_name".into(),
        });
        if let Some(c) = client {
            about.push(format!("from {c}"));
        }
        about.push(match (xact_secs, state) {
            (Some(s), _) => format!("in a transaction for {}", age(s)),
            (None, Some(s)) => s,
            (None, None) => format!("its state is hidden from {user}"),
        });
        let about = about.join(", ");
        let (level, problem, fix) = if superuser {
            (
                Level::Warning,
                format!(
                    "{about}: a superuser can lift the write block (SET session_replication_role = replica); \
                     the switchover ends it if it has a write in flight, and refuses if a write of it gets past the fence"
                ),
                format!(
                    "let it finish or stop it before the switchover (SELECT pg_terminate_backend({pid}))"
                ),
            )
        } else {
            (
                Level::Blocker,
                format!(
                    "{about}: a superuser can lift the write block (SET session_replication_role = replica), \
                     and {user} is not a superuser, so it cannot end this session and the switchover refuses"
                ),
                ctx.server(Side::Source).platform.end_superuser_session(pid),
            )
        };
        ctx.add(
            level,
            Side::Source,
            format!("session pid {pid}"),
            problem,
            fix,
        );
    }
    Ok(())
}

/// Roles that log in and could lift the block on the source: superusers (and
/// members of a superuser role) through `session_replication_role`, table owners
/// through `ALTER TABLE … DISABLE TRIGGER`. The controller's own role is left out:
/// it is the one that sets the block.
pub async fn lifters(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let (schemas, names) = table_params(ctx);
    let sql = format!(
        "WITH o AS (SELECT c.relowner, count(*) AS n, min(n.nspname || '.' || c.relname) AS example \
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                    WHERE {MIGRATED} GROUP BY c.relowner) \
         SELECT r.rolname::text, \
                r.rolsuper OR EXISTS (SELECT 1 FROM pg_roles s \
                                      WHERE s.rolsuper AND pg_has_role(r.oid, s.oid, 'MEMBER')), \
                (SELECT coalesce(sum(o.n), 0)::bigint FROM o WHERE pg_has_role(r.oid, o.relowner, 'MEMBER')), \
                (SELECT min(o.example) FROM o WHERE pg_has_role(r.oid, o.relowner, 'MEMBER')) \
         FROM pg_roles r WHERE r.rolcanlogin AND r.rolname <> current_user ORDER BY 1"
    );
    let rows = ctx
        .src
        .query(
            "list roles that could lift the write block",
            &sql,
            &[&schemas, &names],
        )
        .await?;
    let mut who = Vec::new();
    for r in rows {
        let (role, superuser, owns, example): (String, bool, i64, Option<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if superuser {
            who.push(format!("{role} (superuser)"));
        } else if owns == 1 {
            who.push(format!("{role} (owns {})", example.unwrap_or_default()));
        } else if owns > 1 {
            who.push(format!(
                "{role} (owns {owns} tables, e.g. {})",
                example.unwrap_or_default()
            ));
        }
    }
    if who.is_empty() {
        return Ok(());
    }
    ctx.add(
        Level::Warning,
        Side::Source,
        "write block".into(),
        format!(
            "could be lifted by roles that log in: {}. A superuser can SET session_replication_role = replica \
             and a table's owner can ALTER TABLE … DISABLE TRIGGER; the switchover's fence check catches \
             writes made that way before its point of no return and aborts, with writes still on the source",
            preview(&who)
        ),
        "keep clients that log in as these roles off the source during the switchover, or give the tables \
         to a role that does not log in (ALTER TABLE … OWNER TO …)"
            .into(),
    );
    Ok(())
}

/// The write block is a statement trigger on every table, which takes the TRIGGER
/// privilege (owners and superusers have it). On the source the switchover needs
/// it; on the target only a rollback after `switchover --reverse` does, and only
/// for the tables the target has.
pub async fn trigger_privilege(ctx: &mut Ctx<'_>, side: Side) -> Result<(), Error> {
    let (schemas, names) = table_params(ctx);
    let sql = format!(
        "SELECT n.nspname || '.' || c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE {MIGRATED} AND NOT has_table_privilege(current_user, c.oid, 'TRIGGER') ORDER BY 1"
    );
    let db = ctx.db(side);
    let rows = db
        .query("check the TRIGGER privilege", &sql, &[&schemas, &names])
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let (user, _) = controller_is_superuser(ctx, side).await?;
    let (level, needs) = match side {
        Side::Source => (
            Level::Blocker,
            "so the switchover cannot block writes to it",
        ),
        Side::Target => (
            Level::Warning,
            "so a rollback after `switchover --reverse` cannot block writes to it here",
        ),
    };
    for r in rows {
        let (table, quoted): (String, String) = (r.get(0), r.get(1));
        ctx.add(
            level,
            side,
            format!("table {table}"),
            format!(
                "{user} lacks the TRIGGER privilege on it (the write block is a trigger on every table), {needs}"
            ),
            format!("GRANT TRIGGER ON {quoted} TO {}", ident(&user)),
        );
    }
    Ok(())
}

/// Logical replication carries tables only: a materialized view arrives with its
/// definition and is refreshed on the target by the switchover, during the pause.
pub async fn materialized_views(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    for (name, rows) in catalog::materialized_views(ctx.src).await? {
        let size = if rows >= 0 {
            format!(" (about {rows} rows)")
        } else {
            String::new()
        };
        ctx.add(
            Level::Info,
            Side::Source,
            format!("materialized view {name}"),
            format!(
                "is not replicated{size}: the switchover refreshes it on the target before the write \
                 pause ends, so a slow refresh lengthens the pause (see --max-pause)"
            ),
            String::new(),
        );
    }
    Ok(())
}

/// Another controller holding [`lock`] on either side: `sync`, `cutover run` and
/// the switchover would refuse to start.
pub async fn other_controllers(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    for side in [Side::Source, Side::Target] {
        if let Some(h) = lock::holder(ctx.db(side)).await? {
            ctx.add(
                Level::Warning,
                side,
                "controller lock".into(),
                format!(
                    "another cutover controller is working on this database: {h}; sync, `cutover run` \
                     and the switchover refuse to start until it is done"
                ),
                "wait for it to finish, or stop it; the lock goes when that controller exits".into(),
            );
        }
    }
    Ok(())
}
