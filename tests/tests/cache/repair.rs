//! Changes that no keyspace notification carries (writes to the target behind
//! `cutover`'s back, and a source write while the source's notifications are
//! off) are found and repaired by the periodic verification pass.

use std::time::Duration;

use cutover_tests::{RedisConn, RedisServer, Resp};

use crate::common::{Cutover, Rng, caught_up, cutover_bin, key, load_mixed, num};
use crate::compare::assert_same;

const EXTRA: &str = "extra:only-on-the-target";

/// The state the repairs must restore, read from one side.
fn watched(conn: &mut RedisConn) -> Vec<Resp> {
    vec![
        conn.cmd(&["GET", &key(0)]),
        conn.cmd(&["HGETALL", &key(1)]),
        conn.cmd(&["LRANGE", &key(2), "0", "-1"]),
        // PTTL of a key without one: -1 on both sides once repaired.
        conn.cmd(&["PTTL", &key(3)]),
        conn.cmd(&["GET", &key(6)]),
        conn.cmd(&["EXISTS", EXTRA]),
    ]
}

#[test]
fn a_lost_notification_is_repaired_by_the_verification_pass() {
    cutover_bin();
    let source = RedisServer::start_with(&["--notify-keyspace-events", "KA"]);
    let target = RedisServer::start();
    let mut src = source.conn();
    load_mixed(&mut src, 0..1_000, 4, 300_000..900_000, &mut Rng::new(3));
    // Every 2 s rather than 1 s: the pass that repairs stays `last_verify` for
    // at least 2 s, so one of the status file's once-a-second rewrites shows it.
    let mut sync = Cutover::sync(&source.url, &target.url, &["--verify-every", "2s"]);
    let before = sync.until_status(Duration::from_secs(60), "the first catch-up", caught_up);
    assert_eq!(watched(&mut target.conn()), watched(&mut src));

    let mut dst = target.conn();
    dst.cmd(&["SET", &key(0), "wrong"]).ok(); // a string, with a TTL on the source
    dst.cmd(&["DEL", &key(1)]).ok(); // a hash
    dst.cmd(&["RPUSH", &key(2), "stray"]).ok(); // a list
    dst.cmd(&["PEXPIRE", &key(3), "200000"]).ok(); // a set without TTL
    dst.cmd(&["SET", EXTRA, "x"]).ok();
    // A source write that makes no event.
    src.cmd(&["CONFIG", "SET", "notify-keyspace-events", ""])
        .ok();
    src.cmd(&["SET", &key(6), "changed-silently"]).ok();
    src.cmd(&["CONFIG", "SET", "notify-keyspace-events", "KA"])
        .ok();
    assert_ne!(watched(&mut dst), watched(&mut src));

    // Watch the data and the status together: the repairing pass's count is
    // only visible until the next pass.
    let mut repaired = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = sync
            .status()
            .and_then(|s| s["last_verify"]["repaired"].as_u64())
        {
            repaired = repaired.max(r);
        }
        if repaired >= 1 && watched(&mut dst) == watched(&mut src) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not repaired within 30 s (max last_verify.repaired seen: {repaired}):\n\
             source {:?}\ntarget {:?}\nstatus {:?}\nstderr:\n{}",
            watched(&mut src),
            watched(&mut dst),
            sync.status(),
            sync.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        dst.cmd(&["GET", &key(6)]).text().as_deref(),
        Some("changed-silently")
    );
    assert!(dst.cmd(&["PTTL", &key(0)]).int() > 0, "key 0 lost its TTL");

    let after = sync.until_status(Duration::from_secs(30), "converged again", caught_up);
    assert!(num(&after, "copied_keys") >= num(&before, "copied_keys"));
    sync.interrupt();
    sync.wait(Duration::from_secs(30)).ok();
    assert_same(&source, &target);
}
