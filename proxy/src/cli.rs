//! The `cutover-proxy` command line: parse flags, load the config, start the
//! runtime, hand over to [`crate::run`]. The `cutover-proxy` binary calls [`main`]
//! with its arguments; so does `cutover`'s hidden `proxy-process` subcommand, which
//! `cutover rehearse` starts so that one build gives it every program it runs.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cutover_config::Config;

/// The cutover edge proxy: splits each Host's traffic between the old and the new
/// cluster by weight, keeps every user on one side, and applies weight changes from
/// its config file (hot-reloaded) or its admin API within a second.
///
/// Reloads: the config file's directory is watched (editor saves and Kubernetes
/// ConfigMap symlink swaps both count), and SIGHUP forces a reload. An invalid file
/// never replaces a valid one. SIGTERM stops accepting and lets in-flight requests
/// finish within [proxy] grace.
///
/// Upgrades: start the new binary with the same config and `--upgrade`. It takes
/// the listening sockets over from the running proxy (through [proxy]
/// control_socket), then the old process stops accepting, drains and exits 0. No
/// connection is refused or reset on the way.
#[derive(Parser, Debug)]
#[command(name = "cutover-proxy", version, about, long_about)]
struct Cli {
    /// The TOML config file (see the README's config reference).
    #[arg(
        short,
        long,
        env = "CUTOVER_CONFIG",
        default_value = "/etc/cutover/cutover.toml"
    )]
    config: PathBuf,

    /// Validate the config file, print every error with file:line:col and field, and
    /// exit: 0 when valid, 1 otherwise.
    #[arg(long)]
    check: bool,

    /// Take the listening sockets over from the cutover-proxy running with this
    /// config (hitless restart): the old process stops accepting once this one
    /// serves, drains within [proxy] grace and exits. Weights and write sides set
    /// over the admin API carry over; refused while a hold is in force.
    #[arg(long, conflicts_with = "check")]
    upgrade: bool,

    /// Log filter, e.g. `info`, `debug`, `cutover_proxy=debug`.
    #[arg(long, env = "CUTOVER_LOG", default_value = "info")]
    log: String,

    /// How log lines are written: `text` (logfmt-style key=value) or `json` (one
    /// object per line). Applies to the diagnostic log on standard error and to the
    /// access log ([log] access in the config) on standard output.
    #[arg(long, env = "CUTOVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Runs the proxy with these command-line arguments (the first is the program
/// name, as in `std::env::args_os`) and returns its exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    let text = match std::fs::read_to_string(&cli.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "cutover-proxy: cannot read config file {}: {e}",
                cli.config.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::parse(&text, &cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!(
            "{}: ok ({} backends, {} routes)",
            cli.config.display(),
            config.backends.len(),
            config.routes.len()
        );
        return ExitCode::SUCCESS;
    }

    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = cli.log_format == LogFormat::Json;
    crate::set_log_json(json);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().flatten_event(true).init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }

    raise_fd_limit();
    let threads = config.proxy.threads;
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("cutover-proxy")
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cutover-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let start = if cli.upgrade {
        crate::Start::Upgrade
    } else {
        crate::Start::Fresh
    };
    match runtime.block_on(crate::run(cli.config, config, text, start)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("cutover-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every client and upstream connection is a file descriptor; lift the soft limit to
/// the hard one, as an edge proxy is expected to, and say what it is.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            tracing::debug!(from = soft, to = hard, "raised the open-file limit");
        }
        if hard < 4096 {
            tracing::warn!(
                limit = hard,
                "the open-file limit is low for a proxy; raise it (ulimit -n)"
            );
        }
    }
}
