//! `cutover cache`: a live Redis copied into the new cluster's Redis, kept
//! following until the cutover, and a plain verdict on whether the copy has
//! converged.
//!
//! - [`copy`]: keys as they are on the source now, restored on the target with
//!   their absolute expiry (`DUMP`/`RESTORE … ABSTTL REPLACE`, pipelined in
//!   batches); a key that has expired, or is gone, is deleted on the target
//!   instead; a key larger than the big-key size is copied by type-aware chunks
//!   into a temporary key renamed over the real one.
//! - [`compare`]: a verification pass (presence, type, expiry within a tolerance,
//!   value) over every key or a sample, both ways, each difference checked twice
//!   so that a change in flight is not called one.
//! - [`follow`]: the sync: keyspace notifications subscribed before the initial
//!   copy, so every key changed during or after it is copied again; a periodic
//!   verification pass that re-copies what notifications missed; a status file.
//! - [`cli`]: `cutover cache sync|verify`.
//!
//! The target is written by one task only (the copier), so a repair can never
//! overwrite a newer copy with an older one: every difference a pass finds is
//! handed to the copier as a key to copy again, which reads the source afresh.

pub mod cli;
mod compare;
mod copy;
mod follow;
mod resp;
mod url;

pub use compare::{Tally, Verdict, verify};
pub use copy::{CopyOptions, CopyStats};
pub use follow::{FollowOptions, Status, SyncHandle, start_sync};
pub use resp::{Cmd, Conn, Value};
pub use url::RedisUrl;

use crate::dsn::Side;

/// What went wrong, naming the side and never a password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("cannot connect to the {side} Redis {url}: {reason}")]
    Connect {
        side: Side,
        url: String,
        reason: String,
    },
    #[error("the {side} Redis at {addr}: {reason}")]
    Io {
        side: Side,
        addr: String,
        reason: String,
    },
    #[error("the {side} Redis refused {command}: {reason}")]
    Command {
        side: Side,
        command: String,
        reason: String,
    },
    #[error(
        "the source Redis does not publish keyspace notifications (notify-keyspace-events is {current:?}; following needs K or E, and A): \
         set it with `CONFIG SET notify-keyspace-events KA` on the source (or notify-keyspace-events in its redis.conf), \
         or pass --enable-notifications to let cutover set it"
    )]
    Notifications { current: String },
    #[error("{0}")]
    Other(String),
}

/// The server's `keyspace_hits` and `keyspace_misses` (`INFO stats`): what the
/// warm-only mode judges a cache by.
pub async fn hit_stats(url: &RedisUrl) -> Result<(u64, u64), CacheError> {
    let mut conn = resp::Conn::connect(url, Side::Target).await?;
    let info = conn.ok(resp::Cmd::new("INFO").arg("stats")).await?.text();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((field("keyspace_hits"), field("keyspace_misses")))
}
