//! A scrape of every replica each second, in the background: the latest scrape
//! feeds the progress line, and each second in which the plan's routes answered
//! any 5xx is marked, for the verdict's downtime (the longest run of such seconds).
//!
//! Beside it, a watch of the fleet each second: the replicas are found again (a
//! discovered plan re-resolves), one that appeared is brought up to the newest
//! replica's state and scraped from the next second on, and every replica's
//! `/state` is read for the record (its name and epoch). The watch runs apart from
//! the scrape so that a slow lookup never delays the second's sample.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::plan::metrics::{self, Scrape};
use crate::proxy::Proxies;

#[derive(Default)]
struct Shared {
    proxies: Option<Proxies>,
    routes: Vec<String>,
    /// The newest scrape and when it began.
    latest: Option<(Instant, Scrape)>,
    error_seconds: Vec<u64>,
}

pub struct Sampler {
    shared: Arc<Mutex<Shared>>,
    task: Option<JoinHandle<()>>,
    watch: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler {
            shared: Arc::new(Mutex::new(Shared::default())),
            task: None,
            watch: None,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        let mut g = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g)
    }

    /// Starts sampling `p`'s replicas (and those that join them) for `routes`.
    pub fn start(&mut self, p: &Proxies, routes: &[String]) {
        self.with(|s| {
            s.proxies = Some(p.clone());
            s.routes = routes.to_vec();
        });
        self.watch = Some(tokio::spawn(watch(self.shared.clone())));
        let shared = self.shared.clone();
        self.task = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let proxies = shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .proxies
                    .clone();
                let Some(proxies) = proxies else { continue };
                let began = Instant::now();
                // A replica that does not answer is skipped this second; the spans'
                // own scrapes fail loudly instead.
                let Ok(now) = metrics::scrape(&proxies).await else {
                    continue;
                };
                let second = super::now() as u64;
                let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((_, prev)) = &s.latest {
                    let errors = metrics::window(prev, &now, &s.routes).traffic().errors;
                    if errors > 0 && s.error_seconds.last() != Some(&second) {
                        s.error_seconds.push(second);
                    }
                }
                s.latest = Some((began, now));
            }
        }));
    }

    /// The newest scrape, if one began at or after `since`. An older one may
    /// predate a window's first scrape, and its counters would then look as if
    /// every replica had restarted.
    pub fn latest_since(&self, since: Instant) -> Option<Scrape> {
        self.with(|s| match &s.latest {
            Some((began, scrape)) if *began >= since => Some(scrape.clone()),
            _ => None,
        })
    }

    /// Moves the seconds marked so far into `into` (kept sorted and unique).
    pub fn drain_into(&self, into: &mut Vec<u64>) {
        let new = self.with(|s| std::mem::take(&mut s.error_seconds));
        into.extend(new);
        into.sort_unstable();
        into.dedup();
    }

    pub fn stop(&mut self) {
        for t in [self.task.take(), self.watch.take()].into_iter().flatten() {
            t.abort();
        }
    }
}

/// Each second: the replicas found again (those that appeared brought up to date
/// by the refresh), every replica's `/state` read for the record, and the list the
/// scrape uses replaced. A lookup that fails keeps the replicas known; the runner's
/// own lookup before its next action reports it.
async fn watch(shared: Arc<Mutex<Shared>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let proxies = shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .proxies
            .clone();
        let Some(mut proxies) = proxies else { continue };
        let _ = proxies.refresh().await;
        proxies.observe().await;
        shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .proxies = Some(proxies);
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}
