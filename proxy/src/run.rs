//! Process lifecycle: check the admin token, bind, serve, apply reloads, and stop on
//! SIGTERM after in-flight requests finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cutover_config::reload::{self, Reloaded, WatchOptions};
use cutover_config::{AdminSettings, Config, format_duration};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::metrics::{Metrics, MetricsError};
use crate::state::{Shared, StateError, UpdateError};
use crate::upstream::Upstream;
use crate::{admin, handle, server};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "admin.listen is {listen}, which is not loopback: set admin.token_file or CUTOVER_ADMIN_TOKEN, or listen on 127.0.0.1"
    )]
    AdminTokenRequired { listen: SocketAddr },
    #[error("admin.token_file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Watch(#[from] reload::WatchError),
    #[error("cannot install signal handlers: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Serves `config` (read from `config_path` as `text`) until SIGTERM or SIGINT.
pub async fn run(config_path: PathBuf, config: Config, text: String) -> Result<(), RunError> {
    let token = admin_token(&config.admin)?;
    if token.is_none() && !config.admin.listen.ip().is_loopback() {
        return Err(RunError::AdminTokenRequired {
            listen: config.admin.listen,
        });
    }
    let data = server::bind(config.listen.http).map_err(|source| RunError::Bind {
        addr: config.listen.http,
        what: "listen.http",
        source,
    })?;
    let admin_listener = server::bind(config.admin.listen).map_err(|source| RunError::Bind {
        addr: config.admin.listen,
        what: "admin.listen",
        source,
    })?;
    let data_addr = data.local_addr().unwrap_or(config.listen.http);
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.listen);
    let grace = config.proxy.grace;

    let upstream = Upstream::default();
    let shared = Arc::new(Shared::new(
        config,
        config_path.clone(),
        Metrics::new()?,
        upstream,
        token,
    )?);
    let live = shared.live();
    tracing::info!(
        file = %config_path.display(),
        routes = live.snap.routes().len(),
        backends = live.snap.config.backends.len(),
        threads = live.snap.config.proxy.threads,
        "configuration loaded"
    );

    let checks = crate::health::start_checks(&live);
    let (reloader, outcomes) = reload::watch(&config_path, &text, WatchOptions::default())?;
    tokio::spawn(apply_reloads(shared.clone(), outcomes, checks));
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let force = reloader.forcer();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = force.send(());
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let s = shared.clone();
    let data_task = tokio::spawn(server::accept_loop(
        data,
        stop_rx.clone(),
        GracefulShutdown::new(),
        move |peer, req| handle::handle(s.clone(), peer, req),
    ));
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let s = shared.clone();
    let admin_task = tokio::spawn(server::accept_loop(
        admin_listener,
        admin_stop_rx,
        GracefulShutdown::new(),
        move |_peer, req| admin::handle(s.clone(), req),
    ));
    tracing::info!(addr = %data_addr, "listening for traffic");
    tracing::info!(addr = %admin_addr, "admin API listening");

    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let _ = stop_tx.send(true);
    let data_graceful = data_task.await.unwrap_or_default();
    let open = data_graceful.count();
    tracing::info!(
        signal = which,
        open_connections = open,
        grace = %format_duration(grace),
        "stopped accepting; letting in-flight requests finish"
    );
    tokio::select! {
        _ = data_graceful.shutdown() => tracing::info!("all connections finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
    let _ = admin_stop_tx.send(true);
    let admin_graceful = admin_task.await.unwrap_or_default();
    tokio::select! {
        _ = admin_graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
    drop(reloader);
    tracing::info!("stopped");
    Ok(())
}

/// The admin token from `token_file` or `CUTOVER_ADMIN_TOKEN`. Only its length is
/// ever logged.
fn admin_token(admin: &AdminSettings) -> Result<Option<String>, RunError> {
    let (token, source) = match &admin.token_file {
        Some(path) => {
            let raw = std::fs::read_to_string(path).map_err(|e| RunError::TokenFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            (raw.trim().to_string(), "admin.token_file")
        }
        None => match std::env::var("CUTOVER_ADMIN_TOKEN") {
            Ok(v) => (v.trim().to_string(), "CUTOVER_ADMIN_TOKEN"),
            Err(_) => return Ok(None),
        },
    };
    if token.is_empty() {
        return match &admin.token_file {
            Some(path) => Err(RunError::TokenFile {
                path: path.clone(),
                reason: "the file is empty".into(),
            }),
            None => Ok(None),
        };
    }
    tracing::info!(
        source,
        length = token.len(),
        "admin API requires a bearer token"
    );
    Ok(Some(token))
}

async fn apply_reloads(
    shared: Arc<Shared>,
    mut outcomes: mpsc::Receiver<Reloaded>,
    mut checks: tokio::sync::watch::Sender<()>,
) {
    while let Some(outcome) = outcomes.recv().await {
        match outcome {
            Reloaded::Loaded(config) => {
                let current = shared.live();
                let old = &current.snap.config;
                if old.listen != config.listen
                    || old.admin != config.admin
                    || old.proxy != config.proxy
                {
                    tracing::warn!(
                        "[listen], [admin] and [proxy] changes take effect after a restart"
                    );
                }
                let mut kept = Vec::new();
                let result = shared.update(|snap| {
                    let (next, k) = snap.reload(*config);
                    kept = k;
                    Ok::<_, std::convert::Infallible>(next)
                });
                match result {
                    Ok(live) => {
                        shared.record_reload(Ok(()));
                        // Checks follow the new addresses and settings; the verdicts
                        // so far are kept per address.
                        drop(std::mem::replace(
                            &mut checks,
                            crate::health::start_checks(&live),
                        ));
                        tracing::info!(
                            generation = live.snap.generation,
                            routes = live.snap.routes().len(),
                            "configuration reloaded"
                        );
                        for route in kept {
                            tracing::info!(%route, "kept the weights set over the admin API; the file did not change them");
                        }
                    }
                    Err(UpdateError::State(e)) => {
                        tracing::error!(error = %e, "configuration reload refused; still serving the previous one");
                        shared.record_reload(Err(vec![e.to_string()]));
                    }
                    Err(UpdateError::Rejected(never)) => match never {},
                }
            }
            Reloaded::Failed(e) => {
                let generation = shared.live().snap.generation;
                tracing::error!(
                    generation,
                    "configuration reload refused; still serving the previous one:\n{e}"
                );
                shared.record_reload(Err(e.diagnostics()));
            }
        }
    }
}
