//! Copying keys as they are on the source now. One [`Copier`] owns one connection
//! to each side and is the only writer of the target.
//!
//! Per batch: `MEMORY USAGE` on the source says which keys are gone (deleted on
//! the target), small, or big. Small keys: `PTTL` and `DUMP` in one pipeline,
//! then `RESTORE key ABS-MS payload REPLACE ABSTTL` in one pipeline; a key whose
//! expiry passes before it is written is not written (and deleted on the target,
//! so an older copy does not outlive it). Big keys: by chunks of their own type
//! (`GETRANGE`, `HSCAN`, `SSCAN`, `ZSCAN`, `LRANGE`, `XRANGE`) into
//! `__cutover_tmp:KEY`, renamed over the key, then its expiry set; the source is
//! never asked for one huge `DUMP`. A big key changed during its chunked copy is
//! copied again: its keyspace notification (or the next verification pass) says so.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::CacheError;
use super::resp::{Cmd, Conn, Value};
use crate::dsn::Side;

/// How a copy works.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Keys per pipeline.
    pub batch: usize,
    /// Keys whose `MEMORY USAGE` is above this are copied by chunks.
    pub big_key_size: u64,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            batch: 1000,
            big_key_size: 8 << 20,
        }
    }
}

/// Elements (or bytes, for strings) per chunk of a big key.
const CHUNK_ELEMENTS: usize = 1000;
const CHUNK_BYTES: i64 = 1 << 20;

/// Counters of everything copied, shared with the status.
#[derive(Debug, Default)]
pub struct CopyStats {
    pub copied_keys: AtomicU64,
    pub copied_bytes: AtomicU64,
    pub skipped_expired: AtomicU64,
    pub deleted: AtomicU64,
    pub big_keys: AtomicU64,
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl CopyStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn error(&self, e: String) {
        Self::add(&self.errors, 1);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    pub fn snapshot(&self) -> CopyFigures {
        CopyFigures {
            copied_keys: self.copied_keys.load(Ordering::Relaxed),
            copied_bytes: self.copied_bytes.load(Ordering::Relaxed),
            skipped_expired: self.skipped_expired.load(Ordering::Relaxed),
            deleted: self.deleted.load(Ordering::Relaxed),
            big_keys: self.big_keys.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// [`CopyStats`] at one moment.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CopyFigures {
    pub copied_keys: u64,
    pub copied_bytes: u64,
    pub skipped_expired: u64,
    pub deleted: u64,
    pub big_keys: u64,
    /// Keys the target refused (say, out of memory): they stay different until a
    /// later copy succeeds, so the sync does not converge.
    pub errors: u64,
    pub last_error: Option<String>,
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The only writer of the target.
pub(super) struct Copier {
    pub src: Conn,
    pub dst: Conn,
    pub opts: CopyOptions,
}

impl Copier {
    /// Copies `keys` as they are on the source now. A key the target refuses is
    /// counted and its error kept (it does not stop the others); a lost connection
    /// is an error of the call.
    pub async fn copy(&mut self, keys: &[Vec<u8>], stats: &CopyStats) -> Result<(), CacheError> {
        for chunk in keys.chunks(self.opts.batch.max(1)) {
            self.copy_batch(chunk, stats).await?;
        }
        Ok(())
    }

    async fn copy_batch(&mut self, keys: &[Vec<u8>], stats: &CopyStats) -> Result<(), CacheError> {
        let sizes = self
            .src
            .pipeline(
                &keys
                    .iter()
                    .map(|k| Cmd::new("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").num(5))
                    .collect::<Vec<_>>(),
            )
            .await?;
        let mut small = Vec::new();
        let mut gone = Vec::new();
        let mut big = Vec::new();
        for (k, size) in keys.iter().zip(sizes) {
            match size {
                Value::Int(n) if n as u64 > self.opts.big_key_size => big.push(k),
                Value::Int(_) => small.push(k),
                Value::Error(e) => {
                    return Err(CacheError::Command {
                        side: Side::Source,
                        command: "MEMORY USAGE".into(),
                        reason: e,
                    });
                }
                _ => gone.push(k),
            }
        }
        let mut reads = Vec::with_capacity(small.len() * 2);
        for k in &small {
            reads.push(Cmd::new("PTTL").arg(k));
            reads.push(Cmd::new("DUMP").arg(k));
        }
        // The expiry is counted from before the read: the source applied PTTL
        // at some moment after this, so the copy never outlives the source's key.
        let before = now_ms();
        let replies = self.src.pipeline(&reads).await?;
        let mut writes = Vec::with_capacity(small.len() + gone.len());
        let mut written = Vec::new();
        let mut bytes = 0u64;
        for (k, pair) in small.iter().zip(replies.chunks(2)) {
            let (pttl, dump) = (&pair[0], &pair[1]);
            let (Some(pttl), Value::Bulk(payload)) = (pttl.int(), dump) else {
                gone.push(k);
                continue;
            };
            if pttl == -2 {
                gone.push(k);
                continue;
            }
            let expires = if pttl >= 0 { before + pttl } else { 0 };
            if pttl >= 0 && expires <= now_ms() + 1 {
                // It expires before it would be written: never resurrect it.
                CopyStats::add(&stats.skipped_expired, 1);
                gone.push(k);
                continue;
            }
            bytes += payload.len() as u64;
            let mut c = Cmd::new("RESTORE")
                .arg(k)
                .num(expires)
                .arg(payload)
                .arg("REPLACE");
            if expires > 0 {
                c = c.arg("ABSTTL");
            }
            writes.push(c);
            written.push(*k);
        }
        let restores = writes.len();
        for k in &gone {
            writes.push(Cmd::new("DEL").arg(k));
        }
        let answers = self.dst.pipeline(&writes).await?;
        let mut ok = 0u64;
        for (i, a) in answers.iter().enumerate() {
            if let Value::Error(e) = a {
                let what = if i < restores { "RESTORE" } else { "DEL" };
                stats.error(format!("the target refused {what}: {e}"));
            } else if i < restores {
                ok += 1;
            }
        }
        CopyStats::add(&stats.copied_keys, ok);
        CopyStats::add(&stats.copied_bytes, bytes);
        CopyStats::add(&stats.deleted, gone.len() as u64);
        for k in big {
            self.copy_big(k, stats).await?;
        }
        Ok(())
    }

    /// One big key by chunks of its own type; see the module's text.
    async fn copy_big(&mut self, key: &[u8], stats: &CopyStats) -> Result<(), CacheError> {
        let ty = self.src.ok(Cmd::new("TYPE").arg(key)).await?.text();
        let tmp = [b"__cutover_tmp:".as_slice(), key].concat();
        self.dst.ok(Cmd::new("DEL").arg(&tmp)).await?;
        let copied = match ty.as_str() {
            "none" => {
                self.dst.ok(Cmd::new("DEL").arg(key)).await?;
                CopyStats::add(&stats.deleted, 1);
                return Ok(());
            }
            "string" => self.big_string(key, &tmp).await?,
            "hash" | "set" | "zset" => self.big_scanned(key, &tmp, &ty).await?,
            "list" => self.big_list(key, &tmp).await?,
            "stream" => self.big_stream(key, &tmp).await?,
            // A module's type: only DUMP knows it.
            _ => {
                self.copy_small_by_dump(key, stats).await?;
                return Ok(());
            }
        };
        // From before the read, as for small keys.
        let before = now_ms();
        let pttl = self
            .src
            .ok(Cmd::new("PTTL").arg(key))
            .await?
            .int()
            .unwrap_or(-2);
        if pttl == -2 || (0..=1).contains(&pttl) {
            self.dst
                .pipeline(&[Cmd::new("DEL").arg(&tmp), Cmd::new("DEL").arg(key)])
                .await?;
            CopyStats::add(
                if pttl == -2 {
                    &stats.deleted
                } else {
                    &stats.skipped_expired
                },
                1,
            );
            return Ok(());
        }
        let mut finish = vec![Cmd::new("RENAME").arg(&tmp).arg(key)];
        if pttl > 0 {
            finish.push(Cmd::new("PEXPIREAT").arg(key).num(before + pttl));
        }
        for a in self.dst.pipeline(&finish).await? {
            if let Value::Error(e) = a {
                stats.error(format!(
                    "the target refused a big key's RENAME or PEXPIREAT: {e}"
                ));
                return Ok(());
            }
        }
        CopyStats::add(&stats.copied_keys, 1);
        CopyStats::add(&stats.big_keys, 1);
        CopyStats::add(&stats.copied_bytes, copied);
        Ok(())
    }

    async fn copy_small_by_dump(
        &mut self,
        key: &[u8],
        stats: &CopyStats,
    ) -> Result<(), CacheError> {
        let big = std::mem::replace(&mut self.opts.big_key_size, u64::MAX);
        let r = Box::pin(self.copy_batch(&[key.to_vec()], stats)).await;
        self.opts.big_key_size = big;
        r
    }

    /// Writes one chunk on the target; an error reply is an error of the copy.
    async fn write(&mut self, cmd: Cmd) -> Result<(), CacheError> {
        self.dst.ok(cmd).await.map(|_| ())
    }

    async fn big_string(&mut self, key: &[u8], tmp: &[u8]) -> Result<u64, CacheError> {
        let len = self
            .src
            .ok(Cmd::new("STRLEN").arg(key))
            .await?
            .int()
            .unwrap_or(0);
        let mut at = 0i64;
        while at < len {
            let part = self
                .src
                .ok(Cmd::new("GETRANGE")
                    .arg(key)
                    .num(at)
                    .num(at + CHUNK_BYTES - 1))
                .await?;
            let bytes = part.bytes().unwrap_or_default().to_vec();
            if bytes.is_empty() {
                break;
            }
            at += bytes.len() as i64;
            self.write(Cmd::new("APPEND").arg(tmp).arg(&bytes)).await?;
        }
        Ok(at as u64)
    }

    /// Hashes, sets and sorted sets, by their SCAN commands.
    async fn big_scanned(&mut self, key: &[u8], tmp: &[u8], ty: &str) -> Result<u64, CacheError> {
        let (scan, add) = match ty {
            "hash" => ("HSCAN", "HSET"),
            "set" => ("SSCAN", "SADD"),
            _ => ("ZSCAN", "ZADD"),
        };
        let mut cursor = b"0".to_vec();
        let mut bytes = 0u64;
        loop {
            let reply = self
                .src
                .ok(Cmd::new(scan)
                    .arg(key)
                    .arg(&cursor)
                    .arg("COUNT")
                    .num(CHUNK_ELEMENTS))
                .await?
                .array();
            let mut parts = reply.into_iter();
            let next = parts.next().and_then(|c| c.bytes().map(<[u8]>::to_vec));
            let items = parts.next().map(Value::array).unwrap_or_default();
            if !items.is_empty() {
                let mut c = Cmd::new(add).arg(tmp);
                if ty == "zset" {
                    // ZSCAN gives member, score; ZADD takes score, member.
                    for pair in items.chunks(2) {
                        if let [m, s] = pair {
                            bytes += (m.bytes().map_or(0, <[u8]>::len) + 8) as u64;
                            c = c
                                .arg(s.bytes().unwrap_or_default())
                                .arg(m.bytes().unwrap_or_default());
                        }
                    }
                } else {
                    for item in &items {
                        let b = item.bytes().unwrap_or_default();
                        bytes += b.len() as u64;
                        c = c.arg(b);
                    }
                }
                self.write(c).await?;
            }
            match next {
                Some(n) if n != b"0" => cursor = n,
                _ => return Ok(bytes),
            }
        }
    }

    async fn big_list(&mut self, key: &[u8], tmp: &[u8]) -> Result<u64, CacheError> {
        let mut at = 0usize;
        let mut bytes = 0u64;
        loop {
            let items = self
                .src
                .ok(Cmd::new("LRANGE")
                    .arg(key)
                    .num(at)
                    .num(at + CHUNK_ELEMENTS - 1))
                .await?
                .array();
            if items.is_empty() {
                return Ok(bytes);
            }
            at += items.len();
            let mut c = Cmd::new("RPUSH").arg(tmp);
            for item in &items {
                let b = item.bytes().unwrap_or_default();
                bytes += b.len() as u64;
                c = c.arg(b);
            }
            self.write(c).await?;
        }
    }

    /// Entries by `XRANGE`, then the last ID and the consumer groups (their
    /// last-delivered IDs; pending entries lists are not copied).
    async fn big_stream(&mut self, key: &[u8], tmp: &[u8]) -> Result<u64, CacheError> {
        let mut start = b"-".to_vec();
        let mut bytes = 0u64;
        loop {
            let entries = self
                .src
                .ok(Cmd::new("XRANGE")
                    .arg(key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .num(CHUNK_ELEMENTS))
                .await?
                .array();
            if entries.is_empty() {
                break;
            }
            let mut adds = Vec::with_capacity(entries.len());
            let mut last = Vec::new();
            for e in entries {
                let mut e = e.array().into_iter();
                let id = e
                    .next()
                    .and_then(|v| v.bytes().map(<[u8]>::to_vec))
                    .unwrap_or_default();
                let fields = e.next().map(Value::array).unwrap_or_default();
                let mut c = Cmd::new("XADD").arg(tmp).arg(&id);
                for f in &fields {
                    let b = f.bytes().unwrap_or_default();
                    bytes += b.len() as u64;
                    c = c.arg(b);
                }
                adds.push(c);
                last = id;
            }
            for a in self.dst.pipeline(&adds).await? {
                if let Value::Error(e) = a {
                    return Err(CacheError::Command {
                        side: Side::Target,
                        command: "XADD".into(),
                        reason: e,
                    });
                }
            }
            start = [b"(".as_slice(), &last].concat();
        }
        let info = self
            .src
            .ok(Cmd::new("XINFO").arg("STREAM").arg(key))
            .await?
            .array();
        if let Some(id) = field(&info, "last-generated-id") {
            let _ = self
                .dst
                .call(
                    Cmd::new("XSETID")
                        .arg(tmp)
                        .arg(id.bytes().unwrap_or_default()),
                )
                .await?;
        }
        let groups = self
            .src
            .ok(Cmd::new("XINFO").arg("GROUPS").arg(key))
            .await?
            .array();
        for g in groups {
            let g = g.array();
            if let (Some(name), Some(id)) = (field(&g, "name"), field(&g, "last-delivered-id")) {
                self.write(
                    Cmd::new("XGROUP")
                        .arg("CREATE")
                        .arg(tmp)
                        .arg(name.bytes().unwrap_or_default())
                        .arg(id.bytes().unwrap_or_default()),
                )
                .await?;
            }
        }
        Ok(bytes)
    }
}

/// The value after `name` in a flat field/value reply.
fn field<'a>(flat: &'a [Value], name: &str) -> Option<&'a Value> {
    flat.chunks(2)
        .find(|p| p[0].bytes() == Some(name.as_bytes()))
        .and_then(|p| p.get(1))
}
