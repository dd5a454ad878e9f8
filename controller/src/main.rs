//! `cutover`: the operator's tool. It runs a migration plan: PostgreSQL logical
//! replication, secrets, gated traffic steps, the coordinated switchover, rollback and
//! the report. The subcommands arrive with their issues; today it explains itself.

use clap::Parser;

/// Move live web applications from one cluster to another with zero failed requests
/// and zero lost writes.
///
/// The data plane is `cutover-proxy`; validate each step with `cutover-load`.
#[derive(Parser, Debug)]
#[command(name = "cutover", version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "cutover: no subcommand is available yet in this build; see `cutover --help` and the README"
    );
    std::process::exit(1);
}
