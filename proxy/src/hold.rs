//! The write hold: while a database is promoted, requests in scope wait in the proxy
//! and reach no backend. A release publishes the new write side first and only then
//! wakes the held requests, so none of them can go to the old side.
//!
//! A hold outlives its deadline: past it, held and new requests in scope get 503 with
//! `Retry-After` until someone releases. A controller that died mid-switchover thus
//! leaves clients retrying, never writing to a database that may be read-only.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use prometheus::IntGauge;
use tokio::sync::watch;

/// Which requests a hold covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every method but GET, HEAD, OPTIONS and TRACE.
    Writes,
    All,
    /// Only the upgrade handshakes that follow the writes.
    Upgrades,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Writes => "writes",
            Scope::All => "all",
            Scope::Upgrades => "upgrades",
        }
    }

    fn code(self) -> u8 {
        match self {
            Scope::Writes => 0,
            Scope::All => 1,
            Scope::Upgrades => 2,
        }
    }
}

impl From<cutover_api::Scope> for Scope {
    fn from(s: cutover_api::Scope) -> Scope {
        match s {
            cutover_api::Scope::Writes => Scope::Writes,
            cutover_api::Scope::All => Scope::All,
            cutover_api::Scope::Upgrades => Scope::Upgrades,
        }
    }
}

impl From<Scope> for cutover_api::Scope {
    fn from(s: Scope) -> cutover_api::Scope {
        match s {
            Scope::Writes => cutover_api::Scope::Writes,
            Scope::All => cutover_api::Scope::All,
            Scope::Upgrades => cutover_api::Scope::Upgrades,
        }
    }
}

/// An active hold, for `/status`.
#[derive(Debug, Clone)]
pub struct HoldInfo {
    pub scope: Scope,
    pub since: SystemTime,
    pub deadline: SystemTime,
    deadline_at: Instant,
}

/// The hold state of one route. It lives as long as the process, across reloads.
pub struct HoldCell {
    /// Read on every request; SeqCst pairs it with the in-flight counters (see
    /// [`crate::handle`]) so a controller that saw the hold acknowledged and then
    /// sees zero writes in flight knows no write can slip past.
    active: AtomicBool,
    /// [`Scope::code`] of the hold's scope.
    scope: AtomicU8,
    info: Mutex<Option<HoldInfo>>,
    held: AtomicUsize,
    held_gauge: IntGauge,
    /// Bumped on every release; held requests wait for it to change.
    released: watch::Sender<u64>,
    /// When the last release happened, and how many of the upgrade handshakes it
    /// woke have taken their turn since (see [`HoldCell::upgrade_turn`]).
    paced: Mutex<(Instant, u64)>,
}

/// How waiting for a release ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    Released,
    /// The hold's deadline passed; answer 503.
    Expired,
    /// Too many requests are held already; answer 503.
    Full,
}

impl HoldCell {
    pub fn new(held_gauge: IntGauge) -> Self {
        HoldCell {
            active: AtomicBool::new(false),
            scope: AtomicU8::new(0),
            info: Mutex::new(None),
            held: AtomicUsize::new(0),
            held_gauge,
            released: watch::Sender::new(0),
            paced: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Whether a request must wait: a write or not; an upgrade handshake that
    /// follows the writes (which is a write too) or not.
    #[inline]
    pub fn applies(&self, is_write: bool, follows_writes_upgrade: bool) -> bool {
        if !self.active.load(Ordering::SeqCst) {
            return false;
        }
        match self.scope.load(Ordering::SeqCst) {
            0 => is_write,
            2 => follows_writes_upgrade,
            _ => true,
        }
    }

    /// Starts (or extends) a hold. A second hold call replaces the scope and
    /// deadline, except that an `upgrades` hold never narrows a `writes` or `all`
    /// hold: only the deadline changes then, and the writes stay held.
    pub fn hold(&self, scope: Scope, max: Duration) -> HoldInfo {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        let since = info.as_ref().map_or(now, |i| i.since);
        let scope = match info.as_ref().map(|i| i.scope) {
            Some(wider @ (Scope::Writes | Scope::All)) if scope == Scope::Upgrades => wider,
            _ => scope,
        };
        let new = HoldInfo {
            scope,
            since,
            deadline: now + max,
            deadline_at: Instant::now() + max,
        };
        *info = Some(new.clone());
        self.scope.store(scope.code(), Ordering::SeqCst);
        self.active.store(true, Ordering::SeqCst);
        new
    }

    /// Starts (or replaces) a hold with given absolute times: one adopted from a
    /// peer or read back from the state file ends when the original does, and one
    /// whose deadline has passed is expired at once (it still holds).
    pub fn hold_until(&self, scope: Scope, since: SystemTime, deadline: SystemTime) -> HoldInfo {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let new = HoldInfo {
            scope,
            since,
            deadline,
            deadline_at: Instant::now() + left,
        };
        *info = Some(new.clone());
        self.scope.store(scope.code(), Ordering::SeqCst);
        self.active.store(true, Ordering::SeqCst);
        new
    }

    /// Ends the hold and wakes every held request. Returns how many were held.
    pub fn release(&self) -> usize {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        *info = None;
        self.active.store(false, Ordering::SeqCst);
        self.scope.store(Scope::Writes.code(), Ordering::SeqCst);
        let held = self.held.load(Ordering::SeqCst);
        *self.paced.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), 0);
        self.released.send_modify(|n| *n += 1);
        held
    }

    /// When an upgrade handshake the last release woke may go on: the first at
    /// once, each next one `1 / rate` s after the one before (`rate` 0: all at
    /// once). A release that wakes a thousand WebSocket reconnects thus sends them
    /// to the new side's entry point over a few seconds, not in one instant that
    /// stalls every other request it serves. `None`: at once.
    pub fn upgrade_turn(&self, rate: u32) -> Option<Instant> {
        let mut paced = self.paced.lock().unwrap_or_else(|p| p.into_inner());
        let n = paced.1;
        paced.1 += 1;
        (rate > 0 && n > 0).then(|| paced.0 + Duration::from_secs_f64(n as f64 / f64::from(rate)))
    }

    pub fn info(&self) -> Option<HoldInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Waits for a release, bounded by the hold's deadline and by `max_queued`
    /// requests held in all, counted in `total` (shared by every route).
    pub async fn wait(&self, total: &AtomicUsize, max_queued: usize) -> Waited {
        let mut rx = self.released.subscribe();
        let Some(info) = self.info() else {
            // Released between the check and now.
            return Waited::Released;
        };
        if total.fetch_add(1, Ordering::SeqCst) >= max_queued {
            total.fetch_sub(1, Ordering::SeqCst);
            return Waited::Full;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        self.held_gauge.inc();
        let _held = HeldGuard(&self.held, &self.held_gauge, total);
        // The subscription above predates the info read, so a release in between is
        // seen as a change here rather than missed.
        if !self.active.load(Ordering::SeqCst) {
            return Waited::Released;
        }
        // A hold replaced meanwhile (a switchover's writes hold after its
        // upgrades hold) ends at its own, later deadline.
        let mut deadline = info.deadline_at;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(_) => return Waited::Released,
                Err(_) => match self.info() {
                    Some(i) if i.deadline_at > deadline => deadline = i.deadline_at,
                    _ => return Waited::Expired,
                },
            }
        }
    }

    /// Whether the hold is past its deadline (new requests in scope get 503 at once).
    pub fn expired(&self) -> bool {
        self.info().is_some_and(|i| Instant::now() >= i.deadline_at)
    }
}

struct HeldGuard<'a>(&'a AtomicUsize, &'a IntGauge, &'a AtomicUsize);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        self.2.fetch_sub(1, Ordering::SeqCst);
        self.1.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cell() -> HoldCell {
        HoldCell::new(IntGauge::new("held", "held").unwrap())
    }

    #[test]
    fn upgrades_a_release_woke_take_turns_at_the_rate() {
        let cell = cell();
        cell.hold(Scope::Upgrades, Duration::from_secs(30));
        cell.release();
        let released = Instant::now();
        assert_eq!(cell.upgrade_turn(100), None, "the first goes on at once");
        let second = cell.upgrade_turn(100).unwrap();
        let third = cell.upgrade_turn(100).unwrap();
        assert_eq!(third - second, Duration::from_millis(10));
        assert!(second <= released + Duration::from_millis(10));
        assert_eq!(cell.upgrade_turn(0), None, "rate 0: at once");
        // The next release starts the turns again.
        cell.hold(Scope::Upgrades, Duration::from_secs(30));
        cell.release();
        assert_eq!(cell.upgrade_turn(100), None);
    }

    #[tokio::test]
    async fn held_requests_wake_on_release() {
        let cell = Arc::new(cell());
        assert!(!cell.applies(true, false));
        cell.hold(Scope::Writes, Duration::from_secs(30));
        assert!(cell.applies(true, false));
        assert!(
            !cell.applies(false, false),
            "a writes hold lets reads through"
        );
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let c = cell.clone();
                tokio::spawn(async move { c.wait(&AtomicUsize::new(0), 10).await })
            })
            .collect();
        while cell.held() < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(cell.release(), 3);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Waited::Released);
        }
        assert_eq!(cell.held(), 0);
        assert!(!cell.applies(true, false));
    }

    #[test]
    fn an_upgrades_hold_holds_only_handshakes_and_a_writes_hold_widens_it() {
        let cell = cell();
        cell.hold(Scope::Upgrades, Duration::from_secs(30));
        assert!(cell.applies(true, true), "a handshake that follows writes");
        assert!(!cell.applies(true, false), "a plain write still flows");
        assert!(!cell.applies(false, false), "a read still flows");
        cell.hold(Scope::Writes, Duration::from_secs(30));
        assert!(cell.applies(true, true) && cell.applies(true, false));
        assert!(!cell.applies(false, false));
        assert_eq!(cell.info().map(|i| i.scope), Some(Scope::Writes));
        cell.release();
        assert!(!cell.applies(true, true));
    }

    #[test]
    fn an_upgrades_hold_never_narrows_a_writes_hold() {
        let cell = cell();
        cell.hold(Scope::Writes, Duration::from_secs(30));
        cell.hold(Scope::Upgrades, Duration::from_secs(60));
        assert!(cell.applies(true, false), "plain writes stay held");
        assert_eq!(cell.info().map(|i| i.scope), Some(Scope::Writes));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_waits_for_the_deadline_of_the_hold_that_replaced_its_own() {
        let cell = Arc::new(cell());
        cell.hold(Scope::Upgrades, Duration::from_secs(2));
        let waiter = {
            let c = cell.clone();
            tokio::spawn(async move { c.wait(&AtomicUsize::new(0), 10).await })
        };
        while cell.held() < 1 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        cell.hold(Scope::Writes, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!waiter.is_finished(), "past the first deadline, still held");
        cell.release();
        assert_eq!(waiter.await.unwrap(), Waited::Released);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_answers_and_the_hold_stays() {
        let cell = cell();
        cell.hold(Scope::All, Duration::from_secs(2));
        assert!(cell.applies(false, false));
        assert_eq!(cell.wait(&AtomicUsize::new(0), 10).await, Waited::Expired);
        assert!(cell.expired());
        assert!(
            cell.applies(true, false),
            "an expired hold keeps writes away from old"
        );
    }

    #[tokio::test]
    async fn the_queue_is_bounded() {
        let cell = cell();
        cell.hold(Scope::Writes, Duration::from_secs(30));
        assert_eq!(cell.wait(&AtomicUsize::new(0), 0).await, Waited::Full);
        assert_eq!(cell.held(), 0);
        // The cap counts the requests every route holds.
        let total = AtomicUsize::new(5);
        assert_eq!(cell.wait(&total, 5).await, Waited::Full);
        assert_eq!(total.load(Ordering::SeqCst), 5);
    }
}
