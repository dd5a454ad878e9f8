//! `cutover-load`: an open-loop HTTP load generator. Filled by its own issue.

use clap::Parser;

/// Open-loop HTTP load generator with coordinated-omission-corrected percentiles,
/// SLO gates and a ledger of acknowledged writes.
#[derive(Parser, Debug)]
#[command(name = "cutover-load", version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("cutover-load: not available yet in this build; see --help");
    std::process::exit(1);
}
