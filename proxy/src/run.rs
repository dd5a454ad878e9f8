//! Process lifecycle: check the admin token, bind (or take the sockets over from a
//! running process, see [`crate::upgrade`]), serve, apply reloads, and stop on
//! SIGTERM or after handing over to a successor, once in-flight requests finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cutover_config::reload::{self, Reloaded, WatchOptions};
use cutover_config::{AdminSettings, Config, format_duration};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::metrics::{Metrics, MetricsError};
use crate::server::Graceful;
use crate::state::{Shared, StateError, UpdateError};
use crate::upgrade::{Role, Start};
use crate::upstream::Upstream;
use crate::{admin, handle, server, tls, upgrade};

/// After SIGTERM or a handover, how long HTTP/1 keep-alive clients get to leave on
/// their own (each is told `Connection: close` with its next response) before idle
/// connections are closed. Capped at half of `proxy.grace`. Without it, a
/// keep-alive connection closed while idle races the client's next request, which
/// was already on its way: the client sees a reset for a request nobody answered
/// (behind a load balancer that has just stopped sending new connections, every
/// busy keep-alive connection is such a race).
const LINGER: Duration = Duration::from_secs(5);

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
    #[error(transparent)]
    Upgrade(#[from] upgrade::UpgradeError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Dns(#[from] crate::resolve::DnsError),
}

/// Serves `config` (read from `config_path` as `text`) until SIGTERM or SIGINT, or
/// until a new process has taken over. `start` says whether to bind the listeners
/// or take them over from the running process.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    text: String,
    start: Start,
) -> Result<(), RunError> {
    let token = admin_token(&config.admin)?;
    if token.is_none() && !config.admin.listen.ip().is_loopback() {
        return Err(RunError::AdminTokenRequired {
            listen: config.admin.listen,
        });
    }
    let control_path = config.proxy.control_socket.clone();
    let mut takeover = match start {
        Start::Fresh => None,
        Start::Upgrade => Some(upgrade::take_over(&control_path).await?),
    };
    let listen = |t: Option<&mut upgrade::Takeover>, role: Role, addr: SocketAddr| {
        upgrade::listener(t, role, addr).map_err(|source| RunError::Bind {
            addr,
            what: role.field(),
            source,
        })
    };
    let data = listen(takeover.as_mut(), Role::Http, config.listen.http)?;
    let https = match config.listen.https {
        Some(addr) => Some(listen(takeover.as_mut(), Role::Https, addr)?),
        None => None,
    };
    let admin_listener = listen(takeover.as_mut(), Role::Admin, config.admin.listen)?;
    let data_addr = data.local_addr().unwrap_or(config.listen.http);
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.listen);
    let mut sockets = vec![(Role::Http, &data), (Role::Admin, &admin_listener)];
    sockets.extend(https.as_ref().map(|l| (Role::Https, l)));
    let sockets = upgrade::duplicates(&sockets);
    let grace = config.proxy.grace;
    let proxy_protocol = config.listen.proxy_protocol;

    let limits = config.limits.clone();
    let upstream = Upstream::new(crate::upstream::PoolLimits {
        max_connections: limits.upstream_max_connections,
        max_waiting: limits.upstream_max_waiting,
        idle: limits.upstream_idle,
    });
    let dns = crate::resolve::Dns::new(&config.resolver)?;
    let initial = config.clone();
    let shared = Arc::new(Shared::new(
        config,
        config_path.clone(),
        Metrics::new()?,
        upstream,
        token,
        dns,
    )?);
    crate::resolve::prefetch(&shared, &initial).await;
    // The state file before anything is served: a replica restarted mid-hold
    // comes back held.
    crate::fleet::load(&shared);
    if let Some(t) = takeover.as_mut() {
        upgrade::apply_carried(&shared, t.carried());
    }
    let live = shared.live();
    crate::resolve::refresh_sets(&shared, &live);
    tracing::info!(
        file = %config_path.display(),
        routes = live.snap.routes().len(),
        backends = live.snap.config.backends.len(),
        threads = live.snap.config.proxy.threads,
        "configuration loaded"
    );

    let checks = crate::health::start_checks(&live, &shared.upstream);
    let resolvers = crate::resolve::start(&shared, &live);
    let (reloader, outcomes) = reload::watch(&config_path, &text, WatchOptions::default())?;
    tokio::spawn(apply_reloads(shared.clone(), outcomes, (checks, resolvers)));
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

    let guards = Arc::new(server::Guards {
        limits,
        counts: shared.conns.clone(),
        events: Arc::new(ListenerEvents(shared.clone())),
    });
    let (admin_stop, admin_stop_rx) = server::stop_pair();
    let s = shared.clone();
    let admin_task = tokio::spawn(server::accept_loop(
        admin_listener,
        admin_stop_rx,
        Graceful::new(),
        None,
        false,
        None,
        move |_peer, req| admin::handle(s.clone(), req),
    ));
    tracing::info!(addr = %admin_addr, "admin API listening");
    // Peers are asked before the data plane serves: a replica that starts during a
    // migration serves the fleet's weights, write sides and holds, not its file's.
    // Connections wait in the listen queue meanwhile.
    crate::fleet::bootstrap(&shared).await;
    let _sync = crate::fleet::start_sync(shared.clone());
    shared.metrics.fleet_epoch.set(shared.fleet.epoch() as i64);
    shared
        .metrics
        .fleet_ready
        .set(i64::from(shared.fleet.ready()));
    let (data_stop, stop) = server::stop_pair();
    let s = shared.clone();
    let data_task = tokio::spawn(server::accept_loop(
        data,
        stop.clone(),
        Graceful::new(),
        None,
        proxy_protocol,
        Some(guards.clone()),
        move |peer, req| handle::handle(s.clone(), peer, req),
    ));
    let https_task = match https {
        Some(listener) => {
            let https_addr = listener.local_addr().ok();
            let acceptor = tls::acceptor(tls::Certs::new(shared.clone()))?;
            let s = shared.clone();
            let task = tokio::spawn(server::accept_loop(
                listener,
                stop,
                Graceful::new(),
                Some(acceptor),
                proxy_protocol,
                Some(guards),
                move |peer, req| handle::handle(s.clone(), peer, req),
            ));
            if let Some(addr) = https_addr {
                tracing::info!(%addr, "listening for HTTPS traffic");
            }
            Some(task)
        }
        None => None,
    };
    tracing::info!(addr = %data_addr, "listening for traffic");
    if let Some(t) = takeover {
        let old_pid = t.old_pid;
        match t.finish().await {
            Ok(()) => tracing::info!(
                old_pid,
                "the previous process stopped accepting; this one serves alone"
            ),
            // We hold the sockets and serve; the old process exits on its own.
            Err(e) => tracing::warn!(old_pid, "{e}"),
        }
    }
    let mut control = upgrade::control(&control_path, sockets, shared.clone());

    let (why, successor) = tokio::select! {
        _ = term.recv() => ("SIGTERM", None),
        _ = int.recv() => ("SIGINT", None),
        h = control.handed_over() => ("upgrade", Some(h)),
    };
    data_stop.stop();
    if successor.is_some() {
        // The successor answers the admin API from now on.
        admin_stop.stop();
    }
    // Closes the duplicated sockets too, so that after SIGTERM the kernel refuses
    // new connections instead of queueing them for nobody.
    control.close().await;
    let data_graceful = data_task.await.unwrap_or_default();
    let https_graceful = match https_task {
        Some(t) => t.await.unwrap_or_default(),
        None => Graceful::new(),
    };
    if let Some(h) = successor {
        tracing::info!(pid = h.pid, "handed over to a new process");
        h.confirm_stopped().await;
    }
    let linger = LINGER.min(grace / 2);
    // Upgraded connections (WebSockets) left hyper's count when they switched:
    // they are told to close (1012) over the linger, so their clients reconnect to
    // a replica that serves instead of losing the connection when this one exits.
    let tunnels = close_tunnels(&shared, linger);
    let tunnels_until = tokio::time::Instant::now() + grace;
    let open = data_graceful.count() + https_graceful.count();
    tracing::info!(
        reason = why,
        open_connections = open,
        upgraded_connections = tunnels,
        grace = %format_duration(grace),
        linger = %format_duration(linger),
        "stopped accepting; letting in-flight requests finish (keep-alive clients are told to close)"
    );
    let (plain_done, tls_done, tunnels_done) = tokio::join!(
        server::drain(data_graceful, linger, grace),
        server::drain(https_graceful, linger, grace),
        tunnels_closed(&shared, tunnels_until),
    );
    if plain_done && tls_done && tunnels_done {
        tracing::info!("all connections finished");
    } else {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    admin_stop.stop();
    let admin_graceful = admin_task.await.unwrap_or_default();
    server::drain(admin_graceful, Duration::ZERO, Duration::from_secs(1)).await;
    drop(reloader);
    tracing::info!("stopped");
    Ok(())
}

/// Orders every upgraded connection closed within `over` (a WebSocket gets a 1012
/// close frame); returns how many are open.
fn close_tunnels(shared: &Shared, over: Duration) -> i64 {
    let live = shared.live();
    for counters in live.routes.iter().flat_map(|r| &r.counters) {
        counters.disconnect(over);
    }
    open_tunnels(&live)
}

/// Upgraded connections open on every route and backend.
fn open_tunnels(live: &crate::state::Live) -> i64 {
    live.routes
        .iter()
        .flat_map(|r| &r.pairs)
        .map(|p| p.upgraded.get())
        .sum()
}

/// Waits until no upgraded connection is open, or `deadline`; false at the deadline.
async fn tunnels_closed(shared: &Shared, deadline: tokio::time::Instant) -> bool {
    loop {
        let open = open_tunnels(&shared.live());
        if open <= 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                open,
                "upgraded connections still open at the end of the grace period"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    mut background: (
        tokio::sync::watch::Sender<()>,
        tokio::sync::watch::Sender<()>,
    ),
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
                // New host names get addresses before the snapshot that needs them.
                crate::resolve::prefetch(&shared, &config).await;
                let mut kept = Vec::new();
                let before = crate::fleet::state(&shared).routes;
                let result = shared.update(|snap| {
                    let (next, k) = snap.reload(*config);
                    kept = k;
                    Ok::<_, std::convert::Infallible>(next)
                });
                match result {
                    Ok(live) => {
                        shared.record_reload(Ok(()));
                        if crate::fleet::state(&shared).routes != before {
                            crate::fleet::reloaded(&shared);
                        }
                        // Checks follow the new addresses and settings; the verdicts
                        // so far are kept per address.
                        let next = (
                            crate::health::start_checks(&live, &shared.upstream),
                            crate::resolve::start(&shared, &live),
                        );
                        drop(std::mem::replace(&mut background, next));
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

/// The data-plane listeners' refusals and timeouts, as metrics.
struct ListenerEvents(Arc<Shared>);

impl server::Events for ListenerEvents {
    fn refused(&self, reason: &'static str) {
        self.0.metrics.connection_refused(reason);
        tracing::debug!(reason, "connection refused at accept: over a [limits] cap");
    }

    fn timed_out(&self, route: Option<&str>, kind: &'static str) {
        let route = route.unwrap_or("-");
        self.0.metrics.client_timeout(route, kind);
        // An idle connection closing is routine; the others are a client that
        // stalled, and the operator may want to see them.
        if kind == "keepalive" {
            tracing::debug!(route, kind, "idle client connection closed");
        } else {
            tracing::info!(route, kind, "client cut off by a timeout");
        }
    }

    fn head_too_large(&self) {
        let status = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        self.0.metrics.local_answer("unrouted", status);
    }
}
