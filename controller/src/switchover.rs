//! The coordinated switchover, and the rollback that runs it the other way.
//!
//! Writes are held on every proxy, the old side is made read-only for the
//! application roles, the subscriber catches up to the old side's last LSN, the
//! sequences are copied, the subscription is dropped, and the hold is released with
//! writes on the new side. Until the subscription is dropped every failure undoes
//! what was done: write access on the old side comes back and the hold is released
//! with writes where they were. Held writes see a pause, never an error.

mod fleet;
mod prepare;
mod roles;
mod run;
mod sequences;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::db::Db;
use crate::dsn::{Dsn, Side};
use crate::error::Error;
use crate::link::Link;
use crate::observe::{Observer, Phase};
use crate::proxy::Proxies;

pub use roles::Blocked;

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
    /// The old side's WAL position the new side caught up to.
    pub lsn: String,
    pub sequences: usize,
    pub blocked: Blocked,
    /// Roles whose write access was restored on the side writes went to (blocked
    /// there by an earlier switchover).
    pub reopened: Vec<String>,
    /// The reverse link started, if any.
    pub reverse: Option<Link>,
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

/// Moves writes from the source to the target: issue steps 1 to 9.
pub async fn switchover(
    src: &Db,
    tgt: &Db,
    proxies: &Proxies,
    name: &str,
    opts: &SwitchoverOptions,
    obs: &dyn Observer,
) -> Result<SwitchoverReport, Error> {
    forward(src, tgt, name, opts).run(proxies, opts, obs).await
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
    plan.run(proxies, opts, obs).await
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
    forward(src, tgt, name, opts).recover(proxies, opts).await
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
            "caught up to {} on the {}; {} sequence(s) copied",
            self.lsn, self.from, self.sequences
        )?;
        if !self.blocked.roles.is_empty() {
            writeln!(
                f,
                "the {} now rejects writes from: {}",
                self.from,
                self.blocked.roles.join(", ")
            )?;
        }
        if !self.reopened.is_empty() {
            writeln!(
                f,
                "the {} takes writes again from: {}",
                self.to,
                self.reopened.join(", ")
            )?;
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
