//! The retry budget of a route: retries within the last `window` may be at most
//! `ratio` of the requests of that window, plus `min_per_second` (so a quiet route
//! can still retry). A side that fails every request thus cannot make the proxy
//! send the other side twice the load.
//!
//! The window is ten slots, each a tenth of it, each tagged with the slot number
//! it counts for: a slot from an older round reads as empty. Counting a request is
//! one atomic add (the tag is checked, and reset by the first request of a round).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cutover_config::RetryBudget;

const SLOTS: usize = 10;

/// One route's counts; it lives as long as the process, across reloads.
pub struct Budget {
    base: Instant,
    requests: [AtomicU64; SLOTS],
    retries: [AtomicU64; SLOTS],
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            base: Instant::now(),
            requests: Default::default(),
            retries: Default::default(),
        }
    }
}

/// A slot's word: its round in the high 24 bits, its count in the low 40.
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl Budget {
    /// The current round (the number of slot widths since the start).
    fn round(&self, window: Duration) -> u64 {
        let width = (window.as_micros() as u64 / SLOTS as u64).max(1);
        self.base.elapsed().as_micros() as u64 / width
    }

    fn add(slot: &AtomicU64, round: u64) {
        let tag = (round & 0xff_ffff) << COUNT_BITS;
        let cur = slot.load(Ordering::Relaxed);
        if cur & !COUNT_MASK == tag {
            slot.fetch_add(1, Ordering::Relaxed);
        } else if slot
            .compare_exchange(cur, tag | 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Someone else started the round (or counted): count on top.
            Self::add(slot, round);
        }
    }

    /// The sum of the slots of the last `SLOTS` rounds.
    fn sum(slots: &[AtomicU64; SLOTS], round: u64) -> u64 {
        slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|w| {
                let r = w >> COUNT_BITS;
                let now = round & 0xff_ffff;
                now.wrapping_sub(r) & 0xff_ffff < SLOTS as u64
            })
            .map(|w| w & COUNT_MASK)
            .sum()
    }

    /// Counts one request.
    #[inline]
    pub fn request(&self, cfg: &RetryBudget) {
        let round = self.round(cfg.window);
        Self::add(&self.requests[(round % SLOTS as u64) as usize], round);
    }

    /// Takes one retry from the budget; false (and nothing taken) when spent.
    pub fn retry(&self, cfg: &RetryBudget) -> bool {
        let round = self.round(cfg.window);
        let requests = Self::sum(&self.requests, round) as f64;
        let retries = Self::sum(&self.retries, round) as f64;
        let floor = f64::from(cfg.min_per_second) * cfg.window.as_secs_f64();
        if retries + 1.0 > cfg.ratio * requests + floor {
            return false;
        }
        Self::add(&self.retries[(round % SLOTS as u64) as usize], round);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ratio: f64, min: u32) -> RetryBudget {
        RetryBudget {
            ratio,
            window: Duration::from_secs(10),
            min_per_second: min,
        }
    }

    #[test]
    fn retries_stay_within_the_ratio_plus_the_floor() {
        let b = Budget::default();
        let c = cfg(0.2, 1);
        for _ in 0..1000 {
            b.request(&c);
        }
        let granted = (0..1000).filter(|_| b.retry(&c)).count();
        // 20% of 1000, plus 1/s over 10 s.
        assert_eq!(granted, 210);
    }

    #[test]
    fn a_quiet_route_still_gets_its_floor() {
        let b = Budget::default();
        let c = cfg(0.2, 3);
        let granted = (0..100).filter(|_| b.retry(&c)).count();
        assert_eq!(granted, 30);
        assert!(!Budget::default().retry(&cfg(0.2, 0)));
    }

    #[test]
    fn old_rounds_do_not_count() {
        let b = Budget::default();
        let c = RetryBudget {
            ratio: 1.0,
            window: Duration::from_millis(20),
            min_per_second: 0,
        };
        b.request(&c);
        assert!(b.retry(&c));
        assert!(!b.retry(&c), "one request buys one retry");
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            !b.retry(&c),
            "the window has passed: no requests, no retries"
        );
        b.request(&c);
        assert!(b.retry(&c));
    }
}
