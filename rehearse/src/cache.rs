//! The weather app's cache as a part of the rehearsal: a Redis per side, the old
//! one filled before the migration starts (every city's forecast, and radar tiles
//! with an expiry), a forecast job that keeps writing to the old cache past the
//! proxy (as a CronJob in the old cluster would) until the weather app is at 100%
//! new, when it is retired with the old cluster, and the plan's `[apps.cache]`
//! copying and following the old cache, the step to 100% waiting for it to
//! converge. After the run the verdict reads the plan's last verification pass:
//! the new cache must hold what the old one holds.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cutover_controller::cache::{Cmd, RedisUrl};
use cutover_controller::plan::record::CacheRecord;
use serde::Serialize;

use super::RehearseError;
use super::app::{CacheCounts, cache_key, forecast_of};
use super::redis::Redis;

/// The cities the users ask for (`/forecast/city-1` to `city-500`).
pub const CITIES: u32 = 500;
/// Radar tiles seeded beside the forecasts, each with an expiry.
const TILES: u32 = 2_501;
/// The forecast job's writes per second to the old cache.
const JOB_RATE: u32 = 20;

/// Fills the old cache: every city's forecast (the same value the app computes,
/// so a hit and a miss answer alike) and the radar tiles. Returns the keys written.
pub async fn seed(old: &Redis) -> Result<u64, RehearseError> {
    let mut conn = old.conn().await?;
    let tile = "t".repeat(512);
    let mut cmds: Vec<Cmd> = (1..=CITIES)
        .map(|i| {
            let city = format!("city-{i}");
            Cmd::new("SET")
                .arg(cache_key(&city))
                .arg(forecast_of(&city))
        })
        .collect();
    cmds.extend((0..TILES).map(|i| {
        Cmd::new("SET")
            .arg(format!("radar:tile:{i}"))
            .arg(&tile)
            .arg("EX")
            .num(3600 + i % 600)
    }));
    let n = cmds.len() as u64;
    for chunk in cmds.chunks(500) {
        let replies = conn
            .pipeline(chunk)
            .await
            .map_err(|e| RehearseError::Step(format!("seeding the old cache: {e}")))?;
        if let Some(e) = replies
            .iter()
            .find(|r| matches!(r, cutover_controller::cache::Value::Error(_)))
        {
            return Err(RehearseError::Step(format!(
                "seeding the old cache: {}",
                e.text()
            )));
        }
    }
    Ok(n)
}

/// The forecast job: `radar:latest:{n}` rewritten [`JOB_RATE`] times a second in
/// the old cache, with an expiry, until the proxies (`admins`) send all of the
/// weather app to new, or until stopped.
pub struct Job {
    task: tokio::task::JoinHandle<()>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    retired_at: Arc<std::sync::Mutex<Option<f64>>>,
}

/// What the forecast job did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct JobTally {
    pub acknowledged: u64,
    pub failed: u64,
    /// When it saw the weather app at 100% new and stopped (Unix seconds).
    pub retired_at: Option<f64>,
}

/// Whether a proxy's `/status` has `route` at 100% new.
fn all_new(status: &str, route: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(status) else {
        return false;
    };
    v["routes"].as_array().is_some_and(|routes| {
        routes.iter().any(|r| {
            r["name"] == route
                && r["weights"]["new"].as_f64() == Some(100.0)
                && r["weights"]["old"].as_f64() == Some(0.0)
        })
    })
}

impl Job {
    pub fn start(old: RedisUrl, admins: Vec<std::net::SocketAddr>, route: &'static str) -> Job {
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let retired_at = Arc::new(std::sync::Mutex::new(None));
        let (a, f, r) = (acked.clone(), failed.clone(), retired_at.clone());
        let task = tokio::spawn(async move {
            let mut conn = None;
            let mut tick = tokio::time::interval(Duration::from_secs(1) / JOB_RATE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u64.. {
                tick.tick().await;
                if n % u64::from(JOB_RATE) == 0 && retired(&admins, route).await {
                    if let Ok(mut at) = r.lock() {
                        *at = Some(crate::workers::unix_now());
                    }
                    return;
                }
                if conn.is_none() {
                    conn = cutover_controller::cache::Conn::connect(
                        &old,
                        cutover_controller::Side::Source,
                    )
                    .await
                    .ok();
                }
                let Some(c) = conn.as_mut() else {
                    f.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let set = Cmd::new("SET")
                    .arg(format!("radar:latest:{}", n % 100))
                    .arg(format!("{{\"frame\":{n}}}"))
                    .arg("EX")
                    .num(600);
                match c.ok(set).await {
                    Ok(_) => a.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        conn = None;
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
        Job {
            task,
            acked,
            failed,
            retired_at,
        }
    }

    pub fn stop(self) -> JobTally {
        self.task.abort();
        JobTally {
            acknowledged: self.acked.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retired_at: self.retired_at.lock().ok().and_then(|t| *t),
        }
    }
}

/// Whether the first proxy that answers has `route` at 100% new.
async fn retired(admins: &[std::net::SocketAddr], route: &str) -> bool {
    for admin in admins {
        if let Ok((200, body)) =
            super::procs::http_get(*admin, "/status", Duration::from_secs(1)).await
        {
            return all_new(&body, route);
        }
    }
    false
}

/// The cache part's figures, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    pub seeded_keys: u64,
    pub job: JobTally,
    /// The weather app's answers on each side by how its cache served them.
    pub old_site: CacheCounts,
    pub new_site: CacheCounts,
    /// The plan's record of the copy (its last verification pass included).
    pub copy: Option<CacheRecord>,
    /// When the forecast job retired, in seconds since the plan started.
    pub job_retired_s: Option<f64>,
    /// What is wrong, if anything: the verdict fails on any.
    pub problems: Vec<String>,
}

impl CacheReport {
    pub fn new(
        seeded_keys: u64,
        job: JobTally,
        sites: (CacheCounts, CacheCounts),
        copy: Option<&CacheRecord>,
        plan_started_at: f64,
        plan_succeeded: bool,
    ) -> CacheReport {
        let mut problems = Vec::new();
        match copy {
            None => problems.push("the plan has no record of the weather cache's copy".into()),
            Some(c) => {
                if let Some(e) = &c.error {
                    problems.push(format!("the copy failed: {e}"));
                }
                if plan_succeeded && c.ready_at_s.is_none() {
                    problems.push("the step to 100% did not wait for the cache".into());
                }
                match &c.last_verify {
                    None => problems.push("no verification pass of the copy ran".into()),
                    // Judged only once the old cache stopped changing: with the
                    // forecast job still writing (a plan that stopped short of
                    // 100%), the last pass races it with the follower stopped.
                    Some(_) if job.retired_at.is_none() => {}
                    Some(t) if t.differences() > 0 => problems.push(format!(
                        "the last verification pass found {} keys differing \
                         ({} missing on new, {} different, {} extra)",
                        t.differences(),
                        t.missing,
                        t.different,
                        t.extra
                    )),
                    Some(_) => {}
                }
            }
        }
        if job.acknowledged == 0 {
            problems.push("the forecast job wrote nothing to the old cache".into());
        }
        if plan_succeeded && job.retired_at.is_none() {
            problems.push("the forecast job never saw the weather app at 100% new".into());
        }
        CacheReport {
            seeded_keys,
            job,
            old_site: sites.0,
            new_site: sites.1,
            copy: copy.cloned(),
            job_retired_s: job.retired_at.map(|t| t - plan_started_at),
            problems,
        }
    }

    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The report's section.
pub fn section(r: &CacheReport) -> String {
    let mut s = String::from("\n## The weather app's cache\n\n");
    let _ = writeln!(
        s,
        "- The old Redis was seeded with {} keys ({CITIES} forecasts, {TILES} radar tiles \
         with an expiry); a forecast job wrote {} keys to it past the proxy ({} writes \
         failed) until the weather app was at 100% new{}.",
        r.seeded_keys,
        r.job.acknowledged,
        r.job.failed,
        r.job_retired_s
            .map_or(String::new(), |t| format!(", {t:.1}s into the run"))
    );
    if let Some(c) = &r.copy {
        let ready = c
            .ready_at_s
            .map_or("never".to_string(), |t| format!("{t:.1}s into the run"));
        let _ = writeln!(
            s,
            "- The plan copied {} keys and followed {} changes; converged before 100%: {ready}.",
            c.keys_copied, c.events
        );
        if let Some(t) = &c.last_verify {
            let _ = writeln!(
                s,
                "- Last verification pass: {} keys compared, {} differing{}.",
                t.compared,
                t.differences(),
                if r.job.retired_at.is_none() {
                    " (not judged: the forecast job was still writing to the old cache)"
                } else {
                    ""
                }
            );
        }
    }
    for (side, n) in [("old", r.old_site), ("new", r.new_site)] {
        let _ = writeln!(
            s,
            "- Weather answers on {side}: {} from the cache, {} computed and stored, \
             {} computed because the cache failed.",
            n.hits, n.misses, n.errors
        );
    }
    for p in &r.problems {
        let _ = writeln!(s, "- **Problem:** {p}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_controller::cache::Tally;

    fn record(differences: u64, ready: Option<f64>) -> CacheRecord {
        CacheRecord {
            ready_at_s: ready,
            last_verify: Some(Tally {
                compared: 3_000,
                different: differences,
                ..Tally::default()
            }),
            ..CacheRecord::default()
        }
    }

    fn report(copy: Option<&CacheRecord>, acked: u64) -> CacheReport {
        CacheReport::new(
            3_001,
            JobTally {
                acknowledged: acked,
                failed: 0,
                retired_at: Some(1.0),
            },
            (CacheCounts::default(), CacheCounts::default()),
            copy,
            0.0,
            true,
        )
    }

    #[test]
    fn a_converged_copy_the_step_waited_for_passes() {
        let r = report(Some(&record(0, Some(12.0))), 100);
        assert!(r.passed(), "{:?}", r.problems);
        assert!(section(&r).contains("converged before 100%: 12.0s"));
    }

    #[test]
    fn differences_a_missing_wait_or_an_idle_job_fail() {
        let r = report(Some(&record(3, Some(12.0))), 100);
        assert!(
            r.problems[0].contains("3 keys differing"),
            "{:?}",
            r.problems
        );
        let r = report(Some(&record(0, None)), 100);
        assert!(r.problems[0].contains("did not wait"), "{:?}", r.problems);
        assert!(!report(None, 100).passed());
        assert!(!report(Some(&record(0, Some(1.0))), 0).passed());
    }

    #[test]
    fn a_plan_that_stopped_short_is_not_judged_on_a_cache_still_written() {
        let mut r = report(Some(&record(3, None)), 100);
        r = CacheReport::new(
            3_001,
            JobTally {
                retired_at: None,
                ..r.job
            },
            (CacheCounts::default(), CacheCounts::default()),
            r.copy.as_ref(),
            0.0,
            false,
        );
        assert!(r.passed(), "{:?}", r.problems);
        assert!(section(&r).contains("not judged"), "{}", section(&r));
    }

    #[test]
    fn the_job_retires_when_the_route_is_all_new() {
        let status = |old: f64, new: f64| {
            serde_json::json!({"routes": [
                {"name": "tasks", "weights": {"old": 0.0, "new": 100.0}},
                {"name": "weather", "weights": {"old": old, "new": new}},
            ]})
            .to_string()
        };
        assert!(!all_new(&status(50.0, 50.0), "weather"));
        assert!(all_new(&status(0.0, 100.0), "weather"));
        assert!(!all_new(&status(0.0, 100.0), "social"));
        assert!(!all_new("not json", "weather"));
    }

    #[test]
    fn the_seeded_forecasts_are_what_the_app_computes() {
        assert_eq!(cache_key("city-7"), "forecast:city-7");
        assert!(forecast_of("city-7").contains(r#""city":"city-7""#));
    }
}
