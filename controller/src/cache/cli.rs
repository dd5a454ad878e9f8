//! `cutover cache sync|verify`: flags, progress on stderr, the result on stdout
//! (text, or JSON with `--json`), the status file, and the exit code (0
//! converged, 1 not converged or a failure; clap uses 2 for bad usage).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use cutover_api::duration::parse_duration;
use tokio::signal::unix::{SignalKind, signal};

use super::compare::{CompareOptions, verify};
use super::copy::CopyOptions;
use super::follow::{FollowOptions, Status, start_sync};
use super::url::RedisUrl;
use crate::plan::state::write_atomic;
use crate::status::bytes;

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Copy a live Redis into another and keep following it until stopped
    /// (Ctrl-C or SIGTERM), then run a last verification pass. Exits 0 only when
    /// the copy converged.
    ///
    /// The initial copy is SCAN + DUMP/RESTORE with each key's absolute expiry,
    /// pipelined; keys that expire before they are written are skipped, keys above
    /// --big-key-size are copied by chunks of their own type. Following uses the
    /// source's keyspace notifications (notify-keyspace-events must include K or E,
    /// and A), subscribed before the copy starts; a verification pass every
    /// --verify-every re-copies what they missed and deletes keys the source no
    /// longer has.
    Sync(SyncArgs),
    /// Compare the two sides once: keys missing on the target, different (type,
    /// expiry beyond --ttl-tolerance, or value), and extra. Exits 0 only when
    /// converged (no difference).
    Verify(VerifyArgs),
}

/// The two Redis servers.
#[derive(Args, Debug, Clone)]
pub struct Sides {
    /// The Redis to copy from: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], or
    /// rediss://…[?ca=CA.pem] for TLS. Prefer the environment variable: a command
    /// line is visible to other users. Never printed with its password.
    #[arg(long, env = "CUTOVER_CACHE_SOURCE", hide_env_values = true, value_name = "URL", value_parser = RedisUrl::parse)]
    pub source: RedisUrl,

    /// The Redis to copy into (the new cluster's). Same forms as --source.
    #[arg(long, env = "CUTOVER_CACHE_TARGET", hide_env_values = true, value_name = "URL", value_parser = RedisUrl::parse)]
    pub target: RedisUrl,

    /// Keys per pipeline, for the copy and the verification.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,

    /// Keys whose MEMORY USAGE is above this are copied (and compared) by chunks
    /// of their own type instead of one DUMP.
    #[arg(long, default_value = "8MB", value_parser = parse_size, value_name = "SIZE")]
    pub big_key_size: u64,

    /// How far the two sides' expiry times may differ and still match.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub ttl_tolerance: Duration,

    /// Compare this many random keys each way instead of every key (0: all).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub sample: u64,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    #[command(flatten)]
    pub sides: Sides,

    /// Copy, repair what a verification pass finds, and stop: no following (and
    /// no keyspace notifications needed).
    #[arg(long)]
    pub once: bool,

    /// How often a verification pass runs while following.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub verify_every: Duration,

    /// When the source's notify-keyspace-events lacks what following needs, add
    /// it (CONFIG SET) instead of stopping.
    #[arg(long)]
    pub enable_notifications: bool,

    /// Rewrite this JSON file about every second with where the sync stands
    /// (phase, keys copied, pending, the last verification, converged).
    #[arg(long, value_name = "PATH")]
    pub status_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub sides: Sides,
}

/// `8MB`, `512kB`, `1GB`: the controller's sizes, in bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    crate::cli::parse_size(s).map(|n| n as u64)
}

impl Sides {
    fn compare(&self) -> CompareOptions {
        CompareOptions {
            batch: self.batch as usize,
            big_key_size: self.big_key_size,
            ttl_tolerance: self.ttl_tolerance,
            sample: self.sample,
        }
    }
}

pub async fn run(cmd: CacheCommand) -> u8 {
    match cmd {
        CacheCommand::Sync(a) => sync(a).await,
        CacheCommand::Verify(a) => run_verify(a).await,
    }
}

async fn run_verify(a: VerifyArgs) -> u8 {
    let v = match verify(&a.sides.source, &a.sides.target, &a.sides.compare()).await {
        Ok(v) => v,
        Err(e) => return fail(a.sides.json, &e.to_string()),
    };
    if a.sides.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let t = &v.tally;
        println!("{} → {}", v.source, v.target);
        println!(
            "compared {} keys{}: {} missing, {} different, {} extra ({} ms)",
            t.compared,
            if t.complete { "" } else { " (a sample)" },
            t.missing,
            t.different,
            t.extra,
            t.took_ms
        );
        for e in &t.examples {
            println!("  {e}");
        }
        println!("converged: {}", v.converged);
    }
    u8::from(!v.converged)
}

fn fail(json: bool, e: &str) -> u8 {
    if json {
        println!("{}", serde_json::json!({ "error": e }));
    }
    eprintln!("cutover: {e}");
    1
}

async fn sync(a: SyncArgs) -> u8 {
    let opts = FollowOptions {
        copy: CopyOptions {
            batch: a.sides.batch as usize,
            big_key_size: a.sides.big_key_size,
        },
        ttl_tolerance: a.sides.ttl_tolerance,
        sample: a.sides.sample,
        verify_every: a.verify_every,
        follow: !a.once,
        enable_notifications: a.enable_notifications,
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => return fail(a.sides.json, "cannot install signal handlers"),
    };
    eprintln!(
        "cache: {} → {}{}",
        a.sides.source,
        a.sides.target,
        if a.once {
            " (once)"
        } else {
            " (following until Ctrl-C)"
        }
    );
    let handle = match start_sync(&a.sides.source, &a.sides.target, opts).await {
        Ok(h) => h,
        Err(e) => return fail(a.sides.json, &e.to_string()),
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_line = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        let s = handle.status();
        publish(a.status_file.as_deref(), &s);
        if last_line.elapsed() >= Duration::from_secs(1) || handle.finished() {
            eprintln!("cache: {}", progress(&s, started.elapsed()));
            last_line = Instant::now();
        }
        if handle.finished() {
            break;
        }
    }
    if !handle.finished() {
        eprintln!("cache: stopping: copying what is pending, then a last verification pass");
    }
    let s = handle.stop().await;
    publish(a.status_file.as_deref(), &s);
    if a.sides.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        println!("{}", summary(&s));
    }
    if let Some(e) = &s.error {
        eprintln!("cutover: {e}");
    }
    u8::from(!s.converged)
}

fn publish(path: Option<&std::path::Path>, s: &Status) {
    let Some(path) = path else { return };
    let text = serde_json::to_vec_pretty(s).unwrap_or_default();
    if let Err(e) = write_atomic(path, &text) {
        eprintln!("cache: {e}");
    }
}

/// One progress line.
fn progress(s: &Status, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    match s.phase {
        "copying" => {
            let rate = s.scanned as f64 / secs;
            let left = s.keys_total.saturating_sub(s.scanned);
            let eta = if rate > 0.0 {
                format!(", ETA {:.0}s", left as f64 / rate)
            } else {
                String::new()
            };
            format!(
                "copying: {} of ~{} keys ({:.0}%), {}, {:.0} keys/s{eta}; {} pending from notifications",
                s.scanned,
                s.keys_total,
                100.0 * s.scanned as f64 / s.keys_total.max(1) as f64,
                bytes(s.copy.copied_bytes as i64),
                rate,
                s.pending
            )
        }
        _ => format!(
            "{}: {} keys copied ({}), {} events, {} pending, {}{}",
            s.phase,
            s.copy.copied_keys,
            bytes(s.copy.copied_bytes as i64),
            s.events,
            s.pending,
            match &s.last_verify {
                Some(t) => format!(
                    "last pass {} missing / {} different / {} extra of {}",
                    t.missing, t.different, t.extra, t.compared
                ),
                None => "no verification pass yet".into(),
            },
            if s.converged { "; converged" } else { "" }
        ),
    }
}

fn summary(s: &Status) -> String {
    let mut out = format!(
        "{} → {}\n{} keys copied ({}) in {:.1}s, {} big by chunks, {} expired before they could be written, {} deleted on the target; {} notifications, {} lost subscriptions\n",
        s.source,
        s.target,
        s.copy.copied_keys,
        bytes(s.copy.copied_bytes as i64),
        s.elapsed_s,
        s.copy.big_keys,
        s.copy.skipped_expired,
        s.copy.deleted,
        s.events,
        s.notifications_lost,
    );
    if s.copy.errors > 0 {
        out.push_str(&format!(
            "the target refused {} writes; the last: {}\n",
            s.copy.errors,
            s.copy.last_error.as_deref().unwrap_or("?")
        ));
    }
    if let Some(t) = &s.last_verify {
        out.push_str(&format!(
            "last verification: {} keys compared, {} missing, {} different, {} extra\n",
            t.compared, t.missing, t.different, t.extra
        ));
    }
    out.push_str(&format!("converged: {}", s.converged));
    out
}
