//! Executes a [`Plan`]: preflight → sync → traffic steps → switchovers → finalize.
//!
//! Every action is idempotent and the [`Record`] is saved after each one, so a run
//! that stops (a crash, a kill, Ctrl-C) resumes where it was: a half-done
//! switchover is finished or undone first ([`crate::recover`]), and a step whose
//! bake was cut short bakes again from its start. A failed gate sets the weights
//! back to the last step that passed and stops with the gate named; an action that
//! fails stops the run with the error, after the switchover's own undo.
//!
//! Traffic figures come from the proxies' `/metrics`: a scrape at both ends of a
//! span gives its requests, errors and percentiles (deltas per replica, summed), and
//! a scrape every second marks the seconds in which users got errors, which is what
//! the verdict's downtime is made of.
//!
//! The replicas are found again before every action and, in the background, every
//! second ([`sampler`]); one that appears is brought up to the newest replica's
//! state at once and scraped from then on. Every change to the proxies carries an
//! epoch (see [`crate::proxy`]); the record keeps every replica the run heard from.

mod cache;
mod finish;
mod prepare;
mod sampler;
mod steps;
mod switch;
mod ui;

pub use finish::{abort, describe};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::exporter::{self, ControllerMetrics};
use super::metrics::{self, Scrape};
use super::model::{Database, Plan};
use super::record::{Event, Outcome, PhaseName, RECORD_VERSION, Record, ReplicaRecord, Span};
use super::report;
use super::state::{self, StateFile};
use crate::db::Db;
use crate::error::Error;
use crate::lock;
use crate::proxy::{self, Proxies};
use sampler::Sampler;
use ui::Ui;

/// How `cutover run` behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The state file (default: next to the plan, `NAME.state.json`).
    pub state: PathBuf,
    /// Where report.md and report.json go.
    pub out: PathBuf,
    /// Serve the controller's `/metrics` (replication lag, phase, step) here.
    pub metrics_listen: Option<SocketAddr>,
    /// Draw progress on stderr.
    pub progress: bool,
    /// Resume even though the plan file changed since the run began.
    pub force: bool,
}

impl RunOptions {
    pub fn for_plan(plan_path: &Path) -> RunOptions {
        RunOptions {
            state: state::default_path(plan_path),
            out: PathBuf::from("cutover-report"),
            metrics_listen: None,
            progress: true,
            force: false,
        }
    }
}

pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Why the run stopped early without an error of its own.
enum Stop {
    /// A gate failed; weights are back on the last good step.
    Gate(String),
    /// The operator pressed Ctrl-C; the run resumes from here.
    Interrupted,
}

/// The result of one phase.
type PhaseResult = Result<Option<Stop>, Error>;

pub(crate) struct Runner<'a> {
    plan: &'a Plan,
    opts: &'a RunOptions,
    file: StateFile,
    rec: Record,
    ui: Ui,
    metrics: Arc<ControllerMetrics>,
    sampler: Sampler,
    interrupted: Arc<AtomicBool>,
    token: Option<String>,
    /// Every app's route name as the proxies call it (metrics label `route`).
    route_names: Vec<String>,
    /// The replicas, found again before each action; what its clones learn of
    /// the fleet (epochs, who answered) is shared with the sampler's.
    fleet: Option<Proxies>,
    /// The replicas seen last, to note changes.
    last_urls: Vec<String>,
    /// Connected database pairs by app.
    dbs: BTreeMap<String, Arc<(Db, Db)>>,
    /// The apps' caches, while the run goes.
    caches: cache::Caches,
    /// cutover-load's timeline, followed for the `users_*` gates (`[users]`).
    users: Option<crate::plan::users::UsersFeed>,
}

/// Runs (or resumes) the plan. `Ok` carries the record whatever the outcome (a
/// failed gate or action is in it, and in the report already written); `Err` is
/// for what stops a run before it can start: the state lock, an unusable state
/// file, a plan that changed.
pub async fn run(plan: &Plan, opts: &RunOptions) -> Result<Record, Error> {
    let mut r = Runner::open(plan, opts).await?;
    if r.rec.outcome == Outcome::Succeeded {
        r.ui.line(&format!(
            "this plan already finished ({}); nothing to do. Move {} away to run it again.",
            fmt_time(r.rec.updated_at),
            r.file.path().display()
        ));
        r.write_report()?;
        return Ok(r.rec);
    }
    let result = r.drive().await;
    r.conclude(result).await
}

impl<'a> Runner<'a> {
    async fn open(plan: &'a Plan, opts: &'a RunOptions) -> Result<Runner<'a>, Error> {
        let file = StateFile::lock(&opts.state)?;
        let rec = match state::load(&opts.state)? {
            None => fresh_record(plan),
            Some(rec) => {
                if rec.outcome == Outcome::Aborted {
                    return Err(Error::Plan(format!(
                        "this run was aborted; move the state file {} away to start over",
                        opts.state.display()
                    )));
                }
                rec
            }
        };
        let mut r = Runner::new(plan, opts, file, rec)?;
        if !r.rec.timeline.is_empty() && r.rec.outcome != Outcome::Succeeded {
            let msg = format!(
                "resuming {} at {} (state file {}){}",
                plan.name,
                where_label(&r.rec, plan),
                opts.state.display(),
                r.rec
                    .stop_reason
                    .as_ref()
                    .map(|s| format!("; it stopped: {s}"))
                    .unwrap_or_default()
            );
            r.ui.line(&msg);
        }
        Ok(r)
    }

    /// A runner over an existing record; refuses a plan that changed under it.
    fn new(
        plan: &'a Plan,
        opts: &'a RunOptions,
        file: StateFile,
        rec: Record,
    ) -> Result<Runner<'a>, Error> {
        if rec.plan_sha256 != plan.sha256 && !opts.force {
            return Err(Error::Plan(format!(
                "{} changed since the run began (state file {}); \
                 run again with --force to go on with the new plan",
                plan.path.display(),
                opts.state.display()
            )));
        }
        Ok(Runner {
            plan,
            opts,
            file,
            rec,
            ui: Ui::new(opts.progress),
            sampler: Sampler::new(),
            metrics: Arc::new(ControllerMetrics::default()),
            interrupted: Arc::new(AtomicBool::new(false)),
            token: plan.token.read()?,
            route_names: Vec::new(),
            fleet: None,
            last_urls: Vec::new(),
            dbs: BTreeMap::new(),
            caches: BTreeMap::new(),
            users: plan
                .users_timeline
                .as_deref()
                .map(crate::plan::users::UsersFeed::new),
        })
    }

    async fn drive(&mut self) -> PhaseResult {
        if let Some(addr) = self.opts.metrics_listen {
            let (bound, _task) = exporter::serve(addr, self.metrics.clone()).await?;
            // Printed with --quiet too: with port 0 it is the only way to learn it.
            let msg = format!("controller metrics on http://{bound}/metrics");
            if self.opts.progress {
                self.ui.line(&msg);
            } else {
                eprintln!("{msg}");
            }
        }
        let flag = self.interrupted.clone();
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        let result = self.phases().await;
        ctrl_c.abort();
        self.sampler.stop();
        result
    }

    async fn phases(&mut self) -> PhaseResult {
        if self.rec.outcome != Outcome::Running {
            let was = self.rec.stop_reason.take().unwrap_or_default();
            self.rec.outcome = Outcome::Running;
            self.event(self.rec.phase, None, None, format!("resumed ({was})"), true);
        }
        let proxies = self.proxies().await?;
        self.check_routes(&proxies).await?;
        self.sampler.start(&proxies, &self.route_names);
        self.start_caches().await?;
        if let Some(app) = self.rec.switching.clone() {
            self.recover_switchover(&app).await?;
        }
        loop {
            self.metrics
                .set_phase(&self.plan.name, self.rec.phase.as_str());
            let stop = match self.rec.phase {
                PhaseName::Preflight => self.preflight().await?,
                PhaseName::Sync => self.sync().await?,
                PhaseName::Steps => self.steps().await?,
                PhaseName::Switchover => self.switchovers().await?,
                PhaseName::Finalize => self.finalize().await?,
                PhaseName::Done => return Ok(None),
            };
            if stop.is_some() {
                return Ok(stop);
            }
            if self.interrupted() {
                return Ok(Some(Stop::Interrupted));
            }
        }
    }

    /// Records how the run ended, saves, writes the report.
    async fn conclude(mut self, result: PhaseResult) -> Result<Record, Error> {
        self.ui.clear();
        self.stop_caches().await;
        match result {
            Ok(None) => {
                self.rec.outcome = Outcome::Succeeded;
                self.rec.stop_reason = None;
            }
            Ok(Some(Stop::Gate(why))) => {
                self.rec.outcome = Outcome::GateFailed;
                self.rec.stop_reason = Some(why);
            }
            Ok(Some(Stop::Interrupted)) => {
                self.rec.outcome = Outcome::Running;
                self.rec.stop_reason =
                    Some("interrupted by the operator; run the plan again to resume".into());
                self.event(self.rec.phase, None, None, "interrupted".into(), false);
            }
            Err(e) => {
                let why = e.to_string();
                self.event(self.rec.phase, None, None, format!("failed: {why}"), false);
                self.rec.outcome = Outcome::Failed;
                self.rec.stop_reason = Some(why);
            }
        }
        self.metrics
            .set_phase(&self.plan.name, self.rec.phase.as_str());
        self.save()?;
        self.write_report()?;
        Ok(self.rec)
    }

    fn write_report(&mut self) -> Result<(), Error> {
        let (md, json) = report::write(&self.rec, &self.opts.out)?;
        self.ui.line(&report::summary(&self.rec));
        self.ui
            .line(&format!("report: {} and {}", md.display(), json.display()));
        Ok(())
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Appends to the timeline and shows it.
    fn event(
        &mut self,
        phase: PhaseName,
        step: Option<usize>,
        app: Option<&str>,
        what: String,
        ok: bool,
    ) {
        let mark = if ok { "" } else { "FAILED: " };
        let who = app.map(|a| format!("{a}: ")).unwrap_or_default();
        self.ui
            .line(&format!("{:<10} {mark}{who}{what}", phase.as_str()));
        self.rec.timeline.push(Event {
            at: now(),
            phase,
            step,
            app: app.map(str::to_string),
            what,
            ok,
        });
    }

    /// Saves the record (with the error seconds and the replicas seen so far).
    fn save(&mut self) -> Result<(), Error> {
        self.sampler.drain_into(&mut self.rec.error_seconds);
        self.absorb_fleet();
        self.rec.updated_at = now();
        self.file.save(&self.rec)
    }

    /// Moves what the proxies' clients learned of the fleet into the record (the
    /// bake calls it every second, so that a replica joining shows at once): the
    /// replicas that joined or left (timeline events), and every replica heard
    /// from.
    pub(super) fn absorb_fleet(&mut self) {
        let Some(fleet) = &self.fleet else { return };
        let (notes, seen) = (fleet.take_notes(), fleet.seen());
        for n in notes {
            let mark = if n.ok { "" } else { "FAILED: " };
            self.ui
                .line(&format!("{:<10} {mark}{}", self.rec.phase.as_str(), n.text));
            // Noted in the background, taken later: in the timeline at its time.
            let i = self.rec.timeline.partition_point(|e| e.at <= n.at);
            self.rec.timeline.insert(
                i,
                Event {
                    at: n.at,
                    phase: self.rec.phase,
                    step: None,
                    app: None,
                    what: n.text,
                    ok: n.ok,
                },
            );
        }
        for s in seen {
            ReplicaRecord::merge(
                &mut self.rec.replicas,
                ReplicaRecord {
                    url: s.url,
                    replica: s.replica,
                    first_answered_s: s.first - self.rec.started_at,
                    last_answered_s: s.last - self.rec.started_at,
                    epochs: s.epochs.into_iter().collect(),
                },
            );
        }
    }

    /// The replicas now (a DNS plan re-resolves every time); one that appeared
    /// since the last look is brought up to the newest replica's state first.
    async fn proxies(&mut self) -> Result<Proxies, Error> {
        let p = match &mut self.fleet {
            Some(p) => {
                p.refresh().await?;
                p.clone()
            }
            None => {
                let p = Proxies::discover(self.plan.proxies.clone(), self.token.clone()).await?;
                self.fleet = Some(p.clone());
                p
            }
        };
        if p.urls() != self.last_urls.as_slice() {
            self.ui.line(&format!(
                "proxy replicas ({}): {}",
                p.urls().len(),
                p.urls().join(", ")
            ));
            self.last_urls = p.urls().to_vec();
        }
        Ok(p)
    }

    /// Every app's route exists on every replica with both of its backends; learns
    /// the route names the metrics use.
    async fn check_routes(&mut self, proxies: &Proxies) -> Result<(), Error> {
        let mut names = Vec::new();
        for url in proxies.urls() {
            let status = proxies.read_status(url).await?;
            for app in &self.plan.apps {
                let route = proxy::find_route(&status, &app.route).ok_or_else(|| {
                    Error::Precondition(format!(
                        "proxy {url}: no route lists host {:?} (app {}); add it to the proxies' config",
                        app.route, app.name
                    ))
                })?;
                let members = &route.members;
                for b in [&app.old, &app.new] {
                    if !members.is_empty() && !members.contains(b) {
                        return Err(Error::Precondition(format!(
                            "proxy {url}: route {} (app {}) has no backend {b:?}; its backends: {}",
                            route.name,
                            app.name,
                            members.join(", ")
                        )));
                    }
                }
                if !names.contains(&route.name) {
                    names.push(route.name.clone());
                }
            }
        }
        self.route_names = names;
        Ok(())
    }

    /// A connected pair for `app` (kept for the run; reconnected when closed). Each
    /// new pair takes the controller lock on both sides, source first, and keeps it
    /// for as long as the pair lives: no other controller works on these databases
    /// during the run. The switchover takes it again on the same sessions (it
    /// stacks) and gives that back when it ends.
    async fn db(&mut self, app: &str, d: &Database) -> Result<Arc<(Db, Db)>, Error> {
        if let Some(pair) = self.dbs.get(app)
            && !pair.0.is_closed()
            && !pair.1.is_closed()
        {
            return Ok(pair.clone());
        }
        // A pair with one side closed still holds the lock on the other: drop it
        // first, so that its session ends (acquire's grace covers the moment that
        // takes).
        drop(self.dbs.remove(app));
        let (src, tgt) = Db::connect_pair(&d.source, &d.target).await?;
        lock::acquire(&src).await?;
        lock::acquire(&tgt).await?;
        let pair = Arc::new((src, tgt));
        self.dbs.insert(app.to_string(), pair.clone());
        Ok(pair)
    }

    /// Every replica's counters now: the replicas are found again first, so that
    /// one that left does not fail the scrape and one that joined counts.
    async fn scrape(&mut self) -> Result<Scrape, Error> {
        let proxies = self.proxies().await?;
        metrics::scrape(&proxies).await
    }

    /// Closes a span: its traffic between two scrapes.
    fn span(&mut self, name: String, phase: PhaseName, started_at: f64, a: &Scrape, b: &Scrape) {
        let w = metrics::window(a, b, &self.route_names);
        self.rec.spans.push(Span {
            name,
            phase,
            started_at,
            ended_at: now(),
            traffic: w.traffic(),
        });
    }

    /// Ends a whole phase that began at `started` (scrape `a`): records its span under
    /// the phase's name and moves the record on to `next`.
    async fn end_phase(
        &mut self,
        phase: PhaseName,
        next: PhaseName,
        started: f64,
        a: &Scrape,
    ) -> Result<(), Error> {
        let b = self.scrape().await?;
        self.span(phase.as_str().to_string(), phase, started, a, &b);
        self.rec.phase = next;
        self.save()
    }

    /// Sets `new_percent` on every app's route on every replica (each app's route
    /// one change), then looks for replicas again: one that appeared while the
    /// changes went out, and was given an older state, is given the newest.
    async fn set_weights(&mut self, proxies: &Proxies, new_percent: f64) -> Result<(), Error> {
        for app in &self.plan.apps {
            self.set_app_weights(proxies, app, new_percent).await?;
        }
        self.proxies().await?;
        self.rec.weights = Some(
            [
                ("old".to_string(), 100.0 - new_percent),
                ("new".to_string(), new_percent),
            ]
            .into_iter()
            .collect(),
        );
        Ok(())
    }
}

fn fresh_record(plan: &Plan) -> Record {
    let t = now();
    Record {
        version: RECORD_VERSION,
        plan_name: plan.name.clone(),
        plan_path: plan.path.display().to_string(),
        plan_sha256: plan.sha256.clone(),
        started_at: t,
        updated_at: t,
        outcome: Outcome::Running,
        stop_reason: None,
        phase: PhaseName::Preflight,
        next_step: 0,
        last_good_step: None,
        weights: None,
        switched: Vec::new(),
        switching: None,
        timeline: Vec::new(),
        spans: Vec::new(),
        gates: Vec::new(),
        lag: BTreeMap::new(),
        switchovers: Vec::new(),
        verify: Vec::new(),
        retired: Vec::new(),
        ledger: None,
        past_proxy: BTreeMap::new(),
        client_failed_requests: None,
        error_seconds: Vec::new(),
        replicas: Vec::new(),
        caches: BTreeMap::new(),
    }
}

/// "step 2 of 3 (new 50%)", "switchover of tasks", "preflight".
pub(crate) fn where_label(rec: &Record, plan: &Plan) -> String {
    match rec.phase {
        PhaseName::Steps => match plan.steps.get(rec.next_step) {
            Some(s) => format!("{} of {}", s.label(rec.next_step), plan.steps.len()),
            None => "the end of the steps".into(),
        },
        PhaseName::Switchover => match &rec.switching {
            Some(app) => format!("the switchover of {app} (interrupted)"),
            None => format!(
                "the switchovers ({} of {} done)",
                rec.switched.len(),
                plan.databases().count()
            ),
        },
        p => p.as_str().to_string(),
    }
}

fn fmt_time(unix: f64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs_f64(unix.max(0.0)))
        .to_string()
}

/// Shows a duration left as "1m 05s" / "12s".
pub(crate) fn fmt_left(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
