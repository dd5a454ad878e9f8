//! Bad DSNs and unreachable databases: the error names the side, and no password
//! is ever printed.

use cutover_tests::{Postgres, SUPERUSER_PASSWORD};

use crate::common::cutover;

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn errors_name_the_side_and_never_show_a_password() {
    let pg = tokio::task::spawn_blocking(|| Postgres::start("solo"))
        .await
        .unwrap();
    pg.sql("postgres", "CREATE DATABASE app").await;
    let good = pg.dsn("app");
    let port = closed_port();
    let unreachable = format!(
        "host=127.0.0.1 port={port} user=postgres password={SUPERUSER_PASSWORD} dbname=app"
    );

    // The source cannot be reached.
    let run = cutover(
        &["db", "check"],
        &[
            ("CUTOVER_SOURCE".into(), unreachable.clone()),
            ("CUTOVER_TARGET".into(), good.clone()),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    let want = format!(
        "cutover: source database (host=127.0.0.1 port={port} dbname=app user=postgres): cannot connect:"
    );
    assert!(run.stderr.contains(&want), "{}", run.stderr);

    // The target's password is wrong.
    let wrong = pg.dsn_as("postgres", "not-the-pw-77", "app");
    let run = cutover(
        &["db", "status", "--json"],
        &[
            ("CUTOVER_SOURCE".into(), good.clone()),
            ("CUTOVER_TARGET".into(), wrong),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("target database (host=127.0.0.1")
            && run.stderr.contains("password authentication failed"),
        "{}",
        run.stderr
    );
    assert!(!run.all().contains("not-the-pw-77"));
    let v = run.json();
    assert_eq!(v["side"], "target");

    // The target's DSN does not parse.
    let run = cutover(
        &[
            "db",
            "verify",
            "--source",
            &good,
            "--target",
            &format!("host=127.0.0.1 port=notaport password={SUPERUSER_PASSWORD}"),
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(
            "target DSN is not valid: invalid connection string: invalid value for option `port`"
        ),
        "{}",
        run.stderr
    );

    // A reachable database that does not exist.
    let run = cutover(
        &["db", "sync"],
        &[
            ("CUTOVER_SOURCE".into(), pg.dsn("nosuchdb")),
            ("CUTOVER_TARGET".into(), good.clone()),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("source database (")
            && run.stderr.contains("nosuchdb\" does not exist"),
        "{}",
        run.stderr
    );

    // Help shows that the environment is read, not what it holds.
    let run = cutover(
        &["db", "check", "--help"],
        &[("CUTOVER_SOURCE".into(), unreachable)],
    )
    .await
    .ok();
    assert!(run.stdout.contains("CUTOVER_SOURCE"), "{}", run.stdout);

    // No DSN at all is a usage error.
    let run = cutover(&["db", "check"], &[]).await;
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("--source"), "{}", run.stderr);
}

/// `CREATE SUBSCRIPTION` carries the publisher's password in its text. When it
/// fails (here the target server cannot reach the source it was given), the
/// server would log the statement with it; the controller's session keeps it out
/// of the log.
#[tokio::test]
async fn a_failed_subscription_leaves_no_password_in_the_server_log() {
    let pair = crate::common::Pair::start().await;
    let port = closed_port();
    let unreachable = format!(
        "host=127.0.0.1 port={port} user=postgres password={SUPERUSER_PASSWORD} dbname=app"
    );
    let run = cutover(
        &["db", "sync", "--source-for-target", &unreachable],
        &pair.env(),
    )
    .await;
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.all().contains("subscription"), "{}", run.all());
    let log = pair.new.log();
    assert!(
        log.contains("could not connect to the publisher"),
        "the failure is in the target's log:\n{log}"
    );
    assert!(
        !log.contains(SUPERUSER_PASSWORD),
        "the target's server log shows the password:\n{log}"
    );
}
