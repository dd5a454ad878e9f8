//! A real `cutover-proxy` process with its config in a temp dir. The proxy binds
//! `127.0.0.1:0` for its listeners; the harness learns the ports from its log.
//! [`Proxy::upgrade`] starts a successor that takes the listeners over.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::Backend;
use crate::binaries::binary;
use crate::client::{Client, Reply};

/// A config for two backends `old` and `new` and one route for `hosts`, with extra
/// route lines (e.g. `writes = "old"`) appended.
pub fn two_backend_config(
    old: SocketAddr,
    new: SocketAddr,
    hosts: &[&str],
    weights: (f64, f64),
    extra: &str,
) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [proxy]\nthreads = 2\ngrace = \"10s\"\n\n\
         [backends.old]\naddrs = [\"{old}\"]\n\n[backends.new]\naddrs = [\"{new}\"]\n\n\
         [[routes]]\nhosts = [{}]\nweights = {{ old = {}, new = {} }}\n{extra}\n",
        hosts.join(", "),
        weights.0,
        weights.1
    )
}

/// Backends `old` and `new` (in that order) behind a started proxy for `hosts`,
/// configured by [`two_backend_config`].
pub fn two_backends(hosts: &[&str], weights: (f64, f64), extra: &str) -> (Backend, Backend, Proxy) {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let cfg = two_backend_config(old.addr, new.addr, hosts, weights, extra);
    let proxy = ProxyBuilder::new(cfg).start().expect("the proxy starts");
    (old, new, proxy)
}

/// Builds and starts a proxy process.
pub struct ProxyBuilder {
    config: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// A running proxy; killed on drop.
pub struct Proxy {
    pub http: SocketAddr,
    /// The HTTPS listener, when `listen.https` is configured.
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// Shared with the processes started by [`Proxy::upgrade`].
    pub dir: Arc<tempfile::TempDir>,
    path: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// What the proxy wrote to standard output: its access log.
    out: Arc<Mutex<Vec<String>>>,
    client: Client,
    token: Option<String>,
}

impl ProxyBuilder {
    pub fn new(config: impl Into<String>) -> Self {
        ProxyBuilder {
            config: config.into(),
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// An extra command-line argument, e.g. `--log-format`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Starts the proxy and waits until both listeners are up. On failure returns
    /// the exit status and everything the process logged.
    pub fn start(self) -> Result<Proxy, (Option<ExitStatus>, String)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, &self.config).expect("write config");
        self.start_in(dir, &path)
    }

    /// Like [`ProxyBuilder::start`] with the config at `path` inside `dir` (which
    /// the caller has prepared, e.g. as a symlink farm).
    pub fn start_in(
        self,
        dir: tempfile::TempDir,
        path: &Path,
    ) -> Result<Proxy, (Option<ExitStatus>, String)> {
        spawn(Arc::new(dir), path, self.env, self.args, Until::Serving)
    }

    /// Starts the proxy and returns once its admin API listens, which may be before
    /// it serves traffic (a replica with `[fleet] peers` asks them first). `http` is
    /// `0.0.0.0:0` until [`Proxy::wait_serving`] learns it.
    pub fn start_until_admin(self) -> Result<Proxy, (Option<ExitStatus>, String)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, &self.config).expect("write config");
        spawn(Arc::new(dir), &path, self.env, self.args, Until::Admin)
    }
}

/// Which log line [`spawn`] waits for before it returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// "listening for traffic" (and the admin API).
    Serving,
    /// "admin API listening" only.
    Admin,
}

/// Starts `cutover-proxy --config path` plus `extra` arguments and waits until its
/// listeners are up.
fn spawn(
    dir: Arc<tempfile::TempDir>,
    path: &Path,
    env: Vec<(String, String)>,
    args: Vec<String>,
    until: Until,
) -> Result<Proxy, (Option<ExitStatus>, String)> {
    let mut cmd = Command::new(binary("cutover-proxy"));
    cmd.arg("--config").arg(path).arg("--log").arg("info");
    cmd.args(&args);
    cmd.env_remove("CUTOVER_ADMIN_TOKEN");
    let mut token = None;
    for (k, v) in &env {
        if k == "CUTOVER_ADMIN_TOKEN" {
            token = Some(v.clone());
        }
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cutover-proxy");
    let stderr = child.stderr.take().expect("piped stderr");
    let stdout = child.stdout.take().expect("piped stdout");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::new(Mutex::new(Vec::new()));
    for (stream, sink) in [
        (
            Box::new(stderr) as Box<dyn std::io::Read + Send>,
            logs.clone(),
        ),
        (Box::new(stdout), out.clone()),
    ] {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (http, admin) = {
            let l = logs.lock().unwrap();
            (
                find_addr(&l, "listening for traffic"),
                find_addr(&l, "admin API listening"),
            )
        };
        // Not serving yet: the address is learnt by `Proxy::wait_serving`.
        let http = match until {
            Until::Serving => http,
            Until::Admin => http.or(Some(SocketAddr::from(([0, 0, 0, 0], 0)))),
        };
        if let (Some(http), Some(admin)) = (http, admin) {
            let https = find_addr(&logs.lock().unwrap(), "listening for HTTPS traffic");
            return Ok(Proxy {
                http,
                https,
                admin,
                dir,
                path: path.to_path_buf(),
                env,
                args,
                child,
                logs,
                out,
                client: Client::new(),
                token,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Let the reader thread drain what is left.
            std::thread::sleep(Duration::from_millis(100));
            return Err((Some(status), logs.lock().unwrap().join("\n")));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err((None, logs.lock().unwrap().join("\n")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sum of the series of metric `name` in Prometheus text whose labels include
/// every `(label, value)` in `labels` (all of its series when `labels` is empty); 0
/// when none matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let has = |(k, v): &(&str, &str)| {
                set.split(',').any(|p| {
                    p.split_once('=').is_some_and(|(pk, pv)| {
                        pk == *k
                            && pv.strip_prefix('"').and_then(|x| x.strip_suffix('"')) == Some(v)
                    })
                })
            };
            labels
                .iter()
                .all(has)
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

fn find_addr(lines: &[String], marker: &str) -> Option<SocketAddr> {
    lines
        .iter()
        .find(|l| l.contains(marker))
        // `addr=…` in text logs, `"addr":"…"` in JSON ones.
        .and_then(|l| {
            l.split("addr=")
                .nth(1)
                .or_else(|| l.split("\"addr\":\"").nth(1))
        })
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|mut a| {
            // A wildcard listener is reached over loopback.
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            a
        })
}

impl Proxy {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cutover.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts a new process on the same config with `--upgrade`, which takes this
    /// one's listening sockets over, and returns it once it serves. `self` still
    /// tracks the old process, which drains and exits on its own.
    pub fn upgrade(&self) -> Result<Proxy, (Option<ExitStatus>, String)> {
        // This process may itself be a successor: one `--upgrade`.
        let mut args: Vec<String> = self
            .args
            .iter()
            .filter(|a| *a != "--upgrade")
            .cloned()
            .collect();
        args.push("--upgrade".into());
        spawn(
            self.dir.clone(),
            &self.path,
            self.env.clone(),
            args,
            Until::Serving,
        )
    }

    /// Starts a new process on the same config and directory (so the same state
    /// file), without `--upgrade`: a restart after [`Proxy::kill`]. Returns it once
    /// it serves.
    pub fn restart(&self) -> Result<Proxy, (Option<ExitStatus>, String)> {
        let args: Vec<String> = self
            .args
            .iter()
            .filter(|a| *a != "--upgrade")
            .cloned()
            .collect();
        spawn(
            self.dir.clone(),
            &self.path,
            self.env.clone(),
            args,
            Until::Serving,
        )
    }

    /// SIGKILL, as a crash or an OOM kill: nothing is flushed or drained. Returns
    /// once the process is reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// After [`ProxyBuilder::start_until_admin`]: waits until the proxy logs that it
    /// serves traffic, up to `within`, and learns its data-plane address. Panics
    /// with the log when it does not, or when the process exits.
    pub async fn wait_serving(&mut self, within: Duration) -> SocketAddr {
        let deadline = Instant::now() + within;
        loop {
            let (http, https) = {
                let l = self.logs.lock().unwrap();
                (
                    find_addr(&l, "listening for traffic"),
                    find_addr(&l, "listening for HTTPS traffic"),
                )
            };
            if let Some(http) = http {
                self.http = http;
                self.https = https;
                return http;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the proxy exited ({status}) before serving:\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "the proxy did not serve within {within:?}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The access log lines the proxy has written so far.
    pub fn access_log(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// Everything the proxy has logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until the proxy has logged a line containing `needle`; on timeout the
    /// panic shows what it did log.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.logs().contains(needle) {
            if Instant::now() > deadline {
                panic!(
                    "{needle:?} not in the proxy's log within 5s:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, …).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {sig} failed");
    }

    /// Waits for the process to exit, up to `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn auth(&self) -> Vec<(&str, String)> {
        self.token
            .iter()
            .map(|t| ("authorization", format!("Bearer {t}")))
            .collect()
    }

    /// A call to the admin API with the configured token, if any.
    pub async fn admin_call(&self, method: Method, path: &str, body: &str) -> Reply {
        let auth = self.auth();
        let mut headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if method != Method::GET {
            headers.push(("content-type", "application/json"));
        }
        self.client
            .send(self.admin, method, "admin", path, &headers, body)
            .await
            .unwrap_or_else(|e| panic!("admin {path}: {e}"))
    }

    pub async fn status(&self) -> Value {
        let r = self.admin_call(Method::GET, "/status", "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("status is JSON")
    }

    pub async fn metrics(&self) -> String {
        self.admin_call(Method::GET, "/metrics", "").await.body
    }

    /// The sum of metric `name`'s series whose labels include every pair in
    /// `labels` (see [`metric_sum`]), scraped now.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    /// The process's resident set size in bytes (`VmRSS`), None once it exited.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kib * 1024)
    }

    pub async fn put_weights(&self, host: &str, body: &str) -> Reply {
        self.admin_call(Method::PUT, &format!("/routes/{host}/weights"), body)
            .await
    }

    /// `POST /routes/{host}/release` with `body`, which must answer 200.
    pub async fn release(&self, host: &str, body: &str) -> Reply {
        let r = self
            .admin_call(Method::POST, &format!("/routes/{host}/release"), body)
            .await;
        assert_eq!(r.status, 200, "release of {host}: {}", r.body);
        r
    }

    /// A GET through the proxy for `host`.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        self.client
            .get(self.http, host, path)
            .await
            .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
