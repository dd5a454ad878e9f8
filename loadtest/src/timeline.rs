//! `--timeline FILE`: one JSON line per second while the load runs, so another
//! program can follow what the users see as it happens (`cutover run`'s gates,
//! `cutover rehearse`'s per-part tables) and a run can be read second by second
//! afterwards.
//!
//! Each line covers the second since the previous one:
//!
//! ```json
//! {"unix":1764748800.25,"elapsed_s":12.0,"warmup":false,"requests":2001,"errors":0,
//!  "p50_ms":0.61,"p99_ms":2.9,"max_ms":7.1,"due":22000,"done":21994,"behind":6,
//!  "backends":{"old":1400,"new":601}}
//! ```
//!
//! `requests`, `errors`, the latencies (corrected for coordinated omission) and
//! `backends` are the second's; `due` (requests the schedule had due by then),
//! `done` (requests finished) and `behind` (`due - done`: in flight, or never sent
//! because every connection was busy) are totals since measuring began. A `behind`
//! that keeps growing means the generator or the target cannot keep up: requests
//! that are late have no latency yet, so the second's p99 alone would hide them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::slo::Quantile;
use crate::stats::{Aggregate, quantile_ms};

/// One second of the run, as written to the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Wall-clock time of the line, in seconds since the Unix epoch.
    pub unix: f64,
    /// Seconds since the load started (warmup included).
    pub elapsed_s: f64,
    /// True while warming up: nothing of this second is measured.
    pub warmup: bool,
    /// Requests finished in this second (answered or failed).
    pub requests: u64,
    /// Of those, transport failures and 5xx answers.
    pub errors: u64,
    /// Corrected latency of this second's requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Requests due on the schedule since measuring began.
    pub due: u64,
    /// Requests finished since measuring began.
    pub done: u64,
    /// `due - done`: in flight, or late.
    pub behind: u64,
    /// This second's answers by `x-cutover-backend`.
    pub backends: std::collections::BTreeMap<String, u64>,
}

impl Second {
    /// The line for the aggregate's current interval.
    pub fn of(agg: &Aggregate, elapsed: Duration, warmup: bool, due: u64) -> Self {
        let i = &agg.interval;
        let q = |p: f64| quantile_ms(&agg.interval_corrected, Quantile::Percentile(p));
        let done = agg.totals.requests;
        Self {
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            elapsed_s: elapsed.as_secs_f64(),
            warmup,
            requests: i.requests,
            errors: i.errors,
            p50_ms: q(50.0),
            p99_ms: q(99.0),
            max_ms: quantile_ms(&agg.interval_corrected, Quantile::Max),
            due,
            done,
            behind: due.saturating_sub(done),
            backends: i
                .backends
                .iter()
                .map(|(name, n)| (String::from_utf8_lossy(name).into_owned(), *n))
                .collect(),
        }
    }
}

/// The open timeline file. A write that fails is reported once on stderr and the
/// timeline stops; the load and its report go on.
pub struct Timeline {
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl Timeline {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(File::create(path)?)),
        })
    }

    /// Appends one line and flushes it, so a reader sees it at once.
    pub fn write(&mut self, second: &Second) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let written = serde_json::to_writer(&mut *out, second)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            eprintln!(
                "cutover-load: --timeline {}: {e}; no more lines are written",
                self.path.display()
            );
            self.out = None;
        }
    }
}

/// Reads a timeline written so far; a last line cut short (the writer is in the
/// middle of it) is left out.
pub fn read(path: &Path) -> std::io::Result<Vec<Second>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Batch, Counters, Sample};

    #[test]
    fn a_second_is_written_as_one_line_and_read_back() {
        let mut agg = Aggregate::default();
        agg.absorb(&Batch {
            samples: vec![
                Sample {
                    corrected_us: 2_000,
                    uncorrected_us: 1_000,
                },
                Sample {
                    corrected_us: 40_000,
                    uncorrected_us: 1_000,
                },
            ],
            counters: Counters {
                requests: 2,
                responses: 2,
                errors: 1,
                backends: vec![("old".into(), 2)],
                ..Counters::default()
            },
        });
        let s = Second::of(&agg, Duration::from_secs(3), false, 10);
        assert_eq!(
            (s.requests, s.errors, s.due, s.done, s.behind),
            (2, 1, 10, 2, 8)
        );
        assert!(s.p99_ms.unwrap() >= 39.0, "{s:?}");
        assert_eq!(s.backends.get("old"), Some(&2));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.jsonl");
        let mut t = Timeline::create(&path).unwrap();
        t.write(&s);
        t.write(&s);
        // A reader that catches the writer mid-line sees the whole lines only.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"unix\":1")
            .unwrap();
        let mut back = read(&path).unwrap();
        // JSON keeps the wall-clock time to about a microsecond, not every bit.
        for b in &mut back {
            assert!((b.unix - s.unix).abs() < 1e-3, "{} vs {}", b.unix, s.unix);
            b.unix = s.unix;
        }
        assert_eq!(back, vec![s.clone(), s]);
    }
}
