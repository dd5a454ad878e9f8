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
