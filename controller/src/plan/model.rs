//! The plan file: parsed with serde (unknown keys are errors, with line and column),
//! then checked as a whole, so that every problem names the file and the field
//! (`plan.toml: apps[2] (tasks).database: …`) before anything is touched.
//!
//! Secrets stay out of the plan where possible: DSNs and the admin token may come
//! from environment variables or files, and a DSN is never shown with its password.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::discover::{self, ProxySource};
use super::gate::Gate;
use crate::dsn::{Dsn, Side};
use crate::error::Error;
use crate::secrets::SecretsPlan;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: Option<String>,
    proxies: RawProxies,
    #[serde(default)]
    apps: Vec<RawApp>,
    #[serde(default)]
    steps: Vec<RawStep>,
    #[serde(default)]
    switchover: RawSwitchover,
    #[serde(default)]
    finalize: RawFinalize,
    secrets: Option<SecretsPlan>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxies {
    admin: Option<Vec<String>>,
    discover: Option<String>,
    #[serde(default)]
    nameservers: Vec<String>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    #[serde(default = "old")]
    old: String,
    #[serde(default = "new")]
    new: String,
}

fn old() -> String {
    "old".into()
}

fn new() -> String {
    "new".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    route: String,
    old: Option<String>,
    new: Option<String>,
    database: Option<RawDatabase>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    source: Option<String>,
    source_env: Option<String>,
    target: Option<String>,
    target_env: Option<String>,
    source_for_target: Option<String>,
    source_for_target_env: Option<String>,
    target_for_source: Option<String>,
    target_for_source_env: Option<String>,
    /// The replication name (publication, slot, subscription); default
    /// `cutover_{app}`.
    replication: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    weights: BTreeMap<String, f64>,
    bake: String,
    #[serde(default)]
    gates: Vec<Gate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwitchover {
    max_lag: Option<String>,
    max_pause: Option<String>,
    reverse: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFinalize {
    drain_timeout: Option<String>,
    retire_replication: Option<bool>,
}

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
}

impl Plan {
    /// Reads and checks the plan at `path`.
    pub fn load(path: &Path) -> Result<Plan, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Plan(format!("cannot read the plan {}: {e}", path.display())))?;
        Plan::parse(&text, path)
    }

    /// Parses plan text; `path` names the file in errors and is kept for the
    /// default state file location.
    pub fn parse(text: &str, path: &Path) -> Result<Plan, Error> {
        let file = path.display().to_string();
        let raw: RawPlan = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!(":{line}:{col}")
                })
                .unwrap_or_default();
            Error::Plan(format!("{file}{at}: {}", e.message()))
        })?;
        let bad = |field: String, reason: String| Error::Plan(format!("{file}: {field}: {reason}"));
        let name = match raw.name {
            Some(n) if !n.trim().is_empty() => n,
            _ => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plan".into()),
        };
        let proxies = proxy_source(&raw.proxies, &bad)?;
        let token = match (&raw.proxies.token_file, &raw.proxies.token_env) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "proxies".into(),
                    "give token_file or token_env, not both".into(),
                ));
            }
            (Some(f), None) => TokenSource::File(relative_to(path, f)),
            (None, Some(v)) => TokenSource::Env(v.clone()),
            (None, None) => TokenSource::None,
        };
        if raw.apps.is_empty() {
            return Err(bad(
                "apps".into(),
                "the plan names no [[apps]]; give each application's route".into(),
            ));
        }
        let mut apps = Vec::new();
        let mut seen = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for (i, a) in raw.apps.iter().enumerate() {
            let at = format!("apps[{i}] ({})", a.name);
            if a.name.trim().is_empty() {
                return Err(bad(format!("apps[{i}].name"), "must not be empty".into()));
            }
            if !seen.0.insert(a.name.clone()) {
                return Err(bad(
                    format!("{at}.name"),
                    "another app has this name".into(),
                ));
            }
            if a.route.trim().is_empty() || a.route.contains('/') {
                return Err(bad(
                    format!("{at}.route"),
                    format!("{:?} is not a Host (e.g. shop.example.com)", a.route),
                ));
            }
            if !seen.1.insert(a.route.to_ascii_lowercase()) {
                return Err(bad(
                    format!("{at}.route"),
                    "another app has this route".into(),
                ));
            }
            let database = match &a.database {
                None => None,
                Some(d) => {
                    let db = database(d, &a.name, &format!("{at}.database"), &bad)?;
                    if !seen.2.insert(db.replication.clone()) {
                        return Err(bad(
                            format!("{at}.database.replication"),
                            format!("{:?} is used by another app", db.replication),
                        ));
                    }
                    Some(db)
                }
            };
            apps.push(App {
                name: a.name.clone(),
                route: a.route.to_ascii_lowercase(),
                old: a.old.clone().unwrap_or_else(|| raw.proxies.old.clone()),
                new: a.new.clone().unwrap_or_else(|| raw.proxies.new.clone()),
                database,
            });
        }
        let mut steps = Vec::new();
        for (i, s) in raw.steps.iter().enumerate() {
            steps.push(step(s, &format!("steps[{i}]"), &bad)?);
        }
        let dur = |field: &str, v: &Option<String>, default: Duration| -> Result<Duration, Error> {
            match v {
                None => Ok(default),
                Some(s) => humantime::parse_duration(s)
                    .map_err(|e| bad(field.into(), format!("{s:?}: {e} (e.g. 500ms, 5s, 2m)"))),
            }
        };
        Ok(Plan {
            name,
            path: path.to_path_buf(),
            sha256: sha256_hex(text.as_bytes()),
            proxies,
            token,
            apps,
            steps,
            max_lag: dur(
                "switchover.max_lag",
                &raw.switchover.max_lag,
                Duration::from_secs(5),
            )?,
            max_pause: dur(
                "switchover.max_pause",
                &raw.switchover.max_pause,
                Duration::from_secs(10),
            )?,
            reverse: raw.switchover.reverse.unwrap_or(true),
            drain_timeout: dur(
                "finalize.drain_timeout",
                &raw.finalize.drain_timeout,
                Duration::from_secs(300),
            )?,
            retire_replication: raw.finalize.retire_replication.unwrap_or(true),
            secrets: raw.secrets,
        })
    }

    /// The apps with a database, in plan order (the switchover order).
    pub fn databases(&self) -> impl Iterator<Item = (&App, &Database)> {
        self.apps
            .iter()
            .filter_map(|a| a.database.as_ref().map(|d| (a, d)))
    }
}

fn proxy_source(
    p: &RawProxies,
    bad: &dyn Fn(String, String) -> Error,
) -> Result<ProxySource, Error> {
    let mut nameservers = Vec::new();
    for (i, ns) in p.nameservers.iter().enumerate() {
        let addr: SocketAddr =
            ns.parse()
                .or_else(|_| format!("{ns}:53").parse())
                .map_err(|_| {
                    bad(
                        format!("proxies.nameservers[{i}]"),
                        format!("{ns:?} is not IP:PORT"),
                    )
                })?;
        nameservers.push(addr);
    }
    match (&p.admin, &p.discover) {
        (Some(_), Some(_)) => Err(bad(
            "proxies".into(),
            "give admin (a list of URLs) or discover (a DNS name), not both".into(),
        )),
        (None, None) => Err(bad(
            "proxies".into(),
            "give admin = [\"http://HOST:PORT\", …] or discover = \"NAME:PORT\"".into(),
        )),
        (Some(urls), None) if urls.is_empty() => Err(bad(
            "proxies.admin".into(),
            "the list is empty; give every replica's admin URL".into(),
        )),
        (Some(urls), None) => {
            // Checks each URL the way the switchover will use it.
            crate::proxy::Proxies::new(urls, None)
                .map_err(|e| bad("proxies.admin".into(), e.to_string()))?;
            Ok(ProxySource::Admin(urls.clone()))
        }
        (None, Some(d)) => discover::parse_discover(d, nameservers)
            .map_err(|e| bad("proxies.discover".into(), e.to_string())),
    }
}

fn database(
    d: &RawDatabase,
    app: &str,
    at: &str,
    bad: &dyn Fn(String, String) -> Error,
) -> Result<Database, Error> {
    let dsn = |side: Side,
               key: &str,
               inline: &Option<String>,
               env: &Option<String>,
               required: bool|
     -> Result<Option<Dsn>, Error> {
        let raw = match (inline, env) {
            (Some(_), Some(_)) => {
                return Err(bad(at.into(), format!("give {key} or {key}_env, not both")));
            }
            (Some(s), None) => s.clone(),
            (None, Some(v)) => std::env::var(v).map_err(|_| {
                bad(
                    format!("{at}.{key}_env"),
                    format!("the environment variable {v} is not set"),
                )
            })?,
            (None, None) if required => {
                return Err(bad(at.into(), format!("give {key} or {key}_env")));
            }
            (None, None) => return Ok(None),
        };
        Dsn::parse(side, &raw)
            .map(Some)
            .map_err(|e| bad(format!("{at}.{key}"), e.to_string()))
    };
    let source = dsn(Side::Source, "source", &d.source, &d.source_env, true)?;
    let target = dsn(Side::Target, "target", &d.target, &d.target_env, true)?;
    let (Some(source), Some(target)) = (source, target) else {
        return Err(bad(at.into(), "give source and target".into()));
    };
    let replication = match &d.replication {
        Some(r) => r.clone(),
        None => default_replication(app),
    };
    crate::cli::parse_name(&replication)
        .map_err(|e| bad(format!("{at}.replication"), format!("{replication:?}: {e}")))?;
    Ok(Database {
        source,
        target,
        source_for_target: dsn(
            Side::Source,
            "source_for_target",
            &d.source_for_target,
            &d.source_for_target_env,
            false,
        )?,
        target_for_source: dsn(
            Side::Target,
            "target_for_source",
            &d.target_for_source,
            &d.target_for_source_env,
            false,
        )?,
        replication,
    })
}

/// `cutover_{app}`, lowercased, other characters as `_`, at most 40 long.
fn default_replication(app: &str) -> String {
    let mut s: String = format!("cutover_{app}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(40);
    s
}

fn step(s: &RawStep, at: &str, bad: &dyn Fn(String, String) -> Error) -> Result<Step, Error> {
    for (k, v) in &s.weights {
        if k != "old" && k != "new" {
            return Err(bad(
                format!("{at}.weights.{k}"),
                "the weights name the two sides: old and new".into(),
            ));
        }
        if !(0.0..=100.0).contains(v) || (v * 100.0).fract().abs() > 1e-9 {
            return Err(bad(
                format!("{at}.weights.{k}"),
                format!("{v} must be a percent from 0 to 100 with at most two decimals"),
            ));
        }
    }
    let old = s.weights.get("old").copied();
    let new = s.weights.get("new").copied();
    let new_percent = match (old, new) {
        (None, None) => {
            return Err(bad(
                format!("{at}.weights"),
                "give { old = …, new = … }".into(),
            ));
        }
        (Some(o), None) => 100.0 - o,
        (None, Some(n)) => n,
        (Some(o), Some(n)) => {
            if ((o + n) - 100.0).abs() > 1e-9 {
                return Err(bad(
                    format!("{at}.weights"),
                    format!("old {o} + new {n} must be 100"),
                ));
            }
            n
        }
    };
    let bake = humantime::parse_duration(&s.bake).map_err(|e| {
        bad(
            format!("{at}.bake"),
            format!("{:?}: {e} (e.g. 30s, 2m)", s.bake),
        )
    })?;
    Ok(Step {
        new_percent,
        bake,
        gates: s.gates.clone(),
    })
}

fn relative_to(plan: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    plan.parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
