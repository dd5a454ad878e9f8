//! Preflight checks on the source: settings, tables, large objects, permissions.

use crate::catalog::ident;
use crate::check::{Ctx, Level};
use crate::dsn::Side;
use crate::error::Error;

/// `wal_level`, and free replication slots and WAL senders for the subscription
/// and the table-copy workers it starts.
pub async fn settings(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let src = ctx.src;
    let platform = ctx.server(Side::Source).platform;
    let wal_level = src.setting("wal_level").await?;
    if wal_level != "logical" {
        ctx.add(
            Level::Blocker,
            Side::Source,
            "setting wal_level".into(),
            format!("is {wal_level}; logical replication needs logical"),
            platform.logical_wal(Side::Source),
        );
    }
    let ours: bool = src
        .query_one(
            "look for the replication slot",
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&ctx.name],
        )
        .await?
        .get(0);
    // The subscription holds one slot and one sender; during the initial copy each
    // table-copy worker holds another of each, up to the target's limit.
    let workers = ctx
        .tgt
        .setting_int("max_sync_workers_per_subscription")
        .await?;
    let copy_workers = (ctx.tables.len() as i64).min(workers);
    let need = if ours { 0 } else { 1 + copy_workers };
    let max_slots = src.setting_int("max_replication_slots").await?;
    let used_slots: i64 = src
        .query_one(
            "count replication slots",
            "SELECT count(*) FROM pg_replication_slots",
            &[],
        )
        .await?
        .get(0);
    if max_slots - used_slots < need {
        ctx.add(
            Level::Blocker,
            Side::Source,
            "setting max_replication_slots".into(),
            format!(
                "is {max_slots} with {used_slots} in use; the subscription and its copy workers need {need} free"
            ),
            platform.set_static(
                Side::Source,
                "max_replication_slots",
                &(used_slots + need + 2).to_string(),
            ),
        );
    }
    let max_senders = src.setting_int("max_wal_senders").await?;
    let used_senders: i64 = src
        .query_one(
            "count WAL senders",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'",
            &[],
        )
        .await?
        .get(0);
    if max_senders - used_senders < need {
        ctx.add(
            Level::Blocker,
            Side::Source,
            "setting max_wal_senders".into(),
            format!(
                "is {max_senders} with {used_senders} in use; the subscription and its copy workers need {need} free"
            ),
            platform.set_static(
                Side::Source,
                "max_wal_senders",
                &(used_senders + need + 2).to_string(),
            ),
        );
    }
    Ok(())
}

/// Replica identity (fixed with the flag) and unlogged tables.
pub async fn tables(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let tables = ctx.tables.clone();
    for t in tables {
        if t.unlogged {
            ctx.add(
                Level::Warning,
                Side::Source,
                format!("table {}", t.name),
                "is UNLOGGED: logical replication does not carry it, so the target gets its schema but no rows".into(),
                format!("ALTER TABLE {} SET LOGGED, or accept that it starts empty", t.name.sql()),
            );
            continue;
        }
        if t.has_identity() {
            continue;
        }
        if ctx.opts.fix_replica_identity {
            ctx.src
                .batch(
                    &format!("set REPLICA IDENTITY FULL on {}", t.name),
                    &format!("ALTER TABLE {} REPLICA IDENTITY FULL", t.name.sql()),
                )
                .await?;
            ctx.fixed.push(format!(
                "source table {}: set REPLICA IDENTITY FULL (it has no primary key)",
                t.name
            ));
            continue;
        }
        let why = if t.replica_identity == 'n' {
            "has REPLICA IDENTITY NOTHING"
        } else {
            "has no primary key and no replica identity"
        };
        ctx.add(
            Level::Blocker,
            Side::Source,
            format!("table {}", t.name),
            format!("{why}: once published, every UPDATE and DELETE on it fails on the source"),
            format!(
                "add a primary key, or ALTER TABLE {} REPLICA IDENTITY FULL (or pass --fix-replica-identity)",
                t.name.sql()
            ),
        );
    }
    Ok(())
}

pub async fn large_objects(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let n: i64 = ctx
        .src
        .query_one(
            "count large objects",
            "SELECT count(*) FROM pg_largeobject_metadata",
            &[],
        )
        .await?
        .get(0);
    if n > 0 {
        let level = if ctx.opts.allow_large_objects {
            Level::Warning
        } else {
            Level::Blocker
        };
        ctx.add(
            level,
            Side::Source,
            "large objects".into(),
            format!("{n} exist, and logical replication does not copy large objects"),
            "copy them separately (pg_dump --large-objects --data-only), or pass --allow-large-objects to accept".into(),
        );
    }
    Ok(())
}

/// The source user must create a publication and a slot, read every table, and
/// (for the switchover) end other roles' sessions that have a write in flight. On
/// a managed service, whose admin role is no superuser, the fixes name its grants.
pub async fn permissions(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let server = ctx.server(Side::Source).clone();
    if server.superuser {
        return Ok(());
    }
    let (user, platform) = (server.user, server.platform);
    let row = ctx
        .src
        .query_one(
            "read the source user's privileges",
            "SELECT has_database_privilege(current_database(), 'CREATE'), \
                    pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')",
            &[],
        )
        .await?;
    let (create_db, signal): (bool, bool) = (row.get(0), row.get(1));
    let who = format!("role {user}");
    if !server.replication {
        ctx.add(
            Level::Blocker,
            Side::Source,
            who.clone(),
            "cannot create a replication slot or stream changes".into(),
            platform.grant_replication(&user),
        );
    }
    if !create_db {
        ctx.add(
            Level::Blocker,
            Side::Source,
            who.clone(),
            "cannot create a publication in this database".into(),
            format!(
                "GRANT CREATE ON DATABASE {} TO {}",
                ident(ctx.src.dsn().dbname()),
                ident(&user)
            ),
        );
    }
    if !signal {
        ctx.add(
            Level::Blocker,
            Side::Source,
            who.clone(),
            "the switchover ends the sessions of other roles that have a write in flight when it \
             blocks writes, which needs pg_signal_backend"
                .into(),
            platform.grant_signal(&user),
        );
    }
    let rows = ctx
        .src
        .query(
            "check table ownership and read access",
            "SELECT n.nspname || '.' || c.relname, pg_has_role(current_user, c.relowner, 'MEMBER'), \
                    has_table_privilege(c.oid, 'SELECT'), pg_get_userbyid(c.relowner)::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = ANY (SELECT (quote_ident(s) || '.' || quote_ident(t))::regclass::oid \
                                FROM unnest($1::text[], $2::text[]) AS u(s, t))",
            &[
                &ctx.tables.iter().map(|t| t.name.schema.clone()).collect::<Vec<_>>(),
                &ctx.tables.iter().map(|t| t.name.name.clone()).collect::<Vec<_>>(),
            ],
        )
        .await?;
    for r in rows {
        let (table, owns, select, owner): (String, bool, bool, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if !owns {
            ctx.add(
                Level::Blocker,
                Side::Source,
                format!("table {table}"),
                format!("is not owned by {user}, who therefore cannot add it to a publication"),
                platform.grant_ownership(&user, &owner),
            );
        }
        if !select {
            ctx.add(
                Level::Blocker,
                Side::Source,
                format!("table {table}"),
                format!("cannot be read by {user}, so its initial copy would fail"),
                format!("GRANT SELECT ON {table} TO {}", ident(&user)),
            );
        }
    }
    Ok(())
}
