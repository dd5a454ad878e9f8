//! Following needs the source's keyspace notifications: without them `sync`
//! refuses before copying anything and names the setting and the flag; with
//! `--enable-notifications` it turns them on itself and follows.

use std::time::{Duration, Instant};

use cutover_tests::RedisServer;

use crate::common::{Cutover, Rng, caught_up, cutover_bin, key, load_mixed, until};
use crate::compare::assert_same;

/// `notify-keyspace-events` as the server reports it.
fn notify_flags(server: &RedisServer) -> String {
    let reply = server
        .cmd(&["CONFIG", "GET", "notify-keyspace-events"])
        .ok()
        .array();
    reply[1].text().unwrap_or_default()
}

/// Keyspace or keyevent events, for every kind of command: `K` or `E`, and `A`
/// (or the letters it stands for).
fn enough_to_follow(flags: &str) -> bool {
    let channel = flags.contains('K') || flags.contains('E');
    let all = flags.contains('A') || "g$lshzxetd".chars().all(|c| flags.contains(c));
    channel && all
}

#[test]
fn without_notifications_the_sync_refuses_to_follow_and_names_the_setting() {
    cutover_bin();
    let source = RedisServer::start();
    let target = RedisServer::start();
    load_mixed(
        &mut source.conn(),
        0..500,
        5,
        300_000..900_000,
        &mut Rng::new(4),
    );
    assert_eq!(notify_flags(&source), "");

    let started = Instant::now();
    let run = Cutover::sync(&source.url, &target.url, &[])
        .wait(Duration::from_secs(30))
        .fails();
    eprintln!("refused in {:?}", started.elapsed());
    assert!(
        run.stderr.contains("notify-keyspace-events"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--enable-notifications"),
        "{}",
        run.stderr
    );
    assert_eq!(
        target.cmd(&["DBSIZE"]).int(),
        0,
        "it copied before refusing"
    );
    assert_eq!(notify_flags(&source), "", "it changed the setting unasked");

    let mut sync = Cutover::sync(
        &source.url,
        &target.url,
        &["--enable-notifications", "--verify-every", "1s"],
    );
    sync.until_status(
        Duration::from_secs(60),
        "converged with nothing pending",
        caught_up,
    );
    let flags = notify_flags(&source);
    assert!(
        enough_to_follow(&flags),
        "notify-keyspace-events is {flags:?}"
    );
    // And it follows.
    source.cmd(&["SET", &key(0), "after-the-copy"]).ok();
    let mut t = target.conn();
    until(
        Duration::from_secs(15),
        "the new value on the target",
        || (t.cmd(&["GET", &key(0)]).text().as_deref() == Some("after-the-copy")).then_some(()),
    );
    sync.until_status(Duration::from_secs(30), "converged again", caught_up);
    sync.interrupt();
    sync.wait(Duration::from_secs(30)).ok();
    assert_same(&source, &target);
}
