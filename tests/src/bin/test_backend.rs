//! `cutover-test-backend`: one harness backend as its own process, for demos and for
//! tests that kill a backend process. Prints `listening on ADDR` and serves until
//! killed or interrupted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use cutover_tests::Backend;

/// An HTTP server that answers every request with its name (and `/slow/{ms}` after a
/// delay). It listens on 127.0.0.1 on a free port.
#[derive(Parser, Debug)]
#[command(name = "cutover-test-backend", version, about)]
struct Cli {
    /// The name it answers with, e.g. `old` or `new`.
    #[arg(long)]
    name: String,
}

fn main() {
    let cli = Cli::parse();
    let backend = Backend::start(&cli.name);
    println!("listening on {}", backend.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
}
