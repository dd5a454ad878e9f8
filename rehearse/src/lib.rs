//! `cutover rehearse`: the whole migration of a six-application platform on this
//! machine, through the real plan runner, with a report that proves (or disproves)
//! zero failed requests and zero lost writes.
//!
//! Two local PostgreSQL clusters stand in for the old and the new cluster's
//! databases; two [`app::Site`]s stand in for their ingresses, each serving the six
//! apps by Host; `cutover-proxy` splits every app's route between them; and
//! `cutover-load` plays the users, open loop at `--rate`, recording every write it
//! saw acknowledged in a ledger. The migration itself is an ordinary plan file run
//! by [`cutover_controller::plan::runner`]: this module builds the world around it, then checks
//! the ledger against the new databases and what the load generator saw, so the
//! verdict rests on the users' view and not only on the proxies' counters.
//!
//! It owns the set-up, the checks and the clean-up (clusters stopped and processes
//! killed on every path, Ctrl-C included, unless `--keep`); the migration's steps,
//! gates and report format belong to the plan runner.

pub mod app;
mod balancer;
pub mod binaries;
mod cache;
pub mod cluster;
mod dns;
mod fleet;
mod hostile;
mod machine;
mod platform;
mod procs;
mod redis;
mod rig;
mod run;
mod sockets;
mod tls;
mod users;
mod view;
mod workers;
mod writes;

use std::path::PathBuf;
use std::time::Instant;

use self::binaries::BinariesError;
use self::cluster::ClusterError;
use self::rig::Rig;

/// `cutover rehearse`: run the whole migration of the demo platform locally.
#[derive(clap::Args, Debug, Clone)]
pub struct RehearseArgs {
    /// Requests per second the simulated users send through the whole migration
    /// (open loop: the rate holds whatever the services do).
    #[arg(long, default_value_t = 2000.0, value_name = "N", value_parser = parse_rate)]
    pub rate: f64,

    /// Short bakes (3 s per traffic step instead of 10 s), for CI: done well under a
    /// minute once the clusters are up.
    #[arg(long)]
    pub quick: bool,

    /// Leave everything running afterwards for inspection (proxy, admin API and
    /// status page, the apps, both databases) until Ctrl-C; the databases stay up
    /// after that, with the commands to stop them printed.
    #[arg(long)]
    pub keep: bool,

    /// Where the report goes: report.md and report.json, the load generator's
    /// report and ledger, and the logs (passwords redacted).
    #[arg(long, value_name = "DIR", default_value = "cutover-report")]
    pub out: PathBuf,

    /// Proxy replicas (1 to 8; default 3, as a Deployment runs them; 1 for a single
    /// proxy process). With more than one, they run as a fleet behind one
    /// local L4 balancer, like pods behind a Service: each on its own loopback
    /// address (127.0.0.2, .3, ...), found by its peers and by the plan through a
    /// local DNS name, in the balancer only while its /readyz answers 200. During
    /// the 50% bake one replica is restarted as Kubernetes does it (out of the
    /// balancer, SIGTERM, drained, started again on its state file, back in once
    /// ready); during the first switchover's write hold one more replica is added.
    /// The report lists both, with their times.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = parse_replicas)]
    pub replicas: usize,
}

fn parse_replicas(text: &str) -> Result<usize, String> {
    let max = fleet::MAX_REPLICAS;
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(0) => Err(format!(
            "at least one proxy is needed: give 1 (one proxy) to {max} (a fleet)"
        )),
        Ok(n) => Err(format!(
            "{n} replicas is too many: give 1 to {max} (each needs its own loopback \
             address and a share of this machine, and one more is added during the run)"
        )),
        Err(_) => Err(format!(
            "expected a number of replicas from 1 to {max}, e.g. 3"
        )),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && (1.0..=50_000.0).contains(&r) => Ok(r),
        _ => Err("expected requests per second between 1 and 50000, e.g. 2000".into()),
    }
}

/// Why a rehearsal could not run to its verdict.
#[derive(Debug, thiserror::Error)]
pub enum RehearseError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    #[error(transparent)]
    Plan(#[from] cutover_controller::Error),
    #[error(transparent)]
    Ledger(#[from] cutover_load::LedgerError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Step(String),
}

/// A non-blocking listener on `127.0.0.1:0` with the accept queue a server is
/// deployed with (4096, as `cutover-proxy` listens), not the standard library's
/// 128: a burst of connects (users opening connections behind a stall, a herd of
/// reconnects) that overflows the queue has its SYNs dropped, and each such
/// client waits a second for its retransmit, which the rehearsal would then
/// count as the platform's latency.
fn loopback_listener() -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RehearseError {
    let what = what.into();
    move |source| RehearseError::Io { what, source }
}

/// Runs a rehearsal; returns the process exit code: 0 when the plan succeeded, no
/// request failed and no write was lost; 1 otherwise; 130 when interrupted.
pub async fn main(args: RehearseArgs) -> u8 {
    let progress = Progress::new();
    let mut rig = Rig::new(args.keep);
    let result = {
        let work = run::rehearse(&args, &progress, &mut rig);
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => Some(r),
            _ = ctrl_c() => None,
        }
    };
    let finished = result.is_some();
    let code = match result {
        Some(Ok(code)) => code,
        Some(Err(e)) => {
            eprintln!("cutover rehearse: {e}");
            1
        }
        None => {
            progress.line("interrupted");
            130
        }
    };
    rig.collect_logs(&args.out);
    if args.keep && finished && rig.serving() {
        rig.show();
        ctrl_c().await;
    }
    rig.shutdown(&progress).await;
    code
}

/// Completes on Ctrl-C; never, if the handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Progress lines on stderr, each with the time since the start.
struct Progress {
    start: Instant,
    /// The same moment in Unix seconds, to place these times among the plan's.
    start_unix: f64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            start_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// The plan runner's own lines count from the plan's start in `[  0.0s]`;
    /// these count from the rehearsal's and say so.
    fn line(&self, what: &str) {
        // On a terminal the runner may have a status line drawn: clear it first (it
        // is drawn again at its next update).
        let clear = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            "\r\x1b[2K"
        } else {
            ""
        };
        eprintln!("{clear}rehearse {:>6.1}s  {what}", self.at());
    }

    /// Seconds since the rehearsal began.
    fn at(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// A stage's closing line: what, and how long it took since `since`.
    fn done(&self, since: Instant, what: &str) {
        self.line(&format!("{what} ({:.1}s)", since.elapsed().as_secs_f64()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A burst of connects far past the standard library's queue of 128, none
    /// accepted yet, all completes at once: no SYN is dropped to be retried a
    /// second later.
    #[tokio::test]
    async fn a_burst_of_connects_fits_the_accept_queue() {
        let listener = super::loopback_listener().unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..600).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(700),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let done = futures_util::future::join_all(connects).await;
        let waited = done.iter().filter(|c| c.is_err()).count();
        let failed = done.iter().filter(|c| matches!(c, Ok(Err(_)))).count();
        assert_eq!(
            (waited, failed),
            (0, 0),
            "of 600 connects, {waited} waited for a retransmit and {failed} failed"
        );
        drop(listener);
    }
}
