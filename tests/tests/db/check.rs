//! `cutover db check`: blockers named with their fixes, and the fix flags.

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
