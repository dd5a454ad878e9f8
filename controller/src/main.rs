//! `cutover`: the operator's tool. Parses the command line, starts the runtime and
//! hands over to [`cutover_controller::cli::run`].

use std::process::ExitCode;

use clap::Parser;
use cutover_controller::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => ExitCode::from(rt.block_on(run(cli))),
        Err(e) => {
            eprintln!("cutover: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}
