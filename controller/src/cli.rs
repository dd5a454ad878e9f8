//! The command line: `cutover db …` and `cutover secrets …` (whose flags and
//! runner live in `secrets::cli`). Parses flags into the library's options, runs
//! the command, prints its report (human text, or JSON with `--json`) and chooses
//! the exit code. Progress goes to stderr, results to stdout.

mod commands;
mod plan;
mod term;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use cutover_api::duration::parse_duration;

pub use commands::run;

/// Names a command that is not one of [`Command`]'s (such as `rehearse`) in the
/// `application_name` of the database sessions it opens.
pub fn set_command_label(label: &str) {
    crate::db::set_command(label);
}

/// The operator's commands. The `cutover` binary (the `cli/` package) puts these
/// beside `rehearse`, whose platform lives in its own crate.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Migrate a PostgreSQL database with logical replication and a coordinated,
    /// lossless switchover.
    ///
    /// Order: check → sync → status (until the lag is small) → switchover → verify →
    /// cleanup. `rollback` moves writes back after a `switchover --reverse`.
    #[command(subcommand)]
    Db(DbCommand),
    /// Move Kubernetes Secrets into Vault/OpenBao or AWS Secrets Manager, verify
    /// the copy without showing a value, and render ExternalSecrets for the new
    /// cluster.
    ///
    /// Order: sync (--dry-run first) → verify → render.
    #[command(subcommand)]
    Secrets(crate::secrets::cli::SecretsCommand),
    /// Copy a live Redis (a cache) into the new cluster's Redis, keep it following
    /// until the cutover, and say whether the copy has converged.
    ///
    /// Order: sync (follows until Ctrl-C) → verify.
    #[command(subcommand)]
    Cache(crate::cache::cli::CacheCommand),
    /// Run a migration plan: preflight, database sync, traffic steps behind gates,
    /// switchovers, finalize; then write the report. Resumes from the state file if
    /// a run of this plan stopped.
    ///
    /// A failed gate rolls the weights back to the last step that passed and exits 1.
    /// Ctrl-C stops at the next safe point (never inside a switchover) and exits 3;
    /// run the same command again to resume.
    Run(plan::RunArgs),
    /// Show where a run of the plan stands (from its state file).
    Status(plan::StatusArgs),
    /// Roll a run back to its last safe point: writes back on old where reverse
    /// replication allows it, every route back to 100% old.
    Abort(plan::PlanArgs),
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Preflight: find what would make replication fail or lose data. Exits 1 when
    /// any blocker is found; each names the object and the fix.
    Check(CheckArgs),
    /// Copy the schema, create the publication and subscription, and wait until
    /// every table's initial copy is done. Running it again changes nothing.
    Sync(SyncArgs),
    /// Show the lag in bytes (confirmed flush) and seconds (heartbeat), the slot's
    /// retained WAL and every table's state.
    Status(StatusArgs),
    /// Move writes to the target: hold them on every proxy, block the source,
    /// catch up, copy sequences, drop the subscription, release to the new side.
    Switchover(SwitchArgs),
    /// Compare row counts and a content checksum of every table; exits 1 on any
    /// mismatch, naming the table.
    Verify(DbArgs),
    /// Drop what sync (and switchover --reverse) created, on both sides. Safe to
    /// run again.
    Cleanup(DbArgs),
    /// Move writes back to the source after a `switchover --reverse`, through the
    /// same hold protocol, losing no write made on the target.
    Rollback(SwitchArgs),
}

/// The two databases and the migration's name.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// The source database, where the data is now: a libpq string
    /// ("host=… user=… password=… dbname=…") or a postgresql:// URL. Prefer the
    /// environment variable: a command line is visible to other users. Never
    /// printed with its password.
    #[arg(
        long,
        env = "CUTOVER_SOURCE",
        hide_env_values = true,
        value_name = "DSN"
    )]
    pub source: String,

    /// The target database, where the data goes. Same forms as --source.
    #[arg(
        long,
        env = "CUTOVER_TARGET",
        hide_env_values = true,
        value_name = "DSN"
    )]
    pub target: String,

    /// Name of the migration: the publication, slot and subscription are called
    /// this (and NAME_reverse for the way back).
    #[arg(long, default_value = "cutover", value_parser = parse_name)]
    pub name: String,

    /// Print the result as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Set REPLICA IDENTITY FULL on source tables that have neither a primary key
    /// nor another replica identity, and say which.
    #[arg(long)]
    pub fix_replica_identity: bool,

    /// Create on the target the extensions the source has, when the target server
    /// has them available.
    #[arg(long)]
    pub fix_extensions: bool,

    /// Accept large objects (which are not replicated) as a warning, not a blocker.
    #[arg(long)]
    pub allow_large_objects: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Return once the replication is set up, without waiting for the initial copy.
    #[arg(long)]
    pub no_wait: bool,

    /// Stop waiting after this long (e.g. 30m); replication keeps going.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,

    /// Sessions on the target that build the indexes, constraints and triggers
    /// after the initial copy (pg_restore --jobs). Each index build uses one of
    /// the target's cores and maintenance_work_mem.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
    pub jobs: u16,

    /// `maintenance_work_mem` of each of those sessions (a session setting any
    /// role may make): the sort memory of an index build. Too little and a large
    /// table's index is sorted on disk; each session and its parallel workers may
    /// use this much of the target's memory.
    #[arg(long, default_value = crate::sync::DEFAULT_INDEX_MEMORY, value_parser = parse_memory, value_name = "SIZE")]
    pub maintenance_work_mem: String,

    /// Who copies the rows. `controller` (the default): this process copies under
    /// the slot's snapshot with --jobs session pairs, large tables in parallel
    /// block ranges, into tables without indexes, then builds every index and key
    /// (0.6-0.7x the time of pg_dump/pg_restore in bench/pgsync.sh; the rows pass
    /// through this machine, and an interruption starts the copy over). It needs
    /// a replication connection to the source and the right to set
    /// session_replication_role on the target, and waiting (not --no-wait);
    /// without them the subscription copies, and says so. `subscription`:
    /// PostgreSQL's table sync, one session per table, straight from the source's
    /// server to the target's, resumable.
    #[arg(long, value_enum, default_value_t = crate::sync::CopyMode::Controller, value_name = "WHO")]
    pub copy: crate::sync::CopyMode,

    /// With --copy controller: a table larger than this on the source's disk is
    /// copied in parts of about this size, by several sessions at once.
    #[arg(long, default_value = "256MB", value_parser = parse_size, value_name = "SIZE")]
    pub part_size: i64,

    /// The source as the target *server* reaches it, when that differs from
    /// --source (e.g. an in-cluster host name).
    #[arg(
        long,
        env = "CUTOVER_SOURCE_FOR_TARGET",
        hide_env_values = true,
        value_name = "DSN"
    )]
    pub source_for_target: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Refresh every second until interrupted (heartbeats are written meanwhile).
    #[arg(long)]
    pub watch: bool,

    /// How long to wait for the heartbeat to arrive; a lag longer than this is
    /// shown as "≥" this (a lower bound, never a reading).
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "DURATION")]
    pub lag_within: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct SwitchArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Admin URL of a cutover-proxy replica (http://HOST:PORT); repeat for every
    /// replica. Each must acknowledge the hold or nothing happens.
    #[arg(long = "proxy", value_name = "ADMIN_URL", required = true, num_args = 1..)]
    pub proxies: Vec<String>,

    /// Route whose writes move: a route name or one of its hosts; repeatable;
    /// `*` for every route.
    #[arg(long = "route", value_name = "HOST", required = true)]
    pub routes: Vec<String>,

    /// Refuse to start unless a heartbeat crosses within this.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub max_lag: Duration,

    /// The longest writes are held. The proxies answer 503 by themselves after it;
    /// the controller aborts and undoes its work before it runs out.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub max_pause: Duration,

    /// Start replication the other way (copy_data = false) before releasing
    /// writes, so that a later rollback loses nothing.
    #[arg(long)]
    pub reverse: bool,

    /// The proxies' backend name for the source's application.
    #[arg(long, default_value = "old", value_name = "BACKEND")]
    pub old_backend: String,

    /// The proxies' backend name for the target's application.
    #[arg(long, default_value = "new", value_name = "BACKEND")]
    pub new_backend: String,

    /// Skip the comparison of both sides as of the fence after the release (it
    /// reads every table by primary-key ranges; exit 1 if anything differs).
    #[arg(long)]
    pub no_verify: bool,

    /// File holding the proxies' admin bearer token (or set CUTOVER_ADMIN_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub proxy_token_file: Option<PathBuf>,

    /// The target as the source *server* reaches it (for --reverse), when that
    /// differs from --target.
    #[arg(
        long,
        env = "CUTOVER_TARGET_FOR_SOURCE",
        hide_env_values = true,
        value_name = "DSN"
    )]
    pub target_for_source: Option<String>,

    /// The source as the target *server* reaches it (for rollback --reverse), when
    /// that differs from --source.
    #[arg(
        long,
        env = "CUTOVER_SOURCE_FOR_TARGET",
        hide_env_values = true,
        value_name = "DSN"
    )]
    pub source_for_target: Option<String>,
}

/// Names become identifiers and slot names: lowercase letters, digits, `_`.
pub(crate) fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(s.to_string())
    } else {
        Err("use 1 to 40 lowercase letters, digits and underscores, not starting with a digit (it names a replication slot)".into())
    }
}

/// `512MB`, `1GB`, `65536kB`: a PostgreSQL memory setting, checked before it goes
/// into `PGOPTIONS`.
fn parse_memory(s: &str) -> Result<String, String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?}: a number with a unit, e.g. 512MB or 1GB"));
    }
    if !matches!(unit, "" | "kB" | "MB" | "GB" | "TB") {
        return Err(format!(
            "{s:?}: the unit is kB, MB, GB or TB (as PostgreSQL writes them)"
        ));
    }
    Ok(s.to_string())
}

/// A size with a unit, in bytes.
pub(crate) fn parse_size(s: &str) -> Result<i64, String> {
    parse_memory(s)?;
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: i64 = match &s[digits.len()..] {
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(format!("{s:?}: give a unit, e.g. 256MB or 1GB")),
    };
    digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: too large, or zero"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_need_a_unit() {
        assert_eq!(parse_size("256MB"), Ok(256 << 20));
        assert_eq!(parse_size("8kB"), Ok(8192));
        assert!(parse_size("256").is_err());
        assert!(parse_size("0MB").is_err());
        assert!(parse_size("99999999999TB").is_err());
        assert!(parse_size("1 GB").is_err());
    }

    #[test]
    fn names_must_be_slot_names() {
        assert!(parse_name("cutover").is_ok());
        assert!(parse_name("shop_2").is_ok());
        for bad in ["", "Shop", "a-b", "1x", &"x".repeat(41)] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }
}
