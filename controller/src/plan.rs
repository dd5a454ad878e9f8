//! `cutover run PLAN.toml`: a migration plan (see `examples/plan.toml`) executed as
//! phases (preflight, sync, gated traffic steps, switchovers, finalize), with its
//! state saved after every action so that a stopped run resumes, and a report.

pub mod discover;
pub mod exporter;
pub mod gate;
pub mod metrics;
pub mod model;
pub mod record;
pub mod report;
pub mod runner;
pub mod state;
pub mod users;
