//! `cutover db check`: blockers named with their fixes, and the fix flags.

use cutover_tests::Postgres;

use crate::common::{Pair, cutover};

#[tokio::test]
async fn check_flags_a_table_without_a_key_and_a_missing_extension_until_fixed() {
    let pair = Pair::start().await;
    pair.old
        .sql(
            "app",
            "CREATE TABLE audit (at timestamptz, what text);
             INSERT INTO audit VALUES (now(), 'x');
             CREATE EXTENSION citext;
             CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);",
        )
        .await;
    let env = pair.env();

    let run = cutover(&["db", "check"], &env).await;
    assert_eq!(run.code, 1, "{}", run.all());
    let out = run.stdout;
    assert!(
        out.contains("BLOCKER  source table public.audit: has no primary key"),
        "{out}"
    );
    assert!(
        out.contains("REPLICA IDENTITY FULL (or pass --fix-replica-identity)"),
        "{out}"
    );
    assert!(out.contains("BLOCKER  target extension citext"), "{out}");
    assert!(
        out.contains("warning  source table public.scratch: is UNLOGGED"),
        "{out}"
    );
    assert!(
        out.contains("not ready: 2 blocker(s), 1 warning(s)"),
        "{out}"
    );
    assert!(
        !out.contains("public.items"),
        "a table with a key is fine: {out}"
    );

    let json = cutover(&["db", "check", "--json"], &env).await;
    assert_eq!(json.code, 1);
    let v = json.json();
    let blockers: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "blocker")
        .map(|f| f["object"].as_str().unwrap())
        .collect();
    assert_eq!(blockers, ["table public.audit", "extension citext"]);

    let fixed = cutover(
        &["db", "check", "--fix-replica-identity", "--fix-extensions"],
        &env,
    )
    .await
    .ok();
    assert!(
        fixed
            .stdout
            .contains("source table public.audit: set REPLICA IDENTITY FULL"),
        "{}",
        fixed.stdout
    );
    assert!(
        fixed.stdout.contains("target extension citext: created"),
        "{}",
        fixed.stdout
    );
    assert!(
        fixed.stdout.contains("ready: no blockers, 1 warning(s)"),
        "{}",
        fixed.stdout
    );

    // The fixes are real: a plain check passes now, and the table takes updates
    // once published.
    cutover(&["db", "check"], &env).await.ok();
    let ident: String = pair
        .old
        .connect("app")
        .await
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE relname = 'audit'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ident, "f");
}

#[tokio::test]
async fn check_flags_a_role_missing_on_the_target() {
    let pair = Pair::start().await;
    pair.old
        .sql(
            "app",
            "CREATE ROLE reporting; GRANT SELECT ON items TO reporting;",
        )
        .await;
    let run = cutover(&["db", "check"], &pair.env()).await;
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout
            .contains("BLOCKER  target role reporting: owns or has privileges"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("CREATE ROLE \"reporting\""),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn check_blocks_on_a_prepared_transaction_and_lists_materialized_views() {
    let pair = Pair::start().await;
    pair.old
        .sql(
            "app",
            "CREATE MATERIALIZED VIEW item_counts AS SELECT count(*) AS n FROM items",
        )
        .await;
    // Its own batch: in one with the view, the BEGIN would take the view into the
    // prepared transaction.
    pair.old
        .sql(
            "app",
            "BEGIN; INSERT INTO items (body) VALUES ('half done'); PREPARE TRANSACTION 'nightly-42';",
        )
        .await;
    let env = pair.env();

    let run = cutover(&["db", "check"], &env).await;
    assert_eq!(run.code, 1, "{}", run.all());
    let out = &run.stdout;
    assert!(
        out.contains(
            "BLOCKER  source prepared transaction 'nightly-42': owned by postgres, prepared "
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "fix: COMMIT PREPARED 'nightly-42' or ROLLBACK PREPARED 'nightly-42' (as postgres or a superuser)"
        ),
        "{out}"
    );
    assert!(
        out.contains("info     source materialized view public.item_counts: is not replicated"),
        "{out}"
    );
    assert!(out.contains("not ready: 1 blocker(s)"), "{out}");

    let v = cutover(&["db", "check", "--json"], &env).await.json();
    let findings = v["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["level"] == "blocker"
            && f["side"] == "source"
            && f["object"] == "prepared transaction 'nightly-42'"),
        "{v:#}"
    );
    assert!(
        findings
            .iter()
            .any(|f| f["level"] == "info" && f["object"] == "materialized view public.item_counts"),
        "{v:#}"
    );

    // sync stops at the preflight, before it creates anything.
    let sync = cutover(&["db", "sync", "--no-wait"], &env).await.fails();
    assert!(
        sync.stderr.contains("prepared transaction 'nightly-42'"),
        "{}",
        sync.stderr
    );

    pair.old.sql("app", "ROLLBACK PREPARED 'nightly-42'").await;
    let ok = cutover(&["db", "check"], &env).await.ok();
    assert!(!ok.stdout.contains("nightly-42"), "{}", ok.stdout);
    assert!(ok.stdout.contains("ready: no blockers"), "{}", ok.stdout);
}

#[tokio::test]
async fn check_names_who_could_write_past_the_write_block() {
    let pair = Pair::start().await;
    pair.old
        .sql(
            "app",
            "CREATE TABLE notes (id int PRIMARY KEY); ALTER TABLE notes OWNER TO app;",
        )
        .await;
    // A superuser job connected to the source.
    let job = pair.old.connect("app").await;
    job.batch_execute("SET application_name = 'nightly-report'")
        .await
        .unwrap();
    let pid: i32 = job
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // As a superuser, the controller can end that session: a warning.
    let run = cutover(&["db", "check"], &pair.env()).await.ok();
    let out = &run.stdout;
    assert!(
        out.contains(&format!(
            "warning  source session pid {pid}: superuser postgres, application_name \"nightly-report\", from 127.0.0.1, idle"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("SELECT pg_terminate_backend({pid})")),
        "{out}"
    );
    assert!(
        out.contains(
            "warning  source write block: could be lifted by roles that log in: app (owns public.notes)."
        ),
        "{out}"
    );
    assert!(
        out.contains("the switchover's fence check catches"),
        "{out}"
    );

    // As `app` (no superuser, no TRIGGER on items, owner of notes): both are
    // blockers.
    let as_app = vec![
        ("CUTOVER_SOURCE".to_string(), Pair::app_dsn(&pair.old)),
        ("CUTOVER_TARGET".to_string(), pair.new.dsn("app")),
    ];
    let run = cutover(&["db", "check"], &as_app).await;
    assert_eq!(run.code, 1, "{}", run.all());
    let out = &run.stdout;
    assert!(
        out.contains("BLOCKER  source table public.items: app lacks the TRIGGER privilege on it"),
        "{out}"
    );
    assert!(
        out.contains("fix: GRANT TRIGGER ON public.items TO \"app\""),
        "{out}"
    );
    assert!(
        !out.contains("public.notes: app lacks the TRIGGER privilege"),
        "an owner has it: {out}"
    );
    assert!(
        out.contains(&format!(
            "BLOCKER  source session pid {pid}: superuser postgres, application_name \"nightly-report\""
        )),
        "{out}"
    );
    assert!(out.contains("app is not a superuser"), "{out}");

    // The fix the check names works.
    pair.old.sql("app", "GRANT TRIGGER ON items TO app").await;
    let run = cutover(&["db", "check"], &as_app).await;
    assert!(!run.stdout.contains("TRIGGER privilege"), "{}", run.stdout);
}

/// Roles and settings that make a local cluster look, to the preflight, like one
/// of a managed service, run as the superuser on database `postgres` (roles are
/// cluster-wide, and a superuser session left in `app` would be a finding).
async fn dress_as(pg: &Postgres, sql: &str) {
    pg.sql("postgres", sql).await;
}

/// Amazon RDS, emulated: no managed service can run here, so each local cluster
/// shows what the preflight reads on RDS: the roles `rds_superuser` (NOLOGIN, a
/// member of `rds_replication` and `pg_signal_backend` as on RDS) and
/// `rds_replication`, and the setting `rds.logical_replication`, defined in
/// `postgresql.conf` as RDS defines it. The controller logs in as `app`, no
/// superuser. What RDS itself does with them (wal_level from
/// `rds.logical_replication`, subscriptions for `rds_superuser` before PostgreSQL 16)
/// is not emulated: the source runs with wal_level = replica as RDS does with
/// `rds.logical_replication = 0`, and the test checks what the preflight reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_amazon_rds_names_the_parameter_group_and_the_grants() {
    let pair = Pair::start().await;
    let rds = "CREATE ROLE rds_superuser NOLOGIN; CREATE ROLE rds_replication NOLOGIN;
               GRANT rds_replication, pg_signal_backend TO rds_superuser;";
    dress_as(&pair.old, rds).await;
    dress_as(&pair.new, rds).await;
    // On the source, `app` is the instance's master user and owns the tables.
    dress_as(
        &pair.old,
        "GRANT rds_superuser TO app; GRANT CREATE ON DATABASE app TO app;",
    )
    .await;
    pair.old.sql("app", "ALTER TABLE items OWNER TO app").await;
    // The restart also ends every session the set-up left.
    std::thread::scope(|s| {
        s.spawn(|| {
            pair.old
                .restart_with("wal_level = replica\nrds.logical_replication = 0")
        });
        s.spawn(|| pair.new.restart_with("rds.logical_replication = 1"));
    });
    let as_app = vec![
        ("CUTOVER_SOURCE".to_string(), Pair::app_dsn(&pair.old)),
        ("CUTOVER_TARGET".to_string(), Pair::app_dsn(&pair.new)),
    ];

    let run = cutover(&["db", "check"], &as_app).await;
    assert_eq!(run.code, 1, "{}", run.all());
    let out = &run.stdout;
    assert!(
        out.contains("info     source platform: Amazon RDS (app is a member of rds_superuser)"),
        "{out}"
    );
    assert!(
        out.contains(
            "info     target platform: Amazon RDS (app is not a member of rds_superuser, \
             which stands in for a superuser there)"
        ),
        "{out}"
    );
    assert!(
        out.contains("BLOCKER  source setting wal_level: is replica; logical replication needs logical\n         \
             fix: set rds.logical_replication = 1 in the source instance's DB parameter group \
             (its DB cluster parameter group on Aurora), then reboot the instance"),
        "{out}"
    );
    assert!(!out.contains("ALTER SYSTEM"), "RDS refuses it: {out}");
    assert!(
        !out.contains("cannot create a replication slot"),
        "rds_replication (through rds_superuser) allows replication: {out}"
    );
    assert!(
        out.contains(
            "BLOCKER  target role app: cannot create a subscription\n         \
             fix: GRANT rds_superuser TO \"app\": PostgreSQL 15 and older allow only superusers \
             to create subscriptions, and on Amazon RDS its members stand in for one"
        ),
        "{out}"
    );
    assert!(out.contains("not ready: 2 blocker(s)"), "{out}");
    let v = cutover(&["db", "check", "--json"], &as_app).await.json();
    assert_eq!(v["source_platform"], "rds", "{v:#}");
    assert_eq!(v["target_platform"], "rds", "{v:#}");

    // The grant named is enough: membership stands in for the superuser.
    dress_as(&pair.new, "GRANT rds_superuser TO app").await;
    let out = cutover(&["db", "check"], &as_app).await.stdout;
    assert!(
        out.contains(
            "info     target role app: may create a subscription as a member of rds_superuser, \
             which stands in for a superuser on Amazon RDS"
        ),
        "{out}"
    );
    assert!(!out.contains("cannot create a subscription"), "{out}");
    assert!(out.contains("not ready: 1 blocker(s)"), "{out}");

    // Without rds_superuser on the source, the grants that are missing are named.
    dress_as(&pair.old, "REVOKE rds_superuser FROM app").await;
    let out = cutover(&["db", "check"], &as_app).await.stdout;
    assert!(
        out.contains(
            "BLOCKER  source role app: cannot create a replication slot or stream changes\n         \
             fix: GRANT rds_replication TO \"app\" (as a member of rds_superuser"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "fix: GRANT pg_signal_backend TO \"app\" (as a member of rds_superuser; \
             Amazon RDS has no superuser to connect as)"
        ),
        "{out}"
    );
    assert!(out.contains("not ready: 3 blocker(s)"), "{out}");
    dress_as(&pair.old, "GRANT rds_replication TO app").await;
    let out = cutover(&["db", "check"], &as_app).await.stdout;
    assert!(!out.contains("cannot create a replication slot"), "{out}");
    assert!(out.contains("not ready: 2 blocker(s)"), "{out}");
}

/// Cloud SQL on the source and Azure Database for PostgreSQL on the target,
/// emulated as in the RDS test above (no managed service can run here): the admin
/// roles `cloudsqlsuperuser` and `azure_pg_admin`, and the settings
/// `cloudsql.logical_decoding` and `azure.extensions` in `postgresql.conf`. Before
/// the target gets its setting it holds only the role, as a self-managed server
/// does after the roles of a managed one were restored onto it, and stays
/// self-managed to the preflight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_cloud_sql_and_azure_names_their_grants() {
    let pair = Pair::start().await;
    dress_as(
        &pair.old,
        "CREATE ROLE cloudsqlsuperuser NOLOGIN; GRANT cloudsqlsuperuser TO app;
         GRANT CREATE ON DATABASE app TO app;",
    )
    .await;
    pair.old.sql("app", "ALTER TABLE items OWNER TO app").await;
    dress_as(
        &pair.new,
        "CREATE ROLE azure_pg_admin NOLOGIN; GRANT azure_pg_admin TO app;",
    )
    .await;
    pair.old.restart_with("cloudsql.logical_decoding = on");
    let as_app = vec![
        ("CUTOVER_SOURCE".to_string(), Pair::app_dsn(&pair.old)),
        ("CUTOVER_TARGET".to_string(), Pair::app_dsn(&pair.new)),
    ];

    let run = cutover(&["db", "check"], &as_app).await;
    assert_eq!(run.code, 1, "{}", run.all());
    let out = &run.stdout;
    assert!(
        out.contains("info     source platform: Cloud SQL (app is a member of cloudsqlsuperuser)"),
        "{out}"
    );
    assert!(
        out.contains(
            "BLOCKER  source role app: cannot create a replication slot or stream changes\n         \
             fix: ALTER USER \"app\" WITH REPLICATION (as a member of cloudsqlsuperuser"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "fix: GRANT pg_signal_backend TO \"app\" (as a member of cloudsqlsuperuser; \
             Cloud SQL has no superuser to connect as)"
        ),
        "{out}"
    );
    // The role alone does not make the target Azure.
    assert!(!out.contains("target platform"), "{out}");
    assert!(
        out.contains(
            "BLOCKER  target role app: cannot create a subscription\n         \
             fix: connect to the target as a superuser"
        ),
        "{out}"
    );
    let v = cutover(&["db", "check", "--json"], &as_app).await.json();
    assert_eq!(v["source_platform"], "cloud-sql", "{v:#}");
    assert_eq!(v["target_platform"], "self-managed", "{v:#}");

    // The fixes named: the REPLICATION attribute on the source, and the target
    // shown as Azure, where azure_pg_admin stands in for the superuser.
    dress_as(&pair.old, "ALTER USER app WITH REPLICATION").await;
    pair.new.restart_with("azure.extensions = 'pg_trgm'");
    let out = cutover(&["db", "check"], &as_app).await.stdout;
    assert!(!out.contains("cannot create a replication slot"), "{out}");
    assert!(
        out.contains(
            "info     target platform: Azure Database for PostgreSQL (app is a member of azure_pg_admin)"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "info     target role app: may create a subscription as a member of azure_pg_admin"
        ),
        "{out}"
    );
    assert!(!out.contains("cannot create a subscription"), "{out}");
    assert!(out.contains("not ready: 1 blocker(s)"), "{out}");
}
