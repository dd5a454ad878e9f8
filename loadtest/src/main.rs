//! `cutover-load`: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use cutover_load::cli::{Cli, EXIT_FATAL, run};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap exits 2 on usage errors, which here means "SLO missed"; usage errors
            // exit 1 instead. --help and --version print to stdout and exit 0.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_FATAL)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    ExitCode::from(run(&cli))
}
