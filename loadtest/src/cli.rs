//! The command line: flags (clap), their translation into a [`LoadSpec`], and the
//! printing and exit code of a run. Exit codes: 0 when the run completed and any SLO
//! passed, 2 when an SLO was missed, 1 for usage and fatal errors (including a target
//! that never answered, and a run interrupted by Ctrl-C).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;

use crate::duration::parse_duration;
use crate::engine;
use crate::report::Report;
use crate::scenario::Scenario;
use crate::slo::Slo;
use crate::spec::{LoadSpec, ProgressMode, SpecError, parse_header, parse_method};

/// Exit code: the run completed and any SLO passed.
pub const EXIT_OK: u8 = 0;
/// Exit code: usage errors, fatal errors, and a target that never answered.
pub const EXIT_FATAL: u8 = 1;
/// Exit code: an SLO part was missed.
pub const EXIT_SLO: u8 = 2;

const AFTER_HELP: &str = "\
SLO expressions (--slo), comma-separated, all must hold:
  p50<200ms  p90<500ms  p99<1s  p99.9<2s  max<5s   corrected latency (< or <=)
  errors<0.1%                                      error ratio (transport failures + 5xx)
  errors<=5                                        error count
  rate>=9900                                       achieved requests per second (> or >=)

Durations: 500ms, 30s, 2m, 1m30s, 1h (a unit is required).

Latency is corrected for coordinated omission: in open loop each request is measured
from its due time on the schedule, so a stalled server cannot hide the requests it
delayed. The uncorrected figures (from the actual send) are shown beside them.

Exit codes:
  0  the run completed and any SLO passed
  1  usage or fatal error, no request got a response (target unreachable),
     or the run was interrupted (Ctrl-C; the report is still printed)
  2  an SLO part was missed (each missed part is named)";

/// An open-loop HTTP load generator that tells the truth about latency.
///
/// Holds a fixed arrival rate with --rate (open loop; the schedule does not slow down
/// when the server does) or runs as fast as responses return without it (closed loop).
/// Reports corrected and uncorrected percentiles, errors by kind, counts per status and
/// per x-cutover-backend value, fails the run on a missed SLO, and records acknowledged
/// writes of a scenario in a ledger.
#[derive(Debug, Parser)]
#[command(name = "cutover-load", version, about, long_about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Target URL: http://host[:port]/path or https://host[:port]/path.
    #[arg(value_name = "URL")]
    pub url: String,

    /// Requests per second, open loop: request i is due at start + i/N whatever the
    /// server does. Without it the run is closed loop (each connection sends its next
    /// request when the previous response is in).
    #[arg(short, long, value_name = "N", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// How long to measure, after the warmup (e.g. 30s, 2m). Default 10s when neither
    /// --duration nor --requests is given; with both, the first limit reached ends the run.
    #[arg(short, long, value_name = "DUR", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// How many requests to measure, after the warmup.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Load sent first and left out of every figure (connections and caches warm up).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,

    /// Connections, each with one request in flight at a time (HTTP/2 too).
    #[arg(short, long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub connections: u64,

    /// HTTP method.
    #[arg(short, long, value_name = "METHOD", default_value = "GET")]
    pub method: String,

    /// A request header, 'Name: value'; repeatable. 'Host: name' sets the Host header
    /// (and the TLS server name and HTTP/2 :authority) while connecting to the URL's address.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Request body.
    #[arg(short, long, value_name = "TEXT", conflicts_with = "body_file")]
    pub body: Option<String>,

    /// Request body read from a file.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,

    /// Per-request timeout, from the actual send to the end of the response body;
    /// a request past it counts as a timeout error.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,

    /// Speak HTTP/2 (prior knowledge on http://, negotiated with ALPN on https://).
    #[arg(long)]
    pub http2: bool,

    /// Accept any TLS certificate (the handshake signature is still checked).
    #[arg(long, conflicts_with = "cacert")]
    pub insecure: bool,

    /// Trust only the CA certificates in this PEM file (instead of the system's).
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<PathBuf>,

    /// Objectives the run must meet, e.g. 'p50<200ms,p99<1s,errors<0.01%'; exit code 2
    /// and each missed part named when one is missed. See below.
    #[arg(long, value_name = "EXPR")]
    pub slo: Option<String>,

    /// Write the report as JSON to FILE ('-' for stdout; the text report then goes to stderr).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,

    /// A TOML file with a weighted mix of request templates (replaces --method and
    /// --body; see the README for the format). Templates substitute {{seq}}, {{uuid}},
    /// {{rand:1..1000}} and {{request_id}}.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["method", "body", "body_file"])]
    pub scenario: Option<PathBuf>,

    /// Where to record each acknowledged (2xx) write of a 'ledger = true' template, one
    /// JSON line each: request id, template, status, and the id the service returned.
    #[arg(long, value_name = "FILE", requires = "scenario")]
    pub ledger: Option<PathBuf>,

    /// No live progress line.
    #[arg(short, long)]
    pub quiet: bool,

    /// Write one JSON line per second to FILE while the load runs: that second's
    /// requests, errors and corrected p50/p99/max, its answers by backend, and how
    /// far sending is behind the schedule (`behind`: requests due but not finished).
    /// Another program can follow it live, e.g. `cutover run`'s gates.
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<PathBuf>,

    /// Seed for template randomness and weighted picks (random by default).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Threads that drive the connections, each with its own event loop and an equal
    /// share of the connections (default: one per CPU core). One thread sends tens of
    /// thousands of plain HTTP/1.1 requests per second; on a machine shared with the
    /// target, fewer threads leave more of the CPU to it.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| "expected requests per second, e.g. 1000".to_owned())?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err("the rate must be above 0 (omit --rate for a closed-loop run)".to_owned())
    }
}

impl Cli {
    /// Builds the spec; every error names its flag or file.
    pub fn to_spec(&self) -> Result<LoadSpec, SpecError> {
        let mut spec = LoadSpec::new(&self.url)?;
        spec.rate = self.rate;
        spec.duration = self.duration;
        spec.requests = self.requests;
        spec.warmup = self.warmup;
        spec.connections = usize::try_from(self.connections).unwrap_or(usize::MAX);
        spec.threads = match self.threads {
            Some(n) => usize::try_from(n).unwrap_or(1),
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        spec.method = parse_method(&self.method)?;
        for header in &self.headers {
            let (name, value) = parse_header(header)?;
            spec.headers.append(name, value);
        }
        spec.body = match (&self.body, &self.body_file) {
            (Some(text), _) => Bytes::from(text.clone()),
            (None, Some(path)) => {
                std::fs::read(path)
                    .map(Bytes::from)
                    .map_err(|source| SpecError::BodyFile {
                        path: path.clone(),
                        source,
                    })?
            }
            (None, None) => Bytes::new(),
        };
        spec.timeout = self.timeout;
        spec.http2 = self.http2;
        spec.insecure = self.insecure;
        spec.cacert = self.cacert.clone();
        spec.slo = self.slo.as_deref().map(Slo::parse).transpose()?;
        spec.scenario = self.scenario.as_deref().map(Scenario::load).transpose()?;
        spec.ledger = self.ledger.clone();
        spec.progress = if self.quiet {
            ProgressMode::Off
        } else {
            ProgressMode::Auto
        };
        spec.seed = self.seed;
        spec.timeline = self.timeline.clone();
        spec.validate()?;
        Ok(spec)
    }
}

/// Parses these command-line arguments (the first is the program name, as in
/// `std::env::args_os`) and runs; the `cutover-load` binary and `cutover`'s hidden
/// `load-process` subcommand both come here. Usage errors exit 1, not clap's 2,
/// which here means "SLO missed"; `--help` and `--version` print to stdout and exit 0.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                std::process::ExitCode::from(EXIT_FATAL)
            } else {
                std::process::ExitCode::SUCCESS
            };
        }
    };
    std::process::ExitCode::from(run(&cli))
}

/// Runs the command; returns the process exit code.
pub fn run(cli: &Cli) -> u8 {
    let spec = match cli.to_spec() {
        Ok(spec) => spec,
        Err(e) => return fatal(&e),
    };
    // The load runs on threads of its own (see `LoadSpec::threads`); this runtime only
    // coordinates, aggregates and shows progress.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fatal(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(engine::run_until(spec, interrupted()));
    let report = match result {
        Ok(report) => report,
        Err(e) => return fatal(&e),
    };
    if let Err(e) = print(&report, cli.json.as_deref()) {
        return fatal(&e);
    }
    verdict(&report)
}

/// The exit code for a finished run, with a closing line on stderr when it is not 0.
pub fn verdict(report: &Report) -> u8 {
    if report.interrupted {
        eprintln!(
            "cutover-load: interrupted after {:.1}s; the report covers what ran",
            report.duration_s
        );
        return EXIT_FATAL;
    }
    if report.responses == 0 {
        eprintln!(
            "cutover-load: error: no request got a response ({} of {} failed: {}); is the target up?",
            report.errors,
            report.requests,
            error_summary(report)
        );
        return EXIT_FATAL;
    }
    if !report.slo.passed {
        eprintln!(
            "cutover-load: SLO missed: {}",
            report.slo.failures.join("; ")
        );
        return EXIT_SLO;
    }
    EXIT_OK
}

fn error_summary(report: &Report) -> String {
    let kinds: Vec<String> = report
        .error_kinds
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if kinds.is_empty() {
        "none sent".to_owned()
    } else {
        kinds.join(", ")
    }
}

fn print(report: &Report, json: Option<&str>) -> Result<(), String> {
    let encoded =
        || serde_json::to_string_pretty(report).map_err(|e| format!("--json: cannot encode: {e}"));
    match json {
        Some("-") => {
            eprint!("{report}");
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", encoded()?).map_err(|e| format!("--json -: {e}"))?;
        }
        Some(path) => {
            print!("{report}");
            std::fs::write(path, encoded()? + "\n").map_err(|e| format!("--json {path}: {e}"))?;
        }
        None => print!("{report}"),
    }
    Ok(())
}

fn fatal(e: &dyn std::fmt::Display) -> u8 {
    eprintln!("cutover-load: error: {e}");
    EXIT_FATAL
}

/// Completes on Ctrl-C; never, if the signal handler cannot be installed.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cutover-load").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_reach_the_spec() {
        let cli = parse(&[
            "-r",
            "500",
            "-d",
            "2m",
            "--warmup",
            "5s",
            "-c",
            "8",
            "-m",
            "post",
            "-H",
            "Host: shop.example.com",
            "-H",
            "x-a: 1",
            "-b",
            "{}",
            "--timeout",
            "250ms",
            "--slo",
            "p99<1s",
            "--http2",
            "-q",
            "http://127.0.0.1:9/x",
        ])
        .unwrap();
        let spec = cli.to_spec().unwrap();
        assert_eq!(spec.rate, Some(500.0));
        assert_eq!(spec.duration, Some(Duration::from_secs(120)));
        assert_eq!(spec.warmup, Duration::from_secs(5));
        assert_eq!(spec.connections, 8);
        assert_eq!(spec.method, http::Method::POST);
        assert_eq!(spec.headers["host"], "shop.example.com");
        assert_eq!(spec.body.as_ref(), b"{}");
        assert_eq!(spec.timeout, Duration::from_millis(250));
        assert!(spec.http2 && spec.slo.is_some());
        assert_eq!(spec.progress, ProgressMode::Off);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let err = parse(&["-r", "0", "http://127.0.0.1/"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--rate") && err.contains("above 0"), "{err}");
        let err = parse(&["-d", "10", "http://127.0.0.1/"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--duration") && err.contains("unit is missing"),
            "{err}"
        );
        let err = parse(&["-c", "0", "http://127.0.0.1/"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--connections"), "{err}");
        let err = parse(&["--ledger", "l", "http://127.0.0.1/"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--scenario"), "{err}");

        let spec_err = |args: &[&str]| parse(args).unwrap().to_spec().unwrap_err().to_string();
        assert!(spec_err(&["--slo", "p99<", "http://127.0.0.1/"]).starts_with("--slo"));
        assert!(spec_err(&["-H", "nocolon", "http://127.0.0.1/"]).starts_with("--header"));
        assert!(spec_err(&["ftp://127.0.0.1/"]).starts_with("<URL>"));
        assert!(
            spec_err(&["--body-file", "/nonexistent/b", "http://127.0.0.1/"])
                .starts_with("--body-file /nonexistent/b")
        );
        assert!(
            spec_err(&["--scenario", "/nonexistent/s.toml", "http://127.0.0.1/"])
                .starts_with("--scenario /nonexistent/s.toml")
        );
    }
}
