//! `cutover-load`: an open-loop HTTP load generator for validating migration steps. It
//! holds a fixed arrival rate (or runs closed loop), measures latency from each request's
//! due time so that a stalled server cannot hide the requests it delayed (coordinated
//! omission), keeps percentiles in HdrHistograms of fixed size, judges the run against an
//! SLO, and records every acknowledged write in a ledger for later loss checks. Build a
//! [`LoadSpec`], call [`run`], read the [`Report`]; the `cutover-load` binary is a thin
//! command line over the same calls ([`cli`]).

pub mod cli;
mod duration;
mod engine;
mod ledger;
mod progress;
mod report;
mod scenario;
mod slo;
mod spec;
mod stats;
pub mod timeline;
mod tls;

pub use duration::{DurationError, format_duration, parse_duration};
pub use engine::{BACKEND_HEADER, DRAIN_GRACE, RunError, run, run_until};
pub use ledger::{Ledger, LedgerEntry, LedgerError, read_ledger, response_id};
pub use report::{LatencySummary, LedgerSummary, Report};
pub use scenario::{
    DEFAULT_REQUEST_ID_HEADER, Pattern, Scenario, ScenarioError, Template, TemplateError,
};
pub use slo::{Check, Observed, Quantile, Slo, SloError, SloOutcome, SloPart};
pub use spec::{
    DEFAULT_DURATION, LoadSpec, ProgressMode, SpecError, Target, parse_header, parse_method,
};
pub use stats::ErrorKind;
pub use tls::TlsError;
