//! An independent check of what two servers hold, that does not trust
//! `cutover cache verify`: every key read back by type (`GET`, `HGETALL`,
//! `LRANGE`, `SMEMBERS`, `ZRANGE … WITHSCORES`, `XRANGE`) and compared as data,
//! and every key's `PTTL` compared within a tolerance, read from both sides in
//! the same small batch so that the time between the two reads stays far below it.

use std::collections::{BTreeMap, BTreeSet};

use cutover_tests::{Cmd, RedisConn, RedisServer, Resp};

/// A key's value, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    String(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    List(Vec<Vec<u8>>),
    Set(BTreeSet<Vec<u8>>),
    /// Members in rank order with their scores as Redis prints them.
    ZSet(Vec<(Vec<u8>, String)>),
    /// Entries with their IDs, in order.
    Stream(Vec<(String, Vec<Vec<u8>>)>),
}

impl Data {
    /// A short description for failure messages (the big key is 50 MB).
    fn describe(&self) -> String {
        let (kind, len) = match self {
            Data::String(v) => ("string", v.len()),
            Data::Hash(v) => ("hash", v.len()),
            Data::List(v) => ("list", v.len()),
            Data::Set(v) => ("set", v.len()),
            Data::ZSet(v) => ("zset", v.len()),
            Data::Stream(v) => ("stream", v.len()),
        };
        let full = format!("{self:?}");
        if full.len() <= 200 {
            full
        } else {
            format!("{kind} of {len}")
        }
    }
}

fn bulks(r: Resp) -> Vec<Vec<u8>> {
    r.ok().array().iter().filter_map(Resp::bytes).collect()
}

fn pairs(r: Resp) -> Vec<(Vec<u8>, Vec<u8>)> {
    let flat = bulks(r);
    flat.chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

/// The command that reads a key of type `kind` whole.
fn read_cmd(kind: &str, key: &[u8]) -> Cmd {
    match kind {
        "string" => Cmd::new("GET").arg(key),
        "hash" => Cmd::new("HGETALL").arg(key),
        "list" => Cmd::new("LRANGE").arg(key).args(["0", "-1"]),
        "set" => Cmd::new("SMEMBERS").arg(key),
        "zset" => Cmd::new("ZRANGE").arg(key).args(["0", "-1", "WITHSCORES"]),
        "stream" => Cmd::new("XRANGE").arg(key).args(["-", "+"]),
        other => panic!("unexpected key type {other}"),
    }
}

fn parse(kind: &str, reply: Resp) -> Option<Data> {
    if reply == Resp::Nil {
        return None;
    }
    Some(match kind {
        "string" => Data::String(reply.ok().bytes()?),
        "hash" => Data::Hash(pairs(reply).into_iter().collect()),
        "list" => Data::List(bulks(reply)),
        "set" => Data::Set(bulks(reply).into_iter().collect()),
        "zset" => Data::ZSet(
            pairs(reply)
                .into_iter()
                .map(|(m, s)| (m, String::from_utf8_lossy(&s).into_owned()))
                .collect(),
        ),
        "stream" => Data::Stream(
            reply
                .ok()
                .array()
                .into_iter()
                .map(|entry| {
                    let mut it = entry.array().into_iter();
                    let id = it.next().and_then(|i| i.text()).expect("an entry ID");
                    (id, it.next().map(bulks).unwrap_or_default())
                })
                .collect(),
        ),
        _ => return None,
    })
}

/// Every key on the server and its value. Keys that vanish between the reads
/// (expired or deleted) are left out.
pub fn snapshot(conn: &mut RedisConn) -> BTreeMap<Vec<u8>, Data> {
    let keys = conn.keys();
    let types: Vec<String> = conn
        .pipeline_ok(
            &keys
                .iter()
                .map(|k| Cmd::new("TYPE").arg(k))
                .collect::<Vec<_>>(),
        )
        .iter()
        .map(|t| t.text().unwrap_or_default())
        .collect();
    let (keys, types): (Vec<_>, Vec<_>) = keys
        .into_iter()
        .zip(types)
        .filter(|(_, t)| t != "none")
        .unzip();
    let reads: Vec<Cmd> = keys
        .iter()
        .zip(&types)
        .map(|(k, t)| read_cmd(t, k))
        .collect();
    let values = conn.pipeline(&reads);
    keys.into_iter()
        .zip(types.iter().zip(values))
        .filter_map(|(k, (t, v))| parse(t, v).map(|d| (k, d)))
        .collect()
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// The differences between two servers' data, at most `limit` of them described.
pub fn data_differences(source: &RedisServer, target: &RedisServer, limit: usize) -> Vec<String> {
    let src = snapshot(&mut source.conn());
    let dst = snapshot(&mut target.conn());
    let mut out = Vec::new();
    for (k, v) in &src {
        match dst.get(k) {
            None => out.push(format!("{} missing on the target", show(k))),
            Some(w) if w != v => out.push(format!(
                "{}: source {} but target {}",
                show(k),
                v.describe(),
                w.describe()
            )),
            Some(_) => {}
        }
    }
    for k in dst.keys().filter(|k| !src.contains_key(*k)) {
        out.push(format!("{} only on the target", show(k)));
    }
    out.truncate(limit);
    out
}

/// Keys whose TTLs differ by more than `tolerance_ms` (or where one side has a
/// TTL and the other none), at most `limit` of them described.
pub fn ttl_differences(
    source: &RedisServer,
    target: &RedisServer,
    tolerance_ms: i64,
    limit: usize,
) -> Vec<String> {
    let mut src = source.conn();
    let mut dst = target.conn();
    let keys = src.keys();
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let cmds: Vec<Cmd> = chunk.iter().map(|k| Cmd::new("PTTL").arg(k)).collect();
        let a = src.pipeline_ok(&cmds);
        let b = dst.pipeline_ok(&cmds);
        for ((k, a), b) in chunk.iter().zip(a).zip(b) {
            let (a, b) = (a.int(), b.int());
            let same = match (a, b) {
                // Gone from the source since `SCAN`: nothing to compare.
                (-2, _) => true,
                (-1, -1) => true,
                (a, b) if a >= 0 && b >= 0 => (a - b).abs() <= tolerance_ms,
                _ => false,
            };
            if !same {
                out.push(format!("{}: PTTL source {a} target {b}", show(k)));
            }
        }
    }
    out.truncate(limit);
    out
}

/// The two servers hold the same keys, values and TTLs (within 1 s).
#[track_caller]
pub fn assert_same(source: &RedisServer, target: &RedisServer) {
    let data = data_differences(source, target, 20);
    assert!(data.is_empty(), "the target differs:\n{}", data.join("\n"));
    let ttls = ttl_differences(source, target, 1_000, 20);
    assert!(ttls.is_empty(), "TTLs differ:\n{}", ttls.join("\n"));
}
