//! How long-running operations report progress. The CLI draws bars and phase lines;
//! the plan runner and the tests observe the same events.

use std::time::Duration;

use serde::Serialize;

/// One table's initial copy as `sync` sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableProgress {
    pub table: String,
    /// The `srsubstate` letter: `i` init, `d` copying, `f`/`s` catching up, `r` ready.
    pub state: char,
    /// Rows copied so far, while the copy runs.
    pub rows_copied: Option<i64>,
    /// The source's estimate of the table's rows; `None` when never analyzed.
    pub rows_estimated: Option<i64>,
    /// Bytes of COPY data received so far, while the copy runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_copied: Option<i64>,
    /// The table's size on the source's disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_on_source: Option<i64>,
    /// Rows per second over the last readings, while the copy runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_per_second: Option<f64>,
    /// Seconds left at that rate, when the source's row estimate is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
}

impl TableProgress {
    pub fn state_name(&self) -> &'static str {
        state_name(self.state)
    }
}

/// A readable name for a `pg_subscription_rel.srsubstate` letter.
pub fn state_name(state: char) -> &'static str {
    match state {
        'i' => "init",
        'd' => "copying",
        'f' => "copied",
        's' => "syncing",
        'r' => "ready",
        _ => "unknown",
    }
}

/// A step of the switchover (or of the rollback, which runs the same steps the other
/// way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Lag,
    /// Only when upgraded connections that follow the writes are open.
    Tunnels,
    Hold,
    Drain,
    Block,
    Fence,
    Sequences,
    Reverse,
    Prove,
    Drop,
    Release,
}

impl Phase {
    /// The step's number (the WebSockets move between 1 and 2 when there are any;
    /// reverse replication is set up between 6 and 7).
    pub fn number(self) -> &'static str {
        match self {
            Phase::Lag => "1",
            Phase::Tunnels => "1b",
            Phase::Hold => "2",
            Phase::Drain => "3",
            Phase::Block => "4",
            Phase::Fence => "5",
            Phase::Sequences => "6",
            Phase::Reverse => "6b",
            Phase::Prove => "7",
            Phase::Drop => "8",
            Phase::Release => "9",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Phase::Lag => "check lag, arm the fence witness",
            Phase::Tunnels => "close the WebSockets on the old writer, hold their reconnects",
            Phase::Hold => "hold writes on every proxy",
            Phase::Drain => "wait for in-flight writes to finish",
            Phase::Block => "block every write on the old writer",
            Phase::Fence => "record the fence, wait until applied",
            Phase::Sequences => "sequences and materialized views",
            Phase::Reverse => "start reverse replication",
            Phase::Prove => "prove no write passed the fence",
            Phase::Drop => "drop the subscription, open the new writer",
            Phase::Release => "release the hold with the new write side",
        }
    }
}

/// Receives progress. Every method has a default that ignores the event.
pub trait Observer: Send + Sync {
    /// A one-line message: a step taken, a wait begun.
    fn note(&self, _message: &str) {}
    /// The current state of every table during `sync`'s initial copy.
    fn tables(&self, _tables: &[TableProgress]) {}
    /// A switchover phase begins.
    fn phase_started(&self, _phase: Phase) {}
    /// A switchover phase ended well, after `took`.
    fn phase_done(&self, _phase: Phase, _took: Duration, _detail: &str) {}
}

/// Ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Observer for Quiet {}
