//! The phases before any traffic moves: preflight (routes, writes, secrets, each
//! database's replication preflight) and sync (logical replication for every
//! database, until it streams).

use tokio::time::Instant;

use super::{PhaseResult, Runner, Stop, now};
use crate::check::{CheckOptions, check};
use crate::error::Error;
use crate::observe::{Observer, TableProgress};
use crate::plan::record::PhaseName;
use crate::sync::{SyncOptions, sync};

/// Prints `sync`'s progress under the runner's lines.
struct SyncProgress<'a> {
    app: &'a str,
    enabled: bool,
}

impl Observer for SyncProgress<'_> {
    fn note(&self, message: &str) {
        if self.enabled {
            eprintln!("           {}: {message}", self.app);
        }
    }

    fn tables(&self, tables: &[TableProgress]) {
        if self.enabled {
            let ready = tables.iter().filter(|t| t.state == 'r').count();
            eprintln!(
                "           {}: {ready} of {} table(s) copied",
                self.app,
                tables.len()
            );
        }
    }
}

impl Runner<'_> {
    pub(super) async fn preflight(&mut self) -> PhaseResult {
        let started = now();
        let proxies = self.proxies().await?;
        let a = self.scrape().await?;
        self.writes_where_expected(&proxies).await?;
        self.event(
            PhaseName::Preflight,
            None,
            None,
            format!(
                "{} app route(s) present on {} proxy replica(s)",
                self.plan.apps.len(),
                proxies.urls().len()
            ),
            true,
        );
        if let Some(secrets) = &self.plan.secrets {
            let g = crate::secrets::gate(secrets).await?;
            let (s, v) = (&g.sync, &g.verify);
            self.event(
                PhaseName::Preflight,
                None,
                None,
                format!(
                    "secrets: {} created, {} updated, {} unchanged; {} verified equal in {}",
                    s.created, s.updated, s.unchanged, v.matched, v.target
                ),
                true,
            );
        }
        let plan = self.plan;
        // First every database's replication is set up, so that their initial
        // copies run at once; then each is waited for (and its indexes built).
        let pending: Vec<_> = plan
            .databases()
            .filter(|(app, _)| !self.rec.switched.contains(&app.name))
            .collect();
        if pending.len() > 1 {
            for (app, d) in &pending {
                let pair = self.db(&app.name, d).await?;
                let obs = SyncProgress {
                    app: &app.name,
                    enabled: self.opts.progress,
                };
                let opts = SyncOptions {
                    wait: false,
                    source_for_target: d.source_for_target.clone(),
                    ..SyncOptions::default()
                };
                sync(&pair.0, &pair.1, &d.replication, &opts, &obs).await?;
                if self.interrupted() {
                    return Ok(Some(Stop::Interrupted));
                }
            }
        }
        for (app, d) in pending {
            let pair = self.db(&app.name, d).await?;
            let (src, tgt) = (&pair.0, &pair.1);
            let report = check(src, tgt, &d.replication, CheckOptions::default()).await?;
            if !report.passed() {
                return Err(Error::Blocked {
                    count: report.blockers(),
                    list: format!("app {}:\n{}", app.name, report.blocker_list()),
                });
            }
            self.event(
                PhaseName::Preflight,
                None,
                Some(&app.name),
                format!(
                    "database ready for replication: {} table(s), {} sequence(s), {} warning(s)",
                    report.tables,
                    report.sequences,
                    report.warnings()
                ),
                true,
            );
        }
        self.end_phase(PhaseName::Preflight, PhaseName::Sync, started, &a)
            .await?;
        Ok(None)
    }

    /// Every app's writes go where the record says they should, with no hold.
    async fn writes_where_expected(
        &mut self,
        proxies: &crate::proxy::Proxies,
    ) -> Result<(), Error> {
        for app in &self.plan.apps {
            if app.database.is_none() {
                continue;
            }
            let expected = if self.rec.switched.contains(&app.name) {
                &app.new
            } else {
                &app.old
            };
            for url in proxies.urls() {
                for r in proxies.routes(url, &app.route).await? {
                    if r.hold.is_some() {
                        return Err(Error::Precondition(format!(
                            "proxy {url}: route {} (app {}) is held; if no switchover is running, \
                             release it with POST /routes/{}/release",
                            r.name, app.name, r.name
                        )));
                    }
                    if &r.writes != expected {
                        return Err(Error::Precondition(format!(
                            "proxy {url}: route {} (app {}) sends writes to {:?}, the plan expects {expected:?}",
                            r.name, app.name, r.writes
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) async fn sync(&mut self) -> PhaseResult {
        let started = now();
        let a = self.scrape().await?;
        let plan = self.plan;
        for (app, d) in plan.databases() {
            if self.rec.switched.contains(&app.name) {
                continue;
            }
            let pair = self.db(&app.name, d).await?;
            let (src, tgt) = (&pair.0, &pair.1);
            let t = Instant::now();
            let obs = SyncProgress {
                app: &app.name,
                enabled: self.opts.progress,
            };
            let opts = SyncOptions {
                wait: true,
                source_for_target: d.source_for_target.clone(),
                ..SyncOptions::default()
            };
            let report = sync(src, tgt, &d.replication, &opts, &obs).await?;
            self.event(
                PhaseName::Sync,
                None,
                Some(&app.name),
                format!(
                    "replication {} streaming: {} table(s) copied in {:.1}s{}",
                    d.replication,
                    report.tables.len(),
                    t.elapsed().as_secs_f64(),
                    if report.changed() {
                        ""
                    } else {
                        " (already set up)"
                    }
                ),
                true,
            );
            self.save()?;
            if self.interrupted() {
                return Ok(Some(Stop::Interrupted));
            }
        }
        let lag = self.sample_lag(super::steps::LAG_WITHIN).await;
        if let Some(l) = lag {
            self.event(
                PhaseName::Sync,
                None,
                None,
                format!("replication lag {l} (largest of every database)"),
                true,
            );
        }
        self.end_phase(PhaseName::Sync, PhaseName::Steps, started, &a)
            .await?;
        Ok(None)
    }
}
