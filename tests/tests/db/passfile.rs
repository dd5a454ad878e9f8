//! The replication password kept out of SQL text: the subscription's
//! `CONNECTION` (`--source-for-target`) names a password file on the target's
//! server (`passfile=`) instead of carrying the password. Nothing with the password
//! reaches the target's catalog, either server's log or any output; the
//! replication runs. The controller reads a passfile for its own connections too,
//! and a missing one is an error naming the file.

use cutover_tests::SUPERUSER_PASSWORD;

use crate::common::{Pair, assert_no_secrets, cutover};

#[tokio::test]
async fn a_passfile_on_the_target_server_keeps_the_password_out_of_the_subscription() {
    let pair = Pair::start_seeded(300).await;
    let line = format!(
        "127.0.0.1:{}:app:postgres:{SUPERUSER_PASSWORD}\n",
        pair.old.port
    );
    // On the target's server, readable by its OS user only, as libpq requires.
    let on_target = pair.new.private_file("source.pgpass", &line);
    let for_target = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app passfile={}",
        pair.old.port,
        on_target.display()
    );
    let mut env = pair.env();
    env.push(("CUTOVER_SOURCE_FOR_TARGET".into(), for_target));
    let run = cutover(&["db", "sync"], &env).await.ok();
    assert!(run.stdout.contains("tables: 2/2 ready"), "{}", run.stdout);

    let new = pair.new.connect("app").await;
    let conninfo: String = new
        .query_one("SELECT subconninfo FROM pg_subscription", &[])
        .await
        .unwrap()
        .get(0);
    assert!(conninfo.contains("passfile="), "{conninfo}");
    assert_no_secrets(&conninfo);
    assert_no_secrets(&pair.old.log());
    assert_no_secrets(&pair.new.log());
    let copied: i64 = new
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, 300);

    // The controller's own connection from a passfile (here the same file, which
    // this process can read): no password in the DSN at all.
    let own = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app passfile={}",
        pair.old.port,
        on_target.display()
    );
    let mut env = pair.env();
    env.retain(|(k, _)| k != "CUTOVER_SOURCE");
    env.push(("CUTOVER_SOURCE".into(), own));
    let status = cutover(&["db", "status"], &env).await.ok();
    assert!(
        status.stdout.contains("tables:  2/2 ready"),
        "{}",
        status.stdout
    );

    let mut env = pair.env();
    env.retain(|(k, _)| k != "CUTOVER_SOURCE");
    env.push((
        "CUTOVER_SOURCE".into(),
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=app passfile=/nonexistent/pgpass",
            pair.old.port
        ),
    ));
    let missing = cutover(&["db", "status"], &env).await;
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("passfile /nonexistent/pgpass"),
        "{}",
        missing.stderr
    );
}
