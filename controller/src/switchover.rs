//! The coordinated switchover, and the rollback that runs it the other way.
//!
//! Writes are held on every proxy, every write on the old writer is blocked by
//! triggers no session can lift (`block.rs`), a fence is read and the new writer
//! applies through it (`fence.rs`), the sequences move forward, a witness slot
//! proves no write got past the fence, and one transaction on the new writer drops
//! the subscription, opens its tables and records the fence: the point of no
//! return. Then the hold is released with writes on the new side. Until that
//! transaction commits, every failure undoes what was done (`undo.rs`): the old
//! writer takes writes again and the hold is released with writes where they
//! were. Held writes see a pause, never an error.

pub mod block;
pub mod fence;
mod fleet;
mod prepare;
mod roles;
mod run;
mod sequences;
mod undo;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::db::Db;
use crate::dsn::{Dsn, Side};
use crate::error::Error;
use crate::link::Link;
use crate::lock;
use crate::observe::{Observer, Phase};
use crate::proxy::Proxies;
use crate::verify::FenceCheck;

pub use block::Blocked;

/// How the switchover (or rollback) runs.
#[derive(Debug, Clone)]
pub struct SwitchoverOptions {
    /// Routes (a route name or one of its hosts; `*` for all) whose writes move.
    pub routes: Vec<String>,
    /// The proxies' backend name for the source's application.
    pub old_backend: String,
    /// The proxies' backend name for the target's application.
    pub new_backend: String,
    /// Refuse to start unless the heartbeat arrives within this.
    pub max_lag: Duration,
    /// The longest writes may be held. The proxies answer 503 by themselves after
    /// it; the controller aborts and undoes its work before.
    pub max_pause: Duration,
    /// Start replication the other way before writes are released.
    pub reverse: bool,
    /// How the source server reaches the target (for the reverse subscription),
    /// when that differs from `--target`.
    pub target_for_source: Option<Dsn>,
    /// How the target server reaches the source (for the forward subscription a
    /// rollback with `reverse` recreates), when that differs from `--source`.
    pub source_for_target: Option<Dsn>,
    /// Compare both sides as of the fence after the release (snapshots taken
    /// under the hold), by primary-key ranges.
    pub verify: bool,
}

impl Default for SwitchoverOptions {
    fn default() -> Self {
        SwitchoverOptions {
            routes: Vec::new(),
            old_backend: "old".into(),
            new_backend: "new".into(),
            max_lag: Duration::from_secs(5),
            max_pause: Duration::from_secs(10),
            reverse: false,
            target_for_source: None,
            source_for_target: None,
            verify: true,
        }
    }
}

/// One finished phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTiming {
    pub phase: Phase,
    pub step: &'static str,
    pub took_ms: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SwitchoverReport {
    /// `switchover` or `rollback`.
    pub operation: &'static str,
    /// The side writes left.
    pub from: Side,
    /// The side writes went to.
    pub to: Side,
    /// The backend name the proxies now send writes to.
    pub writes: String,
    pub phases: Vec<PhaseTiming>,
    /// From the first hold request to the last release acknowledged.
    pub write_pause_ms: f64,
    /// When the hold began and ended, in ms since the command started.
    pub hold_started_ms: f64,
    pub released_ms: f64,
    /// Held requests the proxies let go.
    pub released_requests: u64,
    /// The fence: the old writer's WAL position once every writer was blocked,
    /// which the new writer applied through before the point of no return.
    pub lsn: String,
    /// Sequences moved forward on the new writer.
    pub sequences: usize,
    pub blocked: Blocked,
    /// Tables of the new writer that took writes again (blocked since the sync,
    /// or since an earlier switchover).
    pub reopened: usize,
    /// The reverse link started, if any.
    pub reverse: Option<Link>,
    /// Both sides compared as of the fence, after the release.
    pub verify: Option<FenceCheck>,
    pub warnings: Vec<String>,
}

/// The protocol source → target, for the switchover and its recovery.
fn forward<'a>(
    src: &'a Db,
    tgt: &'a Db,
    name: &'a str,
    opts: &'a SwitchoverOptions,
) -> run::Plan<'a> {
    run::Plan {
        operation: "switchover",
        from: src,
        to: tgt,
        link: Link::forward(name),
        back: Link::reverse(name),
        name,
        from_backend: &opts.old_backend,
        to_backend: &opts.new_backend,
        back_conninfo: opts
            .target_for_source
            .as_ref()
            .unwrap_or(tgt.dsn())
            .secret_conninfo(),
    }
}

/// Runs `work` holding the one-controller lock on both databases (source first, so
/// two controllers never hold one side each). Session-level advisory locks stack,
/// so a plan run that holds them already keeps them after.
async fn locked<T>(
    src: &Db,
    tgt: &Db,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    lock::acquire(src).await?;
    if let Err(e) = lock::acquire(tgt).await {
        lock::release(src).await;
        return Err(e);
    }
    let out = work.await;
    lock::release(tgt).await;
    lock::release(src).await;
    out
}

/// Moves writes from the source to the target.
pub async fn switchover(
    src: &Db,
    tgt: &Db,
    proxies: &Proxies,
    name: &str,
    opts: &SwitchoverOptions,
    obs: &dyn Observer,
) -> Result<SwitchoverReport, Error> {
    locked(
        src,
        tgt,
        forward(src, tgt, name, opts).run(proxies, opts, obs),
    )
    .await
}

/// Moves writes back from the target to the source after a switchover with
/// `reverse`, through the same protocol; nothing written on the target is lost.
pub async fn rollback(
    src: &Db,
    tgt: &Db,
    proxies: &Proxies,
    name: &str,
    opts: &SwitchoverOptions,
    obs: &dyn Observer,
) -> Result<SwitchoverReport, Error> {
    let plan = run::Plan {
        operation: "rollback",
        from: tgt,
        to: src,
        link: Link::reverse(name),
        back: Link::forward(name),
        name,
        from_backend: &opts.new_backend,
        to_backend: &opts.old_backend,
        back_conninfo: opts
            .source_for_target
            .as_ref()
            .unwrap_or(src.dsn())
            .secret_conninfo(),
    };
    locked(src, tgt, plan.run(proxies, opts, obs)).await
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// The switchover had not passed its point of no return: undone, writes on the
    /// source. The detail says what was put back.
    Undone(String),
    /// It had: finished, writes on the target.
    Completed(String),
}

/// Finishes or undoes a switchover (source → target) that a stopped controller left
/// half done: the plan runner calls it on resume before anything else.
pub async fn recover(
    src: &Db,
    tgt: &Db,
    proxies: &Proxies,
    name: &str,
    opts: &SwitchoverOptions,
) -> Result<Recovery, Error> {
    locked(
        src,
        tgt,
        forward(src, tgt, name, opts).recover(proxies, opts),
    )
    .await
}

impl fmt::Display for SwitchoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} done: writes now go to {:?} ({} database)",
            self.operation, self.writes, self.to
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "  {:>2}. {:<40} {:>9.1} ms  {}",
                p.step,
                p.phase.describe(),
                p.took_ms,
                p.detail
            )?;
        }
        writeln!(
            f,
            "fence {} on the {} applied on the {}; {} sequence(s) moved forward",
            self.lsn, self.from, self.to, self.sequences
        )?;
        writeln!(
            f,
            "the {} refuses every write on {} table(s) until a rollback; the {} took writes again on {} table(s)",
            self.from, self.blocked.tables, self.to, self.reopened
        )?;
        for s in &self.blocked.sessions_ended {
            writeln!(f, "ended a session with a write in flight: {s}")?;
        }
        if let Some(l) = &self.reverse {
            let next = if self.operation == "rollback" {
                "another `cutover db switchover` can follow"
            } else {
                "`cutover db rollback` loses nothing"
            };
            writeln!(
                f,
                "replication {} runs {} → {}: {next}",
                l.name, l.publisher, l.subscriber
            )?;
        }
        if let Some(v) = &self.verify {
            writeln!(
                f,
                "verified at the fence: {} row(s) in {} table(s), {} range(s), {:.0} ms: {}",
                v.rows_checked,
                v.tables.len(),
                v.chunks,
                v.took_ms,
                if v.passed {
                    "both sides equal"
                } else {
                    "DIFFERENCES FOUND"
                }
            )?;
            for t in v.tables.iter().filter(|t| !t.check.passed) {
                writeln!(
                    f,
                    "  {}: {}",
                    t.check.table,
                    t.check.problem.as_deref().unwrap_or("differs")
                )?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        write!(
            f,
            "write pause: {:.0} ms ({} held request(s) released)",
            self.write_pause_ms, self.released_requests
        )
    }
}
