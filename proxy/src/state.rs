//! The live routing state: the config crate's [`Snapshot`] plus what the request path
//! needs precomputed per snapshot (metric handles, parsed upstream authorities,
//! header values). Published through one `ArcSwap`; every change (file reload or
//! admin call) goes through [`Shared::update`], which serializes writers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use cutover_config::{Config, Snapshot, Sticky};
use http::HeaderValue;
use http::uri::Authority;

use crate::metrics::{Metrics, PairMetrics};
use crate::upstream::Upstream;

/// Process-wide state shared by the listeners, the admin API and the reloader.
pub struct Shared {
    live: ArcSwap<Live>,
    pub metrics: Metrics,
    pub upstream: Upstream,
    /// The config file as named on the command line.
    pub config_path: PathBuf,
    /// The admin token, when one is configured.
    pub admin_token: Option<String>,
    reload: Mutex<ReloadStatus>,
    /// Serializes read-modify-write of the snapshot.
    writer: Mutex<()>,
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

/// Per route: metric handles per backend and the sticky cookie's attributes.
pub struct RouteRt {
    /// Indexed by backend id.
    pub pairs: Vec<PairMetrics>,
    /// `; Path=/; Max-Age=…; HttpOnly; SameSite=Lax`, appended to a minted value.
    pub cookie_attrs: String,
}

/// Per backend: its name as a header value and its addresses.
pub struct BackendRt {
    pub name: String,
    pub header: HeaderValue,
    pub authorities: Vec<Authority>,
    next: AtomicUsize,
}

impl BackendRt {
    /// Round-robin over the backend's addresses.
    #[inline]
    pub fn next_authority(&self) -> &Authority {
        let n = self.authorities.len();
        let i = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        &self.authorities[i]
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
}

impl Shared {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        metrics: Metrics,
        upstream: Upstream,
        admin_token: Option<String>,
    ) -> Result<Self, StateError> {
        let live = Live::build(Snapshot::new(config), &metrics)?;
        metrics.config_generation.set(gen_i64(live.snap.generation));
        Ok(Shared {
            live: ArcSwap::from_pointee(live),
            metrics,
            upstream,
            config_path,
            admin_token,
            reload: Mutex::new(ReloadStatus::default()),
            writer: Mutex::new(()),
        })
    }

    /// The state a request should use from start to end.
    #[inline]
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Applies `change` to the current snapshot and publishes the result. Writers are
    /// serialized, so two changes never race on the same base snapshot.
    pub fn update<E>(
        &self,
        change: impl FnOnce(&Snapshot) -> Result<Snapshot, E>,
    ) -> Result<Arc<Live>, UpdateError<E>> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.live.load();
        let next = change(&current.snap).map_err(UpdateError::Rejected)?;
        let live = Arc::new(Live::build(next, &self.metrics).map_err(UpdateError::State)?);
        self.live.store(live.clone());
        self.metrics
            .config_generation
            .set(gen_i64(live.snap.generation));
        Ok(live)
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
    pub fn build(snap: Snapshot, metrics: &Metrics) -> Result<Self, StateError> {
        let config = &snap.config;
        let mut backends = Vec::with_capacity(config.backends.len());
        for b in &config.backends {
            let mut authorities = Vec::with_capacity(b.addrs.len());
            for a in &b.addrs {
                let auth = a
                    .parse::<Authority>()
                    .map_err(|source| StateError::Authority {
                        backend: b.name.clone(),
                        addr: a.clone(),
                        source,
                    })?;
                authorities.push(auth);
            }
            let header = HeaderValue::from_str(&b.name)
                .map_err(|_| StateError::HeaderValue(b.name.clone()))?;
            backends.push(BackendRt {
                name: b.name.clone(),
                header,
                authorities,
                next: AtomicUsize::new(0),
            });
        }
        let routes = config
            .routes
            .iter()
            .map(|r| RouteRt {
                pairs: config
                    .backends
                    .iter()
                    .map(|b| metrics.pair(&r.name, &b.name))
                    .collect(),
                cookie_attrs: match &r.sticky {
                    Sticky::Cookie { max_age, .. } => {
                        format!(
                            "; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                            max_age.as_secs()
                        )
                    }
                    _ => String::new(),
                },
            })
            .collect();
        Ok(Live {
            snap,
            routes,
            backends,
        })
    }
}
