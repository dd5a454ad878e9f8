//! `cutover run`, `cutover status` and `cutover abort`: the plan runner's command
//! line. Exit codes: 0 the plan finished (or, for status, the run stands well), 1 a
//! gate or an action failed or the plan cannot be used, 3 interrupted (run again to
//! resume).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::error::Error;
use crate::plan::model::Plan;
use crate::plan::record::Outcome;
use crate::plan::runner::{self, RunOptions};
use crate::plan::state::{self, StateFile};

/// The plan and where its run keeps state.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// The migration plan (TOML; see examples/plan.toml).
    #[arg(value_name = "PLAN.toml")]
    pub plan: PathBuf,

    /// The run's state file, rewritten after every action.
    /// [default: next to the plan, PLAN.state.json]
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,

    /// Where report.md and report.json are written.
    #[arg(long, value_name = "DIR", default_value = "cutover-report")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub plan: PlanArgs,

    /// Serve the controller's Prometheus metrics (replication lag per database,
    /// phase, step, gate values) on this address while the plan runs, e.g.
    /// 0.0.0.0:9902.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Resume even though the plan file changed since the run began.
    #[arg(long)]
    pub force: bool,

    /// No live progress on stderr (the report is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub plan: PlanArgs,

    /// Print the whole run record as JSON.
    #[arg(long)]
    pub json: bool,
}

fn options(a: &PlanArgs) -> RunOptions {
    let mut o = RunOptions::for_plan(&a.plan);
    if let Some(s) = &a.state {
        o.state = s.clone();
    }
    o.out = a.out.clone();
    o
}

fn fail(e: Error) -> u8 {
    eprintln!("cutover: {e}");
    1
}

pub async fn run(a: RunArgs) -> u8 {
    let plan = match Plan::load(&a.plan.plan) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let mut opts = options(&a.plan);
    opts.metrics_listen = a.metrics_listen;
    opts.force = a.force;
    opts.progress = !a.quiet;
    match runner::run(&plan, &opts).await {
        Ok(rec) => {
            println!("{}", crate::plan::report::markdown(&rec));
            match rec.outcome {
                Outcome::Succeeded => 0,
                Outcome::Running => 3,
                _ => 1,
            }
        }
        Err(e) => fail(e),
    }
}

pub async fn abort(a: PlanArgs) -> u8 {
    let plan = match Plan::load(&a.plan) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    match runner::abort(&plan, &options(&a)).await {
        Ok(rec) => {
            eprintln!("{}", runner::describe(&rec, &plan, false).trim_end());
            0
        }
        Err(e) => fail(e),
    }
}

pub fn status(a: StatusArgs) -> u8 {
    let plan = match Plan::load(&a.plan.plan) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let opts = options(&a.plan);
    let rec = match state::load(&opts.state) {
        Ok(Some(r)) => r,
        Ok(None) => {
            eprintln!(
                "cutover: no run of {} yet (no state file at {})",
                plan.name,
                opts.state.display()
            );
            return 1;
        }
        Err(e) => return fail(e),
    };
    // The lock is held by a run in progress; taking it briefly tells which.
    let active = StateFile::lock(&opts.state).is_err();
    if a.json {
        match serde_json::to_string_pretty(&rec) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(Error::Plan(e.to_string())),
        }
    } else {
        print!("{}", runner::describe(&rec, &plan, active));
    }
    match rec.outcome {
        Outcome::GateFailed | Outcome::Failed => 1,
        _ => 0,
    }
}
