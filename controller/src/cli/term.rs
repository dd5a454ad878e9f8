//! Progress on stderr: a bar per table during `sync` on a terminal (a line per state
//! change otherwise), and a line per switchover phase with its timing.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::observe::{Observer, Phase, TableProgress};

pub struct Term {
    tty: bool,
    start: Instant,
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    states: Mutex<HashMap<String, char>>,
    /// When each table's copy progress was last printed (no terminal).
    printed: Mutex<HashMap<String, Instant>>,
}

/// How often a table being copied gets a progress line when stderr is no terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// "1.2 GiB of 5.0 GiB · 120,000 rows/s · 2m 13s left", as far as known.
fn copy_detail(t: &TableProgress) -> String {
    let mut parts = Vec::new();
    match (t.bytes_copied, t.bytes_on_source) {
        (Some(b), Some(total)) => parts.push(format!(
            "{} of {} on the source",
            crate::status::bytes(b),
            crate::status::bytes(total)
        )),
        (Some(b), None) => parts.push(crate::status::bytes(b)),
        _ => {}
    }
    if let Some(r) = t.rows_per_second {
        parts.push(format!("{r:.0} rows/s"));
    }
    if let Some(eta) = t.eta_seconds {
        let secs = eta.round() as u64;
        parts.push(format!("{}m {:02}s left", secs / 60, secs % 60));
    }
    parts.join(" · ")
}

impl Term {
    pub fn new() -> Term {
        let tty = std::io::stderr().is_terminal();
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Term {
            tty,
            start: Instant::now(),
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            printed: Mutex::new(HashMap::new()),
        }
    }

    fn line(&self, s: &str) {
        let stamped = format!("[{:>7.3}s] {s}", self.start.elapsed().as_secs_f64());
        if self.tty {
            let _ = self.multi.println(stamped);
        } else {
            eprintln!("{stamped}");
        }
    }

    fn bar(&self, t: &TableProgress) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry(t.table.clone())
            .or_insert_with(|| {
                let bar = self
                    .multi
                    .add(ProgressBar::new(t.rows_estimated.unwrap_or(0).max(0) as u64));
                let style = ProgressStyle::with_template(
                    "{prefix:<36} [{bar:30}] {pos:>10}/{len:<10} rows  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(t.table.clone());
                bar
            })
            .clone()
    }
}

impl Observer for Term {
    fn note(&self, message: &str) {
        self.line(message);
    }

    fn tables(&self, tables: &[TableProgress]) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        for t in tables {
            let changed = states.insert(t.table.clone(), t.state) != Some(t.state);
            if self.tty {
                let bar = self.bar(t);
                if let Some(n) = t.rows_copied {
                    if n as u64 > bar.length().unwrap_or(0) {
                        bar.set_length(n as u64);
                    }
                    bar.set_position(n as u64);
                }
                if t.state == 'r' {
                    if !bar.is_finished() {
                        bar.set_position(bar.length().unwrap_or(0));
                        bar.finish_with_message("ready");
                    }
                } else {
                    if matches!(t.state, 'f' | 's') {
                        // Copied; catching up with changes made meanwhile.
                        bar.set_position(bar.length().unwrap_or(0));
                    }
                    let detail = copy_detail(t);
                    if detail.is_empty() {
                        bar.set_message(t.state_name());
                    } else {
                        bar.set_message(format!("{} · {detail}", t.state_name()));
                    }
                }
            } else {
                let mut printed = self.printed.lock().unwrap_or_else(|p| p.into_inner());
                let due = t.state == 'd'
                    && printed
                        .get(&t.table)
                        .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
                if changed || due {
                    printed.insert(t.table.clone(), Instant::now());
                    let mut rows = t
                        .rows_copied
                        .map(|n| match t.rows_estimated {
                            Some(total) => format!(" ({n} of about {total} rows"),
                            None => format!(" ({n} rows"),
                        })
                        .unwrap_or_default();
                    if !rows.is_empty() {
                        let detail = copy_detail(t);
                        if !detail.is_empty() {
                            rows.push_str(&format!("; {detail}"));
                        }
                        rows.push(')');
                    }
                    self.line(&format!("table {}: {}{rows}", t.table, t.state_name()));
                }
            }
        }
    }

    fn phase_started(&self, phase: Phase) {
        self.line(&format!(
            "step {:>2}: {} …",
            phase.number(),
            phase.describe()
        ));
    }

    fn phase_done(&self, phase: Phase, took: Duration, detail: &str) {
        self.line(&format!(
            "step {:>2}: {} done in {:.1} ms: {detail}",
            phase.number(),
            phase.describe(),
            took.as_secs_f64() * 1000.0
        ));
    }
}
