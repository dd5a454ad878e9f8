//! What the plan runner's tests share: a temp dir with the plan, the `cutover`
//! binary run to completion or in the background (to be signalled or killed), the
//! state file and the report, two PostgreSQL clusters with the demo schema, and
//! bounded client loops (reads, and writes that keep every acknowledged id).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use cutover_tests::{APP_PASSWORD, Pair, Run};
use cutover_tests::{Client, Postgres, binary, eventually};
use http::Method;
use serde_json::Value;
use tokio::task::JoinHandle;

/// The tests that start PostgreSQL clusters run one at a time: on two cores, two of
/// them at once make every bake and switchover slow enough to blur the timings.
pub static DATABASES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Builds `cutover` and `cutover-proxy` (once per test process) before a test
/// starts anything timed.
pub async fn binaries() {
    tokio::task::spawn_blocking(|| {
        binary("cutover");
        binary("cutover-proxy");
    })
    .await
    .unwrap();
}

/// A temp dir holding `plan.toml`; the state file (`plan.state.json`) lands next
/// to it and the report in `report/`.
pub struct PlanDir {
    pub dir: tempfile::TempDir,
    pub plan: PathBuf,
    /// Environment for every `cutover` run (DSNs).
    pub env: Vec<(String, String)>,
}

impl PlanDir {
    pub fn new(plan: &str) -> PlanDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.toml");
        std::fs::write(&path, plan).unwrap();
        PlanDir {
            dir,
            plan: path,
            env: Vec::new(),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("plan.state.json")
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("report")
    }

    /// The state file, once there is one.
    pub fn state(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.state_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// `report/report.json`.
    pub fn report(&self) -> Value {
        let path = self.out().join("report.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("cutover"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("CUTOVER_ADMIN_TOKEN")
            .env_remove("CUTOVER_SOURCE")
            .env_remove("CUTOVER_TARGET")
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null());
        cmd
    }

    /// `cutover run PLAN --out report -q`-style arguments for `sub`.
    fn args(&self, sub: &str, extra: &[&str]) -> Vec<String> {
        let mut a = vec![sub.to_string(), self.plan.display().to_string()];
        if sub != "status" {
            a.push("--out".into());
            a.push(self.out().display().to_string());
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Runs `cutover SUB PLAN [--out report] EXTRA…` to completion, off the
    /// runtime.
    pub async fn cutover(&self, sub: &str, extra: &[&str]) -> Run {
        let args = self.args(sub, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.command(&args);
        let run = tokio::task::spawn_blocking(move || {
            let out = cmd.output().expect("run cutover");
            Run::from(out)
        })
        .await
        .unwrap();
        assert_no_secrets(&run.all());
        run
    }

    /// Starts `cutover run PLAN --out report EXTRA…` in the background; its
    /// output goes to files in the dir.
    pub fn spawn_run(&self, extra: &[&str]) -> Background {
        let n = BACKGROUND.fetch_add(1, Ordering::SeqCst);
        let stdout = self.dir.path().join(format!("run{n}.stdout"));
        let stderr = self.dir.path().join(format!("run{n}.stderr"));
        let args = self.args("run", extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self
            .command(&args)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start cutover run");
        Background {
            child,
            stdout,
            stderr,
        }
    }

    /// Polls the state file until `check` accepts it.
    pub async fn until_state(&self, what: &str, within: Duration, check: impl Fn(&Value) -> bool) {
        eventually(within, what, || async {
            self.state().filter(|s| check(s)).map(|_| ())
        })
        .await;
    }
}

static BACKGROUND: AtomicU64 = AtomicU64::new(0);

/// A `cutover run` in the background; killed on drop if still running.
pub struct Background {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Background {
    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL: no handler runs, nothing is saved on the way out.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `SIGINT`, as Ctrl-C would.
    pub fn interrupt(&self) {
        let st = Command::new("kill")
            .args(["-s", "INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the exit (bounded) and returns what it did.
    pub async fn wait(mut self, within: Duration) -> Run {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "cutover run still running after {within:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: self.stderr(),
        };
        assert_no_secrets(&run.all());
        run
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// No password of the test clusters appears in `text`.
#[track_caller]
pub fn assert_no_secrets(text: &str) {
    for secret in [cutover_tests::SUPERUSER_PASSWORD, APP_PASSWORD] {
        assert!(
            !text.contains(secret),
            "a password leaked into output:\n{text}"
        );
    }
}

/// A superuser connection to `pg`'s database `app`.
pub async fn connect(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.dsn("app"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Every id in `items` on `pg`.
pub async fn item_ids(pg: &Postgres) -> std::collections::HashSet<i64> {
    connect(pg)
        .await
        .query("SELECT id::bigint FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The `/status` route that lists `host`.
pub fn route<'v>(status: &'v Value, host: &str) -> &'v Value {
    status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["hosts"].as_array().unwrap().iter().any(|h| h == host))
        .unwrap_or_else(|| panic!("no route for {host} in {status}"))
}

/// What a client loop saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Acknowledged writes' ids.
    pub acked: Vec<i64>,
    /// Answers by status code.
    pub codes: std::collections::BTreeMap<u16, u64>,
    /// Transport errors.
    pub errors: Vec<String>,
}

/// Client loops through a proxy, bounded in time: GETs of `/` for a stateless
/// route, or `POST /items` for the demo app (keeping every acknowledged id).
pub struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Seen>>,
}

impl Traffic {
    /// `workers` loops, each sending one request every `every`, for at most `limit`.
    pub fn start(
        addr: SocketAddr,
        host: &'static str,
        write: bool,
        workers: usize,
        every: Duration,
        limit: Duration,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + limit;
        let client = Client::new();
        let tasks = (0..workers)
            .map(|w| {
                let (stop, sent, client) = (stop.clone(), sent.clone(), client.clone());
                tokio::spawn(async move {
                    let mut seen = Seen::default();
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                        tick.tick().await;
                        n += 1;
                        let r = if write {
                            let body = format!("w{w}-{n}");
                            client
                                .send(addr, Method::POST, host, "/items", &[], &body)
                                .await
                        } else {
                            client.get(addr, host, "/").await
                        };
                        sent.fetch_add(1, Ordering::SeqCst);
                        match r {
                            Ok(r) => {
                                *seen.codes.entry(r.status.as_u16()).or_default() += 1;
                                if write && r.status == 201 {
                                    seen.acked.push(r.body.parse().unwrap());
                                }
                            }
                            Err(e) => seen.errors.push(e),
                        }
                    }
                    seen
                })
            })
            .collect();
        Traffic { stop, sent, tasks }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Waits until `more` requests beyond what was sent so far have gone out.
    pub async fn until_sent(&self, more: u64) {
        let from = self.sent();
        eventually(Duration::from_secs(30), "the client to send", || async {
            (self.sent() >= from + more).then_some(())
        })
        .await;
    }

    pub async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Seen::default();
        for t in self.tasks {
            let s = t.await.unwrap();
            all.acked.extend(s.acked);
            for (c, n) in s.codes {
                *all.codes.entry(c).or_default() += n;
            }
            all.errors.extend(s.errors);
        }
        all
    }
}

/// The admin URL of a proxy listening on `admin`.
pub fn admin_url(admin: SocketAddr) -> String {
    format!("http://{admin}")
}

/// A proxy config with these backends (name, address), in this order, and one
/// route per (host, weights TOML, extra route lines).
pub fn proxy_config(backends: &[(&str, SocketAddr)], routes: &[(&str, &str, &str)]) -> String {
    let mut c = String::from(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [proxy]\nthreads = 2\ngrace = \"10s\"\n\n",
    );
    for (name, addr) in backends {
        c.push_str(&format!("[backends.{name:?}]\naddrs = [\"{addr}\"]\n\n"));
    }
    for (host, weights, extra) in routes {
        c.push_str(&format!(
            "[[routes]]\nhosts = [{host:?}]\nweights = {weights}\n{extra}\n\n"
        ));
    }
    c
}
