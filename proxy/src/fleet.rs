//! The fleet: the runtime state the admin API sets (weights, write sides, holds)
//! carries an epoch, is written to a state file on every change, and is shared
//! with the other replicas.
//!
//! - **Epoch.** Every change raises it. A call may name the epoch it sets
//!   (`"epoch": N`); one older than this replica's is refused (409), so a stale
//!   controller cannot undo a newer one's step. Without one, the replica raises its
//!   own epoch by one. States order by (epoch, origin); the origin of a change
//!   that named its epoch is the digest of what it serves, so replicas that took
//!   different changes at one epoch still settle on one of them.
//! - **Durable.** The state is written atomically (a temporary file, fsync,
//!   rename) while the change still holds the epoch lock, and read at start before
//!   anything is served. For each route, a record whose file basis (what the config
//!   file said when it was written) differs from the file now loses to the file, as
//!   a reload does; a hold is kept either way.
//! - **Shared.** With `[fleet] peers`, a starting replica asks every peer for
//!   `/state` and adopts the newest before it serves or reports ready; a running
//!   one asks every `sync_interval` and adopts any newer state (anti-entropy).
//!   Adopting takes the peer's admin-set values and holds (with their deadlines);
//!   where the peer serves its file's values, this replica serves its own file's.
//!
//! Adopting orders its effects as a switchover does: new holds start first, then
//! the weights and write sides are published, then holds that ended are released,
//! so a released request never routes on the old write side.

mod peers;
mod persist;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cutover_api::{FileBasis, HoldState, RouteState, Source, State};
use cutover_config::{FleetSettings, Peers, Snapshot, WeightsSource, format_percent};

use crate::hold::Scope;
use crate::state::{Live, Shared};

pub use peers::{bootstrap, start_sync};

/// This replica's place in the fleet.
pub struct Fleet {
    /// This replica's name, in every `/state` it answers.
    pub name: String,
    pub settings: FleetSettings,
    epoch: Mutex<Epoch>,
    /// Set once the start-up sync is done (at once without peers).
    bootstrapped: AtomicBool,
    /// Set while a peer is known to be newer and its state was not adopted.
    behind: AtomicBool,
    /// The last answer of each peer, by address.
    seen: Mutex<BTreeMap<String, cutover_api::PeerStatus>>,
}

/// The epoch and the replica whose change made it.
#[derive(Debug, Clone, Default)]
struct Epoch {
    epoch: u64,
    origin: String,
}

/// A change under way: holds the epoch lock until [`Change::commit`].
pub struct Change<'a> {
    guard: MutexGuard<'a, Epoch>,
    given: Option<u64>,
}

impl Fleet {
    pub fn new(settings: &FleetSettings) -> Fleet {
        let name = settings.name.clone().unwrap_or_else(default_name);
        Fleet {
            name,
            settings: settings.clone(),
            epoch: Mutex::new(Epoch::default()),
            bootstrapped: AtomicBool::new(settings.peers == Peers::None),
            behind: AtomicBool::new(false),
            seen: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Epoch> {
        self.epoch.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Starts a change that names `given` as its epoch: refused with this
    /// replica's epoch when `given` is older.
    pub fn begin(&self, given: Option<u64>) -> Result<Change<'_>, u64> {
        let guard = self.lock();
        // A call naming an epoch before the start-up sync would set the epoch
        // without the state that goes with it: the replica would then rank as
        // current while serving its file's weights. `PUT /state` brings a starting
        // replica up to date instead; the admin handlers refuse these calls first
        // (see `starting`), this is the backstop.
        if given.is_some() && !self.bootstrapped.load(Ordering::SeqCst) {
            return Err(u64::MAX);
        }
        if let Some(g) = given
            && g < guard.epoch
        {
            return Err(guard.epoch);
        }
        Ok(Change { guard, given })
    }

    /// Whether the start-up sync is still under way (calls that change the state
    /// are refused meanwhile, except `PUT /state`).
    pub fn starting(&self) -> bool {
        !self.bootstrapped.load(Ordering::SeqCst)
    }

    /// Whether `/readyz` answers 200: the start-up sync is done and no peer is
    /// known to be newer.
    pub fn ready(&self) -> bool {
        self.bootstrapped.load(Ordering::SeqCst) && !self.behind.load(Ordering::SeqCst)
    }

    /// Why `/readyz` fails, when it does.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.bootstrapped.load(Ordering::SeqCst) {
            return Some(format!(
                "starting: asking the peers ({}) for their state, for up to {}",
                self.peers_text(),
                cutover_config::format_duration(self.settings.bootstrap_timeout)
            ));
        }
        self.behind.load(Ordering::SeqCst).then(|| {
            "a peer has a newer state that this replica could not adopt (see the log)".to_string()
        })
    }

    fn peers_text(&self) -> String {
        match &self.settings.peers {
            Peers::None => "none".into(),
            Peers::Dns { host, port } => format!("{host}:{port}"),
            Peers::Static(list) => list.join(", "),
        }
    }

    /// The fleet as `/status` shows it; `None` without peers.
    pub fn status(&self) -> Option<cutover_api::FleetStatus> {
        if self.settings.peers == Peers::None {
            return None;
        }
        let peers = match &self.settings.peers {
            Peers::Dns { host, port } => vec![format!("{host}:{port}")],
            Peers::Static(list) => list.clone(),
            Peers::None => Vec::new(),
        };
        Some(cutover_api::FleetStatus {
            peers,
            seen: self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }
}

impl Change<'_> {
    /// Records the change: the epoch becomes the one the call named, or one more
    /// than before; then the state file is written, before the lock is let go.
    pub fn commit(mut self, shared: &Shared) -> u64 {
        match self.given {
            Some(g) => {
                if g > self.guard.epoch {
                    self.guard.epoch = g;
                }
                // Every replica takes the same call with the same epoch, so the
                // origin is the content's digest: replicas that took the same
                // change agree, and two that took different changes at one epoch
                // (a retried or a stray call) order them alike and converge.
                self.guard.origin = digest(&state_at(shared, &self.guard));
            }
            None => {
                self.guard.epoch += 1;
                self.guard.origin = shared.fleet.name.clone();
            }
        }
        persist::save(shared, &state_at(shared, &self.guard));
        self.guard.epoch
    }
}

/// `sha:` and a stable hash of what a state serves per route: weights, write
/// side, and whether and what it holds (not the hold's deadline, which each
/// replica computes from its own clock).
fn digest(st: &State) -> String {
    let mut text = String::new();
    for (name, r) in &st.routes {
        text.push_str(&format!(
            "{name}|{:?}|{:?}|{}|{:?}|{:?}\n",
            r.weights,
            r.weights_source,
            r.writes,
            r.writes_source,
            r.hold.as_ref().map(|h| h.scope)
        ));
    }
    format!("sha:{:016x}", cutover_config::stable_hash(text.as_bytes()))
}

/// The runtime state now, with its epoch.
pub fn state(shared: &Shared) -> State {
    let guard = shared.fleet.lock();
    state_at(shared, &guard)
}

fn state_at(shared: &Shared, epoch: &Epoch) -> State {
    let live = shared.live();
    let snap = &live.snap;
    let routes = (0..snap.routes().len())
        .map(|ri| (snap.routes()[ri].name.clone(), route_state(&live, ri)))
        .collect();
    State {
        epoch: epoch.epoch,
        origin: epoch.origin.clone(),
        replica: shared.fleet.name.clone(),
        routes,
    }
}

fn route_state(live: &Live, ri: usize) -> RouteState {
    let snap = &live.snap;
    let route = &snap.routes()[ri];
    let percent = |w: &cutover_config::Weights| -> BTreeMap<String, f64> {
        route
            .members
            .iter()
            .map(|&m| {
                (
                    snap.config.backends[m].name.clone(),
                    format_percent(w.basis_points(m)),
                )
            })
            .collect()
    };
    RouteState {
        weights: percent(snap.weights(ri)),
        weights_source: source(snap.weights_source(ri)),
        writes: snap.writes(ri).describe(&snap.config).to_string(),
        writes_source: source(snap.writes_source(ri)),
        hold: live.routes[ri].hold.info().map(|h| HoldState {
            scope: h.scope.into(),
            since: unix(h.since),
            deadline: unix(h.deadline),
        }),
        file: FileBasis {
            weights: percent(&route.weights),
            writes: route.writes.describe(&snap.config).to_string(),
        },
    }
}

fn source(s: WeightsSource) -> Source {
    match s {
        WeightsSource::File => Source::File,
        WeightsSource::Admin => Source::Admin,
    }
}

/// Why a state could not be adopted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdoptError(String);

/// How a state is taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// From a peer or `PUT /state`: its admin-set values and holds.
    Peer,
    /// From the state file at start: the same, but where a route's file changed
    /// its weights or its write side since the record, that value is the file's.
    File,
}

/// Adopts `st` if it is newer than this replica's state. Returns whether it did.
pub fn adopt(shared: &Shared, st: &State) -> Result<bool, AdoptError> {
    let mut guard = shared.fleet.lock();
    let mine = State {
        epoch: guard.epoch,
        origin: guard.origin.clone(),
        replica: String::new(),
        routes: BTreeMap::new(),
    };
    if !st.newer_than(&mine) {
        return Ok(false);
    }
    apply(shared, st, Take::Peer)?;
    guard.epoch = st.epoch;
    guard.origin = st.origin.clone();
    persist::save(shared, &state_at(shared, &guard));
    tracing::info!(
        epoch = st.epoch,
        from = %st.replica,
        "adopted a newer fleet state"
    );
    Ok(true)
}

/// Reads the state file, when there is one, into the live state. Called before
/// anything is served.
pub fn load(shared: &Shared) {
    let Some(path) = shared.fleet.settings.state_file.clone() else {
        return;
    };
    let st = match persist::read(&path) {
        Ok(Some(st)) => st,
        Ok(None) => return,
        Err(e) => {
            // The file is not ours to delete: it may be mended by hand. Serve the
            // config file's state, and say so loudly.
            tracing::error!(file = %path.display(), "{e}; starting from the config file's state");
            return;
        }
    };
    let mut guard = shared.fleet.lock();
    match apply(shared, &st, Take::File) {
        Ok(()) => {
            guard.epoch = st.epoch;
            guard.origin = st.origin.clone();
            let held: Vec<&String> = st
                .routes
                .iter()
                .filter(|(_, r)| r.hold.is_some())
                .map(|(n, _)| n)
                .collect();
            tracing::info!(file = %path.display(), epoch = st.epoch, held = ?held,
                "runtime state restored from the state file");
        }
        Err(e) => {
            tracing::error!(file = %path.display(), "{e}; starting from the config file's state")
        }
    }
}

/// Puts `st` into the live state (see the module's order of effects).
fn apply(shared: &Shared, st: &State, take: Take) -> Result<(), AdoptError> {
    let live = shared.live();
    let snap = &live.snap;
    // Per route: its index, the admin-set weights and write side to serve.
    type Owned = (usize, Option<Vec<(String, f64)>>, Option<String>);
    let mut runtime: Vec<Owned> = Vec::new();
    let mut holds: Vec<(usize, Option<&HoldState>)> = Vec::new();
    for (ri, route) in snap.routes().iter().enumerate() {
        let Some(r) = st.routes.get(&route.name) else {
            continue;
        };
        // What the file changed since the state file was written wins, value by
        // value, as on a reload: new weights in the file do not take back a write
        // side set through the admin API (a switchover's), and the other way round.
        let (same_weights, same_writes) = basis_matches(snap, ri, &r.file);
        let weights_changed = take == Take::File && !same_weights;
        let writes_changed = take == Take::File && !same_writes;
        if weights_changed || writes_changed {
            tracing::info!(route = %route.name, weights = weights_changed, writes = writes_changed,
                "the config file changed since the state file was written: what it changed wins");
        }
        // A peer serving its file's values serves this replica's too, unless the
        // two files differ (a config change still rolling out): then the peer's
        // values are served until this replica's own reload, so that users do not
        // flip sides between replicas meanwhile.
        let files_differ = take == Take::Peer && !(same_weights && same_writes);
        let weights = ((r.weights_source == Source::Admin || files_differ) && !weights_changed)
            .then(|| r.weights.iter().map(|(k, v)| (k.clone(), *v)).collect());
        let writes = ((r.writes_source == Source::Admin || files_differ) && !writes_changed)
            .then(|| r.writes.clone());
        runtime.push((ri, weights, writes));
        holds.push((ri, r.hold.as_ref()));
    }
    let list: Vec<cutover_config::RouteRuntime<'_>> = runtime
        .iter()
        .map(|(ri, w, b)| (*ri, w.as_deref(), b.as_deref()))
        .collect();
    // Check before anything takes effect.
    snap.with_runtime(&list)
        .map_err(|e| AdoptError(format!("the state does not fit this config: {e}")))?;
    for &(ri, hold) in &holds {
        if let Some(h) = hold {
            let cell = &live.routes[ri].hold;
            let same = cell.info().is_some_and(|i| {
                (unix(i.deadline) - h.deadline).abs() < 0.001
                    && cutover_api::Scope::from(i.scope) == h.scope
            });
            if !same {
                cell.hold_until(Scope::from(h.scope), time(h.since), time(h.deadline));
            }
        }
    }
    let mut released = 0;
    shared
        .update_then(
            |s| s.with_runtime(&list),
            |live| {
                for &(ri, hold) in &holds {
                    if hold.is_none() && live.routes[ri].hold.info().is_some() {
                        released += live.routes[ri].hold.release();
                    }
                }
            },
        )
        .map_err(|e| AdoptError(e.to_string()))?;
    if released > 0 {
        tracing::warn!(released, "hold released by an adopted fleet state");
    }
    Ok(())
}

/// Whether the config file says for route `ri` what `basis` recorded: its
/// weights, and its write side.
fn basis_matches(snap: &Snapshot, ri: usize, basis: &FileBasis) -> (bool, bool) {
    let route = &snap.routes()[ri];
    let weights: BTreeMap<String, f64> = route
        .members
        .iter()
        .map(|&m| {
            (
                snap.config.backends[m].name.clone(),
                format_percent(route.weights.basis_points(m)),
            )
        })
        .collect();
    (
        weights == basis.weights,
        route.writes.describe(&snap.config) == basis.writes,
    )
}

/// After a reload: a route whose file values changed is a change of the state
/// (the file won), so the epoch moves and the file is written.
pub fn reloaded(shared: &Shared) {
    if let Ok(change) = shared.fleet.begin(None) {
        change.commit(shared);
    }
}

pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn time(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0))
}

/// The host name and the process id: unique among replicas on one machine too.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "cutover-proxy".into());
    format!("{host}/{}", std::process::id())
}
