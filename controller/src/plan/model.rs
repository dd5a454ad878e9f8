//! The plan file and its reading. A plan is read the way the proxy reads its
//! config (`cutover-config`'s validator): the TOML is parsed into its spanned
//! tree, then every field is checked and every problem collected, so that one run
//! shows them all, each as `FILE:LINE:COL: FIELD.PATH: what is wrong; how to fix
//! it`, before anything is touched. Unknown keys are errors that name the nearest
//! known key.
//!
//! This file owns the plan's types; `read` knows the plan's fields and rules,
//! `check` knows TOML's shapes and where each value is.
//!
//! Secrets stay out of the plan where possible: DSNs and the admin token may come
//! from environment variables or files, and a DSN is never shown with its password.

mod check;
mod read;

use std::path::{Path, PathBuf};
use std::time::Duration;

use self::check::Checker;
use super::discover::ProxySource;
use super::gate::Gate;
use crate::dsn::Dsn;
use crate::error::Error;
use crate::secrets::SecretsPlan;

/// Where the admin bearer token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    None,
    File(PathBuf),
    Env(String),
}

impl TokenSource {
    /// Reads the token now (a mounted Secret may rotate between runs).
    pub fn read(&self) -> Result<Option<String>, Error> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::File(p) => std::fs::read_to_string(p)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|source| Error::TokenFile {
                    path: p.display().to_string(),
                    source,
                }),
            TokenSource::Env(v) => match std::env::var(v) {
                Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
                _ => Err(Error::Plan(format!(
                    "proxies.token_env: the environment variable {v} is not set"
                ))),
            },
        }
    }
}

/// An app's database pair.
#[derive(Clone)]
pub struct Database {
    pub source: Dsn,
    pub target: Dsn,
    pub source_for_target: Option<Dsn>,
    pub target_for_source: Option<Dsn>,
    /// The replication name.
    pub replication: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("source", &self.source.redacted())
            .field("target", &self.target.redacted())
            .field("replication", &self.replication)
            .finish()
    }
}

/// One application.
#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    /// A Host its route lists (the admin API accepts any of them).
    pub route: String,
    /// The proxies' backend names for the two clusters.
    pub old: String,
    pub new: String,
    pub database: Option<Database>,
    pub cache: Option<CachePlan>,
}

/// An app's cache (`[apps.cache]`): copied and followed (`sync`), or only watched
/// warming up (`warm`). Either way the step that takes new to 100% waits for it.
#[derive(Debug, Clone)]
pub struct CachePlan {
    pub source: crate::cache::RedisUrl,
    pub target: crate::cache::RedisUrl,
    pub mode: CacheMode,
    /// `warm`: the new cache's hit ratio (`INFO stats`, since the run started)
    /// that the step to 100% waits for.
    pub hit_ratio: f64,
    /// How long the step to 100% waits for convergence (or the hit ratio) before
    /// it fails like a gate and the weights go back.
    pub wait: Duration,
    /// Turn on the source's keyspace notifications when they are off.
    pub enable_notifications: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Sync,
    Warm,
}

/// One traffic step.
#[derive(Debug, Clone)]
pub struct Step {
    /// The new side's share in percent (the old side gets the rest).
    pub new_percent: f64,
    pub bake: Duration,
    pub gates: Vec<Gate>,
}

impl Step {
    /// e.g. "step 2 (new 50%)".
    pub fn label(&self, index: usize) -> String {
        format!(
            "step {} (new {}%)",
            index + 1,
            fmt_percent(self.new_percent)
        )
    }
}

/// `50` → "50", `12.5` → "12.5".
pub fn fmt_percent(p: f64) -> String {
    let s = format!("{p:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub proxies: ProxySource,
    pub token: TokenSource,
    pub apps: Vec<App>,
    pub steps: Vec<Step>,
    pub max_lag: Duration,
    pub max_pause: Duration,
    pub reverse: bool,
    pub drain_timeout: Duration,
    /// Drop every replication slot, publication and subscription of the plan's
    /// databases once finalize has drained the old side (the default). With
    /// `false` the reverse replication keeps running, and keeps its WAL, until
    /// `cutover db cleanup`.
    pub retire_replication: bool,
    pub secrets: Option<SecretsPlan>,
    /// `[users] timeline`: cutover-load's timeline, which the `users_*` gates read
    /// (relative to the plan's directory).
    pub users_timeline: Option<PathBuf>,
}

impl Plan {
    /// Reads and checks the plan at `path`.
    pub fn load(path: &Path) -> Result<Plan, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Plan(format!("cannot read the plan {}: {e}", path.display())))?;
        Plan::parse(&text, path)
    }

    /// Parses plan text; `path` names the file in errors and is kept for the
    /// default state file location. The error lists every problem found.
    pub fn parse(text: &str, path: &Path) -> Result<Plan, Error> {
        let file = path.display().to_string();
        let mut c = Checker::new(&file, text);
        match read::plan(&mut c, text, path) {
            Some(plan) if c.is_clean() => Ok(plan),
            _ => Err(c.into_error()),
        }
    }

    /// The apps with a database, in plan order (the switchover order).
    pub fn databases(&self) -> impl Iterator<Item = (&App, &Database)> {
        self.apps
            .iter()
            .filter_map(|a| a.database.as_ref().map(|d| (a, d)))
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
