//! The end of a plan: finalize (weights 100% new, writes of stateless apps on new,
//! wait until the old side is drained), and `cutover abort` (back to the last safe
//! point), and `cutover status`'s view of a record.

use std::time::Duration;

use tokio::time::Instant;

use super::{PhaseResult, RunOptions, Runner, Stop, fmt_left, now, where_label};
use crate::cleanup::{Done, cleanup};
use crate::error::Error;
use crate::plan::model::{App, Plan};
use crate::plan::record::{Outcome, PhaseName, Record, RetiredObject};
use crate::plan::state::{self, StateFile};
use crate::proxy::Proxies;
use crate::status::{bytes, slots};
use crate::switchover::{SwitchoverOptions, rollback};

impl Runner<'_> {
    /// Sets one app's weights on every replica: one change, one epoch.
    pub(super) async fn set_app_weights(
        &self,
        proxies: &Proxies,
        app: &App,
        new_percent: f64,
    ) -> Result<(), Error> {
        let w = [
            (app.old.clone(), 100.0 - new_percent),
            (app.new.clone(), new_percent),
        ]
        .into_iter()
        .collect();
        let epoch = proxies.next_epoch().await?;
        for url in proxies.urls() {
            proxies.set_weights_at(url, &app.route, &w, epoch).await?;
        }
        Ok(())
    }

    /// Moves a stateless app's writes (there is no database to switch): one
    /// change, one epoch.
    async fn stateless_writes(&self, proxies: &Proxies, app: &App, to: &str) -> Result<(), Error> {
        let epoch = proxies.next_epoch().await?;
        for url in proxies.urls() {
            proxies.release(url, &app.route, Some(to), epoch).await?;
        }
        Ok(())
    }

    pub(super) async fn finalize(&mut self) -> PhaseResult {
        let started = now();
        let a = self.scrape().await?;
        let proxies = self.proxies().await?;
        self.set_weights(&proxies, 100.0).await?;
        self.metrics
            .set_step(&self.plan.name, self.plan.steps.len(), 100.0);
        let plan = self.plan;
        let proxies = self.proxies().await?;
        for app in plan.apps.iter().filter(|a| a.database.is_none()) {
            self.stateless_writes(&proxies, app, &app.new).await?;
        }
        self.event(
            PhaseName::Finalize,
            None,
            None,
            "weights 100% new on every route; writes of stateless apps on new".into(),
            true,
        );
        self.save()?;
        let deadline = Instant::now() + plan.drain_timeout;
        let mut proxies;
        loop {
            // A replica that appears while the old side drains is brought to the
            // newest state (weights 100% new) and checked too.
            proxies = self.proxies().await?;
            let busy = self.old_side_busy(&proxies).await?;
            if busy.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "the old side to drain ({}); finalize.drain_timeout",
                        busy.join("; ")
                    ),
                    after: plan.drain_timeout,
                });
            }
            if self.interrupted() {
                return Ok(Some(Stop::Interrupted));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.ui.status(&format!(
                "finalize: waiting for the old side to drain ({} left): {}",
                fmt_left(left),
                busy.join("; ")
            ));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.ui.clear();
        self.event(
            PhaseName::Finalize,
            None,
            None,
            format!(
                "old side drained on every route of {} replica(s): weight 0, not the write side, nothing in flight",
                proxies.urls().len()
            ),
            true,
        );
        self.retire().await?;
        self.end_phase(PhaseName::Finalize, PhaseName::Done, started, &a)
            .await?;
        Ok(None)
    }

    /// The end of every database's replication: its slots, publications and
    /// subscriptions dropped on both sides (`cutover db cleanup`'s work), or with
    /// `finalize.retire_replication = false`, the links still there listed as
    /// kept. A side that still refuses writes keeps the `_cutover` schema its block
    /// needs. Safe to run again after a crash: what is gone reads as absent.
    async fn retire(&mut self) -> Result<(), Error> {
        let plan = self.plan;
        for (app, d) in plan.databases() {
            if !self.rec.switched.contains(&app.name) {
                // Its writes are still on old: the forward replication is what
                // would make a later switchover lossless. Never retired.
                self.event(
                    PhaseName::Finalize,
                    None,
                    Some(&app.name),
                    format!(
                        "replication {} kept: the database was not switched",
                        d.replication
                    ),
                    false,
                );
                continue;
            }
            let pair = self.db(&app.name, d).await?;
            let (src, tgt) = (&pair.0, &pair.1);
            let objects: Vec<RetiredObject> = if plan.retire_replication {
                cleanup(src, tgt, &d.replication)
                    .await?
                    .actions
                    .into_iter()
                    .map(|a| RetiredObject {
                        app: app.name.clone(),
                        side: a.side.to_string(),
                        object: a.object,
                        done: match a.done {
                            Done::Dropped => "dropped",
                            Done::Absent => "absent",
                            Done::Kept => "kept",
                        }
                        .into(),
                        detail: a.detail,
                    })
                    .collect()
            } else {
                slots(src, tgt, &d.replication)
                    .await?
                    .into_iter()
                    .map(|s| RetiredObject {
                        app: app.name.clone(),
                        side: s.side.to_string(),
                        object: format!("replication slot {}", s.slot),
                        done: "kept".into(),
                        detail: format!(
                            "finalize.retire_replication = false; it retains {} of WAL until                              `cutover db cleanup --name {}`",
                            s.retained_bytes.map(bytes).unwrap_or_else(|| "?".into()),
                            d.replication
                        ),
                    })
                    .collect()
            };
            let dropped: Vec<String> = objects
                .iter()
                .filter(|o| o.done == "dropped")
                .map(|o| format!("{} on the {}", o.object, o.side))
                .collect();
            let kept: Vec<String> = objects
                .iter()
                .filter(|o| o.done == "kept")
                .map(|o| format!("{} on the {}", o.object, o.side))
                .collect();
            let mut text = if plan.retire_replication {
                format!(
                    "replication {} retired: {}",
                    d.replication,
                    if dropped.is_empty() {
                        "nothing was left to drop".to_string()
                    } else {
                        format!("dropped {}", dropped.join(", "))
                    }
                )
            } else {
                format!(
                    "replication {} kept (finalize.retire_replication = false)",
                    d.replication
                )
            };
            if !kept.is_empty() {
                text.push_str(&format!("; kept {}", kept.join(", ")));
            }
            self.event(PhaseName::Finalize, None, Some(&app.name), text, true);
            // A finalize resumed after a crash finds gone what the first one
            // dropped: the record keeps "dropped".
            let before: Vec<RetiredObject> = self.rec.retired.clone();
            self.rec.retired.retain(|o| o.app != app.name);
            self.rec.retired.extend(objects.into_iter().map(|o| {
                match before.iter().find(|b| {
                    b.app == o.app
                        && b.side == o.side
                        && b.object == o.object
                        && b.done == "dropped"
                }) {
                    Some(b) if o.done == "absent" => b.clone(),
                    _ => o,
                }
            }));
            let left = slots(src, tgt, &d.replication).await?;
            self.metrics
                .set_slots(&d.replication, &super::steps::retained(&left));
            self.save()?;
        }
        Ok(())
    }

    /// Routes whose old backend is not drained yet, as "URL route".
    async fn old_side_busy(&self, proxies: &Proxies) -> Result<Vec<String>, Error> {
        let mut busy = Vec::new();
        for url in proxies.urls() {
            let status = proxies.read_status(url).await?;
            for app in &self.plan.apps {
                let Some(route) = crate::proxy::find_route(&status, &app.route) else {
                    continue;
                };
                if route.drained.get(&app.old) != Some(&true) {
                    busy.push(format!("{url} {}", route.name));
                }
            }
        }
        Ok(busy)
    }

    /// `cutover abort`: writes back on old where reverse replication allows it,
    /// then every route back to 100% old.
    async fn abort(&mut self) -> Result<(), Error> {
        let phase = self.rec.phase;
        self.event(
            phase,
            None,
            None,
            format!("abort requested at {}", where_label(&self.rec, self.plan)),
            true,
        );
        let proxies = self.proxies().await?;
        self.check_routes(&proxies).await?;
        if let Some(app) = self.rec.switching.clone() {
            self.recover_switchover(&app).await?;
        }
        let plan = self.plan;
        let mut stay_new = Vec::new();
        for (app, d) in plan.databases().collect::<Vec<_>>().into_iter().rev() {
            if !self.rec.switched.contains(&app.name) {
                continue;
            }
            let retired = self
                .rec
                .retired
                .iter()
                .any(|o| o.app == app.name && o.done == "dropped");
            if !plan.reverse || retired {
                stay_new.push(app.name.clone());
                let why = if retired {
                    "writes stay on new: finalize retired its replication \
                     (finalize.retire_replication = true), so the old database lacks the newer \
                     writes; keep it with retire_replication = false to allow an abort after finalize"
                } else {
                    "writes stay on new: the switchover ran without reverse replication \
                     (switchover.reverse = false), so the old database lacks the newer writes"
                };
                self.event(phase, None, Some(&app.name), why.into(), false);
                continue;
            }
            let pair = self.db(&app.name, d).await?;
            let opts = SwitchoverOptions {
                reverse: false,
                ..self.switch_options(app, d)
            };
            let report = rollback(
                &pair.0,
                &pair.1,
                &proxies,
                &d.replication,
                &opts,
                &crate::observe::Quiet,
            )
            .await?;
            self.rec.switched.retain(|a| a != &app.name);
            self.event(
                phase,
                None,
                Some(&app.name),
                format!(
                    "writes back on {:?} (write pause {:.0} ms)",
                    app.old, report.write_pause_ms
                ),
                true,
            );
            self.save()?;
        }
        let proxies = self.proxies().await?;
        for app in &plan.apps {
            if stay_new.contains(&app.name) {
                continue;
            }
            self.set_app_weights(&proxies, app, 0.0).await?;
            if app.database.is_none() {
                self.stateless_writes(&proxies, app, &app.old).await?;
            }
        }
        // A replica that appeared meanwhile is given the newest state.
        self.proxies().await?;
        self.rec.weights = Some(
            [("old".to_string(), 100.0), ("new".to_string(), 0.0)]
                .into_iter()
                .collect(),
        );
        self.event(
            phase,
            None,
            None,
            format!(
                "weights 100% old on every route{}",
                if stay_new.is_empty() {
                    String::new()
                } else {
                    format!(" except {} (kept on new)", stay_new.join(", "))
                }
            ),
            true,
        );
        Ok(())
    }
}

/// Rolls a run back to its last safe point: see [`Runner::abort`].
pub async fn abort(plan: &Plan, opts: &RunOptions) -> Result<Record, Error> {
    let file = StateFile::lock(&opts.state)?;
    let rec = state::load(&opts.state)?.ok_or_else(|| {
        Error::Plan(format!(
            "no run to abort: there is no state file at {} (give --state if it is elsewhere)",
            opts.state.display()
        ))
    })?;
    if rec.outcome == Outcome::Aborted {
        return Err(Error::Plan(format!(
            "this run was already aborted (state file {})",
            opts.state.display()
        )));
    }
    let mut r = Runner::new(plan, opts, file, rec)?;
    let result = r.abort().await;
    r.sampler.stop();
    match result {
        Ok(()) => {
            r.rec.outcome = Outcome::Aborted;
            r.rec.stop_reason = Some("aborted by the operator; traffic is back on old".into());
            r.save()?;
            r.write_report()?;
            Ok(r.rec)
        }
        Err(e) => {
            r.event(r.rec.phase, None, None, format!("abort failed: {e}"), false);
            r.save()?;
            Err(e)
        }
    }
}

/// `cutover status`: where a run stands, for people.
pub fn describe(rec: &Record, plan: &Plan, active: bool) -> String {
    let mut s = String::new();
    let outcome = match rec.outcome {
        Outcome::Running if active => "running now",
        Outcome::Running => "stopped mid-way (run the plan again to resume)",
        Outcome::Succeeded => "succeeded",
        Outcome::GateFailed => "stopped: a gate failed (weights rolled back)",
        Outcome::Failed => "stopped: an action failed",
        Outcome::Aborted => "aborted",
    };
    s.push_str(&format!("plan {}: {outcome}\n", rec.plan_name));
    s.push_str(&format!("  at:       {}\n", where_label(rec, plan)));
    if let Some(w) = &rec.weights {
        s.push_str(&format!(
            "  weights:  old {} / new {}\n",
            w.get("old").copied().unwrap_or(0.0),
            w.get("new").copied().unwrap_or(0.0)
        ));
    }
    s.push_str(&format!(
        "  steps:    {} of {} passed\n",
        rec.last_good_step.map_or(0, |i| i + 1),
        plan.steps.len()
    ));
    s.push_str(&format!(
        "  switched: {} of {} database(s){}\n",
        rec.switched.len(),
        plan.databases().count(),
        if rec.switched.is_empty() {
            String::new()
        } else {
            format!(" ({})", rec.switched.join(", "))
        }
    ));
    for (db, lag) in &rec.lag {
        if let Some(l) = lag.max_seconds {
            s.push_str(&format!("  lag:      {db}: max {l:.3}s\n"));
        }
    }
    if let Some(r) = &rec.stop_reason {
        s.push_str(&format!("  stopped:  {r}\n"));
    }
    s.push_str("  recent:\n");
    let start = rec.timeline.len().saturating_sub(8);
    for e in &rec.timeline[start..] {
        s.push_str(&format!(
            "    +{:>7.1}s {:<10} {}{}{}\n",
            e.at - rec.started_at,
            e.phase.as_str(),
            if e.ok { "" } else { "FAILED: " },
            e.app.as_ref().map(|a| format!("{a}: ")).unwrap_or_default(),
            e.what
        ));
    }
    s
}
