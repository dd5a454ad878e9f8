//! What a run measures, and how it gets from the connection tasks to one place.
//!
//! Each connection task keeps its own [`Recorder`]: samples go into a plain vector and
//! counts into small local tables, with no lock and no shared cache line on the request
//! path. Every 100 ms (or 1024 samples) the recorder ships a [`Batch`] over a channel to
//! the single aggregator, which owns the HdrHistograms. Memory is therefore bounded by the
//! histograms (fixed size, whatever the run's length) plus the batches in flight.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::mpsc::UnboundedSender;

use crate::slo::{Observed, Quantile};

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connection could not be opened (refused, unreachable, connect timeout).
    Connect,
    /// No complete response within `--timeout`.
    Timeout,
    /// The connection was closed or reset before the response was complete.
    Reset,
    /// The TLS handshake failed.
    Tls,
    /// The response was a 5xx.
    Status,
    /// The response could not be parsed as HTTP.
    Protocol,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [Self; 6] = [
        Self::Connect,
        Self::Timeout,
        Self::Reset,
        Self::Tls,
        Self::Status,
        Self::Protocol,
    ];

    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Tls => "tls",
            Self::Status => "status",
            Self::Protocol => "protocol",
        }
    }
}

/// Highest latency the histograms resolve, in microseconds (one hour); beyond it a
/// sample is clamped. Corrected latency can exceed the timeout when a backlog builds up.
const HIGHEST_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds with three significant digits.
#[allow(clippy::expect_used)]
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the constructor's only conditions
    // (lowest >= 1, highest >= 2 * lowest, sigfig <= 5), so it cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("constant histogram bounds are valid")
}

/// One measured request's latencies in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// From the intended send time (the schedule) to completion.
    pub corrected_us: u64,
    /// From the actual send time to completion.
    pub uncorrected_us: u64,
}

/// Counts kept per connection task and summed by the aggregator.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Measured requests: responses plus transport failures.
    pub requests: u64,
    /// Requests that got a complete response, whatever its status.
    pub responses: u64,
    /// Transport failures plus 5xx responses.
    pub errors: u64,
    /// Errors by [`ErrorKind`], indexed in [`ErrorKind::ALL`] order.
    pub error_kinds: [u64; 6],
    /// Responses per status code; a short list searched linearly (a run sees few codes).
    pub status: Vec<(u16, u64)>,
    /// Responses per `x-cutover-backend` value.
    pub backends: Vec<(Bytes, u64)>,
}

impl Counters {
    fn add_error(&mut self, kind: ErrorKind) {
        self.errors += 1;
        self.error_kinds[kind as usize] += 1;
    }

    fn add_status(&mut self, code: u16, n: u64) {
        match self.status.iter_mut().find(|(c, _)| *c == code) {
            Some((_, count)) => *count += n,
            None => self.status.push((code, n)),
        }
    }

    fn add_backend(&mut self, name: &[u8], n: u64) {
        match self.backends.iter_mut().find(|(b, _)| b.as_ref() == name) {
            Some((_, count)) => *count += n,
            None => self.backends.push((Bytes::copy_from_slice(name), n)),
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.responses += other.responses;
        self.errors += other.errors;
        for (mine, theirs) in self.error_kinds.iter_mut().zip(other.error_kinds) {
            *mine += theirs;
        }
        for &(code, n) in &other.status {
            self.add_status(code, n);
        }
        for (name, n) in &other.backends {
            self.add_backend(name, *n);
        }
    }

    /// Errors of one kind.
    pub fn kind(&self, kind: ErrorKind) -> u64 {
        self.error_kinds[kind as usize]
    }
}

/// What a connection task ships to the aggregator.
#[derive(Debug)]
pub struct Batch {
    /// Latencies of measured requests that got a response or timed out.
    pub samples: Vec<Sample>,
    /// Counts since the previous batch.
    pub counters: Counters,
}

const BATCH_SAMPLES: usize = 1024;
const BATCH_EVERY: Duration = Duration::from_millis(100);

/// A connection task's local recorder.
pub struct Recorder {
    samples: Vec<Sample>,
    counters: Counters,
    last_flush: Instant,
    tx: UnboundedSender<Batch>,
}

impl Recorder {
    /// A recorder that ships to `tx`.
    pub fn new(tx: UnboundedSender<Batch>) -> Self {
        Self {
            samples: Vec::with_capacity(BATCH_SAMPLES),
            counters: Counters::default(),
            last_flush: Instant::now(),
            tx,
        }
    }

    /// A complete response. A 5xx also counts as an error of kind `status`.
    pub fn response(&mut self, sample: Sample, status: u16, backend: Option<&[u8]>, now: Instant) {
        self.counters.requests += 1;
        self.counters.responses += 1;
        self.counters.add_status(status, 1);
        if status >= 500 {
            self.counters.add_error(ErrorKind::Status);
        }
        if let Some(name) = backend {
            self.counters.add_backend(name, 1);
        }
        self.samples.push(sample);
        self.maybe_flush(now);
    }

    /// A transport failure. Only a timeout carries a latency: it is the one failure whose
    /// time is the symptom, and leaving it out would flatter the percentiles.
    pub fn failure(&mut self, kind: ErrorKind, sample: Option<Sample>, now: Instant) {
        self.counters.requests += 1;
        self.counters.add_error(kind);
        if let Some(sample) = sample {
            self.samples.push(sample);
        }
        self.maybe_flush(now);
    }

    /// Ships the batch when it is full or old enough.
    pub fn maybe_flush(&mut self, now: Instant) {
        if self.samples.len() >= BATCH_SAMPLES || now.duration_since(self.last_flush) >= BATCH_EVERY
        {
            self.flush(now);
        }
    }

    /// Ships whatever has been recorded.
    pub fn flush(&mut self, now: Instant) {
        self.last_flush = now;
        if self.samples.is_empty() && self.counters.requests == 0 {
            return;
        }
        let batch = Batch {
            samples: std::mem::replace(&mut self.samples, Vec::with_capacity(BATCH_SAMPLES)),
            counters: std::mem::take(&mut self.counters),
        };
        // The aggregator outlives every recorder; if it is gone the run is being torn down
        // and there is nobody left to report to.
        let _ = self.tx.send(batch);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush(Instant::now());
    }
}

/// The aggregator's totals.
pub struct Aggregate {
    /// Corrected latency of every measured sample.
    pub corrected: Histogram<u64>,
    /// Uncorrected latency of every measured sample.
    pub uncorrected: Histogram<u64>,
    /// Counts for the whole run.
    pub totals: Counters,
    /// Counts since the last progress line.
    pub interval: Counters,
    /// Corrected latency since the last progress line.
    pub interval_corrected: Histogram<u64>,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self {
            corrected: new_histogram(),
            uncorrected: new_histogram(),
            totals: Counters::default(),
            interval: Counters::default(),
            interval_corrected: new_histogram(),
        }
    }
}

impl Aggregate {
    /// Adds a batch to the totals and the current interval.
    pub fn absorb(&mut self, batch: &Batch) {
        for s in &batch.samples {
            self.corrected.saturating_record(s.corrected_us);
            self.uncorrected.saturating_record(s.uncorrected_us);
            self.interval_corrected.saturating_record(s.corrected_us);
        }
        self.totals.merge(&batch.counters);
        self.interval.merge(&batch.counters);
    }

    /// Starts a new progress interval.
    pub fn reset_interval(&mut self) {
        self.interval = Counters::default();
        self.interval_corrected.reset();
    }
}

/// Latency in milliseconds at `quantile`, or `None` for an empty histogram.
pub fn quantile_ms(histogram: &Histogram<u64>, quantile: Quantile) -> Option<f64> {
    if histogram.is_empty() {
        return None;
    }
    let us = match quantile {
        Quantile::Max => histogram.max(),
        Quantile::Percentile(p) => histogram.value_at_quantile(p / 100.0),
    };
    Some(us as f64 / 1e3)
}

/// A finished run as the SLO sees it.
pub struct Measured<'a> {
    /// The totals.
    pub aggregate: &'a Aggregate,
    /// Measured seconds.
    pub duration_s: f64,
}

impl Measured<'_> {
    /// Errors divided by requests.
    pub fn error_ratio(&self) -> f64 {
        let t = &self.aggregate.totals;
        if t.requests == 0 {
            0.0
        } else {
            t.errors as f64 / t.requests as f64
        }
    }

    /// Requests per second over the measured time.
    pub fn rate(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.aggregate.totals.requests as f64 / self.duration_s
        } else {
            0.0
        }
    }
}

impl Observed for Measured<'_> {
    fn latency_ms(&self, quantile: Quantile) -> Option<f64> {
        quantile_ms(&self.aggregate.corrected, quantile)
    }
    fn errors(&self) -> u64 {
        self.aggregate.totals.errors
    }
    fn error_ratio(&self) -> f64 {
        Measured::error_ratio(self)
    }
    fn rate(&self) -> f64 {
        Measured::rate(self)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn recorder_counts_and_the_aggregate_merges() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let mut a = Recorder::new(tx.clone());
        let mut b = Recorder::new(tx);
        let s = |ms: u64| Sample {
            corrected_us: ms * 1000,
            uncorrected_us: ms * 500,
        };
        a.response(s(1), 200, Some(b"old"), now);
        a.response(s(2), 503, Some(b"new"), now);
        b.response(s(3), 200, Some(b"old"), now);
        b.failure(ErrorKind::Connect, None, now);
        b.failure(ErrorKind::Timeout, Some(s(10_000)), now);
        drop((a, b));

        let mut agg = Aggregate::default();
        while let Ok(batch) = rx.try_recv() {
            agg.absorb(&batch);
        }
        let t = &agg.totals;
        assert_eq!((t.requests, t.responses, t.errors), (5, 3, 3));
        assert_eq!(t.kind(ErrorKind::Status), 1);
        assert_eq!(t.kind(ErrorKind::Connect), 1);
        assert_eq!(t.kind(ErrorKind::Timeout), 1);
        let mut status = t.status.clone();
        status.sort_unstable();
        assert_eq!(status, [(200, 2), (503, 1)]);
        let old = t.backends.iter().find(|(n, _)| n.as_ref() == b"old");
        assert_eq!(old.map(|(_, n)| *n), Some(2));
        assert_eq!(agg.corrected.len(), 4, "the connect failure has no latency");
        let max = quantile_ms(&agg.corrected, Quantile::Max).unwrap();
        assert!((max - 10_000.0).abs() < 10.0, "{max}");
        let measured = Measured {
            aggregate: &agg,
            duration_s: 2.0,
        };
        assert_eq!(measured.rate(), 2.5);
        assert!((measured.error_ratio() - 0.6).abs() < 1e-9);
    }

    #[test]
    fn empty_histograms_have_no_quantiles() {
        assert_eq!(quantile_ms(&new_histogram(), Quantile::Max), None);
    }
}
