//! Live progress on stderr: permanent lines for what happened, and one status line
//! (bake time left, gate values, lag) that redraws in place on a terminal and is
//! printed every few seconds otherwise, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the status line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Ui {
    enabled: bool,
    tty: bool,
    status_shown: bool,
    last_plain: Option<Instant>,
    started: Instant,
}

impl Ui {
    pub fn new(enabled: bool) -> Ui {
        Ui {
            enabled,
            tty: std::io::stderr().is_terminal(),
            status_shown: false,
            last_plain: None,
            started: Instant::now(),
        }
    }

    /// A line that stays.
    pub fn line(&mut self, msg: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.status_shown {
            let _ = write!(err, "\r\x1b[2K");
            self.status_shown = false;
        }
        let t = self.started.elapsed().as_secs_f64();
        let _ = writeln!(err, "[{:>6.1}s] {msg}", t);
    }

    /// The transient status line.
    pub fn status(&mut self, msg: &str) {
        if !self.enabled {
            return;
        }
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K  {msg}");
            let _ = err.flush();
            self.status_shown = true;
        } else if self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            self.last_plain = Some(Instant::now());
            self.line(&format!("  {msg}"));
        }
    }

    /// Ends a status line so that the next output starts clean.
    pub fn clear(&mut self) {
        if self.enabled && self.status_shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            self.status_shown = false;
        }
        self.last_plain = None;
    }
}
