//! What the cache tests share: `cutover` run to completion with a deadline or in
//! the background (to be signalled), its status file, a blocking bounded poll,
//! and a seeded random source so that every run loads the same data.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use cutover_tests::Run;
use cutover_tests::binary;
use serde_json::Value;

/// How long a `cutover cache` run that should finish by itself may take (debug
/// build, two cores shared with the other test).
pub const RUN_WITHIN: Duration = Duration::from_secs(120);

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` (and
/// what `last` says about the latest state) after `within`.
#[track_caller]
pub fn until<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Builds `cutover` once per test process, before anything timed starts.
pub fn cutover_bin() -> PathBuf {
    binary("cutover")
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// One `cutover` process whose output goes to files in its own temp dir, with a
/// status file path beside them; killed on drop if still running.
pub struct Cutover {
    child: Child,
    dir: tempfile::TempDir,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Cutover {
    /// Starts `cutover ARGS…` with a clean environment for Redis clients.
    pub fn spawn(args: &[&str]) -> Cutover {
        let dir = tempfile::Builder::new()
            .prefix("cutover-cache-")
            .tempdir()
            .unwrap();
        Cutover::spawn_in(dir, args)
    }

    /// `cutover cache sync --source S --target T --status-file DIR/status.json EXTRA…`
    /// in the background.
    pub fn sync(source: &str, target: &str, extra: &[&str]) -> Cutover {
        let dir = tempfile::Builder::new()
            .prefix("cutover-cache-")
            .tempdir()
            .unwrap();
        let status = dir.path().join("status.json");
        let status = status.to_str().unwrap().to_string();
        let mut args = vec![
            "cache",
            "sync",
            "--source",
            source,
            "--target",
            target,
            "--status-file",
            &status,
        ];
        args.extend_from_slice(extra);
        Cutover::spawn_in(dir, &args)
    }

    fn spawn_in(dir: tempfile::TempDir, args: &[&str]) -> Cutover {
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let stdout = dir.path().join(format!("run{n}.stdout"));
        let stderr = dir.path().join(format!("run{n}.stderr"));
        let child = Command::new(cutover_bin())
            .args(args)
            .current_dir(dir.path())
            .env_remove("REDISCLI_AUTH")
            .env_remove("REDIS_URL")
            .env_remove("CUTOVER_CACHE_SOURCE")
            .env_remove("CUTOVER_CACHE_TARGET")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start cutover");
        Cutover {
            child,
            dir,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The status file's path (written only by `sync`).
    pub fn status_path(&self) -> PathBuf {
        self.dir.path().join("status.json")
    }

    /// The status file's text, once there is one.
    pub fn status_text(&self) -> Option<String> {
        std::fs::read_to_string(self.status_path()).ok()
    }

    /// The status file as JSON. It is rewritten atomically, so a file that does
    /// not parse is a failure, not a torn read.
    pub fn status(&self) -> Option<Value> {
        let text = self.status_text()?;
        Some(
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("status file is not JSON ({e}):\n{text}")),
        )
    }

    /// Polls the status file until `check` accepts it; panics if the process
    /// exits first or the deadline passes, showing the last status and stderr.
    #[track_caller]
    pub fn until_status(
        &mut self,
        within: Duration,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status();
            if let Some(s) = status.as_ref().filter(|s| check(s)) {
                return s.clone();
            }
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!(
                    "cutover exited ({exit}) while waiting for {what}; status: {status:?}\n\
                     stdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {within:?} waiting for {what}; status: {status:?}\n\
                     stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `SIGINT`, as Ctrl-C would.
    pub fn interrupt(&self) {
        let st = Command::new("kill")
            .args(["-s", "INT", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -s INT {} failed", self.pid());
    }

    /// Waits (bounded) for the exit; kills it and panics at the deadline.
    pub fn wait(&mut self, within: Duration) -> Run {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "cutover still running after {within:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Cutover {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cutover ARGS…` to completion within [`RUN_WITHIN`].
pub fn cutover(args: &[&str]) -> Run {
    Cutover::spawn(args).wait(RUN_WITHIN)
}

/// `cutover cache verify --source S --target T --json` (exit code unchecked).
pub fn verify_json(source: &str, target: &str) -> (Run, Value) {
    let run = cutover(&[
        "cache", "verify", "--source", source, "--target", target, "--json",
    ]);
    let json = run.json();
    (run, json)
}

/// The status says the target has caught up: converged with nothing pending.
pub fn caught_up(s: &Value) -> bool {
    s["converged"] == true && s["pending"] == 0
}

/// `status[field]` as a number; panics naming the field when it is not one.
#[track_caller]
pub fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}` is not a count in {v}"))
}

/// SplitMix64: a seeded, dependency-free source of test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// `len` printable bytes.
    pub fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..len)
            .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

/// The six key types, in the order `kind_of` assigns them.
pub const KINDS: [&str; 6] = ["string", "hash", "list", "set", "zset", "stream"];

/// Key number `i`'s type: the same for every number `i` names, so writers that
/// recreate a deleted key never hit `WRONGTYPE`.
pub fn kind_of(i: u64) -> &'static str {
    KINDS[(i % 6) as usize]
}

/// The name of key number `i`.
pub fn key(i: u64) -> String {
    format!("{}:{i:06}", kind_of(i))
}

/// The commands that create key number `i` with a few small elements.
pub fn create(i: u64, rng: &mut Rng) -> Vec<cutover_tests::Cmd> {
    use cutover_tests::Cmd;
    let k = key(i);
    match kind_of(i) {
        "string" => vec![Cmd::new("SET").arg(&k).arg(rng.text(32))],
        "hash" => vec![
            Cmd::new("HSET")
                .arg(&k)
                .args((0..5).flat_map(|f| [format!("f{f}"), rng.text(16)])),
        ],
        "list" => vec![Cmd::new("RPUSH").arg(&k).args((0..5).map(|_| rng.text(12)))],
        "set" => vec![Cmd::new("SADD").arg(&k).args((0..5).map(|_| rng.text(12)))],
        "zset" => vec![
            Cmd::new("ZADD")
                .arg(&k)
                .args((0..5).flat_map(|m| [format!("{}.25", rng.range(0, 1000)), format!("m{m}")])),
        ],
        _ => (0..3)
            .map(|_| {
                Cmd::new("XADD").arg(&k).args([
                    "*",
                    "event",
                    &rng.text(12),
                    "n",
                    &rng.range(0, 99).to_string(),
                ])
            })
            .collect(),
    }
}

/// Creates keys `ids` pipelined; every `ttl_every`-th one (0: none) gets a TTL
/// drawn from `ttl_ms`.
pub fn load_mixed(
    conn: &mut cutover_tests::RedisConn,
    ids: std::ops::Range<u64>,
    ttl_every: u64,
    ttl_ms: std::ops::Range<u64>,
    rng: &mut Rng,
) {
    let mut cmds = Vec::new();
    for i in ids {
        cmds.extend(create(i, rng));
        if ttl_every != 0 && i % ttl_every == 0 {
            cmds.push(
                cutover_tests::Cmd::new("PEXPIRE")
                    .arg(key(i))
                    .arg(rng.range(ttl_ms.start, ttl_ms.end).to_string()),
            );
        }
    }
    conn.pipeline_ok(&cmds);
}
