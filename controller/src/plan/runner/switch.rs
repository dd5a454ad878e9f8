//! The switchovers, one app at a time in plan order, each recorded before it begins
//! (`switching`) so that a controller stopped in the middle finishes or undoes it
//! on resume, and verified after: every row of the frozen source must be on the
//! target.

use super::{PhaseResult, Runner, Stop, now};
use crate::error::Error;
use crate::observe::{Observer, Phase};
use crate::plan::model::{App, Database};
use crate::plan::record::{PhaseName, SwitchoverRecord, VerifyRecord};
use crate::switchover::{Recovery, SwitchoverOptions, recover, switchover};
use crate::verify::verify_contains;

/// Prints the switchover's steps as they end.
struct SwitchProgress<'a> {
    app: &'a str,
    enabled: bool,
}

impl Observer for SwitchProgress<'_> {
    fn note(&self, message: &str) {
        if self.enabled {
            eprintln!("           {}: {message}", self.app);
        }
    }

    fn phase_done(&self, phase: Phase, took: std::time::Duration, detail: &str) {
        if self.enabled {
            eprintln!(
                "           {}: {:>2}. {:<42} {:>8.1} ms  {detail}",
                self.app,
                phase.number(),
                phase.describe(),
                took.as_secs_f64() * 1000.0
            );
        }
    }
}

impl Runner<'_> {
    pub(super) fn switch_options(&self, app: &App, d: &Database) -> SwitchoverOptions {
        SwitchoverOptions {
            routes: vec![app.route.clone()],
            old_backend: app.old.clone(),
            new_backend: app.new.clone(),
            max_lag: self.plan.max_lag,
            max_pause: self.plan.max_pause,
            reverse: self.plan.reverse,
            target_for_source: d.target_for_source.clone(),
            source_for_target: d.source_for_target.clone(),
            verify: true,
        }
    }

    fn app(&self, name: &str) -> Result<(&App, &Database), Error> {
        self.plan
            .databases()
            .find(|(a, _)| a.name == name)
            .ok_or_else(|| {
                Error::Plan(format!(
                    "the state file says app {name} was being switched over, but the plan has no such app with a database"
                ))
            })
    }

    pub(super) async fn switchovers(&mut self) -> PhaseResult {
        let plan = self.plan;
        for (app, d) in plan.databases() {
            if self.rec.switched.contains(&app.name) {
                // A verification that failed is not forgotten by running again: it
                // must pass before the plan finalizes.
                let failed = self
                    .rec
                    .verify
                    .iter()
                    .rev()
                    .find(|v| v.app == app.name)
                    .is_some_and(|v| !v.passed);
                if failed {
                    let pair = self.db(&app.name, d).await?;
                    self.verify(app, &pair.0, &pair.1, None).await?;
                    self.save()?;
                }
                continue;
            }
            if self.interrupted() {
                return Ok(Some(Stop::Interrupted));
            }
            self.switch_one(app, d).await?;
        }
        self.rec.phase = PhaseName::Finalize;
        self.save()?;
        Ok(None)
    }

    async fn switch_one(&mut self, app: &App, d: &Database) -> Result<(), Error> {
        let started = now();
        let a = self.scrape().await?;
        let proxies = self.proxies().await?;
        let pair = self.db(&app.name, d).await?;
        let (src, tgt) = (&pair.0, &pair.1);
        self.rec.switching = Some(app.name.clone());
        self.save()?;
        self.event(
            PhaseName::Switchover,
            None,
            Some(&app.name),
            format!("switchover of route {} begins", app.route),
            true,
        );
        let opts = self.switch_options(app, d);
        let obs = SwitchProgress {
            app: &app.name,
            enabled: self.opts.progress,
        };
        let result = switchover(src, tgt, &proxies, &d.replication, &opts, &obs).await;
        let report = match result {
            Ok(r) => r,
            Err(e @ Error::Aborted { .. }) => {
                // Undone before the point of no return: writes are still on old.
                self.rec.switching = None;
                return Err(e);
            }
            // Anything else leaves `switching` set: the next run inspects the
            // databases and the proxies and finishes or undoes it.
            Err(e) => return Err(e),
        };
        self.rec.switching = None;
        self.rec.switched.push(app.name.clone());
        self.rec.switchovers.push(SwitchoverRecord {
            app: app.name.clone(),
            write_pause_ms: report.write_pause_ms,
            released_requests: report.released_requests,
            sequences: report.sequences,
            steps: report
                .phases
                .iter()
                .map(|p| {
                    (
                        p.step.to_string(),
                        p.phase.describe().to_string(),
                        p.took_ms,
                    )
                })
                .collect(),
        });
        self.metrics.set_lag(&d.replication, None, None);
        self.event(
            PhaseName::Switchover,
            None,
            Some(&app.name),
            format!(
                "writes on {:?}; write pause {:.0} ms, {} held request(s) released",
                app.new, report.write_pause_ms, report.released_requests
            ),
            true,
        );
        for w in &report.warnings {
            self.event(
                PhaseName::Switchover,
                None,
                Some(&app.name),
                w.clone(),
                true,
            );
        }
        self.save()?;
        let fenced = report
            .verify
            .as_ref()
            .map(|v| (v.table_checks(), v.chunks, v.took_ms));
        self.verify(app, src, tgt, fenced).await?;
        let b = self.scrape().await?;
        self.span(
            format!("switchover {}", app.name),
            PhaseName::Switchover,
            started,
            &a,
            &b,
        );
        self.save()
    }

    async fn verify(
        &mut self,
        app: &App,
        src: &crate::db::Db,
        tgt: &crate::db::Db,
        fenced: Option<(Vec<crate::plan::record::TableCheck>, u64, f64)>,
    ) -> Result<(), Error> {
        // The switchover compared both sides as of its fence; without that (a
        // resumed run), the frozen source must be contained in the target.
        let (tables, at_fence) = match fenced {
            Some((t, ranges, ms)) => (t, Some((ranges, ms))),
            None => (verify_contains(src, tgt).await?, None),
        };
        let passed = tables.iter().all(|t| t.passed);
        let rows: u64 = tables.iter().map(|t| t.source_rows).sum();
        let missing: u64 = tables.iter().map(|t| t.missing).sum();
        let problems: Vec<String> = tables
            .iter()
            .filter(|t| !t.passed)
            .map(|t| format!("{}: {}", t.table, t.problem.clone().unwrap_or_default()))
            .collect();
        self.rec.verify.push(VerifyRecord {
            app: app.name.clone(),
            tables,
            passed,
        });
        if passed {
            self.event(
                PhaseName::Switchover,
                None,
                Some(&app.name),
                if let Some((ranges, ms)) = at_fence {
                    format!(
                        "verified at the fence: all {rows} source row(s) are on the target, both sides \
                         equal ({ranges} key range(s) compared in {ms:.0} ms)"
                    )
                } else {
                    format!("verified: all {rows} source row(s) are on the target, unchanged or updated since")
                },
                true,
            );
            Ok(())
        } else {
            self.event(
                PhaseName::Switchover,
                None,
                Some(&app.name),
                format!("verify: {missing} source row(s) missing on the target"),
                false,
            );
            Err(Error::Precondition(format!(
                "app {}: verification after the switchover failed: {}",
                app.name,
                problems.join("; ")
            )))
        }
    }

    /// A switchover the last run left half done: finished or undone, never left.
    pub(super) async fn recover_switchover(&mut self, name: &str) -> Result<(), Error> {
        let (app, d) = self.app(name)?;
        let (app, d) = (app.clone(), d.clone());
        let proxies = self.proxies().await?;
        let pair = self.db(&app.name, &d).await?;
        let (src, tgt) = (&pair.0, &pair.1);
        let opts = self.switch_options(&app, &d);
        let outcome = recover(src, tgt, &proxies, &d.replication, &opts).await?;
        self.rec.switching = None;
        match outcome {
            Recovery::Undone(what) => {
                self.event(
                    PhaseName::Switchover,
                    None,
                    Some(&app.name),
                    format!("the interrupted switchover was undone ({what}); it runs again"),
                    true,
                );
            }
            Recovery::Completed(what) => {
                self.rec.switched.push(app.name.clone());
                self.event(
                    PhaseName::Switchover,
                    None,
                    Some(&app.name),
                    format!("the interrupted switchover was completed: {what}"),
                    true,
                );
                self.save()?;
                self.verify(&app, src, tgt, None).await?;
            }
        }
        self.save()
    }
}
