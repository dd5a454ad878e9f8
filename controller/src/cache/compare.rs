//! The verification pass: every source key (or a sample) compared with the
//! target by presence, type, expiry (within a tolerance) and value, and every
//! target key looked for on the source (an extra key is one the source deleted, or
//! never had).
//!
//! Values: `DUMP` payloads that are equal are equal values. When they differ
//! (servers of different versions serialise the same value differently) the two
//! values are read and compared as what they are: a string's bytes, a hash's
//! pairs and a set's members sorted, a list and a sorted set in order, a stream's
//! entries. Keys above the big-key size are compared by type, expiry and length
//! only, which a chunked copy cannot keep byte-identical.
//!
//! A difference is checked again after a moment before it counts: with a live
//! writer, a key compared between its change and its copy is not a difference the
//! sync failed to repair.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;

use super::CacheError;
use super::copy::now_ms;
use super::resp::{Cmd, Conn, Value};
use super::url::RedisUrl;
use crate::dsn::Side;

/// How long a difference is given to resolve itself before it is checked again.
pub(super) const RECHECK_AFTER: Duration = Duration::from_millis(500);

/// What one pass found.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Tally {
    /// Source keys compared.
    pub compared: u64,
    /// On the source, not on the target.
    pub missing: u64,
    /// On both, with another type, expiry or value.
    pub different: u64,
    /// On the target, not on the source.
    pub extra: u64,
    /// Of those, how many were handed to the copier to copy again (sync only).
    pub repaired: u64,
    /// Whether every source key was compared (false: a sample).
    pub complete: bool,
    /// A few of the differing keys and why, for the report (never values).
    pub examples: Vec<String>,
    pub took_ms: u64,
}

impl Tally {
    pub fn differences(&self) -> u64 {
        self.missing + self.different + self.extra
    }
}

/// `cutover cache verify`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub source: String,
    pub target: String,
    #[serde(flatten)]
    pub tally: Tally,
    pub ttl_tolerance_ms: u64,
    pub converged: bool,
}

/// How a pass compares.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub batch: usize,
    pub big_key_size: u64,
    pub ttl_tolerance: Duration,
    /// Compare this many random keys each way instead of all (0: all).
    pub sample: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Diff {
    Missing,
    Different(&'static str),
    Extra,
}

/// A key's look on one side.
#[derive(Debug, Clone, PartialEq)]
struct Look {
    ty: String,
    /// Absolute expiry in ms, 0 for none.
    expires: i64,
    size: i64,
}

/// Compares the two sides once (without repairing anything): `cutover cache verify`.
pub async fn verify(
    source: &RedisUrl,
    target: &RedisUrl,
    opts: &CompareOptions,
) -> Result<Verdict, CacheError> {
    let mut pairs = connect_pairs(source, target, PASS_WORKERS).await?;
    let tally = pass(&mut pairs, opts, |_| {}).await?;
    Ok(Verdict {
        source: source.to_string(),
        target: target.to_string(),
        // A sample that found nothing converged as far as it looked; `complete`
        // says how far that was.
        converged: tally.differences() == 0,
        ttl_tolerance_ms: opts.ttl_tolerance.as_millis() as u64,
        tally,
    })
}

/// One pass; `found` gets each key that still differs on its second look.
pub(super) async fn pass(
    pairs: &mut [(Conn, Conn)],
    opts: &CompareOptions,
    mut found: impl FnMut(&[u8]),
) -> Result<Tally, CacheError> {
    let started = Instant::now();
    let mut tally = Tally {
        complete: opts.sample == 0,
        ..Tally::default()
    };
    let mut suspects: BTreeMap<Vec<u8>, Diff> = BTreeMap::new();
    // Source keys against the target, one batch per pair of connections at once.
    let mut source_keys = Keys::new(opts.sample, opts.batch);
    while let Some(round) = next_round(&mut source_keys, pairs, true).await? {
        let results = join_all(
            pairs
                .iter_mut()
                .zip(&round)
                .map(|((s, d), keys)| compare(s, d, keys, opts)),
        )
        .await;
        for (keys, r) in round.iter().zip(results) {
            tally.compared += keys.len() as u64;
            suspects.extend(r?);
        }
    }
    // Target keys the source lacks.
    let mut target_keys = Keys::new(opts.sample, opts.batch);
    while let Some(round) = next_round(&mut target_keys, pairs, false).await? {
        let results = join_all(pairs.iter_mut().zip(&round).map(|((s, _), keys)| {
            let cmds: Vec<Cmd> = keys.iter().map(|k| Cmd::new("EXISTS").arg(k)).collect();
            async move { s.pipeline(&cmds).await }
        }))
        .await;
        for (keys, there) in round.into_iter().zip(results) {
            for (k, e) in keys.into_iter().zip(there?) {
                if e.int() == Some(0) && !k.starts_with(b"__cutover_tmp:") {
                    suspects.insert(k, Diff::Extra);
                }
            }
        }
    }
    let (src, dst) = match pairs.first_mut() {
        Some((s, d)) => (s, d),
        None => return Err(CacheError::Other("no connections to compare with".into())),
    };
    if !suspects.is_empty() {
        tokio::time::sleep(RECHECK_AFTER).await;
        let keys: Vec<Vec<u8>> = suspects.keys().cloned().collect();
        let mut still: BTreeMap<Vec<u8>, Diff> = BTreeMap::new();
        for chunk in keys.chunks(opts.batch.max(1)) {
            for (k, d) in compare(src, dst, chunk, opts).await? {
                still.insert(k, d);
            }
        }
        for (k, d) in still {
            match d {
                Diff::Missing => tally.missing += 1,
                Diff::Different(_) => tally.different += 1,
                Diff::Extra => tally.extra += 1,
            }
            if tally.examples.len() < 10 {
                tally
                    .examples
                    .push(format!("{}: {}", printable(&k), d.describe()));
            }
            found(&k);
        }
    }
    tally.took_ms = started.elapsed().as_millis() as u64;
    Ok(tally)
}

/// Up to one batch of keys per pair of connections, scanned on the first pair's
/// source (`source`) or target connection; `None` when the scan is over.
async fn next_round(
    keys: &mut Keys,
    pairs: &mut [(Conn, Conn)],
    source: bool,
) -> Result<Option<Vec<Vec<Vec<u8>>>>, CacheError> {
    let mut round = Vec::new();
    while round.len() < pairs.len() {
        let conn = match pairs.first_mut() {
            Some((s, _)) if source => s,
            Some((_, d)) => d,
            None => break,
        };
        match keys.next(conn).await? {
            Some(batch) => round.push(batch),
            None => break,
        }
    }
    Ok((!round.is_empty()).then_some(round))
}

/// How many pairs of connections a pass compares over at once.
pub(super) const PASS_WORKERS: usize = 3;

/// `n` pairs of connections, source and target.
pub(super) async fn connect_pairs(
    source: &RedisUrl,
    target: &RedisUrl,
    n: usize,
) -> Result<Vec<(Conn, Conn)>, CacheError> {
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        pairs.push((
            Conn::connect(source, Side::Source).await?,
            Conn::connect(target, Side::Target).await?,
        ));
    }
    Ok(pairs)
}

impl Diff {
    fn describe(self) -> String {
        match self {
            Diff::Missing => "missing on the target".into(),
            Diff::Extra => "on the target only".into(),
            Diff::Different(what) => format!("different {what}"),
        }
    }
}

/// A key name for messages: as text when it is printable, else hex.
pub(super) fn printable(k: &[u8]) -> String {
    match std::str::from_utf8(k) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => {
            let s: String = s.chars().take(80).collect();
            format!("{s:?}")
        }
        _ => format!(
            "0x{}",
            k.iter()
                .take(40)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
    }
}

/// The keys of one side, by `SCAN` (all) or `RANDOMKEY` (a sample).
pub(super) struct Keys {
    cursor: Option<Vec<u8>>,
    sample_left: u64,
    sampling: bool,
    batch: usize,
}

impl Keys {
    pub(super) fn new(sample: u64, batch: usize) -> Keys {
        Keys {
            cursor: Some(b"0".to_vec()),
            sample_left: sample,
            sampling: sample > 0,
            batch: batch.max(1),
        }
    }

    pub(super) async fn next(
        &mut self,
        conn: &mut Conn,
    ) -> Result<Option<Vec<Vec<u8>>>, CacheError> {
        if self.sampling {
            if self.sample_left == 0 {
                return Ok(None);
            }
            let n = self.sample_left.min(self.batch as u64);
            self.sample_left -= n;
            let picks = conn
                .pipeline(&(0..n).map(|_| Cmd::new("RANDOMKEY")).collect::<Vec<_>>())
                .await?;
            let mut keys: Vec<Vec<u8>> = picks
                .into_iter()
                .filter_map(|v| v.bytes().map(<[u8]>::to_vec))
                .collect();
            keys.sort();
            keys.dedup();
            return Ok((!keys.is_empty()).then_some(keys));
        }
        loop {
            let Some(cursor) = self.cursor.take() else {
                return Ok(None);
            };
            let reply = conn
                .ok(Cmd::new("SCAN").arg(&cursor).arg("COUNT").num(self.batch))
                .await?
                .array();
            let mut parts = reply.into_iter();
            let next = parts.next().and_then(|c| c.bytes().map(<[u8]>::to_vec));
            let keys: Vec<Vec<u8>> = parts
                .next()
                .map(Value::array)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| v.bytes().map(<[u8]>::to_vec))
                .collect();
            self.cursor = next.filter(|n| n != b"0");
            if !keys.is_empty() {
                return Ok(Some(keys));
            }
        }
    }
}

/// The keys of `keys` that differ, and how.
async fn compare(
    src: &mut Conn,
    dst: &mut Conn,
    keys: &[Vec<u8>],
    opts: &CompareOptions,
) -> Result<Vec<(Vec<u8>, Diff)>, CacheError> {
    // Both sides at once: the same moment, and half the wait.
    let (a, b) = tokio::join!(looks(src, keys), looks(dst, keys));
    let (a, b) = (a?, b?);
    let tolerance = opts.ttl_tolerance.as_millis() as i64;
    let mut out = Vec::new();
    let mut by_value = Vec::new();
    for ((k, a), b) in keys.iter().zip(a).zip(b) {
        let d = match (a, b) {
            (None, None) => continue,
            (Some(_), None) => Diff::Missing,
            (None, Some(_)) => Diff::Extra,
            (Some(a), Some(b)) if a.ty != b.ty => Diff::Different("type"),
            (Some(a), Some(b))
                if (a.expires == 0) != (b.expires == 0)
                    || (a.expires - b.expires).abs() > tolerance =>
            {
                Diff::Different("expiry")
            }
            (Some(a), Some(b)) => {
                if a.size as u64 > opts.big_key_size || b.size as u64 > opts.big_key_size {
                    if length(src, k, &a.ty).await? != length(dst, k, &a.ty).await? {
                        out.push((k.clone(), Diff::Different("length")));
                    }
                } else {
                    by_value.push((k, a.ty));
                }
                continue;
            }
        };
        out.push((k.clone(), d));
    }
    // Values: DUMP first, the values themselves where the payloads differ.
    let dumps = |keys: &[(&Vec<u8>, String)]| {
        keys.iter()
            .map(|(k, _)| Cmd::new("DUMP").arg(k))
            .collect::<Vec<_>>()
    };
    let cmds = dumps(&by_value);
    let (x, y) = tokio::join!(src.pipeline(&cmds), dst.pipeline(&cmds));
    let (x, y) = (x?, y?);
    for ((k, ty), (x, y)) in by_value.iter().zip(x.into_iter().zip(y)) {
        if x == y {
            continue;
        }
        if value(src, k, ty).await? != value(dst, k, ty).await? {
            out.push(((*k).clone(), Diff::Different("value")));
        }
    }
    Ok(out)
}

/// TYPE, PTTL and MEMORY USAGE of each key; `None` where it does not exist.
async fn looks(conn: &mut Conn, keys: &[Vec<u8>]) -> Result<Vec<Option<Look>>, CacheError> {
    let mut cmds = Vec::with_capacity(keys.len() * 3);
    for k in keys {
        cmds.push(Cmd::new("TYPE").arg(k));
        cmds.push(Cmd::new("PTTL").arg(k));
        cmds.push(Cmd::new("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").num(5));
    }
    let now = now_ms();
    let replies = conn.pipeline(&cmds).await?;
    Ok(replies
        .chunks(3)
        .map(|r| {
            let ty = r[0].text();
            let pttl = r[1].int().unwrap_or(-2);
            if ty == "none" || pttl == -2 {
                return None;
            }
            Some(Look {
                ty,
                expires: if pttl >= 0 { now + pttl } else { 0 },
                size: r[2].int().unwrap_or(0),
            })
        })
        .collect())
}

/// A big key's length by its type.
async fn length(conn: &mut Conn, key: &[u8], ty: &str) -> Result<Option<i64>, CacheError> {
    let cmd = match ty {
        "string" => "STRLEN",
        "hash" => "HLEN",
        "list" => "LLEN",
        "set" => "SCARD",
        "zset" => "ZCARD",
        "stream" => "XLEN",
        _ => return Ok(None),
    };
    Ok(conn.call(Cmd::new(cmd).arg(key)).await?.int())
}

/// A small key's value, as comparable data.
async fn value(conn: &mut Conn, key: &[u8], ty: &str) -> Result<Value, CacheError> {
    let cmd = match ty {
        "string" => Cmd::new("GET").arg(key),
        "hash" => Cmd::new("HGETALL").arg(key),
        "list" => Cmd::new("LRANGE").arg(key).num(0).num(-1),
        "set" => Cmd::new("SMEMBERS").arg(key),
        "zset" => Cmd::new("ZRANGE").arg(key).num(0).num(-1).arg("WITHSCORES"),
        "stream" => Cmd::new("XRANGE").arg(key).arg("-").arg("+"),
        _ => Cmd::new("DUMP").arg(key),
    };
    let v = conn.call(cmd).await?;
    Ok(match (ty, v) {
        ("hash", Value::Array(items)) => {
            let mut pairs: Vec<Vec<Value>> = items.chunks(2).map(<[Value]>::to_vec).collect();
            pairs.sort_by(|a, b| a[0].bytes().cmp(&b[0].bytes()));
            Value::Array(pairs.into_iter().flatten().collect())
        }
        ("set", Value::Array(mut items)) => {
            items.sort_by(|a, b| a.bytes().cmp(&b.bytes()));
            Value::Array(items)
        }
        (_, v) => v,
    })
}
