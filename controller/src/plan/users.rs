//! What the users see, as a gate can read it: the timeline `cutover-load
//! --timeline FILE` writes (one JSON line per second, see `cutover_load::timeline`),
//! followed while the plan runs.
//!
//! The proxies' own figures start when a request reaches them. A load generator
//! that cannot send (every connection busy, its CPU gone) or requests queued in
//! the kernel before the proxy accepts them never show there: the proxy's p99
//! stays low while users wait seconds. cutover-load measures each request from
//! the moment its schedule made it due (corrected for coordinated omission), and
//! counts the requests due but not done (`behind`). The `users_*` gates judge
//! those figures over the step's bake.
//!
//! A plan opts in with `[users] timeline = "FILE"`. The file is read from where
//! the last reading stopped, whole lines only, so a line being written is read
//! the next time.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cutover_load::timeline::Second;

/// The figures of the timeline's seconds inside a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsersWindow {
    /// Seconds of the timeline in the window (warmup excluded).
    pub seconds: u64,
    pub requests: u64,
    /// Transport failures and 5xx answers.
    pub errors: u64,
    /// The worst one-second figures, in seconds.
    pub worst_p50: Option<f64>,
    pub worst_p99: Option<f64>,
    pub max: Option<f64>,
    /// The most requests due but not done at any second of the window.
    pub max_behind: u64,
    /// The timeline file, for messages.
    pub file: String,
}

impl UsersWindow {
    /// The window's figures from `seconds` whose line was written after `from`
    /// and no later than `to` (Unix seconds).
    pub fn of(seconds: &[Second], from: f64, to: f64, file: &Path) -> UsersWindow {
        let worst = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let mut w = UsersWindow {
            file: file.display().to_string(),
            ..UsersWindow::default()
        };
        for s in seconds
            .iter()
            .filter(|s| !s.warmup && s.unix > from && s.unix <= to)
        {
            w.seconds += 1;
            w.requests += s.requests;
            w.errors += s.errors;
            w.worst_p50 = worst(w.worst_p50, s.p50_ms.map(|ms| ms / 1e3));
            w.worst_p99 = worst(w.worst_p99, s.p99_ms.map(|ms| ms / 1e3));
            w.max = worst(w.max, s.max_ms.map(|ms| ms / 1e3));
            w.max_behind = w.max_behind.max(s.behind);
        }
        w
    }
}

/// The timeline file, followed: each [`UsersFeed::refresh`] reads the lines
/// written since the last one.
#[derive(Debug)]
pub struct UsersFeed {
    path: PathBuf,
    offset: u64,
    /// Bytes of a line not finished when last read.
    partial: Vec<u8>,
    seconds: Vec<Second>,
    /// The last problem reading the file, shown by a gate with nothing to judge.
    problem: Option<String>,
}

/// Seconds kept in memory: a day of load at one line per second.
const KEEP: usize = 86_400;

impl UsersFeed {
    pub fn new(path: &Path) -> UsersFeed {
        UsersFeed {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            seconds: Vec::new(),
            problem: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last call. A file that does not exist
    /// yet, or that was truncated (a new load started), is not an error: the
    /// gates that need its seconds say so.
    pub fn refresh(&mut self) {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) => {
                self.problem = Some(format!("cannot read {}: {e}", self.path.display()));
                return;
            }
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Truncated: a new cutover-load run writes it from the start.
            self.offset = 0;
            self.partial.clear();
        }
        let mut fresh = Vec::new();
        let read = file
            .seek(SeekFrom::Start(self.offset))
            .and_then(|_| file.read_to_end(&mut fresh));
        if let Err(e) = read {
            self.problem = Some(format!("cannot read {}: {e}", self.path.display()));
            return;
        }
        self.problem = None;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Second>(line) {
                Ok(s) => self.seconds.push(s),
                Err(e) => {
                    self.problem = Some(format!(
                        "{} has a line that is not cutover-load's timeline: {e}",
                        self.path.display()
                    ));
                }
            }
        }
        if self.seconds.len() > KEEP {
            let extra = self.seconds.len() - KEEP;
            self.seconds.drain(..extra);
        }
    }

    /// The figures of the seconds written after `from` and no later than `to`.
    pub fn window(&self, from: f64, to: f64) -> UsersWindow {
        UsersWindow::of(&self.seconds, from, to, &self.path)
    }

    /// Why there may be no seconds: the file's last reading problem.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;

    use super::*;

    fn second(unix: f64, requests: u64, errors: u64, p99_ms: f64, behind: u64) -> Second {
        Second {
            unix,
            elapsed_s: unix - 1000.0,
            warmup: false,
            requests,
            errors,
            p50_ms: Some(p99_ms / 10.0),
            p99_ms: Some(p99_ms),
            max_ms: Some(p99_ms * 2.0),
            due: 0,
            done: 0,
            behind,
            backends: BTreeMap::new(),
        }
    }

    fn line(s: &Second) -> String {
        format!("{}\n", serde_json::to_string(s).unwrap())
    }

    #[test]
    fn a_window_takes_its_seconds_only_and_the_worst_of_each() {
        let mut warm = second(1001.0, 50, 50, 9000.0, 900);
        warm.warmup = true;
        let seconds = vec![
            second(1000.0, 100, 0, 1.0, 0),
            warm,
            second(1002.0, 100, 1, 40.0, 3),
            second(1003.0, 100, 0, 900.0, 250),
            second(1004.0, 100, 0, 5000.0, 9),
        ];
        let w = UsersWindow::of(&seconds, 1000.0, 1003.5, Path::new("t.jsonl"));
        assert_eq!(
            (w.seconds, w.requests, w.errors, w.max_behind),
            (2, 200, 1, 250)
        );
        assert_eq!(w.worst_p99, Some(0.9));
        assert_eq!(w.max, Some(1.8));
        let empty = UsersWindow::of(&seconds, 1004.0, 1010.0, Path::new("t.jsonl"));
        assert_eq!(empty.seconds, 0);
        assert_eq!(empty.worst_p99, None);
    }

    #[test]
    fn the_feed_reads_whole_lines_as_they_are_written_and_starts_over_after_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.jsonl");
        let mut feed = UsersFeed::new(&path);
        feed.refresh();
        assert!(feed.problem().unwrap().contains("timeline.jsonl"));
        assert_eq!(feed.window(0.0, 1e12).seconds, 0);

        let mut f = std::fs::File::create(&path).unwrap();
        let a = line(&second(1001.0, 10, 0, 2.0, 0));
        let b = line(&second(1002.0, 20, 2, 3.0, 1));
        // The second line is caught half written: only the first is read.
        f.write_all(a.as_bytes()).unwrap();
        f.write_all(&b.as_bytes()[..10]).unwrap();
        f.flush().unwrap();
        feed.refresh();
        assert_eq!(feed.window(0.0, 1e12).requests, 10);
        assert_eq!(feed.problem(), None);
        f.write_all(&b.as_bytes()[10..]).unwrap();
        f.flush().unwrap();
        feed.refresh();
        let w = feed.window(0.0, 1e12);
        assert_eq!((w.seconds, w.requests, w.errors), (2, 30, 2));

        // A new load truncates the file: its lines are read from the start.
        std::fs::write(&path, line(&second(2000.0, 7, 0, 1.0, 0))).unwrap();
        feed.refresh();
        assert_eq!(feed.window(1500.0, 1e12).requests, 7);

        std::fs::write(&path, "not json\n").unwrap();
        feed.refresh();
        assert!(
            feed.problem()
                .unwrap()
                .contains("not cutover-load's timeline"),
            "{:?}",
            feed.problem()
        );
    }
}
