//! `sync` copies the schema in two parts: tables with their primary keys (and
//! replica identity indexes) before the initial copy, every other index,
//! constraint and trigger after it, built in parallel, then ANALYZE. Until the
//! second part is built the switchover refuses; an index someone created on the
//! target by hand in between is left alone, and a second sync changes nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use cutover_tests::{Postgres, eventually};

use crate::common::{Pair, SwitchSite, cutover};

pub(crate) const SCHEMA: &str = "
    CREATE TABLE accounts (
        id bigserial PRIMARY KEY,
        email text NOT NULL CONSTRAINT email_long_enough CHECK (length(email) > 3),
        CONSTRAINT email_unique UNIQUE (email));
    CREATE TABLE orders (
        id bigserial PRIMARY KEY,
        account bigint NOT NULL REFERENCES accounts (id),
        total numeric NOT NULL,
        at timestamptz NOT NULL DEFAULT now());
    CREATE INDEX orders_at_idx ON orders (at);
    CREATE INDEX orders_account_idx ON orders (account);
    CREATE TABLE ledger (code text NOT NULL, n int NOT NULL, v text);
    CREATE UNIQUE INDEX ledger_ident ON ledger (code, n);
    ALTER TABLE ledger REPLICA IDENTITY USING INDEX ledger_ident;
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
        $$BEGIN NEW.at := now(); RETURN NEW; END$$;
    CREATE TRIGGER orders_touch BEFORE UPDATE ON orders
        FOR EACH ROW EXECUTE FUNCTION touch();
    CREATE TABLE events (id bigint NOT NULL, day date NOT NULL, body text,
        PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
    CREATE TABLE events_2026 PARTITION OF events
        FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
    CREATE INDEX events_body_idx ON events (body);
    GRANT SELECT ON orders TO app;
    ALTER TABLE ledger OWNER TO app;
    INSERT INTO accounts (email) SELECT 'user' || g || '@example.test' FROM generate_series(1, 2000) g;
    INSERT INTO orders (account, total) SELECT 1 + g % 2000, g FROM generate_series(1, 20000) g;
    INSERT INTO ledger SELECT 'c' || g % 7, g, 'v' FROM generate_series(1, 1000) g;
    INSERT INTO events SELECT g, DATE '2026-01-01' + g % 300, 'e' FROM generate_series(1, 3000) g;
    ANALYZE;
";

/// Every index, constraint and (user) trigger of the application's tables, by
/// name and table.
pub(crate) async fn objects(pg: &Postgres) -> BTreeSet<String> {
    let c = pg.connect("app").await;
    let rows = c
        .query(
            "SELECT 'index ' || indexrelid::regclass::text FROM pg_index i
               JOIN pg_class c ON c.oid = i.indrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
             UNION ALL
             SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname
               FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid <> 0
             UNION ALL
             SELECT 'trigger ' || tgrelid::regclass::text || ' ' || tgname FROM pg_trigger
               WHERE NOT tgisinternal AND tgname <> 'cutover_write_block'",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn the_schema_is_copied_in_two_parts_around_the_initial_copy() {
    let pair = Pair::start().await;
    pair.old.sql("app", SCHEMA).await;
    let want = objects(&pair.old).await;

    // Part 1 only: the copy runs into tables that have their keys and nothing else.
    let first = cutover(&["db", "sync", "--no-wait"], &pair.env())
        .await
        .ok();
    assert!(
        first.stdout.contains("with their primary keys copied"),
        "{}",
        first.stdout
    );
    let early = objects(&pair.new).await;
    for needed in [
        "index accounts_pkey",
        "index orders_pkey",
        "index ledger_ident",
        "index events_2026_pkey",
        "constraint accounts email_long_enough",
    ] {
        assert!(
            early.contains(needed),
            "{needed} missing before the copy: {early:#?}"
        );
    }
    for later in [
        "index orders_at_idx",
        "index email_unique",
        "constraint orders orders_account_fkey",
        "trigger orders orders_touch",
        "index events_body_idx",
    ] {
        assert!(
            !early.contains(later),
            "{later} built before the copy: {early:#?}"
        );
    }
    let new = pair.new.connect("app").await;
    let granted: bool = new
        .query_one("SELECT has_table_privilege('app', 'orders', 'SELECT')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(granted, "the grant comes with the tables");
    let owner: String = new
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'ledger'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, "app", "the owner comes with the table");
    eventually(Duration::from_secs(60), "the initial copy", || async {
        let left: i64 = new
            .query_one(
                "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (left == 0).then_some(())
    })
    .await;

    // The copy is done but not the second part: the switchover refuses, naming
    // what the new database lacks, and moves nothing.
    let site = SwitchSite::serve(pair);
    let refused = site.switchover("5s", &[]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("the target lacks") && refused.stderr.contains("orders_at_idx"),
        "{}",
        refused.stderr
    );
    site.assert_nothing_moved().await;

    // A DBA creates one of the indexes by hand meanwhile; sync builds the rest.
    site.pair
        .new
        .sql("app", "CREATE INDEX orders_at_idx ON orders (at)")
        .await;
    let second = cutover(&["db", "sync"], &site.pair.env()).await.ok();
    let line = |step: &str| {
        second
            .stdout
            .lines()
            .find(|l| l.starts_with(step))
            .unwrap_or_else(|| panic!("no {step} line: {}", second.stdout))
            .to_string()
    };
    assert!(
        line("indexes and constraints").contains("created"),
        "{}",
        second.stdout
    );
    assert!(line("analyze").contains("created"), "{}", second.stdout);
    assert_eq!(objects(&site.pair.new).await, want);
    let unanalyzed: i64 = new
        .query_one(
            "SELECT count(*) FROM pg_stat_user_tables
             WHERE schemaname = 'public' AND last_analyze IS NULL AND last_autoanalyze IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unanalyzed, 0);
    for t in ["accounts", "orders", "ledger", "events"] {
        let sql = format!("SELECT count(*) FROM {t}");
        let (a, b): (i64, i64) = (
            site.pair
                .old
                .connect("app")
                .await
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get(0),
            new.query_one(&sql, &[]).await.unwrap().get(0),
        );
        assert_eq!(a, b, "{t}");
    }

    let third = cutover(&["db", "sync", "--json"], &site.pair.env())
        .await
        .ok()
        .json();
    let outcomes: Vec<&str> = third["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    assert!(outcomes.iter().all(|o| *o == "unchanged"), "{third}");
    let orders = third["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.orders")
        .unwrap_or_else(|| panic!("{third}"));
    assert!(orders["bytes_on_source"].as_i64().unwrap() > 0, "{orders}");

    // Both servers are 15: rows travel in binary form, large transactions stream.
    let (binary, streaming): (bool, bool) = {
        let r = new
            .query_one("SELECT subbinary, substream FROM pg_subscription", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        binary && streaming,
        "binary {binary}, streaming {streaming}"
    );

    // The slot and the WAL it retains.
    let status = cutover(&["db", "status"], &site.pair.env()).await.ok();
    assert!(
        status
            .stdout
            .contains("slot:    cutover on the source, active; retains"),
        "{}",
        status.stdout
    );

    // Now the switchover goes through.
    site.switchover("5s", &[]).await.ok();
}
