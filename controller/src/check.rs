//! The preflight: everything that would make replication or the switchover fail, or
//! lose data, found before anything is created. Each finding names the object and
//! the fix. Blockers make `cutover db check` exit 1 and stop `sync`. The source's
//! and the target's own checks are in `source` and `target`; what the switchover's
//! write block must survive (on either side) is in `risks`; which platform each side
//! is (self-managed, or a managed service without a superuser), with the fixes worded
//! for it, in `platform`.

mod platform;
mod risks;
mod source;
mod target;

use std::fmt;

use serde::Serialize;

use crate::catalog::{self, Table};
use crate::db::Db;
use crate::dsn::Side;
use crate::error::Error;

pub use platform::Platform;
use platform::Server;

/// What the preflight may change to fix what it finds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Sets `REPLICA IDENTITY FULL` on tables that have neither a primary key nor
    /// another replica identity.
    pub fix_replica_identity: bool,
    /// Creates on the target the extensions the source has, when the target server
    /// has them available.
    pub fix_extensions: bool,
    /// Downgrades existing large objects from a blocker to a warning.
    pub allow_large_objects: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Blocker,
    Warning,
    Info,
}

/// One thing the preflight found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    pub side: Side,
    /// The object concerned, e.g. `table public.orders` or `setting wal_level`.
    pub object: String,
    pub problem: String,
    /// What to do about it; empty for information.
    pub fix: String,
}

/// The preflight's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub source: String,
    pub target: String,
    pub source_version: i32,
    pub target_version: i32,
    pub source_platform: Platform,
    pub target_platform: Platform,
    pub tables: usize,
    pub sequences: usize,
    pub findings: Vec<Finding>,
    /// Changes the fix flags made, one sentence each.
    pub fixed: Vec<String>,
}

impl CheckReport {
    pub fn blockers(&self) -> usize {
        self.count(Level::Blocker)
    }

    pub fn warnings(&self) -> usize {
        self.count(Level::Warning)
    }

    /// No blocker was found.
    pub fn passed(&self) -> bool {
        self.blockers() == 0
    }

    /// The blockers, two lines each: what is wrong where, and the fix.
    pub fn blocker_list(&self) -> String {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Blocker)
            .map(|f| {
                format!(
                    "  {} {}: {}\n    fix: {}",
                    f.side, f.object, f.problem, f.fix
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn count(&self, level: Level) -> usize {
        self.findings.iter().filter(|f| f.level == level).count()
    }
}

/// What both halves of the preflight share.
pub(crate) struct Ctx<'a> {
    pub src: &'a Db,
    pub tgt: &'a Db,
    pub name: &'a str,
    pub opts: CheckOptions,
    /// Each side's platform and the controller's role there, read once.
    pub servers: [Server; 2],
    pub tables: Vec<Table>,
    pub findings: Vec<Finding>,
    pub fixed: Vec<String>,
}

impl<'a> Ctx<'a> {
    pub fn db(&self, side: Side) -> &'a Db {
        match side {
            Side::Source => self.src,
            Side::Target => self.tgt,
        }
    }

    pub fn server(&self, side: Side) -> &Server {
        match side {
            Side::Source => &self.servers[0],
            Side::Target => &self.servers[1],
        }
    }

    pub fn add(&mut self, level: Level, side: Side, object: String, problem: String, fix: String) {
        self.findings.push(Finding {
            level,
            side,
            object,
            problem,
            fix,
        });
    }
}

/// Runs the preflight for replication `name` (default `cutover`).
pub async fn check(
    src: &Db,
    tgt: &Db,
    name: &str,
    opts: CheckOptions,
) -> Result<CheckReport, Error> {
    let tables = catalog::tables(src).await?;
    let sequences = catalog::sequences(src).await?.len();
    let servers = [Server::read(src).await?, Server::read(tgt).await?];
    let mut ctx = Ctx {
        src,
        tgt,
        name,
        opts,
        servers,
        tables,
        findings: Vec::new(),
        fixed: Vec::new(),
    };
    platform::report(&mut ctx);
    source::settings(&mut ctx).await?;
    source::tables(&mut ctx).await?;
    source::large_objects(&mut ctx).await?;
    source::permissions(&mut ctx).await?;
    target::settings(&mut ctx).await?;
    target::extensions(&mut ctx).await?;
    target::roles(&mut ctx).await?;
    target::permissions(&mut ctx).await?;
    target::contents(&mut ctx).await?;
    risks::prepared_transactions(&mut ctx, Side::Source).await?;
    risks::prepared_transactions(&mut ctx, Side::Target).await?;
    risks::trigger_privilege(&mut ctx, Side::Source).await?;
    risks::trigger_privilege(&mut ctx, Side::Target).await?;
    risks::lifters(&mut ctx).await?;
    risks::materialized_views(&mut ctx).await?;
    risks::other_controllers(&mut ctx).await?;
    risks::superuser_sessions(&mut ctx).await?;
    ctx.findings.sort_by_key(|f| f.level);
    Ok(CheckReport {
        source: src.dsn().redacted(),
        target: tgt.dsn().redacted(),
        source_version: src.version(),
        target_version: tgt.version(),
        source_platform: ctx.servers[0].platform,
        target_platform: ctx.servers[1].platform,
        tables: ctx.tables.len(),
        sequences,
        findings: ctx.findings,
        fixed: ctx.fixed,
    })
}

/// The first few names of a list.
pub(crate) fn preview(names: &[String]) -> String {
    let mut s = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(&format!(", and {} more", names.len() - 5));
    }
    s
}

/// `150018` → `15.18`.
pub fn version_text(num: i32) -> String {
    format!("{}.{}", num / 10000, num % 10000)
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "source: {} (PostgreSQL {})",
            self.source,
            version_text(self.source_version)
        )?;
        writeln!(
            f,
            "target: {} (PostgreSQL {})",
            self.target,
            version_text(self.target_version)
        )?;
        writeln!(
            f,
            "{} table(s), {} sequence(s) to migrate",
            self.tables, self.sequences
        )?;
        for fixed in &self.fixed {
            writeln!(f, "fixed    {fixed}")?;
        }
        for x in &self.findings {
            let level = match x.level {
                Level::Blocker => "BLOCKER",
                Level::Warning => "warning",
                Level::Info => "info",
            };
            writeln!(f, "{level:<8} {} {}: {}", x.side, x.object, x.problem)?;
            if !x.fix.is_empty() {
                writeln!(f, "         fix: {}", x.fix)?;
            }
        }
        if self.passed() {
            write!(f, "ready: no blockers, {} warning(s)", self.warnings())
        } else {
            write!(
                f,
                "not ready: {} blocker(s), {} warning(s)",
                self.blockers(),
                self.warnings()
            )
        }
    }
}
