//! `cutover`: the operator's tool. Parses the command line, starts the runtime and
//! hands over to [`cutover_controller::cli::run`] for the operator's commands, or to
//! [`cutover_rehearse::main`] for the local rehearsal.
//!
//! Two hidden subcommands make this one binary every program a rehearsal starts:
//! `cutover proxy-process ARGS` is `cutover-proxy ARGS` and `cutover load-process
//! ARGS` is `cutover-load ARGS`, the same code as those binaries. So
//! `cargo run --release --bin cutover -- rehearse` builds once, and a rehearsal can
//! never run a proxy or load generator older than itself.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cutover_controller::cli::{Command, run};
use cutover_rehearse::RehearseArgs;

/// Move live web applications from one cluster to another with zero failed requests
/// and zero lost writes.
///
/// The data plane is `cutover-proxy`; validate each step with `cutover-load`.
#[derive(Parser, Debug)]
#[command(name = "cutover", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

// Parsed once per process: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Top {
    #[command(flatten)]
    Operator(Command),
    /// Rehearse the whole migration locally: two PostgreSQL clusters, six demo apps,
    /// cutover-proxy and cutover-load, through the real plan runner; prints the
    /// report and exits 1 if any request failed or any write was lost.
    Rehearse(RehearseArgs),
}

/// The hidden subcommands, read before clap so that their arguments reach the
/// program untouched.
const PROXY: &str = "proxy-process";
const LOAD: &str = "load-process";

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some(PROXY) => {
            args[1] = "cutover-proxy".into();
            return cutover_proxy::cli::main(args.into_iter().skip(1));
        }
        Some(LOAD) => {
            args[1] = "cutover-load".into();
            return cutover_load::cli::main(args.into_iter().skip(1));
        }
        _ => {}
    }
    let cli = Cli::parse_from(args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let rt = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cutover: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    ExitCode::from(rt.block_on(async {
        match cli.command {
            Top::Operator(command) => run(command).await,
            Top::Rehearse(args) => {
                cutover_controller::cli::set_command_label("rehearse");
                cutover_rehearse::main(args).await
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_hidden_programs_are_not_subcommands_clap_knows() {
        let cmd = Cli::command();
        assert!(cmd.find_subcommand(PROXY).is_none());
        assert!(cmd.find_subcommand(LOAD).is_none());
        assert!(cmd.find_subcommand("rehearse").is_some());
        assert!(cmd.find_subcommand("db").is_some());
    }
}
