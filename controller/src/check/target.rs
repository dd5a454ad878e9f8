//! Preflight checks on the target: capacity for a subscription, extensions, roles,
//! permissions, and what it already contains.

use std::collections::BTreeSet;

use crate::catalog::{self, ident};
use crate::check::{Ctx, Level, preview, version_text};
use crate::dsn::Side;
use crate::error::Error;

/// Room for one more subscription (an apply worker and a replication origin), and
/// `wal_level` for reverse replication.
pub async fn settings(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let tgt = ctx.tgt;
    let platform = ctx.server(Side::Target).platform;
    if tgt.version() / 10000 < ctx.src.version() / 10000 {
        ctx.add(
            Level::Warning,
            Side::Target,
            "server version".into(),
            format!(
                "PostgreSQL {} is older than the source's {}; the schema may not restore",
                version_text(tgt.version()),
                version_text(ctx.src.version())
            ),
            "use a target of the same or a newer major version".into(),
        );
    }
    let ours: bool = tgt
        .query_one(
            "look for the subscription",
            "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&ctx.name],
        )
        .await?
        .get(0);
    if !ours {
        let max_origins = tgt.setting_int("max_replication_slots").await?;
        let origins: i64 = tgt
            .query_one(
                "count replication origins",
                "SELECT count(*) FROM pg_replication_origin",
                &[],
            )
            .await?
            .get(0);
        if max_origins - origins < 1 {
            ctx.add(
                Level::Blocker,
                Side::Target,
                "setting max_replication_slots".into(),
                format!(
                    "is {max_origins} with {origins} replication origins in use; a subscription needs one more"
                ),
                platform.set_static(
                    Side::Target,
                    "max_replication_slots",
                    &(origins + 4).to_string(),
                ),
            );
        }
        let max_workers = tgt.setting_int("max_logical_replication_workers").await?;
        let workers: i64 = tgt
            .query_one(
                "count logical replication workers",
                "SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        if max_workers - workers < 2 {
            ctx.add(
                Level::Blocker,
                Side::Target,
                "setting max_logical_replication_workers".into(),
                format!(
                    "is {max_workers} with {workers} in use; the subscription needs an apply worker and at least one copy worker"
                ),
                platform.set_static(
                    Side::Target,
                    "max_logical_replication_workers",
                    &(workers + 4).to_string(),
                ),
            );
        }
    }
    let wal_level = tgt.setting("wal_level").await?;
    if wal_level != "logical" {
        ctx.add(
            Level::Warning,
            Side::Target,
            "setting wal_level".into(),
            format!("is {wal_level}: `switchover --reverse` (replication back to the source, for a lossless rollback) needs logical"),
            platform.logical_wal(Side::Target),
        );
    }
    Ok(())
}

/// Extensions installed on the source must be installed on the target.
pub async fn extensions(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let src_ext = ctx
        .src
        .query(
            "list extensions",
            "SELECT e.extname::text, n.nspname::text FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql' ORDER BY 1",
            &[],
        )
        .await?;
    let installed: BTreeSet<String> = ctx
        .tgt
        .query(
            "list extensions",
            "SELECT extname::text FROM pg_extension",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let available: BTreeSet<String> = ctx
        .tgt
        .query(
            "list available extensions",
            "SELECT name::text FROM pg_available_extensions",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for r in src_ext {
        let (ext, schema): (String, String) = (r.get(0), r.get(1));
        if installed.contains(&ext) {
            continue;
        }
        if !available.contains(&ext) {
            ctx.add(
                Level::Blocker,
                Side::Target,
                format!("extension {ext}"),
                "is installed on the source but not available on the target server".into(),
                format!("install the package that provides {ext} on the target server, then CREATE EXTENSION {ext}"),
            );
            continue;
        }
        let schema_exists: bool = ctx
            .tgt
            .query_one(
                "look for a schema",
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&schema],
            )
            .await?
            .get(0);
        let create = if schema_exists {
            format!(
                "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}",
                ident(&ext),
                ident(&schema)
            )
        } else {
            format!("CREATE EXTENSION IF NOT EXISTS {}", ident(&ext))
        };
        if ctx.opts.fix_extensions && schema_exists {
            ctx.tgt
                .batch(&format!("create extension {ext}"), &create)
                .await?;
            ctx.fixed.push(format!(
                "target extension {ext}: created in schema {schema}"
            ));
            continue;
        }
        let fix = if schema_exists {
            format!("run `{create}` on the target (or pass --fix-extensions)")
        } else {
            format!("create schema {schema} and then extension {ext} on the target")
        };
        ctx.add(
            Level::Blocker,
            Side::Target,
            format!("extension {ext}"),
            "is installed on the source but not on the target".into(),
            fix,
        );
    }
    Ok(())
}

/// Roles are per cluster and `pg_dump` does not copy them: every role that owns or
/// has privileges on a migrated object must already exist on the target.
pub async fn roles(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let sql = "WITH rels AS (
                 SELECT c.relowner, c.relacl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_cutover')
                   AND n.nspname NOT LIKE 'pg\\_%'),
               nsp AS (
                 SELECT n.nspowner, n.nspacl FROM pg_namespace n
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', '_cutover')
                   AND n.nspname NOT LIKE 'pg\\_%')
               SELECT DISTINCT pg_get_userbyid(x)::text FROM (
                 SELECT relowner AS x FROM rels
                 UNION SELECT (aclexplode(relacl)).grantee FROM rels WHERE relacl IS NOT NULL
                 UNION SELECT nspowner FROM nsp
                 UNION SELECT (aclexplode(nspacl)).grantee FROM nsp WHERE nspacl IS NOT NULL
               ) s WHERE x <> 0 ORDER BY 1";
    let needed: Vec<String> = ctx
        .src
        .query("list roles that own or use objects", sql, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let present: BTreeSet<String> = ctx
        .tgt
        .query("list roles", "SELECT rolname::text FROM pg_roles", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for role in needed.into_iter().filter(|r| !present.contains(r)) {
        ctx.add(
            Level::Blocker,
            Side::Target,
            format!("role {role}"),
            "owns or has privileges on objects in the source but does not exist on the target (pg_dump does not copy roles)".into(),
            format!("CREATE ROLE {} on the target with the same attributes and memberships", ident(&role)),
        );
    }
    Ok(())
}

/// Creating a subscription takes a superuser before PostgreSQL 16, and membership
/// in `pg_create_subscription` from 16 on. A managed service's admin role stands in
/// for the superuser it does not give out, and may create subscriptions before 16.
pub async fn permissions(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let server = ctx.server(Side::Target).clone();
    if server.superuser {
        return Ok(());
    }
    let (user, platform) = (server.user, server.platform);
    let create_db: bool = ctx
        .tgt
        .query_one(
            "read the target user's privileges",
            "SELECT has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await?
        .get(0);
    let may_subscribe = if ctx.tgt.version() >= 160000 {
        let member: bool = ctx
            .tgt
            .query_one(
                "check pg_create_subscription",
                "SELECT pg_has_role(current_user, 'pg_create_subscription', 'MEMBER')",
                &[],
            )
            .await?
            .get(0);
        member && create_db
    } else if let Some(admin) = platform.admin().filter(|_| server.admin) {
        ctx.add(
            Level::Info,
            Side::Target,
            format!("role {user}"),
            format!(
                "may create a subscription as a member of {admin}, which stands in for a superuser on {}",
                platform.name()
            ),
            String::new(),
        );
        true
    } else {
        false
    };
    if !may_subscribe {
        let fix = if ctx.tgt.version() >= 160000 {
            let by = platform
                .admin()
                .map(|a| format!(" (as a member of {a})"))
                .unwrap_or_default();
            format!(
                "GRANT pg_create_subscription TO {u}; GRANT CREATE ON DATABASE {d} TO {u}{by}",
                u = ident(&user),
                d = ident(ctx.tgt.dsn().dbname())
            )
        } else {
            platform.grant_subscribe_pre16(&user)
        };
        ctx.add(
            Level::Blocker,
            Side::Target,
            format!("role {user}"),
            "cannot create a subscription".into(),
            fix,
        );
    }
    Ok(())
}

/// A target that already has some of the tables cannot take the schema copy; one
/// that has rows would make the initial copy fail on duplicate keys.
pub async fn contents(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let subscribed: bool = ctx
        .tgt
        .query_one(
            "look for the subscription",
            "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1)",
            &[&ctx.name],
        )
        .await?
        .get(0);
    if subscribed {
        return Ok(());
    }
    let target_tables = catalog::tables(ctx.tgt).await?;
    if target_tables.is_empty() {
        return Ok(());
    }
    let have: BTreeSet<String> = target_tables.iter().map(|t| t.name.to_string()).collect();
    let missing: Vec<String> = ctx
        .tables
        .iter()
        .map(|t| t.name.to_string())
        .filter(|n| !have.contains(n))
        .collect();
    if !missing.is_empty() && missing.len() < ctx.tables.len() {
        ctx.add(
            Level::Blocker,
            Side::Target,
            "schema".into(),
            format!(
                "has {} of the source's {} tables; sync copies the schema only into a target that has none or all of them; missing: {}",
                ctx.tables.len() - missing.len(),
                ctx.tables.len(),
                preview(&missing)
            ),
            "drop the partial schema on the target, or create the missing tables there".into(),
        );
    }
    let mut with_rows = Vec::new();
    for t in target_tables.iter().take(200) {
        let any: bool = ctx
            .tgt
            .query_one(
                "look for rows",
                &format!("SELECT EXISTS (SELECT 1 FROM {})", t.name.sql()),
                &[],
            )
            .await?
            .get(0);
        if any {
            with_rows.push(t.name.to_string());
        }
    }
    let problem = if with_rows.is_empty() {
        format!(
            "is not empty: it has {} table(s) already (e.g. {}); sync will keep that schema",
            target_tables.len(),
            preview(&have.iter().cloned().collect::<Vec<_>>())
        )
    } else {
        format!(
            "is not empty: {} table(s) have rows ({}); the initial copy fails on duplicate keys",
            with_rows.len(),
            preview(&with_rows)
        )
    };
    ctx.add(
        Level::Warning,
        Side::Target,
        "database".into(),
        problem,
        "migrate into an empty database, or TRUNCATE the tables on the target first".into(),
    );
    Ok(())
}
