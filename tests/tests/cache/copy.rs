//! The main case: a live source of 100,000 keys of every type plus one 50 MB
//! key, copied while a writer changes and deletes keys, followed until the
//! target has caught up, then stopped with Ctrl-C and compared key by key.

use std::time::{Duration, Instant};

use cutover_tests::{Cmd, RedisConn, RedisServer, Resp};

use crate::common::{
    Cutover, Rng, caught_up, create, cutover_bin, key, kind_of, load_mixed, num, verify_json,
};
use crate::compare::assert_same;

/// The big key: a hash of 50,000 fields of 1,000 bytes (about 50 MB). A hash,
/// because that is what a huge cache entry usually is (a session or a
/// per-tenant map), its fields come back in no order so a chunked copy has to
/// walk it with a cursor, and every field has its own content, so a chunk lost
/// or written twice shows as a wrong field count or value.
const BIG_KEY: &str = "big:hash";
const BIG_FIELDS: u64 = 50_000;
const BIG_VALUE: usize = 1_000;

const KEYS: u64 = 100_000;
/// Writer bounds: this many operations, for at most this long.
const WRITES: usize = 5_000;
const WRITING_FOR: Duration = Duration::from_secs(10);

fn load_big_hash(conn: &mut RedisConn, rng: &mut Rng) {
    // One pool of random text; each value is its field number plus a window of
    // the pool that depends on it, so values differ without 50 MB of RNG calls.
    let pool = rng.text(2 * BIG_VALUE);
    let value = |f: u64| {
        let at = (f as usize * 7) % BIG_VALUE;
        let mut v = format!("{f:08}:");
        v.push_str(&pool[at..at + BIG_VALUE - v.len()]);
        v
    };
    let cmds: Vec<Cmd> = (0..BIG_FIELDS)
        .collect::<Vec<_>>()
        .chunks(1_000)
        .map(|fields| {
            Cmd::new("HSET").arg(BIG_KEY).args(
                fields
                    .iter()
                    .flat_map(|&f| [format!("field:{f:06}"), value(f)]),
            )
        })
        .collect();
    conn.pipeline_ok(&cmds);
}

/// One operation of the writer on a random existing or new key, in a way that
/// keeps each key's type (see `kind_of`).
fn change(conn: &mut RedisConn, rng: &mut Rng) {
    // Up to 10% past the loaded keys: new keys.
    let i = rng.range(0, KEYS + KEYS / 10);
    let k = key(i);
    let roll = rng.range(0, 100);
    let cmd = match roll {
        0..45 => create(i, rng).swap_remove(0),
        45..50 => match kind_of(i) {
            "string" => Cmd::new("APPEND").arg(&k).arg(rng.text(4)),
            "hash" => Cmd::new("HDEL").arg(&k).arg("f0"),
            "list" => Cmd::new("LPOP").arg(&k),
            "set" => Cmd::new("SPOP").arg(&k),
            "zset" => Cmd::new("ZINCRBY").arg(&k).args(["1.5", "m1"]),
            _ => Cmd::new("XTRIM").arg(&k).args(["MAXLEN", "2"]),
        },
        50..55 => match kind_of(i) {
            "hash" => Cmd::new("HSET").arg(&k).arg("added").arg(rng.text(8)),
            "list" => Cmd::new("LPUSH").arg(&k).arg(rng.text(8)),
            "set" => Cmd::new("SADD").arg(&k).arg(rng.text(8)),
            "zset" => Cmd::new("ZADD").arg(&k).args(["7", "added"]),
            "stream" => Cmd::new("XADD").arg(&k).args(["*", "added", "1"]),
            _ => Cmd::new("INCRBY")
                .arg(format!("counter:{}", i % 50))
                .arg("3"),
        },
        55..72 => Cmd::new("DEL").arg(&k),
        72..87 => Cmd::new("EXPIRE")
            .arg(&k)
            .arg(rng.range(300, 900).to_string()),
        87..92 => Cmd::new("PERSIST").arg(&k),
        // Same type: 120,000 is a multiple of 6.
        92..97 => Cmd::new("RENAME").arg(&k).arg(key(i + 120_000)),
        _ => Cmd::new("HSET")
            .arg(BIG_KEY)
            .arg(format!("field:{:06}", rng.range(0, BIG_FIELDS + 100)))
            .arg(rng.text(BIG_VALUE)),
    };
    match conn.run(&cmd) {
        Resp::Error(e) if e.contains("no such key") => {}
        Resp::Error(e) => panic!("writer: {cmd:?}: {e}"),
        _ => {}
    }
}

#[test]
fn a_live_redis_of_every_type_is_copied_and_converges() {
    cutover_bin();
    let source = RedisServer::start_with(&["--notify-keyspace-events", "KA"]);
    let target = RedisServer::start();

    let loading = Instant::now();
    let mut conn = source.conn();
    let mut rng = Rng::new(0x5eed);
    // A third with TTLs long enough to outlive the test (so the comparison at
    // the end sees them), short enough to be real TTLs.
    load_mixed(&mut conn, 0..KEYS, 3, 300_000..900_000, &mut rng);
    load_big_hash(&mut conn, &mut rng);
    assert_eq!(source.cmd(&["DBSIZE"]).int(), KEYS as i64 + 1);
    let big = source.cmd(&["MEMORY", "USAGE", BIG_KEY]).int();
    assert!(big > 50_000_000, "the big key uses {big} bytes");
    eprintln!("loaded the source in {:?}", loading.elapsed());

    let mut sync = Cutover::sync(
        &source.url,
        &target.url,
        &["--verify-every", "1s", "--big-key-size", "8MB"],
    );
    // The writer starts with the copy and runs while it goes on.
    let writer = std::thread::spawn(move || {
        let mut rng = Rng::new(0xfeed);
        let until = Instant::now() + WRITING_FOR;
        let mut done = 0;
        while done < WRITES && Instant::now() < until {
            change(&mut conn, &mut rng);
            done += 1;
            // Spread over seconds rather than a burst: a pace, not a wait.
            std::thread::sleep(Duration::from_millis(1));
        }
        done
    });
    let mut phases = Vec::new();
    while !writer.is_finished() {
        let phase = sync
            .status()
            .and_then(|s| s["phase"].as_str().map(String::from));
        if let Some(p) = phase
            && phases.last() != Some(&p)
        {
            phases.push(p);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let writes = writer.join().unwrap();
    eprintln!("writer: {writes} operations; phases seen meanwhile: {phases:?}");
    assert!(
        writes >= 1_000,
        "the writer managed only {writes} operations"
    );

    let status = sync.until_status(
        Duration::from_secs(120),
        "converged with nothing pending",
        caught_up,
    );
    eprintln!("caught up: {status}");
    sync.interrupt();
    sync.wait(Duration::from_secs(30)).ok();

    let last = sync.status().expect("a status file");
    assert_eq!(last["phase"], "stopped", "{last}");
    assert_eq!(last["converged"], true, "{last}");
    assert!(num(&last, "big_keys") >= 1, "{last}");
    // Some keys were deleted by the writer before the copy reached them.
    assert!(num(&last, "copied_keys") >= 95_000, "{last}");
    assert!(num(&last, "copied_bytes") >= 40_000_000, "{last}");
    assert!(num(&last, "events") >= 1, "{last}");
    assert!(last["last_verify"].is_object(), "{last}");

    let (run, report) = verify_json(&source.url, &target.url);
    let run = run.ok();
    assert_eq!(report["converged"], true, "{}", run.stdout);
    for field in ["missing", "different", "extra"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    assert!(num(&report, "compared") >= 95_000, "{report}");

    assert_same(&source, &target);
}
