//! When each request is due.
//!
//! Open loop: ticket `i` is due at `t0 + i / rate`, whatever the server does. A
//! connection that is free claims the next ticket, waits for its time, and sends; a
//! ticket claimed late (every connection was busy) is sent at once, and its latency is
//! still measured from the due time. That is the coordinated-omission correction of
//! wrk2, with one difference: tickets are shared, so a stalled connection does not hold
//! back requests that a free one could send.
//!
//! Closed loop: no schedule; each connection sends as soon as its previous response is
//! in, and a request's intended time is its actual send time.

use std::time::{Duration, Instant};

/// After the last ticket is due, how long connections keep sending a backlog before the
/// rest is reported as unsent. Long enough to absorb a hiccup, short enough that a target
/// far behind the rate does not stretch the run indefinitely.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// The shape of a run in time.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// When the first request (warmup included) is due.
    pub t0: Instant,
    /// Where measurement starts.
    pub measure_start: Instant,
    /// Open or closed loop.
    pub kind: Kind,
}

/// Open or closed loop.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A fixed arrival rate.
    Open {
        /// Nanoseconds between due times.
        interval_ns: f64,
        /// Tickets below this are warmup.
        first_measured: u64,
        /// Tickets from this one on are not sent.
        end_ticket: u64,
        /// No ticket is sent after this instant.
        give_up: Instant,
    },
    /// As fast as responses return.
    Closed {
        /// No request is started after this instant.
        end: Option<Instant>,
        /// Measure at most this many requests.
        requests: Option<u64>,
    },
}

impl Schedule {
    /// Lays out a run starting at `t0`. `duration` and `requests` bound the measured part
    /// (the first reached ends it); at least one of them should be set.
    pub fn new(
        t0: Instant,
        rate: Option<f64>,
        warmup: Duration,
        duration: Option<Duration>,
        requests: Option<u64>,
    ) -> Self {
        match rate {
            Some(rate) => {
                let interval_ns = 1e9 / rate;
                // Ticket i is warmup when i / rate < warmup; the epsilon keeps float noise
                // from adding a ticket when warmup * rate is a whole number.
                let first_measured = (warmup.as_secs_f64() * rate - 1e-9).ceil().max(0.0) as u64;
                let by_time = duration
                    .map(|d| ((d.as_secs_f64() * rate - 1e-9).ceil() as u64).max(1))
                    .unwrap_or(u64::MAX);
                let measured = by_time.min(requests.unwrap_or(u64::MAX));
                let end_ticket = first_measured.saturating_add(measured);
                let mut schedule = Self {
                    t0,
                    measure_start: t0,
                    kind: Kind::Open {
                        interval_ns,
                        first_measured,
                        end_ticket,
                        give_up: t0,
                    },
                };
                schedule.measure_start = schedule.due(first_measured);
                let give_up = schedule.due(end_ticket) + DRAIN_GRACE;
                if let Kind::Open { give_up: g, .. } = &mut schedule.kind {
                    *g = give_up;
                }
                schedule
            }
            None => {
                let measure_start = t0 + warmup;
                Self {
                    t0,
                    measure_start,
                    kind: Kind::Closed {
                        end: duration.map(|d| measure_start + d),
                        requests,
                    },
                }
            }
        }
    }

    /// When open-loop ticket `ticket` is due (`t0` in closed loop).
    pub fn due(&self, ticket: u64) -> Instant {
        match self.kind {
            Kind::Open { interval_ns, .. } => {
                // Far-future tickets saturate rather than overflow; they are never sent.
                let ns = (ticket as f64 * interval_ns).min(1e18);
                self.t0 + Duration::from_nanos(ns as u64)
            }
            Kind::Closed { .. } => self.t0,
        }
    }

    /// Open loop: how many measured tickets were due by `at`. Closed loop: 0.
    pub fn due_by(&self, at: Instant) -> u64 {
        match self.kind {
            Kind::Open {
                interval_ns,
                first_measured,
                end_ticket,
                ..
            } => {
                if at < self.t0 {
                    return 0;
                }
                let elapsed_ns = at.duration_since(self.t0).as_nanos() as f64;
                let due = (elapsed_ns / interval_ns).floor() as u64 + 1;
                due.min(end_ticket).saturating_sub(first_measured)
            }
            Kind::Closed { .. } => 0,
        }
    }

    /// Open loop: the number of measured tickets.
    #[cfg(test)]
    pub fn measured_tickets(&self) -> Option<u64> {
        match self.kind {
            Kind::Open {
                first_measured,
                end_ticket,
                ..
            } => Some(end_ticket - first_measured),
            Kind::Closed { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn open_loop_tickets_follow_the_arithmetic_schedule() {
        let t0 = Instant::now();
        let s = Schedule::new(
            t0,
            Some(2000.0),
            Duration::ZERO,
            Some(Duration::from_secs(5)),
            None,
        );
        assert_eq!(s.measured_tickets(), Some(10_000));
        assert_eq!(s.due(0), t0);
        assert_eq!(s.due(1), t0 + Duration::from_micros(500));
        assert_eq!(s.due(2000), t0 + Duration::from_secs(1));
        assert_eq!(s.measure_start, t0);
        let Kind::Open { give_up, .. } = s.kind else {
            panic!("open loop expected");
        };
        assert_eq!(give_up, t0 + Duration::from_secs(5) + DRAIN_GRACE);
    }

    #[test]
    fn warmup_tickets_come_first_and_are_not_measured() {
        let t0 = Instant::now();
        let s = Schedule::new(
            t0,
            Some(100.0),
            500 * MS,
            Some(Duration::from_secs(1)),
            None,
        );
        let Kind::Open {
            first_measured,
            end_ticket,
            ..
        } = s.kind
        else {
            panic!("open loop expected");
        };
        assert_eq!((first_measured, end_ticket), (50, 150));
        assert_eq!(s.measure_start, t0 + 500 * MS);
    }

    #[test]
    fn the_request_count_and_duration_bound_together() {
        let t0 = Instant::now();
        let by_count = Schedule::new(
            t0,
            Some(1000.0),
            Duration::ZERO,
            Some(Duration::from_secs(60)),
            Some(10),
        );
        assert_eq!(by_count.measured_tickets(), Some(10));
        let tiny = Schedule::new(t0, Some(0.5), Duration::ZERO, Some(MS), None);
        assert_eq!(
            tiny.measured_tickets(),
            Some(1),
            "a run sends at least one request"
        );
    }

    #[test]
    fn due_by_counts_measured_tickets_only() {
        let t0 = Instant::now();
        let s = Schedule::new(
            t0,
            Some(10.0),
            Duration::from_secs(1),
            Some(Duration::from_secs(2)),
            None,
        );
        assert_eq!(s.due_by(t0), 0, "only warmup is due at t0");
        assert_eq!(s.due_by(t0 + Duration::from_secs(1)), 1);
        assert_eq!(s.due_by(t0 + 1500 * MS), 6);
        assert_eq!(
            s.due_by(t0 + Duration::from_secs(100)),
            20,
            "capped at the run's tickets"
        );
    }

    #[test]
    fn closed_loop_measures_after_the_warmup() {
        let t0 = Instant::now();
        let s = Schedule::new(
            t0,
            None,
            Duration::from_secs(2),
            Some(Duration::from_secs(3)),
            Some(5),
        );
        assert_eq!(s.measure_start, t0 + Duration::from_secs(2));
        let Kind::Closed { end, requests } = s.kind else {
            panic!("closed loop expected");
        };
        assert_eq!(end, Some(t0 + Duration::from_secs(5)));
        assert_eq!(requests, Some(5));
        assert_eq!(s.measured_tickets(), None);
    }
}
