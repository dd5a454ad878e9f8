//! The plan's fields and rules: which keys each table holds, what each value must
//! be, and what depends on what (admin or discover, old and new distinct, names
//! unique across apps, weights adding up to 100). Each rule reports through the
//! [`Checker`] and goes on, so that one reading finds every problem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::check::{Checker, Node, Table, Text};
use super::{
    App, CacheMode, CachePlan, Database, Plan, Step, TokenSource, fmt_percent, sha256_hex,
};
use crate::cache::RedisUrl;
use crate::dsn::{Dsn, Side};
use crate::plan::discover::{self, ProxySource};
use crate::plan::gate::Gate;
use crate::secrets::SecretsPlan;

const ROOT_KEYS: &[&str] = &[
    "name",
    "proxies",
    "apps",
    "steps",
    "switchover",
    "finalize",
    "secrets",
    "users",
];
const PROXIES_KEYS: &[&str] = &[
    "admin",
    "discover",
    "nameservers",
    "token_file",
    "token_env",
    "old",
    "new",
];
pub(super) const APP_KEYS: &[&str] = &["name", "route", "old", "new", "database", "cache"];
const CACHE_KEYS: &[&str] = &[
    "source",
    "source_env",
    "target",
    "target_env",
    "mode",
    "hit_ratio",
    "wait",
    "enable_notifications",
];
const DATABASE_KEYS: &[&str] = &[
    "source",
    "source_env",
    "target",
    "target_env",
    "source_for_target",
    "source_for_target_env",
    "target_for_source",
    "target_for_source_env",
    "replication",
];
pub(super) const STEP_KEYS: &[&str] = &["weights", "bake", "gates"];
const SWITCHOVER_KEYS: &[&str] = &["max_lag", "max_pause", "reverse"];
const FINALIZE_KEYS: &[&str] = &["drain_timeout", "retire_replication"];
const USERS_KEYS: &[&str] = &["timeline"];

/// Reads every part of the plan into `c`'s list of problems; `None` when the text
/// is not TOML. Where a part is bad the plan holds a placeholder, so it is only
/// of use while the list stays empty.
pub(super) fn plan(c: &mut Checker<'_>, text: &str, path: &Path) -> Option<Plan> {
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            // A syntax error leaves nothing reliable to check further.
            c.err(e.span(), "", e.message().trim());
            return None;
        }
    };
    let root = c.root(&doc, ROOT_KEYS);
    let root = &root;
    let name = c
        .text(root, "name")
        .map(|n| n.value.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "plan".into(), |s| s.to_string_lossy().into_owned())
        });
    let proxies = match c.required(
        root,
        "proxies",
        "add a [proxies] table with admin = [\"http://HOST:PORT\"] or discover = \"NAME:PORT\"",
    ) {
        Some(node) => c
            .table(node, "proxies".into(), PROXIES_KEYS)
            .map(|t| proxies(c, &t, path)),
        None => None,
    }
    .unwrap_or_default();
    let apps = apps(c, root, &proxies);
    let users = c.section(root, "users", USERS_KEYS);
    let users_timeline = users.as_ref().and_then(|t| {
        let file = c.required_text(
            t,
            "timeline",
            "add timeline = \"FILE\", the file cutover-load --timeline FILE writes",
        )?;
        Some(relative_to(path, Path::new(file.value)))
    });
    let steps = c
        .tables(root, "steps", STEP_KEYS)
        .iter()
        .map(|t| step(c, t, users_timeline.is_some()))
        .collect();
    let switchover = c.section(root, "switchover", SWITCHOVER_KEYS);
    let finalize = c.section(root, "finalize", FINALIZE_KEYS);
    let mut duration = |t: &Option<Table<'_, '_>>, key: &str, default: u64| {
        t.as_ref()
            .and_then(|t| c.duration(t, key))
            .unwrap_or(Duration::from_secs(default))
    };
    let max_lag = duration(&switchover, "max_lag", 5);
    let max_pause = duration(&switchover, "max_pause", 10);
    let drain_timeout = duration(&finalize, "drain_timeout", 300);
    let reverse = switchover.as_ref().and_then(|t| c.boolean(t, "reverse"));
    let retire = finalize
        .as_ref()
        .and_then(|t| c.boolean(t, "retire_replication"));
    Some(Plan {
        name,
        path: path.to_path_buf(),
        sha256: sha256_hex(text.as_bytes()),
        proxies: proxies.source,
        token: proxies.token,
        apps,
        steps,
        max_lag,
        max_pause,
        reverse: reverse.unwrap_or(true),
        drain_timeout,
        retire_replication: retire.unwrap_or(true),
        secrets: secrets(c, root),
        users_timeline,
    })
}

/// `[proxies]`: how to reach the replicas, and the backend names of the two sides.
struct Proxies<'t> {
    source: ProxySource,
    token: TokenSource,
    old: Option<Text<'t>>,
    new: Option<Text<'t>>,
}

impl Default for Proxies<'_> {
    fn default() -> Self {
        Proxies {
            source: ProxySource::Admin(Vec::new()),
            token: TokenSource::None,
            old: None,
            new: None,
        }
    }
}

fn proxies<'t>(c: &mut Checker<'_>, t: &Table<'t, '_>, plan: &Path) -> Proxies<'t> {
    let mut nameservers = Vec::new();
    for ns in c.texts(t, "nameservers").unwrap_or_default() {
        let addr = ns.value.parse::<SocketAddr>();
        match addr.or_else(|_| format!("{}:53", ns.value).parse()) {
            Ok(a) => nameservers.push(a),
            Err(_) => c.err(
                Some(ns.span),
                ns.path,
                format!("{:?} is not IP:PORT; use e.g. \"10.96.0.10:53\"", ns.value),
            ),
        }
    }
    let token = match (c.text(t, "token_file"), c.text(t, "token_env")) {
        (Some(_), Some(env)) => {
            c.err(
                Some(env.span),
                env.path,
                "give token_file or token_env, not both; remove one",
            );
            TokenSource::None
        }
        (Some(f), None) => TokenSource::File(relative_to(plan, Path::new(f.value))),
        (None, Some(v)) => TokenSource::Env(v.value.to_string()),
        (None, None) => TokenSource::None,
    };
    let source = match (t.get("admin"), t.get("discover")) {
        (Some(_), Some(d)) => {
            c.err(
                Some(d.span()),
                t.field("discover"),
                "give admin (a list of URLs) or discover (a DNS name), not both; remove one",
            );
            None
        }
        (None, None) => {
            c.err(
                t.at(),
                t.path.clone(),
                "give admin = [\"http://HOST:PORT\", …] or discover = \"NAME:PORT\"",
            );
            None
        }
        (Some(_), None) => admin(c, t),
        (None, Some(_)) => c.text(t, "discover").and_then(|d| {
            // The message names `proxies.discover` and the value itself.
            discover::parse_discover(d.value, nameservers)
                .map_err(|e| c.err(Some(d.span), "", e.to_string()))
                .ok()
        }),
    };
    let old = backend(c, t, "old");
    let new = backend(c, t, "new");
    distinct_sides(c, old.as_ref(), new.as_ref(), new.as_ref().or(old.as_ref()));
    Proxies {
        source: source.unwrap_or(ProxySource::Admin(Vec::new())),
        token,
        old,
        new,
    }
}

/// `admin = [URL, …]`, each URL checked the way the switchover will use it.
fn admin(c: &mut Checker<'_>, t: &Table<'_, '_>) -> Option<ProxySource> {
    let urls = c.texts(t, "admin")?;
    if urls.is_empty() {
        let span = t.get("admin").map(Spanned::span);
        c.err(
            span,
            t.field("admin"),
            "the list is empty; give every replica's admin URL, e.g. [\"http://10.0.0.5:9901\"]",
        );
        return None;
    }
    let before = c.problems();
    for u in &urls {
        if let Err(e) = crate::proxy::Proxies::new(&[u.value.to_string()], None) {
            c.err(Some(u.span.clone()), u.path.clone(), e.to_string());
        }
    }
    let urls = urls.iter().map(|u| u.value.to_string()).collect();
    (c.problems() == before).then_some(ProxySource::Admin(urls))
}

/// A backend name the proxies' config gives a side.
fn backend<'t>(c: &mut Checker<'_>, t: &Table<'t, '_>, key: &str) -> Option<Text<'t>> {
    let b = c.text(t, key)?;
    if b.value.trim().is_empty() {
        let msg = "must not be empty; give the backend's name in the proxies' config";
        c.err(Some(b.span), b.path, msg);
        return None;
    }
    Some(b)
}

/// Reports old and new naming the same backend, at `own`: the key that made them
/// so (none when they come from elsewhere, which is checked there).
fn distinct_sides(
    c: &mut Checker<'_>,
    old: Option<&Text<'_>>,
    new: Option<&Text<'_>>,
    own: Option<&Text<'_>>,
) {
    let o = old.map_or("old", |b| b.value);
    let n = new.map_or("new", |b| b.value);
    if let Some(at) = own.filter(|_| o == n) {
        let msg = format!(
            "old and new are both the backend {o:?}; give each side its own backend, as the \
             proxies' config names them"
        );
        c.err(Some(at.span.clone()), at.path.clone(), msg);
    }
}

/// The app names, routes and replication names seen so far, each with the app
/// that has it.
#[derive(Default)]
struct Seen {
    names: BTreeMap<String, String>,
    routes: BTreeMap<String, String>,
    replications: BTreeMap<String, String>,
}

/// Records `key` for `owner`, or reports the app that already has it.
fn claim(
    c: &mut Checker<'_>,
    seen: &mut BTreeMap<String, String>,
    key: String,
    at: &Text<'_>,
    owner: &str,
    what: &str,
) {
    match seen.get(&key) {
        Some(first) => c.err(
            Some(at.span.clone()),
            at.path.clone(),
            format!("another app ({first}) has this {what}; give each app its own"),
        ),
        None => {
            seen.insert(key, owner.to_string());
        }
    }
}

fn apps(c: &mut Checker<'_>, root: &Table<'_, '_>, proxies: &Proxies<'_>) -> Vec<App> {
    let none = "the plan names no [[apps]]; add one per application, with its name and route";
    let Some(node) = root.get("apps") else {
        c.err(None, "apps", none);
        return Vec::new();
    };
    if matches!(node.get_ref(), DeValue::Array(a) if a.is_empty()) {
        c.err(Some(node.span()), "apps", none);
    }
    let mut seen = Seen::default();
    let tables = c.tables(root, "apps", APP_KEYS);
    tables
        .iter()
        .map(|t| app(c, t, proxies, &mut seen))
        .collect()
}

fn app(c: &mut Checker<'_>, t: &Table<'_, '_>, proxies: &Proxies<'_>, seen: &mut Seen) -> App {
    let name = c.required_text(t, "name", "add name = \"shop\", the app's name in reports");
    let route = c.required_text(
        t,
        "route",
        "add route = \"shop.example.com\", a Host its route lists in the proxies' config",
    );
    if let Some(n) = &name {
        if n.value.trim().is_empty() {
            c.err(
                Some(n.span.clone()),
                n.path.clone(),
                "must not be empty; give the app a name",
            );
        } else {
            claim(c, &mut seen.names, n.value.to_string(), n, &t.path, "name");
        }
    }
    if let Some(r) = &route {
        let v = r.value;
        if v.trim().is_empty() || v.contains('/') || v.contains(char::is_whitespace) {
            let msg =
                format!("{v:?} is not a Host; give the Host alone, e.g. \"shop.example.com\"");
            c.err(Some(r.span.clone()), r.path.clone(), msg);
        } else {
            claim(
                c,
                &mut seen.routes,
                v.to_ascii_lowercase(),
                r,
                &t.path,
                "route",
            );
        }
    }
    let (old, new) = (backend(c, t, "old"), backend(c, t, "new"));
    distinct_sides(
        c,
        old.as_ref().or(proxies.old.as_ref()),
        new.as_ref().or(proxies.new.as_ref()),
        new.as_ref().or(old.as_ref()),
    );
    let app_name = name.as_ref().map_or("", |n| n.value);
    let database = c
        .section(t, "database", DATABASE_KEYS)
        .and_then(|d| database(c, &d, app_name, &t.path, seen));
    let cache = c.section(t, "cache", CACHE_KEYS).and_then(|s| cache(c, &s));
    let side = |own: &Option<Text<'_>>, default: &Option<Text<'_>>, fallback: &str| {
        own.as_ref()
            .or(default.as_ref())
            .map_or(fallback, |b| b.value)
            .to_string()
    };
    App {
        name: app_name.to_string(),
        route: route.map_or_else(String::new, |r| r.value.to_ascii_lowercase()),
        old: side(&old, &proxies.old, "old"),
        new: side(&new, &proxies.new, "new"),
        database,
        cache,
    }
}

/// `[apps.cache]`.
fn cache(c: &mut Checker<'_>, t: &Table<'_, '_>) -> Option<CachePlan> {
    let url = |c: &mut Checker<'_>, key: &str| -> Option<RedisUrl> {
        let (raw, at) = inline_or_env(c, t, key, "redis://…")?;
        RedisUrl::parse(&raw)
            .map_err(|e| c.err(Some(at.span), at.path, e))
            .ok()
    };
    let (source, target) = (url(c, "source"), url(c, "target"));
    let mode = match c.text(t, "mode") {
        None => Some(CacheMode::Sync),
        Some(m) => match m.value {
            "sync" => Some(CacheMode::Sync),
            "warm" => Some(CacheMode::Warm),
            other => {
                let msg = format!(
                    "{other:?} is not a mode; use \"sync\" (copy and follow the old cache) \
                     or \"warm\" (wait for the new cache's hit ratio)"
                );
                c.err(Some(m.span), m.path, msg);
                None
            }
        },
    };
    let hit_ratio = match t.get("hit_ratio") {
        None => Some(0.8),
        Some(node) => c.number_of(node, &t.field("hit_ratio")).and_then(|r| {
            if (0.0..=1.0).contains(&r) {
                Some(r)
            } else {
                let msg = format!("{r} is not a ratio; give a number from 0 to 1, e.g. 0.8");
                c.err(Some(node.span()), t.field("hit_ratio"), msg);
                None
            }
        }),
    };
    if mode == Some(CacheMode::Sync) && t.get("hit_ratio").is_some() {
        let msg = "hit_ratio is for mode = \"warm\"; remove it, or set mode = \"warm\"";
        c.err(t.at(), t.field("hit_ratio"), msg);
    }
    let wait = c.duration(t, "wait").unwrap_or(Duration::from_secs(300));
    let enable_notifications = c.boolean(t, "enable_notifications").unwrap_or(false);
    Some(CachePlan {
        source: source?,
        target: target?,
        mode: mode?,
        hit_ratio: hit_ratio?,
        wait,
        enable_notifications,
    })
}

/// A value given inline (`key`) or by an environment variable (`key_env`); a
/// missing one is an error whose fix shows `example`.
fn inline_or_env<'t>(
    c: &mut Checker<'_>,
    t: &Table<'t, '_>,
    key: &str,
    example: &str,
) -> Option<(String, Text<'t>)> {
    let env_key = format!("{key}_env");
    match (c.text(t, key), c.text(t, &env_key)) {
        (Some(_), Some(env)) => {
            let msg = format!("give {key} or {env_key}, not both; remove one");
            c.err(Some(env.span), env.path, msg);
            None
        }
        (Some(inline), None) => Some((inline.value.to_string(), inline)),
        (None, Some(env)) => match std::env::var(env.value) {
            Ok(v) => Some((v, env)),
            Err(_) => {
                let msg = format!(
                    "the environment variable {} is not set; export it, or give {key} in the plan",
                    env.value
                );
                c.err(Some(env.span), env.path, msg);
                None
            }
        },
        (None, None) => {
            let msg = format!("missing; give {key} = \"{example}\" or {env_key} = \"VARIABLE\"");
            c.err(t.at(), t.field(key), msg);
            None
        }
    }
}

fn database(
    c: &mut Checker<'_>,
    t: &Table<'_, '_>,
    app: &str,
    owner: &str,
    seen: &mut Seen,
) -> Option<Database> {
    let source = dsn(c, t, Side::Source, "source", true);
    let target = dsn(c, t, Side::Target, "target", true);
    let source_for_target = dsn(c, t, Side::Source, "source_for_target", false);
    let target_for_source = dsn(c, t, Side::Target, "target_for_source", false);
    let replication = match c.text(t, "replication") {
        Some(r) => {
            if let Err(e) = crate::cli::parse_name(r.value) {
                c.err(
                    Some(r.span.clone()),
                    r.path.clone(),
                    format!("{:?}: {e}", r.value),
                );
            } else {
                claim(
                    c,
                    &mut seen.replications,
                    r.value.to_string(),
                    &r,
                    owner,
                    "replication name",
                );
            }
            r.value.to_string()
        }
        None => {
            let name = default_replication(app);
            if let Some(first) = seen.replications.get(&name) {
                let msg = format!(
                    "another app ({first}) has the replication name {name:?}, this app's \
                     default; set replication = \"…\" to a name of its own"
                );
                c.err(Some(t.span.clone()), t.field("replication"), msg);
            } else {
                seen.replications.insert(name.clone(), owner.to_string());
            }
            name
        }
    };
    Some(Database {
        source: source?,
        target: target?,
        source_for_target,
        target_for_source,
        replication,
    })
}

/// A DSN given inline (`key`) or by an environment variable (`key_env`).
fn dsn(
    c: &mut Checker<'_>,
    t: &Table<'_, '_>,
    side: Side,
    key: &str,
    required: bool,
) -> Option<Dsn> {
    if !required && t.get(key).is_none() && t.get(&format!("{key}_env")).is_none() {
        return None;
    }
    let (raw, at) = inline_or_env(c, t, key, "postgresql://…")?;
    Dsn::parse(side, &raw)
        .map_err(|e| c.err(Some(at.span), at.path, e.to_string()))
        .ok()
}

/// One `[[steps]]`; `users` when the plan follows cutover-load's timeline, which
/// the `users_*` gates read.
fn step(c: &mut Checker<'_>, t: &Table<'_, '_>, users: bool) -> Step {
    let weights = c.required(t, "weights", "add weights = { old = 90, new = 10 }");
    let new_percent = weights.and_then(|w| new_share(c, w, t.field("weights")));
    let bake = c.required(
        t,
        "bake",
        "add bake = \"2m\", how long the step runs before its gates are checked",
    );
    let bake = bake.and_then(|b| c.duration_of(b, &t.field("bake")));
    let mut gates = Vec::new();
    for g in c.texts(t, "gates").unwrap_or_default() {
        match Gate::parse(g.value) {
            Ok(gate) if gate.measures_users() && !users => c.err(
                Some(g.span),
                g.path,
                format!(
                    "{} reads cutover-load's timeline: add [users] timeline = \"FILE\" \
                     (the file cutover-load --timeline FILE writes)",
                    gate.metric_name()
                ),
            ),
            Ok(gate) => gates.push(gate),
            Err(e) => c.err(Some(g.span), g.path, e.to_string()),
        }
    }
    Step {
        new_percent: new_percent.unwrap_or_default(),
        bake: bake.unwrap_or_default(),
        gates,
    }
}

/// `weights = { old = 90, new = 10 }`: the new side's percent. Either side alone
/// is enough; both must add up to 100.
fn new_share(c: &mut Checker<'_>, node: &Node<'_>, path: String) -> Option<f64> {
    let t = c.table(node, path, &["old", "new"])?;
    let mut share = |key: &str| {
        let v = t.get(key)?;
        let path = t.field(key);
        let p = c.number_of(v, &path)?;
        if !(0.0..=100.0).contains(&p) || (p * 100.0).fract().abs() > 1e-9 {
            let msg = format!("{p} must be a percent from 0 to 100 with at most two decimals");
            c.err(Some(v.span()), path, msg);
            return None;
        }
        Some(p)
    };
    let (old, new) = (share("old"), share("new"));
    match (old, new) {
        (Some(o), Some(n)) if ((o + n) - 100.0).abs() > 1e-9 => {
            let msg = format!(
                "old {o} + new {n} must be 100; e.g. {{ old = {o}, new = {} }}",
                fmt_percent(100.0 - o)
            );
            c.err(Some(t.span.clone()), t.path.clone(), msg);
            None
        }
        (_, Some(n)) => Some(n),
        (Some(o), None) => Some(100.0 - o),
        (None, None) => {
            if t.table.is_empty() {
                let msg = "give the sides' percents, e.g. { old = 90, new = 10 }";
                c.err(Some(t.span.clone()), t.path.clone(), msg);
            }
            None
        }
    }
}

/// `[secrets]`, read by its own serde type; its errors keep their positions.
fn secrets(c: &mut Checker<'_>, root: &Table<'_, '_>) -> Option<SecretsPlan> {
    let node = root.get("secrets")?;
    SecretsPlan::deserialize(ValueDeserializer::from(node.clone()))
        .map_err(|e| {
            // Name the key the error points at, when it points at one.
            let key = e.span().and_then(|at| match node.get_ref() {
                DeValue::Table(t) => t.iter().find_map(|(k, v)| {
                    (k.span().contains(&at.start) || v.span().contains(&at.start))
                        .then(|| k.get_ref().to_string())
                }),
                _ => None,
            });
            let path = key.map_or_else(|| "secrets".to_string(), |k| format!("secrets.{k}"));
            c.err(e.span(), path, e.message().trim());
        })
        .ok()
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

fn relative_to(plan: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    plan.parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}
