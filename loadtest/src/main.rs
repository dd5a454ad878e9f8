//! `cutover-load`: see [`cutover_load::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    cutover_load::cli::main(std::env::args_os())
}
