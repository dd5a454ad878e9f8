//! The gated traffic steps: weights on every replica, the bake with live gate
//! values, the verdict of each gate, and the rollback when one fails.

use std::time::Duration;

use tokio::time::Instant;

use super::{PhaseResult, Runner, Stop, fmt_left, now};
use crate::heartbeat::LagSeconds;
use crate::plan::gate::{Metric, UsersMetric};
use crate::plan::metrics;
use crate::plan::model::fmt_percent;
use crate::plan::record::{GateRecord, PhaseName};
use crate::status::{SlotRetention, slots, status};

/// How often the lag is measured during a bake.
const LAG_EVERY: Duration = Duration::from_secs(2);
/// The longest a heartbeat is waited for when no gate says otherwise.
pub(super) const LAG_WITHIN: Duration = Duration::from_secs(10);

pub(super) fn retained(slots: &[SlotRetention]) -> Vec<(String, Option<i64>)> {
    slots
        .iter()
        .map(|s| (s.slot.clone(), s.retained_bytes))
        .collect()
}

/// The larger of two lag readings; unknown (`None`) wins, and of two equal values
/// the one that is only a lower bound.
fn worse(a: Option<LagSeconds>, b: Option<LagSeconds>) -> Option<LagSeconds> {
    match (a, b) {
        (Some(a), Some(b)) if b.seconds > a.seconds || (b.seconds == a.seconds && b.at_least) => {
            Some(b)
        }
        (Some(a), Some(_)) => Some(a),
        _ => None,
    }
}

impl Runner<'_> {
    /// Measures every unswitched database's lag, waiting up to `within` for each
    /// heartbeat; the largest, `None` when any is unknown. A beat that has not
    /// arrived by then reads "at least `within`", never less.
    pub(super) async fn sample_lag(&mut self, within: Duration) -> Option<LagSeconds> {
        let plan = self.plan;
        let mut worst: Option<LagSeconds> = Some(LagSeconds {
            seconds: 0.0,
            at_least: false,
        });
        for (app, d) in plan.databases() {
            if self.rec.switched.contains(&app.name) {
                // Only the reverse slot, if any, is left to watch.
                if let Ok(pair) = self.db(&app.name, d).await
                    && let Ok(slots) = slots(&pair.0, &pair.1, &d.replication).await
                {
                    self.metrics.set_slots(&d.replication, &retained(&slots));
                }
                continue;
            }
            let measured = match self.db(&app.name, d).await {
                Ok(pair) => status(&pair.0, &pair.1, &d.replication, within).await.ok(),
                Err(_) => None,
            };
            let (lag, lag_bytes) = match &measured {
                Some(s) => (s.lag_seconds, s.lag_bytes),
                None => (None, None),
            };
            let secs = lag.map(|l| l.seconds);
            self.metrics.set_lag(&d.replication, secs, lag_bytes);
            if let Some(s) = &measured {
                self.metrics.set_slots(&d.replication, &retained(&s.slots));
            }
            let rec = self.rec.lag.entry(app.name.clone()).or_default();
            if let Some(s) = secs {
                rec.max_seconds = Some(rec.max_seconds.map_or(s, |m| m.max(s)));
            }
            if let Some(b) = lag_bytes {
                rec.max_bytes = Some(rec.max_bytes.map_or(b, |m| m.max(b)));
            }
            worst = worse(worst, lag);
        }
        worst
    }

    /// cutover-load's seconds since `from` (Unix seconds), read afresh, when the
    /// plan follows its timeline.
    fn users_window(&mut self, from: f64) -> Option<crate::plan::users::UsersWindow> {
        let feed = self.users.as_mut()?;
        feed.refresh();
        let mut w = feed.window(from, now());
        if w.seconds == 0
            && let Some(problem) = feed.problem()
        {
            w.file = format!("{} ({problem})", w.file);
        }
        Some(w)
    }

    pub(super) async fn steps(&mut self) -> PhaseResult {
        while self.rec.next_step < self.plan.steps.len() {
            if let Some(stop) = self.step(self.rec.next_step).await? {
                return Ok(Some(stop));
            }
        }
        self.rec.phase = PhaseName::Switchover;
        self.save()?;
        Ok(None)
    }

    async fn step(&mut self, i: usize) -> PhaseResult {
        let plan = self.plan;
        let step = &plan.steps[i];
        let label = step.label(i);
        if let Some(stop) = self.cache_gate(i, &label).await? {
            return Ok(Some(stop));
        }
        let proxies = self.proxies().await?;
        self.set_weights(&proxies, step.new_percent).await?;
        self.metrics.set_step(&plan.name, i + 1, step.new_percent);
        self.event(
            PhaseName::Steps,
            Some(i),
            None,
            format!(
                "{label}: weights old {} / new {} on every route; baking {}",
                fmt_percent(100.0 - step.new_percent),
                fmt_percent(step.new_percent),
                humantime::format_duration(step.bake)
            ),
            true,
        );
        self.save()?;
        let started = now();
        let a = self.scrape().await?;
        let a_done = Instant::now();
        let deadline = Instant::now() + step.bake;
        let mut next_lag = Instant::now();
        // A lag gate waits for a beat as long as its own threshold, so that one
        // that has not arrived by then reads as "at least the threshold".
        let lag_within = step
            .gates
            .iter()
            .filter(|g| g.measures_lag())
            .map(|g| Duration::from_secs_f64(g.threshold()))
            .max()
            .unwrap_or(LAG_WITHIN);
        let has_db = plan.databases().next().is_some();
        let mut worst_lag: Option<LagSeconds> = None;
        let mut lag_read = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while Instant::now() < deadline {
            tick.tick().await;
            if self.interrupted() {
                return Ok(Some(Stop::Interrupted));
            }
            self.absorb_fleet();
            self.cache_figures().await;
            if has_db && Instant::now() >= next_lag {
                let l = self.sample_lag(lag_within).await;
                next_lag = Instant::now() + LAG_EVERY;
                worst_lag = if lag_read { worse(worst_lag, l) } else { l };
                lag_read = true;
                // The bake's lag is its worst reading: one over a gate's threshold
                // (or a beat that did not arrive within it) fails the step now.
                if let Some(early) = step
                    .gates
                    .iter()
                    .filter(|g| g.measures_lag() && worst_lag.is_some())
                    .map(|g| g.evaluate(i, &metrics::Window::default(), worst_lag))
                    .find(|r| !r.passed)
                {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let mut early = early;
                    early.detail = format!(
                        "{} (the bake stopped early, {} before its end)",
                        early.detail,
                        fmt_left(left)
                    );
                    return self.fail_early(i, &label, started, &a, early).await;
                }
            }
            let Some(latest) = self.sampler.latest_since(a_done) else {
                continue;
            };
            let mut w = metrics::window(&a, &latest, &self.route_names);
            w.users = self.users_window(started);
            let left = deadline.saturating_duration_since(Instant::now());
            let t = w.traffic();
            let lag = match worst_lag {
                Some(l) if l.at_least => format!("≥{:.2}s", l.seconds),
                Some(l) => format!("{:.2}s", l.seconds),
                None => "?".into(),
            };
            let gates: Vec<String> = step
                .gates
                .iter()
                .filter(|g| !g.measures_lag())
                .map(|g| gate_progress(g, &g.evaluate(i, &w, worst_lag)))
                .collect();
            self.ui.status(&format!(
                "{label} of {}: bake {} left · {} req, {} err · {} · lag {lag}",
                plan.steps.len(),
                fmt_left(left),
                t.requests,
                t.errors,
                gates.join(" · ")
            ));
            // A failure certain to persist ends the bake early: errors already over
            // the allowance of the whole bake at the current rate.
            if let Some(early) = self.early_failure(i, &w, step.bake, left, worst_lag) {
                return self.fail_early(i, &label, started, &a, early).await;
            }
        }
        if has_db && !lag_read {
            // A bake too short for a reading: take one now rather than judge none.
            worst_lag = self.sample_lag(lag_within).await;
        }
        self.ui.clear();
        let b = self.scrape().await?;
        let mut w = metrics::window(&a, &b, &self.route_names);
        w.users = self.users_window(started);
        self.span(label.clone(), PhaseName::Steps, started, &a, &b);
        let results: Vec<GateRecord> = step
            .gates
            .iter()
            .map(|g| {
                if g.measures_lag() && !has_db {
                    GateRecord {
                        step: i,
                        gate: g.to_string(),
                        value: None,
                        threshold: 0.0,
                        passed: true,
                        detail: "no database in the plan".into(),
                    }
                } else {
                    g.evaluate(i, &w, worst_lag)
                }
            })
            .collect();
        for r in &results {
            self.metrics
                .set_gate(&plan.name, &r.gate, r.value, r.passed);
        }
        let failed: Vec<GateRecord> = results.iter().filter(|r| !r.passed).cloned().collect();
        self.rec.gates.extend(results.iter().cloned());
        if !failed.is_empty() {
            return self.gate_failed(i, &label, failed).await;
        }
        let t = w.traffic();
        self.event(
            PhaseName::Steps,
            Some(i),
            None,
            format!(
                "{label}: gates passed ({}) over {} request(s)",
                results
                    .iter()
                    .map(|r| r.detail.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
                t.requests
            ),
            true,
        );
        self.rec.last_good_step = Some(i);
        self.rec.next_step = i + 1;
        self.save()?;
        Ok(None)
    }

    /// Ends a bake on a gate that cannot pass any more.
    async fn fail_early(
        &mut self,
        i: usize,
        label: &str,
        started: f64,
        a: &metrics::Scrape,
        early: GateRecord,
    ) -> PhaseResult {
        self.ui.clear();
        let b = self.scrape().await?;
        self.span(label.to_string(), PhaseName::Steps, started, a, &b);
        self.metrics
            .set_gate(&self.plan.name, &early.gate, early.value, early.passed);
        self.rec.gates.push(early.clone());
        self.gate_failed(i, label, vec![early]).await
    }

    fn early_failure(
        &self,
        i: usize,
        w: &metrics::Window,
        bake: Duration,
        left: Duration,
        lag: Option<LagSeconds>,
    ) -> Option<GateRecord> {
        let elapsed = bake.saturating_sub(left).as_secs_f64();
        if elapsed < 1.0 || left.is_zero() {
            return None;
        }
        let t = w.traffic();
        let projected = t.requests as f64 * bake.as_secs_f64() / elapsed;
        let gates = &self.plan.steps[i].gates;
        let errors = gates
            .iter()
            .filter(|g| g.metric_name() == "error_ratio")
            .map(|g| g.evaluate(i, w, lag))
            .find(|r| !r.passed && t.errors as f64 > r.threshold * projected && t.requests > 0)
            .map(|r| (r, "the errors already exceed what the whole bake allows"));
        // The users' worst second (or most requests behind) can only grow over the
        // bake: one second over the limit fails it for good.
        let users = || {
            gates
                .iter()
                .filter(|g| {
                    g.measures_users() && g.metric() != Metric::Users(UsersMetric::ErrorRatio)
                })
                .map(|g| g.evaluate(i, w, lag))
                .find(|r| !r.passed && r.value.is_some())
                .map(|r| (r, "the users' worst second is already over the limit"))
        };
        errors.or_else(users).map(|(mut r, why)| {
            r.detail = format!(
                "{} (the bake stopped early, {} before its end: {why})",
                r.detail,
                fmt_left(left)
            );
            r
        })
    }

    /// Rolls the weights back to the last good step and stops. The caller has
    /// recorded the verdicts.
    pub(super) async fn gate_failed(
        &mut self,
        i: usize,
        label: &str,
        failed: Vec<GateRecord>,
    ) -> PhaseResult {
        let back = self
            .rec
            .last_good_step
            .map(|s| self.plan.steps[s].new_percent)
            .unwrap_or(0.0);
        let why = failed
            .iter()
            .map(|g| format!("gate {:?} failed: {}", g.gate, g.detail))
            .collect::<Vec<_>>()
            .join("; ");
        self.event(
            PhaseName::Steps,
            Some(i),
            None,
            format!("{label}: {why}"),
            false,
        );
        let proxies = self.proxies().await?;
        self.set_weights(&proxies, back).await?;
        let to = match self.rec.last_good_step {
            Some(s) => format!("the last good step ({})", self.plan.steps[s].label(s)),
            None => "100% old".to_string(),
        };
        self.event(
            PhaseName::Steps,
            Some(i),
            None,
            format!("weights rolled back to {to}"),
            true,
        );
        self.save()?;
        Ok(Some(Stop::Gate(format!(
            "{label}: {why}; weights rolled back to {to}"
        ))))
    }
}

/// "p99 12.0ms/1s ok" or "error_ratio 0.0500/0.001 OVER" for the status line.
fn gate_progress(g: &crate::plan::gate::Gate, r: &GateRecord) -> String {
    let show = |v: f64| {
        if g.metric_name() == "error_ratio" {
            format!("{v:.4}")
        } else if v < 1.0 {
            format!("{:.1}ms", v * 1000.0)
        } else {
            format!("{v:.2}s")
        }
    };
    let value = r.value.map_or_else(|| "-".to_string(), show);
    let mark = if r.passed { "ok" } else { "OVER" };
    format!("{} {value}/{} {mark}", g.metric_name(), show(r.threshold))
}
