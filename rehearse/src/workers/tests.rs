use std::collections::HashMap;
use std::time::Duration;

use super::check::compare;
use super::*;
use crate::platform::{self, PLATFORM};

fn ack(id: i32, body: &str) -> Ack {
    Ack {
        id,
        body: body.into(),
        at: 0.0,
    }
}

#[test]
fn a_write_counts_as_found_only_in_its_own_row_with_its_own_body() {
    let acks = [ack(1, "a"), ack(2, "b"), ack(3, "c")];
    let rows: HashMap<i32, String> = [(1, "a".to_string()), (2, "someone else".to_string())]
        .into_iter()
        .collect();
    let (found, missing) = compare(&acks, &rows);
    assert_eq!(found, 1);
    assert_eq!(
        missing,
        ["id 2 holds another write's body", "id 3 absent"],
        "{missing:?}"
    );
}

#[test]
fn every_database_app_has_a_worker_and_one_a_nightly_job() {
    let mut n = 0;
    let roles = roles(|| {
        n += 1;
        format!("pw{n}")
    });
    let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "tasks_worker",
            "education_worker",
            "social_worker",
            "medical_worker",
            "ecommerce_worker",
            "ecommerce_nightly"
        ]
    );
    // Each its own password, and none in its Debug form.
    assert_eq!(listing(&roles).lines().count(), 6);
    assert!(listing(&roles).contains("old+new ecommerce_nightly pw6"));
    assert!(!format!("{roles:?}").contains("pw1"));
}

#[test]
fn each_kind_writes_its_own_way() {
    assert_eq!(Kind::Worker.rows(), 1);
    assert_eq!(Kind::Nightly.rows(), NIGHTLY_BATCH);
    assert_eq!(Kind::Nightly.role(&PLATFORM[5]), "ecommerce_nightly");
}

#[test]
fn the_section_shows_each_writer_beside_its_apps_switchover() {
    let record: cutover_controller::plan::record::Record =
        serde_json::from_value(serde_json::json!({
            "version": 1, "plan_name": "p", "plan_path": "p.toml", "plan_sha256": "x",
            "started_at": 1000.0, "updated_at": 1100.0, "outcome": "succeeded",
            "phase": "done", "next_step": 3, "spans": [], "gates": [], "lag": {},
            "switchovers": [], "verify": [],
            "timeline": [
                {"at": 1080.0, "phase": "switchover", "app": "tasks",
                 "what": "switchover of route tasks.rehearse.test begins", "ok": true},
                {"at": 1084.5, "phase": "switchover", "app": "tasks",
                 "what": "writes on \"new\"; write pause 40 ms", "ok": true}
            ]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
    let writer = |side, acknowledged, first, refused: &[(&str, u64)]| check::WriterResult {
        app: "tasks",
        side,
        role: "tasks_worker".into(),
        checked_on: Side::New,
        acknowledged,
        found: acknowledged,
        missing: 0,
        missing_examples: Vec::new(),
        refused: refused.iter().map(|(w, n)| (w.to_string(), *n)).collect(),
        attempts: acknowledged + refused.iter().map(|(_, n)| n).sum::<u64>(),
        reconnects: 0,
        first_ack: Some(first),
        last_ack: Some(1100.0),
    };
    let past = check::PastProxy {
        writers: vec![
            writer(Side::Old, 300, 999.0, &[]),
            writer(Side::New, 20, 1084.2, &[("write block (read-only)", 7)]),
        ],
        by_kind: [(
            "workers".to_string(),
            cutover_controller::plan::record::LedgerCheck {
                acknowledged: 320,
                found: 320,
                missing: 0,
                missing_examples: Vec::new(),
            },
        )]
        .into_iter()
        .collect(),
    };
    let md = section(&past, &record);
    assert!(md.starts_with("## Writers past the proxy"), "{md}");
    assert!(md.contains("| workers | 320 | 320 | 0 |"), "{md}");
    assert!(
        md.contains(
            "| tasks | tasks_worker | new | 27 | 20 | new | 20 | 0 | 7 write block (read-only) \
             | 0 | +84.2s / +100.0s | +80.0s / +84.5s |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| tasks | tasks_worker | old | 300 | 300 | new | 300 | 0 | 0 | 0 | -1.0s"),
        "{md}"
    );
}

/// Polls `f` every 50 ms until it holds, for at most `within`.
async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// A real cluster: the worker's session is ended by the server mid-run
/// (`pg_terminate_backend`, as the switchover's block does to a writer holding a
/// lock); it reconnects and goes on, and every write it was acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_session_is_ended_reconnects_and_loses_nothing() {
    if crate::cluster::server_programs().is_err() {
        eprintln!("skipped: no PostgreSQL server programs here");
        return;
    }
    let cluster = tokio::task::spawn_blocking(|| Cluster::start("workers", "su-pw-Qx81"))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let app = PLATFORM
        .iter()
        .find(|a| a.name == "tasks")
        .unwrap_or_else(|| panic!("no tasks app"));
    let table = app.table.unwrap_or("tasks");
    let roles: Vec<WriterRole> = roles(|| "worker-pw-7Hq2".into())
        .into_iter()
        .filter(|r| r.app.name == "tasks")
        .collect();
    for sql in [
        "CREATE ROLE tasks_app LOGIN PASSWORD 'x'",
        "CREATE DATABASE tasks",
    ] {
        cluster
            .sql("postgres", sql)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    cluster
        .sql(app.database(), &crate::app::schema(table, &app.role()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    platform::create_writer_roles(&cluster, &roles)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    platform::grant_writers(&cluster, &roles)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Both "sides" are this one cluster: two workers on one table.
    let workers = start(&cluster, &cluster, &roles);
    let writing = |n: usize| {
        let w = &workers;
        move || w.acknowledged(Side::Old) >= n
    };
    assert!(eventually(Duration::from_secs(20), writing(20)).await);

    let admin = cluster
        .connect("tasks")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ended: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE usename = 'tasks_worker'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert!(ended >= 1, "no worker session to end");
    let before = workers.acknowledged(Side::Old);
    assert!(eventually(Duration::from_secs(20), writing(before + 20)).await);

    let tallies = workers.stop().await;
    let reconnects: u64 = tallies.iter().map(|t| t.reconnects).sum();
    assert!(reconnects >= 1, "{tallies:?}");
    for t in &tallies {
        eprintln!(
            "{} {}: {} tried, {} acknowledged, {} reconnect(s), refused {:?}",
            t.role,
            t.side.label(),
            t.attempts,
            t.acks.len(),
            t.reconnects,
            t.refused
        );
    }
    let checked = check(&cluster, &cluster, &[], &tallies)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let l = &checked.by_kind["workers"];
    assert!(l.acknowledged >= 40, "{l:?}");
    assert_eq!(l.missing, 0, "{l:?}");
    assert_eq!(l.found, l.acknowledged, "{l:?}");
    drop(admin);
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
}
