//! The live routing state: the config crate's [`Snapshot`] plus what the request path
//! needs precomputed per snapshot (metric handles, parsed upstream authorities,
//! header values, the route's upstream client). Published through one `ArcSwap`;
//! every change (file reload or admin call) goes through [`Shared::update`], which
//! serializes writers.
//!
//! State that must survive a snapshot (holds, in-flight counters, address health) is
//! kept in a [`Registry`] by name and handed to every snapshot built.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use cutover_config::{Config, Eject, Snapshot, Sticky};
use http::HeaderValue;
use http::uri::Authority;

use crate::health::EndpointHealth;
use crate::hold::HoldCell;
use crate::metrics::{Metrics, PairMetrics};
use crate::upstream::{UpClient, Upstream};

/// Process-wide state shared by the listeners, the admin API and the reloader.
pub struct Shared {
    live: ArcSwap<Live>,
    pub metrics: Metrics,
    pub upstream: Upstream,
    pub dns: crate::resolve::Dns,
    /// The config file as named on the command line.
    pub config_path: PathBuf,
    /// The admin token, when one is configured.
    pub admin_token: Option<String>,
    /// The data-plane listeners' open client connections.
    pub conns: Arc<crate::server::ConnCounts>,
    /// Requests held, over every route (`hold.max_queued` caps it).
    pub held: std::sync::atomic::AtomicUsize,
    /// The runtime state's epoch, state file and peers.
    pub fleet: crate::fleet::Fleet,
    registry: Mutex<Registry>,
    reload: Mutex<ReloadStatus>,
    /// Serializes read-modify-write of the snapshot.
    writer: Mutex<()>,
}

/// Per-name state that outlives snapshots.
#[derive(Default)]
pub struct Registry {
    holds: HashMap<String, Arc<HoldCell>>,
    budgets: HashMap<String, Arc<crate::budget::Budget>>,
    counters: HashMap<(String, String), Arc<PairCounters>>,
    /// By backend and `ip:port`.
    endpoints: HashMap<(String, String), Arc<EndpointRt>>,
    /// By backend and its configured address list.
    sets: HashMap<(String, Vec<String>), Arc<EndpointSet>>,
    /// The last good answer per `hostname:port`.
    pub resolved: HashMap<String, Vec<SocketAddr>>,
}

impl Registry {
    /// The endpoint for `addr` of `backend`, created once and then shared.
    fn endpoint(
        &mut self,
        metrics: &Metrics,
        backend: &str,
        addr: SocketAddr,
        host: Option<&str>,
    ) -> Arc<EndpointRt> {
        let key = (backend.to_string(), addr.to_string());
        self.endpoints
            .entry(key)
            .or_insert_with(|| {
                let text = addr.to_string();
                Arc::new(EndpointRt {
                    // A socket address is always a valid URI authority.
                    authority: text
                        .parse()
                        .unwrap_or_else(|_| Authority::from_static("invalid")),
                    health: Arc::new(EndpointHealth::new(
                        metrics.upstream_healthy(backend, &text),
                    )),
                    host: host.map(str::to_string),
                    addr: text,
                })
            })
            .clone()
    }

    /// Every address `addrs` stands for now: literal ones as they are, names as last
    /// resolved (none yet for a name never resolved).
    pub fn expand(
        &mut self,
        metrics: &Metrics,
        backend: &str,
        addrs: &[String],
    ) -> Vec<Arc<EndpointRt>> {
        let mut out = Vec::with_capacity(addrs.len());
        for a in addrs {
            if let Ok(sa) = a.parse::<SocketAddr>() {
                out.push(self.endpoint(metrics, backend, sa, None));
                continue;
            }
            let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
            let resolved = self.resolved.get(a).cloned().unwrap_or_default();
            for sa in resolved {
                out.push(self.endpoint(metrics, backend, sa, Some(host)));
            }
        }
        out
    }
}

/// The current addresses of one backend; names are re-resolved in the background
/// (`resolve.rs`), so this changes without a new snapshot.
pub struct EndpointSet {
    pub list: ArcSwap<Vec<Arc<EndpointRt>>>,
    /// The configured addresses, names included.
    pub addrs: Vec<String>,
}

impl EndpointSet {
    /// Whether any configured address is a host name.
    pub fn has_names(&self) -> bool {
        self.addrs.iter().any(|a| a.parse::<SocketAddr>().is_err())
    }
}

/// Requests in flight on one route × backend, split by kind. SeqCst, because the
/// hold protocol reads them against the hold flag (see [`crate::hold`]).
#[derive(Debug)]
pub struct PairCounters {
    pub reads: AtomicI64,
    pub writes: AtomicI64,
    /// Orders to close the upgraded connections of this route and backend.
    pub disconnect: tokio::sync::watch::Sender<crate::tunnel::Disconnect>,
}

impl Default for PairCounters {
    fn default() -> Self {
        PairCounters {
            reads: AtomicI64::new(0),
            writes: AtomicI64::new(0),
            disconnect: tokio::sync::watch::channel(crate::tunnel::Disconnect::default()).0,
        }
    }
}

impl PairCounters {
    pub fn get(&self, write: bool) -> &AtomicI64 {
        if write { &self.writes } else { &self.reads }
    }

    pub fn total(&self) -> i64 {
        self.reads.load(Ordering::SeqCst) + self.writes.load(Ordering::SeqCst)
    }

    /// Orders every upgraded connection open on this pair closed within `over`.
    pub fn disconnect(&self, over: std::time::Duration) {
        self.disconnect.send_modify(|d| {
            d.seq += 1;
            d.over = over;
        });
    }
}

/// The outcome of the last reload, for `/status`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Set when the last reload failed; cleared by the next good one.
    pub last_error: Option<ReloadError>,
    pub last_success: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct ReloadError {
    pub at: SystemTime,
    pub errors: Vec<String>,
}

/// A snapshot plus its per-request precomputations.
pub struct Live {
    pub snap: Snapshot,
    /// Indexed by route.
    pub routes: Vec<RouteRt>,
    /// Indexed by backend id.
    pub backends: Vec<BackendRt>,
}

/// Per route: handles per backend, the hold, the upstream client, cookie attributes.
pub struct RouteRt {
    /// Indexed by backend id.
    pub pairs: Vec<PairMetrics>,
    /// Indexed by backend id.
    pub counters: Vec<Arc<PairCounters>>,
    pub hold: Arc<HoldCell>,
    pub budget: Arc<crate::budget::Budget>,
    /// Per backend: the pooled client with this route's connect timeout and the
    /// backend's TLS setting.
    pub clients: Vec<UpClient>,
    /// `; Path=/; Max-Age=…; HttpOnly; SameSite=Lax`, appended to a minted value.
    pub cookie_attrs: String,
}

/// Per backend: its name as a header value and its addresses.
pub struct BackendRt {
    pub name: String,
    pub header: HeaderValue,
    pub set: Arc<EndpointSet>,
    pub eject: Eject,
    next: AtomicUsize,
}

/// One upstream address (`ip:port`) and its health.
pub struct EndpointRt {
    pub addr: String,
    /// The configured host name this address was resolved from.
    pub host: Option<String>,
    pub authority: Authority,
    pub health: Arc<EndpointHealth>,
}

impl BackendRt {
    /// Round robin over the addresses that may get requests, skipping `avoid` when
    /// another is up. `None` when every address is down.
    #[inline]
    pub fn pick(&self, avoid: Option<&Arc<EndpointRt>>) -> Option<Arc<EndpointRt>> {
        let list = self.set.list.load();
        let n = list.len();
        let start = if n <= 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        let mut fallback = None;
        for k in 0..n {
            let e = &list[(start + k) % n];
            if e.health.is_up() {
                if avoid.is_some_and(|a| Arc::ptr_eq(a, e)) {
                    fallback = Some(e.clone());
                    continue;
                }
                return Some(e.clone());
            }
        }
        fallback
    }

    /// Whether any address may get requests.
    pub fn any_up(&self) -> bool {
        self.set.list.load().iter().any(|e| e.health.is_up())
    }
}

/// Why the live state could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("backend {backend}: address {addr:?} cannot be used in a URI: {source}")]
    Authority {
        backend: String,
        addr: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("backend {0}: its name cannot be sent as a header value")]
    HeaderValue(String),
    #[error("backend {backend}: {source}")]
    Tls {
        backend: String,
        #[source]
        source: crate::connect::TlsSetupError,
    },
}

impl Shared {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        metrics: Metrics,
        upstream: Upstream,
        admin_token: Option<String>,
        dns: crate::resolve::Dns,
    ) -> Result<Self, StateError> {
        let mut registry = Registry::default();
        let fleet = crate::fleet::Fleet::new(&config.fleet);
        let live = Live::build(Snapshot::new(config), &metrics, &mut registry, &upstream)?;
        metrics.config_generation.set(gen_i64(live.snap.generation));
        Ok(Shared {
            live: ArcSwap::from_pointee(live),
            metrics,
            upstream,
            dns,
            config_path,
            admin_token,
            conns: Arc::default(),
            held: std::sync::atomic::AtomicUsize::new(0),
            fleet,
            registry: Mutex::new(registry),
            reload: Mutex::new(ReloadStatus::default()),
            writer: Mutex::new(()),
        })
    }

    /// The state a request should use from start to end.
    #[inline]
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// `[log] access` and `query` as the current snapshot has them.
    #[inline]
    pub fn access_log(&self) -> (f64, bool) {
        let live = self.live.load();
        let log = &live.snap.config.log;
        (log.access, log.query)
    }

    /// Applies `change` to the current snapshot and publishes the result. Writers are
    /// serialized, so two changes never race on the same base snapshot.
    pub fn update<E>(
        &self,
        change: impl FnOnce(&Snapshot) -> Result<Snapshot, E>,
    ) -> Result<Arc<Live>, UpdateError<E>> {
        self.update_then(change, |_| ())
    }

    /// Like [`Shared::update`], then runs `after` on the published state while still
    /// holding the writer lock, so nothing else is published in between.
    pub fn update_then<E, T>(
        &self,
        change: impl FnOnce(&Snapshot) -> Result<Snapshot, E>,
        after: impl FnOnce(&Live) -> T,
    ) -> Result<Arc<Live>, UpdateError<E>> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.live.load();
        let next = change(&current.snap).map_err(UpdateError::Rejected)?;
        let live = {
            let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            Arc::new(
                Live::build(next, &self.metrics, &mut registry, &self.upstream)
                    .map_err(UpdateError::State)?,
            )
        };
        self.live.store(live.clone());
        self.metrics
            .config_generation
            .set(gen_i64(live.snap.generation));
        after(&live);
        Ok(live)
    }

    /// Runs `f` with the registry locked.
    pub fn with_registry<T>(&self, f: impl FnOnce(&mut Registry, &Metrics) -> T) -> T {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut registry, &self.metrics)
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn record_reload(&self, outcome: Result<(), Vec<String>>) {
        let mut s = self.reload.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => {
                s.last_error = None;
                s.last_success = Some(SystemTime::now());
            }
            Err(errors) => {
                self.metrics.config_reload_errors.inc();
                s.last_error = Some(ReloadError {
                    at: SystemTime::now(),
                    errors,
                });
            }
        }
    }
}

/// Why [`Shared::update`] did not publish.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error(transparent)]
    Rejected(E),
    #[error(transparent)]
    State(StateError),
}

fn gen_i64(g: u64) -> i64 {
    i64::try_from(g).unwrap_or(i64::MAX)
}

impl Live {
    pub fn build(
        snap: Snapshot,
        metrics: &Metrics,
        registry: &mut Registry,
        upstream: &Upstream,
    ) -> Result<Self, StateError> {
        let config = &snap.config;
        let mut backends = Vec::with_capacity(config.backends.len());
        for b in &config.backends {
            for a in &b.addrs {
                // Validation accepted it as ip:port or host:port; check it reads as a
                // URI authority too, so a bad one fails here rather than per request.
                a.parse::<Authority>()
                    .map_err(|source| StateError::Authority {
                        backend: b.name.clone(),
                        addr: a.clone(),
                        source,
                    })?;
            }
            let key = (b.name.clone(), b.addrs.clone());
            let set = match registry.sets.get(&key) {
                Some(set) => set.clone(),
                None => {
                    metrics.backend_start(&b.name, &b.addrs);
                    let list = registry.expand(metrics, &b.name, &b.addrs);
                    let set = Arc::new(EndpointSet {
                        list: ArcSwap::from_pointee(list),
                        addrs: b.addrs.clone(),
                    });
                    registry.sets.insert(key, set.clone());
                    set
                }
            };
            let header = HeaderValue::from_str(&b.name)
                .map_err(|_| StateError::HeaderValue(b.name.clone()))?;
            backends.push(BackendRt {
                name: b.name.clone(),
                header,
                set,
                eject: b.eject.clone(),
                next: AtomicUsize::new(0),
            });
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let members: Vec<&str> = r
                .members
                .iter()
                .map(|&m| config.backends[m].name.as_str())
                .collect();
            metrics.retries_start(&r.name, &members);
            metrics.route_start(&r.name);
            let mut clients = Vec::with_capacity(config.backends.len());
            for b in &config.backends {
                let sni = default_sni(&b.addrs);
                let client = upstream
                    .client(
                        r.timeouts.connect,
                        b.protocol,
                        b.tls.as_ref().map(|t| (t, sni.as_str())),
                    )
                    .map_err(|source| StateError::Tls {
                        backend: b.name.clone(),
                        source,
                    })?;
                clients.push(client);
            }
            routes.push(RouteRt {
                pairs: config
                    .backends
                    .iter()
                    .map(|b| metrics.pair(&r.name, &b.name))
                    .collect(),
                counters: config
                    .backends
                    .iter()
                    .map(|b| {
                        registry
                            .counters
                            .entry((r.name.clone(), b.name.clone()))
                            .or_default()
                            .clone()
                    })
                    .collect(),
                hold: registry
                    .holds
                    .entry(r.name.clone())
                    .or_insert_with(|| Arc::new(HoldCell::new(metrics.held(&r.name))))
                    .clone(),
                budget: registry.budgets.entry(r.name.clone()).or_default().clone(),
                clients,
                cookie_attrs: match &r.sticky {
                    Sticky::Cookie { max_age, .. } => {
                        format!(
                            "; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                            max_age.as_secs()
                        )
                    }
                    _ => String::new(),
                },
            });
        }
        Ok(Live {
            snap,
            routes,
            backends,
        })
    }
}

/// The TLS server name of a backend without `tls.sni`: its first host name, else
/// its first address's IP.
pub(crate) fn default_sni(addrs: &[String]) -> String {
    let host = |a: &String| {
        a.rsplit_once(':')
            .map_or(a.clone(), |(h, _)| h.trim_matches(['[', ']']).to_string())
    };
    addrs
        .iter()
        .find(|a| a.parse::<SocketAddr>().is_err())
        .or_else(|| addrs.first())
        .map(host)
        .unwrap_or_default()
}

impl Live {
    /// Whether `backend` is drained on route `ri`: no share of reads, not the write
    /// side, and nothing in flight.
    pub fn drained(&self, ri: usize, backend: usize) -> bool {
        let weight = self.snap.weights(ri).basis_points(backend);
        let writes_here = self.snap.writes(ri) == cutover_config::WriteSide::Backend(backend);
        // An upgraded connection (a WebSocket) is traffic too, for as long as it
        // stays open.
        weight == 0
            && !writes_here
            && self.routes[ri].counters[backend].total() == 0
            && self.routes[ri].pairs[backend].upgraded.get() == 0
    }
}
