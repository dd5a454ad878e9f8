//! The programs a rehearsal runs beside itself: `cutover-proxy` (its ports learnt
//! from its log) and `cutover-load` (stopped with SIGINT, on which it finishes the
//! requests in flight, flushes its ledger and writes its report). Each child runs in
//! its own process group, so a Ctrl-C at the terminal reaches `cutover` alone,
//! which then stops them in order; each is killed on drop, so no error path leaves
//! one behind. Also a small HTTP GET for the proxy's admin API on loopback.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::binaries::Program;
use http_body_util::{BodyExt, Empty};

/// A child process, killed (SIGKILL) and reaped on drop unless it has exited.
pub struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Proc {
    /// Starts `cmd` in its own process group, stdout and stderr into `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> std::io::Result<Proc> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()?;
        Ok(Proc {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// What it has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` (a name for kill(1): INT, TERM, …). The standard library
    /// only sends SIGKILL, and this crate has no unsafe code.
    pub fn signal(&self, signal: &str) -> std::io::Result<()> {
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(self.child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill -s {signal} {} failed ({status})",
                self.child.id()
            )))
        }
    }

    /// Waits up to `within` for it to exit.
    pub async fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `cutover-proxy`.
#[derive(Debug)]
pub struct ProxyProc {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub proc: Proc,
}

/// Starts `cutover-proxy --config config` and waits (up to 30 s) until it logs
/// both listeners.
pub async fn start_proxy(bin: &Program, config: &Path, log: &Path) -> Result<ProxyProc, String> {
    wait_listening(spawn_proxy(bin, config, log)?).await
}

/// Starts `cutover-proxy --config config`, without waiting for anything.
pub fn spawn_proxy(bin: &Program, config: &Path, log: &Path) -> Result<Proc, String> {
    let mut cmd = bin.command();
    cmd.arg("--config")
        .arg(config)
        .args(["--log", "info"])
        .env_remove("CUTOVER_ADMIN_TOKEN");
    Proc::spawn("cutover-proxy", cmd, log)
        .map_err(|e| format!("cannot start {}: {e}", bin.describe()))
}

/// Waits (up to 30 s) until the proxy `proc` logs both listeners. The data
/// listener is logged last: with `[fleet] peers`, after the state was synced.
pub async fn wait_listening(mut proc: Proc) -> Result<ProxyProc, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = proc.output();
        let http = find_addr(&text, "listening for traffic");
        let admin = find_addr(&text, "admin API listening");
        if let (Some(http), Some(admin)) = (http, admin) {
            return Ok(ProxyProc { http, admin, proc });
        }
        if let Some(status) = proc.exited() {
            return Err(format!(
                "cutover-proxy exited ({status}) before serving:\n{}",
                last_lines(&text, 15)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cutover-proxy did not log its listeners within 30s:\n{}",
                last_lines(&text, 15)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `addr=` of the first log line containing `marker` (ANSI colours removed).
fn find_addr(log: &str, marker: &str) -> Option<SocketAddr> {
    log.lines()
        .map(strip_ansi)
        .find(|l| l.contains(marker))
        .and_then(|l| {
            l.split("addr=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
        })
}

pub(super) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for n in chars.by_ref() {
                if ('@'..='~').contains(&n) && n != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `GET http://addr{path}` over a fresh connection: (status, body). Only for the
/// proxy on loopback; bounded by `timeout`.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    http_get_host(addr, &addr.to_string(), path, timeout).await
}

/// Like [`http_get`], with `host` as the Host header.
pub async fn http_get_host(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("GET {path}: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {host}{path} at {addr}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {addr}{path}: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET {addr}{path}: no answer within {timeout:?}"))?
}

/// The sum of `cutover_requests_total` in a Prometheus text page.
pub fn requests_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("cutover_requests_total"))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        // Not `sum()`: an empty f64 sum is -0, which prints as "-0".
        .fold(0.0, |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_log_with_or_without_colours() {
        let log = "2026-01-01T00:00:00Z  INFO \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:4000 listening for traffic\n\
                   2026-01-01T00:00:00Z  INFO admin API listening addr=127.0.0.1:4001\n";
        assert_eq!(
            find_addr(log, "admin API listening"),
            Some("127.0.0.1:4001".parse().unwrap())
        );
        assert_eq!(
            find_addr(log, "listening for traffic"),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(find_addr(log, "HTTPS"), None);
    }

    #[test]
    fn request_counters_are_summed() {
        let text = "# HELP cutover_requests_total x\n\
                    cutover_requests_total{route=\"a\",backend=\"old\",code=\"200\"} 5\n\
                    cutover_requests_total{route=\"b\",backend=\"new\",code=\"201\"} 7\n\
                    cutover_inflight{route=\"a\",backend=\"old\"} 3\n";
        assert_eq!(requests_total(text), 12.0);
    }
}
