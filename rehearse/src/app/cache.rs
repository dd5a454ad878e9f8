//! The weather app's cache, as a real app uses one: a forecast is read from Redis
//! first (`forecast:{city}`), computed and stored on a miss, and computed anyway
//! when Redis fails or is slow, so an outage of the cache costs speed, never an
//! answer. Every answer says which it was in `x-cache: hit | miss | error`, and the
//! site counts them.
//!
//! A few pooled connections, each used by one request at a time; a connection that
//! failed is dropped and made again on its next use, but not sooner than
//! [`RETRY_AFTER`] after the failure, so a dead Redis is not dialled on every
//! request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cutover_controller::Side;
use cutover_controller::cache::{Cmd, Conn, RedisUrl, Value};
use serde::Serialize;
use tokio::sync::Mutex;

/// Connections per app.
const POOL: usize = 4;
/// What one cache call may take before the app answers without it.
const TIMEOUT: Duration = Duration::from_millis(250);
/// How long a failed connection is left alone before it is made again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The key a city's forecast is cached under.
pub fn key(city: &str) -> String {
    format!("forecast:{city}")
}

/// How the cache answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    Error,
}

impl Lookup {
    pub fn header(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Error => "error",
        }
    }
}

/// The answers by how the cache served them.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
}

struct Slot {
    conn: Option<Conn>,
    failed_at: Option<Instant>,
}

/// One app's cache client.
pub struct Cache {
    url: RedisUrl,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

impl Cache {
    pub fn new(url: RedisUrl) -> Cache {
        Cache {
            url,
            slots: (0..POOL)
                .map(|_| {
                    Mutex::new(Slot {
                        conn: None,
                        failed_at: None,
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    pub fn counts(&self) -> CacheCounts {
        CacheCounts {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// The cached value of `key`, or `make()` stored under it: the value and how
    /// the cache served it.
    pub async fn get_or_set(&self, key: &str, make: impl FnOnce() -> String) -> (String, Lookup) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        let cached = tokio::time::timeout(TIMEOUT, self.get(&mut slot, key)).await;
        let (value, lookup) = match cached {
            Ok(Ok(Some(v))) => (v, Lookup::Hit),
            Ok(Ok(None)) => {
                let v = make();
                let set = Cmd::new("SET").arg(key).arg(&v);
                match tokio::time::timeout(TIMEOUT, self.call(&mut slot, set)).await {
                    Ok(Ok(_)) => (v, Lookup::Miss),
                    _ => {
                        fail(&mut slot);
                        (v, Lookup::Error)
                    }
                }
            }
            Ok(Err(())) | Err(_) => {
                fail(&mut slot);
                (make(), Lookup::Error)
            }
        };
        let counter = match lookup {
            Lookup::Hit => &self.hits,
            Lookup::Miss => &self.misses,
            Lookup::Error => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        (value, lookup)
    }

    async fn get(&self, slot: &mut Slot, key: &str) -> Result<Option<String>, ()> {
        match self.call(slot, Cmd::new("GET").arg(key)).await? {
            Value::Bulk(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            _ => Ok(None),
        }
    }

    /// One command on the slot's connection, made first if need be.
    async fn call(&self, slot: &mut Slot, cmd: Cmd) -> Result<Value, ()> {
        if slot.conn.is_none() {
            if slot.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
                return Err(());
            }
            slot.conn = Some(
                Conn::connect(&self.url, Side::Target)
                    .await
                    .map_err(|_| ())?,
            );
        }
        let conn = slot.conn.as_mut().ok_or(())?;
        match conn.call(cmd).await {
            Ok(Value::Error(_)) | Err(_) => Err(()),
            Ok(v) => Ok(v),
        }
    }
}

fn fail(slot: &mut Slot) {
    slot.conn = None;
    slot.failed_at = Some(Instant::now());
}
