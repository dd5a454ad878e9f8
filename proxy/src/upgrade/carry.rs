//! The state set over the admin API that a new process must not lose: weights and
//! write sides. Without it an upgrade in the middle of a migration would fall back
//! to the file's weights and move users who are already on the new side back to
//! the old one. Holds are not carried: an upgrade is refused while one is active.

use cutover_config::{WeightsSource, format_percent};
use serde::{Deserialize, Serialize};

use crate::state::{Live, Shared, UpdateError};

/// What the old process hands over besides its sockets.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Carried {
    pub routes: Vec<CarriedRoute>,
}

/// A route whose weights or write side came from the admin API.
#[derive(Debug, Serialize, Deserialize)]
pub struct CarriedRoute {
    /// The route's name, which the admin calls also accept.
    pub name: String,
    /// Backend name → percent.
    pub weights: Option<Vec<(String, f64)>>,
    /// A backend name or `split`.
    pub writes: Option<String>,
}

/// The admin-set parts of `live`.
pub fn capture(live: &Live) -> Carried {
    let snap = &live.snap;
    let routes = snap
        .routes()
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let weights = (snap.weights_source(i) == WeightsSource::Admin).then(|| {
                snap.config
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(id, b)| {
                        (
                            b.name.clone(),
                            format_percent(snap.weights(i).basis_points(id)),
                        )
                    })
                    .collect()
            });
            let writes = (snap.writes_source(i) == WeightsSource::Admin)
                .then(|| snap.writes(i).describe(&snap.config).to_string());
            (weights.is_some() || writes.is_some()).then(|| CarriedRoute {
                name: r.name.clone(),
                weights,
                writes,
            })
        })
        .collect();
    Carried { routes }
}

/// The name of a route whose hold is in force, if any: its held requests live in
/// this process and would wait for a release that the new process receives.
pub fn active_hold(live: &Live) -> Option<String> {
    live.snap
        .routes()
        .iter()
        .zip(&live.routes)
        .find(|(_, rt)| rt.hold.info().is_some())
        .map(|(r, _)| r.name.clone())
}

/// Applies what the old process carried over. A route that the new config no
/// longer has, or whose backends changed so the weights no longer fit, keeps the
/// file's settings; each case is logged.
pub fn apply(shared: &Shared, carried: Carried) {
    for r in carried.routes {
        if let Some(weights) = &r.weights {
            match shared.update(|snap| snap.with_weights(&r.name, weights)) {
                Ok(_) => {
                    tracing::info!(route = %r.name, ?weights, "kept the weights set over the admin API in the previous process")
                }
                Err(UpdateError::Rejected(e)) => {
                    tracing::warn!(route = %r.name, error = %e, "the previous process's admin weights do not fit this config; using the file's")
                }
                Err(UpdateError::State(e)) => {
                    tracing::warn!(route = %r.name, error = %e, "cannot apply the previous process's admin weights")
                }
            }
        }
        if let Some(writes) = &r.writes {
            match shared.update(|snap| snap.with_writes(&r.name, writes)) {
                Ok(_) => {
                    tracing::info!(route = %r.name, writes = %writes, "kept the write side set over the admin API in the previous process")
                }
                Err(UpdateError::Rejected(e)) => {
                    tracing::warn!(route = %r.name, error = %e, "the previous process's write side does not fit this config; using the file's")
                }
                Err(UpdateError::State(e)) => {
                    tracing::warn!(route = %r.name, error = %e, "cannot apply the previous process's write side")
                }
            }
        }
    }
}
