//! Running a [`LoadSpec`]: resolve the target once, open the connections on the load
//! threads before the clock starts, run one task per connection there and one
//! aggregator on the caller's runtime, wait, and assemble the [`Report`].
//!
//! The engine owns timing and transport. What a number means (the report, the SLO)
//! belongs to the modules that define it.

mod connect;
mod request;
mod schedule;
mod threads;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::HOST;
use tokio::sync::mpsc;

pub use schedule::DRAIN_GRACE;
pub use worker::BACKEND_HEADER;

use self::connect::Connector;
use self::request::RequestSource;
use self::schedule::{Kind, Schedule};
use self::threads::{LoadThreads, Start};
use self::worker::{Marks, Shared};
use crate::ledger::{Ledger, LedgerError};
use crate::progress::{self, Progress};
use crate::report::{LedgerSummary, Report, ReportContext};
use crate::slo::SloOutcome;
use crate::spec::{LoadSpec, SpecError};
use crate::stats::{Aggregate, Batch, Measured};
use crate::timeline::{Second, Timeline};
use crate::tls::{self, TlsError};

/// A run that could not start or could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The spec is not valid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The target's host name does not resolve.
    #[error("<URL>: cannot resolve {host}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The threads that drive the connections could not be started.
    #[error("cannot start the load threads: {reason}")]
    Threads {
        /// Why.
        reason: String,
    },
    /// The ledger could not be written; a ledger with gaps proves nothing.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The timeline file could not be created.
    #[error("--timeline {path}: {source}")]
    Timeline {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs `spec` to the end.
pub async fn run(spec: LoadSpec) -> Result<Report, RunError> {
    run_until(spec, std::future::pending()).await
}

/// Runs `spec` until it ends or `shutdown` completes; then in-flight requests finish
/// (within the timeout) and the report covers what was measured.
pub async fn run_until(
    spec: LoadSpec,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, RunError> {
    spec.validate()?;
    let target = &spec.target;
    let tls = if target.tls {
        let config = tls::client_config(spec.insecure, spec.cacert.as_deref(), spec.http2)?;
        Some((config, tls::server_name(&sni_host(&spec))?))
    } else {
        None
    };
    let addr = resolve(&target.host, target.port).await?;
    let connector = Arc::new(Connector::new(addr, tls, spec.http2));
    let ledger = spec.ledger.as_deref().map(Ledger::create).transpose()?;
    let timeline = match &spec.timeline {
        Some(path) => Some(Timeline::create(path).map_err(|source| RunError::Timeline {
            path: path.display().to_string(),
            source,
        })?),
        None => None,
    };

    // Handshakes happen before the clock starts, so the first requests' latency is not
    // inflated by them.
    let mut threads = LoadThreads::spawn(spec.threads, spec.connections, &connector, spec.timeout)
        .map_err(|reason| RunError::Threads { reason })?;
    threads
        .ready()
        .await
        .map_err(|reason| RunError::Threads { reason })?;
    let schedule = Schedule::new(
        Instant::now(),
        spec.rate,
        spec.warmup,
        spec.effective_duration(),
        spec.requests,
    );
    let (t0, measure_start) = (schedule.t0, schedule.measure_start);
    let shared = Arc::new(Shared {
        schedule,
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        connector,
        source: RequestSource::new(&spec),
        ledger,
        ledger_error: Mutex::new(None),
        timeout: spec.timeout,
    });

    let (tx, rx) = mpsc::unbounded_channel();
    let progress = Progress::new(spec.progress);
    let aggregator = tokio::spawn(aggregate(
        rx,
        Watch {
            progress,
            timeline,
            shared: shared.clone(),
        },
        t0,
        measure_start,
    ));
    threads.start(&Start {
        shared: shared.clone(),
        tx,
        seed: spec.seed.unwrap_or_else(rand::random),
    });
    let (marks, stopped_at) = threads.join(shutdown, || shared.request_stop()).await;
    let finished = Instant::now();
    let agg = match aggregator.await {
        Ok(agg) => agg,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The aggregator is never aborted; treat a cancelled one as having seen nothing.
        Err(_) => Aggregate::default(),
    };

    let ledger_error = shared
        .ledger_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(e) = ledger_error {
        return Err(e.into());
    }
    let ledger = match &shared.ledger {
        Some(l) => Some(LedgerSummary {
            entries: l.finish()?,
            path: l.path().display().to_string(),
        }),
        None => None,
    };

    let duration_s = measured_seconds(&shared.schedule, marks, stopped_at.unwrap_or(finished));
    let due = shared.schedule.due_by(stopped_at.unwrap_or(finished));
    let slo = match &spec.slo {
        Some(slo) => slo.evaluate(&Measured {
            aggregate: &agg,
            duration_s,
        }),
        None => SloOutcome::none(),
    };
    Ok(Report::build(
        &agg,
        ReportContext {
            url: spec.target.url.clone(),
            rate_target: spec.rate,
            connections: spec.connections,
            duration_s,
            warmup_s: measure_start.saturating_duration_since(t0).as_secs_f64(),
            interrupted: stopped_at.is_some(),
            unsent: due.saturating_sub(agg.totals.requests),
            ledger,
            slo,
        },
    ))
}

/// The measured time. Open loop: from the first measured due time to the end of the
/// schedule, or to the last send when sending ran late (a backlog, or a target that fell
/// behind) - the rate achieved is the rate at which requests went out. Closed loop: to
/// the last completion - the rate achieved is the throughput.
fn measured_seconds(schedule: &Schedule, marks: Marks, ended: Instant) -> f64 {
    let end = match schedule.kind {
        Kind::Open { end_ticket, .. } => {
            let schedule_end = schedule.due(end_ticket).min(ended);
            marks
                .last_sent
                .map_or(schedule_end, |sent| sent.max(schedule_end))
        }
        Kind::Closed { .. } => match marks.last_done {
            Some(done) => done,
            None => return 0.0,
        },
    };
    end.saturating_duration_since(schedule.measure_start)
        .as_secs_f64()
}

/// The TLS server name: a `-H Host:` override without its port, else the URL's host.
fn sni_host(spec: &LoadSpec) -> String {
    let host = spec
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| http::uri::Authority::try_from(h).ok())
        .map(|a| a.host().to_owned())
        .unwrap_or_else(|| spec.target.host.clone());
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, RunError> {
    let fail = |reason: String| RunError::Resolve {
        host: host.to_owned(),
        reason,
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no address found".into()))
}

/// What the aggregator reports each second to: the progress line and the timeline.
struct Watch {
    progress: Progress,
    timeline: Option<Timeline>,
    shared: Arc<Shared>,
}

/// Receives every batch until all recorders are gone; each second shows progress
/// and writes a timeline line.
async fn aggregate(
    mut rx: mpsc::UnboundedReceiver<Batch>,
    watch: Watch,
    t0: Instant,
    measure_start: Instant,
) -> Aggregate {
    let Watch {
        progress,
        mut timeline,
        shared,
    } = watch;
    let ticking = progress.is_on() || timeline.is_some();
    let mut agg = Aggregate::default();
    let period = Duration::from_secs(1);
    let mut ticker = tokio::time::interval_at((Instant::now() + period).into(), period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => agg.absorb(&batch),
                None => break,
            },
            _ = ticker.tick(), if ticking => {
                let now = Instant::now();
                let (elapsed, warming_up) = (now.saturating_duration_since(t0), now < measure_start);
                progress.show(progress::line(
                    &agg,
                    elapsed,
                    now.saturating_duration_since(last_tick),
                    warming_up,
                ));
                // Once stopping, nothing more is sent: a line then would count the
                // schedule's later tickets as behind.
                if let Some(t) = timeline.as_mut().filter(|_| !shared.stopping()) {
                    let due = if warming_up { 0 } else { shared.schedule.due_by(now) };
                    t.write(&Second::of(&agg, elapsed, warming_up, due));
                }
                agg.reset_interval();
                last_tick = now;
            }
        }
    }
    progress.finish();
    agg
}
