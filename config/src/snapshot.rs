//! What the proxy serves from: a validated file plus the weights in force, which are
//! the file's or the admin API's, whichever was written last.
//!
//! "Last write wins" is decided per route. A reload applies a route's weights from the
//! file only when the file's weights for that route changed; otherwise a weight set
//! over the admin API survives, so that editing one route cannot silently undo a
//! step the controller took on another.

use std::sync::Arc;

use crate::hash::BUCKETS;
use crate::model::{Config, Route, WriteSide};
use crate::table::RouteTable;
use crate::weights::{Weights, parse_percent};

/// Who set a route's current weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsSource {
    File,
    Admin,
}

impl WeightsSource {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightsSource::File => "file",
            WeightsSource::Admin => "admin",
        }
    }
}

/// An immutable routing state. A request holds one from start to end.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Increases by one with every change: a reload or an admin weight change.
    pub generation: u64,
    pub table: Arc<RouteTable>,
    weights: Vec<Weights>,
    sources: Vec<WeightsSource>,
    /// The write side in force per route; the admin API sets it at a switchover.
    writes: Vec<WriteSide>,
    writes_sources: Vec<WeightsSource>,
}

/// A route's runtime state to adopt: its index, the weights set over the admin API
/// (`None`: the file's) and the write side (`None`: the file's).
pub type RouteRuntime<'a> = (usize, Option<&'a [(String, f64)]>, Option<&'a str>);

/// Why an admin weight change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsError {
    #[error("no route lists host {0:?}")]
    NoSuchRoute(String),
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl Snapshot {
    /// The first snapshot of a process.
    pub fn new(config: Config) -> Self {
        let weights = config.routes.iter().map(|r| r.weights.clone()).collect();
        let sources = vec![WeightsSource::File; config.routes.len()];
        let writes = config.routes.iter().map(|r| r.writes).collect();
        let writes_sources = vec![WeightsSource::File; config.routes.len()];
        Snapshot {
            table: Arc::new(RouteTable::new(&config.routes)),
            config: Arc::new(config),
            generation: 1,
            weights,
            sources,
            writes,
            writes_sources,
        }
    }

    /// The snapshot after reloading the file as `config`. Also returns the names of
    /// routes whose admin-set weights were kept.
    pub fn reload(&self, config: Config) -> (Snapshot, Vec<String>) {
        let mut kept = Vec::new();
        let names = |c: &Config| {
            c.backends
                .iter()
                .map(|b| b.name.clone())
                .collect::<Vec<_>>()
        };
        let same_backends = names(&self.config) == names(&config);
        let mut weights = Vec::with_capacity(config.routes.len());
        let mut sources = Vec::with_capacity(config.routes.len());
        let mut writes = Vec::with_capacity(config.routes.len());
        let mut writes_sources = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let previous = self
                .config
                .routes
                .iter()
                .position(|r| r.name == route.name)
                .filter(|_| same_backends);
            match previous {
                Some(p)
                    if self.sources[p] == WeightsSource::Admin
                        && self.config.routes[p].weights == route.weights =>
                {
                    weights.push(self.weights[p].clone());
                    sources.push(WeightsSource::Admin);
                    kept.push(route.name.clone());
                }
                _ => {
                    weights.push(route.weights.clone());
                    sources.push(WeightsSource::File);
                }
            }
            match previous {
                Some(p)
                    if self.writes_sources[p] == WeightsSource::Admin
                        && self.config.routes[p].writes == route.writes =>
                {
                    writes.push(self.writes[p]);
                    writes_sources.push(WeightsSource::Admin);
                }
                _ => {
                    writes.push(route.writes);
                    writes_sources.push(WeightsSource::File);
                }
            }
        }
        let next = Snapshot {
            table: Arc::new(RouteTable::new(&config.routes)),
            config: Arc::new(config),
            generation: self.generation + 1,
            weights,
            sources,
            writes,
            writes_sources,
        };
        (next, kept)
    }

    /// The snapshot after an admin call sets a route's weights. `host` is any host the
    /// route lists, or its name. Backends not named get 0.
    pub fn with_weights(
        &self,
        host: &str,
        requested: &[(String, f64)],
    ) -> Result<Snapshot, WeightsError> {
        let route = self
            .route_by_host(host)
            .ok_or_else(|| WeightsError::NoSuchRoute(host.to_string()))?;
        let weights = self.parse_weights(requested)?;
        let mut next = self.clone();
        next.generation += 1;
        next.weights[route] = weights;
        next.sources[route] = WeightsSource::Admin;
        Ok(next)
    }

    /// The snapshot with the runtime state of other routes adopted (from a peer or
    /// the state file): per route index, its weights and write side as the admin
    /// API set them, or `None` for the file's own.
    pub fn with_runtime(&self, routes: &[RouteRuntime<'_>]) -> Result<Snapshot, WeightsError> {
        let mut next = self.clone();
        next.generation += 1;
        for &(ri, weights, writes) in routes {
            let route = &self.config.routes[ri];
            match weights {
                Some(w) => {
                    next.weights[ri] = self.parse_weights(w)?;
                    next.sources[ri] = WeightsSource::Admin;
                }
                None => {
                    next.weights[ri] = route.weights.clone();
                    next.sources[ri] = WeightsSource::File;
                }
            }
            match writes {
                Some(b) => {
                    next.writes[ri] = self.write_side(b)?;
                    next.writes_sources[ri] = WeightsSource::Admin;
                }
                None => {
                    next.writes[ri] = route.writes;
                    next.writes_sources[ri] = WeightsSource::File;
                }
            }
        }
        Ok(next)
    }

    /// Percent per backend name → weights over every backend; names not given get 0.
    fn parse_weights(&self, requested: &[(String, f64)]) -> Result<Weights, WeightsError> {
        let mut bp = vec![0u16; self.config.backends.len()];
        let mut problems = Vec::new();
        for (name, value) in requested {
            match self.config.backend_id(name) {
                None => problems.push(format!(
                    "unknown backend {name:?}; declared backends: {}",
                    self.config.backend_names().collect::<Vec<_>>().join(", ")
                )),
                Some(id) => match parse_percent(*value) {
                    Ok(w) => bp[id] = w,
                    Err(e) => problems.push(format!("{name}: {e}")),
                },
            }
        }
        let sum: u32 = bp.iter().map(|&w| u32::from(w)).sum();
        if problems.is_empty() && sum != u32::from(BUCKETS) {
            problems.push(format!(
                "weights sum to {}, not 100",
                f64::from(sum) / 100.0
            ));
        }
        if !problems.is_empty() {
            return Err(WeightsError::Invalid(problems));
        }
        Ok(Weights::from_basis_points(bp))
    }

    /// `split` or a backend's name.
    fn write_side(&self, backend: &str) -> Result<WriteSide, WeightsError> {
        if backend == "split" {
            return Ok(WriteSide::Split);
        }
        self.config
            .backend_id(backend)
            .map(WriteSide::Backend)
            .ok_or_else(|| {
                WeightsError::Invalid(vec![format!(
                    "unknown backend {backend:?}; use \"split\" or one of: {}",
                    self.config.backend_names().collect::<Vec<_>>().join(", ")
                )])
            })
    }

    /// The snapshot after a switchover sets the write side of the routes `host`
    /// names (`*` = every route) to `backend`.
    pub fn with_writes(&self, host: &str, backend: &str) -> Result<Snapshot, WeightsError> {
        let routes = self.routes_for(host)?;
        let side = self.write_side(backend)?;
        let mut next = self.clone();
        next.generation += 1;
        for r in routes {
            next.writes[r] = side;
            next.writes_sources[r] = WeightsSource::Admin;
        }
        Ok(next)
    }

    /// The routes `host` names: one route by a listed host or name, or every route
    /// for `*` when no route lists `*` itself.
    pub fn routes_for(&self, host: &str) -> Result<Vec<usize>, WeightsError> {
        if let Some(i) = self.route_by_host(host) {
            return Ok(vec![i]);
        }
        if host == "*" {
            return Ok((0..self.config.routes.len()).collect());
        }
        Err(WeightsError::NoSuchRoute(host.to_string()))
    }

    /// The route listing `host` exactly (not by wildcard match), or named `host`.
    pub fn route_by_host(&self, host: &str) -> Option<usize> {
        let host = host.to_ascii_lowercase();
        self.config
            .routes
            .iter()
            .position(|r| r.hosts.contains(&host))
            .or_else(|| self.config.routes.iter().position(|r| r.name == host))
    }

    pub fn routes(&self) -> &[Route] {
        &self.config.routes
    }

    /// The weights in force for route `i`.
    pub fn weights(&self, i: usize) -> &Weights {
        &self.weights[i]
    }

    pub fn weights_source(&self, i: usize) -> WeightsSource {
        self.sources[i]
    }

    /// The write side in force for route `i`.
    #[inline]
    pub fn writes(&self, i: usize) -> WriteSide {
        self.writes[i]
    }

    pub fn writes_source(&self, i: usize) -> WeightsSource {
        self.writes_sources[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(route_a: &str, route_b: &str) -> Config {
        let text = format!(
            "[backends.old]\naddrs=[\"127.0.0.1:1\"]\n[backends.new]\naddrs=[\"127.0.0.1:2\"]\n\
             [[routes]]\nhosts=[\"a.test\", \"*.a.test\"]\nweights={route_a}\n\
             [[routes]]\nhosts=[\"b.test\"]\nweights={route_b}\n"
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn pairs(old: f64, new: f64) -> Vec<(String, f64)> {
        vec![("old".into(), old), ("new".into(), new)]
    }

    #[test]
    fn admin_weights_apply_by_any_listed_host_or_name() {
        let s = Snapshot::new(config("{old=90,new=10}", "{old=100}"));
        let s2 = s.with_weights("*.a.test", &pairs(50.0, 50.0)).unwrap();
        assert_eq!(s2.generation, 2);
        assert_eq!(s2.weights(0).as_slice(), [5000, 5000]);
        assert_eq!(s2.weights_source(0), WeightsSource::Admin);
        assert_eq!(s2.weights(1).as_slice(), [10_000, 0]);
        let s3 = s2.with_weights("B.TEST", &[("new".into(), 100.0)]).unwrap();
        assert_eq!(s3.weights(1).as_slice(), [0, 10_000]);
    }

    #[test]
    fn admin_weights_are_validated() {
        let s = Snapshot::new(config("{old=90,new=10}", "{old=100}"));
        assert_eq!(
            s.with_weights("nope.test", &pairs(50.0, 50.0)).unwrap_err(),
            WeightsError::NoSuchRoute("nope.test".into())
        );
        let e = s.with_weights("a.test", &pairs(50.0, 40.0)).unwrap_err();
        assert!(e.to_string().contains("sum to 90"), "{e}");
        let e = s
            .with_weights("a.test", &[("blue".into(), 100.0)])
            .unwrap_err();
        assert!(e.to_string().contains("unknown backend \"blue\""), "{e}");
        let e = s.with_weights("a.test", &pairs(-10.0, 110.0)).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
    }

    #[test]
    fn a_reload_keeps_admin_weights_unless_the_file_changed_them() {
        let s = Snapshot::new(config("{old=90,new=10}", "{old=100}"));
        let s = s.with_weights("a.test", &pairs(50.0, 50.0)).unwrap();
        // The file changes route b only: route a keeps the admin's 50/50.
        let (s, kept) = s.reload(config("{old=90,new=10}", "{old=80,new=20}"));
        assert_eq!(kept, ["a.test"]);
        assert_eq!(s.generation, 3);
        assert_eq!(s.weights(0).as_slice(), [5000, 5000]);
        assert_eq!(s.weights(1).as_slice(), [8000, 2000]);
        // The file now writes route a's weights: the file wins.
        let (s, kept) = s.reload(config("{old=70,new=30}", "{old=80,new=20}"));
        assert!(kept.is_empty());
        assert_eq!(s.weights(0).as_slice(), [7000, 3000]);
        assert_eq!(s.weights_source(0), WeightsSource::File);
    }
}

#[cfg(test)]
mod writes_tests {
    use super::*;
    use std::path::Path;

    fn config(writes: &str) -> Config {
        let text = format!(
            "[backends.old]\naddrs=[\"127.0.0.1:1\"]\n[backends.new]\naddrs=[\"127.0.0.1:2\"]\n\
             [[routes]]\nhosts=[\"a.test\"]\nweights={{old=100}}\nwrites=\"{writes}\"\n\
             [[routes]]\nhosts=[\"b.test\"]\nweights={{old=100}}\nwrites=\"old\"\n"
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn a_switchover_moves_the_write_side_and_a_reload_keeps_it() {
        let s = Snapshot::new(config("old"));
        assert_eq!(s.writes(0), WriteSide::Backend(0));
        let s = s.with_writes("*", "new").unwrap();
        assert_eq!(
            (s.writes(0), s.writes(1)),
            (WriteSide::Backend(1), WriteSide::Backend(1))
        );
        let s = s.with_writes("a.test", "split").unwrap();
        assert_eq!(
            (s.writes(0), s.writes(1)),
            (WriteSide::Split, WriteSide::Backend(1))
        );
        assert!(s.with_writes("a.test", "blue").is_err());
        assert!(matches!(
            s.with_writes("c.test", "new"),
            Err(WeightsError::NoSuchRoute(_))
        ));
        // The file did not change route b's writes: the switchover's side stays.
        let (s, _) = s.reload(config("new"));
        assert_eq!(s.writes(1), WriteSide::Backend(1));
        assert_eq!(s.writes_source(1), WeightsSource::Admin);
        // It did change route a's: the file wins there.
        assert_eq!(s.writes(0), WriteSide::Backend(1));
        assert_eq!(s.writes_source(0), WeightsSource::File);
    }
}
