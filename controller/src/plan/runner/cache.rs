//! The apps' caches (`[apps.cache]`). A `sync` cache is copied and followed from
//! the start of the run (`cutover cache sync`'s engine, in the background) until
//! the run ends, when a last verification pass gives its final figures. A `warm`
//! cache is only watched: its hit ratio since the run started. Either way the
//! step that takes new to 100% first waits (up to the cache's `wait`) for it to be
//! ready — converged, or warm — and fails like a gate, weights back, if it is not.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::{PhaseResult, Runner, fmt_left, now};
use crate::cache::{CopyOptions, RedisUrl};
use crate::cache::{FollowOptions, SyncHandle, hit_stats, start_sync};
use crate::error::Error;
use crate::plan::model::{CacheMode, CachePlan};
use crate::plan::record::{CacheRecord, GateRecord, PhaseName};

/// One app's cache while the run goes.
pub(super) struct CacheRun {
    /// The copy (`sync` mode).
    sync: Option<SyncHandle>,
    /// The new cache, and its hits and misses when the run (or its resumption)
    /// began: its hit ratio since then is shown in both modes, and judged in
    /// `warm` mode.
    target: RedisUrl,
    base: (u64, u64),
}

/// The caches by app.
pub(super) type Caches = BTreeMap<String, CacheRun>;

impl Runner<'_> {
    /// Starts every app's cache sync (and reads the warm caches' starting
    /// figures), unless the run is past the step to 100%.
    pub(super) async fn start_caches(&mut self) -> Result<(), Error> {
        let full = self.plan.steps.iter().position(|s| s.new_percent >= 100.0);
        if full.is_some_and(|f| self.rec.next_step > f) || self.rec.phase > PhaseName::Steps {
            return Ok(());
        }
        for app in &self.plan.apps {
            let Some(c) = &app.cache else { continue };
            if self.caches.contains_key(&app.name) {
                continue;
            }
            let fail = |e: crate::cache::CacheError| {
                Error::Plan(format!("apps {:?} cache: {e}", app.name))
            };
            let base = hit_stats(&c.target).await.map_err(fail)?;
            let sync = match c.mode {
                CacheMode::Sync => Some(
                    start_sync(&c.source, &c.target, follow_options(c))
                        .await
                        .map_err(fail)?,
                ),
                CacheMode::Warm => None,
            };
            let run = CacheRun {
                sync,
                target: c.target.clone(),
                base,
            };
            let what = match c.mode {
                CacheMode::Sync => {
                    format!("copying {} into {} and following it", c.source, c.target)
                }
                CacheMode::Warm => format!("watching {}'s hit ratio", c.target),
            };
            self.event(
                PhaseName::Steps,
                None,
                Some(&app.name),
                format!("cache: {what}"),
                true,
            );
            self.caches.insert(app.name.clone(), run);
        }
        self.cache_figures().await;
        Ok(())
    }

    /// Updates each cache's record and metrics from what its sync reports now.
    pub(super) async fn cache_figures(&mut self) {
        let plan = self.plan;
        for app in &plan.apps {
            let (Some(c), Some(run)) = (&app.cache, self.caches.get(&app.name)) else {
                continue;
            };
            let rec = self.rec.caches.entry(app.name.clone()).or_default();
            rec.mode = match c.mode {
                CacheMode::Sync => "sync",
                CacheMode::Warm => "warm",
            }
            .into();
            rec.source = c.source.to_string();
            rec.target = c.target.to_string();
            if let Ok(now) = hit_stats(&run.target).await {
                rec.hit_ratio = ratio(run.base, now);
            }
            match &run.sync {
                Some(h) => fill(rec, &h.status()),
                None => rec.converged = rec.hit_ratio.is_some_and(|r| r >= c.hit_ratio),
            }
            self.metrics.set_cache(&app.name, rec);
        }
    }

    /// Before the step to 100%: waits for every cache to be ready; a cache that is
    /// not ready within its `wait` fails the step like a gate.
    pub(super) async fn cache_gate(&mut self, i: usize, label: &str) -> PhaseResult {
        let plan = self.plan;
        if plan.steps[i].new_percent < 100.0 || self.caches.is_empty() {
            return Ok(None);
        }
        for app in &plan.apps {
            let Some(c) = &app.cache else { continue };
            let deadline = Instant::now() + c.wait;
            let gate = match c.mode {
                CacheMode::Sync => format!("cache {} converged", app.name),
                CacheMode::Warm => format!("cache {} hit_ratio >= {}", app.name, c.hit_ratio),
            };
            loop {
                self.cache_figures().await;
                let rec = self.rec.caches.get(&app.name).cloned().unwrap_or_default();
                let failed = self
                    .caches
                    .get(&app.name)
                    .and_then(|r| r.sync.as_ref())
                    .is_some_and(SyncHandle::finished);
                if rec.converged || failed || Instant::now() >= deadline {
                    let passed = rec.converged && !failed;
                    let record = GateRecord {
                        step: i,
                        gate: gate.clone(),
                        value: match c.mode {
                            CacheMode::Sync => Some(
                                rec.last_verify
                                    .as_ref()
                                    .map_or(-1.0, |t| t.differences() as f64),
                            ),
                            CacheMode::Warm => rec.hit_ratio,
                        },
                        threshold: match c.mode {
                            CacheMode::Sync => 0.0,
                            CacheMode::Warm => c.hit_ratio,
                        },
                        passed,
                        detail: detail(&rec, c, passed),
                    };
                    self.metrics
                        .set_gate(&plan.name, &record.gate, record.value, passed);
                    self.rec.gates.push(record.clone());
                    if !passed {
                        return self.gate_failed(i, label, vec![record]).await;
                    }
                    if let Some(r) = self.rec.caches.get_mut(&app.name) {
                        r.ready_at_s = Some(now() - self.rec.started_at);
                    }
                    self.event(
                        PhaseName::Steps,
                        Some(i),
                        Some(&app.name),
                        format!("{label}: {}", record.detail),
                        true,
                    );
                    break;
                }
                if self.interrupted() {
                    return Ok(Some(super::Stop::Interrupted));
                }
                self.ui.status(&format!(
                    "{label}: waiting for {gate} ({} left): {}",
                    fmt_left(deadline.saturating_duration_since(Instant::now())),
                    detail(&rec, c, false)
                ));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        self.ui.clear();
        Ok(None)
    }

    /// Stops every sync (a last verification pass each) and records the figures.
    pub(super) async fn stop_caches(&mut self) {
        let caches = std::mem::take(&mut self.caches);
        for (app, run) in caches {
            if let Some(h) = run.sync {
                let status = h.stop().await;
                let rec = self.rec.caches.entry(app.clone()).or_default();
                fill(rec, &status);
                self.metrics.set_cache(&app, rec);
            }
        }
    }
}

fn follow_options(c: &CachePlan) -> FollowOptions {
    FollowOptions {
        copy: CopyOptions::default(),
        ttl_tolerance: std::time::Duration::from_secs(1),
        sample: 0,
        verify_every: std::time::Duration::from_secs(10),
        follow: true,
        enable_notifications: c.enable_notifications,
    }
}

fn fill(rec: &mut CacheRecord, s: &crate::cache::Status) {
    rec.converged = s.converged;
    rec.keys_copied = s.copy.copied_keys;
    rec.bytes_copied = s.copy.copied_bytes;
    rec.big_keys = s.copy.big_keys;
    rec.skipped_expired = s.copy.skipped_expired;
    rec.deleted = s.copy.deleted;
    rec.errors = s.copy.errors;
    rec.events = s.events;
    rec.pending = s.pending;
    rec.notifications_lost = s.notifications_lost;
    rec.verify_passes = s.verify_passes;
    rec.last_verify = s.last_verify.clone();
    rec.error = s.error.clone().or_else(|| s.copy.last_error.clone());
}

/// Hits over lookups since `base`; `None` before any lookup.
fn ratio(base: (u64, u64), now: (u64, u64)) -> Option<f64> {
    let hits = now.0.saturating_sub(base.0);
    let misses = now.1.saturating_sub(base.1);
    (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64)
}

fn detail(rec: &CacheRecord, c: &CachePlan, ready: bool) -> String {
    match c.mode {
        CacheMode::Sync => {
            let verify =
                rec.last_verify
                    .as_ref()
                    .map_or("no verification pass yet".to_string(), |t| {
                        format!(
                            "last pass {} missing, {} different, {} extra of {} keys",
                            t.missing, t.different, t.extra, t.compared
                        )
                    });
            format!(
                "cache {}: {} keys copied, {} pending, {verify}{}{}",
                if ready { "converged" } else { "not converged" },
                rec.keys_copied,
                rec.pending,
                if rec.errors > 0 {
                    format!(", {} writes refused by the target", rec.errors)
                } else {
                    String::new()
                },
                rec.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )
        }
        CacheMode::Warm => format!(
            "new cache hit ratio {} (wants {:.0}%)",
            rec.hit_ratio
                .map_or("n/a (no lookups yet)".into(), |r| format!(
                    "{:.1}%",
                    r * 100.0
                )),
            c.hit_ratio * 100.0
        ),
    }
}
