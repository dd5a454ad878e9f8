//! `cutover-proxy`: see [`cutover_proxy::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    cutover_proxy::cli::main(std::env::args_os())
}
